import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { build as fixture } from '../../../test/helpers/fake-core.js';
import type { Build, Project, RunPolicy, TriggerType } from '../model.js';
import type { NewBuild } from '../store/store.js';
import { coalesceOnEnqueue, pickNext, serialKey, timeoutFor, type QueueLimits } from './policy.js';

let counter = 0;
/** A queued webhook build of project `a` with a fresh id. */
function build(over: Partial<Build> = {}): Build {
  counter++;
  return fixture(`b${counter}`, { project: 'a', commit: null, trigger: { type: 'webhook' }, ...over });
}

function incoming(over: Partial<NewBuild> = {}): NewBuild {
  return {
    project: 'a',
    image: 'app',
    ref: 'refs/heads/main',
    commit: 'c'.repeat(40),
    trigger: { type: 'webhook' },
    ...over,
  };
}

function limits(over: Partial<QueueLimits> = {}, per: Record<string, number> = {}, policy: RunPolicy = 'Parallel') {
  return { global: 4, perProject: (p: string) => per[p] ?? 10, runPolicy: () => policy, ...over };
}

/** Start a build as the runner would: it leaves the queue and runs from `at` (ms). */
function start(b: Build, at: number): Build {
  return { ...b, phase: 'fetching', startedAt: new Date(at).toISOString() };
}

test('coalesce: SerialLatestOnly — an automatic build supersedes queued automatic builds of the same image and ref', () => {
  const q = [
    build({ id: 'w1' }),
    build({ id: 'p1', trigger: { type: 'poll' } }),
    build({ id: 'r1', trigger: { type: 'retry', of: 'x' } }),
    build({ id: 'm1', trigger: { type: 'manual', by: 'alice' } }),
    build({ id: 'rr', trigger: { type: 'rerun', of: 'x', by: 'bob' } }),
    build({ id: 'other-ref', ref: 'refs/heads/dev' }),
    build({ id: 'other-image', image: 'worker' }),
    build({ id: 'other-project', project: 'b' }),
  ];
  assert.deepEqual(coalesceOnEnqueue(q, incoming(), 'SerialLatestOnly').supersede, ['w1', 'p1', 'r1']);
  assert.deepEqual(
    coalesceOnEnqueue(q, incoming({ trigger: { type: 'base-change', base: 'x' } }), 'SerialLatestOnly').supersede,
    ['w1', 'p1', 'r1'],
  );
});

test('coalesce: nothing under Serial/Parallel, for manual/rerun/retry incoming, or for builds by commit', () => {
  const q = [build({ id: 'w1' }), build({ id: 'c1', ref: '' })];
  for (const p of ['Serial', 'Parallel'] as const) assert.deepEqual(coalesceOnEnqueue(q, incoming(), p).supersede, []);
  for (const type of ['manual', 'rerun', 'retry'] as TriggerType[]) {
    assert.deepEqual(coalesceOnEnqueue(q, incoming({ trigger: { type } }), 'SerialLatestOnly').supersede, []);
  }
  assert.deepEqual(coalesceOnEnqueue(q, incoming({ ref: '' }), 'SerialLatestOnly').supersede, []);
});

test('pickNext: global and per-project limits', () => {
  const q = [build({ project: 'a' }), build({ project: 'b' })];
  const running = [start(build({ project: 'a', image: 'x' }), 1), start(build({ project: 'c' }), 2)];
  assert.equal(pickNext(q, running, limits({ global: 2 })), undefined);
  assert.equal(pickNext(q, running, limits({ global: 3 }, { a: 1 }))?.project, 'b');
  assert.equal(pickNext(q, running, limits({ global: 3 }, { a: 1, b: 0 })), undefined);
  assert.equal(pickNext([], [], limits()), undefined);
});

test('pickNext: Serial runs one build per (project, image, ref) at a time; Parallel does not care', () => {
  const runningMain = start(build({ id: 'run' }), 1);
  const q = [build({ id: 'q-main' }), build({ id: 'q-main2' }), build({ id: 'q-dev', ref: 'refs/heads/dev' })];
  assert.equal(pickNext(q, [runningMain], limits({}, {}, 'Serial'))?.id, 'q-dev');
  assert.equal(pickNext(q, [runningMain], limits({}, {}, 'SerialLatestOnly'))?.id, 'q-dev');
  assert.equal(pickNext(q.slice(0, 2), [runningMain], limits({}, {}, 'Serial')), undefined);
  assert.equal(pickNext(q, [runningMain], limits({}, {}, 'Parallel'))?.id, 'q-main');
});

test('pickNext: skips builds already cancelled or with a cancel request', () => {
  const q = [build({ id: 'x', cancelRequested: true }), build({ id: 'y', phase: 'cancelled' }), build({ id: 'z' })];
  assert.equal(pickNext(q, [], limits())?.id, 'z');
});

