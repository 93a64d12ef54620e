/**
 * The layer writer: turns a layer directory — an overlay upper dir (whiteouts as 0/0 char devices, opaque dirs
 * marked with the `user.overlay.opaque`/`trusted.overlay.opaque` xattr) or a plain directory — into an OCI layer
 * blob in one streaming pass: walk → tar → (diffID sha256) → gzip/zstd/none → (digest sha256, size) → temp file.
 *
 * The tar matches containerd's ChangeWriter (what BuildKit's exporter produces) entry for entry: walk order
 * (depth first, each directory's names in byte order, parents before children), PAX format via ./tarformat.ts,
 * permission bits incl. setuid/setgid/sticky, uid/gid as on disk (as seen inside the build's user namespace), no
 * user/group names, no atime/ctime, mtimes truncated to seconds and clamped to SOURCE_DATE_EPOCH when given,
 * `security.capability` as a `SCHILY.xattr.` record, hardlinks (same dev+ino, nlink > 1) as links to the first
 * name written, sockets skipped. Whiteouts are written as containerd 2.x does: empty regular files `.wh.<name>`
 * with mode 0, owner 0:0 and mtime 0 (containerd also sets atime/ctime, but Go's tar.Writer drops them for a header
 * without an explicit format); an opaque directory gets `.wh..wh..opq` (same header) as its first child.
 */
import { coalesce } from '../util/coalesce.js';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  createWriteStream,
  lstatSync,
  openSync,
  readSync,
  readdirSync,
  readlinkSync,
  type BigIntStats,
  type Stats,
} from 'node:fs';
import { lstat, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KilnError } from '../errors.js';
import { DigestingStream } from '../oci/digest.js';
import { MediaType } from '../oci/mediatypes.js';
import { readXattrsRecursive } from './fsops.js';
import { compressor } from './compression.js';
import { encodeHeader, padding, tarHeader, trailer, type TarHeader } from './tarformat.js';
import { readRange, writeSegmented, type MemberIndex, type ReuseFrom, type SegmentedResult } from './segments.js';
import { writeFileAtomic } from '../util/atomic.js';
import { byteOrder } from '../util/order.js';

export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_OPAQUE = '.wh..wh..opq';

export interface TarOptions {
  /** 'overlay' (default): 0/0 char devices are whiteouts and opaque xattrs are honoured. 'none': a plain tree. */
  whiteouts?: 'overlay' | 'none';
  /** SOURCE_DATE_EPOCH (seconds): mtimes later than this are clamped to it. */
  sourceDateEpoch?: number;
  /** Read xattrs (security.capability, overlay opaque markers) with getfattr. Default true. */
  xattrs?: boolean;
  /**
   * The overlay lower dirs of the step (bottom-most first, as mounted), for BuildKit's overlay differ semantics:
   * whiteouts of paths no lower has are dropped, entries identical to what the lowers already provide (continuity's
   * sameDirent: type/mode/owner/rdev/capability, size, mtime, and content when both mtimes are whole seconds) are
   * not recorded — their directories only appear as parents of recorded entries — and an opaque marker is only
   * written for a directory the lowers have. Inside such an opaque directory everything is recorded.
   */
  lowers?: string[];
  /** overlay: the upper dir's UPPER_XATTRS by absolute path, already read (by the snapshotter) — not read again. */
  upperXattrs?: ReadonlyMap<string, ReadonlyMap<string, Uint8Array>>;
  /**
   * Write `dir` as the directory `name` of the layer, as if it had been copied there first (`fs.cp`, then every
   * entry chowned): owner uid/gid, every mtime `mtime`, setuid (and setgid with group-exec) bits of non-directories
   * cleared as chown(2) clears them, no hardlinks, no xattrs, no whiteouts; top-level names in `skip` left out. The
   * Node builder's app layer is written this way straight from the source, without the staging copy.
   */
  reroot?: Reroot;
  /** Paths relative to the dir → their lstat, already taken by the caller (not taken again; WriteBlobOptions). */
  knownStats?: ReadonlyMap<string, Stats>;
  /**
   * Absolute paths → their lstat, already taken by the caller (a direct COPY's layer: the hash walk of its key
   * statted every file) — also with `reroot`, where relative paths name the destination, not the source.
   */
  knownAbsStats?: ReadonlyMap<string, Stats>;
}

