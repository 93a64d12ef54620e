/**
 * The ImageBuildRun controller (`kiln controller`): every ImageBuildRun a user (or a pipeline) creates becomes one
 * build pod; the pod's status flows back into the run's status (phase, reason, `Succeeded` condition, digest).
 *
 * Level-triggered, as Kubernetes controllers are, and built to keep up with bursts (1,000 runs, bench/k8s.ts):
 * - two informers (informer.ts) keep the runs and the build pods in memory (list, then watch); a reconcile reads
 *   them there — no GET per event. The answers of the controller's own writes go into the caches at once, so the
 *   events those writes cause find nothing left to do and cost no API call;
 * - a work queue of run names: a name queued twice is queued once, a name being reconciled is queued again only
 *   after that reconcile (never two reconciles of one run at once), at most `workers` reconciles at a time;
 * - status writes go through a writer of their own (at most `statusWriters` at once): a run's writes waiting
 *   there merge into one, and a status equal to what the controller last wrote is not written again.
 * A restart therefore re-attaches to whatever runs and pods exist — no state lives in the process — and a watch
 * that expires (410 Gone) lists again.
 *
 * Runs carrying `spec.buildId` belong to `kiln serve --executor kubernetes` (the service mirrors its builds); the
 * controller leaves those alone.
 *
 * Deleting a run deletes its pod (the finalizer `kiln.dev/build-pod`): no orphaned build keeps pushing. A run
 * whose ImageBuild, registry Secret or namespace is missing, or whose pod kiln may not create, fails with a
 * condition naming the object and the missing permission; the controller keeps running.
 */
import { KilnError, errorMessage } from '../errors.js';
import { CORE, type KubeClient, type KubeObject } from './client.js';
import { Informer } from './informer.js';
import {
  API_VERSION,
  FINALIZER,
  FINAL_PHASES,
  IMAGEBUILDS,
  LABEL_MANAGED,
  LABEL_RUN,
  RUNS,
  buildPod,
  gitSecretProblem,
  objectName,
  podVerdict,
  cacheRefOf,
  type PodJob,
  type PodSettings,
} from './pod.js';
import { patchRunStatus, phaseStatus, statusFromVerdict, type ImageBuildRun, type RunStatus } from './runs.js';

export interface ControllerOptions {
  client: KubeClient;
  /** The namespace watched (runs, ImageBuilds, Secrets and pods all live in it). */
  namespace: string;
  /** Defaults of build pods (an ImageBuild's spec.pod overrides them); namespace is the run's. */
  pod: Omit<PodSettings, 'namespace'>;
  /** Default build timeout (s) when neither run nor ImageBuild sets one. */
  timeoutSeconds?: number;
  /** Reconciles running at once (default 16). */
  workers?: number;
  /** Status writes running at once (default 8). */
  statusWriters?: number;
  log?: (line: string) => void;
}

interface ImageBuildSpec {
  repository: string;
  registry: string;
  insecureRegistry?: boolean;
  registrySecret?: string;
  gitSecret?: string;
  timeoutSeconds?: number;
  images: {
    name: string;
    context?: string;
    dockerfile?: string;
    target?: string;
    buildArgs?: Record<string, string>;
    tags?: string[];
    timeoutSeconds?: number;
  }[];
  pod?: Partial<PodSettings>;
}

/** The pod name of a run. */
export function podNameOf(run: string): string {
  return objectName(`kiln-build-${run}`);
}

/** What the controller keeps of a pod: what podVerdict reads. */
function trimPod(p: KubeObject): KubeObject {
  const m = p.metadata;
  const st = (p.status ?? {}) as { phase?: string; reason?: string; message?: string; containerStatuses?: unknown[] };
  const cs = (st.containerStatuses ?? []) as { name: string; state?: unknown }[];
  return {
    metadata: {
      name: m.name,
      ...(m.resourceVersion ? { resourceVersion: m.resourceVersion } : {}),
      ...(m.labels?.[LABEL_RUN] ? { labels: { [LABEL_RUN]: m.labels[LABEL_RUN] } } : {}),
      ...(m.deletionTimestamp ? { deletionTimestamp: m.deletionTimestamp } : {}),
    },
    status: {
      ...(st.phase ? { phase: st.phase } : {}),
      ...(st.reason ? { reason: st.reason } : {}),
      ...(st.message ? { message: st.message } : {}),
      containerStatuses: cs.map((c) => ({ name: c.name, state: c.state })),
    },
  };
}

