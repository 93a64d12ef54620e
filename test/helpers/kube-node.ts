/**
 * A real Kubernetes node for the build-pod tests, next to the API server of test/helpers/kube.ts: Debian's
 * containerd (CRI plugin, runc, cgroupfs) with private root/state/socket dirs, kubelet and kube-scheduler built
 * from k8s.io/kubernetes (scripts/go-tools.sh kubelet, the API server's version), and a CNI bridge (Debian's
 * containernetworking-plugins: bridge + host-local) on a fresh 10.213.N.0/24 subnet. Root only.
 *
 * Why a bridge and not hostNetwork: kiln's build pods are PSS `restricted` (no host namespaces), so they get a pod
 * network like on any cluster; tests listen on the bridge's host address (`hostIP`) to serve pods — the registry
 * the pod pushes to, the git server it fetches from. containerd pulls in the host's namespace, from the same
 * address (`allowInsecureRegistry` writes its `hosts.toml` for plain HTTP).
 *
 * Settings this machine needs (a container with cgroup v1 and no systemd): `failCgroupV1: false`,
 * `cgroupsPerQOS: false`, `enforceNodeAllocatable: []`, `failSwapOn: false`, no eviction thresholds (the disk is
 * shared with other jobs), and containerd 1.6's CRI without the RuntimeConfig call (kubelet falls back to its own
 * `cgroupDriver`). The pod sandbox ("pause") image is made from /bin/busybox and imported, as nothing can be
 * pulled from registry.k8s.io here. No kube-controller-manager runs: owner references are not garbage-collected
 * (kiln deletes what it creates) and nodes are never tainted not-ready.
 *
 * `stop()` stops the scheduler and the kubelet, kills and removes every container containerd still has, stops
 * containerd, unmounts what was mounted under the node's dir (secret tmpfs, sandbox netns, rootfs overlays) and
 * removes the bridge and the dir. Every process runs under `setpriv --pdeathsig SIGKILL`.
 */
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { goTools } from './go-tools.js';
import { makeBusyboxImage } from './images.js';
import { freePort, startProc as startKubeProc, type KubeServer } from './kube.js';
import { writeDockerArchive } from '../../src/oci/docker-archive.js';
import { CORE, KubeClient, loadKubeConfig, type KubeObject } from '../../src/k8s/client.js';

export interface KubeNode {
  /** The node's name (as registered with the API server). */
  name: string;
  /** The host's address on the pod bridge: servers pods must reach listen here. */
  hostIP: string;
  /** Let containerd pull from `host:port` over plain HTTP (a test registry on `hostIP`). */
  allowInsecureRegistry(host: string): void;
  /** IDs of the containers (sandbox included) containerd holds for pod `name` — none once the kubelet cleaned up. */
  containersOf(pod: string): string[];
  /** The last lines of the kubelet's, containerd's and the scheduler's logs (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

export const PAUSE_IMAGE = 'localhost/kiln-test/pause:1';

const TOOLS: [string, string][] = [
  ['/usr/bin/containerd', 'containerd'],
  ['/usr/bin/ctr', 'containerd'],
  ['/usr/sbin/runc', 'runc'],
  ['/usr/lib/cni/bridge', 'containernetworking-plugins'],
  ['/usr/lib/cni/host-local', 'containernetworking-plugins'],
  ['/usr/lib/cni/loopback', 'containernetworking-plugins'],
];

interface Proc {
  proc: ChildProcess;
  exited: Promise<number>;
  logFile: string;
}

function startProc(bin: string, args: string[], logFile: string): Proc {
  return { ...startKubeProc(bin, args, logFile), logFile };
}

async function stopProc(p: Proc): Promise<void> {
  if (p.proc.exitCode !== null || p.proc.signalCode !== null) return;
  p.proc.kill('SIGTERM');
  const t = setTimeout(() => p.proc.kill('SIGKILL'), 10_000);
  await p.exited;
  clearTimeout(t);
}

const tail = (f: string, n = 3000): string => (existsSync(f) ? readFileSync(f, 'utf8').slice(-n) : '');

async function waitFor(what: string, check: () => Promise<boolean>, procs: Proc[], ms: number): Promise<void> {
  const until = Date.now() + ms;
  const dead = new Map<Proc, number>();
  for (const p of procs) void p.exited.then((c) => dead.set(p, c));
  for (;;) {
    for (const [p, c] of dead) throw new Error(`${what}: ${p.logFile} exited with ${c}:\n${tail(p.logFile)}`);
    if (await check().catch(() => false)) return;
    if (Date.now() > until)
      throw new Error(`${what} not ready after ${ms} ms:\n${procs.map((p) => tail(p.logFile, 1500)).join('\n')}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A free 10.213.N.0/24 (N not on any interface of this machine). */
function freeSubnet(): number {
  const used = execFileSync('ip', ['-4', '-o', 'addr'], { encoding: 'utf8' });
  for (let i = 0; i < 64; i++) {
    const n = 1 + ((randomBytes(1)[0] ?? 0) % 250);
    if (!used.includes(`10.213.${n}.`)) return n;
  }
  throw new Error('no free 10.213.N.0/24 subnet for the test node');
}

/** Mount points under `dir` (deepest first), from /proc/self/mountinfo (octal escapes decoded). */
function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const p = mp.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (p === dir || p.startsWith(dir + '/')) out.push(p);
  }
  return out.sort((a, b) => b.length - a.length);
}

