/**
 * The build user namespace (rootless model, like `buildah unshare`): when kiln is not real root it re-executes
 * itself ONCE, for the whole build, inside a new user + mount namespace in which it is uid 0 with the caller's
 * /etc/subuid and /etc/subgid ranges mapped (0 → own uid, 1..N → the subordinate range; set up with the setuid
 * helpers newuidmap/newgidmap of the `uidmap` package). Layer extraction (chown to image uids), overlay mounts and
 * RUN sandboxes then all happen inside it. As real root nothing is re-executed: the same code runs directly.
 *
 * The child knows it is inside from the `KILN_IN_BUILD_NS=1` env marker. The parent relays SIGINT/SIGTERM/SIGHUP
 * and returns the child's exit code (128+signal when it was killed).
 *
 * Two entry points:
 * - `enterBuildNamespace(argv)`: for the CLI. Returns `null` when the caller should carry on in-process (root, or
 *   already inside), else re-executes `node <argv>` inside the namespace and resolves to its exit code.
 * - `runInBuildNamespace(modulePath, exportName, args)`: for the engine and tests. Runs
 *   `(await import(modulePath))[exportName](...args)` in a child process inside the namespace (`ns-entry.ts`) and
 *   resolves to its JSON-serialisable result (a thrown error is re-thrown here as a KilnError).
 */
import { spawn, type StdioOptions } from 'node:child_process';
import { Socket } from 'node:net';
import { access, readFile, constants } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KilnError } from '../errors.js';
import { BUILD_NS_ENV } from './paths.js';

export { BUILD_NS_ENV };

export interface IdRange {
  start: number;
  count: number;
}

export interface UserNamespaceStatus {
  uid: number;
  gid: number;
  /** Real root in the initial namespace (or root inside our build namespace). */
  isRoot: boolean;
  /** Running inside a namespace made by enterBuildNamespace. */
  insideBuildNamespace: boolean;
  userName: string | undefined;
  subuid: IdRange | undefined;
  subgid: IdRange | undefined;
  newuidmap: string | undefined;
  newgidmap: string | undefined;
  unshare: string | undefined;
  /** Whether the kernel lets this user create user namespaces. */
  usernsAllowed: boolean;
  /** Why not, when not. */
  usernsProblem: string | undefined;
}

