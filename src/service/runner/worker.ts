/**
 * The build worker process (`kiln serve-worker`, started by the service's LocalBuildRunner). Why a separate,
 * pre-started process per build: a build must run in its own rootless user namespace exactly like `kiln build`
 * (a user namespace cannot be entered by a multi-threaded process such as Node, so each needs a new process), yet
 * Node's start-up and the engine's module loading (~0.2 s) should not be paid while the user waits. So the
 * service keeps workers started, namespaced and loaded ahead of time; each takes one job, builds, reports and
 * exits. A crash fails only its build.
 *
 * Lifecycle: enter the namespace (rootless) → load the engine → `ready` → one `job` → `phase`/`stage` events →
 * `result` or `error` → exit. The socket's end (service gone) or a `cancel` aborts the build through the same
 * AbortSignal path as `kiln build`'s SIGTERM: the RUN process is killed, mounts and temp dirs removed, no
 * manifest pushed.
 */
import { Socket } from 'node:net';
import { rm, writeFile } from 'node:fs/promises';
import { kilnTempDir } from '../../sandbox/paths.js';
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { KilnError, errorMessage, isKilnError } from '../../errors.js';
import { debugMark } from '../../util/debug.js';
import type { BuildStage } from '../model.js';
import {
  lineDecoder,
  reasonOf,
  type FromWorker,
  type ToWorker,
  type WorkerJob,
  type WorkerPrepare,
} from './protocol.js';
import type { BuildOptions } from '../../engine/options.js';
import type { BaseResolver, ResolvedBase } from '../../engine/ports.js';
import type { Platform } from '../../oci/types.js';
import type { CredentialSource } from '../../registry/transport.js';
import type { BuildProgress } from '../../engine/progress.js';

/** The plain-progress log, appended in chunks (a RUN printing MB/s must not cost a syscall per line). */
class LogWriter {
  private readonly fd: number;
  private buf: string[] = [];
  private size = 0;
  private timer: NodeJS.Timeout | undefined;

  /** Secret values masked as `***` wherever they would appear (a RUN that prints one), like CI systems do. */
  constructor(
    file: string,
    private readonly masked: string[],
  ) {
    this.fd = openSync(file, 'a', 0o640);
  }

  write(text: string): void {
    let s = text;
    for (const m of this.masked) if (s.includes(m)) s = s.split(m).join('***');
    this.buf.push(s);
    this.size += s.length;
    if (this.size >= 64 * 1024) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), 50);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.buf.length === 0) return;
    const data = this.buf.join('');
    this.buf = [];
    this.size = 0;
    writeSync(this.fd, data);
  }

  close(): void {
    this.flush();
    closeSync(this.fd);
  }
}

async function progressClass(): Promise<typeof BuildProgress> {
  return (await import('../../engine/progress.js')).BuildProgress;
}

