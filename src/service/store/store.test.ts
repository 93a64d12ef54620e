import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { isKilnError } from '../../errors.js';
import { project } from '../../../test/helpers/fake-core.js';
import type { Build, Phase, Project } from '../model.js';
import { coalesceOnEnqueue } from '../queue/policy.js';
import { SCHEMA_VERSION } from './db.js';
import { decodeCursor, listBuildsSql, QUEUED_SQL, toBuild, type BuildRow } from './rows.js';
import { Store, type NewBuild } from './store.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'kiln-store-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
/** A fresh database path in a directory that does not exist yet (open must create it). */
function dbFile(): string {
  return join(root, `case-${++n}`, 'data', 'kiln.db');
}

function nb(over: Partial<NewBuild> = {}): NewBuild {
  return {
    project: 'app',
    image: 'app',
    ref: 'refs/heads/main',
    commit: 'a'.repeat(40),
    trigger: { type: 'webhook' },
    ...over,
  };
}

function open(file: string, ...projects: string[]): Store {
  const s = Store.open(file);
  for (const p of projects) s.upsertProject(project(p));
  return s;
}

function code(c: string): (e: unknown) => boolean {
  return (e) => isKilnError(e, c);
}

function ids(builds: readonly Pick<Build, 'id'>[]): string[] {
  return builds.map((b) => b.id);
}

/** Drive a build along a legal path to the final phase `to`. */
function finish(s: Store, id: string, to: Phase, finishedAt?: string): Build {
  s.updateBuild(id, { phase: 'fetching' });
  if (to !== 'succeeded') return s.updateBuild(id, { phase: to, finishedAt });
  s.updateBuild(id, { phase: 'building' });
  s.updateBuild(id, { phase: 'pushing' });
  return s.updateBuild(id, { phase: to, digest: 'sha256:' + 'f'.repeat(64), finishedAt });
}

function raw(file: string, fn: (db: Database.Database) => void): void {
  const db = new Database(file);
  try {
    fn(db);
  } finally {
    db.close();
  }
}

test('open: creates the dirs, WAL mode, file mode 0600; reopening keeps data and migrates nothing twice', () => {
  const file = dbFile();
  const s = open(file, 'app');
  const [b] = s.createBuilds([nb()]);
  s.close();
  s.close();
  assert.equal(statSync(file).mode & 0o777, 0o600);
  const s2 = Store.open(file);
  assert.equal(s2.getBuild(b?.id ?? '')?.number, 1);
  assert.equal(s2.createBuilds([nb()])[0]?.number, 2);
  s2.close();
  Store.open(file).close();
  raw(file, (db) => {
    assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(db.prepare('SELECT count(*) AS n FROM builds').pluck().get(), 2);
  });
});

test('open: a database from a newer kiln is refused (STORE_TOO_NEW), a non-database too (STORE_OPEN_FAILED)', () => {
  const file = dbFile();
  Store.open(file).close();
  raw(file, (db) => db.pragma(`user_version = ${SCHEMA_VERSION + 1}`));
  assert.throws(
    () => Store.open(file),
    (e) => isKilnError(e, 'STORE_TOO_NEW') && e.message.includes(file) && e.hint !== undefined,
  );
  const junk = join(root, 'junk.db');
  writeFileSync(junk, Buffer.alloc(8192, 0x41));
  assert.throws(() => Store.open(junk), code('STORE_OPEN_FAILED'));
});

test('projects: upsert reports created / unchanged (whatever the key order) / updated; delete removes builds', () => {
  const s = open(dbFile());
  const p = project('app');
  assert.equal(s.upsertProject(p), 'created');
  const reordered = Object.fromEntries(Object.entries(p).reverse()) as unknown as Project;
  assert.equal(s.upsertProject(reordered), 'unchanged');
  assert.equal(s.upsertProject({ ...p, concurrency: 3 }), 'updated');
  assert.equal(s.getProject('app')?.concurrency, 3);
  s.upsertProject(project('other'));
  assert.deepEqual(
    s.listProjects().map((x) => x.name),
    ['app', 'other'],
  );
  assert.equal(s.getProject('nope'), undefined);

  const made = s.createBuilds([nb(), nb({ image: 'web' })]);
  finish(s, made[0]?.id ?? '', 'succeeded');
  s.recordDelivery({ project: 'app', forge: 'github', deliveryId: 'd1', event: 'push', outcome: 'queued' });
  const other = s.createBuilds([nb({ project: 'other' })]);
  assert.deepEqual(s.deleteProject('app'), ids(made));
  assert.equal(s.deleteProject('app'), undefined);
  assert.equal(s.getProject('app'), undefined);
  assert.equal(s.getBuild(made[0]?.id ?? ''), undefined);
  assert.deepEqual(ids(s.listBuilds().builds), ids(other));
  assert.equal(s.hasDelivery('github', 'd1', 'app'), false);
  assert.deepEqual(
    s.buildStats().map((x) => x.project),
    [],
  );
  s.upsertProject(project('app'));
  assert.equal(s.createBuilds([nb()])[0]?.number, 1, 'a re-created project starts again at 1');
  s.close();
});

