/**
 * S2I's working directory kept between builds of the same source and image name, and a tree sync into it. Why:
 * the build context is that directory (`upload/src` is the source's copy); a fresh temp dir each build gives every
 * file a new path root and inode, so kiln's stat cache misses and every source file is read and digested again.
 * Kept, and updated in place (unchanged files untouched: same inode, times), a warm build digests only what
 * changed — like `kiln build` on a checkout the service updates in place. A second build of the same pair running
 * at the same time gets a temp dir of its own (today's behaviour), never a shared one.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants, lstatSync, type Dirent, type Stats } from 'node:fs';
import {
  chmod,
  copyFile,
  link,
  lstat,
  lutimes,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { KilnError } from '../../errors.js';
// the xattrs a sync carries over are those kiln's COPY puts into a layer: the cold build's `cp -a` keeps them, a
// warm sync that dropped them made a different image
import { noteCopiedXattrs, noteWithoutCopiedXattrs, readCopiedXattrs } from '../../engine/context.js';
import { setXattrs, type XattrSet } from '../../layer/fsops.js';
import { homeDirs } from '../../util/paths.js';

/** A working dir for one build; `release` frees it (a kept dir stays for the next build, a temp dir goes). */
export interface S2IWorkDir {
  dir: string;
  /** True when this is the kept dir of the (source, image name) pair (its `upload/src` may hold an older copy). */
  kept: boolean;
  release(): Promise<void>;
}

const LOCK = '.lock';
/** What the kept copy was synced by: another (older) sync's copy is not trusted (syncTree keeps more since 2). */
const VERSION = '.sync-version';
const SYNC_VERSION = '2';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Take the lock file of `dir`: true when taken (a stale lock of a dead process is taken over). */
async function lock(dir: string): Promise<boolean> {
  const file = join(dir, LOCK);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(file, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
      await fh.writeFile(String(process.pid));
      await fh.close();
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return false;
      const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      // a pid we cannot judge (empty, ours from an earlier crash in another namespace) counts as held
      if (!Number.isInteger(pid) || pid <= 0 || alive(pid)) return false;
      await unlink(file).catch(() => undefined);
    }
  }
  return false;
}

/**
 * The working dir for building `source` (a directory or a git URL) as `tag`: the kept one when free, else a temp
 * dir under `$KILN_HOME/tmp`.
 */
export async function s2iWorkDir(home: string, source: string, tag: string | undefined): Promise<S2IWorkDir> {
  const key = /^[a-z]+:\/\//.test(source) || source.includes('#') ? source : resolve(source);
  const id = createHash('sha256')
    .update(`${key}\0${tag ?? ''}`)
    .digest('hex')
    .slice(0, 32);
  const dir = join(homeDirs(home).s2iWork, id);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if (await lock(dir)) {
    const version = join(dir, VERSION);
    if ((await readFile(version, 'utf8').catch(() => '')) !== SYNC_VERSION) {
      // a copy an older sync made may lack what this one keeps (xattrs, hard links): copied afresh
      await rm(join(dir, 'upload'), { recursive: true, force: true });
      await writeFile(version, SYNC_VERSION);
    }
    return { dir, kept: true, release: () => rm(join(dir, LOCK), { force: true }) };
  }
  const tmpBase = homeDirs(home).tmp;
  await mkdir(tmpBase, { recursive: true, mode: 0o700 });
  const tmp = await mkdtemp(join(tmpBase, 's2i-'));
  return { dir: tmp, kept: false, release: () => rm(tmp, { recursive: true, force: true }) };
}

/** Copy one file to `to` unless it is already there unchanged (size, mtime, mode); false when `from` is missing. */
export async function syncFile(from: string, to: string): Promise<boolean> {
  const fs = await lstat(from).catch(() => undefined);
  if (!fs?.isFile()) {
    await rm(to, { force: true });
    return false;
  }
  const ts = await lstat(to).catch(() => undefined);
  if (ts?.isFile() && same(fs, ts)) return true;
  if (ts) await rm(to, { recursive: true, force: true });
  await copyFile(from, to, constants.COPYFILE_FICLONE);
  await chmod(to, fs.mode & 0o7777);
  await utimes(to, fs.atime, fs.mtime);
  return true;
}

/**
 * A copy's mtime is its source's within a millisecond: utimes() takes a Date (milliseconds, through a double), so the
 * copy of `…204622905` ns may read back as `…203999999` — comparing truncated milliseconds re-copied about half of the
 * unchanged files of a warm sync (new ctime: kiln's stat cache then re-hashed them).
 */