const SEARCH_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** Absolute path of a host tool (PATH first, then the standard dirs), or undefined. */
export async function findTool(name: string): Promise<string | undefined> {
  const dirs = [...(process.env.PATH ?? '').split(':').filter((d) => d.startsWith('/')), ...SEARCH_PATH];
  for (const d of dirs) {
    const p = `${d}/${name}`;
    try {
      await access(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

/** The first range of `user` (name or uid) in an /etc/subuid-format file. */
export function parseSubIdFile(text: string, user: string | undefined, uid: number): IdRange | undefined {
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [who, start, count] = line.split(':');
    if (who !== user && who !== String(uid)) continue;
    const s = Number(start);
    const c = Number(count);
    if (Number.isInteger(s) && Number.isInteger(c) && s >= 0 && c > 0) return { start: s, count: c };
  }
  return undefined;
}

async function readText(p: string): Promise<string | undefined> {
  try {
    return await readFile(p, 'utf8');
  } catch {
    return undefined;
  }
}

export async function userNamespaceStatus(): Promise<UserNamespaceStatus> {
  const uid = process.getuid?.() ?? -1;
  const gid = process.getgid?.() ?? -1;
  let userName: string | undefined;
  try {
    userName = userInfo().username;
  } catch {
    userName = undefined;
  }
  // The marker only counts where it is true: uid 0 in a namespace (a stray variable must not disable rootless).
  const inside = process.env[BUILD_NS_ENV] === '1' && uid === 0;
  const [subuidText, subgidText, newuidmap, newgidmap, unshare] = await Promise.all([
    readText('/etc/subuid'),
    readText('/etc/subgid'),
    findTool('newuidmap'),
    findTool('newgidmap'),
    findTool('unshare'),
  ]);
  let usernsAllowed = true;
  let usernsProblem: string | undefined;
  const maxNs = await readText('/proc/sys/user/max_user_namespaces');
  if (maxNs !== undefined && Number(maxNs.trim()) === 0) {
    usernsAllowed = false;
    usernsProblem = 'user namespaces are disabled (user.max_user_namespaces = 0)';
  }
  const clone = await readText('/proc/sys/kernel/unprivileged_userns_clone');
  if (uid !== 0 && clone !== undefined && clone.trim() === '0') {
    usernsAllowed = false;
    usernsProblem = 'unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)';
  }
  const apparmor = await readText('/proc/sys/kernel/apparmor_restrict_unprivileged_userns');
  if (uid !== 0 && apparmor !== undefined && apparmor.trim() === '1') {
    usernsAllowed = false;
    usernsProblem =
      'AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)';
  }
  return {
    uid,
    gid,
    isRoot: uid === 0,
    insideBuildNamespace: inside,
    userName,
    subuid: subuidText === undefined ? undefined : parseSubIdFile(subuidText, userName, uid),
    subgid: subgidText === undefined ? undefined : parseSubIdFile(subgidText, userName, uid),
    newuidmap,
    newgidmap,
    unshare,
    usernsAllowed,
    usernsProblem,
  };
}

/** Whether this process must re-execute itself into a build namespace. */
export function needsBuildNamespace(st: UserNamespaceStatus): boolean {
  return !st.isRoot && !st.insideBuildNamespace;
}

/** Throw one clear KilnError (ROOTLESS_UNAVAILABLE) saying what to enable when rootless mode cannot work. */
export function assertRootlessSupported(st: UserNamespaceStatus): void {
  if (!needsBuildNamespace(st)) return;
  const who = st.userName ?? String(st.uid);
  const problems: string[] = [];
  const hints: string[] = [];
  if (!st.unshare) {
    problems.push('`unshare` (util-linux) is not installed');
    hints.push('apt-get install util-linux');
  }
  if (!st.newuidmap || !st.newgidmap) {
    problems.push('newuidmap/newgidmap are not installed');
    hints.push('apt-get install uidmap');
  }
  if (!st.subuid) {
    problems.push(`no subordinate uid range for ${who} in /etc/subuid`);
    hints.push(`add "${who}:100000:65536" to /etc/subuid`);
  }
  if (!st.subgid) {
    problems.push(`no subordinate gid range for ${who} in /etc/subgid`);
    hints.push(`add "${who}:100000:65536" to /etc/subgid`);
  }
  if (!st.usernsAllowed) {
    problems.push(st.usernsProblem ?? 'user namespaces are not allowed');
    hints.push(
      'enable unprivileged user namespaces (sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000)',
    );
  }
  if (problems.length === 0) return;
  throw new KilnError('ROOTLESS_UNAVAILABLE', `rootless builds are not available: ${problems.join('; ')}`, {
    hint: hints.join('; '),
  });
}

/** The uid/gid maps written for the child: 0 → own id, 1.. → the subordinate range. */
export function idMapArgs(ownId: number, range: IdRange): string[] {
  return ['0', String(ownId), '1', '1', String(range.start), String(range.count)];
}

const RELAYED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

const RESTRICTED_HINT =
  'build with --isolation restricted (no user namespace, no setuid helper needed); for userns the pod needs a seccomp profile that allows unshare and mount, and allowPrivilegeEscalation for newuidmap';

/**
 * Why user namespaces are refused when this process is locked down like a Pod Security Standards `restricted`
 * container (no_new_privs and a seccomp filter); undefined when it is not.
 */
async function lockedDown(): Promise<string | undefined> {
  const status = (await readText('/proc/self/status')) ?? '';
  const nnp = /^NoNewPrivs:\s*1$/m.test(status);
  const seccomp = /^Seccomp:\s*2$/m.test(status);
  if (nnp && seccomp) return 'this process runs with no_new_privs under a seccomp filter, as in a restricted pod';
  if (nnp) return 'this process runs with no_new_privs';
  return undefined;
}

/** Like spawnSync but async, with output captured; for the id-map helpers. */
function runHelper(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', (e) => resolve({ code: 127, stderr: e.message }));
    p.on('close', (code) => resolve({ code: code ?? 1, stderr }));
  });
}

export interface EnterOptions {
  /** Extra env for the child (the marker is always added). */
  env?: NodeJS.ProcessEnv;
  /** Parent fds (beyond 0-2) passed to the child as the same numbers: 3, 4, ... */
  passFds?: number;
}

/**
 * Re-execute `node <argv>` (default: this very process's script and arguments) inside a new user + mount
 * namespace. Resolves to `null` when no namespace is needed (root, or already inside): carry on in-process.
 * Otherwise resolves to the child's exit code (128+n when it died of signal n).
 */
export async function enterBuildNamespace(
  argv: string[] = [...process.execArgv, ...process.argv.slice(1)],
  opts: EnterOptions = {},
): Promise<number | null> {
  // uid 0 (real root, or already inside): nothing to look up — the status reads /etc/subuid and searches PATH
  if (process.getuid?.() === 0) {
    if (process.env[BUILD_NS_ENV] === '1') watchParent();
    return null;
  }
  const st = await userNamespaceStatus();
  if (!needsBuildNamespace(st)) {
    if (st.insideBuildNamespace) watchParent();
    return null;
  }
  assertRootlessSupported(st);
  const passFds = opts.passFds ?? 0;
  const readyFd = 3 + passFds;
  const goFd = readyFd + 1;
  // The shell runs right after unshare(2) (so the namespace exists): it reports its pid's readiness, waits until
  // the parent has written the id maps, closes the sync fds and execs node (now uid 0 with full capabilities).
  // The go fd stays open in the child as its lifeline: EOF on it means this parent died (watchParent()).
  const script = `echo ready >&${readyFd}; read -r ok <&${goFd}; [ "$ok" = go ] || exit 125; exec ${readyFd}>&-; KILN_NS_PARENT_FD=${goFd} exec "$@"`;
  const stdio: StdioOptions = ['inherit', 'inherit', 'inherit'];
  for (let i = 0; i < passFds; i++) stdio.push(3 + i);
  stdio.push('pipe', 'pipe');
  // setpriv --pdeathsig: if this parent dies (even SIGKILL), the build inside gets SIGTERM and stops.
  const child = spawn(
    'setpriv',
    [
      '--pdeathsig',
      'SIGTERM',
      '--',
      st.unshare as string,
      '--user',
      '--mount',
      '--propagation',
      'private',
      '--',
      '/bin/sh',
      '-c',
      script,
      'kiln-userns',
      process.execPath,
      ...argv,
    ],
    { stdio, env: { ...process.env, ...opts.env, [BUILD_NS_ENV]: '1' } },
  );
  const relay = (sig: NodeJS.Signals) => () => {
    child.kill(sig);
  };
  const handlers = RELAYED.map((s) => [s, relay(s)] as const);
  for (const [s, h] of handlers) process.on(s, h);
  const exited = new Promise<number>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      for (const [s, h] of handlers) process.off(s, h);
      if (code !== null) resolve(code);
      else resolve(128 + (signal ? (osSignalNumber(signal) ?? 1) : 1));
    });
  });
  const readyPipe = child.stdio[readyFd] as NodeJS.ReadableStream;
  const goPipe = child.stdio[goFd] as NodeJS.WritableStream;
  const ready = await new Promise<boolean>((resolve) => {
    let buf = '';
    readyPipe.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('ready\n')) resolve(true);
    });
    readyPipe.on('end', () => resolve(false));
    readyPipe.on('error', () => resolve(false));
  });
  if (!ready) {
    goPipe.end();
    const code = await exited;
    const locked = await lockedDown();
    if (locked) {
      throw new KilnError(
        'ROOTLESS_UNAVAILABLE',
        `isolation userns is not available here: could not create a user namespace (unshare exited with ${code}; ${locked})`,
        { hint: RESTRICTED_HINT },
      );
    }
    throw new KilnError('ROOTLESS_UNAVAILABLE', `could not create a user namespace (unshare exited with ${code})`, {
      hint: 'enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)',
    });
  }
  const pid = String(child.pid);
  const u = await runHelper(st.newuidmap as string, [pid, ...idMapArgs(st.uid, st.subuid as IdRange)]);
  const g =
    u.code === 0 ? await runHelper(st.newgidmap as string, [pid, ...idMapArgs(st.gid, st.subgid as IdRange)]) : u;
  if (u.code !== 0 || g.code !== 0) {
    goPipe.end();
    await exited;
    const which = u.code !== 0 ? 'newuidmap' : 'newgidmap';
    const locked = await lockedDown();
    if (locked) {
      throw new KilnError(
        'ROOTLESS_UNAVAILABLE',
        `isolation userns is not available here: ${which} failed (${locked}, so the setuid ${which} cannot map ids)`,
        { hint: RESTRICTED_HINT },
      );
    }
    throw new KilnError('ROOTLESS_UNAVAILABLE', `${which} failed: ${(u.code !== 0 ? u : g).stderr.trim()}`, {
      hint: `check the ${which === 'newuidmap' ? '/etc/subuid' : '/etc/subgid'} entry for ${st.userName ?? st.uid} and that ${which} is setuid root (apt-get install uidmap)`,
    });
  }
  // Written, not ended: the open socket is the child's lifeline until this process exits.
  goPipe.write('go\n');
  return exited;
}

