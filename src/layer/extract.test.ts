import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { ensureLayerDir, extractLayer } from './extract.js';
import { encodeHeader, padding, tarHeader, trailer, type TarHeader } from './tarformat.js';
import { writeLayer } from './writer.js';
import { scratch } from '../../test/layer/scratch.js';

const { root: tmp, fresh } = scratch('extract');

type E = Partial<TarHeader> & { name: string; data?: string };
function tarOf(list: E[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of list) {
    const data = Buffer.from(e.data ?? '');
    const h = tarHeader({ mtime: 1600000000, ...e, size: e.type && e.type !== 'file' ? 0 : data.length });
    parts.push(encodeHeader(h), data, padding(data.length));
  }
  parts.push(trailer());
  return Buffer.concat(parts);
}

const DIGEST = 'sha256:' + 'ab'.repeat(32);

test('hostile entries are rejected with an error naming the layer and the entry', async () => {
  const cases: { name: string; tar: E[]; msg: RegExp }[] = [
    { name: 'dot-dot', tar: [{ name: '../etc/passwd', data: 'x' }], msg: /entry "\.\.\/etc\/passwd" escapes the root/ },
    { name: 'nested dot-dot', tar: [{ name: 'a/../../x', data: 'x' }], msg: /escapes the root/ },
    {
      name: 'hardlink outside',
      tar: [{ name: 'h', type: 'link', linkname: '../../etc/shadow' }],
      msg: /entry "h" links to "..\/..\/etc\/shadow" outside the root/,
    },
    {
      name: 'hardlink to missing',
      tar: [{ name: 'h', type: 'link', linkname: 'nothere' }],
      msg: /not in this layer/,
    },
  ];
  for (const c of cases) {
    const d = fresh();
    await assert.rejects(extractLayer([tarOf(c.tar)], d, { digest: DIGEST }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'LAYER_INVALID', c.name);
      assert.match(e.message, /^layer sha256:abababababab…: /, c.name);
      assert.match(e.message, c.msg, c.name);
      return true;
    });
  }
});

test('symlinks are never followed out of the root', async () => {
  const outside = fresh();
  const d = fresh();
  writeFileSync(join(outside, 'victim'), 'safe');
  await extractLayer(
    [
      tarOf([
        { name: 'evil', type: 'symlink', linkname: outside },
        { name: 'evil/victim', data: 'pwned' },
        { name: 'rel', type: 'symlink', linkname: '../../../../../../..' + outside },
        { name: 'rel/victim2', data: 'pwned' },
        { name: 'last', type: 'symlink', linkname: join(outside, 'victim') },
        { name: 'last', data: 'replaced the link, not the target' },
        { name: '/abs/file', data: 'inside' },
      ]),
    ],
    d,
  );
  assert.equal(readFileSync(join(outside, 'victim'), 'utf8'), 'safe');
  assert.deepEqual(readdirSync(outside), ['victim']);
  // chroot semantics: the absolute symlink target resolved inside the root
  assert.equal(readFileSync(join(d, outside, 'victim'), 'utf8'), 'pwned');
  assert.equal(readFileSync(join(d, outside, 'victim2'), 'utf8'), 'pwned');
  assert.equal(lstatSync(join(d, 'last')).isFile(), true);
  assert.equal(readFileSync(join(d, 'abs/file'), 'utf8'), 'inside');
  assert.equal(readlinkSync(join(d, 'evil')), outside, 'the symlink itself is kept as written');
});

test('ownership, modes, mtimes, setuid and xattrs are applied', async () => {
  const d = fresh();
  const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex');
  await extractLayer(
    [
      tarOf([
        { name: 'bin/', type: 'dir', mode: 0o711, uid: 5, gid: 6, mtime: 1234567890 },
        { name: 'bin/su', mode: 0o4755, uid: 0, gid: 0, data: 'su', xattrs: new Map([['security.capability', cap]]) },
        { name: 'bin/u', mode: 0o640, uid: 1000, gid: 1000, data: 'u', xattrs: new Map([['trusted.evil', cap]]) },
        { name: 'missing/parent/file', data: 'p' },
      ]),
    ],
    d,
  );
  const bin = lstatSync(join(d, 'bin'));
  assert.equal(bin.mode & 0o7777, 0o711);
  assert.equal(bin.uid, 5);
  assert.equal(bin.gid, 6);
  assert.equal(bin.mtimeMs, 1234567890000);
  assert.equal(lstatSync(join(d, 'bin/su')).mode & 0o7777, 0o4755);
  const u = lstatSync(join(d, 'bin/u'));
  assert.equal(u.uid, 1000);
  assert.equal(u.mode & 0o7777, 0o640);
  assert.equal(lstatSync(join(d, 'missing/parent')).mode & 0o7777, 0o755);
  const attrs = execFileSync('getfattr', ['-d', '-m', '-', '-e', 'hex', join(d, 'bin/su'), join(d, 'bin/u')], {
    encoding: 'utf8',
  });
  assert.match(attrs, /security\.capability=0x0100000200200000/);
  assert.doesNotMatch(attrs, /trusted\.evil/);
});

