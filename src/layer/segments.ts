/**
 * gzip layer blobs cut into members at content-defined tar entry boundaries, so that writing a layer again after a
 * small change copies most members from the previous blob instead of reading and compressing their files again.
 *
 * Why: an incremental COPY (src/engine/reuse.ts) leaves the previous build's files in the new layer as hard links;
 * with 5,000 source files and one edit, reading and compressing the other 4,999 was most of a warm build.
 *
 * Members: a member ends after a tar entry (header, body, padding) of B bytes with probability B / TARGET, decided
 * by a hash of the entry's path — like a random cut every TARGET bytes on average, but each decision depends on
 * that entry alone, so after a change the cuts fall where they fell before from the next entry on. A file body
 * larger than PIECE gets members of its own (PIECE bytes each); MAX_MEMBER bounds a member (almost never reached). Each member is `gzipMember` of its bytes (a function of the bytes, the level
 * and zlib): a member reused from the previous blob is byte for byte what compressing it again would give, and the
 * blob is the same whether or not anything was reused.
 *
 * A member is reused when its key (sha256 of its header bytes and of the device/inode of its file bodies) is in the
 * previous layer's member index and the previous member, inflated, has the recorded length and the same header
 * bytes. Same inode means same bytes because an index only ever describes the live files of the layer dir beside
 * it: layer dirs are immutable (nothing writes into their files; a COPY replaces a changed file with a new one),
 * the index is written when the dir is adopted and removed before any other dir takes that name (adopt, extract),
 * so an inode it names is in use by that dir's file and cannot belong to any other file.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzip, type ZlibOptions } from 'node:zlib';
import { KilnError } from '../errors.js';
import { digestHex } from '../oci/digest.js';
import { gzipMember } from './compression.js';
import type { TarBody, TarItem } from './writer.js';

const TARGET = 1 << 20;
const MAX_MEMBER = 8 << 20;
const PIECE = 1 << 20;

const gunzipAsync = promisify<Buffer, ZlibOptions, Buffer>(gunzip);

/** One member of a blob: key, offset and size in the blob, uncompressed size. */
export interface MemberRecord {
  k: string;
  o: number;
  c: number;
  u: number;
}

/** What a later write needs to reuse a blob's members (kept next to the layer dir: `<dir>.members.json`). */
export interface MemberIndex {
  v: 1;
  zlib: string;
  level: number;
  /** The blob's digest. */
  blob: string;
  members: MemberRecord[];
}

/** Where a write may take members from: the previous layer dir of the same step and the blob store. */
export interface ReuseFrom {
  dir: string;
  blobsDir: string;
}

export interface SegmentedResult {
  diffID: string;
  digest: string;
  size: number;
  diffSize: number;
  /** The members written (the caller completes the index with the blob digest). */
  members: MemberRecord[];
  /** Members copied from the previous blob. */
  reused: number;
}

/** The sidecar holding a layer dir's member index. */
export const memberIndexFile = (layerDir: string): string => `${layerDir}.members.json`;

/** A well-mixed 32-bit hash of a path (FNV-1a, then murmur3's finaliser), as a fraction in [0, 1). */
function pathHash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 2 ** 32;
}

interface Slice {
  body: TarBody;
  offset: number;
  length: number;
}

interface Segment {
  items: (Buffer | TarBody | Slice)[];
  bytes: number;
  key: Hash;
}

interface Member {
  key: string;
  compressed: Buffer;
  uncompressed: Buffer;
  reused: boolean;
}

const isSlice = (x: Buffer | TarBody | Slice): x is Slice => !Buffer.isBuffer(x) && 'body' in x;

/** `length` bytes of a tar body's file from `offset`, read synchronously (one open, no thread-pool round trips). */
export function readRange(b: Pick<TarBody, 'abs' | 'rel'>, offset: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  readInto(b, offset, length, buf, 0);
  return buf;
}

