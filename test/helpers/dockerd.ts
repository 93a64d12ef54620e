/**
 * Start Debian's dockerd (docker.io) as root for tests, with throwaway data/exec roots and its own socket, so that
 * its BuildKit can serve as the reference builder. Nothing outside the temp dir is touched (no iptables, no bridge).
 *
 * What Debian bookworm's docker.io 20.10.24 (+dfsg1) BuildKit supports — probed with real builds on this machine:
 * - Engine 20.10.24 vendors BuildKit v0.8.x; with DOCKER_BUILDKIT=1 and no `# syntax=` line the built-in Dockerfile
 *   frontend is dockerfile 1.2-level. `# syntax=docker/dockerfile:1.4` needs Docker Hub, so it is unusable here.
 * - Supported: multi-stage, `COPY --from`, `--chown`, `COPY --chmod` and `ADD --chmod`, `--target`, `--build-arg`,
 *   `RUN --mount=type=cache|secret|bind|tmpfs|ssh`, `--secret id=..,src=..`, `.dockerignore` with `!` exceptions.
 * - NOT supported (parse errors): heredocs (`RUN <<EOF`, `COPY <<EOF`), `COPY --link`, `COPY --exclude`,
 *   `COPY --parents`, `RUN --network`, `RUN --security`, `ADD --checksum`, `ADD --keep-git-dir`.
 *   Differential cases for those use `buildkitUnsupported` in case.json and assert an `expect.json` instead.
 * - Behaviour worth knowing: WORKDIR produces a (possibly empty) layer, not an empty_layer history entry; the image
 *   config has `ArgsEscaped: true`; history `created_by` is `RUN /bin/sh -c … # buildkit`, `COPY a b # buildkit`,
 *   `ENV A=1`, `CMD ["a" "b"]`, with comment `buildkit.dockerfile.v0`; no SOURCE_DATE_EPOCH support; `docker push`
 *   sends Docker schema2 manifests with gzip layers.
 * - Plain-HTTP pushes/pulls to 127.0.0.0/8 work without configuration (loopback is implicitly insecure); we still
 *   pass `--insecure-registry` for the hosts given.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeTree, run, tail, type RunOptions, type RunResult } from '../differential/exec.js';

export const DOCKER = '/usr/bin/docker';
export const DOCKERD = '/usr/sbin/dockerd';

export interface DockerdOptions {
  /** host:port entries passed as --insecure-registry. */
  insecureRegistries?: string[];
  /** How long to wait for `docker info` to answer (default 60 s); a readiness bound, not a test assertion. */
  startTimeoutMs?: number;
}

export interface BuildKitBuildOptions {
  context: string;
  /** Dockerfile path (default CONTEXT/Dockerfile). */
  dockerfile?: string;
  tag: string;
  buildArgs?: Record<string, string>;
  target?: string;
  /** Secrets as id -> file path. */
  secrets?: Record<string, string>;
  noCache?: boolean;
}

export interface Dockerd {
  /** The temp dir holding data root, exec root, socket and logs (removed by stop()). */
  dir: string;
  /** dockerd's process id. */
  pid: number;
  /** Absolute path of the API socket. */
  socket: string;
  /** `unix://…` address for `docker -H`. */
  host: string;
  /** Run the docker CLI against this daemon. */
  docker(args: string[], opts?: RunOptions): Promise<RunResult>;
  /** `DOCKER_BUILDKIT=1 docker build --network host …`; returns the combined build log. */
  build(opts: BuildKitBuildOptions): Promise<string>;
  push(ref: string): Promise<void>;
  /** Load an image tarball (`docker load`) or import a rootfs tar (`docker import`) and tag it. */
  importRootfs(tarPath: string, ref: string): Promise<void>;
  /** `docker run --rm --network host REF [CMD…]` → stdout. Pulls REF if needed. Throws on non-zero exit. */
  runImage(ref: string, cmd?: string[], opts?: { user?: string; entrypoint?: string }): Promise<string>;
  /** Remove local images (frees overlay space between cases). */
  removeImages(refs: string[]): Promise<void>;
  /** The daemon log so far (for failure messages). */
  log(): Promise<string>;
  stop(): Promise<void>;
}

