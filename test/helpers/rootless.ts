/**
 * Helpers for running kiln code as an ordinary user (`kilntest`, created by scripts/rootless-user.sh with
 * `kilntest:200000:65536` in /etc/subuid and /etc/subgid) and for sandbox scenarios.
 *
 * - `rootlessPrefix()`: the command prefix (`runuser -u kilntest --`) for `runInBuildNamespace(..., {commandPrefix})`.
 * - `runAsRootless(cmd, args)`: run any command as kilntest.
 * - `rootlessTempDir()`: a temp dir owned by kilntest (e.g. a KILN_HOME for a rootless test).
 * - `runStepScenario(req)`: executed INSIDE the build namespace (via runInBuildNamespace): builds a busybox layer
 *   dir, prepares a snapshot, runs one or more RUN steps on it and reports output, exit codes, the upper dir
 *   (types, whiteouts, opaque dirs), leftover mounts and temp dirs.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import {
  chmod,
  copyFile,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  symlink,
  writeFile,
  chown,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOTLESS_USER = 'kilntest';
const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Make sure the kilntest user exists (runs scripts/rootless-user.sh when root). Returns its uid/gid. */
export function ensureRootlessUser(): { uid: number; gid: number } {
  if (process.getuid?.() === 0) {
    const r = spawnSync('sh', [join(REPO, 'scripts', 'rootless-user.sh')], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`rootless-user.sh failed: ${r.stderr}`);
  }
  const uid = spawnSync('id', ['-u', ROOTLESS_USER], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', ROOTLESS_USER], { encoding: 'utf8' });
  if (uid.status !== 0) throw new Error(`user ${ROOTLESS_USER} missing: run scripts/rootless-user.sh as root`);
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

export function rootlessPrefix(): string[] {
  return ['runuser', '-u', ROOTLESS_USER, '--'];
}

/** Run a command to completion, capturing its output. */
export function runCapture(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, {
      env: { ...process.env, ...opts.env },
      cwd: opts.cwd ?? '/',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Run `cmd args` as kilntest; resolves with exit code and output. */
export function runAsRootless(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const prefix = rootlessPrefix();
  return runCapture(prefix[0] as string, [...prefix.slice(1), cmd, ...args], opts);
}

/** A fresh temp dir owned by kilntest (mode 0700). */
export async function rootlessTempDir(prefix = 'kiln-rootless-'): Promise<string> {
  const { uid, gid } = ensureRootlessUser();
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await chown(dir, uid, gid);
  await chmod(dir, 0o700);
  return dir;
}

export const BUSYBOX_TOOLS = [
  'sh',
  'id',
  'ls',
  'cat',
  'echo',
  'env',
  'pwd',
  'hostname',
  'ip',
  'rm',
  'mkdir',
  'ps',
  'sleep',
  'touch',
  'mount',
  'stat',
  'test',
  'grep',
  'wc',
  'sort',
  'readlink',
  'chmod',
  'true',
  'false',
];

/** Write a busybox rootfs layer dir (static /bin/busybox + applet links + /etc/passwd, /etc/group, extra files). */
export async function writeBusyboxRootfs(dir: string, extra: Record<string, string> = {}): Promise<void> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await mkdir(join(dir, 'etc'), { recursive: true });
  await copyFile('/bin/busybox', join(dir, 'bin', 'busybox'));
  await chmod(join(dir, 'bin', 'busybox'), 0o755);
  for (const t of BUSYBOX_TOOLS) await symlink('busybox', join(dir, 'bin', t));
  await writeFile(
    join(dir, 'etc', 'passwd'),
    'root:x:0:0:root:/root:/bin/sh\nu1:x:1000:1000:u1:/home/u1:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/sh\n',
  );
  await writeFile(
    join(dir, 'etc', 'group'),
    'root:x:0:\nwheel:x:10:root,u1\ng1:x:1000:\nextra:x:2000:u1\nnogroup:x:65534:\n',
  );
  for (const [p, content] of Object.entries(extra)) {
    await mkdir(join(dir, dirname(p)), { recursive: true });
    await writeFile(join(dir, p), content);
  }
}

export interface UpperEntry {
  path: string;
  type: 'dir' | 'file' | 'symlink' | 'whiteout' | 'other';
  opaque?: boolean;
  content?: string;
}

/** List an upper dir in overlay format (whiteouts and opaque dirs recognised). */
export async function listUpper(dir: string, rel = ''): Promise<UpperEntry[]> {
  const out: UpperEntry[] = [];
  let names: string[];
  try {
    names = (await readdir(join(dir, rel))).sort();
  } catch {
    return out;
  }
  for (const name of names) {
    const r = rel ? `${rel}/${name}` : name;
    const p = join(dir, r);
    const st = await lstat(p);
    if (st.isCharacterDevice() && st.rdev === 0) out.push({ path: '/' + r, type: 'whiteout' });
    else if (st.isDirectory()) {
      const x = spawnSync('getfattr', ['-h', '--only-values', '-n', 'user.overlay.opaque', p], { encoding: 'utf8' });
      out.push({ path: '/' + r, type: 'dir', opaque: x.status === 0 && x.stdout === 'y' });
      out.push(...(await listUpper(dir, r)));
    } else if (st.isFile()) {
      out.push({ path: '/' + r, type: 'file', content: st.size < 4096 ? await readFile(p, 'utf8') : undefined });
    } else if (st.isSymbolicLink()) out.push({ path: '/' + r, type: 'symlink' });
    else out.push({ path: '/' + r, type: 'other' });
  }
  return out;
}

export interface ScenarioStep {
  argv: string[];
  env?: string[];
  cwd?: string;
  user?: string;
  network?: 'host' | 'none';
  mounts?: import('../../src/sandbox/run.js').SandboxMount[];
  /** Abort the step as soon as stdout contains this text. */
  abortOn?: string;
  keepMountStubs?: boolean;
}

export interface ScenarioRequest {
  kilnHome: string;
  snapshotter?: 'overlay' | 'copy';
  /** Extra files for the busybox base layer. */
  baseFiles?: Record<string, string>;
  /** Extra files for a second layer on top of the base (exercises multi-lower). */
  topFiles?: Record<string, string>;
  /** Files created under kilnHome (inside the namespace, so owned by its root) before the steps. */
  hostFiles?: Record<string, string>;
  /** Empty dirs created under kilnHome (inside the namespace) before the steps. */
  hostDirs?: string[];
  steps: ScenarioStep[];
}

export interface StepReport {
  exitCode?: number;
  signal?: string;
  error?: { code: string; message: string };
  stdout: string;
  stderr: string;
}

export interface ScenarioReport {
  kind: string;
  uid: number;
  steps: StepReport[];
  upper: UpperEntry[];
  /** Mount points under kilnHome left after release. */
  leftoverMounts: string[];
  /** Entries of kilnHome/tmp left after release. */
  leftoverTemp: string[];
}

/** See the module comment. Runs inside the build namespace (root there). */
export async function runStepScenario(req: ScenarioRequest): Promise<ScenarioReport> {
  const { chooseSnapshotter } = await import('../../src/sandbox/overlay.js');
  const { runProcess } = await import('../../src/sandbox/run.js');
  const { mountsUnder } = await import('../../src/sandbox/mount.js');
  if (req.snapshotter) process.env.KILN_SNAPSHOTTER = req.snapshotter;
  const base = join(req.kilnHome, 'layers', 'base');
  await rm(base, { recursive: true, force: true });
  await writeBusyboxRootfs(base, req.baseFiles);
  const lowers = [base];
  if (req.topFiles) {
    const top = join(req.kilnHome, 'layers', 'top');
    await rm(top, { recursive: true, force: true });
    await mkdir(top, { recursive: true });
    for (const [p, content] of Object.entries(req.topFiles)) {
      await mkdir(join(top, dirname(p)), { recursive: true });
      await writeFile(join(top, p), content);
    }
    lowers.push(top);
  }
  for (const d of req.hostDirs ?? []) await mkdir(join(req.kilnHome, d), { recursive: true });
  for (const [p, content] of Object.entries(req.hostFiles ?? {})) {
    await mkdir(join(req.kilnHome, dirname(p)), { recursive: true });
    await writeFile(join(req.kilnHome, p), content);
  }
  const snapshotter = await chooseSnapshotter({ kilnHome: req.kilnHome });
  const snap = await snapshotter.prepare(lowers);
  const steps: StepReport[] = [];
  let upper: UpperEntry[];
  try {
    for (const s of req.steps) {
      const rep: StepReport = { stdout: '', stderr: '' };
      const ac = new AbortController();
      try {
        const r = await runProcess({
          rootfs: snap.root,
          argv: s.argv,
          env: s.env ?? [],
          cwd: s.cwd ?? '/',
          user: s.user ?? '',
          network: s.network ?? 'host',
          mounts: s.mounts ?? [],
          kilnHome: req.kilnHome,
          keepMountStubs: s.keepMountStubs === true,
          signal: ac.signal,
          onStdout: (d) => {
            rep.stdout += d.toString();
            if (s.abortOn && rep.stdout.includes(s.abortOn)) ac.abort();
          },
          onStderr: (d) => (rep.stderr += d.toString()),
        });
        rep.exitCode = r.exitCode;
        if (r.signal) rep.signal = r.signal;
      } catch (e) {
        const err = e as { code?: string; message: string };
        rep.error = { code: err.code ?? 'ERROR', message: err.message };
      }
      steps.push(rep);
    }
    await snap.unmount();
    upper = await listUpper(snap.upper);
  } finally {
    await snap.release();
  }
  let leftoverTemp: string[];
  try {
    leftoverTemp = await readdir(join(req.kilnHome, 'tmp'));
  } catch {
    leftoverTemp = [];
  }
  return {
    kind: snapshotter.kind,
    uid: process.getuid?.() ?? -1,
    steps,
    upper,
    leftoverMounts: await mountsUnder(req.kilnHome),
    leftoverTemp,
  };
}

/**
 * Cache sharing modes with two concurrent steps on one cache id. Step A appends "A-start" to /c/log, prints
 * "started" and blocks on a fifo; then step B (same id, `sharing`) appends "B" and lists /c; then A is released
 * and appends "A-end". Returns the final log of the cache dir A used and B's output.
 */
export async function runCacheSharingScenario(
  kilnHome: string,
  sharing: 'shared' | 'private' | 'locked',
): Promise<{ log: string; bOut: string; aExit: number | undefined; bExit: number | undefined }> {
  const { chooseSnapshotter } = await import('../../src/sandbox/overlay.js');
  const { runProcess } = await import('../../src/sandbox/run.js');
  const base = join(kilnHome, 'layers', `cache-${sharing}`);
  await rm(base, { recursive: true, force: true });
  await writeBusyboxRootfs(base);
  const ctl = join(kilnHome, `ctl-${sharing}`);
  await rm(ctl, { recursive: true, force: true });
  await mkdir(ctl);
  const fifo = join(ctl, 'fifo');
  const mk = spawnSync('mkfifo', [fifo]);
  if (mk.status !== 0) throw new Error('mkfifo failed');
  const snapshotter = await chooseSnapshotter({ kilnHome });
  const [sa, sb] = [await snapshotter.prepare([base]), await snapshotter.prepare([base])];
  const id = `share-${sharing}`;
  try {
    let aOut = '';
    let started: () => void = () => undefined;
    const isStarted = new Promise<void>((r) => (started = r));
    const a = runProcess({
      rootfs: sa.root,
      argv: ['/bin/sh', '-c', 'echo A-start >> /c/log; echo started; read x < /ctl/fifo; echo A-end >> /c/log'],
      env: [],
      kilnHome,
      mounts: [
        { type: 'cache', id, target: '/c', sharing },
        { type: 'bind', source: ctl, target: '/ctl' },
      ],
      onStdout: (d) => {
        aOut += d.toString();
        if (aOut.includes('started')) started();
      },
    });
    await isStarted;
    let bOut = '';
    const b = runProcess({
      rootfs: sb.root,
      argv: ['/bin/sh', '-c', 'echo B >> /c/log; cat /c/log'],
      env: [],
      kilnHome,
      mounts: [{ type: 'cache', id, target: '/c', sharing }],
      onStdout: (d) => (bOut += d.toString()),
    });
    if (sharing === 'shared' || sharing === 'private') await b;
    await writeFile(fifo, 'go\n');
    const [ra, rb] = await Promise.all([a, b]);
    const { createHash } = await import('node:crypto');
    const dir = createHash('sha256').update(id).digest('hex');
    const log = await readFile(join(kilnHome, 'cache-mounts', dir, 'log'), 'utf8');
    return { log, bOut, aExit: ra.exitCode, bExit: rb.exitCode };
  } finally {
    await sa.release();
    await sb.release();
  }
}

/**
 * `sharing=locked` across processes: another process (a `flock` holder standing in for a second kiln) holds the
 * cache's lock file and appends "other" to the cache log before it lets go; a locked step that was started while
 * it held the lock appends "step" — only after the holder is done.
 */
export async function runLockedAcrossProcessesScenario(kilnHome: string): Promise<{ log: string; exitCode: number }> {
  const { chooseSnapshotter } = await import('../../src/sandbox/overlay.js');
  const { runProcess } = await import('../../src/sandbox/run.js');
  const { createHash } = await import('node:crypto');
  const base = join(kilnHome, 'layers', 'locked-x');
  await rm(base, { recursive: true, force: true });
  await writeBusyboxRootfs(base);
  const id = 'locked-across';
  const cacheDir = join(kilnHome, 'cache-mounts', createHash('sha256').update(id).digest('hex'));
  await mkdir(cacheDir, { recursive: true });
  const fifo = join(kilnHome, 'locked-fifo');
  await rm(fifo, { force: true });
  if (spawnSync('mkfifo', [fifo]).status !== 0) throw new Error('mkfifo failed');
  // The holder: takes the lock, says so, waits for the fifo, then writes "other" while still holding the lock.
  const holder = spawn(
    'flock',
    ['--exclusive', `${cacheDir}.lock`, 'sh', '-c', `echo held; cat ${fifo} >/dev/null; echo other >> ${cacheDir}/log`],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  await new Promise<void>((resolve, reject) => {
    holder.stdout.on('data', (d: Buffer) => d.toString().includes('held') && resolve());
    holder.on('error', reject);
  });
  const holderDone = new Promise<void>((resolve) => holder.on('close', () => resolve()));
  const snap = await (await chooseSnapshotter({ kilnHome })).prepare([base]);
  try {
    const step = runProcess({
      rootfs: snap.root,
      argv: ['/bin/sh', '-c', 'echo step >> /c/log'],
      env: [],
      kilnHome,
      mounts: [{ type: 'cache', id, target: '/c', sharing: 'locked' }],
    });
    // Wait until the step is queued on the lock (its own flock process exists), then let the holder finish (it
    // writes "other" before releasing the lock). Bounded: a readiness limit, not a speed assertion.
    const lock = `${cacheDir}.lock`;
    const waiting = () =>
      readdirSync('/proc')
        .filter((x) => /^\d+$/.test(x) && Number(x) !== holder.pid)
        .some((x) => {
          try {
            return readFileSync(`/proc/${x}/cmdline`, 'utf8').split('\0').includes(lock);
          } catch {
            return false;
          }
        });
    for (const end = Date.now() + 30_000; !waiting();) {
      if (Date.now() > end) throw new Error('the locked step never queued on the lock file');
      await new Promise((r) => setTimeout(r, 20));
    }
    await writeFile(fifo, 'go\n');
    await holderDone;
    const r = await step;
    return { log: await readFile(join(cacheDir, 'log'), 'utf8'), exitCode: r.exitCode };
  } finally {
    await snap.release();
  }
}

/** Overlay over `n` layer dirs with long paths (beyond the one-page mount option limit). */
export async function runManyLayersScenario(kilnHome: string, n: number): Promise<{ out: string; exitCode: number }> {
  const { OverlaySnapshotter } = await import('../../src/sandbox/overlay.js');
  const { runProcess } = await import('../../src/sandbox/run.js');
  const lowers: string[] = [];
  const base = join(kilnHome, 'layers', 'many-base');
  await rm(base, { recursive: true, force: true });
  await writeBusyboxRootfs(base);
  lowers.push(base);
  for (let i = 0; i < n; i++) {
    const d = join(kilnHome, 'layers', `${'l'.repeat(64)}-${String(i).padStart(4, '0')}`);
    await rm(d, { recursive: true, force: true });
    await mkdir(d, { recursive: true });
    await writeFile(join(d, `f${i}`), `layer ${i}\n`);
    await writeFile(join(d, 'shared'), `from ${i}\n`);
    lowers.push(d);
  }
  const snap = await new OverlaySnapshotter({ kilnHome }).prepare(lowers);
  try {
    let out = '';
    const r = await runProcess({
      rootfs: snap.root,
      argv: ['/bin/sh', '-c', `cat /f0 /f${n - 1} /shared; ls / | grep -c '^f'`],
      env: [],
      kilnHome,
      onStdout: (d) => (out += d.toString()),
      onStderr: (d) => (out += d.toString()),
    });
    return { out, exitCode: r.exitCode };
  } finally {
    await snap.release();
  }
}

/**
 * Run `argv` as `user` with setpriv (exec, so the spawned pid is the command itself: signals reach it directly).
 */
export function spawnAsUser(
  user: string,
  argv: string[],
  env: NodeJS.ProcessEnv = {},
): import('node:child_process').ChildProcessWithoutNullStreams {
  const uid = spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim();
  const gid = spawnSync('id', ['-g', user], { encoding: 'utf8' }).stdout.trim();
  return spawn('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--init-groups', '--', ...argv], {
    env: { ...process.env, HOME: '/tmp', ...env },
    cwd: REPO,
    stdio: 'pipe',
  });
}

/** `node --import tsx rootless.ts ns-probe [exit N | wait-signal]`: a CLI-like program using enterBuildNamespace. */
async function cliMain(args: string[]): Promise<number> {
  const { enterBuildNamespace } = await import('../../src/sandbox/userns.js');
  const { printError } = await import('../../src/cli/main.js');
  try {
    const code = await enterBuildNamespace();
    if (code !== null) return code;
  } catch (e) {
    printError(e, false);
    return 1;
  }
  const map = await readFile('/proc/self/uid_map', 'utf8');
  process.stdout.write(JSON.stringify({ uid: process.getuid?.(), map, marker: process.env.KILN_IN_BUILD_NS }) + '\n');
  if (args[1] === 'exit') return Number(args[2]);
  if (args[1] === 'wait-signal') {
    await new Promise<void>((resolve) => {
      const keepAlive = setInterval(() => undefined, 1 << 30);
      process.on('SIGTERM', () => {
        clearInterval(keepAlive);
        resolve();
      });
      process.stdout.write('ready\n');
    });
    return 42;
  }
  return 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === 'ns-probe') {
  cliMain(process.argv.slice(2)).then((c) => process.exit(c));
}
