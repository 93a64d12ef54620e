/**
 * Tar archives as blob containers (OCI layout tars, docker-save archives).
 *
 * `TarIndex` scans a tar file's headers only (seeking over contents), so a 500 MB archive is indexed with a few
 * hundred small reads and never loaded or extracted: entries are then streamed straight from their byte ranges.
 * It understands ustar (prefix), GNU long names/links and pax `path`/`linkpath`/`size` records, resolves
 * symlinks and hard links inside the archive (never outside it), and reports truncated or garbage archives as one
 * clear KilnError naming the file. A gzip- or zstd-compressed archive is decompressed once into an anonymous
 * (already unlinked) temp file that lives as long as the index.
 *
 * `TarWriter` writes an archive atomically: a temp file next to the destination, fsynced and renamed into place
 * by `commit()`; `abort()` (or any failure) removes it.
 */
import {
  close as fsClose,
  closeSync,
  createReadStream,
  createWriteStream,
  fstat,
  open as fsOpen,
  read as fsRead,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { pipeline } from 'node:stream/promises';
import { open, rename, rm } from 'node:fs/promises';
import { once } from 'node:events';
import { basename, dirname, join, posix } from 'node:path';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import tarStream from 'tar-stream';
import { KilnError } from '../errors.js';
import { chain, streamToBuffer, type BlobSource } from './blobs.js';
import { digestHex, verifyingStream } from './digest.js';
import { type Compression, decompress, sniffCompression } from './compress.js';

const fdCloser = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
});

/** A numeric file descriptor with the few async operations the scanner needs. */
interface Fd {
  fd: number;
  read(buf: Buffer, off: number, n: number, pos: number): Promise<{ bytesRead: number }>;
  stat(): Promise<{ size: number }>;
  close(): Promise<void>;
}

async function openFd(path: string): Promise<Fd> {
  const fd = await new Promise<number>((resolve, reject) => fsOpen(path, 'r', (e, n) => (e ? reject(e) : resolve(n))));
  return {
    fd,
    read: (buf, off, n, pos) =>
      new Promise((resolve, reject) =>
        fsRead(fd, buf, off, n, pos, (e, bytesRead) => (e ? reject(e) : resolve({ bytesRead }))),
      ),
    stat: () => new Promise((resolve, reject) => fstat(fd, (e, st) => (e ? reject(e) : resolve(st)))),
    close: () => new Promise((resolve) => fsClose(fd, () => resolve())),
  };
}
/** Streams keep their TarIndex (and so its temp fd) alive. */
const keepAlive = new WeakMap<Readable, TarIndex>();

export interface TarEntry {
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'link' | 'other';
  /** Byte offset of the content in the archive file. */
  offset: number;
  size: number;
  linkname?: string;
}

function cleanName(n: string): string {
  let s = n.replace(/\0.*$/s, '');
  s = posix.normalize('/' + s).slice(1);
  return s.replace(/\/+$/, '');
}

function parseOctal(buf: Buffer, off: number, len: number): number {
  const field = buf.subarray(off, off + len);
  if (field[0]! & 0x80) {
    // GNU base-256: big-endian, high bit set.
    let v = 0;
    for (let i = 1; i < field.length; i++) v = v * 256 + field[i]!;
    return v;
  }
  const s = field.toString('latin1').replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) return NaN;
  return parseInt(s, 8);
}

function str(buf: Buffer, off: number, len: number): string {
  return buf
    .subarray(off, off + len)
    .toString('utf8')
    .replace(/\0.*$/s, '');
}

function parsePax(buf: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < buf.length) {
    const sp = buf.indexOf(0x20, i);
    if (sp < 0) break;
    const len = parseInt(buf.subarray(i, sp).toString(), 10);
    if (!(len > 0)) break;
    const rec = buf.subarray(sp + 1, i + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    i += len;
  }
  return out;
}

/** A header-only index of a tar file. */
export class TarIndex {
  readonly file: string;
  private readonly entries = new Map<string, TarEntry>();

  private constructor(file: string) {
    this.file = file;
  }

