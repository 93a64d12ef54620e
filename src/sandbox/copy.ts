/**
 * CopySnapshotter: the fallback when overlay cannot be mounted. `prepare(lowers)` materialises the merged rootfs
 * as a plain directory by copying the layer dirs bottom-most first (`cp -a --reflink=auto`, so ownership, modes,
 * timestamps, xattrs and hardlinks survive and copy-on-write filesystems share blocks; never hardlinks to the
 * layer store, which a step could then modify in place), applying overlay-format whiteouts (0/0 char devices)
 * and opaque dirs (`user.overlay.opaque=y`). It then records a stat index (path → type/ino/mode/uid/gid/size/
 * mtime/ctime, nanoseconds). `unmount()` walks the root once and compares stats only (no file is re-read or
 * hashed) to write an overlay-format diff into `upper`:
 *  - new or changed entries are copied (with their parent dirs, metadata as in the root);
 *  - removed entries become 0/0 char-device whiteouts (only the topmost removed path);
 *  - a directory that was removed and re-created (new inode number or generation) where a directory was
 *    becomes opaque.
 */
import { lstat, mkdir, readdir, rm, chown, chmod, utimes, rename } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { KilnError } from '../errors.js';
import { defaultKilnHome, kilnTempDir } from './paths.js';
import { runTool } from './mount.js';
import type { SandboxSnapshot, SandboxSnapshotter, SnapshotterOptions } from './overlay.js';

export const OPAQUE_XATTR = 'user.overlay.opaque';

export interface StatEntry {
  type: 'dir' | 'file' | 'symlink' | 'other';
  ino: bigint;
  mode: bigint;
  uid: bigint;
  gid: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  /** Directories: the inode generation (FS_IOC_GETVERSION via lsattr -v), when the filesystem has one. */
  gen?: string;
  rdev: bigint;
}

function typeOf(st: BigIntStats): StatEntry['type'] {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  return 'other';
}

function entryOf(st: BigIntStats): StatEntry {
  return {
    type: typeOf(st),
    ino: st.ino,
    mode: st.mode,
    uid: st.uid,
    gid: st.gid,
    size: st.size,
    mtimeNs: st.mtimeNs,
    ctimeNs: st.ctimeNs,
    rdev: st.rdev,
  };
}

function isWhiteout(st: BigIntStats): boolean {
  return st.isCharacterDevice() && st.rdev === 0n;
}

/** Walk `dir` pre-order; `visit(rel, stat)` returns false to skip a directory's children. */
async function walk(
  dir: string,
  visit: (rel: string, st: BigIntStats) => boolean | Promise<boolean>,
  rel = '',
): Promise<void> {
  const names = (await readdir(join(dir, rel))).sort();
  for (const name of names) {
    const r = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(dir, r), { bigint: true });
    const descend = await visit(r, st);
    if (descend && st.isDirectory()) await walk(dir, visit, r);
  }
}

/** Paths (relative to `dir`) of directories carrying the opaque xattr. */
async function opaqueDirs(dir: string): Promise<string[]> {
  const r = await runTool('getfattr', ['-R', '-h', '-d', '--absolute-names', '-m', '^user\\.overlay\\.opaque$', dir]);
  if (r.code !== 0 && r.code !== 1) {
    throw new KilnError('COPY_SNAPSHOT_FAILED', `getfattr failed on ${dir}: ${r.stderr.trim()}`, {
      hint: 'apt-get install attr',
    });
  }
  const out: string[] = [];
  let file: string | undefined;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('# file: ')) file = line.slice('# file: '.length);
    else if (file && line.startsWith(`${OPAQUE_XATTR}=`) && /="?y"?$/.test(line)) {
      const rel = file === dir ? '' : file.slice(dir.length + 1);
      out.push(rel);
    }
  }
  return out;
}

async function mustRun(cmd: string, args: string[], what: string, cwd?: string): Promise<void> {
  const r = await runTool(cmd, args, cwd === undefined ? {} : { cwd });
  if (r.code !== 0) throw new KilnError('COPY_SNAPSHOT_FAILED', `${what} failed: ${r.stderr.trim()}`);
}

