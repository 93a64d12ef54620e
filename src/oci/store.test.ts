import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { LocalStore, kilnHome, normalizeImageName } from './store.js';
import { appendLayers, withConfig } from './mutate.js';
import { emptyImage, layerFromBytes, newIndex } from './image.js';
import { readLayout } from './layout.js';
import { parsePlatform } from './platform.js';
import { isKilnError } from '../errors.js';
import type { Image } from './types.js';
import { withTempDir } from '../../test/helpers/images.js';

const withHome = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('kiln-store-', fn);

function imageWith(content: string, created = '2024-05-01T00:00:00Z'): Image {
  const layer = layerFromBytes(gzipSync(Buffer.from(content.padEnd(1024, '.'))));
  return withConfig(appendLayers(emptyImage(parsePlatform('linux/amd64')), [{ layer }]), (c) => ({ ...c, created }));
}

test('kilnHome: KILN_HOME, then XDG_DATA_HOME/kiln, then ~/.local/share/kiln', () => {
  assert.equal(kilnHome({ KILN_HOME: '/k', XDG_DATA_HOME: '/x', HOME: '/h' }), '/k');
  assert.equal(kilnHome({ XDG_DATA_HOME: '/x', HOME: '/h' }), '/x/kiln');
  assert.equal(kilnHome({ HOME: '/h' }), '/h/.local/share/kiln');
});

test('normalizeImageName follows docker reference rules', () => {
  assert.equal(normalizeImageName('alpine'), 'docker.io/library/alpine:latest');
  assert.equal(normalizeImageName('localhost:5000/app:v1'), 'localhost:5000/app:v1');
  assert.equal(normalizeImageName('user/app:1.0'), 'docker.io/user/app:1.0');
  assert.throws(
    () => normalizeImageName('Upper/Case'),
    (e) => isKilnError(e, 'INVALID_REFERENCE'),
  );
});

test('put / list / image / resolve by name, digest and short id', () =>
  withHome(async (home) => {
    const store = await LocalStore.open(home);
    const a = imageWith('a');
    const desc = await store.put(a, ['app:v1', 'localhost:5000/app:v1']);
    assert.equal(desc.digest, await a.digest());
    const list = await store.list();
    assert.deepEqual(
      list.map((e) => [e.name, e.repository, e.tag, e.digest]),
      [
        ['docker.io/library/app:v1', 'docker.io/library/app', 'v1', desc.digest],
        ['localhost:5000/app:v1', 'localhost:5000/app', 'v1', desc.digest],
      ],
    );
    const m = await a.manifest();
    assert.equal(list[0]!.size, desc.size + m.config.size + m.layers[0]!.size);
    assert.equal(list[0]!.created, '2024-05-01T00:00:00Z');
    for (const ref of [
      'app:v1',
      'docker.io/library/app:v1',
      desc.digest,
      desc.digest.slice(7, 19),
      `app@${desc.digest}`,
    ]) {
      assert.equal(await (await store.image(ref)).digest(), desc.digest, ref);
    }
    const again = await store.image('app:v1');
    assert.deepEqual(await again.config(), await a.config());
    await assert.rejects(store.image('nope'), (e) => isKilnError(e, 'IMAGE_NOT_FOUND'));
    // The store is a valid OCI layout.
    const layout = await readLayout(store.root);
    assert.equal(layout.list().length, 2);
  }));

/** Make every blob look written an hour ago (outside the GC grace period). */
async function ageBlobs(store: LocalStore): Promise<void> {
  const old = new Date(Date.now() - 3600_000);
  for (const d of await store.blobs.list()) await utimes(store.blobs.path(d), old, old);
}

