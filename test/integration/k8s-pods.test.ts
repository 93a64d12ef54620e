/**
 * Build pods that really run: `kiln serve --executor kubernetes` against kube-apiserver (test/helpers/kube.ts)
 * with a real node — kubelet, kube-scheduler, Debian's containerd and runc, a CNI bridge (test/helpers/kube-node.ts).
 * kiln's own image (deploy/image, built by kiln from this checkout) is pulled by containerd from a plain-HTTP
 * registry; the build namespace enforces PSS `restricted`, so the pod runs kiln's `restricted` isolation level as
 * uid 1000 with no capabilities and the RuntimeDefault seccomp profile.
 *
 * A project's build becomes a pod that fetches the commit from a git http-backend and pushes to an htpasswd
 * registry with the credentials the kubelet mounts from the dockerconfigjson Secret; the test checks the digest in
 * the registry (skopeo), the pod's output in the service's log store, the ImageBuildRun, and that the pod and its
 * containers are gone after the grace period. The next build of the project, in a fresh pod with an empty
 * KILN_HOME, imports the registry cache the first one exported: its RUN step is CACHED, not run again.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { goTools } from '../helpers/go-tools.js';
import { BUILD_NS as NS, startPodCluster, type PodCluster } from '../helpers/kube-pods.js';
import type { ServiceProcess } from '../helpers/service.js';
import { CORE, type KubeObject } from '../../src/k8s/client.js';
import { objectsOf } from '../../src/k8s/executor.js';
import { CACHE_TAG, RUNS } from '../../src/k8s/pod.js';
import type { ImageBuildRun } from '../../src/k8s/runs.js';
import type { Build } from '../../src/service/model.js';

// kube-apiserver, kubelet and kube-scheduler are built (or waited for: scripts/setup.sh builds them in the
// background) before any test timeout starts.
goTools('kube', 'kubelet');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

function skopeoDigest(ref: string, creds: string): string {
  const r = spawnSync(
    'skopeo',
    ['inspect', '--tls-verify=false', '--creds', creds, '--format', '{{.Digest}}', `docker://${ref}`],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

describe('build pods on a real node (kubelet, containerd, runc)', { timeout: 1_800_000 }, () => {
  let c: PodCluster;
  let svc: ServiceProcess;
  let PASSWORD: string;

  before(async () => {
    c = await startPodCluster();
    PASSWORD = c.password;
    await c.git.createRepo('shop', {
      Dockerfile:
        `FROM ${c.base}\n` +
        'RUN echo "compiling shop in $(cat /proc/1/cgroup | grep -c .) cgroups" && echo built > /built\n' +
        'COPY app.txt /srv/app.txt\n',
      'app.txt': 'v1\n',
    });
    svc = await c.serve(`projects:
  - name: shop
    repository: ${c.git.repoUrl('shop')}
    registry: ${c.reg.host}/shop
    registryCredentials: {username: kiln, passwordEnv: TEST_REG_PASSWORD}
    insecureRegistry: true
    images:
      - name: app
        tags: ["{{branch}}"]
`);
  });

  after(async () => {
    await c?.stop();
  });

  async function buildOnce(): Promise<{ build: Build; log: string; pod: string }> {
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/shop/builds', { ref: 'main' });
    assert.equal(r.status, 201, r.text);
    const id = r.body.builds[0]?.id ?? '';
    const build = await svc.waitBuild(id, undefined, 900_000);
    const log = (await svc.api('GET', `/api/v1/builds/${id}/log`)).text;
    assert.equal(build.phase, 'succeeded', `${JSON.stringify(build)}\n${log}\n${c.diag()}`);
    return { build, log, pod: objectsOf(id).pod };
  }

  test('a build pod fetches, builds and pushes; its log reaches the service; the pod goes afterwards', async () => {
    const { build, log, pod } = await buildOnce();
    // the digest the service recorded is what the registry serves
    const pushed = `${c.reg.host}/shop/app:main`;
    assert.equal(build.digest, skopeoDigest(pushed, `kiln:${PASSWORD}`));
    // the RUN step's output, printed in the pod, is in the service's log store
    assert.match(log, /compiling shop in \d+ cgroups/, log);
    assert.match(log, new RegExp(`build pod ${NS}/${pod}`));
    assert.match(log, /\[pod\] fetch /);
    assert.ok(!log.includes(PASSWORD), 'no credential in the log');
    // the registry cache for the next pod
    assert.match(skopeoDigest(`${c.reg.host}/shop/app:${CACHE_TAG}`, `kiln:${PASSWORD}`), /^sha256:/);
    const run = await c.admin.get<ImageBuildRun>({ ...RUNS, namespace: NS, name: objectsOf(build.id).run });
    assert.equal(run.status?.phase, 'Succeeded');
    assert.equal(run.status?.podName, pod);
    // the pod, its Secret and its containers are gone after the grace period (1 s)
    await until('the pod deleted', async () =>
      (await c.admin.getOrUndefined<KubeObject>({ ...CORE, resource: 'pods', namespace: NS, name: pod }))
        ? undefined
        : true,
    );
    await until(
      'its containers removed by the kubelet',
      async () => c.node.containersOf(pod).length === 0 || undefined,
    );
    assert.equal(
      await c.admin.getOrUndefined({
        ...CORE,
        resource: 'secrets',
        namespace: NS,
        name: objectsOf(build.id).registrySecret,
      }),
      undefined,
    );
  });

  test('the next build, in a fresh pod, reuses the registry cache: the RUN step is not run again', async () => {
    await c.git.commit('shop', { 'app.txt': 'v2\n' }, 'v2');
    const { build, log, pod } = await buildOnce();
    // the step is listed (with its command) and CACHED; its output is not there
    assert.match(log, /RUN echo "compiling shop in .*\n#\d+ CACHED\n/, log);
    assert.ok(!/compiling shop in \d+ cgroups/.test(log), `the RUN step ran again:\n${log}`);
    assert.match(log, /COPY app\.txt .*\n#\d+ [0-9.]+ cache miss: file changed: app\.txt/);
    assert.equal(build.digest, skopeoDigest(`${c.reg.host}/shop/app:main`, `kiln:${PASSWORD}`));
    assert.ok(pod.length > 0);
  });
});
