import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BaseWatcher, baseChangeReason, type BaseWatchHost, type Dependent } from './bases.js';
import type { Build } from '../model.js';

const D1 = 'sha256:' + '1'.repeat(64);
const D2 = 'sha256:' + '2'.repeat(64);

/** An in-memory host: dependents, the newest build per (project, image, ref), and what was queued. */
function host(deps: Dependent[]): BaseWatchHost & { queued: { dep: Dependent; to: string }[] } {
  const queued: { dep: Dependent; to: string }[] = [];
  const newest = new Map<string, Build>();
  return {
    queued,
    dependents: () => deps,
    newest: (p, i, r) => newest.get(`${p}/${i}/${r}`),
    enqueueBaseChange(dep, base, _from, to) {
      queued.push({ dep, to });
      const b = { id: `b${queued.length}`, trigger: { type: 'base-change', base, baseDigest: to } } as unknown as Build;
      newest.set(`${dep.project}/${dep.image}/${dep.ref}`, b);
      return b;
    },
  };
}

const dep = (project: string, base: string, digest = D1): Dependent => ({
  buildId: `${project}-1`,
  project,
  image: 'app',
  ref: 'refs/heads/main',
  commit: 'c'.repeat(40),
  bases: [{ name: base, digest }],
});

test('one lookup per distinct base per round, shared by every dependent; local-only bases are not looked up', async () => {
  const deps = Array.from({ length: 50 }, (_, i) => dep(`p${i}`, `r.example/base${i % 5}:1`));
  deps.push(dep('solo', 'localhost/busybox:latest'));
  const lookups: string[] = [];
  const h = host(deps);
  const w = new BaseWatcher(h, { intervalMs: 1000, lookup: async (n) => (lookups.push(n), D1) });
  assert.deepEqual(await w.check(), []);
  assert.equal(lookups.length, 5);
  assert.equal(new Set(lookups).size, 5);
  assert.ok(!lookups.includes('localhost/busybox:latest'));
});

test('a moved base queues each dependent once, however often it is checked or notified', async () => {
  const h = host([dep('a', 'r.example/base:1'), dep('b', 'r.example/base:1'), dep('c', 'r.example/other:1')]);
  const w = new BaseWatcher(h, { intervalMs: 1000, lookup: async (n) => (n === 'r.example/base:1' ? D2 : D1) });
  const first = await w.check();
  assert.equal(first.length, 2);
  assert.deepEqual(h.queued.map((q) => q.dep.project).sort(), ['a', 'b']);
  await w.check();
  await w.check(['r.example/base:1']);
  assert.equal(h.queued.length, 2, 'no second rebuild for the same digest');
  assert.equal(
    baseChangeReason('r.example/base:1', D1, D2),
    `base r.example/base:1 ${D1.slice(0, 19)} → ${D2.slice(0, 19)}`,
  );
});

test('a registry that is down: a warning, backoff, and no rebuild storm when it returns', async () => {
  let up = false;
  let calls = 0;
  const h = host([dep('a', 'r.example/base:1'), dep('b', 'r.example/base:1')]);
  const w = new BaseWatcher(h, {
    intervalMs: 10_000,
    lookup: async () => {
      calls++;
      if (!up) throw new Error('connect ECONNREFUSED 10.0.0.1:443');
      return D2;
    },
  });
  await w.check();
  assert.equal(calls, 1);
  const listed = w.list()[0];
  assert.match(listed?.warning ?? '', /ECONNREFUSED/);
  await w.check(); // backing off: not due yet
  assert.equal(calls, 1, 'backoff: no lookup before the next due time');
  up = true;
  await w.check(['r.example/base:1']); // a notification checks at once
  assert.equal(calls, 2);
  assert.equal(w.list()[0]?.warning, null);
  assert.equal(h.queued.length, 2, 'each dependent once');
});
