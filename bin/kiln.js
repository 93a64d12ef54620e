#!/usr/bin/env node
// Thin launcher: run the compiled CLI when it exists, otherwise the TypeScript sources through tsx (development).
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const compiled = join(root, 'dist', 'cli', 'main.js');
if (existsSync(compiled) && !process.env.KILN_FROM_SOURCE) {
  const { main } = await import(pathToFileURL(compiled).href);
  process.exitCode = await main(process.argv.slice(2));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  const { main } = await import(pathToFileURL(join(root, 'src', 'cli', 'main.ts')).href);
  process.exitCode = await main(process.argv.slice(2));
}
