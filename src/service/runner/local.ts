/**
 * The local build runner: builds run in warm worker processes on this machine (src/service/runner/worker.ts).
 * `BuildRunner` is the port the service schedules onto; the Kubernetes runner (build pods) implements the same
 * port later, so the queue, store and API never know where a build runs.
 *
 * Why a pool of single-use workers: see worker.ts — each build gets a fresh process in a fresh user namespace,
 * but one that was started and loaded before the build was asked for. Workers are started under
 * `setpriv --pdeathsig SIGTERM` and hold a socket to the service: if the service dies (even `kill -9`), they
 * abort their build and clean up; no orphan keeps building or pushing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { KilnError } from '../../errors.js';
import { debugMark } from '../../util/debug.js';
import { findUp } from '../../util/find-up.js';
import type { BuildStage } from '../model.js';
import {
  lineDecoder,
  type BaseRecord,
  type RebaseRecord,
  type FromWorker,
  type ToWorker,
  type WorkerJob,
  type WorkerPrepare,
} from './protocol.js';

export interface RunHooks {
  /** The worker process took the job (its pid, for the store: a restarted service kills leftovers). */
  onStart?(pid: number): void;
  onPhase?(phase: 'building' | 'pushing'): void;
  onStage?(stage: BuildStage, index: number): void;
  /**
   * What the runner needs to find the build again after a restart of the service (opaque; the store keeps it
   * until the build ends). The Kubernetes executor records its pod and where the pod's log starts in the build log.
   */
  onRunnerState?(state: string): void;
}

/** An active build a previous service process left, as the runner sees it at start-up. */
export interface LeftBuild {
  id: string;
  logFile: string;
  /** What the runner recorded through `onRunnerState` (null: nothing). */
  state: string | null;
}

/** What a runner can do with a build a previous process left: follow it on (adopt), or why not. */
export type Recovery = { adopt: true } | { adopt: false; reason?: string };

export type RunOutcome =
  | { ok: true; digest: string; configDigest: string; pushed: string[]; bases: BaseRecord[]; rebase?: RebaseRecord }
  | { ok: false; code: string; message: string; reason: string };

/** Where builds run. */
export interface BuildRunner {
  /**
   * Run one build to its end. Aborting `signal` (reason `cancelled` or `timed-out`) stops it cleanly; the promise
   * then resolves with the outcome the worker reported (an INTERRUPTED error).
   */
  run(job: WorkerJob, hooks: RunHooks, signal: AbortSignal): Promise<RunOutcome>;
  /** Stop idle workers (running builds are the caller's to cancel first). */
  close(): Promise<void>;
  /** Remove what killed builds left behind on this machine (optional: remote runners have nothing local). */
  cleanupAfter?(): Promise<void>;
  /**
   * At start-up, before the service fails the builds a previous process left active: which of them this runner
   * can follow on (a build pod still running). Whatever else that process left (pods of ended or unknown builds)
   * goes. Builds not adopted are failed (with `reason` when given) and rerun by the service's rule.
   */
  recover?(left: LeftBuild[]): Promise<Map<string, Recovery>>;
  /** Follow an adopted build to its end, as `run` would have (same hooks, same outcome, same abort reasons). */
  resume?(left: LeftBuild, hooks: RunHooks, signal: AbortSignal): Promise<RunOutcome>;
  /**
   * The runner fetches the source itself (a build pod) rather than building the service's checkout: jobs then
   * carry the project's git credentials (`WorkerJob.gitAuth`).
   */
  readonly fetchesSource?: boolean;
  /**
   * Before the service fetches a build's source: what it knows already (optional). A runner may take a worker for
   * the build now and let it do the registry work that needs no source; `run` with the same build id then uses that
   * worker. `release` is called when the build ended and its outcome is recorded: it gives up a worker that never
   * got its `run` (a failed fetch, a cancel), and lets a runner refill its pool off the build's critical path.
   */
  prepare?(p: WorkerPrepare): void;
  release?(buildId: string): void;
}

export interface LocalRunnerOptions {
  /** Idle workers kept ready (default 1). */
  warm?: number;
  /** Extra environment for workers (KILN_HOME, …). */
  env?: NodeJS.ProcessEnv;
  /** After a cancel, how long a worker may take to clean up before it is killed (ms, default 30 s). */
  killAfterMs?: number;
  /**
   * Nice value the workers (and their RUN steps) start with, 0–19 (default 5). Why: builds saturate the CPU; the
   * service's own API, webhooks and log streams must stay responsive beside them, and the kernel only favours the
   * service when the workers are the lower-priority work. Idle machines are unaffected (nice only orders contention).
   */
  nice?: number;
}

