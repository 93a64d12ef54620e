/**
 * Build-pod settings from the service config's `kubernetes:` section, the environment the deploy/ manifests set
 * (KILN_BUILD_NAMESPACE, KILN_IMAGE) and the client's namespace — in that order. Missing essentials (no image to
 * run) are one clear error at start-up, not a failure of every build later.
 */
import { KilnError } from '../errors.js';
import type { KubernetesSettings } from '../service/model.js';
import type { KubeClient } from './client.js';
import type { PodSettings } from './pod.js';

export function podSettings(
  k: KubernetesSettings | undefined,
  client: KubeClient,
  env: NodeJS.ProcessEnv = process.env,
): PodSettings {
  const image = k?.image ?? env.KILN_IMAGE;
  if (!image) {
    throw new KilnError('CONFIG_INVALID', "kubernetes.image is not set: build pods need kiln's own image", {
      hint: 'set kubernetes.image in the server config (or KILN_IMAGE), e.g. registry.example.com/kiln/kiln:v0.1.0',
    });
  }
  const s: PodSettings = {
    namespace: k?.namespace ?? env.KILN_BUILD_NAMESPACE ?? client.namespace,
    image,
    isolation: k?.isolation ?? 'restricted',
  };
  if (k?.serviceAccount) s.serviceAccountName = k.serviceAccount;
  if (k?.runtimeClassName) s.runtimeClassName = k.runtimeClassName;
  if (k?.hostUsers !== undefined) s.hostUsers = k.hostUsers;
  if (k?.nodeSelector) s.nodeSelector = k.nodeSelector;
  if (k?.tolerations) s.tolerations = k.tolerations;
  if (k?.resources) s.resources = k.resources;
  if (k?.registryCache !== undefined) s.registryCache = k.registryCache;
  return s;
}
