/**
 * ImageBuildRun objects (deploy/base/crds/imagebuildrun.yaml): their TypeScript shape and the status writes the
 * controller and the Kubernetes executor share. Status goes through the status subresource (a merge patch), so
 * an RBAC role can let kiln write status without letting it rewrite what a user asked for.
 */
import { KilnError } from '../errors.js';
import type { KubeClient, KubeObject } from './client.js';
import { RUNS, succeededCondition, FINAL_PHASES, type RunPhase, type PodVerdict } from './pod.js';

export interface RunSpec {
  imageBuild?: string;
  project?: string;
  image: string;
  ref?: string;
  commit?: string;
  repository?: string;
  registry?: string;
  context?: string;
  dockerfile?: string;
  target?: string;
  buildArgs?: Record<string, string>;
  tags?: string[];
  insecureRegistry?: boolean;
  registrySecret?: string;
  gitSecret?: string;
  timeoutSeconds?: number;
  isolation?: 'userns' | 'restricted' | 'vm';
  buildId?: string;
  triggeredBy?: { type?: string; by?: string; reason?: string };
}

export interface RunStatus {
  observedGeneration?: number;
  phase?: RunPhase;
  reason?: string;
  message?: string;
  podName?: string;
  podNamespace?: string;
  commit?: string;
  digest?: string;
  pushed?: string[];
  logURL?: string;
  startedAt?: string;
  finishedAt?: string;
  stages?: { name: string; kind?: string; status?: string; startedAt?: string; durationMs?: number }[];
  conditions?: ReturnType<typeof succeededCondition>[];
}

export interface ImageBuildRun extends KubeObject {
  spec: RunSpec;
  status?: RunStatus;
}

/** Condition reasons by failure code (CamelCase, as Kubernetes conditions have them). */
const REASONS: Record<string, string> = {
  OOM_KILLED: 'OOMKilled',
  TIMED_OUT: 'DeadlineExceeded',
  POD_EVICTED: 'Evicted',
  K8S_FORBIDDEN: 'Forbidden',
  K8S_NAMESPACE_NOT_FOUND: 'NamespaceNotFound',
  K8S_UNREACHABLE: 'APIServerUnreachable',
  SECRET_NOT_FOUND: 'SecretNotFound',
  IMAGEBUILD_NOT_FOUND: 'ImageBuildNotFound',
  INTERRUPTED: 'Cancelled',
};

/** The status patch for a phase: phase, reason, message and the `Succeeded` condition. */
export function phaseStatus(phase: RunPhase, reason: string, message: string, code?: string): RunStatus {
  const condReason =
    (code && REASONS[code]) ?? (/^[A-Za-z]+$/.test(reason) ? reason : phase === 'Failed' ? 'BuildFailed' : phase);
  const st: RunStatus = { phase, reason, message, conditions: [succeededCondition(phase, condReason, message)] };
  if (FINAL_PHASES.has(phase)) st.finishedAt = new Date().toISOString();
  return st;
}

/** The status of a run whose pod reached a verdict (undefined: nothing to write yet). */
export function statusFromVerdict(v: PodVerdict): RunStatus | undefined {
  switch (v.state) {
    case 'pending':
      return undefined;
    case 'running':
      return phaseStatus('Running', 'Running', 'the build pod is running');
    case 'succeeded': {
      const st = phaseStatus('Succeeded', 'Succeeded', `pushed ${v.result.pushed.join(', ')}`);
      st.digest = v.result.digest;
      st.pushed = v.result.pushed;
      return st;
    }
    case 'failed': {
      const st = phaseStatus(v.timedOut ? 'TimedOut' : 'Failed', v.reason, v.message, v.code);
      if (/^(OOMKilled|Evicted|ImagePullBackOff|ErrImagePull|DeadlineExceeded)$/.test(v.reason)) {
        st.conditions = [succeededCondition(st.phase ?? 'Failed', v.reason, v.message)];
      }
      return st;
    }
  }
}

/** Write `status` (merge patch on the status subresource). A run deleted meanwhile is not an error. */
export async function patchRunStatus(
  client: KubeClient,
  namespace: string,
  name: string,
  status: RunStatus,
): Promise<ImageBuildRun | undefined> {
  try {
    return await client.patch<ImageBuildRun>({ ...RUNS, namespace, name, sub: 'status' }, { status });
  } catch (e) {
    if (e instanceof KilnError && e.code === 'K8S_NOT_FOUND') return undefined;
    throw e;
  }
}
