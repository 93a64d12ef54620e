/**
 * Build context loading for `kiln build CONTEXT` (like `docker build` / buildx):
 * - a directory (the Dockerfile is `-f PATH` relative to the working directory, default `CONTEXT/Dockerfile`);
 * - a tarball, plain or compressed with gzip, bzip2, xz or zstd (`-f` is a path inside the archive);
 * - `-`: a tar on stdin (as above), or a Dockerfile alone on stdin (then the context is empty);
 * - an http(s) URL of a tarball, or of a Dockerfile alone (then the context is empty);
 * - a git repository: `https://host/repo.git#ref:subdir`, `git@host:repo.git#ref`, `ssh://…`, `git://…`,
 *   `file:///path/repo` or a local path ending in `.git`. It is cloned with the git CLI into a temp dir
 *   (`--depth 1` when the ref allows), submodules included, without the `.git` directory (BuildKit's default).
 *
 * `.dockerignore` (`<Dockerfile>.dockerignore` first, then `<context>/.dockerignore`) gives `ignore`.
 *
 * `hashContextPaths` digests context files for cache keys. It keeps a persisted stat cache under
 * `$KILN_HOME/statcache/` (path → mtime/size/inode/mode/ctime → sha256 of the content, and of the copied xattrs when
 * the file has any), so unchanged files are not read again.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { sha256FilesOffThread, sha256OffThread } from '../layer/worker.js';
import { createReadStream, lstatSync, readlinkSync, type Stats } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { readdirSortedSync } from '../util/order.js';
import { KilnError, errorMessage } from '../errors.js';
import { loadDockerignore, newMatcher, type Matcher } from '../dockerfile/index.js';
import { detectCompression, peek } from '../layer/compression.js';
import { extractLayer } from '../layer/extract.js';
import { readKnownSize, readXattrsRecursive } from '../layer/fsops.js';
import { readTar } from '../layer/tarformat.js';
import { writeFileAtomic } from '../util/atomic.js';
import { ephemeralHome } from '../util/paths.js';

export interface BuildContext {
  /** Host directory holding the context files. */
  root: string;
  kind: 'dir' | 'tar' | 'stdin-dockerfile' | 'git';
  dockerfile: {
    /** Absolute path of the Dockerfile, or '-' when it came from stdin. */
    path: string;
    text: string;
  };
  ignore: Matcher;
  /** $KILN_HOME for the stat cache (undefined: no persisted cache). */
  kilnHome?: string;
  /** Remove temp dirs (tar/git/stdin contexts). Safe to call twice. */
  cleanup(): Promise<void>;
}

export interface LoadContextOptions {
  /** `-f`: Dockerfile path (dir contexts: relative to cwd; tar/git contexts: inside the context). '-' = stdin. */
  dockerfile?: string;
  kilnHome?: string;
  /** Where temp dirs go (default os.tmpdir()). */
  tmpDir?: string;
  /** stdin (default process.stdin). */
  stdin?: Readable;
  onWarning?: (msg: string) => void;
}

const GIT_PREFIX_RE = /^(git@[^:]+:|git:\/\/|ssh:\/\/|git\+ssh:\/\/|file:\/\/)/;

/** Is `spec` a git context (docker's urlutil.IsGitURL plus local `.git` paths)? */
export function isGitContext(spec: string): boolean {
  if (GIT_PREFIX_RE.test(spec)) return true;
  const noFrag = spec.split('#')[0]!;
  if (/^https?:\/\//.test(spec)) return /\.git\/?$/.test(noFrag);
  if (/^github\.com\//.test(spec)) return true;
  return /\.git\/?$/.test(noFrag);
}

/** Split `url#ref:subdir`. */
export function parseGitFragment(spec: string): { url: string; ref: string; subdir: string } {
  const i = spec.indexOf('#');
  if (i < 0) return { url: spec, ref: '', subdir: '' };
  const frag = spec.slice(i + 1);
  const j = frag.indexOf(':');
  return {
    url: spec.slice(0, i),
    ref: j >= 0 ? frag.slice(0, j) : frag,
    subdir: j >= 0 ? frag.slice(j + 1) : '',
  };
}

function run(cmd: string, args: string[], cwd?: string): Promise<{ stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    execFile(
      cmd,
      args,
      { cwd, env: { ...process.env, GIT_TERMINAL_PROMPT: '0' }, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) {
          const e = err as Error & { stderr?: string };
          e.stderr = stderr;
          rej(e);
        } else res({ stdout, stderr });
      },
    );
  });
}

function gitError(url: string, what: string, e: unknown): KilnError {
  const stderr = ((e as { stderr?: string }).stderr ?? '').trim().split('\n').pop() ?? '';
  return new KilnError('CONTEXT_GIT', `unable to prepare context: ${what} ${url}: ${stderr || errorMessage(e)}`, {
    hint: 'check the repository URL, the ref after # and your git credentials',
    cause: e,
  });
}

/**
 * Clone `url#ref:subdir` into `dest` (shallow when possible, submodules included) and return the directory to use
 * (dest or its subdir) and the checked-out commit. The `.git` directory is removed unless `keepGitDir`.
 */
