/**
 * Snapshotters: a writable root filesystem for one build step on top of read-only layer dirs.
 *
 * - `OverlaySnapshotter`: overlay(lower = the layer dirs, upper = fresh dir, work = fresh dir) mounted with
 *   `userxattr` (works in a user namespace; opaque dirs are `user.overlay.opaque=y`). After the step the upper dir
 *   IS the diff in overlay format (whiteouts are 0/0 char devices).
 * - `CopySnapshotter` (copy.ts): the fallback when overlay is unavailable.
 *
 * `prepare(lowers)` takes the layer dirs **bottom-most first** (image layer order, as src/engine/ports.ts);
 * overlay's own `lowerdir=` wants topmost first, which `overlayMountOptions` takes care of. The kernel limits the
 * mount option string to one page: when the absolute paths do not fit, the mount runs with its cwd in the snapshot
 * dir and each lower is named by a short relative symlink (`l/0`, `l/1`, ...), which overlay resolves at mount time.
 *
 * Selection: `KILN_SNAPSHOTTER=overlay|copy`, else overlay when a probe mount succeeds, else copy.
 * `chooseSnapshotter` also cleans up the temp dirs (and mounts) of kiln processes that died (stale.ts).
 */
import { lstat, mkdir, readFile, readdir, rm, rmdir, stat, symlink, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { join, resolve } from 'node:path';
import { readXattrsRecursive } from '../layer/fsops.js';
import { UPPER_XATTRS, isOpaque as opaqueMarked } from '../layer/writer.js';
import type { BigIntStats, Dirent } from 'node:fs';
import type { PrepareOptions, Snapshot, Snapshotter } from '../engine/ports.js';
import { KilnError } from '../errors.js';
import { defaultKilnHome, kilnTempDir } from './paths.js';
import { mount, runTool, unmount } from './mount.js';

/** Overlay's maximum number of lower layers (OVL_MAX_STACK). */
export const OVERLAY_MAX_LOWERS = 500;
/** mount(2) copies at most one page of options, including the trailing NUL. */
const MAX_OPTIONS = 4095;

/** A prepared step root filesystem. Satisfies the engine's `Snapshot` port plus task-level aliases. */
export interface SandboxSnapshot extends Snapshot {
  readonly kind: 'overlay' | 'copy';
  /** Same as `upper`. */
  readonly upperDir: string;
  /**
   * Finish the step's writes so `upper` is a complete overlay-format diff: unmounts the overlay (overlay) or
   * computes the diff from the stat index (copy). Idempotent; `release()` calls it when needed.
   */
  unmount(): Promise<void>;
  /** Same as `release()`. */
  cleanup(): Promise<void>;
}

export interface SandboxSnapshotter extends Snapshotter {
  readonly kind: 'overlay' | 'copy';
  prepare(lowers: string[]): Promise<SandboxSnapshot>;
}

export interface SnapshotterOptions {
  /** Defaults to `$KILN_HOME` (snapshots go to `<kilnHome>/tmp/snap-*`, on the layer store's filesystem). */
  kilnHome?: string;
}

/**
 * The overlay mount options for `lowers` (bottom-most first). Returns `{options, links}`: when `links` is set,
 * the caller must create those symlinks (name → target, relative to `cwd`) and mount with that cwd.
 */
export function overlayMountOptions(
  lowers: string[],
  upper: string,
  work: string,
  cwd: string,
): { options: string; links?: { name: string; target: string }[] } {
  if (lowers.length === 0) throw new KilnError('OVERLAY_NO_LOWER', 'overlay needs at least one lower dir');
  if (lowers.length > OVERLAY_MAX_LOWERS) {
    throw new KilnError('TOO_MANY_LAYERS', `${lowers.length} layers exceed overlay's limit of ${OVERLAY_MAX_LOWERS}`, {
      hint: 'squash the base image or merge RUN steps',
    });
  }
  for (const p of [...lowers, upper, work]) {
    if (/[,:\\]/.test(p)) {
      throw new KilnError('OVERLAY_BAD_PATH', `path not usable in overlay options: ${p}`, {
        hint: 'set KILN_HOME to a path without ",", ":" or "\\"',
      });
    }
  }
  const topFirst = [...lowers].reverse();
  const full = `lowerdir=${topFirst.join(':')},upperdir=${upper},workdir=${work},userxattr`;
  if (full.length <= MAX_OPTIONS) return { options: full };
  const rel = (p: string) => (p.startsWith(cwd + '/') ? p.slice(cwd.length + 1) : p);
  const links = topFirst.map((target, i) => ({ name: `l/${i.toString(36)}`, target }));
  const options = `lowerdir=${links.map((l) => l.name).join(':')},upperdir=${rel(upper)},workdir=${rel(work)},userxattr`;
  if (options.length > MAX_OPTIONS) throw new KilnError('TOO_MANY_LAYERS', `too many layers for one overlay mount`);
  return { options, links };
}

/** Mount overlay(lowers bottom-most first, upper, work) on `target`. `scratch` holds short links when needed. */
export async function mountOverlay(
  lowers: string[],
  upper: string,
  work: string,
  target: string,
  scratch: string,
): Promise<void> {
  const { options, links } = overlayMountOptions(lowers, upper, work, scratch);
  if (links) {
    await mkdir(join(scratch, 'l'), { recursive: true });
    for (const l of links) await symlink(l.target, join(scratch, l.name));
  }
  try {
    await mount('overlay', target, 'overlay', options, scratch);
  } catch (e) {
    throw new KilnError('OVERLAY_MOUNT_FAILED', `cannot mount overlay: ${(e as Error).message}`, {
      cause: e,
      hint: 'overlay with userxattr needs Linux >= 5.11; set KILN_SNAPSHOTTER=copy to build without overlay',
    });
  } finally {
    if (links) await rm(join(scratch, 'l'), { recursive: true, force: true });
  }
}

export class OverlaySnapshotter implements SandboxSnapshotter {
  readonly kind = 'overlay' as const;
  private readonly kilnHome: string;

  constructor(opts: SnapshotterOptions = {}) {
    this.kilnHome = opts.kilnHome ?? defaultKilnHome();
  }

  async prepare(lowers: string[], opts: PrepareOptions = {}): Promise<SandboxSnapshot> {
    const dir = await kilnTempDir(this.kilnHome, 'snap-');
    const upper = join(dir, 'upper');
    const work = join(dir, 'work');
    const root = join(dir, 'merged');
    let effective = lowers;
    try {
      await Promise.all([mkdir(upper, { mode: 0o755 }), mkdir(work, { mode: 0o700 }), mkdir(root, { mode: 0o755 })]);
      if (effective.length === 0) {
        const empty = join(dir, 'empty');
        await mkdir(empty, { mode: 0o755 });
        effective = [empty];
      }
      if (opts.plant) await opts.plant(upper);
      await mountOverlay(effective, upper, work, root, dir);
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
    let mounted = true;
    let released = false;
    let xattrs: Map<string, Map<string, Buffer>> | undefined;
    const doUnmount = async () => {
      if (!mounted) return;
      // the step is over (nothing writes through the mount any more): the upper dir's xattrs are read while the
      // overlay is unmounted — two helper processes at once instead of one after the other
      const read = upperXattrs(resolve(upper), opts.unchanged?.(root));
      read.catch(() => undefined); // awaited below
      await unmount(root);
      mounted = false;
      xattrs = await pruneUnchangedDirs(upper, [...effective].reverse(), undefined, await read);
    };
    const release = async () => {
      if (released) return;
      await doUnmount();
      await rm(dir, { recursive: true, force: true });
      released = true;
    };
    return {
      kind: 'overlay',
      root,
      upper,
      upperDir: upper,
      unmount: doUnmount,
      upperXattrs: () => xattrs,
      release,
      cleanup: release,
    };
  }
}

/**
 * Remove from an (unmounted) upper dir the directories overlay only copied up: empty, not opaque, and with the
 * same mode/owner/mtime as the directory they shadow in the merged lower view (e.g. /etc after a mount stub in it
 * was removed and its mtime restored). Such a dir changes nothing in the merged view, and BuildKit's overlay
 * differ leaves it out of the layer too. Deepest first, so parents emptied by this are pruned; nothing at or
 * below an opaque upper dir is touched. Returns the upper dir's UPPER_XATTRS, read for every entry but the
 * `unchanged` files (upper-relative paths known to carry none).
 */
export async function pruneUnchangedDirs(
  upperDir: string,
  lowersTopFirst: string[],
  unchanged?: ReadonlySet<string>,
  /** The upper dir's UPPER_XATTRS when already read (`unchanged` is then not used). */
  read?: Map<string, Map<string, Buffer>>,
): Promise<Map<string, Map<string, Buffer>>> {
  const upper = resolve(upperDir);
  // One getfattr for the whole upper dir instead of one process per directory; the layer writer uses it too.
  const xattrs = read ?? (await upperXattrs(upper, unchanged));
  const opaque = new Set<string>();
  for (const [path, x] of xattrs) if (opaqueMarked(x)) opaque.add(path);
  await pruneDir(upper, lowersTopFirst, '', opaque);
  return xattrs;
}

/** Explicit paths per getfattr process (an argument list stays far below ARG_MAX). */
const XATTR_PATHS = 2000;

/** The UPPER_XATTRS of every entry of `upper` but the `unchanged` files. */
async function upperXattrs(upper: string, unchanged?: ReadonlySet<string>): Promise<Map<string, Map<string, Buffer>>> {
  if (!unchanged || unchanged.size === 0) return readXattrsRecursive(upper, UPPER_XATTRS);
  const paths = [upper];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(rel ? join(upper, rel) : upper, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        paths.push(join(upper, r));
        await walk(r);
      } else if (!e.isFile() || !unchanged.has(r)) paths.push(join(upper, r));
    }
  };
  await walk('');
  const out = new Map<string, Map<string, Buffer>>();
  for (let i = 0; i < paths.length; i += XATTR_PATHS) {
    const part = await readXattrsRecursive(paths.slice(i, i + XATTR_PATHS), UPPER_XATTRS, { recursive: false });
    for (const [k, v] of part) out.set(k, v);
  }
  return out;
}

