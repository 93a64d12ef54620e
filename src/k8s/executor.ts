/**
 * The Kubernetes executor (`kiln serve --executor kubernetes`): the service's BuildRunner port with one Pod per
 * build instead of a local worker — Kubernetes schedules builds across nodes; kiln grows no engine of its own.
 *
 * Per build, in the configured namespace:
 * - an ImageBuildRun mirrors the service's build (`kubectl get imagebuildruns` follows the service's builds);
 *   it owns everything below, so deleting it (or the namespace) leaves nothing behind;
 * - a Secret with the registry credentials (`kubernetes.io/dockerconfigjson`) and one with the build secrets,
 *   mounted read-only into the pod — never an env var, an argument or the ImageBuildRun;
 * - the pod (pod.ts): `activeDeadlineSeconds` from the build's timeout, the isolation level's security context.
 *
 * The pod's log is followed into the service's log file as it comes (it outlives the pod); its status decides the
 * outcome (OOMKilled, DeadlineExceeded, Evicted, ImagePullBackOff are reasons of their own). Cancel deletes the
 * pod; a finished pod and its Secrets are deleted after `podGraceSeconds`. A pod that already exists for the
 * build id is followed, not created again (`close()` stops following and leaves pods running); at service start
 * `cleanupAfter()` removes pods a previous process left, because the service fails and reruns interrupted builds
 * under new ids.
 *
 * Any refusal — namespace missing, a permission missing, the API server unreachable — fails that build with one
 * line naming the object and the permission (client.ts); the service keeps running.
 */
import { appendFile } from 'node:fs/promises';
import { KilnError, errorMessage } from '../errors.js';
import type { BuildRunner, RunHooks, RunOutcome } from '../service/runner/local.js';
import type { WorkerJob } from '../service/runner/protocol.js';
import { CORE, type KubeClient, type KubeObject } from './client.js';
import {
  API_VERSION,
  RUNS,
  buildPod,
  dockerConfigJson,
  objectName,
  podVerdict,
  type PodJob,
  type PodSettings,
  type PodVerdict,
} from './pod.js';
import { patchRunStatus, phaseStatus, statusFromVerdict, type ImageBuildRun, type RunSpec } from './runs.js';

export interface KubernetesRunnerOptions {
  client: KubeClient;
  pod: PodSettings;
  /** How long finished pods stay (for `kubectl logs`/debugging) before they are deleted (s, default 300). */
  podGraceSeconds?: number;
  /** The service's public URL: ImageBuildRun status.logURL points at the build's log there. */
  publicUrl?: string;
  /** The build timeout the pod's activeDeadlineSeconds gets when the job has none (s). */
  timeoutSeconds?: number;
  log?: (line: string) => void;
}

/** Names of a build's objects. */
export function objectsOf(buildId: string): {
  run: string;
  pod: string;
  registrySecret: string;
  buildSecret: string;
  gitSecret: string;
} {
  const base = objectName(`kiln-${buildId}`, 50);
  return secretsOf({ run: base, pod: base });
}

/** The Secrets of a build pod (named after it). */
function secretsOf<T extends { pod: string }>(
  o: T,
): T & { registrySecret: string; buildSecret: string; gitSecret: string } {
  return { ...o, registrySecret: `${o.pod}-registry`, buildSecret: `${o.pod}-secrets`, gitSecret: `${o.pod}-git` };
}

export class KubernetesBuildRunner implements BuildRunner {
  /** The pod fetches the source: jobs carry the project's git credentials for its git Secret. */
  readonly fetchesSource = true;
  private closed = false;
  /** Aborted by close(): builds stop being followed, their pods stay for the next process to re-attach. */
  private readonly life = new AbortController();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly say: (line: string) => void;

  constructor(private readonly o: KubernetesRunnerOptions) {
    this.say = o.log ?? ((l) => process.stderr.write(l + '\n'));
  }

  private get ns(): string {
    return this.o.pod.namespace;
  }

