/** The shared test images are deterministic and contain what test/helpers/images.ts documents. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { makeBusyboxImage, makeRandomImage, withTempDir } from '../helpers/images.js';
import { TarIndex } from '../../src/oci/tarfile.js';
import { digestStream } from '../../src/oci/image.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import type { Layer } from '../../src/oci/types.js';

async function indexLayer(dir: string, layer: Layer): Promise<TarIndex> {
  const file = join(dir, `${(await layer.diffID()).slice(7)}.tar`);
  await pipeline(await layer.uncompressed(), createWriteStream(file));
  return TarIndex.open(file);
}

test('makeBusyboxImage: deterministic, documented contents, options respected', () =>
  withTempDir('kiln-helpers-', async (dir) => {
    const a = await makeBusyboxImage();
    const b = await makeBusyboxImage();
    assert.equal(await a.digest(), await b.digest());
    const ix = await indexLayer(dir, (await a.layers())[0]!);
    assert.ok(ix.find('bin/busybox'));
    assert.ok(ix.find('bin/sh'), 'bin/sh resolves to busybox');
    assert.match((await ix.readEntry('etc/group')).toString(), /^staff:x:50:app$/m);
    assert.equal((await a.config()).config?.Cmd?.[0], 'sh');

    const d = await makeBusyboxImage({
      kind: 'docker',
      secondLayer: [{ path: 'x/y', content: 'z' }],
      config: { User: 'app' },
    });
    assert.equal(await d.mediaType(), MediaType.DockerManifest);
    assert.equal((await d.manifest()).layers[1]!.mediaType, MediaType.DockerLayerGzip);
    assert.equal((await d.config()).config?.User, 'app');
    assert.equal((await d.config()).history?.length, 2);
    const second = await indexLayer(dir, (await d.layers())[1]!);
    assert.equal((await second.readEntry('x/y')).toString(), 'z');
  }));

test('makeRandomImage: streaming, seeded, verifiable', async () => {
  const a = makeRandomImage({ layers: 2, layerSize: 300_000, compression: 'none' });
  const b = makeRandomImage({ layers: 2, layerSize: 300_000, compression: 'none' });
  const c = makeRandomImage({ layers: 2, layerSize: 300_000, compression: 'none', seed: 'other' });
  assert.equal(await a.digest(), await b.digest());
  assert.notEqual(await a.digest(), await c.digest());
  const [l0, l1] = await a.layers();
  assert.notEqual(await l0!.digest(), await l1!.digest());
  const r = await digestStream(await l0!.uncompressed());
  assert.equal(r.digest, await l0!.diffID());
  assert.equal(r.size, 512 + 300_000 + ((512 - (300_000 % 512)) % 512) + 1024);
  const gz = makeRandomImage({ layers: 1, layerSize: 100_000 });
  const gl = (await gz.layers())[0]!;
  assert.equal(await gl.mediaType(), MediaType.OCILayerGzip);
  assert.equal((await digestStream(await gl.compressed())).digest, await gl.digest());
});
