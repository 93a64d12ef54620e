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
 * build id is followed, not created again. The service stopping (or `close()`) detaches: pods keep running and
 * their builds stay active in the store, which keeps each build's pod and where its log starts in the build log
 * (onRunnerState). At the next start `recover()` adopts the pods of those builds and `resume()` follows each on —
 * log copied on from where the build log ends, no byte twice — to its outcome; pods of no active build are
 * deleted, and a build whose pod vanished fails saying so.
 *
 * Any refusal — namespace missing, a permission missing, the API server unreachable — fails that build with one
 * line naming the object and the permission (client.ts); the service keeps running.
 */
import { appendFile, open, stat } from 'node:fs/promises';
import { KilnError, errorMessage } from '../errors.js';
import type { BuildRunner, LeftBuild, Recovery, RunHooks, RunOutcome } from '../service/runner/local.js';
import { RUNNER_DETACHED, type WorkerJob } from '../service/runner/protocol.js';
import { CORE, type KubeClient, type KubeObject } from './client.js';
import {
  API_VERSION,
  RUNS,
  buildPod,
  cacheRefOf,
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

/** What the service's store keeps of a running build (BuildRunner onRunnerState): its pod, where its log starts. */
interface PodState {
  pod: string;
  /** Byte offset in the build log where the pod's log begins (set once the copy starts). */
  logBase?: number;
}

function parseState(s: string | null): PodState | undefined {
  if (!s) return undefined;
  try {
    const v = JSON.parse(s) as Partial<PodState>;
    if (typeof v.pod !== 'string' || !v.pod) return undefined;
    return typeof v.logBase === 'number' && v.logBase >= 0 ? { pod: v.pod, logBase: v.logBase } : { pod: v.pod };
  } catch {
    return undefined;
  }
}

/** Whether the build container has started (running or terminated): then it has a log to read. */
function containerStarted(pod: KubeObject): boolean {
  const st = pod.status as { containerStatuses?: { name: string; state?: Record<string, unknown> }[] } | undefined;
  const c = st?.containerStatuses?.find((x) => x.name === 'build');
  return Boolean(c?.state?.running ?? c?.state?.terminated);
}

/** The last byte of a file of `size` bytes. */
async function lastByte(file: string, size: number): Promise<number> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, size - 1);
    return b[0] ?? 10;
  } finally {
    await fh.close();
  }
}

/** The pod ended (the log copy then reads the rest and stops); `wait` sleeps until then, a timeout or abort. */
class LogEnd {
  done = false;
  private readonly waiters = new Set<() => void>();

  constructor(private readonly signal: AbortSignal) {}

  finish(): void {
    this.done = true;
    for (const w of this.waiters) w();
  }

