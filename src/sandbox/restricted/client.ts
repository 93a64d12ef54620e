/**
 * The control connection from kiln (running under the helper's filter) to `kiln-restricted supervise`: one request
 * per line, tab-separated fields (`\\`, `\t`, `\n` escaped), answered in order by `ID ok FIELDS…` or `ID err
 * MESSAGE`; finished steps arrive as `0 exit STEP CODE SIGNAL`. See kiln-restricted.c for the verbs.
 *
 * The fd comes from `KILN_RESTRICTED_FD` (set by the helper for the process it supervises); `captureRestrictedFd()`
 * takes it out of the environment at start-up so that child processes never mistake another fd 3 for it.
 */
import { Socket } from 'node:net';
import { KilnError } from '../../errors.js';

export const RESTRICTED_FD_ENV = 'KILN_RESTRICTED_FD';

let capturedFd: number | undefined;
let client: RestrictedClient | undefined;

/** Take the control fd out of the environment (idempotent). Returns it, or undefined outside the helper. */
export function captureRestrictedFd(): number | undefined {
  const v = process.env[RESTRICTED_FD_ENV];
  if (v !== undefined) {
    delete process.env[RESTRICTED_FD_ENV];
    const n = Number(v);
    if (Number.isInteger(n) && n >= 3) capturedFd = n;
  }
  return capturedFd;
}

/** Whether this process runs under the restricted helper. */
export function insideRestricted(): boolean {
  return captureRestrictedFd() !== undefined;
}

function esc(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n');
}

export interface StepExit {
  code: number;
  /** Signal number, 0 when it exited normally. */
  signal: number;
}

export class RestrictedClient {
  private readonly sock: Socket;
  private nextId = 1;
  private buf = '';
  private readonly pending = new Map<number, { resolve: (f: string[]) => void; reject: (e: Error) => void }>();
  private readonly exits = new Map<number, StepExit>();
  private readonly exitWaiters = new Map<number, (e: StepExit) => void>();
  private closed = false;

  constructor(fd: number) {
    this.sock = new Socket({ fd, readable: true, writable: true });
    this.sock.unref();
    this.sock.on('data', (d: Buffer) => this.onData(d.toString('utf8')));
    const gone = () => {
      this.closed = true;
      const err = new KilnError('RESTRICTED_HELPER_GONE', 'the restricted isolation helper went away');
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    this.sock.on('end', gone);
    this.sock.on('error', gone);
  }

  /** The connection of this process (undefined when not running under the helper). */
  static get(): RestrictedClient | undefined {
    if (client) return client;
    const fd = captureRestrictedFd();
    if (fd === undefined) return undefined;
    client = new RestrictedClient(fd);
    return client;
  }

  /** Like get(), but a KilnError when not under the helper. */
  static require(): RestrictedClient {
    const c = RestrictedClient.get();
    if (!c) {
      throw new KilnError(
        'RESTRICTED_NOT_ACTIVE',
        'isolation restricted: this process does not run under kiln-restricted',
        {
          hint: 'run `kiln build --isolation restricted`, which starts the helper',
        },
      );
    }
    return c;
  }

  private onData(s: string): void {
    this.buf += s;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      const f = line.split('\t');
      const id = Number(f[0]);
      if (id === 0 && f[1] === 'exit') {
        const step = Number(f[2]);
        const ex: StepExit = { code: Number(f[3]), signal: Number(f[4]) };
        const w = this.exitWaiters.get(step);
        if (w) {
          this.exitWaiters.delete(step);
          w(ex);
        } else this.exits.set(step, ex);
        this.refresh();
        continue;
      }
      const p = this.pending.get(id);
      if (!p) continue;
      this.pending.delete(id);
      this.refresh();
      if (f[1] === 'ok') p.resolve(f.slice(2));
      else p.reject(new KilnError('RESTRICTED_HELPER_FAILED', `isolation restricted: ${f.slice(2).join(' ')}`));
    }
  }

  /** Keep the event loop alive only while something waits for the helper. */
  private refresh(): void {
    if (this.pending.size > 0 || this.exitWaiters.size > 0) this.sock.ref();
    else this.sock.unref();
  }

