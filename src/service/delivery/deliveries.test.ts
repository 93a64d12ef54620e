/**
 * Deliveries over a real service database (the service's Store writes projects and builds, build events are
 * emitted as BuildService emits them) and real local HTTP receivers: signed CloudEvents, retries and their
 * records, commit statuses in order (a retried `pending` never lands after `success`), durability across a stop
 * and a new start, builds that ended while nobody listened, missing secrets, and redeploys through an in-memory
 * Redeployer. Retry delays are shortened (`retryBaseMs`); the end-to-end test runs them at their real pace.
 */
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Store } from '../store/store.js';
import type { Build, Project } from '../model.js';
import type { ServiceEvents } from '../service.js';
import { project as makeProject } from '../../../test/helpers/fake-core.js';
import { startReceiver, type HttpReceiver } from '../../../test/helpers/http-receiver.js';
import { verifySignature, type BuildCloudEvent } from './cloudevents.js';
import { Deliveries, type DeliveriesOptions } from './deliveries.js';
import type { JsonPatchOp, Redeployer, Workload, WorkloadKind } from './redeploy.js';
import type { NotificationView } from './store.js';

const SECRET = 'hook-secret-9f8e7d';
const TOKEN = 'ghp_token-5a4b3c';
const SHA = 'a1b2c3d4e5f60718293a4b5c6d7e8f9012345678';
const DIGEST = 'sha256:' + 'd'.repeat(64);
const ENV = { HOOK_SECRET: SECRET, GH_TOKEN: TOKEN };

let dir: string;
let rx: HttpReceiver;
let store: Store;
let events: EventEmitter<ServiceEvents>;
const started: Deliveries[] = [];

before(async () => {
  rx = await startReceiver();
});
after(async () => {
  await rx.close();
});

async function fresh(): Promise<void> {
  dir = await mkdtemp(join(tmpdir(), 'kiln-deliveries-'));
  store = Store.open(join(dir, 'kiln.db'));
  events = new EventEmitter<ServiceEvents>();
}

