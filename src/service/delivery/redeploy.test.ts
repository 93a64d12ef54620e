/**
 * The redeploy rule and patch: which workloads opt in (`kiln.dev/image-triggers`), what the JSON Patch changes for
 * each of the four kinds, and RedeployDelivery over an in-memory Redeployer that applies the patches the way the
 * API server does (RFC 6902 with `test`), so a plan that would not apply fails here too.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Build } from '../model.js';
import {
  RedeployDelivery,
  TRIGGER_ANNOTATION,
  finishedImageOf,
  parseTriggers,
  planRedeploy,
  podSpecPath,
  type FinishedImage,
  type JsonPatchOp,
  type Redeployer,
  type Workload,
  type WorkloadKind,
} from './redeploy.js';

const REPO = '127.0.0.1:5000/shop/web';
const D1 = 'sha256:' + '1'.repeat(64);
const D2 = 'sha256:' + '2'.repeat(64);
const IMG: FinishedImage = {
  name: 'shop/web',
  repository: REPO,
  tags: ['main', 'main-abc1234'],
  digest: D2,
  buildId: 'b-1',
};

type Json = Record<string, unknown>;

function podSpec(containers: Json[], initContainers?: Json[]): Json {
  return { containers, ...(initContainers ? { initContainers } : {}) };
}

/** A workload of `kind` whose pod spec is `spec`, annotated with `triggers` (a value, or an object to stringify). */
function workload(kind: WorkloadKind, spec: Json, triggers?: unknown, name = 'web'): Workload {
  const annotations: Record<string, string> = {};
  if (triggers !== undefined) {
    annotations[TRIGGER_ANNOTATION] = typeof triggers === 'string' ? triggers : JSON.stringify(triggers);
  }
  const template = { metadata: { labels: { app: name } }, spec };
  const body: Json =
    kind === 'CronJob'
      ? { schedule: '*/5 * * * *', jobTemplate: { spec: { template } } }
      : { replicas: 2, selector: { matchLabels: { app: name } }, template };
  return { kind, metadata: { name, namespace: 'prod', annotations }, spec: body };
}

/** RFC 6902 test/replace/add on a copy, as the API server applies it (a failed test throws). */
function applyPatch<T>(doc: T, patch: JsonPatchOp[]): T {
  const out = structuredClone(doc) as unknown;
  for (const op of patch) {
    const parts = op.path.split('/').slice(1);
    const last = parts.pop()!;
    let parent: unknown = out;
    for (const p of parts) parent = (parent as Json)[p];
    const container = parent as Json;
    if (op.op === 'test') {
      if (JSON.stringify(container[last]) !== JSON.stringify(op.value)) throw new Error(`test failed at ${op.path}`);
    } else if (op.op === 'replace') {
      if (!(last in container)) throw new Error(`replace of missing ${op.path}`);
      container[last] = op.value;
    } else container[last] = op.value;
  }
  return out as T;
}

function imagesOf(w: Workload, field: 'containers' | 'initContainers' = 'containers'): (string | undefined)[] {
  let spec: unknown = w;
  for (const p of podSpecPath(w.kind).split('/').slice(1)) spec = (spec as Json)[p];
  return (((spec as Json)[field] as Json[] | undefined) ?? []).map((c) => c.image as string | undefined);
}

for (const kind of ['Deployment', 'StatefulSet', 'DaemonSet', 'CronJob'] as const) {
  test(`${kind}: the named container moves to the digest, with test ops guarding name and old image`, () => {
    const w = workload(
      kind,
      podSpec([
        { name: 'sidecar', image: 'envoy:1.30' },
        { name: 'web', image: `${REPO}:main` },
      ]),
      [{ image: 'shop/web', tag: 'main', container: 'web' }],
    );
    const plan = planRedeploy(w, IMG);
    const base = kind === 'CronJob' ? '/spec/jobTemplate/spec/template/spec' : '/spec/template/spec';
    assert.deepEqual(plan.patch, [
      { op: 'test', path: `${base}/containers/1/name`, value: 'web' },
      { op: 'test', path: `${base}/containers/1/image`, value: `${REPO}:main` },
      { op: 'replace', path: `${base}/containers/1/image`, value: `${REPO}@${D2}` },
    ]);
    assert.deepEqual(plan.changes, [{ container: 'web', init: false, from: `${REPO}:main`, to: `${REPO}@${D2}` }]);
    assert.deepEqual(plan.warnings, []);
    const after = applyPatch(w, plan.patch!);
    assert.deepEqual(imagesOf(after), ['envoy:1.30', `${REPO}@${D2}`]);
    assert.deepEqual(planRedeploy(after, IMG).patch, undefined, 'applied once, nothing left to do');
  });
}

