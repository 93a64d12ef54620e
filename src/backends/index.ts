/**
 * `builderFor(name)`: the ImageBuilder for `--backend` / the service's `backend:` key. `kiln` is kiln's own engine
 * (`runBuildCommand`), `buildah` and `docker` are the CLI adapters (src/backends/cli.ts). kaniko is a
 * Kubernetes-only backend (a pod spec), not runnable here.
 */
import { KilnError } from '../errors.js';
import type { EmbeddedBuild } from '../engine/services.js';
import { buildahBuilder, dockerBuilder } from './cli.js';
import type { ImageBuilder, ImageBuildRequest, ImageBuildResult, StepTiming } from './types.js';

export type { ImageBuilder, ImageBuildRequest, ImageBuildResult, StepTiming } from './types.js';

/** The engine's progress (plain, to `log`), recording each step's duration. */
function timingProgress(
  Base: typeof import('../engine/progress.js').BuildProgress,
  steps: StepTiming[],
  log: (s: string) => void,
): InstanceType<typeof Base> {
  const started = new Map<number, { name: string; at: number }>();
  const end = (id: number): void => {
    const s = started.get(id);
    if (s) steps.push({ name: s.name, durationMs: Date.now() - s.at });
    started.delete(id);
  };
  class Timing extends Base {
    override start(id: number, name: string): void {
      started.set(id, { name, at: Date.now() });
      super.start(id, name);
    }
    override cached(id: number): void {
      end(id);
      super.cached(id);
    }
    override done(id: number): void {
      end(id);
      super.done(id);
    }
    override error(id: number, message: string): void {
      end(id);
      super.error(id, message);
    }
  }
  return new Timing('plain', log);
}

/** kiln's own engine behind the ImageBuilder interface. */
export const kilnBuilder: ImageBuilder = {
  name: 'kiln',
  async build(req: ImageBuildRequest): Promise<ImageBuildResult> {
    const { runBuildCommand } = await import('../engine/services.js');
    const { BuildProgress } = await import('../engine/progress.js');
    const steps: StepTiming[] = [];
    const embed: EmbeddedBuild = { progress: timingProgress(BuildProgress, steps, req.log) };
    if (req.credentials) embed.credentials = req.credentials;
    if (req.signal) embed.signal = req.signal;
    const res = await runBuildCommand(req.options, req.registry, embed);
    const out: ImageBuildResult = {
      backend: 'kiln',
      digest: res.exported.digest,
      imageId: res.exported.configDigest,
      pushed: res.exported.pushed,
      steps,
    };
    return out;
  },
};

export const BACKEND_NAMES = ['kiln', 'buildah', 'docker'] as const;

export function builderFor(name: string): ImageBuilder {
  switch (name) {
    case 'kiln':
      return kilnBuilder;
    case 'buildah':
      return buildahBuilder();
    case 'docker':
      return dockerBuilder();
    case 'kaniko':
      // its pod spec is src/backends/kaniko.ts (for the Kubernetes runner)
      throw new KilnError('BACKEND_UNSUPPORTED', 'the kaniko backend runs only as a Kubernetes pod', {
        hint: 'use --backend kiln, buildah or docker here',
      });
    default:
      throw new KilnError('OPTION_INVALID', `unknown backend "${name}"`, {
        hint: `use one of ${BACKEND_NAMES.join(', ')}`,
      });
  }
}