afterEach(async () => {
  for (const d of started.splice(0)) await d.stop(0);
  store?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function start(over: Partial<DeliveriesOptions> = {}): Deliveries {
  const d = Deliveries.start(
    { events, store, getBuild: (id) => store.getBuild(id) },
    { database: join(dir, 'kiln.db'), log: () => undefined, retryBaseMs: 20, env: ENV, ...over },
  );
  started.push(d);
  return d;
}

function addProject(name: string, over: Partial<Project>): Project {
  const p = makeProject(name, { registry: `127.0.0.1:5000/${name}`, ...over });
  store.upsertProject(p);
  return p;
}

function queue(projectName: string): Build {
  const { builds } = store.enqueue([
    { project: projectName, image: 'app', ref: 'refs/heads/main', commit: SHA, trigger: { type: 'manual', by: 't' } },
  ]);
  events.emit('build', builds[0]!);
  return builds[0]!;
}

/** Moves a build through its phases as the service does, announcing each committed change. */
function move(id: string, ...patches: Parameters<Store['updateBuild']>[1][]): Build {
  let b: Build | undefined;
  for (const patch of patches) {
    b = store.updateBuild(id, patch);
    events.emit('build', b);
  }
  return b!;
}

function succeed(id: string): Build {
  return move(
    id,
    { phase: 'fetching' },
    { phase: 'building', tags: ['127.0.0.1:5000/x/app:main'] },
    { phase: 'succeeded', digest: DIGEST },
  );
}

async function until(d: Deliveries, id: string, pred: (n: NotificationView[]) => boolean, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const list = d.listNotifications(id);
    if (pred(list)) return list;
    if (Date.now() > end) throw new Error(`notifications of ${id}: ${JSON.stringify(list, null, 1)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const settled = (n: NotificationView[]): boolean => n.length > 0 && n.every((x) => x.state !== 'pending');

/** Every byte the database files hold (main file and WAL). */
async function databaseBytes(): Promise<string> {
  const files = (await readdir(dir)).filter((f) => f.startsWith('kiln.db'));
  return (await Promise.all(files.map((f) => readFile(join(dir, f), 'latin1')))).join('');
}

test('a succeeded build sends one signed CloudEvent; earlier phases send none', async () => {
  await fresh();
  addProject('ok', {
    notifications: [{ url: `${rx.url}/ok`, secretEnv: 'HOOK_SECRET', events: ['succeeded', 'failed'], maxAttempts: 3 }],
  });
  const d = start({ publicUrl: 'https://kiln.example.com' });
  const b = queue('ok');
  move(b.id, { phase: 'fetching' }, { phase: 'building', tags: ['127.0.0.1:5000/ok/app:main'] });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(rx.to('/ok').length, 0, 'nothing before the final phase');
  move(b.id, { phase: 'succeeded', digest: DIGEST });
  const [req] = await rx.waitFor('/ok', 1);
  const list = await until(d, b.id, settled);
  assert.equal(req!.method, 'POST');
  assert.equal(req!.headers['content-type'], 'application/cloudevents+json; charset=utf-8');
  assert.ok(verifySignature(SECRET, req!.body, req!.headers['x-kiln-signature-256'] as string), 'signed');
  const e = JSON.parse(req!.body.toString()) as BuildCloudEvent;
  assert.equal(e.specversion, '1.0');
  assert.equal(e.type, 'dev.kiln.build.succeeded');
  assert.equal(e.source, 'kiln/ok');
  assert.equal(e.id, req!.headers['x-kiln-delivery']);
  assert.equal(e.data.digest, DIGEST);
  assert.equal(e.data.reference, `127.0.0.1:5000/ok/app@${DIGEST}`);
  assert.equal(e.data.logUrl, `https://kiln.example.com/api/v1/builds/${b.id}/log`);
  assert.equal(list.length, 1);
  assert.equal(list[0]!.id, e.id);
  assert.deepEqual(
    [list[0]!.kind, list[0]!.state, list[0]!.target, list[0]!.url, list[0]!.attempts.map((a) => a.status)],
    ['webhook', 'delivered', 'notifications[0]', `${rx.url}/ok`, [200]],
  );
  events.emit('build', store.getBuild(b.id)!); // the same change announced again: queued once
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(rx.to('/ok').length, 1);
  assert.ok(!(await databaseBytes()).includes(SECRET), 'the secret is never stored');
});

test('500, 500, 200: three attempts, all recorded; 400 is not retried; Retry-After is honoured', async () => {
  await fresh();
  rx.script('/flaky', [500, 500, 200]);
  rx.script('/reject', [400]);
  rx.script('/later', [{ status: 503, headers: { 'retry-after': '1' } }, 200]);
  addProject('retry', {
    notifications: [
      { url: `${rx.url}/flaky`, events: ['failed'], maxAttempts: 5 },
      { url: `${rx.url}/reject`, events: ['failed'], maxAttempts: 5 },
      { url: `${rx.url}/later`, events: ['failed'], maxAttempts: 5 },
    ],
  });
  const d = start();
  const b = queue('retry');
  move(b.id, { phase: 'fetching' }, { phase: 'failed', reason: 'Dockerfile:2: RUN exited 3' });
  const list = await until(d, b.id, (n) => n.length === 3 && settled(n));
  assert.deepEqual(
    list.map((n) => [n.target, n.state, n.attempts.map((a) => a.status)]),
    [
      ['notifications[0]', 'delivered', [500, 500, 200]],
      ['notifications[1]', 'failed', [400]],
      ['notifications[2]', 'delivered', [503, 200]],
    ],
  );
  assert.deepEqual(
    list[0]!.attempts.map((a) => a.attempt),
    [1, 2, 3],
  );
  assert.equal(list[0]!.attempts[0]!.error, 'HTTP 500');
  const flaky = rx.to('/flaky');
  assert.equal(new Set(flaky.map((r) => r.body.toString())).size, 1, 'every retry sends the same bytes');
  const later = rx.to('/later');
  assert.ok(later[1]!.at - later[0]!.at >= 900, `Retry-After: 1 waited ${later[1]!.at - later[0]!.at} ms`);
  assert.equal(rx.to('/reject').length, 1);
});

test('attempts are capped by maxAttempts', async () => {
  await fresh();
  rx.script('/down', [502]);
  addProject('capped', { notifications: [{ url: `${rx.url}/down`, events: ['succeeded'], maxAttempts: 3 }] });
  const d = start();
  const b = queue('capped');
  succeed(b.id);
  const [n] = await until(d, b.id, settled);
  assert.equal(n!.state, 'failed');
  assert.deepEqual(
    n!.attempts.map((a) => a.status),
    [502, 502, 502],
  );
});

test('commit statuses arrive in order with the token; a pending still retrying is replaced by success', async () => {
  await fresh();
  rx.script(`/repos/acme/shop/statuses/${SHA}`, [{ status: 500, delayMs: 300 }, 201]);
  addProject('gh', { commitStatus: { github: { repo: 'acme/shop', apiUrl: rx.url, tokenEnv: 'GH_TOKEN' } } });
  const d = start();
  const b = queue('gh');
  await rx.waitFor(`/repos/acme/shop/statuses/${SHA}`, 1); // pending (queued), answered 500 after 300 ms
  succeed(b.id);
  const list = await until(d, b.id, (n) => settled(n) && n.some((x) => x.event === 'success'));
  const sent = rx.to(`/repos/acme/shop/statuses/${SHA}`).map((r) => JSON.parse(r.body.toString()) as { state: string });
  assert.equal(sent.at(-1)!.state, 'success', JSON.stringify(sent));
  assert.equal(sent.filter((s) => s.state === 'success').length, 1);
  assert.equal(sent[0]!.state, 'pending');
  assert.equal(list[0]!.state, 'superseded', 'the failed pending is not retried after newer states');
  for (const r of rx.to(`/repos/acme/shop/statuses/${SHA}`)) assert.equal(r.headers.authorization, `Bearer ${TOKEN}`);
  const bytes = await databaseBytes();
  assert.ok(!bytes.includes(TOKEN), 'the token is never stored');
  assert.ok(!JSON.stringify(list).includes(TOKEN));
});

test('pending retries survive a stop: the next start delivers them', async () => {
  await fresh();
  rx.script('/durable', [{ status: 503, headers: { 'retry-after': '1' } }, 200]);
  addProject('dur', {
    notifications: [{ url: `${rx.url}/durable`, secretEnv: 'HOOK_SECRET', events: ['succeeded'], maxAttempts: 4 }],
  });
  const d1 = start();
  const b = queue('dur');
  succeed(b.id);
  await until(d1, b.id, (n) => n[0]?.attempts.length === 1);
  await d1.stop(0);
  started.splice(started.indexOf(d1), 1);
  assert.equal(rx.to('/durable').length, 1);
  const d2 = start();
  const [n] = await until(d2, b.id, settled);
  assert.equal(n!.state, 'delivered');
  assert.deepEqual(
    n!.attempts.map((a) => a.status),
    [503, 200],
  );
  const bodies = rx.to('/durable').map((r) => r.body.toString());
  assert.equal(bodies[0], bodies[1], 'the same event (same id) after the restart');
  assert.ok(
    verifySignature(
      SECRET,
      rx.to('/durable')[1]!.body,
      rx.to('/durable')[1]!.headers['x-kiln-signature-256'] as string,
    ),
  );
});

test('a build that ended while nobody listened (interrupted by a crash) still reports', async () => {
  await fresh();
  const path = '/api/v4/projects/7/statuses/' + SHA;
  addProject('gl', {
    commitStatus: { gitlab: { apiUrl: `${rx.url}/api/v4`, projectId: 7, tokenEnv: 'GH_TOKEN' } },
    notifications: [{ url: `${rx.url}/gl-hook`, events: ['failed'], maxAttempts: 2 }],
  });
  const d1 = start();
  const b = queue('gl');
  move(b.id, { phase: 'fetching' }, { phase: 'building' });
  await until(d1, b.id, (n) => settled(n) && n.some((x) => x.event === 'running'));
  await d1.stop(0);
  started.splice(started.indexOf(d1), 1);
  store.failInterrupted('interrupted'); // what the next start of the service does, before anyone listens
  const d2 = start();
  await until(d2, b.id, (n) => settled(n) && n.some((x) => x.event === 'failed'));
  const states = rx.to(path).map((r) => (JSON.parse(r.body.toString()) as { state: string }).state);
  assert.equal(states.at(-1), 'failed');
  const [hook] = await rx.waitFor('/gl-hook', 1);
  assert.equal((JSON.parse(hook!.body.toString()) as BuildCloudEvent).data.reason, 'interrupted');
});

test('a secret that cannot be read fails at once, naming the variable', async () => {
  await fresh();
  addProject('nosecret', {
    notifications: [{ url: `${rx.url}/nosecret`, secretEnv: 'UNSET_VAR', events: ['succeeded'], maxAttempts: 5 }],
  });
  const lines: string[] = [];
  const d = start({ log: (l) => lines.push(l) });
  const b = queue('nosecret');
  succeed(b.id);
  const [n] = await until(d, b.id, settled);
  assert.equal(n!.state, 'failed');
  assert.equal(n!.attempts.length, 1);
  assert.match(n!.attempts[0]!.error!, /UNSET_VAR is not set/);
  assert.equal(rx.to('/nosecret').length, 0, 'nothing unsigned is sent');
  assert.match(lines.join('\n'), /gave up after 1 attempt/);
});

test('redeploy on success through the Redeployer port, retried when a patch is refused', async () => {
  await fresh();
  addProject('shop', {});
  const workloads: Workload[] = [
    {
      kind: 'Deployment',
      metadata: {
        name: 'web',
        namespace: 'prod',
        annotations: { 'kiln.dev/image-triggers': '[{"image": "shop/app", "tag": "main", "container": "app"}]' },
      },
      spec: { template: { spec: { containers: [{ name: 'app', image: '127.0.0.1:5000/shop/app:main' }] } } },
    },
  ];
  const patches: { kind: WorkloadKind; name: string; patch: JsonPatchOp[] }[] = [];
  let refuse = 1;
  const k8s: Redeployer = {
    list: async () => structuredClone(workloads),
    patch: async (kind, _ns, name, patch) => {
      if (refuse-- > 0) throw new Error('Operation cannot be fulfilled: 409 conflict');
      patches.push({ kind, name, patch });
    },
  };
  const d = start({ redeployer: k8s });
  const b = queue('shop');
  move(
    b.id,
    { phase: 'fetching' },
    { phase: 'building', tags: ['127.0.0.1:5000/shop/app:main'] },
    { phase: 'succeeded', digest: DIGEST },
  );
  const [n] = await until(d, b.id, settled);
  assert.equal(n!.kind, 'redeploy');
  assert.equal(n!.state, 'delivered');
  assert.match(n!.attempts[0]!.error!, /409 conflict/);
  assert.equal(n!.attempts[1]!.detail, 'patched Deployment prod/web');
  assert.equal(patches.length, 1);
  assert.deepEqual(patches[0]!.patch.at(-1), {
    op: 'replace',
    path: '/spec/template/spec/containers/0/image',
    value: `127.0.0.1:5000/shop/app@${DIGEST}`,
  });
});

test('builds of projects without delivery settings, and unknown projects, queue nothing', async () => {
  await fresh();
  addProject('plain', {});
  const d = start();
  const b = queue('plain');
  succeed(b.id);
  events.emit('build', { ...b, project: 'gone', phase: 'failed' });
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(d.listNotifications(b.id), []);
});
