/**
 * COPY (and the file-copy half of ADD) with BuildKit's semantics, re-implemented after dockerfile2llb's
 * dispatchCopy, the file-op backend (solver/llbsolver/file) and tonistiigi/fsutil's copy package:
 *
 * - Sources are relative to the source root (the build context, or another stage's / image's rootfs for --from);
 *   `..` never leaves it. A source is resolved following symlinks *inside* that root (FollowSymlinks), so a
 *   top-level symlink source copies what it points to; symlinks found while walking a directory are copied as
 *   symlinks.
 * - Wildcards use Go filepath.Match semantics on the part of the path from the first component with `*?[`; a
 *   wildcard matching nothing is not an error (AllowEmptyWildcard), a missing plain source is.
 * - A directory source copies its contents (CopyDirContentsOnly). The destination is relative to WORKDIR when not
 *   absolute (a trailing `/` is kept); `dest/` or an existing directory receives files by their base name, else
 *   the file is written as `dest`. Missing destination parents are created 0755 (or the --chmod mode, as
 *   fsutil does) and owned by the --chown user.
 * - Ownership: context files become 0:0 (the docker CLI resets uid/gid when sending the context), stage files keep
 *   theirs; --chown (`user`, `uid`, `user:group`, `uid:gid`; names from the destination's /etc/passwd and
 *   /etc/group) overrides both. --chmod (octal, or symbolic like `u+x,go-w`) applies to files and directories.
 *   mtimes are kept; hard links inside one source are kept; xattrs (`security.capability`, `user.*`) are copied.
 * - `.dockerignore`d context paths do not exist for COPY; `--exclude` patterns filter inside each source;
 *   `--parents` keeps the source path (relative to the root or to a `/./` pivot) under the destination.
 * - The destination root is the step's merged rootfs: existing symlinks on the destination path are resolved inside
 *   it, and nothing is ever written through a symlink out of it.
 * - `--link` (without --chmod): the copy goes into an empty root that is then laid over the destination like a
 *   layer (no symlink in the destination is followed; directories on the path take the new metadata).
 *   Deviation: --chown names are still resolved in the destination's /etc/passwd (BuildKit cannot, and fails or
 *   falls back to root depending on the driver).
 */
import { createHash } from 'node:crypto';
import {
  chmodSync,
  constants as fsc,
  copyFileSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  readlinkSync,
  statSync,
  symlinkSync,
  unlinkSync,
  type Stats,
} from 'node:fs';
import { chmod, copyFile, lchown, lstat, lutimes, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, posix, relative, resolve } from 'node:path';
import { KilnError } from '../errors.js';
import { byteOrder, readdirSortedSync } from '../util/order.js';
import { newMatcher, type Matcher } from '../dockerfile/index.js';
import {
  isRealRoot,
  mknodBatch,
  readXattrsRecursive,
  setXattrs,
  type MknodItem,
  type XattrSet,
} from '../layer/fsops.js';
import type { CopyRequest, CopySource, DirectCopyLayer, FileCopier } from './ports.js';
import { sourceKey, type CopyTrack } from './reuse.js';
import { LowerView, sameContent } from '../layer/writer.js';
import { copyFilesSync, type FileCopyJob } from '../layer/filecopy.js';
import { copyFilesOffThread, warmUpWorker } from '../layer/worker.js';
import { debugMark } from '../util/debug.js';
export { copyRequest } from './ports.js';
import { secureJoin } from './rootfs.js';
import { AddSupport, isGitSource, isUrlSource } from './add.js';
import {
  COPIED_XATTRS,
  contextWalkStats,
  knownCopiedXattrs,
  hashContextPaths,
  prefetchContextHashes,
  contextTreeXattrs,
  sha256File,
  statCacheStats,
  type BuildContext,
} from './context.js';

// ---------------------------------------------------------------------------------------------------------------
// Go filepath.Match

/** Compile a Go filepath.Match pattern into an anchored RegExp, or null when the pattern is malformed. */
export function goMatchRegExp(pattern: string): RegExp | null {
  let re = '^';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '\\') {
      i++;
      if (i >= pattern.length) return null;
      re += escapeRe(pattern[i]!);
    } else if (c === '[') {
      let j = i + 1;
      let cls = '[';
      if (pattern[j] === '^') {
        cls += '^';
        j++;
      }
      let n = 0;
      for (; j < pattern.length && (pattern[j] !== ']' || n === 0); j++) {
        let lo = pattern[j]!;
        if (lo === '\\') {
          j++;
          if (j >= pattern.length) return null;
          lo = pattern[j]!;
        }
        if (lo === ']' && n === 0) return null;
        cls += escapeRe(lo);
        if (pattern[j + 1] === '-' && pattern[j + 2] !== undefined && pattern[j + 2] !== ']') {
          let hi = pattern[j + 2]!;
          j += 2;
          if (hi === '\\') {
            j++;
            if (j >= pattern.length) return null;
            hi = pattern[j]!;
          }
          if (hi < lo) return null;
          cls += '-' + escapeRe(hi);
        }
        n++;
      }
      if (j >= pattern.length || n === 0) return null;
      re += cls + ']';
      i = j;
    } else re += escapeRe(c);
  }
  return new RegExp(re + '$', 's');
}

function escapeRe(c: string): string {
  return /[\\^$.*+?()[\]{}|/-]/.test(c) ? '\\' + c : c;
}

export function containsWildcards(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const ch = name[i];
    if (ch === '\\') i++;
    else if (ch === '*' || ch === '?' || ch === '[') return true;
  }
  return false;
}

/** Split a cleaned path into the part before the first wildcard component and the rest (fsutil splitWildcards). */
export function splitWildcards(p: string): [string, string] {
  const parts = p.split('/').filter((x) => x !== '');
  const i = parts.findIndex((x) => containsWildcards(x));
  if (i < 0) return [parts.join('/'), ''];
  return [parts.slice(0, i).join('/'), parts.slice(i).join('/')];
}

// ---------------------------------------------------------------------------------------------------------------
// Paths inside a root

/**
 * Resolve `p` (container path) inside `root` with chroot semantics. When `followFinal` is false the last component
 * is not resolved (so a symlink there is the symlink itself).
 */
export async function rootPath(root: string, p: string, followFinal: boolean): Promise<string> {
  const clean = posix.normalize('/' + p);
  if (clean === '/') return root;
  if (followFinal) return secureJoin(root, clean);
  const dir = posix.dirname(clean);
  return join(await secureJoin(root, dir), posix.basename(clean));
}

