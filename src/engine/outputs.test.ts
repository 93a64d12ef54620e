import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { makeTar } from '../../test/helpers/images.js';
import { imageFromParts, layerFromBytes } from '../oci/image.js';
import { MediaType } from '../oci/mediatypes.js';
import { sha256 } from '../oci/digest.js';
import type { Image, Layer } from '../oci/types.js';
import { exportImage, writeIidFile, writeMetadataFile } from './outputs.js';
import { effectiveOutputs } from './build.js';
import type { BuildOptions } from './options.js';

async function layer(entries: Parameters<typeof makeTar>[0]): Promise<Layer> {
  const tar = await makeTar(entries);
  return layerFromBytes(gzipSync(tar), MediaType.OCILayerGzip, sha256(tar));
}

async function testImage(): Promise<{ image: Image; layers: Layer[] }> {
  const l1 = await layer([
    { header: { name: 'etc/', type: 'directory', mode: 0o755 } },
    { header: { name: 'etc/keep', type: 'file', mode: 0o644, size: 4 }, body: Buffer.from('keep') },
    { header: { name: 'etc/gone', type: 'file', mode: 0o644, size: 4 }, body: Buffer.from('gone') },
  ]);
  const l2 = await layer([
    { header: { name: 'etc/', type: 'directory', mode: 0o755 } },
    { header: { name: 'etc/.wh.gone', type: 'file', mode: 0o644, size: 0 } },
    { header: { name: 'new', type: 'file', mode: 0o600, size: 3 }, body: Buffer.from('new') },
  ]);
  const cfg = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: [await l1.diffID(), await l2.diffID()] },
    }),
  );
  const image = imageFromParts({ rawConfig: async () => cfg, layers: async () => [l1, l2] });
  return { image, layers: [l1, l2] };
}

function opts(o: Partial<BuildOptions>): BuildOptions {
  return {
    context: '.',
    tags: [],
    buildArgs: new Map(),
    labels: {},
    platform: { os: 'linux', architecture: 'amd64' },
    noCache: false,
    pull: false,
    push: false,
    outputs: [],
    network: 'host',
    secrets: [],
    progress: 'plain',
    insecureRegistries: [],
    registryMirrors: [],
    debug: false,
    ...o,
  };
}

test('default outputs: local store, --push means registry, --push turns image outputs into pushes', () => {
  assert.deepEqual(
    effectiveOutputs(opts({})).map((o) => [o.type, o.push]),
    [['image', false]],
  );
  assert.deepEqual(
    effectiveOutputs(opts({ push: true })).map((o) => [o.type, o.push]),
    [['registry', true]],
  );
  const withOut = effectiveOutputs(
    opts({
      push: true,
      outputs: [
        { type: 'image', names: [], push: false, tar: false, attrs: {} },
        { type: 'local', dest: 'x', names: [], push: false, tar: false, attrs: {} },
      ],
    }),
  );
  assert.deepEqual(
    withOut.map((o) => [o.type, o.push]),
    [
      ['image', true],
      ['local', false],
    ],
  );
});

test('image output: saved under normalised names, Docker media types, buildx metadata and iidfile', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-outputs-test-'));
  try {
    const { image, layers } = await testImage();
    const saved: { names: string[]; mt: string }[] = [];
    const res = await exportImage(image, {
      outputs: [{ type: 'image', names: [], push: false, tar: false, attrs: {} }],
      tags: ['app:1', 'localhost:5000/x'],
      registry: {},
      writers: { saveLocal: async (img, names) => void saved.push({ names, mt: await img.mediaType() }) },
      layers: layers.map((l) => ({ uncompressed: () => l.uncompressed(), digest: 'x' })),
      annotations: {},
      tmpDir: dir,
    });
    assert.deepEqual(saved, [{ names: ['app:1', 'localhost:5000/x'], mt: MediaType.DockerManifest }]);
    assert.deepEqual(res.names, ['docker.io/library/app:1', 'localhost:5000/x:latest']);
    assert.equal(res.configDigest, sha256(await image.rawConfig()));
    assert.equal(res.descriptor.mediaType, MediaType.DockerManifest);
    await writeMetadataFile(join(dir, 'md.json'), res);
    const md = JSON.parse(await readFile(join(dir, 'md.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(md), [
      'containerimage.config.digest',
      'containerimage.descriptor',
      'containerimage.digest',
      'image.name',
    ]);
    assert.equal(md['image.name'], 'docker.io/library/app:1,localhost:5000/x:latest');
    await writeIidFile(join(dir, 'iid'), res);
    assert.equal(await readFile(join(dir, 'iid'), 'utf8'), res.configDigest);
    await assert.rejects(
      exportImage(image, {
        outputs: [{ type: 'registry', names: [], push: true, tar: false, attrs: {} }],
        tags: [],
        registry: {},
        writers: {},
        layers: [],
        annotations: {},
        tmpDir: dir,
      }),
      /push requires an image name/,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('local and tar outputs: the final rootfs with whiteouts applied', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-outputs-test-'));
  try {
    const { image, layers } = await testImage();
    await exportImage(image, {
      outputs: [
        { type: 'local', dest: join(dir, 'rootfs'), names: [], push: false, tar: false, attrs: {} },
        { type: 'tar', dest: join(dir, 'rootfs.tar'), names: [], push: false, tar: true, attrs: {} },
      ],
      tags: [],
      registry: {},
      writers: {},
      layers: layers.map((l, i) => ({ uncompressed: () => l.uncompressed(), digest: `layer${i}` })),
      annotations: {},
      tmpDir: join(dir, 'tmp'),
    });
    assert.equal(await readFile(join(dir, 'rootfs', 'etc', 'keep'), 'utf8'), 'keep');
    assert.equal(await readFile(join(dir, 'rootfs', 'new'), 'utf8'), 'new');
    assert.equal((await stat(join(dir, 'rootfs', 'new'))).mode & 0o777, 0o600);
    await assert.rejects(stat(join(dir, 'rootfs', 'etc', 'gone')));
    const list = spawnSync('tar', ['-tf', join(dir, 'rootfs.tar')], { encoding: 'utf8' }).stdout.split('\n');
    assert.ok(list.includes('etc/keep') && list.includes('new'), list.join(','));
    assert.ok(!list.some((n) => n.includes('gone') || n.includes('.wh.')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
