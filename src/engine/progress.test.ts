import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BuildProgress } from './progress.js';

function clock(): { now: () => number; t: number } {
  const c = { t: 0, now: () => c.t };
  return c;
}

test('plain: BuildKit-style vertex lines, output split into lines with timestamps', () => {
  const out: string[] = [];
  const c = clock();
  const p = new BuildProgress('plain', (s) => out.push(s), c.now);
  p.start(5, '[2/4] RUN echo hi');
  c.t = 213;
  p.log(5, 'stdout', Buffer.from('hi\npart'));
  p.log(5, 'stdout', Buffer.from('ial\n'));
  c.t = 300;
  p.done(5);
  p.start(6, '[3/4] COPY f /f');
  p.cached(6);
  p.start(7, '[4/4] RUN false');
  p.error(7, 'process "/bin/sh -c false" did not complete successfully: exit code: 1');
  p.warn('x');
  p.warn('x');
  assert.equal(
    out.join(''),
    '\n#5 [2/4] RUN echo hi\n#5 0.213 hi\n#5 0.213 partial\n#5 DONE 0.3s\n' +
      '\n#6 [3/4] COPY f /f\n#6 CACHED\n' +
      '\n#7 [4/4] RUN false\n#7 ERROR: process "/bin/sh -c false" did not complete successfully: exit code: 1\n' +
      'WARNING: x\n',
  );
});

test('json: one ProgressEvent per line; quiet: nothing', () => {
  const out: string[] = [];
  const p = new BuildProgress(
    'json',
    (s) => out.push(s),
    () => 0,
  );
  p.start(1, 'RUN x');
  p.log(1, 'stderr', Buffer.from('oops\n'));
  p.done(1);
  const ev = out.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(
    ev.map((e) => [e.type, e.id, e.name ?? e.message]),
    [
      ['start', '#1', 'RUN x'],
      ['log', '#1', 'oops'],
      ['done', '#1', 'RUN x'],
    ],
  );
  assert.equal(ev[1]?.stream, 'stderr');
  assert.ok(ev.every((e) => typeof e.time === 'number'));
  const q: string[] = [];
  const quiet = new BuildProgress('quiet', (s) => q.push(s));
  quiet.start(1, 'x');
  quiet.log(1, 'stdout', Buffer.from('y\n'));
  quiet.done(1);
  assert.deepEqual(q, []);
});
