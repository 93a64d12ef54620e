import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { encodeHeader, padding, readTar, trailer, type TarHeader } from './tarformat.js';

function hdr(over: Partial<TarHeader>): TarHeader {
  return {
    name: 'f',
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: 0,
    mtime: 1700000000,
    linkname: '',
    devmajor: 0,
    devminor: 0,
    ...over,
  };
}

async function parse(buf: Buffer): Promise<{ header: TarHeader; data: Buffer }[]> {
  const out: { header: TarHeader; data: Buffer }[] = [];
  for await (const e of readTar([buf])) {
    const chunks: Buffer[] = [];
    for await (const c of e.body) chunks.push(c);
    out.push({ header: e.header, data: Buffer.concat(chunks) });
  }
  return out;
}

test('ustar header layout matches Go archive/tar (FormatPAX) field encoding', () => {
  const b = encodeHeader(hdr({ name: 'etc/hosts', size: 5, mode: 0o4755, uid: 1000, gid: 1001 }));
  assert.equal(b.length, 512);
  assert.equal(b.subarray(100, 108).toString('latin1'), '0004755\0');
  assert.equal(b.subarray(108, 116).toString('latin1'), '0001750\0');
  assert.equal(b.subarray(124, 136).toString('latin1'), '00000000005\0');
  assert.equal(b.subarray(257, 265).toString('latin1'), 'ustar\u000000');
  assert.equal(b.subarray(329, 345).toString('latin1'), '0000000\u00000000000\0');
  assert.equal(String.fromCharCode(b[156]!), '0');
  // checksum: 6 octal digits, NUL, space
  assert.match(b.subarray(148, 156).toString('latin1'), /^[0-7]{6}\0 $/);
  assert.equal(
    b.subarray(265, 297).every((x) => x === 0),
    true,
    'no user name',
  );
});

test('long names, big ids and binary xattrs go into a PAX header that round-trips', async () => {
  const long = 'a/' + 'b'.repeat(150) + '/file';
  const cap = Buffer.from([1, 0, 0, 2, 0x80, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const h = hdr({ name: long, uid: 3000000, size: 3, xattrs: new Map([['security.capability', cap]]) });
  const buf = Buffer.concat([encodeHeader(h), Buffer.from('abc'), padding(3), trailer()]);
  assert.equal(String.fromCharCode(buf[156]!), 'x', 'first block is a PAX header');
  // Go names the PAX header <dir>/PaxHeaders.0/<base>, cut to 100 bytes.
  assert.equal(buf.subarray(0, 100).toString('latin1'), ('a/' + 'b'.repeat(150) + '/PaxHeaders.0/file').slice(0, 100));
  const [e] = await parse(buf);
  assert.equal(e!.header.name, long);
  assert.equal(e!.header.uid, 3000000);
  assert.deepEqual(e!.header.xattrs?.get('security.capability'), cap);
  assert.equal(e!.data.toString(), 'abc');
});

test('GNU tar can read what we write (long names, links, symlinks, dirs)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-tarfmt-'));
  try {
    const long = 'd/' + 'x'.repeat(120);
    const buf = Buffer.concat([
      encodeHeader(hdr({ name: 'd/', type: 'dir', mode: 0o755 })),
      encodeHeader(hdr({ name: long, size: 2 })),
      Buffer.from('hi'),
      padding(2),
      encodeHeader(hdr({ name: 'd/hard', type: 'link', linkname: long })),
      encodeHeader(hdr({ name: 'd/sym', type: 'symlink', linkname: '../nowhere', mode: 0o777 })),
      encodeHeader(hdr({ name: 'ünï', size: 0 })),
      trailer(),
    ]);
    writeFileSync(join(dir, 't.tar'), buf);
    const list = execFileSync('tar', ['-tf', join(dir, 't.tar')], { encoding: 'utf8' })
      .trim()
      .split('\n');
    assert.deepEqual(list, ['d/', long, 'd/hard', 'd/sym', 'ünï']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('we read archives written by GNU tar in gnu and pax formats', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-tarfmt-'));
  try {
    const src = join(dir, 'src');
    const long = 'y'.repeat(130);
    mkdirSync(join(src, long), { recursive: true });
    writeFileSync(join(src, long, 'file.txt'), 'content');
    for (const format of ['gnu', 'pax', 'ustar']) {
      const out = join(dir, `${format}.tar`);
      try {
        execFileSync('tar', [`--format=${format}`, '-C', src, '-cf', out, '.'], { stdio: 'pipe' });
      } catch {
        assert.equal(format, 'ustar', 'only ustar may refuse a 130-byte name component');
        continue;
      }
      const entries = await parse(readFileSync(out));
      const f = entries.find((e) => e.header.name.endsWith('file.txt'));
      assert.ok(f, `${format}: file found`);
      assert.equal(f.header.name, `./${long}/file.txt`);
      assert.equal(f.data.toString(), 'content');
      assert.equal(f.header.type, 'file');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('corrupt and truncated archives are rejected with TAR_INVALID', async () => {
  const good = Buffer.concat([encodeHeader(hdr({ size: 600 })), Buffer.alloc(600), padding(600), trailer()]);
  const bad = Buffer.from(good);
  bad[10] = 0x41; // breaks the checksum
  await assert.rejects(parse(bad), { code: 'TAR_INVALID', message: /checksum/ });
  await assert.rejects(parse(good.subarray(0, 800)), { code: 'TAR_INVALID', message: /unexpected end/ });
  const sparse = encodeHeader(hdr({}));
  sparse[156] = 'S'.charCodeAt(0);
  // fix checksum after changing the type flag
  sparse.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of sparse) sum += x;
  sparse.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  await assert.rejects(parse(Buffer.concat([sparse, trailer()])), { code: 'TAR_INVALID', message: /sparse/ });
});
