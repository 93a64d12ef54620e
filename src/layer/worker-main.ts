/** The worker thread of ./worker.ts: runs jobs (several at once) and answers each. */
import { parentPort } from 'node:worker_threads';
import { KilnError, errorMessage } from '../errors.js';
import { sha256FilesSync, sha256Stream, type WorkerJob, type WorkerJobResult } from './worker.js';
import { writeLayer, type WrittenLayer } from './writer.js';
import { copyFilesSync } from './filecopy.js';

const port = parentPort;
if (port) {
  port.on('message', (job: WorkerJob) => {
    const work: Promise<WrittenLayer | string | number | string[]> =
      job.kind === 'layer'
        ? writeLayer(job.dir, job.opts)
        : job.kind === 'copyFiles'
          ? new Promise((resolve) => {
              copyFilesSync(job.jobs);
              resolve(job.jobs.length);
            })
          : job.kind === 'sha256Files'
            ? Promise.resolve(sha256FilesSync(job.files, job.sizes))
            : sha256Stream(job.file);
    work.then(
      (ok) => port.postMessage({ id: job.id, ok } satisfies WorkerJobResult),
      (e: unknown) => {
        const error: { code?: string; message: string; hint?: string } = { message: errorMessage(e) };
        if (job.kind === 'copyFiles') error.code = 'COPY_FAILED';
        if (e instanceof KilnError) {
          error.code = e.code;
          if (e.hint !== undefined) error.hint = e.hint;
        }
        port.postMessage({ id: job.id, error } satisfies WorkerJobResult);
      },
    );
  });
}
