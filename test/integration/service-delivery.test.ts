/**
 * Delivery after a build, end to end: `kiln serve` as a process (real builds in user namespaces, a git
 * `http-backend` server, Debian's `docker-registry`) sending to real local HTTP receivers that record every request:
 * signed CloudEvents for a successful and a failing build, retries (500, 500, 200 → three recorded attempts; 400 →
 * one), GitHub and GitLab commit statuses through their statuses API paths with the token in `Authorization`,
 * secrets in no log, API answer, record or database file, and a pending retry that survives `kill -9`.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { startReceiver, type HttpReceiver, type ReceivedRequest } from '../helpers/http-receiver.js';
import { cleanup, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import { assertSchema } from '../helpers/openapi.js';
import type { Build } from '../../src/service/model.js';
import type { NotificationView } from '../../src/service/delivery/store.js';
import { verifySignature, type BuildCloudEvent } from '../../src/service/delivery/cloudevents.js';

const GIT_PASSWORD = 'git-pw-Dl7x2';
const HOOK_SECRET = 'hook-secret-Wq83nB';
const GH_TOKEN = 'ghp_Tok3nGitHub77';
const GL_TOKEN = 'glpat-Tok3nGitLab88';
const PUBLIC = 'https://kiln.example.com';
const SECRETS = [GIT_PASSWORD, HOOK_SECRET, GH_TOKEN, GL_TOKEN];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('kiln serve delivery (CloudEvents, retries, commit statuses)', () => {
  let reg: TestRegistry;
  let git: GitServer;
  let rx: HttpReceiver;
  let home: string;
  let svc: ServiceProcess;
  let config: string;
  const env = {
    TEST_GIT_PASSWORD: GIT_PASSWORD,
    TEST_HOOK_SECRET: HOOK_SECRET,
    TEST_GH_TOKEN: GH_TOKEN,
    TEST_GL_TOKEN: GL_TOKEN,
  };

  const project = (name: string, extra: string, images: string): string =>
    `  - name: ${name}
    repository: ${git.repoUrl(name)}
    gitCredentials: {username: ci, passwordEnv: TEST_GIT_PASSWORD}
    registry: ${reg.host}/${name}
    insecureRegistry: true
${extra}    images:
${images}`;

  before(async () => {
    reg = await startRegistry();
    git = await startGitServer({ username: 'ci', password: GIT_PASSWORD });
    rx = await startReceiver();
    home = await makeKilnHome();
    const ok = 'FROM localhost/busybox:latest\nRUN echo built > /built\n';
    const bad = 'FROM localhost/busybox:latest\nRUN echo failing && exit 3\n';
    await git.createRepo('notify', { 'good/Dockerfile': ok, 'bad/Dockerfile': bad });
    await git.createRepo('retry', { Dockerfile: ok });
    await git.createRepo('gh', { Dockerfile: ok });
    await git.createRepo('gl', { Dockerfile: bad });
    await git.createRepo('durable', { Dockerfile: ok });
    const app = '      - {name: app, tags: ["{{branch}}"]}\n';
    config = `concurrency: 2
insecureRegistries: ["${reg.host}"]
publicUrl: ${PUBLIC}/
projects:
${project(
  'notify',
  `    notifications:
      - {url: "${rx.url}/events", secretEnv: TEST_HOOK_SECRET}
`,
  `      - {name: good, context: good, tags: ["{{branch}}"]}
      - {name: bad, context: bad, tags: ["{{branch}}"]}
`,
)}
${project(
  'retry',
  `    notifications:
      - {url: "${rx.url}/flaky", events: [succeeded]}
      - {url: "${rx.url}/reject?key=v4lue", events: [succeeded]}
`,
  app,
)}
${project('gh', `    commitStatus: {github: {repo: acme/gh, apiUrl: "${rx.url}/github", tokenEnv: TEST_GH_TOKEN}}\n`, app)}
${project(
  'gl',
  `    commitStatus: {gitlab: {apiUrl: "${rx.url}/gitlab/api/v4", projectId: 42, tokenEnv: TEST_GL_TOKEN}}\n`,
  app,
)}
${project(
  'durable',
  `    notifications:
      - {url: "${rx.url}/durable", secretEnv: TEST_HOOK_SECRET, events: [succeeded]}
`,
  app,
)}
`;
    svc = await startService({ config, kilnHome: home, env });
  });

  after(async () => {
    await svc?.stop('SIGTERM');
    await rx?.close();
    await git?.stop();
    await reg?.stop();
    if (svc) await cleanup(svc.dataDir);
    if (home) await cleanup(home);
  });

  async function buildAll(name: string): Promise<Build[]> {
    const r = await svc.api<{ builds: Build[] }>('POST', `/api/v1/projects/${name}/builds`, { ref: 'main' });
    assert.equal(r.status, 201, r.text);
    return Promise.all(r.body.builds.map((b) => svc.waitBuild(b.id)));
  }

  /** The build's notifications (viewer token), once none is pending; checked against openapi.yaml. */
  async function notifications(
    id: string,
    done: number | ((list: NotificationView[]) => boolean),
    ms = 60_000,
  ): Promise<NotificationView[]> {
    const enough = typeof done === 'number' ? (l: NotificationView[]) => l.length === done : done;
    const until = Date.now() + ms;
    let last: unknown;
    while (Date.now() < until) {
      const r = await svc.api<{ notifications: NotificationView[] }>(
        'GET',
        `/api/v1/builds/${id}/notifications`,
        undefined,
        svc.viewer,
      );
      assert.equal(r.status, 200, r.text);
      assertSchema('NotificationList', r.body);
      last = r.body;
      const list = r.body.notifications;
      if (enough(list) && list.every((x) => x.state !== 'pending')) return list;
      await sleep(100);
    }
    throw new Error(`notifications of ${id}: ${JSON.stringify(last)}`);
  }

  const event = (r: ReceivedRequest): BuildCloudEvent => JSON.parse(r.body.toString()) as BuildCloudEvent;

  test('a successful and a failing build each send one signed CloudEvent', async () => {
    const builds = await buildAll('notify');
    const good = builds.find((b) => b.image === 'good')!;
    const bad = builds.find((b) => b.image === 'bad')!;
    assert.equal(good.phase, 'succeeded', good.reason ?? '');
    assert.equal(bad.phase, 'failed');
    await rx.waitFor('/events', 2);
    await sleep(500);
    const got = rx.to('/events');
    assert.equal(got.length, 2, 'one event per build, nothing else');
    for (const r of got) {
      assert.equal(r.method, 'POST');
      assert.match(String(r.headers['content-type']), /^application\/cloudevents\+json/);
      assert.ok(verifySignature(HOOK_SECRET, r.body, r.headers['x-kiln-signature-256'] as string), 'signature');
      assert.ok(!verifySignature('wrong', r.body, r.headers['x-kiln-signature-256'] as string));
    }
    const ok = got.map(event).find((e) => e.subject === good.id)!;
    const ko = got.map(event).find((e) => e.subject === bad.id)!;
    assert.equal(ok.specversion, '1.0');
    assert.equal(ok.type, 'dev.kiln.build.succeeded');
    assert.equal(ok.source, 'kiln/notify');
    assert.equal(ok.datacontenttype, 'application/json');
    assert.ok(!Number.isNaN(Date.parse(ok.time)));
    assert.deepEqual(
      [ok.data.id, ok.data.commit, ok.data.digest, ok.data.tags, ok.data.number, ok.data.phase],
      [good.id, good.commit, good.digest, good.tags, good.number, 'succeeded'],
    );
    assert.equal(ok.data.reference, `${reg.host}/notify/good@${good.digest}`);
    assert.equal(ok.data.logUrl, `${PUBLIC}/api/v1/builds/${good.id}/log`);
    assert.deepEqual(ok.data.trigger, { type: 'manual', by: 'test-admin' });
    assert.equal(ko.type, 'dev.kiln.build.failed');
    assert.equal(ko.data.reason, bad.reason);
    assert.match(ko.data.reason ?? '', /exit|3/);
    assert.notEqual(ok.id, ko.id);
    for (const [b, e] of [
      [good, ok],
      [bad, ko],
    ] as const) {
      const [n] = await notifications(b.id, 1);
      assert.deepEqual(
        [n!.id, n!.kind, n!.state, n!.url, n!.attempts.map((a) => a.status)],
        [e.id, 'webhook', 'delivered', `${rx.url}/events`, [200]],
      );
    }
  });

  test('a receiver answering 500 twice then 200 gets three attempts, all recorded; a 400 is not retried', async () => {
    rx.script('/flaky', [500, 500, 200]);
    rx.script('/reject', [400]);
    const [b] = await buildAll('retry');
    assert.equal(b!.phase, 'succeeded', b!.reason ?? '');
    const list = await notifications(b!.id, 2);
    const flaky = list.find((n) => n.target === 'notifications[0]')!;
    const reject = list.find((n) => n.target === 'notifications[1]')!;
    assert.equal(flaky.state, 'delivered');
    assert.deepEqual(
      flaky.attempts.map((a) => [a.attempt, a.status, a.error]),
      [
        [1, 500, 'HTTP 500'],
        [2, 500, 'HTTP 500'],
        [3, 200, null],
      ],
    );
    const gaps = rx
      .to('/flaky')
      .slice(1)
      .map((r, i) => r.at - rx.to('/flaky')[i]!.at);
    assert.ok(gaps[0]! >= 900 && gaps[1]! >= 1900, `backoff 1 s, 2 s: ${gaps.join(', ')} ms`);
    assert.equal(new Set(rx.to('/flaky').map((r) => r.body.toString())).size, 1, 'retries resend the same event');
    assert.equal(reject.state, 'failed');
    assert.deepEqual(
      reject.attempts.map((a) => a.status),
      [400],
    );
    assert.equal(reject.url, `${rx.url}/reject?key=…`, 'query values are not shown');
    await sleep(1500);
    assert.equal(rx.to('/reject').length, 1);
    assert.equal(rx.to('/flaky').length, 3);
  });

  test('GitHub statuses: pending then success for the sha, context kiln/app, the token in Authorization', async () => {
    const [b] = await buildAll('gh');
    assert.equal(b!.phase, 'succeeded', b!.reason ?? '');
    const path = `/github/repos/acme/gh/statuses/${b!.commit}`;
    const list = await notifications(b!.id, (l) => l.some((n) => n.event === 'success'));
    const got = rx.to(path);
    assert.ok(got.length >= 2, `${got.length} statuses`);
    const bodies = got.map((r) => JSON.parse(r.body.toString()) as Record<string, string>);
    const states = bodies.map((s) => s.state).filter((s, i, all) => i === 0 || all[i - 1] !== s);
    assert.deepEqual(states, ['pending', 'success']);
    for (const [i, r] of got.entries()) {
      assert.equal(r.method, 'POST');
      assert.equal(r.headers.authorization, `Bearer ${GH_TOKEN}`);
      assert.equal(r.headers.accept, 'application/vnd.github+json');
      assert.equal(bodies[i]!.context, 'kiln/app');
      assert.equal(bodies[i]!.target_url, `${PUBLIC}/api/v1/builds/${b!.id}/log`);
    }
    assert.equal(rx.requests.filter((r) => r.url.startsWith('/github/')).length, got.length, 'only this sha');
    assert.ok(list.every((n) => n.kind === 'status' && n.target === 'github'));
    assert.equal(list.at(-1)!.event, 'success');
  });

  test('GitLab statuses for a failing build: running, then failed, name kiln/app, the token in Authorization', async () => {
    const [b] = await buildAll('gl');
    assert.equal(b!.phase, 'failed');
    const path = `/gitlab/api/v4/projects/42/statuses/${b!.commit}`;
    await notifications(b!.id, (l) => l.some((n) => n.event === 'failed'));
    const got = rx.to(path);
    const bodies = got.map((r) => JSON.parse(r.body.toString()) as Record<string, string>);
    const states = bodies.map((s) => s.state);
    assert.equal(states.at(-1), 'failed', states.join());
    assert.ok(
      states.slice(0, -1).every((s) => s === 'pending' || s === 'running'),
      states.join(),
    );
    assert.equal(new Set(states).size, states.length, 'GitLab gets each state once');
    for (const [i, r] of got.entries()) {
      assert.equal(r.headers.authorization, `Bearer ${GL_TOKEN}`);
      assert.equal(r.headers['private-token'], undefined);
      assert.equal(bodies[i]!.name, 'kiln/app');
      assert.equal(bodies[i]!.ref, 'main');
    }
    assert.equal(bodies.at(-1)!.description, b!.reason);
  });

  test('secrets appear in no log, API answer, recorded attempt or database file', async () => {
    const answers: string[] = [];
    for (const path of ['/api/v1/projects', '/api/v1/builds?limit=500']) {
      answers.push((await svc.api('GET', path, undefined, svc.viewer)).text);
    }
    const { body } = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?limit=500');
    for (const b of body.builds) {
      answers.push((await svc.api('GET', `/api/v1/builds/${b.id}/notifications`, undefined, svc.viewer)).text);
    }
    assert.ok(answers.join('').includes('TEST_HOOK_SECRET'), 'references are shown');
    const files = (await readdir(svc.dataDir)).filter((f) => f.startsWith('kiln.db'));
    const db = (await Promise.all(files.map((f) => readFile(join(svc.dataDir, f), 'latin1')))).join('');
    for (const s of SECRETS) {
      assert.ok(!svc.stderr().includes(s), `log holds ${s}`);
      assert.ok(!answers.join('\n').includes(s), `API answer holds ${s}`);
      assert.ok(!db.includes(s), `database holds ${s}`);
    }
    assert.ok(!answers.join('').includes('v4lue'), 'query values of hook URLs are not shown');
  });

  test('a pending retry survives kill -9: the next start delivers it', async () => {
    rx.script('/durable', [{ status: 503, headers: { 'retry-after': '4' } }, 200]);
    const [b] = await buildAll('durable');
    assert.equal(b!.phase, 'succeeded', b!.reason ?? '');
    await rx.waitFor('/durable', 1);
    for (let i = 0; ; i++) {
      const r = await svc.api<{ notifications: NotificationView[] }>('GET', `/api/v1/builds/${b!.id}/notifications`);
      if (r.body.notifications[0]?.attempts.length === 1) break;
      assert.ok(i < 100, 'first attempt recorded');
      await sleep(50);
    }
    await svc.stop('SIGKILL');
    const tokens = { admin: svc.admin, viewer: svc.viewer };
    svc = await startService({ config, kilnHome: home, env, dataDir: svc.dataDir, tokens });
    const [n] = await notifications(b!.id, 1);
    assert.equal(n!.state, 'delivered');
    assert.deepEqual(
      n!.attempts.map((a) => a.status),
      [503, 200],
    );
    const got = rx.to('/durable');
    assert.equal(got.length, 2);
    assert.equal(got[0]!.body.toString(), got[1]!.body.toString(), 'the same event after the restart');
    assert.ok(got[1]!.at - got[0]!.at >= 3500, 'Retry-After honoured across the restart');
    assert.ok(verifySignature(HOOK_SECRET, got[1]!.body, got[1]!.headers['x-kiln-signature-256'] as string));
  });
});