/** Clean a user-given path like Go's filepath.Clean('/' + p), keeping nothing above '/'. */
export function cleanRel(p: string): string {
  return posix
    .normalize('/' + p)
    .replace(/^\/+/, '')
    .replace(/\/+$/, '');
}

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await lstat(p);
  } catch (e) {
    if (errCode(e) === 'ENOENT' || errCode(e) === 'ENOTDIR') return null;
    throw e;
  }
}

async function statOrNull(p: string): Promise<Stats | null> {
  try {
    return await stat(p);
  } catch (e) {
    if (errCode(e) === 'ENOENT' || errCode(e) === 'ENOTDIR' || errCode(e) === 'ELOOP') return null;
    throw e;
  }
}

export interface Owner {
  uid: number;
  gid: number;
}

/**
 * fsutil MkdirAll on a host path inside `root` (already resolved with rootPath): creates the missing directories
 * with `perm` (chmod'ed, ignoring the umask) and `owner` when given. Returns the created dirs (outermost first).
 */
export async function mkdirAllIn(root: string, hostPath: string, perm: number, owner?: Owner): Promise<string[]> {
  const st = await statOrNull(hostPath);
  if (st) {
    if (st.isDirectory()) return [];
    throw new KilnError('COPY_FAILED', `mkdir ${displayPath(root, hostPath)}: not a directory`);
  }
  const rel = hostPath.slice(root.length).split('/').filter(Boolean);
  const created: string[] = [];
  let cur = root;
  for (const c of rel) {
    cur = join(cur, c);
    const s = await lstatOrNull(cur);
    if (s?.isDirectory()) continue;
    if (s) throw new KilnError('COPY_FAILED', `mkdir ${displayPath(root, cur)}: not a directory`);
    await mkdir(cur);
    await chmod(cur, perm);
    if (owner) await lchown(cur, owner.uid, owner.gid);
    created.push(cur);
  }
  return created;
}

function displayPath(root: string, host: string): string {
  return '/' + host.slice(root.length).replace(/^\/+/, '');
}

// ---------------------------------------------------------------------------------------------------------------
// --chown / --chmod

function parsePasswdLike(text: string | undefined): { name: string; a: number; b: number }[] {
  const out: { name: string; a: number; b: number }[] = [];
  for (const line of (text ?? '').split('\n')) {
    const f = line.split(':');
    if (f.length < 3 || f[0] === '' || line.startsWith('#')) continue;
    out.push({ name: f[0]!, a: Number(f[2]), b: Number(f[3] ?? NaN) });
  }
  return out;
}