/** readRange into `buf` at `at` (a member's bytes are read into one buffer: no copy of each file's afterwards). */
function readInto(b: Pick<TarBody, 'abs' | 'rel'>, offset: number, length: number, buf: Buffer, at: number): void {
  const fd = openSync(b.abs, 'r');
  try {
    let off = 0;
    while (off < length) {
      const n = readSync(fd, buf, at + off, length - off, offset + off);
      if (n === 0) {
        throw new KilnError('LAYER_WRITE_FAILED', `file "${b.rel}" shrank while the layer was being written`);
      }
      off += n;
    }
  } finally {
    closeSync(fd);
  }
}

/** A previous blob's members by key, if its index fits this write (same zlib, same level, blob present). */
class Reuse {
  private fh: Promise<FileHandle> | undefined;
  private constructor(
    private readonly blobFile: string,
    readonly byKey: Map<string, MemberRecord>,
  ) {}

  static async open(from: ReuseFrom, level: number): Promise<Reuse | undefined> {
    try {
      const ix = JSON.parse(await readFile(memberIndexFile(from.dir), 'utf8')) as MemberIndex;
      if (ix.v !== 1 || ix.zlib !== process.versions.zlib || ix.level !== level || !Array.isArray(ix.members)) {
        return undefined;
      }
      const byKey = new Map<string, MemberRecord>();
      for (const m of ix.members) if (!byKey.has(m.k)) byKey.set(m.k, m);
      return new Reuse(join(from.blobsDir, 'sha256', digestHex(ix.blob)), byKey);
    } catch {
      return undefined;
    }
  }

  async member(m: MemberRecord): Promise<{ compressed: Buffer; uncompressed: Buffer }> {
    this.fh ??= open(this.blobFile, 'r');
    const fh = await this.fh;
    const compressed = Buffer.allocUnsafe(m.c);
    const { bytesRead } = await fh.read(compressed, 0, m.c, m.o);
    if (bytesRead !== m.c) throw new Error('previous blob is shorter than its index');
    // one output buffer of the recorded size (not zlib's 16 KiB chunks, copied together afterwards)
    return { compressed, uncompressed: await gunzipAsync(compressed, { chunkSize: Math.max(64, m.u) }) };
  }

  async close(): Promise<void> {
    if (this.fh) await (await this.fh.catch(() => undefined))?.close();
  }
}

/** Do the header/padding bytes of `seg` sit at their places in `raw`? */
function sameHeaders(seg: Segment, raw: Buffer): boolean {
  let off = 0;
  for (const it of seg.items) {
    if (Buffer.isBuffer(it)) {
      if (!raw.subarray(off, off + it.length).equals(it)) return false;
      off += it.length;
    } else off += isSlice(it) ? it.length : it.size;
  }
  return off === raw.length;
}

/**
 * Write the tar `items` as a gzip blob of content-defined members to `out` (appending, in order), with members
 * from `reuseFrom`'s blob where they are provably the same. Compression runs on the thread pool, several members
 * at once; file bodies are read only for members that are not reused.
 */
