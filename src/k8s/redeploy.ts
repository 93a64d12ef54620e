/**
 * The Kubernetes side of redeploy (src/service/delivery/redeploy.ts holds the rule and the patch): list the four
 * workload kinds, apply the JSON Patch the rule planned, and keep an image pull Secret in each workload namespace
 * so the patched workloads can pull what kiln pushed (as Draft's DEP-009 builder did).
 *
 * The pull Secret is `kubernetes.io/dockerconfigjson` for the project's registry host, created or refreshed
 * (replaced) on every delivery, labelled as kiln's; the workloads that opted in get it in their pod template's
 * `imagePullSecrets` by the same kind of guarded patch (only when missing).
 */
import { KilnError } from '../errors.js';
import {
  WORKLOAD_KINDS,
  podSpecPath,
  type JsonPatchOp,
  type Redeployer,
  type Workload,
  type WorkloadKind,
} from '../service/delivery/redeploy.js';
import { CORE, type KubeClient, type KubeObject, type ResourceRef } from './client.js';
import { dockerConfigJson } from './pod.js';

const KIND_REF: Record<WorkloadKind, Pick<ResourceRef, 'api' | 'resource'>> = {
  Deployment: { api: '/apis/apps/v1', resource: 'deployments' },
  StatefulSet: { api: '/apis/apps/v1', resource: 'statefulsets' },
  DaemonSet: { api: '/apis/apps/v1', resource: 'daemonsets' },
  CronJob: { api: '/apis/batch/v1', resource: 'cronjobs' },
};

/** The {@link Redeployer} port over the Kubernetes API. */
export class KubeRedeployer implements Redeployer {
  constructor(private readonly client: KubeClient) {}

  async list(namespace?: string): Promise<Workload[]> {
    const out: Workload[] = [];
    for (const kind of WORKLOAD_KINDS) {
      const ref: ResourceRef = { ...KIND_REF[kind], ...(namespace !== undefined ? { namespace } : {}) };
      const list = await this.client.list<KubeObject>(ref);
      for (const it of list.items) out.push({ ...(it as Workload), kind });
    }
    return out;
  }

  async patch(kind: WorkloadKind, namespace: string, name: string, patch: JsonPatchOp[]): Promise<void> {
    await this.client.patch({ ...KIND_REF[kind], namespace, name }, patch, 'json');
  }

  /** Create or refresh the pull Secret `name` in `namespace` for `registry` (host[:port]). */
  async ensurePullSecret(
    namespace: string,
    name: string,
    registry: string,
    username: string,
    password: string,
  ): Promise<'created' | 'refreshed'> {
    const body: KubeObject = {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name, namespace, labels: { 'app.kubernetes.io/managed-by': 'kiln' } },
      type: 'kubernetes.io/dockerconfigjson',
      stringData: { '.dockerconfigjson': dockerConfigJson(registry, username, password) },
    };
    const ref = { ...CORE, resource: 'secrets', namespace };
    try {
      await this.client.create(ref, body);
      return 'created';
    } catch (e) {
      if (!(e instanceof KilnError && e.code === 'K8S_EXISTS')) throw e;
      await this.client.replace({ ...ref, name }, body);
      return 'refreshed';
    }
  }

  /** Add `secret` to a workload's pod template imagePullSecrets unless it is there (a guarded JSON Patch). */
  async usePullSecret(w: Workload, secret: string): Promise<boolean> {
    const base = podSpecPath(w.kind);
    let spec: unknown = w;
    for (const p of base.split('/').slice(1)) spec = (spec as Record<string, unknown> | undefined)?.[p];
    const current = (spec as { imagePullSecrets?: { name: string }[] } | undefined)?.imagePullSecrets;
    if (current?.some((s) => s.name === secret)) return false;
    const ops: JsonPatchOp[] = current
      ? [{ op: 'add', path: `${base}/imagePullSecrets/-`, value: { name: secret } }]
      : [{ op: 'add', path: `${base}/imagePullSecrets`, value: [{ name: secret }] }];
    await this.patch(w.kind, w.metadata.namespace ?? 'default', w.metadata.name, ops);
    return true;
  }
}
