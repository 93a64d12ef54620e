/**
 * Streaming layer (de)compression. gzip uses node's zlib; zstd runs the `zstd` CLI (Debian package `zstd`) as a
 * child process so it stays streaming with no native npm module. Output streams fail with a KilnError when the
 * input is corrupt or the tool exits non-zero.
 */
import { spawn } from 'node:child_process';
import { PassThrough, pipeline, type Readable } from 'node:stream';
import { constants, createGunzip, createGzip } from 'node:zlib';
import { KilnError } from '../errors.js';

export type Compression = 'gzip' | 'zstd' | 'none';

/** Detect compression from the first bytes of a blob (gzip 1f 8b, zstd 28 b5 2f fd). */
export function sniffCompression(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return 'none';
}

/** Decompress `input` (no-op for 'none'). `what` names the source for errors. */
export function decompress(input: Readable, c: Compression, what = 'layer'): Readable {
  if (c === 'none') return input;
  if (c === 'gzip') return through(input, createGunzip({ chunkSize: 64 * 1024 }), what, 'gunzip');
  return runFilter('zstd', ['-d', '-c', '-q'], input, what);
}

/**
 * Compress `input`. gzip at the default level with no header timestamp (node writes mtime 0), so the output is
 * a deterministic function of the input for a given zlib; zstd level 3 single-threaded, also deterministic.
 */
export function compress(input: Readable, c: Compression, what = 'layer', level?: number): Readable {
  if (c === 'none') return input;
  if (c === 'gzip') {
    return through(
      input,
      createGzip({ level: level ?? constants.Z_DEFAULT_COMPRESSION, chunkSize: 64 * 1024 }),
      what,
      'gzip',
    );
  }
  return runFilter('zstd', ['-c', '-q', `-${level ?? 3}`, '-T1', '--no-check'], input, what);
}

function through(input: Readable, t: NodeJS.ReadWriteStream & Readable, what: string, op: string): Readable {
  const out = new PassThrough({ highWaterMark: 64 * 1024 });
  // Errors of input or the (de)compressor end `out` with a KilnError; a reader that stops early tears it all down.
  pipeline(input, t, (e) => {
    if (!e || out.destroyed) return;
    out.destroy(
      e instanceof KilnError
        ? e
        : new KilnError('DECOMPRESS_FAILED', `${what}: ${op} failed: ${e.message}`, {
            cause: e,
            hint: 'the blob is corrupt or truncated',
          }),
    );
  });
  out.on('close', () => {
    if (!t.readableEnded) t.destroy();
  });
  t.pipe(out);
  return out;
}

function runFilter(cmd: string, args: string[], input: Readable, what: string): Readable {
  const out = new PassThrough({ highWaterMark: 64 * 1024 });
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let failed = false;
  const fail = (e: Error): void => {
    if (failed) return;
    failed = true;
    child.kill('SIGKILL');
    input.destroy();
    out.destroy(e);
  };
  child.on('error', (e: NodeJS.ErrnoException) =>
    fail(
      new KilnError('TOOL_MISSING', `${what}: cannot run ${cmd}: ${e.message}`, {
        cause: e,
        hint: e.code === 'ENOENT' ? `install it: apt-get install -y ${cmd}` : undefined,
      }),
    ),
  );
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 2000) stderr += d.toString();
  });
  input.on('error', (e) => fail(e));
  child.stdin.on('error', () => {
    /* EPIPE when the tool exits early; reported by the exit code */
  });
  pipeline(input, child.stdin, () => undefined);
  child.stdout.pipe(out, { end: false });
  child.on('close', (code, signal) => {
    if (failed) return;
    if (code === 0) out.end();
    else
      fail(
        new KilnError(
          'DECOMPRESS_FAILED',
          `${what}: ${cmd} failed (${code ?? signal}): ${stderr.trim().split('\n')[0] ?? ''}`.trim(),
          { hint: 'the blob is corrupt or truncated' },
        ),
      );
  });
  out.on('close', () => {
    if (child.exitCode === null && !failed) {
      failed = true;
      child.kill('SIGKILL');
      input.destroy();
    }
  });
  return out;
}