/** Apply one overlay-format layer dir on top of the materialised `root`. */
export async function applyLayerDir(root: string, lower: string): Promise<void> {
  const whiteouts: string[] = [];
  const opaque = await opaqueDirs(lower);
  const removals: string[] = [...opaque.filter((r) => r !== '')];
  await walk(lower, async (rel, st) => {
    if (isWhiteout(st)) {
      whiteouts.push(rel);
      removals.push(rel);
      return false;
    }
    let cur: BigIntStats | undefined;
    try {
      cur = await lstat(join(root, rel), { bigint: true });
    } catch {
      cur = undefined;
    }
    if (cur && cur.isDirectory() !== st.isDirectory()) {
      removals.push(rel);
      return false;
    }
    return st.isDirectory() && cur !== undefined;
  });
  for (const rel of removals) await rm(join(root, rel), { recursive: true, force: true });
  if (opaque.includes('')) {
    for (const name of await readdir(root)) await rm(join(root, name), { recursive: true, force: true });
  }
  await mustRun('cp', ['-a', '--remove-destination', '--reflink=auto', `${lower}/.`, `${root}/`], `copying ${lower}`);
  for (const rel of whiteouts) await rm(join(root, rel), { force: true });
  for (const rel of opaque) await runTool('setfattr', ['-h', '-x', OPAQUE_XATTR, rel ? join(root, rel) : root]);
}

/**
 * Inode generations of directories (`lsattr -d -v`, FS_IOC_GETVERSION; ext2/3/4 and others), by relative path.
 * A filesystem without them gives an empty map (then only inode numbers are compared).
 */
export async function dirGenerations(root: string, rels: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const CHUNK = 500;
  for (let i = 0; i < rels.length; i += CHUNK) {
    const args = rels.slice(i, i + CHUNK).map((r) => `./${r}`);
    const r = await runTool('lsattr', ['-d', '-v', '--', ...args], { cwd: root });
    for (const line of r.stdout.split('\n')) {
      const m = /^\s*(\d+)\s+\S+\s+\.\/(.*)$/.exec(line);
      if (m) out.set(m[2] as string, m[1] as string);
    }
  }
  return out;
}

/** The stat index of `root` (with directory generations). */
export async function statIndex(root: string): Promise<Map<string, StatEntry>> {
  const index = new Map<string, StatEntry>();
  await walk(root, (rel, st) => {
    index.set(rel, entryOf(st));
    return true;
  });
  const dirs = [...index].filter(([, e]) => e.type === 'dir').map(([rel]) => rel);
  for (const [rel, gen] of await dirGenerations(root, dirs)) {
    const e = index.get(rel);
    if (e) e.gen = gen;
  }
  return index;
}

/**
 * Whether an entry's stats changed. A directory's ctime is not compared: adding and removing a mount stub in it
 * changes it even when its mtime is restored (as the overlay snapshotter prunes such copied-up dirs too).
 */
function changed(a: StatEntry, b: StatEntry): boolean {
  return (
    a.mode !== b.mode ||
    a.uid !== b.uid ||
    a.gid !== b.gid ||
    a.size !== b.size ||
    a.mtimeNs !== b.mtimeNs ||
    (a.type !== 'dir' && a.ctimeNs !== b.ctimeNs) ||
    a.rdev !== b.rdev
  );
}

export interface DiffPlan {
  /** Dirs to create in the diff (parents first), with whether they are opaque. */
  dirs: { rel: string; opaque: boolean }[];
  /** Non-dir entries to copy. */
  files: string[];
  /** Topmost removed paths. */
  whiteouts: string[];
}

