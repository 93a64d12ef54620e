/**
 * The mirror fetch of an http(s) repository done in this process: git's smart-HTTP protocol v2 spoken over undici —
 * `ls-refs` for the branches and tags, then one `fetch` with the changed tips as wants and the mirror's tips as haves
 * (`done` at once: one round) — the pack streamed into `git unpack-objects` (small packs, as git does) or
 * `git index-pack --fix-thin`, git's own connectivity check (`rev-list --objects --not --all`), and the refs written
 * the way git writes them (a deleted ref leaves packed-refs first — rewritten through `packed-refs.lock` — then its
 * loose file goes; a created or moved one is a `<ref>.lock` renamed into place), all under the mirror's flock. The result is what `git fetch --prune` of `+refs/heads/*` and `+refs/tags/*` leaves.
 *
 * Why: `git fetch` is a chain of processes — git, git-remote-http, the unpacker, rev-list — and three HTTP requests
 * (the capability GET on every fetch). Here it is two requests (the capabilities are kept per URL, so the GET is made
 * once per process) and two processes started while the server is still answering.
 *
 * It handles only what it knows: protocol v2 with sha1 objects, no redirect, no proxy or custom CA settings in the
 * environment, sane ref names, no stray `.lock` file in the mirror. Anything else, and any failure (an HTTP error, a
 * refused pack, a failed check), throws {@link SmartFetchUnsupported} before a ref moved; the caller then runs
 * `git fetch`, which does everything else and makes the error messages users know. Credentials (Basic) are sent only
 * when given — the caller gives them for the project's own host only — and only once the server asked for them
 * (a 401, as git does); they never appear in a URL, argv, an error or a log.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdir, open, readFile, readdir, rename, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Agent, request, type Dispatcher } from '../../registry/http.js';
import { errorMessage, isKilnError } from '../../errors.js';
import { debugMark } from '../../util/debug.js';
import { interrupted, lastLine, lockFile } from './exec.js';
import { refNameOk } from './url.js';

/** Why the in-process fetch gave up (the caller runs `git fetch` instead); never shown to users beyond debug lines. */
export class SmartFetchUnsupported extends Error {
  /**
   * `true`: something about the server or the repository this client does not handle (no protocol v2, a redirect,
   * a pack the checks refuse, TLS) — when `git fetch` then succeeds, use git for this URL from now on. `false`: a
   * failure of this attempt (an HTTP error status, the network) that says nothing about the next one.
   */
  readonly sticky: boolean;
  constructor(why: string, sticky: boolean) {
    super(why);
    this.name = 'SmartFetchUnsupported';
    this.sticky = sticky;
  }
}

/** What {@link smartFetch} needs. */
export interface SmartFetchOptions {
  /** An http(s) repository URL (as parsed by parseRepositoryUrl: no credentials in it). */
  url: string;
  /** The bare mirror (it exists). */
  gitDir: string;
  /** The mirror's flock file; held from reading the mirror's refs to writing them. */
  lock: string;
  /**
   * Environment and leading arguments (`-c …`, `--git-dir`) of the git processes (unpacker, rev-list, cat-file):
   * local ones, so an environment without credentials (baseEnv).
   */
  env: Record<string, string>;
  gitArgs: string[];
  /** Basic credentials for this URL's host, or none. */
  credentials?: { username: string; password: string } | undefined;
  signal?: AbortSignal | undefined;
}

/** What a fetch changed. */
export interface SmartFetchResult {
  /** Refs created or moved. */
  updated: number;
  /** Refs deleted (gone from the server). */
  deleted: number;
  /** Objects the server sent (0 when nothing was fetched). */
  objects: number;
}

/** What a server said about itself (the capability GET), kept per repository URL for this process. */
interface ServerInfo {
  /** `object-format` to echo in commands (when the server advertised one). */
  objectFormat: string | undefined;
  /** Credentials are needed (the server answered 401 once): send them with every request. */
  needsAuth: boolean;
}

const servers = new Map<string, ServerInfo>();
let agent: Dispatcher | undefined;

