import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { Readable } from 'node:stream';
import {
  digestStream,
  emptyImage,
  imageForPlatform,
  imageFromRaw,
  layerFromBytes,
  layerFromUncompressed,
  newIndex,
} from './image.js';
import { appendLayers, withAnnotations, withConfig, withLayerCompression, withManifestMediaType } from './mutate.js';
import { MediaType } from './mediatypes.js';
import { sha256 } from './digest.js';
import { streamToBuffer } from './blobs.js';
import { isKilnError } from '../errors.js';
import { parsePlatform } from './platform.js';

const tarA = Buffer.alloc(2048, 1);
const layerA = layerFromBytes(gzipSync(tarA), MediaType.OCILayerGzip);

test('emptyImage: no layers, platform in config, valid manifest', async () => {
  const img = emptyImage({ os: 'linux', architecture: 'arm', variant: 'v7' });
  const m = await img.manifest();
  assert.equal(m.mediaType, MediaType.OCIManifest);
  assert.equal(m.config.mediaType, MediaType.OCIConfig);
  assert.deepEqual(m.layers, []);
  const cfg = await img.config();
  assert.equal(cfg.architecture, 'arm');
  assert.equal(cfg.variant, 'v7');
  assert.deepEqual(cfg.rootfs, { type: 'layers', diff_ids: [] });
  assert.equal(m.config.digest, sha256(await img.rawConfig()));
  assert.equal(await img.digest(), sha256(await img.rawManifest()));
});

test('layerFromBytes computes diffID by decompressing and verifies streams', async () => {
  assert.equal(await layerA.diffID(), sha256(tarA));
  assert.deepEqual(await streamToBuffer(await layerA.uncompressed()), tarA);
  const lying = layerFromBytes(gzipSync(tarA), MediaType.OCILayerGzip, sha256('not it'));
  await assert.rejects(
    async () => streamToBuffer(await lying.uncompressed()),
    (e) => isKilnError(e, 'DIGEST_MISMATCH'),
  );
});

test('appendLayers adds layer, diff_id and history; base is unchanged', async () => {
  const base = emptyImage(parsePlatform('linux/amd64'));
  const baseDigest = await base.digest();
  const img = appendLayers(base, [{ layer: layerA, history: { created_by: 'COPY a /', empty_layer: true } }]);
  const m = await img.manifest();
  assert.equal(m.layers.length, 1);
  assert.equal(m.layers[0]!.digest, await layerA.digest());
  assert.equal(m.layers[0]!.mediaType, MediaType.OCILayerGzip);
  const cfg = await img.config();
  assert.deepEqual(cfg.rootfs.diff_ids, [sha256(tarA)]);
  assert.deepEqual(cfg.history, [{ created_by: 'COPY a /' }]);
  assert.equal(await base.digest(), baseDigest);
  assert.notEqual(await img.digest(), baseDigest);
  assert.equal(await img.layerByDigest(await layerA.digest()), layerA);
  await assert.rejects(img.layerByDigest(sha256('x')), (e) => isKilnError(e, 'BLOB_NOT_FOUND'));
});

test('withConfig changes config and digest; inconsistent diff_ids rejected', async () => {
  const img = appendLayers(emptyImage(), [{ layer: layerA }]);
  const changed = withConfig(img, (c) => ({ ...c, config: { ...c.config, Cmd: ['sh'] } }));
  assert.deepEqual((await changed.config()).config?.Cmd, ['sh']);
  assert.notEqual((await changed.manifest()).config.digest, (await img.manifest()).config.digest);
  const broken = withConfig(img, (c) => ({ ...c, rootfs: { type: 'layers', diff_ids: [] } }));
  await assert.rejects(broken.rawManifest(), (e) => isKilnError(e, 'CONFIG_INVALID'));
});

test('withManifestMediaType converts manifest, config and layer media types and keeps the config bytes', async () => {
  const oci = appendLayers(emptyImage(), [{ layer: layerA }]);
  const docker = withManifestMediaType(oci, 'docker');
  const m = await docker.manifest();
  assert.equal(m.mediaType, MediaType.DockerManifest);
  assert.equal(await docker.mediaType(), MediaType.DockerManifest);
  assert.equal(m.config.mediaType, MediaType.DockerConfig);
  assert.equal(m.layers[0]!.mediaType, MediaType.DockerLayerGzip);
  assert.equal(m.config.digest, (await oci.manifest()).config.digest);
  const back = withManifestMediaType(docker, 'oci');
  assert.equal(await back.digest(), await oci.digest());
  const zstd = appendLayers(emptyImage(), [
    { layer: layerFromBytes(Buffer.from('x'), MediaType.OCILayerZstd, sha256('y')) },
  ]);
  await assert.rejects(withManifestMediaType(zstd, 'docker').rawManifest(), (e) =>
    isKilnError(e, 'MEDIATYPE_UNSUPPORTED'),
  );
});

