// Loads the bundled CLI (dist/bundle/kiln.cjs, scripts/bundle.mjs) with V8's code cache beside it (kiln.cjs.cache).
// Why: Node 20 has no module compile cache (module.enableCompileCache is Node 22), and compiling the ~1 MB that
// `kiln build` needs costs more than the rest of its start-up; a CommonJS script run through vm.Script can use a
// code cache. The build writes one of the bundle's top level only (V8 compiles a function when it first runs), so
// the second successful run of each command writes that command's own cache with every function it compiled (the
// engine, the registry client, the strategy…): later runs of the command compile almost nothing (an S2I rebuild:
// ~130 ms CPU less). A cache V8 rejects (another Node version, other V8 flags) only costs the compile.
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
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

function setV8Flags(flags) {
  createRequire(import.meta.url)('node:v8').setFlagsFromString(flags);
}

/** Whether the user set V8's bytecode flushing themselves (left alone then, and nothing learned). */
function userFlushFlag() {
  return [...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((a) => a.includes('flush-bytecode'));
}

/** At most this many commands get a cache of their own (a bound on the files: keys can name source dirs). */
const MAX_LEARNED = 32;

/** What a run is learned as: its first two words (`s2i build`, `serve-worker`) and its `--strategy`. */
function commandKey(argv) {
  const words = [];
  for (const a of argv) {
    if (a.startsWith('-') || words.length === 2) break;
    words.push(a);
  }
  const s = argv.indexOf('--strategy');
  const key = [...words, s >= 0 ? `strategy=${argv[s + 1]}` : ''].join(' ').trim() || 'kiln';
  return key.replace(/[^A-Za-z0-9=.-]+/g, '_').slice(0, 100);
}

/** Note a command's first successful run (its second learns). */
function markSeen(seen) {
  try {
    const dir = dirname(seen);
    if (!existsSync(dir)) mkdirSync(dir);
    else if (readdirSync(dir).length >= 2 * MAX_LEARNED) return;
    writeFileSync(seen, '');
  } catch {
    /* a read-only install */
  }
}

/**
 * Write `learned` (a command's own cache) with what `script` has compiled so far, through a rename (concurrent runs
 * never see half a file). A read-only install simply keeps the build's cache. KILN_CODE_CACHE_LEARN=0 never writes.
 */
function learn(script, learned) {
  const tmp = `${learned}.${process.pid}.tmp`;
  try {
    const dir = dirname(learned);
    if (!existsSync(dir)) mkdirSync(dir);
    else if (readdirSync(dir).length >= 2 * MAX_LEARNED) return;
    accessSync(dir, constants.W_OK); // before the ~40 ms of createCachedData
    writeFileSync(tmp, script.createCachedData());
    renameSync(tmp, learned);
  } catch {
    // never fail the command for its cache (a read-only install, a full disk)
    rmSync(tmp, { force: true });
  }
}

/**
 * The bundle's exports. The code cache is the command's own (`<file>.cache.d/<command>`, learned from its second
 * successful run) when there is one, else the build's. `main` resolves to the exit code and, after that run (or
 * one whose learned cache V8 rejected), learns it: V8 caches only functions already compiled, and V8
 * may drop the bytecode of functions a long run no longer uses, so one cache per command, not one for all.
 */
export function loadBundle(file, argv = process.argv.slice(2)) {
  const learned = join(`${file}.cache.d`, commandKey(argv));
  const seen = `${learned}.seen`;
  const own = existsSync(learned);
  const cacheFile = own ? learned : `${file}.cache`;
  const cachedData = existsSync(cacheFile) ? readFileSync(cacheFile) : undefined;
  const script = compile(file, cachedData);
  const rejected = cachedData !== undefined && script.cachedDataRejected === true;
  if (rejected && process.env.KILN_DEBUG === '1')
    process.stderr.write(`kiln: debug: code cache ${cacheFile} rejected (made by another Node.js or other flags)\n`);
  const enabled = process.env.KILN_CODE_CACHE_LEARN !== '0' && !userFlushFlag();
  // Learned from the command's second successful run, not its first: a first run is often the cold one (a Node
  // build's npm install through the engine) and its cache would carry code later runs never use, which costs its
  // deserialization on every start (the Node fast path's CPU: no better with it than with the build's cache).
  const willLearn = enabled && (own ? rejected : existsSync(seen));
  // V8 drops the bytecode of functions that have not run for a while (the bundle's top level after a few full GCs:
  // a cache made without it costs the whole script's parse, ~250 ms): kept while a run that will learn runs.
  if (willLearn) setV8Flags('--no-flush-bytecode');
  const exports = run(script, file);
  const main = exports.main;
  return {
    ...exports,
    async main(args) {
      const code = await main(args);
      if (willLearn) {
        setV8Flags('--flush-bytecode'); // the default again: V8 checks a cache's flags against the reader's
        if (code === 0) learn(script, learned);
      } else if (enabled && !own && code === 0) markSeen(seen);
      return code;
    },
  };
}

/** Write `file`.cache: the code of the bundle's top level, compiled by this Node.js (`npm run build`). */
export function writeBundleCache(file) {
  const script = compile(file, undefined);
  run(script, file);
  writeFileSync(`${file}.cache`, script.createCachedData());
  rmSync(`${file}.cache.d`, { recursive: true, force: true }); // made for the previous bundle
}
