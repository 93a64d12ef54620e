/**
 * buildah (Debian bookworm: 1.28.2) as a second reference builder for tests: chroot isolation, a throwaway storage
 * root/runroot (vfs by default: no mounts to leak), Docker-format images, pushed over plain HTTP to the test registry.
 * buildah 1.28 has no heredoc support (added in 1.33) and no `COPY --link/--exclude/--parents`.
 */
import { mkdtemp, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeTree, run, type RunOptions, type RunResult } from '../differential/exec.js';

export const BUILDAH = '/usr/bin/buildah';

export interface BuildahOptions {
  storageDriver?: 'vfs' | 'overlay';
}

export interface BuildahBuildOptions {
  context: string;
  dockerfile?: string;
  tag: string;
  buildArgs?: Record<string, string>;
  target?: string;
  /** id -> file path */
  secrets?: Record<string, string>;
  noCache?: boolean;
}

export interface Buildah {
  root: string;
  runroot: string;
  buildah(args: string[], opts?: RunOptions): Promise<RunResult>;
  /** `buildah bud --isolation chroot --format docker --layers …`; returns the build log. */
  build(opts: BuildahBuildOptions): Promise<string>;
  /** `buildah push --tls-verify=false REF docker://REF`. */
  push(ref: string): Promise<void>;
  /** Remove all images and working containers (storage stays usable). */
  prune(): Promise<void>;
  stop(): Promise<void>;
}

export async function startBuildah(opts: BuildahOptions = {}): Promise<Buildah> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-buildah-'));
  const root = join(dir, 'root');
  const runroot = join(dir, 'runroot');
  const tmp = join(dir, 'tmp');
  await Promise.all([mkdir(root), mkdir(runroot), mkdir(tmp)]);
  const driver = opts.storageDriver ?? 'vfs';
  // TMPDIR also holds buildah's RUN --mount=type=cache directories (buildah-cache-UID), so they go away with us
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp, BUILDAH_ISOLATION: 'chroot' };
  delete env.REGISTRY_AUTH_FILE;
  const global = ['--root', root, '--runroot', runroot, '--storage-driver', driver];
  const buildah = (a: string[], o: RunOptions = {}): Promise<RunResult> =>
    run(BUILDAH, [...global, ...a], { ...o, env: { ...env, ...o.env } });

  return {
    root,
    runroot,
    buildah,
    async build(b) {
      const a = ['bud', '--isolation', 'chroot', '--format', 'docker', '--layers', '--tls-verify=false'];
      a.push('-t', b.tag, '-f', b.dockerfile ?? join(b.context, 'Dockerfile'));
      for (const [k, v] of Object.entries(b.buildArgs ?? {})) a.push('--build-arg', `${k}=${v}`);
      if (b.target) a.push('--target', b.target);
      for (const [id, src] of Object.entries(b.secrets ?? {})) a.push('--secret', `id=${id},src=${src}`);
      if (b.noCache) a.push('--no-cache');
      a.push(b.context);
      const r = await buildah(a);
      return r.stdout + r.stderr;
    },
    async push(ref) {
      await buildah(['push', '--tls-verify=false', ref, `docker://${ref}`]);
    },
    async prune() {
      await buildah(['rm', '--all'], { allowFail: true });
      await buildah(['rmi', '--all', '--force'], { allowFail: true });
    },
    async stop() {
      await buildah(['rm', '--all'], { allowFail: true });
      await removeTree(dir);
    },
  };
}
