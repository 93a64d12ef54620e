/**
 * A checker of the Kubernetes Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
 * the `latest` version of the `baseline` and `restricted` profiles) for pod specs found in rendered manifests, so the
 * deploy tests can say which rule a manifest breaks even where no API server runs. Where one runs, the
 * PodSecurity admission plugin is the authority; this checker must agree with it (the tests check both).
 *
 *   const pods = podSpecs(objects);                       // every pod template: Deployment, Job, CronJob, Pod, …
 *   assert.deepEqual(checkPodSpec(pods[0].spec, 'restricted'), []);
 */

/** A pod spec as parsed from YAML (only the fields the standards look at are typed). */
export interface PodSpecLike {
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  hostUsers?: boolean;
  securityContext?: SecurityContextLike & { sysctls?: { name: string; value?: string }[] };
  containers?: ContainerLike[];
  initContainers?: ContainerLike[];
  ephemeralContainers?: ContainerLike[];
  volumes?: Record<string, unknown>[];
}

export interface SecurityContextLike {
  privileged?: boolean;
  allowPrivilegeEscalation?: boolean;
  runAsNonRoot?: boolean;
  runAsUser?: number;
  procMount?: string;
  capabilities?: { add?: string[]; drop?: string[] };
  seccompProfile?: { type?: string; localhostProfile?: string };
  appArmorProfile?: { type?: string };
  seLinuxOptions?: { type?: string; user?: string; role?: string };
  windowsOptions?: { hostProcess?: boolean };
}

export interface ContainerLike {
  name?: string;
  image?: string;
  securityContext?: SecurityContextLike;
  ports?: { hostPort?: number }[];
}

export type PssLevel = 'baseline' | 'restricted';

const BASELINE_CAPS = new Set([
  'AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE', 'SETFCAP',
  'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT',
]); // prettier-ignore
const SAFE_SYSCTLS = new Set([
  'kernel.shm_rmid_forced', 'net.ipv4.ip_local_port_range', 'net.ipv4.ip_unprivileged_port_start',
  'net.ipv4.tcp_syncookies', 'net.ipv4.ping_group_range', 'net.ipv4.ip_local_reserved_ports',
  'net.ipv4.tcp_keepalive_time', 'net.ipv4.tcp_fin_timeout', 'net.ipv4.tcp_keepalive_intvl',
  'net.ipv4.tcp_keepalive_probes',
]); // prettier-ignore
const SELINUX_TYPES = new Set(['', 'container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t']);
const RESTRICTED_VOLUMES = new Set([
  'configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret',
]); // prettier-ignore

function containersOf(spec: PodSpecLike): ContainerLike[] {
  return [...(spec.containers ?? []), ...(spec.initContainers ?? []), ...(spec.ephemeralContainers ?? [])];
}

/**
 * The rules a container breaks at a level, given the pod-level security context it inherits from (`pod`).
 * Exported for containers outside pod specs (Tekton steps, Shipwright strategy steps).
 */
