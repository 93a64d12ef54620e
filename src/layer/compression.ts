/**
 * Stream compression for layers and build contexts: detection by magic bytes and streaming (de)compressors.
 * gzip uses node's zlib; zstd, bzip2 and xz (not in Node 20's zlib) run the Debian `zstd`/`bzip2`/`xz` tools as
 * pipes, so nothing is ever held in memory.
 */
import { spawn } from 'node:child_process';
import { Duplex, PassThrough, Readable } from 'node:stream';
import { createGunzip, createGzip, constants as zc } from 'node:zlib';
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
    case 'zstd':
      return commandTransform('zstd', ['-d', '-c', '-q'], what);
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
      return createGzip({ level: level ?? zc.Z_BEST_SPEED, memLevel: 9 });
    case 'zstd':
      return commandTransform('zstd', ['-c', '-q', `-${level ?? 3}`], 'zstd compression');
    default:
      return new PassThrough();
  }
}