  async run(job: WorkerJob, hooks: RunHooks, signal: AbortSignal): Promise<RunOutcome> {
    if (this.closed) throw new KilnError('SERVICE_CLOSING', 'the service is shutting down');
    const names = objectsOf(job.buildId);
    const log = (s: string): Promise<void> => appendFile(job.logFile, s).catch(() => undefined);
    let run: ImageBuildRun | undefined;
    try {
      await log(`#1 [kubernetes] build pod ${this.ns}/${names.pod}\n`);
      run = await this.ensureRun(job, names.run);
      const owner = {
        apiVersion: API_VERSION,
        kind: 'ImageBuildRun',
        name: run.metadata.name,
        uid: run.metadata.uid ?? '',
        controller: true,
      };
      let registrySecret: string | undefined;
      if (job.registryAuth) {
        registrySecret = names.registrySecret;
        const a = job.registryAuth;
        await this.ensureSecret(
          names.registrySecret,
          'kubernetes.io/dockerconfigjson',
          { '.dockerconfigjson': dockerConfigJson(a.registry, a.username, a.password) },
          owner,
        );
      }
      let buildSecret: string | undefined;
      const ids = Object.keys(job.secrets);
      if (ids.length) {
        buildSecret = names.buildSecret;
        await this.ensureSecret(
          names.buildSecret,
          'Opaque',
          Object.fromEntries(ids.map((id, i) => [`s${i}`, job.secrets[id] ?? ''])),
          owner,
        );
      }
      let gitSecret: string | undefined;
      const g = job.gitAuth;
      if (g && (g.password !== undefined || g.sshKey !== undefined)) {
        gitSecret = names.gitSecret;
        const data: Record<string, string> =
          g.sshKey !== undefined
            ? { 'ssh-privatekey': g.sshKey, known_hosts: g.knownHosts ?? '' }
            : { username: g.username ?? 'git', password: g.password ?? '' };
        await this.ensureSecret(names.gitSecret, 'Opaque', data, owner);
      }
      const src = job.source;
      const podJob: PodJob = {
        buildId: job.buildId,
        repository: src?.repository ?? job.labels['org.opencontainers.image.source'] ?? '',
        context: src?.context ?? '.',
        dockerfile: src?.dockerfile ?? 'Dockerfile',
        buildArgs: job.buildArgs,
        labels: job.labels,
        tags: job.tags,
        insecureRegistries: job.insecureRegistries,
        secretIds: ids,
      };
      const commit = src?.commit ?? job.labels['org.opencontainers.image.revision'];
      if (commit) podJob.commit = commit;
      if (job.target) podJob.target = job.target;
      if (job.noCache) podJob.noCache = true;
      const pod = buildPod({
        name: names.pod,
        job: podJob,
        settings: this.o.pod,
        timeoutSeconds: job.timeoutSeconds ?? this.o.timeoutSeconds ?? 3600,
        runName: names.run,
        owner,
        labels: job.project ? { 'kiln.dev/project': objectName(job.project) } : {},
        ...(registrySecret ? { registrySecret } : {}),
        ...(buildSecret ? { buildSecret } : {}),
        ...(gitSecret ? { gitSecret } : {}),
      });
      try {
        await this.o.client.create({ ...CORE, resource: 'pods', namespace: this.ns }, pod);
      } catch (e) {
        if (!(e instanceof KilnError && e.code === 'K8S_EXISTS')) throw e;
        await log(`#1 [kubernetes] re-attached to the running pod ${names.pod}\n`);
      }
      await patchRunStatus(this.o.client, this.ns, names.run, {
        ...phaseStatus('Pending', 'PodCreated', `build pod ${names.pod} created`),
        podName: names.pod,
        podNamespace: this.ns,
        startedAt: new Date().toISOString(),
      });
      hooks.onStart?.(0);
      const verdict = await this.follow(names.pod, job, hooks, signal);
      return await this.finish(names, verdict, signal);
    } catch (e) {
      if (this.life.signal.aborted) return this.detached();
      const code = e instanceof KilnError ? e.code : 'INTERNAL';
      const message = errorMessage(e).split('\n')[0] ?? 'failed';
      const hint = e instanceof KilnError && e.hint ? `hint: ${e.hint}\n` : '';
      await log(`\nERROR: ${message}\n${hint}`);
      if (run)
        await patchRunStatus(this.o.client, this.ns, names.run, phaseStatus('Failed', message, message, code)).catch(
          () => undefined,
        );
      // whatever was created goes: a failed start leaves no pod waiting for a Secret that never comes
      await this.cleanup(names).catch(() => undefined);
      return { ok: false, code, message, reason: message };
    }
  }