let watching = false;

/**
 * Inside the namespace: the parent's end of the lifeline socket (fd KILN_NS_PARENT_FD) closes when the parent
 * dies, even by SIGKILL; then this process gets SIGTERM (a parent-death signal would not survive the exec into
 * the namespace, which raises capabilities). Children may inherit the fd; only this parent's end matters.
 */
function watchParent(): void {
  const fd = Number(process.env.KILN_NS_PARENT_FD);
  delete process.env.KILN_NS_PARENT_FD;
  if (watching || !Number.isInteger(fd) || fd < 3) return;
  watching = true;
  try {
    const sock = new Socket({ fd, readable: true, writable: false });
    sock.on('data', () => undefined);
    const onGone = () => process.kill(process.pid, 'SIGTERM');
    sock.on('end', onGone);
    sock.on('error', onGone);
    sock.unref();
  } catch {
    // not a socket: no lifeline
  }
}

function osSignalNumber(sig: string): number | undefined {
  const table: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGPIPE: 13 };
  return table[sig];
}

export interface RunInNamespaceOptions {
  /** Command prefix to run the child as another user, e.g. `['runuser', '-u', 'kilntest', '--']` (tests). */
  commandPrefix?: string[];
  /** Extra environment for the child. */
  env?: NodeJS.ProcessEnv;
  /** Where the child's stdout/stderr go (default: inherited). */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** Kill the child (SIGTERM, relayed into the namespace) on abort. */
  signal?: AbortSignal;
}

