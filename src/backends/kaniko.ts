/**
 * kaniko as a Kubernetes-only backend: the pod that builds an image with kaniko's executor (it needs a pod of its
 * own — it unpacks the base over the container's root — so it cannot run here). This module only writes the pod
 * spec; running it and reading the result back is the Kubernetes runner's job. Credentials are a Secret (a docker
 * config.json) mounted at /kaniko/.docker, never arguments; the digest kaniko writes goes to the termination log,
 * and the runner reads the digest back from the registry as the other adapters do.
 */
import { parseReferenceWithDefaultTag } from '../ref/reference.js';

export const KANIKO_EXECUTOR = 'ghcr.io/chainguard-dev/kaniko/executor:v1.25.18';

export interface KanikoPodRequest {
  name: string;
  namespace?: string;
  /** kaniko's build context: `git://host/repo.git#refs/heads/main`, `s3://…`, `dir:///workspace`, … */
  context: string;
  /** Dockerfile path inside the context. */
  dockerfile?: string;
  destinations: string[];
  buildArgs?: Record<string, string>;
  target?: string;
  /** A Secret of type kubernetes.io/dockerconfigjson with the registry credentials. */
  registrySecret?: string;
  insecureRegistries?: string[];
  executorImage?: string;
}

/** A v1 Pod (plain JSON) that runs one kaniko build and exits. */
export function kanikoPodSpec(r: KanikoPodRequest): Record<string, unknown> {
  const args = [`--context=${r.context}`, `--dockerfile=${r.dockerfile ?? 'Dockerfile'}`];
  for (const d of r.destinations) args.push(`--destination=${parseReferenceWithDefaultTag(d).toString()}`);
  for (const [k, v] of Object.entries(r.buildArgs ?? {})) args.push(`--build-arg=${k}=${v}`);
  if (r.target) args.push(`--target=${r.target}`);
  for (const h of r.insecureRegistries ?? []) args.push(`--insecure-registry=${h}`);
  args.push('--digest-file=/dev/termination-log', '--reproducible');
  const container: Record<string, unknown> = {
    name: 'kaniko',
    image: r.executorImage ?? KANIKO_EXECUTOR,
    args,
    terminationMessagePolicy: 'File',
  };
  const spec: Record<string, unknown> = { restartPolicy: 'Never', containers: [container] };
  if (r.registrySecret) {
    container.volumeMounts = [{ name: 'docker-config', mountPath: '/kaniko/.docker', readOnly: true }];
    spec.volumes = [
      {
        name: 'docker-config',
        secret: { secretName: r.registrySecret, items: [{ key: '.dockerconfigjson', path: 'config.json' }] },
      },
    ];
  }
  const metadata: Record<string, unknown> = { name: r.name, labels: { 'app.kubernetes.io/managed-by': 'kiln' } };
  if (r.namespace) metadata.namespace = r.namespace;
  return { apiVersion: 'v1', kind: 'Pod', metadata, spec };
}
