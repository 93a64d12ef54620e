import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PageCache } from './page-cache.js';

test('PageCache: one answer per key and mark; no mark, no caching; the oldest entry goes beyond max', () => {
  const c = new PageCache(2);
  let made = 0;
  const make = (v: string) => (): string => `${v}#${++made}`;
  assert.equal(c.get('a', 'm1', make('a')), 'a#1');
  assert.equal(c.get('a', 'm1', make('a')), 'a#1', 'same key and mark: stored');
  assert.equal(c.get('a', 'm2', make('a')), 'a#2', 'a new mark: made again');
  assert.equal(c.get('x', undefined, make('x')), 'x#3');
  assert.equal(c.get('x', undefined, make('x')), 'x#4', 'without a mark nothing is reused');
  assert.equal(c.size, 1);
  c.get('b', 'm2', make('b'));
  c.get('c', 'm2', make('c'));
  assert.equal(c.size, 2, 'bounded');
  assert.equal(c.get('a', 'm2', make('a')), 'a#7', "the oldest entry ('a') was dropped");
  assert.equal(c.get('c', 'm2', make('c')), 'c#6', 'a recent one stays');
});
