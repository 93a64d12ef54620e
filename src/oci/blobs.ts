/**
 * Content-addressed blob storage. `BlobSource` is the read side every blob-backed image uses (a blob directory,
 * an indexed tar, …); `BlobDir` is a `blobs/sha256/<hex>` directory that also writes, atomically: bytes go to a
 * temp file in the same directory, are hashed on the way, fsynced (not in an ephemeral home), and only renamed into
 * place when the digest (and size) match — so a reader never sees a half-written or wrong blob.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, pipeline as streamPipeline } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { randomBytes } from 'node:crypto';
import { KilnError } from '../errors.js';
import { DigestingStream, digestHex, parseDigest, verifyingStream } from './digest.js';
import type { Descriptor } from './types.js';

/** Largest JSON document (manifest/config/index) kiln will read into memory. */
export const MAX_JSON_BLOB = 32 * 1024 * 1024;

/** Read side of a content-addressed blob store. Every stream it returns verifies the digest (and size if given). */
export interface BlobSource {
  /** Human-readable location for error messages (a directory or tar path). */
  readonly where: string;
  has(digest: string): Promise<boolean>;
  /** A fresh verifying stream of the blob; fails with BLOB_NOT_FOUND, DIGEST_MISMATCH or SIZE_MISMATCH. */
  open(digest: string, size?: number): Promise<Readable>;
}

/**
 * `src` piped into `dest` with errors forwarded both ways (stream.pipeline), returning `dest`. Use this rather
 * than `src.pipe(dest)`, which neither forwards source errors nor cleans up when the reader stops early.
 */
export function chain<T extends NodeJS.ReadWriteStream>(src: NodeJS.ReadableStream, dest: T): T {
  streamPipeline(src, dest, () => undefined);
  return dest;
}

/** Read a (small, JSON) blob fully, verified. Refuses blobs larger than MAX_JSON_BLOB. */
export async function readBlob(src: BlobSource, digest: string, size?: number): Promise<Buffer> {
  if (size !== undefined && size > MAX_JSON_BLOB) {
    throw new KilnError('BLOB_TOO_LARGE', `${src.where}: blob ${digest} is ${size} bytes, too large for a manifest`);
  }
  return streamToBuffer(await src.open(digest, size), MAX_JSON_BLOB, `${src.where}: blob ${digest}`);
}

/** Collect a stream into a Buffer, failing past `limit` bytes. For manifests/configs only. */
export async function streamToBuffer(s: Readable, limit = MAX_JSON_BLOB, what = 'stream'): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of s) {
    const b = c as Buffer;
    n += b.length;
    if (n > limit) {
      s.destroy();
      throw new KilnError('BLOB_TOO_LARGE', `${what}: more than ${limit} bytes`);
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

/** Parse JSON from a blob, with a one-line error naming where it came from. */
export function parseJSON<T>(buf: Buffer | string, where: string): T {
  try {
    return JSON.parse(buf.toString()) as T;
  } catch (e) {
    throw new KilnError('JSON_INVALID', `${where}: invalid JSON (${(e as Error).message})`, { cause: e });
  }
}

function tmpName(): string {
  return `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
}

/** A `<root>/sha256/<hex>` blob directory (root is usually `<layout>/blobs`). */
export class BlobDir implements BlobSource {
  readonly root: string;
  readonly where: string;

  /**
   * @param o.durable fsync each blob before it is renamed into place (default). Off only for a store nobody reads
   * after this process (an ephemeral KILN_HOME): a crash takes the store with it, and the fsyncs were round trips to
   * the disk on a build's critical path (the base image config before its first step, the cache layers it fetches).
   */
  constructor(
    root: string,
    private readonly o: { durable?: boolean } = {},
  ) {
    this.root = root;
    this.where = root;
  }

  /** Path of a blob file (whether or not it exists). */
  path(digest: string): string {
    return join(this.root, 'sha256', digestHex(digest));
  }

  async has(digest: string): Promise<boolean> {
    try {
      return (await stat(this.path(digest))).isFile();
    } catch {
      return false;
    }
  }

  async open(digest: string, size?: number): Promise<Readable> {
    const p = this.path(digest);
    const fh = await open(p, 'r').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        throw new KilnError('BLOB_NOT_FOUND', `${p}: blob ${digest} is missing`, { cause: e });
      }
      throw e;
    });
    const rs = fh.createReadStream();
    const v = verifyingStream(digest, p, size);
    return chain(rs, v);
  }

  /**
   * Store a stream as a blob. With `expected`, the content must hash (and count) to it, else DIGEST_MISMATCH /
   * SIZE_MISMATCH and nothing is left behind. If the blob already exists the stream is still consumed and checked.
   */
  async write(
    stream: Readable,
    expected?: { digest: string; size?: number },
    mediaType = 'application/octet-stream',
  ): Promise<Descriptor> {
    if (expected) parseDigest(expected.digest, 'expected blob digest');
    const dir = join(this.root, 'sha256');
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, tmpName());
    if (expected && expected.size !== undefined && (await this.has(expected.digest))) {
      // Already stored (content addressed): no need to read the stream again. Refresh its mtime so a concurrent
      // store GC treats it as in use.
      stream.destroy();
      await this.touch(expected.digest);
      return { mediaType, digest: expected.digest, size: expected.size };
    }
    const hasher = new DigestingStream();
    const what = expected ? `blob ${expected.digest} for ${this.root}` : `blob for ${this.root}`;
    try {
      const ws = createWriteStream(tmp, { flags: 'wx', mode: 0o644 });
      if (expected) await pipeline(stream, hasher, verifyingStream(expected.digest, what, expected.size), ws);
      else await pipeline(stream, hasher, ws);
      if (this.o.durable !== false) {
        const fh = await open(tmp, 'r+');
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
      }
      const digest = hasher.digest();
      const size = hasher.size();
      await rename(tmp, this.path(digest));
      return { mediaType, digest, size };
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /** Store an in-memory blob (manifests, configs). */
  async writeBytes(buf: Buffer | string, mediaType?: string): Promise<Descriptor> {
    return this.write(Readable.from([Buffer.from(buf)]), undefined, mediaType);
  }

  /** Every complete blob digest in the directory (temp files skipped). */
  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(join(this.root, 'sha256'));
    } catch {
      return [];
    }
    return names.filter((n) => /^[a-f0-9]{64}$/.test(n)).map((n) => 'sha256:' + n);
  }

  /** Set a blob's mtime to now (GC grace periods count from it). No error if the blob is missing. */
  async touch(digest: string): Promise<void> {
    const now = new Date();
    await utimes(this.path(digest), now, now).catch(() => undefined);
  }

  /** Delete a blob (no error if it is already gone). */
  async remove(digest: string): Promise<void> {
    await unlink(this.path(digest)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
  }

  /** Remove leftover temp files older than `olderThanMs` (crashed writers). */
  async cleanTemp(olderThanMs = 24 * 3600 * 1000): Promise<void> {
    const dir = join(this.root, 'sha256');
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    const now = Date.now();
    for (const n of names) {
      if (!n.startsWith('.tmp-')) continue;
      const st = await stat(join(dir, n)).catch(() => undefined);
      if (st && now - st.mtimeMs > olderThanMs) await rm(join(dir, n), { force: true });
    }
  }

  /** A plain read stream of a blob without verification (for copying into tars after verification elsewhere). */
  rawStream(digest: string): Readable {
    return createReadStream(this.path(digest));
  }
}
