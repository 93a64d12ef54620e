/**
 * A Node.js base image for the Node.js builder's tests and benchmark (test/integration/node-strategy.test.ts,
 * bench/node.ts): the cached debootstrap root (scripts/debian-rootfs.sh, minbase bookworm) plus this machine's node,
 * npm and CA bundle (its npm registry is reached through a TLS proxy: the base's own trust, as a company base image
 * would carry it), built and pushed by kiln itself. node is dynamically linked against libc and libstdc++, both in
 * minbase; minbase has no make, g++ or python3 (the no-toolchain case).
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../differential/exec.js';
import { runKiln } from './registry.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Build `REGISTRY/node-base:20` in `work/base` with kiln (KILN_HOME `home`) and push it; returns the reference. */
export async function pushNodeBase(work: string, registry: string, home: string): Promise<string> {
  const r = await run('bash', [join(REPO, 'scripts', 'debian-rootfs.sh')], { allowFail: true });
  if (r.code !== 0) throw new Error(`scripts/debian-rootfs.sh failed:\n${r.stderr.trim()}`);
  const ctx = join(work, 'base');
  await mkdir(ctx, { recursive: true });
  await copyFile(r.stdout.trim(), join(ctx, 'debian.tar'));
  await run('tar', [
    '--numeric-owner',
    '-cf',
    join(ctx, 'node.tar'),
    '-C',
    '/',
    'usr/bin/node',
    'usr/bin/npm',
    'usr/bin/npx',
    'usr/lib/node_modules/npm',
    'etc/ssl/certs/ca-certificates.crt',
  ]);
  await writeFile(
    join(ctx, 'Dockerfile'),
    'FROM scratch\nADD debian.tar /\nADD node.tar /\n' +
      'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' +
      'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt\nCMD ["node"]\n',
  );
  const ref = `${registry}/node-base:20`;
  const b = await runKiln(['build', '-t', ref, '--push', '--insecure-registry', registry, '--progress', 'quiet', ctx], {
    KILN_HOME: home,
  });
  if (b.code !== 0) throw new Error(`base image build failed:\n${b.stderr}`);
  return ref;
}
