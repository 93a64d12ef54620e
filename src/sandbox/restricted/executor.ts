/**
 * RestrictedExecutor: RUN steps without namespaces, mounts or privileges.
 *
 * The step runs under proot (ptrace-based path translation: the tree is the step's `/`), started by the helper
 * outside kiln's own filter:
 *
 *   kiln-restricted (supervisor) ─ fork ─ proot -r TREE -b … (PROOT_NO_SECCOMP=1)
 *        └ /dev/.kiln-shim shim SPEC: installs the step's seccomp filter (handed to the supervisor, which answers
 *          ownership, identity, stat and uname calls), switches to the step's user (emulated), chdir, exact env,
 *          exec of the command
 *
 * What the step gets: `/proc` and `/sys` of the pod, a minimal `/dev` (null, zero, full, random, urandom, tty, pts,
 * shm), read-only `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, `uname -n` = buildkitsandbox, and RUN
 * --mount=type=cache|secret|bind|tmpfs as proot bindings (read-only ones are enforced by the supervisor: writes
 * fail with EROFS). What it cannot get fails with one line: `--network=none` (no network namespace) and
 * `--mount=type=ssh`. Not isolated: other processes of the pod are visible in /proc, and the step runs with the
 * pod's uid (proot is no security boundary; the pod is).
 */
import { spawn } from 'node:child_process';
import { chown, copyFile, cp, link, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Executor, ProcessResult, ProcessSpec } from '../../engine/ports.js';
import { KilnError } from '../../errors.js';
import { kilnTempDir } from '../paths.js';
import { runTool } from '../mount.js';
import {
  DEFAULT_HOSTNAME,
  acquireCache,
  ensureTarget,
  ensureWorkdir,
  sandboxEnv,
  sandboxHosts,
  sandboxResolvConf,
  type SandboxMount,
} from '../run.js';
import { resolveExecUser } from '../user.js';
import type { RestrictedClient } from './client.js';
import { prootDirect, prootIsBlind, prootMarks } from './helper.js';

export interface RestrictedExecutorOptions {
  kilnHome: string;
  client: RestrictedClient;
  /** The kiln-restricted binary (also the steps' shim). */
  helper: string;
  proot: string;
}

const SIGNAL_NAMES: Record<number, string> = { 1: 'SIGHUP', 2: 'SIGINT', 6: 'SIGABRT', 9: 'SIGKILL', 15: 'SIGTERM' };

function unsupported(what: string, hint: string): KilnError {
  return new KilnError('ISOLATION_UNSUPPORTED', `${what} is not available at isolation level restricted`, { hint });
}

/** Tab-separated spec line value escaping (kiln-restricted.c unescape). */
function esc(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n');
}

const DEVICES = ['null', 'zero', 'full', 'random', 'urandom', 'tty'];

export class RestrictedExecutor implements Executor {
  constructor(private readonly opts: RestrictedExecutorOptions) {}

  /** The restricted level's own cache-mount dir for an engine-managed `$KILN_HOME/cache-mounts/<id>` source. */
  private cacheSource(m: SandboxMount): string | undefined {
    const shared = join(this.opts.kilnHome, 'cache-mounts') + '/';
    if (m.source?.startsWith(shared))
      return join(this.opts.kilnHome, 'restricted', 'cache-mounts', m.source.slice(shared.length));
    return m.source;
  }