test('overlay mode: whiteouts become 0/0 char devices, opaque markers an xattr', async () => {
  const d = fresh();
  await extractLayer(
    [
      gzipSync(
        tarOf([
          { name: 'etc/', type: 'dir', mode: 0o755 },
          { name: 'etc/.wh.motd' },
          { name: 'var/', type: 'dir', mode: 0o755 },
          { name: 'var/.wh..wh..opq' },
          { name: 'var/keep', data: 'k' },
          { name: '.wh.gone' },
        ]),
      ),
    ],
    d,
  );
  const wh = lstatSync(join(d, 'etc/motd'));
  assert.equal(wh.isCharacterDevice(), true);
  assert.equal(wh.rdev, 0);
  assert.equal(lstatSync(join(d, 'gone')).isCharacterDevice(), true);
  assert.equal(existsSync(join(d, 'var/.wh..wh..opq')), false);
  const x = execFileSync('getfattr', ['-n', 'user.overlay.opaque', '--only-values', join(d, 'var')], {
    encoding: 'utf8',
  });
  assert.equal(x, 'y');
  assert.deepEqual(readdirSync(d).sort(), ['etc', 'gone', 'var'], 'no whiteout template left behind');
  // and the writer turns it back into the same whiteouts
  const r = await writeLayer(d, { tmpDir: tmp, compression: 'none' });
  const listing = execFileSync('tar', ['-tf', r.file], { encoding: 'utf8' }).trim().split('\n');
  // sorted by the deleted name ('gone' between 'etc' and 'var'), like containerd's change walk
  assert.deepEqual(listing, ['etc/', 'etc/.wh.motd', '.wh.gone', 'var/', 'var/.wh..wh..opq', 'var/keep']);
});

test('apply mode: whiteouts delete, opaque dirs drop only older content', async () => {
  const d = fresh();
  mkdirSync(join(d, 'etc'));
  mkdirSync(join(d, 'var/cache'), { recursive: true });
  writeFileSync(join(d, 'etc/motd'), 'old');
  writeFileSync(join(d, 'var/cache/old'), 'old');
  writeFileSync(join(d, 'var/oldfile'), 'old');
  await extractLayer(
    [
      tarOf([
        { name: 'etc/.wh.motd' },
        { name: 'var/', type: 'dir', mode: 0o755 },
        { name: 'var/new', data: 'n' },
        { name: 'var/.wh..wh..opq' },
      ]),
    ],
    d,
    { mode: 'apply' },
  );
  assert.equal(existsSync(join(d, 'etc/motd')), false);
  assert.deepEqual(readdirSync(join(d, 'var')), ['new']);
});

test('diffID is verified and a bad layer leaves no store entry', async () => {
  const layers = fresh();
  const tar = tarOf([{ name: 'f', data: 'x' }]);
  const good = 'sha256:' + createHash('sha256').update(tar).digest('hex');
  const p = await ensureLayerDir(layers, good, async () => [gzipSync(tar)]);
  assert.equal(readFileSync(join(p, 'f'), 'utf8'), 'x');
  assert.equal(await ensureLayerDir(layers, good, async () => [Buffer.alloc(0)]), p, 'cached: not re-extracted');
  const wrong = 'sha256:' + 'cd'.repeat(32);
  await assert.rejects(
    ensureLayerDir(layers, wrong, async () => [tar]),
    { code: 'DIGEST_MISMATCH' },
  );
  await assert.rejects(
    ensureLayerDir(layers, 'sha256:' + 'ef'.repeat(32), async () => [tar.subarray(0, 700)]),
    {
      code: 'LAYER_INVALID',
    },
  );
  assert.deepEqual(readdirSync(layers), [good.slice(7)]);
});

test('hard links inside the layer are recreated as links', async () => {
  const d = fresh();
  await extractLayer(
    [
      tarOf([
        { name: 'a', data: 'same' },
        { name: 'dir/b', type: 'link', linkname: 'a' },
      ]),
    ],
    d,
  );
  assert.equal(lstatSync(join(d, 'a')).ino, lstatSync(join(d, 'dir/b')).ino);
});

test('an entry after its own whiteout in the same layer replaces the whiteout', async () => {
  const d = fresh();
  await extractLayer(
    [tarOf([{ name: '.wh.x' }, { name: 'x', data: 'back' }, { name: 'y', data: '1' }, { name: '.wh.y' }])],
    d,
  );
  assert.equal(readFileSync(join(d, 'x'), 'utf8'), 'back');
  assert.equal(lstatSync(join(d, 'y')).isCharacterDevice(), true);
});

test('more hostile shapes: symlink loops, links to escaping symlinks, root entries', async () => {
  const d = fresh();
  execFileSync('chmod', ['0755', d]);
  await assert.rejects(
    extractLayer(
      [
        tarOf([
          { name: 'a', type: 'symlink', linkname: 'b' },
          { name: 'b', type: 'symlink', linkname: 'a' },
          { name: 'a/x', data: 'loop' },
        ]),
      ],
      d,
    ),
    { code: 'LAYER_INVALID', message: /entry "a\/x" cannot be created: too many levels of symbolic links/ },
  );
  const e = fresh();
  execFileSync('chmod', ['0755', e]);
  await extractLayer(
    [
      tarOf([
        { name: './', type: 'dir', mode: 0o777 },
        { name: 'out', type: 'symlink', linkname: '/etc/shadow' },
        { name: 'hard', type: 'link', linkname: 'out' },
      ]),
    ],
    e,
  );
  assert.equal(lstatSync(e).mode & 0o777, 0o755, 'the root entry does not change the destination');
  assert.equal(lstatSync(join(e, 'hard')).isSymbolicLink(), true, 'a hard link to a symlink is a link to the symlink');
  assert.equal(lstatSync(join(e, 'hard')).ino, lstatSync(join(e, 'out')).ino);
});