export function checkContainer(c: ContainerLike, level: PssLevel, pod: SecurityContextLike = {}): string[] {
  const out: string[] = [];
  const name = `container ${c.name ?? '?'}`;
  const sc = c.securityContext ?? {};
  if (sc.privileged === true) out.push(`${name}: privileged`);
  for (const cap of sc.capabilities?.add ?? []) {
    if (!BASELINE_CAPS.has(cap)) out.push(`${name}: adds capability ${cap}`);
  }
  for (const p of c.ports ?? []) if (p.hostPort) out.push(`${name}: hostPort ${p.hostPort}`);
  if (sc.procMount !== undefined && sc.procMount !== 'Default') out.push(`${name}: procMount ${sc.procMount}`);
  if (sc.seccompProfile?.type === 'Unconfined') out.push(`${name}: seccomp Unconfined`);
  if (sc.appArmorProfile?.type === 'Unconfined') out.push(`${name}: AppArmor Unconfined`);
  if (sc.windowsOptions?.hostProcess) out.push(`${name}: hostProcess`);
  const se = sc.seLinuxOptions;
  if (se && (!SELINUX_TYPES.has(se.type ?? '') || se.user || se.role)) out.push(`${name}: SELinux options`);
  if (level === 'baseline') return out;

  if (sc.allowPrivilegeEscalation !== false) out.push(`${name}: allowPrivilegeEscalation is not false`);
  const nonRoot = sc.runAsNonRoot ?? pod.runAsNonRoot;
  if (nonRoot !== true) out.push(`${name}: runAsNonRoot is not true`);
  if ((sc.runAsUser ?? pod.runAsUser) === 0) out.push(`${name}: runAsUser 0`);
  const seccomp = sc.seccompProfile?.type ?? pod.seccompProfile?.type;
  if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') {
    out.push(`${name}: seccompProfile is not RuntimeDefault or Localhost`);
  }
  if (!(sc.capabilities?.drop ?? []).includes('ALL')) out.push(`${name}: capabilities do not drop ALL`);
  for (const cap of sc.capabilities?.add ?? []) {
    if (cap !== 'NET_BIND_SERVICE') out.push(`${name}: restricted adds capability ${cap}`);
  }
  return out;
}

/** The rules of `level` a pod spec breaks (empty: it passes). */
export function checkPodSpec(spec: PodSpecLike, level: PssLevel): string[] {
  const out: string[] = [];
  if (spec.hostNetwork) out.push('hostNetwork');
  if (spec.hostPID) out.push('hostPID');
  if (spec.hostIPC) out.push('hostIPC');
  const psc = spec.securityContext ?? {};
  if (psc.seccompProfile?.type === 'Unconfined') out.push('pod seccomp Unconfined');
  if (psc.appArmorProfile?.type === 'Unconfined') out.push('pod AppArmor Unconfined');
  const se = psc.seLinuxOptions;
  if (se && (!SELINUX_TYPES.has(se.type ?? '') || se.user || se.role)) out.push('pod SELinux options');
  for (const s of psc.sysctls ?? []) if (!SAFE_SYSCTLS.has(s.name)) out.push(`unsafe sysctl ${s.name}`);
  for (const v of spec.volumes ?? []) {
    const kinds = Object.keys(v).filter((k) => k !== 'name');
    if (kinds.includes('hostPath')) out.push(`volume ${String(v.name)}: hostPath`);
    else if (level === 'restricted' && !kinds.every((k) => RESTRICTED_VOLUMES.has(k))) {
      out.push(`volume ${String(v.name)}: type ${kinds.join(',')}`);
    }
  }
  const containers = containersOf(spec);
  if (containers.length === 0) out.push('no containers');
  for (const c of containers) out.push(...checkContainer(c, level, psc));
  return out;
}

/** A Kubernetes object as parsed from YAML. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
  [key: string]: unknown;
}

/** Every pod spec in `objects`, with where it comes from (`Kind/namespace/name`). */
export function podSpecs(objects: KubeObject[]): { where: string; namespace?: string; spec: PodSpecLike }[] {
  const out: { where: string; namespace?: string; spec: PodSpecLike }[] = [];
  for (const o of objects) {
    const where = `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
    const spec = o.spec as { template?: { spec?: PodSpecLike }; jobTemplate?: { spec?: { template?: { spec?: PodSpecLike } } } } | undefined; // prettier-ignore
    let pod: PodSpecLike | undefined;
    if (o.kind === 'Pod') pod = o.spec as PodSpecLike;
    else if (['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job'].includes(o.kind ?? '')) {
      pod = spec?.template?.spec;
    } else if (o.kind === 'CronJob') pod = spec?.jobTemplate?.spec?.template?.spec;
    if (pod) out.push({ where, namespace: o.metadata?.namespace, spec: pod });
  }
  return out;
}