  async run(spec: ProcessSpec): Promise<ProcessResult> {
    if (spec.argv.length === 0) throw new KilnError('RUN_EMPTY', 'RUN has no command');
    if (spec.network === 'none') {
      throw unsupported(
        'RUN --network=none (a network namespace)',
        'a restricted pod cannot create network namespaces; use --isolation userns where unshare is allowed',
      );
    }
    for (const m of spec.mounts as SandboxMount[]) {
      if (m.type === 'ssh') throw unsupported('RUN --mount=type=ssh', 'use a secret mount for credentials');
    }
    if (spec.signal?.aborted) throw new KilnError('RUN_ABORTED', 'RUN was aborted', { cause: spec.signal.reason });
    const { client, kilnHome } = this.opts;
    const root = spec.rootfs;
    const cwd = posix.normalize('/' + (spec.cwd || '/'));
    const hostname = spec.hostname ?? DEFAULT_HOSTNAME;
    const user = await resolveExecUser(root, spec.user);
    const env = sandboxEnv(spec.env, user.home);
    let hostCwd: string;
    try {
      hostCwd = await ensureWorkdir(root, '/' + (spec.cwd || '/'));
    } catch (e) {
      throw new KilnError('WORKDIR_INVALID', `failed to create working directory ${cwd}: ${(e as Error).message}`, {
        cause: e,
      });
    }
    // like runc under BuildKit: /proc, /dev and /sys exist (0755, root) in the step's root and are kept
    for (const d of ['/proc', '/dev', '/sys']) await ensureTarget(root, d, 'dir', undefined);

    const state = await kilnTempDir(kilnHome, 'rrun-');
    const releases: (() => void | Promise<void>)[] = [];
    try {
      const dev = join(state, 'dev');
      await mkdir(join(dev, 'shm'), { recursive: true, mode: 0o755 });
      await mkdir(join(dev, 'pts'), { mode: 0o755 });
      for (const d of DEVICES) await writeFile(join(dev, d), '');
      // a pty for apt and friends: the host's /dev/ptmx when it is the device (a container's devpts with
      // ptmxmode=000 makes pts/ptmx unusable), else the usual link
      const ptmx = await stat('/dev/ptmx').catch(() => undefined);
      if (ptmx?.isCharacterDevice()) await writeFile(join(dev, 'ptmx'), '');
      else await symlink('pts/ptmx', join(dev, 'ptmx'));
      await symlink('/proc/self/fd', join(dev, 'fd'));
      for (const [i, n] of ['stdin', 'stdout', 'stderr'].entries()) await symlink(`/proc/self/fd/${i}`, join(dev, n));
      const hostResolv = await readFile('/etc/resolv.conf', 'utf8').catch(() => '');
      const etc = {
        hosts: sandboxHosts(hostname),
        'resolv.conf': sandboxResolvConf(hostResolv, 'host'),
        hostname: hostname + '\n',
      };
      const binds: [string, string][] = [
        ['/proc', '/proc'],
        ['/sys', '/sys'],
        [dev, '/dev'],
        ...DEVICES.map((d): [string, string] => [`/dev/${d}`, `/dev/${d}`]),
        ['/dev/pts', '/dev/pts'],
      ];
      if (ptmx?.isCharacterDevice()) binds.push(['/dev/ptmx', '/dev/ptmx']);
      const ro: string[] = [];
      for (const [f, text] of Object.entries(etc)) {
        const p = join(state, f);
        await writeFile(p, text, { mode: 0o644 });
        binds.push([p, `/etc/${f}`]);
        ro.push(p);
      }

      // RUN --mount
      const secretEnv: string[] = [];
      let n = 0;
      for (const m0 of spec.mounts as SandboxMount[]) {
        const m = { ...m0 };
        const target = posix.normalize('/' + m.target);
        n++;
        switch (m.type) {
          case 'cache': {
            const source = this.cacheSource(m);
            const c = await acquireCache(join(kilnHome, 'restricted'), source ? { ...m, source } : m);
            releases.push(c.release);
            binds.push([c.dir, target]);
            if (m.readonly) ro.push(c.dir);
            break;
          }
          case 'tmpfs': {
            const d = join(state, `tmpfs${n}`);
            await mkdir(d, { mode: 0o1777 });
            binds.push([d, target]);
            break;
          }
          case 'secret': {
            let present = false;
            if (m.source)
              present = await stat(m.source).then(
                (s) => s.isFile(),
                () => false,
              );
            if (!present) {
              if (m.required) {
                throw new KilnError('SECRET_NOT_FOUND', `secret ${m.id ?? target} not found`, {
                  hint: `pass it with --secret id=${m.id ?? posix.basename(target)},src=FILE`,
                });
              }
              break;
            }
            if (m.env) secretEnv.push(`${m.env}=${await readFile(m.source as string, 'utf8')}`);
            if (m.env && !m.target) break;
            const f = join(state, `secret${n}`);
            await copyFile(m.source as string, f);
            await chown(f, m.uid ?? 0, m.gid ?? 0);
            await runTool('chmod', [(m.mode ?? 0o400).toString(8), f]);
            binds.push([f, target]);
            ro.push(f);
            break;
          }
          case 'bind': {
            if (!m.source) throw new KilnError('RUN_MOUNT_INVALID', `bind mount on ${target} has no source`);
            const st = await stat(m.source).catch(() => undefined);
            if (!st) throw new KilnError('RUN_MOUNT_INVALID', `bind mount source for ${target} not found`);
            if (m.readonly ?? true) {
              binds.push([m.source, target]);
              ro.push(m.source);
            } else {
              // writes go to a throwaway copy
              const copy = join(state, `bind${n}`);
              await cp(m.source, copy, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
              binds.push([copy, target]);
            }
            break;
          }
          default:
            throw new KilnError('RUN_MOUNT_INVALID', `unsupported mount type ${String(m.type)}`);
        }
      }

      // the shim and its spec live in the step's /dev and remove themselves when the step starts
      const shim = join(dev, '.kiln-shim');
      await link(this.opts.helper, shim).catch(() => copyFile(this.opts.helper, shim));
      const fields = [
        cwd,
        String(user.uid),
        String(user.gid),
        user.additionalGids.join(','),
        String(env.length + secretEnv.length),
        ...env,
        ...secretEnv,
        String(spec.argv.length),
        ...spec.argv,
      ];
      if (fields.some((f) => f.includes('\0'))) {
        throw new KilnError('RUN_BAD_ARG', 'RUN arguments and env must not contain NUL bytes');
      }
      await writeFile(join(dev, '.kiln-spec'), fields.join('\0'), { mode: 0o600 });

      const out = join(state, 'out');
      const err = join(state, 'err');
      const errfd = join(state, 'errfd');
      const mk = await runTool('mkfifo', ['-m', '600', out, err]);
      if (mk.code !== 0) throw new KilnError('SANDBOX_SETUP_FAILED', `RUN sandbox setup failed: ${mk.stderr.trim()}`);
      await writeFile(errfd, '', { mode: 0o600 });
      const ptmp = join(state, 'proot');
      await mkdir(ptmp, { mode: 0o700 });

      const args = ['proot', '-r', root, '-w', cwd];
      for (const [src, dst] of binds) args.push('-b', `${src}:${dst}`);
      args.push('/dev/.kiln-shim', 'shim', '/dev/.kiln-spec', '/dev/.kiln-shim');
      const lines = [
        `prog\t${esc(this.opts.proot)}`,
        ...args.map((a) => `arg\t${esc(a)}`),
        // kiln's proot (marks): its seccomp mode, the helper adds PROOT_MARK (kiln-restricted.c, MARK); another proot
        // stops at every system call and translates paths before the kernel evaluates the step's filter (in its
        // seccomp mode it would hand the helper untranslated paths: its trace stop loses to our notification);
        // Debian's proot 5.1 leaves statx, openat2, faccessat2 and fchmodat2 untranslated: the helper maps those
        // (mark 2: that proot's chdir moves the kernel's current directory too: the helper takes the opens for
        // writing from proot, kiln-restricted.c DIRECT)
        ...(prootMarks() ? [`mark\t${prootDirect() ? 2 : 1}`] : ['env\tPROOT_NO_SECCOMP=1']),
        `env\tPROOT_TMP_DIR=${esc(ptmp)}`,
        'env\tPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        `stdout\t${esc(out)}`,
        `stderr\t${esc(err)}`,
        `errfd\t${esc(errfd)}`,
        `hostname\t${esc(hostname)}`,
        // for the calls proot leaves untranslated (statx, openat2, faccessat2, fchmodat2): the helper maps them
        `root\t${esc(root)}`,
        `blind\t${prootIsBlind() ? 1 : 0}`,
        // proot keeps the step's current directory to itself; the kernel's is here (relative paths of blind calls)
        `cwd\t${esc(hostCwd)}`,
        ...binds.flatMap(([src, dst]) => [`bind\t${esc(src)}`, `to\t${esc(dst)}`]),
        ...ro.map((p) => `ro\t${esc(p)}`),
      ];
      const stepFile = join(state, 'step');
      await writeFile(stepFile, lines.join('\n') + '\n', { mode: 0o600 });

      // the fifos are read by cat: opening a fifo blocks until the step opens its end
      const readers = [
        [out, spec.onStdout],
        [err, spec.onStderr],
      ].map(([fifo, sink]) => {
        const c = spawn('cat', [fifo as string], { stdio: ['ignore', 'pipe', 'ignore'] });
        c.stdout.on('data', (d: Buffer) => (sink as ((b: Buffer) => void) | undefined)?.(d));
        return { c, done: new Promise<void>((res) => c.on('close', () => res())) };
      });
      let step: number;
      try {
        step = await client.spawn(stepFile);
      } catch (e) {
        for (const r of readers) r.c.kill('SIGKILL');
        throw e;
      }
      let aborted = false;
      const onAbort = () => {
        aborted = true;
        void client.kill(step).catch(() => undefined);
      };
      spec.signal?.addEventListener('abort', onAbort, { once: true });
      if (spec.signal?.aborted) onAbort();
      let exit;
      try {
        exit = await client.waitExit(step);
      } finally {
        spec.signal?.removeEventListener('abort', onAbort);
      }
      // the step's writers are gone; a reader still blocked in open (the step never opened its end) is stopped
      const t = setTimeout(() => readers.forEach((r) => r.c.kill('SIGKILL')), 2000);
      await Promise.all(readers.map((r) => r.done));
      clearTimeout(t);
      if (aborted) throw new KilnError('RUN_ABORTED', 'RUN was aborted', { cause: spec.signal?.reason });
      const setup = (await readFile(errfd, 'utf8').catch(() => '')).trim();
      if (setup) {
        if (exit.code === 127 && setup.startsWith('exec:')) throw new KilnError('RUN_EXEC_FAILED', setup);
        throw new KilnError('SANDBOX_SETUP_FAILED', `RUN sandbox setup failed: ${setup}`);
      }
      if (exit.signal) return { exitCode: -1, signal: SIGNAL_NAMES[exit.signal] ?? `SIG${exit.signal}` };
      return { exitCode: exit.code };
    } finally {
      for (const r of releases) await r();
      await client.remove(state).catch(() => rm(state, { recursive: true, force: true }));
    }
  }
}