const sameTime = (a: Stats, b: Stats): boolean => Math.abs(a.mtimeMs - b.mtimeMs) < 1;

const same = (a: Stats, b: Stats): boolean =>
  a.size === b.size && sameTime(a, b) && (a.mode & 0o7777) === (b.mode & 0o7777);

/** What one syncTree learns on its walk, for after it. */
interface SyncState {
  /** Source `dev:ino` of a multiply linked file this sync copied → its copy: its other names become links to it. */
  links: Map<string, string>;
  /** New copies (files, directories) whose source's xattrs are to be set on them: source → copy. */
  fresh: Map<string, string>;
  /** Kept directories whose source changed since (newer ctime): their xattrs are compared. Source → copy. */
  kept: Map<string, string>;
  /** Every copy this sync leaves (the root, directories, files, symlinks), for noteCopiedXattrs. */
  all: string[];
}

/**
 * Make `to` a copy of the tree `from` as `cp -a` makes it (the cold build's copy; a warm build must give the same
 * image): modes, mtimes, symlinks as links (never followed), hard links inside the tree, `user.*` and
 * `security.capability` xattrs, touching only what differs. A file whose size, mtime and mode match and whose
 * source has not changed since its copy was made (ctime: an xattr, link count or content change under the same
 * mtime) is left as it is (the stat cache then knows it); others are replaced, entries `from` lacks are removed.
 * The xattrs are read with one getfattr of what the walk copied, only when it copied something. Ownership is not
 * copied (S2I's COPY sets it). Sockets, fifos and devices are left out.
 */
export async function syncTree(from: string, to: string): Promise<void> {
  const state: SyncState = { links: new Map(), fresh: new Map(), kept: new Map(), all: [] };
  await syncDir(from, to, state);
  await syncXattrs(state);
}

/** The source changed after its copy was made: a chmod, setfattr, link or unlink of another name, a write. */
const newer = (src: Stats, copy: Stats): boolean => src.ctimeMs > copy.ctimeMs;

async function syncDir(from: string, to: string, state: SyncState): Promise<void> {
  const st = await lstat(from);
  const cur = await lstat(to).catch(() => undefined);
  if (!cur?.isDirectory()) {
    if (cur) await rm(to, { recursive: true, force: true });
    await mkdir(to, { mode: st.mode & 0o7777 });
    state.fresh.set(from, to);
  } else if (newer(st, cur)) state.kept.set(from, to);
  state.all.push(to);
  const [src, dst] = await Promise.all([
    readdir(from, { withFileTypes: true }),
    readdir(to, { withFileTypes: true }).catch(() => [] as Dirent[]),
  ]);
  const want = new Set(src.map((e) => e.name));
  let changed = false;
  for (const e of dst) {
    if (!want.has(e.name)) {
      await rm(join(to, e.name), { recursive: true, force: true });
      changed = true;
    }
  }
  // a warm sync is nothing but stats: synchronous ones (a few µs each) instead of two thread-pool round trips per
  // file — a 200-file warm sync 12–13 → 6–7 ms of CPU
  const stats = src.map((e) => [lstatSync(join(from, e.name)), lstatSync(join(to, e.name), { throwIfNoEntry: false })]);
  for (const [i, e] of src.entries()) {
    const f = join(from, e.name);
    const t = join(to, e.name);
    const [fs, ts] = stats[i] as [Stats, Stats | undefined];
    if (fs.isDirectory()) {
      if (!ts) changed = true;
      await syncDir(f, t, state);
      continue;
    }
    if (fs.isFile() || fs.isSymbolicLink()) state.all.push(t);
    if (fs.isSymbolicLink()) {
      const target = await readlink(f);
      // a link made again with the same target has a new mtime, which the layer holds
      if (ts?.isSymbolicLink() && sameTime(fs, ts) && (await readlink(t)) === target) continue;
      if (ts) await rm(t, { recursive: true, force: true });
      await symlink(target, t);
      await lutimes(t, fs.atime, fs.mtime).catch(() => undefined);
      changed = true;
    } else if (fs.isFile()) {
      if (ts?.isFile() && same(fs, ts) && !newer(fs, ts)) {
        if (fs.nlink <= 1) continue;
        // another name of it whose copy was gone (as .s2iignore or a moved .s2i/bin script leaves it) is linked to
        // this copy, or was copied before this name was seen: then this name becomes a link to that copy
        const id = `${fs.dev}:${fs.ino}`;
        const first = state.links.get(id);
        if (first === undefined) state.links.set(id, t);
        if (first === undefined || lstatSync(first).ino === ts.ino) continue;
        await rm(t, { force: true });
        await link(first, t);
        changed = true;
        continue;
      }
      if (ts) await rm(t, { recursive: true, force: true });
      changed = true;
      const id = fs.nlink > 1 ? `${fs.dev}:${fs.ino}` : undefined;
      const first = id === undefined ? undefined : state.links.get(id);
      if (first !== undefined) {
        await link(first, t);
        continue;
      }
      if (id !== undefined) state.links.set(id, t);
      await copyFile(f, t, constants.COPYFILE_FICLONE);
      await chmod(t, fs.mode & 0o7777);
      await utimes(t, fs.atime, fs.mtime);
      state.fresh.set(f, t);
    } else if (ts) {
      // sockets, fifos and devices are not copied (a build context never needs them); what was there goes
      await rm(t, { recursive: true, force: true });
      changed = true;
    }
  }
  const now = await lstat(to);
  if ((now.mode & 0o7777) !== (st.mode & 0o7777)) await chmod(to, st.mode & 0o7777);
  if (changed || !sameTime(now, st)) await utimes(to, st.atime, st.mtime);
}

