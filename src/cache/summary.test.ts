import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_SUMMARY, layerNeeded, providedParents, summarizeLayerDir } from './summary.js';

const need = { subtrees: ['/app/src/'] };

test('a COPY into /app/src needs layers at or below it and the topmost holder of /app, nothing beside it', () => {
  const shadowed = new Set<string>();
  // top-down: the RUN layer holds /app (its metadata is what the COPY copies up)
  assert.equal(layerNeeded(['app', 'app/asset-count'], need, shadowed), true);
  assert.deepEqual([...shadowed], ['app']);
  // below it: /app is already provided, /app/assets is beside the destination
  assert.equal(layerNeeded(['app', 'app/assets', 'app/assets/a.bin'], need, shadowed), false);
  assert.equal(layerNeeded(['etc', 'etc/passwd'], need, shadowed), false);
  // something at the destination, a whiteout or opaque dir on the way, or an unlisted dir on the way: needed
  assert.equal(layerNeeded(['app', 'app/src', 'app/src/x.js'], need, new Set(['app'])), true);
  assert.equal(layerNeeded(['!app'], need, new Set(['app'])), true);
  assert.equal(layerNeeded(['app/'], need, new Set(['app'])), true);
  assert.equal(layerNeeded(['!tmp'], need, new Set()), false);
  // no summary, or a step that reads the whole root: needed
  assert.equal(layerNeeded(undefined, need, new Set()), true);
  assert.equal(layerNeeded(['opt'], { subtrees: ['/'] }, new Set()), true);
  // --chown names read /etc/passwd and /etc/group
  assert.equal(layerNeeded(['etc', 'etc/passwd'], { subtrees: ['/app', '/etc/passwd'] }, new Set()), true);
});

test('summaries list a layer dir breadth first, mark opaque dirs and cut deep trees', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-summary-'));
  try {
    await mkdir(join(dir, 'app', 'assets'), { recursive: true });
    await writeFile(join(dir, 'app', 'assets', 'a.bin'), 'a');
    await mkdir(join(dir, 'opq'));
    execFileSync('setfattr', ['-n', 'user.overlay.opaque', '-v', 'y', join(dir, 'opq')]);
    assert.deepEqual((await summarizeLayerDir(dir))?.sort(), ['!opq', 'app', 'app/assets', 'app/assets/a.bin']);
    // a tree too big to list whole: listed to the depth that fits, deeper dirs marked `dir/`
    for (let i = 0; i < MAX_SUMMARY; i++) {
      await mkdir(join(dir, 'app', 'src', `d${i % 8}`), { recursive: true });
      await writeFile(join(dir, 'app', 'src', `d${i % 8}`, `f${i}`), '');
    }
    const s = await summarizeLayerDir(dir);
    assert.ok(s && s.length <= MAX_SUMMARY);
    assert.ok(s.includes('app/src/d0/'), s.join(' '));
    assert.equal(layerNeeded(s, { subtrees: ['/app/src/d0/f0'] }, new Set()), true);
    // a local layer that holds /app shadows /app for the layers below it
    const shadowed = new Set<string>();
    await providedParents(dir, need, shadowed);
    assert.deepEqual([...shadowed], ['app']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