export async function cloneGit(spec: string, dest: string, keepGitDir = false): Promise<string> {
  return (await cloneGitWithCommit(spec, dest, keepGitDir)).dir;
}

export async function cloneGitWithCommit(
  spec: string,
  dest: string,
  keepGitDir = false,
): Promise<{ dir: string; commit: string }> {
  const { url: rawUrl, ref, subdir } = parseGitFragment(spec);
  let url = rawUrl;
  if (/^github\.com\//.test(url)) url = 'https://' + url;
  if (!GIT_PREFIX_RE.test(url) && !/^https?:\/\//.test(url)) url = resolve(url); // local path ending in .git
  try {
    await run('git', ['init', '-q', dest]);
    await run('git', ['remote', 'add', 'origin', url], dest);
  } catch (e) {
    throw gitError(url, 'git init for', e);
  }
  const target = ref || 'HEAD';
  try {
    await run('git', ['fetch', '-q', '--depth', '1', '--no-tags', 'origin', target], dest);
  } catch {
    // Some servers refuse shallow fetches of arbitrary commits: fetch everything, then resolve the ref.
    try {
      await run('git', ['fetch', '-q', '--tags', 'origin', '+refs/heads/*:refs/remotes/origin/*'], dest);
    } catch (e) {
      throw gitError(url, 'fetching', e);
    }
    const candidates = ref ? [ref, `origin/${ref}`] : ['origin/HEAD'];
    if (!ref) await run('git', ['remote', 'set-head', 'origin', '--auto'], dest).catch(() => undefined);
    let done = false;
    let lastErr: unknown;
    for (const c of candidates) {
      try {
        await run('git', ['checkout', '-q', '--detach', c], dest);
        done = true;
        break;
      } catch (e) {
        lastErr = e;
      }
    }
    if (!done) throw gitError(url, `checking out "${ref || 'HEAD'}" of`, lastErr);
  }
  try {
    await run('git', ['rev-parse', '-q', '--verify', 'HEAD'], dest);
  } catch {
    try {
      await run('git', ['checkout', '-q', '--detach', 'FETCH_HEAD'], dest);
    } catch (e) {
      throw gitError(url, 'checking out', e);
    }
  }
  try {
    await run('git', ['submodule', 'update', '-q', '--init', '--recursive', '--depth', '1'], dest);
  } catch (e) {
    throw gitError(url, 'updating submodules of', e);
  }
  const commit = await run('git', ['rev-parse', 'HEAD'], dest).then(
    (r) => r.stdout.trim(),
    (e: unknown) => {
      throw gitError(url, 'reading the commit of', e);
    },
  );
  if (!keepGitDir) await rm(join(dest, '.git'), { recursive: true, force: true });
  if (!subdir) return { dir: dest, commit };
  const clean = subdir.replace(/^\/+/, '');
  const sub = resolve(dest, clean);
  if (sub !== dest && !sub.startsWith(dest + '/')) {
    throw new KilnError('CONTEXT_GIT', `unable to prepare context: subdirectory "${subdir}" leaves the repository`);
  }
  const st = await lstat(sub).catch(() => null);
  if (!st?.isDirectory()) {
    throw new KilnError('CONTEXT_GIT', `unable to prepare context: subdirectory "${subdir}" not found in ${url}`);
  }
  return { dir: sub, commit };
}

/**
 * Is the stream a tar archive? Compressed streams (gzip, bzip2, xz, zstd magic) are taken as tarballs like docker
 * does (a bzip2 block cannot be decoded from a prefix); an uncompressed stream must start with a valid tar header.
 * Returns a replaying stream either way.
 */
async function sniffTar(input: Readable): Promise<{ isTar: boolean; stream: Readable }> {
  const { head, stream } = await peek(input, 512);
  if (detectCompression(head) !== 'none') return { isTar: true, stream };
  try {
    const it = readTar([head])[Symbol.asyncIterator]();
    const r = await it.next();
    return { isTar: !r.done, stream };
  } catch {
    return { isTar: false, stream };
  }
}

async function extractContextTar(input: AsyncIterable<Buffer> | Readable, dest: string, warn?: (m: string) => void) {
  const o: Parameters<typeof extractLayer>[2] = {
    mode: 'plain',
    label: 'unable to prepare context: archive',
    chown: false,
  };
  if (warn) o.onWarning = warn;
  await extractLayer(input, dest, o);
}

async function readDockerfileAt(path: string, where: string): Promise<string> {
  try {
    const st = await stat(path);
    if (st.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
    return await readFile(path, 'utf8');
  } catch (e) {
    throw new KilnError('DOCKERFILE_NOT_FOUND', `failed to read dockerfile: ${where}: ${errorMessage(e)}`, {
      hint: 'pass the Dockerfile with -f PATH, or put a Dockerfile in the context',
      cause: e,
    });
  }
}

async function readAll(input: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of input) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks);
}

async function download(url: string): Promise<Readable> {
  let res: Response;
  try {
    res = await fetch(url, { redirect: 'follow' });
  } catch (e) {
    throw new KilnError('CONTEXT_DOWNLOAD', `unable to prepare context: downloading ${url}: ${errorMessage(e)}`, {
      cause: e,
    });
  }
  if (!res.ok || !res.body) {
    throw new KilnError('CONTEXT_DOWNLOAD', `unable to prepare context: downloading ${url}: HTTP ${res.status}`);
  }
  return Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
}

/** Path of `p` inside `root` (no escaping). */
function insideRoot(root: string, p: string): string {
  const abs = resolve(root, p.replace(/^\/+/, ''));
  if (abs !== root && !abs.startsWith(root + '/')) {
    throw new KilnError('DOCKERFILE_NOT_FOUND', `the Dockerfile (${p}) must be within the build context`);
  }
  return abs;
}

/** Load a build context. Always call `cleanup()` when done (also on failure paths after this returns). */
export async function loadContext(spec: string, opts: LoadContextOptions = {}): Promise<BuildContext> {
  const temps: string[] = [];
  const cleanup = async (): Promise<void> => {
    for (const t of temps.splice(0)) await rm(t, { recursive: true, force: true });
  };
  const newTemp = async (prefix: string): Promise<string> => {
    const d = await mkdtemp(join(opts.tmpDir ?? tmpdir(), prefix));
    temps.push(d);
    return d;
  };
  const make = (
    root: string,
    kind: BuildContext['kind'],
    dockerfile: { path: string; text: string },
    ignore: Matcher,
  ): BuildContext => {
    const c: BuildContext = { root, kind, dockerfile, ignore, cleanup };
    if (opts.kilnHome) c.kilnHome = opts.kilnHome;
    return c;
  };
  const df = opts.dockerfile;
  try {
    let stdinDockerfile: string | undefined;
    if (df === '-') {
      if (spec === '-') {
        throw new KilnError(
          'CONTEXT_INVALID',
          "invalid argument: can't use stdin for both build context and dockerfile",
        );
      }
      stdinDockerfile = (await readAll(opts.stdin ?? process.stdin)).toString('utf8');
    }

    // A tar context or a lone Dockerfile from a stream (stdin, or a URL like `docker build https://host/ctx.tar.gz`).
    const fromStream = async (input: Readable): Promise<BuildContext> => {
      const { isTar, stream } = await sniffTar(input);
      const root = await newTemp('kiln-ctx-');
      if (!isTar) {
        const text = (await readAll(stream)).toString('utf8');
        return make(root, 'stdin-dockerfile', { path: '-', text }, newMatcher([]));
      }
      await extractContextTar(stream, root, opts.onWarning);
      return await finishArchive(root, 'tar');
    };
    if (spec === '-') return await fromStream((opts.stdin ?? process.stdin) as Readable);

    if (isGitContext(spec)) {
      const tmp = await newTemp('kiln-git-');
      const root = await cloneGit(spec, join(tmp, 'repo'));
      return await finishArchive(root, 'git');
    }

    if (/^https?:\/\//.test(spec)) return await fromStream(await download(spec));

    const abs = resolve(spec);
    const st = await stat(abs).catch((e: unknown) => {
      throw new KilnError('CONTEXT_NOT_FOUND', `unable to prepare context: path "${spec}" not found`, {
        hint: 'the build context is a directory, a tarball, a git URL or - for stdin',
        cause: e,
      });
    });
    if (st.isFile()) {
      const root = await newTemp('kiln-ctx-');
      const { isTar, stream } = await sniffTar(createReadStream(abs));
      if (!isTar) {
        stream.destroy();
        throw new KilnError(
          'CONTEXT_INVALID',
          `unable to prepare context: ${spec} is not a directory or a tar archive`,
          {
            hint: 'supported archives: tar, tar.gz, tar.bz2, tar.xz, tar.zst',
          },
        );
      }
      await extractContextTar(stream, root, opts.onWarning);
      return await finishArchive(root, 'tar');
    }
    if (!st.isDirectory()) {
      throw new KilnError('CONTEXT_INVALID', `unable to prepare context: ${spec} is not a directory`);
    }
    // A directory context: -f is relative to the current directory.
    const dfPath = df ? resolve(df) : join(abs, 'Dockerfile');
    return await finish(abs, 'dir', dfPath, dfPath);

    /** An extracted tar or a git checkout: -f names a file inside it. */
    async function finishArchive(root: string, kind: 'tar' | 'git'): Promise<BuildContext> {
      const name = df ?? 'Dockerfile';
      return await finish(root, kind, insideRoot(root, name), name);
    }

    /** The context at `root` with its Dockerfile (stdin's, else read from `dfPath`) and its ignore rules. */
    async function finish(
      root: string,
      kind: 'dir' | 'tar' | 'git',
      dfPath: string,
      where: string,
    ): Promise<BuildContext> {
      const dockerfile =
        stdinDockerfile !== undefined
          ? { path: '-', text: stdinDockerfile }
          : { path: dfPath, text: await readDockerfileAt(dfPath, where) };
      const ignore = loadDockerignore(root, dockerfile.path === '-' ? undefined : dockerfile.path);
      return make(root, kind, dockerfile, ignore);
    }
  } catch (e) {
    await cleanup();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Hashing with a persisted stat cache

interface StatEntry {
  m: number; // mtimeMs
  c: number; // ctimeMs
  s: number; // size
  i: number; // inode
  o: number; // mode
  d: string; // sha256 hex of the content
  x?: string; // sha256 hex of the copied xattrs (COPIED_XATTRS), absent when the file has none
}

interface StatCacheFile {
  version: 1;
  root: string;
  entries: Record<string, StatEntry>;
}

interface StatCache {
  file: string | undefined;
  data: StatCacheFile;
  dirty: boolean;
  /** Files being hashed now, by context-relative path: a second walk (prefetch, then the step) waits for these. */
  inflight: Map<string, { key: string; digest: Promise<string> }>;
}

const statCaches = new Map<string, Promise<StatCache>>();
/** The same caches once loaded (for synchronous look-ups: knownContextDigest). */
const loadedStatCaches = new Map<string, StatCache>();

/** The stat cache of a context root, loaded once (memoized as a promise: concurrent walks share one object). */
function loadStatCache(ctx: BuildContext): Promise<StatCache> {
  const key = ctx.root;
  let c = statCaches.get(key);
  if (c) return c;
  c = (async (): Promise<StatCache> => {
    // Persisted only for directory contexts: tar/git/stdin contexts live in fresh temp dirs. Not in a KILN_HOME
    // thrown away after the build (KILN_EPHEMERAL_HOME=1, a build pod's): no later build would read it.
    const file =
      ctx.kilnHome && ctx.kind === 'dir' && !ephemeralHome()
        ? join(ctx.kilnHome, 'statcache', createHash('sha256').update(ctx.root).digest('hex') + '.json')
        : undefined;
    let data: StatCacheFile = { version: 1, root: ctx.root, entries: {} };
    if (file) {
      try {
        const parsed = JSON.parse(await readFile(file, 'utf8')) as StatCacheFile;
        if (parsed.version === 1 && parsed.root === ctx.root && parsed.entries) data = parsed;
      } catch {
        /* missing or corrupt: start fresh */
      }
    }
    const loaded: StatCache = { file, data, dirty: false, inflight: new Map() };
    loadedStatCaches.set(key, loaded);
    return loaded;
  })();
  if (statCaches.size >= 16) {
    statCaches.clear(); // a long-running service sees many contexts
    loadedStatCaches.clear();
  }
  statCaches.set(key, c);
  return c;
}

async function saveStatCache(c: StatCache): Promise<void> {
  if (!c.file || !c.dirty) return;
  await mkdir(join(c.file, '..'), { recursive: true });
  await writeFileAtomic(c.file, JSON.stringify(c.data));
  c.dirty = false;
}

/** Files up to this size are read whole (and digested in batches by hashContextPaths); larger ones streamed. */
const SMALL_FILE = 1 << 20;
/** A batch of small files to digest: at most this many files, or about this many bytes. */
const HASH_BATCH_FILES = 64;
const HASH_BATCH_BYTES = 1 << 19;

/** sha256 (hex) of a file: read at once when small, streamed otherwise. */
export async function sha256File(abs: string, size: number): Promise<string> {
  if (size <= SMALL_FILE) return createHash('sha256').update(readKnownSize(abs, size)).digest('hex');
  // streamed on the worker thread (src/layer/worker.ts), off the main thread, while the walk goes on
  return sha256OffThread(abs);
}

/** Does the stat cache entry still describe the file (same mtime, ctime, size, inode and mode)? */
function fresh(e: StatEntry | undefined, st: Stats): e is StatEntry {
  return (
    e !== undefined && e.m === st.mtimeMs && e.c === st.ctimeMs && e.s === st.size && e.i === st.ino && e.o === st.mode
  );
}

/**
 * The content digest (sha256 hex) that the stat cache of the context rooted at `root` holds for `rel` while it still
 * describes the file `st` — the digest a COPY's key was just computed from — else undefined. A miss explanation
 * then names changed files without reading a fresh checkout's files a second time.
 */
export function knownContextDigest(root: string, rel: string, st: Stats): string | undefined {
  const e = loadedStatCaches.get(root)?.data.entries[rel];
  return fresh(e, st) ? e.d : undefined;
}

/**
 * The lstat of every context entry the last hash walk of a context saw, by absolute path. Why: the COPY that
 * follows walks the same files; with its key computed from these stats, copying by them too (instead of an lstat
 * of its own per file) keeps key and layer consistent and saves 5,000 system calls in a 5,000-file COPY.
 */
const walkStats = new WeakMap<BuildContext, Map<string, Stats>>();

/** The walk stats of the latest context of each root (see knownContextStat), bounded like statCaches. */
const walkStatsByRoot = new Map<string, Map<string, Stats>>();

/**
 * The lstat the latest hash walk of the context rooted at `root` took of `abs`, else undefined. Why: a miss
 * explanation lists the step's files (src/cache/remote.ts listContextFiles) right after the walk of its key; taking
 * its stats from there saves an lstat per file (5,000 in W1's COPY, ~25 ms) and describes what the key was made of.
 */
export function knownContextStat(root: string, abs: string): Stats | undefined {
  return walkStatsByRoot.get(root)?.get(abs);
}

/** The stats of a context's hash walks (see walkStats); empty before any walk. */
export function contextWalkStats(ctx: BuildContext): ReadonlyMap<string, Stats> | undefined {
  return walkStats.get(ctx);
}

/**
 * The extended attributes a COPY carries into its layer (src/engine/copy.ts). Why here: a context file's identity in
 * a cache key includes them (as BuildKit's contenthash does), else an xattr-only change (setcap, setfattr) would
 * reuse a layer holding the old ones.
 */
export const COPIED_XATTRS = '^(security\\.capability|user\\..*)$';

/** getfattr arguments per process at most (one process per batch, not per file; ARG_MAX stays far). */
const XATTR_BATCH_CHARS = 100_000;

/** What identifies one state of a file for noteWithoutCopiedXattrs (an xattr change bumps its ctime). */
const xattrState = (st: Stats): string => `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;

/** Paths this process knows the COPIED_XATTRS of, by absolute path: their xattrState then, and those xattrs. */
const knownXattrs = new Map<string, { state: string; x: ReadonlyMap<string, Buffer> }>();

const NONE: ReadonlyMap<string, Buffer> = new Map();

/**
 * Note that the file at `abs`, as `st` shows it, carries none of COPIED_XATTRS (its writer knows: a fresh copy of a
 * source without them). Why: a hash walk that misses it in the stat cache then takes that from here instead of
 * another getfattr process for it — the S2I work-dir sync has just read the source's xattrs of each file it copied
 * (one process per warm S2I build less). Holds only while the file's dev, inode, size, mtime and ctime are the same.
 */
export function noteWithoutCopiedXattrs(abs: string, st: Stats): void {
  knownXattrs.set(abs, { state: xattrState(st), x: NONE });
}

/**
 * Note the COPIED_XATTRS (`x`, possibly none) of the file or directory at `abs` as `st` shows it, known to its
 * writer (the S2I work-dir sync has just read them for the whole copy). Why: a COPY of a tree whose every entry is
 * noted takes its xattrs from here (knownCopiedXattrs) instead of a getfattr process walking the tree on the
 * build's critical path. Holds only while the entry's dev, inode, size, mtime and ctime are the same (an xattr
 * change bumps ctime).
 */
export function noteCopiedXattrs(abs: string, st: Stats, x: ReadonlyMap<string, Buffer>): void {
  knownXattrs.set(abs, { state: xattrState(st), x: x.size === 0 ? NONE : new Map(x) });
}

/**
 * The COPIED_XATTRS of every entry the hash walk saw (`stats`, contextWalkStats) at or under `paths` — only those
 * that have any, as readXattrsRecursive returns them — when all of them are noted (noteCopiedXattrs) in the state
 * the walk saw; else undefined (the caller reads them).
 */
export function knownCopiedXattrs(
  paths: readonly string[],
  stats: ReadonlyMap<string, Stats> | undefined,
): Map<string, Map<string, Buffer>> | undefined {
  if (!stats || paths.length === 0 || knownXattrs.size === 0) return undefined;
  if (!paths.every((p) => stats.has(p))) return undefined;
  const out = new Map<string, Map<string, Buffer>>();
  for (const [abs, st] of stats) {
    if (!paths.some((p) => abs === p || abs.startsWith(p + '/'))) continue;
    const k = knownXattrs.get(abs);
    if (k?.state !== xattrState(st)) return undefined;
    if (k.x.size > 0) out.set(abs, new Map(k.x));
  }
  return out;
}

/** Digest (sha256 hex) of a file's copied xattrs, undefined when it has none (its key part is then as before). */
function xattrDigest(x: Map<string, Buffer> | undefined): string | undefined {
  if (!x || x.size === 0) return undefined;
  const h = createHash('sha256');
  for (const n of [...x.keys()].sort()) h.update(`${n}\0${(x.get(n) as Buffer).toString('hex')}\0`);
  return h.digest('hex');
}

/**
 * The COPIED_XATTRS of `paths` (each path's own, not recursive: files, directories, symlinks), only those that have
 * any: getfattr processes of many paths each (an argument list stays far below ARG_MAX).
 */
export async function readCopiedXattrs(paths: string[]): Promise<Map<string, Map<string, Buffer>>> {
  const out = new Map<string, Map<string, Buffer>>();
  for (let i = 0; i < paths.length;) {
    let chars = 0;
    let j = i;
    while (j < paths.length && (j === i || chars + (paths[j] as string).length < XATTR_BATCH_CHARS))
      chars += (paths[j++] as string).length + 1;
    for (const [k, v] of await readXattrsRecursive(paths.slice(i, j), COPIED_XATTRS, { recursive: false }))
      out.set(k, v);
    i = j;
  }
  return out;
}

/** Recursive reads of COPIED_XATTRS a hash walk made of a whole tree, by context and the tree's absolute path. */
const treeXattrReads = new WeakMap<BuildContext, Map<string, Promise<Map<string, Map<string, Buffer>>>>>();

/**
 * The COPIED_XATTRS of everything under `abs` (recursive, as readXattrsRecursive(abs, COPIED_XATTRS) gives them)
 * when a hash walk of this context already read them all, else undefined. Why: a COPY of a fresh checkout's tree
 * needs exactly that read for its copy (and its direct layer's capability check); one getfattr walk serves both.
 */
export function contextTreeXattrs(
  ctx: BuildContext,
  abs: string,
): Promise<Map<string, Map<string, Buffer>>> | undefined {
  return treeXattrReads.get(ctx)?.get(abs);
}

/** A file's part of the digest: size, content digest and, only when it has any, its copied xattrs' digest. */
function filePart(size: number, d: string, x: string | undefined): string {
  return x === undefined ? `${size}\0${d}\0` : `${size}\0${d}\0x:${x}\0`;
}

/** How long a hash walk runs on this thread before it yields to the event loop (ms). */
const WALK_SLICE_MS = 2;

/** Large files hashed at once (on the worker thread: their reads overlap). */
const HASH_PARALLEL = 2;

/** Files served from the stat cache, read and digested, or joined while another walk digested them (for tests). */
export const statCacheStats = { hits: 0, misses: 0, shared: 0 };

/**
 * Digest of context paths (relative to ctx.root, or absolute inside it) for cache keys: every file under them
 * (honouring .dockerignore and the COPY --exclude patterns, relative to each path) by path, type, permission bits,
 * symlink target and content. Unchanged files are not re-read (stat cache, persisted under $KILN_HOME/statcache).
 */
export async function hashContextPaths(
  ctx: BuildContext,
  paths: string[],
  exclude: string[] = [],
  signal?: AbortSignal,
  o: { treeXattrsFirst?: boolean } = {},
): Promise<string> {
  const pre = ephemeralHome() ? prefetched.get(ctx)?.get(walkKey(ctx, paths, exclude)) : undefined;
  if (pre) {
    try {
      return await pre;
    } catch {
      /* the prefetch stopped: walk */
    }
  }
  const cache = await loadStatCache(ctx);
  let stats = walkStats.get(ctx);
  if (!stats) {
    walkStats.set(ctx, (stats = new Map()));
    if (walkStatsByRoot.size >= 16) walkStatsByRoot.clear();
    walkStatsByRoot.set(ctx.root, stats);
  }
  const ex = exclude.length ? newMatcher(exclude) : undefined;
  const root = resolve(ctx.root);
  const seen = new Set<string>();
  let ops = 0;
  let slice = performance.now();
  // The digest input in order; large files are hashed concurrently (at most HASH_PARALLEL) while the walk goes on.
  const parts: (string | Promise<string>)[] = [];
  const h = { update: (x: string | Promise<string>): void => void parts.push(x) };
  const running = new Set<Promise<string>>();
  // The files read now (stat cache misses: new, or changed — an xattr change bumps ctime): their xattrs are read
  // after the walk by one getfattr per batch, never per file.
  const missed: string[] = [];
  // o.treeXattrsFirst (a prefetch walk in an ephemeral home, where every file will be read): the tree's copied
  // xattrs are read while its files are, not after them — the direct COPY's capability check waits for that read
  const first = o.treeXattrsFirst && paths.length === 1 ? (paths[0] as string) : undefined;
  const early =
    first === undefined ? undefined : readXattrsRecursive(isAbsolute(first) ? first : join(root, first), COPIED_XATTRS);
  early?.catch(() => undefined);
  // files found in the stat cache or in flight, and entries .dockerignore'd or excluded
  let known = 0;
  let skipped = 0;
  // Small files (stat cache misses) are read and digested in batches: on the worker thread while it keeps up (at
  // most two batches in flight), else here — both cores digest a fresh checkout's thousands of files.
  // (read by the size the walk's lstat gave: no fstat per file, a round trip to the restricted level's helper)
  let batch: { abs: string; size: number; resolve: (d: string) => void; reject: (e: unknown) => void }[] = [];
  let batchBytes = 0;
  const hashHere = (f: (typeof batch)[number]): void => {
    try {
      f.resolve(createHash('sha256').update(readKnownSize(f.abs, f.size)).digest('hex'));
    } catch (e) {
      f.reject(e);
    }
  };
  const flush = (): void => {
    if (batch.length === 0) return;
    const b = batch;
    batch = [];
    batchBytes = 0;
    const away = sha256FilesOffThread(
      b.map((f) => f.abs),
      b.map((f) => f.size),
    );
    if (!away) for (const f of b) hashHere(f);
    else
      away.then(
        // '' is a file the worker could not read: read here, for this thread's error (or a late success)
        (ds) => b.forEach((f, i) => (ds[i] ? f.resolve(ds[i]) : hashHere(f))),
        () => b.forEach(hashHere),
      );
  };
  const hashSmall = (abs: string, size: number): Promise<string> =>
    new Promise<string>((resolve, reject) => {
      batch.push({ abs, size, resolve, reject });
      batchBytes += size;
      if (batch.length >= HASH_BATCH_FILES || batchBytes >= HASH_BATCH_BYTES) flush();
    });
  let xattrsRead!: (m: Promise<Map<string, Map<string, Buffer>>>) => void;
  const xattrs = new Promise<Map<string, Map<string, Buffer>>>((r) => (xattrsRead = r));
  const visit = async (abs: string, ctxRel: string, srcRel: string): Promise<void> => {
    // let other work in (a registry round trip's callbacks, another walk) every few milliseconds: a walk reading
    // 5,000 small files on this thread kept a build's base image resolution waiting ~200 ms at 256 files a slice
    if (++ops % 16 === 0 && performance.now() - slice > WALK_SLICE_MS) {
      await new Promise((r) => setImmediate(r));
      slice = performance.now();
    }
    if (signal?.aborted) throw new KilnError('CANCELLED', 'context hashing stopped');
    const st = lstatSync(abs);
    stats.set(abs, st);
    const isDir = st.isDirectory();
    let included = true;
    if (ctxRel !== '' && ctx.ignore.matches(ctxRel, isDir)) {
      skipped++;
      if (!isDir || !ctx.ignore.mayContainIncluded(ctxRel)) return;
      included = false;
    }
    if (ex && srcRel !== '' && ex.matches(srcRel, isDir)) {
      skipped++;
      if (!isDir || !ex.mayContainIncluded(srcRel)) return;
      included = false;
    }
    const type = isDir ? 'd' : st.isSymbolicLink() ? 'l' : st.isFile() ? 'f' : 'o';
    if (included) h.update(`${srcRel}\0${type}\0${(st.mode & 0o7777).toString(8)}\0`);
    if (type === 'l') h.update(`${readlinkSync(abs)}\0`);
    else if (type === 'f') {
      let e = cache.data.entries[ctxRel];
      if (!fresh(e, st) && running.size >= HASH_PARALLEL) {
        // a miss: wait for a hashing slot, then look again (another walk may have digested it meanwhile)
        while (running.size >= HASH_PARALLEL) await Promise.race(running);
        e = cache.data.entries[ctxRel];
      }
      seen.add(ctxRel);
      if (fresh(e, st)) {
        statCacheStats.hits++;
        known++;
        h.update(filePart(st.size, e.d, e.x));
      } else {
        const key = `${st.mtimeMs}:${st.ctimeMs}:${st.size}:${st.ino}:${st.mode}`;
        const other = cache.inflight.get(ctxRel);
        if (other?.key === key) {
          statCacheStats.shared++;
          known++;
          h.update(
            other.digest.then((dx) => {
              const [d, x] = dx.split('\0') as [string, string | undefined];
              return filePart(st.size, d, x);
            }),
          );
        } else {
          statCacheStats.misses++;
          const small = st.size <= SMALL_FILE;
          const content = small ? hashSmall(abs, st.size) : sha256File(abs, st.size);
          const noted = knownXattrs.get(abs);
          if (noted?.state !== xattrState(st) || noted.x.size > 0) missed.push(abs);
          // the entry's digest: content and xattrs (`d` or `d\0x`), shared with a walk that finds it in flight
          const digest = content.then(async (d) => {
            const x = xattrDigest((await xattrs).get(abs));
            return x === undefined ? d : `${d}\0${x}`;
          });
          const entry = { key, digest };
          cache.inflight.set(ctxRel, entry);
          const p = digest.then(
            (dx) => {
              const [d, x] = dx.split('\0') as [string, string | undefined];
              cache.data.entries[ctxRel] = { m: st.mtimeMs, c: st.ctimeMs, s: st.size, i: st.ino, o: st.mode, d };
              if (x !== undefined) (cache.data.entries[ctxRel] as StatEntry).x = x;
              cache.dirty = true;
              if (cache.inflight.get(ctxRel) === entry) cache.inflight.delete(ctxRel);
              return filePart(st.size, d, x);
            },
            (e: unknown) => {
              if (cache.inflight.get(ctxRel) === entry) cache.inflight.delete(ctxRel);
              throw e;
            },
          );
          p.catch(() => undefined); // awaited below, in order
          // a hashing slot (large files) is the content read only (the xattrs come after the walk); small files
          // take none (their batch may not be sent yet)
          if (!small) {
            const tracked = content.finally(() => running.delete(tracked));
            tracked.catch(() => undefined);
            running.add(tracked);
          }
          h.update(p);
        }
      }
    } else if (isDir) {
      const names = readdirSortedSync(abs);
      for (const n of names) {
        await visit(join(abs, n), ctxRel ? `${ctxRel}/${n}` : n, srcRel ? `${srcRel}/${n}` : n);
      }
    }
    h.update('\n');
  };
  try {
    for (const p of paths) {
      const abs = isAbsolute(p) ? p : join(root, p);
      if (abs !== root && !abs.startsWith(root + '/')) {
        throw new KilnError('CONTEXT_PATH', `path ${p} is outside the build context`);
      }
      const rel = abs === root ? '' : abs.slice(root.length + 1);
      h.update(`path:${rel}\n`);
      await visit(abs, rel, '');
    }
  } finally {
    flush();
    // also when the walk stopped: digests it started (which another walk may be waiting for) still complete
    let read: Promise<Map<string, Map<string, Buffer>>>;
    const top = paths.length === 1 ? (paths[0] as string) : undefined;
    const abs = top === undefined ? undefined : isAbsolute(top) ? top : join(root, top);
    if (abs !== undefined && missed.length > 0 && known === 0 && skipped === 0 && !signal?.aborted) {
      // every file of the tree was read (a fresh checkout): one getfattr -R of it, not thousands of paths in argv
      // (~100 ms of this thread spawning three processes for W1's 5,000 sources); the COPY reuses it
      read = early ?? readXattrsRecursive(abs, COPIED_XATTRS);
      let reads = treeXattrReads.get(ctx);
      if (!reads) treeXattrReads.set(ctx, (reads = new Map()));
      reads.set(abs, read);
    } else {
      if (early && missed.length)
        read = early; // it holds every file under the path, the missed ones too
      else read = missed.length ? readCopiedXattrs(missed) : Promise.resolve(new Map<string, Map<string, Buffer>>());
      // a file changed since a whole-tree read of these paths (this walk missed it in the stat cache): that read
      // may hold its old xattrs — the COPY must not take them (its key has the new ones), it reads them again
      const reads = missed.length ? treeXattrReads.get(ctx) : undefined;
      if (reads)
        for (const p of paths) {
          const a = isAbsolute(p) ? p : join(root, p);
          for (const k of [...reads.keys()])
            if (k === a || k.startsWith(a + '/') || a.startsWith(k + '/')) reads.delete(k);
        }
    }
    read.catch(() => undefined); // awaited through the digests above
    xattrsRead(read);
  }
  const digest = createHash('sha256');
  // consecutive strings go in as one update (three small parts per file: 15,000 calls into the hash otherwise)
  let run = '';
  for (const x of parts) {
    run += typeof x === 'string' ? x : await x;
    if (run.length >= 1 << 16) {
      digest.update(run);
      run = '';
    }
  }
  digest.update(run);
  await saveStatCache(cache).catch(() => undefined); // the cache is an optimisation only
  return 'sha256:' + digest.digest('hex');
}

/**
 * The digests of a build's prefetch walks, by context and walk (walkKey). Why: with KILN_EPHEMERAL_HOME=1 a step
 * whose walk is the prefetch's takes its digest (or waits for it) instead of walking the tree again — an lstat per
 * file, 5,000 for W1's sources, on the main thread while the layer below it is written. Elsewhere the step walks
 * again (every file a stat-cache hit), so that its key is what is there when it runs, even after an edit meanwhile.
 */
const prefetched = new WeakMap<BuildContext, Map<string, Promise<string>>>();

/** What identifies a hash walk: its absolute paths and its excludes. */
function walkKey(ctx: BuildContext, paths: string[], exclude: string[]): string {
  const root = resolve(ctx.root);
  return JSON.stringify([paths.map((p) => (isAbsolute(p) ? p : join(root, p))), exclude]);
}

/**
 * Start digesting context paths in the background when nothing of the context is in the stat cache yet (a hint:
 * the COPY steps that read them later find their files in the stat cache, or wait for the digests in flight,
 * instead of reading them on the critical path). Paths are
 * walked concurrently; missing ones and paths outside the context are skipped. The
 * returned function stops the walk and resolves when it has stopped (digests already started finish).
 */
export function prefetchContextHashes(ctx: BuildContext, paths: string[]): () => Promise<void> {
  const stop = new AbortController();
  const root = resolve(ctx.root);
  const done = (async () => {
    // A context hashed before (a persisted stat cache): the steps' own walks only stat the files, and a prefetch
    // would just walk them twice. Worth it when files must be read: a first build, a fresh machine or pod.
    const cache = await loadStatCache(ctx);
    for (const _ in cache.data.entries) return;
    // All paths at once: a path of large files waits for the worker thread (sha256OffThread) while this thread
    // reads and digests another's small files — one after the other, W1's 5,000 sources waited ~110 ms behind
    // its 100 MiB of assets with this thread idle. (A file two paths share is read once: cache.inflight.)
    const walk = async (p: string): Promise<void> => {
      const abs = resolve(root, p);
      if (stop.signal.aborted) return;
      if (abs !== root && !abs.startsWith(root + '/')) return;
      if (!(await plainPath(root, abs))) return;
      // (the step walks again — lstat only, every file a stat-cache hit — so its key is what is there when it runs)
      // (in an ephemeral home nothing persists a stat cache entry: an xattr read before the file's lstat is safe)
      const digest = hashContextPaths(ctx, [abs], [], stop.signal, { treeXattrsFirst: ephemeralHome() });
      if (ephemeralHome()) {
        let m = prefetched.get(ctx);
        if (!m) prefetched.set(ctx, (m = new Map()));
        const k = walkKey(ctx, [abs], []);
        m.set(k, digest);
        digest.catch(() => m.delete(k));
      }
      await digest.catch(() => undefined);
    };
    await Promise.all(paths.map(walk));
  })();
  return async () => {
    stop.abort();
    await done;
  };
}

/**
 * Does `abs` (inside `root`) exist with only real directories above it? A path through a symlink is resolved by
 * the COPY itself, inside the root; a prefetch never follows one (it could lead out of the context).
 */
async function plainPath(root: string, abs: string): Promise<boolean> {
  let cur = root;
  const comps = abs === root ? [] : abs.slice(root.length + 1).split('/');
  for (const [i, c] of comps.entries()) {
    cur = join(cur, c);
    const st = await lstat(cur).catch(() => undefined);
    if (!st) return false;
    if (i < comps.length - 1 && !st.isDirectory()) return false;
  }
  return true;
}
