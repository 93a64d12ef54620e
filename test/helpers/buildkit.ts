/**
 * Current BuildKit (moby/buildkit at the version pinned in scripts/go-tools.sh, built from its Go module once per
 * machine) as a test and benchmark peer: `buildkitd` as root with a throwaway `--root`, a private socket, the OCI
 * worker on Debian's `runc` (real process sandbox: no `--oci-worker-no-process-sandbox`), the containerd worker off,
 * host networking for RUN (like `docker build --network host`), and the given plain-HTTP registries marked insecure.
 * Builds go through `buildctl build --frontend dockerfile.v0` (the Dockerfile frontend built into buildkitd, no
 * `# syntax=` image pulled: Docker Hub is unreachable here) and push with the image exporter.
 *
 * What current BuildKit does differently from Debian's docker.io (BuildKit v0.8) — observed on this machine:
 * heredocs, `COPY --link/--exclude/--parents`, `ADD --checksum`, `RUN --network` are built in; history strings
 * record COPY/ADD flags, ARG values, EXPOSE as a list and HEALTHCHECK as `%+v`; RUN mount stubs are removed
 * (MountStubsCleaner); `COPY --chmod` applies to the directory it creates; images are pushed with OCI media types.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { removeTree, run, tail, type RunOptions, type RunResult } from '../differential/exec.js';
import { goTools } from './go-tools.js';

export const RUNC = '/usr/sbin/runc';

export interface BuildKitOptions {
  /** host:port registries reached over plain HTTP (pull and push). */
  insecureRegistries?: string[];
  /** Readiness bound for `buildctl debug workers` (default 60 s). */
  startTimeoutMs?: number;
}

export interface BuildctlBuildOptions {
  context: string;
  /** Dockerfile path (default CONTEXT/Dockerfile). */
  dockerfile?: string;
  /** Image reference to push to (`type=image,push=true`). */
  tag: string;
  buildArgs?: Record<string, string>;
  target?: string;
  /** id -> file path */
  secrets?: Record<string, string>;
  noCache?: boolean;
  /** `--export-cache` / `--import-cache` values, e.g. `type=registry,ref=R,mode=max`. */
  exportCache?: string;
  importCache?: string;
}

export interface BuildKit {
  /** The temp dir holding the daemon's root, socket, config and log (removed by stop()). */
  dir: string;
  pid: number;
  /** `unix://…` address for `buildctl --addr`. */
  addr: string;
  /** e.g. `v0.35.0`, as pinned in scripts/go-tools.sh. */
  version: string;
  buildctlPath: string;
  buildctl(args: string[], opts?: RunOptions): Promise<RunResult>;
  /** Build and push `tag`; returns the plain progress log. Throws CommandError on failure. */
  build(opts: BuildctlBuildOptions): Promise<string>;
  /** Drop every cache record (a cold start for benchmarks). */
  prune(): Promise<void>;
  log(): Promise<string>;
  stop(): Promise<void>;
}

/** Start a private buildkitd (root only). Builds the pinned BuildKit first when this machine lacks it. */
export async function startBuildKit(opts: BuildKitOptions = {}): Promise<BuildKit> {
  if (process.getuid?.() !== 0) throw new Error('startBuildKit: buildkitd runs as root here (its OCI worker)');
  const tools = goTools('buildkit');
  const buildkitd = tools.buildkitd as string;
  const buildctlPath = tools.buildctl as string;
  const version = tools['buildkit-version'] as string;
  const dir = await mkdtemp(join(tmpdir(), 'kiln-buildkitd-'));
  const root = join(dir, 'root');
  const socket = join(dir, 'buildkitd.sock');
  const logPath = join(dir, 'buildkitd.log');
  const config = join(dir, 'buildkitd.toml');
  await mkdir(root);
  const toml = [
    '# throwaway test daemon',
    '[worker.oci]',
    '  gc = false',
    ...(opts.insecureRegistries ?? []).flatMap((r) => [`[registry."${r}"]`, '  http = true', '  insecure = true']),
    '',
  ].join('\n');
  await writeFile(config, toml);
  const args = [
    '--config',
    config,
    '--root',
    root,
    '--addr',
    `unix://${socket}`,
    '--oci-worker=true',
    '--oci-worker-binary',
    RUNC,
    '--oci-worker-net',
    'host',
    '--containerd-worker=false',
  ];
  const logFile = await open(logPath, 'a');
  const child: ChildProcess = spawn(buildkitd, args, { stdio: ['ignore', logFile.fd, logFile.fd] });
  await logFile.close();
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) =>
    child.on('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const onExit = (): void => {
    if (!exited) child.kill('SIGKILL');
  };
  process.once('exit', onExit);

  const addr = `unix://${socket}`;
  // buildctl reads no user config of ours; BUILDKIT_HOST would override --addr
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.BUILDKIT_HOST;
  const buildctl = (a: string[], o: RunOptions = {}): Promise<RunResult> =>
    run(buildctlPath, ['--addr', addr, ...a], { ...o, env: { ...env, ...o.env } });

  const stop = async (): Promise<void> => {
    process.removeListener('exit', onExit);
    if (!exited) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exitedPromise;
      clearTimeout(timer);
    }
    // removeTree unmounts whatever the daemon left mounted under its root before deleting it
    await removeTree(dir);
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 60_000);
  for (;;) {
    if (exited) {
      const log = await readFile(logPath, 'utf8').catch(() => '');
      await stop();
      throw new Error(`buildkitd ${version} exited during startup:\n${tail(log, 30)}`);
    }
    const r = await buildctl(['debug', 'workers'], { allowFail: true });
    if (r.code === 0 && r.stdout.split('\n').length > 1) break;
    if (Date.now() > deadline) {
      const log = await readFile(logPath, 'utf8').catch(() => '');
      await stop();
      throw new Error(`buildkitd ${version} did not become ready:\n${tail(log, 30)}\n${r.stderr}`);
    }
    await new Promise((r2) => setTimeout(r2, 200));
  }

  return {
    dir,
    pid: child.pid ?? -1,
    addr,
    version,
    buildctlPath,
    buildctl,
    async build(b) {
      const dockerfile = b.dockerfile ?? join(b.context, 'Dockerfile');
      const a = ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0'];
      a.push('--local', `context=${b.context}`, '--local', `dockerfile=${dirname(dockerfile)}`);
      a.push('--opt', `filename=${basename(dockerfile)}`);
      for (const [k, v] of Object.entries(b.buildArgs ?? {})) a.push('--opt', `build-arg:${k}=${v}`);
      if (b.target) a.push('--opt', `target=${b.target}`);
      for (const [id, src] of Object.entries(b.secrets ?? {})) a.push('--secret', `id=${id},src=${src}`);
      if (b.noCache) a.push('--no-cache');
      if (b.exportCache) a.push('--export-cache', b.exportCache);
      if (b.importCache) a.push('--import-cache', b.importCache);
      a.push('--output', `type=image,name=${b.tag},push=true,registry.insecure=true`);
      const r = await buildctl(a);
      return r.stderr + r.stdout;
    },
    async prune() {
      await buildctl(['prune', '--all'], { allowFail: true });
    },
    log: () => readFile(logPath, 'utf8').catch(() => ''),
    stop,
  };
}
