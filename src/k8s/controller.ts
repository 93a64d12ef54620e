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
 * - a new run is acknowledged as soon as its first event arrives, ahead of the work queue: status
 *   `Pending`/`Accepted` naming the pod it will get (what `kubectl get imagebuildruns` shows);
 * - every write goes through one WriteQueue (at most `writers` at once), acknowledgements first, then pods, then
 *   finalizers, then later statuses, with `reserve` slots kept for the lower classes so pods are never starved:
 *   in a burst the API server's write throughput is what runs wait for (about 4 writes a run: the user's create,
 *   the acknowledgement, the finalizer, the pod), and a first-in-first-out queue made the 1,000th run wait for
 *   the 999 runs' finalizers and pods before its one small status write;
 * - a run's status writes waiting there merge into one, and a status equal to what the controller last wrote is
 *   not written again.
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
  /** API writes running at once (default 24; WriteQueue). */
  writers?: number;
  /** Write slots kept for pods, finalizers and later statuses while acknowledgements wait (default 8). */
  reserve?: number;
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

/** Write classes, highest priority first. */
export const enum WriteClass {
  /** A new run's first status (`Pending`/`Accepted`): what `kubectl get imagebuildruns` shows at once. */
  Ack = 0,
  /** A build pod's creation. */
  Pod = 1,
  /** The finalizer, a finalizer's removal, a pod's deletion. */
  Finalizer = 2,
  /** Later status writes (Running, Succeeded, Failed …). */
  Status = 3,
}

interface WriteJob {
  cls: WriteClass;
  run: () => Promise<unknown>;
  done: { resolve: (r: unknown) => void; reject: (e: unknown) => void }[];
  taken: boolean;
}

/**
 * Every write of the controller, at most `max` at once, highest class first — but writes below `Ack` keep
 * `reserve` slots whenever they wait, so a burst of new runs delays pods without starving them. Why: in a burst
 * the API server's write throughput is the bottleneck (bench/k8s.ts); a first-in-first-out queue makes a new run
 * wait behind the finalizers and pods of every run before it, while its acknowledgement is one small write.
 *
 * Status writes of one run that wait merge into one (a merge patch of the later fields over the earlier; the
 * merged write keeps the higher class), so a pod that goes Running → Succeeded while the queue is busy costs one
 * write.
 */
