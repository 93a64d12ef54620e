#!/usr/bin/env node
// Bundles kiln's CLI with esbuild into OUT (default dist/bundle/): what bin/kiln.js runs when it is current. Why:
// Node 20 loads ~200 ES modules of src/ and undici one file at a time on every start (~100–200 ms before a command
// runs); one bundle with a chunk per command (`splitting`: `kiln build` does not parse the service's code) loads in
// a fraction of that. Entry points beside the chunks, for code that starts them by path: kiln.js (the CLI, exports
// main), worker-main.js (the layer worker thread, src/layer/worker.ts), ns-entry.js (src/sandbox/userns.ts). Native
// addons (better-sqlite3, zstd-napi) and esbuild itself (the UI bundler) stay in node_modules. The web UI's prebuilt
// assets (dist/service/ui/assets, from `node dist/service/ui/bundle.js`) are copied beside the bundle, where the
// bundled src/service/ui/bundle.ts looks for them.
// Usage: node scripts/bundle.mjs [OUT]    (run by `npm run build`; the benches bundle into .tmp/)
import { build } from 'esbuild';
import { cpSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const out = resolve(process.argv[2] ?? join(root, 'dist', 'bundle'));

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const r = await build({
  absWorkingDir: root,
  entryPoints: {
    kiln: 'src/cli/main.ts',
    'worker-main': 'src/layer/worker-main.ts',
    'ns-entry': 'src/sandbox/ns-entry.ts',
  },
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'bundle',
  external: ['better-sqlite3', 'zstd-napi', 'esbuild'],
  // CommonJS dependencies bundled into ESM call require() for Node's built-ins: give the chunks one
  banner: {
    js: "import { createRequire as __kilnRequire } from 'node:module';\nconst require = __kilnRequire(import.meta.url);",
  },
  chunkNames: 'chunk-[hash]',
  minifySyntax: true,
  minifyWhitespace: true,
  keepNames: true,
  legalComments: 'none',
  sourcemap: false,
  metafile: true,
  logLevel: 'warning',
});
const ui = join(root, 'dist', 'service', 'ui', 'assets');
if (existsSync(ui)) cpSync(ui, join(out, 'assets'), { recursive: true });
const bytes = Object.values(r.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
process.stderr.write(
  `kiln bundle: ${Object.keys(r.metafile.outputs).length} files (${(bytes / 1024).toFixed(0)} KiB) → ${out}\n`,
);
