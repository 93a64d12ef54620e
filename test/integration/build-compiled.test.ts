/**
 * The compiled CLI (dist/, what users run: layer blobs on the worker thread, large context files digested there)
 * builds exactly the image the sources build (in-process). CI compiles dist/ before the tests (scripts/setup.sh).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, kiln } from './build-helpers.js';

test('compiled CLI (worker thread) and sources (in-process) build the same image', async () => {
  assert.ok(existsSync(join(REPO, 'dist', 'layer', 'worker-main.js')), 'run npm run build first');
  const dir = await mkdtemp(join(tmpdir(), 'kiln-compiled-'));
  try {
    const ctx = join(dir, 'ctx');
    await mkdir(join(ctx, 'src'), { recursive: true });
    // a large file (digested on the worker), many small ones, and a RUN layer
    await writeFile(join(ctx, 'big.bin'), Buffer.alloc(3 << 20, 'kiln-compiled-'));
    for (let i = 0; i < 300; i++) await writeFile(join(ctx, 'src', `f${i}`), `file ${i}\n`.repeat(i));
    await writeFile(
      join(ctx, 'Dockerfile'),
      'FROM localhost/busybox:latest\nCOPY big.bin /\nRUN mkdir /out && ls /src 2>/dev/null | wc -l > /out/n\nCOPY src/ /src/\n',
    );
    const ids: string[] = [];
    for (const [name, fromSource] of [
      ['compiled', '0'],
      ['source', '1'],
    ] as const) {
      const home = join(dir, `home-${name}`);
      const b = await kiln(['bootstrap', 'busybox'], { home });
      assert.equal(b.code, 0, b.stderr);
      const iid = join(dir, `iid-${name}`);
      const r = await kiln(['build', '-q', '--iidfile', iid, '-t', `compiled:${name}`, ctx], {
        home,
        env: { KILN_FROM_SOURCE: fromSource, SOURCE_DATE_EPOCH: '1700000000' },
      });
      assert.equal(r.code, 0, r.stderr);
      ids.push((await readFile(iid, 'utf8')).trim());
    }
    assert.equal(ids[0], ids[1]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
