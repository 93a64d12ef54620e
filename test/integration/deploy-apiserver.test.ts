/**
 * deploy/ against a real kube-apiserver (test/helpers/kube.ts: built from k8s.io/kubernetes, with Debian's etcd;
 * RBAC and the PodSecurity admission plugin on; no kubelet, so pods are admitted and stored, never run):
 * every object of the kubernetes overlay is created with strict field validation, a Pod from every pod template is
 * admitted by PodSecurity in its namespace (restricted; the standalone one in a baseline namespace and refused by a
 * restricted one), a build pod of the restricted isolation level is admitted and a privileged one refused, and
 * `kubectl auth can-i` (Debian's kubectl, impersonating the service's ServiceAccount) shows the RBAC lets the
 * service do its job and nothing more.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { Agent, request } from 'undici';
import { startKubeServer, type KubeServer } from '../helpers/kube.js';
import { goTools } from '../helpers/go-tools.js';
import { checkPodSpec, podSpecs, type KubeObject, type PodSpecLike, type SecurityContextLike } from '../helpers/pss.js';
import { isolationPodSettings } from '../../src/sandbox/isolation.js';

// kube-apiserver is built (or waited for: scripts/setup.sh may still be building it in the background) before
// any test timeout starts.
goTools('kube');

const REPO = join(import.meta.dirname, '..', '..');
const SA = 'system:serviceaccount:kiln:kiln';

/** REST collection paths of the kinds deploy/ uses. */
const KINDS: Record<string, { prefix: string; plural: string; namespaced: boolean }> = {
  Namespace: { prefix: '/api/v1', plural: 'namespaces', namespaced: false },
  ServiceAccount: { prefix: '/api/v1', plural: 'serviceaccounts', namespaced: true },
  ConfigMap: { prefix: '/api/v1', plural: 'configmaps', namespaced: true },
  Service: { prefix: '/api/v1', plural: 'services', namespaced: true },
  PersistentVolumeClaim: { prefix: '/api/v1', plural: 'persistentvolumeclaims', namespaced: true },
  LimitRange: { prefix: '/api/v1', plural: 'limitranges', namespaced: true },
  Pod: { prefix: '/api/v1', plural: 'pods', namespaced: true },
  Deployment: { prefix: '/apis/apps/v1', plural: 'deployments', namespaced: true },
  NetworkPolicy: { prefix: '/apis/networking.k8s.io/v1', plural: 'networkpolicies', namespaced: true },
  Role: { prefix: '/apis/rbac.authorization.k8s.io/v1', plural: 'roles', namespaced: true },
  RoleBinding: { prefix: '/apis/rbac.authorization.k8s.io/v1', plural: 'rolebindings', namespaced: true },
  CustomResourceDefinition: {
    prefix: '/apis/apiextensions.k8s.io/v1',
    plural: 'customresourcedefinitions',
    namespaced: false,
  },
};

function render(overlay: string): KubeObject[] {
  const bin = goTools('kustomize').kustomize ?? '';
  const r = spawnSync(bin, ['build', join(REPO, 'deploy', 'overlays', overlay)], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as KubeObject | null)
    .filter((o): o is KubeObject => o !== null);
}

