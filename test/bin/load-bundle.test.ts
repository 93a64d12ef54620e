// bin/load-bundle.js: the bundle's code cache is rewritten with what a successful command compiled, once per
// command, and replaced when V8 rejects it — with a small stand-in bundle (CommonJS, exports `main`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import vm from 'node:vm';

interface Loaded {
  main(argv: string[]): Promise<number>;
}
const { loadBundle, writeBundleCache } = (await import(new URL('../../bin/load-bundle.js', import.meta.url).href)) as {
  loadBundle(file: string): Loaded;
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

/** Whether V8 accepts `file`.cache for `file`, compiled as bin/load-bundle.js compiles it. */
async function accepted(file: string): Promise<boolean> {
  const src = await readFile(file, 'utf8');
  const s = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${src}\n})`, {
    filename: file,
    cachedData: await readFile(`${file}.cache`),
  });
  return s.cachedDataRejected !== true;
}

test('a successful command rewrites the code cache once; a failed one and a learned one do not', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-bundle-cache-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'kiln.cjs');
  await writeFile(file, BUNDLE);
  writeBundleCache(file);
  const built = (await stat(`${file}.cache`)).size;
  assert.equal(await readFile(`${file}.cache.learned`, 'utf8'), '');

  assert.equal(await loadBundle(file).main(['fail']), 3);
  assert.equal((await stat(`${file}.cache`)).size, built, 'a failed run leaves the cache');

  assert.equal(await loadBundle(file).main(['s2i', 'build', '--push', 'x']), 0);
  const learned = await stat(`${file}.cache`);
  assert.ok(learned.size > built, `cache after a run ${learned.size} B > the top level's ${built} B`);
  assert.equal(await readFile(`${file}.cache.learned`, 'utf8'), 's2i build\n');
  assert.ok(await accepted(file), 'V8 accepts the rewritten cache');

  assert.equal(await loadBundle(file).main(['s2i', 'build', '-t', 'y']), 0);
  assert.equal((await stat(`${file}.cache`)).mtimeMs, learned.mtimeMs, 'a learned command does not rewrite it');
  assert.equal(await loadBundle(file).main(['build', '--strategy', 'node', 'src']), 0);
  assert.equal(await readFile(`${file}.cache.learned`, 'utf8'), 's2i build\nbuild strategy=node\n');
});

test('a rejected cache is replaced by one V8 accepts; KILN_CODE_CACHE_LEARN=0 writes nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-bundle-cache-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'kiln.cjs');
  await writeFile(file, BUNDLE);
  await writeFile(`${file}.cache`, 'not a code cache');
  await writeFile(`${file}.cache.learned`, 'build\n');
  process.env.KILN_CODE_CACHE_LEARN = '0';
  try {
    assert.equal(await loadBundle(file).main(['build']), 0);
  } finally {
    delete process.env.KILN_CODE_CACHE_LEARN;
  }
  assert.equal(await readFile(`${file}.cache`, 'utf8'), 'not a code cache');
  assert.equal(await loadBundle(file).main(['build']), 0);
  assert.ok(await accepted(file));
  assert.equal(await readFile(`${file}.cache.learned`, 'utf8'), 'build\n');
});