/** The default {@link LocalRunnerOptions.nice}. */
export const WORKER_NICE_DEFAULT = 5;

interface Worker {
  proc: ChildProcess;
  chan: Socket;
  ready: Promise<number>;
  messages: ((m: FromWorker) => void)[];
  exited: Promise<number>;
}

/** bin/kiln.js of this checkout or package (the same launcher users run). */
function kilnBin(): string {
  const p = findUp(join('bin', 'kiln.js'));
  if (p !== undefined) return p;
  throw new KilnError('INTERNAL', 'cannot find bin/kiln.js for the build workers');
}

export class LocalBuildRunner implements BuildRunner {
  private readonly idle: Worker[] = [];
  private readonly all = new Set<Worker>();
  /** Workers taken for a build by `prepare`, until its `run` (or `release`). */
  private readonly reserved = new Map<string, Promise<{ w: Worker; pid: number }>>();
  private closed = false;
  private readonly warm: number;

  constructor(private readonly opts: LocalRunnerOptions = {}) {
    this.warm = opts.warm ?? 1;
    this.fill();
  }

  private fill(): void {
    while (!this.closed && this.idle.length < this.warm) this.idle.push(this.spawnWorker());
  }

  private spawnWorker(): Worker {
    const nice = this.opts.nice ?? WORKER_NICE_DEFAULT;
    const cmd = ['setpriv', '--pdeathsig', 'SIGTERM', '--', process.execPath, kilnBin(), 'serve-worker'];
    // `nice` before exec: every thread of the worker (libuv pool, V8) starts at the lower priority.
    const argv = nice > 0 ? ['nice', '-n', String(nice), ...cmd] : cmd;
    const proc = spawn(argv[0] as string, argv.slice(1), {
      stdio: ['ignore', 'inherit', 'inherit', 'pipe'],
      env: { ...process.env, ...this.opts.env },
    });
    const chan = proc.stdio[3] as Socket;
    const w: Worker = {
      proc,
      chan,
      messages: [],
      ready: Promise.resolve(0),
      exited: new Promise<number>((resolve) => {
        proc.on('error', () => resolve(127));
        proc.on('close', (code, sig) => resolve(code ?? (sig ? 128 + 15 : 1)));
      }),
    };
    w.ready = new Promise<number>((resolve, reject) => {
      chan.on(
        'data',
        lineDecoder<FromWorker>((m) => {
          if (m.type === 'ready') resolve(m.pid);
          for (const l of w.messages) l(m);
        }),
      );
      chan.on('error', () => undefined);
      void w.exited.then((code) =>
        reject(new KilnError('WORKER_FAILED', `build worker exited with ${code} before it was ready`)),
      );
    });
    w.ready.catch(() => undefined);
    this.all.add(w);
    void w.exited.then(() => {
      this.all.delete(w);
      const i = this.idle.indexOf(w);
      if (i >= 0) this.idle.splice(i, 1);
    });
    return w;
  }

  /**
   * A ready worker: an idle one, else a new one (a slow start is still correct, only slower). The pool is refilled
   * when the service recorded the build's outcome (`release`) or its worker ended, not now: a worker's start-up (Node and the engine's
   * modules, ~0.5 s of CPU) would compete with the build that just took a worker — and, since a Node.js build's
   * worker is taken before the git fetch, with the fetch too. A request that finds no idle worker meanwhile starts
   * one for itself. `KILN_SERVE_REFILL_EARLY=1`: a replacement starts as soon as the last idle worker is taken (the
   * previous rule, for measuring).
   */
  private async take(): Promise<{ w: Worker; pid: number }> {
    for (;;) {
      const w = this.idle.shift() ?? this.spawnWorker();
      if (process.env.KILN_SERVE_REFILL_EARLY === '1' && this.idle.length === 0 && this.warm > 0 && !this.closed)
        this.idle.push(this.spawnWorker());
      try {
        return { w, pid: await w.ready };
      } catch (e) {
        if (this.closed) throw e;
        // a worker that died while idle (e.g. killed by an admin): take the next one, once
        const again = this.spawnWorker();
        return { w: again, pid: await again.ready };
      }
    }
  }

  prepare(p: WorkerPrepare): void {
    if (this.closed || this.reserved.has(p.buildId)) return;
    const taken = this.take();
    this.reserved.set(p.buildId, taken);
    taken.then(
      ({ w }) => {
        debugMark(`runner: build ${p.buildId}: worker ${w.proc.pid} prepares`);
        if (!w.chan.destroyed) w.chan.write(JSON.stringify({ type: 'prepare', prepare: p } satisfies ToWorker) + '\n');
      },
      () => {
        // run() takes another worker
        if (this.reserved.get(p.buildId) === taken) this.reserved.delete(p.buildId);
      },
    );
  }