/** Environment variables that make git's curl use a proxy: with any of them, git does the fetch. */
const PROXY_ENV = ['http_proxy', 'https_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY'];
/**
 * … and that give curl other CA certificates than Node's, or Node other ones than curl's (git's curl ignores
 * Node's variables: with NODE_TLS_REJECT_UNAUTHORIZED=0 this client would accept what git refuses), or switch
 * Node's certificate check off: with any of them, git does an https fetch.
 */
const CA_ENV = [
  'SSL_CERT_FILE',
  'SSL_CERT_DIR',
  'CURL_CA_BUNDLE',
  'NODE_EXTRA_CA_CERTS',
  'NODE_TLS_REJECT_UNAUTHORIZED',
];

/** Packs with fewer objects are unpacked into loose objects (git's `fetch.unpackLimit` default), larger ones indexed. */
const UNPACK_LIMIT = 100;
/** At most this many of the mirror's tips are sent as haves (the changed refs' old tips first). */
const MAX_HAVES = 256;
const OID = /^[0-9a-f]{40}$/;
const USER_AGENT = 'git/kiln';
/** The capability advertisement's limits (a few hundred bytes in practice): lines, bytes. */
const MAX_CAPABILITIES = 256;
const MAX_ADVERTISEMENT = 64 << 10;
/** The ref listing's limits: refs, bytes (about 100 bytes a ref); more and git fetches. */
const MAX_REFS = 200_000;
const MAX_LISTING = 32 << 20;

/**
 * Whether this client may try `url` in an environment `env` (the service's): http(s) only, no proxy, and for https
 * no CA setting of curl's or Node's (see CA_ENV: undici and curl must trust the same certificates).
 */
export function smartFetchUsable(url: string, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!/^https?:\/\//i.test(url) || url.includes('?') || url.includes('#')) return false;
  const unset = (k: string): boolean => env[k] === undefined || env[k] === '';
  return PROXY_ENV.every(unset) && (/^http:/i.test(url) || CA_ENV.every(unset));
}

/** Forgets what servers said (tests: a server restarted on the same URL). */
export function forgetServers(): void {
  servers.clear();
}

function unsupported(why: string, sticky = true): SmartFetchUnsupported {
  return new SmartFetchUnsupported(why, sticky);
}

// ---- pkt-lines ----

function pkt(line: string): Buffer {
  const data = Buffer.from(line, 'utf8');
  return Buffer.concat([Buffer.from((data.length + 4).toString(16).padStart(4, '0'), 'latin1'), data]);
}
const FLUSH = Buffer.from('0000', 'latin1');
const DELIM = Buffer.from('0001', 'latin1');

/** Special packets: flush (0000), delim (0001), response-end (0002). */
type Packet = Buffer | 0 | 1 | 2;

/**
 * The pkt-lines of a response body, as they arrive. Throws (unsupported) on a malformed or truncated stream, and
 * (unsupported, not sticky) once more than `maxBytes` arrived: a listing that big is not one this client reads into
 * memory (git's path streams it), an endless one not one it waits for.
 */
async function* packets(body: AsyncIterable<Buffer>, maxBytes = Infinity): AsyncGenerator<Packet> {
  let buf: Buffer = Buffer.alloc(0);
  let total = 0;
  for await (const chunk of body) {
    total += chunk.length;
    if (total > maxBytes) throw unsupported(`a response of more than ${maxBytes} bytes`, false);
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    let off = 0;
    while (buf.length - off >= 4) {
      const head = buf.toString('latin1', off, off + 4);
      if (!/^[0-9a-f]{4}$/.test(head)) throw unsupported(`malformed pkt-line ${JSON.stringify(head)}`);
      const len = Number.parseInt(head, 16);
      if (len < 4) {
        if (len === 3) throw unsupported('malformed pkt-line 0003');
        yield len as 0 | 1 | 2;
        off += 4;
        continue;
      }
      if (buf.length - off < len) break;
      yield buf.subarray(off + 4, off + len);
      off += len;
    }
    buf = buf.subarray(off);
  }
  if (buf.length > 0) throw unsupported('truncated response', false);
}

function text(p: Buffer): string {
  const s = p.toString('utf8');
  return s.endsWith('\n') ? s.slice(0, -1) : s;
}

// ---- HTTP ----

function endpoint(url: string, path: string): string {
  return `${url.replace(/\/+$/, '')}/${path}`;
}

