// Loads the bundled CLI (dist/bundle/kiln.cjs, scripts/bundle.mjs) with V8's code cache beside it (kiln.cjs.cache).
// Why: Node 20 has no module compile cache (module.enableCompileCache is Node 22), and compiling the ~1 MB that
// `kiln build` needs costs more than the rest of its start-up; a CommonJS script run through vm.Script can use a
// code cache. The build writes one of the bundle's top level only (V8 compiles a function when it first runs), so
// the first successful run of each command rewrites it with every function that run compiled (the engine, the
// registry client, the strategy…): later runs of that command compile almost nothing (an S2I rebuild: ~130 ms CPU
// less). A cache V8 rejects (another Node version, other V8 flags) only costs the compile, and is rewritten.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import vm from 'node:vm';

function compile(file, cachedData) {
  const src = readFileSync(file, 'utf8');
  // the CommonJS wrapper, byte for byte the same at build time and at run time (V8 checks the source)
  return new vm.Script(`(function (exports, require, module, __filename, __dirname) {${src}\n})`, {
    filename: file,
    cachedData,
  });
}

function run(script, file) {
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(file), module, file, dirname(file));
  return module.exports;
}

/** At most this many commands are learned into one cache (a bound on rewrites: keys can name source dirs). */
const MAX_LEARNED = 32;

/** What a run is learned as: its first two words (`s2i build`, `serve-worker`) and its `--strategy`. */
function commandKey(argv) {
  const words = [];
  for (const a of argv) {
    if (a.startsWith('-') || words.length === 2) break;
    words.push(a);
  }
  const s = argv.indexOf('--strategy');
  return [...words, s >= 0 ? `strategy=${argv[s + 1]}` : ''].join(' ').trim();
}

/**
 * Rewrite `cacheFile` with what `script` has compiled so far, once per command (`<cache>.learned` lists them),
 * or whenever V8 rejected it. Written beside the bundle through a rename (concurrent runs never see half a file);
 * a read-only install simply keeps its cache. KILN_CODE_CACHE_LEARN=0 never writes.
 */
function learn(script, cacheFile, key, rejected) {
  if (process.env.KILN_CODE_CACHE_LEARN === '0') return;
  const listFile = `${cacheFile}.learned`;
  let learned = [];
  try {
    if (!rejected && existsSync(listFile)) learned = readFileSync(listFile, 'utf8').split('\n').filter(Boolean);
  } catch {
    return;
  }
  if (learned.includes(key) || learned.length >= MAX_LEARNED) return;
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, script.createCachedData());
    renameSync(tmp, cacheFile);
    writeFileSync(listFile, [...learned, key, ''].join('\n'));
  } catch {
    // never fail the command for its cache (a read-only install, a full disk)
    rmSync(tmp, { force: true });
  }
}

/**
 * The bundle's exports; `main` resolves to the exit code and, after a successful run of a command not learned yet,
 * rewrites the code cache with the functions that run compiled.
 */
export function loadBundle(file) {
  const cacheFile = `${file}.cache`;
  const cachedData = existsSync(cacheFile) ? readFileSync(cacheFile) : undefined;
  const script = compile(file, cachedData);
  const rejected = cachedData === undefined || script.cachedDataRejected === true;
  if (cachedData && script.cachedDataRejected && process.env.KILN_DEBUG === '1')
    process.stderr.write(`kiln: debug: code cache ${cacheFile} rejected (made by another Node.js or other flags)\n`);
  const exports = run(script, file);
  const main = exports.main;
  return {
    ...exports,
    async main(argv) {
      const code = await main(argv);
      if (code === 0) learn(script, cacheFile, commandKey(argv), rejected);
      return code;
    },
  };
}

/** Write `file`.cache: the code of the bundle's top level, compiled by this Node.js (`npm run build`). */
export function writeBundleCache(file) {
  const script = compile(file, undefined);
  run(script, file);
  writeFileSync(`${file}.cache`, script.createCachedData());
  writeFileSync(`${file}.cache.learned`, '');
}
