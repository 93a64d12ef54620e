/**
 * A cross-process lock: an O_EXCL lock file holding the owner's pid (a lock whose owner is dead, or an empty one
 * older than 10 s, is broken), plus an in-process queue so callers in one process take turns without polling.
 * Used for index.json updates of the local store and of OCI layouts.
 */
import { open, readFile, stat, unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { KilnError } from '../errors.js';

const LOCK_TIMEOUT_MS = 120_000;
const inProcess = new Map<string, Promise<unknown>>();

/** Is a process with this pid running (EPERM counts as running)? */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function acquire(lock: string, what: string): Promise<void> {
  const deadline = Date.now() + LOCK_TIMEOUT_MS;
  for (;;) {
    try {
      const fh = await open(lock, 'wx', 0o644);
      try {
        await fh.writeFile(`${process.pid}\n`);
      } finally {
        await fh.close();
      }
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const pid = parseInt(await readFile(lock, 'utf8').catch(() => ''), 10);
    const st = await stat(lock).catch(() => undefined);
    const stale =
      pid > 0 ? pid !== process.pid && !pidAlive(pid) : st !== undefined && Date.now() - st.mtimeMs > 10_000;
    if (stale) {
      await unlink(lock).catch(() => undefined);
      continue;
    }
    if (Date.now() > deadline) {
      throw new KilnError('LOCKED', `${lock}: ${what} is locked by process ${pid || '?'}`, {
        hint: 'another kiln is writing to it; if none is running, remove the lock file',
      });
    }
    await sleep(20 + Math.floor(Math.random() * 30));
  }
}

/** Run `fn` holding the lock file `lock` (`what` names the locked thing in the timeout error). */
export async function withFileLock<T>(lock: string, fn: () => Promise<T>, what = 'it'): Promise<T> {
  const prev = inProcess.get(lock) ?? Promise.resolve();
  const run = prev
    .catch(() => undefined)
    .then(async () => {
      await acquire(lock, what);
      try {
        return await fn();
      } finally {
        await unlink(lock).catch(() => undefined);
      }
    });
  inProcess.set(lock, run);
  try {
    return await run;
  } finally {
    if (inProcess.get(lock) === run) inProcess.delete(lock);
  }
}
