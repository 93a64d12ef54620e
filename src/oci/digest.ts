/**
 * sha256 digests: parsing, computing, and verifying while streaming. Every byte kiln reads from a registry,
 * layout or archive passes through `verifyingStream`, so corrupt or tampered content fails loudly at the end of
 * the stream instead of landing in a store or an image.
 */
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { KilnError } from '../errors.js';

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

/** True when `s` is a well-formed sha256 digest (`sha256:` + 64 lowercase hex). */
export function isDigest(s: string): boolean {
  return DIGEST_RE.test(s);
}

/** Validate a digest string, throwing a typed error naming where it came from. */
export function parseDigest(s: string, where = 'digest'): string {
  if (!isDigest(s)) {
    throw new KilnError('DIGEST_INVALID', `${where}: invalid digest "${s}"`, {
      hint: 'digests look like sha256:<64 lowercase hex characters>',
    });
  }
  return s;
}

/** The hex part of a digest (used as a file name under blobs/sha256). */
export function digestHex(d: string): string {
  return parseDigest(d).slice('sha256:'.length);
}

/** sha256 digest of an in-memory value (manifests and configs only — layers are streamed). */
export function sha256(data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/**
 * A pass-through stream that hashes and counts what flows through it. `digest()`/`size()` are valid once the
 * stream has ended. Used to compute layer digests in the same pass that writes or uploads them.
 */
export class DigestingStream extends Transform {
  private readonly hash = createHash('sha256');
  private bytes = 0;
  private result: string | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.result = 'sha256:' + this.hash.digest('hex');
    cb();
  }

  /** The digest of everything that passed; throws if the stream has not finished. */
  digest(): string {
    if (this.result === undefined) throw new Error('DigestingStream: digest() before end of stream');
    return this.result;
  }

  size(): number {
    return this.bytes;
  }
}

/**
 * A pass-through stream that fails with DIGEST_MISMATCH (or SIZE_MISMATCH) at end of stream when the bytes do not
 * match `expected`. `what` names the thing for the error message (e.g. "blob sha256:… from 127.0.0.1:5000/app").
 */
export function verifyingStream(expected: string, what: string, expectedSize?: number): Transform {
  parseDigest(expected, what);
  const hash = createHash('sha256');
  let bytes = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      bytes += chunk.length;
      if (expectedSize !== undefined && expectedSize >= 0 && bytes > expectedSize) {
        cb(new KilnError('SIZE_MISMATCH', `${what}: more than the expected ${expectedSize} bytes`));
        return;
      }
      cb(null, chunk);
    },
    flush(cb) {
      const got = 'sha256:' + hash.digest('hex');
      if (expectedSize !== undefined && expectedSize >= 0 && bytes !== expectedSize) {
        cb(new KilnError('SIZE_MISMATCH', `${what}: expected ${expectedSize} bytes, got ${bytes}`));
      } else if (got !== expected) {
        cb(
          new KilnError('DIGEST_MISMATCH', `${what}: content digest ${got} does not match ${expected}`, {
            hint: 'the content is corrupt or was tampered with',
          }),
        );
      } else cb();
    },
  });
}