/** What the controller keeps of a run: spec, the status fields it compares and the metadata it acts on. */
function trimRun(r: ImageBuildRun): ImageBuildRun {
  const m = r.metadata;
  const st = r.status;
  return {
    metadata: {
      name: m.name,
      ...(m.uid ? { uid: m.uid } : {}),
      ...(m.resourceVersion ? { resourceVersion: m.resourceVersion } : {}),
      ...(m.generation !== undefined ? { generation: m.generation } : {}),
      ...(m.finalizers ? { finalizers: m.finalizers } : {}),
      ...(m.deletionTimestamp ? { deletionTimestamp: m.deletionTimestamp } : {}),
    },
    spec: r.spec,
    ...(st
      ? {
          status: {
            ...(st.phase ? { phase: st.phase } : {}),
            ...(st.reason !== undefined ? { reason: st.reason } : {}),
            ...(st.podName ? { podName: st.podName } : {}),
          },
        }
      : {}),
  };
}

/**
 * Status writes with limited concurrency; the writes of one run waiting for a slot merge into one (a merge patch
 * of the later fields over the earlier), so a pod that goes Running → Succeeded while the writer is busy costs
 * one write.
 */
class StatusWriter {
  private readonly waiting = new Map<
    string,
    { status: RunStatus; done: { resolve: (r: ImageBuildRun | undefined) => void; reject: (e: unknown) => void }[] }
  >();
  private active = 0;

  constructor(
    private readonly client: KubeClient,
    private readonly namespace: string,
    private readonly max: number,
    private readonly onWritten: (r: ImageBuildRun) => void,
  ) {}

  write(name: string, status: RunStatus): Promise<ImageBuildRun | undefined> {
    return new Promise((resolve, reject) => {
      const w = this.waiting.get(name);
      if (w) {
        w.status = { ...w.status, ...status };
        w.done.push({ resolve, reject });
      } else {
        this.waiting.set(name, { status, done: [{ resolve, reject }] });
      }
      this.pump();
    });
  }

  private pump(): void {
    while (this.active < this.max && this.waiting.size > 0) {
      const [name, w] = this.waiting.entries().next().value as [
        string,
        typeof this.waiting extends Map<string, infer V> ? V : never,
      ];
      this.waiting.delete(name);
      this.active++;
      patchRunStatus(this.client, this.namespace, name, w.status)
        .then(
          (r) => {
            if (r) this.onWritten(r);
            for (const d of w.done) d.resolve(r);
          },
          (e: unknown) => {
            for (const d of w.done) d.reject(e);
          },
        )
        .finally(() => {
          this.active--;
          this.pump();
        });
    }
  }
}

export class BuildRunController {
  private readonly queue = new Set<string>();
  private readonly inFlight = new Set<string>();
  private readonly again = new Set<string>();
  private active = 0;
  private started = false;
  private readonly ac = new AbortController();
  private loops: Promise<void>[] = [];
  private readonly say: (line: string) => void;
  private readonly runs: Informer<ImageBuildRun>;
  private readonly pods: Informer<KubeObject>;
  private readonly status: StatusWriter;
  /** The phase and reason last written per run (a status equal to it is not written again). */
  private readonly written = new Map<string, string>();
  /** When each run was first seen (for the reconcile lag; cleared once the run has its pod). */
  private readonly seen = new Map<string, number>();
  /** Reconcile lag samples (ms): first event of a run → its pod created and status written. */
  readonly lags: number[] = [];
  private idleWaiters: (() => void)[] = [];
  /** Resolves once the first lists are done and the watches started. */
  readonly ready: Promise<void>;

