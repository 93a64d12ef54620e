// bin/load-bundle.js: each command's own code cache, learned from its second successful run (rewritten when V8
// rejects it) — with a small stand-in bundle (CommonJS, exports `main`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import vm from 'node:vm';

interface Loaded {
  main(argv: string[]): Promise<number>;
}
const { loadBundle, writeBundleCache } = (await import(new URL('../../bin/load-bundle.js', import.meta.url).href)) as {
  loadBundle(file: string, argv: string[]): Loaded;
  writeBundleCache(file: string): void;
};

// enough lazily compiled code that the cache after a run is visibly larger than the top level's
const body = Array.from(
  { length: 200 },
  (_, i) => `function f${i}(x) { let s = 0; for (let j = 0; j < x; j++) s += j * ${i}; return s; }`,
).join('\n');
const BUNDLE = `${body}
exports.main = async (argv) => {
  if (argv[0] === 'fail') return 3;
  let n = 0;
  ${Array.from({ length: 200 }, (_, i) => `n += f${i}(2);`).join(' ')}
  return n > 0 ? 0 : 1;
};`;

/** Whether V8 accepts `cache` for `file`, compiled as bin/load-bundle.js compiles it. */
async function accepted(file: string, cache: string): Promise<boolean> {
  const src = await readFile(file, 'utf8');
  const s = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${src}\n})`, {
    filename: file,
    cachedData: await readFile(cache),
  });
  return s.cachedDataRejected !== true;
}

async function bundle(t: { after(f: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-bundle-cache-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'kiln.cjs');
  await writeFile(file, BUNDLE);
  writeBundleCache(file);
  return file;
}

test('the second successful run of a command writes its own code cache; failed runs and later runs do not', async (t) => {
  const file = await bundle(t);
  const built = (await stat(`${file}.cache`)).size;
  const learned = join(`${file}.cache.d`, 's2i_build');

  assert.equal(await loadBundle(file, ['s2i', 'build', 'fail']).main(['fail']), 3);
  assert.equal(existsSync(learned), false, 'a failed run learns nothing');

  const argv = ['s2i', 'build', '--push', 'x'];
  assert.equal(await loadBundle(file, argv).main(argv), 0);
  assert.equal(existsSync(learned), false, 'the first successful run only marks the command as seen');
  assert.equal(existsSync(`${learned}.seen`), true);
  assert.equal(await loadBundle(file, argv).main(argv), 0);
  const first = await stat(learned);
  assert.ok(first.size > built, `cache after a run ${first.size} B > the top level's ${built} B`);
  assert.ok(await accepted(file, learned), 'V8 accepts the learned cache');
  assert.equal((await stat(`${file}.cache`)).size, built, "the build's cache is left for other commands");

  const again = ['s2i', 'build', '-t', 'y'];
  assert.equal(await loadBundle(file, again).main(again), 0);
  assert.equal((await stat(learned)).mtimeMs, first.mtimeMs, 'a learned command does not rewrite it');
  const node = ['build', '--strategy', 'node', 'src'];
  for (let i = 0; i < 2; i++) assert.equal(await loadBundle(file, node).main(node), 0);
  assert.deepEqual((await readdir(`${file}.cache.d`)).filter((f) => !f.endsWith('.seen')).sort(), [
    'build_strategy=node',
    's2i_build',
  ]);

  writeBundleCache(file); // a new bundle: the learned caches were made for the old one
  assert.equal(existsSync(`${file}.cache.d`), false);
});

test('a rejected learned cache is rewritten; KILN_CODE_CACHE_LEARN=0 writes nothing', async (t) => {
  const file = await bundle(t);
  const learned = join(`${file}.cache.d`, 'build');
  await mkdir(`${file}.cache.d`);
  await writeFile(learned, 'not a code cache');
  process.env.KILN_CODE_CACHE_LEARN = '0';
  try {
    assert.equal(await loadBundle(file, ['build']).main(['build']), 0);
  } finally {
    delete process.env.KILN_CODE_CACHE_LEARN;
  }
  assert.equal(await readFile(learned, 'utf8'), 'not a code cache');
  assert.equal(await loadBundle(file, ['build']).main(['build']), 0);
  assert.ok(await accepted(file, learned));
});