/** Start containerd, kubelet and kube-scheduler as one node of `kube` (waits until the node is Ready). */
export async function startKubeNode(kube: KubeServer): Promise<KubeNode> {
  if (process.getuid?.() !== 0) throw new Error('a test Kubernetes node needs root (containerd, CNI, mounts)');
  for (const [file, pkg] of TOOLS)
    if (!existsSync(file)) throw new Error(`${file} is missing: apt-get install ${pkg} (scripts/setup.sh)`);
  const tools = goTools('kubelet');
  const kubelet = tools.kubelet;
  const scheduler = tools['kube-scheduler'];
  if (!kubelet || !existsSync(kubelet) || !scheduler || !existsSync(scheduler))
    throw new Error('kubelet/kube-scheduler were not built (scripts/go-tools.sh kubelet)');

  const dir = mkdtempSync(join(tmpdir(), 'kiln-kube-node-'));
  const n = freeSubnet();
  const bridge = `kiln${randomBytes(3).toString('hex')}`;
  const hostIP = `10.213.${n}.1`;
  const name = `kiln-node-${n}`;
  const sock = join(dir, 'ctd', 'containerd.sock');
  const ctr = (...args: string[]): ReturnType<typeof spawnSync> =>
    spawnSync('ctr', ['--address', sock, '--namespace', 'k8s.io', ...args], { encoding: 'utf8', timeout: 60_000 });
  const procs: Proc[] = [];
  let bridgeMade = false;

  const stop = async (): Promise<void> => {
    const [ctd, ...rest] = procs;
    for (const p of rest.reverse()) await stopProc(p);
    if (ctd && ctd.proc.exitCode === null) {
      // what the kubelet left: tasks killed and deleted (their shims exit), then containers
      const ids = (r: ReturnType<typeof spawnSync>): string[] =>
        String(r.stdout ?? '')
          .split('\n')
          .map((s) => s.trim())
          .filter(Boolean);
      for (const id of ids(ctr('tasks', 'ls', '-q'))) {
        ctr('tasks', 'kill', '--signal', 'SIGKILL', id);
        ctr('tasks', 'delete', '--force', id);
      }
      for (const id of ids(ctr('containers', 'ls', '-q'))) ctr('containers', 'delete', id);
      await stopProc(ctd);
    }
    for (const m of mountsUnder(dir)) spawnSync('umount', ['-l', m]);
    if (bridgeMade) spawnSync('ip', ['link', 'del', bridge]);
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    // the pod bridge first: test servers listen on its address before any pod exists
    execFileSync('ip', ['link', 'add', bridge, 'type', 'bridge']);
    bridgeMade = true;
    execFileSync('ip', ['addr', 'add', `${hostIP}/24`, 'dev', bridge]);
    execFileSync('ip', ['link', 'set', bridge, 'up']);
    const cniConf = join(dir, 'cni');
    mkdirSync(cniConf);
    writeFileSync(
      join(cniConf, '10-kiln-test.conflist'),
      JSON.stringify({
        cniVersion: '0.4.0',
        name: 'kiln-test',
        plugins: [
          {
            type: 'bridge',
            bridge,
            isGateway: true,
            ipMasq: false,
            hairpinMode: true,
            ipam: {
              type: 'host-local',
              ranges: [[{ subnet: `10.213.${n}.0/24`, gateway: hostIP }]],
              dataDir: join(dir, 'ipam'),
            },
          },
          { type: 'loopback' },
        ],
      }),
    );

    // containerd: CRI with runc and cgroupfs, everything under dir
    const ctdDir = join(dir, 'ctd');
    mkdirSync(join(ctdDir, 'certs.d'), { recursive: true });
    const cri = 'plugins."io.containerd.grpc.v1.cri"';
    writeFileSync(
      join(ctdDir, 'config.toml'),
      [
        'version = 2',
        `root = "${ctdDir}/root"`,
        `state = "${ctdDir}/state"`,
        '[grpc]',
        `  address = "${sock}"`,
        '[ttrpc]',
        `  address = "${sock}.ttrpc"`,
        `[${cri}]`,
        `  sandbox_image = "${PAUSE_IMAGE}"`,
        '  disable_apparmor = true',
        '  restrict_oom_score_adj = true',
        '  netns_mounts_under_state_dir = true',
        `[${cri}.containerd]`,
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        `[${cri}.containerd.runtimes.runc]`,
        '  runtime_type = "io.containerd.runc.v2"',
        `[${cri}.containerd.runtimes.runc.options]`,
        '  SystemdCgroup = false',
        '  BinaryName = "/usr/sbin/runc"',
        `[${cri}.cni]`,
        '  bin_dir = "/usr/lib/cni"',
        `  conf_dir = "${cniConf}"`,
        `[${cri}.registry]`,
        `  config_path = "${ctdDir}/certs.d"`,
        '',
      ].join('\n'),
    );
    const ctd = startProc('containerd', ['--config', join(ctdDir, 'config.toml')], join(dir, 'containerd.log'));
    procs.push(ctd);
    await waitFor('containerd', async () => ctr('version').status === 0, [ctd], 30_000);

    // the sandbox image: busybox sleeping (nothing comes from registry.k8s.io here)
    const pause = await makeBusyboxImage({
      kind: 'docker',
      config: { Entrypoint: ['/bin/sleep', '2147483647'], Cmd: [] },
    });
    const pauseTar = join(dir, 'pause.tar');
    await writeDockerArchive(pauseTar, [{ image: pause, tags: [PAUSE_IMAGE] }]);
    const imp = ctr('images', 'import', pauseTar);
    if (imp.status !== 0) throw new Error(`ctr images import ${pauseTar}: ${String(imp.stderr)}`);

    // kubelet
    const kubeletDir = join(dir, 'kubelet');
    mkdirSync(join(kubeletDir, 'pod-logs'), { recursive: true });
    const [port, healthz] = [await freePort(hostIP), await freePort('127.0.0.1')];
    const config = {
      apiVersion: 'kubelet.config.k8s.io/v1beta1',
      kind: 'KubeletConfiguration',
      cgroupDriver: 'cgroupfs',
      failCgroupV1: false,
      cgroupsPerQOS: false,
      enforceNodeAllocatable: [],
      failSwapOn: false,
      containerRuntimeEndpoint: `unix://${sock}`,
      // the API server reaches the kubelet (logs, exec) on the bridge address; nothing else can
      authentication: { anonymous: { enabled: true }, webhook: { enabled: false } },
      authorization: { mode: 'AlwaysAllow' },
      address: hostIP,
      port,
      readOnlyPort: 0,
      healthzBindAddress: '127.0.0.1',
      healthzPort: healthz,
      podLogsDir: join(kubeletDir, 'pod-logs'),
      resolvConf: '',
      evictionHard: { 'memory.available': '0%', 'nodefs.available': '0%', 'imagefs.available': '0%' },
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      serializeImagePulls: false,
      localStorageCapacityIsolation: false,
      maxPods: 20,
    };
    writeFileSync(join(kubeletDir, 'config.json'), JSON.stringify(config));
    const kl = startProc(
      kubelet,
      [
        `--config=${join(kubeletDir, 'config.json')}`,
        `--kubeconfig=${kube.kubeconfigPath}`,
        `--root-dir=${join(kubeletDir, 'root')}`,
        `--cert-dir=${join(kubeletDir, 'pki')}`,
        `--hostname-override=${name}`,
        `--node-ip=${hostIP}`,
        '--v=1',
      ],
      join(dir, 'kubelet.log'),
    );
    procs.push(kl);
    const sched = startProc(
      scheduler,
      [`--kubeconfig=${kube.kubeconfigPath}`, '--leader-elect=false', '--secure-port=0', '--v=1'],
      join(dir, 'scheduler.log'),
    );
    procs.push(sched);

    const client = new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath }));
    try {
      await waitFor(
        `node ${name} Ready`,
        async () => {
          const node = await client.getOrUndefined<
            KubeObject & { status?: { conditions?: { type: string; status: string }[] } }
          >({ ...CORE, resource: 'nodes', name });
          return node?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
        },
        procs,
        90_000,
      );
      // what kube-controller-manager's node lifecycle controller does for a Ready node: the kubelet registers with
      // the node.kubernetes.io/not-ready taint, which nothing else removes here
      await client.patch({ ...CORE, resource: 'nodes', name }, { spec: { taints: null } });
    } finally {
      await client.close();
    }

    return {
      name,
      hostIP,
      allowInsecureRegistry(host: string): void {
        const d = join(ctdDir, 'certs.d', host);
        mkdirSync(d, { recursive: true });
        writeFileSync(
          join(d, 'hosts.toml'),
          `server = "http://${host}"\n\n[host."http://${host}"]\n  capabilities = ["pull", "resolve"]\n`,
        );
      },
      containersOf: (pod) =>
        String(ctr('containers', 'ls', '-q', `labels."io.kubernetes.pod.name"==${pod}`).stdout ?? '')
          .split('\n')
          .map((l) => l.trim())
          .filter(Boolean),
      log: () => procs.map((p) => `== ${p.logFile}\n${tail(p.logFile)}`).join('\n'),
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