  constructor(private readonly o: ControllerOptions) {
    this.say = o.log ?? ((l) => process.stderr.write(l + '\n'));
    const ns = o.namespace;
    this.runs = new Informer<ImageBuildRun>({
      client: o.client,
      ref: { ...RUNS, namespace: ns },
      trim: trimRun,
      onChange: (r, deleted) => {
        if (deleted) {
          this.written.delete(r.metadata.name);
          this.seen.delete(r.metadata.name);
        } else if (!this.seen.has(r.metadata.name) && !r.status?.phase) {
          this.seen.set(r.metadata.name, performance.now());
        }
        this.enqueue(r.metadata.name);
      },
      log: this.say,
    });
    this.pods = new Informer<KubeObject>({
      client: o.client,
      ref: { ...CORE, resource: 'pods', namespace: ns },
      query: { labelSelector: `${LABEL_MANAGED}=kiln,${LABEL_RUN}` },
      trim: trimPod,
      onChange: (pod) => {
        const run = pod.metadata.labels?.[LABEL_RUN];
        if (run) this.enqueue(run);
      },
      log: this.say,
    });
    this.status = new StatusWriter(o.client, ns, o.statusWriters ?? 8, (r) => this.runs.put(r));
    this.ready = Promise.all([this.runs.ready, this.pods.ready]).then(() => undefined);
  }

  /** List and watch runs and pods until stop(); reconciles start once both first lists are in. */
  start(): void {
    this.loops = [this.runs.run(this.ac.signal), this.pods.run(this.ac.signal)];
    void this.ready.then(() => {
      this.started = true;
      this.pump();
    });
  }

  private enqueue(name: string): void {
    if (this.inFlight.has(name)) {
      this.again.add(name);
      return;
    }
    this.queue.add(name);
    this.pump();
  }

  private pump(): void {
    if (!this.started) return;
    const max = this.o.workers ?? 16;
    while (this.active < max && this.queue.size > 0 && !this.ac.signal.aborted) {
      const name = this.queue.values().next().value as string;
      this.queue.delete(name);
      this.inFlight.add(name);
      this.active++;
      void this.reconcile(name)
        .catch((e: unknown) => this.say(`kiln controller: ${this.o.namespace}/${name}: ${errorMessage(e)}`))
        .finally(() => {
          this.active--;
          this.inFlight.delete(name);
          if (this.again.delete(name)) this.queue.add(name);
          this.pump();
          if (this.active === 0 && this.queue.size === 0) for (const w of this.idleWaiters.splice(0)) w();
        });
    }
  }