/**
 * One request with git's headers. A 401 with credentials at hand that were not sent yet is answered again with
 * them (and the server remembered as one that needs them); any other status than 200, or a content type other
 * than `type`, is unsupported. Returns the body (to be read to its end).
 */
async function call(
  o: SmartFetchOptions,
  info: ServerInfo,
  method: 'GET' | 'POST',
  path: string,
  type: string,
  body?: Buffer,
): Promise<Dispatcher.ResponseData['body']> {
  agent ??= new Agent({ keepAliveTimeout: 30_000 });
  for (let attempt = 0; ; attempt++) {
    const headers: Record<string, string> = {
      'user-agent': USER_AGENT,
      'git-protocol': 'version=2',
      accept: method === 'GET' ? '*/*' : type,
      pragma: 'no-cache',
    };
    if (body !== undefined) headers['content-type'] = 'application/x-git-upload-pack-request';
    const creds = info.needsAuth ? o.credentials : undefined;
    if (creds !== undefined) {
      headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
    }
    let res: Dispatcher.ResponseData;
    try {
      res = await request(endpoint(o.url, path), {
        dispatcher: agent,
        method,
        headers,
        ...(body !== undefined ? { body } : {}),
        ...(o.signal ? { signal: o.signal } : {}),
      });
    } catch (e) {
      if (o.signal?.aborted) throw interrupted(o.signal);
      // the message of a connection or TLS error, which names no credential (they are only in a header)
      const code = (e as NodeJS.ErrnoException).code ?? '';
      throw unsupported(`${method} ${path}: ${code || (e as Error).message}`, /CERT|TLS|SSL/i.test(code));
    }
    if (res.statusCode === 401 && !info.needsAuth && o.credentials !== undefined && attempt === 0) {
      await res.body.dump();
      info.needsAuth = true;
      continue;
    }
    const ct = String(res.headers['content-type'] ?? '');
    if (res.statusCode !== 200 || ct.split(';')[0]?.trim() !== type || res.headers['content-encoding'] !== undefined) {
      await res.body.dump().catch(() => undefined);
      // a redirect or another content type: a server this client does not speak to; a status: this attempt's
      throw unsupported(
        `${method} ${path}: HTTP ${res.statusCode} ${ct}`,
        res.statusCode !== 200 ? res.statusCode >= 300 && res.statusCode < 400 : true,
      );
    }
    return res.body;
  }
}

/** The capability advertisement (`GET info/refs` with protocol v2): needs `ls-refs` and `fetch`, sha1 objects. */
async function discover(o: SmartFetchOptions): Promise<ServerInfo> {
  const known = servers.get(o.url);
  if (known !== undefined) return known;
  const info: ServerInfo = { objectFormat: undefined, needsAuth: false };
  const body = await call(
    o,
    info,
    'GET',
    'info/refs?service=git-upload-pack',
    'application/x-git-upload-pack-advertisement',
  );
  const lines: string[] = [];
  for await (const p of packets(body, MAX_ADVERTISEMENT)) {
    if (typeof p === 'number') continue;
    lines.push(text(p));
    if (lines.length > MAX_CAPABILITIES + 2) throw unsupported(`more than ${MAX_CAPABILITIES} capabilities`, false);
  }
  if (lines[0] === '# service=git-upload-pack') lines.shift();
  if (lines[0] !== 'version 2') throw unsupported('the server does not speak protocol v2');
  const caps = new Map(lines.slice(1).map((l) => [l.split('=')[0] as string, l.slice(l.indexOf('=') + 1)]));
  if (!caps.has('ls-refs') || !caps.has('fetch')) throw unsupported('the server lacks ls-refs or fetch');
  const format = caps.get('object-format');
  if (format !== undefined && format !== 'sha1') throw unsupported(`object format ${format}`);
  info.objectFormat = format;
  servers.set(o.url, info);
  return info;
}

/** A v2 command request: `command=…`, agent, object-format, then the arguments. */
function command(info: ServerInfo, name: string, args: string[]): Buffer {
  const head = [pkt(`command=${name}\n`), pkt(`agent=${USER_AGENT}\n`)];
  if (info.objectFormat !== undefined) head.push(pkt(`object-format=${info.objectFormat}\n`));
  return Buffer.concat([...head, DELIM, ...args.map((a) => pkt(`${a}\n`)), FLUSH]);
}