test('createBuilds: one transaction, one group, numbers per project, queued; unknown project creates nothing', () => {
  const s = open(dbFile(), 'app', 'other');
  const a = s.createBuilds([nb(), nb({ image: 'web', changedPaths: ['web/x.ts'] }), nb({ project: 'other' })]);
  assert.deepEqual(
    a.map((b) => [b.project, b.number, b.phase]),
    [
      ['app', 1, 'queued'],
      ['app', 2, 'queued'],
      ['other', 1, 'queued'],
    ],
  );
  assert.equal(new Set(a.map((b) => b.group)).size, 1);
  assert.equal(new Set(ids(a)).size, 3);
  assert.match(a[0]?.id ?? '', /^b-[0-9a-z]{9}-[0-9a-f]{10}$/);
  assert.deepEqual(s.getBuild(a[1]?.id ?? ''), a[1]);
  assert.deepEqual(a[1]?.changedPaths, ['web/x.ts']);
  assert.equal(a[0]?.startedAt, null);
  assert.equal(a[0]?.cancelRequested, false);
  assert.ok(!Number.isNaN(Date.parse(a[0]?.createdAt ?? '')));
  const b = s.createBuilds([nb()]);
  assert.notEqual(b[0]?.group, a[0]?.group);
  assert.equal(b[0]?.number, 3);

  assert.throws(() => s.createBuilds([nb(), nb({ project: 'ghost' })]), code('NOT_FOUND'));
  assert.equal(s.listBuilds().builds.length, 4, 'the valid item of the failed call was rolled back');
  assert.equal(s.createBuilds([nb()])[0]?.number, 4, 'and its number was not consumed');
  assert.deepEqual(s.createBuilds([]), []);
  assert.equal(s.nextBuildNumber('app'), 5);
  assert.throws(() => s.nextBuildNumber('ghost'), code('NOT_FOUND'));
  s.close();
});

test('changeMark: the same across reads; changes with a write of this connection and a commit of another', () => {
  const file = dbFile();
  const s = open(file, 'app');
  const cli = Store.open(file); // a second process (kiln serve token create, …)
  try {
    const m0 = s.changeMark();
    s.listBuilds();
    s.getBuild('nope');
    assert.equal(s.changeMark(), m0, 'reads change nothing');
    const { builds } = s.enqueue([nb()]);
    const m1 = s.changeMark();
    assert.notEqual(m1, m0, 'an enqueue');
    s.setStages(builds[0]?.id ?? '', []);
    const m2 = s.changeMark();
    assert.notEqual(m2, m1, 'a stage update');
    cli.enqueue([nb()]);
    assert.notEqual(s.changeMark(), m2, "another connection's commit");
  } finally {
    cli.close();
    s.close();
  }
});

test('listBuilds: newest first, keyset pages stay stable while newer builds arrive; filters; bad cursor', () => {
  const s = open(dbFile(), 'app', 'other');
  const all: Build[] = [];
  for (let i = 0; i < 60; i++) {
    all.push(...s.createBuilds([nb({ image: i % 2 ? 'web' : 'app' }), nb({ project: 'other' })]));
  }
  const newest = [...all].reverse();
  const p1 = s.listBuilds({ limit: 50 });
  assert.deepEqual(ids(p1.builds), ids(newest.slice(0, 50)));
  assert.ok(p1.next);
  s.createBuilds([nb(), nb(), nb()]); // arrives between page reads
  const p2 = s.listBuilds({ limit: 50, cursor: p1.next });
  assert.deepEqual(ids(p2.builds), ids(newest.slice(50, 100)));
  const p3 = s.listBuilds({ limit: 50, cursor: p2.next ?? '' });
  assert.deepEqual(ids(p3.builds), ids(newest.slice(100)));
  assert.equal(p3.next, null);
  assert.equal(s.listBuilds().builds.length, 50, 'default page size');
  assert.equal(s.listBuilds({ limit: 10_000 }).builds.length, 123, 'at most 500');

  const web = s.listBuilds({ project: 'app', image: 'web', limit: 500 }).builds;
  assert.equal(web.length, 30);
  assert.ok(web.every((b) => b.project === 'app' && b.image === 'web'));
  assert.equal(s.listBuilds({ image: 'app', limit: 500 }).builds.length, 30 + 3 + 60);
  finish(s, all[0]?.id ?? '', 'failed');
  finish(s, all[3]?.id ?? '', 'failed');
  assert.deepEqual(ids(s.listBuilds({ phase: 'failed' }).builds), [all[3]?.id, all[0]?.id]);
  assert.deepEqual(ids(s.listBuilds({ project: 'other', phase: 'failed' }).builds), [all[3]?.id]);
  assert.deepEqual(s.listBuilds({ project: 'nope' }), { builds: [], next: null });

  const page = s.listBuilds({ project: 'app', limit: 1 });
  const listed = page.builds[0] as object;
  const heavyFields = ['changedPaths', 'stages', 'bases', 'rebase'];
  for (const heavy of heavyFields) assert.ok(!(heavy in listed), heavy);
  const full = Object.entries(s.getBuild(page.builds[0]?.id ?? '') ?? {});
  assert.deepEqual(listed, Object.fromEntries(full.filter(([k]) => !heavyFields.includes(k))), 'the rest as getBuild');
  for (const bad of ['', 'xyz', Buffer.from('s01').toString('base64url'), Buffer.from('s1 ').toString('base64url')]) {
    assert.throws(() => s.listBuilds({ cursor: bad }), code('CURSOR_INVALID'), bad);
  }
  assert.ok(decodeCursor(page.next ?? '') > 0);
  s.close();
});

