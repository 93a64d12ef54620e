import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { readLayout, writeLayout, REF_NAME } from './layout.js';
import { emptyImage, layerFromBytes, layerFromOpener } from './image.js';
import { appendLayers } from './mutate.js';
import { MediaType } from './mediatypes.js';
import { sha256 } from './digest.js';
import { BlobDir } from './blobs.js';
import { isKilnError } from '../errors.js';
import { withTempDir } from '../../test/helpers/images.js';

const withDir = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('kiln-layout-', fn);

const good = appendLayers(emptyImage(), [{ layer: layerFromBytes(gzipSync(Buffer.alloc(1024, 1))) }]);
/** An image whose layer stream dies half way. */
const broken = appendLayers(emptyImage(), [
  {
    layer: layerFromOpener(
      async () =>
        new Readable({
          read() {
            this.push(Buffer.alloc(100));
            this.destroy(new Error('connection reset'));
          },
        }),
      { mediaType: MediaType.OCILayerGzip, digest: sha256('x'), size: 1000, diffID: sha256('y') },
    ),
  },
]);

test('a failed write leaves no layout, no temp dir; an existing layout keeps its index', () =>
  withDir(async (dir) => {
    await assert.rejects(writeLayout(join(dir, 'new'), [{ image: broken, name: 'b' }]), /connection reset/);
    await assert.rejects(
      writeLayout(join(dir, 'new.tar'), [{ image: broken, name: 'b' }], { tar: true }),
      /connection reset/,
    );
    assert.deepEqual(await readdir(dir), []);

    await writeLayout(join(dir, 'l'), [{ image: good, name: 'good' }]);
    await writeLayout(join(dir, 'l.tar'), [{ image: good, name: 'good' }], { tar: true });
    const before = await readFile(join(dir, 'l', 'index.json'));
    const beforeTar = await readFile(join(dir, 'l.tar'));
    await assert.rejects(writeLayout(join(dir, 'l'), [{ image: broken, name: 'good' }]), /connection reset/);
    await assert.rejects(writeLayout(join(dir, 'l.tar'), [{ image: broken, name: 'good' }], { tar: true }));
    assert.deepEqual(await readFile(join(dir, 'l', 'index.json')), before);
    assert.deepEqual(await readFile(join(dir, 'l.tar')), beforeTar);
    assert.deepEqual((await readdir(dir)).sort(), ['l', 'l.tar']);
    assert.deepEqual(
      (await readdir(join(dir, 'l', 'blobs', 'sha256'))).filter((n) => n.startsWith('.')),
      [],
    );
  }));

test('index.json names, lookup by name/digest, single-entry default, errors list what exists', () =>
  withDir(async (dir) => {
    const other = appendLayers(emptyImage(), [{ layer: layerFromBytes(gzipSync(Buffer.alloc(10, 2))) }]);
    await writeLayout(join(dir, 'l'), [
      { image: good, name: 'v1' },
      { image: other, name: 'v2', annotations: { 'org.example': 'x' } },
    ]);
    const ix = JSON.parse(await readFile(join(dir, 'l', 'index.json'), 'utf8')) as {
      manifests: { annotations: Record<string, string>; platform?: unknown }[];
    };
    assert.equal(ix.manifests[1]!.annotations[REF_NAME], 'v2');
    assert.equal(ix.manifests[1]!.annotations['org.example'], 'x');
    assert.ok(ix.manifests[0]!.platform, 'descriptor carries the platform');
    const l = await readLayout(join(dir, 'l'));
    assert.equal(await (await l.image('v2')).digest(), await other.digest());
    assert.equal(await (await l.image(await good.digest())).digest(), await good.digest());
    await assert.rejects(
      l.image(),
      (e) => isKilnError(e, 'IMAGE_AMBIGUOUS') && /v1, v2/.test((e as { hint: string }).hint),
    );
    await assert.rejects(l.image('v3'), (e) => isKilnError(e, 'IMAGE_NOT_FOUND'));
    await assert.rejects(l.index('v1'), (e) => isKilnError(e, 'NOT_AN_INDEX'));
    await writeLayout(join(dir, 'one'), [{ image: good }]);
    assert.equal(await (await (await readLayout(join(dir, 'one'))).image()).digest(), await good.digest());
  }));

