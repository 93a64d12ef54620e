/**
 * A real Kubernetes API server for the tests: Debian's etcd-server plus kube-apiserver built from the
 * k8s.io/kubernetes Go module (scripts/go-tools.sh kube, cached per machine), on free loopback ports in a temp dir.
 *
 * What runs: etcd and kube-apiserver only — RBAC authorization, the default admission chain (NamespaceLifecycle,
 * ServiceAccount, PodSecurity, …), CRDs, the status subresource, watches. No scheduler, no kubelet (unless a test
 * adds a node: test/helpers/kube-node.ts), no kube-controller-manager: pods are stored and admitted but never run;
 * tests play the kubelet by writing pod status through the status subresource. Service accounts a test needs are created by the test (no controller makes
 * `default`).
 *
 * Authentication is a static token file: `adminToken` (group system:masters) and one token per
 * `users` entry (name → groups), so tests can check what RBAC lets a given identity do. Both processes run under
 * `setpriv --pdeathsig SIGKILL`: if the test process dies, even by SIGKILL, they die with it.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, readdirSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { goTools } from './go-tools.js';
import { makeServerCerts } from './certs.js';
import { RUNS } from '../../src/k8s/pod.js';
import type { KubeClient, KubeObject } from '../../src/k8s/client.js';

export interface KubeServer {
  /** `https://127.0.0.1:PORT` */
  url: string;
  /** Bearer token of a cluster admin (system:masters). */
  adminToken: string;
  /** The CA that signed the server certificate (PEM). */
  ca: string;
  caFile: string;
  /** A kubeconfig for the admin (for kubectl and for kiln's `--kubeconfig`). */
  kubeconfigPath: string;
  /** The token of a user declared in `users` (throws for others). */
  tokenFor(user: string): string;
  /** A kubeconfig file for a declared user. */
  kubeconfigFor(user: string): string;
  /** The API server's log (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

export interface KubeServerOptions {
  /** Users with static tokens: name → groups (`system:authenticated` is added by the server). */
  users?: Record<string, string[]>;
}