test('pickNext: fair share — a project with 20 queued builds does not starve a later single build', () => {
  const queue: Build[] = [];
  for (let i = 0; i < 20; i++) queue.push(build({ id: `a${i}`, project: 'a', ref: `refs/heads/f${i}` }));
  const lim = limits({ global: 2 }, { a: 2, b: 2 });
  let running: Build[] = [];
  const order: string[] = [];
  let clock = 0;
  const run = (): void => {
    for (;;) {
      const next = pickNext(queue, running, lim);
      if (!next) return;
      queue.splice(queue.indexOf(next), 1);
      running.push(start(next, ++clock));
      order.push(next.id);
    }
  };
  run();
  assert.deepEqual(order, ['a0', 'a1']);
  queue.push(build({ id: 'b0', project: 'b' })); // B arrives after A's twenty
  run();
  assert.deepEqual(order, ['a0', 'a1'], 'global limit reached');
  running = running.filter((b) => b.id !== 'a0');
  run();
  assert.deepEqual(order, ['a0', 'a1', 'b0'], "B's build starts before A's third");
  // Equal running counts: the least recently started project goes first.
  running = running.filter((b) => b.id !== 'a1');
  queue.push(build({ id: 'b1', project: 'b' }));
  run();
  assert.deepEqual(order, ['a0', 'a1', 'b0', 'a2']);
});

test('pickNext: ties on running count go to the project whose last start is oldest, then queue order', () => {
  const q = [build({ id: 'a1', project: 'a' }), build({ id: 'b1', project: 'b' })];
  const lastStartedAt = (p: string) => ({ a: 200, b: 100 })[p];
  assert.equal(pickNext(q, [], limits({ lastStartedAt }))?.id, 'b1');
  assert.equal(pickNext(q, [], limits({ lastStartedAt: () => undefined }))?.id, 'a1');
  assert.equal(pickNext(q, [], limits({ lastStartedAt: (p) => (p === 'a' ? 5 : undefined) }))?.id, 'b1');
});

test('timeoutFor: image, then project, then service default', () => {
  const project = {
    timeoutSeconds: 600,
    images: [{ name: 'app', timeoutSeconds: 60 }, { name: 'worker' }],
  } as unknown as Project;
  assert.equal(timeoutFor({ image: 'app' }, project, 3600), 60);
  assert.equal(timeoutFor({ image: 'worker' }, project, 3600), 600);
  assert.equal(timeoutFor({ image: 'worker' }, { ...project, timeoutSeconds: undefined }, 3600), 3600);
  assert.equal(timeoutFor({ image: 'app' }, undefined, 3600), 3600);
});

const PROJECTS = ['a', 'b', 'c'];
const arbBuild = fc
  .record({
    project: fc.constantFrom(...PROJECTS),
    image: fc.constantFrom('x', 'y'),
    ref: fc.constantFrom('refs/heads/main', 'refs/heads/dev', ''),
  })
  .map((f) => build(f));
const arbPolicy = fc.constantFrom<RunPolicy>('Serial', 'SerialLatestOnly', 'Parallel');
const arbSetup = fc.record({
  queued: fc.array(arbBuild, { maxLength: 25 }),
  running: fc.array(arbBuild, { maxLength: 6 }),
  global: fc.integer({ min: 0, max: 6 }),
  per: fc.record({
    a: fc.integer({ min: 0, max: 3 }),
    b: fc.integer({ min: 0, max: 3 }),
    c: fc.integer({ min: 1, max: 3 }),
  }),
  policies: fc.record({ a: arbPolicy, b: arbPolicy, c: arbPolicy }),
});

function allows(b: Build, running: readonly Build[], lim: QueueLimits): boolean {
  const mine = running.filter((r) => r.project === b.project);
  return (
    running.length < lim.global &&
    mine.length < lim.perProject(b.project) &&
    (lim.runPolicy(b.project) === 'Parallel' || !running.some((r) => serialKey(r) === serialKey(b)))
  );
}

test('property: a pick never breaks a limit, is the fairest project, and none is missed', () => {
  fc.assert(
    fc.property(arbSetup, (s) => {
      const running = s.running.map((b, i) => start(b, i));
      const lim: QueueLimits = {
        global: s.global,
        perProject: (p) => s.per[p as 'a'],
        runPolicy: (p) => s.policies[p as 'a'],
      };
      const pick = pickNext(s.queued, running, lim);
      const runnable = s.queued.filter((b) => allows(b, running, lim));
      if (!pick) {
        assert.deepEqual(runnable, []);
        return;
      }
      assert.ok(s.queued.includes(pick));
      assert.ok(allows(pick, running, lim));
      const load = (p: string): number => running.filter((r) => r.project === p).length;
      assert.ok(runnable.every((b) => load(b.project) >= load(pick.project)));
      assert.equal(
        runnable.find((b) => b.project === pick.project),
        pick,
        "the project's oldest runnable build",
      );
    }),
    { numRuns: 500 },
  );
});

test('property: simulated service — limits hold at every step and every build eventually runs', () => {
  fc.assert(
    fc.property(arbSetup, fc.array(fc.nat(), { minLength: 1, maxLength: 60 }), (s, finishes) => {
      const queue = [...s.queued];
      const lim: QueueLimits = {
        global: Math.max(1, s.global),
        perProject: (p) => Math.max(1, s.per[p as 'a']),
        runPolicy: (p) => s.policies[p as 'a'],
      };
      let running: Build[] = [];
      let clock = 0;
      let started = 0;
      const fill = (): void => {
        for (let b = pickNext(queue, running, lim); b; b = pickNext(queue, running, lim)) {
          assert.ok(allows(b, running, lim));
          queue.splice(queue.indexOf(b), 1);
          running.push(start(b, ++clock));
          started++;
        }
      };
      fill();
      for (const f of finishes) {
        if (running.length === 0) break;
        running = running.filter((_, i) => i !== f % running.length);
        fill();
      }
      while (running.length) {
        running = running.slice(1);
        fill();
      }
      assert.equal(queue.length, 0);
      assert.equal(started, s.queued.length);
    }),
    { numRuns: 300 },
  );
});