/** Run the worker; resolves to the process exit code. */
export async function workerMain(): Promise<number> {
  const { enterBuildNamespace } = await import('../../sandbox/userns.js');
  const code = await enterBuildNamespace(undefined, { passFds: 1 });
  if (code !== null) return code;

  const chan = new Socket({ fd: 3, readable: true, writable: true });
  const send = (m: FromWorker): void => {
    if (!chan.destroyed) chan.write(JSON.stringify(m) + '\n');
  };
  const ac = new AbortController();
  let gotJob!: (j: WorkerJob | undefined) => void;
  const jobArrived = new Promise<WorkerJob | undefined>((r) => (gotJob = r));
  let gotPrepare!: (p: WorkerPrepare) => void;
  const prepareArrived = new Promise<WorkerPrepare>((r) => (gotPrepare = r));
  chan.on(
    'data',
    lineDecoder<ToWorker>((m) => {
      if (m.type === 'job') gotJob(m.job);
      else if (m.type === 'prepare') gotPrepare(m.prepare);
      else if (m.type === 'cancel') ac.abort(m.reason);
    }),
  );
  const gone = (): void => {
    gotJob(undefined);
    ac.abort('service gone');
  };
  chan.on('end', gone);
  chan.on('error', gone);
  process.on('SIGTERM', () => ac.abort('SIGTERM'));
  process.on('SIGINT', () => ac.abort('SIGINT'));

  // Warm: load what a build needs before announcing readiness — also what a build would otherwise load on first
  // use (the engine's services, the sandbox, the registry's HTTP client) and the layer thread, so none of it is
  // paid while the user waits (an S2I build loaded ~40 modules after the job arrived).
  const [
    { runStrategyBuild },
    BuildProgressClass,
    { parsePlatformOption },
    { warmUpWorker },
    ,
    ,
    ,
    ,
    { DEFAULT_NODE_BASE },
    { prepareNodeBuild, cancelPreparedUploads, warmAppLayerWriter },
  ] = await Promise.all([
    import('../../backends/service.js'), // the engine, or the image's strategy/backend
    progressClass(),
    import('../../engine/options.js'),
    import('../../layer/worker.js'),
    import('../../engine/services.js'),
    import('../../sandbox/overlay.js'),
    import('../../sandbox/run.js'),
    import('../../registry/http.js'),
    import('../../strategies/node/frontend.js'), // the Node.js builder's fast path starts at once
    import('../../strategies/node/fast.js'),
  ]);
  warmUpWorker();
  const { kilnHome } = await import('../../util/paths.js');
  // the Node.js fast path's app layer writer, run once: its code is not cold in the build (KILN_SERVE_WARM_LAYER=0:
  // not, for measuring)
  if (process.env.KILN_SERVE_WARM_LAYER !== '0') await warmAppLayerWriter(kilnHome());
  const platform = parsePlatformOption(undefined);
  const registryCredentials = credentialsCache();
  const bases = new BaseMemo();
  send({ type: 'ready', pid: process.pid });
  // the service may say what it can before the source is fetched: the registry work that does not need it starts
  let prepared: WorkerPrepare | undefined;
  const preparation = Promise.race([prepareArrived, jobArrived.then(() => undefined)]).then(async (p) => {
    const base = p ? preparedBase(p, DEFAULT_NODE_BASE) : undefined;
    if (!p || base === undefined) return;
    prepared = p;
    debugMark(`worker: prepare ${p.buildId}`);
    // the same registry work for both: ping, the base (the S2I builder image) resolved, two upload sessions
    // (the last layer's and the config's)
    await prepareNodeBuild({
      home: kilnHome(),
      base,
      push: [`${p.repository}:prepare`],
      opts: { insecureRegistries: p.insecureRegistries, registryMirrors: [], progress: 'plain', pull: false, platform },
      embed: { credentials: registryCredentials(p.registryAuth), bases: (inner) => bases.resolver(inner) },
    });
  });
  const job = await jobArrived;
  if (!job) {
    // released before its job (the fetch failed, the build was cancelled): the sessions it opened go too
    await preparation.catch(() => undefined);
    await cancelPreparedUploads().catch(() => undefined);
    return 0;
  }
  debugMark(`worker: job ${job.buildId}`);
  // what was prepared counts only for the build it was prepared for, with the same registry settings
  if (prepared && !preparedFor(prepared, job)) bases.clear();

  const masked = [...Object.values(job.secrets), job.registryAuth?.password ?? '']
    .filter((v) => v.length >= 4)
    .flatMap((v) => [v, ...v.split('\n').filter((l) => l.trim().length >= 4)]);
  const log = new LogWriter(job.logFile, masked);
  const started = new Map<number, { stage: BuildStage; t0: number; index: number }>();
  let nextIndex = 0;
  class ServiceProgress extends BuildProgressClass {
    override start(id: number, name: string): void {
      super.start(id, name);
      const stage: BuildStage = { name, kind: 'step', status: 'running', startedAt: new Date().toISOString() };
      if (name.startsWith('exporting to image')) {
        stage.kind = 'push';
        send({ type: 'phase', phase: 'pushing' });
      }
      const rec = { stage, t0: performance.now(), index: nextIndex++ };
      started.set(id, rec);
      send({ type: 'stage', stage, index: rec.index });
    }
    private end(id: number, status: BuildStage['status']): void {
      const rec = started.get(id);
      if (!rec) return;
      rec.stage = { ...rec.stage, status, durationMs: Math.round(performance.now() - rec.t0) };
      send({ type: 'stage', stage: rec.stage, index: rec.index });
    }
    override done(id: number): void {
      super.done(id);
      this.end(id, 'done');
    }
    override cached(id: number): void {
      super.cached(id);
      this.end(id, 'cached');
    }
    override error(id: number, message: string): void {
      super.error(id, message);
      this.end(id, 'error');
    }
  }
  const progress = new ServiceProgress('plain', (s) => log.write(s));

  let secretDir: string | undefined;
  // the build's clean-up that waits until its result is out (EmbeddedBuild.after), run before this process exits
  const deferred: (() => Promise<void>)[] = [];
  try {
    // owned by this process (.owner): removed by the next kiln if this worker is killed
    secretDir = await kilnTempDir(kilnHome(), 'svc-secrets-');
    const secrets: BuildOptions['secrets'] = [];
    for (const [id, value] of Object.entries(job.secrets)) {
      const file = join(secretDir, String(secrets.length));
      await writeFile(file, value, { mode: 0o400 });
      secrets.push({ id, src: file });
    }
    const opts: BuildOptions = {
      context: job.contextDir,
      file: job.dockerfile,
      tags: job.tags,
      buildArgs: new Map(Object.entries(job.buildArgs)),
      labels: job.labels,
      platform,
      noCache: job.noCache === true,
      pull: false,
      push: true,
      outputs: [],
      network: 'host',
      secrets,
      progress: 'plain',
      insecureRegistries: job.insecureRegistries,
      registryMirrors: [],
      debug: false,
    };
    if (job.target) opts.target = job.target;
    const auth = job.registryAuth;
    if (ac.signal.aborted) throw new KilnError('INTERRUPTED', 'build cancelled before it started');
    send({ type: 'phase', phase: 'building' });
    const used = new Map<string, string>();
    const res = await runStrategyBuild(job, opts, (s) => log.write(s), {
      after: (cleanup) => void deferred.push(cleanup),
      bases: (inner) => ({
        resolve: async (ref, o) => {
          const r = await bases.resolver(inner).resolve(ref, o);
          used.set(r.name, r.digest);
          return r;
        },
      }),
      progress,
      signal: ac.signal,
      credentials: registryCredentials(auth),
    });
    log.write(`\nbuilt ${res.exported.digest} (${res.exported.pushed.join(', ')})\n`);
    // the log is complete before the result: the service ends the build (and its log followers) on it
    log.flush();
    debugMark(`worker: result ${job.buildId}`);
    send({
      type: 'result',
      digest: res.exported.digest,
      configDigest: res.exported.configDigest,
      pushed: res.exported.pushed,
      bases: [...used].map(([name, digest]) => ({ name, digest })),
      ...(res.rebase ? { rebase: res.rebase } : {}),
    });
    return 0;
  } catch (e) {
    const code = isKilnError(e) ? e.code : 'INTERNAL';
    const message = errorMessage(e);
    log.write(`\nERROR: ${message}\n`);
    if (isKilnError(e) && e.hint) log.write(`hint: ${e.hint}\n`);
    send({ type: 'error', code, message, reason: reasonOf(code, message) });
    return 1;
  } finally {
    log.close();
    if (secretDir) await rm(secretDir, { recursive: true, force: true });
    // sessions opened for the build that it did not use (the service has the outcome already)
    await cancelPreparedUploads().catch(() => undefined);
    await Promise.all(deferred.map((f) => f().catch(() => undefined)));
    await new Promise<void>((r) => chan.end(r));
  }
}