  wait(ms: number): Promise<void> {
    if (this.done && ms > 500) ms = 0;
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(t);
        this.waiters.delete(wake);
        this.signal.removeEventListener('abort', wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.waiters.add(wake);
      this.signal.addEventListener('abort', wake, { once: true });
    });
  }
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
      // the pod's KILN_HOME is an emptyDir: without a shared cache every build in a fresh pod would be cold
      const cacheRef = this.o.pod.registryCache === false ? undefined : cacheRefOf(job.tags);
      if (cacheRef) podJob.cacheRef = cacheRef;
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
      const st: PodState = { pod: names.pod };
      hooks.onRunnerState?.(JSON.stringify(st));
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
      const verdict = await this.follow(st, job.buildId, job.logFile, hooks, signal);
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

  /**
   * Watch the pod until it reaches a verdict (or the signal aborts, or the runner closes). Copies its log into
   * the build log from when the container has started (copyLog), and lets that copy finish once the pod ended.
   */
  private async follow(
    st: PodState,
    buildId: string,
    logFile: string,
    hooks: RunHooks,
    signal: AbortSignal,
  ): Promise<PodVerdict | 'aborted' | 'detached'> {
    const c = this.o.client;
    const podName = st.pod;
    const ref = { ...CORE, resource: 'pods', namespace: this.ns };
    const watchAc = new AbortController();
    const onAbort = (): void => watchAc.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    this.life.signal.addEventListener('abort', onAbort, { once: true });
    const end = new LogEnd(watchAc.signal);
    let logging: Promise<void> | undefined;
    let lastPhase: string | undefined;
    let ended = false;
    const seen = async (pod: KubeObject, v: PodVerdict): Promise<void> => {
      if (containerStarted(pod)) logging ??= this.copyLog(st, logFile, hooks, watchAc.signal, end);
      if (v.state === 'running' && lastPhase !== 'Running') {
        lastPhase = 'Running';
        hooks.onPhase?.('building');
        await patchRunStatus(c, this.ns, objectsOf(buildId).run, statusFromVerdict(v) ?? {}).catch(() => undefined);
      }
    };
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
        await seen(pod, verdict);
        if (verdict.state === 'succeeded' || verdict.state === 'failed') {
          ended = true;
          return verdict;
        }
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
              void seen(ev.object, verdict);
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
        if (final) {
          ended = true;
          return final;
        }
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
      // the pod ended: the log copy reads what is left and stops (bounded); otherwise it stops now
      if (ended && logging) {
        end.finish();
        await Promise.race([logging, new Promise((r) => setTimeout(r, 15_000).unref())]);
      }
      watchAc.abort();
      await logging;
    }
  }

  /**
   * Copy the build container's log into the build log, each byte once — also across a restart of the service.
   * The pod's log begins at byte `st.logBase` of the build log (recorded through onRunnerState before the first
   * byte), so the bytes already copied are the build log's size minus `logBase`; every read of the pod's log
   * (the API server proxies the kubelet's file from its start) skips that many bytes. A read that fails or ends
   * while the pod runs is retried with backoff (the endpoint can fail: kubelet restarts, an unscheduled pod);
   * once the pod ended (`end`), a last read without follow takes the rest. kiln's own notes in the build log
   * move `logBase` on by their length. Limit: a kubelet that rotated the container's log (10 MiB by default)
   * serves only the newest file, so a restart after a rotation misses the rotated part.
   */
  private async copyLog(
    st: PodState,
    logFile: string,
    hooks: RunHooks,
    signal: AbortSignal,
    end: LogEnd,
  ): Promise<void> {
    const size = async (): Promise<number> => (await stat(logFile).catch(() => undefined))?.size ?? 0;
    const save = (): void => hooks.onRunnerState?.(JSON.stringify(st));
    if (st.logBase === undefined) {
      st.logBase = await size();
      save();
    }
    let written = Math.max(0, (await size()) - st.logBase);
    const note = async (text: string): Promise<void> => {
      const n = await size();
      const last = n > 0 ? await lastByte(logFile, n) : 10;
      const s = `${last === 10 ? '' : '\n'}#1 [kubernetes] ${text}\n`;
      await appendFile(logFile, s).catch(() => undefined);
      st.logBase = (st.logBase ?? 0) + Buffer.byteLength(s);
      save();
    };
    let failures = 0;
    let quiet = 0;
    let noted = false;
    while (!signal.aborted) {
      const final = end.done;
      let got = 0;
      try {
        const stream = await this.o.client.logs(this.ns, st.pod, { follow: !final, container: 'build', signal });
        let skip = written;
        for await (const chunk of stream) {
          let b = chunk;
          if (skip > 0) {
            if (b.length <= skip) {
              skip -= b.length;
              continue;
            }
            b = b.subarray(skip);
            skip = 0;
          }
          await appendFile(logFile, b);
          written += b.length;
          got += b.length;
        }
        failures = 0;
        if (final) return;
      } catch (e) {
        if (signal.aborted) return;
        failures++;
        const why = errorMessage(e).split('\n')[0] ?? 'error';
        if (final && failures >= 3) {
          await note(`the rest of the pod's log could not be read: ${why}`);
          return;
        }
        if (!noted && !final) {
          noted = true;
          await note(`the pod's log cannot be read (${why}); retrying`);
        }
      }
      quiet = got > 0 ? 0 : quiet + 1;
      await end.wait(final ? 500 : Math.min(250 * 2 ** Math.min(quiet + failures, 5), 5000));
    }
  }

  /** The runner was closed (or the service stops) while the pod runs: the pod stays for the next process. */
  private detached(): RunOutcome {
    const message = 'the service stopped following the build pod (it keeps running; a restarted service re-attaches)';
    return { ok: false, code: RUNNER_DETACHED, message, reason: 'detached' };
  }

  private async finish(
    names: ReturnType<typeof objectsOf>,
    verdict: PodVerdict | 'aborted' | 'detached',
    signal: AbortSignal,
  ): Promise<RunOutcome> {
    const c = this.o.client;
    if (verdict === 'detached' || (verdict === 'aborted' && signal.reason === 'stopping')) return this.detached();
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

  private async deleteSecrets(names: Omit<ReturnType<typeof objectsOf>, 'run'>): Promise<void> {
    for (const s of [names.registrySecret, names.buildSecret, names.gitSecret])
      await this.o.client.delete({ ...CORE, resource: 'secrets', namespace: this.ns, name: s });
  }

  private async cleanup(names: Omit<ReturnType<typeof objectsOf>, 'run'>): Promise<void> {
    await this.o.client.delete(
      { ...CORE, resource: 'pods', namespace: this.ns, name: names.pod },
      { gracePeriodSeconds: 0 },
    );
    await this.deleteSecrets(names);
  }

  /**
   * At service start: re-attach to the build pods a previous process left. Build pods are listed by kiln's labels;
   * an active build whose pod still exists is adopted (`resume` follows it on); an active build whose pod is gone
   * fails with that reason (its ImageBuildRun too); a pod of no active build (ended, unknown) is deleted with its
   * Secrets. An unreachable API server adopts nothing (the builds fail saying why) and deletes nothing.
   */
  async recover(left: LeftBuild[]): Promise<Map<string, Recovery>> {
    const out = new Map<string, Recovery>();
    let pods: KubeObject[];
    try {
      pods = (
        await this.o.client.list<KubeObject>(
          { ...CORE, resource: 'pods', namespace: this.ns },
          { labelSelector: 'app.kubernetes.io/managed-by=kiln,kiln.dev/build-id' },
        )
      ).items;
    } catch (e) {
      const why = `cannot re-attach to its build pod: ${errorMessage(e).split('\n')[0] ?? ''}`;
      this.say(`kiln serve: ${why}`);
      for (const b of left) out.set(b.id, { adopt: false, reason: why });
      return out;
    }
    const byName = new Map(pods.map((p) => [p.metadata.name, p]));
    const claimed = new Set<string>();
    for (const b of left) {
      const st = parseState(b.state);
      const name = st?.pod ?? objectsOf(b.id).pod;
      const pod = byName.get(name);
      if (pod && !pod.metadata.deletionTimestamp) {
        claimed.add(name);
        out.set(b.id, { adopt: true });
      } else if (st) {
        const reason = `the build pod ${this.ns}/${name} is gone (deleted while the service was not running)`;
        out.set(b.id, { adopt: false, reason });
        await patchRunStatus(
          this.o.client,
          this.ns,
          objectsOf(b.id).run,
          phaseStatus('Failed', 'PodDeleted', reason),
        ).catch(() => undefined);
      } else {
        out.set(b.id, { adopt: false });
      }
    }
    let removed = 0;
    for (const p of pods) {
      if (claimed.has(p.metadata.name)) continue;
      await this.cleanup(secretsOf({ pod: p.metadata.name })).catch((e: unknown) =>
        this.say(`kiln serve: cannot delete the build pod ${p.metadata.name}: ${errorMessage(e)}`),
      );
      removed++;
    }
    if (removed) this.say(`kiln serve: removed ${removed} build pod(s) of no running build in ${this.ns}`);
    return out;
  }

  /** Follow a build adopted by `recover` to its end: its pod's log from where the build log ends, its outcome. */
  async resume(left: LeftBuild, hooks: RunHooks, signal: AbortSignal): Promise<RunOutcome> {
    if (this.closed) throw new KilnError('SERVICE_CLOSING', 'the service is shutting down');
    const st = parseState(left.state) ?? { pod: objectsOf(left.id).pod };
    const names = secretsOf({ run: objectsOf(left.id).run, pod: st.pod });
    try {
      this.say(`kiln serve: build ${left.id}: re-attached to its build pod ${this.ns}/${st.pod}`);
      hooks.onStart?.(0);
      const verdict = await this.follow(st, left.id, left.logFile, hooks, signal);
      return await this.finish(names, verdict, signal);
    } catch (e) {
      if (this.life.signal.aborted) return this.detached();
      const code = e instanceof KilnError ? e.code : 'INTERNAL';
      const message = errorMessage(e).split('\n')[0] ?? 'failed';
      return { ok: false, code, message, reason: message };
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