/**
 * Set the copies' xattrs from their sources (setfattr changes no mtime): one getfattr, a setfattr when any. That
 * getfattr also reads the copies this sync left as they were, so that every copy's xattrs are then known and noted
 * (noteCopiedXattrs): the build's COPY of the tree takes them from there instead of a getfattr process of its own
 * walking the tree on the critical path (one helper process per warm S2I build less).
 */
async function syncXattrs(state: SyncState): Promise<void> {
  if (state.fresh.size === 0 && state.kept.size === 0) return;
  const touched = new Set([...state.fresh.values(), ...state.kept.values()]);
  const untouched = state.all.filter((t) => !touched.has(t));
  const read = [...state.fresh.keys(), ...state.kept.keys(), ...state.kept.values(), ...untouched];
  const found = await readCopiedXattrs(read);
  const sets: XattrSet[] = [];
  const removals: [string, string][] = [];
  for (const [pairs, fresh] of [
    [state.fresh, true],
    [state.kept, false],
  ] as const) {
    for (const [from, to] of pairs) {
      const want = found.get(from) ?? new Map<string, Buffer>();
      const have = fresh ? new Map<string, Buffer>() : (found.get(to) ?? new Map<string, Buffer>());
      for (const [name, value] of want) if (!have.get(name)?.equals(value)) sets.push({ path: to, name, value });
      for (const name of have.keys()) if (!want.has(name)) removals.push([to, name]);
    }
  }
  const failed = await setXattrs(sets);
  // what cp -a leaves out without a word (security.capability without CAP_SETFCAP, a file system without user
  // xattrs) a warm sync leaves out too — both builds then make the same image; anything else is an error
  const bad = failed.filter((l) => !/Operation not (supported|permitted)/.test(l));
  if (bad.length > 0) {
    throw new KilnError('S2I_SOURCE', `cannot copy the source's extended attributes: ${bad[0]}`, {
      hint: 'check the file system of the working dir under $KILN_HOME/s2i-work (space, permissions)',
    });
  }
  for (const [path, name] of removals) {
    await new Promise<void>((res, rej) =>
      execFile('setfattr', ['-h', '-x', name, '--', path], (err, _out, stderr) =>
        err
          ? rej(
              new KilnError('S2I_SOURCE', `cannot remove xattr ${name} of ${path}: ${stderr.trim() || err.message}`, {
                cause: err,
              }),
            )
          : res(),
      ),
    );
  }
  if (failed.length > 0) {
    // some could not be set (cp -a's silent cases above): what the copies carry is known only for the fresh copies
    // of sources without any — the build's context walk needs no getfattr of its own for them
    for (const [from, to] of state.fresh) if (!found.get(from)?.size) noteWithoutCopiedXattrs(to, lstatSync(to));
    return;
  }
  // every copy's xattrs now: its source's where this sync set them, else what was read (a name linked to another
  // copy may have been changed through that one: not noted)
  const now = new Map<string, ReadonlyMap<string, Buffer>>();
  for (const pairs of [state.fresh, state.kept])
    for (const [from, to] of pairs) now.set(to, found.get(from) ?? new Map<string, Buffer>());
  for (const to of state.all) {
    const st = lstatSync(to, { throwIfNoEntry: false });
    if (!st || (!st.isDirectory() && st.nlink > 1)) continue;
    noteCopiedXattrs(to, st, now.get(to) ?? found.get(to) ?? new Map<string, Buffer>());
  }
}
