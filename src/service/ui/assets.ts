/**
 * The web UI's static files, held in memory with their gzip and brotli forms made once at start-up (two small
 * files: compressing per request would cost more than it saves). Prebuilt ones (`npm run build`) are used unless
 * the client's sources are newer — then, in a development checkout, they are bundled again in memory, so a
 * service started from sources never serves a stale UI.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import { KilnError } from '../../errors.js';
import { PREBUILT_DIR, bundleUi, clientSourceDir, type BundledFile } from './bundle.js';

export interface Asset {
  name: string;
  type: string;
  body: Buffer;
  gzip: Buffer;
  br: Buffer;
  etag: string;
}

export interface UiAssets {
  /** File names of the script and the style sheet (content-hashed). */
  js: string;
  css: string;
  files: Map<string, Asset>;
}

const TYPES: Record<string, string> = {
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
};

function newestMtime(dir: string): number {
  let newest = 0;
  if (!existsSync(dir)) return newest;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

function toAsset(f: BundledFile): Asset {
  const body = Buffer.from(f.contents);
  const ext = f.name.slice(f.name.lastIndexOf('.') + 1);
  return {
    name: f.name,
    type: TYPES[ext] ?? 'application/octet-stream',
    body,
    gzip: gzipSync(body, { level: 9 }),
    br: brotliCompressSync(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }),
    etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
  };
}

function fromFiles(files: BundledFile[]): UiAssets {
  const assets = files.map(toAsset);
  const find = (ext: string): string => {
    const a = assets.find((x) => x.name.endsWith(ext));
    if (!a) throw new KilnError('UI_ASSETS_MISSING', `the web UI bundle has no ${ext} file`);
    return a.name;
  };
  return { js: find('.js'), css: find('.css'), files: new Map(assets.map((a) => [a.name, a])) };
}

/** The prebuilt bundle when it is current, else a fresh one from the client's sources. */
export async function loadAssets(): Promise<UiAssets> {
  const manifestFile = join(PREBUILT_DIR, 'manifest.json');
  const clientDir = clientSourceDir();
  const sources = existsSync(clientDir);
  const sourcesMtime = sources ? Math.max(newestMtime(clientDir), newestMtime(join(clientDir, '..', 'shared'))) : 0;
  if (existsSync(manifestFile) && statSync(manifestFile).mtimeMs >= sourcesMtime) {
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as Record<string, string>;
    const files = Object.values(manifest).map((name) => ({
      name,
      contents: readFileSync(join(PREBUILT_DIR, name)),
    }));
    return fromFiles(files);
  }
  if (!sources) {
    throw new KilnError('UI_ASSETS_MISSING', `the web UI was not built (${manifestFile} is missing)`, {
      hint: 'run npm run build',
    });
  }
  return fromFiles(await bundleUi(clientDir));
}
