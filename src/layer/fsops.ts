/**
 * File-system operations node cannot do by itself — extended attributes and mknod — batched into one external
 * process per layer (getfattr/setfattr from Debian's `attr`, mknod from coreutils) so that a layer with thousands of
 * entries costs one spawn, not thousands.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { KilnError } from '../errors.js';

interface RunResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

function run(cmd: string, args: string[], input?: Buffer | string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      if (err.length < 8192) err += d.toString();
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        reject(
          new KilnError('TOOL_MISSING', `${cmd} is not installed`, {
            hint: cmd === 'getfattr' || cmd === 'setfattr' ? 'install the "attr" package' : `install ${cmd}`,
          }),
        );
      } else reject(e);
    });
    child.on('close', (code) => resolve({ code: code ?? 1, stdout: Buffer.concat(out), stderr: err }));
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

/** Undo getfattr's quoting of file names (`\ooo` octal escapes, `\\`). */
function unquote(s: string): string {
  if (!s.includes('\\')) return s;
  const bytes: number[] = [];
  const raw = Buffer.from(s, 'utf8');
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c === 0x5c && i + 3 < raw.length + 0 && /^[0-7]{3}$/.test(raw.subarray(i + 1, i + 4).toString('latin1'))) {
      bytes.push(parseInt(raw.subarray(i + 1, i + 4).toString('latin1'), 8));
      i += 3;
    } else if (c === 0x5c && raw[i + 1] === 0x5c) {
      bytes.push(0x5c);
      i += 1;
    } else bytes.push(c);
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Quote a file name the way setfattr --restore expects (octal-escape control chars, '\\' and newline). */
function quote(s: string): string {
  const b = Buffer.from(s, 'utf8');
  let out = '';
  for (const c of b) {
    if (c < 0x20 || c === 0x5c || c === 0x7f) out += '\\' + c.toString(8).padStart(3, '0');
    else out += String.fromCharCode(c);
  }
  // Non-ASCII bytes were emitted as latin1 chars; re-encode them as raw bytes below.
  return out;
}

/** Reads extended attributes (all names) of `paths`, recursively or not, instead of a getfattr process. */
export type XattrReader = (paths: string[], recursive: boolean) => Promise<Map<string, Map<string, Buffer>>>;

let xattrReader: XattrReader | undefined;

/**
 * Route readXattrsRecursive through `reader` for the rest of this process (undefined: getfattr again). The
 * restricted isolation level's helper answers there: under its filter, getfattr would cost two notifications per
 * file it walks (W1's incremental COPY walked 5,000 files twice per build).
 */
export function useXattrReader(reader: XattrReader | undefined): void {
  xattrReader = reader;
}

/**
 * Extended attributes under `dir` (recursive, never following symlinks) whose names match `pattern`
 * (a POSIX extended regex as getfattr -m takes). Returns absolute path → (name → value). `recursive: false` reads
 * the given paths only (e.g. the few entries of a tree that may have changed).
 */
export async function readXattrsRecursive(
  dir: string | string[],
  pattern: string,
  o: { recursive?: boolean } = {},
): Promise<Map<string, Map<string, Buffer>>> {
  const dirs = typeof dir === 'string' ? [dir] : dir;
  if (dirs.length === 0) return new Map();
  if (xattrReader) {
    // getfattr -m: an extended regular expression matched anywhere in the name (as RegExp#test does)
    const re = new RegExp(pattern);
    const result = new Map<string, Map<string, Buffer>>();
    for (const [path, names] of await xattrReader(dirs, o.recursive !== false)) {
      const kept = new Map([...names].filter(([n]) => re.test(n)));
      if (kept.size > 0) result.set(path, kept);
    }
    return result;
  }
  const r = await run('getfattr', [
    '--absolute-names',
    ...(o.recursive === false ? [] : ['-R']),
    '-P',
    '-h',
    '-d',
    '-m',
    pattern,
    '-e',
    'hex',
    '--',
    ...dirs,
  ]);
  // getfattr exits 1 when some file had no xattr support; output is still complete for the rest.
  if (r.code !== 0 && r.stdout.length === 0 && r.stderr.trim() !== '') {
    if (/Operation not supported/.test(r.stderr)) return new Map();
    throw new KilnError(
      'XATTR_FAILED',
      `reading extended attributes under ${dirs.join(' ')}: ${r.stderr.trim().split('\n')[0]}`,
    );
  }
  const result = new Map<string, Map<string, Buffer>>();
  let current: Map<string, Buffer> | undefined;
  for (const line of r.stdout.toString('utf8').split('\n')) {
    if (line.startsWith('# file: ')) {
      current = new Map();
      result.set(unquote(line.slice('# file: '.length)), current);
    } else if (current && line.includes('=')) {
      const eq = line.indexOf('=');
      const name = line.slice(0, eq);
      const v = line.slice(eq + 1);
      let value: Buffer;
      if (v.startsWith('0x')) value = Buffer.from(v.slice(2), 'hex');
      else if (v.startsWith('0s')) value = Buffer.from(v.slice(2), 'base64');
      else value = Buffer.from(v.replace(/^"|"$/g, ''), 'utf8');
      current.set(name, value);
    }
  }
  return result;
}