test('updateBuild: legal transitions set timestamps; illegal ones and changes to final builds are BUILD_CONFLICT', () => {
  const s = open(dbFile(), 'app');
  const [b] = s.createBuilds([nb(), nb()]);
  const id = b?.id ?? '';
  assert.throws(() => s.updateBuild(id, { phase: 'building' }), code('BUILD_CONFLICT'));
  assert.throws(() => s.updateBuild(id, { phase: 'succeeded' }), code('BUILD_CONFLICT'));
  const f = s.updateBuild(id, { phase: 'fetching', commit: 'b'.repeat(40) });
  assert.ok(f.startedAt);
  assert.equal(f.commit, 'b'.repeat(40));
  const stages = [{ name: 'fetch', kind: 'fetch', status: 'done' as const, startedAt: f.startedAt, durationMs: 12 }];
  const g = s.updateBuild(id, { phase: 'building', stages, reason: undefined });
  assert.equal(g.startedAt, f.startedAt, 'startedAt kept');
  assert.deepEqual(g.stages, stages);
  assert.equal(s.updateBuild(id, { tags: ['r/app:main'] }).phase, 'building', 'a patch without phase');
  s.updateBuild(id, { phase: 'pushing' });
  const done = s.updateBuild(id, { phase: 'succeeded', digest: 'sha256:' + '1'.repeat(64) });
  assert.ok(done.finishedAt);
  assert.deepEqual(done.tags, ['r/app:main']);
  assert.deepEqual(s.getBuild(id), done);
  for (const p of ['failed', 'succeeded', 'queued'] as const) {
    assert.throws(() => s.updateBuild(id, { phase: p }), code('BUILD_CONFLICT'));
  }
  assert.throws(() => s.updateBuild(id, { reason: 'x' }), code('BUILD_CONFLICT'));
  assert.throws(() => s.updateBuild('b-nope', { phase: 'fetching' }), code('NOT_FOUND'));
  s.setStages(id, []);
  assert.deepEqual(s.getBuild(id)?.stages, []);
  assert.throws(() => s.setStages('b-nope', []), code('NOT_FOUND'));
  s.close();
});

test('requestCancel: queued → cancelled at once (a runner then conflicts); active → flag; final → conflict', () => {
  const s = open(dbFile(), 'app');
  const [q, r] = s.createBuilds([nb(), nb()]);
  const c = s.requestCancel(q?.id ?? '', 'cancelled by alice');
  assert.equal(c.phase, 'cancelled');
  assert.equal(c.reason, 'cancelled by alice');
  assert.ok(c.finishedAt);
  assert.equal(c.startedAt, null);
  assert.throws(() => s.updateBuild(q?.id ?? '', { phase: 'fetching' }), code('BUILD_CONFLICT'));
  assert.throws(() => s.requestCancel(q?.id ?? ''), code('BUILD_CONFLICT'));

  s.updateBuild(r?.id ?? '', { phase: 'fetching' });
  const flagged = s.requestCancel(r?.id ?? '', 'cancelled by bob');
  assert.equal(flagged.phase, 'fetching');
  assert.equal(flagged.cancelRequested, true);
  assert.equal(s.requestCancel(r?.id ?? '', 'again').reason, 'cancelled by bob');
  assert.equal(s.updateBuild(r?.id ?? '', { phase: 'building' }).cancelRequested, true, 'flag survives updates');
  assert.equal(s.updateBuild(r?.id ?? '', { phase: 'cancelled' }).reason, 'cancelled by bob');
  assert.throws(() => s.requestCancel('b-nope'), code('NOT_FOUND'));
  s.close();
});

