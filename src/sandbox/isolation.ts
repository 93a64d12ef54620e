/**
 * Isolation levels: how RUN steps (and the file system work around them) are isolated, chosen per build with
 * `kiln build --isolation userns|restricted|vm` and recorded in the build's metadata (`kiln.isolation`).
 *
 * - `userns` (default): today's sandbox — one user namespace with the caller's subordinate ids for the whole build,
 *   overlay snapshots, RUN steps in their own mount/pid/ipc/uts namespaces (userns.ts, overlay.ts, run.ts). Needs
 *   unshare(CLONE_NEWUSER), mount, and the setuid newuidmap: machines, and `baseline` pods with a Localhost seccomp
 *   profile that allows them.
 * - `restricted`: works with no capabilities, no_new_privs, a non-root uid and the RuntimeDefault seccomp profile
 *   (Pod Security Standards `restricted`): kiln runs under kiln-restricted (seccomp user notification: ownership,
 *   modes, devices and identities are emulated and recorded), RUN steps under proot, snapshots are hard-linked
 *   trees with change lists (restricted/).
 * - `vm`: for a sandboxed runtime class (Kata, gVisor): only the pod settings differ; inside the sandbox's own
 *   kernel kiln runs the userns sandbox.
 */
import { join } from 'node:path';
import type { Executor, Snapshotter } from '../engine/ports.js';
import { KilnError } from '../errors.js';

export const ISOLATION_LEVELS = ['userns', 'restricted', 'vm'] as const;
export type IsolationLevel = (typeof ISOLATION_LEVELS)[number];

/** Parse `--isolation` (default userns). */
export function parseIsolation(v: string | undefined): IsolationLevel {
  if (v === undefined || v === '') return 'userns';
  if ((ISOLATION_LEVELS as readonly string[]).includes(v)) return v as IsolationLevel;
  throw new KilnError('OPTION_INVALID', `--isolation ${v}: unknown isolation level`, {
    hint: `use one of ${ISOLATION_LEVELS.join(', ')}`,
  });
}

/**
 * Enter what the level needs for the whole build (the CLI re-executes itself): the build user namespace for
 * userns and vm, the restricted helper for restricted. Resolves to null when the caller carries on in-process,
 * else to the exit code of the re-executed build.
 */
export async function enterIsolation(level: IsolationLevel, kilnHome: string): Promise<number | null> {
  if (level === 'restricted') {
    const { enterRestricted } = await import('./restricted/enter.js');
    return enterRestricted(kilnHome);
  }
  const { enterBuildNamespace } = await import('./userns.js');
  return enterBuildNamespace();
}

export interface IsolationServices {
  executor: Executor;
  snapshotter: Snapshotter;
  /** Where extracted and committed layer dirs live for this level (the restricted level's carry its metadata in
   * extended attributes, so they are kept apart from the userns level's). */
  layersDir: string;
}

/** The Executor + Snapshotter pair (and layer dir) of a level, for a build inside what enterIsolation set up. */
export async function isolationServices(level: IsolationLevel, kilnHome: string): Promise<IsolationServices> {
  if (level === 'restricted') {
    const { RestrictedClient } = await import('./restricted/client.js');
    const { RestrictedSnapshotter } = await import('./restricted/snapshotter.js');
    const { RestrictedExecutor } = await import('./restricted/executor.js');
    const { ensureHelper, findProot, PROOT_PATH_ENV } = await import('./restricted/helper.js');
    const { cleanupStaleTempDirs } = await import('./stale.js');
    const { restrictedXattrReader } = await import('./restricted/xattrs.js');
    const { useXattrReader } = await import('../layer/fsops.js');
    const client = RestrictedClient.require();
    await cleanupStaleTempDirs(kilnHome);
    // getfattr under the filter costs two notifications per file it walks: the helper reads them itself
    if (process.env.KILN_RESTRICTED_GETFATTR !== '1') useXattrReader(restrictedXattrReader(client, kilnHome));
    const helper = await ensureHelper(kilnHome);
    const proot = process.env[PROOT_PATH_ENV] || (await findProot());
    if (!proot) {
      throw new KilnError(
        'ISOLATION_UNAVAILABLE',
        'isolation restricted is not available here: proot is not installed',
        {
          hint: 'apt-get install proot',
        },
      );
    }
    return {
      executor: new RestrictedExecutor({ kilnHome, client, helper, proot }),
      snapshotter: new RestrictedSnapshotter({ kilnHome, client }),
      layersDir: join(kilnHome, 'restricted', 'layers'),
    };
  }
  const { lazySnapshotter } = await import('./overlay.js');
  const { NamespaceExecutor } = await import('./run.js');
  return {
    executor: new NamespaceExecutor({ kilnHome }),
    snapshotter: await lazySnapshotter({ kilnHome }),
    layersDir: join(kilnHome, 'layers'),
  };
}

