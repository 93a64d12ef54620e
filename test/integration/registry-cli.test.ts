/**
 * The registry CLI end to end: pull into the local store ($KILN_HOME) and to docker archives, inspect from the
 * store and from registries, push a store image, copy between two registries (streamed) — checked with skopeo —
 * and a corrupted pull that leaves nothing in the store.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { promisify } from 'node:util';
import { LocalStore } from '../../src/oci/store.js';
import { writeLayout } from '../../src/oci/layout.js';
import { writeDockerArchive } from '../../src/oci/docker-archive.js';
import { copyLocation, loadLocation, parseLocation } from '../../src/registry/locations.js';
import { push, type PushOptions } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startHttpProxy, startRegistry, runKiln } from '../helpers/registry.js';

const run = async (cmd: string, args: string[]): Promise<string> =>
  (await promisify(execFile)(cmd, args, { encoding: 'utf8' })).stdout;

const kiln = runKiln;

test('kiln pull/push/copy/inspect through the local store and two registries', async () => {
  const a = await startRegistry();
  const b = await startRegistry();
  const home = mkdtempSync(join(tmpdir(), 'kiln-cli-home-'));
  const env = { KILN_HOME: join(home, 'kiln'), DOCKER_CONFIG: join(home, 'docker') };
  const opts: PushOptions = {};
  try {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'hello', content: 'hi\n' }] });
    const digest = await img.digest();
    await push(img, `${a.host}/app:v1`, opts);

    const pulled = await kiln(['pull', `${a.host}/app:v1`, '--progress', 'json'], env);
    assert.equal(pulled.code, 0, pulled.stderr);
    assert.equal(pulled.stdout.trim(), `${a.host}/app@${digest}`);
    const events = pulled.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; id?: string; name?: string });
    const layerDigests = await Promise.all((await img.layers()).map((l) => l.digest()));
    for (const d of layerDigests) {
      assert.ok(
        events.some((e) => e.type === 'done' && e.id === d && e.name?.startsWith('blob sha256:')),
        d,
      );
    }
    const store = await LocalStore.open(env.KILN_HOME);
    const listed = await store.list();
    assert.deepEqual(
      listed.map((e) => e.name),
      [`${a.host}/app:v1`],
    );

    // Pull by digest, pinned under a tag; a bare digest cannot name a store image.
    const pinned = await kiln(['pull', `${a.host}/app:pinned@${digest}`, '--progress', 'quiet'], env);
    assert.equal(pinned.code, 0, pinned.stderr);
    assert.equal((await store.resolve(`${a.host}/app:pinned`)).digest, digest);
    const bare = await kiln(['pull', `${a.host}/app@${digest}`], env);
    assert.equal(bare.code, 1);
    assert.equal(bare.stderr.split('\n')[0], `kiln: pull ${a.host}/app@${digest}: the local store names images by tag`);

    const archive = join(home, 'app.tar');
    const toArchive = await kiln(['pull', `${a.host}/app:v1`, '--output', `type=docker,dest=${archive}`], env);
    assert.equal(toArchive.code, 0, toArchive.stderr);
    const fromArchive = JSON.parse(await run('skopeo', ['inspect', `docker-archive:${archive}`])) as {
      Layers: string[];
    };
    assert.equal(fromArchive.Layers.length, 2);

    // Push the store image to another repository; copy it (streamed) to the second registry.
    const pushed = await kiln(['push', `${a.host}/app:v1`, `${a.host}/pushed:v1`, '--progress', 'plain'], env);
    assert.equal(pushed.code, 0, pushed.stderr);
    assert.equal(pushed.stdout.trim(), `${a.host}/pushed@${digest}`);
    const copied = await kiln(['copy', `${a.host}/app:v1`, `${b.host}/mirror/app:v1`, '--progress', 'plain'], env);
    assert.equal(copied.code, 0, copied.stderr);
    const info = JSON.parse(
      await run('skopeo', ['inspect', '--tls-verify=false', `docker://${b.host}/mirror/app:v1`]),
    ) as {
      Digest: string;
    };
    assert.equal(info.Digest, digest);
    assert.ok(
      await b.waitForLog(/"PUT \/v2\/mirror\/app\/blobs\/uploads\/[^"]*digest=sha256[^"]*" 201/),
      'blobs were uploaded',
    );

    const remote = await kiln(['inspect', '--raw', `${b.host}/mirror/app:v1`], env);
    assert.equal(remote.code, 0, remote.stderr);
    assert.deepEqual(Buffer.from(remote.stdout), await img.rawManifest());

    // Both registries gone: inspect still answers from the store.
    await a.stop();
    await b.stop();
    const local = await kiln(['inspect', `${a.host}/app:v1`], env);
    assert.equal(local.code, 0, local.stderr);
    const j = JSON.parse(local.stdout) as { digest: string; config: { config: { Cmd: string[] } } };
    assert.equal(j.digest, digest);
    assert.deepEqual(j.config.config.Cmd, ['sh']);
    const cfg = await kiln(['inspect', '--config', '--raw', `${a.host}/app:v1`], env);
    assert.deepEqual(Buffer.from(cfg.stdout), await img.rawConfig());
  } finally {
    await closeTransports(opts);
    await a.stop().catch(() => undefined);
    await b.stop().catch(() => undefined);
    rmSync(home, { recursive: true, force: true });
  }
});

test('a corrupted pull leaves nothing named in the store and no corrupt blob', async () => {
  const reg = await startRegistry();
  const img = await makeBusyboxImage();
  const bad = await (await img.layers())[0]!.digest();
  const proxy = await startHttpProxy(reg.host, {
    transform: (req, status) =>
      status === 200 && req.method === 'GET' && req.url.endsWith(bad)
        ? new Transform({
            transform(chunk: Buffer, _e, cb) {
              const c = Buffer.from(chunk);
              c[c.length - 1] = c[c.length - 1]! ^ 1;
              cb(null, c);
            },
          })
        : undefined,
  });
  const home = mkdtempSync(join(tmpdir(), 'kiln-cli-home-'));
  const env = { KILN_HOME: join(home, 'kiln') };
  const opts: PushOptions = {};
  try {
    await push(img, `${reg.host}/app:v1`, opts);
    const r = await kiln(['pull', `${proxy.host}/app:v1`, '--progress', 'quiet'], env);
    assert.equal(r.code, 1);
    assert.match(r.stderr.split('\n')[0]!, /^kiln: pull .*: content digest sha256:[0-9a-f]{64} does not match/);
    const store = await LocalStore.open(env.KILN_HOME);
    assert.deepEqual(await store.list(), []);
    assert.ok(!existsSync(store.blobs.path(bad)));
  } finally {
    await closeTransports(opts);
    await proxy.stop();
    await reg.stop();
    rmSync(home, { recursive: true, force: true });
  }
});

test('locations: push from oci-archive and docker-archive sources, copy registry → oci layout', async () => {
  const reg = await startRegistry();
  const dir = mkdtempSync(join(tmpdir(), 'kiln-locations-'));
  const opts: PushOptions = {};
  try {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'x', content: 'y' }] });
    await writeLayout(join(dir, 'img.tar'), [{ image: img, name: 'v1' }], { tar: true });
    await writeDockerArchive(join(dir, 'docker.tar'), [{ image: img, tags: ['example.com/app:v1'] }]);

    const fromOci = await loadLocation(parseLocation(`oci-archive:${join(dir, 'img.tar')}:v1`));
    const r1 = await push(fromOci, `${reg.host}/from-oci:v1`, opts);
    assert.equal(r1.digest, await img.digest(), 'an OCI archive round-trips byte for byte');

    const fromDocker = await loadLocation(
      parseLocation(`docker-archive:${join(dir, 'docker.tar')}:example.com/app:v1`),
    );
    const r2 = await push(fromDocker, `${reg.host}/from-docker:v1`, opts);
    const info = JSON.parse(
      await run('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/from-docker:v1`]),
    ) as {
      Digest: string;
      Layers: string[];
    };
    assert.equal(info.Digest, r2.digest);
    assert.equal(info.Layers.length, 2);

    const out = await copyLocation(
      parseLocation(`${reg.host}/from-oci:v1`),
      parseLocation(`oci:${join(dir, 'layout')}:copied`),
      opts,
    );
    assert.equal(out.digest, r1.digest);
    const back = await loadLocation(parseLocation(`oci:${join(dir, 'layout')}:copied`));
    assert.equal(await back.digest(), r1.digest);
  } finally {
    await closeTransports(opts);
    rmSync(dir, { recursive: true, force: true });
    await reg.stop();
  }
});