test('enqueue with the SerialLatestOnly policy: pushes while a build waits leave one build of the newest commit', () => {
  const s = open(dbFile(), 'app');
  const policy = (queued: readonly Build[], incoming: NewBuild): readonly string[] =>
    coalesceOnEnqueue(queued, incoming, 'SerialLatestOnly').supersede;
  const [running] = s.createBuilds([nb({ commit: '1'.repeat(40) })]);
  s.updateBuild(running?.id ?? '', { phase: 'fetching' });
  const manual = s.enqueue([nb({ commit: '2'.repeat(40), trigger: { type: 'manual', by: 'alice' } })], policy);
  const first = s.enqueue([nb({ commit: '3'.repeat(40) }), nb({ image: 'web', commit: '3'.repeat(40) })], policy);
  assert.deepEqual(first.superseded, []);
  const second = s.enqueue([nb({ commit: '4'.repeat(40) }), nb({ image: 'web', commit: '4'.repeat(40) })], policy);
  assert.deepEqual(ids(second.superseded), ids(first.builds));
  for (const [i, b] of second.superseded.entries()) {
    assert.equal(b.phase, 'cancelled');
    assert.equal(b.reason, `superseded by ${second.builds[i]?.id}`);
  }
  const third = s.enqueue([nb({ commit: '5'.repeat(40) })], policy);
  assert.deepEqual(ids(third.superseded), [second.builds[0]?.id]);
  assert.deepEqual(
    s.queued().map((b) => [b.image, b.commit?.[0], b.trigger.type]),
    [
      ['app', '2', 'manual'],
      ['web', '4', 'webhook'],
      ['app', '5', 'webhook'],
    ],
  );
  assert.equal(s.getBuild(running?.id ?? '')?.phase, 'fetching', 'running builds are untouched');
  assert.deepEqual(ids(s.coalesce([running?.id ?? '', manual.builds[0]?.id ?? ''], 'x')), [manual.builds[0]?.id]);
  s.close();
});

test('queued() in queue order, active(), countByPhase()', () => {
  const s = open(dbFile(), 'app', 'other');
  const made = s.createBuilds([nb(), nb({ project: 'other' }), nb(), nb(), nb()]);
  s.updateBuild(made[0]?.id ?? '', { phase: 'fetching' });
  s.updateBuild(made[2]?.id ?? '', { phase: 'fetching' });
  s.updateBuild(made[2]?.id ?? '', { phase: 'building' });
  finish(s, made[4]?.id ?? '', 'succeeded');
  assert.deepEqual(ids(s.queued()), [made[1]?.id, made[3]?.id]);
  assert.deepEqual(ids(s.active()), [made[0]?.id, made[2]?.id]);
  assert.deepEqual(s.countByPhase(), {
    queued: 2,
    fetching: 1,
    building: 1,
    pushing: 0,
    succeeded: 1,
    failed: 0,
    cancelled: 0,
    'timed-out': 0,
  });
  s.close();
});

test('failInterrupted: active builds fail with the reason; queued and final ones are untouched', () => {
  const file = dbFile();
  const s = open(file, 'app');
  const made = s.createBuilds([nb(), nb(), nb(), nb({ trigger: { type: 'retry', of: 'b-old' }, attempt: 1 })]);
  s.updateBuild(made[0]?.id ?? '', { phase: 'fetching' });
  s.updateBuild(made[3]?.id ?? '', { phase: 'fetching' });
  s.updateBuild(made[3]?.id ?? '', { phase: 'building' });
  finish(s, made[1]?.id ?? '', 'succeeded');
  s.close(); // the "crash"
  const s2 = Store.open(file);
  const failed = s2.failInterrupted();
  assert.deepEqual(ids(failed), [made[0]?.id, made[3]?.id]);
  for (const b of failed) {
    assert.equal(b.phase, 'failed');
    assert.equal(b.reason, 'interrupted');
    assert.ok(b.finishedAt);
  }
  assert.equal(failed[1]?.trigger.type, 'retry', 'the caller sees it was already a rerun');
  assert.equal(s2.getBuild(made[2]?.id ?? '')?.phase, 'queued');
  assert.equal(s2.getBuild(made[1]?.id ?? '')?.phase, 'succeeded');
  assert.deepEqual(s2.failInterrupted('again'), []);
  raw(file, (db) =>
    assert.deepEqual(db.prepare('SELECT attempt FROM builds ORDER BY seq').pluck().all(), [0, 0, 0, 1]),
  );
  s2.close();
});

