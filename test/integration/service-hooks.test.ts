/**
 * Webhook triggers and polling end to end, every part real: `kiln serve` as a process, a git smart-HTTP server
 * (`git http-backend`, Basic auth) that the tests commit and push to, Debian's `docker-registry`, `skopeo` to read
 * what was pushed. Webhook bodies are real examples — GitHub's from `@octokit/webhooks-examples`, GitLab's,
 * Gitea's and Bitbucket's documented shapes (testdata/hooks) — rewritten to name the test repository, ref and
 * commits, and signed the way each forge signs. A decoy HTTP server stands for the "repository" a forged payload
 * names: it must never be contacted.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { request } from 'undici';
import type { WebhookDefinition } from '@octokit/webhooks-examples';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { cleanup, KILN_BIN, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import type { Build } from '../../src/service/model.js';
import type { DeliveryList } from '../../src/service/hooks/api.js';
import type { TriggerBody } from '../../src/service/hooks/pipeline.js';
import { signStandardWebhook } from '../../src/service/hooks/signatures.js';

type Json = Record<string, unknown>;
const GIT_PASSWORD = 'git-pw-hooks-8Fq2';
const SECRET = 'hook-secret-kiln-7c1d';
const GITLAB_TOKEN = 'gitlab-token-kiln-31aa';
const GENERIC_SECRET = `whsec_${Buffer.from('kiln generic webhook key 32 byte').toString('base64')}`;
const ZERO = '0'.repeat(40);
const fixture = (name: string): Json =>
  JSON.parse(readFileSync(join(import.meta.dirname, '../../testdata/hooks', name), 'utf8')) as Json;
const examples = createRequire(import.meta.url)('@octokit/webhooks-examples') as WebhookDefinition[];
const githubExample = (pred: (e: Json) => boolean): Json => {
  const list = (examples.find((d) => d.name === 'push')?.examples ?? []) as unknown as Json[];
  const e = list.find(pred);
  assert.ok(e, 'the octokit push example exists');
  return structuredClone(e);
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function run(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

describe('kiln serve: webhooks, deliveries and polling (process, git http-backend, docker-registry)', () => {
  let reg: TestRegistry;
  let git: GitServer;
  let home: string;
  let svc: ServiceProcess;
  let decoy: Server;
  let decoyUrl: string;
  let decoyRequests = 0;

  const hookConfig = `    webhooks:
      github: {secretEnv: TEST_HOOK_SECRET}
      gitlab: {tokenEnv: TEST_GITLAB_TOKEN}
      gitea: {secretEnv: TEST_HOOK_SECRET}
      forgejo: {secretEnv: TEST_HOOK_SECRET}
      bitbucket: {secretEnv: TEST_HOOK_SECRET}
      generic: {secretEnv: TEST_GENERIC_SECRET}
`;
  const images = `    images:
      - {name: web, dockerfile: web/Dockerfile, paths: ["web/**"], tags: ["{{branch}}", "{{tag}}", "{{shortSha}}"]}
      - {name: worker, dockerfile: worker/Dockerfile, paths: ["worker/**"], tags: ["{{branch}}", "{{tag}}"]}
`;
  const project = (name: string, extra: string): string => `  - name: ${name}
    repository: ${git.repoUrl(name)}
    gitCredentials: {username: ci, passwordEnv: TEST_GIT_PASSWORD}
    registry: ${reg.host}/${name}
    insecureRegistry: true
    runPolicy: Parallel
    concurrency: 2
    branches: ["main", "release/*"]
    tags: ["v*"]
${extra}${images}`;

  before(async () => {
    reg = await startRegistry();
    git = await startGitServer({ username: 'ci', password: GIT_PASSWORD });
    home = await makeKilnHome();
    decoy = createServer((_req, res) => {
      decoyRequests++;
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => decoy.listen(0, '127.0.0.1', r));
    decoyUrl = `http://127.0.0.1:${(decoy.address() as AddressInfo).port}/evil/repo.git`;
    const files = {
      'web/Dockerfile': 'FROM localhost/busybox:latest\nCOPY web/index.html /srv/index.html\n',
      'web/index.html': '<h1>v1</h1>\n',
      'worker/Dockerfile': 'FROM localhost/busybox:latest\nCOPY worker/VERSION /srv/VERSION\n',
      'worker/VERSION': '1\n',
      'README.md': 'hooks\n',
    };
    await git.createRepo('hooks', files);
    await git.createRepo('polled', files);
    const config = `allowFileRepositories: false
concurrency: 2
insecureRegistries: ["${reg.host}"]
projects:
${project('hooks', hookConfig)}
${project('polled', '    poll: {intervalSeconds: 1}\n')}
`;
    svc = await startService({
      config,
      kilnHome: home,
      env: {
        TEST_GIT_PASSWORD: GIT_PASSWORD,
        TEST_HOOK_SECRET: SECRET,
        TEST_GITLAB_TOKEN: GITLAB_TOKEN,
        TEST_GENERIC_SECRET: GENERIC_SECRET,
      },
    });
  });

  after(async () => {
    await svc?.stop('SIGTERM');
    await git?.stop();
    await reg?.stop();
    await new Promise((r) => decoy?.close(r));
    if (svc) await cleanup(svc.dataDir);
    if (home) await cleanup(home);
  });

  /** POST a webhook body with headers; the answer as JSON. */
  async function hook(forge: string, body: string, headers: Record<string, string>, project = 'hooks') {
    const res = await request(`${svc.url}/hooks/${forge}/${project}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body,
    });
    const text = await res.body.text();
    return { status: res.statusCode, body: JSON.parse(text) as TriggerBody, text };
  }

  /**
   * POST a body of `size` bytes announced by Content-Length, sending only its first 64 KiB before the answer: the
   * service refuses it from the header and closes the connection (so a client still writing would get EPIPE).
   */
  function postHuge(url: string, size: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = httpRequest(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'content-length': String(size),
          'x-github-event': 'push',
          'x-github-delivery': 'huge-1',
          'x-hub-signature-256': `sha256=${'0'.repeat(64)}`,
        },
      });
      const timer = setTimeout(() => reject(new Error('no answer to an oversized body')), 10_000);
      req.on('response', (res) => {
        clearTimeout(timer);
        res.resume();
        req.destroy();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => undefined);
      req.write(Buffer.alloc(64 * 1024, 0x20));
    });
  }

  const hmacHex = (body: string, secret = SECRET): string => createHmac('sha256', secret).update(body).digest('hex');

  /** GitHub's push example rewritten for a real push of `commit` on `ref` (paths listed in the payload). */
  function githubPush(ref: string, before: string, commit: string, message: string, modified: string[]): string {
    const ex = githubExample((e) => e.ref === 'refs/heads/master' && (e.commits as unknown[]).length > 0);
    const head = {
      ...(ex.head_commit as Json),
      id: commit,
      tree_id: undefined,
      message,
      added: [],
      removed: [],
      modified,
    };
    return JSON.stringify({
      ...ex,
      ref,
      before,
      after: commit,
      created: before === ZERO,
      compare: `${decoyUrl}/compare`,
      commits: [head],
      head_commit: head,
      // the forged parts: a payload cannot send the service elsewhere
      repository: {
        ...(ex.repository as Json),
        clone_url: decoyUrl,
        git_url: decoyUrl.replace('http:', 'git:'),
        ssh_url: decoyUrl,
        html_url: decoyUrl,
        url: decoyUrl,
      },
    });
  }

  async function githubDelivery(body: string, id: string, over: Record<string, string> = {}) {
    return hook('github', body, {
      'x-github-event': 'push',
      'x-github-delivery': id,
      'x-hub-signature-256': `sha256=${hmacHex(body)}`,
      ...over,
    });
  }

  async function builds(ids: string[]): Promise<Build[]> {
    return Promise.all(ids.map((id) => svc.waitBuild(id)));
  }

  async function deliveries(project = 'hooks'): Promise<DeliveryList> {
    const r = await svc.api<DeliveryList>(
      'GET',
      `/api/v1/deliveries?project=${project}&limit=200`,
      undefined,
      svc.viewer,
    );
    assert.equal(r.status, 200, r.text);
    return r.body;
  }

  async function imageLabels(ref: string): Promise<Record<string, string>> {
    const r = await run('skopeo', ['inspect', '--tls-verify=false', '--config', `docker://${ref}`]);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { config: { Labels: Record<string, string> } }).config.Labels;
  }

  const head = async (repo: string): Promise<string> => (await git.git(repo, ['rev-parse', 'HEAD'])).trim();

  test('GitHub (octokit example): signed push builds only the image its paths concern, from the configured repo; replay ignored', async () => {
    const before = await head('hooks');
    const commit = await git.commit('hooks', { 'web/index.html': '<h1>v2</h1>\n' }, 'web: v2');
    const body = githubPush('refs/heads/main', before, commit, 'web: v2', ['web/index.html']);
    const r = await githubDelivery(body, 'gh-push-1');
    assert.equal(r.status, 202, r.text);
    assert.equal(r.body.builds.length, 1);
    const [b] = await builds(r.body.builds);
    assert.equal(b?.phase, 'succeeded', b?.reason ?? '');
    assert.equal(b?.image, 'web');
    assert.equal(b?.commit, commit);
    assert.equal(b?.ref, 'refs/heads/main');
    assert.deepEqual(b?.trigger, { type: 'webhook', forge: 'github', delivery: 'gh-push-1' });
    const labels = await imageLabels(`${reg.host}/hooks/web:main`);
    assert.equal(labels['org.opencontainers.image.revision'], commit);
    assert.equal(labels['org.opencontainers.image.source'], git.repoUrl('hooks'));
    assert.equal(decoyRequests, 0, 'the clone_url of the payload was never contacted');
    // replay of the same delivery id: acknowledged, nothing built
    const again = await githubDelivery(body, 'gh-push-1');
    assert.equal(again.status, 200);
    assert.equal(again.body.duplicate, true);
    const list = await deliveries();
    const rec = list.deliveries.find((d) => d.deliveryId === 'gh-push-1');
    assert.equal(rec?.outcome, 'queued');
    assert.deepEqual(rec?.builds, r.body.builds);
    assert.equal(rec?.commit, commit);
    assert.equal(list.deliveries.filter((d) => d.deliveryId === 'gh-push-1').length, 1);
  });

  test('bad and missing signatures of every forge: 401, recorded without the body, nothing built', async () => {
    const before = await head('hooks');
    const commit = await git.commit('hooks', { 'web/index.html': '<h1>v3</h1>\n' }, 'web: v3');
    const body = githubPush('refs/heads/main', before, commit, 'SECRET-PAYLOAD-MARKER', ['web/index.html']);
    const attempts: [string, Record<string, string>][] = [
      [
        'github',
        {
          'x-github-event': 'push',
          'x-github-delivery': 'bad-1',
          'x-hub-signature-256': `sha256=${hmacHex(body, 'wrong')}`,
        },
      ],
      ['github', { 'x-github-event': 'push', 'x-github-delivery': 'bad-2' }],
      ['gitlab', { 'x-gitlab-event': 'Push Hook', 'x-gitlab-token': 'not-the-token' }],
      ['gitlab', { 'x-gitlab-event': 'Push Hook' }],
      ['gitea', { 'x-gitea-event': 'push', 'x-gitea-signature': hmacHex(body, 'wrong') }],
      ['forgejo', { 'x-forgejo-event': 'push' }],
      ['bitbucket', { 'x-event-key': 'repo:push', 'x-hub-signature': `sha256=${hmacHex(body, 'wrong')}` }],
      [
        'generic',
        {
          'webhook-id': 'm1',
          'webhook-timestamp': String(Math.floor(Date.now() / 1000)),
          'webhook-signature': 'v1,' + 'A'.repeat(43) + '=',
        },
      ],
      ['generic', {}],
    ];
    const buildsBefore = (await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=hooks&limit=500')).body
      .builds.length;
    for (const [forge, headers] of attempts) {
      const r = await hook(forge, body, headers);
      assert.equal(r.status, 401, `${forge} ${JSON.stringify(headers)}: ${r.text}`);
    }
    const list = await deliveries();
    const rejected = list.deliveries.filter((d) => d.id === null && /signature/.test(d.outcome));
    assert.equal(rejected.length, attempts.length);
    assert.deepEqual([...new Set(rejected.map((d) => d.forge))].sort(), [
      'bitbucket',
      'forgejo',
      'generic',
      'gitea',
      'github',
      'gitlab',
    ]);
    assert.doesNotMatch(JSON.stringify(list), /SECRET-PAYLOAD-MARKER/);
    for (const secret of [SECRET, GITLAB_TOKEN, GENERIC_SECRET, GIT_PASSWORD]) {
      assert.ok(!svc.stderr().includes(secret), 'no secret in the service log');
      assert.ok(!JSON.stringify(list).includes(secret), 'no secret in the deliveries');
    }
    const buildsAfter = (await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=hooks&limit=500')).body
      .builds.length;
    assert.equal(buildsAfter, buildsBefore);
    // unknown project, malformed JSON, a body over the limit: answered and recorded too
    assert.equal((await githubDelivery(body, 'x-1', {})).status, 202, 'the genuine delivery still builds');
    const unknown = await hook(
      'github',
      body,
      { 'x-github-event': 'push', 'x-hub-signature-256': `sha256=${hmacHex(body)}` },
      'no-such',
    );
    assert.equal(unknown.status, 404);
    const junk = '{"ref": "refs/heads/main",';
    assert.equal((await githubDelivery(junk, 'junk-1')).status, 400);
    assert.equal(await postHuge(`${svc.url}/hooks/github/hooks`, 6 * 1024 * 1024), 413);
    const all = await svc.api<DeliveryList>('GET', '/api/v1/deliveries?limit=1000', undefined, svc.viewer);
    const outcomes = all.body.deliveries.map((d) => `${d.project}:${d.outcome}`);
    for (const o of [
      'no-such:rejected: unknown project',
      'hooks:rejected: malformed JSON',
      'hooks:rejected: body too large',
    ]) {
      assert.ok(outcomes.includes(o), `${o} in ${outcomes.join(', ')}`);
    }
    await builds((await deliveries()).deliveries.find((d) => d.deliveryId === 'x-1')?.builds ?? []);
  });

  test('GitLab (documented payload): token checked, worker-only push builds worker; truncated list → git diff decides', async () => {
    const before = await head('hooks');
    const commit = await git.commit('hooks', { 'worker/VERSION': '2\n' }, 'worker: 2');
    const payload = fixture('gitlab-push.json');
    const c0 = (payload.commits as Json[])[1] as Json;
    const body = JSON.stringify({
      ...payload,
      ref: 'refs/heads/main',
      before,
      after: commit,
      checkout_sha: commit,
      commits: [{ ...c0, id: commit, message: 'worker: 2', added: [], modified: ['worker/VERSION'], removed: [] }],
      total_commits_count: 1,
      project: { ...(payload.project as Json), git_http_url: decoyUrl, http_url: decoyUrl },
      repository: { ...(payload.repository as Json), git_http_url: decoyUrl },
    });
    const r = await hook('gitlab', body, {
      'x-gitlab-event': 'Push Hook',
      'x-gitlab-token': GITLAB_TOKEN,
      'x-gitlab-event-uuid': 'gl-1',
    });
    assert.equal(r.status, 202, r.text);
    const [b] = await builds(r.body.builds);
    assert.equal(r.body.builds.length, 1);
    assert.equal(b?.image, 'worker');
    assert.equal(b?.phase, 'succeeded', b?.reason ?? '');
    assert.equal(b?.commit, commit);
    // two commits pushed (web and worker), the payload lists only the last of 25: the service diffs in git
    const base = commit;
    await git.commit('hooks', { 'web/index.html': '<h1>v4</h1>\n' }, 'web: v4');
    const last = await git.commit('hooks', { 'worker/VERSION': '3\n' }, 'worker: 3');
    const truncated = JSON.stringify({
      ...payload,
      ref: 'refs/heads/main',
      before: base,
      after: last,
      checkout_sha: last,
      commits: [{ ...c0, id: last, message: 'worker: 3', added: [], modified: ['worker/VERSION'], removed: [] }],
      total_commits_count: 25,
    });
    const t = await hook('gitlab', truncated, {
      'x-gitlab-event': 'Push Hook',
      'x-gitlab-token': GITLAB_TOKEN,
      'idempotency-key': 'gl-2',
    });
    assert.equal(t.status, 202, t.text);
    const done = await builds(t.body.builds);
    assert.deepEqual(
      done.map((x) => x.image).sort(),
      ['web', 'worker'],
      'web changed too (git diff), though the payload did not say',
    );
    for (const x of done) {
      assert.equal(x.phase, 'succeeded', x.reason ?? '');
      assert.deepEqual(x.changedPaths?.sort(), ['web/index.html', 'worker/VERSION']);
    }
    assert.equal(decoyRequests, 0);
  });

  test('Gitea, Forgejo, Bitbucket and generic (Standard Webhooks): a good signature builds', async () => {
    // Gitea's documented payload (Forgejo sends the same), rewritten for a push of `commit` changing web/
    const giteaPush = (before: string, commit: string): string => {
      const p = fixture('gitea-push.json');
      const c = {
        ...((p.commits as Json[])[0] as Json),
        id: commit,
        added: [],
        modified: ['web/index.html'],
        removed: [],
      };
      const push = { ref: 'refs/heads/main', before, after: commit, commits: [c], head_commit: c, total_commits: 1 };
      return JSON.stringify({ ...p, ...push });
    };
    const cases: {
      forge: string;
      body: (before: string, commit: string) => string;
      headers: (b: string) => Record<string, string>;
    }[] = [
      {
        forge: 'gitea',
        body: giteaPush,
        headers: (b) => ({ 'x-gitea-event': 'push', 'x-gitea-delivery': 'gt-1', 'x-gitea-signature': hmacHex(b) }),
      },
      {
        forge: 'forgejo',
        body: giteaPush,
        headers: (b) => ({
          'x-forgejo-event': 'push',
          'x-forgejo-delivery': 'fj-1',
          'x-forgejo-signature': hmacHex(b),
        }),
      },
      {
        forge: 'bitbucket',
        body: (before, commit) => {
          const p = fixture('bitbucket-push.json');
          const ch = ((p.push as Json).changes as Json[])[0] as Json;
          const nw = ch.new as Json;
          const old = ch.old as Json;
          const change = {
            ...ch,
            new: { ...nw, target: { ...(nw.target as Json), hash: commit, message: 'web change' } },
            old: { ...old, target: { ...(old.target as Json), hash: before } },
          };
          return JSON.stringify({ ...p, push: { changes: [change] } });
        },
        headers: (b) => ({
          'x-event-key': 'repo:push',
          'x-request-uuid': 'bb-1',
          'x-hub-signature': `sha256=${hmacHex(b)}`,
        }),
      },
      {
        forge: 'generic',
        body: (before, commit) =>
          JSON.stringify({
            type: 'push',
            timestamp: new Date().toISOString(),
            data: { ref: 'refs/heads/main', before, after: commit },
          }),
        headers: (b) => {
          const ts = Math.floor(Date.now() / 1000);
          return {
            'webhook-id': 'msg_generic_1',
            'webhook-timestamp': String(ts),
            'webhook-signature': signStandardWebhook(GENERIC_SECRET, 'msg_generic_1', ts, b),
          };
        },
      },
    ];
    const started: { forge: string; commit: string; ids: string[] }[] = [];
    for (const c of cases) {
      const before = await head('hooks');
      const commit = await git.commit('hooks', { 'web/index.html': `<h1>${c.forge}</h1>\n` }, `web: ${c.forge}`);
      const body = c.body(before, commit);
      const r = await hook(c.forge, body, c.headers(body));
      assert.equal(r.status, 202, `${c.forge}: ${r.text}`);
      assert.equal(r.body.builds.length, 1, `${c.forge}: only web (from the payload or the diff)`);
      started.push({ forge: c.forge, commit, ids: r.body.builds });
    }
    for (const s of started) {
      const [b] = await builds(s.ids);
      assert.equal(b?.phase, 'succeeded', `${s.forge}: ${b?.reason}`);
      assert.equal(b?.commit, s.commit);
      assert.equal(b?.image, 'web');
      assert.equal(b?.trigger.forge, s.forge);
    }
  });

  test('a tag push builds every image with the tag; filters, skip markers and deleted refs build nothing', async () => {
    const commit = await head('hooks');
    await git.tag('hooks', 'v1.0.0', commit, 'release 1.0.0');
    const tagEx = githubExample((e) => String(e.ref).startsWith('refs/tags/') && e.created === true);
    const tagBody = JSON.stringify({
      ...tagEx,
      ref: 'refs/tags/v1.0.0',
      after: (await git.git('hooks', ['rev-parse', 'v1.0.0'])).trim(),
      head_commit: { ...(tagEx.head_commit as Json), id: commit },
    });
    const r = await githubDelivery(tagBody, 'tag-1');
    assert.equal(r.status, 202, r.text);
    const done = await builds(r.body.builds);
    assert.deepEqual(done.map((b) => b.image).sort(), ['web', 'worker'], 'a new ref: paths unknown, every image');
    for (const b of done) {
      assert.equal(b.phase, 'succeeded', b.reason ?? '');
      assert.equal(b.commit, commit, 'the tag’s commit, not the tag object');
      assert.ok(b.tags.includes(`${reg.host}/hooks/${b.image}:v1.0.0`), b.tags.join(' '));
    }
    assert.equal((await imageLabels(`${reg.host}/hooks/worker:v1.0.0`))['org.opencontainers.image.revision'], commit);
    // a tag the filter excludes, a branch it excludes, a skip marker, a deleted branch
    await git.tag('hooks', 'nightly', commit);
    const nightly = await githubDelivery(
      JSON.stringify({ ...JSON.parse(tagBody), ref: 'refs/tags/nightly', after: commit }),
      'tag-2',
    );
    assert.equal(nightly.body.reason, 'tag filter');
    const feature = await git.commit('hooks', { 'web/index.html': 'feature\n' }, 'feature', 'feature/x');
    const fb = await githubDelivery(
      githubPush('refs/heads/feature/x', ZERO, feature, 'feature', ['web/index.html']),
      'br-1',
    );
    assert.equal(fb.status, 200);
    assert.equal(fb.body.reason, 'branch filter');
    const before = await head('hooks');
    const skipped = await git.commit('hooks', { 'web/index.html': 'docs\n' }, 'docs [skip ci]');
    const sk = await githubDelivery(
      githubPush('refs/heads/main', before, skipped, 'docs [skip ci]', ['web/index.html']),
      'skip-1',
    );
    assert.equal(sk.status, 200);
    assert.equal(sk.body.reason, 'skip marker');
    const delEx = githubExample((e) => e.deleted === true);
    const del = await githubDelivery(
      JSON.stringify({ ...delEx, ref: 'refs/heads/release/1', before: commit }),
      'del-1',
    );
    assert.equal(del.body.reason, 'deleted ref');
    const readme = await git.commit('hooks', { 'README.md': 'only docs\n' }, 'readme');
    const none = await githubDelivery(
      githubPush('refs/heads/main', skipped, readme, 'readme', ['README.md']),
      'none-1',
    );
    assert.equal(none.body.reason, 'no image concerned');
    const ping = await hook('github', '{"zen":"Practicality beats purity.","hook_id":1}', {
      'x-github-event': 'ping',
      'x-github-delivery': 'ping-1',
      'x-hub-signature-256': `sha256=${hmacHex('{"zen":"Practicality beats purity.","hook_id":1}')}`,
    });
    assert.equal(ping.status, 200);
    assert.equal(ping.body.outcome, 'ignored: ping');
    const list = await deliveries();
    const byId = (id: string): string | undefined => list.deliveries.find((d) => d.deliveryId === id)?.outcome;
    assert.equal(byId('tag-2'), 'ignored: tag filter');
    assert.equal(byId('br-1'), 'ignored: branch filter');
    assert.equal(byId('skip-1'), 'ignored: skip marker');
    assert.equal(byId('del-1'), 'ignored: deleted ref');
    assert.equal(byId('none-1'), 'ignored: no image concerned');
    assert.equal(byId('ping-1'), 'ignored: ping');
  });

  test('CLI: kiln deliveries ls / redeliver and kiln project trigger against the service', async () => {
    const env = { KILN_SERVER: svc.url, KILN_TOKEN: svc.admin, KILN_HOME: home, KILN_CONFIG_DIR: home };
    const ls = await run(process.execPath, [KILN_BIN, 'deliveries', 'ls', '--project', 'hooks'], env);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /^ID\s+AGE\s+PROJECT\s+FORGE/);
    assert.match(ls.stdout, /\bgithub\s+push\s+main\s+\w{7}\s+queued\b/);
    assert.match(ls.stdout, /rejected: bad signature/);
    const rec = (await deliveries()).deliveries.find((d) => d.deliveryId === 'gh-push-1');
    assert.ok(rec?.id);
    const re = await run(process.execPath, [KILN_BIN, 'deliveries', 'redeliver', String(rec.id)], env);
    assert.equal(re.code, 0, re.stderr);
    const m = /^delivery (\d+): queued (\S+)$/m.exec(re.stdout);
    assert.ok(m, re.stdout);
    const redone = await svc.waitBuild(m[2] as string);
    assert.equal(redone.phase, 'succeeded', redone.reason ?? '');
    assert.equal(redone.commit, rec.commit, 'the stored commit, built again');
    assert.match(String(redone.trigger.delivery), /^gh-push-1\/redelivery-/);
    // viewers may list but not redeliver
    const viewer = await run(process.execPath, [KILN_BIN, 'deliveries', 'redeliver', String(rec.id)], {
      ...env,
      KILN_TOKEN: svc.viewer,
    });
    assert.equal(viewer.code, 1);
    assert.match(viewer.stderr, /may only read/);
    // project trigger: like a push of the ref (filters apply)
    const tr = await run(process.execPath, [KILN_BIN, 'project', 'trigger', 'hooks', '--ref', 'main'], env);
    assert.equal(tr.code, 0, tr.stderr);
    const ids = /queued (.+)$/m.exec(tr.stdout)?.[1]?.split(', ') ?? [];
    assert.equal(ids.length, 2, tr.stdout);
    const tb = await builds(ids);
    for (const b of tb) {
      assert.equal(b.phase, 'succeeded', b.reason ?? '');
      assert.equal(b.commit, await head('hooks'));
      assert.equal(b.trigger.forge, 'kiln');
      assert.equal(b.trigger.by, 'test-admin');
    }
    const filtered = await run(process.execPath, [KILN_BIN, 'project', 'trigger', 'hooks', '--ref', 'feature/x'], env);
    assert.equal(filtered.code, 0, filtered.stderr);
    assert.match(filtered.stdout, /ignored: branch filter/);
    const missing = await run(
      process.execPath,
      [KILN_BIN, 'project', 'trigger', 'hooks', '--ref', 'no-such-branch'],
      env,
    );
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^kiln: ref "no-such-branch" not found/m);
  });

  test('polling: a commit pushed without any webhook is built within a few intervals, only the image it concerns', async () => {
    // the first poll records a baseline (and builds nothing)
    const until = Date.now() + 30_000;
    while (!/poll polled: watching \d+ ref/.test(svc.stderr())) {
      assert.ok(Date.now() < until, `no baseline: ${svc.stderr()}`);
      await sleep(100);
    }
    const none = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=polled');
    assert.equal(none.body.builds.length, 0, 'the baseline builds nothing');
    const commit = await git.commit('polled', { 'worker/VERSION': 'polled\n' }, 'worker: polled');
    const t0 = Date.now();
    let found: Build[] = [];
    while (found.length === 0) {
      assert.ok(Date.now() - t0 < 20_000, 'the pushed commit was not built within 20 s');
      await sleep(200);
      found = (await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=polled')).body.builds;
    }
    await sleep(1500);
    found = (await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=polled')).body.builds;
    assert.equal(found.length, 1, 'one build: the worker image, once');
    const b = await svc.waitBuild((found[0] as Build).id);
    assert.equal(b.phase, 'succeeded', b.reason ?? '');
    assert.equal(b.image, 'worker');
    assert.equal(b.commit, commit);
    assert.deepEqual(b.trigger, { type: 'poll' });
    assert.deepEqual(b.changedPaths, ['worker/VERSION']);
    const list = await deliveries('polled');
    assert.equal(list.deliveries[0]?.forge, 'poll');
    assert.equal(list.deliveries[0]?.commit, commit);
    assert.equal(list.polling?.failures, 0);
    assert.ok(list.polling?.baselineAt);
    // a skip marker found by polling (from the mirror) builds nothing
    await git.commit('polled', { 'web/index.html': 'skip\n' }, 'web [kiln skip]');
    const t1 = Date.now();
    for (;;) {
      const d = (await deliveries('polled')).deliveries;
      if (d.length >= 2 && d[0]?.outcome !== 'received') {
        assert.equal(d[0]?.outcome, 'ignored: skip marker');
        break;
      }
      assert.ok(Date.now() - t1 < 20_000, 'the skip-marked commit was never polled');
      await sleep(200);
    }
    assert.equal((await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=polled')).body.builds.length, 1);
  });
});