  /** Scan `file`. Fails with TAR_INVALID (not a tar / corrupt header) or TAR_TRUNCATED. */
  static async open(file: string): Promise<TarIndex> {
    const ix = new TarIndex(file);
    const fail = (e: NodeJS.ErrnoException): never => {
      throw new KilnError(
        e.code === 'ENOENT' ? 'FILE_NOT_FOUND' : 'FILE_UNREADABLE',
        `${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`,
        { cause: e },
      );
    };
    let fh = await openFd(file).catch(fail);
    const head = Buffer.alloc(4);
    await fh.read(head, 0, 4, 0);
    const c = sniffCompression(head);
    if (c !== 'none') {
      // `docker save | gzip` and friends: decompress once into an anonymous temp file (unlinked at once, so
      // nothing can be left behind) and index that; it lives as long as this TarIndex.
      await fh.close();
      fh = await ix.decompressToTemp(c);
    }
    try {
      const total = (await fh.stat()).size;
      const hdr = Buffer.alloc(512);
      let off = 0;
      let longName: string | undefined;
      let longLink: string | undefined;
      let pax: Record<string, string> = {};
      let sawEntry = false;
      const readAt = async (pos: number, n: number): Promise<Buffer> => {
        const b = Buffer.alloc(n);
        const { bytesRead } = await fh.read(b, 0, n, pos);
        if (bytesRead < n) throw ix.truncated(pos + n, total);
        return b;
      };
      while (off < total) {
        const { bytesRead } = await fh.read(hdr, 0, 512, off);
        if (bytesRead < 512) {
          if (!sawEntry) throw ix.invalid('not a tar archive (shorter than one header)');
          throw ix.truncated(off + 512, total);
        }
        if (hdr.every((b) => b === 0)) break;
        const sum = parseOctal(hdr, 148, 8);
        let calc = 0;
        for (let i = 0; i < 512; i++) calc += i >= 148 && i < 156 ? 32 : hdr[i]!;
        if (sum !== calc) {
          if (!sawEntry) throw ix.invalid('not a tar archive (bad header checksum at offset 0)');
          throw ix.invalid(`corrupt tar header at offset ${off}`);
        }
        sawEntry = true;
        const typeflag = String.fromCharCode(hdr[156]!);
        let size = parseOctal(hdr, 124, 12);
        if (Number.isNaN(size)) throw ix.invalid(`corrupt tar header at offset ${off} (size)`);
        if (pax.size !== undefined && /^\d+$/.test(pax.size)) size = Number(pax.size);
        const dataOff = off + 512;
        const next = dataOff + Math.ceil(size / 512) * 512;
        if (dataOff + size > total) {
          const n = longName ?? pax.path ?? str(hdr, 0, 100);
          throw new KilnError(
            'TAR_TRUNCATED',
            `${file}: truncated tar: entry "${cleanName(n)}" needs ${dataOff + size} bytes, file has ${total}`,
            { hint: 'the archive was cut short (interrupted copy or download); recreate it' },
          );
        }
        if (typeflag === 'L' || typeflag === 'K' || typeflag === 'x' || typeflag === 'g') {
          const data = await readAt(dataOff, size);
          if (typeflag === 'L') longName = data.toString('utf8').replace(/\0.*$/s, '');
          else if (typeflag === 'K') longLink = data.toString('utf8').replace(/\0.*$/s, '');
          else if (typeflag === 'x') pax = parsePax(data);
          off = next;
          continue;
        }
        let name = longName ?? pax.path;
        if (name === undefined) {
          name = str(hdr, 0, 100);
          const magic = hdr.subarray(257, 263).toString('latin1');
          if (magic.startsWith('ustar')) {
            const prefix = str(hdr, 345, 155);
            if (prefix) name = prefix + '/' + name;
          }
        }
        const linkname = longLink ?? pax.linkpath ?? str(hdr, 157, 100);
        const type: TarEntry['type'] =
          typeflag === '0' || typeflag === '\0' || typeflag === '7'
            ? 'file'
            : typeflag === '5'
              ? 'directory'
              : typeflag === '2'
                ? 'symlink'
                : typeflag === '1'
                  ? 'link'
                  : 'other';
        const e: TarEntry = { name: cleanName(name), type, offset: dataOff, size };
        if (type === 'symlink' || type === 'link') e.linkname = linkname;
        if (e.name !== '') ix.entries.set(e.name, e);
        longName = undefined;
        longLink = undefined;
        pax = {};
        off = next;
      }
      if (!sawEntry) throw ix.invalid('empty tar archive');
    } finally {
      if (ix.fd === undefined) await fh.close();
    }
    return ix;
  }