  /** The ImageBuildRun mirroring the build (created, or the existing one after a restart). */
  private async ensureRun(job: WorkerJob, name: string): Promise<ImageBuildRun> {
    const src = job.source;
    const spec: RunSpec = {
      image: objectName(src?.image ?? job.tags[0]?.split('/').pop()?.split(':')[0] ?? 'image', 128),
      buildId: job.buildId,
      tags: job.tags,
      repository: src?.repository ?? job.labels['org.opencontainers.image.source'] ?? '',
      registry: (job.tags[0] ?? 'registry.invalid/x').replace(/\/[^/]*$/, ''),
      ...(src?.context ? { context: src.context } : {}),
      ...(src?.dockerfile ? { dockerfile: src.dockerfile } : {}),
      ...(job.project ? { project: objectName(job.project) } : {}),
      ...(job.target ? { target: job.target } : {}),
      ...(job.timeoutSeconds ? { timeoutSeconds: job.timeoutSeconds } : {}),
      ...(job.triggeredBy ? { triggeredBy: job.triggeredBy } : {}),
    };
    const commit = src?.commit ?? job.labels['org.opencontainers.image.revision'];
    if (commit) spec.commit = commit;
    else spec.ref = 'HEAD';
    if (src?.ref) spec.ref = src.ref;
    const body: ImageBuildRun = {
      apiVersion: API_VERSION,
      kind: 'ImageBuildRun',
      metadata: {
        name,
        namespace: this.ns,
        labels: { 'app.kubernetes.io/managed-by': 'kiln', 'kiln.dev/build-id': objectName(job.buildId) },
      },
      spec,
    };
    let run: ImageBuildRun;
    try {
      run = await this.o.client.create<ImageBuildRun>({ ...RUNS, namespace: this.ns }, body);
    } catch (e) {
      if (!(e instanceof KilnError && e.code === 'K8S_EXISTS')) throw e;
      run = await this.o.client.get<ImageBuildRun>({ ...RUNS, namespace: this.ns, name });
    }
    if (this.o.publicUrl) {
      await patchRunStatus(this.o.client, this.ns, name, {
        logURL: `${this.o.publicUrl.replace(/\/+$/, '')}/api/v1/builds/${job.buildId}/log`,
      });
    }
    return run;
  }

  private async ensureSecret(
    name: string,
    type: string,
    data: Record<string, string>,
    owner: KubeObject['metadata']['ownerReferences'] extends (infer T)[] | undefined ? T : never,
  ): Promise<void> {
    const body: KubeObject = {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: {
        name,
        namespace: this.ns,
        labels: { 'app.kubernetes.io/managed-by': 'kiln' },
        ownerReferences: [owner],
      },
      type,
      stringData: data,
    };
    try {
      await this.o.client.create({ ...CORE, resource: 'secrets', namespace: this.ns }, body);
    } catch (e) {
      if (!(e instanceof KilnError && e.code === 'K8S_EXISTS')) throw e;
      await this.o.client.replace({ ...CORE, resource: 'secrets', namespace: this.ns, name }, body);
    }
  }

