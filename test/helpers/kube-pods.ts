/**
 * Everything a build pod needs to really run, for the build-pod test and bench: kube-apiserver (kube.ts), a node
 * (kube-node.ts: kubelet, kube-scheduler, containerd, a CNI bridge), a plain-HTTP registry with kiln's own image
 * (deploy/image, built by kiln from this checkout's dist/) that containerd pulls, an htpasswd registry the builds
 * push to (user `kiln`, `password`) holding a busybox base `REG/base/busybox:1`, a git http-backend, all listening
 * on the node's bridge address; kiln's CRDs; the build namespace enforcing PSS `restricted` with the service account
 * `kiln-build`. `serve(projects)` starts `kiln serve --executor kubernetes` on it. `stop()` stops all of it.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installKilnCrds, startKubeServer, type KubeServer } from './kube.js';
import { startKubeNode, type KubeNode } from './kube-node.js';
import { startRegistry, type TestRegistry } from './registry.js';
import { startGitServer, type GitServer } from './git-server.js';
import { buildKilnImage } from './kiln-image.js';
import { makeBusyboxImage } from './images.js';
import { cleanup, makeKilnHome, startService, type ServiceProcess } from './service.js';
import { CORE, KubeClient, loadKubeConfig } from '../../src/k8s/client.js';
import { push } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';

export const BUILD_NS = 'kiln-builds';

export interface PodCluster {
  kube: KubeServer;
  node: KubeNode;
  admin: KubeClient;
  /** kiln's own image (pulled by containerd). */
  images: TestRegistry;
  /** What builds push to (htpasswd: user `kiln`, `password`). */
  reg: TestRegistry;
  password: string;
  git: GitServer;
  kilnImage: string;
  /** The `FROM` of build Dockerfiles: busybox in `reg`. */
  base: string;
  /** `kiln serve --executor kubernetes` with this `projects:` YAML (each project may use `registryCredentials`). */
  serve(projects: string, o?: { podGraceSeconds?: number }): Promise<ServiceProcess>;
  /** The node's, the last service's logs (for failure messages). */
  diag(): string;
  stop(): Promise<void>;
}

export async function startPodCluster(password = 'pod-reg-pw-81Kq'): Promise<PodCluster> {
  const work = await mkdtemp(join(tmpdir(), 'kiln-k8s-pods-'));
  const stops: (() => Promise<void>)[] = [() => rm(work, { recursive: true, force: true })];
  const stop = async (): Promise<void> => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
  };
  const services: ServiceProcess[] = [];
  try {
    const kube = await startKubeServer();
    stops.push(() => kube.stop());
    const node = await startKubeNode(kube);
    stops.push(() => node.stop());
    const admin = new KubeClient(loadKubeConfig({ kubeconfig: kube.kubeconfigPath }));
    stops.push(() => admin.close());
    const images = await startRegistry({ address: node.hostIP });
    stops.push(() => images.stop());
    const reg = await startRegistry({ auth: 'htpasswd', password, address: node.hostIP });
    stops.push(() => reg.stop());
    const git = await startGitServer({ address: node.hostIP });
    stops.push(() => git.stop());
    node.allowInsecureRegistry(images.host);

    const kilnImage = `${images.host}/kiln/kiln:test`;
    const built = await buildKilnImage(join(work, 'image'), kilnImage);
    assert.equal(built.code, 0, built.stderr.slice(-4000));
    const base = `${reg.host}/base/busybox:1`;
    const opts = { insecureRegistries: [reg.host], credentials: async () => ({ username: 'kiln', password }) };
    await push(await makeBusyboxImage(), base, opts);
    await closeTransports(opts);

    await admin.create(
      { ...CORE, resource: 'namespaces' },
      {
        metadata: {
          name: BUILD_NS,
          labels: {
            'pod-security.kubernetes.io/enforce': 'restricted',
            'pod-security.kubernetes.io/enforce-version': 'latest',
          },
        },
      },
    );
    await admin.create(
      { ...CORE, resource: 'serviceaccounts', namespace: BUILD_NS },
      { metadata: { name: 'kiln-build' } },
    );
    await installKilnCrds(admin, BUILD_NS);

    return {
      kube,
      node,
      admin,
      images,
      reg,
      password,
      git,
      kilnImage,
      base,
      async serve(projects, o = {}) {
        const home = await makeKilnHome();
        const svc = await startService({
          kilnHome: home,
          args: ['--executor', 'kubernetes'],
          env: { TEST_REG_PASSWORD: password },
          config: [
            'kubernetes:',
            `  namespace: ${BUILD_NS}`,
            `  image: ${kilnImage}`,
            '  serviceAccount: kiln-build',
            `  podGraceSeconds: ${o.podGraceSeconds ?? 1}`,
            `  kubeconfig: ${kube.kubeconfigPath}`,
            projects,
          ].join('\n'),
        });
        services.push(svc);
        stops.push(async () => {
          await svc.stop();
          await cleanup(home, svc.dataDir);
        });
        return svc;
      },
      diag: () => `${node.log()}\n== kiln serve\n${services.at(-1)?.stderr().slice(-3000) ?? ''}`,
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
