import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { isKilnError } from './errors.js';
import { formatBytes, parseProgressMode, Progress, shortDigest, type ProgressEvent } from './progress.js';

function sink(isTTY = false): Writable & { text: string; isTTY: boolean } {
  const w = new Writable({
    write(chunk: Buffer, _e, cb) {
      w.text += chunk.toString();
      cb();
    },
  }) as Writable & { text: string; isTTY: boolean };
  w.text = '';
  w.isTTY = isTTY;
  return w;
}

test('json mode: one event per line with type, id, name, sizes', () => {
  const out = sink();
  const p = new Progress('json', out, 0);
  p.start('sha256:abc', 'blob sha256:abc', 40_000_000);
  p.update('sha256:abc', 12_300_000);
  p.done('sha256:abc', 'pushed');
  p.cached('sha256:def', 'mounted');
  p.error('sha256:fff', 'boom');
  p.log('pushed app@sha256:abc');
  p.close();
  const events = out.text
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as ProgressEvent);
  assert.deepEqual(
    events.map((e) => e.type),
    ['start', 'progress', 'done', 'cached', 'error', 'log'],
  );
  assert.equal(events[1]?.current, 12_300_000);
  assert.equal(events[1]?.total, 40_000_000);
  assert.equal(events[2]?.message, 'pushed');
  assert.equal(events[5]?.message, 'pushed app@sha256:abc');
  assert.ok(events.every((e) => typeof e.time === 'number'));
});

test('plain mode: start/done/cached/error lines, no byte-level noise; auto picks plain off a TTY', () => {
  const out = sink();
  const p = new Progress('auto', out, 0);
  assert.equal(p.mode, 'plain');
  p.start('a', 'blob sha256:aaaa', 2_000_000);
  p.update('a', 1_000_000);
  p.done('a');
  p.cached('b', 'already exists');
  p.close();
  assert.deepEqual(out.text.trim().split('\n'), [
    'blob sha256:aaaa  started',
    'blob sha256:aaaa  done',
    'b  already exists',
  ]);
});

test('tty mode redraws task lines in place; quiet prints nothing; listeners see every event', () => {
  const out = sink(true);
  const p = new Progress('tty', out, 0);
  const seen: string[] = [];
  p.listeners.push((e) => seen.push(e.type));
  p.start('a', 'blob sha256:aaaa', 40_000_000);
  p.update('a', 12_300_000);
  p.close();
  assert.match(out.text, /\x1b\[2Kblob sha256:aaaa {2}12\.3MB\/40\.0MB\n$/);
  assert.deepEqual(seen, ['start', 'progress']);
  const q = sink();
  const qp = new Progress('quiet', q, 0);
  qp.start('x', 'x');
  qp.done('x');
  qp.close();
  assert.equal(q.text, '');
});

test('helpers: bytes, short digests, mode parsing', () => {
  assert.equal(formatBytes(999), '999B');
  assert.equal(formatBytes(12_300_000), '12.3MB');
  assert.equal(shortDigest('sha256:' + 'a'.repeat(64)), 'sha256:aaaaaaaaaaaa');
  assert.equal(parseProgressMode('JSON'), 'json');
  assert.throws(
    () => parseProgressMode('fancy'),
    (e: unknown) => isKilnError(e, 'INVALID_OPTION'),
  );
});