test('no container named: every regular container running the repository moves; init containers stay', () => {
  const w = workload(
    'Deployment',
    podSpec(
      [
        { name: 'web', image: `${REPO}:main` },
        { name: 'worker', image: `${REPO}@${D1}` },
        { name: 'other', image: '127.0.0.1:5000/shop/api:main' },
      ],
      [{ name: 'migrate', image: `${REPO}:main` }],
    ),
    [{ image: 'shop/web', tag: 'main' }],
  );
  const plan = planRedeploy(w, IMG);
  assert.deepEqual(
    plan.changes.map((c) => c.container),
    ['web', 'worker'],
  );
  const after = applyPatch(w, plan.patch!);
  assert.deepEqual(imagesOf(after), [`${REPO}@${D2}`, `${REPO}@${D2}`, '127.0.0.1:5000/shop/api:main']);
  assert.deepEqual(imagesOf(after, 'initContainers'), [`${REPO}:main`], 'init containers only when named');
});

test('an init container moves when a trigger names it', () => {
  const w = workload(
    'StatefulSet',
    podSpec([{ name: 'db', image: 'postgres:16' }], [{ name: 'migrate', image: `${REPO}:main` }]),
    [{ image: 'shop/web', tag: 'main', container: 'migrate' }],
  );
  const plan = planRedeploy(w, IMG);
  assert.deepEqual(plan.changes, [{ container: 'migrate', init: true, from: `${REPO}:main`, to: `${REPO}@${D2}` }]);
  assert.equal(plan.patch![0]!.path, '/spec/template/spec/initContainers/0/name');
  const after = applyPatch(w, plan.patch!);
  assert.deepEqual(imagesOf(after, 'initContainers'), [`${REPO}@${D2}`]);
  assert.deepEqual(imagesOf(after), ['postgres:16']);
});

test('several triggers: each matching one applies, one container is patched once, others are ignored', () => {
  const api = '127.0.0.1:5000/shop/api';
  const w = workload(
    'Deployment',
    podSpec([
      { name: 'web', image: `${REPO}:main` },
      { name: 'api', image: `${api}:main` },
      { name: 'web2', image: `${REPO}:old` },
    ]),
    [
      { image: 'shop/web', tag: 'main', container: 'web' },
      { image: 'shop/web', tag: 'main' }, // also matches web (and web2): web must be patched once
      { image: 'shop/api', tag: 'main', container: 'api' }, // another image: untouched by this build
      { image: 'shop/web', tag: 'release', container: 'web2' }, // a tag this build did not push
    ],
  );
  const plan = planRedeploy(w, IMG);
  assert.deepEqual(
    plan.changes.map((c) => c.container),
    ['web', 'web2'],
  );
  assert.equal(plan.patch!.filter((o) => o.op === 'replace').length, 2);
  const after = applyPatch(w, plan.patch!);
  assert.deepEqual(imagesOf(after), [`${REPO}@${D2}`, `${api}:main`, `${REPO}@${D2}`]);
});

test('no patch when the containers already run the digest (also written with a tag)', () => {
  for (const image of [`${REPO}@${D2}`, `${REPO}:main@${D2}`]) {
    const w = workload('DaemonSet', podSpec([{ name: 'web', image }]), [
      { image: 'shop/web', tag: 'main', container: 'web' },
    ]);
    const plan = planRedeploy(w, IMG);
    assert.equal(plan.patch, undefined, image);
    assert.deepEqual(plan.changes, []);
    assert.deepEqual(plan.warnings, []);
  }
});

test("no patch when the trigger's tag, project or image is not this build's, or it is paused", () => {
  const spec = podSpec([{ name: 'web', image: `${REPO}:main` }]);
  for (const t of [
    { image: 'shop/web', tag: 'release-1.2', container: 'web' },
    { image: 'shop/api', tag: 'main', container: 'web' },
    { image: 'other/web', tag: 'main', container: 'web' },
    { image: 'shop/web', tag: 'main', container: 'web', paused: true },
  ]) {
    const plan = planRedeploy(workload('Deployment', spec, [t]), IMG);
    assert.equal(plan.patch, undefined, JSON.stringify(t));
    assert.deepEqual(plan.warnings, [], JSON.stringify(t));
  }
  assert.equal(planRedeploy(workload('Deployment', spec), IMG).patch, undefined, 'no annotation: no opt-in');
});

