/**
 * The build pod of one ImageBuildRun, and what its status means for the build. Pure functions: the runner
 * (executor.ts) and the controller (controller.ts) share them, and unit tests read them without a cluster.
 *
 * The pod runs kiln's own image with `kiln pod-build`: the job (what to fetch and build, no secret) is the
 * KILN_POD_JOB environment variable; registry credentials are a `kubernetes.io/dockerconfigjson` Secret mounted
 * read-only as `$DOCKER_CONFIG/config.json`, build secrets a Secret mounted as files — never an env var or an
 * argument. The result (digest, pushed tags) comes back in the container's termination message (JSON); the log
 * is the container's output.
 *
 * Security settings come from the isolation level (src/sandbox/isolation.ts): `restricted` gives a pod that
 * passes Pod Security Standards `restricted`.
 */
import type { IsolationLevel } from '../sandbox/isolation.js';
import { isolationPodSettings } from '../sandbox/isolation.js';
import type { KubeObject, OwnerReference } from './client.js';

export const GROUP = 'kiln.dev';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const RUNS = { api: `/apis/${GROUP}/${VERSION}`, resource: 'imagebuildruns' } as const;
export const IMAGEBUILDS = { api: `/apis/${GROUP}/${VERSION}`, resource: 'imagebuilds' } as const;
/** The finalizer that makes deleting an ImageBuildRun delete its pod first. */
export const FINALIZER = 'kiln.dev/build-pod';
export const LABEL_RUN = 'kiln.dev/run';
export const LABEL_MANAGED = 'app.kubernetes.io/managed-by';
/** Where the Secret with the docker config.json is mounted (DOCKER_CONFIG). */
export const DOCKER_CONFIG_DIR = '/kiln/docker';
export const BUILD_SECRETS_DIR = '/kiln/secrets';
/**
 * Where the git credentials Secret is mounted: keys `username` + `password` (a `kubernetes.io/basic-auth` Secret:
 * https token or password) or `ssh-privatekey` + `known_hosts` (a `kubernetes.io/ssh-auth` Secret with the host
 * keys added). `kiln pod-build` reads them as files (pod-build.ts), never from env or argv.
 */
export const GIT_AUTH_DIR = '/kiln/git';
/** The Secret keys of git credentials, by kind. */
export const GIT_SECRET_KEYS = { basic: ['username', 'password'], ssh: ['ssh-privatekey', 'known_hosts'] } as const;
/**
 * Mode of mounted secret files: owner root (the kubelet's), group fsGroup 1000 (the pod's), read for both and no
 * one else — the build user (uid 1000, not root) reads them through the group; nothing can write them.
 */
export const SECRET_FILE_MODE = 0o440;

/** What `kiln pod-build` builds: everything but secrets. */
export interface PodJob {
  buildId: string;
  repository: string;
  ref?: string;
  commit?: string;
  /** Relative to the repository root. */
  context: string;
  dockerfile: string;
  target?: string;
  buildArgs: Record<string, string>;
  labels: Record<string, string>;
  tags: string[];
  insecureRegistries: string[];
  /** Build secret ids; their values are files in BUILD_SECRETS_DIR. */
  secretIds: string[];
  noCache?: boolean;
  /** `--cache-from/--cache-to` registry reference shared by a project's builds (warm second builds). */
  cacheRef?: string;
}

/** Settings of build pods (service config `kubernetes:` or an ImageBuild's `spec.pod`). */
export interface PodSettings {
  namespace: string;
  /** kiln's own image (runs `kiln pod-build`). */
  image: string;
  serviceAccountName?: string;
  isolation?: IsolationLevel;
  runtimeClassName?: string;
  hostUsers?: boolean;
  nodeSelector?: Record<string, string>;
  tolerations?: Record<string, unknown>[];
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /** Share a layer cache through the registry (`cacheRef`; default true): pods start with an empty KILN_HOME. */
  registryCache?: boolean;
}

/** The tag of the registry cache beside a build's first tag (`registry/repo:kiln-cache`). */
export const CACHE_TAG = 'kiln-cache';