  request(verb: string, ...args: string[]): Promise<string[]> {
    if (this.closed) {
      return Promise.reject(new KilnError('RESTRICTED_HELPER_GONE', 'the restricted isolation helper went away'));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.refresh();
      this.sock.write([String(id), verb, ...args].map(esc).join('\t') + '\n');
    });
  }

  /** Resolves when step `id` (from `spawn`) has exited. */
  waitExit(step: number): Promise<StepExit> {
    const done = this.exits.get(step);
    if (done) {
      this.exits.delete(step);
      return Promise.resolve(done);
    }
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new KilnError('RESTRICTED_HELPER_GONE', 'the restricted isolation helper went away'));
        return;
      }
      this.exitWaiters.set(step, resolve);
      this.refresh();
    });
  }

  /** Start recording the changes below `dir`; returns the track id. */
  async track(dir: string): Promise<number> {
    const [id] = await this.request('track', dir);
    return Number(id);
  }

  /** Write the changes recorded for `track` since the last call to `file` (lines `FLAGS\tREL`) and reset them. */
  async changes(track: number, file: string): Promise<number> {
    const [n] = await this.request('changes', String(track), file);
    return Number(n);
  }

  async untrack(track: number): Promise<void> {
    await this.request('untrack', String(track));
  }

  /** Build `tree` from layer dirs (bottom-most first): files as frozen hard links, whiteouts and opaque dirs applied. */
  async materialize(tree: string, lowers: string[]): Promise<void> {
    await this.request('materialize', tree, ...lowers);
  }

  /**
   * Build the step diff `upper` from `tree` following a plan file (see plan.ts); the upper dir's layer xattrs
   * (file capabilities, opaque markers) go to `xattrs` as `PATH\tNAME\tHEX` lines.
   */
  async apply(tree: string, upper: string, plan: string, xattrs: string): Promise<void> {
    await this.request('apply', tree, upper, plan, xattrs);
  }

  /**
   * Put back into `tree` the subtrees `apply` moved into `upper` (plan entries written with `planText(…, true)`),
   * as frozen hard links; a subtree the upper no longer has is skipped.
   */
  async restore(tree: string, upper: string, rels: string[]): Promise<void> {
    // a request line holds at most 1,024 fields and 64 KiB
    for (let i = 0; i < rels.length;) {
      const batch: string[] = [];
      let size = tree.length + upper.length;
      while (i < rels.length && batch.length < 500 && size + (rels[i] as string).length < 32_768) {
        size += (rels[i] as string).length + 1;
        batch.push(rels[i++] as string);
      }
      if (batch.length === 0) batch.push(rels[i++] as string);
      await this.request('restore', tree, upper, ...batch);
    }
  }

  /**
   * The extended attributes supervised processes see on `paths` (and, when `recursive`, everything below them,
   * never following symlinks), written by the helper to `file` as `PATH\tNAME\tHEX` lines (PATH escaped; see
   * parseXattrs): what `getfattr -R` reads, without its process and the two notifications per file it costs
   * under the filter. At most about 500 paths per call (a request line holds at most 1,024 fields and 64 KiB).
   */
  async xattrs(file: string, recursive: boolean, paths: string[]): Promise<void> {
    await this.request('xattrs', file, recursive ? '1' : '0', ...paths);
  }

  /** rm -rf outside of any filter (fast, never tracked). */
  async remove(dir: string): Promise<void> {
    await this.request('remove', dir);
  }

  async spawn(specFile: string): Promise<number> {
    const [id] = await this.request('spawn', specFile);
    return Number(id);
  }

  async kill(step: number): Promise<void> {
    await this.request('kill', String(step));
  }
}

/** Change flags of the change list (kiln-restricted.c F_*). */
export const CHANGED = 1;
export const REMOVED = 2;
export const REPLACED = 4;
/** A directory was renamed to this path. */
export const MOVED_DIR = 8;

/** Parse a change list file's text into rel path → flags. */
export function parseChanges(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line) continue;
    const tab = line.indexOf('\t');
    if (tab < 0) continue;
    const flags = Number(line.slice(0, tab));
    const rel = unescapeField(line.slice(tab + 1));
    out.set(rel, (out.get(rel) ?? 0) | flags);
  }
  return out;
}

/** A field as the helper escapes it (\\ \t \n: put_escaped in kiln-restricted.c), unescaped. */
function unescapeField(s: string): string {
  return s.replace(/\\(.)/g, (_m, c: string) => (c === 'n' ? '\n' : c === 't' ? '\t' : c));
}

/**
 * Parse the helper's xattr lines — the `xattrs` request's output and the `apply` xattr list, both written by its
 * put_xattr — into absolute path → name → value, paths unescaped; `into` merges batches.
 */
export function parseXattrs(
  text: string,
  into = new Map<string, Map<string, Buffer>>(),
): Map<string, Map<string, Buffer>> {
  for (const line of text.split('\n')) {
    // the path is escaped (no raw tab), the hex value has none
    const a = line.indexOf('\t');
    const b = line.lastIndexOf('\t');
    if (a <= 0 || b <= a) continue;
    const path = unescapeField(line.slice(0, a));
    let m = into.get(path);
    if (!m) into.set(path, (m = new Map()));
    m.set(line.slice(a + 1, b), Buffer.from(line.slice(b + 1), 'hex'));
  }
  return into;
}
