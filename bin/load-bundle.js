// Loads the bundled CLI (dist/bundle/kiln.cjs, scripts/bundle.mjs) with V8's code cache beside it (kiln.cjs.cache).
// Why: Node 20 has no module compile cache (module.enableCompileCache is Node 22), and compiling the ~1 MB that
// `kiln build` needs costs more than the rest of its start-up; a CommonJS script run through vm.Script can use a
// code cache made at build time. A cache V8 rejects (another Node version, other V8 flags) only costs the compile.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
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

/** The bundle's exports (`main`), compiled from its code cache when V8 accepts it. */
export function loadBundle(file) {
  const cacheFile = `${file}.cache`;
  const cachedData = existsSync(cacheFile) ? readFileSync(cacheFile) : undefined;
  const script = compile(file, cachedData);
  if (cachedData && script.cachedDataRejected && process.env.KILN_DEBUG === '1')
    process.stderr.write(`kiln: debug: code cache ${cacheFile} rejected (made by another Node.js or other flags)\n`);
  return run(script, file);
}

/** Write `file`.cache: the code of the bundle's top level, compiled by this Node.js (`npm run build`). */
export function writeBundleCache(file) {
  const script = compile(file, undefined);
  run(script, file);
  writeFileSync(`${file}.cache`, script.createCachedData());
}