/** TarOptions.reroot. */
export interface Reroot {
  name: string;
  uid: number;
  gid: number;
  /**
   * Every entry's mtime, or 'source': each entry keeps its own (clamped to SOURCE_DATE_EPOCH), as COPY keeps them.
   */
  mtime: number | 'source';
  skip?: readonly string[];
  /** Keep setuid/setgid bits (COPY chmods after its chown); default: cleared as chown(2) clears them. */
  keepSetid?: boolean;
  /** The header of `name` itself (default: the dir's own mode, `uid`/`gid` and mtime as above). */
  top?: { mode: number; uid: number; gid: number };
  /**
   * Directories written before `name`, outermost first (`name`'s ancestors, e.g. the copied-up parents of a COPY
   * destination): mtimes clamped to SOURCE_DATE_EPOCH like every other.
   */
  parents?: readonly { name: string; mode: number; uid: number; gid: number; mtime: number }[];
}

/** The xattrs of an overlay upper dir that go into (or shape) its layer. */
export const UPPER_XATTRS = '^(security\\.capability|(user|trusted)\\.overlay\\.(opaque|redirect|metacopy))$';

/** xattrs passed between threads arrive as Uint8Arrays. */
function asBuffers(m: ReadonlyMap<string, ReadonlyMap<string, Uint8Array>>): Map<string, Map<string, Buffer>> {
  const out = new Map<string, Map<string, Buffer>>();
  for (const [p, x] of m) {
    const y = new Map<string, Buffer>();
    for (const [k, v] of x) y.set(k, Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength));
    out.set(p, y);
  }
  return out;
}

export interface WriteLayerOptions extends TarOptions {
  /** Compression of the blob. Default 'gzip'. */
  compression?: 'gzip' | 'zstd' | 'none';
  /** Compression level (gzip 0–9, default 1 = best speed like crane; zstd 1–19, default 3). */
  level?: number;
  /** Media type family. Default 'oci'. */
  mediaTypes?: 'oci' | 'docker';
  /** Directory for the output blob file (ideally on the blob store's file system so a rename can move it). */
  tmpDir?: string;
  /** The output blob file itself (must not exist; default: a fresh name in tmpDir). */
  file?: string;
  /** gzip: the previous layer dir of the same step, whose blob's members may be reused (src/layer/segments.ts). */
  reuseFrom?: ReuseFrom;
}

export interface WrittenLayer {
  /** sha256 of the compressed blob. */
  digest: string;
  /** sha256 of the uncompressed tar. */
  diffID: string;
  /** Size of the compressed blob in bytes. */
  size: number;
  /** Size of the uncompressed tar in bytes. */
  diffSize: number;
  mediaType: string;
  /** Path of the blob file (the caller moves it into the blob store or deletes it). */
  file: string;
  /** gzip: the blob's member index (to keep next to the layer dir, for the next write of the same step). */
  members?: MemberIndex;
  /** gzip: members copied from `reuseFrom`'s blob. */
  reused?: number;
}

function devMajor(rdev: number): number {
  return ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
}

function devMinor(rdev: number): number {
  return (rdev & 0xff) | ((rdev >>> 12) & ~0xff & 0xfffff);
}

