/**
 * The build service honours an image's `strategy:` and `backend:`: a project whose images are an S2I build (a
 * builder image in the service's local store, the source from git, incremental, a dependency cache dir) and a
 * Dockerfile built by buildah, each pushed by a real worker to a real registry and run with their labels checked.
 * The S2I image's previous build is not recorded as a base to watch.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, runKiln, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { cleanup, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import type { Build } from '../../src/service/model.js';

const isRoot = process.getuid?.() === 0;

function skopeo(args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile('skopeo', args, { maxBuffer: 64 << 20 }, (err, stdout) => resolve({ code: err ? 1 : 0, stdout }));
  });
}

describe('kiln serve: strategy s2i and backend buildah', { skip: isRoot ? false : 'needs root (buildah)' }, () => {
  let reg: TestRegistry;
  let git: GitServer;
  let home: string;
  let svc: ServiceProcess;
  let work: string;

  before(async () => {
    reg = await startRegistry();
    git = await startGitServer({ username: 'ci', password: 'pw' });
    home = await makeKilnHome();
    work = await mkdtemp(join(tmpdir(), 'kiln-svc-strat-'));
    // the builder image, in the service's local store
    const b = join(work, 'builder');
    await mkdir(join(b, 's2i'), { recursive: true });
    await writeFile(
      join(b, 's2i', 'assemble'),
      '#!/bin/sh\nset -e\ncp -R /tmp/src/. /opt/app/\n' +
        'n=$(cat /tmp/artifacts/count 2>/dev/null || echo 0); echo $((n+1)) > /opt/app/count\n' +
        'echo cached >> /opt/cache/deps; echo "count=$(cat /opt/app/count) deps=$(wc -l < /opt/cache/deps)"\n',
    );
    await writeFile(join(b, 's2i', 'run'), '#!/bin/sh\ncat /opt/app/hello\n');
    await writeFile(join(b, 's2i', 'save-artifacts'), '#!/bin/sh\ncd /opt/app && tar -cf - count\n');
    for (const f of ['assemble', 'run', 'save-artifacts']) await chmod(join(b, 's2i', f), 0o755);
    await writeFile(
      join(b, 'Dockerfile'),
      'FROM localhost/busybox:latest\nRUN mkdir -p /opt/app /opt/cache && chown 1001:0 /opt/app /opt/cache\n' +
        'COPY s2i/ /usr/libexec/s2i/\nLABEL io.openshift.s2i.scripts-url=image:///usr/libexec/s2i\nUSER 1001\n',
    );
    const built = await runKiln(['build', '-t', 'localhost/builder:1', b], { KILN_HOME: home });
    assert.equal(built.code, 0, built.stderr);
    await git.createRepo('apps', {
      'web/hello': 'hello from s2i\n',
      'web/.s2i/environment': 'MODE=svc\n',
      'tool/Dockerfile': 'FROM ' + reg.host + '/base:1\nRUN echo tool > /tool\n',
    });
    // buildah's base comes from the registry (its storage has no kiln store)
    const base = join(work, 'base');
    await mkdir(base);
    await writeFile(join(base, 'Dockerfile'), 'FROM localhost/busybox:latest\n');
    const pushed = await runKiln(
      ['build', '--push', '--insecure-registry', reg.host, '-t', `${reg.host}/base:1`, base],
      {
        KILN_HOME: home,
      },
    );
    assert.equal(pushed.code, 0, pushed.stderr);
    const config = `insecureRegistries: ["${reg.host}"]
projects:
  - name: apps
    repository: ${git.repoUrl('apps')}
    gitCredentials: {username: ci, passwordEnv: TEST_GIT_PASSWORD}
    registry: ${reg.host}/apps
    insecureRegistry: true
    images:
      - name: web
        context: web
        strategy: s2i
        s2i: {builderImage: "localhost/builder:1", incremental: true, cacheDirs: [/opt/cache], env: {EXTRA: "1"}}
        tags: ["{{branch}}"]
      - name: tool
        context: tool
        backend: buildah
        tags: ["{{branch}}"]
`;
    svc = await startService({
      config,
      kilnHome: home,
      env: {
        TEST_GIT_PASSWORD: 'pw',
        KILN_BUILDAH_ISOLATION: 'chroot',
        CONTAINERS_STORAGE_CONF: join(work, 'storage.conf'),
      },
    });
    await writeFile(
      join(work, 'storage.conf'),
      `[storage]\ndriver = "vfs"\nrunroot = "${work}/buildah-run"\ngraphroot = "${work}/buildah-root"\n`,
    );
  });

  after(async () => {
    await svc?.stop('SIGTERM');
    await git?.stop();
    await reg?.stop();
    if (svc) await cleanup(svc.dataDir);
    if (home) await cleanup(home);
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('s2i and buildah images build, push and carry what their strategy says', async () => {
    const start = async (): Promise<Build[]> => {
      const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/apps/builds', { ref: 'main' });
      assert.equal(r.status, 201, r.text);
      return Promise.all(r.body.builds.map((b) => svc.waitBuild(b.id, undefined, 300_000)));
    };
    const first = await start();
    for (const b of first) assert.equal(b.phase, 'succeeded', `${b.image}: ${b.reason}`);
    const web = first.find((b) => b.image === 'web') as Build;
    const cfg = await skopeo(['inspect', '--tls-verify=false', '--config', `docker://${reg.host}/apps/web:main`]);
    const c = JSON.parse(cfg.stdout) as { config: { Labels: Record<string, string>; Env: string[]; Cmd: string[] } };
    assert.equal(c.config.Labels['io.openshift.s2i.build.image'], 'localhost/builder:1');
    assert.ok(c.config.Env.includes('MODE=svc') && c.config.Env.includes('EXTRA=1'));
    assert.deepEqual(c.config.Cmd, ['/bin/sh', '-c', '/usr/libexec/s2i/run']);
    assert.ok(!(web.bases ?? []).some((x) => x.name.includes('/apps/web')), 'its own image is not a base');
    const tool = first.find((b) => b.image === 'tool') as Build;
    const log = await svc.api('GET', `/api/v1/builds/${tool.id}/log`);
    assert.match(log.text, /STEP \d+\/\d+: RUN echo tool/, `buildah built it:\n${log.text}`);
    const digest = await skopeo([
      'inspect',
      '--tls-verify=false',
      '--format',
      '{{.Digest}}',
      `docker://${tool.tags[0]}`,
    ]);
    assert.equal(tool.digest, digest.stdout.trim());
    // again: the artifacts come back (count 2) and the cache dir persisted (deps 2)
    const second = await start();
    for (const b of second) assert.equal(b.phase, 'succeeded', `${b.image}: ${b.reason}`);
    const webLog = await svc.api('GET', `/api/v1/builds/${(second.find((b) => b.image === 'web') as Build).id}/log`);
    assert.match(webLog.text, /count=2 deps=2/, 'artifacts restored, cache dir persisted');
    const firstLog = await svc.api('GET', `/api/v1/builds/${web.id}/log`);
    assert.match(firstLog.text, /count=1 deps=1/);
  });
});