  /** Resolves when nothing is queued or being reconciled (tests, the benchmark). */
  idle(): Promise<void> {
    if (this.active === 0 && this.queue.size === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Write a run's status unless it equals (phase and reason) what the controller last wrote. */
  private async setStatus(name: string, st: RunStatus, force = false): Promise<void> {
    const key = `${st.phase ?? ''}\0${st.reason ?? ''}`;
    if (!force && this.written.get(name) === key) return;
    this.written.set(name, key);
    try {
      await this.status.write(name, st);
    } catch (e) {
      this.written.delete(name);
      throw e;
    }
  }

  private async fail(run: ImageBuildRun, code: string, e: unknown): Promise<void> {
    const msg = errorMessage(e).split('\n')[0] ?? 'failed';
    await this.setStatus(run.metadata.name, {
      ...phaseStatus('Failed', msg, msg, code),
      observedGeneration: run.metadata.generation ?? 1,
    });
  }

  /** Make the world match one run (read from the caches; API calls only for what is missing). */
  async reconcile(name: string): Promise<void> {
    const ns = this.o.namespace;
    const c = this.o.client;
    const run = this.runs.get(name);
    const podName = podNameOf(name);
    const podRef = { ...CORE, resource: 'pods', namespace: ns, name: podName };
    if (!run) {
      this.seen.delete(name);
      this.written.delete(name);
      return;
    }
    if (run.spec.buildId) return; // the service's own build: its executor follows it
    if (run.metadata.deletionTimestamp) {
      if (this.pods.get(podName) && !this.pods.get(podName)?.metadata.deletionTimestamp) {
        await c.delete(podRef, { gracePeriodSeconds: 0 });
        this.pods.remove(podName);
      }
      if (run.metadata.finalizers?.includes(FINALIZER)) {
        const r = await c.patch<ImageBuildRun>(
          { ...RUNS, namespace: ns, name },
          [
            { op: 'test', path: '/metadata/resourceVersion', value: run.metadata.resourceVersion },
            {
              op: 'replace',
              path: '/metadata/finalizers',
              value: run.metadata.finalizers.filter((f) => f !== FINALIZER),
            },
          ],
          'json',
        );
        this.runs.put(r);
      }
      return;
    }
    const phase = run.status?.phase;
    const pod = this.pods.get(podName);
    if (phase && FINAL_PHASES.has(phase)) {
      this.seen.delete(name);
      this.written.delete(name);
      return;
    }
    if (!pod) {
      if ((phase && phase !== 'Pending') || (phase === 'Pending' && run.status?.podName)) {
        // the pod is gone while the build ran: deleted by someone (a cancel) or by the node
        await this.setStatus(name, phaseStatus('Cancelled', 'PodDeleted', `the build pod ${podName} was deleted`));
        return;
      }
      // a status written as Failed (missing Secret …) that the cache does not show yet: nothing to do
      if (this.written.has(name)) return;
      await this.createPod(run, podName);
      return;
    }
    const verdict = podVerdict(pod);
    const st = statusFromVerdict(verdict);
    if (st && (st.phase !== phase || st.reason !== run.status?.reason)) {
      await this.setStatus(name, { ...st, podName });
    }
  }

  private async createPod(run: ImageBuildRun, podName: string): Promise<void> {
    const ns = this.o.namespace;
    const c = this.o.client;
    const name = run.metadata.name;
    const s = run.spec;
    // the ImageBuild (project configuration), when named
    let ib: ImageBuildSpec | undefined;
    if (s.imageBuild) {
      const obj = await c.getOrUndefined<KubeObject & { spec: ImageBuildSpec }>({
        ...IMAGEBUILDS,
        namespace: ns,
        name: s.imageBuild,
      });
      if (!obj) {
        await this.fail(run, 'IMAGEBUILD_NOT_FOUND', `ImageBuild "${s.imageBuild}" not found in namespace "${ns}"`);
        return;
      }
      ib = obj.spec;
    }
    const img = ib?.images.find((i) => i.name === s.image);
    if (ib && !img) {
      await this.fail(
        run,
        'IMAGEBUILD_NOT_FOUND',
        `ImageBuild "${s.imageBuild}" has no image "${s.image}" (it has ${ib.images.map((i) => i.name).join(', ')})`,
      );
      return;
    }
    const registry = s.registry ?? ib?.registry ?? '';
    const registrySecret = s.registrySecret ?? ib?.registrySecret;
    try {
      if (registrySecret) {
        const sec = await c.getOrUndefined<KubeObject & { type?: string }>({
          ...CORE,
          resource: 'secrets',
          namespace: ns,
          name: registrySecret,
        });
        if (!sec) {
          await this.fail(
            run,
            'SECRET_NOT_FOUND',
            `registry Secret "${registrySecret}" not found in namespace "${ns}"`,
          );
          return;
        }
        if (sec.type !== 'kubernetes.io/dockerconfigjson') {
          await this.fail(
            run,
            'SECRET_NOT_FOUND',
            `Secret "${registrySecret}" in namespace "${ns}" is of type ${sec.type ?? '?'}, not kubernetes.io/dockerconfigjson`,
          );
          return;
        }
      }
      const gitSecret = s.gitSecret ?? ib?.gitSecret;
      if (gitSecret) {
        const sec = await c.getOrUndefined<KubeObject & { data?: Record<string, string> }>({
          ...CORE,
          resource: 'secrets',
          namespace: ns,
          name: gitSecret,
        });
        const problem = sec ? gitSecretProblem(sec) : 'not found';
        if (problem) {
          await this.fail(run, 'SECRET_NOT_FOUND', `git Secret "${gitSecret}" in namespace "${ns}": ${problem}`);
          return;
        }
      }
      // the finalizer first: a pod never exists without the run being able to clean it up
      if (!run.metadata.finalizers?.includes(FINALIZER)) {
        this.runs.put(
          await c.patch<ImageBuildRun>(
            { ...RUNS, namespace: ns, name },
            { metadata: { finalizers: [...(run.metadata.finalizers ?? []), FINALIZER] } },
          ),
        );
      }
      const context = s.context ?? img?.context ?? '.';
      const tags = s.tags?.length
        ? s.tags
        : (img?.tags ?? ['latest']).map(
            (t) => `${registry}/${s.image}:${t.includes('{{') ? (s.commit ?? 'latest').slice(0, 12) : t}`,
          );
      const job: PodJob = {
        buildId: run.metadata.uid ?? name,
        repository: s.repository ?? ib?.repository ?? '',
        context,
        dockerfile: s.dockerfile ?? img?.dockerfile ?? `${context === '.' ? '' : `${context}/`}Dockerfile`,
        buildArgs: { ...(img?.buildArgs ?? {}), ...(s.buildArgs ?? {}) },
        labels: { 'org.opencontainers.image.source': s.repository ?? ib?.repository ?? '' },
        tags,
        insecureRegistries: s.insecureRegistry || ib?.insecureRegistry ? [registry.split('/')[0] as string] : [],
        secretIds: [],
      };
      if (s.ref) job.ref = s.ref;
      if (s.commit) job.commit = s.commit;
      const target = s.target ?? img?.target;
      if (target) job.target = target;
      const settings: PodSettings = { ...this.o.pod, ...(ib?.pod ?? {}), namespace: ns };
      if (s.isolation) settings.isolation = s.isolation;
      // as the executor: the pod's KILN_HOME is empty, the registry cache makes the next run of the image warm
      const cacheRef = settings.registryCache === false ? undefined : cacheRefOf(tags);
      if (cacheRef) job.cacheRef = cacheRef;
      const timeoutSeconds =
        s.timeoutSeconds ?? img?.timeoutSeconds ?? ib?.timeoutSeconds ?? this.o.timeoutSeconds ?? 3600;
      const pod = buildPod({
        name: podName,
        job,
        settings,
        timeoutSeconds,
        runName: name,
        owner: {
          apiVersion: API_VERSION,
          kind: 'ImageBuildRun',
          name,
          uid: run.metadata.uid ?? '',
          controller: true,
          blockOwnerDeletion: true,
        },
        labels: { 'kiln.dev/image': s.image.slice(0, 63) },
        ...(registrySecret ? { registrySecret } : {}),
        ...(gitSecret ? { gitSecret } : {}),
      });
      try {
        this.pods.put(await c.create<KubeObject>({ ...CORE, resource: 'pods', namespace: ns }, pod));
      } catch (e) {
        if (!(e instanceof KilnError && e.code === 'K8S_EXISTS')) throw e;
      }
      const st: RunStatus = {
        ...phaseStatus('Pending', 'PodCreated', `build pod ${podName} created`),
        podName,
        podNamespace: ns,
        startedAt: new Date().toISOString(),
        observedGeneration: run.metadata.generation ?? 1,
      };
      await this.setStatus(name, st, true);
      const t0 = this.seen.get(name);
      if (t0 !== undefined) {
        this.lags.push(performance.now() - t0);
        this.seen.delete(name);
      }
    } catch (e) {
      const code = e instanceof KilnError ? e.code : 'INTERNAL';
      await this.fail(run, code, e);
    }
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await Promise.all(this.loops);
    await this.idle();
  }
}