  /** The decompressed copy's descriptor (compressed archives only). */
  private fd: number | undefined;

  private async decompressToTemp(c: Compression): Promise<Fd> {
    const tmp = join(tmpdir(), `kiln-archive-${process.pid}-${randomBytes(6).toString('hex')}.tar`);
    try {
      await pipeline(decompress(createReadStream(this.file), c, this.file), createWriteStream(tmp, { flags: 'wx' }));
      const fh = await openFd(tmp);
      this.fd = fh.fd;
      fdCloser.register(this, fh.fd, this);
      return fh;
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /** Release the temp copy of a compressed archive now (otherwise it goes with garbage collection or exit). */
  close(): void {
    if (this.fd === undefined) return;
    fdCloser.unregister(this);
    closeSync(this.fd);
    this.fd = undefined;
  }

  /** The first `n` bytes of an entry (e.g. to sniff a layer's compression). */
  async readHead(e: TarEntry, n: number): Promise<Buffer> {
    const b = Buffer.alloc(Math.min(n, e.size));
    if (b.length === 0) return b;
    const s = this.rangeStream(e.offset, e.offset + b.length - 1);
    return streamToBuffer(s, n, this.file);
  }

  private rangeStream(start: number, end: number): Readable {
    if (this.fd === undefined) return createReadStream(this.file, { start, end });
    const s = createReadStream('', { fd: this.fd, start, end, autoClose: false });
    keepAlive.set(s, this);
    return s;
  }

  private invalid(why: string, hint?: string): KilnError {
    return new KilnError('TAR_INVALID', `${this.file}: ${why}`, { hint });
  }

  private truncated(need: number, total: number): KilnError {
    return new KilnError('TAR_TRUNCATED', `${this.file}: truncated tar (needs ${need} bytes, file has ${total})`, {
      hint: 'the archive was cut short (interrupted copy or download); recreate it',
    });
  }

  /** All entry names. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  /** A regular-file entry, following symlinks and hard links inside the archive (max 16 hops). */
  find(name: string): TarEntry | undefined {
    let n = cleanName(name);
    for (let hops = 0; hops < 16; hops++) {
      const e = this.entries.get(n);
      if (!e) return undefined;
      if (e.type === 'file') return e;
      if (e.type === 'link' && e.linkname !== undefined) n = cleanName(e.linkname);
      else if (e.type === 'symlink' && e.linkname !== undefined) {
        n = cleanName(e.linkname.startsWith('/') ? e.linkname : posix.join(posix.dirname(n), e.linkname));
      } else return undefined;
    }
    return undefined;
  }

  /** Stream an entry's content (unverified). Throws FILE_NOT_FOUND naming `file:name`. */
  openEntry(name: string): Readable {
    const e = this.find(name);
    if (!e) throw new KilnError('FILE_NOT_FOUND', `${this.file}: no "${name}" in the archive`);
    if (e.size === 0) return Readable.from([]);
    return this.rangeStream(e.offset, e.offset + e.size - 1);
  }

  /** Read a small entry fully. */
  async readEntry(name: string, limit = 32 * 1024 * 1024): Promise<Buffer> {
    return streamToBuffer(this.openEntry(name), limit, `${this.file}:${name}`);
  }
}

/** The blobs of an OCI layout stored in a tar (`blobs/sha256/<hex>` entries). */
export class TarBlobs implements BlobSource {
  readonly where: string;
  constructor(
    readonly tar: TarIndex,
    readonly prefix = 'blobs',
  ) {
    this.where = tar.file;
  }

  entryName(digest: string): string {
    return posix.join(this.prefix, 'sha256', digestHex(digest));
  }

  async has(digest: string): Promise<boolean> {
    return this.tar.find(this.entryName(digest)) !== undefined;
  }

  async open(digest: string, size?: number): Promise<Readable> {
    const name = this.entryName(digest);
    if (!this.tar.find(name)) {
      throw new KilnError('BLOB_NOT_FOUND', `${this.tar.file}: blob ${digest} is missing (${name})`);
    }
    const s = this.tar.openEntry(name);
    const v = verifyingStream(digest, `${this.tar.file}:${name}`, size);
    return chain(s, v);
  }
}

/** Atomic tar writer (see file comment). Entries get mtime 0, uid/gid 0, mode 0644/0755. */
export class TarWriter {
  readonly dest: string;
  readonly tmp: string;
  private readonly pack = tarStream.pack();
  private readonly done: Promise<void>;
  /** Resolves when the temp file's descriptor is closed (opened or not): only then can abort() remove the file. */
  private readonly closed: Promise<void>;
  private readonly ws: ReturnType<typeof createWriteStream>;
  private failed: Error | undefined;

  constructor(dest: string) {
    this.dest = dest;
    this.tmp = join(dirname(dest), `.${basename(dest)}.kiln-tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    const ws = createWriteStream(this.tmp, { flags: 'wx', mode: 0o644 });
    this.ws = ws;
    this.closed = new Promise<void>((resolve) => ws.on('close', () => resolve()));
    this.pack.on('error', () => undefined);
    const src = Readable.from(this.pack);
    src.pipe(ws);
    this.done = new Promise<void>((resolve, reject) => {
      ws.on('finish', resolve);
      ws.on('error', reject);
      src.on('error', reject);
    });
    this.done.catch((e: Error) => {
      this.failed = e;
    });
  }

  private header(name: string, size: number, type: 'file' | 'directory' | 'symlink' = 'file', linkname?: string) {
    return {
      name,
      size,
      type,
      mode: type === 'directory' ? 0o755 : type === 'symlink' ? 0o777 : 0o644,
      mtime: new Date(0),
      uid: 0,
      gid: 0,
      ...(linkname !== undefined ? { linkname } : {}),
    };
  }

  private entryDone(cb: (done: (err?: Error | null) => void) => void): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise<void>((resolve, reject) => cb((err) => (err ? reject(err) : resolve())));
  }

  async addDir(name: string): Promise<void> {
    await this.entryDone((done) => this.pack.entry(this.header(name.replace(/\/?$/, '/'), 0, 'directory'), done));
  }

  async addSymlink(name: string, target: string): Promise<void> {
    await this.entryDone((done) => this.pack.entry(this.header(name, 0, 'symlink', target), done));
  }

  async addBytes(name: string, data: Buffer | string): Promise<void> {
    const b = Buffer.from(data);
    await this.entryDone((done) => this.pack.entry(this.header(name, b.length), b, done));
  }

  /** Add a file of exactly `size` bytes from `stream` (a short or long stream fails the entry). */
  async addStream(name: string, size: number, stream: Readable): Promise<void> {
    if (this.failed) throw this.failed;
    let written = 0;
    let entryCb!: (err?: Error | null) => void;
    const finished = new Promise<void>((resolve, reject) => {
      entryCb = (err) => (err ? reject(err) : resolve());
    });
    finished.catch(() => undefined);
    const sink = this.pack.entry(this.header(name, size), entryCb);
    sink.on('error', () => undefined);
    try {
      for await (const chunk of stream) {
        const b = chunk as Buffer;
        written += b.length;
        if (written > size) throw new KilnError('SIZE_MISMATCH', `${name}: more than the expected ${size} bytes`);
        // Wait for the pack to drain, unless the file side failed (then it never will).
        if (!sink.write(b)) await Promise.race([once(sink as unknown as NodeJS.EventEmitter, 'drain'), this.done]);
        if (this.failed) throw this.failed;
      }
      if (written !== size) throw new KilnError('SIZE_MISMATCH', `${name}: expected ${size} bytes, got ${written}`);
      (sink as unknown as { end(): void }).end();
      await finished;
    } catch (e) {
      stream.destroy();
      sink.destroy(e as Error);
      this.pack.destroy(e as Error);
      throw e;
    }
  }

  /** Finish the archive, fsync it and rename it over the destination. */
  async commit(): Promise<void> {
    this.pack.finalize();
    try {
      await this.done;
      const fh = await open(this.tmp, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(this.tmp, this.dest);
    } catch (e) {
      await this.abort();
      throw e;
    }
  }

  /**
   * Discard the temp file. The write stream opens its file asynchronously, so a failure early in the write can
   * come before the file exists: destroy the stream and wait until its descriptor is closed, then remove the file —
   * else the open could create it after the removal (a `.NAME.kiln-tmp-*` left behind under load).
   */
  async abort(): Promise<void> {
    this.pack.destroy();
    this.ws.destroy();
    await this.done.catch(() => undefined);
    await this.closed;
    await rm(this.tmp, { force: true });
  }
}
