import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildPod, labelValue, objectName, podVerdict, type PodJob } from './pod.js';
import { statusFromVerdict } from './runs.js';
import { buildArgs } from './pod-build.js';
import type { KubeObject } from './client.js';

const job: PodJob = {
  buildId: 'B1',
  repository: 'https://git.example.com/shop.git',
  commit: 'c'.repeat(40),
  context: 'web',
  dockerfile: 'web/Dockerfile',
  buildArgs: { A: '1' },
  labels: { 'org.opencontainers.image.revision': 'c'.repeat(40) },
  tags: ['r.example.com/shop/web:main'],
  insecureRegistries: [],
  secretIds: ['npmrc'],
  cacheRef: 'r.example.com/shop/web:buildcache',
};

const pod = (status: Record<string, unknown>): KubeObject => ({ metadata: { name: 'p' }, status });
const term = (t: Record<string, unknown>, phase = 'Failed') =>
  pod({ phase, containerStatuses: [{ name: 'build', state: { terminated: t } }] });

test('podVerdict: kubelet states become build outcomes with their reasons', () => {
  assert.deepEqual(podVerdict(pod({ phase: 'Pending' })), { state: 'pending' });
  assert.equal(
    podVerdict(pod({ phase: 'Running', containerStatuses: [{ name: 'build', state: { running: {} } }] })).state,
    'running',
  );
  const oom = podVerdict(term({ exitCode: 137, reason: 'OOMKilled' }));
  assert.equal(oom.state === 'failed' && oom.reason, 'OOMKilled');
  const dl = podVerdict(
    pod({
      phase: 'Failed',
      reason: 'DeadlineExceeded',
      message: 'Pod was active on the node longer than the specified deadline',
    }),
  );
  assert.ok(dl.state === 'failed' && dl.timedOut && dl.reason === 'DeadlineExceeded');
  assert.equal(statusFromVerdict(dl)?.phase, 'TimedOut');
  const ev = podVerdict(
    pod({ phase: 'Failed', reason: 'Evicted', message: 'The node was low on resource: ephemeral-storage.' }),
  );
  assert.ok(ev.state === 'failed' && ev.reason === 'Evicted' && /ephemeral-storage/.test(ev.message));
  const pull = podVerdict(
    pod({
      phase: 'Pending',
      containerStatuses: [
        { name: 'build', state: { waiting: { reason: 'ImagePullBackOff', message: 'Back-off pulling image "x"' } } },
      ],
    }),
  );
  assert.ok(pull.state === 'failed' && pull.reason === 'ImagePullBackOff');
  assert.deepEqual(
    statusFromVerdict(pull)?.conditions?.map((c) => [c.status, c.reason]),
    [['False', 'ImagePullBackOff']],
  );
  // ContainerCreating is not a failure
  assert.deepEqual(
    podVerdict(
      pod({
        phase: 'Pending',
        containerStatuses: [{ name: 'build', state: { waiting: { reason: 'ContainerCreating' } } }],
      }),
    ),
    { state: 'pending', reason: 'ContainerCreating' },
  );
  const ok = podVerdict(
    term(
      {
        exitCode: 0,
        message: JSON.stringify({ ok: true, digest: 'sha256:1', configDigest: 'sha256:2', pushed: ['a'] }),
      },
      'Succeeded',
    ),
  );
  assert.ok(ok.state === 'succeeded' && ok.result.digest === 'sha256:1');
  const bad = podVerdict(
    term({
      exitCode: 1,
      message: JSON.stringify({ ok: false, code: 'RUN_FAILED', message: 'm', reason: 'Dockerfile:3: RUN exited 2' }),
    }),
  );
  assert.ok(bad.state === 'failed' && bad.reason === 'Dockerfile:3: RUN exited 2');
  const crash = podVerdict(term({ exitCode: 139, reason: 'Error' }));
  assert.ok(crash.state === 'failed' && crash.reason === 'Error (exit 139)');
});

test('buildPod: restricted settings, secrets only as read-only mounts, names and labels valid', () => {
  const p = buildPod({
    name: 'kiln-b1',
    job,
    settings: {
      namespace: 'b',
      image: 'kiln:1',
      hostUsers: false,
      runtimeClassName: 'gvisor',
      nodeSelector: { builders: 'true' },
      tolerations: [{ key: 'builders', operator: 'Exists' }],
    },
    timeoutSeconds: 60,
    runName: 'Run_1',
    registrySecret: 'reg',
    buildSecret: 'sec',
  });
  const spec = p.spec as Record<string, unknown>;
  assert.equal(spec.hostUsers, false);
  assert.equal(spec.runtimeClassName, 'gvisor');
  assert.deepEqual(spec.nodeSelector, { builders: 'true' });
  const c = (spec.containers as Record<string, unknown>[])[0] as {
    env: { name: string }[];
    volumeMounts: { readOnly?: boolean; name: string }[];
    securityContext: Record<string, unknown>;
  };
  assert.ok(c.volumeMounts.filter((m) => m.name !== 'kiln-home').every((m) => m.readOnly));
  assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  assert.ok(c.env.some((e) => e.name === 'DOCKER_CONFIG'));
  assert.equal(p.metadata.labels?.['kiln.dev/run'], 'Run_1');
  assert.equal(labelValue('-a/b:c-'), 'a-b-c');
  assert.equal(objectName('kiln-01J_ABC'), 'kiln-01j-abc');
});

test('pod-build: kiln build arguments carry secrets as files and the registry cache', () => {
  const args = buildArgs(job, '/w/src', '/w/md.json', 'restricted');
  assert.deepEqual(args.slice(0, 6), ['build', '--push', '--progress', 'plain', '--metadata-file', '/w/md.json']);
  assert.ok(args.includes('id=npmrc,src=/kiln/secrets/s0'));
  assert.ok(args.includes('type=registry,ref=r.example.com/shop/web:buildcache,mode=max'));
  assert.equal(args.at(-1), '/w/src/web');
  assert.deepEqual(args.slice(args.indexOf('--isolation'), args.indexOf('--isolation') + 2), [
    '--isolation',
    'restricted',
  ]);
});
