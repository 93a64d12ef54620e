/**
 * The receivers and the trigger API inside the real API server (createApi over the in-memory core, Fastify's
 * inject), with a real store and in-memory git (test/helpers/hook-host.ts): the HTTP answers and what is recorded
 * for every kind of delivery, the raw-body parser kept to `/hooks` (the API's JSON and YAML parsing unchanged), the
 * body limit, duplicates and retries of failed deliveries, redelivery and `project trigger`.
 */
import { after, afterEach, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { KilnError } from '../../errors.js';
import { createApi } from '../api/server.js';
import { FakeCore, project } from '../../../test/helpers/fake-core.js';
import { fakeHookHost, type FakeHookHost } from '../../../test/helpers/hook-host.js';
import type { ImageSpec } from '../model.js';
import { registerHooks } from './index.js';
import type { DeliveryList } from './api.js';
import type { TriggerBody } from './pipeline.js';
import { signStandardWebhook } from './signatures.js';
import { assertSchema } from '../../../test/helpers/openapi.js';

const ADMIN = { authorization: 'Bearer admin-token' };
const VIEWER = { authorization: 'Bearer viewer-token' };
const SECRET = 'hook-secret-4f8a';
const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const C = 'c'.repeat(40);

const coreDir = mkdtempSync(join(tmpdir(), 'kiln-hooks-core-'));
after(() => rmSync(coreDir, { recursive: true, force: true }));

let host: FakeHookHost;
let app: FastifyInstance;
let logs: string[];

const image = (name: string, paths: string[]): ImageSpec => ({ ...(project('x').images[0] as ImageSpec), name, paths });

beforeEach(async () => {
  host = fakeHookHost();
  process.env.KILN_TEST_HOOK_SECRET = SECRET;
  process.env.KILN_TEST_GENERIC_SECRET = `whsec_${Buffer.from('generic-key-0123456789').toString('base64')}`;
  host.store.upsertProject(
    project('shop', {
      branches: ['main', 'release/*'],
      tags: ['v*'],
      images: [image('web', ['web/**']), image('worker', ['worker/**'])],
      webhooks: {
        github: { secretEnv: 'KILN_TEST_HOOK_SECRET' },
        gitlab: { tokenEnv: 'KILN_TEST_HOOK_SECRET' },
        gitea: { secretEnv: 'KILN_TEST_HOOK_SECRET' },
        forgejo: { secretEnv: 'KILN_TEST_HOOK_SECRET' },
        bitbucket: { secretEnv: 'KILN_TEST_HOOK_SECRET' },
        generic: { secretEnv: 'KILN_TEST_GENERIC_SECRET' },
      },
    }),
  );
  host.store.upsertProject(project('quiet'));
  for (const c of [A, B, C]) host.commits.add(c);
  logs = [];
  app = createApi(new FakeCore(coreDir));
  registerHooks(app, host, { bodyLimit: 64 * 1024, log: (l) => logs.push(l) });
  await app.ready();
});

afterEach(async () => {
  await app.close();
  host.dispose();
});

const sig = (body: string): string => `sha256=${createHmac('sha256', SECRET).update(body).digest('hex')}`;

function githubPush(over: Record<string, unknown> = {}): string {
  return JSON.stringify({
    ref: 'refs/heads/main',
    before: A,
    after: B,
    created: false,
    deleted: false,
    forced: false,
    commits: [{ id: B, message: 'work', added: ['web/index.html'], removed: [], modified: [] }],
    head_commit: { id: B, message: 'work' },
    repository: { clone_url: 'http://evil.example/x.git' },
    ...over,
  });
}

async function github(body: string, headers: Record<string, string> = {}, project = 'shop') {
  const res = await app.inject({
    method: 'POST',
    url: `/hooks/github/${project}`,
    headers: {
      'content-type': 'application/json',
      'x-github-event': 'push',
      'x-github-delivery': 'd-1',
      'x-hub-signature-256': sig(body),
      ...headers,
    },
    payload: body,
  });
  return { status: res.statusCode, body: res.json<TriggerBody & { error?: { code: string } }>() };
}

async function deliveries(q = ''): Promise<DeliveryList> {
  const res = await app.inject({ method: 'GET', url: `/api/v1/deliveries${q}`, headers: VIEWER });
  assert.equal(res.statusCode, 200, res.body);
  return res.json<DeliveryList>();
}

test('a signed push builds the images its paths concern, from the configured repository; recorded with its builds', async () => {
  const r = await github(githubPush());
  assert.equal(r.status, 202, JSON.stringify(r.body));
  assert.equal(r.body.builds.length, 1);
  assert.equal(r.body.outcome, 'queued');
  assert.deepEqual(
    host.enqueued.map((e) => e.change),
    [{ ref: 'refs/heads/main', commit: B, changedPaths: ['web/index.html'] }],
  );
  assert.deepEqual(host.enqueued[0]?.trigger, { type: 'webhook', forge: 'github', delivery: 'd-1' });
  assert.deepEqual(host.resolved, [], 'the payload listed the paths: no git before the build (which fetches)');
  const list = await deliveries('?project=shop');
  assert.equal(list.deliveries.length, 1);
  const d = list.deliveries[0];
  assert.equal(d?.id, r.body.delivery);
  assert.equal(d?.forge, 'github');
  assert.equal(d?.deliveryId, 'd-1');
  assert.equal(d?.event, 'push');
  assert.equal(d?.ref, 'refs/heads/main');
  assert.equal(d?.commit, B);
  assert.equal(d?.outcome, 'queued');
  assert.deepEqual(d?.builds, r.body.builds);
  assert.equal(host.store.getBuild(r.body.builds[0] ?? '')?.image, 'web');
  assert.equal(d?.buildGroup, host.store.getBuild(r.body.builds[0] ?? '')?.group);
  assert.doesNotMatch(JSON.stringify(list), /evil\.example/);
  // the answers are what openapi.yaml documents
  assertSchema('TriggerResult', r.body);
  assertSchema('DeliveryList', list);
});

test('replays are acknowledged and ignored; a delivery whose handling failed runs again when the forge retries', async () => {
  const body = githubPush();
  assert.equal((await github(body)).status, 202);
  const again = await github(body);
  assert.equal(again.status, 200);
  assert.equal(again.body.duplicate, true);
  assert.equal(host.enqueued.length, 1, 'nothing new queued');
  // a failing fetch (a forced push: its paths come from git): 502, recorded as error; the same delivery id again
  // runs once the git server is back
  host.gitError = new KilnError('GIT_FETCH_FAILED', 'cannot fetch http://git/x.git: connection refused');
  const forced = githubPush({ forced: true });
  const failed = await github(forced, { 'x-github-delivery': 'd-2' });
  assert.equal(failed.status, 502);
  assert.match(failed.body.outcome, /^error: cannot fetch/);
  host.gitError = undefined;
  const retried = await github(forced, { 'x-github-delivery': 'd-2' });
  assert.equal(retried.status, 202, JSON.stringify(retried.body));
  assert.equal(retried.body.delivery, failed.body.delivery, 'the same record');
  assert.equal((await github(forced, { 'x-github-delivery': 'd-2' })).body.duplicate, true);
  assert.equal(host.enqueued.length, 2);
});

test('bad, missing and malformed signatures: 401, recorded without the body; the genuine delivery still runs', async () => {
  const body = githubPush({ head_commit: { id: B, message: 'TOP-SECRET-BODY' } });
  const wrong = await github(body, { 'x-hub-signature-256': sig(body + ' ') });
  assert.equal(wrong.status, 401);
  assert.equal(wrong.body.error?.code, 'SIGNATURE_INVALID');
  const missing = await github(body, { 'x-hub-signature-256': '' });
  assert.equal(missing.status, 401);
  assert.equal(missing.body.error?.code, 'SIGNATURE_MISSING');
  assert.equal((await github(body, { 'x-hub-signature-256': 'sha1=abc' })).status, 401);
  assert.equal(host.enqueued.length, 0);
  const list = await deliveries('?project=shop');
  assert.deepEqual(
    list.deliveries.map((d) => [d.id, d.outcome]),
    [
      [null, 'rejected: malformed signature'],
      [null, 'rejected: missing signature'],
      [null, 'rejected: bad signature'],
    ],
  );
  assert.doesNotMatch(JSON.stringify(list), /TOP-SECRET-BODY/);
  assertSchema('DeliveryList', list);
  assertSchema('TriggerResult', wrong.body);
  assert.equal((await github(body)).status, 202, 'an unsigned copy did not take the delivery id');
});

test('unknown project or forge, or a project without that forge: one 404, recorded with the name sanitised', async () => {
  const body = githubPush();
  const unknown = await github(body, {}, 'Nope..%2F..%2Fetc');
  assert.equal(unknown.status, 404);
  const noHook = await github(body, {}, 'quiet');
  assert.equal(noHook.status, 404);
  assert.equal(
    unknown.body.error?.code === 'NOT_FOUND' && noHook.body.error?.code === 'NOT_FOUND',
    true,
    'the same answer whether the project exists or not',
  );
  const forge = await app.inject({ method: 'POST', url: '/hooks/svn/shop', payload: '{}' });
  assert.equal(forge.statusCode, 404);
  const all = await deliveries();
  const outcomes = all.deliveries.map((d) => `${d.project} ${d.forge} ${d.outcome}`);
  assert.deepEqual(outcomes, [
    'shop svn rejected: unknown forge',
    'quiet github rejected: no github webhook',
    'nope______etc github rejected: unknown project',
  ]);
});

test('bodies over the limit: 413, recorded; the API keeps its own JSON and YAML parsers', async () => {
  const big = githubPush({ padding: 'x'.repeat(70 * 1024) });
  const r = await github(big);
  assert.equal(r.status, 413);
  const list = await deliveries('?project=shop');
  assert.equal(list.deliveries[0]?.outcome, 'rejected: body too large');
  // the API still parses JSON bodies and refuses other types as before
  const json = await app.inject({
    method: 'POST',
    url: '/api/v1/projects/shop/trigger',
    headers: { ...ADMIN, 'content-type': 'application/json' },
    payload: '{"ref": 1}',
  });
  assert.equal(json.statusCode, 400, json.body);
  assert.equal(json.json<{ error: { code: string } }>().error.code, 'REQUEST_INVALID');
  const plain = await app.inject({
    method: 'POST',
    url: '/api/v1/projects/shop/trigger',
    headers: { ...ADMIN, 'content-type': 'text/plain' },
    payload: 'ref=main',
  });
  assert.equal(plain.statusCode, 415);
});

test('malformed JSON: 400 recorded; a form-encoded GitHub payload is read; ping and create build nothing', async () => {
  const bad = await github('{"ref": ');
  assert.equal(bad.status, 400);
  assert.equal(bad.body.outcome, 'rejected: malformed JSON');
  const json = githubPush();
  const form = `payload=${encodeURIComponent(json)}`;
  const formRes = await github(form, {
    'content-type': 'application/x-www-form-urlencoded',
    'x-github-delivery': 'f-1',
  });
  assert.equal(formRes.status, 202, JSON.stringify(formRes.body));
  for (const event of ['ping', 'create']) {
    const body = JSON.stringify({ zen: 'Design for failure.', ref: 'x', ref_type: 'tag' });
    const r = await github(body, { 'x-github-event': event, 'x-github-delivery': `e-${event}` });
    assert.equal(r.status, 200);
    assert.equal(r.body.outcome, `ignored: ${event}`);
  }
  assert.equal(host.enqueued.length, 1);
});

test('what a push builds: branch and tag filters, skip markers, deleted refs, path filters, unknown paths', async () => {
  const cases: [Record<string, unknown>, number, string][] = [
    [{ ref: 'refs/heads/feature/x' }, 200, 'ignored: branch filter'],
    [{ ref: 'refs/tags/nightly' }, 200, 'ignored: tag filter'],
    [{ head_commit: { id: B, message: 'docs [skip ci]' } }, 200, 'ignored: skip marker'],
    [{ head_commit: { id: B, message: 'docs\n\n[kiln skip]' } }, 200, 'ignored: skip marker'],
    [{ deleted: true, after: '0'.repeat(40), head_commit: null }, 200, 'ignored: deleted ref'],
    [
      { commits: [{ id: B, message: 'm', added: ['README.md'], removed: [], modified: [] }] },
      200,
      'ignored: no image concerned',
    ],
    [{ ref: 'refs/tags/v1.2.3', created: true, before: '0'.repeat(40), commits: [] }, 202, 'queued'],
  ];
  let n = 0;
  for (const [over, status, outcome] of cases) {
    const r = await github(githubPush(over), { 'x-github-delivery': `p-${++n}` });
    assert.equal(r.status, status, `${JSON.stringify(over)}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.outcome, outcome);
    if (status === 200) assert.equal(r.body.reason, outcome.slice('ignored: '.length));
  }
  // the tag push: new ref, paths unknown → both images
  const tagBuilds = host.enqueued.at(-1);
  assert.deepEqual(tagBuilds?.change, { ref: 'refs/tags/v1.2.3', commit: B });
  // nothing was fetched: the pushes were decided by the payload (filters, skip, paths) or are new refs
  assert.equal(host.resolved.length, 0);
  // truncated list: the commit is fetched (by id, in the project's mirror) and the mirror's diff decides
  host.diffs.set(`${A}..${C}`, ['worker/main.go']);
  const many = Array.from({ length: 20 }, () => ({ id: C, message: 'm', added: ['web/x'], removed: [], modified: [] }));
  const r = await github(githubPush({ after: C, head_commit: { id: C, message: 'm' }, commits: many }), {
    'x-github-delivery': 'p-trunc',
  });
  assert.equal(r.status, 202);
  assert.deepEqual(host.enqueued.at(-1)?.change.changedPaths, ['worker/main.go']);
  assert.equal(host.store.getBuild(r.body.builds[0] ?? '')?.image, 'worker');
  assert.deepEqual(host.resolved, [{ commit: C }]);
  // a fetched commit the repository does not have: 422, nothing built
  const ghost = 'd'.repeat(40);
  const g = await github(githubPush({ after: ghost, head_commit: { id: ghost, message: 'm' }, commits: many }), {
    'x-github-delivery': 'p-ghost',
  });
  assert.equal(g.status, 422);
  assert.equal(g.body.outcome.startsWith('error: '), true);
});

test('GitLab, Gitea, Forgejo, Bitbucket and generic: each signature scheme and delivery header', async () => {
  const gitlab = JSON.stringify({
    object_kind: 'push',
    ref: 'refs/heads/main',
    before: A,
    after: B,
    checkout_sha: B,
    commits: [{ id: B, message: 'm', added: [], modified: ['worker/x'], removed: [] }],
    total_commits_count: 1,
  });
  const post = (forge: string, body: string, headers: Record<string, string>) =>
    app.inject({
      method: 'POST',
      url: `/hooks/${forge}/shop`,
      headers: { 'content-type': 'application/json', ...headers },
      payload: body,
    });
  const gl = await post('gitlab', gitlab, {
    'x-gitlab-event': 'Push Hook',
    'x-gitlab-token': SECRET,
    'idempotency-key': 'gl-1',
  });
  assert.equal(gl.statusCode, 202, gl.body);
  const glBad = await post('gitlab', gitlab, {
    'x-gitlab-event': 'Push Hook',
    'x-gitlab-token': 'guess',
    'idempotency-key': 'gl-2',
  });
  assert.equal(glBad.statusCode, 401);
  const uuid = await post('gitlab', gitlab, {
    'x-gitlab-event': 'Push Hook',
    'x-gitlab-token': SECRET,
    'x-gitlab-event-uuid': 'gl-1',
  });
  assert.equal(uuid.json<TriggerBody>().duplicate, true, 'X-Gitlab-Event-UUID when there is no Idempotency-Key');
  const hexSig = createHmac('sha256', SECRET).update(gitlab).digest('hex');
  // Gitea/Forgejo reuse GitHub's payload shape
  const gh = githubPush();
  const giteaSig = createHmac('sha256', SECRET).update(gh).digest('hex');
  const gitea = await post('gitea', gh, {
    'x-gitea-event': 'push',
    'x-gitea-delivery': 'gt-1',
    'x-gitea-signature': giteaSig,
  });
  assert.equal(gitea.statusCode, 202, gitea.body);
  const forgejo = await post('forgejo', gh, {
    'x-forgejo-event': 'push',
    'x-forgejo-delivery': 'fj-1',
    'x-forgejo-signature': giteaSig,
  });
  assert.equal(forgejo.statusCode, 202, forgejo.body);
  const forgejoWrongHeader = await post('forgejo', gh, {
    'x-forgejo-event': 'push',
    'x-forgejo-delivery': 'fj-2',
    'x-gitea-signature': giteaSig,
  });
  assert.equal(forgejoWrongHeader.statusCode, 401);
  assert.equal(
    (await post('gitea', gitlab, { 'x-gitea-event': 'push', 'x-gitea-delivery': 'gt-2', 'x-gitea-signature': 'zz' }))
      .statusCode,
    401,
  );
  const bb = JSON.stringify({
    push: {
      changes: [
        {
          new: { type: 'branch', name: 'main', target: { hash: C, message: 'bb' } },
          old: { type: 'branch', name: 'main', target: { hash: A } },
        },
      ],
    },
  });
  host.diffs.set(`${A}..${C}`, ['web/a', 'worker/b']);
  const bbSig = `sha256=${createHmac('sha256', SECRET).update(bb).digest('hex')}`;
  const bitbucket = await post('bitbucket', bb, {
    'x-event-key': 'repo:push',
    'x-request-uuid': 'bb-1',
    'x-hub-signature': bbSig,
  });
  assert.equal(bitbucket.statusCode, 202, bitbucket.body);
  assert.equal(bitbucket.json<TriggerBody>().builds.length, 2);
  assert.equal(
    (await post('bitbucket', bb, { 'x-event-key': 'repo:push', 'x-request-uuid': 'bb-2', 'x-hub-signature': hexSig }))
      .statusCode,
    401,
  );
  // generic: Standard Webhooks
  const secret = process.env.KILN_TEST_GENERIC_SECRET as string;
  const gen = JSON.stringify({
    type: 'push',
    data: { ref: 'refs/heads/release/2', before: A, after: B, paths: ['web/x'] },
  });
  const ts = Math.floor(Date.now() / 1000);
  const sw = (id: string, t: number, body = gen) => ({
    'webhook-id': id,
    'webhook-timestamp': String(t),
    'webhook-signature': signStandardWebhook(secret, id, t, body),
  });
  const generic = await post('generic', gen, sw('msg_1', ts));
  assert.equal(generic.statusCode, 202, generic.body);
  assert.equal((await post('generic', gen, sw('msg_1', ts))).json<TriggerBody>().duplicate, true);
  const stale = await post('generic', gen, sw('msg_2', ts - 600));
  assert.equal(stale.statusCode, 401);
  const list = await deliveries('?project=shop');
  assert.ok(list.deliveries.some((d) => d.outcome === 'rejected: stale timestamp'));
  assert.deepEqual(
    list.deliveries
      .filter((d) => d.id !== null)
      .map((d) => `${d.forge}:${d.deliveryId}`)
      .sort(),
    ['bitbucket:bb-1', 'forgejo:fj-1', 'generic:msg_1', 'gitea:gt-1', 'gitlab:gl-1'],
  );
});

test('redeliver (admin) re-runs a stored delivery as a new record; viewers cannot; pings have nothing to re-run', async () => {
  const first = await github(githubPush());
  assert.equal(first.status, 202);
  const id = first.body.delivery as number;
  const viewer = await app.inject({ method: 'POST', url: `/api/v1/deliveries/${id}/redeliver`, headers: VIEWER });
  assert.equal(viewer.statusCode, 403);
  const res = await app.inject({ method: 'POST', url: `/api/v1/deliveries/${id}/redeliver`, headers: ADMIN });
  assert.equal(res.statusCode, 202, res.body);
  const again = res.json<TriggerBody>();
  assert.notEqual(again.delivery, id);
  assert.equal(again.builds.length, 1);
  assert.match(String(host.enqueued.at(-1)?.trigger.delivery), /^d-1\/redelivery-[0-9a-f]{8}$/);
  assert.equal(host.enqueued.at(-1)?.trigger.by, 'alice');
  assert.deepEqual(
    host.enqueued.at(-1)?.change.changedPaths,
    ['web/index.html'],
    'the stored paths, no payload needed',
  );
  const ping = await github('{"zen":"x"}', { 'x-github-event': 'ping', 'x-github-delivery': 'ping-1' });
  const nothing = await app.inject({
    method: 'POST',
    url: `/api/v1/deliveries/${ping.body.delivery}/redeliver`,
    headers: ADMIN,
  });
  assert.equal(nothing.statusCode, 409);
  assert.equal(
    (await app.inject({ method: 'POST', url: '/api/v1/deliveries/99999/redeliver', headers: ADMIN })).statusCode,
    404,
  );
  assert.equal(
    (await app.inject({ method: 'POST', url: '/api/v1/deliveries/abc/redeliver', headers: ADMIN })).statusCode,
    400,
  );
});

test('project trigger: resolves the ref now, filters apply, every image builds, recorded as forge kiln', async () => {
  host.refs.set('refs/heads/main', C);
  host.refs.set('refs/heads/feature/x', A);
  host.messages.set(C, 'wip [skip ci]');
  const trig = (ref: string) =>
    app.inject({ method: 'POST', url: '/api/v1/projects/shop/trigger', headers: ADMIN, payload: { ref } });
  const r = await trig('main');
  assert.equal(r.statusCode, 202, r.body);
  assert.equal(r.json<TriggerBody>().builds.length, 2, 'paths unknown: both images; a skip marker does not stop it');
  const t = host.enqueued.at(-1)?.trigger;
  assert.equal(t?.type, 'webhook');
  assert.equal(t?.forge, 'kiln');
  assert.equal(t?.by, 'alice');
  const filtered = await trig('feature/x');
  assert.equal(filtered.statusCode, 200);
  assert.equal(filtered.json<TriggerBody>().reason, 'branch filter');
  assert.equal((await trig('nope')).statusCode, 400);
  assert.equal(
    (
      await app.inject({
        method: 'POST',
        url: '/api/v1/projects/ghost/trigger',
        headers: ADMIN,
        payload: { ref: 'main' },
      })
    ).statusCode,
    404,
  );
  assert.equal(
    (
      await app.inject({
        method: 'POST',
        url: '/api/v1/projects/shop/trigger',
        headers: VIEWER,
        payload: { ref: 'main' },
      })
    ).statusCode,
    403,
  );
  const list = await deliveries('?project=shop&limit=1');
  assert.equal(list.deliveries.length, 1);
  assert.equal(list.deliveries[0]?.forge, 'kiln');
  assert.equal(list.deliveries[0]?.event, 'trigger');
});

test('while the service stops, receivers answer 503 and record nothing', async () => {
  host.close();
  await new Promise((r) => setImmediate(r));
  const r = await github(githubPush());
  assert.equal(r.status, 503);
  assert.equal((await deliveries()).deliveries.length, 0);
  assert.equal(host.enqueued.length, 0);
});
