/**
 * `kiln serve` end to end, every part real: the service as a process (SQLite on disk, warm build workers in user
 * namespaces), a git smart-HTTP server (`git http-backend`) with Basic auth, Debian's `docker-registry`, and
 * `skopeo` to check what was pushed. One service for the file; each test uses its own project and repository.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { cleanup, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import type { Build } from '../../src/service/model.js';
import { LogEventDecoder } from '../../src/service/api/sse.js';

const GIT_PASSWORD = 'git-pw-Xq93kd';
const BUILD_SECRET = 'build-secret-7Hn2pQ';
/** A sleep only this run's RUN step does (pgrep must not see another test run's). */
const SLEEP = `sleep ${3000 + Math.floor(Math.random() * 6000)}`;

function skopeo(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('skopeo', args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? 1 : 0, stdout, stderr }),
    );
  });
}

async function remoteDigest(ref: string): Promise<string | undefined> {
  const r = await skopeo(['inspect', '--tls-verify=false', '--raw', `docker://${ref}`]);
  if (r.code !== 0) return undefined;
  const { createHash } = await import('node:crypto');
  return 'sha256:' + createHash('sha256').update(r.stdout).digest('hex');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('kiln serve (process, git http-backend, docker-registry)', () => {
  let reg: TestRegistry;
  let git: GitServer;
  let home: string;
  let svc: ServiceProcess;

  const project = (name: string, images: string, extra = ''): string =>
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
    home = await makeKilnHome();
    const base = 'FROM localhost/busybox:latest\n';
    await git.createRepo('shop', {
      'services/web/Dockerfile': base + 'COPY services/web/index.html /srv/\nRUN echo web > /srv/who\n',
      'services/web/index.html': '<h1>web</h1>\n',
      'services/api/Dockerfile': base + 'WORKDIR /api\nCOPY . .\nRUN cat VERSION > /api/version\n',
      'services/api/VERSION': '1.0\n',
    });
    await git.createRepo('slow', {
      Dockerfile:
        base +
        'RUN --mount=type=secret,id=tok cat /run/secrets/tok; for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.4; done\n',
    });
    await git.createRepo('sleepy', { 'ci/Dockerfile': base + `RUN echo started-sleeping && ${SLEEP}\n` });
    const config = `allowFileRepositories: false
concurrency: 2
insecureRegistries: ["${reg.host}"]
projects:
${project(
  'shop',
  `      - name: web
        context: .
        dockerfile: services/web/Dockerfile
        tags: ["{{branch}}", "{{branch}}-{{shortSha}}"]
      - name: api
        context: services/api
        dockerfile: services/api/Dockerfile
        tags: ["{{branch}}"]
`,
)}
${project(
  'slow',
  `      - name: app
        secrets: {tok: {env: TEST_BUILD_SECRET}}
        tags: ["{{branch}}"]
`,
)}
${project(
  'sleepy',
  `      - name: app
        dockerfile: ci/Dockerfile
        tags: ["{{branch}}"]
`,
  '    concurrency: 2\n    runPolicy: Parallel\n',
)}
`;
    svc = await startService({
      config,
      kilnHome: home,
      env: { TEST_GIT_PASSWORD: GIT_PASSWORD, TEST_BUILD_SECRET: BUILD_SECRET },
    });
  });

  after(async () => {
    await svc?.stop('SIGTERM');
    await git?.stop();
    await reg?.stop();
    if (svc) await cleanup(svc.dataDir);
    if (home) await cleanup(home);
  });

  test('two images of one repository (Dockerfiles not at the root) build and push, by digest and tag', async () => {
    const head = await git.git('shop', ['rev-parse', 'HEAD']);
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/shop/builds', { ref: 'main' });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.body.builds.length, 2);
    assert.equal(new Set(r.body.builds.map((b) => b.group)).size, 1, 'one trigger groups its builds');
    const done = await Promise.all(r.body.builds.map((b) => svc.waitBuild(b.id)));
    for (const b of done) {
      assert.equal(b.phase, 'succeeded', `${b.image}: ${b.reason}`);
      assert.equal(b.commit, head.trim());
      assert.equal(b.ref, 'refs/heads/main');
      assert.deepEqual(b.trigger, { type: 'manual', by: 'test-admin' });
      assert.ok(b.startedAt && b.finishedAt && b.createdAt);
      assert.ok(b.stages.some((s) => s.kind === 'fetch' && s.status === 'done' && s.durationMs !== undefined));
      assert.ok(b.stages.some((s) => s.name.includes('RUN') && s.durationMs !== undefined));
      for (const t of b.tags) assert.equal(await remoteDigest(t), b.digest, `${t} points at the build's digest`);
    }
    const web = done.find((b) => b.image === 'web') as Build;
    assert.deepEqual(web.tags, [`${reg.host}/shop/web:main`, `${reg.host}/shop/web:main-${head.trim().slice(0, 7)}`]);
    const api = done.find((b) => b.image === 'api') as Build;
    assert.deepEqual(api.tags, [`${reg.host}/shop/api:main`]);
    // the image records its source and revision
    const cfg = await skopeo(['inspect', '--tls-verify=false', '--config', `docker://${reg.host}/shop/api:main`]);
    const labels = (JSON.parse(cfg.stdout) as { config: { Labels: Record<string, string> } }).config.Labels;
    assert.equal(labels['org.opencontainers.image.revision'], head.trim());
    assert.equal(labels['org.opencontainers.image.source'], git.repoUrl('shop'));
    // numbers per project, newest first in the list
    const list = await svc.api<{ builds: Build[]; next: string | null }>('GET', '/api/v1/builds?project=shop');
    assert.equal(list.status, 200);
    assert.deepEqual(list.body.builds.map((b) => b.number).sort(), done.map((b) => b.number).sort());
    // the log is the plain progress of the build
    const log = await svc.api('GET', `/api/v1/builds/${web.id}/log`);
    assert.match(log.text, /#\d+ \[1\/3\] FROM localhost\/busybox:latest/);
    assert.match(log.text, /pushing .*shop\/web:main done/);
    // a second build of the same commit fetches nothing new and reuses the cache
    const again = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/shop/builds', {
      ref: 'main',
      images: ['web'],
    });
    assert.equal(again.status, 201);
    assert.equal(again.body.builds.length, 1);
    const second = await svc.waitBuild((again.body.builds[0] as Build).id);
    assert.equal(second.phase, 'succeeded');
    assert.equal(second.digest, web.digest, 'same commit, same image');
    assert.ok(second.stages.some((s) => s.status === 'cached'));
  });

  test('tokens: none → 401, bad → 401, viewer reads but cannot start or cancel', async () => {
    assert.equal((await svc.api('GET', '/healthz', undefined, null)).status, 200);
    assert.equal((await svc.api('GET', '/api/v1/builds', undefined, null)).status, 401);
    assert.equal((await svc.api('GET', '/api/v1/builds', undefined, 'kiln_nope')).status, 401);
    assert.equal((await svc.api('GET', '/metrics', undefined, null)).status, 401);
    assert.equal((await svc.api('GET', '/api/v1/builds', undefined, svc.viewer)).status, 200);
    const start = await svc.api('POST', '/api/v1/projects/shop/builds', { ref: 'main' }, svc.viewer);
    assert.equal(start.status, 403);
    const list = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?limit=1', undefined, svc.viewer);
    const id = (list.body.builds[0] as Build).id;
    assert.equal((await svc.api('POST', `/api/v1/builds/${id}/cancel`, {}, svc.viewer)).status, 403);
    // a token created while the service runs works at once; a revoked one does not
    const { createToken } = await import('../helpers/service.js');
    const fresh = await createToken(svc.dataDir, home, 'viewer');
    assert.equal((await svc.api('GET', '/api/v1/builds', undefined, fresh)).status, 200);
    const metrics = await svc.api('GET', '/metrics', undefined, svc.viewer);
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /^kiln_queue_length \d+$/m);
    assert.match(metrics.text, /^kiln_builds\{phase="succeeded"\} \d+$/m);
  });

  test('a log follower that connects mid-build gets all of it; the build secret is in no answer, log or layer', async () => {
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/slow/builds', { ref: 'main' });
    assert.equal(r.status, 201, r.text);
    const id = (r.body.builds[0] as Build).id;
    // wait until the RUN step printed something, then follow
    const until = Date.now() + 60_000;
    for (;;) {
      const log = await svc.api('GET', `/api/v1/builds/${id}/log`);
      if (log.text.includes('tick-2')) break;
      assert.ok(Date.now() < until, 'the build never ticked');
      await sleep(50);
    }
    const res = await request(`${svc.url}/api/v1/builds/${id}/log?follow=1`, {
      headers: { authorization: `Bearer ${svc.admin}` },
    });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /text\/event-stream/);
    const dec = new LogEventDecoder();
    const parts: Buffer[] = [];
    let end: unknown;
    for await (const chunk of res.body) {
      const d = dec.push(chunk as Buffer);
      parts.push(...d.bytes);
      if (d.end) end = d.end;
    }
    assert.deepEqual(end, { phase: 'succeeded', reason: null });
    const followed = Buffer.concat(parts).toString();
    const file = await readFile(join(svc.dataDir, 'logs', `${id}.log`), 'utf8');
    assert.equal(followed, file, 'the follower saw exactly the log file');
    for (let i = 1; i <= 6; i++) assert.match(followed, new RegExp(`tick-${i}`));
    // the RUN printed the secret: masked in the log
    assert.ok(!file.includes(BUILD_SECRET), 'secret in the log');
    assert.match(file, /\*\*\*/);
    const b = await svc.waitBuild(id);
    assert.ok(!JSON.stringify(b).includes(BUILD_SECRET));
    const proj = await svc.api('GET', '/api/v1/projects/slow');
    assert.ok(!proj.text.includes(BUILD_SECRET) && !proj.text.includes(GIT_PASSWORD));
    assert.match(proj.text, /TEST_BUILD_SECRET/, 'the reference is shown, not the value');
    const all = await svc.api('GET', '/api/v1/projects');
    assert.ok(!all.text.includes(GIT_PASSWORD));
    // not in the image either
    const { mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const dir = await mkdtemp(join(tmpdir(), 'kiln-svc-img-'));
    try {
      const copy = await skopeo(['copy', '--src-tls-verify=false', `docker://${b.tags[0]}`, `dir:${dir}`]);
      assert.equal(copy.code, 0, copy.stderr);
      for (const f of await readdir(dir)) {
        const data = await readFile(join(dir, f));
        const { gunzipSync } = await import('node:zlib');
        let text = data.toString('latin1');
        try {
          text += gunzipSync(data).toString('latin1');
        } catch {
          // not gzip
        }
        assert.ok(!text.includes(BUILD_SECRET), `secret in ${f}`);
        assert.ok(!text.includes(GIT_PASSWORD), `git password in ${f}`);
      }
    } finally {
      await cleanup(dir);
    }
    assert.ok(!svc.stderr().includes(BUILD_SECRET) && !svc.stderr().includes(GIT_PASSWORD));
  });

  test('cancel stops the RUN process and pushes nothing; rerun makes a new build', async () => {
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/sleepy/builds', { ref: 'main' });
    const id = (r.body.builds[0] as Build).id;
    await svc.waitBuild(id, (b) => b.phase === 'building' && b.stages.some((s) => s.name.includes('RUN')), 60_000);
    // the RUN process is running
    const until = Date.now() + 30_000;
    while (!(await pgrep(SLEEP))) {
      assert.ok(Date.now() < until, 'RUN never started');
      await sleep(100);
    }
    const c = await svc.api<Build>('POST', `/api/v1/builds/${id}/cancel`, {});
    assert.equal(c.status, 200, c.text);
    const b = await svc.waitBuild(id, undefined, 60_000);
    assert.equal(b.phase, 'cancelled');
    assert.equal(b.reason, 'cancelled by test-admin');
    assert.equal(await pgrep(SLEEP), false, 'the RUN process is gone');
    assert.equal(await remoteDigest(`${reg.host}/sleepy/app:main`), undefined, 'nothing pushed');
    // cancelling again: conflict
    assert.equal((await svc.api('POST', `/api/v1/builds/${id}/cancel`, {})).status, 409);
    const rr = await svc.api<Build>('POST', `/api/v1/builds/${id}/rerun`, {});
    assert.equal(rr.status, 201, rr.text);
    assert.notEqual(rr.body.id, id);
    assert.deepEqual(rr.body.trigger, { type: 'rerun', of: id, by: 'test-admin' });
    await svc.waitBuild(rr.body.id, (x) => x.phase === 'building', 60_000);
    const c2 = await svc.api('POST', `/api/v1/builds/${rr.body.id}/cancel`, {});
    assert.equal(c2.status, 200);
    assert.equal((await svc.waitBuild(rr.body.id)).phase, 'cancelled');
    // no temp dir or checkout left behind
    // no per-build checkout left behind (only the persistent workspaces)
    const left = await readdir(join(svc.dataDir, 'work'));
    assert.deepEqual(
      left.filter((e) => e !== 'ws'),
      [],
      `left: ${left.join(' ')} (builds ${id}, ${rr.body.id})`,
    );
  });

  test('bad input: one clear error, the service keeps running, nothing half-written', async () => {
    const before = await svc.api<unknown[]>('GET', '/api/v1/projects');
    // malformed YAML
    const bad = await svc.api<{ error: { message: string } }>(
      'POST',
      '/api/v1/projects/apply',
      'projects:\n  - name: x\n   bad: [',
      undefined,
      'application/yaml',
    );
    assert.equal(bad.status, 400, bad.text);
    assert.ok(!bad.text.includes('    at '), 'no stack trace');
    // unknown key, name outside the prefix, a Dockerfile outside the repository: each named by path
    const doc = `projects:
  - name: other
    repository: ${git.repoUrl('shop')}
    registry: ${reg.host}/other
    images:
      - name: ../web
        dockerfle: x
      - name: ok
        dockerfile: ../../etc/passwd
`;
    const r = await svc.api<{ error: { message: string } }>(
      'POST',
      '/api/v1/projects/apply',
      doc,
      undefined,
      'application/yaml',
    );
    assert.equal(r.status, 400, r.text);
    assert.match(r.body.error.message, /projects\[0\]\.images\[0\]\.name/);
    assert.match(r.body.error.message, /projects\[0\]\.images\[0\]\.dockerfle/);
    assert.match(r.body.error.message, /projects\[0\]\.images\[1\]\.dockerfile/);
    // a prefix nested in another project's
    const nested = await svc.api<{ error: { message: string } }>('PUT', '/api/v1/projects/nested', {
      repository: git.repoUrl('shop'),
      registry: `${reg.host}/shop/web`,
      images: [{ name: 'x' }],
    });
    assert.equal(nested.status, 400, nested.text);
    assert.match(nested.body.error.message, /shop/);
    // file:// is not allowed by this service's config
    const file = await svc.api('PUT', '/api/v1/projects/local', {
      repository: `file://${git.repoPath('shop')}`,
      registry: `${reg.host}/local`,
      images: [{ name: 'x' }],
    });
    assert.equal(file.status, 400, file.text);
    // nothing was stored
    assert.deepEqual((await svc.api<unknown[]>('GET', '/api/v1/projects')).body, before.body);
    // a ref that does not exist
    const ref = await svc.api<{ error: { message: string } }>('POST', '/api/v1/projects/shop/builds', {
      ref: 'no-such-branch',
    });
    assert.equal(ref.status, 400, ref.text);
    assert.match(ref.body.error.message, /no-such-branch/);
    assert.ok(!ref.text.includes(GIT_PASSWORD));
    // an unreachable repository
    const put = await svc.api('PUT', '/api/v1/projects/gone', {
      repository: 'http://127.0.0.1:9/nothing.git',
      registry: `${reg.host}/gone`,
      images: [{ name: 'x' }],
    });
    assert.ok(put.status === 201 || put.status === 200, put.text);
    const gone = await svc.api<{ error: { message: string } }>('POST', '/api/v1/projects/gone/builds', {
      ref: 'main',
    });
    assert.ok(gone.status >= 400 && gone.status < 600 && gone.status !== 500, gone.text);
    assert.match(gone.body.error.message, /127\.0\.0\.1:9/);
    assert.equal((await svc.api('DELETE', '/api/v1/projects/gone')).status, 204);
    // unknown image, unknown body key
    assert.equal(
      (await svc.api('POST', '/api/v1/projects/shop/builds', { ref: 'main', images: ['nope'] })).status,
      400,
    );
    assert.equal((await svc.api('POST', '/api/v1/projects/shop/builds', { ref: 'main', extra: 1 })).status, 400);
    // the service still answers
    assert.equal((await svc.api('GET', '/healthz', undefined, null)).status, 200);
  });

  test('a Dockerfile path that is missing at the commit fails the build with one line', async () => {
    const put = await svc.api('PUT', '/api/v1/projects/missing', {
      repository: git.repoUrl('shop'),
      gitCredentials: { username: 'ci', passwordEnv: 'TEST_GIT_PASSWORD' },
      registry: `${reg.host}/missing`,
      insecureRegistry: true,
      images: [{ name: 'x', dockerfile: 'nope/Dockerfile' }],
    });
    assert.ok(put.status === 201, put.text);
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/missing/builds', { ref: 'main' });
    const b = await svc.waitBuild((r.body.builds[0] as Build).id);
    assert.equal(b.phase, 'failed');
    assert.match(b.reason ?? '', /^nope\/Dockerfile not found at [0-9a-f]{7}/);
    assert.equal((await svc.api('DELETE', '/api/v1/projects/missing')).status, 204);
  });
});

async function pgrep(pattern: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile('pgrep', ['-f', pattern], (err) => resolve(!err));
  });
}