export async function writeSegmented(
  batches: AsyncIterable<TarItem[]>,
  out: FileHandle,
  o: { level: number; reuseFrom?: ReuseFrom | undefined; parallel?: number },
): Promise<SegmentedResult> {
  const reuse = o.reuseFrom ? await Reuse.open(o.reuseFrom, o.level) : undefined;
  const parallel = o.parallel ?? Math.max(2, availableParallelism() + 1);
  const diff = createHash('sha256');
  const blob = createHash('sha256');
  let diffSize = 0;
  let size = 0;
  let reused = 0;
  const members: MemberRecord[] = [];
  const queue: Promise<Member>[] = [];

  const produce = async (seg: Segment): Promise<Member> => {
    const key = seg.key.digest('hex').slice(0, 32);
    const rec = reuse?.byKey.get(key);
    if (reuse && rec && rec.u === seg.bytes) {
      try {
        const m = await reuse.member(rec);
        if (m.uncompressed.length === seg.bytes && sameHeaders(seg, m.uncompressed)) return { key, ...m, reused: true };
      } catch {
        /* the previous blob is gone or damaged: write the member afresh */
      }
    }
    // the member's bytes in one buffer, file bodies read straight into it (W1's 5,000 sources: no buffer per file
    // and no 21 MB copied into the members afterwards — Buffer.concat was ~60 ms of a loaded fresh build's layer)
    const only = seg.items.length === 1 ? seg.items[0] : undefined;
    let uncompressed: Buffer;
    if (only !== undefined && Buffer.isBuffer(only)) uncompressed = only;
    else {
      uncompressed = Buffer.allocUnsafe(seg.bytes);
      let off = 0;
      for (const it of seg.items) {
        if (Buffer.isBuffer(it)) off += it.copy(uncompressed, off);
        else if (isSlice(it)) {
          readInto(it.body, it.offset, it.length, uncompressed, off);
          off += it.length;
        } else {
          readInto(it, 0, it.size, uncompressed, off);
          off += it.size;
        }
      }
      if (off !== seg.bytes) throw new KilnError('LAYER_WRITE_FAILED', 'a layer member came out of the wrong size');
    }
    return { key, compressed: await gzipMember(uncompressed, o.level), uncompressed, reused: false };
  };

  const emit = async (m: Member): Promise<void> => {
    diff.update(m.uncompressed);
    diffSize += m.uncompressed.length;
    blob.update(m.compressed);
    members.push({ k: m.key, o: size, c: m.compressed.length, u: m.uncompressed.length });
    size += m.compressed.length;
    if (m.reused) reused++;
    await out.write(m.compressed);
  };

  const submit = async (seg: Segment): Promise<void> => {
    const p = produce(seg);
    p.catch(() => undefined); // awaited in order below
    queue.push(p);
    while (queue.length >= parallel) await emit(await (queue.shift() as Promise<Member>));
  };

  const fresh = (): Segment => ({ items: [], bytes: 0, key: createHash('sha256') });
  let seg = fresh();
  let entryStart = 0; // seg.bytes where the current entry began
  try {
    for await (const batch of batches)
      for (const it of batch) {
        if (Buffer.isBuffer(it)) {
          seg.items.push(it);
          seg.bytes += it.length;
          seg.key.update(it);
        } else if ('abs' in it) {
          if (it.size > PIECE) {
            // a large body: the member ends before it, and it is cut into members of its own
            if (seg.bytes > 0) await submit(seg);
            entryStart = 0; // the padding and end of this entry start the next member
            for (let off = 0; off < it.size; off += PIECE) {
              const piece = fresh();
              const length = Math.min(PIECE, it.size - off);
              piece.items.push({ body: it, offset: off, length });
              piece.bytes = length;
              piece.key.update(`piece\0${it.dev}:${it.ino}:${it.size}:${off}:${length}\0`);
              await submit(piece);
            }
            seg = fresh();
          } else {
            seg.items.push(it);
            seg.bytes += it.size;
            seg.key.update(`\0body\0${it.dev}:${it.ino}:${it.size}\0`);
          }
        } else {
          const entryBytes = seg.bytes - entryStart;
          if (seg.bytes >= MAX_MEMBER || pathHash(it.end) * TARGET < entryBytes) {
            await submit(seg);
            seg = fresh();
          }
          entryStart = seg.bytes;
        }
      }
    if (seg.bytes > 0) await submit(seg);
    while (queue.length > 0) await emit(await (queue.shift() as Promise<Member>));
  } finally {
    await Promise.allSettled(queue);
    await reuse?.close();
  }
  return {
    diffID: 'sha256:' + diff.digest('hex'),
    digest: 'sha256:' + blob.digest('hex'),
    size,
    diffSize,
    members,
    reused,
  };
}
