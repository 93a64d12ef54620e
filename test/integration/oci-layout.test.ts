/**
 * OCI layouts written by kiln are read by skopeo and unpacked by umoci; layouts written by skopeo are read by
 * kiln; corrupt and truncated layouts fail with one-line KilnErrors naming the file.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { run } from '../differential/exec.js';
import { lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kilnErrorNaming, makeBusyboxImage } from '../helpers/images.js';
import { readLayout, writeLayout } from '../../src/oci/layout.js';
import { newIndex, digestStream } from '../../src/oci/image.js';
import { withManifestMediaType } from '../../src/oci/mutate.js';
import { parsePlatform } from '../../src/oci/platform.js';
import { streamToBuffer } from '../../src/oci/blobs.js';
import { isKilnError } from '../../src/errors.js';
import type { Image } from '../../src/oci/types.js';

async function sh(cmd: string, args: string[]): Promise<string> {
  return (await run(cmd, args)).stdout;
}

let dir: string;
let busybox: Image;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-oci-layout-'));
  busybox = await makeBusyboxImage({ secondLayer: [{ path: 'app/hello.txt', content: 'hello from kiln\n' }] });
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function umociUnpack(layoutDir: string, name: string): Promise<string> {
  const bundle = join(dir, `bundle-${Math.random().toString(36).slice(2)}`);
  await sh('umoci', ['unpack', '--rootless', '--image', `${layoutDir}:${name}`, bundle]);
  return join(bundle, 'rootfs');
}

async function checkRootfs(rootfs: string): Promise<void> {
  const bb = await stat(join(rootfs, 'bin', 'busybox'));
  assert.ok(bb.isFile() && (bb.mode & 0o111) !== 0, 'bin/busybox is an executable file');
  assert.equal(await readlink(join(rootfs, 'bin', 'sh')), 'busybox');
  assert.match(await readFile(join(rootfs, 'etc', 'passwd'), 'utf8'), /^app:x:1000:1000:/m);
  assert.equal((await stat(join(rootfs, 'tmp'))).mode & 0o7777, 0o1777);
  assert.equal(await readFile(join(rootfs, 'app', 'hello.txt'), 'utf8'), 'hello from kiln\n');
}

describe('kiln-written layouts', () => {
  test('directory: skopeo inspect/copy and umoci unpack read it', async () => {
    const layout = join(dir, 'layout-dir');
    await writeLayout(layout, [{ image: busybox, name: 'bb' }]);
    const info = JSON.parse(await sh('skopeo', ['inspect', `oci:${layout}:bb`])) as Record<string, unknown>;
    assert.equal(info.Digest, await busybox.digest());
    assert.equal((info.Layers as string[]).length, 2);
    const raw = await sh('skopeo', ['inspect', '--raw', `oci:${layout}:bb`]);
    assert.equal(raw, (await busybox.rawManifest()).toString());
    const out = join(dir, 'skopeo-dir-out');
    await sh('skopeo', ['copy', `oci:${layout}:bb`, `dir:${out}`]);
    const cfgDigest = (await busybox.manifest()).config.digest;
    assert.deepEqual(await readFile(join(out, cfgDigest.slice(7))), await busybox.rawConfig());
    await checkRootfs(await umociUnpack(layout, 'bb'));
  });

  test('adding a ref to an existing layout keeps the others; same name replaces', async () => {
    const layout = join(dir, 'layout-multi');
    // skopeo 1.9 only sees OCI manifests in index.json, so the docker-typed ref is checked with kiln only.
    const docker = withManifestMediaType(busybox, 'docker');
    const other = await makeBusyboxImage({ extraFiles: [{ path: 'etc/motd', content: 'other\n' }] });
    await writeLayout(layout, [{ image: busybox, name: 'one' }]);
    await writeLayout(layout, [{ image: docker, name: 'two' }]);
    await writeLayout(layout, [{ image: other, name: 'one' }]);
    const l = await readLayout(layout);
    assert.deepEqual(
      l.list().map((e) => [e.name, e.descriptor.digest]),
      [
        ['two', await docker.digest()],
        ['one', await other.digest()],
      ],
    );
    assert.equal(
      (await (await l.image('two')).manifest()).mediaType,
      'application/vnd.docker.distribution.manifest.v2+json',
    );
    const info = JSON.parse(await sh('skopeo', ['inspect', `oci:${layout}:one`])) as Record<string, unknown>;
    assert.equal(info.Digest, await other.digest());
    const rootfs = await umociUnpack(layout, 'one');
    assert.equal(await readFile(join(rootfs, 'etc', 'motd'), 'utf8'), 'other\n');
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n.includes('kiln-tmp')),
      [],
      'no temp dirs left',
    );
  });

  test('tar: skopeo reads oci-archive; contents unpack with umoci', async () => {
    const tarFile = join(dir, 'layout.tar');
    await writeLayout(tarFile, [{ image: busybox, name: 'bb' }], { tar: true });
    // Add a second ref to the existing archive.
    const other = await makeBusyboxImage({ extraFiles: [{ path: 'etc/motd', content: 'second\n' }] });
    await writeLayout(tarFile, [{ image: other, name: 'other' }], { tar: true });
    const info = JSON.parse(await sh('skopeo', ['inspect', `oci-archive:${tarFile}:bb`])) as Record<string, unknown>;
    assert.equal(info.Digest, await busybox.digest());
    const info2 = JSON.parse(await sh('skopeo', ['inspect', `oci-archive:${tarFile}:other`])) as Record<
      string,
      unknown
    >;
    assert.equal(info2.Digest, await other.digest());
    const unpacked = join(dir, 'from-tar');
    await mkdir(unpacked);
    await sh('tar', ['-xf', tarFile, '-C', unpacked]);
    await checkRootfs(await umociUnpack(unpacked, 'bb'));
    const l = await readLayout(tarFile);
    assert.equal(l.isTar, true);
    const img = await l.image('bb');
    assert.equal(await img.digest(), await busybox.digest());
    const [first] = await img.layers();
    assert.equal((await digestStream(await first!.uncompressed())).digest, await first!.diffID());
  });

  test('multi-platform index: skopeo --raw sees it, kiln selects by platform', async () => {
    const amd = await makeBusyboxImage({ platform: parsePlatform('linux/amd64') });
    const arm = await makeBusyboxImage({
      platform: parsePlatform('linux/arm64'),
      extraFiles: [{ path: 'arm', content: 'x' }],
    });
    const ix = newIndex([{ image: amd }, { image: arm }]);
    const layout = join(dir, 'layout-index');
    await writeLayout(layout, [{ image: ix, name: 'multi' }]);
    const raw = JSON.parse(await sh('skopeo', ['inspect', '--raw', `oci:${layout}:multi`])) as { manifests: unknown[] };
    assert.equal(raw.manifests.length, 2);
    const armInfo = JSON.parse(
      await sh('skopeo', ['--override-arch', 'arm64', 'inspect', `oci:${layout}:multi`]),
    ) as Record<string, unknown>;
    assert.equal(armInfo.Digest, await ix.digest(), 'skopeo reports the index digest');
    assert.equal(armInfo.Architecture, 'arm64');
    assert.equal(armInfo.Layers && (armInfo.Layers as string[])[0], (await arm.manifest()).layers[0]!.digest);
    const l = await readLayout(layout);
    assert.equal(await (await l.image('multi', parsePlatform('linux/arm64'))).digest(), await arm.digest());
    assert.equal(await (await l.index('multi')).digest(), await ix.digest());
    await assert.rejects(l.image('multi', parsePlatform('linux/s390x')), (e) => isKilnError(e, 'PLATFORM_NOT_FOUND'));
  });

  test('writing into a non-empty non-layout directory is refused and leaves it untouched', async () => {
    const d = join(dir, 'not-a-layout');
    await mkdir(d);
    await writeFile(join(d, 'keep.txt'), 'mine');
    await assert.rejects(writeLayout(d, [{ image: busybox }]), (e) => isKilnError(e, 'LAYOUT_INVALID'));
    assert.deepEqual(await readdir(d), ['keep.txt']);
  });
});

describe('skopeo-written layouts are read by kiln', () => {
  test('skopeo copy oci → oci (dir and archive), docker schema2 conversion', async () => {
    const src = join(dir, 'src-for-skopeo');
    await writeLayout(src, [{ image: busybox, name: 'bb' }]);
    const dst = join(dir, 'skopeo-written');
    await sh('skopeo', ['copy', '--format', 'v2s2', `oci:${src}:bb`, `oci:${dst}:copied`]);
    const l = await readLayout(dst);
    assert.deepEqual(
      l.list().map((e) => e.name),
      ['copied'],
    );
    const img = await l.image('copied');
    const m = await img.manifest();
    assert.equal(m.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    assert.deepEqual((await img.config()).rootfs.diff_ids, (await busybox.config()).rootfs.diff_ids);
    for (const layer of await img.layers()) {
      assert.equal((await digestStream(await layer.uncompressed())).digest, await layer.diffID());
    }
    const archive = join(dir, 'skopeo-archive.tar');
    await sh('skopeo', ['copy', `oci:${src}:bb`, `oci-archive:${archive}:arch`]);
    const la = await readLayout(archive);
    const ia = await la.image('arch');
    assert.equal(await ia.digest(), await busybox.digest());
    assert.deepEqual(
      await streamToBuffer(await la.blobs.open((await ia.manifest()).config.digest)),
      await busybox.rawConfig(),
    );
  });
});

describe('umoci-written layouts are read by kiln', () => {
  test('umoci repack adds a layer kiln can read and verify', async () => {
    const layout = join(dir, 'umoci-layout');
    await writeLayout(layout, [{ image: busybox, name: 'bb' }]);
    const bundle = join(dir, 'umoci-bundle');
    await sh('umoci', ['unpack', '--rootless', '--image', `${layout}:bb`, bundle]);
    await writeFile(join(bundle, 'rootfs', 'etc', 'added-by-umoci'), 'umoci\n');
    await sh('umoci', ['repack', '--image', `${layout}:bb2`, bundle]);
    await sh('umoci', ['config', '--image', `${layout}:bb2`, '--config.env', 'FOO=bar']);
    const l = await readLayout(layout);
    const img = await l.image('bb2');
    const layers = await img.layers();
    assert.equal(layers.length, 3);
    for (const layer of layers) {
      assert.equal((await digestStream(await layer.uncompressed())).digest, await layer.diffID());
    }
    assert.ok((await img.config()).config?.Env?.includes('FOO=bar'));
    assert.deepEqual((await img.config()).rootfs.diff_ids.slice(0, 2), (await busybox.config()).rootfs.diff_ids);
  });
});

describe('corrupt and truncated layouts', () => {
  test('missing oci-layout / index.json / blob, bad JSON', async () => {
    const base = join(dir, 'corrupt');
    await writeLayout(base, [{ image: busybox, name: 'bb' }]);
    await writeFile(join(base, 'index.json'), '{not json');
    await assert.rejects(readLayout(base), kilnErrorNaming('JSON_INVALID', join(base, 'index.json')));
    await rm(join(base, 'index.json'));
    await assert.rejects(readLayout(base), kilnErrorNaming('LAYOUT_INVALID', join(base, 'index.json')));
    await rm(join(base, 'oci-layout'));
    await assert.rejects(readLayout(base), kilnErrorNaming('LAYOUT_INVALID', join(base, 'oci-layout')));
    await assert.rejects(readLayout(join(dir, 'does-not-exist')), kilnErrorNaming('FILE_NOT_FOUND', 'does-not-exist'));

    const b2 = join(dir, 'missing-blob');
    await writeLayout(b2, [{ image: busybox, name: 'bb' }]);
    const mblob = join(b2, 'blobs', 'sha256', (await busybox.digest()).slice(7));
    await rm(mblob);
    await assert.rejects(readLayout(b2), kilnErrorNaming('BLOB_NOT_FOUND', mblob));
  });

  test('a corrupted layer fails with DIGEST_MISMATCH naming the blob file', async () => {
    const base = join(dir, 'corrupt-layer');
    await writeLayout(base, [{ image: busybox, name: 'bb' }]);
    const layerDigest = (await busybox.manifest()).layers[1]!.digest;
    const p = join(base, 'blobs', 'sha256', layerDigest.slice(7));
    const buf = await readFile(p);
    buf[buf.length - 5] ^= 0xff;
    await writeFile(p, buf);
    const img = await (await readLayout(base)).image('bb');
    const layer = await img.layerByDigest(layerDigest);
    await assert.rejects(
      async () => streamToBuffer(await layer.compressed(), 1 << 30),
      kilnErrorNaming('DIGEST_MISMATCH', p),
    );
    await truncate(p, 10);
    await assert.rejects(
      async () => streamToBuffer(await layer.compressed(), 1 << 30),
      kilnErrorNaming('SIZE_MISMATCH', p),
    );
  });

  test('truncated and non-tar archives', async () => {
    const tarFile = join(dir, 'trunc.tar');
    await writeLayout(tarFile, [{ image: busybox, name: 'bb' }], { tar: true });
    const size = (await stat(tarFile)).size;
    await truncate(tarFile, Math.floor(size / 2));
    await assert.rejects(readLayout(tarFile), kilnErrorNaming('TAR_TRUNCATED', tarFile));
    const junk = join(dir, 'junk.tar');
    await writeFile(junk, Buffer.alloc(4096, 0x41));
    await assert.rejects(readLayout(junk), kilnErrorNaming('TAR_INVALID', junk));
    const gz = join(dir, 'gz.tar');
    await writeFile(gz, Buffer.from([0x1f, 0x8b, 8, 0, ...Buffer.alloc(1020)]));
    await assert.rejects(readLayout(gz), kilnErrorNaming('DECOMPRESS_FAILED', gz));
    const notLayout = join(dir, 'plain.tar');
    await sh('tar', ['-cf', notLayout, '-C', dir, 'junk.tar']);
    await assert.rejects(readLayout(notLayout), kilnErrorNaming('LAYOUT_INVALID', notLayout));
    assert.ok((await lstat(tarFile)).isFile());
  });
});