/**
 * The registry cache reference of a build pushing `tags`: the first tag's repository with CACHE_TAG. One per
 * image repository, so every build of a project's image (any branch) imports what the previous one exported.
 */
export function cacheRefOf(tags: readonly string[]): string | undefined {
  const first = tags[0];
  if (!first) return undefined;
  const noDigest = first.split('@')[0] ?? first;
  const slash = noDigest.lastIndexOf('/');
  const colon = noDigest.lastIndexOf(':');
  const repo = colon > slash ? noDigest.slice(0, colon) : noDigest;
  return `${repo}:${CACHE_TAG}`;
}

export interface BuildPodRequest {
  name: string;
  job: PodJob;
  settings: PodSettings;
  timeoutSeconds: number;
  /** The ImageBuildRun that owns the pod (only when it lives in the pod's namespace: owners never cross one). */
  owner?: OwnerReference;
  runName: string;
  labels?: Record<string, string>;
  registrySecret?: string;
  buildSecret?: string;
  /** A Secret with git credentials (GIT_SECRET_KEYS), mounted read-only at GIT_AUTH_DIR. */
  gitSecret?: string;
}

/** A label value (≤ 63 characters of [A-Za-z0-9._-], alphanumeric at both ends). */
export function labelValue(v: string): string {
  const s = v.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 63);
  return s.replace(/^[^A-Za-z0-9]+/, '').replace(/[^A-Za-z0-9]+$/, '');
}

/** A DNS-1123 object name from free text (lower case, ≤ max). */
export function objectName(v: string, max = 63): string {
  const s = v
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/-+/g, '-')
    .slice(0, max);
  return s.replace(/^-+/, '').replace(/-+$/, '') || 'x';
}

/** The v1 Pod of one build. */
export function buildPod(r: BuildPodRequest): KubeObject {
  const level = r.settings.isolation ?? 'restricted';
  const iso = isolationPodSettings(
    level,
    r.settings.runtimeClassName ? { runtimeClassName: r.settings.runtimeClassName } : {},
  );
  const env: { name: string; value: string }[] = [
    { name: 'KILN_POD_JOB', value: JSON.stringify(r.job) },
    { name: 'KILN_HOME', value: '/kiln/home' },
    { name: 'HOME', value: '/kiln/home' },
    // the home is an emptyDir gone with the pod: keep nothing for a next build (the last COPY skips its snapshot)
    { name: 'KILN_EPHEMERAL_HOME', value: '1' },
    ...Object.entries(iso.env).map(([name, value]) => ({ name, value })),
  ];
  const mounts: Record<string, unknown>[] = [{ name: 'kiln-home', mountPath: '/kiln/home' }];
  const volumes: Record<string, unknown>[] = [{ name: 'kiln-home', emptyDir: {} }];
  if (r.registrySecret) {
    env.push({ name: 'DOCKER_CONFIG', value: DOCKER_CONFIG_DIR });
    mounts.push({ name: 'registry-auth', mountPath: DOCKER_CONFIG_DIR, readOnly: true });
    volumes.push({
      name: 'registry-auth',
      secret: {
        secretName: r.registrySecret,
        items: [{ key: '.dockerconfigjson', path: 'config.json' }],
        defaultMode: SECRET_FILE_MODE,
      },
    });
  }
  if (r.buildSecret) {
    mounts.push({ name: 'build-secrets', mountPath: BUILD_SECRETS_DIR, readOnly: true });
    volumes.push({ name: 'build-secrets', secret: { secretName: r.buildSecret, defaultMode: SECRET_FILE_MODE } });
  }
  if (r.gitSecret) {
    mounts.push({ name: 'git-auth', mountPath: GIT_AUTH_DIR, readOnly: true });
    volumes.push({ name: 'git-auth', secret: { secretName: r.gitSecret, defaultMode: SECRET_FILE_MODE } });
  }
  const container: Record<string, unknown> = {
    name: 'build',
    image: r.settings.image,
    args: ['pod-build'],
    env,
    volumeMounts: mounts,
    securityContext: iso.securityContext,
    terminationMessagePolicy: 'File',
    terminationMessagePath: '/dev/termination-log',
  };
  if (r.settings.imagePullPolicy) container.imagePullPolicy = r.settings.imagePullPolicy;
  if (r.settings.resources) container.resources = r.settings.resources;
  const spec: Record<string, unknown> = {
    restartPolicy: 'Never',
    activeDeadlineSeconds: r.timeoutSeconds,
    automountServiceAccountToken: false,
    enableServiceLinks: false,
    containers: [container],
    volumes,
    // the restricted level's pod-wide defaults as well (a sidecar added by a mutating webhook inherits them)
    securityContext:
      level === 'restricted'
        ? { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' }, fsGroup: 1000 }
        : { fsGroup: 1000 },
  };
  if (r.settings.serviceAccountName) spec.serviceAccountName = r.settings.serviceAccountName;
  const runtimeClassName = r.settings.runtimeClassName ?? iso.pod.runtimeClassName;
  if (runtimeClassName) spec.runtimeClassName = runtimeClassName;
  const hostUsers = r.settings.hostUsers ?? iso.pod.hostUsers;
  if (hostUsers !== undefined) spec.hostUsers = hostUsers;
  if (r.settings.nodeSelector && Object.keys(r.settings.nodeSelector).length)
    spec.nodeSelector = r.settings.nodeSelector;
  if (r.settings.tolerations?.length) spec.tolerations = r.settings.tolerations;
  const labels: Record<string, string> = {
    [LABEL_MANAGED]: 'kiln',
    'app.kubernetes.io/component': 'build',
    [LABEL_RUN]: labelValue(r.runName),
    'kiln.dev/build-id': labelValue(r.job.buildId),
    ...r.labels,
  };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: r.name,
      namespace: r.settings.namespace,
      labels,
      annotations: { 'kiln.dev/isolation': level },
      ...(r.owner ? { ownerReferences: [r.owner] } : {}),
    },
    spec,
  };
}