async function pruneDir(upper: string, lowersTopFirst: string[], rel: string, opaque: Set<string>): Promise<boolean> {
  const here = join(upper, rel);
  let entries: Dirent[];
  try {
    // Entry types come from readdir (d_type): no lstat round trip per file of the upper dir.
    entries = await readdir(here, { withFileTypes: true });
  } catch {
    return false;
  }
  if (rel !== '' && opaque.has(here)) return false;
  let empty = true;
  for (const entry of entries) {
    const r = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory() && (await pruneDir(upper, lowersTopFirst, r, opaque))) {
      await rmdir(join(upper, r));
      continue;
    }
    empty = false;
  }
  if (rel === '' || !empty) return false;
  const st = await lstat(here, { bigint: true });
  const lower = await visibleInLowers(lowersTopFirst, rel);
  if (!lower?.isDirectory()) return false;
  return st.mode === lower.mode && st.uid === lower.uid && st.gid === lower.gid && st.mtimeNs === lower.mtimeNs;
}

async function isOpaque(dir: string): Promise<boolean> {
  const r = await runTool('getfattr', ['-h', '--only-values', '-n', 'user.overlay.opaque', dir]);
  return r.code === 0 && r.stdout === 'y';
}

/**
 * The stat of `rel` as the merged lower layers show it (topmost first): a whiteout or a non-directory at an
 * ancestor, or an opaque ancestor dir, hides everything in the layers below it.
 */
