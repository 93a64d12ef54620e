/**
 * Deterministic benchmark inputs: the W1 build context (5,000 small source files in 50 dirs + 20 incompressible
 * 5 MiB assets), the W2 big base image (busybox + 20,000 files / 200 MB) and the Dockerfiles of every workload.
 * All content comes from seeded generators (mulberry32 for sizes and text, AES-CTR keystreams for incompressible
 * bytes), so every run, tool and round sees byte-identical inputs.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { imageFromParts, layerFromUncompressed } from '../src/oci/image.js';
import { MediaType } from '../src/oci/mediatypes.js';
import { encodeHeader } from '../src/layer/tarformat.js';
import type { Image, ImageConfig } from '../src/oci/types.js';

/** mulberry32: a tiny, fast, seeded PRNG (uniform in [0, 1)). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `size` incompressible bytes (AES-128-CTR keystream keyed by `seed`). */
export function randomBytesFor(seed: string, size: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  const c = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  return c.update(Buffer.alloc(size));
}

const WORDS = 'const let function return import export from await async if else for while class new this'.split(' ');

/** Source-like text of about `size` bytes. */
function sourceText(rand: () => number, size: number): string {
  let s = '';
  while (s.length < size) {
    const n = 3 + Math.floor(rand() * 10);
    let line = '';
    for (let i = 0; i < n; i++) line += WORDS[Math.floor(rand() * WORDS.length)] + ' ';
    s += line.trimEnd() + ';\n';
  }
  return s.slice(0, size);
}

export const W1_SOURCE_FILES = 5000;
export const W1_DIRS = 50;
export const W1_ASSETS = 20;
export const W1_ASSET_SIZE = 5 * 1024 * 1024;

/** Relative path of source file `i` of the W1 context. */
export function w1SourcePath(i: number, dirs = W1_DIRS): string {
  return `src/dir${String(i % dirs).padStart(2, '0')}/file${String(i).padStart(4, '0')}.js`;
}

export interface W1Options {
  files?: number;
  dirs?: number;
  assets?: number;
  assetSize?: number;
}

/** Write the W1 context (without the Dockerfile) into `dir`. */
export async function writeW1Context(dir: string, o: W1Options = {}): Promise<void> {
  const files = o.files ?? W1_SOURCE_FILES;
  const dirs = o.dirs ?? W1_DIRS;
  const assets = o.assets ?? W1_ASSETS;
  const assetSize = o.assetSize ?? W1_ASSET_SIZE;
  const rand = prng(0x6b696c6e);
  for (let d = 0; d < dirs; d++) await mkdir(join(dir, 'src', `dir${String(d).padStart(2, '0')}`), { recursive: true });
  const writes: Promise<void>[] = [];
  for (let i = 0; i < files; i++) {
    const size = 512 + Math.floor(rand() * (8192 - 512));
    const rel = w1SourcePath(i, dirs);
    writes.push(writeFile(join(dir, rel), sourceText(rand, size)));
    if (writes.length >= 64) await Promise.all(writes.splice(0));
  }
  await Promise.all(writes);
  await mkdir(join(dir, 'assets'), { recursive: true });
  for (let i = 0; i < assets; i++) {
    await writeFile(
      join(dir, 'assets', `asset${String(i).padStart(2, '0')}.bin`),
      randomBytesFor(`asset-${i}`, assetSize),
    );
  }
}

/** Change one W1 source file (deterministically by `n`): the warm-build edit. */
export async function touchW1Source(dir: string, n: number, o: W1Options = {}): Promise<string> {
  const i = (n * 7919) % (o.files ?? W1_SOURCE_FILES);
  const rel = w1SourcePath(i, o.dirs ?? W1_DIRS);
  await writeFile(join(dir, rel), `// edit ${n}\n` + sourceText(prng(n + 1), 2000));
  return rel;
}

export function w1Dockerfile(base: string): string {
  return [
    `FROM ${base}`,
    'WORKDIR /app',
    'COPY assets/ ./assets/',
    'RUN ls assets | wc -l > /app/asset-count',
    'COPY src/ ./src/',
    '',
  ].join('\n');
}

/** W2: one cheap RUN on top of `base`; `nonce` defeats every builder's cache. */
export function w2Dockerfile(base: string, nonce: string): string {
  return `FROM ${base}\nRUN touch /x && echo ${nonce} > /nonce\n`;
}

/** W3: one RUN creating 50,000 small files. */
export function w3Dockerfile(base: string, nonce: string, files = 50_000): string {
  return (
    `FROM ${base}\n` +
    `RUN mkdir -p /data && cd /data && echo ${nonce} > nonce && ` +
    `awk 'BEGIN { for (i = 0; i < ${files}; i++) { d = "d" int(i / 1000); if (i % 1000 == 0) system("mkdir " d); ` +
    `f = d "/f" i; print "file " i > f; close(f) } }'\n`
  );
}

// ---------------------------------------------------------------------------------------------------------------
// The W2 big base

const EPOCH_SECS = Math.floor(Date.parse('2024-01-01T00:00:00Z') / 1000);

function header(name: string, size: number, type: 'file' | 'dir'): Buffer {
  return encodeHeader({
    name,
    type,
    mode: type === 'dir' ? 0o755 : 0o644,
    uid: 0,
    gid: 0,
    size,
    mtime: EPOCH_SECS,
    linkname: '',
    devmajor: 0,
    devminor: 0,
  });
}

/** A tar of `files` files (`totalBytes` in all) in 100 dirs under /opt/big, generated lazily. */
function bigTar(files: number, totalBytes: number): Readable {
  const per = Math.floor(totalBytes / files);
  function* gen(): Generator<Buffer> {
    const key = createHash('sha256').update('kiln-bench-big-base').digest();
    const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
    yield header('opt/', 0, 'dir');
    yield header('opt/big/', 0, 'dir');
    const zero = Buffer.alloc(per);
    for (let i = 0; i < files; i++) {
      if (i % 200 === 0) yield header(`opt/big/d${i / 200}/`, 0, 'dir');
      yield header(`opt/big/d${Math.floor(i / 200)}/f${i}`, per, 'file');
      yield cipher.update(zero);
      const pad = (512 - (per % 512)) % 512;
      if (pad) yield Buffer.alloc(pad);
    }
    yield Buffer.alloc(1024);
  }
  return Readable.from(gen(), { objectMode: false });
}

/** `small` (busybox) plus one layer of `files` files / `totalBytes` bytes: the W2 big base. */
export async function makeBigBase(small: Image, files = 20_000, totalBytes = 200 * 1024 * 1024): Promise<Image> {
  const big = layerFromUncompressed(async () => bigTar(files, totalBytes), {
    compression: 'gzip',
    mediaType: MediaType.DockerLayerGzip,
    what: 'bench big layer',
  });
  const layers = [...(await small.layers()), big];
  const cfg = structuredClone(await small.config()) as ImageConfig;
  cfg.rootfs = { type: 'layers', diff_ids: [...cfg.rootfs.diff_ids, await big.diffID()] };
  cfg.history = [...(cfg.history ?? []), { created: cfg.created, created_by: 'kiln bench: 20,000 files / 200 MB' }];
  const raw = Buffer.from(JSON.stringify(cfg));
  return imageFromParts({
    mediaType: async () => await small.mediaType(),
    rawConfig: async () => raw,
    layers: async () => layers,
  });
}