/**
 * Why a Secret cannot serve as git credentials (undefined: it can): it needs `password` (https: a token or a
 * password; `username` optional) or `ssh-privatekey` together with `known_hosts` — kiln's ssh checks host keys
 * strictly and never trusts a host on first use.
 */
export function gitSecretProblem(sec: { data?: Record<string, string> }): string | undefined {
  const keys = new Set(Object.keys(sec.data ?? {}));
  if (keys.has('ssh-privatekey')) {
    return keys.has('known_hosts')
      ? undefined
      : 'has ssh-privatekey but no known_hosts (add the server host keys: ssh-keyscan HOST, then verify them)';
  }
  if (keys.has('password')) return undefined;
  return 'has neither password (https) nor ssh-privatekey + known_hosts';
}

/** The docker config.json of a `kubernetes.io/dockerconfigjson` Secret for one registry. */
export function dockerConfigJson(registry: string, username: string, password: string): string {
  const auth = Buffer.from(`${username}:${password}`).toString('base64');
  return JSON.stringify({ auths: { [registry]: { auth } } });
}

/** What `kiln pod-build` writes to the termination log. */
export type PodResult =
  | { ok: true; digest: string; configDigest: string; pushed: string[]; bases?: { name: string; digest: string }[] }
  | { ok: false; code: string; message: string; reason: string };

interface ContainerState {
  waiting?: { reason?: string; message?: string };
  running?: { startedAt?: string };
  terminated?: { exitCode?: number; reason?: string; message?: string; signal?: number };
}

interface PodStatus {
  phase?: string;
  reason?: string;
  message?: string;
  startTime?: string;
  containerStatuses?: { name: string; state?: ContainerState; lastState?: ContainerState }[];
}

/** What a pod's status says about its build. */
export type PodVerdict =
  | { state: 'pending'; reason?: string }
  | { state: 'running' }
  | { state: 'succeeded'; result: Extract<PodResult, { ok: true }> }
  | { state: 'failed'; code: string; reason: string; message: string; timedOut?: boolean };

/** Container waiting reasons that will not resolve by themselves: the build fails with them. */
const FATAL_WAITING = new Set([
  'ImagePullBackOff',
  'ErrImagePull',
  'InvalidImageName',
  'CreateContainerConfigError',
  'CreateContainerError',
  'RunContainerError',
]);

