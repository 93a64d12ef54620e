/** Reading a file while another thread is still appending to it. */
import { open, type FileHandle } from 'node:fs/promises';

const CHUNK = 1 << 20;
const POLL_MS = 4;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A file being followed: its bytes as they are appended (see followFile), and a way to let go of it early. */
export interface FollowedFile extends AsyncIterable<Buffer> {
  /** Close the file (also done when iteration ends); idempotent. */
  close(): Promise<void>;
}

/**
 * Follow `path` while a writer appends to it, until `done` settles: resolved — the rest of the file, then the end;
 * rejected — that error. Why: a layer blob can be uploaded while it is being written (the writer only appends, so
 * every byte below the current size is final). Waits for the file to appear and opens it right away, so a rename
 * of the finished file does not disturb the reader; resolves to undefined when the writer finished (or failed)
 * before the file could be opened — there is nothing left to follow then.
 */
export async function followFile(path: string, done: Promise<unknown>): Promise<FollowedFile | undefined> {
  let finished = false;
  let failed = false;
  let failure: unknown;
  done.then(
    () => (finished = true),
    (e: unknown) => {
      finished = true;
      failed = true;
      failure = e;
    },
  );
  let fh: FileHandle | undefined;
  while (!fh) {
    try {
      fh = await open(path, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || finished) return undefined;
      await sleep(POLL_MS);
    }
  }
  const handle = fh;
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => (closed ??= handle.close().catch(() => undefined));
  async function* read(): AsyncGenerator<Buffer> {
    try {
      let pos = 0;
      let buf = Buffer.allocUnsafe(CHUNK);
      for (;;) {
        // Whether the writer had finished *before* this read: then a short read is the end of the file.
        const wasDone = finished;
        if (failed) throw failure;
        const { bytesRead } = await handle.read(buf, 0, CHUNK, pos);
        if (bytesRead > 0) {
          pos += bytesRead;
          if (bytesRead < CHUNK / 4) {
            yield Buffer.from(buf.subarray(0, bytesRead)); // a small read: copy it, keep the buffer
          } else {
            const out = buf.subarray(0, bytesRead);
            buf = Buffer.allocUnsafe(CHUNK);
            yield out;
          }
        } else if (wasDone) {
          return;
        } else {
          await Promise.race([done.catch(() => undefined), sleep(POLL_MS)]);
        }
      }
    } finally {
      await close();
    }
  }
  return { [Symbol.asyncIterator]: read, close };
}
