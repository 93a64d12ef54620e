/**
 * RUN sandbox: runs one command in an already prepared (merged) root filesystem, BuildKit-style, with host
 * tools only:
 *
 *   setpriv --pdeathsig SIGKILL -- unshare --mount --pid --fork --ipc --uts [--net] --propagation private
 *       --kill-child=SIGKILL -- perl -e PERL_INIT (init-script.ts; pid 1 of the step: in the host view, binds the
 *       rootfs on itself, fresh /proc, minimal /dev (tmpfs + host device binds + devpts + shm), /sys, read-only
 *       /etc/hosts, /etc/resolv.conf, /etc/hostname — with mount(2) — then RUN --mount mounts and `lo` up for
 *       --network none in a shell it runs; then pivot_root, hostname, capability bounding set, user/groups, cwd,
 *       exact env, exec of the argv — so the command itself is pid 1, as in BuildKit)
 *
 * Mount points that did not exist in the rootfs (/etc/hosts, /etc/resolv.conf, /etc/hostname, RUN --mount
 * targets and their missing parents) are created as stubs before the step and removed after it (empty dirs /
 * empty files only, parent mtime restored — BuildKit's MountStubsCleaner, recursive), so they never reach the
 * layer. Exactly like BuildKit (runc), /proc, /dev and /sys and the working dir are created (0755, root) when
 * missing and kept.
 *
 * Must run as root in the current user namespace: real root, or inside the build namespace (userns.ts).
 * Aborting kills pid 1 of the step's pid namespace with SIGKILL, which kills every process in it; the mount
 * namespace dies with it, so no mount is left behind.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { chown, lstat, lutimes, rmdir, mkdir, readFile, readdir, rm, stat, writeFile, chmod } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import type { ProcessResult, ProcessSpec, RunMount, Executor } from '../engine/ports.js';
import { secureJoin } from '../engine/rootfs.js';
import { KilnError } from '../errors.js';
import { DEFAULT_CAPS, PERL_INIT, SYSCALLS } from './init-script.js';
import { defaultKilnHome, kilnTempDir } from './paths.js';
import { resolveExecUser } from './user.js';
import { overlaySupported } from './overlay.js';
import { runTool } from './mount.js';
import { findTool } from './userns.js';

/** BuildKit's default PATH (added when the env has none). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const DEFAULT_HOSTNAME = 'buildkitsandbox';

/** containerd's default masked paths (oci.defaultUnixMaskedPaths / populateDefaultUnixSpec). */
export const MASKED_PATHS = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];
/** containerd's default read-only paths. */
export const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** A `RUN --mount`: the engine's RunMount plus the options only the sandbox interprets. */
export interface SandboxMount extends Omit<RunMount, 'type'> {
  type: RunMount['type'] | 'ssh';
  /** cache: the cache id (default: the target); secret: the secret id. */
  id?: string;
  /**
   * cache: shared (default) | private | locked. Locked also holds `<cache dir>.lock` (flock) during the step, so
   * it is exclusive across kiln processes; private is per process.
   */
  sharing?: 'shared' | 'private' | 'locked';
  /** tmpfs: size in bytes. */
  size?: number;
  /** secret: expose as this env variable instead of (or in addition to, when target is set) a file. */
  env?: string;
  /** secret: fail when the source is missing (default false: the mount is skipped). */
  required?: boolean;
}

export interface RunProcessOptions extends Omit<ProcessSpec, 'mounts' | 'network' | 'cwd' | 'user'> {
  mounts?: SandboxMount[];
  network?: 'host' | 'none';
  /** Default "/". */
  cwd?: string;
  /** Default "" (root). */
  user?: string;
  /** `$KILN_HOME` (cache mounts, temp state); default `defaultKilnHome()`. */
  kilnHome?: string;
  /**
   * Keep the directories created as RUN --mount targets (and as parents of file targets) in the rootfs, removing
   * only file stubs: BuildKit <= 0.9 behaviour (e.g. Debian's docker.io 20.10, the differential reference).
   * Default false: all stubs are removed, as current BuildKit (RemoveMountStubsRecursive) does.
   */
  keepMountStubs?: boolean;
}

export interface RunProcessResult extends ProcessResult {
  /** -1 when killed by a signal (then `signal` is set, e.g. "SIGKILL"). */
  exitCode: number;
  signal?: string;
}

