#!/usr/bin/env node
// Bundles kiln's CLI with esbuild into OUT (default dist/bundle/): what bin/kiln.js runs when it is current. Why:
// Node 20 loads ~200 ES modules of src/ and undici's files one at a time on every start and has no compile cache.
// - kiln.cjs: the CLI (exports main), one CommonJS script, so that bin/load-bundle.js can run it through vm.Script
//   with V8's code cache, kiln.cjs.cache, written here by this Node.js. Modules behind a dynamic import() (every
//   command, src/cli/main.ts) stay lazy: esbuild initialises them on first use, `kiln build` never runs the
//   service's code. import.meta.url is the script's own URL.
// - worker-main.js, ns-entry.js (+ chunks): ESM entry points for code started by path beside the bundle (the layer
//   worker thread, src/layer/worker.ts; src/sandbox/userns.ts's namespace child).
// Native addons (better-sqlite3, zstd-napi) and esbuild itself (the UI bundler) stay in node_modules. The web UI's
// prebuilt assets (dist/service/ui/assets, from `node dist/service/ui/bundle.js`) are copied beside the bundle,
// where the bundled src/service/ui/bundle.ts looks for them.
// Usage: node scripts/bundle.mjs [OUT]    (run by `npm run build`; the benches bundle into .tmp/)
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const out = resolve(process.argv[2] ?? join(root, 'dist', 'bundle'));

/** @type {import('esbuild').BuildOptions} */
const common = {
  absWorkingDir: root,
  outdir: out,
  bundle: true,
  platform: 'node',
  target: 'node20',
  packages: 'bundle',
  external: ['better-sqlite3', 'zstd-napi', 'esbuild'],
  minifySyntax: true,
  minifyWhitespace: true,
  keepNames: true,
  legalComments: 'none',
  sourcemap: false,
  metafile: true,
  logLevel: 'warning',
};

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const cli = await build({
  ...common,
  entryPoints: { kiln: 'src/cli/main.ts' },
  format: 'cjs',
  outExtension: { '.js': '.cjs' },
  define: { 'import.meta.url': '__kilnImportMetaUrl' },
  banner: { js: 'var __kilnImportMetaUrl = require("node:url").pathToFileURL(__filename).href;' },
});
const entries = await build({
  ...common,
  entryPoints: { 'worker-main': 'src/layer/worker-main.ts', 'ns-entry': 'src/sandbox/ns-entry.ts' },
  format: 'esm',
  splitting: true,
  chunkNames: 'chunk-[hash]',
  // CommonJS dependencies bundled into ESM call require() for Node's built-ins: give the chunks one
  banner: {
    js: "import { createRequire as __kilnRequire } from 'node:module';\nconst require = __kilnRequire(import.meta.url);",
  },
});
const kiln = join(out, 'kiln.cjs');
// import() of Node's built-ins and esbuild is left as is by esbuild; a vm.Script has no dynamic import without an
// experimental option, so those become require() (synchronous; the same named exports)
const text = readFileSync(kiln, 'utf8').replace(
  /(?<![\w$.])import\("((?:node:)?[a-z_/]+|esbuild)"\)/g,
  (_m, id) => `Promise.resolve(require(${JSON.stringify(id)}))`,
);
const left = /(?<![\w$.])import\((?!\))/.exec(text);
if (left)
  throw new Error(`kiln.cjs still has an import() at ${left.index}: ${text.slice(left.index, left.index + 80)}`);
writeFileSync(kiln, text);
const loader = pathToFileURL(join(root, 'bin', 'load-bundle.js')).href;
const cache = spawnSync(
  process.execPath,
  [
    '--input-type=module',
    '-e',
    `import { writeBundleCache } from ${JSON.stringify(loader)}; writeBundleCache(${JSON.stringify(kiln)});`,
  ],
  { stdio: 'inherit' },
);
if (cache.status !== 0) throw new Error('writing the code cache of kiln.cjs failed');
const r = { metafile: { outputs: { ...cli.metafile.outputs, ...entries.metafile.outputs } } };
const ui = join(root, 'dist', 'service', 'ui', 'assets');
if (existsSync(ui)) cpSync(ui, join(out, 'assets'), { recursive: true });
const bytes = Object.values(r.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
process.stderr.write(
  `kiln bundle: ${Object.keys(r.metafile.outputs).length} files (${(bytes / 1024).toFixed(0)} KiB) → ${out}\n`,
);
