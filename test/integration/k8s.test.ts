/**
 * kiln on Kubernetes against a REAL API server (test/helpers/kube.ts: kube-apiserver built from k8s.io/kubernetes
 * with Debian's etcd-server; RBAC, PodSecurity admission, CRDs, status subresource, watches). No kubelet runs:
 * pods are admitted and stored but never scheduled, so the tests play the kubelet by writing pod status through
 * the status subresource — the same writes a kubelet makes (Running, terminated with OOMKilled, a termination
 * message with the result).
 *
 * Covered: the CRDs of deploy/base/crds install and the server's schema refuses bad specs; the controller turns an
 * ImageBuildRun into the expected pod (owner, finalizer, labels, deadline, secrets mounted), follows pod status
 * (Running, OOMKilled, success with digest), re-attaches after a restart, cleans up on delete, fails clearly on a
 * missing Secret; a namespace with `pod-security.kubernetes.io/enforce=restricted` admits kiln's restricted pod
 * and refuses a privileged one; the executor (the service's BuildRunner port) runs a build as a pod with its
 * registry credentials only in a dockerconfigjson Secret, mirrors it as an ImageBuildRun, cancels by deleting the
 * pod, re-attaches to an existing pod, and fails with one line naming the object and permission when RBAC, the
 * namespace or the API server is missing; a restarted BuildService (real git server, SQLite store) adopts its
 * running build pods — the test plays the kubelet's log endpoint too: a Node whose kubelet address is an HTTPS
 * server of the test, so the API server proxies pods/log to it as to a real kubelet — and copies the log on from
 * where it ended (each byte once, a failing log read retried), fails a build whose pod vanished, deletes pods of
 * no running build; redeploy patches a Deployment to the digest and creates its pull Secret.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installKilnCrds, startKubeServer, type KubeServer } from '../helpers/kube.js';
import { goTools } from '../helpers/go-tools.js';
import { CORE, KubeClient, type KubeObject, loadKubeConfig } from '../../src/k8s/client.js';
import { BuildRunController, podNameOf } from '../../src/k8s/controller.js';
import { KubernetesBuildRunner, objectsOf } from '../../src/k8s/executor.js';
import { KubeRedeployer } from '../../src/k8s/redeploy.js';
import { FINALIZER, RUNS, IMAGEBUILDS, buildPod } from '../../src/k8s/pod.js';
import type { ImageBuildRun } from '../../src/k8s/runs.js';
import type { WorkerJob } from '../../src/service/runner/protocol.js';
import type { RunOutcome } from '../../src/service/runner/local.js';
import { RedeployDelivery, TRIGGER_ANNOTATION } from '../../src/service/delivery/redeploy.js';
import { isKilnError } from '../../src/errors.js';
import { createServer as createHttpsServer } from 'node:https';
import type { ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { makeServerCerts } from '../helpers/certs.js';
import { startGitServer } from '../helpers/git-server.js';
import { BuildService } from '../../src/service/service.js';
import { parseConfigText } from '../../src/service/config/parse.js';

// kube-apiserver is built (or waited for: scripts/setup.sh may still be building it in the background) before
// any test timeout starts.
goTools('kube');

const NS = 'kiln-builds';
const IMAGE = 'registry.example.com/kiln/kiln:test';
const PASSWORD = 'reg-pw-Zq81xK';
const DIGEST = 'sha256:' + 'ab'.repeat(32);
const GIT_TOKEN = 'git-Tok3n-55xR';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

describe('kiln on a real Kubernetes API server', { timeout: 600_000 }, () => {
  let kube: KubeServer;
  let admin: KubeClient;
  let tmp: string;

  const podRef = (name: string, ns = NS) => ({ ...CORE, resource: 'pods', namespace: ns, name });
  const runRef = (name: string, ns = NS) => ({ ...RUNS, namespace: ns, name });
  /** Play the kubelet: write the pod's status. */
  async function setPodStatus(name: string, status: Record<string, unknown>, ns = NS): Promise<void> {
    await admin.patch({ ...podRef(name, ns), sub: 'status' }, { status });
  }
  const running = {
    phase: 'Running',
    containerStatuses: [
      {
        name: 'build',
        image: IMAGE,
        imageID: '',
        ready: true,
        restartCount: 0,
        state: { running: { startedAt: new Date().toISOString() } },
      },
    ],
  };
  const terminated = (t: Record<string, unknown>, phase: string) => ({
    phase,
    containerStatuses: [
      {
        name: 'build',
        image: IMAGE,
        imageID: '',
        ready: false,
        restartCount: 0,
        state: { terminated: { startedAt: new Date().toISOString(), finishedAt: new Date().toISOString(), ...t } },
      },
    ],
  });
  const success = terminated(
    {
      exitCode: 0,
      reason: 'Completed',
      message: JSON.stringify({
        ok: true,
        digest: DIGEST,
        configDigest: DIGEST,
        pushed: ['127.0.0.1:5000/shop/web:main'],
      }),
    },
    'Succeeded',
  );

  before(async () => {
    kube = await startKubeServer({ users: { 'kiln-limited': [] } });
    admin = new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath }));
    tmp = mkdtempSync(join(tmpdir(), 'kiln-k8s-'));
    // the build namespace enforces PSS restricted, as deploy/overlays/kubernetes does
    await admin.create(
      { ...CORE, resource: 'namespaces' },
      {
        metadata: {
          name: NS,
          labels: {
            'pod-security.kubernetes.io/enforce': 'restricted',
            'pod-security.kubernetes.io/enforce-version': 'latest',
          },
        },
      },
    );
    await admin.create({ ...CORE, resource: 'serviceaccounts', namespace: NS }, { metadata: { name: 'kiln-build' } });
    // kiln's CRDs, from the files deploy/ ships
    await installKilnCrds(admin, NS);
  });

  after(async () => {
    await admin?.close().catch(() => undefined); // (a test may have closed it already)
    await kube?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test('the CRDs install and the server refuses bad specs (schema and CEL rules)', async () => {
    const ok = await admin.create<ImageBuildRun>(
      { ...RUNS, namespace: NS },
      {
        apiVersion: 'kiln.dev/v1alpha1',
        kind: 'ImageBuildRun',
        metadata: { name: 'schema-ok' },
        spec: {
          image: 'web',
          repository: 'https://git.example.com/shop.git',
          registry: '127.0.0.1:5000/shop',
          ref: 'refs/heads/main',
        },
      },
    );
    assert.equal(ok.spec.image, 'web');
    const bad = async (spec: Record<string, unknown>, why: RegExp): Promise<void> => {
      await assert.rejects(
        admin.create(
          { ...RUNS, namespace: NS },
          { apiVersion: 'kiln.dev/v1alpha1', kind: 'ImageBuildRun', metadata: { name: 'schema-bad' }, spec },
        ),
        (e: unknown) =>
          isKilnError(e, 'K8S_INVALID') &&
          why.test(e.message) &&
          /imagebuildruns "schema-bad"|imagebuildruns in namespace/.test(e.message),
      );
    };
    const base = { repository: 'https://git.example.com/shop.git', registry: '127.0.0.1:5000/shop', ref: 'main' };
    await bad({ ...base, image: 'Bad_Name' }, /spec\.image/);
    await bad({ image: 'web', repository: base.repository, registry: base.registry }, /spec needs ref or commit/);
    await bad(
      { ...base, image: 'web', repository: 'https://bob:secret@git.example.com/x.git' },
      /must not carry a password/,
    );
    await bad({ ...base, image: 'web', commit: 'not-a-sha' }, /spec\.commit/);
    await bad({ image: 'web', ref: 'main' }, /spec needs imageBuild, or repository and registry/);
    // spec is immutable
    await assert.rejects(
      admin.patch(runRef('schema-ok'), { spec: { ref: 'other' } }),
      (e: unknown) => isKilnError(e, 'K8S_INVALID') && /immutable/.test(e.message),
    );
    await admin
      .create(
        { ...IMAGEBUILDS, namespace: NS },
        {
          apiVersion: 'kiln.dev/v1alpha1',
          kind: 'ImageBuild',
          metadata: { name: 'badib' },
          spec: { repository: 'x', registry: 'r.example.com/p', images: [] },
        },
      )
      .then(
        () => assert.fail('an ImageBuild without images was accepted'),
        (e: unknown) => assert.ok(isKilnError(e, 'K8S_INVALID') && /spec\.images/.test(e.message), String(e)),
      );
    await admin.delete(runRef('schema-ok'));
  });

  test("PodSecurity enforce=restricted admits kiln's restricted build pod and refuses a privileged one", async () => {
    const pod = buildPod({
      name: 'pss-kiln',
      job: {
        buildId: 'pss',
        repository: 'https://git.example.com/x.git',
        commit: 'a'.repeat(40),
        context: '.',
        dockerfile: 'Dockerfile',
        buildArgs: {},
        labels: {},
        tags: ['r.example.com/x:1'],
        insecureRegistries: [],
        secretIds: [],
      },
      settings: { namespace: NS, image: IMAGE, isolation: 'restricted', serviceAccountName: 'kiln-build' },
      timeoutSeconds: 60,
      runName: 'pss',
      registrySecret: 'some-secret',
    });
    await admin.create({ ...CORE, resource: 'pods', namespace: NS }, pod);
    const privileged: KubeObject = {
      metadata: { name: 'pss-privileged' },
      spec: {
        serviceAccountName: 'kiln-build',
        containers: [{ name: 'build', image: IMAGE, securityContext: { privileged: true } }],
      },
    };
    await assert.rejects(
      admin.create({ ...CORE, resource: 'pods', namespace: NS }, privileged),
      (e: unknown) =>
        isKilnError(e, 'K8S_FORBIDDEN') &&
        /violates PodSecurity "restricted:latest"/.test(e.message) &&
        /privileged/.test(e.message),
    );
    // the userns level is a baseline pod: restricted refuses it too (it needs SETUID/SETGID)
    const userns = buildPod({
      ...{ name: 'pss-userns', runName: 'pss2', timeoutSeconds: 60 },
      job: {
        buildId: 'x',
        repository: 'r',
        context: '.',
        dockerfile: 'Dockerfile',
        buildArgs: {},
        labels: {},
        tags: ['r/x:1'],
        insecureRegistries: [],
        secretIds: [],
        commit: 'a'.repeat(40),
      },
      settings: { namespace: NS, image: IMAGE, isolation: 'userns', serviceAccountName: 'kiln-build' },
    });
    await assert.rejects(
      admin.create({ ...CORE, resource: 'pods', namespace: NS }, userns),
      (e: unknown) => isKilnError(e, 'K8S_FORBIDDEN') && /violates PodSecurity/.test(e.message),
    );
    await admin.delete(podRef('pss-kiln'), { gracePeriodSeconds: 0 });
  });

  test('controller: ImageBuildRun → pod, status from the pod (Running, OOMKilled, success), missing Secret, restart, delete', async () => {
    await admin.create(
      { ...CORE, resource: 'secrets', namespace: NS },
      {
        metadata: { name: 'regcred' },
        type: 'kubernetes.io/dockerconfigjson',
        stringData: {
          '.dockerconfigjson': JSON.stringify({
            auths: { '127.0.0.1:5000': { auth: Buffer.from(`u:${PASSWORD}`).toString('base64') } },
          }),
        },
      },
    );
    await admin.create(
      { ...CORE, resource: 'secrets', namespace: NS },
      {
        metadata: { name: 'gitcred' },
        type: 'kubernetes.io/basic-auth',
        stringData: { username: 'ci-bot', password: GIT_TOKEN },
      },
    );
    await admin.create(
      { ...IMAGEBUILDS, namespace: NS },
      {
        apiVersion: 'kiln.dev/v1alpha1',
        kind: 'ImageBuild',
        metadata: { name: 'shop' },
        spec: {
          repository: 'https://git.example.com/shop.git',
          registry: '127.0.0.1:5000/shop',
          registrySecret: 'regcred',
          gitSecret: 'gitcred',
          timeoutSeconds: 900,
          images: [{ name: 'web', context: 'web', tags: ['main'], buildArgs: { A: '1' } }],
          pod: { serviceAccountName: 'kiln-build', resources: { limits: { memory: '2Gi' } } },
        },
      },
    );
    const mkRun = (name: string, extra: Record<string, unknown> = {}) =>
      admin.create<ImageBuildRun>(
        { ...RUNS, namespace: NS },
        {
          apiVersion: 'kiln.dev/v1alpha1',
          kind: 'ImageBuildRun',
          metadata: { name },
          spec: {
            imageBuild: 'shop',
            image: 'web',
            commit: 'c'.repeat(40),
            triggeredBy: { type: 'manual', by: 'test' },
            ...extra,
          },
        },
      );
    const logs: string[] = [];
    const start = () => {
      const c = new BuildRunController({
        client: admin,
        namespace: NS,
        pod: { image: IMAGE },
        log: (l) => logs.push(l),
      });
      c.start();
      return c;
    };
    let ctl = start();
    await ctl.ready;
    const run1 = await mkRun('oom');
    const pod = await until('the pod of run oom', () =>
      admin.getOrUndefined<KubeObject & { spec: Record<string, unknown> }>(podRef(podNameOf('oom'))),
    );
    // the pod kiln asked for
    assert.deepEqual(pod.metadata.ownerReferences?.[0], {
      apiVersion: 'kiln.dev/v1alpha1',
      kind: 'ImageBuildRun',
      name: 'oom',
      uid: run1.metadata.uid,
      controller: true,
      blockOwnerDeletion: true,
    });
    assert.equal(pod.metadata.labels?.['kiln.dev/run'], 'oom');
    assert.equal(pod.metadata.labels?.['app.kubernetes.io/managed-by'], 'kiln');
    assert.equal(pod.spec.activeDeadlineSeconds, 900);
    assert.equal(pod.spec.restartPolicy, 'Never');
    assert.equal(pod.spec.serviceAccountName, 'kiln-build');
    assert.equal(pod.spec.automountServiceAccountToken, false);
    const c0 = (pod.spec.containers as Record<string, unknown>[])[0] as {
      image: string;
      args: string[];
      env: { name: string; value: string }[];
      securityContext: Record<string, unknown>;
      volumeMounts: { name: string; readOnly?: boolean; mountPath: string }[];
      resources: unknown;
    };
    assert.equal(c0.image, IMAGE);
    assert.deepEqual(c0.args, ['pod-build']);
    assert.deepEqual(c0.resources, { limits: { memory: '2Gi' }, requests: { memory: '2Gi' } });
    assert.equal(c0.securityContext.runAsNonRoot, true);
    assert.deepEqual(c0.securityContext.capabilities, { drop: ['ALL'] });
    const job = JSON.parse(c0.env.find((e) => e.name === 'KILN_POD_JOB')?.value ?? '{}') as {
      tags: string[];
      context: string;
      buildArgs: Record<string, string>;
      commit: string;
    };
    assert.deepEqual(job.tags, ['127.0.0.1:5000/shop/web:main']);
    assert.equal(job.context, 'web');
    assert.deepEqual(job.buildArgs, { A: '1' });
    assert.equal(job.commit, 'c'.repeat(40));
    const auth = c0.volumeMounts.find((m) => m.name === 'registry-auth');
    assert.ok(auth?.readOnly, 'registry credentials are mounted read-only');
    assert.deepEqual(
      c0.volumeMounts.find((m) => m.name === 'git-auth'),
      {
        name: 'git-auth',
        mountPath: '/kiln/git',
        readOnly: true,
      },
    );
    assert.deepEqual(
      (pod.spec.volumes as { name: string; secret?: unknown }[]).find((v) => v.name === 'git-auth')?.secret,
      { secretName: 'gitcred', defaultMode: 0o440 },
      "the ImageBuild's gitSecret, read-only for owner and group",
    );
    assert.ok(!JSON.stringify(pod).includes(GIT_TOKEN), 'no git token in the pod');
    assert.ok(!JSON.stringify(pod).includes(PASSWORD), 'no password in the pod');
    let r = await admin.get<ImageBuildRun>(runRef('oom'));
    assert.ok(r.metadata.finalizers?.includes(FINALIZER));
    // acknowledged: Pending/Accepted, naming its pod (written before the pod; nothing else until the pod moves)
    r = await until('oom Pending', async () => {
      const x = await admin.get<ImageBuildRun>(runRef('oom'));
      return x.status?.phase === 'Pending' ? x : undefined;
    });
    assert.equal(r.status?.reason, 'Accepted');
    assert.equal(r.status?.podName, podNameOf('oom'));
    assert.equal(r.status?.observedGeneration, 1);
    assert.deepEqual(
      r.status?.conditions?.map((c) => [c.type, c.status, c.reason]),
      [['Succeeded', 'Unknown', 'Accepted']],
    );

    // kubelet: running, then OOMKilled
    await setPodStatus(podNameOf('oom'), running);
    await until(
      'oom Running',
      async () => (await admin.get<ImageBuildRun>(runRef('oom'))).status?.phase === 'Running' || undefined,
    );
    await setPodStatus(podNameOf('oom'), terminated({ exitCode: 137, reason: 'OOMKilled' }, 'Failed'));
    r = await until('oom Failed', async () => {
      const x = await admin.get<ImageBuildRun>(runRef('oom'));
      return x.status?.phase === 'Failed' ? x : undefined;
    });
    assert.equal(r.status?.reason, 'OOMKilled');
    assert.deepEqual(
      r.status?.conditions?.map((c) => [c.type, c.status, c.reason]),
      [['Succeeded', 'False', 'OOMKilled']],
    );

    // a missing registry Secret: a clear failure naming it, no pod
    await mkRun('nosecret', {
      imageBuild: undefined,
      repository: 'https://git.example.com/shop.git',
      registry: '127.0.0.1:5000/shop',
      registrySecret: 'missing-cred',
    });
    r = await until('nosecret Failed', async () => {
      const x = await admin.get<ImageBuildRun>(runRef('nosecret'));
      return x.status?.phase === 'Failed' ? x : undefined;
    });
    assert.match(r.status?.message ?? '', /registry Secret "missing-cred" not found in namespace "kiln-builds"/);
    assert.equal(r.status?.conditions?.[0]?.reason, 'SecretNotFound');
    assert.equal(await admin.getOrUndefined(podRef(podNameOf('nosecret'))), undefined);

    // restart: while the controller is down a run is created and another run's pod succeeds
    await mkRun('ok');
    await until('the pod of run ok', () => admin.getOrUndefined(podRef(podNameOf('ok'))));
    await ctl.stop();
    await mkRun('while-down');
    await setPodStatus(podNameOf('ok'), success);
    ctl = start();
    r = await until('ok Succeeded after restart', async () => {
      const x = await admin.get<ImageBuildRun>(runRef('ok'));
      return x.status?.phase === 'Succeeded' ? x : undefined;
    });
    assert.equal(r.status?.digest, DIGEST);
    assert.deepEqual(
      r.status?.conditions?.map((c) => [c.type, c.status]),
      [['Succeeded', 'True']],
    );
    await until('the pod of while-down', () => admin.getOrUndefined(podRef(podNameOf('while-down'))));
    assert.equal(
      (await admin.list({ ...CORE, resource: 'pods', namespace: NS }, { labelSelector: 'kiln.dev/run=while-down' }))
        .items.length,
      1,
      'one pod per run',
    );

    // a pod deleted under a pending run (a cancel): the run is Cancelled, no new pod
    await mkRun('cancel-me');
    await until('the pod of cancel-me', () => admin.getOrUndefined(podRef(podNameOf('cancel-me'))));
    await admin.delete(podRef(podNameOf('cancel-me')), { gracePeriodSeconds: 0 });
    r = await until('cancel-me Cancelled', async () => {
      const x = await admin.get<ImageBuildRun>(runRef('cancel-me'));
      return x.status?.phase === 'Cancelled' ? x : undefined;
    });
    assert.equal(r.status?.reason, 'PodDeleted');
    assert.equal(await admin.getOrUndefined(podRef(podNameOf('cancel-me'))), undefined, 'no pod made again');

    // delete: the finalizer removes the pod first, then the run goes
    await admin.delete(runRef('while-down'));
    await until('while-down gone', async () =>
      (await admin.getOrUndefined(runRef('while-down'))) === undefined ? true : undefined,
    );
    const p = await admin.getOrUndefined(podRef(podNameOf('while-down')));
    assert.ok(p === undefined || p.metadata.deletionTimestamp, 'the pod was deleted with its run');
    await ctl.stop();
    assert.ok(ctl.lags.length >= 1);
    for (const n of ['oom', 'nosecret', 'ok', 'cancel-me']) {
      await admin.patch(runRef(n), { metadata: { finalizers: [] } });
      await admin.delete(runRef(n));
      await admin.delete(podRef(podNameOf(n)), { gracePeriodSeconds: 0 });
    }
  });

  describe('the Kubernetes executor (BuildRunner port)', () => {
    const job = (id: string, logFile: string): WorkerJob => ({
      buildId: id,
      contextDir: '/nonexistent',
      dockerfile: '/nonexistent/Dockerfile',
      buildArgs: { V: '2' },
      labels: {
        'org.opencontainers.image.source': 'https://git.example.com/shop.git',
        'org.opencontainers.image.revision': 'd'.repeat(40),
      },
      secrets: { npmrc: 'npm-token-QQ7' },
      tags: ['127.0.0.1:5000/shop/web:main'],
      insecureRegistries: ['127.0.0.1:5000'],
      registryAuth: { registry: '127.0.0.1:5000', username: 'ci', password: PASSWORD },
      gitAuth: { username: 'ci-bot', password: GIT_TOKEN },
      logFile,
      project: 'shop',
      source: {
        repository: 'https://git.example.com/shop.git',
        commit: 'd'.repeat(40),
        ref: 'refs/heads/main',
        context: 'web',
        dockerfile: 'web/Dockerfile',
        image: 'web',
      },
      timeoutSeconds: 600,
      triggeredBy: { type: 'manual', by: 'alice' },
    });
    const runner = (client: KubeClient, ns = NS) =>
      new KubernetesBuildRunner({
        client,
        pod: { namespace: ns, image: IMAGE, isolation: 'restricted', serviceAccountName: 'kiln-build' },
        podGraceSeconds: 1,
        publicUrl: 'https://kiln.example.com',
        log: () => undefined,
      });

    test('a build runs as a pod: credentials only in a Secret, mirrored as an ImageBuildRun, outcome from the pod', async () => {
      const log = join(tmp, 'b1.log');
      writeFileSync(log, '');
      const r = runner(new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath }))); // close() closes its client
      const phases: string[] = [];
      const names = objectsOf('B1');
      const done = r.run(job('B1', log), { onPhase: (p) => phases.push(p) }, new AbortController().signal);
      const pod = await until('the build pod', () =>
        admin.getOrUndefined<
          KubeObject & {
            spec: { activeDeadlineSeconds: number; volumes: { name: string; secret?: { secretName: string } }[] };
          }
        >(podRef(names.pod)),
      );
      assert.equal(pod.spec.activeDeadlineSeconds, 600);
      assert.ok(
        !JSON.stringify(pod).includes(PASSWORD) &&
          !JSON.stringify(pod).includes('npm-token-QQ7') &&
          !JSON.stringify(pod).includes(GIT_TOKEN),
        'no secret value in the pod (env, args, anywhere)',
      );
      assert.deepEqual(
        pod.spec.volumes
          .filter((v) => v.secret)
          .map((v) => v.secret?.secretName)
          .sort(),
        [names.buildSecret, names.gitSecret, names.registrySecret].sort(),
      );
      // git credentials: a Secret volume read only by owner and group (the pod's fsGroup), mounted read-only
      // where kiln pod-build reads it — and the namespace's PSS restricted admitted the pod with it
      const gitVol = pod.spec.volumes.find((v) => v.secret?.secretName === names.gitSecret) as {
        name: string;
        secret: { defaultMode?: number; optional?: boolean };
      };
      assert.equal(gitVol.secret.defaultMode, 0o440);
      const build = (pod.spec as unknown as { containers: { volumeMounts: Record<string, unknown>[] }[] })
        .containers[0];
      assert.deepEqual(
        build?.volumeMounts.find((m) => m.name === gitVol.name),
        { name: gitVol.name, mountPath: '/kiln/git', readOnly: true },
      );
      const gitSec = await admin.get<KubeObject & { data: Record<string, string> }>({
        ...CORE,
        resource: 'secrets',
        namespace: NS,
        name: names.gitSecret,
      });
      assert.deepEqual(
        Object.fromEntries(Object.entries(gitSec.data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()])),
        { username: 'ci-bot', password: GIT_TOKEN },
      );
      assert.equal(gitSec.metadata.ownerReferences?.[0]?.kind, 'ImageBuildRun');
      const sec = await admin.get<KubeObject & { type: string; data: Record<string, string> }>({
        ...CORE,
        resource: 'secrets',
        namespace: NS,
        name: names.registrySecret,
      });
      assert.equal(sec.type, 'kubernetes.io/dockerconfigjson');
      assert.match(Buffer.from(sec.data['.dockerconfigjson'] ?? '', 'base64').toString(), /"127\.0\.0\.1:5000"/);
      const run = await admin.get<ImageBuildRun>(runRef(names.run));
      assert.equal(run.spec.buildId, 'B1');
      assert.deepEqual(run.spec.triggeredBy, { type: 'manual', by: 'alice' });
      assert.ok(!JSON.stringify(run).includes(PASSWORD));
      assert.equal(pod.metadata.ownerReferences?.[0]?.uid, run.metadata.uid);
      await setPodStatus(names.pod, running);
      await until('building', async () => phases.includes('building') || undefined);
      await setPodStatus(names.pod, success);
      const out = await done;
      assert.deepEqual(out, {
        ok: true,
        digest: DIGEST,
        configDigest: DIGEST,
        pushed: ['127.0.0.1:5000/shop/web:main'],
        bases: [],
      });
      const after1 = await admin.get<ImageBuildRun>(runRef(names.run));
      assert.equal(after1.status?.phase, 'Succeeded');
      assert.equal(after1.status?.logURL, 'https://kiln.example.com/api/v1/builds/B1/log');
      const text = readFileSync(log, 'utf8');
      assert.match(text, /\[kubernetes\] build pod kiln-builds\/kiln-b1/);
      // (no kubelet here: the API server answers the log request of an unscheduled pod with an empty stream)
      assert.ok(!text.includes(PASSWORD));
      // finished pods and their Secrets go after the grace period (1 s here)
      await until('pod deleted after grace', async () =>
        (await admin.getOrUndefined(podRef(names.pod))) === undefined ? true : undefined,
      );
      // (the Secrets go right after the pod)
      for (const secret of [names.registrySecret, names.buildSecret, names.gitSecret])
        await until(`Secret ${secret} deleted`, async () =>
          (await admin.getOrUndefined({ ...CORE, resource: 'secrets', namespace: NS, name: secret })) === undefined
            ? true
            : undefined,
        );
      await r.close();
    });

    test('cancel deletes the pod; a restarted service re-attaches to a running pod', async () => {
      const log = join(tmp, 'b2.log');
      writeFileSync(log, '');
      const ac = new AbortController();
      const c1 = new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath }));
      const r1 = runner(c1);
      const names = objectsOf('B2');
      const done = r1.run(job('B2', log), {}, ac.signal);
      await until('pod B2', () => admin.getOrUndefined(podRef(names.pod)));
      await setPodStatus(names.pod, running);
      await sleep(300);
      ac.abort('cancelled');
      const out = await done;
      assert.equal(out.ok, false);
      assert.equal((out as Extract<RunOutcome, { ok: false }>).code, 'INTERRUPTED');
      await until('pod B2 gone', async () =>
        (await admin.getOrUndefined(podRef(names.pod))) === undefined ? true : undefined,
      );
      assert.equal((await admin.get<ImageBuildRun>(runRef(names.run))).status?.phase, 'Cancelled');
      await r1.close();

      // re-attach: the pod of build B3 exists (started by a previous process); a new runner follows it
      const namesB3 = objectsOf('B3');
      const first = runner(new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath })));
      const abandoned = first.run(job('B3', join(tmp, 'b3.log')), {}, new AbortController().signal);
      await until('pod B3', () => admin.getOrUndefined(podRef(namesB3.pod)));
      const uid = (await admin.get(podRef(namesB3.pod))).metadata.uid;
      await first.close(); // the service stops: it stops following, nothing is deleted
      assert.equal((await abandoned).ok, false);
      assert.ok(await admin.getOrUndefined(podRef(namesB3.pod)), 'the pod keeps running');
      const second = runner(new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath })));
      const log3 = join(tmp, 'b3b.log');
      writeFileSync(log3, '');
      const again = second.run(job('B3', log3), {}, new AbortController().signal);
      await until(
        're-attached',
        async () => /re-attached to the running pod kiln-b3/.test(readFileSync(log3, 'utf8')) || undefined,
      );
      assert.equal((await admin.get(podRef(namesB3.pod))).metadata.uid, uid, 'the same pod, not a new one');
      await setPodStatus(namesB3.pod, success);
      assert.equal((await again).ok, true);

      // service start: pods of no active build are removed (their builds ended, or the store never knew them)
      const third = runner(new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath })));
      const left = third.run(job('B7', join(tmp, 'b7.log')), {}, new AbortController().signal);
      await until('pod B7', () => admin.getOrUndefined(podRef(objectsOf('B7').pod)));
      await third.close();
      await left;
      const fourth = runner(new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath })));
      assert.deepEqual(await fourth.recover([]), new Map());
      assert.equal(await admin.getOrUndefined(podRef(objectsOf('B7').pod)), undefined);
      assert.equal(
        await admin.getOrUndefined({
          ...CORE,
          resource: 'secrets',
          namespace: NS,
          name: objectsOf('B7').registrySecret,
        }),
        undefined,
      );
      await fourth.close();
      await second.close();
    });

    test('a restarted service re-attaches to its build pods: log copied on without a byte twice, outcome from the pod; vanished and stray pods handled', async () => {
      // Play the kubelet's log endpoint: a Node whose kubelet address is an HTTPS server of this test, so the
      // API server proxies pods/log of pods bound to it here (as it does to a real kubelet).
      const certs = makeServerCerts();
      const logs = new Map<string, { text: string; ended: boolean; failures: number; streams: Set<ServerResponse> }>();
      const logOf = (pod: string) => {
        let l = logs.get(pod);
        if (!l) logs.set(pod, (l = { text: '', ended: false, failures: 0, streams: new Set() }));
        return l;
      };
      const emit = (pod: string, text: string, end = false): void => {
        const l = logOf(pod);
        l.text += text;
        for (const r of l.streams) {
          r.write(text);
          if (end) r.end();
        }
        if (end) l.ended = true;
      };
      const kubelet = createHttpsServer(
        { cert: readFileSync(certs.certFile), key: readFileSync(certs.keyFile) },
        (req, res) => {
          const m = /^\/containerLogs\/[^/]+\/([^/]+)\/build(\?|$)/.exec(req.url ?? '');
          if (!m?.[1]) {
            res.writeHead(404).end();
            return;
          }
          const l = logOf(m[1]);
          if (l.failures > 0) {
            l.failures--;
            res.writeHead(500, { 'content-type': 'text/plain' }).end('kubelet: container runtime is down');
            return;
          }
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.write(l.text);
          if (l.ended || !/[?&]follow=true/.test(req.url ?? '')) {
            res.end();
            return;
          }
          l.streams.add(res);
          res.on('close', () => l.streams.delete(res));
        },
      );
      await new Promise<void>((r) => kubelet.listen(0, '127.0.0.1', () => r()));
      const git = await startGitServer();
      const dataDir = mkdtempSync(join(tmpdir(), 'kiln-k8s-adopt-'));
      const services: BuildService[] = [];
      try {
        await admin.create({ ...CORE, resource: 'nodes' }, { metadata: { name: 'kiln-node-1' } });
        await admin.patch(
          { ...CORE, resource: 'nodes', name: 'kiln-node-1', sub: 'status' },
          {
            status: {
              addresses: [{ type: 'InternalIP', address: '127.0.0.1' }],
              daemonEndpoints: { kubeletEndpoint: { Port: (kubelet.address() as AddressInfo).port } },
            },
          },
        );
        /** The scheduler's part: bind the pod to the node. */
        const bind = (pod: string) =>
          admin.create(
            { ...podRef(pod), sub: 'binding' },
            { metadata: { name: pod }, target: { apiVersion: 'v1', kind: 'Node', name: 'kiln-node-1' } },
          );
        await git.createRepo('adopt', { Dockerfile: 'FROM scratch\n' });
        const config = parseConfigText(
          [
            'concurrency: 4',
            'retryInterrupted: false',
            'projects:',
            ...['a', 'b', 'd'].flatMap((n) => [
              `  - name: adopt-${n}`,
              `    repository: ${git.repoUrl('adopt')}`,
              `    registry: 127.0.0.1:5000/adopt-${n}`,
              '    images:',
              `      - {name: ${n}, tags: ["main"]}`,
            ]),
            '',
          ].join('\n'),
          'adopt.yaml',
        );
        const serviceLog: string[] = [];
        const start = async (): Promise<BuildService> => {
          const r = new KubernetesBuildRunner({
            client: new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath })),
            pod: { namespace: NS, image: IMAGE, isolation: 'restricted', serviceAccountName: 'kiln-build' },
            podGraceSeconds: 300,
            log: (l) => serviceLog.push(l),
          });
          const svc = await BuildService.start({ dataDir, config, runner: r, log: (l) => serviceLog.push(l) });
          services.push(svc);
          return svc;
        };
        const MANUAL = { type: 'manual', by: 'test' } as const;
        let svc = await start();
        const [a] = await svc.startBuilds('adopt-a', { ref: 'main' }, MANUAL);
        const [b] = await svc.startBuilds('adopt-b', { ref: 'main' }, MANUAL);
        const [d] = await svc.startBuilds('adopt-d', { ref: 'main' }, MANUAL);
        assert.ok(a && b && d);
        const pods = { a: objectsOf(a.id).pod, b: objectsOf(b.id).pod, d: objectsOf(d.id).pod };
        for (const p of Object.values(pods)) {
          await until(`pod ${p}`, () => admin.getOrUndefined(podRef(p))).catch((e: unknown) => {
            throw new Error(
              `${String(e)}: ${JSON.stringify([a, b, d].map((x) => svc.getBuild(x.id)))} ${serviceLog.join('\n')}`,
            );
          });
          await bind(p);
          await setPodStatus(p, running);
        }
        const logA = svc.logPath(a.id);
        emit(pods.a, 'step 1\nstep 2\n');
        await until(
          'step 2 in the build log',
          async () => readFileSync(logA, 'utf8').includes('step 2\n') || undefined,
        );
        emit(pods.a, 'step 3 part');
        await until('a partial line', async () => readFileSync(logA, 'utf8').endsWith('step 3 part') || undefined);
        // d ends while the first service runs: its pod stays for the grace period
        await setPodStatus(pods.d, success);
        await until('d succeeded', async () => svc.getBuild(d.id)?.phase === 'succeeded' || undefined);
        const uidA = (await admin.get(podRef(pods.a))).metadata.uid;

        // the service stops: it stops following, the builds stay active, the pods keep running
        await svc.stop(0);
        assert.ok(await admin.getOrUndefined(podRef(pods.a)), 'the pod of a keeps running');
        // while it is down: a's container prints more, b's pod is deleted, a stray kiln pod appears
        emit(pods.a, ' continued\nstep 4\n');
        await admin.delete(podRef(pods.b), { gracePeriodSeconds: 0 });
        const stray = buildPod({
          name: 'kiln-stray',
          job: {
            buildId: 'no-such-build',
            repository: 'https://git.example.com/x.git',
            commit: 'e'.repeat(40),
            context: '.',
            dockerfile: 'Dockerfile',
            buildArgs: {},
            labels: {},
            tags: ['127.0.0.1:5000/x:y'],
            insecureRegistries: [],
            secretIds: [],
          },
          settings: { namespace: NS, image: IMAGE, isolation: 'restricted', serviceAccountName: 'kiln-build' },
          timeoutSeconds: 60,
          runName: 'kiln-stray',
        });
        await admin.create({ ...CORE, resource: 'pods', namespace: NS }, stray);
        logOf(pods.a).failures = 1; // the first read after the restart fails (a kubelet restarting)

        svc = await start();
        assert.equal(svc.getBuild(a.id)?.phase, 'building', 'a is adopted, not failed');
        const gone = svc.getBuild(b.id);
        assert.equal(gone?.phase, 'failed');
        assert.equal(gone?.reason, `the build pod ${NS}/${pods.b} is gone (deleted while the service was not running)`);
        assert.match(readFileSync(svc.logPath(b.id), 'utf8'), /ERROR: the build pod .* is gone/);
        assert.equal((await admin.get<ImageBuildRun>(runRef(objectsOf(b.id).run))).status?.phase, 'Failed');
        for (const p of ['kiln-stray', pods.d]) {
          const left = await admin.getOrUndefined(podRef(p));
          assert.ok(left === undefined || left.metadata.deletionTimestamp, `pod ${p} of no running build is deleted`);
        }
        assert.equal((await admin.get(podRef(pods.a))).metadata.uid, uidA, 'the same pod, not a new one');
        assert.ok(serviceLog.some((l) => l.includes('re-attached to 1 running build(s)')));

        await until(
          'step 4 after the restart',
          async () => readFileSync(logA, 'utf8').includes('step 4\n') || undefined,
        );
        emit(pods.a, 'step 5\n', true);
        await setPodStatus(pods.a, success);
        const done = await until('a succeeded', async () => {
          const x = svc.getBuild(a.id);
          return x?.phase === 'succeeded' ? x : undefined;
        });
        assert.equal(done.digest, DIGEST);
        const text = readFileSync(logA, 'utf8');
        // every byte of the container's log exactly once, in order; the failed read is one note of kiln's
        assert.ok(
          text.includes(
            "step 1\nstep 2\nstep 3 part\n#1 [kubernetes] the pod's log cannot be read (" +
              text.split("#1 [kubernetes] the pod's log cannot be read (")[1]?.split('\n')[0] +
              '\n continued\nstep 4\nstep 5\n',
          ),
          text,
        );
        assert.match(
          text,
          /the pod's log cannot be read \(cannot get pods "[^"]+" in namespace "kiln-builds": .*\); retrying\n/,
        );
        assert.equal(text.split('step 1\n').length, 2, 'no line twice');
        assert.equal((await admin.get<ImageBuildRun>(runRef(objectsOf(a.id).run))).status?.phase, 'Succeeded');
      } finally {
        for (const s of services) await s.stop(0).catch(() => undefined);
        for (const p of logs.values()) for (const r of p.streams) r.end();
        kubelet.closeAllConnections();
        kubelet.close();
        await git.stop();
        certs.cleanup();
        rmSync(dataDir, { recursive: true, force: true });
        await admin.delete({ ...CORE, resource: 'nodes', name: 'kiln-node-1' }).catch(() => undefined);
      }
    });

    test('missing RBAC permission, missing namespace, unreachable API server: one clear line, nothing left behind', async () => {
      // kiln-limited may manage ImageBuildRuns and Secrets but not create pods
      await admin.create(
        { api: '/apis/rbac.authorization.k8s.io/v1', resource: 'roles', namespace: NS },
        {
          metadata: { name: 'limited' },
          rules: [
            {
              apiGroups: ['kiln.dev'],
              resources: ['imagebuildruns', 'imagebuildruns/status'],
              verbs: ['get', 'create', 'patch'],
            },
            { apiGroups: [''], resources: ['secrets'], verbs: ['get', 'create', 'update', 'delete'] },
            { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch', 'delete'] },
          ],
        },
      );
      await admin.create(
        { api: '/apis/rbac.authorization.k8s.io/v1', resource: 'rolebindings', namespace: NS },
        {
          metadata: { name: 'limited' },
          roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'limited' },
          subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'kiln-limited' }],
        },
      );
      const limited = new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigFor('kiln-limited') }));
      assert.equal(await limited.canI('create', 'pods', { namespace: NS }), false);
      assert.equal(await limited.canI('create', 'secrets', { namespace: NS }), true);
      const log = join(tmp, 'b4.log');
      writeFileSync(log, '');
      let out = await runner(limited).run(job('B4', log), {}, new AbortController().signal);
      assert.equal(out.ok, false);
      let f = out as Extract<RunOutcome, { ok: false }>;
      assert.equal(f.code, 'K8S_FORBIDDEN');
      assert.match(
        f.message,
        /^cannot create pods in namespace "kiln-builds": pods is forbidden: User "kiln-limited" cannot create resource "pods" in API group "" in the namespace "kiln-builds"/,
      );
      assert.match(
        readFileSync(log, 'utf8'),
        /hint: grant the permission in a Role bound to the identity \(kubectl auth can-i create pods -n kiln-builds\)/,
      );
      assert.equal(
        await admin.getOrUndefined({
          ...CORE,
          resource: 'secrets',
          namespace: NS,
          name: objectsOf('B4').registrySecret,
        }),
        undefined,
        'the Secret it created is removed',
      );

      out = await runner(admin, 'no-such-ns').run(job('B5', log), {}, new AbortController().signal);
      f = out as Extract<RunOutcome, { ok: false }>;
      assert.equal(f.code, 'K8S_NAMESPACE_NOT_FOUND');
      assert.match(f.message, /namespace "no-such-ns"/);

      const down = new KubeClient({ server: 'https://127.0.0.1:1', token: 'x' });
      out = await runner(down).run(job('B6', log), {}, new AbortController().signal);
      f = out as Extract<RunOutcome, { ok: false }>;
      assert.equal(f.code, 'K8S_UNREACHABLE');
      assert.match(f.message, /^cannot reach the Kubernetes API server at https:\/\/127\.0\.0\.1:1: ECONNREFUSED/);
      await limited.close();
    });
  });

  test('redeploy patches an opted-in Deployment to the digest and creates its pull Secret', async () => {
    const ns = 'shop-prod';
    await admin.create({ ...CORE, resource: 'namespaces' }, { metadata: { name: ns } });
    const dep = (name: string, annotated: boolean): KubeObject => ({
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: {
        name,
        namespace: ns,
        ...(annotated
          ? { annotations: { [TRIGGER_ANNOTATION]: JSON.stringify([{ image: 'shop/web', tag: 'main' }]) } }
          : {}),
      },
      spec: {
        selector: { matchLabels: { app: name } },
        template: {
          metadata: { labels: { app: name } },
          spec: { containers: [{ name: 'web', image: '127.0.0.1:5000/shop/web:main' }] },
        },
      },
    });
    await admin.create({ api: '/apis/apps/v1', resource: 'deployments', namespace: ns }, dep('web', true));
    await admin.create({ api: '/apis/apps/v1', resource: 'deployments', namespace: ns }, dep('other', false));
    const k = new KubeRedeployer(admin);
    const res = await new RedeployDelivery(k, { namespace: ns }).deliver({
      name: 'shop/web',
      repository: '127.0.0.1:5000/shop/web',
      tags: ['main'],
      digest: DIGEST,
      buildId: 'B9',
    });
    assert.deepEqual(
      res.outcomes.map((o) => [o.workload, o.result]),
      [['Deployment shop-prod/web', 'patched']],
    );
    const web = await admin.get<KubeObject & { spec: { template: { spec: { containers: { image: string }[] } } } }>({
      api: '/apis/apps/v1',
      resource: 'deployments',
      namespace: ns,
      name: 'web',
    });
    assert.equal(web.spec.template.spec.containers[0]?.image, `127.0.0.1:5000/shop/web@${DIGEST}`);
    const other = await admin.get<KubeObject & { spec: { template: { spec: { containers: { image: string }[] } } } }>({
      api: '/apis/apps/v1',
      resource: 'deployments',
      namespace: ns,
      name: 'other',
    });
    assert.equal(
      other.spec.template.spec.containers[0]?.image,
      '127.0.0.1:5000/shop/web:main',
      'not opted in: untouched',
    );
    assert.equal(await k.ensurePullSecret(ns, 'kiln-pull', '127.0.0.1:5000', 'puller', PASSWORD), 'created');
    assert.equal(await k.ensurePullSecret(ns, 'kiln-pull', '127.0.0.1:5000', 'puller', PASSWORD + '2'), 'refreshed');
    const ps = await admin.get<KubeObject & { type: string; data: Record<string, string> }>({
      ...CORE,
      resource: 'secrets',
      namespace: ns,
      name: 'kiln-pull',
    });
    assert.equal(ps.type, 'kubernetes.io/dockerconfigjson');
    assert.match(
      Buffer.from(ps.data['.dockerconfigjson'] ?? '', 'base64').toString(),
      new RegExp(Buffer.from(`puller:${PASSWORD}2`).toString('base64')),
    );
    const wl = (await k.list(ns)).find((w) => w.metadata.name === 'web');
    assert.ok(wl && (await k.usePullSecret(wl, 'kiln-pull')));
    const web2 = await admin.get<
      KubeObject & { spec: { template: { spec: { imagePullSecrets?: { name: string }[] } } } }
    >({ api: '/apis/apps/v1', resource: 'deployments', namespace: ns, name: 'web' });
    assert.deepEqual(web2.spec.template.spec.imagePullSecrets, [{ name: 'kiln-pull' }]);
    // a second delivery of the same digest changes nothing
    const again = await new RedeployDelivery(k, { namespace: ns }).deliver({
      name: 'shop/web',
      repository: '127.0.0.1:5000/shop/web',
      tags: ['main'],
      digest: DIGEST,
      buildId: 'B10',
    });
    assert.deepEqual(again.outcomes, []);
  });
});
