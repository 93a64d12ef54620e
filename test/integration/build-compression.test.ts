/**
 * `kiln build --compression zstd` (and BuildKit's `compression=` output attribute): valid OCI zstd layers in a real
 * registry, read back by skopeo and decompressed by the Debian `zstd` tool, whose tars are the very same as the
 * gzip build's (equal diff_ids); the in-process binding and the `zstd` tool fallback agree; bad values are one line.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { push } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { kiln } from './build-helpers.js';

let reg: TestRegistry;
let work: string;
let ctx: string;
const EPOCH = '1700000000';

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'kiln-compression-it-'));
  ctx = join(work, 'ctx');
  await mkdir(join(ctx, 'src'), { recursive: true });
  reg = await startRegistry();
  const base = await makeBusyboxImage();
  const opts = { insecureRegistries: [reg.host] };
  await push(base, `${reg.host}/base/busybox:1`, opts);
  await closeTransports(opts);
  for (let i = 0; i < 50; i++) await writeFile(join(ctx, 'src', `f${i}.txt`), `file ${i}\n`.repeat(200));
  await writeFile(
    join(ctx, 'Dockerfile'),
    `FROM ${reg.host}/base/busybox:1\nCOPY src/ /src/\nRUN echo built > /built && ls /src | wc -l > /count\n`,
  );
});

after(async () => {
  await reg?.stop();
  await rm(work, { recursive: true, force: true });
});

function skopeo(args: string[]): string {
  const r = spawnSync('skopeo', args, { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

async function buildPush(tag: string, extra: string[], env: NodeJS.ProcessEnv = {}): Promise<void> {
  const home = join(work, `home-${tag}`);
  const r = await kiln(
    ['build', '--insecure-registry', reg.host, '-t', `${reg.host}/app:${tag}`, '--push', ...extra, ctx],
    { home, env: { SOURCE_DATE_EPOCH: EPOCH, ...env } },
  );
  assert.equal(r.code, 0, r.stderr);
}

interface Pulled {
  mediaTypes: string[];
  diffIDs: string[];
  /** sha256 of each layer after decompression with the Debian tools. */
  tarDigests: string[];
}

async function pull(tag: string): Promise<Pulled> {
  const dir = join(work, `dir-${tag}`);
  skopeo(['copy', '--src-tls-verify=false', `docker://${reg.host}/app:${tag}`, `dir:${dir}`]);
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as {
    config: { digest: string };
    layers: { mediaType: string; digest: string }[];
  };
  const config = JSON.parse(await readFile(join(dir, manifest.config.digest.slice(7)), 'utf8')) as {
    rootfs: { diff_ids: string[] };
  };
  const tarDigests = manifest.layers.map((l) => {
    const tool = l.mediaType.endsWith('+zstd') ? ['zstd', '-dc'] : ['gzip', '-dc'];
    const r = spawnSync(tool[0] as string, [tool[1] as string, join(dir, l.digest.slice(7))], {
      maxBuffer: 256 << 20,
    });
    assert.equal(r.status, 0, r.stderr?.toString());
    return 'sha256:' + createHash('sha256').update(r.stdout).digest('hex');
  });
  return { mediaTypes: manifest.layers.map((l) => l.mediaType), diffIDs: config.rootfs.diff_ids, tarDigests };
}

test('--compression zstd: OCI zstd layers that skopeo copies and zstd decompresses to the gzip build tars', async () => {
  await buildPush('gzip', []);
  await buildPush('zstd', ['--compression', 'zstd']);
  await buildPush('zstd-cli', ['--output', 'type=registry,compression=zstd,compression-level=5'], {
    KILN_ZSTD: 'cli',
  });
  const gz = await pull('gzip');
  const zs = await pull('zstd');
  const cli = await pull('zstd-cli');
  // the base layer keeps its gzip compression (BuildKit's default without force-compression); new layers are zstd
  assert.deepEqual(zs.mediaTypes.slice(1), [
    'application/vnd.oci.image.layer.v1.tar+zstd',
    'application/vnd.oci.image.layer.v1.tar+zstd',
  ]);
  assert.deepEqual(cli.mediaTypes.slice(1), zs.mediaTypes.slice(1));
  assert.ok(
    gz.mediaTypes.every((m) => m.endsWith('gzip')),
    gz.mediaTypes.join(),
  );
  for (const p of [gz, zs, cli]) assert.deepEqual(p.tarDigests, p.diffIDs, 'each layer decompresses to its diffID');
  assert.deepEqual(zs.diffIDs, gz.diffIDs, 'same tars whatever the compression');
  assert.deepEqual(cli.diffIDs, gz.diffIDs);
});

test('--compression: unknown types, bad levels and conflicting outputs are one clear line', async () => {
  const home = join(work, 'home-bad');
  for (const [args, want] of [
    [['--compression', 'brotli'], /unknown compression "brotli"/],
    [['--compression', 'zstd', '--compression-level', '40'], /invalid compression level "40"/],
    [['--compression', 'gzip', '--output', 'type=registry,compression=zstd'], /conflicting layer compression/],
  ] as const) {
    const r = await kiln(['build', ...args, '-t', `${reg.host}/app:bad`, ctx], { home });
    assert.notEqual(r.code, 0);
    const lines = r.stderr.trim().split('\n');
    assert.match(lines[0] as string, want);
    assert.match(lines[0] as string, /^kiln: /);
    assert.ok(lines.length <= 2, r.stderr);
  }
});