/** The server's branches and tags (`ls-refs` with their prefixes): full ref → object id. */
async function lsRefs(o: SmartFetchOptions): Promise<{ info: ServerInfo; refs: Map<string, string> }> {
  const info = await discover(o);
  const req = command(info, 'ls-refs', ['ref-prefix refs/heads/', 'ref-prefix refs/tags/']);
  const body = await call(o, info, 'POST', 'git-upload-pack', 'application/x-git-upload-pack-result', req);
  const refs = new Map<string, string>();
  for await (const p of packets(body, MAX_LISTING)) {
    if (typeof p === 'number') continue;
    if (refs.size >= MAX_REFS) throw unsupported(`ls-refs: more than ${MAX_REFS} refs`, false);
    const line = text(p);
    if (line.startsWith('ERR ')) throw unsupported(`ls-refs: ${line.slice(4, 200)}`, false);
    const [oid = '', name = ''] = line.split(' ');
    if (!OID.test(oid)) throw unsupported(`ls-refs: unexpected line ${JSON.stringify(line.slice(0, 100))}`);
    if (!name.startsWith('refs/heads/') && !name.startsWith('refs/tags/')) continue;
    if (!refNameOk(name)) throw unsupported(`ls-refs: ref name ${JSON.stringify(name.slice(0, 100))}`);
    refs.set(name, oid);
  }
  return { info, refs };
}

// ---- the mirror's refs ----

/**
 * The mirror's branches and tags as git stores them: loose files under refs/heads and refs/tags over packed-refs.
 * Also which names are packed. Unsupported: a symbolic ref, a stray `.lock` (a crashed git's: git's path recovers).
 */
async function localRefs(gitDir: string): Promise<{ refs: Map<string, string>; packed: Set<string> }> {
  const refs = new Map<string, string>();
  const packed = new Set<string>();
  const packedText = await readFile(join(gitDir, 'packed-refs'), 'utf8').catch(() => '');
  for (const line of packedText.split('\n')) {
    if (line === '' || line.startsWith('#') || line.startsWith('^')) continue;
    const [oid = '', name = ''] = line.split(' ');
    if (!name.startsWith('refs/heads/') && !name.startsWith('refs/tags/')) continue;
    if (!OID.test(oid)) throw unsupported('packed-refs: unexpected line');
    refs.set(name, oid);
    packed.add(name);
  }
  for (const top of ['refs/heads', 'refs/tags']) {
    let entries;
    try {
      entries = await readdir(join(gitDir, top), { recursive: true, withFileTypes: true });
    } catch {
      continue;
    }
    for (const e of entries) {
      if (!e.isFile()) continue;
      // (`parentPath` is Node ≥ 20.12's name; older Node 20 has only `path`)
      const parent = (e as { parentPath?: string }).parentPath ?? (e as { path: string }).path;
      const rel = join(parent, e.name).slice(gitDir.length + 1);
      if (rel.endsWith('.lock')) throw unsupported(`stale lock file ${rel}`, false);
      const oid = (await readFile(join(gitDir, rel), 'utf8')).trim();
      if (!OID.test(oid)) throw unsupported(`ref ${rel} is not an object id`);
      refs.set(rel, oid);
    }
  }
  return { refs, packed };
}

/**
 * Creates `path` exclusively (git's `<ref>.lock` protocol); an existing one is a stale lock: unsupported. A failed
 * write leaves no lock file behind.
 */
async function writeLockFile(path: string, content: string): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'wx', 0o644);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw unsupported(`cannot create ${path.slice(path.lastIndexOf('/refs/') + 1)}: ${code}`, false);
  }
  try {
    await fh.writeFile(content);
  } catch (e) {
    await fh.close().catch(() => undefined);
    await rm(path, { force: true });
    throw e;
  }
  await fh.close();
}

/** Removes the now empty parent dirs of a deleted ref up to (not including) refs/heads or refs/tags, as git does. */
async function removeEmptyParents(gitDir: string, ref: string): Promise<void> {
  let dir = dirname(ref);
  while (dir.split('/').length > 2) {
    try {
      await rmdir(join(gitDir, dir));
    } catch {
      return;
    }
    dir = dirname(dir);
  }
}

