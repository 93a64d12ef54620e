/**
 * The base-image change trigger chooses rebase or rebuild: `kiln serve` as a process, a real git server, a real
 * registry and a base pushed twice. Two images on the same base — one whose layers above the base are all
 * `COPY --link` (recorded rebasable with its build), one with a RUN (not rebasable). When the base moves, the first
 * is rebased (no step runs, no checkout; its app layer keeps its digest and is not uploaded again — the registry's
 * log shows only the new config uploaded), the second is rebuilt; both answer under `docker run` on the new base.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { run } from '../differential/exec.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { cleanup, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import { push } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import type { Build } from '../../src/service/model.js';

const isRoot = process.getuid?.() === 0;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Manifest {
  config: { digest: string };
  layers: { digest: string }[];
  annotations?: Record<string, string>;
}

async function manifestOf(ref: string): Promise<Manifest> {
  const r = await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${ref}`]);
  return JSON.parse(r.stdout) as Manifest;
}

describe('base change: rebase the rebasable image, rebuild the other', { skip: isRoot ? false : 'needs root' }, () => {
  let registry: TestRegistry;
  let git: GitServer;
  let dockerd: Dockerd;
  let home: string;
  let svc: ServiceProcess;
  const reg = { insecureRegistries: [] as string[] };
  const R = (): string => registry.host;

  async function pushBase(marker: string): Promise<string[]> {
    const img = await makeBusyboxImage({ extraFiles: [{ path: 'etc/base-version', content: marker + '\n' }] });
    await push(img, `${R()}/base/os:1`, reg);
    return (await img.manifest()).layers.map((l) => l.digest);
  }

  before(async () => {
    registry = await startRegistry();
    reg.insecureRegistries = [R()];
    git = await startGitServer();
    home = await makeKilnHome();
    dockerd = await startDockerd({ insecureRegistries: [R()] });
    await pushBase('v1');
    await git.createRepo('app', {
      'linked/Dockerfile': `FROM ${R()}/base/os:1\nCOPY --link app.sh /app/\nCMD ["/app/app.sh"]\n`,
      'linked/app.sh': { content: '#!/bin/sh\necho "linked on $(cat /etc/base-version)"\n', executable: true },
      'ran/Dockerfile': `FROM ${R()}/base/os:1\nRUN echo "ran built on $(cat /etc/base-version)" > /built\nCMD ["cat", "/built"]\n`,
    });
    svc = await startService({
      kilnHome: home,
      config: `insecureRegistries: ["${R()}"]
baseWatch: {intervalSeconds: 1, concurrency: 2}
projects:
  - name: app
    repository: ${git.repoUrl('app')}
    registry: ${R()}/app
    images:
      - {name: linked, context: linked, dockerfile: linked/Dockerfile, tags: ["{{branch}}", "b{{buildNumber}}"]}
      - {name: ran, context: ran, dockerfile: ran/Dockerfile, tags: ["{{branch}}"]}
`,
    });
  });

  after(async () => {
    await svc?.stop('SIGTERM');
    await closeTransports(reg);
    await dockerd?.stop().catch(() => undefined);
    await git?.stop();
    await registry?.stop();
    if (svc) await cleanup(svc.dataDir);
    if (home) await cleanup(home);
  });

  test('the COPY --link image is rebased (nothing run, app layer not uploaded), the RUN image rebuilt', async () => {
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/app/builds', { ref: 'main' });
    assert.equal(r.status, 201, r.text);
    const first = new Map<string, Build>();
    for (const b of r.body.builds) {
      const done = await svc.waitBuild(b.id);
      assert.equal(done.phase, 'succeeded', `${b.image}: ${done.reason}`);
      first.set(done.image, (await svc.api<Build>('GET', `/api/v1/builds/${b.id}`)).body);
    }
    const linked = first.get('linked') as Build;
    const ran = first.get('ran') as Build;
    // the verdict is recorded with each build
    assert.equal(linked.rebase?.rebasable, true, JSON.stringify(linked.rebase));
    assert.equal(linked.rebase?.base, `${R()}/base/os:1`);
    assert.equal(ran.rebase?.rebasable, false);
    assert.match(ran.rebase?.blocker?.instruction ?? '', /^RUN /);
    const oldLinked = await manifestOf(linked.tags[0] as string);

    const logFrom = registry.log().length;
    const newBase = await pushBase('v2');
    const changed = new Map<string, Build>();
    const until = Date.now() + 120_000;
    while (changed.size < 2 || [...changed.values()].some((b) => !['succeeded', 'failed'].includes(b.phase))) {
      assert.ok(Date.now() < until, `base-change builds: ${JSON.stringify([...changed.values()])}`);
      const list = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=app&limit=100');
      for (const b of list.body.builds) if (b.trigger.type === 'base-change') changed.set(b.image, b);
      await sleep(200);
    }
    await sleep(2500); // more poll intervals: still one build each
    const all = (await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=app&limit=100')).body.builds;
    assert.deepEqual(
      all
        .filter((b) => b.trigger.type === 'base-change')
        .map((b) => b.image)
        .sort(),
      ['linked', 'ran'],
    );

    // rebased: a build record saying so, no step run, the original tags, the upper layer kept by digest
    const rb = (await svc.api<Build>('GET', `/api/v1/builds/${changed.get('linked')?.id}`)).body;
    assert.equal(rb.phase, 'succeeded', rb.reason ?? '');
    assert.equal(rb.trigger.action, 'rebase');
    assert.equal(rb.trigger.of, linked.id);
    assert.match(rb.trigger.reason ?? '', /^base \S+base\/os:1 sha256:[0-9a-f]{12} → sha256:[0-9a-f]{12}$/);
    assert.deepEqual(rb.tags, linked.tags, 'the tags the original pushed (not a new build number)');
    assert.equal(rb.commit, linked.commit);
    assert.deepEqual(
      rb.stages.map((s) => [s.kind, s.status]),
      [['rebase', 'done']],
    );
    const log = (await svc.api<string>('GET', `/api/v1/builds/${rb.id}/log`)).text;
    assert.doesNotMatch(log, /RUN|COPY|fetch/, 'no checkout, no step');
    assert.match(log, /1 base layer\(s\) → 1 of \S+base\/os:1@sha256:[0-9a-f]{64}, 1 layer\(s\) kept/);
    const rebased = await manifestOf(rb.tags[0] as string);
    assert.equal(`sha256:${rb.digest?.slice(7)}`, rb.digest);
    assert.deepEqual(
      rebased.layers.map((l) => l.digest),
      [...newBase, ...oldLinked.layers.slice(1).map((l) => l.digest)],
    );
    for (const t of rb.tags) assert.deepEqual((await manifestOf(t)).layers, rebased.layers, `${t} moved too`);
    assert.equal(rebased.annotations?.['org.opencontainers.image.base.name'], `${R()}/base/os:1`);
    assert.equal(rb.rebase?.rebasable, true, 'still rebasable for the next base change');
    // the registry saw no upload of the app layer: only the new config was uploaded to the app's repository
    const since = registry.log().slice(logFrom);
    const uploads = [...since.matchAll(/PUT \/v2\/app\/linked\/blobs\/uploads\/\S*digest=sha256%3A([0-9a-f]{64})/g)];
    assert.deepEqual(
      uploads.map((m) => `sha256:${m[1]}`),
      [rebased.config.digest],
      'only the config uploaded',
    );

    // rebuilt: the RUN ran again on the new base
    const rr = (await svc.api<Build>('GET', `/api/v1/builds/${changed.get('ran')?.id}`)).body;
    assert.equal(rr.phase, 'succeeded', rr.reason ?? '');
    assert.equal(rr.trigger.action, 'rebuild');
    assert.ok(rr.stages.some((s) => s.kind === 'fetch'));
    assert.notEqual(rr.digest, ran.digest);
    assert.equal((await manifestOf(rr.tags[0] as string)).layers[0]?.digest, newBase[0]);

    // both run on the new base
    assert.equal((await dockerd.runImage(rb.tags[0] as string)).trim(), 'linked on v2');
    assert.equal((await dockerd.runImage(rr.tags[0] as string)).trim(), 'ran built on v2');
  });
});
