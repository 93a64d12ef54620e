/**
 * The wire between the service and a build worker process: newline-delimited JSON over one unix socket (the
 * worker's fd 3). One socket for both directions keeps the worker's stdout/stderr free for whatever the engine
 * prints, and its end-of-file doubles as the worker's lifeline: when the service dies, even by SIGKILL, the socket
 * closes and the worker cancels its build and cleans up.
 *
 * Secrets (build secrets, registry passwords) cross only this socket — never argv, env, a file outside the
 * worker's private temp dir, or the log.
 */
import type {
  Backend,
  BaseRecord,
  BuildStage,
  RebaseRecord,
  S2ISpec,
  BuildpacksSpec,
  NodeSpec,
  Strategy,
  GitSecretValues,
} from '../model.js';

export type { BaseRecord, RebaseRecord };

/** One build for a worker: everything already resolved (checkout on disk, tags rendered, secrets read). */
export interface WorkerJob {
  buildId: string;
  /** Absolute context dir (inside the checkout). */
  contextDir: string;
  /** Absolute Dockerfile path (inside the checkout). */
  dockerfile: string;
  target?: string;
  buildArgs: Record<string, string>;
  labels: Record<string, string>;
  /** Build secrets by id (values). */
  secrets: Record<string, string>;
  /** Full image references to push (`host/prefix/name:tag`). */
  tags: string[];
  insecureRegistries: string[];
  /** Registry credentials for the project's registry host, if configured. */
  registryAuth?: { registry: string; username: string; password: string };
  /**
   * The project's git credentials (values), only for runners that fetch the source themselves
   * (`BuildRunner.fetchesSource`: the build pod's git Secret).
   */
  gitAuth?: GitSecretValues;
  /** The build log: the worker appends its plain progress to it. */
  logFile: string;
  noCache?: boolean;
  /** The image's `strategy:` and `backend:` (default dockerfile on kiln) and S2I settings (src/backends/service.ts). */
  strategy?: Strategy;
  backend?: Backend;
  s2i?: S2ISpec;
  buildpacks?: BuildpacksSpec;
  node?: NodeSpec;
  /** The project (S2I cache dirs are per project). */
  project?: string;
  /**
   * Where the checkout came from, for runners that fetch the source themselves (the Kubernetes executor's build
   * pod): the repository URL without credentials, the commit, and context/Dockerfile relative to the repository.
   */
  source?: { repository: string; commit: string; ref?: string; context: string; dockerfile: string; image: string };
  /** The build's timeout (s): a runner that cannot be aborted in time (a pod) gets it as a deadline. */
  timeoutSeconds?: number;
  /** What started the build (recorded by runners that mirror builds, e.g. as ImageBuildRuns). */
  triggeredBy?: { type: string; by?: string; reason?: string };
}

/**
 * The outcome code of a build the runner stopped following without ending it (the service stops, its build pod
 * keeps running): the service leaves the build active for the next process to re-attach.
 */
export const RUNNER_DETACHED = 'RUNNER_DETACHED';

/**
 * What the service knows of a build before its source is fetched: a worker taken for the build gets it at once and
 * does the registry work that does not need the source (ping, token, resolving a known base) while the service
 * fetches the commit. Its `job` must follow with the same build id; the worker uses what it prepared only where
 * the job agrees (same registry credentials and insecure registries, same strategy and base).
 */
export interface WorkerPrepare {
  buildId: string;
  /** The repository the tags go to (`host/prefix/name`); tags are rendered after the fetch. */
  repository: string;
  insecureRegistries: string[];
  registryAuth?: WorkerJob['registryAuth'];
  strategy?: Strategy;
  backend?: Backend;
  node?: NodeSpec;
  /** An S2I build's builder image (resolved while the commit is fetched). */
  s2i?: Pick<S2ISpec, 'builderImage'>;
}

/** Service → worker. */
export type ToWorker =
  | { type: 'prepare'; prepare: WorkerPrepare }
  | { type: 'job'; job: WorkerJob }
  | { type: 'cancel'; reason: 'cancelled' | 'timed-out' };

/** Worker → service. */
export type FromWorker =
  | { type: 'ready'; pid: number }
  | { type: 'phase'; phase: 'building' | 'pushing' }
  | { type: 'stage'; stage: BuildStage; index: number }
  | {
      type: 'result';
      digest: string;
      configDigest: string;
      pushed: string[];
      bases: BaseRecord[];
      /** The engine's rebase verdict for the pushed image (absent when the strategy or backend gives none). */
      rebase?: RebaseRecord;
    }
  | { type: 'error'; code: string; message: string; reason: string };

/** Split a byte stream into JSON messages (one per line). */
export function lineDecoder<T>(onMessage: (m: T) => void): (chunk: Buffer) => void {
  let buf = '';
  return (chunk) => {
    buf += chunk.toString('utf8');
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim() === '') continue;
      try {
        onMessage(JSON.parse(line) as T);
      } catch {
        // not a message: ignore (a worker never writes anything else here)
      }
    }
  };
}

/**
 * The one-line `reason` of a failed build, as a user reads it in a list: `Dockerfile:12: RUN exited 2` for a
 * failed RUN, else the first line of the error (at most 300 characters).
 */
export function reasonOf(code: string, message: string): string {
  const first = (message.split('\n')[0] ?? '').trim();
  if (code === 'RUN_FAILED') {
    const m = /^(\S+:\d+):.*?(?:exit code: (\d+)|signal: (\w+))/.exec(first);
    if (m) return m[2] !== undefined ? `${m[1]}: RUN exited ${m[2]}` : `${m[1]}: RUN killed by ${m[3]}`;
  }
  return first.length > 300 ? first.slice(0, 297) + '...' : first;
}