function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Host /etc/resolv.conf adapted for the sandbox like BuildKit: loopback resolvers only work with host network. */
export function sandboxResolvConf(hostText: string, network: 'host' | 'none'): string {
  const ns: string[] = [];
  const search: string[] = [];
  const options: string[] = [];
  const other: string[] = [];
  for (const raw of hostText.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const [key, ...rest] = line.split(/\s+/);
    if (key === 'nameserver' && rest[0]) ns.push(rest[0]);
    else if (key === 'search' || key === 'domain') search.splice(0, search.length, ...rest);
    else if (key === 'options') options.push(...rest);
    else other.push(line);
  }
  const isLoopback = (a: string) => /^127\./.test(a) || a === '::1' || a === '0:0:0:0:0:0:0:1';
  let servers = ns;
  if (network !== 'host' || servers.length === 0) {
    servers = servers.filter((a) => !isLoopback(a));
    if (servers.length === 0) servers = ['8.8.8.8', '8.8.4.4', '2001:4860:4860::8888', '2001:4860:4860::8844'];
  }
  let out = servers.map((s) => `nameserver ${s}\n`).join('');
  if (search.length) out += `search ${search.join(' ')}\n`;
  if (options.length) out += `options ${options.join(' ')}\n`;
  for (const o of other) out += o + '\n';
  return out;
}

export function sandboxHosts(hostname: string): string {
  return `127.0.0.1\tlocalhost ${hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n`;
}

/** The env passed to the command: as given, plus PATH when absent (BuildKit) and HOME when absent (runc). */
export function sandboxEnv(env: string[], home: string): string[] {
  const out = [...env];
  const has = (k: string) => out.some((e) => e === k || e.startsWith(k + '='));
  if (!has('PATH')) out.push(`PATH=${DEFAULT_PATH}`);
  if (!has('HOME')) out.push(`HOME=${home}`);
  return out;
}

// ---- cache mount bookkeeping (in-process; one kiln process per build) ----

const cacheUsers = new Map<string, number>();
const cacheWaiters = new Map<string, (() => void)[]>();

function cacheKey(id: string): string {
  return createHash('sha256').update(id).digest('hex');
}

/**
 * Take a cache mount dir: `m.source` when the engine manages the dir, else `<kilnHome>/cache-mounts/<sha256(id)>`.
 * Sharing (BuildKit): shared = used concurrently; private = a busy dir makes this step use another one
 * (`<dir>-1`, `<dir>-2`, ... also persistent); locked = wait until no other step of this process uses it.
 * uid/gid/mode apply when the dir is created.
 */
export async function acquireCache(kilnHome: string, m: SandboxMount): Promise<{ dir: string; release: () => void }> {
  const base = m.source ?? join(kilnHome, 'cache-mounts', cacheKey(m.id || m.target));
  const sharing = m.sharing ?? 'shared';
  let dir = base;
  if (sharing === 'private') {
    for (let i = 0; (cacheUsers.get(dir) ?? 0) > 0; i++) dir = `${base}-${i + 1}`;
  } else if (sharing === 'locked') {
    while ((cacheUsers.get(dir) ?? 0) > 0) {
      await new Promise<void>((resolve) => {
        const list = cacheWaiters.get(dir) ?? [];
        list.push(resolve);
        cacheWaiters.set(dir, list);
      });
    }
  }
  cacheUsers.set(dir, (cacheUsers.get(dir) ?? 0) + 1);
  const release = () => {
    const n = (cacheUsers.get(dir) ?? 1) - 1;
    if (n <= 0) cacheUsers.delete(dir);
    else cacheUsers.set(dir, n);
    const next = cacheWaiters.get(dir)?.shift();
    if (next) next();
  };
  try {
    await mkdir(dirname(dir), { recursive: true, mode: 0o700 });
    let fresh: boolean;
    try {
      await mkdir(dir, { mode: m.mode ?? 0o755 });
      fresh = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      // A dir created (empty) by the caller counts as new: it gets the mount's ownership and mode too.
      fresh = (await readdir(dir)).length === 0;
    }
    if (fresh) {
      await chmod(dir, m.mode ?? 0o755);
      await chown(dir, m.uid ?? 0, m.gid ?? 0);
    }
    return { dir, release };
  } catch (e) {
    release();
    throw e;
  }
}

// ---- mount stubs ----

/**
 * The mount-point stubs a step created in its rootfs, and the mtimes of the existing dirs they were created in
 * (before the first stub and after the last), so removing them leaves the rootfs as it was.
 */
export class StubTracker {
  readonly paths: string[] = [];
  readonly parents = new Map<string, { before: bigint; after: bigint; names: string }>();

