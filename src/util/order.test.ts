import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
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

test('byteOrder agrees with Buffer.compare of the UTF-8 bytes (prefixes, surrogates, U+E000..U+FFFF)', () => {
  const alphabet = fc.constantFrom(
    'a',
    'b',
    'A',
    '.',
    '/',
    '\u00e9',
    '\ud7ff',
    '\ue000',
    '\uffff',
    '\u{1F600}',
    '\u{10FFFF}',
  );
  const name = fc.array(alphabet, { maxLength: 6 }).map((cs) => cs.join(''));
  fc.assert(
    fc.property(name, name, (a, b) => {
      assert.equal(Math.sign(byteOrder(a, b)), Buffer.compare(Buffer.from(a), Buffer.from(b)));
    }),
    { numRuns: 2000 },
  );
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
