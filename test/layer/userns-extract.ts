/**
 * Helper for test/integration/layer-userns.test.ts, run inside `unshare --user --map-root-user` (uid 0 mapped to
 * the caller only): extracts the tar at argv[2] into argv[3] in overlay format, then writes the extracted dir back
 * as a layer, and prints one JSON line with what happened (warnings, error code/message, diffIDs).
 */
import { createReadStream } from 'node:fs';
import { extractLayer } from '../../src/layer/extract.js';
import { writeLayer } from '../../src/layer/writer.js';
import { isKilnError } from '../../src/errors.js';

const [tarPath, dest] = process.argv.slice(2) as [string, string];
const warnings: string[] = [];
try {
  const r = await extractLayer(createReadStream(tarPath), dest, {
    digest: 'sha256:' + '12'.repeat(32),
    onWarning: (m) => warnings.push(m),
  });
  const w = await writeLayer(dest, { tmpDir: dest + '.out', compression: 'none' });
  process.stdout.write(
    JSON.stringify({ ok: true, entries: r.entries, diffID: r.diffID, rewritten: w.file, warnings }) + '\n',
  );
} catch (e) {
  process.stdout.write(
    JSON.stringify({
      ok: false,
      code: isKilnError(e) ? e.code : 'OTHER',
      message: (e as Error).message,
      hint: isKilnError(e) ? e.hint : undefined,
      warnings,
    }) + '\n',
  );
}