test('malformed annotations are warnings naming the workload and entry; valid entries still apply', () => {
  const spec = podSpec([{ name: 'web', image: `${REPO}:main` }]);
  const cases: [unknown, RegExp][] = [
    ['{not json', /Deployment prod\/web: kiln\.dev\/image-triggers: not JSON/],
    ['{"image": "shop/web"}', /must be a JSON array/],
    [['shop/web'], /\[0\]: must be an object/],
    [[{ image: 'web', tag: 'main' }], /\[0\]: "image" must be "<project>\/<image>"/],
    [[{ image: 'shop/web' }], /\[0\]: "tag" must be a tag/],
    [[{ image: 'shop/web', tag: 'main', container: 7 }], /"container" must be a container name/],
    [[{ image: 'shop/web', tag: 'main', paused: 'yes' }], /"paused" must be true or false/],
    [[{ image: 'shop/web', tag: 'main', fieldPath: 'spec.x' }], /unknown key "fieldPath"/],
  ];
  for (const [value, want] of cases) {
    const plan = planRedeploy(workload('Deployment', spec, value), IMG);
    assert.equal(plan.patch, undefined, String(want));
    assert.equal(plan.warnings.length, 1, String(want));
    assert.match(plan.warnings[0]!, want);
  }
  const mixed = planRedeploy(
    workload('Deployment', spec, [{ image: 'nope' }, { image: 'shop/web', tag: 'main', container: 'web' }]),
    IMG,
  );
  assert.equal(mixed.changes.length, 1, 'the valid entry applies');
  assert.match(mixed.warnings.join('\n'), /\[0\]/);
});

test('a named container the workload lacks, or no container running the image, is a warning', () => {
  const spec = podSpec([{ name: 'api', image: 'x/api:1' }]);
  const named = planRedeploy(workload('Deployment', spec, [{ image: 'shop/web', tag: 'main', container: 'web' }]), IMG);
  assert.equal(named.patch, undefined);
  assert.match(named.warnings.join(), /names container "web", which the workload lacks/);
  const unnamed = planRedeploy(workload('Deployment', spec, [{ image: 'shop/web', tag: 'main' }]), IMG);
  assert.match(unnamed.warnings.join(), /no container runs 127\.0\.0\.1:5000\/shop\/web/);
  const broken: Workload = {
    kind: 'CronJob',
    metadata: { name: 'c', annotations: { [TRIGGER_ANNOTATION]: '[{"image":"shop/web","tag":"main"}]' } },
    spec: {},
  };
  assert.match(planRedeploy(broken, IMG).warnings.join(), /no pod template at \/spec\/jobTemplate/);
});

test('a container without an image gets one with add (no test of the missing field)', () => {
  const w = workload('Deployment', podSpec([{ name: 'web' }]), [{ image: 'shop/web', tag: 'main', container: 'web' }]);
  const plan = planRedeploy(w, IMG);
  assert.deepEqual(plan.patch, [
    { op: 'test', path: '/spec/template/spec/containers/0/name', value: 'web' },
    { op: 'add', path: '/spec/template/spec/containers/0/image', value: `${REPO}@${D2}` },
  ]);
});

test('parseTriggers keeps the fields it knows', () => {
  assert.deepEqual(parseTriggers('[{"image":"a/b","tag":"v1","container":"c","paused":false}]'), {
    triggers: [{ image: 'a/b', tag: 'v1', container: 'c', paused: false }],
    warnings: [],
  });
});

test('finishedImageOf: succeeded builds with a digest; tags relative to the repository', () => {
  const b = {
    id: 'b-1',
    project: 'shop',
    image: 'web',
    phase: 'succeeded',
    digest: D2,
    tags: [`${REPO}:main`, `${REPO}:main-abc1234`],
  } as Build;
  assert.deepEqual(finishedImageOf(b, { registry: '127.0.0.1:5000/shop' }), IMG);
  assert.equal(finishedImageOf({ ...b, phase: 'failed' }, { registry: '127.0.0.1:5000/shop' }), undefined);
  assert.equal(finishedImageOf({ ...b, digest: null }, { registry: '127.0.0.1:5000/shop' }), undefined);
});