  /** Watch the pod until it reaches a verdict (or the signal aborts: the pod is deleted). Streams its log. */
  private async follow(
    podName: string,
    job: WorkerJob,
    hooks: RunHooks,
    signal: AbortSignal,
  ): Promise<PodVerdict | 'aborted' | 'detached'> {
    const c = this.o.client;
    const ref = { ...CORE, resource: 'pods', namespace: this.ns };
    const watchAc = new AbortController();
    const onAbort = (): void => watchAc.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    this.life.signal.addEventListener('abort', onAbort, { once: true });
    let logging: Promise<void> | undefined;
    let lastPhase: string | undefined;
    try {
      let rv: string | undefined;
      for (;;) {
        if (this.life.signal.aborted) return 'detached';
        if (signal.aborted) return 'aborted';
        const pod = await c.getOrUndefined<KubeObject>({ ...ref, name: podName });
        if (!pod) {
          return {
            state: 'failed',
            code: 'POD_DELETED',
            reason: 'PodDeleted',
            message: `the build pod ${this.ns}/${podName} was deleted`,
          };
        }
        let verdict = podVerdict(pod);
        rv = pod.metadata.resourceVersion;
        const seen = async (v: PodVerdict): Promise<void> => {
          if (v.state === 'running' && lastPhase !== 'Running') {
            lastPhase = 'Running';
            hooks.onPhase?.('building');
            await patchRunStatus(c, this.ns, objectsOf(job.buildId).run, statusFromVerdict(v) ?? {}).catch(
              () => undefined,
            );
            logging ??= this.streamLog(podName, job.logFile, watchAc.signal);
          }
        };
        await seen(verdict);
        if (verdict.state === 'succeeded' || verdict.state === 'failed') return verdict;
        let final: PodVerdict | undefined;
        let deleted = false;
        const wac = new AbortController();
        const stopWatch = (): void => wac.abort();
        watchAc.signal.addEventListener('abort', stopWatch, { once: true });
        try {
          await c.watch<KubeObject>(
            ref,
            rv,
            (ev) => {
              if (ev.type === 'ERROR') return;
              if (ev.type === 'DELETED') {
                deleted = true;
                wac.abort();
                return;
              }
              verdict = podVerdict(ev.object);
              void seen(verdict);
              if (verdict.state === 'succeeded' || verdict.state === 'failed') {
                final = verdict;
                wac.abort();
              }
            },
            wac.signal,
            { fieldSelector: `metadata.name=${podName}` },
          );
        } catch (e) {
          if (!(e instanceof KilnError && e.code === 'K8S_GONE')) throw e;
        } finally {
          watchAc.signal.removeEventListener('abort', stopWatch);
        }
        if (final) return final;
        if (this.life.signal.aborted) return 'detached';
        if (deleted && !signal.aborted) {
          return {
            state: 'failed',
            code: 'POD_DELETED',
            reason: 'PodDeleted',
            message: `the build pod ${this.ns}/${podName} was deleted`,
          };
        }
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.life.signal.removeEventListener('abort', onAbort);
      // let the log stream drain what the container printed last (bounded)
      if (logging) await Promise.race([logging, new Promise((r) => setTimeout(r, 5000))]);
      watchAc.abort();
    }
  }

  /** Follow the container's log into the build log; a log that cannot be read is one line, never a failure. */
  private async streamLog(podName: string, logFile: string, signal: AbortSignal): Promise<void> {
    try {
      const stream = await this.o.client.logs(this.ns, podName, { follow: true, container: 'build', signal });
      for await (const chunk of stream) await appendFile(logFile, chunk);
    } catch (e) {
      if (signal.aborted) return;
      await appendFile(
        logFile,
        `#1 [kubernetes] the pod's log cannot be read: ${errorMessage(e).split('\n')[0]}\n`,
      ).catch(() => undefined);
    }
  }

  /** The runner was closed while the pod runs: the pod stays (a restarted service re-attaches to it). */
  private detached(): RunOutcome {
    const message = 'the service stopped following the build pod (it keeps running)';
    return { ok: false, code: 'INTERRUPTED', message, reason: 'interrupted' };
  }

  private async finish(
    names: ReturnType<typeof objectsOf>,
    verdict: PodVerdict | 'aborted' | 'detached',
    signal: AbortSignal,
  ): Promise<RunOutcome> {
    const c = this.o.client;
    if (verdict === 'detached') return this.detached();
    if (verdict === 'aborted') {
      const why = signal.reason === 'timed-out' ? 'TimedOut' : 'Cancelled';
      // cancel: the pod goes now (its RUN processes die with it), Secrets with it
      await c
        .delete({ ...CORE, resource: 'pods', namespace: this.ns, name: names.pod }, { gracePeriodSeconds: 0 })
        .catch(() => undefined);
      await this.deleteSecrets(names).catch(() => undefined);
      await patchRunStatus(
        c,
        this.ns,
        names.run,
        phaseStatus(why, why, `build ${why === 'TimedOut' ? 'timed out' : 'cancelled'}; pod deleted`),
      ).catch(() => undefined);
      return { ok: false, code: 'INTERRUPTED', message: 'build interrupted', reason: 'interrupted' };
    }
    await patchRunStatus(c, this.ns, names.run, statusFromVerdict(verdict) ?? {}).catch((e: unknown) =>
      this.say(`kiln serve: ${errorMessage(e)}`),
    );
    this.later(names);
    if (verdict.state === 'succeeded') {
      const r = verdict.result;
      return { ok: true, digest: r.digest, configDigest: r.configDigest, pushed: r.pushed, bases: r.bases ?? [] };
    }
    if (verdict.state === 'failed')
      return {
        ok: false,
        code: verdict.code,
        message: verdict.message,
        reason:
          verdict.reason === 'OOMKilled' ||
          verdict.reason === 'Evicted' ||
          verdict.reason === 'DeadlineExceeded' ||
          verdict.reason === 'ImagePullBackOff'
            ? `${verdict.reason}: ${verdict.message}`
            : verdict.reason,
      };
    return { ok: false, code: 'INTERNAL', message: 'no verdict', reason: 'no verdict' };
  }

  /** Delete a finished build's pod and Secrets after the grace period (the ImageBuildRun stays as the record). */
  private later(names: ReturnType<typeof objectsOf>): void {
    const t = setTimeout(
      () => {
        this.timers.delete(t);
        void this.cleanup(names).catch((e: unknown) =>
          this.say(`kiln serve: cleaning up ${names.pod}: ${errorMessage(e)}`),
        );
      },
      (this.o.podGraceSeconds ?? 300) * 1000,
    );
    t.unref();
    this.timers.add(t);
  }

  private async deleteSecrets(names: ReturnType<typeof objectsOf>): Promise<void> {
    for (const s of [names.registrySecret, names.buildSecret, names.gitSecret])
      await this.o.client.delete({ ...CORE, resource: 'secrets', namespace: this.ns, name: s });
  }

  private async cleanup(names: ReturnType<typeof objectsOf>): Promise<void> {
    await this.o.client.delete(
      { ...CORE, resource: 'pods', namespace: this.ns, name: names.pod },
      { gracePeriodSeconds: 0 },
    );
    await this.deleteSecrets(names);
  }

  /** Builds of a previous service process whose pods still exist (labels → build ids), for re-attaching. */
  async runningPods(): Promise<string[]> {
    const list = await this.o.client.list<KubeObject>(
      { ...CORE, resource: 'pods', namespace: this.ns },
      { labelSelector: 'app.kubernetes.io/managed-by=kiln,kiln.dev/build-id' },
    );
    return list.items
      .filter((p) => !p.metadata.deletionTimestamp && ['pending', 'running'].includes(podVerdict(p).state))
      .map((p) => p.metadata.labels?.['kiln.dev/build-id'] ?? '');
  }

  /**
   * At service start (BuildService calls it before failing the builds a previous process left running): delete
   * the build pods and Secrets that process left. The service's rule for interrupted builds is "failed, then rerun
   * once" — a rerun has a new build id, so an old pod left running would be an orphan pushing the same tags. Never
   * throws (an unreachable API server is logged; the builds then fail on their own).
   */
  async cleanupAfter(): Promise<void> {
    const sel = { labelSelector: 'app.kubernetes.io/managed-by=kiln,kiln.dev/build-id' };
    try {
      const pods = await this.o.client.list<KubeObject>({ ...CORE, resource: 'pods', namespace: this.ns }, sel);
      for (const p of pods.items) {
        await this.o.client.delete(
          { ...CORE, resource: 'pods', namespace: this.ns, name: p.metadata.name },
          { gracePeriodSeconds: 0 },
        );
        const base = p.metadata.name;
        const n = secretsOf({ pod: base });
        for (const s of [n.registrySecret, n.buildSecret, n.gitSecret])
          await this.o.client.delete({ ...CORE, resource: 'secrets', namespace: this.ns, name: s });
      }
      if (pods.items.length)
        this.say(`kiln serve: removed ${pods.items.length} build pod(s) a previous service process left in ${this.ns}`);
    } catch (e) {
      this.say(`kiln serve: cannot clean up build pods in ${this.ns}: ${errorMessage(e).split('\n')[0]}`);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.life.abort();
    // finished pods still waiting for their grace period are left for the next process's clean-up
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await this.o.client.close();
  }
}
