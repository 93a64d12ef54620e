import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tailFile } from './tail.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

test('tailFile: follows a file from before it exists until its writer is done (renamed meanwhile)', async () => {
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
    const got = await collect(tailFile(file, writer));
    assert.equal(got.equals(Buffer.concat(pieces)), true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('tailFile: a failed writer fails the reader with its error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-tail-'));
  try {
    const file = join(dir, 'blob.tmp');
    const writer = (async () => {
      appendFileSync(file, 'partial');
      await sleep(20);
      throw new Error('writer broke');
    })();
    writer.catch(() => undefined);
    await assert.rejects(collect(tailFile(file, writer)), /writer broke/);
    const never = Promise.reject(new Error('no file'));
    never.catch(() => undefined);
    await assert.rejects(collect(tailFile(join(dir, 'missing'), never)), /no file/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