async function readRootFile(root: string, p: string): Promise<string | undefined> {
  try {
    const host = await rootPath(root, p, true);
    const st = await lstat(host);
    if (!st.isFile() || st.size > 10 << 20) return undefined;
    const { readFile } = await import('node:fs/promises');
    return await readFile(host, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Resolve a --chown value against the destination root (BuildKit readUser): `uid` → uid:uid, `name` → the
 * passwd entry's uid and primary gid, `:group`/`user:group` with numeric or named groups.
 */
export async function resolveChown(spec: string, destRoot: string): Promise<Owner | undefined> {
  if (spec === '') return undefined;
  const i = spec.indexOf(':');
  const u = i >= 0 ? spec.slice(0, i) : spec;
  const g = i >= 0 ? spec.slice(i + 1) : undefined;
  let uid = 0;
  let gid = 0;
  if (u !== '') {
    if (/^\d+$/.test(u)) {
      uid = Number(u);
      gid = uid;
    } else {
      const e = parsePasswdLike(await readRootFile(destRoot, '/etc/passwd')).find((x) => x.name === u);
      if (!e) {
        throw new KilnError('USER_UNKNOWN', `unable to find user ${u}: no matching entries in passwd file`, {
          hint: 'use a numeric --chown=UID:GID or create the user in an earlier step',
        });
      }
      uid = e.a;
      gid = Number.isFinite(e.b) ? e.b : 0;
    }
  }
  if (g !== undefined && g !== '') {
    if (/^\d+$/.test(g)) gid = Number(g);
    else {
      const e = parsePasswdLike(await readRootFile(destRoot, '/etc/group')).find((x) => x.name === g);
      if (!e) {
        throw new KilnError('GROUP_UNKNOWN', `unable to find group ${g}: no matching entries in group file`, {
          hint: 'use a numeric group id or create the group in an earlier step',
        });
      }
      gid = e.a;
    }
  }
  return { uid, gid };
}

/**
 * A --chmod value: a function from the source mode (07777 bits + dir flag) to the new 07777 bits; `octal` is set
 * for numeric modes (fsutil also uses those for the destination directories it creates; symbolic modes do not).
 */
export type ModeFn = ((mode: number, isDir: boolean) => number) & { octal?: number };

/** Parse --chmod like BuildKit: octal up to 07777, or a symbolic mode (chmod(1) syntax, umask 0). */
export function parseChmod(s: string): ModeFn | undefined {
  if (s === '') return undefined;
  if (/^\d+$/.test(s)) {
    const v = /^[0-7]+$/.test(s) ? parseInt(s, 8) : NaN;
    if (!Number.isFinite(v) || v > 0o7777) {
      throw new KilnError(
        'COPY_CHMOD',
        `invalid chmod parameter: '${s}'. it should be octal string and between 0 and 07777`,
      );
    }
    return Object.assign(() => v, { octal: v });
  }
  const clauses = s.split(',').map((c) => {
    const m = /^([ugoa]*)((?:[-+=][rwxXst]*)+)$/.exec(c);
    if (!m) throw new KilnError('COPY_CHMOD', `invalid chmod parameter: '${s}'`);
    const who = m[1] === '' || m[1]!.includes('a') ? 'ugo' : m[1]!;
    const ops = [...m[2]!.matchAll(/([-+=])([rwxXst]*)/g)].map((x) => ({ op: x[1]!, perms: x[2]! }));
    return { who, ops };
  });
  return (mode, isDir) => {
    let m = mode & 0o7777;
    for (const { who, ops } of clauses) {
      for (const { op, perms } of ops) {
        let bits = 0;
        const anyX = isDir || (m & 0o111) !== 0;
        for (const w of who) {
          const shift = w === 'u' ? 6 : w === 'g' ? 3 : 0;
          if (perms.includes('r')) bits |= 4 << shift;
          if (perms.includes('w')) bits |= 2 << shift;
          if (perms.includes('x') || (perms.includes('X') && anyX)) bits |= 1 << shift;
          if (perms.includes('s') && w === 'u') bits |= 0o4000;
          if (perms.includes('s') && w === 'g') bits |= 0o2000;
          if (perms.includes('t') && w === 'o') bits |= 0o1000;
        }
        let mask = 0;
        for (const w of who) {
          if (w === 'u') mask |= 0o4700;
          if (w === 'g') mask |= 0o2070;
          if (w === 'o') mask |= 0o1007;
        }
        if (op === '+') m |= bits;
        else if (op === '-') m &= ~bits;
        else m = (m & ~mask) | bits;
      }
    }
    return m;
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Source resolution

/** One resolved source: a path relative to its root and the host path after following symlinks in the root. */
export interface SourceMatch {
  /** Path as matched, relative to the source root (no leading '/'). */
  rel: string;
  /** Host path with symlinks followed inside the root. */
  abs: string;
  st: Stats;
  /**
   * For --parents: the source is the pivot directory (the root, or the part before `/./`) and only paths matching
   * this pattern (patternmatcher semantics, `**` allowed, relative to the pivot) are copied, with their parents.
   */
  include?: Matcher;
}

/** The xattrs a copy carries over (TreeCopier.loadXattrs). */
function readSourceXattrs(paths: string[]): Promise<Map<string, Map<string, Buffer>>> {
  return readXattrsRecursive(paths, COPIED_XATTRS);
}

interface SourceCtx {
  root: string;
  ignore: Matcher | undefined;
  kind: CopySource['kind'];
  /** Context sources: the lstats of the hash walk that computed the step's key (contextWalkStats). */
  stats?: ReadonlyMap<string, Stats> | undefined;
  /** Context sources: xattr reads started at the checksum, by their paths joined with NUL (taken once). */
  xattrs?: Map<string, Promise<Map<string, Map<string, Buffer>>>> | undefined;
}

function isIgnored(ctx: SourceCtx, rel: string, isDir: boolean): boolean {
  if (!ctx.ignore || rel === '') return false;
  if (!ctx.ignore.matches(rel, isDir)) return false;
  return !(isDir && ctx.ignore.mayContainIncluded(rel));
}

/** Walk `base` (host dir, rel path `baseRel`) in lexical order, matching `re` against paths relative to base. */
async function walkMatch(ctx: SourceCtx, base: string, baseRel: string, re: RegExp, out: SourceMatch[]): Promise<void> {
  const visit = async (dirAbs: string, relFromBase: string): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(dirAbs);
    } catch {
      return;
    }
    names.sort(byteOrder);
    for (const n of names) {
      const r = relFromBase ? `${relFromBase}/${n}` : n;
      const abs = join(dirAbs, n);
      const st = await lstat(abs);
      const rootRel = baseRel ? `${baseRel}/${r}` : r;
      if (isIgnored(ctx, rootRel, st.isDirectory())) continue;
      if (re.test(r)) {
        out.push({ rel: rootRel, abs, st });
        continue; // a matched directory is not descended (filepath.SkipDir)
      }
      if (st.isDirectory()) await visit(abs, r);
    }
  };
  await visit(base, '');
}

function notFound(ctx: SourceCtx, src: string): KilnError {
  const where = ctx.kind === 'context' ? 'build context' : 'the source stage or image';
  return new KilnError('COPY_SOURCE_NOT_FOUND', `COPY failed: "${src}" not found in ${where}`, {
    hint:
      ctx.kind === 'context'
        ? 'check the path is relative to the build context and not excluded by .dockerignore'
        : 'check the path exists in the --from stage or image',
  });
}

/** Resolve one COPY source argument to its matches (following symlinks inside the root for each match). */
export async function resolveSource(ctx: SourceCtx, src: string): Promise<SourceMatch[]> {
  const clean = cleanRel(src);
  const [d1, d2] = splitWildcards(clean);
  if (d2 === '') {
    if (clean !== '' && isIgnored(ctx, clean, false) && isIgnored(ctx, clean, true)) throw notFound(ctx, src);
    const abs = await rootPath(ctx.root, clean, true);
    const st = await lstatOrNull(abs);
    if (!st) throw notFound(ctx, src);
    const realRel = abs.slice(ctx.root.length).replace(/^\/+/, '');
    if (realRel !== clean && realRel !== '' && isIgnored(ctx, realRel, st.isDirectory())) throw notFound(ctx, src);
    return [{ rel: clean, abs, st }];
  }
  const re = goMatchRegExp(d2);
  if (!re) return [];
  const base = await rootPath(ctx.root, d1, true);
  const bst = await lstatOrNull(base);
  if (!bst?.isDirectory()) return [];
  const matches: SourceMatch[] = [];
  await walkMatch(ctx, base, d1, re, matches);
  // FollowSymlinks: each match is followed inside the root.
  for (const m of matches) {
    if (m.st.isSymbolicLink()) {
      const abs = await rootPath(ctx.root, m.rel, true);
      const st = await lstatOrNull(abs);
      if (!st) throw notFound(ctx, m.rel);
      m.abs = abs;
      m.st = st;
    }
  }
  return matches;
}

// ---------------------------------------------------------------------------------------------------------------
// The copier

export interface CopyOptions {
  owner?: Owner;
  mode?: ModeFn;
  exclude?: Matcher;
  /** Context files are sent with uid/gid 0. */
  resetOwner: boolean;
  ignore?: Matcher;
  /** Path of the source root relative to the context root (for ignore matching), when the source is the context. */
  warn: (msg: string) => void;
  /** The destination was planted with the previous build's result (src/engine/reuse.ts): keep identical files. */
  track?: CopyTrack;
  /**
   * Copies a batch of new regular files elsewhere (the layer worker thread: copyFilesOffThread), or returns undefined
   * and the copier does it itself. With it, files are copied in batches behind the walk, and every directory's
   * post-order metadata (mode, owner, times — the mtime its new entries changed) waits until they are all written.
   */
  offload?: (jobs: FileCopyJob[]) => Promise<void> | undefined;
}

/** New files per batch handed to CopyOptions.offload (or copied in place when it declines). */
const FILE_BATCH = 64;

interface ParentDir {
  src: string;
  dst: string;
  copied: boolean;
}

/** Copies one resolved source into a destination path (fsutil copier). */
export class TreeCopier {
  private readonly inodes = new Map<string, string>();
  private readonly parents: ParentDir[] = [];
  readonly xattrs: XattrSet[] = [];
  private srcXattrs = new Map<string, Map<string, Buffer>>();
  private warnedDevices = false;
  private ops = 0;
  /** CopyOptions.offload: new files not yet handed out, batches in flight, directory metadata held back. */
  private batch: FileCopyJob[] = [];
  private readonly inFlight: Promise<void>[] = [];
  private readonly dirInfos: (() => Promise<void>)[] = [];
  /** New files copied in batches: here, and handed to CopyOptions.offload. */
  readonly batched = { here: 0, away: 0 };
  /** Include matcher of the source being copied (--parents). */
  include: Matcher | undefined;

  constructor(
    private readonly opts: CopyOptions,
    private readonly ctx: SourceCtx,
  ) {}

  async loadXattrs(paths: string[]): Promise<void> {
    if (paths.length === 0) return;
    const key = paths.join('\0');
    const early = this.ctx.xattrs?.get(key);
    this.ctx.xattrs?.delete(key);
    for (const [k, v] of await (early ?? readSourceXattrs(paths))) {
      const kept = new Map([...v].filter(([n]) => !n.startsWith('user.overlay.')));
      if (kept.size) this.srcXattrs.set(k, kept);
    }
  }

  private owner(st: Stats): Owner {
    if (this.opts.owner) return this.opts.owner;
    if (this.opts.resetOwner) return { uid: 0, gid: 0 };
    return { uid: st.uid, gid: st.gid };
  }

  private mode(st: Stats): number {
    const m = st.mode & 0o7777;
    return this.opts.mode ? this.opts.mode(m, st.isDirectory()) : m;
  }

  private async copyFileInfo(st: Stats, src: string, target: string): Promise<void> {
    const o = this.owner(st);
    lchownSync(target, o.uid, o.gid);
    if (!st.isSymbolicLink()) chmodSync(target, this.mode(st));
    lutimesSync(target, st.atime, st.mtime);
    const x = this.srcXattrs.get(src);
    if (x && (st.isFile() || st.isDirectory())) {
      for (const [name, value] of x) this.xattrs.push({ path: target, name, value });
    }
  }

  /**
   * Copy `src` (host path; `comps` its path relative to the copy source, '' at the top; `ctxRel` relative to the
   * context root for .dockerignore) to `target`.
   */
  async copy(src: string, comps: string, ctxRel: string, target: string, overwriteMeta: boolean): Promise<void> {
    let include = true;
    if (comps !== '') {
      // --parents include pattern: non-matching dirs are walked (created only if something inside is copied)
      if (this.include && !this.include.matches(comps)) include = false;
      const ex = this.opts.exclude;
      const ig = this.ctx.ignore;
      const exM = ex ? ex.matches(comps) : false;
      const igM = ig && this.ctx.kind === 'context' ? ig.matches(ctxRel) : false;
      if (exM || igM) {
        include = false;
        const mayInclude = (!exM || ex!.mayContainIncluded(comps)) && (!igM || ig!.mayContainIncluded(ctxRel));
        if (!mayInclude) return;
      }
    }
    // Synchronous syscalls per entry (much cheaper than threadpool round trips); yield now and then.
    if (++this.ops % 256 === 0) await new Promise((r) => setImmediate(r));
    const st = this.ctx.stats?.get(src) ?? lstatSync(src);
    if (!include && !st.isDirectory()) return;
    if (include) await this.createParentDirs();
    const track = this.opts.track;
    if (include && track?.planted && st.isFile() && st.nlink === 1 && !this.srcXattrs.has(src)) {
      // Planted from the previous build and copied there from this very source (same key), by the same instruction
      // on the same parent: the file is what this copy would write — no need to look at it.
      const rel = this.relTarget(target);
      const key = sourceKey(st);
      if (track.planted.has(rel) && track.previous?.get(rel) === key) {
        track.kept.add(target);
        track.sources.set(target, key);
        return;
      }
    }
    const targetSt = lstatSync(target, { throwIfNoEntry: false }) ?? null;

    if (!st.isDirectory()) {
      if (targetSt) {
        if (targetSt.isDirectory()) {
          throw new KilnError(
            'COPY_FAILED',
            `cannot replace to directory ${displayPath(this.destRoot, target)} with file`,
          );
        }
        if (include && track && this.alreadyThere(st, src, targetSt, target)) {
          track.kept.add(target);
          track.sources.set(target, sourceKey(st));
          return;
        }
        unlinkSync(target);
        track?.planted?.delete(this.relTarget(target)); // not the planted file any more
      }
    }
    let copyInfo = include;
    let restoreTime = false;
    if (st.isDirectory()) {
      const parent: ParentDir = { src, dst: target, copied: false };
      let created = false;
      if (include) {
        created = await this.copyDirectoryOnly(target, st, overwriteMeta);
        parent.copied = true;
      }
      this.parents.push(parent);
      try {
        const names = readdirSortedSync(src);
        for (const n of names) {
          await this.copy(
            join(src, n),
            comps ? `${comps}/${n}` : n,
            ctxRel ? `${ctxRel}/${n}` : n,
            join(target, n),
            true,
          );
        }
      } finally {
        this.parents.pop();
      }
      if (!overwriteMeta) {
        copyInfo = created;
        restoreTime = !created;
      }
    } else if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? this.inodes.get(key) : undefined;
      if (first) linkSync(first, target);
      else if (this.opts.offload && st.nlink === 1 && st.size <= 1 << 20 && copyInfo) {
        // a new file: copied (with its owner, mode and times) in a batch, possibly on the other core
        const o = this.owner(st);
        this.batch.push({
          src,
          dst: target,
          uid: o.uid,
          gid: o.gid,
          mode: this.mode(st),
          atime: st.atime.getTime() / 1000,
          mtime: st.mtime.getTime() / 1000,
        });
        this.opts.track?.sources.set(target, sourceKey(st));
        const x = this.srcXattrs.get(src);
        if (x) for (const [name, value] of x) this.xattrs.push({ path: target, name, value });
        if (this.batch.length >= FILE_BATCH) this.dispatch();
        return;
      } else {
        if (st.size <= 1 << 20) copyFileSync(src, target, fsc.COPYFILE_EXCL);
        else await copyFile(src, target, fsc.COPYFILE_EXCL);
        if (st.nlink > 1) this.inodes.set(key, target);
        this.opts.track?.sources.set(target, sourceKey(st));
      }
    } else if (st.isSymbolicLink()) {
      symlinkSync(readlinkSync(src), target);
    } else if (st.isSocket()) {
      return;
    } else {
      // devices and fifos
      if (!st.isFIFO() && !isRealRoot()) {
        if (!this.warnedDevices)
          this.opts.warn(`device node ${comps || src} skipped: creating devices needs real root`);
        this.warnedDevices = true;
        return;
      }
      await mknodBatch([nodeLike(target, st)]);
    }
    if (this.opts.offload && st.isDirectory()) {
      // after the files inside it are written (flush), in the order the walk reached them
      if (copyInfo) this.dirInfos.push(() => this.copyFileInfo(st, src, target));
      else if (restoreTime && targetSt) this.dirInfos.push(() => lutimes(target, st.atime, st.mtime));
    } else if (copyInfo) await this.copyFileInfo(st, src, target);
    else if (restoreTime && targetSt) await lutimes(target, st.atime, st.mtime);
  }

  /** Hand the pending batch of new files to CopyOptions.offload, or copy it now when it declines. */
  private dispatch(): void {
    const jobs = this.batch;
    this.batch = [];
    if (jobs.length === 0) return;
    const away = this.opts.offload?.(jobs);
    if (!away) {
      copyFilesSync(jobs);
      this.batched.here += jobs.length;
      return;
    }
    this.batched.away += jobs.length;
    away.catch(() => undefined); // awaited in flush
    this.inFlight.push(away);
  }

  /**
   * Write every file still pending, wait for the batches in flight, then apply the held-back directory metadata.
   * Called after each copy() from the top (and on failure: nothing is left writing into the snapshot).
   */
  async flush(): Promise<void> {
    let err: unknown;
    try {
      this.dispatch();
    } catch (e) {
      err = e;
    }
    for (const r of await Promise.allSettled(this.inFlight.splice(0))) if (r.status === 'rejected') err ??= r.reason;
    if (err !== undefined) {
      this.dirInfos.length = 0;
      throw err;
    }
    for (const f of this.dirInfos.splice(0)) await f();
  }

  destRoot = '/';

  /** `target` relative to destRoot (how CopyTrack's previous/planted name files). */
  private relTarget(target: string): string {
    const root = this.destRoot.endsWith('/') ? this.destRoot : this.destRoot + '/';
    return target.startsWith(root) ? target.slice(root.length) : relative(this.destRoot, target);
  }

  /**
   * Is `target` (planted from the previous build) exactly the file this copy would write: a regular file with the
   * same size, owner, mode, mtime (the millisecond lutimes keeps) and bytes, and no xattrs or extra names to copy?
   */
  private alreadyThere(st: Stats, src: string, t: Stats, target: string): boolean {
    if (!st.isFile() || !t.isFile() || st.nlink > 1 || this.srcXattrs.has(src) || t.size !== st.size) return false;
    const o = this.owner(st);
    if (t.uid !== o.uid || t.gid !== o.gid || (t.mode & 0o7777) !== this.mode(st)) return false;
    if (Math.abs(t.mtimeMs - st.mtime.getTime()) >= 1) return false;
    // (a planted file copied from this very source last time never gets here: copy() keeps it without a look)
    return sameContent(src, target);
  }

  // Synchronous like the file copies: a directory is a couple of cheap syscalls, not worth thread-pool round trips.
  private async copyDirectoryOnly(dst: string, st: Stats, overwriteMeta: boolean): Promise<boolean> {
    this.opts.track?.visited.add(dst);
    const t = lstatSync(dst, { throwIfNoEntry: false });
    if (!t) {
      mkdirSync(dst);
      return true;
    }
    if (!t.isDirectory()) {
      throw new KilnError('COPY_FAILED', `cannot copy to non-directory: ${displayPath(this.destRoot, dst)}`);
    }
    if (overwriteMeta) chmodSync(dst, this.mode(st));
    return false;
  }

  private async createParentDirs(): Promise<void> {
    for (const p of this.parents) {
      if (p.copied) continue;
      const st = statSync(p.src);
      const created = await this.copyDirectoryOnly(p.dst, st, true);
      if (created) await this.copyFileInfo(st, p.src, p.dst);
      p.copied = true;
    }
  }
}

/** BuildKit's pathRelativeToWorkingDir: absolute, trailing slash kept ("." and "" mean WORKDIR/). */
export function destPath(dest: string, workdir: string): string {
  let p = dest;
  if (!p.startsWith('/')) {
    if (p === '.' || p === '') p = './';
    p = posix.join(workdir || '/', p) + (p.endsWith('/') || p.endsWith('/.') ? '/' : '');
  }
  const trailing = p.endsWith('/') || p.endsWith('/.');
  let clean = posix.normalize(p);
  if (trailing && !clean.endsWith('/')) clean += '/';
  return clean;
}

/**
 * Copy the matched sources into `destRoot` at `dest` (absolute, as from destPath). Implements fsutil Copy():
 * destination parents, the "into a directory or as the named file" rule, and the tree copy.
 */
export async function copyMatches(
  matches: SourceMatch[],
  dest: string,
  destRoot: string,
  opts: CopyOptions,
  ctx: SourceCtx,
  dirContents = true,
): Promise<void> {
  const perm = (opts.mode?.octal ?? 0o755) & 0o777; // Go: os.FileMode(n) keeps only the permission bits
  // ensureDstPath: the parent of dest, or dest itself when it ends with '/'.
  const ensure = dest.endsWith('/') ? dest : posix.dirname(dest);
  await mkdirAllIn(destRoot, await rootPath(destRoot, ensure, true), perm, opts.owner);
  const dstResolved = await rootPath(destRoot, dest, true);
  const tc = new TreeCopier(opts, ctx);
  tc.destRoot = destRoot;
  await tc.loadXattrs(matches.map((m) => m.abs));
  for (const m of matches) {
    const ctxRel = m.abs === ctx.root ? '' : m.abs.slice(ctx.root.length + 1);
    let target = dstResolved;
    const fiDest = await statOrNull(target);
    const isDir = m.st.isDirectory();
    if ((!dirContents && isDir && fiDest) || (!isDir && fiDest?.isDirectory())) {
      target = join(target, posix.basename(m.rel) || posix.basename(m.abs));
    }
    const parentTarget = isDir && dirContents && !fiDest ? target : posix.dirname(target);
    await mkdirAllIn(destRoot, parentTarget, perm, opts.owner);
    tc.include = m.include;
    try {
      await tc.copy(m.abs, '', ctxRel, target, false);
    } catch (e) {
      await tc.flush().catch(() => undefined);
      throw e;
    }
    await tc.flush();
  }
  if (tc.batched.away > 0)
    debugMark(`copy: ${tc.batched.away} of ${tc.batched.away + tc.batched.here} new files on the worker`);
  const problems = await setXattrs(tc.xattrs);
  if (problems.length) opts.warn(`some extended attributes could not be copied: ${problems[0]}`);
}

/** Build a CopyOptions object for a request. */
export async function copyOptionsFor(
  req: CopyRequest,
  src: CopySource,
  destRoot: string,
  ignore: Matcher | undefined,
  warn: (m: string) => void,
): Promise<CopyOptions> {
  const o: CopyOptions = { resetOwner: src.kind === 'context', warn };
  const owner = await resolveChown(req.chown, destRoot);
  if (owner) o.owner = owner;
  const mode = parseChmod(req.chmod);
  if (mode) o.mode = mode;
  if (req.exclude.length) o.exclude = newMatcher(req.exclude);
  if (ignore && src.kind === 'context') o.ignore = ignore;
  return o;
}

/** Matches for all non-URL sources of a request, in order; `--parents` computes each match's kept path. */
export async function resolveRequestSources(
  req: CopyRequest,
  src: CopySource,
  ignore: Matcher | undefined,
): Promise<SourceMatch[]> {
  const ctx: SourceCtx = { root: src.dir, ignore: src.kind === 'context' ? ignore : undefined, kind: src.kind };
  const out: SourceMatch[] = [];
  for (const s of req.sources) {
    if (isUrlSource(s) || isGitSource(s)) continue;
    if (req.parents) {
      // BuildKit: copy the pivot (root, or the part before `/./`) with IncludePatterns=[pattern]; a pattern
      // without wildcards is a required path.
      const cut = s.indexOf('/./');
      const pivot = cut >= 0 ? cleanRel(s.slice(0, cut)) : '';
      const pattern = cleanRel(cut >= 0 ? s.slice(cut + 3) : s);
      const full = pivot ? `${pivot}/${pattern}` : pattern;
      if (!containsWildcards(full)) await resolveSource(ctx, full); // throws "not found"
      const pivots = await resolveSource(ctx, pivot);
      const include = newMatcher([pattern]);
      for (const m of pivots) if (m.st.isDirectory()) out.push({ ...m, include });
      continue;
    }
    out.push(...(await resolveSource(ctx, s)));
  }
  return out;
}

/** Hash a file tree for the cache key: paths, types, modes, link targets and content (sha256), in walk order. */
async function hashTree(
  abs: string,
  rel: string,
  h: ReturnType<typeof createHash>,
  withOwner: boolean,
  include?: Matcher,
): Promise<void> {
  const st = lstatSync(abs);
  const type = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : st.isFile() ? 'f' : 'o';
  if (include && rel !== '' && !include.matches(rel)) {
    // --parents: only included paths count; directories are walked for included descendants
    if (type === 'd') {
      const names = readdirSortedSync(abs);
      for (const n of names) await hashTree(join(abs, n), `${rel}/${n}`, h, withOwner, include);
    }
    return;
  }
  h.update(`${rel}\0${type}\0${(st.mode & 0o7777).toString(8)}\0`);
  if (withOwner) h.update(`${st.uid}:${st.gid}\0`);
  if (type === 'l') h.update(`${readlinkSync(abs)}\0`);
  else if (type === 'f') h.update(`${st.size}\0${await sha256File(abs, st.size)}\0`);
  else if (type === 'd') {
    const names = readdirSortedSync(abs);
    for (const n of names) await hashTree(join(abs, n), rel ? `${rel}/${n}` : n, h, withOwner, include);
  }
  h.update('\n');
}

export interface LocalFileCopierOptions {
  /** The loaded build context (its .dockerignore and stat cache are used for context sources). */
  context?: BuildContext;
  /** Explicit ignore matcher (when no BuildContext is given). */
  ignore?: Matcher;
  /** Scratch space for ADD downloads. */
  tmpDir?: string;
  onWarning?: (msg: string) => void;
  /**
   * Where batches of new files may be copied (CopyOptions.offload); default: the layer worker thread when it runs.
   * false: all on this thread — the restricted level, whose helper emulates chown for the process it supervises.
   */
  offload?: CopyOptions['offload'] | false;
}

/** A COPY writing at least this many new files starts the worker thread to copy some of them there. */
const MANY_FILES = 500;

/** Do the context walk's stats hold at least MANY_FILES regular files under the matched directories? */
function manyFiles(matches: SourceMatch[], stats: ReadonlyMap<string, Stats> | undefined): boolean {
  if (!stats || stats.size < MANY_FILES) return false;
  const dirs = matches.filter((m) => m.st.isDirectory()).map((m) => m.abs + '/');
  if (dirs.length === 0) return false;
  let n = 0;
  for (const [p, st] of stats) if (st.isFile() && dirs.some((d) => p.startsWith(d)) && ++n >= MANY_FILES) return true;
  return false;
}

/** The engine's FileCopier: COPY and ADD into a merged rootfs. */
export class LocalFileCopier implements FileCopier {
  private readonly add: AddSupport;
  private readonly warn: (m: string) => void;

  constructor(private readonly opts: LocalFileCopierOptions = {}) {
    this.warn = opts.onWarning ?? ((m) => process.stderr.write(`kiln: warning: ${m}\n`));
    this.add = new AddSupport(opts.tmpDir);
  }

  private get ignore(): Matcher | undefined {
    return this.opts.context?.ignore ?? this.opts.ignore;
  }

  /**
   * getfattr of a COPY's context sources, started with its checksum: on a miss the copy needs them, and the read
   * (a process walking every file) then runs while the step's snapshot is prepared. Keyed like loadXattrs' paths.
   */
  private readonly earlyXattrs = new Map<string, Promise<Map<string, Map<string, Buffer>>>>();

  async checksum(req: CopyRequest, src: CopySource): Promise<string> {
    validateSources(req);
    const h = createHash('sha256');
    const matches = await resolveRequestSources(req, src, this.ignore);
    const ctxPaths: string[] = [];
    for (const m of matches) {
      h.update(`src:${m.rel}\0${m.include ? m.include.patterns.join('\0') : ''}\n`);
      if (src.kind === 'context' && this.opts.context && !m.include) ctxPaths.push(m.abs);
      else await hashTree(m.abs, '', h, src.kind !== 'context', m.include);
    }
    const read = statCacheStats.misses;
    if (ctxPaths.length && this.opts.context)
      h.update(await hashContextPaths(this.opts.context, ctxPaths, req.exclude));
    // only when the walk read files (the stat cache missed: something changed, the step will likely run), or a hash
    // walk of this tree (the build's prefetch) already read them all
    const tree =
      ctxPaths.length === 1 && this.opts.context
        ? contextTreeXattrs(this.opts.context, ctxPaths[0] as string)
        : undefined;
    if (ctxPaths.length && (tree || statCacheStats.misses > read) && req.kind === 'COPY' && req.sources.length === 1) {
      const key = ctxPaths.join('\0');
      if (!this.earlyXattrs.has(key)) {
        // a tree whose writer noted every entry's xattrs (the S2I work-dir sync): no getfattr process
        const ctx = this.opts.context;
        const known = tree ? undefined : ctx ? knownCopiedXattrs(ctxPaths, contextWalkStats(ctx)) : undefined;
        const early = tree ?? (known ? Promise.resolve(known) : readSourceXattrs(ctxPaths));
        early.catch(() => undefined); // the copy awaits it (and reports its failure) if it runs
        this.earlyXattrs.set(key, early);
      }
    }
    for (const s of req.sources) {
      if (isUrlSource(s) || isGitSource(s)) h.update(`url:${s}\0${await this.add.checksumUrl(s, req)}\n`);
    }
    for (const c of req.contents) h.update(`heredoc:${c.path}\0${createHash('sha256').update(c.data).digest('hex')}\n`);
    return 'sha256:' + h.digest('hex');
  }

  async direct(req: CopyRequest, src: CopySource, lowers: string[]): Promise<DirectCopyLayer | undefined> {
    const context = this.opts.context;
    // (also at the restricted level: its helper emulates owners for the files a supervised process writes, and this
    // path writes none — the layer's owners come from the request, as on the snapshot path)
    if (req.kind !== 'COPY' || src.kind !== 'context' || !context) return undefined;
    if (req.link || req.parents || req.exclude.length || req.chmod !== '' || req.contents.length) return undefined;
    if (req.sources.length !== 1) return undefined;
    const s = req.sources[0] as string;
    if (containsWildcards(s) || isUrlSource(s) || isGitSource(s)) return undefined;
    // files get uid/gid 0 (context sources) or a numeric --chown; a name needs the destination's /etc/passwd
    const ids = req.chown === '' ? [0, 0] : /^\d+:\d+$/.test(req.chown) ? req.chown.split(':').map(Number) : undefined;
    if (!ids) return undefined;
    const [uid, gid] = ids as [number, number];
    const root = resolve(context.root);
    if (resolve(src.dir) !== root) return undefined;
    const rel = cleanRel(s);
    const abs = rel === '' ? root : join(root, rel);
    // a plain directory: no symlink on the way (the copy would resolve it), nothing .dockerignore'd
    let cur = root;
    for (const c of rel === '' ? [] : rel.split('/')) {
      cur = join(cur, c);
      const st = lstatSync(cur, { throwIfNoEntry: false });
      if (!st?.isDirectory()) return undefined;
    }
    const dest = destPath(req.dest, req.workdir);
    const destRel = cleanRel(dest);
    if (destRel === '') return undefined;
    // only the security.capability xattr reaches a layer (the upper dir's user.* ones do not); the key's checksum
    // started reading the copied ones (security.capability among them) of this very tree for the copy: not twice
    const early = this.earlyXattrs.get(abs);
    const caps = early
      ? early.then((m) => [...m.values()].filter((x) => x.has('security.capability')))
      : readXattrsRecursive(abs, '^security\\.capability$').then((m) => [...m.values()]);
    caps.catch(() => undefined);
    const stats = contextWalkStats(context);
    const ignore = this.ignore;
    const plain = (dir: string, ctxRel: string): boolean => {
      for (const n of readdirSortedSync(dir)) {
        const a = join(dir, n);
        const r = ctxRel ? `${ctxRel}/${n}` : n;
        const st = stats?.get(a) ?? lstatSync(a);
        if (ignore?.matches(r, st.isDirectory())) return false;
        if (st.isDirectory()) {
          if (!plain(a, r)) return false;
        } else if (!(st.isFile() && st.nlink === 1) && !st.isSymbolicLink()) return false; // links, devices, ...
      }
      return true;
    };
    if ((rel !== '' && ignore?.matches(rel, true)) || !plain(abs, rel)) return undefined;
    if ((await caps).length > 0) return undefined;
    // the destination's parents as overlay copies them up (the lowers' mode and owner; the mtime of the moment the
    // destination is created in them); the destination itself must be new, so nothing below it can clash
    const view = await LowerView.open(lowers);
    const parents: { name: string; mode: number; uid: number; gid: number; mtime: number }[] = [];
    const now = Math.floor(Date.now() / 1000);
    const comps = destRel.split('/');
    for (let i = 1; i < comps.length; i++) {
      const name = comps.slice(0, i).join('/');
      const e = view.lookup(name);
      if (!e || !e.st.isDirectory() || (e.cap && e.cap.length > 0)) return undefined;
      parents.push({
        name,
        mode: Number(e.st.mode & 0o7777n),
        uid: Number(e.st.uid),
        gid: Number(e.st.gid),
        mtime: now,
      });
    }
    if (view.lookup(destRel) !== null) return undefined;
    // copyMatches creates the destination with mode 0755 and the copier's own owner (or --chown's), then gives it
    // the source directory's times; every entry below keeps its mode (setuid too: chmod follows the chown) and times
    const top = {
      mode: 0o755,
      uid: req.chown === '' ? (process.geteuid?.() ?? 0) : uid,
      gid: req.chown === '' ? (process.getegid?.() ?? 0) : gid,
    };
    const plan: DirectCopyLayer = {
      dir: abs,
      reroot: { name: destRel, uid, gid, mtime: 'source', keepSetid: true, top, parents },
    };
    if (stats) plan.stats = stats;
    return plan;
  }

  prefetch(paths: string[]): () => Promise<void> {
    const plain = paths.filter((p) => !/[*?[\\]/.test(p) && !isUrlSource(p) && !isGitSource(p));
    return this.opts.context && plain.length ? prefetchContextHashes(this.opts.context, plain) : async () => undefined;
  }

  async apply(req: CopyRequest, src: CopySource, destRootIn: string, track?: CopyTrack): Promise<void> {
    validateSources(req);
    const destRoot = resolve(destRootIn);
    src = { ...src, dir: resolve(src.dir) };
    // --link (ignored with --chmod, as dockerfile2llb does): copy into an empty root, then lay that tree over the
    // destination like a layer — its directories replace symlinks and take over the metadata of existing dirs.
    if (req.link && req.chmod === '') {
      const scratch = await this.add.scratchDir();
      try {
        await this.applyInto(req, src, scratch, destRoot);
        await mergeTree(scratch, destRoot, this.warn);
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
      return;
    }
    await this.applyInto(req, src, destRoot, destRoot, track);
  }

  /** The copy proper into `destRoot`; `userRoot` holds the /etc/passwd and /etc/group for --chown names. */
  private async applyInto(
    req: CopyRequest,
    src: CopySource,
    destRoot: string,
    userRoot: string,
    track?: CopyTrack,
  ): Promise<void> {
    const dest = destPath(req.dest, req.workdir);
    const ctx: SourceCtx = { root: src.dir, ignore: src.kind === 'context' ? this.ignore : undefined, kind: src.kind };
    if (src.kind === 'context' && this.opts.context) {
      ctx.stats = contextWalkStats(this.opts.context);
      ctx.xattrs = this.earlyXattrs;
    }
    const opts = await copyOptionsFor(req, src, userRoot, this.ignore, this.warn);
    if (track) opts.track = track;
    if (this.opts.offload !== false) opts.offload = this.opts.offload ?? copyFilesOffThread;
    await checkMultipleSources(req, dest, destRoot);
    // BuildKit: one copy action per source, in order (local paths, URLs), then heredocs.
    for (const s of req.sources) {
      if (isGitSource(s)) {
        await this.add.addGit(s, req, dest, destRoot, opts);
        continue;
      }
      if (isUrlSource(s)) {
        await this.add.addUrl(s, req, dest, destRoot, opts);
        continue;
      }
      const one = { ...req, sources: [s] };
      const matches = await resolveRequestSources(one, src, this.ignore);
      const unpack = req.kind === 'ADD' ? (req.unpack ?? true) : false;
      const plain: SourceMatch[] = [];
      for (const m of matches) {
        if (unpack && m.st.isFile() && (await this.add.tryUnpack(m.abs, dest, destRoot, opts, m.rel))) continue;
        plain.push(m);
      }
      if (opts.offload === copyFilesOffThread && !track?.planted?.size && manyFiles(plain, ctx.stats)) {
        // nothing planted from a previous result (a fresh KILN_HOME): every file is new, copy some on the worker
        warmUpWorker();
      }
      if (plain.length) await copyMatches(plain, dest, destRoot, opts, ctx);
    }
    if (req.contents.length) {
      const tmp = await this.add.scratchDir();
      try {
        const t = req.sourceDateEpoch ?? Math.floor(Date.now() / 1000);
        const matches: SourceMatch[] = [];
        for (const c of req.contents) {
          const rel = cleanRel(c.path);
          const abs = join(tmp, rel);
          await mkdir(posix.dirname(abs), { recursive: true });
          await writeFile(abs, c.data, { mode: 0o644 });
          await chmod(abs, 0o644);
          await lutimes(abs, t, t);
          matches.push({ rel, abs, st: await lstat(abs) });
        }
        await copyMatches(
          matches,
          dest,
          destRoot,
          { ...opts, resetOwner: true, ignore: undefined },
          {
            root: tmp,
            ignore: undefined,
            kind: 'stage',
          },
        );
      } finally {
        await rm(tmp, { recursive: true, force: true });
      }
    }
  }
}

/**
 * Lay the tree `from` over `to` the way a layer is applied: walked top-down without following anything in `to`;
 * a directory replaces a non-directory and gives an existing directory its mode, owner and times; files, symlinks
 * and other nodes replace whatever is there. Hard links inside `from` stay links; xattrs are carried over.
 */
export async function mergeTree(from: string, to: string, warn: (m: string) => void): Promise<void> {
  const xattrs = await readXattrsRecursive(from, COPIED_XATTRS);
  const sets: XattrSet[] = [];
  const inodes = new Map<string, string>();
  const dirs: { target: string; st: Stats }[] = [];
  const walk = async (rel: string): Promise<void> => {
    const names = readdirSortedSync(join(from, rel));
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const srcAbs = join(from, r);
      const target = join(to, r);
      const st = lstatSync(srcAbs);
      const existing = lstatSync(target, { throwIfNoEntry: false });
      if (existing && !(existing.isDirectory() && st.isDirectory())) {
        if (existing.isDirectory()) await rm(target, { recursive: true, force: true });
        else unlinkSync(target);
      }
      if (st.isDirectory()) {
        if (!existing?.isDirectory()) mkdirSync(target);
        await walk(r);
        dirs.push({ target, st });
      } else {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? inodes.get(key) : undefined;
        if (first) {
          linkSync(first, target);
          continue;
        }
        if (st.isFile()) copyFileSync(srcAbs, target, fsc.COPYFILE_EXCL);
        else if (st.isSymbolicLink()) symlinkSync(readlinkSync(srcAbs), target);
        else {
          await mknodBatch([nodeLike(target, st)]);
        }
        if (st.nlink > 1) inodes.set(key, target);
        lchownSync(target, st.uid, st.gid);
        if (!st.isSymbolicLink()) chmodSync(target, st.mode & 0o7777);
        lutimesSync(target, st.atime, st.mtime);
      }
      for (const [name, value] of xattrs.get(srcAbs) ?? []) sets.push({ path: target, name, value });
    }
  };
  await walk('');
  for (const { target, st } of dirs) {
    lchownSync(target, st.uid, st.gid);
    chmodSync(target, st.mode & 0o7777);
    lutimesSync(target, st.atime, st.mtime);
  }
  const problems = await setXattrs(sets);
  if (problems.length) warn(`some extended attributes could not be copied: ${problems[0]}`);
}

/** The mknod request that recreates the fifo or device node `st` at `path`. */
function nodeLike(path: string, st: Stats): MknodItem {
  const rdev = st.rdev;
  return {
    path,
    kind: st.isFIFO() ? 'p' : st.isCharacterDevice() ? 'c' : 'b',
    major: (rdev >>> 8) & 0xfff,
    minor: (rdev & 0xff) | ((rdev >>> 12) & 0xfff00),
  };
}

function validateSources(req: CopyRequest): void {
  if (req.kind === 'COPY') {
    for (const s of req.sources) {
      if (isGitSource(s)) throw new KilnError('COPY_FAILED', "source can't be a git ref for COPY");
      if (isUrlSource(s)) throw new KilnError('COPY_FAILED', "source can't be a URL for COPY");
    }
  }
  if (req.checksum) {
    if (req.kind !== 'ADD') throw new KilnError('COPY_FAILED', "checksum can't be specified for COPY");
    if (req.sources.length !== 1)
      throw new KilnError('COPY_FAILED', "checksum can't be specified for multiple sources");
    if (!isUrlSource(req.sources[0]!) && !isGitSource(req.sources[0]!)) {
      throw new KilnError('COPY_FAILED', 'checksum requires HTTP(S) or Git sources');
    }
  }
}

/**
 * Docker's documented rule: with more than one source the destination must be a directory (ending in '/').
 * BuildKit does not check and lets the last source overwrite the others when the destination is not an existing
 * directory; we refuse exactly that case with the documented message and accept an existing directory.
 */
async function checkMultipleSources(req: CopyRequest, dest: string, destRoot: string): Promise<void> {
  if (req.sources.length + req.contents.length <= 1 || dest.endsWith('/')) return;
  const st = await statOrNull(await rootPath(destRoot, dest, true));
  if (st?.isDirectory()) return;
  throw new KilnError(
    'COPY_DEST_NOT_DIR',
    `When using ${req.kind} with more than one source file, the destination must be a directory and end with a /`,
  );
}
