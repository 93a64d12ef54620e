/**
 * Incremental COPY: a step that copies what it copied in the previous build (same parent state, same instruction,
 * only the source content changed — one edited file in a tree of thousands) starts from the previous result instead
 * of an empty upper dir. Why: creating an inode costs 10–300 µs depending on the file system's state, a hard link a
 * few µs; a warm rebuild should cost what changed, not the size of the tree.
 *
 * How, keeping the result exactly what a fresh copy would write:
 * 1. `plant` (before the overlay is mounted): the previous layer dir is mirrored into the empty upper dir —
 *    directories are created with the previous metadata, regular files are hard-linked (a layer dir is immutable,
 *    so sharing inodes is safe). Symlinks, devices, whiteouts, files with xattrs and files with several names are
 *    left out (the copier creates those as usual); a layer with opaque/redirect markers or a directory with xattrs
 *    is not planted at all.
 * 2. The copier runs as usual on the merged view. For a regular file whose target already exists with the same
 *    size, mode, owner, mtime and bytes it would write, it keeps the target (`CopyTrack.kept`) instead of
 *    replacing it; every directory it creates or visits goes into `CopyTrack.visited`.
 * 3. `prune` (after unmount, on the upper dir itself): planted files the copier neither kept nor replaced (their
 *    source is gone) are removed, then planted directories that are empty and were not visited; the mtimes of
 *    the directories this touches are restored. What remains is what a fresh copy would have left in the upper
 *    dir, except the mtimes of copied-up ancestor directories, which are the time of the build either way.
 */
import { linkSync, lstatSync, mkdirSync, readdirSync, rmdirSync, unlinkSync, type Stats } from 'node:fs';
import { lchown, lutimes, chmod, rm } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { readXattrsRecursive } from '../layer/fsops.js';

/** What the copier reports back when it runs over a planted upper dir (paths in the merged root). */
export interface CopyTrack {
  /** Regular files left in place because they were already what the copy would write. */
  kept: Set<string>;
  /** Directories created or visited as copy targets. */
  visited: Set<string>;
  /** Every regular file written or kept → the `sourceKey` of the file it came from. */
  sources: Map<string, string>;
  /** The previous build's `sources`, relative to the root: a planted file whose source still has the same key holds
   * the same bytes (no need to read both to compare). */
  previous?: Map<string, string>;
  /** Files planted from the previous layer and not replaced since, relative to the root. */
  planted?: Set<string>;
}

/**
 * What identifies a source file's content without reading it: device, inode, size, mtime and ctime (which no
 * user can set: any write or metadata change moves it). Stronger than the context's stat cache key.
 */
export function sourceKey(st: { dev: number; ino: number; size: number; mtimeMs: number; ctimeMs: number }): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
}

export function newCopyTrack(): CopyTrack {
  return { kept: new Set(), visited: new Set(), sources: new Map() };
}

/**
 * `p` relative to `root`: a slice for a path below it (the copier's targets all are; path.relative normalises
 * both paths on every call, which cost more than the copy itself for 5,000 kept files).
 */
export function relativeTo(root: string, p: string): string {
  const prefix = root.endsWith('/') ? root : root + '/';
  return p.startsWith(prefix) ? p.slice(prefix.length) : relative(root, p);
}

/** `track.sources` relative to `root`, to remember with the layer. */
export function relativeSources(track: CopyTrack, root: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [p, k] of track.sources) out[relativeTo(root, p)] = k;
  return out;
}

interface PlantedDir {
  rel: string;
  st: Stats;
}

export class PlantedCopy {
  /** Planted files: rel → their lstat in the previous layer dir, taken just before linking (its inode is theirs). */
  private readonly files = new Map<string, Stats>();
  /** Planted dirs, parents first. */
  private readonly dirs: PlantedDir[] = [];
  constructor(
    private readonly previous: string,
    readonly track: CopyTrack,
  ) {}

  /** The previous layer dir the files were planted from. */
  get dir(): string {
    return this.previous;
  }

  /** Number of planted files (0: nothing was reused). */
  get size(): number {
    return this.files.size;
  }

