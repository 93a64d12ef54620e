import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { BlobDir, readBlob, streamToBuffer } from './blobs.js';
import { digestHex, sha256 } from './digest.js';
import { isKilnError } from '../errors.js';
import { withTempDir } from '../../test/helpers/images.js';

const withDir = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('kiln-blobs-', fn);

test('a store that is not durable (an ephemeral home) writes blobs the same way, still verified and atomic', () =>
  withDir(async (dir) => {
    const b = new BlobDir(join(dir, 'blobs'), { durable: false });
    const data = Buffer.from('no fsync');
    const d = await b.write(Readable.from([data]), { digest: sha256(data), size: data.length });
    assert.equal(d.digest, sha256(data));
    assert.deepEqual(await readFile(b.path(d.digest)), data);
    await assert.rejects(b.write(Readable.from([data]), { digest: sha256(Buffer.from('other')) }), (e: unknown) =>
      isKilnError(e, 'DIGEST_MISMATCH'),
    );
    assert.deepEqual(await readdir(join(dir, 'blobs', 'sha256')), [digestHex(d.digest)], 'nothing half-written left');
  }));

test('write + open round trip, content addressed', () =>
  withDir(async (dir) => {
    const b = new BlobDir(join(dir, 'blobs'));
    const data = Buffer.from('hello blobs');
    const d = await b.write(Readable.from([data.subarray(0, 5), data.subarray(5)]));
    assert.equal(d.digest, sha256(data));
    assert.equal(d.size, data.length);
    assert.ok(await b.has(d.digest));
    assert.equal(b.path(d.digest), join(dir, 'blobs', 'sha256', sha256(data).slice(7)));
    assert.deepEqual(await streamToBuffer(await b.open(d.digest, d.size)), data);
    assert.deepEqual(await readBlob(b, d.digest), data);
    const again = await b.writeBytes(data);
    assert.equal(again.digest, d.digest);
    assert.deepEqual(await b.list(), [d.digest]);
  }));

test('write with a wrong expected digest fails with DIGEST_MISMATCH and leaves nothing behind', () =>
  withDir(async (dir) => {
    const b = new BlobDir(dir);
    const wrong = sha256('something else');
    await assert.rejects(b.write(Readable.from([Buffer.from('payload')]), { digest: wrong }), (e) =>
      isKilnError(e, 'DIGEST_MISMATCH'),
    );
    assert.deepEqual(await readdir(join(dir, 'sha256')), []);
    await assert.rejects(
      b.write(Readable.from([Buffer.from('payload')]), { digest: sha256('payload'), size: 3 }),
      (e) => isKilnError(e, 'SIZE_MISMATCH'),
    );
    assert.deepEqual(await readdir(join(dir, 'sha256')), []);
  }));

test('a failing source stream leaves no temp file', () =>
  withDir(async (dir) => {
    const b = new BlobDir(dir);
    const src = new Readable({
      read() {
        this.destroy(new Error('network dropped'));
      },
    });
    await assert.rejects(b.write(src), /network dropped/);
    assert.deepEqual(await readdir(join(dir, 'sha256')), []);
  }));

test('reading a corrupt blob fails with DIGEST_MISMATCH naming the file; missing blob is BLOB_NOT_FOUND', () =>
  withDir(async (dir) => {
    const b = new BlobDir(dir);
    const d = await b.writeBytes('original content');
    await writeFile(b.path(d.digest), 'tampered content');
    await assert.rejects(readBlob(b, d.digest), (e) => {
      assert.ok(isKilnError(e, 'DIGEST_MISMATCH'));
      assert.ok((e as Error).message.includes(b.path(d.digest)));
      return true;
    });
    await writeFile(b.path(d.digest), 'original');
    await assert.rejects(readBlob(b, d.digest, d.size), (e) => isKilnError(e, 'SIZE_MISMATCH'));
    const missing = sha256('nope');
    assert.equal(await b.has(missing), false);
    await assert.rejects(b.open(missing), (e) => isKilnError(e, 'BLOB_NOT_FOUND'));
    await b.remove(d.digest);
    await b.remove(d.digest);
    assert.equal(await b.has(d.digest), false);
    assert.equal(await readFile(join(dir, 'sha256', '..', 'sha256', '.')).catch(() => 'dir'), 'dir');
  }));