  release(buildId: string): void {
    const taken = this.reserved.get(buildId);
    if (!taken) {
      // the build ended and the service recorded it: its replacement starts now (see take)
      this.fill();
      return;
    }
    this.reserved.delete(buildId);
    // the worker never got its job: ending its channel ends it (nothing it did is visible: reads and pings only)
    void taken.then(
      ({ w }) => {
        w.chan.end();
        void w.exited.then(() => this.fill());
      },
      () => this.fill(),
    );
  }

  async run(job: WorkerJob, hooks: RunHooks, signal: AbortSignal): Promise<RunOutcome> {
    if (this.closed) throw new KilnError('SERVICE_CLOSING', 'the service is shutting down');
    const reserved = this.reserved.get(job.buildId);
    this.reserved.delete(job.buildId);
    let mine = await reserved?.catch(() => undefined);
    // one that died meanwhile (its preparation never reaches the build): another one, as for an idle worker
    if (mine && (mine.w.proc.exitCode !== null || mine.w.proc.signalCode !== null || mine.w.chan.destroyed)) {
      mine = undefined;
    }
    const { w, pid } = mine ?? (await this.take());
    debugMark(`runner: build ${job.buildId}: worker ${pid} taken`);
    hooks.onStart?.(pid);
    let outcome: RunOutcome | undefined;
    let reported!: () => void;
    const succeeded = new Promise<void>((r) => (reported = r));
    w.messages.push((m) => {
      if (m.type === 'phase') hooks.onPhase?.(m.phase);
      else if (m.type === 'stage') hooks.onStage?.(m.stage, m.index);
      else if (m.type === 'result') {
        debugMark(`runner: build ${job.buildId}: result`);
        outcome = {
          ok: true,
          digest: m.digest,
          configDigest: m.configDigest,
          pushed: m.pushed,
          bases: m.bases,
          ...(m.rebase ? { rebase: m.rebase } : {}),
        };
        // no refill here: a worker's spawn (a fork of the service, then ~0.5 s of start-up CPU) would delay the
        // service recording this outcome; the service's `release` after it, or the worker's exit, refills
        reported();
      } else if (m.type === 'error') outcome = { ok: false, code: m.code, message: m.message, reason: m.reason };
    });
    const send = (m: ToWorker): void => {
      if (!w.chan.destroyed) w.chan.write(JSON.stringify(m) + '\n');
    };
    let killer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      const reason = signal.reason === 'timed-out' ? 'timed-out' : 'cancelled';
      send({ type: 'cancel', reason });
      killer = setTimeout(() => w.proc.kill('SIGKILL'), this.opts.killAfterMs ?? 30_000);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    send({ type: 'job', job });
    const exit = w.exited.then(async (code) => {
      debugMark(`runner: build ${job.buildId}: worker exited (${code})`);
      this.fill();
      signal.removeEventListener('abort', onAbort);
      if (killer) clearTimeout(killer);
      // a worker that was killed could not clean up: its snapshots, mounts and temp dirs carry .owner files
      if (code !== 0) await this.cleanupAfter();
      return code;
    });
    // A success counts when the worker reports it (image pushed, log complete): its exit (closing the layer thread,
    // removing its secrets dir, ~30–100 ms) and the pool's refill then happen after the build is recorded.
    if ((await Promise.race([exit, succeeded])) === undefined && outcome) return outcome;
    const code = await exit;
    if (outcome) return outcome;
    if (signal.aborted) return { ok: false, code: 'INTERRUPTED', message: 'build interrupted', reason: 'interrupted' };
    const message = `build worker died (exit ${code})`;
    return { ok: false, code: 'WORKER_FAILED', message, reason: message };
  }

  /** Remove what dead workers left under `$KILN_HOME/tmp` (mounts detached first). Never throws. */
  async cleanupAfter(): Promise<void> {
    try {
      const { cleanupStaleTempDirs } = await import('../../sandbox/stale.js');
      const { kilnHome } = await import('../../util/paths.js');
      await cleanupStaleTempDirs(kilnHome({ ...process.env, ...this.opts.env }));
    } catch {
      // best effort: the next build's snapshotter runs the same clean-up
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const id of [...this.reserved.keys()]) this.release(id);
    const idle = this.idle.splice(0);
    for (const w of idle) w.chan.end();
    await Promise.all(idle.map((w) => w.exited));
  }

  /** Workers alive (idle and busy): for metrics and tests. */
  get workers(): number {
    return this.all.size;
  }
}
