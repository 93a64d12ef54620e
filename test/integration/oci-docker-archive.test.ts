/**
 * docker-save archives written by kiln are read by skopeo (and unpack with umoci after a skopeo copy); archives
 * written by skopeo and in docker 25+'s blobs/ layout are read by kiln; corrupt archives fail with one-line
 * KilnErrors naming the file.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { run } from '../differential/exec.js';
import { mkdtemp, readFile, readlink, rm, stat, truncate, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kilnErrorNaming, makeBusyboxImage } from '../helpers/images.js';
import { dockerArchiveTags, readDockerArchive, writeDockerArchive } from '../../src/oci/docker-archive.js';
import { readLayout, writeLayout } from '../../src/oci/layout.js';
import { withManifestMediaType } from '../../src/oci/mutate.js';
import { digestStream } from '../../src/oci/image.js';
import { streamToBuffer } from '../../src/oci/blobs.js';
import { TarIndex, TarWriter } from '../../src/oci/tarfile.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { sha256 } from '../../src/oci/digest.js';
import { isKilnError } from '../../src/errors.js';
import type { Image } from '../../src/oci/types.js';

async function sh(cmd: string, args: string[]): Promise<string> {
  return (await run(cmd, args)).stdout;
}

let dir: string;
let busybox: Image;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-oci-docker-archive-'));
  busybox = await makeBusyboxImage({
    kind: 'docker',
    secondLayer: [{ path: 'app/hello.txt', content: 'hello from kiln\n' }],
  });
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function sameLayers(a: Image, b: Image): Promise<void> {
  assert.deepEqual((await a.config()).rootfs.diff_ids, (await b.config()).rootfs.diff_ids);
  for (const l of await a.layers()) {
    assert.equal((await digestStream(await l.uncompressed())).digest, await l.diffID());
  }
}

describe('kiln-written docker archives', () => {
  test('skopeo inspects and copies it; umoci unpacks the copy', async () => {
    const file = join(dir, 'bb.tar');
    await writeDockerArchive(file, [{ image: busybox, tags: ['bb:1', 'localhost:5000/app:v1'] }]);
    const manifest = JSON.parse((await sh('tar', ['-xOf', file, 'manifest.json'])).toString()) as {
      Config: string;
      RepoTags: string[];
      Layers: string[];
    }[];
    assert.equal(manifest.length, 1);
    assert.deepEqual(manifest[0]!.RepoTags, ['bb:1', 'localhost:5000/app:v1']);
    assert.equal(manifest[0]!.Config, `${(await busybox.manifest()).config.digest.slice(7)}.json`);
    const diffIDs = (await busybox.config()).rootfs.diff_ids;
    assert.deepEqual(
      manifest[0]!.Layers,
      diffIDs.map((d) => `${d.slice(7)}/layer.tar`),
    );
    const info = JSON.parse(await sh('skopeo', ['inspect', `docker-archive:${file}:localhost:5000/app:v1`])) as {
      Layers: string[];
      Architecture: string;
    };
    assert.deepEqual(info.Layers, diffIDs, 'layers are stored uncompressed');
    const oci = join(dir, 'bb-oci');
    await sh('skopeo', ['copy', `docker-archive:${file}:bb:1`, `oci:${oci}:bb`]);
    const bundle = join(dir, 'bundle');
    await sh('umoci', ['unpack', '--rootless', '--image', `${oci}:bb`, bundle]);
    assert.ok((await stat(join(bundle, 'rootfs', 'bin', 'busybox'))).isFile());
    assert.equal(await readlink(join(bundle, 'rootfs', 'bin', 'sh')), 'busybox');
    assert.equal(await readFile(join(bundle, 'rootfs', 'app', 'hello.txt'), 'utf8'), 'hello from kiln\n');
    const dirOut = join(dir, 'bb-dir');
    await sh('skopeo', ['copy', `docker-archive:${file}`, `dir:${dirOut}`]);
    assert.ok((await readdir(dirOut)).includes('manifest.json'));
  });

  test('kiln reads back its own archive (by tag, normalised), with lazily compressed layers on request', async () => {
    const file = join(dir, 'two.tar');
    const other = await makeBusyboxImage({ kind: 'docker', extraFiles: [{ path: 'etc/motd', content: 'x\n' }] });
    await writeDockerArchive(file, [
      { image: busybox, tags: ['docker.io/library/bb:latest'] },
      { image: other, tags: ['other:2'] },
    ]);
    assert.deepEqual(await dockerArchiveTags(file), [['bb:latest'], ['other:2']]);
    const a = await readDockerArchive(file, 'bb');
    assert.equal((await a.manifest()).config.digest, (await busybox.manifest()).config.digest);
    assert.deepEqual(await a.rawConfig(), await busybox.rawConfig());
    const l0 = (await a.layers())[0]!;
    assert.equal(await l0.mediaType(), 'application/vnd.docker.image.rootfs.diff.tar');
    assert.equal(await l0.digest(), await l0.diffID());
    await sameLayers(a, busybox);
    const b = await readDockerArchive(file, 'docker.io/library/other:2', { compression: 'gzip' });
    const gl = (await b.layers())[0]!;
    assert.equal(await gl.mediaType(), MediaType.DockerLayerGzip);
    assert.notEqual(await gl.digest(), await gl.diffID());
    await sameLayers(b, other);
    await assert.rejects(readDockerArchive(file), (e) => isKilnError(e, 'IMAGE_AMBIGUOUS'));
    await assert.rejects(readDockerArchive(file, 'nope:1'), kilnErrorNaming('IMAGE_NOT_FOUND', file));
  });

  test('zstd layers are decompressed into the archive', async () => {
    const z = await makeBusyboxImage({ compression: 'zstd' });
    const file = join(dir, 'zstd.tar');
    await writeDockerArchive(file, [{ image: z, tags: ['z:1'] }]);
    const back = await readDockerArchive(file);
    await sameLayers(back, z);
    assert.deepEqual(await dockerArchiveTags(file), [['z:1']]);
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n.includes('kiln-')),
      [],
      'no spool or temp files left',
    );
  });
});

describe('archives from other writers', () => {
  test('skopeo-written docker-archive is read by kiln', async () => {
    const layout = join(dir, 'src-layout');
    // skopeo 1.9 only finds OCI-typed manifests in a layout's index.json.
    await writeLayout(layout, [{ image: withManifestMediaType(busybox, 'oci'), name: 'bb' }]);
    const file = join(dir, 'skopeo-written.tar');
    await sh('skopeo', ['copy', `oci:${layout}:bb`, `docker-archive:${file}:example.com/team/bb:3`]);
    const img = await readDockerArchive(file, 'example.com/team/bb:3');
    await sameLayers(img, busybox);
    assert.equal((await img.config()).architecture, (await busybox.config()).architecture);
  });

  test('docker 25+ layout (blobs/sha256, symlinked legacy paths) is read by kiln', async () => {
    const file = join(dir, 'docker25.tar');
    const w = new TarWriter(file);
    const cfg = await busybox.rawConfig();
    const layers = await busybox.layers();
    const paths: string[] = [];
    await w.addDir('blobs');
    await w.addDir('blobs/sha256');
    for (const [i, l] of layers.entries()) {
      // The second layer is stored gzip-compressed, which docker load also accepts.
      const blob = await streamToBuffer(await (i === 0 ? l.uncompressed() : l.compressed()), 1 << 30);
      await w.addBytes(`blobs/sha256/${sha256(blob).slice(7)}`, blob);
      paths.push(`blobs/sha256/${sha256(blob).slice(7)}`);
    }
    await w.addBytes(`blobs/sha256/${sha256(cfg).slice(7)}`, cfg);
    await w.addDir('legacy');
    await w.addSymlink('legacy/layer.tar', `../${paths[0]}`);
    await w.addBytes(
      'manifest.json',
      JSON.stringify([
        { Config: `blobs/sha256/${sha256(cfg).slice(7)}`, RepoTags: ['new:1'], Layers: ['legacy/layer.tar', paths[1]] },
      ]),
    );
    await w.commit();
    const img = await readDockerArchive(file, 'new:1');
    await sameLayers(img, busybox);
    const [l0, l1] = await img.layers();
    assert.equal(await l0!.mediaType(), 'application/vnd.docker.image.rootfs.diff.tar');
    assert.equal(await l1!.mediaType(), MediaType.DockerLayerGzip);
    assert.equal(await l1!.digest(), (await busybox.manifest()).layers[1]!.digest);
  });
});

describe('compressed archives', () => {
  test('gzip- and zstd-compressed docker and OCI archives are read (docker save | gzip)', async () => {
    const file = join(dir, 'plain.tar');
    await writeDockerArchive(file, [{ image: busybox, tags: ['bb:1'] }]);
    await sh('gzip', ['-k', file]);
    const img = await readDockerArchive(`${file}.gz`, 'bb:1');
    await sameLayers(img, busybox);
    const oci = join(dir, 'oci-plain.tar');
    await writeLayout(oci, [{ image: busybox, name: 'bb' }], { tar: true });
    await sh('zstd', ['-q', oci]);
    const layout = await readLayout(`${oci}.zst`);
    assert.equal(await (await layout.image('bb')).digest(), await busybox.digest());
    await sameLayers(await layout.image('bb'), busybox);
    assert.deepEqual(
      (await readdir(tmpdir())).filter((n) => n.startsWith(`kiln-archive-${process.pid}-`)),
      [],
      'the decompressed copy is anonymous',
    );
    const truncated = join(dir, 'truncated.tar.gz');
    await sh('sh', ['-c', `head -c 20000 ${file}.gz > ${truncated}`]);
    await assert.rejects(readDockerArchive(truncated), kilnErrorNaming('DECOMPRESS_FAILED', truncated));
  });
});

describe('corrupt docker archives', () => {
  test('truncated, altered layer, missing manifest.json, OCI archive given', async () => {
    const file = join(dir, 'corrupt.tar');
    await writeDockerArchive(file, [{ image: busybox, tags: ['bb:1'] }]);
    // Alter one byte inside the second layer.tar (found through the index).
    const ix = await TarIndex.open(file);
    const layerPath = `${(await busybox.config()).rootfs.diff_ids[1]!.slice(7)}/layer.tar`;
    const ent = ix.find(layerPath)!;
    const fh = await (await import('node:fs/promises')).open(file, 'r+');
    await fh.write(Buffer.from('Z'), 0, 1, ent.offset + 600);
    await fh.close();
    const img = await readDockerArchive(file, 'bb:1');
    const layer = (await img.layers())[1]!;
    await assert.rejects(
      async () => streamToBuffer(await layer.uncompressed(), 1 << 30),
      kilnErrorNaming('DIGEST_MISMATCH', `${file}:${layerPath}`),
    );

    const size = (await stat(file)).size;
    await truncate(file, size - 3000);
    await assert.rejects(readDockerArchive(file), kilnErrorNaming('TAR_TRUNCATED', file));

    const noManifest = join(dir, 'no-manifest.tar');
    await sh('tar', ['-cf', noManifest, '-C', dir, 'corrupt.tar']);
    await assert.rejects(readDockerArchive(noManifest), kilnErrorNaming('DOCKER_ARCHIVE_INVALID', noManifest));

    const ociArchive = join(dir, 'oci.tar');
    await writeLayout(ociArchive, [{ image: withManifestMediaType(busybox, 'oci'), name: 'bb' }], { tar: true });
    await assert.rejects(
      readDockerArchive(ociArchive),
      (e) =>
        kilnErrorNaming('DOCKER_ARCHIVE_INVALID', ociArchive)(e) &&
        /oci-archive/.test((e as { hint?: string }).hint ?? ''),
    );
    await assert.rejects(readDockerArchive(join(dir, 'missing.tar')), kilnErrorNaming('FILE_NOT_FOUND', 'missing.tar'));
  });
});