test('retagging replaces the ref and garbage-collects the old image; remove untags and GCs', () =>
  withHome(async (home) => {
    const store = await LocalStore.open(home);
    const a = imageWith('a');
    const b = imageWith('b');
    await store.put(a, ['app:v1']);
    await store.put(b, ['app:v2']);
    assert.equal((await store.blobs.list()).length, 6);
    await ageBlobs(store);
    await store.put(b, ['app:v1']);
    assert.equal(await store.image('app:v1').then((i) => i.digest()), await b.digest());
    assert.equal((await store.blobs.list()).length, 3, 'blobs of the untagged image are collected');
    await ageBlobs(store);
    const r = await store.remove('app:v1');
    assert.deepEqual(r, { untagged: ['docker.io/library/app:v1'], deletedBlobs: 0 });
    const r2 = await store.remove('app:v2');
    assert.equal(r2.deletedBlobs, 3);
    assert.deepEqual(await store.blobs.list(), []);
    await assert.rejects(store.remove('app:v2'), (e) => isKilnError(e, 'IMAGE_NOT_FOUND'));
    assert.deepEqual(await store.list(), []);
  }));

test('GC spares recent blobs, blobs re-used by a put, and anything written under a live lease', () =>
  withHome(async (home) => {
    const store = await LocalStore.open(home);
    await store.put(imageWith('fresh'), ['fresh:1']);
    assert.equal((await store.remove('fresh:1')).deletedBlobs, 0, 'within the grace period');
    assert.equal(await store.gc({ graceMs: 0 }), 3);

    const shared = imageWith('shared');
    await store.put(shared, ['x:1']);
    await ageBlobs(store);
    await store.put(shared, ['y:1']); // re-uses (touches) the aged blobs
    await store.remove('y:1');
    assert.equal((await store.remove('x:1')).deletedBlobs, 0, 'touched by the second put');
    await ageBlobs(store);
    assert.equal(await store.gc(), 3);

    const lease = await store.lease();
    await store.put(imageWith('leased'), ['l:1']);
    assert.equal((await store.remove('l:1', { graceMs: 0 })).deletedBlobs, 0, 'protected by the lease');
    await lease.release();
    assert.equal(await store.gc({ graceMs: 0 }), 3);

    // A lease left behind by a dead process protects nothing and is cleaned up.
    await writeFile(join(store.root, 'leases', 'dead.json'), JSON.stringify({ pid: 999999999, created: 0 }));
    await store.put(imageWith('z'), ['z:1']);
    assert.equal((await store.remove('z:1', { graceMs: 0 })).deletedBlobs, 3);
    assert.deepEqual(await readdir(join(store.root, 'leases')), []);
  }));

test('indexes are stored whole and resolve to the requested platform', () =>
  withHome(async (home) => {
    const store = await LocalStore.open(home);
    const amd = imageWith('amd');
    const arm = withConfig(imageWith('arm'), (c) => ({ ...c, architecture: 'arm64' }));
    const ix = newIndex([{ image: amd }, { image: arm }]);
    await store.put(ix, ['multi:1']);
    assert.equal(await (await store.image('multi:1', parsePlatform('linux/arm64'))).digest(), await arm.digest());
    assert.equal(await (await store.image('multi:1', parsePlatform('linux/amd64'))).digest(), await amd.digest());
    // Child manifests are reachable by digest too.
    assert.equal(await (await store.image(await arm.digest())).digest(), await arm.digest());
    const [e] = await store.list();
    assert.equal(e!.created, undefined);
    assert.equal((await store.blobs.list()).length, 7);
  }));

test('concurrent puts from one process all land; stale lock of a dead process is broken', () =>
  withHome(async (home) => {
    const store = await LocalStore.open(home);
    await Promise.all(Array.from({ length: 6 }, (_, i) => store.put(imageWith(`img${i}`), [`app:${i}`])));
    assert.equal((await store.list()).length, 6);
    await writeFile(join(store.root, 'index.lock'), '999999999\n');
    await store.put(imageWith('late'), ['app:late']);
    assert.equal((await store.list()).length, 7);
    assert.ok(!(await readdir(store.root)).includes('index.lock'));
    const ix = JSON.parse(await readFile(join(store.root, 'index.json'), 'utf8')) as { manifests: unknown[] };
    assert.equal(ix.manifests.length, 7);
  }));
