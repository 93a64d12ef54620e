/**
 * deploy/: the base and both overlays rendered with kustomize v5 (built from sigs.k8s.io/kustomize/kustomize/v5 by
 * scripts/go-tools.sh) and, where its older dialect reaches, with Debian's kubectl 1.20 (kustomize v2); every pod
 * template checked against the Pod Security Standards (test/helpers/pss.ts), the RBAC checked for least privilege,
 * and the container settings checked against what the isolation levels ask for (src/sandbox/isolation.ts).
 */
import { describe, test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { goTools } from '../helpers/go-tools.js';
import { checkPodSpec, podSpecs, type KubeObject, type PodSpecLike } from '../helpers/pss.js';
import { isolationPodSettings } from '../../src/sandbox/isolation.js';
import { parseConfigText } from '../../src/service/config/parse.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEPLOY = join(REPO, 'deploy');

interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs?: string[];
  resourceNames?: string[];
}

interface Volume {
  name: string;
  persistentVolumeClaim?: { claimName: string };
  configMap?: { name: string };
}

function parseObjects(text: string): KubeObject[] {
  return parseAllDocuments(text)
    .map((d) => d.toJS() as KubeObject | null)
    .filter((o): o is KubeObject => o !== null);
}

function kustomize(dir: string): KubeObject[] {
  const bin = goTools('kustomize').kustomize;
  assert.ok(bin, 'scripts/go-tools.sh kustomize gave no path');
  const r = spawnSync(bin, ['build', dir], { encoding: 'utf8' });
  assert.equal(r.status, 0, `kustomize build ${dir}: ${r.stderr}`);
  return parseObjects(r.stdout);
}

