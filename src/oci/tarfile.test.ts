import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { TarIndex, TarWriter } from './tarfile.js';
import { streamToBuffer } from './blobs.js';
import { isKilnError } from '../errors.js';
import { withTempDir } from '../../test/helpers/images.js';

const withDir = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('kiln-tarfile-', fn);

const longName = 'd'.repeat(60) + '/' + 'e'.repeat(60) + '/' + 'f'.repeat(120) + '.txt';

for (const format of ['gnu', 'posix', 'ustar'] as const) {
  test(`TarIndex reads ${format} archives (long names, symlinks, hard links) by offset`, () =>
    withDir(async (dir) => {
      const src = join(dir, 'src');
      const name = format === 'ustar' ? 'd'.repeat(60) + '/' + 'f'.repeat(90) + '.txt' : longName;
      await mkdir(join(src, name, '..'), { recursive: true });
      await writeFile(join(src, name), 'long name content');
      await writeFile(join(src, 'big.bin'), Buffer.alloc(70_000, 3));
      await symlink('big.bin', join(src, 'link.bin'));
      await mkdir(join(src, 'sub'));
      await symlink('../big.bin', join(src, 'sub', 'up.bin'));
      await symlink('/big.bin', join(src, 'sub', 'abs.bin'));
      execFileSync('ln', [join(src, 'big.bin'), join(src, 'hard.bin')]);
      const file = join(dir, 'a.tar');
      execFileSync('tar', [`--format=${format}`, '-cf', file, '-C', src, '.']);
      const ix = await TarIndex.open(file);
      assert.equal((await ix.readEntry(name)).toString(), 'long name content');
      const big = Buffer.alloc(70_000, 3);
      for (const n of ['big.bin', './big.bin', 'link.bin', 'sub/up.bin', 'sub/abs.bin', 'hard.bin']) {
        assert.deepEqual(await ix.readEntry(n), big, n);
      }
      assert.equal(ix.find('missing'), undefined);
      assert.equal(ix.find('sub'), undefined, 'directories are not files');
      assert.throws(
        () => ix.openEntry('missing'),
        (e) => isKilnError(e, 'FILE_NOT_FOUND'),
      );
    }));
}

test('TarIndex: symlinks cannot reach outside the archive, loops end', () =>
  withDir(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await symlink('../../../../etc/hostname', join(src, 'escape'));
    await symlink('loop2', join(src, 'loop1'));
    await symlink('loop1', join(src, 'loop2'));
    const file = join(dir, 'a.tar');
    execFileSync('tar', ['-cf', file, '-C', src, '.']);
    const ix = await TarIndex.open(file);
    assert.equal(ix.find('escape'), undefined);
    assert.equal(ix.find('loop1'), undefined);
  }));

test('TarWriter commits atomically and abort leaves nothing', () =>
  withDir(async (dir) => {
    const dest = join(dir, 'out.tar');
    const w = new TarWriter(dest);
    await w.addDir('x');
    await w.addBytes('x/a.txt', 'hello');
    await w.addStream('x/b.bin', 5, Readable.from([Buffer.from('ab'), Buffer.from('cde')]));
    await w.addSymlink('x/c', 'a.txt');
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n === 'out.tar'),
      [],
      'nothing at the destination before commit',
    );
    await w.commit();
    assert.deepEqual(await readdir(dir), ['out.tar']);
    const listing = execFileSync('tar', ['-tvf', dest]).toString();
    assert.match(listing, /x\/c -> a\.txt/);
    const ix = await TarIndex.open(dest);
    assert.equal((await streamToBuffer(ix.openEntry('x/b.bin'))).toString(), 'abcde');
    assert.equal((await ix.readEntry('x/c')).toString(), 'hello');

    const w2 = new TarWriter(join(dir, 'fail.tar'));
    await w2.addBytes('a', 'a');
    await assert.rejects(w2.addStream('short', 10, Readable.from([Buffer.from('abc')])), (e) =>
      isKilnError(e, 'SIZE_MISMATCH'),
    );
    await w2.abort();
    assert.deepEqual(await readdir(dir), ['out.tar']);
  }));

test('TarWriter: an abort before the temp file was even opened leaves no temp file (issue 17: flaky layout test)', () =>
  withTempDir('kiln-tarw-', async (dir) => {
    // 20 writers whose first entry fails at once (a broken blob stream destroys the pack with an error, which
    // rejects the writer before its write stream has opened the temp file), then aborted
    const broken = (): Readable =>
      new Readable({
        read() {
          this.destroy(new Error('connection reset'));
        },
      });
    await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const w = new TarWriter(join(dir, `t${i}.tar`));
        await assert.rejects(w.addStream('blob', 10, broken()), /connection reset/);
        await w.abort();
      }),
    );
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(await readdir(dir), []);
  }));