  /** Mirror the previous layer dir into the (empty, not yet mounted) upper dir. Returns false if it was not. */
  async plant(upper: string): Promise<boolean> {
    try {
      // the xattrs are read by a getfattr process while this thread walks and links (the walk is synchronous)
      const xattrs = readXattrsRecursive(this.previous, '.');
      xattrs.catch(() => undefined);
      this.walk(upper, '', new Map());
      // overlay's own bookkeeping on copied-up entries is harmless; opaque/redirect/metacopy markers are not
      const prefix = this.previous + '/';
      const found = await xattrs.catch(() => undefined);
      if (!found) {
        await this.unplant(upper);
        return false;
      }
      for (const [path, names] of found) {
        for (const n of names.keys()) {
          if (/\.overlay\.(impure|uuid|origin|nlink)$/.test(n)) continue;
          if (/\.overlay\./.test(n) || lstatSync(path).isDirectory()) {
            await this.unplant(upper);
            return false;
          }
          // a file with xattrs: the copier writes it
          const rel = path.startsWith(prefix) ? path.slice(prefix.length) : undefined;
          if (rel !== undefined && this.files.delete(rel)) unlinkSync(join(upper, rel));
        }
      }
      this.track.planted = new Set(this.files.keys());
      // directory metadata last (creating children changed the mtimes), deepest first
      for (const d of [...this.dirs].reverse()) {
        const p = join(upper, d.rel);
        await lchown(p, d.st.uid, d.st.gid);
        await chmod(p, d.st.mode & 0o7777);
        await lutimes(p, d.st.atime, d.st.mtime);
      }
      return true;
    } catch {
      // EXDEV, EPERM, ... : what was planted is recorded, and prune() treats it like any planted entry
      return false;
    }
  }

  /** Undo a plant that must not be used (nothing planted is left in the upper dir). */
  private async unplant(upper: string): Promise<void> {
    for (const name of readdirSync(upper)) await rm(join(upper, name), { recursive: true, force: true });
    this.files.clear();
    this.dirs.length = 0;
  }

  private walk(upper: string, rel: string, seen: Map<number, string>): void {
    for (const e of readdirSync(join(this.previous, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const abs = join(this.previous, r);
      if (e.isDirectory()) {
        const st = lstatSync(abs);
        mkdirSync(join(upper, r));
        this.dirs.push({ rel: r, st });
        this.walk(upper, r, seen);
      } else if (e.isFile()) {
        const st = lstatSync(abs);
        const other = seen.get(st.ino);
        if (other !== undefined) {
          // several names for one inode inside the layer: let the copier decide how to write them
          if (this.files.delete(other)) unlinkSync(join(upper, other));
          continue;
        }
        seen.set(st.ino, r);
        linkSync(abs, join(upper, r));
        this.files.set(r, st);
      }
    }
  }

  /** Planted files the copy kept as they were (relative to the root): untouched since they were planted. */
  unchanged(root: string): Set<string> {
    // asked twice after the copy (the snapshot's xattr read, the layer writer's stats): computed once
    const memo = this.unchangedMemo;
    if (memo?.root === root && memo.kept === this.track.kept.size && memo.files === this.files.size) return memo.set;
    const out = new Set<string>();
    for (const p of this.track.kept) {
      const rel = relativeTo(root, p);
      if (this.files.has(rel)) out.add(rel);
    }
    this.unchangedMemo = { root, kept: this.track.kept.size, files: this.files.size, set: out };
    return out;
  }

  private unchangedMemo: { root: string; kept: number; files: number; set: Set<string> } | undefined;

  /**
   * The planted files the copy kept (see unchanged), upper-relative, with the lstat the plant took of them: the
   * layer writer's walk then needs no lstat of its own (WriteBlobOptions.knownStats). The same inode, untouched
   * since: only nlink (+1, its planted name) and ctime differ, and the tar header uses neither (a planted inode
   * has no second name in the upper dir: the copier never links to a kept file).
   */
  keptStats(root: string): Map<string, Stats> {
    const out = new Map<string, Stats>();
    for (const rel of this.unchanged(root)) {
      const st = this.files.get(rel);
      if (st) out.set(rel, st);
    }
    return out;
  }

  /** After the copy, with the overlay unmounted: drop what the copy did not produce again. */
  async prune(upper: string, root: string): Promise<void> {
    const kept = new Set([...this.track.kept].map((p) => relativeTo(root, p)));
    const visited = new Set([...this.track.visited].map((p) => relativeTo(root, p)));
    const touched = new Map<string, Stats>();
    const touch = (rel: string): void => {
      const parent = dirname(rel);
      if (parent === '.' || touched.has(parent)) return;
      const st = lstatSync(join(upper, parent), { throwIfNoEntry: false });
      if (st) touched.set(parent, st);
    };
    for (const [rel, { ino }] of this.files) {
      if (kept.has(rel)) continue;
      const st = lstatSync(join(upper, rel), { throwIfNoEntry: false });
      if (st?.ino !== ino) continue; // replaced by the copy (or gone)
      touch(rel);
      unlinkSync(join(upper, rel));
    }
    for (const d of [...this.dirs].reverse()) {
      if (visited.has(d.rel)) continue;
      const p = join(upper, d.rel);
      let names: string[];
      try {
        names = readdirSync(p);
      } catch {
        continue;
      }
      if (names.length > 0) continue;
      touch(d.rel);
      rmdirSync(p);
      touched.delete(d.rel);
    }
    for (const [rel, st] of touched) {
      await lutimes(join(upper, rel), st.atime, st.mtime).catch(() => undefined);
    }
  }
}