/**
 * Deletes refs — their packed-refs lines first (one rewrite through `packed-refs.lock`), then their loose files, as
 * git does: a loose file gone before its packed line would bring the packed (older) value back — then creates or
 * moves the others. A `packed-refs.lock` (another writer's, or a crashed git's) stops it before anything is written.
 */
async function writeRefs(
  gitDir: string,
  updates: Map<string, string>,
  deletes: string[],
  packed: Set<string>,
): Promise<void> {
  const file = join(gitDir, 'packed-refs');
  const unpack = deletes.filter((r) => packed.has(r));
  if (unpack.length > 0) {
    const gone = new Set(unpack);
    const lines = (await readFile(file, 'utf8')).split('\n');
    const kept: string[] = [];
    let skipping = false;
    for (const line of lines) {
      if (line.startsWith('^')) {
        if (!skipping) kept.push(line);
        continue;
      }
      skipping = gone.has(line.slice(line.indexOf(' ') + 1));
      if (!skipping) kept.push(line);
    }
    await writeLockFile(`${file}.lock`, kept.join('\n'));
    await rename(`${file}.lock`, file);
  } else if (await stat(`${file}.lock`).catch(() => undefined)) {
    throw unsupported('stale lock file packed-refs.lock', false);
  }
  for (const ref of deletes) {
    await unlink(join(gitDir, ref)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
    await removeEmptyParents(gitDir, ref);
  }
  for (const [ref, oid] of updates) {
    const path = join(gitDir, ref);
    try {
      await mkdir(dirname(path), { recursive: true });
    } catch (e) {
      // a ref `a` where `a/b` is to be made (or the other way round): git's path reports or resolves it
      throw unsupported(`cannot create ${ref}: ${(e as NodeJS.ErrnoException).code}`, false);
    }
    await writeLockFile(`${path}.lock`, `${oid}\n`);
    try {
      await rename(`${path}.lock`, path);
    } catch (e) {
      await rm(`${path}.lock`, { force: true });
      throw unsupported(`cannot write ${ref}: ${(e as NodeJS.ErrnoException).code}`, false);
    }
  }
}

// ---- git processes ----

interface Proc {
  child: ChildProcessWithoutNullStreams;
  /** Exit code, stdout (its first MiB) and stderr (its end) once it ended. */
  done: Promise<{ code: number; stdout: string; stderr: string }>;
  /** It ended (`done` resolved). */
  ended: boolean;
}

function startGit(o: SmartFetchOptions, args: string[]): Proc {
  const child = spawn('git', [...o.gitArgs, ...args], { env: o.env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  child.stdout.on('data', (c: Buffer) => {
    if (stdout.length < 1 << 20) stdout += c.toString('utf8');
  });
  child.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString('utf8')).slice(-4000)));
  child.stdin.on('error', () => undefined);
  const p: Proc = {
    child,
    ended: false,
    done: new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      child.on('error', (e) => resolve({ code: -1, stdout, stderr: e.message }));
      child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    }),
  };
  void p.done.then(() => (p.ended = true));
  return p;
}

function kill(p: Proc | undefined): void {
  if (p !== undefined && p.child.exitCode === null) p.child.kill('SIGKILL');
}

/**
 * Waits for `event` (`'drain'` of a child's stdin) or the child's end, whichever comes first — or throws
 * `INTERRUPTED` at once when `signal` fires (the child may never read again, the caller kills it).
 */