  async create(host: string, make: () => Promise<void>): Promise<void> {
    const parent = dirname(host);
    const known = this.parents.get(parent);
    const isStub = this.paths.includes(parent);
    let before: bigint | undefined;
    let names: string | undefined;
    if (!known && !isStub) {
      before = (await lstat(parent, { bigint: true })).mtimeNs;
      names = (await readdir(parent)).sort().join('/');
    }
    await make();
    this.paths.push(host);
    if (isStub) return;
    const after = (await lstat(parent, { bigint: true })).mtimeNs;
    this.parents.set(parent, {
      before: known?.before ?? (before as bigint),
      after,
      names: known?.names ?? (names as string),
    });
  }
}

/**
 * Set a path's mtime with nanosecond precision (Node's utimes rounds to microseconds, exact only for whole seconds:
 * those — a base image's dirs, extracted from tar — are set in-process; a process spawned from this one blocks its
 * main thread until the child execs, which under load costs more than the whole stub cleanup).
 */
async function setMtimeNs(path: string, ns: bigint): Promise<void> {
  if (ns % 1_000_000_000n === 0n && ns >= 0n) {
    const st = await lstat(path);
    await lutimes(path, st.atime, Number(ns / 1_000_000_000n));
    return;
  }
  const sec = ns / 1_000_000_000n;
  const frac = (ns % 1_000_000_000n).toString().padStart(9, '0');
  await runTool('touch', ['-h', '-m', '-d', `@${sec}.${frac}`, path]);
}

/**
 * Make sure the working directory `cwd` exists in `root` as runc makes it: component by component as written, so
 * an unclean WORKDIR such as `/a/b/../c` (kept as written, like BuildKit) creates `/a/b` as well as `/a/c`
 * (runc's MkdirAllInRoot walks the path literally; differential case 63). Returns the resolved host path.
 */
export async function ensureWorkdir(root: string, cwd: string): Promise<string> {
  const parts = cwd.split('/').filter(Boolean);
  if (parts.includes('..')) {
    let partial = '';
    for (const p of parts.slice(0, -1)) {
      partial += '/' + p;
      if (p !== '.' && p !== '..') await ensureTarget(root, partial, 'dir', undefined);
    }
  }
  return ensureTarget(root, cwd, 'dir', undefined);
}

/**
 * Make sure container path `target` exists in `root` (resolved without leaving it) as a dir or a file; records
 * each created component. Returns the resolved host path.
 */
export async function ensureTarget(
  root: string,
  target: string,
  kind: 'dir' | 'file',
  stubs: StubTracker | undefined,
  keepDirs = false,
): Promise<string> {
  const parts = posix
    .normalize('/' + target)
    .split('/')
    .filter(Boolean);
  let host = root;
  for (let i = 0; i < parts.length; i++) {
    const last = i === parts.length - 1;
    host = await secureJoin(root, '/' + parts.slice(0, i + 1).join('/'));
    let st;
    try {
      st = await stat(host);
    } catch {
      st = undefined;
    }
    if (st) {
      if (last && kind === 'dir' && !st.isDirectory()) {
        throw new KilnError('MOUNT_TARGET_INVALID', `${target} exists and is not a directory`);
      }
      if (!last && !st.isDirectory()) {
        throw new KilnError(
          'MOUNT_TARGET_INVALID',
          `mount target ${target}: /${parts.slice(0, i + 1).join('/')} is not a directory`,
        );
      }
      continue;
    }
    const p = host;
    const make =
      last && kind === 'file'
        ? () => writeFile(p, '', { mode: 0o644, flag: 'wx' })
        : async () => {
            await mkdir(p, { mode: 0o755 });
          };
    if (stubs && !(keepDirs && !(last && kind === 'file'))) await stubs.create(p, make);
    else await make();
  }
  return host;
}

/**
 * Remove the stubs that are still empty (innermost first), then restore the mtime of the dirs they were in:
 * to the value before the stubs when the step did not otherwise change the dir, else to its value after the
 * step (BuildKit's MountStubsCleaner keeps the latter). Best effort, like BuildKit.
 */