describe('deploy/ against a real API server', () => {
  let kube: KubeServer;
  let agent: Agent;
  let kubectl: string;

  /** POST an object (strict field validation: an unknown or misplaced field is an error, not a warning). */
  async function create(o: KubeObject, ns?: string): Promise<{ status: number; body: string; warning: string }> {
    const k = KINDS[o.kind ?? ''];
    assert.ok(k, `a path for kind ${o.kind}`);
    const namespace = ns ?? o.metadata?.namespace;
    const path = k.namespaced ? `${k.prefix}/namespaces/${namespace}/${k.plural}` : `${k.prefix}/${k.plural}`;
    const body = ns ? { ...o, metadata: { ...o.metadata, namespace: ns } } : o;
    const r = await request(`${kube.url}${path}?fieldValidation=Strict`, {
      method: 'POST',
      headers: { authorization: `Bearer ${kube.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      dispatcher: agent,
    });
    const warning = String(r.headers.warning ?? '');
    return { status: r.statusCode, body: await r.body.text(), warning };
  }

  /** `kubectl auth can-i VERB RESOURCE [-n NS]` as ServiceAccount `as`: true for yes (exit 0), false for no (1). */
  function canI(args: string[], as = SA): boolean {
    const r = spawnSync(kubectl, ['--kubeconfig', kube.kubeconfigPath, 'auth', 'can-i', ...args, '--as', as], {
      encoding: 'utf8',
    });
    assert.ok(r.status === 0 || r.status === 1, `kubectl auth can-i ${args.join(' ')}: ${r.stderr}`);
    return r.status === 0;
  }

  const pod = (name: string, spec: PodSpecLike): KubeObject => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name },
    spec: spec as Record<string, unknown>,
  });

  before(async () => {
    kube = await startKubeServer();
    agent = new Agent({ connect: { ca: readFileSync(kube.caFile, 'utf8') } });
    const k = spawnSync('bash', [join(REPO, 'scripts', 'debian-kubectl.sh')], { encoding: 'utf8' });
    assert.equal(k.status, 0, k.stderr);
    kubectl = k.stdout.trim();
  });

  after(async () => {
    await agent?.close();
    await kube?.stop();
  });

  test('the kubernetes overlay: every object is accepted with strict validation; pods pass PodSecurity', async () => {
    const objs = render('kubernetes');
    // the workload namespace is the workloads' own (not in the overlay)
    const apps = await create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'apps' } });
    assert.equal(apps.status, 201, apps.body);
    const order = (o: KubeObject): number => (o.kind === 'Namespace' ? 0 : o.kind === 'CustomResourceDefinition' ? 1 : 2); // prettier-ignore
    for (const o of [...objs].sort((a, b) => order(a) - order(b))) {
      const r = await create(o);
      assert.equal(r.status, 201, `${o.kind} ${o.metadata?.namespace}/${o.metadata?.name}: ${r.body}`);
      assert.equal(r.warning, '', `${o.kind} ${o.metadata?.name}: no warning`);
    }
    // a Pod from each pod template, in its namespace (PSS restricted enforced there)
    for (const [i, p] of podSpecs(objs).entries()) {
      const r = await create(pod(`from-template-${i}`, p.spec), p.namespace);
      assert.equal(r.status, 201, `${p.where}: ${r.body}`);
      assert.equal(r.warning, '');
    }
    // the build pods the executor makes at the restricted level, as the build ServiceAccount
    const s = isolationPodSettings('restricted');
    const build: PodSpecLike & { serviceAccountName: string; automountServiceAccountToken: boolean } = {
      ...s.pod,
      serviceAccountName: 'kiln-build',
      automountServiceAccountToken: false,
      containers: [{ name: 'kiln', image: 'kiln', securityContext: s.securityContext as SecurityContextLike }],
    };
    const ok = await create(pod('build-1', build), 'kiln-builds');
    assert.equal(ok.status, 201, ok.body);
    // and a privileged one is refused by the namespace's PodSecurity label
    const bad = await create(
      pod('privileged', {
        serviceAccountName: 'kiln-build',
        containers: [{ name: 'x', image: 'x', securityContext: { privileged: true } }],
      } as PodSpecLike),
      'kiln-builds',
    );
    assert.equal(bad.status, 403, bad.body);
    const why = (JSON.parse(bad.body) as { message: string }).message;
    assert.match(why, /violates PodSecurity "restricted:latest": privileged/);
  });

  test('the standalone overlay: its pod is admitted by a baseline namespace and refused by a restricted one', async () => {
    const objs = render('standalone');
    const [p] = podSpecs(objs);
    assert.ok(p);
    assert.deepEqual(checkPodSpec(p.spec, 'baseline'), []);
    for (const [name, level] of [
      ['standalone-baseline', 'baseline'],
      ['standalone-restricted', 'restricted'],
    ] as const) {
      const ns = await create({
        apiVersion: 'v1',
        kind: 'Namespace',
        metadata: { name, labels: { 'pod-security.kubernetes.io/enforce': level } },
      });
      assert.equal(ns.status, 201, ns.body);
      const sa = await create({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'kiln' } }, name);
      assert.equal(sa.status, 201, sa.body);
    }
    const ok = await create(pod('kiln', p.spec), 'standalone-baseline');
    assert.equal(ok.status, 201, ok.body);
    const refused = await create(pod('kiln', p.spec), 'standalone-restricted');
    assert.equal(refused.status, 403, refused.body);
    // the server names the same rules the test's checker names
    assert.match(refused.body, /allowPrivilegeEscalation != false/);
    assert.match(refused.body, /unrestricted capabilities/);
  });

  test('kubectl auth can-i: the service can do its job and nothing more; build pods can do nothing', () => {
    const yes: string[][] = [
      ['create', 'pods', '-n', 'kiln-builds'],
      ['delete', 'pods', '-n', 'kiln-builds'],
      ['watch', 'pods', '-n', 'kiln-builds'],
      ['get', 'pods', '--subresource=log', '-n', 'kiln-builds'],
      ['create', 'secrets', '-n', 'kiln-builds'],
      ['update', 'secrets', '-n', 'kiln-builds'],
      ['watch', 'imagebuildruns.kiln.dev', '-n', 'kiln-builds'],
      ['create', 'imagebuildruns.kiln.dev', '-n', 'kiln-builds'],
      ['patch', 'imagebuildruns.kiln.dev', '--subresource=status', '-n', 'kiln-builds'],
      ['patch', 'deployments.apps', '-n', 'apps'],
      ['patch', 'cronjobs.batch', '-n', 'apps'],
      ['create', 'secrets', '-n', 'apps'],
      ['update', 'secrets/kiln-pull', '-n', 'apps'],
    ];
    for (const a of yes) assert.equal(canI(a), true, `can ${a.join(' ')}`);
    const no: string[][] = [
      ['get', 'secrets', '--all-namespaces'],
      ['list', 'secrets', '--all-namespaces'],
      ['list', 'secrets', '-n', 'kube-system'],
      ['get', 'secrets', '-n', 'kiln'],
      ['list', 'secrets', '-n', 'apps'],
      ['get', 'secrets/other', '-n', 'apps'],
      ['update', 'secrets/other', '-n', 'apps'],
      ['*', '*', '-n', 'kiln-builds'],
      ['*', '*', '--all-namespaces'],
      ['create', 'pods', '-n', 'apps'],
      ['create', 'pods', '-n', 'default'],
      ['create', 'pods', '--subresource=exec', '-n', 'kiln-builds'],
      ['create', 'rolebindings.rbac.authorization.k8s.io', '-n', 'kiln-builds'],
      ['create', 'clusterroles.rbac.authorization.k8s.io'],
      ['impersonate', 'users'],
      ['delete', 'namespaces'],
      ['patch', 'deployments.apps', '-n', 'kube-system'],
    ];
    for (const a of no) assert.equal(canI(a), false, `cannot ${a.join(' ')}`);
    for (const a of [
      ['list', 'pods', '-n', 'kiln-builds'],
      ['get', 'secrets', '-n', 'kiln-builds'],
    ]) {
      assert.equal(canI(a, 'system:serviceaccount:kiln-builds:kiln-build'), false, `build pods cannot ${a.join(' ')}`);
    }
  });
});
