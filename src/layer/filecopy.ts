/**
 * The per-file half of a COPY that can run on the layer worker thread (./worker.ts): a new regular file copied
 * and given its owner, mode and times. Why a separate module: the worker imports it without the engine, and the
 * main thread runs the very same function when no worker is free, so both write the same files.
 */
import { chmodSync, constants as fsc, copyFileSync, lchownSync, lutimesSync, rmSync } from 'node:fs';

/** One new regular file of a COPY: everything the syscalls need, decided by the copier on the main thread. */
export interface FileCopyJob {
  src: string;
  dst: string;
  uid: number;
  gid: number;
  mode: number;
  /** Seconds since the epoch, as lutimes gets them from the source's Date (milliseconds kept). */
  atime: number;
  mtime: number;
}

/**
 * Copy each file (the target must not exist: COPYFILE_EXCL), then lchown, chmod, lutimes — the order TreeCopier
 * uses. `replace`: remove a target first (a worker that died mid-batch may have left some of them).
 */
export function copyFilesSync(jobs: readonly FileCopyJob[], replace = false): void {
  for (const j of jobs) {
    if (replace) rmSync(j.dst, { force: true });
    copyFileSync(j.src, j.dst, fsc.COPYFILE_EXCL);
    lchownSync(j.dst, j.uid, j.gid);
    chmodSync(j.dst, j.mode);
    lutimesSync(j.dst, j.atime, j.mtime);
  }
}