export class WriteQueue {
  private readonly queues: WriteJob[][] = [[], [], [], []];
  private readonly statusWaiting = new Map<string, { job: WriteJob; status: RunStatus }>();
  private active = 0;
  private activeAcks = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly max: number,
    private readonly reserve: number,
  ) {}

  /** Run `fn` when a slot of its class is free. */
  submit<T>(cls: WriteClass, fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.push({ cls, run: fn, done: [{ resolve: resolve as (r: unknown) => void, reject }], taken: false });
    });
  }

  /** A status write of run `name` (merged with one of the same run still waiting). */
  status(
    cls: WriteClass,
    name: string,
    status: RunStatus,
    write: (s: RunStatus) => Promise<ImageBuildRun | undefined>,
  ): Promise<ImageBuildRun | undefined> {
    return new Promise((resolve, reject) => {
      const done = { resolve: resolve as (r: unknown) => void, reject };
      const w = this.statusWaiting.get(name);
      if (w && !w.job.taken) {
        w.status = { ...w.status, ...status };
        w.job.done.push(done);
        if (cls < w.job.cls) {
          // promoted: queued again in the higher class (the old entry is skipped once taken)
          w.job.taken = true;
          const job: WriteJob = { ...w.job, cls, taken: false };
          w.job = job;
          this.push(job);
        }
        return;
      }
      const entry = { job: undefined as unknown as WriteJob, status };
      entry.job = {
        cls,
        run: () => {
          if (this.statusWaiting.get(name) === entry) this.statusWaiting.delete(name);
          return write(entry.status);
        },
        done: [done],
        taken: false,
      };
      this.statusWaiting.set(name, entry);
      this.push(entry.job);
    });
  }

  /** Resolves when no write waits or runs. */
  idle(): Promise<void> {
    if (this.active === 0 && this.queues.every((q) => q.length === 0)) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private push(job: WriteJob): void {
    this.queues[job.cls]?.push(job);
    this.pump();
  }

  private next(): WriteJob | undefined {
    for (;;) {
      const acks = this.queues[WriteClass.Ack] as WriteJob[];
      const lowQ = this.queues.slice(1).find((q) => q.length > 0);
      // lower classes take a slot when no acknowledgement waits, or while they hold fewer than `reserve`
      const q =
        lowQ && (acks.length === 0 || this.active - this.activeAcks < this.reserve)
          ? lowQ
          : acks.length > 0
            ? acks
            : undefined;
      if (!q) return undefined;
      const job = q.shift() as WriteJob;
      if (!job.taken) return job;
    }
  }

  private pump(): void {
    while (this.active < this.max) {
      const job = this.next();
      if (!job) break;
      job.taken = true;
      this.active++;
      const ack = job.cls === WriteClass.Ack;
      if (ack) this.activeAcks++;
      job
        .run()
        .then(
          (r) => {
            for (const d of job.done) d.resolve(r);
          },
          (e: unknown) => {
            for (const d of job.done) d.reject(e);
          },
        )
        .finally(() => {
          this.active--;
          if (ack) this.activeAcks--;
          this.pump();
          if (this.active === 0 && this.queues.every((q) => q.length === 0))
            for (const w of this.idleWaiters.splice(0)) w();
        });
    }
  }
}

