/** Reading a file while another thread is still appending to it. */
import { open, type FileHandle } from 'node:fs/promises';

const CHUNK = 1 << 20;
const POLL_MS = 4;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The bytes of `path` as a writer appends them, until `done` settles: resolved — the rest of the file, then the
 * end; rejected — that error. Why: a layer blob can be uploaded while it is being written (the writer only
 * appends, so every byte below the current size is final). The file may not exist yet when this starts; the
 * handle is opened once, so a rename of the finished file does not disturb the reader.
 */
export async function* tailFile(path: string, done: Promise<unknown>): AsyncGenerator<Buffer> {
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
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || finished) throw failed ? failure : e;
      await sleep(POLL_MS);
    }
  }
  try {
    let pos = 0;
    for (;;) {
      // Whether the writer had finished *before* this read: then a short read is the end of the file.
      const wasDone = finished;
      if (failed) throw failure;
      const buf = Buffer.allocUnsafe(CHUNK);
      const { bytesRead } = await fh.read(buf, 0, CHUNK, pos);
      if (bytesRead > 0) {
        pos += bytesRead;
        yield buf.subarray(0, bytesRead);
      } else if (wasDone) {
        return;
      } else {
        await Promise.race([done.catch(() => undefined), sleep(POLL_MS)]);
      }
    }
  } finally {
    await fh.close();
  }
}
