/**
 * kiln's own image (deploy/image/Dockerfile) built BY kiln, as the README documents: the context from
 * deploy/image/context.sh (this checkout's dist/), the base the cached debootstrap root (scripts/debian-rootfs.sh)
 * put into kiln's local store as localhost/debian:bookworm, pushed to a test registry. Used by the image's own
 * test and by the build-pod tests, whose pods run it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { storeDebianImage } from './debian-image.js';
import { runKiln, type KilnRun } from './registry.js';

const REPO = join(import.meta.dirname, '..', '..');

/** Prepare `dir/home` (the Debian base) and `dir/context`, then `kiln build --push` to `ref` (plain HTTP). */
export async function buildKilnImage(dir: string, ref: string, extraArgs: string[] = []): Promise<KilnRun> {
  await storeDebianImage(join(dir, 'home'));
  const ctx = spawnSync('bash', [join(REPO, 'deploy', 'image', 'context.sh'), join(dir, 'context')], {
    encoding: 'utf8',
  });
  assert.equal(ctx.status, 0, ctx.stderr);
  const registry = ref.split('/')[0] ?? ref;
  return runKiln(
    [
      'build',
      '-f',
      join(REPO, 'deploy', 'image', 'Dockerfile'),
      '--build-arg',
      'BASE=localhost/debian:bookworm',
      '-t',
      ref,
      '--push',
      '--insecure-registry',
      registry,
      '--progress',
      'plain',
      ...extraArgs,
      join(dir, 'context'),
    ],
    { KILN_HOME: join(dir, 'home') },
  );
}