function debianKubectl(): string {
  const r = spawnSync('bash', [join(REPO, 'scripts', 'debian-kubectl.sh')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

const id = (o: KubeObject): string => `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
const find = (objs: KubeObject[], kind: string, ns: string | undefined, name: string): KubeObject | undefined =>
  objs.find((o) => o.kind === kind && o.metadata?.name === name && o.metadata?.namespace === ns);

describe('deploy/ rendered with kustomize v5', () => {
  let standalone: KubeObject[];
  let kubernetes: KubeObject[];
  let base: KubeObject[];

  before(() => {
    base = kustomize(join(DEPLOY, 'base'));
    standalone = kustomize(join(DEPLOY, 'overlays', 'standalone'));
    kubernetes = kustomize(join(DEPLOY, 'overlays', 'kubernetes'));
  });

  test('the service: one replica, strategy Recreate, SQLite data dir on a PVC, config from a ConfigMap', () => {
    for (const objs of [standalone, kubernetes]) {
      const d = find(objs, 'Deployment', 'kiln', 'kiln');
      assert.ok(d, 'Deployment kiln/kiln');
      const spec = d.spec as {
        replicas: number;
        strategy: { type: string };
        template: { spec: Omit<PodSpecLike, 'volumes'> & { volumes: Volume[] } };
      };
      assert.equal(spec.replicas, 1);
      assert.equal(spec.strategy.type, 'Recreate');
      const c = (spec.template.spec.containers ?? [])[0] as {
        args: string[];
        volumeMounts: { name: string; mountPath: string }[];
      };
      assert.equal(c.args[0], 'serve');
      assert.ok(c.args.includes('--data-dir=/var/lib/kiln'));
      const data = c.volumeMounts.find((m) => m.mountPath === '/var/lib/kiln');
      const vol = spec.template.spec.volumes.find((v) => v.name === data?.name);
      const claim = vol?.persistentVolumeClaim?.claimName;
      assert.ok(claim && find(objs, 'PersistentVolumeClaim', 'kiln', claim), 'the data dir is a PVC of the overlay');
      const cm = spec.template.spec.volumes.find((v) => 'configMap' in v)?.configMap?.name;
      assert.ok(cm && find(objs, 'ConfigMap', 'kiln', cm), `the ConfigMap ${cm} the pod mounts is rendered`);
      assert.ok(find(objs, 'Service', 'kiln', 'kiln'));
      const np = objs.filter((o) => o.kind === 'NetworkPolicy' && o.metadata?.namespace === 'kiln');
      assert.equal(np.length, 1, 'a NetworkPolicy for the service');
      assert.deepEqual((np[0]?.spec as { policyTypes: string[] }).policyTypes, ['Ingress', 'Egress']);
    }
    const sa = find(kubernetes, 'Deployment', 'kiln', 'kiln');
    const args = ((sa?.spec as { template: { spec: { containers: { args: string[] }[] } } }).template.spec.containers[0]?.args ?? []); // prettier-ignore
    assert.ok(args.includes('--executor=kubernetes'), 'the kubernetes overlay runs the Kubernetes executor');
    const local = standalone.find((o) => o.kind === 'Deployment');
    const largs = (local?.spec as { template: { spec: { containers: { args: string[] }[] } } }).template.spec.containers[0]?.args ?? []; // prettier-ignore
    assert.ok(!largs.some((a) => a.startsWith('--executor')), 'standalone uses the local executor (the default)');
  });

  test("each overlay's service config is valid for kiln serve; build pods go where the overlay prepared", () => {
    const configOf = (objs: KubeObject[]): ReturnType<typeof parseConfigText> => {
      const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata?.name?.startsWith('kiln-config'));
      const text = (cm?.data as Record<string, string> | undefined)?.['config.yaml'];
      assert.ok(text, 'the ConfigMap holds config.yaml');
      return parseConfigText(text, 'config.yaml');
    };
    assert.equal(configOf(standalone).kubernetes, undefined);
    const k = configOf(kubernetes).kubernetes;
    assert.ok(k, 'the kubernetes overlay configures build pods');
    assert.equal(k.isolation, 'restricted');
    const ns = find(kubernetes, 'Namespace', undefined, k.namespace ?? '');
    assert.equal(ns?.metadata?.labels?.['pod-security.kubernetes.io/enforce'], 'restricted');
    assert.ok(find(kubernetes, 'ServiceAccount', k.namespace, k.serviceAccount ?? ''), "the build pods' account");
    const d = find(kubernetes, 'Deployment', 'kiln', 'kiln');
    const image = (d?.spec as { template: { spec: { containers: { image: string }[] } } }).template.spec.containers[0]?.image; // prettier-ignore
    assert.equal(k.image, image, 'build pods run the same kiln image as the service');
    // The controller (ImageBuildRuns made outside the service) makes the same pods as the service's executor.
    const c = find(kubernetes, 'Deployment', 'kiln', 'kiln-controller');
    const cspec = (c?.spec as { template: { spec: { serviceAccountName: string; containers: { image: string; args: string[] }[] } } }).template.spec; // prettier-ignore
    assert.equal(cspec.containers[0]?.image, image, "the controller runs kiln's image");
    assert.equal(cspec.serviceAccountName, 'kiln', "the service's account: no permission the service lacks");
    const cargs = cspec.containers[0]?.args ?? [];
    assert.equal(cargs[0], 'controller');
    for (const a of [`--namespace=${k.namespace}`, `--image=${k.image}`, `--service-account=${k.serviceAccount}`]) {
      assert.ok(cargs.includes(a), `controller ${a}`);
    }
  });

  test('kubernetes overlay: every pod template passes PSS restricted; both namespaces enforce restricted', () => {
    const pods = podSpecs(kubernetes);
    assert.ok(pods.length >= 1);
    for (const p of pods) assert.deepEqual(checkPodSpec(p.spec, 'restricted'), [], p.where);
    for (const ns of ['kiln', 'kiln-builds']) {
      const o = find(kubernetes, 'Namespace', undefined, ns);
      assert.equal(o?.metadata?.labels?.['pod-security.kubernetes.io/enforce'], 'restricted', ns);
    }
    // the build pods the executor makes: the restricted level's settings pass restricted too
    const s = isolationPodSettings('restricted');
    assert.equal(s.podSecurity, 'restricted');
    const build: PodSpecLike = { ...s.pod, containers: [{ name: 'kiln', securityContext: s.securityContext }] };
    assert.deepEqual(checkPodSpec(build, 'restricted'), []);
    assert.ok(find(kubernetes, 'NetworkPolicy', 'kiln-builds', 'kiln-builds'), 'a NetworkPolicy for build pods');
  });

  test('standalone overlay: PSS baseline with the userns level settings (not restricted); namespace enforces baseline', () => {
    const pods = podSpecs(standalone);
    assert.equal(pods.length, 1);
    const pod = pods[0]!.spec;
    assert.deepEqual(checkPodSpec(pod, 'baseline'), []);
    const broken = checkPodSpec(pod, 'restricted');
    assert.ok(
      broken.some((r) => /allowPrivilegeEscalation/.test(r)),
      broken.join('; '),
    );
    assert.ok(
      broken.some((r) => /restricted adds capability SET/.test(r)),
      broken.join('; '),
    );
    // exactly the container settings src/sandbox/isolation.ts documents for the level
    const userns = isolationPodSettings('userns');
    const sc = pod.containers?.[0]?.securityContext as Record<string, unknown>;
    for (const [k, v] of Object.entries(userns.securityContext)) assert.deepEqual(sc[k], v, `securityContext.${k}`);
    assert.equal(userns.podSecurity, 'baseline');
    const env = (pod.containers?.[0] as { env: { name: string; value: string }[] }).env;
    assert.deepEqual(env.find((e) => e.name === 'KILN_ISOLATION')?.value, 'userns');
    const ns = find(standalone, 'Namespace', undefined, 'kiln');
    assert.equal(ns?.metadata?.labels?.['pod-security.kubernetes.io/enforce'], 'baseline');
  });

  test('RBAC: namespaced Roles only, no wildcards, secrets only where the service needs them', () => {
    for (const objs of [base, standalone, kubernetes]) {
      const cluster = objs.filter((o) => o.kind === 'ClusterRole' || o.kind === 'ClusterRoleBinding');
      assert.deepEqual(cluster.map(id), [], 'no ClusterRole or ClusterRoleBinding');
    }
    const roles = kubernetes.filter((o) => o.kind === 'Role');
    const bindings = kubernetes.filter((o) => o.kind === 'RoleBinding');
    for (const r of roles) {
      for (const rule of (r.rules ?? []) as Rule[]) {
        for (const f of [rule.apiGroups, rule.resources, rule.verbs]) {
          assert.ok(!(f ?? []).some((x) => x.includes('*')), `${id(r)}: a wildcard in ${JSON.stringify(rule)}`);
        }
      }
      const b = bindings.find((x) => x.metadata?.namespace === r.metadata?.namespace && (x.roleRef as { name: string }).name === r.metadata?.name); // prettier-ignore
      assert.ok(b, `${id(r)} is bound`);
      assert.equal((b.roleRef as { kind: string }).kind, 'Role');
      assert.deepEqual(b.subjects, [{ kind: 'ServiceAccount', name: 'kiln', namespace: 'kiln' }]);
    }
    const secretsIn = (ns: string): Rule[] =>
      roles
        .filter((r) => r.metadata?.namespace === ns)
        .flatMap((r) => (r.rules ?? []) as Rule[])
        .filter((x) => (x.resources ?? []).includes('secrets'));
    assert.ok(secretsIn('kiln-builds').length > 0, 'the executor manages the per-build credential Secrets');
    assert.deepEqual(secretsIn('kiln'), [], "no Secret rights in the service's own namespace");
    // a workload namespace: create, and get/update/patch only of the pull secret — no list, no watch
    const apps = secretsIn('apps');
    assert.ok(apps.length > 0, 'the workload namespace example has its pull-secret rule');
    for (const r of apps) {
      assert.ok(!(r.verbs ?? []).some((v) => v === 'list' || v === 'watch'), JSON.stringify(r));
      if ((r.verbs ?? []).some((v) => v !== 'create')) assert.deepEqual(r.resourceNames, ['kiln-pull']);
    }
    const buildSa = find(kubernetes, 'ServiceAccount', 'kiln-builds', 'kiln-build');
    assert.equal(buildSa?.automountServiceAccountToken, false, 'build pods get no API token');
    assert.ok(!bindings.some((b) => JSON.stringify(b.subjects).includes('kiln-build"')), 'and no RoleBinding');
  });

  test('no kaniko pod, no privileged or host-path anything, images from the one kiln image', () => {
    for (const objs of [standalone, kubernetes]) {
      // (the ImageBuild CRD may name kaniko as a backend choice; what matters is that no pod or image is one)
      const pods = podSpecs(objs);
      assert.deepEqual(
        pods.map((p) => p.where),
        objs === kubernetes ? ['Deployment/kiln/kiln', 'Deployment/kiln/kiln-controller'] : ['Deployment/kiln/kiln'],
        'the only pod templates are the service (and the controller in the kubernetes overlay)',
      );
      for (const p of pods) {
        for (const c of p.spec.containers ?? []) {
          assert.equal((c as { image: string }).image, 'registry.example.com/kiln/kiln:v0.1.0', p.where);
        }
      }
    }
  });

  test("Debian's kubectl 1.20 (kustomize v2) renders the base alike and refuses the overlays' v5 fields", () => {
    const kubectl = debianKubectl();
    const norm = (objs: KubeObject[]): string[] =>
      objs.map((o) => JSON.stringify(o).replace(/kiln-config-[a-z0-9]{10}/g, 'kiln-config-HASH')).sort();
    const r = spawnSync(kubectl, ['kustomize', join(DEPLOY, 'base')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    // the same objects (v2 orders them otherwise and hashes the ConfigMap's name with another function)
    assert.deepEqual(norm(parseObjects(r.stdout)), norm(base));
    for (const o of ['standalone', 'kubernetes']) {
      const v2 = spawnSync(kubectl, ['kustomize', join(DEPLOY, 'overlays', o)], { encoding: 'utf8' });
      assert.notEqual(v2.status, 0, `${o}: kustomize v2 cannot render the v5 fields`);
      assert.match(v2.stderr, /unknown field "(labels|patches)"/);
    }
  });

  test('the PSS checker refuses what the standards forbid', () => {
    const ok: PodSpecLike = {
      securityContext: { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [
        { name: 'a', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } },
      ],
    };
    assert.deepEqual(checkPodSpec(ok, 'restricted'), []);
    const privileged: PodSpecLike = {
      ...ok,
      containers: [{ name: 'a', securityContext: { privileged: true } }],
    };
    assert.ok(checkPodSpec(privileged, 'baseline').includes('container a: privileged'));
    assert.ok(checkPodSpec({ ...ok, hostPID: true }, 'baseline').includes('hostPID'));
    assert.ok(checkPodSpec({ ...ok, volumes: [{ name: 'h', hostPath: { path: '/' } }] }, 'baseline').length > 0);
    assert.deepEqual(checkPodSpec({ ...ok, volumes: [{ name: 'n', nfs: {} }] }, 'restricted'), ['volume n: type nfs']);
    const root: PodSpecLike = { ...ok, securityContext: { seccompProfile: { type: 'RuntimeDefault' } } };
    assert.deepEqual(checkPodSpec(root, 'restricted'), ['container a: runAsNonRoot is not true']);
    const sysAdmin: PodSpecLike = {
      ...ok,
      containers: [{ name: 'a', securityContext: { capabilities: { add: ['SYS_ADMIN'] } } }],
    };
    assert.ok(checkPodSpec(sysAdmin, 'baseline').includes('container a: adds capability SYS_ADMIN'));
  });
});
