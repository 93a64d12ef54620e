import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../errors.js';
import { destinationError, ensureDir, prepareFileDest } from './fsutil.js';

const unwritable = (dest: string, reason: RegExp) => (e: unknown) =>
  isKilnError(e, 'OUTPUT_UNWRITABLE') && e.message.includes(dest) && reason.test(e.message) && !!e.hint;

test('ensureDir creates missing parents and accepts existing directories', async () => {
  const d = await mkdtemp(join(tmpdir(), 'kiln-fsutil-'));
  try {
    await ensureDir(join(d, 'a', 'b', 'c'), join(d, 'a', 'b', 'c', 'f'), 'test');
    assert.ok((await stat(join(d, 'a', 'b', 'c'))).isDirectory());
    await ensureDir(join(d, 'a', 'b'), join(d, 'a', 'b', 'f'), 'test');
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test('ensureDir under /proc fails with a clear error instead of spinning (Node 20 mkdir -p loop)', async () => {
  await assert.rejects(
    ensureDir('/proc/kiln-no-such/dir', '/proc/kiln-no-such/dir/x.tar', 'docker archive'),
    unwritable(
      '/proc/kiln-no-such/dir/x.tar',
      /cannot write docker archive .*: the parent directory cannot be created/,
    ),
  );
});

test('prepareFileDest: a file in the way of a parent, or a directory as the destination', async () => {
  const d = await mkdtemp(join(tmpdir(), 'kiln-fsutil-'));
  try {
    await writeFile(join(d, 'file'), 'x');
    const dest = join(d, 'file', 'sub', 'out.tar');
    await assert.rejects(prepareFileDest(dest, 'OCI archive'), unwritable(dest, /a parent is not a directory/));
    await assert.rejects(prepareFileDest(d, 'OCI archive'), unwritable(d, /it is a directory/));
    await prepareFileDest(join(d, 'new', 'out.tar'), 'OCI archive');
    assert.ok((await stat(join(d, 'new'))).isDirectory());
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test('destinationError only rewrites file system errors about the destination', () => {
  const eacces = Object.assign(new Error('EACCES'), { code: 'EACCES', path: '/out/dir/.x.tar.kiln-tmp-1' });
  const other = Object.assign(new Error('ENOENT'), { code: 'ENOENT', path: '/home/u/.kiln/blobs/sha256/ab' });
  assert.ok(isKilnError(destinationError(eacces, '/out/dir/x.tar', 'docker archive'), 'OUTPUT_UNWRITABLE'));
  assert.equal(destinationError(other, '/out/dir/x.tar', 'docker archive'), other);
  const plain = new Error('boom');
  assert.equal(destinationError(plain, '/out/x.tar', 'docker archive'), plain);
});