/** Start a private dockerd. Requires root. */
export async function startDockerd(opts: DockerdOptions = {}): Promise<Dockerd> {
  if (process.getuid?.() !== 0) throw new Error('startDockerd: dockerd needs root');
  const dir = await mkdtemp(join(tmpdir(), 'kiln-dockerd-'));
  const dataRoot = join(dir, 'data');
  const execRoot = join(dir, 'exec');
  const socket = join(dir, 'docker.sock');
  const pidfile = join(dir, 'docker.pid');
  const logPath = join(dir, 'dockerd.log');
  const configDir = join(dir, 'client');
  await Promise.all([mkdir(dataRoot), mkdir(execRoot), mkdir(configDir)]);
  // client config: no credential helpers, no user's ~/.docker
  const daemonJson = join(dir, 'daemon.json');
  await writeFile(daemonJson, JSON.stringify({ features: { buildkit: true } }));
  await writeFile(join(configDir, 'config.json'), '{}');

  const args = [
    '--config-file',
    daemonJson,
    '--iptables=false',
    '--ip-masq=false',
    '--bridge=none',
    '--data-root',
    dataRoot,
    '--exec-root',
    execRoot,
    '-H',
    `unix://${socket}`,
    '--pidfile',
    pidfile,
    '--log-level',
    'warn',
  ];
  for (const r of opts.insecureRegistries ?? []) args.push('--insecure-registry', r);

  const logFile = await open(logPath, 'a');
  const child: ChildProcess = spawn(DOCKERD, args, {
    stdio: ['ignore', logFile.fd, logFile.fd],
    env: { ...process.env, DOCKER_CONFIG: configDir },
  });
  await logFile.close();
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) =>
    child.on('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const onExit = (): void => {
    if (!exited) child.kill('SIGTERM');
  };
  process.once('exit', onExit);

  const host = `unix://${socket}`;
  const clientEnv: NodeJS.ProcessEnv = { ...process.env, DOCKER_CONFIG: configDir, DOCKER_BUILDKIT: '1' };
  delete clientEnv.DOCKER_HOST;
  delete clientEnv.DOCKER_CONTEXT;
  const docker = (a: string[], o: RunOptions = {}): Promise<RunResult> =>
    run(DOCKER, ['-H', host, ...a], { ...o, env: { ...clientEnv, ...o.env } });

  const stop = async (): Promise<void> => {
    process.removeListener('exit', onExit);
    if (!exited) {
      child.kill('SIGTERM');
      // dockerd stops its managed containerd and unmounts its layers on SIGTERM; escalate if it hangs
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exitedPromise;
      clearTimeout(timer);
    }
    // a managed containerd left behind (SIGKILL path) would keep mounts busy
    const pid = await readFile(join(execRoot, 'containerd', 'containerd.pid'), 'utf8').catch(() => '');
    if (/^\d+$/.test(pid.trim())) {
      try {
        process.kill(Number(pid.trim()), 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await removeTree(dir);
  };

  // wait for the API
  const deadline = Date.now() + (opts.startTimeoutMs ?? 60_000);
  for (;;) {
    if (exited) {
      const log = await readFile(logPath, 'utf8').catch(() => '');
      await stop();
      throw new Error(`dockerd exited during startup:\n${tail(log, 30)}`);
    }
    const r = await docker(['info', '--format', '{{.ServerVersion}}'], { allowFail: true });
    if (r.code === 0) break;
    if (Date.now() > deadline) {
      const log = await readFile(logPath, 'utf8').catch(() => '');
      await stop();
      throw new Error(`dockerd did not become ready:\n${tail(log, 30)}`);
    }
    await new Promise((r2) => setTimeout(r2, 250));
  }

  return {
    dir,
    pid: child.pid ?? -1,
    socket,
    host,
    docker,
    async build(b) {
      const a = ['build', '--network', 'host', '--progress', 'plain', '-t', b.tag];
      a.push('-f', b.dockerfile ?? join(b.context, 'Dockerfile'));
      for (const [k, v] of Object.entries(b.buildArgs ?? {})) a.push('--build-arg', `${k}=${v}`);
      if (b.target) a.push('--target', b.target);
      for (const [id, src] of Object.entries(b.secrets ?? {})) a.push('--secret', `id=${id},src=${src}`);
      if (b.noCache) a.push('--no-cache');
      a.push(b.context);
      const r = await docker(a);
      return r.stderr + r.stdout;
    },
    async push(ref) {
      await docker(['push', ref]);
    },
    async importRootfs(tarPath, ref) {
      await docker(['import', tarPath, ref]);
    },
    async runImage(ref, cmd = [], o = {}) {
      const a = ['run', '--rm', '--network', 'host', '--pull', 'missing'];
      if (o.user) a.push('--user', o.user);
      if (o.entrypoint !== undefined) a.push('--entrypoint', o.entrypoint);
      a.push(ref, ...cmd);
      const r = await docker(a);
      return r.stdout;
    },
    async removeImages(refs) {
      if (refs.length) await docker(['rmi', '--force', ...refs], { allowFail: true });
    },
    log: () => readFile(logPath, 'utf8').catch(() => ''),
    stop,
  };
}
