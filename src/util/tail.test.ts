import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { followFile } from './tail.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function collect(it: Promise<AsyncIterable<Buffer> | undefined>): Promise<Buffer | undefined> {
  const f = await it;
  if (!f) return undefined;
  const parts: Buffer[] = [];
  for await (const c of f) parts.push(c);
  return Buffer.concat(parts);
}

test('followFile: follows a file from before it exists until its writer is done (renamed meanwhile)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-tail-'));
  try {
    const file = join(dir, 'blob.tmp');
    const pieces = [randomBytes(10), randomBytes(3 << 20), Buffer.alloc(0), randomBytes(77_777)];
    const writer = (async () => {
      await sleep(20); // the reader starts first and waits for the file
      for (const p of pieces) {
        appendFileSync(file, p);
        await sleep(15);
      }
      renameSync(file, join(dir, 'blob')); // the store takes the finished file: the open handle still reads it
    })();
    const got = await collect(followFile(file, writer));
    assert.equal(got?.equals(Buffer.concat(pieces)), true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('followFile: a failed writer fails the reader; a file already finished (or never made) is not followed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-tail-'));
  try {
    const file = join(dir, 'blob.tmp');
    const writer = (async () => {
      appendFileSync(file, 'partial');
      await sleep(20);
      throw new Error('writer broke');
    })();
    writer.catch(() => undefined);
    await assert.rejects(collect(followFile(file, writer)), /writer broke/);
    const never = Promise.reject(new Error('no file'));
    never.catch(() => undefined);
    assert.equal(await followFile(join(dir, 'missing'), never), undefined);
    // written and moved away before it could be opened: nothing to follow (the caller uploads the finished blob)
    assert.equal(await followFile(join(dir, 'moved'), Promise.resolve()), undefined);
    // opened but never read (the upload failed before it pulled the body): close() lets go of the file
    const open = join(dir, 'open');
    writeFileSync(open, 'x');
    const f = await followFile(open, new Promise(() => undefined));
    assert.ok(f);
    await f.close();
    await f.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