/** Pod and container settings a Kubernetes executor gives a build pod of each level (issue 16, item 4). */
export interface IsolationPodSettings {
  /** The Pod Security Standards level such a pod passes. */
  podSecurity: 'restricted' | 'baseline';
  /** Pod-level fields. */
  pod: { runtimeClassName?: string; hostUsers?: boolean };
  /** The kiln container's securityContext. */
  securityContext: Record<string, unknown>;
  /** The kiln container's environment (selects the level). */
  env: Record<string, string>;
  /** What else the node or the image must provide. */
  requires: string[];
}

export interface PodSettingsOptions {
  /** The non-root uid/gid kiln runs as (default 1000). */
  uid?: number;
  gid?: number;
  /** vm: the sandboxed runtime class (default kata). */
  runtimeClassName?: string;
  /** userns: the node's Localhost seccomp profile (scripts/restricted/kiln-userns.json installed there). */
  seccompProfile?: string;
}

export function isolationPodSettings(level: IsolationLevel, o: PodSettingsOptions = {}): IsolationPodSettings {
  const uid = o.uid ?? 1000;
  const gid = o.gid ?? uid;
  if (level === 'restricted') {
    return {
      podSecurity: 'restricted',
      pod: {},
      securityContext: {
        runAsNonRoot: true,
        runAsUser: uid,
        runAsGroup: gid,
        allowPrivilegeEscalation: false,
        privileged: false,
        capabilities: { drop: ['ALL'] },
        seccompProfile: { type: 'RuntimeDefault' },
      },
      env: { KILN_ISOLATION: 'restricted' },
      requires: [
        'Linux >= 5.14 (seccomp user notification with ADDFD)',
        'a runtime whose RuntimeDefault profile allows ptrace (containerd, Docker on Linux >= 4.8; CRI-O only with CAP_SYS_PTRACE or a Localhost profile); process_vm_readv/writev where allowed, else /proc/PID/mem',
        'KILN_HOME on a file system with user extended attributes (an emptyDir on ext4/xfs/btrfs, or tmpfs on Linux >= 6.6)',
        'proot and the static kiln-restricted helper in the image (KILN_RESTRICTED_HELPER)',
      ],
    };
  }
  const userns: IsolationPodSettings = {
    podSecurity: 'baseline',
    pod: {},
    securityContext: {
      runAsUser: uid,
      runAsGroup: gid,
      // newuidmap/newgidmap are setuid root and need CAP_SETUID/CAP_SETGID in the bounding set
      allowPrivilegeEscalation: true,
      capabilities: { drop: ['ALL'], add: ['SETUID', 'SETGID'] },
      seccompProfile: { type: 'Localhost', localhostProfile: o.seccompProfile ?? 'kiln-userns.json' },
    },
    env: { KILN_ISOLATION: level },
    requires: [
      'scripts/restricted/kiln-userns.json installed as a Localhost seccomp profile on the node',
      'an AppArmor profile that allows mount (a Localhost one: baseline forbids unconfined), where AppArmor is on',
      'unprivileged user namespaces enabled on the node, /etc/subuid and /etc/subgid for the user in the image',
    ],
  };
  if (level === 'vm') {
    userns.pod.runtimeClassName = o.runtimeClassName ?? 'kata';
    userns.requires = [
      `a RuntimeClass ${userns.pod.runtimeClassName} (Kata, gVisor): the build gets a kernel of its own`,
    ];
  }
  return userns;
}