/** The reason of a run's acknowledgement (its first status, written before its pod exists). */
export const ACCEPTED = 'Accepted';
const ACCEPTED_KEY = `Pending\0${ACCEPTED}`;

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
  private readonly writes: WriteQueue;
  /** The phase and reason last written per run (a status equal to it is not written again). */
  private readonly written = new Map<string, string>();
  /** Runs whose pod this process created (a pod missing later was deleted: the run is cancelled). */
  private readonly created = new Set<string>();
  /** When each run was first seen (for the reconcile lag; cleared once the run is acknowledged). */
  private readonly seen = new Map<string, number>();
  /** Reconcile lag samples (ms): first event of a run → its acknowledgement (first status) written. */
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
        const name = r.metadata.name;
        if (deleted) {
          this.written.delete(name);
          this.seen.delete(name);
          this.created.delete(name);
        } else if (!r.status?.phase && !r.spec.buildId && !r.metadata.deletionTimestamp && !this.written.has(name)) {
          // a new run: acknowledged at once, ahead of any reconcile (the work queue may hold hundreds)
          if (!this.seen.has(name)) this.seen.set(name, performance.now());
          this.acknowledge(r);
        }
        this.enqueue(name);
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
    this.writes = new WriteQueue(o.writers ?? 24, o.reserve ?? 8);
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
          if (this.reconcilesIdle()) for (const w of this.idleWaiters.splice(0)) w();
        });
    }
  }

  /** No reconcile running, and none queued (after stop(), queued ones never start: they do not count). */
  private reconcilesIdle(): boolean {
    return this.active === 0 && (this.queue.size === 0 || this.ac.signal.aborted);
  }

  /** Resolves when nothing is queued, being reconciled or being written (tests, the benchmark). */
  async idle(): Promise<void> {
    for (;;) {
      if (!this.reconcilesIdle()) await new Promise<void>((r) => this.idleWaiters.push(r));
      await this.writes.idle();
      if (this.reconcilesIdle()) return;
    }
  }

  /**
   * A new run's first status: `Pending`/`Accepted` with the name of the pod it will get — written first of all
   * the controller's writes (WriteClass.Ack), before the finalizer and the pod, so that `kubectl get
   * imagebuildruns` shows every run taken in hand even while a burst's pods are still being created.
   */
  private acknowledge(run: ImageBuildRun): void {
    const name = run.metadata.name;
    const podName = podNameOf(name);
    const st: RunStatus = {
      ...phaseStatus('Pending', ACCEPTED, `accepted: build pod ${podName} is being created`),
      podName,
      podNamespace: this.o.namespace,
      observedGeneration: run.metadata.generation ?? 1,
    };
    this.setStatus(name, st, WriteClass.Ack)
      .then(() => {
        const t0 = this.seen.get(name);
        if (t0 !== undefined) {
          this.lags.push(performance.now() - t0);
          this.seen.delete(name);
        }
      })
      .catch((e: unknown) => this.say(`kiln controller: ${this.o.namespace}/${name}: ${errorMessage(e)}`));
  }

  /** Write a run's status unless it equals (phase and reason) what the controller last wrote. */
  private async setStatus(name: string, st: RunStatus, cls = WriteClass.Status): Promise<void> {
    const key = `${st.phase ?? ''}\0${st.reason ?? ''}`;
    if (this.written.get(name) === key) return;
    this.written.set(name, key);
    try {
      const r = await this.writes.status(cls, name, st, (merged) =>
        patchRunStatus(this.o.client, this.o.namespace, name, merged),
      );
      if (r) this.runs.put(r);
    } catch (e) {
      if (this.written.get(name) === key) this.written.delete(name);
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
        await this.writes.submit(WriteClass.Finalizer, () => c.delete(podRef, { gracePeriodSeconds: 0 }));
        this.pods.remove(podName);
      }
      const finalizers = run.metadata.finalizers;
      if (finalizers?.includes(FINALIZER)) {
        const r = await this.writes.submit(WriteClass.Finalizer, () =>
          c.patch<ImageBuildRun>(
            { ...RUNS, namespace: ns, name },
            [
              { op: 'test', path: '/metadata/resourceVersion', value: run.metadata.resourceVersion },
              {
                op: 'replace',
                path: '/metadata/finalizers',
                value: finalizers.filter((f) => f !== FINALIZER),
              },
            ],
            'json',
          ),
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
      this.created.delete(name);
      return;
    }
    if (!pod) {
      // `Pending`/`Accepted` is written before the pod exists: after it, a missing pod is one still to create —
      // unless this process created it (a controller restarted in between creates it again: the build goes on)
      const accepted = phase === 'Pending' && run.status?.reason === ACCEPTED;
      if (
        this.created.has(name) ||
        (phase && phase !== 'Pending') ||
        (phase === 'Pending' && run.status?.podName && !accepted)
      ) {
        // the pod is gone while the build ran: deleted by someone (a cancel) or by the node
        await this.setStatus(name, phaseStatus('Cancelled', 'PodDeleted', `the build pod ${podName} was deleted`));
        return;
      }
      // a status written as Failed (missing Secret …) that the cache does not show yet: nothing to do
      const w = this.written.get(name);
      if (w !== undefined && w !== ACCEPTED_KEY) return;
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
          await this.writes.submit(WriteClass.Finalizer, () =>
            c.patch<ImageBuildRun>(
              { ...RUNS, namespace: ns, name },
              { metadata: { finalizers: [...(run.metadata.finalizers ?? []), FINALIZER] } },
            ),
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
        this.pods.put(
          await this.writes.submit(WriteClass.Pod, () =>
            c.create<KubeObject>({ ...CORE, resource: 'pods', namespace: ns }, pod),
          ),
        );
        this.created.add(name);
      } catch (e) {
        // already there (a restart, or a pod the cache has not seen yet): its watch event follows
        if (!(e instanceof KilnError && e.code === 'K8S_EXISTS')) throw e;
      }
      // no status write here: the acknowledgement already names the pod; the pod's own phase comes next
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
