/**
 * Bundles the web UI (src/service/ui/client: Preact + TSX + one CSS file) with esbuild into two content-hashed
 * files. `npm run build` runs this module after tsc (`node dist/service/ui/bundle.js`) and writes them with a
 * manifest to `dist/service/ui/assets/`; a checkout running from its TypeScript sources bundles in memory at
 * start-up instead (assets.ts). esbuild is a build-time dependency only: the published package carries the bundle.
 */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { findUp } from '../../util/find-up.js';

const here = dirname(fileURLToPath(import.meta.url));

/** A bundled file: `app-HASH.js` or `app-HASH.css`. */
export interface BundledFile {
  name: string;
  contents: Uint8Array;
}

/** The client's source dir: beside this module (sources), or in the checkout's src/ (running from dist/). */
export function clientSourceDir(): string {
  return findUp(join('src', 'service', 'ui', 'client'), here) ?? join(here, 'client');
}

/** Bundle the client (minified, no source maps, no legal comments: the first load stays small). */
export async function bundleUi(clientDir: string = clientSourceDir()): Promise<BundledFile[]> {
  const esbuild = await import('esbuild');
  const out = await esbuild.build({
    entryPoints: { app: join(clientDir, 'main.tsx') },
    bundle: true,
    format: 'esm',
    target: ['es2022', 'chrome110', 'firefox115', 'safari16'],
    minify: true,
    legalComments: 'none',
    jsx: 'automatic',
    jsxImportSource: 'preact',
    write: false,
    outdir: '/kiln-ui',
    entryNames: '[name]-[hash]',
    logLevel: 'silent',
    absWorkingDir: clientDir,
  });
  return out.outputFiles.map((f) => ({ name: f.path.slice('/kiln-ui/'.length), contents: f.contents }));
}

/** Write the bundle and `manifest.json` (`{"js": …, "css": …}`) to `dir`, replacing what was there. */
export async function writeBundle(dir: string, files: BundledFile[]): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const old of await readdir(dir)) await rm(join(dir, old), { force: true });
  const manifest: Record<string, string> = {};
  for (const f of files) {
    await writeFile(join(dir, f.name), f.contents);
    manifest[f.name.endsWith('.css') ? 'css' : 'js'] = f.name;
  }
  await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest) + '\n');
}

/** Where prebuilt assets live: beside this module (scripts/bundle.mjs copies them beside the bundled CLI). */
export const PREBUILT_DIR = join(here, 'assets');

// run as a script (`npm run build`); no top-level await: the bundled CLI may be CommonJS (scripts/bundle.mjs)
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void (async () => {
    const files = await bundleUi();
    await writeBundle(PREBUILT_DIR, files);
    const total = files.reduce((n, f) => n + f.contents.length, 0);
    process.stderr.write(`kiln ui: ${files.map((f) => f.name).join(', ')} (${total} bytes) → ${PREBUILT_DIR}\n`);
  })().catch((e: unknown) => {
    process.stderr.write(`kiln ui: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