/**
 * The base a build the worker prepares for resolves first (see WorkerPrepare): the Node.js builder's base, an S2I
 * build's builder image, both on kiln; undefined for any other build (nothing prepared).
 */
export function preparedBase(
  p: Pick<WorkerPrepare, 'strategy' | 'backend' | 'node' | 's2i'>,
  nodeDefault: string,
): string | undefined {
  if ((p.backend ?? 'kiln') !== 'kiln') return undefined;
  if (p.strategy === 'node') return p.node?.base ?? nodeDefault;
  if (p.strategy === 's2i') return p.s2i?.builderImage;
  return undefined;
}

/** Whether `job` is the build `p` prepared, with the registry settings the preparation used. */
export function preparedFor(p: WorkerPrepare, job: WorkerJob): boolean {
  const a = p.registryAuth;
  const b = job.registryAuth;
  const sameAuth =
    a === b || (!!a && !!b && a.registry === b.registry && a.username === b.username && a.password === b.password);
  return (
    p.buildId === job.buildId &&
    sameAuth &&
    p.strategy === job.strategy &&
    preparedBase(job, '') !== undefined &&
    JSON.stringify(p.insecureRegistries) === JSON.stringify(job.insecureRegistries) &&
    (p.node?.base ?? '') === (job.node?.base ?? '') &&
    (p.s2i?.builderImage ?? '') === (job.s2i?.builderImage ?? '') &&
    job.tags.every((t) => t.startsWith(p.repository + ':'))
  );
}

