#!/usr/bin/env node
// Thin launcher: run the bundled CLI (dist/bundle/kiln.cjs with its code cache, scripts/bundle.mjs: fastest
// start-up) or else tsc's output (dist/cli/main.js) when it is up to date with src/, otherwise the TypeScript
// sources through tsx (development checkouts where `npm run build` has not been re-run). KILN_BUNDLE=0 skips the
// bundle, KILN_FROM_SOURCE=1 both compiled forms.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const bundled = join(root, 'dist', 'bundle', 'kiln.cjs');
const compiled = join(root, 'dist', 'cli', 'main.js');
const srcDir = join(root, 'src');

function newestMtime(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

let srcMtime;
function upToDate(file) {
  if (!existsSync(file)) return false;
  if (!existsSync(srcDir)) return true;
  srcMtime ??= newestMtime(srcDir);
  return statSync(file).mtimeMs >= srcMtime;
}

let main;
if (process.env.KILN_FROM_SOURCE !== '1' && process.env.KILN_BUNDLE !== '0' && upToDate(bundled)) {
  const { loadBundle } = await import('./load-bundle.js');
  ({ main } = loadBundle(bundled));
} else if (process.env.KILN_FROM_SOURCE !== '1' && upToDate(compiled)) {
  ({ main } = await import(pathToFileURL(compiled).href));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import(pathToFileURL(join(srcDir, 'cli', 'main.ts')).href));
}
process.exitCode = await main(process.argv.slice(2));