test('runner state: kept across a restart for builds a runner re-attaches to, cleared when a build ends', () => {
  const file = dbFile();
  const s = open(file, 'app');
  const [a, b, c] = s.createBuilds([nb(), nb(), nb()]).map((x) => x.id);
  for (const id of [a, b, c]) {
    s.updateBuild(id ?? '', { phase: 'fetching' });
    s.updateBuild(id ?? '', { phase: 'building' });
  }
  s.setRunnerState(a ?? '', '{"pod":"kiln-a","logBase":42}');
  s.setRunnerState(b ?? '', '{"pod":"kiln-b"}');
  assert.throws(() => s.setRunnerState('nope', 'x'), /not found/i);
  s.close(); // the "crash"
  const s2 = Store.open(file);
  assert.equal(s2.runnerState(a ?? ''), '{"pod":"kiln-a","logBase":42}', 'survives the restart');
  // a is re-attached (kept running), b's pod vanished (its own reason), c had no pod (the default reason)
  const failed = s2.failInterrupted('interrupted', {
    keep: new Set([a ?? '']),
    reasons: new Map([[b ?? '', 'the build pod kiln-b vanished']]),
  });
  assert.deepEqual(
    failed.map((x) => [x.id, x.phase, x.reason]),
    [
      [b, 'failed', 'the build pod kiln-b vanished'],
      [c, 'failed', 'interrupted'],
    ],
  );
  assert.equal(s2.getBuild(a ?? '')?.phase, 'building');
  assert.equal(s2.runnerState(b ?? ''), null, 'a failed build keeps no runner state');
  s2.updateBuild(a ?? '', { phase: 'succeeded', digest: 'sha256:' + '1'.repeat(64) });
  assert.equal(s2.runnerState(a ?? ''), null, 'an ended build keeps no runner state');
  s2.close();
});

test('applyRetention: successful and failed (failed + timed-out + cancelled) kept separately, by count and age', () => {
  const s = open(dbFile(), 'app', 'other');
  const now = new Date('2030-06-01T00:00:00Z');
  const daysAgo = (d: number): string => new Date(now.getTime() - d * 86_400_000).toISOString();
  const plan: [Phase, number][] = [
    ['succeeded', 40],
    ['failed', 35],
    ['succeeded', 20],
    ['timed-out', 9],
    ['succeeded', 5],
    ['cancelled', 4],
    ['succeeded', 3],
    ['failed', 2],
    ['succeeded', 1],
  ];
  const made = s.createBuilds(plan.map(() => nb()));
  plan.forEach(([phase, age], i) => finish(s, made[i]?.id ?? '', phase, daysAgo(age)));
  const waiting = s.createBuilds([nb()])[0];
  const running = s.createBuilds([nb()])[0];
  s.updateBuild(running?.id ?? '', { phase: 'fetching' });
  const otherProject = s.createBuilds([nb({ project: 'other' })])[0];
  finish(s, otherProject?.id ?? '', 'succeeded', daysAgo(100));

  // Count only: 2 successful (newest: 1 and 3 days), 3 failed (2, 4, 9 days).
  const deleted = s.applyRetention('app', { successfulCount: 2, failedCount: 3, maxAgeDays: 0 }, now);
  assert.deepEqual(deleted, [made[0]?.id, made[1]?.id, made[2]?.id, made[4]?.id]);
  // Age: 7 days drops the 9-day-old timed-out build even though the failed count allows it.
  assert.deepEqual(s.applyRetention('app', { successfulCount: 2, failedCount: 3, maxAgeDays: 7 }, now), [made[3]?.id]);
  assert.deepEqual(s.applyRetention('app', { successfulCount: 2, failedCount: 3, maxAgeDays: 7 }, now), []);
  const left = ids(s.listBuilds({ project: 'app' }).builds);
  assert.deepEqual(left, [running?.id, waiting?.id, made[8]?.id, made[7]?.id, made[6]?.id, made[5]?.id]);
  assert.deepEqual(s.applyRetention('app', { successfulCount: 0, failedCount: 0, maxAgeDays: 0 }, now).length, 4);
  assert.deepEqual(ids(s.listBuilds({ project: 'app' }).builds), [running?.id, waiting?.id], 'never queued/running');
  assert.equal(s.getBuild(otherProject?.id ?? '')?.phase, 'succeeded', 'other projects untouched');
  const stats = s.buildStats().find((x) => x.project === 'app' && x.phase === 'succeeded');
  assert.equal(stats?.finished, 5, 'counters survive retention');
  s.close();
});

