#!/usr/bin/env node
// Thin launcher: run the compiled CLI (dist/) when it is up to date with src/, otherwise the TypeScript
// sources through tsx (development checkouts where `npm run build` has not been re-run).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
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

function useCompiled() {
  if (process.env.KILN_FROM_SOURCE === '1' || !existsSync(compiled)) return false;
  if (!existsSync(srcDir)) return true;
  return statSync(compiled).mtimeMs >= newestMtime(srcDir);
}

let entry;
if (useCompiled()) {
  entry = compiled;
} else {
  const { register } = await import('tsx/esm/api');
  register();
  entry = join(srcDir, 'cli', 'main.ts');
}
const { main } = await import(pathToFileURL(entry).href);
process.exitCode = await main(process.argv.slice(2));
