import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { s2iWorkDir, syncFile, syncTree } from './workdir.js';

test('syncTree: unchanged files keep their inode, changed ones are replaced, removed ones go; modes and times', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-s2i-sync-'));
  try {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    await mkdir(join(a, 'sub'), { recursive: true });
    await writeFile(join(a, 'same.txt'), 'same');
    await writeFile(join(a, 'sub', 'edit.txt'), 'v1');
    await writeFile(join(a, 'gone.txt'), 'bye');
    await writeFile(join(a, 'run.sh'), '#!/bin/sh\n');
    await chmod(join(a, 'run.sh'), 0o755);
    await symlink('same.txt', join(a, 'link'));
    // many files: a copy's mtime reads back within a millisecond of its source's (utimes takes a Date), not equal
    // when truncated — each of these would be copied again with probability ~1/2 if that were the comparison
    const many = Array.from({ length: 24 }, (_, i) => `many-${i}.txt`);
    for (const m of many) await writeFile(join(a, m), m);
    await syncTree(a, b);
    const ino = async (p: string): Promise<number> => (await stat(p)).ino;
    const before = { same: await ino(join(b, 'same.txt')), ctime: (await stat(join(b, 'same.txt'))).ctimeMs };
    const manyCtimes = await Promise.all(many.map(async (m) => (await stat(join(b, m), { bigint: true })).ctimeNs));
    assert.equal((await stat(join(b, 'run.sh'))).mode & 0o777, 0o755);
    assert.equal(await readlink(join(b, 'link')), 'same.txt');

    await writeFile(join(a, 'sub', 'edit.txt'), 'v2');
    const t = new Date('2020-01-02T03:04:05Z');
    await utimes(join(a, 'sub', 'edit.txt'), t, t);
    await rm(join(a, 'gone.txt'));
    await writeFile(join(a, 'new.txt'), 'new');
    await syncTree(a, b);
    assert.equal(await ino(join(b, 'same.txt')), before.same, 'an unchanged file is left alone');
    assert.equal((await stat(join(b, 'same.txt'))).ctimeMs, before.ctime, '… not even touched');
    const manyAfter = await Promise.all(many.map(async (m) => (await stat(join(b, m), { bigint: true })).ctimeNs));
    assert.deepEqual(manyAfter, manyCtimes, 'no unchanged file is copied again');
    assert.equal(await readFile(join(b, 'sub', 'edit.txt'), 'utf8'), 'v2');
    assert.equal((await stat(join(b, 'sub', 'edit.txt'))).mtime.getTime(), t.getTime());
    assert.equal(await readFile(join(b, 'new.txt'), 'utf8'), 'new');
    await assert.rejects(stat(join(b, 'gone.txt')));
    assert.equal((await stat(b)).mtime.getTime(), (await stat(a)).mtime.getTime(), 'directory times copied');

    // one file: copied when it differs, removed at the destination when the source is gone
    assert.equal(await syncFile(join(a, 'new.txt'), join(dir, 'one')), true);
    const one = await ino(join(dir, 'one'));
    assert.equal(await syncFile(join(a, 'new.txt'), join(dir, 'one')), true);
    assert.equal(await ino(join(dir, 'one')), one);
    assert.equal(await syncFile(join(a, 'missing'), join(dir, 'one')), false);
    await assert.rejects(stat(join(dir, 'one')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('s2iWorkDir: kept per (source, image); a second build at the same time gets a temp dir', async () => {
  const home = await mkdtemp(join(tmpdir(), 'kiln-s2i-home-'));
  try {
    const first = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(first.kept, true);
    const busy = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(busy.kept, false);
    assert.notEqual(busy.dir, first.dir);
    const other = await s2iWorkDir(home, '/src/app', 'r/other:1');
    assert.equal(other.kept, true);
    assert.notEqual(other.dir, first.dir);
    await busy.release();
    await assert.rejects(stat(busy.dir), 'a temp dir is removed');
    await first.release();
    await other.release();
    const again = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(again.dir, first.dir, 'the same dir next time');
    await again.release();
    // a lock left by a process that is gone is taken over
    await writeFile(join(first.dir, '.lock'), '999999999');
    const taken = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(taken.kept, true);
    await taken.release();
  } finally {
    await rm(home, { recursive: true, force: true });
  }
});