test('buildStats: finished counts and cumulative duration histograms per project and final phase', () => {
  const s = open(dbFile(), 'app');
  const [a, b, c] = s.createBuilds([nb(), nb(), nb()]);
  const start = (id: string, at: string): void => void s.updateBuild(id, { phase: 'fetching', startedAt: at });
  start(a?.id ?? '', '2030-01-01T00:00:00.000Z');
  s.updateBuild(a?.id ?? '', { phase: 'failed', finishedAt: '2030-01-01T00:00:25.000Z' });
  start(b?.id ?? '', '2030-01-01T00:00:00.000Z');
  s.updateBuild(b?.id ?? '', { phase: 'failed', finishedAt: '2030-01-01T05:00:00.000Z' });
  s.requestCancel(c?.id ?? '');
  const stats = s.buildStats();
  assert.deepEqual(
    stats.map((x) => [x.project, x.phase, x.finished, x.durations.count, x.durations.sumSeconds]),
    [
      ['app', 'cancelled', 1, 0, 0],
      ['app', 'failed', 2, 2, 25 + 5 * 3600],
    ],
  );
  assert.deepEqual(stats[1]?.durations.buckets, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1], '5 h is above every bound');
  s.close();
});

test('tokens: create, verify, list, revoke, expire; only the SHA-256 is stored', () => {
  const file = dbFile();
  const s = Store.open(file);
  const { id, token } = s.createToken('ci', 'admin');
  assert.match(token, /^kiln_[A-Za-z0-9_-]{43}$/);
  const t0 = new Date();
  assert.deepEqual(s.verifyToken(token, t0), { id, name: 'ci', role: 'admin' });
  assert.equal(s.verifyToken(token.slice(0, -1) + (token.endsWith('A') ? 'B' : 'A')), undefined);
  assert.equal(s.verifyToken('Bearer ' + token), undefined);
  assert.equal(s.verifyToken(''), undefined);
  assert.equal(s.listTokens()[0]?.lastUsedAt, t0.toISOString());
  s.verifyToken(token, new Date(t0.getTime() + 30_000));
  assert.equal(s.listTokens()[0]?.lastUsedAt, t0.toISOString(), 'at most one write a minute');
  const later = new Date(t0.getTime() + 61_000);
  s.verifyToken(token, later);
  assert.equal(s.listTokens()[0]?.lastUsedAt, later.toISOString());

  const exp = new Date(Date.now() + 3_600_000);
  const v = s.createToken('viewer', 'viewer', exp);
  assert.equal(s.verifyToken(v.token)?.role, 'viewer');
  assert.equal(s.verifyToken(v.token, new Date(exp.getTime() + 1)), undefined, 'expired');
  assert.equal(s.revokeToken(id), true);
  assert.equal(s.verifyToken(token), undefined, 'revoked');
  assert.equal(s.revokeToken('t-nope'), false);
  assert.deepEqual(
    s.listTokens().map((x) => [x.name, x.role, x.revoked, x.expiresAt]),
    [
      ['ci', 'admin', true, null],
      ['viewer', 'viewer', false, exp.toISOString()],
    ],
  );
  assert.ok(!JSON.stringify(s.listTokens()).includes(createHash('sha256').update(token).digest('hex')));

  assert.throws(() => s.createToken('', 'admin'), code('OPTION_INVALID'));
  assert.throws(() => s.createToken('x', 'root' as 'admin'), code('OPTION_INVALID'));
  assert.throws(() => s.createToken('x', 'admin', '2001-01-01'), code('OPTION_INVALID'));
  assert.throws(() => s.createToken('x', 'admin', 'soon'), code('OPTION_INVALID'));

  // The raw bytes on disk (database and WAL) hold the hash, never the token.
  const secret = token.slice('kiln_'.length);
  const onDisk = [file, `${file}-wal`]
    .filter((f) => existsSync(f))
    .map((f) => readFileSync(f).toString('latin1'))
    .join('');
  assert.ok(onDisk.includes(createHash('sha256').update(token).digest('hex')), 'the hash is there');
  assert.ok(!onDisk.includes(secret), 'the token is not');
  raw(file, (db) =>
    assert.deepEqual(
      db.prepare('SELECT hash FROM tokens WHERE id = ?').pluck().get(id),
      createHash('sha256').update(token).digest('hex'),
    ),
  );
  s.close();
});

test('a verified token is served from memory until a token write here or any commit elsewhere; notBefore reuses', () => {
  const file = dbFile();
  const service = Store.open(file);
  const cli = Store.open(file);
  const a = cli.createToken('a', 'viewer');
  const b = cli.createToken('b', 'admin');
  assert.equal(service.verifyToken(a.token)?.name, 'a');
  assert.equal(service.verifyToken(a.token)?.name, 'a', 'again, from memory');
  // revoked by another process (`kiln serve token revoke`): its commit moves data_version, the next check sees it
  assert.equal(cli.revokeToken(a.id), true);
  assert.equal(service.verifyToken(a.token), undefined, 'revoked elsewhere');
  // revoked through this connection (data_version does not move for its own commits)
  const c = service.createToken('c', 'viewer');
  assert.equal(service.verifyToken(c.token)?.name, 'c');
  assert.equal(service.revokeToken(c.id), true);
  assert.equal(service.verifyToken(c.token), undefined, 'revoked here');
  // a request that came in before a commit elsewhere may be answered from what was read after it came in ...
  const arrived = performance.now();
  assert.equal(service.verifyToken(b.token, new Date(), arrived)?.name, 'b');
  const mark = service.changeMark(arrived);
  assert.equal(cli.revokeToken(b.id), true);
  assert.equal(service.verifyToken(b.token, new Date(), arrived)?.name, 'b', 'read after it came in');
  assert.equal(service.changeMark(arrived), mark);
  // ... a later one is not
  const next = performance.now();
  assert.equal(service.verifyToken(b.token, new Date(), next), undefined, 'revoked before the request came in');
  assert.notEqual(service.changeMark(next), mark);
  service.close();
  cli.close();
});