/**
 * The credentials function of a registry login, the same function for the same login: registry transports are
 * pooled by it (src/registry/transport.ts), so the job reuses the connections and tokens its preparation opened.
 */
function credentialsCache(): (auth: WorkerJob['registryAuth']) => CredentialSource {
  let last: { auth: WorkerJob['registryAuth']; fn: CredentialSource } | undefined;
  return (auth) => {
    const l = last;
    if (
      l &&
      (l.auth === auth ||
        (l.auth &&
          auth &&
          l.auth.registry === auth.registry &&
          l.auth.username === auth.username &&
          l.auth.password === auth.password))
    )
      return l.fn;
    const fn: CredentialSource = async (host) =>
      auth && auth.registry === host ? { username: auth.username, password: auth.password } : undefined;
    last = { auth, fn };
    return fn;
  };
}

/**
 * The build's base resolver: a base in a registry is looked up there every time (a moved tag must be seen);
 * `localhost/…` images (kiln bootstrap) exist only in the local store; the store is the fallback when the registry
 * cannot answer (e.g. an offline mirror of docker.io). One answer per (reference, platform) for the worker's one
 * build: what the preparation resolved while the source was fetched is the job's base (a failed lookup is asked
 * again).
 */
class BaseMemo {
  private readonly memo = new Map<string, Promise<ResolvedBase>>();

  clear(): void {
    this.memo.clear();
  }

  resolver(inner: BaseResolver): BaseResolver {
    return {
      resolve: (ref, o) => {
        const key = JSON.stringify([ref, o.pull, o.platform satisfies Platform]);
        let p = this.memo.get(key);
        if (!p) {
          p = resolveBase(inner, ref, o);
          this.memo.set(key, p);
          p.catch(() => {
            if (this.memo.get(key) === p) this.memo.delete(key);
          });
        }
        return p;
      },
    };
  }
}

async function resolveBase(
  inner: BaseResolver,
  ref: string,
  o: Parameters<BaseResolver['resolve']>[1],
): Promise<ResolvedBase> {
  if (o.pull || ref.startsWith('localhost/')) return inner.resolve(ref, o);
  try {
    return await inner.resolve(ref, { ...o, pull: true });
  } catch (e) {
    return inner.resolve(ref, o).catch(() => Promise.reject(e));
  }
}
