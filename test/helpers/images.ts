/**
 * Test images built locally (no Docker Hub here). Use them to seed registries, layouts and stores:
 *
 *   const base = await makeBusyboxImage();                 // linux/<host arch>, OCI, one gzip layer
 *   const dockerBase = await makeBusyboxImage({ kind: 'docker', extraFiles: [{ path: 'app/hello', content: 'hi' }] });
 *   const big = makeRandomImage({ layers: 3, layerSize: 64 << 20, compression: 'none' }); // streaming, for benches
 *
 * `makeBusyboxImage` is deterministic for a given /bin/busybox and options (fixed mtimes, owners, order), so the
 * same options give the same digest within a machine. The root filesystem contains:
 *   /bin/busybox (from busybox-static) and /bin/<applet> symlinks → busybox (sh, ls, cat, id, …), /usr/bin/env,
 *   /etc/passwd (root 0, nobody 65534, app 1000), /etc/group (root, nobody, app 1000, staff 50 with member app),
 *   /root 0700, /home/app (1000:1000), /tmp 1777, plus `extraFiles`.
 * The config sets PATH, Cmd ["sh"], and a history entry per layer.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { spawnSync } from 'node:child_process';
import { DockerLayerTar, imageFromParts, layerFromBytes, layerFromUncompressed } from '../../src/oci/image.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { sha256 } from '../../src/oci/digest.js';
import type { Compression } from '../../src/oci/compress.js';
import { isKilnError } from '../../src/errors.js';
import {
  BUSYBOX_CREATED,
  BUSYBOX_EPOCH,
  busyboxRootfsEntries,
  makeTar,
  type TarEntry,
} from '../../src/engine/busybox.js';
import { DEFAULT_PATH as DEFAULT_SEARCH_PATH } from '../../src/engine/imageconfig.js';
import type { History, Image, ImageConfig, Layer, Platform } from '../../src/oci/types.js';

export const BUSYBOX_APPLETS = [
  'sh', 'ash', 'ls', 'cat', 'echo', 'id', 'mkdir', 'rm', 'rmdir', 'cp', 'mv', 'ln', 'chmod', 'chown', 'touch', 'env',
  'true', 'false', 'test', '[', 'grep', 'sed', 'awk', 'head', 'tail', 'wc', 'sleep', 'sort', 'uniq', 'tr', 'cut',
  'find', 'xargs', 'tar', 'gzip', 'gunzip', 'whoami', 'stat', 'readlink', 'printf', 'pwd', 'uname', 'hostname',
  'date', 'which', 'basename', 'dirname', 'mktemp', 'tee', 'du', 'df', 'kill', 'nproc', 'expr', 'seq', 'realpath',
  'sha256sum', 'md5sum', 'diff', 'wget', 'vi', 'su', 'adduser', 'addgroup', 'ps', 'yes', 'umask', 'sync',
]; // prettier-ignore

const EPOCH = BUSYBOX_EPOCH;
const DEFAULT_PATH = 'PATH=' + DEFAULT_SEARCH_PATH;

export interface ExtraFile {
  path: string;
  content?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  type?: 'file' | 'directory' | 'symlink';
  linkname?: string;
}

export interface BusyboxImageOptions {
  platform?: Platform;
  /** Manifest/config/layer media types (default 'oci'). */
  kind?: 'oci' | 'docker';
  /** Layer compression (default gzip; zstd requires the zstd CLI). */
  compression?: Compression;
  /** Extra entries appended to the same layer. */
  extraFiles?: ExtraFile[];
  /** A second layer with these files (e.g. for multi-layer tests). */
  secondLayer?: ExtraFile[];
  /** Config tweaks merged into `config` (Env, Cmd, Labels, User…). */
  config?: ImageConfig['config'];
  /** Config `created` and history timestamps (default 2024-01-01T00:00:00Z). */
  created?: string;
}

/** Build a deterministic tar of `entries` in memory (small test layers only). */
export { makeTar };

function extraEntries(files: ExtraFile[]): TarEntry[] {
  return files.map((f) => {
    const type = f.type ?? 'file';
    const body = type === 'file' ? Buffer.from(f.content ?? '') : undefined;
    return {
      header: {
        name: f.path.replace(/^\/+/, ''),
        type,
        mode: f.mode ?? (type === 'directory' ? 0o755 : 0o644),
        uid: f.uid ?? 0,
        gid: f.gid ?? 0,
        ...(f.linkname !== undefined ? { linkname: f.linkname } : {}),
        size: body?.length ?? 0,
      },
      body,
    };
  });
}