async function visibleInLowers(lowersTopFirst: string[], rel: string): Promise<BigIntStats | undefined> {
  const parts = rel.split('/');
  for (const layer of lowersTopFirst) {
    let hidden = false;
    for (let i = 1; i <= parts.length; i++) {
      const p = join(layer, ...parts.slice(0, i));
      let st: BigIntStats;
      try {
        st = await lstat(p, { bigint: true });
      } catch {
        break; // not in this layer: look below (unless an ancestor here was opaque, handled above)
      }
      if (i === parts.length) {
        return st.isCharacterDevice() && st.rdev === 0n ? undefined : st;
      }
      if (!st.isDirectory()) {
        hidden = true; // whiteout or file at an ancestor hides the path below
        break;
      }
      if (await isOpaque(p)) {
        // An opaque ancestor: the path can only come from this layer, and it is not here.
        const rest = join(layer, ...parts.slice(0, i + 1));
        try {
          await lstat(rest);
        } catch {
          hidden = true;
          break;
        }
      }
    }
    if (hidden) return undefined;
  }
  return undefined;
}

let overlayProbe: Promise<boolean> | undefined;

/**
 * Whether an overlay mount with userxattr works here (probed once per process, under `kilnHome`). A success is
 * remembered in `$KILN_HOME/overlay-ok` for this kernel, user and file system, so builds skip the probe's
 * mount and unmount; a failure is probed again next time.
 */
