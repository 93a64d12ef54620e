import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { cp, lchown, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { readTar, type TarHeader } from './tarformat.js';
import { writeLayer } from './writer.js';
import { scratch } from '../../test/layer/scratch.js';

const { root: tmp, fresh } = scratch('writer');

async function entries(tarBuf: Buffer): Promise<TarHeader[]> {
  const out: TarHeader[] = [];
  for await (const e of readTar([tarBuf])) {
    for await (const _ of e.body);
    out.push(e.header);
  }
  return out;
}

function populate(d: string): void {
  mkdirSync(join(d, 'a/b'), { recursive: true });
  mkdirSync(join(d, 'a-c'));
  writeFileSync(join(d, 'a/b/file'), 'hello');
  writeFileSync(join(d, 'a-c/z'), 'z');
  writeFileSync(join(d, 'B'), 'upper');
  symlinkSync('a/b/file', join(d, 'link'));
  linkSync(join(d, 'a/b/file'), join(d, 'hard'));
  execFileSync('chmod', ['4755', join(d, 'B')]);
  for (const p of ['a/b/file', 'a-c/z', 'B', 'a/b', 'a', 'a-c', 'hard']) utimesSync(join(d, p), 1600000000, 1600000000);
}

test('same tree twice gives the same digests; content hash matches the blob', async () => {
  const d1 = fresh();
  const d2 = fresh();
  populate(d1);
  populate(d2);
  const r1 = await writeLayer(d1, { tmpDir: tmp });
  const r2 = await writeLayer(d2, { tmpDir: tmp });
  assert.equal(r1.diffID, r2.diffID);
  assert.equal(r1.digest, r2.digest);
  const blob = readFileSync(r1.file);
  assert.equal(r1.size, blob.length);
  assert.equal(r1.digest, 'sha256:' + createHash('sha256').update(blob).digest('hex'));
  const tar = gunzipSync(blob);
  assert.equal(r1.diffID, 'sha256:' + createHash('sha256').update(tar).digest('hex'));
  assert.equal(r1.diffSize, tar.length);
  assert.equal(r1.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
});

test('walk order, modes, links and normalised headers', async () => {
  const d = fresh();
  populate(d);
  const r = await writeLayer(d, { tmpDir: tmp, compression: 'none' });
  assert.equal(r.digest, r.diffID);
  const hs = await entries(readFileSync(r.file));
  // Byte order per directory, depth first: 'B' < 'a' < 'a-c' < 'hard' < 'link'; a/ children before a-c/.
  assert.deepEqual(
    hs.map((h) => h.name),
    ['B', 'a/', 'a/b/', 'a/b/file', 'a-c/', 'a-c/z', 'hard', 'link'],
  );
  const byName = new Map(hs.map((h) => [h.name, h]));
  assert.equal(byName.get('B')!.mode, 0o4755);
  assert.equal(byName.get('hard')!.type, 'link');
  assert.equal(byName.get('hard')!.linkname, 'a/b/file');
  assert.equal(byName.get('link')!.type, 'symlink');
  assert.equal(byName.get('link')!.linkname, 'a/b/file');
  assert.equal(byName.get('a/b/file')!.mtime, 1600000000);
  for (const h of hs) {
    assert.equal(h.uname, '');
    assert.equal(h.gname, '');
  }
  // GNU tar agrees.
  const listing = execFileSync('tar', ['-tvf', r.file], { encoding: 'utf8' });
  assert.match(listing, /^hrw-r--r-- 0\/0 +0 .* hard link to a\/b\/file$/m);
  assert.match(listing, /^-rwsr-xr-x 0\/0 +5 .* B$/m);
});

test('reroot: the tree written as a subdirectory is byte for byte the copied-and-chowned tree', async () => {
  const src = fresh();
  populate(src);
  mkdirSync(join(src, 'node_modules/x'), { recursive: true });
  writeFileSync(join(src, 'node_modules/x/i.js'), 'skipped');
  writeFileSync(join(src, 'g'), 'setgid, group-exec');
  execFileSync('chmod', ['2775', join(src, 'g')]);
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  // the staging copy it replaces: cp to up/app (top-level node_modules left out), every entry chowned
  const up = fresh();
  await cp(src, join(up, 'app'), {
    recursive: true,
    verbatimSymlinks: true,
    filter: (p) => p.slice(src.length + 1).split('/')[0] !== 'node_modules',
  });
  const chownAll = async (d: string): Promise<void> => {
    await lchown(d, uid, gid);
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await chownAll(join(d, e.name));
      else await lchown(join(d, e.name), uid, gid);
    }
  };
  await chownAll(join(up, 'app'));
  const epoch = 1500000000;
  const staged = await writeLayer(up, { tmpDir: tmp, sourceDateEpoch: epoch });
  const direct = await writeLayer(src, {
    tmpDir: tmp,
    sourceDateEpoch: epoch,
    reroot: { name: 'app', uid, gid, mtime: epoch, skip: ['node_modules'] },
  });
  assert.equal(direct.diffID, staged.diffID);
  assert.equal(direct.digest, staged.digest);
  const hs = await entries(gunzipSync(readFileSync(direct.file)));
  assert.deepEqual(
    hs.map((h) => h.name),
    ['app/', 'app/B', 'app/a/', 'app/a/b/', 'app/a/b/file', 'app/a-c/', 'app/a-c/z', 'app/g', 'app/hard', 'app/link'],
  );
  const byName = new Map(hs.map((h) => [h.name, h]));
  assert.equal(byName.get('app/hard')!.type, 'file', 'a copy has no hard links');
  assert.equal(byName.get('app/B')!.mode, 0o755, 'chown clears setuid');
  assert.equal(byName.get('app/g')!.mode, 0o775, 'and setgid with group-exec');
});

test('knownStats: the walk takes the given lstats instead of its own (same tar when they are current)', async () => {
  const d = fresh();
  populate(d);
  const own = await writeLayer(d, { tmpDir: tmp });
  const known = new Map([['a/b/file', lstatSync(join(d, 'a/b/file'))]]);
  const given = await writeLayer(d, { tmpDir: tmp, knownStats: known });
  assert.equal(given.diffID, own.diffID);
  assert.equal(given.digest, own.digest);
  // a stat the caller vouches for is used as is (here one from before the file's mtime moved)
  const stale = new Map([['a-c/z', lstatSync(join(d, 'a-c/z'))]]);
  utimesSync(join(d, 'a-c/z'), 1700000000, 1700000000);
  const r = await writeLayer(d, { tmpDir: tmp, compression: 'none', knownStats: stale });
  const hs = await entries(readFileSync(r.file));
  assert.equal(hs.find((h) => h.name === 'a-c/z')?.mtime, 1600000000);
  const fresh2 = await writeLayer(d, { tmpDir: tmp, compression: 'none' });
  assert.equal((await entries(readFileSync(fresh2.file))).find((h) => h.name === 'a-c/z')?.mtime, 1700000000);
});

test('SOURCE_DATE_EPOCH clamps later mtimes only', async () => {
  const d = fresh();
  writeFileSync(join(d, 'old'), 'x');
  writeFileSync(join(d, 'new'), 'y');
  utimesSync(join(d, 'old'), 1000, 1000);
  utimesSync(join(d, 'new'), 2000000000, 2000000000);
  const r = await writeLayer(d, { tmpDir: tmp, compression: 'none', sourceDateEpoch: 1500000000 });
  const hs = await entries(readFileSync(r.file));
  assert.equal(hs.find((h) => h.name === 'old')!.mtime, 1000);
  assert.equal(hs.find((h) => h.name === 'new')!.mtime, 1500000000);
});

test('overlay upper dir: 0/0 char devices become .wh. files, opaque dirs get .wh..wh..opq first', async () => {
  const d = fresh();
  mkdirSync(join(d, 'etc'));
  writeFileSync(join(d, 'etc/new'), 'n');
  execFileSync('mknod', [join(d, 'etc/deleted'), 'c', '0', '0']);
  mkdirSync(join(d, 'var'));
  writeFileSync(join(d, 'var/a'), 'a');
  execFileSync('setfattr', ['-n', 'user.overlay.opaque', '-v', 'y', join(d, 'var')]);
  const r = await writeLayer(d, { tmpDir: tmp, compression: 'none' });
  const hs = await entries(readFileSync(r.file));
  assert.deepEqual(
    hs.map((h) => h.name),
    ['etc/', 'etc/.wh.deleted', 'etc/new', 'var/', 'var/.wh..wh..opq', 'var/a'],
  );
  const wh = hs.find((h) => h.name === 'etc/.wh.deleted')!;
  assert.equal(wh.type, 'file');
  assert.equal(wh.mode, 0);
  assert.equal(wh.size, 0);
  assert.equal(wh.mtime, 0);
  // Plain mode keeps the device as a device.
  const plain = await writeLayer(d, { tmpDir: tmp, compression: 'none', whiteouts: 'none' });
  const ph = await entries(readFileSync(plain.file));
  assert.equal(ph.find((h) => h.name === 'etc/deleted')?.type, 'char');
  assert.equal(
    ph.some((h) => h.name.includes('.wh.')),
    false,
  );
});

test('security.capability is kept, other xattrs are not', async () => {
  const d = fresh();
  writeFileSync(join(d, 'ping'), 'bin');
  const cap = '0x0100000200200000000000000000000000000000';
  execFileSync('setfattr', ['-n', 'security.capability', '-v', cap, join(d, 'ping')]);
  execFileSync('setfattr', ['-n', 'user.note', '-v', 'x', join(d, 'ping')]);
  const r = await writeLayer(d, { tmpDir: tmp, compression: 'none' });
  const [h] = await entries(readFileSync(r.file));
  assert.deepEqual([...h!.xattrs!.keys()], ['security.capability']);
  assert.equal(h!.xattrs!.get('security.capability')!.toString('hex'), cap.slice(2));
});

test('zstd layers decompress to the same tar', async () => {
  const d = fresh();
  populate(d);
  const plain = await writeLayer(d, { tmpDir: tmp, compression: 'none' });
  const z = await writeLayer(d, { tmpDir: tmp, compression: 'zstd' });
  assert.equal(z.diffID, plain.diffID);
  assert.equal(z.mediaType, 'application/vnd.oci.image.layer.v1.tar+zstd');
  const out = execFileSync('zstd', ['-dc', z.file]);
  assert.equal('sha256:' + createHash('sha256').update(out).digest('hex'), plain.diffID);
});

test('a missing directory is a clear error and leaves no temp file', async () => {
  const out = fresh();
  await assert.rejects(writeLayer(join(tmp, 'nope'), { tmpDir: out }), { code: 'LAYER_WRITE_FAILED' });
  assert.deepEqual(readdirSync(out), []);
});

test('an upper dir using overlay redirects is refused, not silently mis-written', async () => {
  const d = fresh();
  mkdirSync(join(d, 'moved'));
  execFileSync('setfattr', ['-n', 'user.overlay.redirect', '-v', '/orig', join(d, 'moved')]);
  await assert.rejects(writeLayer(d, { tmpDir: tmp }), { code: 'LAYER_WRITE_FAILED', message: /overlay\.redirect/ });
});

test('with lowers: unchanged entries are left out, hidden lower content never counts as unchanged', async () => {
  const l1 = fresh();
  const l2 = fresh();
  const up = fresh();
  const put = (dir: string, rel: string, data: string): void => {
    mkdirSync(join(dir, rel, '..'), { recursive: true });
    writeFileSync(join(dir, rel), data);
    utimesSync(join(dir, rel), 1500000000, 1500000000);
  };
  put(l1, 'a/x', 'same');
  put(l1, 'b/y', 'same');
  put(l1, 'c', 'same');
  put(l1, 'd/keep', 'k');
  put(l2, 'a/z', 'z');
  execFileSync('setfattr', ['-n', 'user.overlay.opaque', '-v', 'y', join(l2, 'a')]);
  execFileSync('mknod', [join(l2, 'b'), 'c', '0', '0']);
  // upper: files identical to ones the lowers hide (a/x under an opaque dir, b/y under a whiteout) and to one they
  // show (c); a whiteout of something no lower has; a directory with nothing recorded in it
  put(up, 'a/x', 'same');
  put(up, 'b/y', 'same');
  put(up, 'c', 'same');
  execFileSync('mknod', [join(up, 'ghost'), 'c', '0', '0']);
  mkdirSync(join(up, 'd'));
  for (const d of [l1, l2, up])
    for (const x of ['a', 'b', 'd']) {
      try {
        utimesSync(join(d, x), 1500000000, 1500000000);
      } catch {
        /* not in this dir */
      }
    }
  const r = await writeLayer(up, { tmpDir: tmp, compression: 'none', lowers: [l1, l2] });
  const names = (await entries(readFileSync(r.file))).map((h) => h.name);
  assert.deepEqual(names, ['a/', 'a/x', 'b/', 'b/y']);
});