test('two Store instances on one file: a token made by one verifies in the other at once; writes interleave', () => {
  const file = dbFile();
  const service = open(file, 'app');
  const cli = Store.open(file);
  const { token } = cli.createToken('ops', 'viewer');
  assert.equal(service.verifyToken(token)?.name, 'ops');
  const a = service.createBuilds([nb()]);
  const b = cli.createBuilds([nb()]);
  assert.deepEqual([a[0]?.number, b[0]?.number], [1, 2]);
  assert.deepEqual(ids(cli.listBuilds().builds), [b[0]?.id, a[0]?.id]);
  cli.requestCancel(a[0]?.id ?? '');
  assert.throws(() => service.updateBuild(a[0]?.id ?? '', { phase: 'fetching' }), code('BUILD_CONFLICT'));
  cli.close();
  assert.equal(service.listBuilds().builds.length, 2);
  service.close();
});

test('processes opening a fresh file at once: one migrates, the others wait and find it done', async () => {
  const file = dbFile();
  // Each child loads the store, says so, and opens the file when the parent releases them all at once.
  const script =
    `import(${JSON.stringify(pathToFileURL(join(here, 'store.ts')).href)}).then((m) => {` +
    `process.stdout.write('ready\\n'); process.stdin.once('data', () => {` +
    `const s = m.Store.open(process.argv[1]); s.createToken('t', 'admin'); s.close(); process.exit(0); }); })`;
  const children = Array.from({ length: 4 }, () => {
    const child = spawn(process.execPath, ['--import', 'tsx', '-e', script, file], {
      cwd: resolve(here, '../../..'),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const ready = new Promise<void>((res) => child.stdout.once('data', () => res()));
    const done = new Promise<string>((res) => child.on('exit', (c) => res(c === 0 ? 'ok' : err)));
    return { child, ready, done };
  });
  await Promise.all(children.map((c) => c.ready));
  for (const c of children) c.child.stdin.write('go\n');
  assert.deepEqual(await Promise.all(children.map((c) => c.done)), ['ok', 'ok', 'ok', 'ok']);
  const s = Store.open(file);
  assert.equal(s.listTokens().length, 4);
  s.close();
});

test('deliveries: record once per (forge, delivery, project), outcome, list newest first, prune', () => {
  const s = open(dbFile(), 'app', 'other');
  const d = {
    project: 'app',
    forge: 'github',
    deliveryId: 'abc',
    event: 'push',
    ref: 'refs/heads/main',
    outcome: 'received',
  };
  const first = s.recordDelivery(d);
  assert.equal(first?.deliveryId, 'abc');
  assert.equal(s.recordDelivery(d), undefined, 'duplicate');
  assert.ok(s.recordDelivery({ ...d, project: 'other' }), 'same delivery, another project');
  assert.ok(s.recordDelivery({ ...d, forge: 'gitea' }), 'same id, another forge');
  assert.equal(s.hasDelivery('github', 'abc', 'app'), true);
  assert.equal(s.hasDelivery('github', 'zzz', 'app'), false);
  s.setDeliveryOutcome(first?.id ?? 0, 'queued', 'g-1');
  assert.throws(() => s.setDeliveryOutcome(99_999, 'x'), code('NOT_FOUND'));
  assert.throws(() => s.recordDelivery({ ...d, project: 'ghost' }), code('NOT_FOUND'));
  for (let i = 0; i < 5; i++) s.recordDelivery({ ...d, deliveryId: `n${i}` });
  const list = s.listDeliveries('app', 3);
  assert.deepEqual(
    list.map((x) => x.deliveryId),
    ['n4', 'n3', 'n2'],
  );
  const mine = s.listDeliveries('app').find((x) => x.id === first?.id);
  assert.equal(mine?.outcome, 'queued');
  assert.equal(mine?.buildGroup, 'g-1');
  assert.equal(mine?.ref, 'refs/heads/main');
  assert.equal(mine?.commit, null);
  assert.equal(s.pruneDeliveries('app', 2), 5);
  assert.deepEqual(
    s.listDeliveries('app').map((x) => x.deliveryId),
    ['n4', 'n3'],
  );
  assert.equal(s.listDeliveries('other').length, 1);
  s.close();
});

test('indexes: listings, the queue, lookups by id and token hash search an index (no scan, no sort)', () => {
  const file = dbFile();
  const s = open(file, 'app');
  const made = s.createBuilds([nb(), nb()]);
  const cursor = s.listBuilds({ limit: 1 }).next ?? '';
  s.close();
  raw(file, (db) => {
    const plan = (sql: string, params: unknown[] = []): string[] =>
      db
        .prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all(...params)
        .map((r) => (r as { detail: string }).detail);
    const cases: [string, unknown[], RegExp][] = [
      ...(
        [
          [{ project: 'app' }, /USING INDEX builds_project \(project=\?\)/],
          [{ project: 'app', cursor }, /USING INDEX builds_project \(project=\? AND seq<\?\)/],
          [{ phase: 'queued' }, /USING INDEX builds_phase \(phase=\?\)/],
          [{ project: 'app', phase: 'failed' }, /USING INDEX builds_project_phase \(project=\? AND phase=\?\)/],
          [{ project: 'app', image: 'app' }, /USING INDEX builds_project/],
          [{ cursor }, /USING INTEGER PRIMARY KEY \(rowid<\?\)/],
        ] as const
      ).map(([q, re]): [string, unknown[], RegExp] => {
        const { sql, params } = listBuildsSql(q);
        return [sql, params, re];
      }),
      [QUEUED_SQL, [], /USING INDEX builds_phase \(phase=\?\)/],
      ['SELECT * FROM builds WHERE id = ?', [made[0]?.id], /USING INDEX sqlite_autoindex_builds_1 \(id=\?\)/],
      ['SELECT * FROM tokens WHERE hash = ?', ['x'], /USING INDEX sqlite_autoindex_tokens_\d \(hash=\?\)/],
    ];
    for (const [sql, params, re] of cases) {
      const p = plan(sql, params);
      assert.ok(
        p.some((d) => d.startsWith('SEARCH') && re.test(d)),
        `${sql}: ${p.join('; ')}`,
      );
      assert.ok(!p.some((d) => d.startsWith('SCAN') || d.includes('TEMP B-TREE')), `${sql}: ${p.join('; ')}`);
    }
    // The unfiltered first page walks the table backwards in rowid order and stops: no sort either.
    assert.ok(!plan(listBuildsSql({}).sql, listBuildsSql({}).params).some((d) => d.includes('TEMP B-TREE')));
  });
});

test('kill -9 mid-write: the file stays intact and every committed transaction is there, whole', async () => {
  const file = dbFile();
  const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'testdata', 'crash-writer.ts'), file], {
    cwd: resolve(here, '../../..'),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_code, sig) => res(sig)));
  await new Promise<void>((res, rej) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.split('\n').length > 150) res();
    });
    child.on('exit', () => rej(new Error(`writer exited early: ${err}`)));
  });
  child.kill('SIGKILL');
  assert.equal(await exited, 'SIGKILL');
  const committed = out
    .split('\n')
    .slice(0, -1) // only whole lines: the last element is empty or cut
    .filter((l) => /^g-\S+ (b-\S+,){2}b-\S+$/.test(l))
    .map((l) => {
      const [group, list] = l.split(' ');
      return { group: group ?? '', ids: (list ?? '').split(',') };
    });
  assert.ok(committed.length >= 150);

  raw(file, (db) => assert.equal(db.pragma('integrity_check', { simple: true }), 'ok'));
  const s = Store.open(file);
  for (const c of committed) {
    const builds = c.ids.map((id) => s.getBuild(id));
    assert.ok(
      builds.every((b) => b?.group === c.group && b.changedPaths?.length === 400),
      `group ${c.group} complete`,
    );
    assert.equal(builds[0]?.phase, 'fetching', 'its committed transition too');
  }
  // No partial group: every group in the file has its three builds (a transaction is whole or absent).
  raw(file, (db) => {
    const rows = db.prepare('SELECT * FROM builds').all() as BuildRow[];
    const perGroup = new Map<string, number>();
    for (const r of rows) {
      toBuild(r); // every row parses
      perGroup.set(r.group_id, (perGroup.get(r.group_id) ?? 0) + 1);
    }
    assert.ok([...perGroup.values()].every((k) => k === 3));
    assert.ok(rows.length >= committed.length * 3);
    assert.equal(
      db.prepare('SELECT next_build_number - 1 FROM projects').pluck().get(),
      rows.length,
      'numbers and rows agree',
    );
  });
  s.close();
});