export function overlaySupported(kilnHome: string = defaultKilnHome()): Promise<boolean> {
  overlayProbe ??= (async () => {
    const marker = join(kilnHome, 'overlay-ok');
    const fsId = await stat(kilnHome)
      .then((st) => String(st.dev))
      .catch(() => '?');
    const id = `${release()} uid=${process.getuid?.() ?? '?'} dev=${fsId}\n`;
    if ((await readFile(marker, 'utf8').catch(() => '')) === id) return true;
    let dir: string | undefined;
    try {
      dir = await kilnTempDir(kilnHome, 'probe-');
      const lower = join(dir, 'lower');
      await mkdir(lower);
      await writeFile(join(lower, 'f'), 'x');
      const snap = await new OverlaySnapshotter({ kilnHome }).prepare([lower]);
      await snap.release();
      await writeFile(marker, id).catch(() => undefined);
      return true;
    } catch {
      return false;
    } finally {
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  })();
  return overlayProbe;
}

/**
 * The snapshotter to use: `KILN_SNAPSHOTTER=overlay|copy` forces one; otherwise overlay when it works here, else
 * the copy fallback.
 */
export async function chooseSnapshotter(opts: SnapshotterOptions = {}): Promise<SandboxSnapshotter> {
  const kilnHome = opts.kilnHome ?? defaultKilnHome();
  await beforeSnapshots(kilnHome);
  return pickSnapshotter(kilnHome);
}

/**
 * chooseSnapshotter's snapshotter, chosen at its first prepare() instead of up front. Why: a build that prepares no
 * snapshot (every step cached, or a build pod whose changed COPY is written from the context: FileCopier.direct)
 * then never probes overlay — in a fresh KILN_HOME the probe (a mount, a getfattr of its upper dir, an unmount) cost
 * 0.1–0.3 s before the first step. A bad KILN_SNAPSHOTTER still fails here, at once.
 */
export async function lazySnapshotter(opts: SnapshotterOptions = {}): Promise<Snapshotter> {
  const kilnHome = opts.kilnHome ?? defaultKilnHome();
  await beforeSnapshots(kilnHome);
  let chosen: Promise<SandboxSnapshotter & Snapshotter> | undefined;
  return {
    prepare: async (lowers, o) => (await (chosen ??= pickSnapshotter(kilnHome))).prepare(lowers, o),
  };
}

/** Once per build: snapshots and RUN state left by a kiln that was killed are unmounted and removed. */
async function beforeSnapshots(kilnHome: string): Promise<void> {
  const forced = process.env.KILN_SNAPSHOTTER;
  if (forced && forced !== 'copy' && forced !== 'overlay') {
    throw new KilnError('BAD_SNAPSHOTTER', `unknown KILN_SNAPSHOTTER=${forced}`, { hint: 'use overlay or copy' });
  }
  const { cleanupStaleTempDirs } = await import('./stale.js');
  await cleanupStaleTempDirs(kilnHome);
}

async function pickSnapshotter(kilnHome: string): Promise<SandboxSnapshotter & Snapshotter> {
  const forced = process.env.KILN_SNAPSHOTTER;
  const { CopySnapshotter } = await import('./copy.js');
  if (forced === 'copy') return new CopySnapshotter({ kilnHome });
  if (forced === 'overlay') return new OverlaySnapshotter({ kilnHome });
  return (await overlaySupported(kilnHome)) ? new OverlaySnapshotter({ kilnHome }) : new CopySnapshotter({ kilnHome });
}
