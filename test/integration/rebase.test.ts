/**
 * `kiln rebase` with real parts: base v1 and v2 pushed to a real registry, an app built on v1 with COPY --link,
 * rebased onto v2 (layers: v2's then the app's with the same digests; config env/labels/history; manifest base
 * annotations; no layer uploaded — only HEADs and mounts, counted from the registry's log), then run with docker;
 * a RUN-built image is refused naming the layer and instruction, and an old base that is not a prefix is refused;
 * nothing is pushed on a refusal.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, runKiln, type TestRegistry } from '../helpers/registry.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { run } from '../differential/exec.js';

const isRoot = process.getuid?.() === 0;

interface Inspected {
  manifest: {
    config: { digest: string };
    layers: { digest: string; mediaType: string }[];
    annotations?: Record<string, string>;
  };
  config: {
    rootfs: { diff_ids: string[] };
    config: { Env?: string[]; Labels?: Record<string, string>; Cmd?: string[] };
    history?: { created_by?: string; empty_layer?: boolean }[];
  };
  digest: string;
}

describe('kiln rebase', { skip: isRoot ? false : 'needs root (dockerd)' }, () => {
  let registry: TestRegistry;
  let dockerd: Dockerd;
  let work = '';
  let home = '';
  const R = (): string => registry.host;
  const kiln = (args: string[]) => runKiln([...args, '--insecure-registry', R()], { KILN_HOME: home });

  async function inspect(ref: string): Promise<Inspected> {
    const raw = await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${ref}`]);
    const cfg = await run('skopeo', ['inspect', '--tls-verify=false', '--config', `docker://${ref}`]);
    const digest = await run('skopeo', ['inspect', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${ref}`]);
    return {
      manifest: JSON.parse(raw.stdout) as Inspected['manifest'],
      config: JSON.parse(cfg.stdout) as Inspected['config'],
      digest: digest.stdout.trim(),
    };
  }

  async function build(name: string, dockerfile: string, files: Record<string, string> = {}): Promise<void> {
    const dir = join(work, name.replace(/[/:]/g, '_'));
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'Dockerfile'), dockerfile);
    for (const [f, text] of Object.entries(files)) {
      await writeFile(join(dir, f), text);
      await chmod(join(dir, f), 0o755);
    }
    const md = join(dir, 'metadata.json');
    const r = await kiln(['build', '--progress', 'plain', '--push', '--metadata-file', md, '-t', name, dir]);
    assert.equal(r.code, 0, r.stderr);
    metadata.set(name, JSON.parse(await readFile(md, 'utf8')) as Record<string, unknown>);
  }
  const metadata = new Map<string, Record<string, unknown>>();

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'kiln-rebase-'));
    home = join(work, 'home');
    registry = await startRegistry();
    dockerd = await startDockerd({ insecureRegistries: [registry.host] });
    const b = await runKiln(['bootstrap', 'busybox'], { KILN_HOME: home });
    assert.equal(b.code, 0, b.stderr);
    for (const v of ['1', '2']) {
      await build(
        `${R()}/base:v${v}`,
        `FROM localhost/busybox\nRUN echo v${v} > /etc/base-version\nENV BASE=${v} KEEP=base\nLABEL base.version=${v} base.only${v}=yes\n`,
      );
    }
    await build(
      `${R()}/app:1`,
      `FROM ${R()}/base:v1\nCOPY --link app.sh /app/\nENV APP=1 KEEP=app\nLABEL app=1\nCMD ["/app/app.sh"]\n`,
      { 'app.sh': '#!/bin/sh\necho "app on base $(cat /etc/base-version) BASE=$BASE APP=$APP KEEP=$KEEP"\n' },
    );
    await build(`${R()}/app-run:1`, `FROM ${R()}/base:v1\nRUN echo built > /built\nCOPY --link app.sh /app/\n`, {
      'app.sh': '#!/bin/sh\necho hi\n',
    });
  });

  after(async () => {
    await dockerd?.stop().catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('COPY --link app: base layers swapped, upper layers kept by digest, nothing uploaded', async () => {
    const app = await inspect(`${R()}/app:1`);
    const v1 = await inspect(`${R()}/base:v1`);
    const v2 = await inspect(`${R()}/base:v2`);
    assert.equal(app.manifest.annotations?.['org.opencontainers.image.base.name'], `${R()}/base:v1`);
    assert.equal(app.manifest.annotations?.['dev.kiln.rebasable-layers'], String(v1.manifest.layers.length));
    // the build recorded it too (--metadata-file), for the service's base-change trigger
    assert.deepEqual(metadata.get(`${R()}/app:1`)?.['kiln.rebase'], { rebasable: true, baseLayers: 2 });
    assert.deepEqual(metadata.get(`${R()}/app-run:1`)?.['kiln.rebase'], {
      rebasable: false,
      blocker: { layer: 3, instruction: 'RUN /bin/sh -c echo built > /built' },
      baseLayers: 2,
    });
    assert.equal(
      (await run('docker', ['-H', dockerd.host, 'run', '--rm', `${R()}/app:1`])).stdout.trim(),
      'app on base v1 BASE=1 APP=1 KEEP=app',
    );
    const before = registry.log().length;
    const r = await kiln(['rebase', `${R()}/app:1`, '--base', `${R()}/base:v2`, '-t', `${R()}/app:2`, '--push']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /2 base layer\(s\) → 2 of .*base:v2@sha256:[0-9a-f]{64}, 1 layer\(s\) kept/);
    await registry.waitForLog(/PUT \/v2\/app\/manifests\/2 /);
    const log = registry.log().slice(before);
    // no layer bytes: the only blob uploaded is the new config; base layers are mounted (or already there)
    const uploaded = [...log.matchAll(/PUT \/v2\/app\/blobs\/uploads\/\S*digest=sha256%3A([0-9a-f]{64})/g)].map(
      (m) => `sha256:${m[1]}`,
    );
    for (const l of v2.manifest.layers) {
      assert.ok(
        log.includes(`mount=${l.digest}`) ||
          log.includes(`HEAD /v2/app/blobs/${l.digest}`) ||
          app.manifest.layers.some((x) => x.digest === l.digest), // pushed there before: known, not asked about
        `new base layer ${l.digest} mounted, found or known`,
      );
    }
    const rebased = await inspect(`${R()}/app:2`);
    assert.deepEqual(uploaded, [rebased.manifest.config.digest], 'no layer uploaded, only the config');
    const upper = app.manifest.layers.slice(v1.manifest.layers.length);
    assert.deepEqual(
      rebased.manifest.layers.map((l) => l.digest),
      [...v2.manifest.layers.map((l) => l.digest), ...upper.map((l) => l.digest)],
    );
    assert.deepEqual(rebased.config.rootfs.diff_ids, [
      ...v2.config.rootfs.diff_ids,
      ...app.config.rootfs.diff_ids.slice(v1.config.rootfs.diff_ids.length),
    ]);
    assert.equal(rebased.manifest.annotations?.['org.opencontainers.image.base.name'], `${R()}/base:v2`);
    assert.equal(rebased.manifest.annotations?.['org.opencontainers.image.base.digest'], v2.digest);
    const env = rebased.config.config.Env ?? [];
    assert.ok(env.includes('BASE=2'), 'inherited env follows the new base');
    assert.ok(env.includes('KEEP=app') && env.includes('APP=1'), "the image's own env stays");
    assert.deepEqual(rebased.config.config.Labels, { 'base.version': '2', 'base.only2': 'yes', app: '1' });
    assert.deepEqual(
      rebased.config.history?.slice(0, v2.config.history?.length).map((h) => h.created_by),
      v2.config.history?.map((h) => h.created_by),
    );
    assert.deepEqual(rebased.config.config.Cmd, ['/app/app.sh']);
    const out = await run('docker', ['-H', dockerd.host, 'run', '--rm', `${R()}/app:2`]);
    assert.equal(out.stdout.trim(), 'app on base v2 BASE=2 APP=1 KEEP=app');
  });

  test('a RUN layer is refused, naming the layer and the instruction; nothing pushed', async () => {
    const r = await kiln([
      'rebase',
      `${R()}/app-run:1`,
      '--base',
      `${R()}/base:v2`,
      '-t',
      `${R()}/app-run:2`,
      '--push',
    ]);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /kiln: cannot rebase .*app-run:1: layer 3 was made by RUN \/bin\/sh -c echo built > \/built; rebuild instead/,
    );
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    const gone = await run('skopeo', ['inspect', '--tls-verify=false', `docker://${R()}/app-run:2`], {
      allowFail: true,
    });
    assert.notEqual(gone.code, 0, 'nothing pushed');
  });

  test('a multi-platform index: each platform rebased onto the matching platform of the new base', async () => {
    const { getRemote } = await import('../../src/registry/remote.js');
    const { newIndex, isImageIndex } = await import('../../src/oci/image.js');
    const { push } = await import('../../src/registry/push.js');
    const { closeTransports } = await import('../../src/registry/transport.js');
    const opts = { insecureRegistries: [R()] };
    try {
      // indexes of the app and of the new base (one platform each: kiln builds the host's)
      for (const [from, to] of [
        [`${R()}/app:1`, `${R()}/app-ix:1`],
        [`${R()}/base:v2`, `${R()}/base-ix:v2`],
      ] as const) {
        const img = await getRemote(from, opts);
        assert.ok(!isImageIndex(img));
        await push(newIndex([{ image: img }]), to, opts);
      }
    } finally {
      await closeTransports(opts);
    }
    const r = await kiln([
      'rebase',
      `${R()}/app-ix:1`,
      '--base',
      `${R()}/base-ix:v2`,
      '-t',
      `${R()}/app-ix:2`,
      '--push',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const raw = await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${R()}/app-ix:2`]);
    const ix = JSON.parse(raw.stdout) as { manifests: { digest: string; platform?: { os: string } }[] };
    assert.equal(ix.manifests.length, 1);
    assert.equal(ix.manifests[0]?.platform?.os, 'linux');
    const out = await run('docker', ['-H', dockerd.host, 'run', '--rm', `${R()}/app-ix:2`]);
    assert.equal(out.stdout.trim(), 'app on base v2 BASE=2 APP=1 KEEP=app');
  });

  test('an old base that is not a prefix of the image is refused', async () => {
    const r = await kiln([
      'rebase',
      `${R()}/app:1`,
      '--old-base',
      `${R()}/base:v2`,
      '--base',
      `${R()}/base:v2`,
      '--push',
    ]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /kiln: cannot rebase .*app:1: old base .*base:v2 is not a prefix of the image/);
  });
});
