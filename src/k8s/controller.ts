/**
 * The ImageBuildRun controller (`kiln controller`): every ImageBuildRun a user (or a pipeline) creates becomes one
 * build pod; the pod's status flows back into the run's status (phase, reason, `Succeeded` condition, digest).
 *
 * Level-triggered, as Kubernetes controllers are: a list of runs and of build pods, then watches from the lists'
 * resourceVersions; each event queues the run's key, and reconciling a key reads the current objects and does
 * what is missing (finalizer, pod, status). A restart therefore re-attaches to whatever runs and pods exist — no
 * state lives in the process — and a watch that expires (410 Gone) lists again.
 *
 * Runs carrying `spec.buildId` belong to `kiln serve --executor kubernetes` (the service mirrors its builds); the
 * controller leaves those alone.
 *
 * Deleting a run deletes its pod (the finalizer `kiln.dev/build-pod`): no orphaned build keeps pushing. A run
 * whose ImageBuild, registry Secret or namespace is missing, or whose pod kiln may not create, fails with a
 * condition naming the object and the missing permission; the controller keeps running.
 */
import { KilnError, errorMessage } from '../errors.js';
import { CORE, type KubeClient, type KubeObject, type WatchEvent } from './client.js';
import {
  API_VERSION,
  FINALIZER,
  FINAL_PHASES,
  IMAGEBUILDS,
  LABEL_MANAGED,
  LABEL_RUN,
  RUNS,
  buildPod,
  objectName,
  podVerdict,
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
  /** Reconciles running at once. */
  workers?: number;
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

export class BuildRunController {
  private readonly queue = new Set<string>();
  private readonly inFlight = new Set<string>();
  private readonly again = new Set<string>();
  private active = 0;
  private readonly ac = new AbortController();
  private loops: Promise<void>[] = [];
  private readonly say: (line: string) => void;
  /** When each run was first seen (for the reconcile lag; cleared once the run has its pod). */
  private readonly seen = new Map<string, number>();
  /** Reconcile lag samples (ms): first event of a run → its pod created and status written. */
  readonly lags: number[] = [];
  private idleWaiters: (() => void)[] = [];
  private readyResolve!: () => void;
  /** Resolves once the first lists are done and the watches started. */
  readonly ready: Promise<void> = new Promise((r) => (this.readyResolve = r));

  constructor(private readonly o: ControllerOptions) {
    this.say = o.log ?? ((l) => process.stderr.write(l + '\n'));
  }

  /** List and watch runs and pods until stop(). */
  start(): void {
    let runsReady!: () => void;
    let podsReady!: () => void;
    const r1 = new Promise<void>((r) => (runsReady = r));
    const r2 = new Promise<void>((r) => (podsReady = r));
    void Promise.all([r1, r2]).then(() => this.readyResolve());
    this.loops = [
      this.informer<ImageBuildRun>(
        { ...RUNS, namespace: this.o.namespace },
        {},
        (ev) => this.enqueue(ev.metadata.name),
        runsReady,
      ),
      this.informer<KubeObject>(
        { ...CORE, resource: 'pods', namespace: this.o.namespace },
        { labelSelector: `${LABEL_MANAGED}=kiln,${LABEL_RUN}` },
        (pod) => {
          const run = pod.metadata.labels?.[LABEL_RUN];
          if (run) this.enqueue(run);
        },
        podsReady,
      ),
    ];
  }

  /** List, then watch from the list's resourceVersion; relist on 410 Gone; retry (backoff) on errors. */
  private async informer<T extends KubeObject>(
    ref: Parameters<KubeClient['list']>[0],
    query: Record<string, string>,
    onObject: (o: T) => void,
    ready: () => void,
  ): Promise<void> {
    let delay = 500;
    let rv: string | undefined;
    while (!this.ac.signal.aborted) {
      try {
        if (rv === undefined) {
          const list = await this.o.client.list<T>(ref, query);
          for (const it of list.items) onObject(it);
          rv = list.metadata.resourceVersion;
          ready();
        }
        rv = await this.o.client.watch<T>(
          ref,
          rv,
          (ev: WatchEvent<T>) => {
            if (ev.type !== 'ERROR') onObject(ev.object);
          },
          this.ac.signal,
          query,
        );
        delay = 500;
      } catch (e) {
        if (this.ac.signal.aborted) return;
        if (e instanceof KilnError && e.code === 'K8S_GONE') {
          rv = undefined;
          continue;
        }
        this.say(`kiln controller: ${errorMessage(e)} (retrying in ${delay} ms)`);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 30_000);
      }
    }
  }

  private enqueue(name: string): void {
    if (!this.seen.has(name)) this.seen.set(name, performance.now());
    if (this.inFlight.has(name)) {
      this.again.add(name);
      return;
    }
    this.queue.add(name);
    this.pump();
  }

  private pump(): void {
    const max = this.o.workers ?? 4;
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

  private async fail(run: ImageBuildRun, code: string, e: unknown): Promise<void> {
    const msg = errorMessage(e).split('\n')[0] ?? 'failed';
    await patchRunStatus(this.o.client, this.o.namespace, run.metadata.name, {
      ...phaseStatus('Failed', msg, msg, code),
      observedGeneration: run.metadata.generation ?? 1,
    });
  }

  /** Make the world match one run. */
  async reconcile(name: string): Promise<void> {
    const ns = this.o.namespace;
    const c = this.o.client;
    const run = await c.getOrUndefined<ImageBuildRun>({ ...RUNS, namespace: ns, name });
    const podName = podNameOf(name);
    const podRef = { ...CORE, resource: 'pods', namespace: ns, name: podName };
    if (!run) {
      this.seen.delete(name);
      return;
    }
    if (run.spec.buildId) return; // the service's own build: its executor follows it
    if (run.metadata.deletionTimestamp) {
      await c.delete(podRef, { gracePeriodSeconds: 0 });
      if (run.metadata.finalizers?.includes(FINALIZER)) {
        await c.patch(
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
      }
      return;
    }
    const phase = run.status?.phase;
    const pod = await c.getOrUndefined<KubeObject>(podRef);
    if (phase && FINAL_PHASES.has(phase)) {
      this.seen.delete(name);
      return;
    }
    if (!pod) {
      if (phase && phase !== 'Pending') {
        // the pod is gone while the build ran: deleted by someone (a cancel) or by the node
        await patchRunStatus(
          c,
          ns,
          name,
          phaseStatus('Cancelled', 'PodDeleted', `the build pod ${podName} was deleted`),
        );
        return;
      }
      if (phase === 'Pending' && run.status?.podName) {
        await patchRunStatus(
          c,
          ns,
          name,
          phaseStatus('Cancelled', 'PodDeleted', `the build pod ${podName} was deleted`),
        );
        return;
      }
      await this.createPod(run, podName);
      return;
    }
    const verdict = podVerdict(pod);
    const st = statusFromVerdict(verdict);
    if (st && (st.phase !== phase || st.reason !== run.status?.reason)) {
      await patchRunStatus(c, ns, name, { ...st, podName });
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
      // the finalizer first: a pod never exists without the run being able to clean it up
      if (!run.metadata.finalizers?.includes(FINALIZER)) {
        await c.patch(
          { ...RUNS, namespace: ns, name },
          { metadata: { finalizers: [...(run.metadata.finalizers ?? []), FINALIZER] } },
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
      });
      try {
        await c.create({ ...CORE, resource: 'pods', namespace: ns }, pod);
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
      await patchRunStatus(c, ns, name, st);
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