async function until(p: Proc, event: 'drain' | undefined, signal: AbortSignal | undefined): Promise<'event' | 'ended'> {
  if (signal?.aborted) throw interrupted(signal);
  if (p.ended) return 'ended';
  const stdin = p.child.stdin;
  let onEvent: (() => void) | undefined;
  let onAbort: (() => void) | undefined;
  try {
    return await Promise.race([
      p.done.then(() => 'ended' as const),
      new Promise<'event'>((resolve) => {
        if (event === undefined) return;
        onEvent = () => resolve('event');
        stdin.on(event, onEvent);
      }),
      new Promise<never>((_, reject) => {
        if (signal === undefined) return;
        onAbort = () => reject(interrupted(signal));
        signal.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    if (onEvent !== undefined && event !== undefined) stdin.off(event, onEvent);
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Writes `data` to an unpacker's stdin, waiting while its pipe is full. An unpacker that ended before the pack did
 * (a pack it refused, or killed) reads no more — its pipe never drains: unsupported, not sticky (the cause may be
 * this machine's: a full disk, a killed process); the caller stops reading the response and git fetches.
 */
async function feed(p: Proc, data: Buffer, signal: AbortSignal | undefined): Promise<void> {
  if (!p.ended && p.child.stdin.writable && p.child.stdin.write(data)) return;
  if ((await until(p, 'drain', signal)) === 'event') return;
  const r = await p.done;
  throw unsupported(`fetch: the unpacker ended before the pack did: ${lastLine(r.stderr)}`, false);
}

/**
 * Streams the `packfile` section of a fetch response into an unpacker: the `unpack-objects` started beside the
 * request for a pack of fewer than UNPACK_LIMIT objects (its header decides), else `index-pack --fix-thin`.
 * Returns the object count once the unpacker succeeded.
 */
async function receivePack(o: SmartFetchOptions, body: AsyncIterable<Buffer>, unpack: Proc): Promise<number> {
  let sink: Proc | undefined;
  let header = Buffer.alloc(0);
  let objects = -1;
  let section: string | undefined;
  let ended = false;
  try {
    for await (const p of packets(body)) {
      if (p === 0 || p === 2) {
        // read on to the body's end (nothing should follow): the connection stays reusable
        ended = true;
        section = 'end';
        continue;
      }
      if (p === 1) {
        section = undefined;
        continue;
      }
      if (section === undefined) {
        section = text(p);
        if (section.startsWith('ERR ')) throw unsupported(`fetch: ${section.slice(4, 200)}`, false);
        if (section !== 'packfile' && section !== 'acknowledgments') throw unsupported(`fetch: section ${section}`);
        continue;
      }
      if (section === 'end') throw unsupported('fetch: data after the pack');
      if (section !== 'packfile') continue;
      const band = p[0];
      if (band === 2) continue;
      if (band === 3) throw unsupported(`fetch: remote error: ${text(p.subarray(1)).slice(0, 200)}`, false);
      if (band !== 1) throw unsupported(`fetch: sideband ${String(band)}`);
      let data = p.subarray(1);
      if (sink === undefined) {
        header = Buffer.concat([header, data]);
        if (header.length < 12) continue;
        if (header.toString('latin1', 0, 4) !== 'PACK') throw unsupported('fetch: not a pack');
        objects = header.readUInt32BE(8);
        if (objects < UNPACK_LIMIT) sink = unpack;
        else {
          kill(unpack);
          sink = startGit(o, ['index-pack', '--stdin', '--fix-thin']);
        }
        data = header;
      }
      await feed(sink, data, o.signal);
    }
    if (!ended || sink === undefined) throw unsupported('fetch: the response ended without a pack', false);
    sink.child.stdin.end();
    await until(sink, undefined, o.signal);
    const r = await sink.done;
    if (r.code !== 0) throw unsupported(`fetch: ${lastLine(r.stderr)}`);
    return objects;
  } finally {
    kill(sink);
    if (sink !== unpack) kill(unpack);
  }
}

/**
 * Git refuses to point a branch at anything but a commit (`trying to write non-commit object … to branch`); a
 * server whose branch names a tree, blob or tag object makes this client give up (not sticky: once the branch is
 * fixed the next fetch is in process again), so that git fetches and reports it.
 */
async function branchesAreCommits(o: SmartFetchOptions, updates: Map<string, string>): Promise<void> {
  const ids = [...new Set([...updates].filter(([ref]) => ref.startsWith('refs/heads/')).map(([, oid]) => oid))];
  if (ids.length === 0) return;
  const check = startGit(o, ['cat-file', '--batch-check=%(objecttype)']);
  try {
    check.child.stdin.end(`${ids.join('\n')}\n`);
    await until(check, undefined, o.signal);
    const r = await check.done;
    if (r.code !== 0) throw unsupported(`object types: ${lastLine(r.stderr)}`, false);
    const types = r.stdout.split('\n').slice(0, ids.length);
    const odd = types.findIndex((t) => t !== 'commit');
    if (types.length !== ids.length || odd >= 0) {
      throw unsupported(`a branch names a ${types[odd] ?? 'missing'} object, not a commit`, false);
    }
  } finally {
    kill(check);
  }
}

/**
 * Fetches the repository at `o.url` into the mirror `o.gitDir` as `git fetch --prune` of branches and tags would.
 * Throws {@link SmartFetchUnsupported} (nothing moved; the caller runs git), KilnError `INTERRUPTED` or
 * `GIT_LOCK_FAILED` (the mirror's flock).
 */
export async function smartFetch(o: SmartFetchOptions): Promise<SmartFetchResult> {
  // the flock is taken while the server lists its refs
  const locked = lockFile(o.lock, o.signal);
  locked.catch(() => undefined);
  let release: (() => Promise<void>) | undefined;
  let revList: Proc | undefined;
  let unpack: Proc | undefined;
  try {
    // the mirror's refs as they were before the listing was asked for: if another process moved them before the
    // lock was ours, its listing may be newer than this one, so the server is asked again (under the lock now).
    // The snapshot is complete before the request goes out: one still being read could see that process's refs
    // and miss the move.
    const before = (await localRefs(o.gitDir).catch(() => undefined))?.refs;
    let { info, refs: remote } = await lsRefs(o);
    debugMark('git: ls-refs');
    release = await locked;
    const { refs: local, packed } = await localRefs(o.gitDir);
    if (before?.size !== local.size || [...local].some(([ref, oid]) => before.get(ref) !== oid)) {
      ({ info, refs: remote } = await lsRefs(o));
    }
    const updates = new Map<string, string>();
    for (const [ref, oid] of remote) if (local.get(ref) !== oid) updates.set(ref, oid);
    const deletes = [...local.keys()].filter((r) => !remote.has(r));
    if (updates.size === 0 && deletes.length === 0) return { updated: 0, deleted: 0, objects: 0 };
    const wants = [...new Set(updates.values())];
    let objects = 0;
    if (wants.length > 0) {
      const haves = new Set<string>();
      for (const ref of updates.keys()) {
        const old = local.get(ref);
        if (old !== undefined) haves.add(old);
      }
      for (const [ref, oid] of local) if (ref.startsWith('refs/heads/')) haves.add(oid);
      for (const oid of local.values()) haves.add(oid);
      const args = ['thin-pack', 'no-progress', 'ofs-delta', ...wants.map((w) => `want ${w}`)];
      for (const h of [...haves].slice(0, MAX_HAVES)) args.push(`have ${h}`);
      args.push('done');
      // the unpacker and git's connectivity check start while the server makes the pack (rev-list reads the
      // mirror's refs now, before any moved, and the new tips from stdin once the objects are in)
      unpack = startGit(o, ['unpack-objects', '-q']);
      revList = startGit(o, ['rev-list', '--objects', '--stdin', '--not', '--all', '--quiet', '--alternate-refs']);
      const body = await call(
        o,
        info,
        'POST',
        'git-upload-pack',
        'application/x-git-upload-pack-result',
        command(info, 'fetch', args),
      );
      objects = await receivePack(o, body, unpack);
      debugMark(`git: pack of ${objects} objects unpacked`);
      revList.child.stdin.end(`${wants.join('\n')}\n`);
      await until(revList, undefined, o.signal);
      const r = await revList.done;
      if (r.code !== 0) throw unsupported(`connectivity check: ${lastLine(r.stderr)}`);
      await branchesAreCommits(o, updates);
    }
    if (o.signal?.aborted) throw interrupted(o.signal);
    await writeRefs(o.gitDir, updates, deletes, packed);
    return { updated: updates.size, deleted: deletes.length, objects };
  } catch (e) {
    if (o.signal?.aborted) throw interrupted(o.signal);
    if (e instanceof SmartFetchUnsupported || isKilnError(e)) throw e;
    // anything else (a file system error, a stream error): git's path reports it properly
    throw unsupported(`unexpected: ${errorMessage(e).slice(0, 200)}`, false);
  } finally {
    kill(unpack);
    kill(revList);
    // the lock is let go in the background: the next fetch's flock waits for it anyway
    if (release !== undefined) void release();
    else void locked.then((r) => r()).catch(() => undefined);
  }
}
