/**
 * CPU-heavy streaming work on a worker thread: layer blobs (tar generation, gzip hand-off, two sha256 passes) and
 * digests of large context files. Why: on the main thread that work slows down every step running meanwhile (the
 * engine writes a step's layer in the background while the next steps already run); a worker gives it its own core.
 *
 * One worker per process, started on first use, with a small young generation (its garbage is mostly Buffers that
 * should not pile up), not keeping the process alive when idle. Errors come back as KilnErrors with their code and
 * hint. Where a worker cannot start (or dies), the work runs in-process.
 */
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { KilnError } from '../errors.js';
import { writeLayer, type WriteLayerOptions, type WrittenLayer } from './writer.js';
import { copyFilesSync, type FileCopyJob } from './filecopy.js';
import { readKnownSize } from './fsops.js';

/** Messages to the worker. */
export type JobBody =
  | { kind: 'layer'; dir: string; opts: WriteLayerOptions }
  | { kind: 'sha256'; file: string }
  | { kind: 'sha256Files'; files: string[]; sizes?: number[] }
  | { kind: 'copyFiles'; jobs: FileCopyJob[] };
export type WorkerJob = JobBody & { id: number };

/** Messages from the worker. */
export type WorkerJobResult =
  | { id: number; ok: WrittenLayer | string | number | string[] }
  | { id: number; error: { code?: string; message: string; hint?: string } };

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  /** The same work in-process (if the worker goes away before answering). */
  fallback: () => Promise<unknown>;
}

let worker: Worker | undefined;
let broken = false;
let nextId = 0;
const pending = new Map<number, Pending>();

/** The worker is gone: its unanswered jobs run in-process instead. */
function takeBack(): void {
  for (const p of pending.values()) p.fallback().then(p.resolve, p.reject);
  pending.clear();
}

function start(): Worker | undefined {
  if (worker || broken) return worker;
  // Run from TypeScript sources (tests, development) there is no worker: Node 20 does not carry the TypeScript
  // loader's hooks into worker threads. The compiled CLI always has one (its test imports dist/).
  if (import.meta.url.endsWith('.ts')) {
    broken = true;
    return undefined;
  }
  try {
    const w = new Worker(new URL('./worker-main.js', import.meta.url), {
      resourceLimits: { maxYoungGenerationSizeMb: 8 },
    });
    w.on('message', (m: WorkerJobResult) => {
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if ('ok' in m) p.resolve(m.ok);
      else {
        const o: { hint?: string } = {};
        if (m.error.hint !== undefined) o.hint = m.error.hint;
        p.reject(new KilnError(m.error.code ?? 'LAYER_WRITE_FAILED', m.error.message, o));
      }
      if (pending.size === 0) w.unref();
    });
    const gone = (): void => {
      broken = true;
      worker = undefined;
      takeBack();
    };
    w.on('error', gone);
    w.on('exit', gone);
    w.unref();
    worker = w;
  } catch {
    broken = true;
  }
  return worker;
}

function run<T>(job: JobBody, inProcess: () => Promise<T>): Promise<T> {
  const w = process.env.KILN_LAYER_WORKER === '0' ? undefined : start();
  if (!w) return inProcess();
  const id = ++nextId;
  const done = new Promise<T>((resolve, reject) =>
    pending.set(id, { resolve: resolve as (v: unknown) => void, reject, fallback: inProcess }),
  );
  w.ref();
  const msg: WorkerJob = { ...job, id };
  w.postMessage(msg);
  return done;
}

/** writeLayer (./writer.ts) on the worker thread; in-process when `KILN_LAYER_WORKER=0` or no worker can run. */
export function writeLayerOffThread(dir: string, opts: WriteLayerOptions = {}): Promise<WrittenLayer> {
  return run({ kind: 'layer', dir, opts }, async () => {
    // a worker that died mid-write leaves this job's partial output behind
    if (opts.file !== undefined) await rm(opts.file, { force: true });
    return writeLayer(dir, opts);
  });
}

/** sha256 (hex) of a file, streamed. */
export async function sha256Stream(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return h.digest('hex');
}

/** sha256Stream on the worker thread (in-process as above). */
export function sha256OffThread(file: string): Promise<string> {
  return run({ kind: 'sha256', file }, () => sha256Stream(file));
}

/** sha256 (hex) of each small file, read whole; '' for a file that could not be read (the caller reads it again). */
export function sha256FilesSync(files: string[], sizes?: number[]): string[] {
  return files.map((f, i) => {
    try {
      const size = sizes?.[i];
      return createHash('sha256')
        .update(size === undefined ? readFileSync(f) : readKnownSize(f, size))
        .digest('hex');
    } catch {
      return '';
    }
  });
}

/** sha256FilesOffThread batches not answered yet. */
let hashing = 0;

/**
 * sha256FilesSync on the worker thread — only when it runs and at most two such batches are unanswered, else
 * undefined and the caller hashes them itself. Why: a hash walk of a fresh checkout (a build pod's) read and digested
 * 5,000 small files on the main thread while the other core had little to do; now both do, each as fast as it can.
 */
export function sha256FilesOffThread(files: string[], sizes?: number[]): Promise<string[]> | undefined {
  if (process.env.KILN_LAYER_WORKER === '0' || !worker || broken || hashing >= 2) return undefined;
  hashing++;
  const job: JobBody = sizes ? { kind: 'sha256Files', files, sizes } : { kind: 'sha256Files', files };
  const done = run<string[]>(job, async () => sha256FilesSync(files, sizes));
  void done.then(
    () => void hashing--,
    () => void hashing--,
  );
  return done;
}

/**
 * copyFilesSync (./filecopy.ts) on the worker thread — only when it runs and has no job queued, else undefined and
 * the caller copies them itself: a COPY of thousands of new files (a fresh KILN_HOME has no previous result to
 * plant from) then creates them on both cores, and never waits behind a layer write.
 */
export function copyFilesOffThread(jobs: FileCopyJob[]): Promise<void> | undefined {
  // two batches queued at most (the worker starts the next one while the walk fills another), and none behind
  // other jobs
  if (process.env.KILN_LAYER_WORKER === '0' || !worker || broken || copying >= 2 || pending.size > copying) {
    return undefined;
  }
  copying++;
  return run({ kind: 'copyFiles', jobs }, async () => copyFilesSync(jobs, true)).then(
    () => void copying--,
    (e: unknown) => {
      copying--;
      throw e;
    },
  );
}

/** copyFilesOffThread batches not answered yet. */
let copying = 0;

/** Start the worker now (it loads its modules in parallel with whatever the caller does next). */
export function warmUpWorker(): void {
  if (process.env.KILN_LAYER_WORKER !== '0') start();
}

/** Whether jobs go to a worker thread (false: none started yet, or it could not run and jobs run in-process). */
export function layerWorkerRunning(): boolean {
  return worker !== undefined && !broken;
}

/** Stop the worker (tests; a process exits without it). */
export async function stopLayerWorker(): Promise<void> {
  const w = worker;
  worker = undefined;
  if (w) {
    w.removeAllListeners('exit');
    await w.terminate();
  }
}