function compressBytes(tar: Buffer, c: Compression): Buffer {
  if (c === 'none') return tar;
  if (c === 'gzip') return gzipSync(tar);
  const r = spawnSync('zstd', ['-c', '-q', '-3', '-T1', '--no-check'], { input: tar, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr?.toString()}`);
  return r.stdout;
}

function layerMediaType(kind: 'oci' | 'docker', c: Compression): string {
  if (c === 'zstd') return MediaType.OCILayerZstd;
  if (kind === 'docker') return c === 'gzip' ? MediaType.DockerLayerGzip : DockerLayerTar;
  return c === 'gzip' ? MediaType.OCILayerGzip : MediaType.OCILayer;
}

async function layerOf(entries: TarEntry[], kind: 'oci' | 'docker', c: Compression): Promise<Layer> {
  const tar = await makeTar(entries);
  return layerFromBytes(compressBytes(tar, c), layerMediaType(kind, c), sha256(tar));
}

/** The root filesystem entries of the busybox base layer (exported for tests that inspect it). */
export function busyboxEntries(busyboxPath = '/bin/busybox'): TarEntry[] {
  return busyboxRootfsEntries(readFileSync(busyboxPath), BUSYBOX_APPLETS);
}

/** A small, real, runnable base image made from /bin/busybox (see the file comment). */
export async function makeBusyboxImage(opts: BusyboxImageOptions = {}): Promise<Image> {
  const kind = opts.kind ?? 'oci';
  const c = opts.compression ?? 'gzip';
  const platform = opts.platform ?? hostPlatform();
  const created = opts.created ?? BUSYBOX_CREATED;
  const layers: Layer[] = [await layerOf([...busyboxEntries(), ...extraEntries(opts.extraFiles ?? [])], kind, c)];
  const history: History[] = [{ created, created_by: 'kiln test: busybox rootfs' }];
  if (opts.secondLayer) {
    layers.push(await layerOf(extraEntries(opts.secondLayer), kind, c));
    history.push({ created, created_by: 'kiln test: second layer' });
  }
  const cfg: ImageConfig = {
    created,
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: { Env: [DEFAULT_PATH], Cmd: ['sh'], ...(opts.config ?? {}) },
    rootfs: { type: 'layers', diff_ids: await Promise.all(layers.map((l) => l.diffID())) },
    history,
  };
  const raw = Buffer.from(JSON.stringify(cfg));
  return imageFromParts({
    mediaType: async () => (kind === 'docker' ? MediaType.DockerManifest : MediaType.OCIManifest),
    rawConfig: async () => raw,
    layers: async () => layers,
  });
}

export interface RandomImageOptions {
  layers: number;
  /** Bytes of pseudo-random content per layer (one file per layer). */
  layerSize: number;
  /** Changes the content (default 'kiln'); same seed ⇒ same bytes. */
  seed?: string;
  /** Default 'gzip' (random data does not shrink; 'none' is faster). */
  compression?: Compression;
  platform?: Platform;
}

/** A ustar header for one regular file (root-owned, 0644, mtime EPOCH). */
function ustarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(512);
  const put = (off: number, len: number, v: string): void => void h.write(v, off, len, 'latin1');
  const octal = (off: number, len: number, v: number): void =>
    put(off, len, v.toString(8).padStart(len - 1, '0') + '\0');
  put(0, 100, name);
  octal(100, 8, 0o644);
  octal(108, 8, 0);
  octal(116, 8, 0);
  octal(124, 12, size);
  octal(136, 12, Math.floor(EPOCH.getTime() / 1000));
  put(156, 1, '0');
  put(257, 8, 'ustar\u000000');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  put(148, 8, sum.toString(8).padStart(6, '0') + '\0 ');
  return h;
}

/** A one-file tar of `size` pseudo-random bytes (AES-CTR keystream of `seed/index`), generated lazily. */
function randomTar(seed: string, index: number, size: number): Readable {
  const key = createHash('sha256').update(`${seed}/${index}`).digest();
  function* chunks(): Generator<Buffer> {
    yield ustarHeader(`data/layer-${index}.bin`, size);
    const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
    const zero = Buffer.alloc(256 * 1024);
    for (let left = size; left > 0; left -= zero.length) {
      yield cipher.update(zero.subarray(0, Math.min(left, zero.length)));
    }
    yield Buffer.alloc(((512 - (size % 512)) % 512) + 1024);
  }
  return Readable.from(chunks(), { objectMode: false });
}

/**
 * An image with `layers` layers of `layerSize` pseudo-random bytes each, generated as streams (never held in
 * memory), for performance and large-blob tests. Compressed digests are computed lazily by one pass.
 */
export function makeRandomImage(opts: RandomImageOptions): Image {
  const seed = opts.seed ?? 'kiln';
  const c = opts.compression ?? 'gzip';
  const platform = opts.platform ?? hostPlatform();
  const layers = Array.from({ length: opts.layers }, (_, i) =>
    layerFromUncompressed(async () => randomTar(seed, i, opts.layerSize), {
      compression: c,
      what: `random layer ${i}`,
    }),
  );
  return imageFromParts({
    rawConfig: async () => {
      const cfg: ImageConfig = {
        created: BUSYBOX_CREATED,
        architecture: platform.architecture,
        os: platform.os,
        config: { Env: [DEFAULT_PATH] },
        rootfs: { type: 'layers', diff_ids: await Promise.all(layers.map((l) => l.diffID())) },
        history: layers.map((_, i) => ({ created_by: `random layer ${i}` })),
      };
      return Buffer.from(JSON.stringify(cfg));
    },
    layers: async () => layers,
  });
}

/**
 * For `assert.rejects`: the error is a KilnError with `code` and a single-line message naming `file` (the
 * "clear one-line error naming the file" contract for corrupt layouts and archives).
 */
export function kilnErrorNaming(code: string, file: string): (e: unknown) => boolean {
  return (e: unknown): boolean => {
    if (!isKilnError(e, code)) throw new Error(`expected KilnError ${code}, got ${String(e)}`);
    if (e.message.includes('\n')) throw new Error(`expected a one-line message, got ${JSON.stringify(e.message)}`);
    if (!e.message.includes(file)) throw new Error(`"${e.message}" does not name ${file}`);
    return true;
  };
}

/** Run `fn` with a fresh temp directory, removed afterwards whatever happens. */
export async function withTempDir(prefix: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