async function removeStubs(root: string, stubs: StubTracker): Promise<void> {
  const current = new Map<string, bigint>();
  for (const parent of stubs.parents.keys()) {
    try {
      current.set(parent, (await lstat(parent, { bigint: true })).mtimeNs);
    } catch {
      // gone
    }
  }
  for (const path of [...stubs.paths].reverse()) {
    try {
      const rel = path.slice(root.length) || '/';
      if ((await secureJoin(root, rel)) !== path) continue;
      const st = await lstat(path);
      if (st.isDirectory()) {
        if ((await readdir(path)).length !== 0) continue;
        await rmdir(path);
      } else if (st.size === 0) {
        await rm(path, { force: true });
      }
    } catch {
      // best effort
    }
  }
  for (const [parent, { before, after, names }] of stubs.parents) {
    const now = current.get(parent);
    if (now === undefined) continue;
    // Unchanged by the step: same mtime as right after the stubs were made and the same entries as before them
    // (the entry check guards against a change within the same clock tick as the stub creation).
    let unchanged = now === after;
    if (unchanged) {
      try {
        unchanged = (await readdir(parent)).sort().join('/') === names;
      } catch {
        unchanged = false;
      }
    }
    await setMtimeNs(parent, unchanged ? before : now);
  }
}

// ---- the runner ----

/** One op of the init's mount stage (fields as PERL_INIT reads them; see init-script.ts). */
type MountOp = string[];

interface PreparedMount {
  /** Lines of the shell script the init runs after its own mounts (RUN --mount). */
  script: string[];
  release?: () => void | Promise<void>;
  /** A lock file held (flock) for the whole step: `sharing=locked` across kiln processes. */
  lock?: string;
}

function killTree(pid: number | undefined): void {
  if (pid === undefined) return;
  // Kill pid 1 of the step's pid namespace (the child of unshare): the kernel then kills every process in it.
  try {
    const kids = readFileSyncSafe(`/proc/${pid}/task/${pid}/children`);
    for (const k of kids.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(k), 'SIGKILL');
      } catch {
        // gone
      }
    }
  } catch {
    // no children yet
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
}