/** A cluster in memory: workloads by kind/namespace/name, patched with RFC 6902 like the API server. */
class MemoryCluster implements Redeployer {
  readonly patches: { kind: WorkloadKind; namespace: string; name: string; patch: JsonPatchOp[] }[] = [];
  failNext = 0;
  constructor(public workloads: Workload[]) {}
  async list(namespace?: string): Promise<Workload[]> {
    return structuredClone(this.workloads.filter((w) => namespace === undefined || w.metadata.namespace === namespace));
  }
  async patch(kind: WorkloadKind, namespace: string, name: string, patch: JsonPatchOp[]): Promise<void> {
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error('the server rejected our request due to an error in our request (422)');
    }
    const i = this.workloads.findIndex(
      (w) => w.kind === kind && w.metadata.namespace === namespace && w.metadata.name === name,
    );
    if (i === -1) throw new Error(`${kind} ${namespace}/${name} not found`);
    this.workloads[i] = applyPatch(this.workloads[i]!, patch);
    this.patches.push({ kind, namespace, name, patch });
  }
}

test('RedeployDelivery patches every opted-in workload once; a second pass changes nothing', async () => {
  const trig = [{ image: 'shop/web', tag: 'main', container: 'web' }];
  const cluster = new MemoryCluster([
    workload('Deployment', podSpec([{ name: 'web', image: `${REPO}:main` }]), trig, 'web'),
    workload('CronJob', podSpec([{ name: 'web', image: `${REPO}@${D1}` }]), trig, 'nightly'),
    workload('StatefulSet', podSpec([{ name: 'web', image: `${REPO}:main` }]), undefined, 'not-opted-in'),
    workload('DaemonSet', podSpec([{ name: 'web', image: `${REPO}:main` }]), '[broken', 'typo'),
  ]);
  const r = new RedeployDelivery(cluster);
  const first = await r.deliver(IMG);
  assert.deepEqual(
    first.outcomes.map((o) => [o.workload, o.result]),
    [
      ['Deployment prod/web', 'patched'],
      ['CronJob prod/nightly', 'patched'],
    ],
  );
  assert.equal(first.warnings.length, 1);
  assert.match(first.warnings[0]!, /DaemonSet prod\/typo/);
  assert.deepEqual(imagesOf(cluster.workloads[1]!), [`${REPO}@${D2}`]);
  assert.deepEqual(imagesOf(cluster.workloads[2]!), [`${REPO}:main`], 'no annotation: untouched');
  const second = await r.deliver(IMG);
  assert.deepEqual(second.outcomes, []);
  assert.equal(cluster.patches.length, 2);
});

test('RedeployDelivery: a refused patch fails that workload only; the retry patches what is left', async () => {
  const trig = [{ image: 'shop/web', tag: 'main' }];
  const cluster = new MemoryCluster([
    workload('Deployment', podSpec([{ name: 'web', image: `${REPO}:main` }]), trig, 'a'),
    workload('Deployment', podSpec([{ name: 'web', image: `${REPO}:main` }]), trig, 'b'),
  ]);
  cluster.failNext = 1;
  const r = new RedeployDelivery(cluster, { namespace: 'prod' });
  const first = await r.deliver(IMG);
  assert.deepEqual(
    first.outcomes.map((o) => o.result),
    ['failed', 'patched'],
  );
  assert.match(first.outcomes[0]!.error!, /422/);
  const retry = await r.deliver(IMG);
  assert.deepEqual(
    retry.outcomes.map((o) => [o.name, o.result]),
    [['a', 'patched']],
  );
  assert.deepEqual(
    cluster.workloads.map((w) => imagesOf(w)[0]),
    [`${REPO}@${D2}`, `${REPO}@${D2}`],
  );
});

test('a concurrent change between list and patch makes the test op refuse the stale patch', () => {
  const w = workload('Deployment', podSpec([{ name: 'web', image: `${REPO}:main` }]), [
    { image: 'shop/web', tag: 'main', container: 'web' },
  ]);
  const plan = planRedeploy(w, IMG);
  const changed = applyPatch(w, [
    { op: 'replace', path: '/spec/template/spec/containers/0/image', value: `${REPO}:hotfix` },
  ]);
  assert.throws(() => applyPatch(changed, plan.patch!), /test failed/);
});