/** Compare `root` with its index (stats only) and plan the overlay-format diff. */
export async function planDiff(root: string, index: Map<string, StatEntry>): Promise<DiffPlan> {
  const indexedDirs = [...index].filter(([, e]) => e.type === 'dir' && e.gen !== undefined).map(([rel]) => rel);
  const gens = await dirGenerations(root, indexedDirs);
  const seen = new Set<string>();
  const dirs = new Map<string, boolean>();
  const files: string[] = [];
  const opaqueRoots: string[] = [];
  const replaced = new Set<string>();
  const needParents = (rel: string) => {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      if (!dirs.has(p)) dirs.set(p, false);
    }
  };
  await walk(root, (rel, st) => {
    seen.add(rel);
    const now = entryOf(st);
    const old = index.get(rel);
    // A removed and re-created entry may get the same inode number back (filesystems reuse them at once): for
    // directories, where it matters (opaque or not), the inode generation tells them apart.
    const gen = gens.get(rel);
    const recreated =
      old !== undefined && now.type === 'dir' && old.gen !== undefined && gen !== undefined && gen !== old.gen;
    const isNew = !old || old.type !== now.type || old.ino !== now.ino || recreated;
    if (isNew && old) replaced.add(rel);
    if (now.type === 'dir') {
      const opaque = isNew && old !== undefined && old.type === 'dir';
      if (opaque) opaqueRoots.push(rel);
      if (isNew || (old !== undefined && changed(old, now))) {
        needParents(rel);
        dirs.set(rel, opaque);
      }
      return true;
    }
    if (isNew || (old !== undefined && changed(old, now))) {
      needParents(rel);
      files.push(rel);
    }
    return false;
  });
  const whiteouts: string[] = [];
  const under = (rel: string, dir: string) => rel.startsWith(dir + '/');
  for (const rel of index.keys()) {
    if (seen.has(rel)) continue;
    const slash = rel.lastIndexOf('/');
    const parent = slash < 0 ? '' : rel.slice(0, slash);
    // A removed (or replaced) ancestor already hides everything below it.
    if (parent !== '' && (!seen.has(parent) || replaced.has(parent))) continue;
    if (opaqueRoots.some((d) => under(rel, d))) continue;
    needParents(rel);
    whiteouts.push(rel);
  }
  const sortedDirs = [...dirs.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return { dirs: sortedDirs.map(([rel, opaque]) => ({ rel, opaque })), files, whiteouts };
}

/** Write the planned diff of `root` into `diff` (an empty dir). */
export async function writeDiff(root: string, diff: string, plan: DiffPlan): Promise<void> {
  for (const { rel, opaque } of plan.dirs) {
    await mkdir(join(diff, rel), { recursive: true });
    if (opaque) await mustRun('setfattr', ['-n', OPAQUE_XATTR, '-v', 'y', join(diff, rel)], 'marking opaque dir');
  }
  const CHUNK = 500;
  for (let i = 0; i < plan.files.length; i += CHUNK) {
    const chunk = plan.files.slice(i, i + CHUNK).map((r) => `./${r}`);
    await mustRun(
      'cp',
      ['-a', '--no-dereference', '--parents', '--reflink=auto', '--', ...chunk, `${diff}/`],
      'writing the diff',
      root,
    );
  }
  for (const rel of plan.whiteouts) {
    await mustRun('mknod', ['-m', '000', join(diff, rel), 'c', '0', '0'], 'writing a whiteout');
  }
  // Directory metadata last (children change mtimes), deepest first.
  for (const { rel } of [...plan.dirs].reverse()) {
    const st = await lstat(join(root, rel));
    const d = join(diff, rel);
    await chown(d, st.uid, st.gid);
    await chmod(d, st.mode & 0o7777);
    await utimes(d, st.atime, st.mtime);
  }
}

export class CopySnapshotter implements SandboxSnapshotter {
  readonly kind = 'copy' as const;
  private readonly kilnHome: string;

  constructor(opts: SnapshotterOptions = {}) {
    this.kilnHome = opts.kilnHome ?? defaultKilnHome();
  }

  async prepare(lowers: string[]): Promise<SandboxSnapshot> {
    const dir = await kilnTempDir(this.kilnHome, 'snap-');
    const root = join(dir, 'merged');
    const upper = join(dir, 'upper');
    let index: Map<string, StatEntry>;
    try {
      await mkdir(root, { mode: 0o755 });
      await mkdir(upper, { mode: 0o755 });
      for (const lower of lowers) await applyLayerDir(root, lower);
      index = await statIndex(root);
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
    let diffed = false;
    let released = false;
    const finish = async () => {
      if (diffed) return;
      const plan = await planDiff(root, index);
      const tmp = join(dir, 'upper.tmp');
      await mkdir(tmp, { mode: 0o755 });
      await writeDiff(root, tmp, plan);
      await rm(upper, { recursive: true, force: true });
      await rename(tmp, upper);
      diffed = true;
    };
    const release = async () => {
      if (released) return;
      await rm(dir, { recursive: true, force: true });
      released = true;
    };
    return { kind: 'copy', root, upper, upperDir: upper, unmount: finish, release, cleanup: release };
  }
}
