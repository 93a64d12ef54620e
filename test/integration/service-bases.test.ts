/**
 * The base-image change trigger, end to end: `kiln serve` as a process, a real git server, Debian's
 * `docker-registry` twice — one that sends its push notifications to the service (`POST /hooks/registry`), one
 * without (polling finds the change) — and base images pushed to them. A base push rebuilds every dependent image
 * exactly once, at the commit it was built from, with the same tags, and the new image carries the new base's layer.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { cleanup, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import { push } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import type { Build } from '../../src/service/model.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function skopeoLayers(ref: string): Promise<string[]> {
  return new Promise((resolve, reject) =>
    execFile('skopeo', ['inspect', '--tls-verify=false', `docker://${ref}`], (err, stdout, stderr) =>
      err ? reject(new Error(stderr)) : resolve((JSON.parse(stdout) as { Layers: string[] }).Layers),
    ),
  );
}

describe('base-image change trigger (registry notifications and polling)', () => {
  let notifying: TestRegistry;
  let quiet: TestRegistry;
  let git: GitServer;
  let home: string;
  let svc: ServiceProcess;
  const reg = { insecureRegistries: [] as string[] };

  async function pushBase(registry: TestRegistry, name: string, marker: string): Promise<string[]> {
    const img = await makeBusyboxImage({ extraFiles: [{ path: 'etc/base-version', content: marker + '\n' }] });
    await push(img, `${registry.host}/${name}`, reg);
    return (await img.manifest()).layers.map((l) => l.digest);
  }

  before(async () => {
    quiet = await startRegistry();
    git = await startGitServer();
    home = await makeKilnHome();
    // the service must exist before the notifying registry (which needs its URL): start with a placeholder config
    // that names the notifying registry's host, known only after it started, so start the registry first with a
    // hook URL on a port reserved by the service start below
    const svcPort = await freePort();
    notifying = await startRegistry({
      notifications: {
        url: `http://127.0.0.1:${svcPort}/hooks/registry`,
        headers: { Authorization: 'Bearer hook-token-123' },
      },
    });
    reg.insecureRegistries = [notifying.host, quiet.host];
    await pushBase(notifying, 'base/alpine-ish:1', 'v1');
    await pushBase(quiet, 'base/polled:1', 'p1');
    await git.createRepo('app', {
      'web/Dockerfile': `FROM ${notifying.host}/base/alpine-ish:1 AS build\nRUN echo web > /w\nFROM ${notifying.host}/base/alpine-ish:1\nCOPY --from=build /w /w\n`,
      'api/Dockerfile': `FROM ${notifying.host}/base/alpine-ish:1\nRUN echo api > /a\n`,
      'job/Dockerfile': `FROM ${quiet.host}/base/polled:1\nRUN echo job > /j\n`,
      'solo/Dockerfile': 'FROM localhost/busybox:latest\nRUN echo solo > /s\n',
    });
    svc = await startService({
      kilnHome: home,
      listen: `127.0.0.1:${svcPort}`,
      env: { TEST_REGISTRY_HOOK: 'Bearer hook-token-123' },
      config: `insecureRegistries: ["${notifying.host}", "${quiet.host}"]
baseWatch: {intervalSeconds: 1, concurrency: 2}
registryHook: {tokenEnv: TEST_REGISTRY_HOOK}
projects:
  - name: app
    repository: ${git.repoUrl('app')}
    registry: ${notifying.host}/app
    images:
      - {name: web, dockerfile: web/Dockerfile, tags: ["{{branch}}", "b{{buildNumber}}"]}
      - {name: api, dockerfile: api/Dockerfile, tags: ["{{branch}}"]}
      - {name: job, dockerfile: job/Dockerfile, tags: ["{{branch}}"]}
      - {name: solo, dockerfile: solo/Dockerfile, tags: ["{{branch}}"]}
`,
    });
  });

  after(async () => {
    await svc?.stop('SIGTERM');
    await closeTransports(reg);
    await git?.stop();
    await notifying?.stop();
    await quiet?.stop();
    if (svc) await cleanup(svc.dataDir);
    if (home) await cleanup(home);
  });

  test('a base push rebuilds each dependent once, at its commit, with its tags and the new base layer', async () => {
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/app/builds', { ref: 'main' });
    assert.equal(r.status, 201, r.text);
    const first = await Promise.all(r.body.builds.map((b) => svc.waitBuild(b.id)));
    for (const b of first) assert.equal(b.phase, 'succeeded', `${b.image}: ${b.reason}`);
    const byImage = new Map(first.map((b) => [b.image, b]));
    const bases = await svc.api<{ bases: { name: string; dependents: { image: string }[] }[] }>('GET', '/api/v1/bases');
    assert.equal(bases.status, 200, bases.text);
    const names = bases.body.bases.map((b) => b.name).sort();
    assert.deepEqual(names, [`${notifying.host}/base/alpine-ish:1`, `${quiet.host}/base/polled:1`].sort());
    // a new commit after the first build: the rebuild must use the commit the image was built from
    await git.commit('app', { 'README.md': 'later\n' }, 'later change');

    // an unauthenticated notification is refused
    const bad = await svc.api('POST', '/hooks/registry', { events: [] }, null);
    assert.equal(bad.status, 401);
    // a well-formed notification names the bases it concerns (they are looked up again, not trusted)
    const event = {
      events: [
        {
          action: 'push',
          target: { repository: 'base/alpine-ish', tag: '1', digest: 'sha256:' + '0'.repeat(64) },
          request: { host: notifying.host },
        },
        { action: 'pull', target: { repository: 'base/polled' }, request: { host: quiet.host } },
      ],
    };
    const ok = await fetch(`${svc.url}/hooks/registry`, {
      method: 'POST',
      headers: {
        authorization: 'Bearer hook-token-123',
        'content-type': 'application/vnd.docker.distribution.events.v1+json',
      },
      body: JSON.stringify(event),
    });
    assert.equal(ok.status, 202);
    assert.deepEqual(await ok.json(), { checking: [`${notifying.host}/base/alpine-ish:1`] });
    // the forged digest changed nothing: no rebuild was queued
    await sleep(300);
    const none = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=app');
    assert.ok(!none.body.builds.some((b) => b.trigger.type === 'base-change'));

    const newLayers = await pushBase(notifying, 'base/alpine-ish:1', 'v2');
    const polledLayers = await pushBase(quiet, 'base/polled:1', 'p2');
    const rebuilt = new Map<string, Build>();
    const until = Date.now() + 120_000;
    while (rebuilt.size < 3 || [...rebuilt.values()].some((b) => !['succeeded', 'failed'].includes(b.phase))) {
      assert.ok(
        Date.now() < until,
        `rebuilds: ${JSON.stringify([...rebuilt.values()].map((b) => [b.image, b.phase]))}`,
      );
      const list = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=app&limit=100');
      for (const b of list.body.builds) if (b.trigger.type === 'base-change') rebuilt.set(b.id, b);
      await sleep(200);
    }
    // let a few more poll intervals and notifications pass: still one rebuild per dependent
    await sleep(3500);
    const all = (await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=app&limit=100')).body.builds;
    const changes = all.filter((b) => b.trigger.type === 'base-change');
    assert.deepEqual(changes.map((b) => b.image).sort(), ['api', 'job', 'web'], 'each dependent rebuilt exactly once');
    for (const c of changes) {
      const orig = byImage.get(c.image) as Build;
      assert.equal(c.phase, 'succeeded', `${c.image}: ${c.reason}`);
      assert.equal(c.commit, orig.commit, 'rebuilt at the commit it was built from');
      assert.deepEqual(c.tags, orig.tags, 'the same tags as the build it repeats');
      assert.equal(c.trigger.of, orig.id);
      assert.match(c.trigger.reason ?? '', /^base \S+ sha256:[0-9a-f]{12} → sha256:[0-9a-f]{12}$/);
      assert.notEqual(c.digest, orig.digest);
      const layers = await skopeoLayers(c.tags[0] as string);
      const want = c.image === 'job' ? polledLayers : newLayers;
      assert.equal(layers[0], want[0], `${c.image} is built on the new base`);
    }
    assert.ok(!changes.some((b) => b.image === 'solo'), 'a local-only base is not watched');
  });
});

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}
