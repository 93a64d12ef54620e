/**
 * Extended attributes read by the restricted helper instead of getfattr (src/layer/fsops.ts `useXattrReader`).
 * Why: under the helper's filter every `lstat` and `llistxattr` of getfattr's walk is a notification the helper
 * answers, so reading the previous layer and the COPY sources of W1's incremental COPY (5,000 files each) cost
 * 20,000 round trips per build; the helper walks the same trees itself and shows exactly what the filter shows a
 * supervised process (`user.kiln.*` hidden, the capability record as `security.capability`).
 */
import { rmSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { XattrReader } from '../../layer/fsops.js';
import { kilnTempDir } from '../paths.js';
import { parseXattrs, type RestrictedClient } from './client.js';

/** Paths per request (a request line holds at most 1,024 fields and 64 KiB). */
const BATCH = 500;
const BATCH_BYTES = 32_768;

/**
 * An XattrReader for a process under the helper: one `xattrs` request per batch of paths, the output in a private
 * temp dir of `kilnHome` (made on first use, removed when the process exits; stale.ts removes it if it dies).
 */
export function restrictedXattrReader(client: RestrictedClient, kilnHome: string): XattrReader {
  let dir: Promise<string> | undefined;
  let n = 0;
  return async (paths, recursive) => {
    if (!dir) {
      dir = kilnTempDir(kilnHome, 'rxattr-');
      const made = await dir;
      process.once('exit', () => rmSync(made, { recursive: true, force: true }));
    }
    const base = await dir;
    const out = new Map<string, Map<string, Buffer>>();
    for (let i = 0; i < paths.length;) {
      const batch: string[] = [];
      let size = 0;
      while (i < paths.length && batch.length < BATCH && size + (paths[i] as string).length < BATCH_BYTES) {
        size += (paths[i] as string).length + 1;
        batch.push(paths[i++] as string);
      }
      if (batch.length === 0) batch.push(paths[i++] as string);
      const file = join(base, `x${++n}`);
      try {
        await client.xattrs(file, recursive, batch);
        parseXattrs(await readFile(file, 'utf8'), out);
      } finally {
        await rm(file, { force: true });
      }
    }
    return out;
  };
}