function isWhiteoutDevice(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/** Is this the xattr set of an overlay opaque directory (`user.` or `trusted.overlay.opaque` = y)? */
export function isOpaque(x: Map<string, Buffer> | undefined): boolean {
  if (!x) return false;
  for (const k of ['user.overlay.opaque', 'trusted.overlay.opaque']) {
    const v = x.get(k);
    if (v && v.toString('latin1') === 'y') return true;
  }
  return false;
}

/**
 * An upper dir written with overlay's redirect_dir or metacopy features is not a self-contained diff (a renamed
 * directory or a metadata-only copy-up points into the lower layers): refuse it rather than write a wrong layer.
 */
function checkNoRedirect(x: Map<string, Buffer>, rel: string): void {
  for (const k of x.keys()) {
    if (/\.overlay\.(redirect|metacopy)$/.test(k)) {
      throw new KilnError('LAYER_WRITE_FAILED', `"${rel}" in the overlay upper dir carries ${k}`, {
        hint: 'mount the step overlay with redirect_dir=off and metacopy=off (userxattr does this by default)',
      });
    }
  }
}

function whiteoutHeader(name: string): TarHeader {
  return tarHeader({ name, mode: 0 });
}

/** A regular file's content in the tar, read when (and if) its bytes are needed. */
export interface TarBody {
  abs: string;
  rel: string;
  size: number;
  dev: number;
  ino: number;
}

/** The end of one tar entry (after its padding): `end` is its path, where gzip members may be cut. */
export interface TarEntryEnd {
  end: string;
}

/** The layer tar as header/padding bytes, file contents not yet read, and entry ends. */
export type TarItem = Buffer | TarBody | TarEntryEnd;

export const isTarBody = (x: TarItem): x is TarBody => !Buffer.isBuffer(x) && 'abs' in x;

/** Read a tar body (small files in one synchronous call). */
export async function* readTarBody(b: TarBody): AsyncGenerator<Buffer> {
  if (b.size <= SMALL_FILE) yield readRange(b, 0, b.size);
  else yield* fileBody(b.abs, b.size, b.rel);
}

/**
 * The uncompressed layer tar of `dir` as a stream of buffers (what the diffID is computed over).
 */
export async function* layerTar(dir: string, opts: TarOptions = {}): AsyncGenerator<Buffer> {
  for await (const it of tarItems(dir, opts)) {
    if (Buffer.isBuffer(it)) yield it;
    else if (isTarBody(it)) yield* readTarBody(it);
  }
}

/** The items of `dir`'s layer tar (see layerTar), file contents unread. */
export async function* tarItems(dir: string, opts: TarOptions = {}): AsyncGenerator<TarItem> {
  for await (const batch of tarItemBatches(dir, opts)) yield* batch;
}

/** Items per batch of tarItemBatches: the walk yields to the event loop (a streamed push) between batches. */
const BATCH = 512;

/**
 * The items of `dir`'s layer tar in batches. Why batches: the walk itself is synchronous (one readdir/lstat per
 * entry, far cheaper than thread-pool round trips), and handing 20,000 items of a 5,000-file tree one by one through
 * async generators cost more than the walk's system calls.
 */
export async function* tarItemBatches(dir: string, opts: TarOptions = {}): AsyncGenerator<TarItem[]> {
  const root = resolve(dir);
  const rr = opts.reroot;
  const overlay = !rr && (opts.whiteouts ?? 'overlay') === 'overlay';
  const st = await lstat(root).catch((e: unknown) => {
    throw new KilnError('LAYER_WRITE_FAILED', `layer directory ${root}: ${(e as Error).message}`, { cause: e });
  });
  if (!st.isDirectory()) throw new KilnError('LAYER_WRITE_FAILED', `layer directory ${root} is not a directory`);
  const xattrs =
    opts.xattrs === false || rr
      ? new Map<string, Map<string, Buffer>>()
      : overlay && opts.upperXattrs
        ? asBuffers(opts.upperXattrs)
        : await readXattrsRecursive(root, overlay ? UPPER_XATTRS : '^security\\.capability$');
  const epoch = opts.sourceDateEpoch;
  const links = new Map<string, string>();
  const known = rr ? undefined : opts.knownStats;
  const knownAbs = opts.knownAbsStats;

  const view = overlay && opts.lowers && opts.lowers.length > 0 ? await LowerView.open(opts.lowers) : undefined;
  /** Directory headers not recorded (unchanged) yet, outermost first: emitted when something inside is. */
  const pending: { rel: string; header: Buffer }[] = [];
  function* flush(): Generator<TarItem> {
    for (const p of pending) yield p.header;
    pending.length = 0;
  }

  /** `inLowers`: the lowers show a directory at relDir (else nothing below it can be in them: no lookups). */
  function* walk(absDir: string, relDir: string, recordAll = false, inLowers = true): Generator<TarItem> {
    let names: string[];
    try {
      names = readdirSync(absDir);
    } catch (e) {
      throw new KilnError('LAYER_WRITE_FAILED', `reading ${absDir}: ${(e as Error).message}`, { cause: e });
    }
    names.sort(byteOrder);
    const skip = rr?.skip && absDir === root ? new Set(rr.skip) : undefined;
    for (const n of names) {
      if (skip?.has(n)) continue;
      const abs = join(absDir, n);
      const rel = relDir + n;
      const st = known?.get(rel) ?? knownAbs?.get(abs) ?? lstatSync(abs);
      if (st.isSocket()) continue;
      if (overlay && isWhiteoutDevice(st)) {
        if (view && !recordAll && (!inLowers || !view.lookup(rel))) continue; // nothing below to hide
        yield* flush();
        yield encodeHeader(whiteoutHeader(relDir + WHITEOUT_PREFIX + n));
        yield { end: rel };
        continue;
      }
      const x = xattrs.get(abs);
      if (overlay && x) checkNoRedirect(x, rel);
      const base = view && !recordAll && inLowers ? view.lookup(rel) : null;
      const childInLowers = base !== null && base.st.isDirectory();
      const unchanged = base !== null && sameDirent(base, abs, x?.get('security.capability'));
      const h = headerOf(st, rel);
      const cap = x?.get('security.capability');
      if (cap && cap.length > 0) h.xattrs = new Map([['security.capability', cap]]);
      if (st.isDirectory()) h.type = 'dir';
      else if (st.isSymbolicLink()) {
        h.type = 'symlink';
        h.linkname = readlinkSync(abs);
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        h.type = st.isCharacterDevice() ? 'char' : 'block';
        h.devmajor = devMajor(st.rdev);
        h.devminor = devMinor(st.rdev);
      } else if (st.isFIFO()) h.type = 'fifo';
      else if (st.isFile()) {
        h.type = 'file';
        h.size = st.size;
      }
      if (!st.isDirectory() && st.nlink > 1 && !rr) {
        const key = `${st.dev}:${st.ino}`;
        const first = links.get(key);
        if (first !== undefined) {
          h.type = 'link';
          h.linkname = first;
          h.size = 0;
        } else links.set(key, rel);
      }
      const opaque = overlay && isOpaque(x) && (!view || recordAll || base !== null);
      if (unchanged && !opaque) {
        if (h.type !== 'dir') continue;
        // An unchanged directory is recorded only as the parent of something recorded inside it.
        pending.push({ rel, header: encodeHeader(h) });
        const depth = pending.length;
        yield* walk(abs, rel + '/', recordAll, childInLowers);
        if (pending.length === depth) pending.pop();
        continue;
      }
      yield* flush();
      yield encodeHeader(h);
      if (h.type === 'dir') {
        if (opaque) yield encodeHeader(whiteoutHeader(rel + '/' + WHITEOUT_OPAQUE));
        yield { end: rel };
        yield* walk(abs, rel + '/', recordAll || (opaque && view !== undefined), childInLowers);
      } else {
        if (h.type === 'file' && h.size > 0) {
          yield { abs, rel, size: h.size, dev: st.dev, ino: st.ino };
          const pad = padding(h.size);
          if (pad.length) yield pad;
        }
        yield { end: rel };
      }
    }
  }

  /** The header of `st` at `rel` (type fields are set by the caller). */
  function clamp(secs: number): number {
    return epoch !== undefined && secs > epoch ? epoch : secs;
  }

  function headerOf(st: Stats, rel: string): TarHeader {
    const mtime = clamp(Math.floor(st.mtimeMs / 1000));
    let mode = st.mode & 0o7777;
    if (rr && !rr.keepSetid && !st.isDirectory()) mode &= mode & 0o010 ? ~0o6000 : ~0o4000;
    return tarHeader({
      name: st.isDirectory() ? rel + '/' : rel,
      mode,
      uid: rr ? rr.uid : st.uid,
      gid: rr ? rr.gid : st.gid,
      mtime: rr && rr.mtime !== 'source' ? rr.mtime : mtime,
    });
  }

  function* all(): Generator<TarItem> {
    if (rr) {
      for (const p of rr.parents ?? []) {
        yield encodeHeader(
          tarHeader({ name: p.name + '/', type: 'dir', mode: p.mode, uid: p.uid, gid: p.gid, mtime: clamp(p.mtime) }),
        );
        yield { end: p.name };
      }
      const h = headerOf(st, rr.name);
      if (rr.top) Object.assign(h, rr.top);
      h.type = 'dir';
      yield encodeHeader(h);
      yield { end: rr.name };
      yield* walk(root, rr.name + '/');
    } else yield* walk(root, '');
  }

  let batch: TarItem[] = [];
  for (const it of all()) {
    batch.push(it);
    if (batch.length >= BATCH) {
      yield batch;
      batch = [];
    }
  }
  batch.push(trailer());
  yield batch;
}

/** What a lower stack provides at a path: the host path and its stat (bigint, for nanosecond mtimes). */
interface LowerEntry {
  abs: string;
  st: BigIntStats;
  cap: Buffer | undefined;
}

/** Per lower dir (immutable once in the layer store): its opaque dirs and capabilities, read once per process. */
const lowerMeta = new Map<string, Promise<Map<string, Map<string, Buffer>>>>();

const LOWER_XATTRS = '^((user|trusted)\\.overlay\\.opaque|security\\.capability)$';

interface LowerXattrsFile {
  v: 1;
  root: string;
  entries: [string, [string, string][]][];
}

/**
 * The opaque markers and capabilities of a lower dir. A lower dir never changes, so what one getfattr pass found is
 * kept next to it (`<dir>.xattrs.json`): a RUN on a base of 20,000 files then costs no walk of the base per build.
 */
async function lowerXattrs(dir: string): Promise<Map<string, Map<string, Buffer>>> {
  const side = `${dir}.xattrs.json`;
  try {
    const j = JSON.parse(await readFile(side, 'utf8')) as LowerXattrsFile;
    if (j.v === 1 && j.root === dir && Array.isArray(j.entries)) {
      return new Map(j.entries.map(([p, xs]) => [p, new Map(xs.map(([n, v]) => [n, Buffer.from(v, 'base64')]))]));
    }
  } catch {
    /* absent or unreadable: walk */
  }
  const m = await readXattrsRecursive(dir, LOWER_XATTRS);
  const data: LowerXattrsFile = {
    v: 1,
    root: dir,
    entries: [...m].map(([p, xs]) => [p, [...xs].map(([n, v]) => [n, v.toString('base64')])]),
  };
  await writeFileAtomic(side, JSON.stringify(data)).catch(() => undefined); // an optimisation only
  return m;
}

/** The merged view of overlay lower dirs (whiteouts, opaque dirs and non-directories hide what is below). */
export class LowerView {
  private constructor(
    private readonly topFirst: string[],
    private readonly meta: Map<string, Map<string, Buffer>>[],
  ) {}

  /** `lowers` bottom-most first. */
  static async open(lowers: string[]): Promise<LowerView> {
    const topFirst = [...lowers].reverse().map((l) => resolve(l));
    const meta = await Promise.all(
      topFirst.map((l) => {
        let m = lowerMeta.get(l);
        if (!m) {
          m = lowerXattrs(l);
          lowerMeta.set(l, m);
          m.catch(() => lowerMeta.delete(l));
        }
        return m;
      }),
    );
    return new LowerView(topFirst, meta);
  }

  private isOpaque(i: number, abs: string): boolean {
    const v = this.meta[i]!.get(abs);
    return isOpaque(v);
  }

  /** The entry the lowers show at `rel`, or null. */
  lookup(rel: string): LowerEntry | null {
    const comps = rel.split('/');
    let active = this.topFirst.map((_, i) => i);
    let prefix = '';
    for (let c = 0; c < comps.length; c++) {
      const last = c === comps.length - 1;
      prefix = prefix ? `${prefix}/${comps[c]}` : comps[c]!;
      const next: number[] = [];
      for (const i of active) {
        const abs = join(this.topFirst[i]!, prefix);
        const st = lstatSync(abs, { bigint: true, throwIfNoEntry: false });
        if (!st) continue;
        if (st.isCharacterDevice() && st.rdev === 0n) break; // whited out from here down
        if (last) return { abs, st, cap: this.meta[i]!.get(abs)?.get('security.capability') };
        if (!st.isDirectory()) break;
        next.push(i);
        if (this.isOpaque(i, abs)) break;
      }
      if (last || next.length === 0) return null;
      active = next;
    }
    return null;
  }
}

/** continuity/BuildKit sameDirent: is the upper entry at `abs` identical to what the lowers provide? */
function sameDirent(base: LowerEntry, abs: string, cap: Buffer | undefined): boolean {
  const u = lstatSync(abs, { bigint: true });
  const b = base.st;
  if (u.dev === b.dev && u.ino === b.ino) return true;
  if (u.mode !== b.mode || u.uid !== b.uid || u.gid !== b.gid || u.rdev !== b.rdev) return false;
  if (!Buffer.from(cap ?? []).equals(Buffer.from(base.cap ?? []))) return false;
  if (u.isDirectory()) return true;
  if (u.size !== b.size) return false;
  const sec = (ns: bigint): bigint => (ns >= 0n ? ns / 1_000_000_000n : (ns - 999_999_999n) / 1_000_000_000n);
  if (sec(u.mtimeNs) !== sec(b.mtimeNs)) return false;
  const nu = u.mtimeNs - sec(u.mtimeNs) * 1_000_000_000n;
  const nb = b.mtimeNs - sec(b.mtimeNs) * 1_000_000_000n;
  if (nu !== 0n || nb !== 0n) return nu === nb;
  if (u.isSymbolicLink()) return readlinkSync(abs) === readlinkSync(base.abs);
  if (u.size === 0n) return true;
  return sameContent(abs, base.abs);
}

/** Do two files have the same bytes? (synchronous: called for a handful of files, or many small ones) */
let compareBuffers: [Buffer, Buffer] | undefined;

export function sameContent(a: string, b: string): boolean {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    // synchronous, so one pair of buffers serves every call (no garbage per file)
    compareBuffers ??= [Buffer.allocUnsafe(64 * 1024), Buffer.allocUnsafe(64 * 1024)];
    const [ba, bb] = compareBuffers;
    for (;;) {
      const na = readSync(fa, ba, 0, ba.length, null);
      let nb = 0;
      while (nb < na) {
        const r = readSync(fb, bb, nb, na - nb, null);
        if (r === 0) break;
        nb += r;
      }
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return readSync(fb, bb, 0, 1, null) === 0;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** Files up to this size are read with one synchronous call (far cheaper than several threadpool round trips). */
const SMALL_FILE = 256 * 1024;

async function* fileBody(abs: string, size: number, rel: string): AsyncGenerator<Buffer> {
  const fh = await open(abs, 'r');
  try {
    let left = size;
    while (left > 0) {
      const buf = Buffer.allocUnsafe(Math.min(left, 1 << 20));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) {
        throw new KilnError('LAYER_WRITE_FAILED', `file "${rel}" shrank while the layer was being written`);
      }
      left -= bytesRead;
      yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

function mediaTypeFor(compression: 'gzip' | 'zstd' | 'none', family: 'oci' | 'docker'): string {
  if (compression === 'gzip') return family === 'docker' ? MediaType.DockerLayerGzip : MediaType.OCILayerGzip;
  if (compression === 'zstd') return MediaType.OCILayerZstd;
  return family === 'docker' ? 'application/vnd.docker.image.rootfs.diff.tar' : MediaType.OCILayer;
}

/**
 * Write the layer for `dir` into a new file under opts.tmpDir and return its digests. Nothing is held in memory;
 * on failure the partial file is removed.
 */
export async function writeLayer(dir: string, opts: WriteLayerOptions = {}): Promise<WrittenLayer> {
  const compression = opts.compression ?? 'gzip';
  const file = opts.file ?? join(opts.tmpDir ?? tmpdir(), `.kiln-layer-${randomBytes(8).toString('hex')}.tmp`);
  if (compression === 'gzip') {
    const level = opts.level ?? 1;
    let r: SegmentedResult;
    try {
      const fh = await open(file, 'wx');
      try {
        r = await writeSegmented(tarItemBatches(dir, opts), fh, { level, reuseFrom: opts.reuseFrom });
      } finally {
        await fh.close();
      }
    } catch (e) {
      await rm(file, { force: true });
      throw e;
    }
    return {
      diffID: r.diffID,
      digest: r.digest,
      size: r.size,
      diffSize: r.diffSize,
      mediaType: mediaTypeFor('gzip', opts.mediaTypes ?? 'oci'),
      file,
      members: { v: 1, zlib: process.versions.zlib, level, blob: r.digest, members: r.members },
      reused: r.reused,
    };
  }
  const diff = new DigestingStream();
  const blob = new DigestingStream();
  try {
    if (compression === 'none') {
      await pipeline(Readable.from(coalesce(layerTar(dir, opts))), diff, createWriteStream(file, { flags: 'wx' }));
    } else {
      await pipeline(
        Readable.from(coalesce(layerTar(dir, opts))),
        diff,
        compressor(compression, opts.level),
        blob,
        createWriteStream(file, { flags: 'wx' }),
      );
    }
  } catch (e) {
    await rm(file, { force: true });
    throw e;
  }
  const diffID = diff.digest();
  return {
    diffID,
    digest: compression === 'none' ? diffID : blob.digest(),
    size: compression === 'none' ? diff.size() : blob.size(),
    diffSize: diff.size(),
    mediaType: mediaTypeFor(compression, opts.mediaTypes ?? 'oci'),
    file,
  };
}
