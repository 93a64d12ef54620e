import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BuildCache, cacheKey, canonicalJSON } from './cache.js';

const D = 'sha256:' + 'a'.repeat(64);

test('cache keys are stable under key order and change with any input', () => {
  assert.equal(cacheKey({ a: 1, b: [1, { y: 2, x: 1 }] }), cacheKey({ b: [1, { x: 1, y: 2 }], a: 1 }));
  assert.notEqual(cacheKey({ a: 1 }), cacheKey({ a: 2 }));
  assert.notEqual(cacheKey({ argv: ['a b'] }), cacheKey({ argv: ['a', 'b'] }));
  assert.equal(canonicalJSON({ u: undefined, n: null }), '{"n":null}');
});

test('entries round-trip atomically; corrupt or foreign files are misses', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-cache-test-'));
  try {
    const c = new BuildCache(dir);
    const key = cacheKey({ x: 1 });
    assert.equal(await c.get(key), undefined);
    const entry = { version: 1 as const, layer: { diffID: D, digest: D, size: 3, mediaType: 'm' }, created: 't' };
    await c.put(key, entry);
    assert.deepEqual(await c.get(key), entry);
    assert.deepEqual(await readdir(dir), [key.slice(7) + '.json'], 'no temp files left');
    await writeFile(join(dir, key.slice(7) + '.json'), '{"version":1,"layer":{"diffID":"nope"}}');
    assert.equal(await c.get(key), undefined);
    await writeFile(join(dir, key.slice(7) + '.json'), '{trunc');
    assert.equal(await c.get(key), undefined);
    await c.delete(key);
    assert.deepEqual(await readdir(dir), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