test('indexes with attestation/artifact manifests (no image config) are copied whole', () =>
  withDir(async (dir) => {
    const src = join(dir, 'src');
    await writeLayout(src, [{ image: good, name: 'img' }]);
    const blobs = new BlobDir(join(src, 'blobs'));
    const statement = Buffer.from('{"_type":"https://in-toto.io/Statement/v0.1"}');
    const layerDesc = await blobs.writeBytes(statement, 'application/vnd.in-toto+json');
    const cfg = await blobs.writeBytes('{}', MediaType.OCIEmptyJSON);
    const att = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.OCIManifest,
        config: cfg,
        layers: [{ ...layerDesc, annotations: { 'in-toto.io/predicate-type': 'https://slsa.dev/provenance/v0.2' } }],
      }),
    );
    const attDesc = await blobs.writeBytes(att, MediaType.OCIManifest);
    const imgDesc = { mediaType: MediaType.OCIManifest, digest: await good.digest(), size: await good.size() };
    const ix = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.OCIIndex,
        manifests: [
          { ...imgDesc, platform: { os: 'linux', architecture: (await good.config()).architecture } },
          {
            ...attDesc,
            platform: { os: 'unknown', architecture: 'unknown' },
            annotations: {
              'vnd.docker.reference.type': 'attestation-manifest',
              'vnd.docker.reference.digest': imgDesc.digest,
            },
          },
        ],
      }),
    );
    const ixDesc = await blobs.writeBytes(ix, MediaType.OCIIndex);
    await writeFile(
      join(src, 'index.json'),
      JSON.stringify({ schemaVersion: 2, manifests: [{ ...ixDesc, annotations: { [REF_NAME]: 'multi' } }] }),
    );
    const index = await (await readLayout(src)).index('multi');
    const dest = join(dir, 'dest');
    await writeLayout(dest, [{ image: index, name: 'copy' }]);
    const out = await readLayout(dest);
    assert.equal(out.descriptor('copy').digest, ixDesc.digest);
    const copied = new BlobDir(join(dest, 'blobs'));
    for (const d of [layerDesc.digest, cfg.digest, attDesc.digest, imgDesc.digest]) assert.ok(await copied.has(d), d);
    assert.equal(await (await out.image('copy')).digest(), imgDesc.digest, 'platform selection skips the attestation');
  }));

test('containerd/BuildKit-style names are found by their familiar form', () =>
  withDir(async (dir) => {
    await writeLayout(join(dir, 'l'), [
      { image: good, name: 'v1', annotations: { 'io.containerd.image.name': 'docker.io/library/app:v1' } },
      { image: good, name: 'localhost:5000/team/tool:2' },
    ]);
    const l = await readLayout(join(dir, 'l'));
    assert.equal(l.descriptor('app:v1').annotations?.[REF_NAME], 'v1');
    assert.equal(l.descriptor('docker.io/library/app:v1').annotations?.[REF_NAME], 'v1');
    assert.equal(l.descriptor('localhost:5000/team/tool:2').annotations?.[REF_NAME], 'localhost:5000/team/tool:2');
    assert.throws(
      () => l.descriptor('app:v2'),
      (e) => isKilnError(e, 'IMAGE_NOT_FOUND'),
    );
  }));

test('concurrent writers adding refs to one layout all land', () =>
  withDir(async (dir) => {
    const l = join(dir, 'l');
    await writeLayout(l, [{ image: good, name: 'base' }]);
    await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        writeLayout(l, [
          {
            image: appendLayers(emptyImage(), [{ layer: layerFromBytes(gzipSync(Buffer.from(`w${i}`))) }]),
            name: `w${i}`,
          },
        ]),
      ),
    );
    const names = (await readLayout(l)).list().map((e) => e.name);
    assert.deepEqual(names.sort(), ['base', 'w0', 'w1', 'w2', 'w3', 'w4']);
    assert.ok(!(await readdir(l)).includes('index.json.lock'));
  }));