/** Interpret a build pod's status (the kubelet's, or a test's). */
export function podVerdict(pod: KubeObject): PodVerdict {
  const st = (pod.status ?? {}) as PodStatus;
  const c = st.containerStatuses?.find((s) => s.name === 'build');
  const term = c?.state?.terminated;
  const parse = (msg: string | undefined): PodResult | undefined => {
    if (!msg) return undefined;
    try {
      const r = JSON.parse(msg) as PodResult;
      return typeof r === 'object' && r !== null && typeof r.ok === 'boolean' ? r : undefined;
    } catch {
      return undefined;
    }
  };
  if (st.phase === 'Failed' && st.reason === 'DeadlineExceeded') {
    return {
      state: 'failed',
      code: 'TIMED_OUT',
      reason: 'DeadlineExceeded',
      message: `the build pod exceeded its deadline (activeDeadlineSeconds): ${st.message ?? ''}`.trim(),
      timedOut: true,
    };
  }
  if (st.phase === 'Failed' && st.reason === 'Evicted') {
    return {
      state: 'failed',
      code: 'POD_EVICTED',
      reason: 'Evicted',
      message: `the build pod was evicted: ${st.message ?? ''}`.trim(),
    };
  }
  if (term) {
    if (term.reason === 'OOMKilled') {
      return {
        state: 'failed',
        code: 'OOM_KILLED',
        reason: 'OOMKilled',
        message: 'the build container ran out of memory (OOMKilled): raise the memory limit of the build pods',
      };
    }
    const res = parse(term.message);
    if (term.exitCode === 0 && res?.ok) return { state: 'succeeded', result: res };
    if (res && !res.ok) return { state: 'failed', code: res.code, reason: res.reason, message: res.message };
    const why = term.reason ?? 'Error';
    return {
      state: 'failed',
      code: 'POD_FAILED',
      reason: `${why} (exit ${term.exitCode ?? '?'})`,
      message: `the build container ended with ${why}, exit code ${term.exitCode ?? '?'}${term.message ? `: ${term.message.split('\n')[0]}` : ''}`,
    };
  }
  if (st.phase === 'Failed') {
    const why = st.reason ?? 'Failed';
    return {
      state: 'failed',
      code: 'POD_FAILED',
      reason: why,
      message: `the build pod failed: ${why} ${st.message ?? ''}`.trim(),
    };
  }
  const waiting = c?.state?.waiting;
  if (waiting?.reason && FATAL_WAITING.has(waiting.reason)) {
    return {
      state: 'failed',
      code: 'POD_IMAGE',
      reason: waiting.reason,
      message: `the build container cannot start: ${waiting.reason}${waiting.message ? `: ${waiting.message}` : ''}`,
    };
  }
  if (c?.state?.running || st.phase === 'Running') return { state: 'running' };
  return waiting?.reason ? { state: 'pending', reason: waiting.reason } : { state: 'pending' };
}

/** The `Succeeded` condition of an ImageBuildRun for a final or current phase. */
export function succeededCondition(
  phase: RunPhase,
  reason: string,
  message: string,
  now = new Date(),
): {
  type: 'Succeeded';
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime: string;
} {
  const status =
    phase === 'Succeeded'
      ? 'True'
      : phase === 'Failed' || phase === 'Cancelled' || phase === 'TimedOut'
        ? 'False'
        : 'Unknown';
  const r = reason.replace(/[^A-Za-z0-9]/g, '') || phase;
  return {
    type: 'Succeeded',
    status,
    reason: r.slice(0, 64),
    message: message.slice(0, 1024),
    lastTransitionTime: now.toISOString(),
  };
}

export type RunPhase = 'Pending' | 'Running' | 'Pushing' | 'Succeeded' | 'Failed' | 'Cancelled' | 'TimedOut';

export const FINAL_PHASES: ReadonlySet<RunPhase> = new Set(['Succeeded', 'Failed', 'Cancelled', 'TimedOut']);
