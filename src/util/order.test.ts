import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { byteOrder, readdirSortedSync } from './order.js';

test('byteOrder sorts by UTF-8 bytes, not UTF-16 code units', () => {
  // U+FF21 (3 UTF-8 bytes, EF BC A1) sorts before U+1F600 (F0 9F 98 80) by bytes, after it by UTF-16 units.
  const names = ['\u{1F600}', '\uFF21', 'B', 'a', 'A'];
  assert.deepEqual([...names].sort(byteOrder), ['A', 'B', 'a', '\uFF21', '\u{1F600}']);
  assert.deepEqual([...names].sort(), ['A', 'B', 'a', '\u{1F600}', '\uFF21']);
  assert.equal(byteOrder('x', 'x'), 0);
});

test('readdirSortedSync lists a directory in byte order', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-order-'));
  try {
    for (const n of ['\uFF21', '\u{1F600}', 'b', 'B', '.hidden']) writeFileSync(join(dir, n), '');
    assert.deepEqual(readdirSortedSync(dir), ['.hidden', 'B', 'b', '\uFF21', '\u{1F600}']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
