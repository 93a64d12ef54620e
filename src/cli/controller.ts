/**
 * `kiln controller` — the ImageBuildRun controller (src/k8s/controller.ts): ImageBuildRuns in a namespace become
 * build pods, their status follows the pods. Runs until SIGTERM/SIGINT.
 *
 * `kiln pod-build` — what a build pod runs (src/k8s/pod.ts): fetch the commit named in KILN_POD_JOB, run
 * `kiln build --push` on it with the mounted registry credentials and build secrets, and write the result
 * (digest, pushed references, or the error) as JSON to the termination log, where the executor reads it.
 */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';

interface ControllerFlags {
  kubeconfig?: string;
  namespace?: string;
  image?: string;
  isolation?: string;
  serviceAccount?: string;
  workers?: string;
}

function workers(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 256) {
    throw new KilnError('OPTION_INVALID', `--workers ${v}: expected a whole number from 1 to 256`);
  }
  return n;
}

async function controller(flags: ControllerFlags): Promise<void> {
  const { loadKubeConfig, KubeClient } = await import('../k8s/client.js');
  const { BuildRunController } = await import('../k8s/controller.js');
  const { parseIsolation } = await import('../sandbox/isolation.js');
  const client = new KubeClient(loadKubeConfig(flags.kubeconfig ? { kubeconfig: flags.kubeconfig } : {}));
  const image = flags.image ?? process.env.KILN_IMAGE;
  if (!image) {
    throw new KilnError('OPTION_INVALID', "--image is required: build pods run kiln's own image", {
      hint: 'kiln controller --image registry.example.com/kiln/kiln:v0.1.0 (or set KILN_IMAGE)',
    });
  }
  const namespace = flags.namespace ?? client.namespace;
  const c = new BuildRunController({
    client,
    namespace,
    pod: {
      image,
      isolation: parseIsolation(flags.isolation ?? 'restricted'),
      ...(flags.serviceAccount ? { serviceAccountName: flags.serviceAccount } : {}),
    },
    ...(flags.workers ? { workers: workers(flags.workers) } : {}),
  });
  c.start();
  process.stderr.write(`kiln controller: watching ImageBuildRuns in ${namespace} (${client.config.server})\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => void c.stop().finally(resolve);
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  await client.close();
  process.stderr.write(`kiln controller: stopped (${client.requests} API requests)\n`);
}

export function register(program: Command): void {
  program
    .command('controller')
    .description('run the ImageBuildRun controller: ImageBuildRuns become build pods (Kubernetes)')
    .option(
      '--kubeconfig <file>',
      "kubeconfig (default: the pod's service account, else $KUBECONFIG or ~/.kube/config)",
    )
    .option('-n, --namespace <ns>', "namespace to watch (default: the kubeconfig's or service account's)")
    .option('--image <ref>', "kiln's own image for build pods (default $KILN_IMAGE)")
    .option('--isolation <level>', 'isolation level of build pods: restricted (default), userns or vm')
    .option('--service-account <name>', 'service account of build pods')
    .option('--workers <n>', 'reconciles at once (default 16)')
    .action(async (flags: ControllerFlags) => {
      await controller(flags);
    });
  program
    .command('pod-build', { hidden: true })
    .description('inside a build pod: build the job in KILN_POD_JOB (used by the Kubernetes executor)')
    .action(async () => {
      const { podBuildMain } = await import('../k8s/pod-build.js');
      process.exitCode = await podBuildMain();
    });
}