/** A free TCP port on `address` (the kernel's pick, released again). Shared with kube-node.ts. */
export async function freePort(address = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, address, () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** A control-plane process that dies with the test (pdeathsig), its output kept in `logFile`. Shared with kube-node.ts. */
export function startProc(
  bin: string,
  args: string[],
  logFile: string,
): { proc: ChildProcess; exited: Promise<number> } {
  const proc = spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', bin, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const chunks: Buffer[] = [];
  const keep = (b: Buffer): void => {
    chunks.push(b);
    if (chunks.length > 4000) chunks.splice(0, 1000);
    writeFileSync(logFile, Buffer.concat(chunks));
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  const exited = new Promise<number>((resolve) => {
    proc.on('error', () => resolve(127));
    proc.on('close', (code) => resolve(code ?? 137));
  });
  return { proc, exited };
}

async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  dead: Promise<number>,
  ms: number,
  log: () => string,
): Promise<void> {
  const until = Date.now() + ms;
  let exited: number | undefined;
  void dead.then((c) => (exited = c));
  for (;;) {
    if (exited !== undefined) throw new Error(`${what} exited with ${exited}:\n${log().slice(-3000)}`);
    if (await check().catch(() => false)) return;
    if (Date.now() > until) throw new Error(`${what} not ready after ${ms} ms:\n${log().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function kubeconfig(url: string, caFile: string, user: string, token: string): string {
  const ca = readFileSync(caFile).toString('base64');
  return [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    `- name: test`,
    `  cluster: {server: "${url}", certificate-authority-data: "${ca}"}`,
    'users:',
    `- name: ${user}`,
    `  user: {token: "${token}"}`,
    'contexts:',
    `- name: test`,
    `  context: {cluster: test, user: ${user}, namespace: default}`,
    'current-context: test',
    '',
  ].join('\n');
}

/** Start etcd + kube-apiserver (the first call on a machine builds kube-apiserver: minutes). */
export async function startKubeServer(opts: KubeServerOptions = {}): Promise<KubeServer> {
  const tools = goTools('kube');
  const apiserver = tools['kube-apiserver'];
  if (!apiserver || !existsSync(apiserver)) throw new Error('kube-apiserver was not built (scripts/go-tools.sh kube)');
  if (!existsSync('/usr/bin/etcd')) throw new Error('etcd is missing: apt-get install etcd-server (scripts/setup.sh)');
  const dir = mkdtempSync(join(tmpdir(), 'kiln-kube-'));
  const certs = makeServerCerts({ ips: ['127.0.0.1'], dns: ['localhost', 'kubernetes.default.svc'] });
  const procs: { proc: ChildProcess; exited: Promise<number> }[] = [];
  const stop = async (): Promise<void> => {
    for (const p of procs.reverse()) {
      p.proc.kill('SIGTERM');
      const t = setTimeout(() => p.proc.kill('SIGKILL'), 5000);
      await p.exited;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
    certs.cleanup();
  };
  try {
    // etcd
    const [client, peer] = [await freePort(), await freePort()];
    const etcdLog = join(dir, 'etcd.log');
    const etcd = startProc(
      '/usr/bin/etcd',
      [
        '--name=kiln-test',
        `--data-dir=${join(dir, 'etcd')}`,
        `--listen-client-urls=http://127.0.0.1:${client}`,
        `--advertise-client-urls=http://127.0.0.1:${client}`,
        `--listen-peer-urls=http://127.0.0.1:${peer}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
        `--initial-cluster=kiln-test=http://127.0.0.1:${peer}`,
        '--log-level=warn',
        '--quota-backend-bytes=1073741824',
      ],
      etcdLog,
    );
    procs.push(etcd);
    const readLog = (f: string) => (): string => (existsSync(f) ? readFileSync(f, 'utf8') : '');
    await waitFor(
      'etcd',
      async () => (await fetch(`http://127.0.0.1:${client}/health`)).ok,
      etcd.exited,
      30_000,
      readLog(etcdLog),
    );

    // service-account signing key, tokens
    execFileSync('openssl', ['genrsa', '-out', join(dir, 'sa.key'), '2048'], { stdio: 'ignore' });
    execFileSync('openssl', ['rsa', '-in', join(dir, 'sa.key'), '-pubout', '-out', join(dir, 'sa.pub')], {
      stdio: 'ignore',
    });
    const adminToken = randomBytes(24).toString('hex');
    const tokens = new Map<string, string>();
    const lines = [`${adminToken},kiln-admin,uid-admin,"system:masters"`];
    for (const [user, groups] of Object.entries(opts.users ?? {})) {
      const t = randomBytes(24).toString('hex');
      tokens.set(user, t);
      lines.push(`${t},${user},uid-${user}${groups.length ? `,"${groups.join(',')}"` : ''}`);
    }
    writeFileSync(join(dir, 'tokens.csv'), lines.join('\n') + '\n', { mode: 0o600 });

    const port = await freePort();
    const apiLog = join(dir, 'apiserver.log');
    const api = startProc(
      apiserver,
      [
        `--etcd-servers=http://127.0.0.1:${client}`,
        '--bind-address=127.0.0.1',
        '--advertise-address=127.0.0.1',
        `--secure-port=${port}`,
        `--tls-cert-file=${certs.certFile}`,
        `--tls-private-key-file=${certs.keyFile}`,
        `--cert-dir=${join(dir, 'certs')}`,
        `--token-auth-file=${join(dir, 'tokens.csv')}`,
        '--authorization-mode=RBAC',
        '--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,LimitRanger,ResourceQuota',
        // privileged pods must reach admission: PodSecurity, not the API server's own switch, refuses them
        '--allow-privileged=true',
        `--service-account-key-file=${join(dir, 'sa.pub')}`,
        `--service-account-signing-key-file=${join(dir, 'sa.key')}`,
        '--service-account-issuer=https://kubernetes.default.svc',
        '--service-cluster-ip-range=10.96.0.0/16',
        '--endpoint-reconciler-type=none',
        // a test kubelet (test/helpers/kubelet.ts) registers no resolvable host name: logs and exec go to its IP
        '--kubelet-preferred-address-types=InternalIP',
        '--enable-priority-and-fairness=false',
        '--profiling=false',
        '--v=0',
      ],
      apiLog,
    );
    procs.push(api);
    const url = `https://127.0.0.1:${port}`;
    const { Agent } = await import('undici');
    const agent = new Agent({ connect: { ca: readFileSync(certs.caFile, 'utf8') } });
    await waitFor(
      'kube-apiserver',
      async () => {
        const { request } = await import('undici');
        const r = await request(`${url}/readyz`, {
          headers: { authorization: `Bearer ${adminToken}` },
          dispatcher: agent,
        });
        await r.body.text();
        return r.statusCode === 200;
      },
      api.exited,
      120_000,
      readLog(apiLog),
    );
    await agent.close();
    const kubeconfigPath = join(dir, 'kubeconfig');
    writeFileSync(kubeconfigPath, kubeconfig(url, certs.caFile, 'kiln-admin', adminToken), { mode: 0o600 });
    const tokenFor = (user: string): string => {
      const t = tokens.get(user);
      if (!t) throw new Error(`no token for ${user}: declare it in startKubeServer({ users })`);
      return t;
    };
    return {
      url,
      adminToken,
      ca: readFileSync(certs.caFile, 'utf8'),
      caFile: certs.caFile,
      kubeconfigPath,
      tokenFor,
      kubeconfigFor: (user) => {
        const p = join(dir, `kubeconfig-${user}`);
        writeFileSync(p, kubeconfig(url, certs.caFile, user, tokenFor(user)), { mode: 0o600 });
        return p;
      },
      log: readLog(apiLog),
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

const CRD_DIR = join(import.meta.dirname, '..', '..', 'deploy', 'base', 'crds');

/** Install kiln's CRDs from the files deploy/base/crds ships and wait until ImageBuildRuns are served in `ns`. */
export async function installKilnCrds(admin: KubeClient, ns: string): Promise<void> {
  for (const f of readdirSync(CRD_DIR).filter((n) => n.startsWith('image'))) {
    for (const doc of parseAllDocuments(readFileSync(join(CRD_DIR, f), 'utf8'))) {
      await admin.create(
        { api: '/apis/apiextensions.k8s.io/v1', resource: 'customresourcedefinitions' },
        doc.toJS() as KubeObject,
      );
    }
  }
  const until = Date.now() + 30_000;
  for (const crd of ['imagebuilds.kiln.dev', 'imagebuildruns.kiln.dev']) {
    for (;;) {
      const c = await admin.get<KubeObject & { status?: { conditions?: { type: string; status: string }[] } }>({
        api: '/apis/apiextensions.k8s.io/v1',
        resource: 'customresourcedefinitions',
        name: crd,
      });
      if (c.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True')) break;
      if (Date.now() > until) throw new Error(`${crd} not Established after 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  // CRDs are served a moment after Established
  for (;;) {
    const ok = await admin.list({ ...RUNS, namespace: ns }).then(
      () => true,
      () => false,
    );
    if (ok) return;
    if (Date.now() > until) throw new Error('imagebuildruns not served after 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }
}
