/**
 * The pluggable builders (the DEP-009 bridge): one `ImageBuilder` interface — build a context into an image
 * (pushed when asked), stream the logs, report the digest and step timings — implemented by kiln's engine and by
 * adapters for tools a site may already run (buildah, docker). Selected by `kiln build --backend` and the service's
 * image `backend:` key. Adapters never put credentials in argv or logs and read the digest back from the registry.
 */
import type { BuildOptions } from '../engine/options.js';
import type { CredentialSource } from '../registry/transport.js';

export interface ImageBuildRequest {
  /** The build (context, -f, tags, build args, target, labels, push, no-cache, pull, network, secrets). */
  options: BuildOptions;
  registry: { insecureRegistry?: string[]; registryCa?: string[]; registryMirror?: string[] };
  /** Registry credentials tried before the docker config (the service's project credentials). */
  credentials?: CredentialSource;
  /** Build output, as produced. */
  log: (text: string) => void;
  signal?: AbortSignal;
}

export interface StepTiming {
  name: string;
  durationMs: number;
}

export interface ImageBuildResult {
  backend: string;
  /** Manifest digest, read back from the registry (pushed builds) or the engine (kiln). */
  digest?: string;
  /** The image ID (config digest) the builder reported. */
  imageId?: string;
  /** The names pushed. */
  pushed: string[];
  steps: StepTiming[];
}

export interface ImageBuilder {
  /** `kiln`, `buildah`, `docker`. */
  readonly name: string;
  build(req: ImageBuildRequest): Promise<ImageBuildResult>;
}