test('withAnnotations merges manifest annotations', async () => {
  const a = withAnnotations(emptyImage(), { 'org.opencontainers.image.title': 't' });
  const b = withAnnotations(a, { x: 'y' });
  assert.deepEqual((await b.manifest()).annotations, { 'org.opencontainers.image.title': 't', x: 'y' });
  assert.deepEqual((await withAnnotations(b, { z: '1' }, true).manifest()).annotations, { z: '1' });
});

test('layerFromUncompressed compresses lazily and deterministically; withLayerCompression round-trips', async () => {
  const tar = Buffer.alloc(100_000, 7);
  const l = layerFromUncompressed(async () => Readable.from([tar]), { compression: 'gzip' });
  assert.equal(await l.diffID(), sha256(tar));
  const d = await l.digest();
  const again = await digestStream(await l.compressed());
  assert.equal(again.digest, d);
  assert.equal(again.size, await l.size());
  const img = appendLayers(emptyImage(), [
    { layer: layerFromUncompressed(async () => Readable.from([tar]), { compression: 'none' }) },
  ]);
  assert.equal((await img.manifest()).layers[0]!.mediaType, MediaType.OCILayer);
  assert.equal((await img.manifest()).layers[0]!.digest, sha256(tar));
  const gz = withLayerCompression(img, 'gzip');
  const gl = (await gz.layers())[0]!;
  assert.equal((await gz.manifest()).layers[0]!.mediaType, MediaType.OCILayerGzip);
  assert.equal(await gl.diffID(), sha256(tar));
  assert.deepEqual(await streamToBuffer(await gl.uncompressed()), tar);
  assert.equal((await gz.config()).rootfs.diff_ids[0], sha256(tar));
  const zs = (await withLayerCompression(img, 'zstd').layers())[0]!;
  assert.equal(await zs.mediaType(), MediaType.OCILayerZstd);
  assert.deepEqual(await streamToBuffer(await zs.uncompressed()), tar);
});

test('newIndex + imageForPlatform select the right child', async () => {
  const amd = emptyImage(parsePlatform('linux/amd64'));
  const arm = emptyImage(parsePlatform('linux/arm64'));
  const ix = newIndex([{ image: amd }, { image: arm }]);
  const m = await ix.indexManifest();
  assert.equal(m.mediaType, MediaType.OCIIndex);
  assert.deepEqual(m.manifests[1]!.platform, { os: 'linux', architecture: 'arm64' });
  assert.equal(await (await imageForPlatform(ix, parsePlatform('linux/arm64/v8'))).digest(), await arm.digest());
  await assert.rejects(imageForPlatform(ix, parsePlatform('linux/s390x')), (e) => isKilnError(e, 'PLATFORM_NOT_FOUND'));
  const nested = newIndex([{ image: ix }], { kind: 'docker' });
  assert.equal(await nested.mediaType(), MediaType.DockerManifestList);
  assert.equal(await (await imageForPlatform(nested, parsePlatform('linux/amd64'))).digest(), await amd.digest());
});

test('imageFromRaw keeps manifest bytes and checks the config digest', async () => {
  const img = appendLayers(emptyImage(), [{ layer: layerA }]);
  const copy = imageFromRaw(await img.rawManifest(), await img.rawConfig(), await img.layers());
  assert.equal(await copy.digest(), await img.digest());
  assert.throws(
    () => imageFromRaw(Buffer.from('{"schemaVersion":1}'), Buffer.from('{}'), []),
    (e) => isKilnError(e, 'MANIFEST_INVALID'),
  );
});

test('appendLayers describes added layers in the base manifest family', async () => {
  const docker = appendLayers(emptyImage(undefined, 'docker'), [{ layer: layerA }]);
  const m = await docker.manifest();
  assert.equal(m.mediaType, MediaType.DockerManifest);
  assert.equal(m.layers[0]!.mediaType, MediaType.DockerLayerGzip);
  assert.equal(m.layers[0]!.digest, await layerA.digest());
  const oci = appendLayers(emptyImage(), [{ layer: (await docker.layers())[0]! }]);
  assert.equal((await oci.manifest()).layers[0]!.mediaType, MediaType.OCILayerGzip);
});
