/**
 * Stream compression for layers and build contexts: detection by magic bytes and streaming (de)compressors.
 * gzip uses node's zlib; zstd, bzip2 and xz (not in Node 20's zlib) run the Debian `zstd`/`bzip2`/`xz` tools as
 * pipes, so nothing is ever held in memory.
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Duplex, PassThrough, Readable, Transform, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import { createGunzip, deflateRaw, gzip, constants as zc, type ZlibOptions } from 'node:zlib';
import { KilnError } from '../errors.js';

export type Compression = 'gzip' | 'zstd' | 'bzip2' | 'xz' | 'none';

/** Identify a compression format from the first bytes of a stream (at least 6 bytes for xz). */
export function detectCompression(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (head.length >= 3 && head.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2';
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  return 'none';
}

/**
 * Read the first `n` bytes of a stream without consuming them: returns them and a stream replaying everything.
 */
export async function peek(
  input: AsyncIterable<Buffer> | Iterable<Buffer>,
  n: number,
): Promise<{ head: Buffer; stream: Readable }> {
  const it: AsyncIterator<Buffer> | Iterator<Buffer> =
    Symbol.asyncIterator in input ? input[Symbol.asyncIterator]() : input[Symbol.iterator]();
  const got: Buffer[] = [];
  let len = 0;
  let ended = false;
  while (len < n) {
    const r = await it.next();
    if (r.done) {
      ended = true;
      break;
    }
    got.push(r.value);
    len += r.value.length;
  }
  const head = Buffer.concat(got);
  async function* replay(): AsyncGenerator<Buffer> {
    if (head.length) yield head;
    if (ended) return;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  }
  return { head: head.subarray(0, n), stream: Readable.from(replay(), { objectMode: false }) };
}

/**
 * A Duplex that pipes through an external command (stdin → stdout). A non-zero exit fails the stream with a
 * KilnError naming `what`.
 */
export function commandTransform(cmd: string, args: string[], what: string): Duplex {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  const out = new PassThrough();
  const duplex = Duplex.from({ writable: child.stdin, readable: out });
  child.stdout.pipe(out, { end: false });
  let exited = false;
  let stdoutEnded = false;
  let code: number | null = null;
  let spawnErr: Error | undefined;
  const finish = (): void => {
    if (!exited || !stdoutEnded) return;
    if (spawnErr || code !== 0) {
      const msg = spawnErr
        ? `${what}: cannot run ${cmd}: ${spawnErr.message}`
        : `${what}: ${cmd} failed (exit ${code}): ${stderr.trim().split('\n')[0] ?? ''}`;
      out.destroy(new KilnError('COMPRESSION_FAILED', msg, spawnErr ? { hint: `install ${cmd}` } : {}));
    } else out.end();
  };
  child.stdout.on('end', () => {
    stdoutEnded = true;
    finish();
  });
  child.on('error', (e) => {
    spawnErr = e;
    exited = true;
    stdoutEnded = true;
    finish();
  });
  child.on('close', (c) => {
    code = c;
    exited = true;
    stdoutEnded = true;
    finish();
  });
  // If the consumer goes away early, do not leave the process running.
  duplex.on('close', () => {
    if (!exited) child.kill('SIGKILL');
  });
  child.stdin.on('error', () => {
    /* EPIPE when the tool exits early; the exit code reports it */
  });
  return duplex;
}

/** A decompressing transform for `kind` ('none' gives a pass-through). */
export function decompressor(kind: Compression, what: string): Duplex {
  switch (kind) {
    case 'gzip':
      return createGunzip();
    case 'zstd': {
      const z = zstdBinding();
      return z ? new z.DecompressStream() : commandTransform('zstd', ['-d', '-c', '-q'], what);
    }
    case 'bzip2':
      return commandTransform('bzip2', ['-d', '-c', '-q'], what);
    case 'xz':
      return commandTransform('xz', ['-d', '-c', '-q'], what);
    default:
      return new PassThrough();
  }
}

/** Autodetect and decompress: returns the plain stream and the detected format. */
export async function decompressAuto(
  input: AsyncIterable<Buffer> | Iterable<Buffer>,
  what: string,
): Promise<{ stream: Readable; compression: Compression }> {
  const { head, stream } = await peek(input, 6);
  const compression = detectCompression(head);
  if (compression === 'none') return { stream, compression };
  const d = decompressor(compression, what);
  stream.on('error', (e) => d.destroy(e));
  stream.pipe(d);
  return { stream: d as unknown as Readable, compression };
}

/** A compressing transform. gzip level defaults to 1 (BestSpeed, like go-containerregistry); zstd to 3. */
export function compressor(kind: 'gzip' | 'zstd' | 'none', level?: number): Duplex {
  switch (kind) {
    case 'gzip':
      return new BlockGzip({ level: level ?? zc.Z_BEST_SPEED });
    case 'zstd': {
      const z = zstdBinding();
      if (!z) return commandTransform('zstd', ['-c', '-q', `-${level ?? 3}`], 'zstd compression');
      // zstd's own worker threads: one per core (the frame format does not depend on them)
      return new z.CompressStream({ compressionLevel: level ?? 3, nbWorkers: Math.max(1, availableParallelism()) });
    }
    default:
      return new PassThrough();
  }
}

/** The parts of the zstd-napi binding kiln uses (typed here: the package is an optional dependency). */
interface ZstdBinding {
  CompressStream: new (p?: { compressionLevel?: number; nbWorkers?: number }) => Duplex;
  DecompressStream: new () => Duplex;
}

let zstd: ZstdBinding | null | undefined;

/**
 * zstd-napi (libzstd through Node-API, an optional dependency built at install): in-process, multi-threaded zstd.
 * Where it could not be installed, the Debian `zstd` tool is piped instead — same format, one process per layer.
 */
export function zstdBinding(): ZstdBinding | null {
  if (zstd === undefined) {
    try {
      zstd = process.env.KILN_ZSTD === 'cli' ? null : (createRequire(import.meta.url)('zstd-napi') as ZstdBinding);
    } catch {
      zstd = null;
    }
  }
  return zstd;
}

const gzipAsync = promisify<Buffer, ZlibOptions, Buffer>(gzip);
const deflateRawAsync = promisify<Buffer, ZlibOptions, Buffer>(deflateRaw);

/** Size of the uncompressed block each gzip member holds. */
export const GZIP_BLOCK = 1 << 20;
/** Bytes of a block compressed at level 1 to decide whether the block is worth compressing at all. */
const SAMPLE = 1 << 16;
/** A sample that does not get below this fraction of its size is incompressible: the block is stored (level 0). */
const STORE_RATIO = 0.97;

/** More than deflate can ever emit for `n` input bytes (zlib's deflateBound plus the gzip header and trailer). */
export function memberBound(n: number): number {
  return n + (n >> 6) + 1024;
}

/**
 * One gzip member of a multi-member layer blob, on the thread pool: at `level`, or stored when a 64 KiB sample does
 * not shrink at level 1 (incompressible data). A function of (bytes, level, zlib version) alone, so a member can be
 * reused from an earlier blob (src/layer/segments.ts) and match what compressing it again would give.
 */
export async function gzipMember(b: Buffer, level: number): Promise<Buffer> {
  if (level > 0 && b.length > SAMPLE) {
    const sample = b.subarray(0, SAMPLE);
    const out = await deflateRawAsync(sample, { level: 1 });
    if (out.length > sample.length * STORE_RATIO) level = 0;
  }
  // An output buffer larger than any member: zlib's stored-block sizes depend on the output space available, so
  // this keeps the bytes a function of the input alone.
  return gzipAsync(b, { level, memLevel: 9, chunkSize: memberBound(b.length) });
}

export interface BlockGzipOptions {
  /** zlib level for compressible blocks (0–9). */
  level: number;
  /** Uncompressed bytes per member (default GZIP_BLOCK). */
  block?: number;
  /** Blocks compressed at once on libuv's thread pool (default: cores + 1, at least 2). */
  parallel?: number;
}

/**
 * Parallel, adaptive gzip: the stream is cut into fixed 1 MiB blocks and each block becomes one gzip member
 * (RFC 1952 allows concatenated members; Go's gzip.Reader — containerd, skopeo, umoci, docker pull — and zlib's
 * gunzip read them as one stream). Why: one zlib stream uses one core and spends ~25 ms per MiB on incompressible
 * data (the assets of a typical image: media, archives, binaries already compressed). Here several blocks are
 * compressed at once on libuv's thread pool, and a block whose first 64 KiB do not shrink at level 1 is stored
 * (level 0: memcpy speed). The output depends only on the input bytes and the options — block boundaries are fixed
 * offsets — so equal layers still get equal digests. A stream shorter than one block is a single member.
 */
export class BlockGzip extends Transform {
  private readonly level: number;
  private readonly block: number;
  private readonly parallel: number;
  private parts: Buffer[] = [];
  private filled = 0;
  private members = 0;
  /** Compressions in flight, in stream order. */
  private readonly queue: Promise<Buffer>[] = [];

  constructor(opts: BlockGzipOptions) {
    super();
    this.level = opts.level;
    this.block = opts.block ?? GZIP_BLOCK;
    this.parallel = opts.parallel ?? Math.max(2, availableParallelism() + 1);
  }

  private submit(b: Buffer): void {
    const p = gzipMember(b, this.level);
    p.catch(() => undefined); // observed when dequeued
    this.queue.push(p);
    this.members++;
  }

  /** Emit finished members in order until at most `keep` compressions are in flight. */
  private async drain(keep: number): Promise<void> {
    while (this.queue.length > keep) {
      const head = this.queue.shift() as Promise<Buffer>;
      this.push(await head);
    }
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let off = 0;
    while (off < chunk.length) {
      const take = Math.min(this.block - this.filled, chunk.length - off);
      this.parts.push(off === 0 && take === chunk.length ? chunk : chunk.subarray(off, off + take));
      this.filled += take;
      off += take;
      if (this.filled === this.block) {
        this.submit(this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.filled));
        this.parts = [];
        this.filled = 0;
      }
    }
    this.drain(this.parallel - 1).then(() => cb(), cb);
  }

  override _flush(cb: TransformCallback): void {
    if (this.filled > 0 || this.members === 0) {
      this.submit(Buffer.concat(this.parts, this.filled));
      this.parts = [];
      this.filled = 0;
    }
    this.drain(0).then(() => cb(), cb);
  }
}