/** The serialised outcome a ns-entry child writes to fd 3. */
export type NsEntryResult = { ok: true; value: unknown } | { ok: false; code: string; message: string; hint?: string };

function entryScript(): string {
  // beside this module in src/ and tsc's dist/; bundled (dist/bundle/), an entry point of the bundle beside its chunks
  const self = fileURLToPath(import.meta.url);
  const m = /userns\.(ts|js)$/.exec(self);
  return m ? self.slice(0, m.index) + `ns-entry.${m[1]}` : join(dirname(self), 'ns-entry.js');
}

/**
 * Run `(await import(modulePath))[exportName](...args)` in a child node process inside the build namespace (or
 * directly as a child when root), and resolve to its result. `args` and the result must be JSON-serialisable.
 */
export async function runInBuildNamespace<T = unknown>(
  modulePath: string,
  exportName: string,
  args: unknown[],
  opts: RunInNamespaceOptions = {},
): Promise<T> {
  const prefix = opts.commandPrefix ?? [];
  const argv = [...process.execArgv, entryScript(), modulePath, exportName, JSON.stringify(args)];
  const cmd = prefix.length > 0 ? (prefix[0] as string) : process.execPath;
  const cmdArgs = prefix.length > 0 ? [...prefix.slice(1), process.execPath, ...argv] : argv;
  const child = spawn(cmd, cmdArgs, {
    stdio: ['ignore', opts.onStdout ? 'pipe' : 'inherit', opts.onStderr ? 'pipe' : 'inherit', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  if (opts.onStdout) child.stdout?.on('data', opts.onStdout);
  if (opts.onStderr) child.stderr?.on('data', opts.onStderr);
  const onAbort = () => child.kill('SIGTERM');
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let out = '';
  (child.stdio[3] as NodeJS.ReadableStream).on('data', (d: Buffer) => (out += d.toString()));
  const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c, s) => resolve([c, s]));
  });
  opts.signal?.removeEventListener('abort', onAbort);
  let res: NsEntryResult | undefined;
  try {
    res = out ? (JSON.parse(out) as NsEntryResult) : undefined;
  } catch {
    res = undefined;
  }
  if (!res) {
    throw new KilnError(
      'NAMESPACE_CHILD_FAILED',
      `build namespace child exited with ${code ?? sig} without a result (${exportName} of ${modulePath})`,
    );
  }
  if (!res.ok) throw new KilnError(res.code, res.message, res.hint ? { hint: res.hint } : {});
  return res.value as T;
}