export interface XattrSet {
  /** Absolute path. */
  path: string;
  name: string;
  value: Buffer;
}

/**
 * Set extended attributes in one setfattr process (never following symlinks). Returns the lines setfattr complained
 * about (e.g. EPERM for security.* in a user namespace without CAP_SETFCAP) so the caller can warn.
 */
export async function setXattrs(items: XattrSet[]): Promise<string[]> {
  if (items.length === 0) return [];
  const byPath = new Map<string, XattrSet[]>();
  for (const it of items) {
    const l = byPath.get(it.path);
    if (l) l.push(it);
    else byPath.set(it.path, [it]);
  }
  const parts: Buffer[] = [];
  for (const [p, list] of byPath) {
    parts.push(Buffer.from('# file: ', 'latin1'), Buffer.from(quote(p), 'latin1'), Buffer.from('\n'));
    for (const x of list) parts.push(Buffer.from(`${x.name}=0x${x.value.toString('hex')}\n`, 'utf8'));
    parts.push(Buffer.from('\n'));
  }
  const r = await run('setfattr', ['-h', '--restore=-'], Buffer.concat(parts));
  if (r.code === 0) return [];
  return r.stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
}

export interface MknodItem {
  path: string;
  kind: 'c' | 'b' | 'p';
  major: number;
  minor: number;
}

function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Create device nodes / fifos in one shell process. Throws on the first failure. */
export async function mknodBatch(items: MknodItem[]): Promise<void> {
  if (items.length === 0) return;
  const script =
    'set -e\n' +
    items
      .map((i) =>
        i.kind === 'p' ? `mknod -- ${shq(i.path)} p` : `mknod -- ${shq(i.path)} ${i.kind} ${i.major} ${i.minor}`,
      )
      .join('\n') +
    '\n';
  const r = await run('sh', ['-s'], script);
  if (r.code !== 0) {
    throw new KilnError('MKNOD_FAILED', `creating device nodes failed: ${r.stderr.trim().split('\n')[0]}`);
  }
}

let realRootCache: boolean | undefined;

/**
 * True when running as uid 0 in the initial user namespace (so mknod of real devices and chown to any id work).
 * Inside `unshare --map-root-user` we are uid 0 but the uid_map is not the identity over all ids.
 */
export function isRealRoot(): boolean {
  if (realRootCache !== undefined) return realRootCache;
  if (process.getuid?.() !== 0) return (realRootCache = false);
  try {
    const map = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
    realRootCache = map[0] === '0' && map[1] === '0' && map[2] === '4294967295';
  } catch {
    realRootCache = false;
  }
  return realRootCache;
}

/**
 * The bytes of a regular file whose size the caller has just read (a walk's lstat): open and read, without the
 * `fstat` readFileSync makes for the size. Why: at the restricted level kiln itself runs under its helper, which
 * answers every stat-family call of the process (to report emulated owners) — a fresh checkout's 5,000-file hash
 * walk paid 5,000 such round trips for sizes it already knew. A file that grew since is still read whole.
 */
export function readKnownSize(abs: string, size: number): Buffer {
  const fd = openSync(abs, 'r');
  try {
    const buf = Buffer.allocUnsafe(size + 1);
    let n = 0;
    for (let r = 1; r > 0 && n < buf.length; n += r) r = readSync(fd, buf, n, buf.length - n, null);
    if (n <= size) return buf.subarray(0, n);
    const parts = [buf];
    for (;;) {
      const more = Buffer.allocUnsafe(1 << 16);
      const r = readSync(fd, more, 0, more.length, null);
      if (r === 0) return Buffer.concat(parts);
      parts.push(more.subarray(0, r));
    }
  } finally {
    closeSync(fd);
  }
}