function readFileSyncSafe(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

/** Run `opts.argv` in `opts.rootfs` (see the module comment). Resolves when the process exited. */
export async function runProcess(opts: RunProcessOptions): Promise<RunProcessResult> {
  if (process.getuid?.() !== 0) {
    throw new KilnError('SANDBOX_NOT_ROOT', 'RUN needs to run as root or inside the build user namespace', {
      hint: 'call enterBuildNamespace() / runInBuildNamespace() first',
    });
  }
  if (opts.argv.length === 0) throw new KilnError('RUN_EMPTY', 'RUN has no command');
  const sys = SYSCALLS[process.arch];
  if (!sys) throw new KilnError('SANDBOX_UNSUPPORTED_ARCH', `RUN is not supported on ${process.arch}`);
  if (opts.signal?.aborted) throw new KilnError('RUN_ABORTED', 'RUN was aborted', { cause: opts.signal.reason });
  const kilnHome = opts.kilnHome ?? defaultKilnHome();
  const root = opts.rootfs;
  const network = opts.network ?? 'host';
  const hostname = opts.hostname ?? DEFAULT_HOSTNAME;
  const cwd = posix.normalize('/' + (opts.cwd ?? '/'));
  for (const m of opts.mounts ?? []) {
    if (m.type === 'ssh') {
      throw new KilnError('RUN_MOUNT_SSH_UNSUPPORTED', 'RUN --mount=type=ssh is not supported yet', {
        hint: 'use a secret mount (RUN --mount=type=secret) for credentials',
      });
    }
  }

  const user = await resolveExecUser(root, opts.user ?? '');
  const env = sandboxEnv(opts.env, user.home);
  const state = await kilnTempDir(kilnHome, 'run-');
  const stubs = new StubTracker();
  const releases: (() => void | Promise<void>)[] = [];
  try {
    // The working dir: created (root, 0755) when missing and kept in the layer, like BuildKit.
    try {
      await ensureWorkdir(root, '/' + (opts.cwd ?? '/'));
    } catch (e) {
      throw new KilnError('WORKDIR_INVALID', `failed to create working directory ${cwd}: ${(e as Error).message}`, {
        cause: e,
      });
    }

    const hostResolv = await readFile('/etc/resolv.conf', 'utf8').catch(() => '');
    await writeFile(join(state, 'hosts'), sandboxHosts(hostname), { mode: 0o644 });
    await writeFile(join(state, 'resolv.conf'), sandboxResolvConf(hostResolv, network), { mode: 0o644 });
    await writeFile(join(state, 'hostname'), hostname + '\n', { mode: 0o644 });

    // The mounts (PERL_INIT's op list, made with mount(2) by the init itself: no process per mount).
    const MS = { RDONLY: 1, NOSUID: 2, NODEV: 4, NOEXEC: 8, BIND: 4096, REC: 16384, STRICTATIME: 1 << 24 };
    const mnt = (src: string, target: string, type: string, flags: number, data = ''): string[] => [
      src,
      target,
      type,
      String(flags),
      data,
    ];
    const must = (label: string, ...alts: string[][]): MountOp => ['m', label, String(alts.length), ...alts.flat()];
    const ops: MountOp[] = [must('bind the rootfs', mnt(root, root, '', MS.BIND))];
    // /proc, /dev and /sys are created (0755) when missing and kept, as runc does under BuildKit: BuildKit's
    // first RUN layer over a base without them contains these three empty dirs.
    const procDir = await ensureTarget(root, '/proc', 'dir', undefined);
    const devDir = await ensureTarget(root, '/dev', 'dir', undefined);
    const sysDir = await ensureTarget(root, '/sys', 'dir', undefined);
    const noExec = MS.NOSUID | MS.NODEV | MS.NOEXEC;
    ops.push(
      must('mount /proc', mnt('proc', procDir, 'proc', noExec), mnt('/proc', procDir, '', MS.BIND | MS.REC)),
      must('mount /dev', mnt('tmpfs', devDir, 'tmpfs', MS.NOSUID | MS.STRICTATIME, 'mode=755,size=65536k')),
    );
    for (const d of ['null', 'zero', 'full', 'random', 'urandom', 'tty']) {
      ops.push(['t', `${devDir}/${d}`], must(`bind /dev/${d}`, mnt(`/dev/${d}`, `${devDir}/${d}`, '', MS.BIND)));
    }
    const devpts = 'newinstance,ptmxmode=0666,mode=0620';
    ops.push(
      ['d', `${devDir}/pts`, '755'],
      ['d', `${devDir}/shm`, '755'],
      ['d', `${devDir}/mqueue`, '755'],
      must(
        'mount /dev/pts',
        mnt('devpts', `${devDir}/pts`, 'devpts', MS.NOSUID | MS.NOEXEC, `${devpts},gid=5`),
        mnt('devpts', `${devDir}/pts`, 'devpts', MS.NOSUID | MS.NOEXEC, devpts),
      ),
      must('mount /dev/shm', mnt('shm', `${devDir}/shm`, 'tmpfs', noExec, 'mode=1777,size=65536k')),
      ['o', ...mnt('mqueue', `${devDir}/mqueue`, 'mqueue', noExec), `${devDir}/mqueue`],
      ['l', 'pts/ptmx', `${devDir}/ptmx`],
      ['l', '/proc/self/fd', `${devDir}/fd`],
      ['l', '/proc/self/fd/0', `${devDir}/stdin`],
      ['l', '/proc/self/fd/1', `${devDir}/stdout`],
      ['l', '/proc/self/fd/2', `${devDir}/stderr`],
      // sysfs needs a network namespace of our own: else the host's /sys, bound read-only
      ['o', ...mnt('sysfs', sysDir, 'sysfs', MS.RDONLY | noExec), ''],
      ['O', '2'],
      must('mount /sys', mnt('/sys', sysDir, '', MS.BIND | MS.REC)),
      ['r', sysDir],
    );
    // containerd's default masked and read-only paths (what BuildKit's RUN gets), so that even a root step
    // without a user namespace cannot reach host kernel knobs through /proc and /sys.
    const inMounted = (p: string) => (p.startsWith('/proc/') ? procDir + p.slice(5) : sysDir + p.slice(4));
    for (const p of READONLY_PATHS) {
      const t = inMounted(p);
      ops.push(['e', t, '2'], must(`make ${p} read-only`, mnt(t, t, '', MS.BIND)), ['r', t]);
    }
    for (const p of MASKED_PATHS) {
      const t = inMounted(p);
      ops.push(
        ['D', t, '1'],
        must(`mask ${p}`, mnt('tmpfs', t, 'tmpfs', MS.RDONLY | noExec, 'size=0')),
        ['F', t, '1'],
        must(`mask ${p}`, mnt('/dev/null', t, '', MS.BIND)),
      );
    }
    for (const f of ['hosts', 'resolv.conf', 'hostname']) {
      const t = await ensureTarget(root, `/etc/${f}`, 'file', stubs);
      ops.push(must(`bind /etc/${f}`, mnt(join(state, f), t, '', MS.BIND)), ['r', t]);
    }
    // what is left runs as a shell script from the init (its die/robind helpers defined there)
    const lines: string[] = [];
    if (network === 'none') {
      lines.push('ip link set lo up 2>/dev/null || busybox ip link set lo up 2>/dev/null || die "cannot bring up lo"');
    }

    // RUN --mount mounts, parents first (BuildKit sorts by target).
    const secretEnv: [string, string][] = [];
    const key = (m: SandboxMount) => posix.normalize('/' + m.target);
    const userMounts = [...(opts.mounts ?? [])].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
    let n = 0;
    const hostOf = new Map<SandboxMount, string>();
    const locks: string[] = [];
    for (const m of userMounts) {
      const pm = await prepareMount(m, {
        root,
        state,
        kilnHome,
        stubs,
        index: n++,
        secretEnv,
        all: userMounts,
        hostOf,
        keepMountStubs: opts.keepMountStubs === true,
      });
      if (!pm) continue;
      lines.push(...pm.script);
      if (pm.release) releases.push(pm.release);
      if (pm.lock && !locks.includes(pm.lock)) locks.push(pm.lock);
    }

    // The spec for PERL_INIT.
    const fields = [
      root,
      cwd,
      String(user.uid),
      String(user.gid),
      user.additionalGids.join(','),
      hostname,
      String(env.length),
      ...env,
      String(secretEnv.length),
      ...secretEnv.flat(),
      String(opts.argv.length),
      ...opts.argv,
    ];
    for (const f of fields) {
      if (f.includes('\0')) throw new KilnError('RUN_BAD_ARG', 'RUN arguments and env must not contain NUL bytes');
    }
    const specPath = join(state, 'spec');
    await writeFile(specPath, fields.join('\0'), { mode: 0o600 });
    if (lines.length > 0) ops.push(['s', lines.join('\n')]);
    const opsText = ops.flat();
    if (opsText.some((f) => f.includes('\0'))) {
      throw new KilnError('RUN_BAD_ARG', 'RUN mount paths must not contain NUL bytes');
    }
    const opsPath = join(state, 'mounts');
    await writeFile(opsPath, opsText.join('\0') + '\0', { mode: 0o600 });
    const lastCap = Number((await readFile('/proc/sys/kernel/cap_last_cap', 'utf8').catch(() => '40')).trim()) || 40;
    const perlArgs = [
      specPath,
      sys.pivotRoot,
      sys.umount2,
      sys.setgroups,
      sys.setresgid,
      sys.setresuid,
      sys.sethostname,
      sys.prctl,
      DEFAULT_CAPS.join(','),
      lastCap,
      sys.mount,
      opsPath,
      sys.close,
    ].map(String);
    // unshare execs perl itself (no /bin/sh between them: one process less per RUN); its absence is told here
    const perl = await perlPath();
    if (!perl)
      throw new KilnError(
        'SANDBOX_SETUP_FAILED',
        'RUN sandbox setup failed: perl is required for RUN (apt-get install perl-base)',
      );

    const unshareArgs = [
      '--mount',
      '--pid',
      '--fork',
      '--ipc',
      '--uts',
      '--propagation',
      'private',
      '--kill-child=SIGKILL',
    ];
    if (network === 'none') unshareArgs.push('--net');
    return await spawnSandbox(unshareArgs, [perl, '-e', PERL_INIT, ...perlArgs], opts, locks.sort());
  } finally {
    for (const r of releases) await r();
    await removeStubs(root, stubs);
    await rm(state, { recursive: true, force: true });
  }
}

/** The host's perl (looked up once per process). */
let perlLookup: Promise<string | undefined> | undefined;
function perlPath(): Promise<string | undefined> {
  perlLookup ??= findTool('perl');
  return perlLookup;
}

async function spawnSandbox(
  unshareArgs: string[],
  init: string[],
  opts: RunProcessOptions,
  locks: string[],
): Promise<RunProcessResult> {
  // setpriv --pdeathsig: if kiln itself dies (even SIGKILL), unshare is killed, and with it (--kill-child) pid 1
  // of the step and so the whole pid namespace. Locked cache mounts: `flock` holds each lock file (in sorted
  // order) around the step, so other kiln processes wait too; each link of the chain dies with its parent.
  const pdeath = ['setpriv', '--pdeathsig', 'SIGKILL', '--'];
  const chain = [...locks.flatMap((l) => ['flock', '--exclusive', l, ...pdeath]), 'unshare', ...unshareArgs];
  const child = spawn('setpriv', [...pdeath.slice(1), ...chain, '--', ...init], {
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
  });
  child.stdout?.on('data', (d: Buffer) => opts.onStdout?.(d));
  child.stderr?.on('data', (d: Buffer) => opts.onStderr?.(d));
  let setupError = '';
  (child.stdio[3] as NodeJS.ReadableStream).on('data', (d: Buffer) => (setupError += d.toString()));
  let aborted = false;
  const onAbort = () => {
    aborted = true;
    killTree(child.pid);
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();
  try {
    const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.on('error', (e) =>
        reject(
          new KilnError('SANDBOX_START_FAILED', `cannot start the RUN sandbox: ${e.message}`, {
            hint: 'apt-get install util-linux',
          }),
        ),
      );
      child.on('close', (c, s) => resolve([c, s]));
    });
    if (aborted) {
      throw new KilnError('RUN_ABORTED', 'RUN was aborted', { cause: opts.signal?.reason });
    }
    if (setupError) {
      const msg = setupError.trim();
      if (code === 127 && msg.startsWith('exec:')) {
        throw new KilnError('RUN_EXEC_FAILED', msg);
      }
      throw new KilnError('SANDBOX_SETUP_FAILED', `RUN sandbox setup failed: ${msg}`);
    }
    if (sig) return { exitCode: -1, signal: sig };
    return { exitCode: code ?? -1 };
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

interface MountContext {
  root: string;
  state: string;
  kilnHome: string;
  stubs: StubTracker;
  index: number;
  secretEnv: [string, string][];
  all: SandboxMount[];
  /** Host path where each earlier mount's content is (for mounts nested inside it). */
  hostOf: Map<SandboxMount, string>;
  keepMountStubs: boolean;
}

/** Resolve a mount target: in the rootfs, or inside an earlier tmpfs/cache mount that contains it. */
async function targetFor(
  m: SandboxMount,
  kind: 'dir' | 'file',
  ctx: MountContext,
  hostOf: Map<SandboxMount, string>,
): Promise<{ path: string; pre: string[] }> {
  const target = posix.normalize('/' + m.target);
  let parent: SandboxMount | undefined;
  for (const o of ctx.all) {
    if (o === m) break;
    const ot = posix.normalize('/' + o.target);
    if (ot !== target && target.startsWith(ot === '/' ? '/' : ot + '/') && hostOf.has(o)) {
      if (!parent || ot.length > posix.normalize('/' + parent.target).length) parent = o;
    }
  }
  if (!parent) {
    return { path: await ensureTarget(ctx.root, target, kind, ctx.stubs, ctx.keepMountStubs), pre: [] };
  }
  const ptarget = posix.normalize('/' + parent.target);
  const rel = target.slice(ptarget === '/' ? 1 : ptarget.length + 1);
  if (parent.type === 'cache') {
    const base = hostOf.get(parent) as string;
    return { path: await ensureTarget(base, '/' + rel, kind, undefined), pre: [] };
  }
  if (parent.type === 'tmpfs') {
    const path = join(hostOf.get(parent) as string, rel);
    const mk = kind === 'dir' ? `mkdir -p ${q(path)}` : `mkdir -p ${q(dirname(path))} && : > ${q(path)}`;
    return { path, pre: [`${mk} || die "cannot create mount point ${target}"`] };
  }
  throw new KilnError('RUN_MOUNT_NESTED', `mount target ${target} is inside the ${parent.type} mount at ${ptarget}`, {
    hint: 'nesting is supported under tmpfs and cache mounts only',
  });
}

async function prepareMount(m: SandboxMount, ctx: MountContext): Promise<PreparedMount | undefined> {
  const { state, hostOf } = ctx;
  switch (m.type) {
    case 'tmpfs': {
      const { path, pre } = await targetFor(m, 'dir', ctx, hostOf);
      hostOf.set(m, path);
      const size = m.size ? `,size=${m.size}` : '';
      return {
        script: [
          ...pre,
          `mount --no-canonicalize -t tmpfs -o nosuid,strictatime${size} tmpfs ${q(path)} || die "cannot mount tmpfs on ${m.target}"`,
        ],
      };
    }
    case 'cache': {
      const { dir, release } = await acquireCache(ctx.kilnHome, m);
      try {
        const { path, pre } = await targetFor(m, 'dir', ctx, hostOf);
        hostOf.set(m, dir);
        const script = [
          ...pre,
          `mount --no-canonicalize --bind ${q(dir)} ${q(path)} || die "cannot mount cache on ${m.target}"`,
        ];
        if (m.readonly) script.push(`robind ${q(path)}`);
        return m.sharing === 'locked' ? { script, release, lock: `${dir}.lock` } : { script, release };
      } catch (e) {
        release();
        throw e;
      }
    }
    case 'bind': {
      if (!m.source) throw new KilnError('RUN_MOUNT_INVALID', `bind mount on ${m.target} has no source`);
      let st;
      try {
        st = await stat(m.source);
      } catch {
        throw new KilnError('RUN_MOUNT_INVALID', `bind mount source for ${m.target} not found`);
      }
      const kind = st.isDirectory() ? 'dir' : 'file';
      const { path, pre } = await targetFor(m, kind, ctx, hostOf);
      const readonly = m.readonly ?? true;
      if (readonly) {
        return {
          script: [
            ...pre,
            `mount --no-canonicalize --bind ${q(m.source)} ${q(path)} || die "cannot bind ${m.target}"`,
            `robind ${q(path)}`,
          ],
        };
      }
      // Writable bind: writes go to a throwaway layer (overlay over the source, or a copy) discarded after the step.
      const scratch = join(state, `bind${ctx.index}`);
      await mkdir(scratch, { mode: 0o700 });
      if (kind === 'dir' && (await overlaySupported(ctx.kilnHome))) {
        await Promise.all([mkdir(join(scratch, 'upper')), mkdir(join(scratch, 'work'))]);
        const o = `lowerdir=${m.source},upperdir=${scratch}/upper,workdir=${scratch}/work,userxattr`;
        if (/[,:\\]/.test(m.source))
          throw new KilnError('RUN_MOUNT_INVALID', `bind source path not usable: ${m.source}`);
        return {
          script: [
            ...pre,
            `mount --no-canonicalize -t overlay -o ${q(o)} overlay ${q(path)} || die "cannot mount ${m.target}"`,
          ],
        };
      }
      const copy = join(scratch, 'copy');
      return {
        script: [
          ...pre,
          `cp -a --reflink=auto ${q(m.source)} ${q(copy)} || die "cannot copy bind source for ${m.target}"`,
          `mount --no-canonicalize --bind ${q(copy)} ${q(path)} || die "cannot bind ${m.target}"`,
        ],
      };
    }
    case 'secret': {
      const id = m.id ?? posix.basename(m.target || '');
      let present = false;
      if (m.source) {
        try {
          present = (await stat(m.source)).isFile();
        } catch {
          present = false;
        }
      }
      if (!present) {
        if (m.required) {
          throw new KilnError('SECRET_NOT_FOUND', `secret ${id} not found`, {
            hint: `pass it with --secret id=${id},src=FILE`,
          });
        }
        return undefined;
      }
      const src = m.source as string;
      if (m.env) ctx.secretEnv.push([m.env, src]);
      if (m.env && !m.target) return undefined;
      const { path, pre } = await targetFor(m, 'file', ctx, hostOf);
      // The secret lives on a tmpfs private to the step's mount namespace, never on disk in the rootfs.
      const dir = join(state, `secret${ctx.index}`);
      await mkdir(dir, { mode: 0o700 });
      const file = `${dir}/s`;
      const mode = (m.mode ?? 0o400).toString(8);
      return {
        script: [
          ...pre,
          `mount --no-canonicalize -t tmpfs -o nosuid,nodev,noexec,mode=700,size=1m tmpfs ${q(dir)} || die "cannot mount secret tmpfs"`,
          `cat ${q(src)} > ${q(file)} && chmod ${mode} ${q(file)} && chown ${m.uid ?? 0}:${m.gid ?? 0} ${q(file)} || die "cannot prepare secret ${id}"`,
          `mount --no-canonicalize --bind ${q(file)} ${q(path)} || die "cannot mount secret ${id}"`,
          `robind ${q(path)}`,
        ],
      };
    }
    default:
      throw new KilnError('RUN_MOUNT_INVALID', `unsupported mount type ${String(m.type)}`);
  }
}

/**
 * The engine's Executor port backed by runProcess. `keepMountStubs` (default: env `KILN_MOUNT_STUBS=keep`)
 * selects the BuildKit <= 0.9 mount-stub behaviour (see RunProcessOptions).
 */
export class NamespaceExecutor implements Executor {
  constructor(private readonly opts: { kilnHome?: string; keepMountStubs?: boolean } = {}) {}

  run(spec: ProcessSpec): Promise<ProcessResult> {
    const o: RunProcessOptions = { ...spec };
    if (this.opts.kilnHome) o.kilnHome = this.opts.kilnHome;
    if (this.opts.keepMountStubs ?? process.env.KILN_MOUNT_STUBS === 'keep') o.keepMountStubs = true;
    return runProcess(o);
  }
}
