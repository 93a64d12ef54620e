/**
 * The tar format, both ways, byte-compatible with Go's archive/tar as containerd and BuildKit use it.
 *
 * Writing: containerd's ChangeWriter sets `tar.FormatPAX`, which Go's writer still satisfies with a plain USTAR
 * header ("ustar\0", version "00", long ASCII names split into prefix + name) whenever everything fits; otherwise
 * (non-ASCII or unsplittable names, link targets over 100 bytes, ids over 2097151, sizes over 8 GiB, pre-1970 or
 * far-future mtimes, xattrs) a PAX extended header named `<dir>/PaxHeaders.0/<base>` with records sorted by key
 * precedes it. Numbers are zero-padded octal followed by a NUL; no record blocking: the archive ends with two zero
 * blocks. tarformat.test.ts checks this byte for byte against digests produced by Go's archive/tar, which makes
 * kiln's diffIDs equal to BuildKit's for the same content.
 *
 * Reading: a streaming parser for USTAR, PAX (local and global headers, binary-safe `SCHILY.xattr.*` values,
 * `LIBARCHIVE.xattr.*`), GNU long names/links and base-256 numbers. Sparse files are rejected. The parser never
 * buffers an entry's body: the caller drains it (or it is skipped when the next entry is requested).
 */
import { KilnError } from '../errors.js';

export const BLOCK = 512;

export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

/** A tar entry header as kiln reads and writes it. Paths are relative, '/'-separated; dirs end with '/'. */
export interface TarHeader {
  name: string;
  type: EntryType;
  /** Permission bits plus setuid/setgid/sticky (07777). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch (may be fractional when read from a PAX header). */
  mtime: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  uname?: string;
  gname?: string;
  /** Extended attributes (name → raw bytes), from/to `SCHILY.xattr.<name>` PAX records. */
  xattrs?: Map<string, Buffer>;
  /** PAX atime/ctime in seconds (only written when set; containerd sets both to 0 on whiteouts). */
  atime?: number;
  ctime?: number;
}

/** A header with `over` set and the rest defaulted: a root-owned empty 0644 file, mtime 0, no link, no device. */
export function tarHeader(over: Partial<TarHeader> & { name: string }): TarHeader {
  return {
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: 0,
    mtime: 0,
    linkname: '',
    devmajor: 0,
    devminor: 0,
    ...over,
  };
}

const TYPEFLAG: Record<EntryType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
};

// ---------------------------------------------------------------------------------------------------------------
// Writing

function isASCII(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0x80) return false;
  return true;
}

function toASCII(s: string): string {
  if (isASCII(s)) return s;
  let out = '';
  for (const ch of s) if (ch.charCodeAt(0) < 0x80) out += ch;
  return out;
}

/** 8 ** (width - 1) for the widths of a header's numeric fields (a header is encoded per entry: no Math.pow). */
const OCTAL_LIMIT: readonly number[] = Array.from({ length: 13 }, (_, w) => 8 ** Math.max(0, w - 1));

function fitsOctal(width: number, n: number): boolean {
  // width-1 octal digits (Go's fitsInOctal: octBits = (width-1)*3).
  return n >= 0 && n < (OCTAL_LIMIT[width] ?? 8 ** (width - 1));
}

function putString(block: Buffer, off: number, width: number, s: string): void {
  if (s.length === 0) return;
  // ASCII (almost every name): written in place, no intermediate Buffer (5,000 headers made a layer's GC pressure)
  if (isASCII(s)) {
    block.write(s, off, Math.min(width, s.length), 'latin1');
    return;
  }
  const b = Buffer.from(s, 'utf8');
  b.copy(block, off, 0, Math.min(width, b.length));
  // The rest is already NUL.
}

/** `n` as width-1 zero-padded octal digits (the last byte stays NUL), digit by digit into the block. */
function putOctal(block: Buffer, off: number, width: number, n: number): void {
  let v = fitsOctal(width, n) ? Math.trunc(n) : 0; // Go: "last resort, just write zero" (the PAX record carries it)
  for (let i = off + width - 2; i >= off; i--) {
    block[i] = 0x30 + (v % 8);
    v = Math.floor(v / 8);
  }
}

function paxRecord(key: string, value: Buffer): Buffer {
  // Go's formatPAXRecord: "<len> <key>=<value>\n" where <len> counts itself.
  const body = Buffer.byteLength(key) + value.length + 3;
  let size = body + String(body).length;
  if (String(size).length + body !== size) size = String(size).length + body;
  return Buffer.concat([Buffer.from(`${size} ${key}=`, 'utf8'), value, Buffer.from('\n')]);
}

function checksum(block: Buffer): void {
  // the checksum field counts as 8 spaces; it is still NUL here (the header block starts zeroed)
  let sum = 8 * 0x20;
  for (let i = 0; i < 148; i++) sum += block[i] as number;
  for (let i = 156; i < BLOCK; i++) sum += block[i] as number;
  putOctal(block, 148, 7, sum);
  block[155] = 0x20;
}

function setUstarMagic(block: Buffer): void {
  block.write('ustar\0', 257, 'latin1');
  block.write('00', 263, 'latin1');
}

function formatPaxTime(t: number): string {
  if (Number.isInteger(t)) return String(t);
  const sec = Math.floor(t);
  const nsec = Math.round((t - sec) * 1e9);
  return `${sec}.${String(nsec).padStart(9, '0').replace(/0+$/, '')}`;
}

function paddingFor(size: number): number {
  const r = size % BLOCK;
  return r === 0 ? 0 : BLOCK - r;
}

/** Go's splitUSTARPath: split a long ASCII name into a ≤155-byte prefix and a ≤100-byte name at a '/'. */
function splitUSTARPath(name: string): [string, string] | null {
  let length = name.length;
  if (length <= 100 || !isASCII(name)) return null;
  if (length > 156) length = 156;
  else if (name[length - 1] === '/') length--;
  const i = name.slice(0, length).lastIndexOf('/');
  const nlen = name.length - i - 1;
  if (i <= 0 || nlen > 100 || nlen === 0 || i > 155) return null;
  return [name.slice(0, i), name.slice(i + 1)];
}

/** Go's formatter.formatString for the PAX main header: truncate, and never leave a cut name ending in '/'. */
function putTruncated(block: Buffer, off: number, width: number, s: string): void {
  putString(block, off, width, s);
  if (s.length > width && block[off + width - 1] === 0x2f) {
    const n = s.slice(0, width).replace(/\/+$/, '').length;
    block[off + n] = 0;
  }
}

/** Zeroed header blocks are cut from slabs: one ArrayBuffer per 128 headers, not per header (GC pressure). */
const SLAB = 128 * BLOCK;
let slab = Buffer.alloc(0);
let slabUsed = 0;

function headerBlock(): Buffer {
  if (slabUsed + BLOCK > slab.length) {
    slab = Buffer.alloc(SLAB);
    slabUsed = 0;
  }
  slabUsed += BLOCK;
  return slab.subarray(slabUsed - BLOCK, slabUsed);
}

/**
 * Encode a header (and, when needed, its preceding PAX extended header + data) into 512-byte blocks, choosing the
 * format like Go's tar.Writer does for containerd (Format = PAX, which still allows USTAR): a plain USTAR header
 * (long ASCII names split into prefix + name) whenever everything fits, else a PAX header carrying the values
 * that do not (non-ASCII or unsplittable names, long link targets, big ids/sizes, odd mtimes, xattrs).
 * The body of a regular file (h.size bytes) must follow, padded with `padding(h.size)`.
 */
export function encodeHeader(h: TarHeader): Buffer {
  const pax = new Map<string, Buffer>();
  const name = h.name;
  let ustar = true;
  if (name.length > 100 || !isASCII(name)) {
    pax.set('path', Buffer.from(name, 'utf8'));
    if (!splitUSTARPath(name)) ustar = false;
  }
  if (h.linkname.length > 100 || !isASCII(h.linkname)) {
    pax.set('linkpath', Buffer.from(h.linkname, 'utf8'));
    ustar = false;
  }
  // (no closure here: the bundle's keepNames names every closure created, once per header)
  for (const [key, width, v] of [
    ['uid', 8, h.uid],
    ['gid', 8, h.gid],
    ['size', 12, h.size],
  ] as const) {
    if (!fitsOctal(width, v)) {
      pax.set(key, Buffer.from(String(v)));
      ustar = false;
    }
  }
  if (!fitsOctal(12, h.mtime) || !Number.isInteger(h.mtime)) {
    pax.set('mtime', Buffer.from(formatPaxTime(h.mtime)));
    ustar = false;
  }
  if (h.atime !== undefined) pax.set('atime', Buffer.from(formatPaxTime(h.atime)));
  if (h.ctime !== undefined) pax.set('ctime', Buffer.from(formatPaxTime(h.ctime)));
  if (h.atime !== undefined || h.ctime !== undefined) ustar = false;
  for (const [k, v] of [
    ['uname', h.uname ?? ''],
    ['gname', h.gname ?? ''],
  ] as const) {
    if (v.length > 32 || !isASCII(v)) {
      pax.set(k, Buffer.from(v));
      ustar = false;
    }
  }
  for (const [k, v] of h.xattrs ?? []) {
    pax.set('SCHILY.xattr.' + k, v);
    ustar = false;
  }

  const parts: Buffer[] = [];
  const b = headerBlock();
  if (ustar) {
    const split = splitUSTARPath(name);
    putString(b, 0, 100, split ? split[1] : name);
    if (split) putString(b, 345, 155, split[0]);
  } else {
    const keys = [...pax.keys()].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
    const data = Buffer.concat(keys.map((k) => paxRecord(k, pax.get(k)!)));
    const trimmed = name.replace(/\/+$/, '');
    const slash = trimmed.lastIndexOf('/');
    const dir = slash >= 0 ? trimmed.slice(0, slash) : '';
    const base = slash >= 0 ? trimmed.slice(slash + 1) : trimmed;
    let paxName = toASCII((dir ? dir + '/' : '') + 'PaxHeaders.0/' + base);
    if (paxName.length > 100) paxName = paxName.slice(0, 100);
    paxName = paxName.replace(/\/+$/, '');
    const pb = Buffer.alloc(BLOCK);
    putString(pb, 0, 100, paxName);
    putOctal(pb, 100, 8, 0);
    putOctal(pb, 108, 8, 0);
    putOctal(pb, 116, 8, 0);
    putOctal(pb, 124, 12, data.length);
    putOctal(pb, 136, 12, 0);
    pb[156] = 'x'.charCodeAt(0);
    setUstarMagic(pb);
    checksum(pb);
    parts.push(pb, data, Buffer.alloc(paddingFor(data.length)));
    putTruncated(b, 0, 100, toASCII(name));
  }
  putOctal(b, 100, 8, h.mode & 0o7777);
  putOctal(b, 108, 8, h.uid);
  putOctal(b, 116, 8, h.gid);
  putOctal(b, 124, 12, h.size);
  putOctal(b, 136, 12, Math.floor(h.mtime));
  b[156] = TYPEFLAG[h.type].charCodeAt(0);
  putTruncated(b, 157, 100, toASCII(h.linkname));
  setUstarMagic(b);
  putString(b, 265, 32, toASCII(h.uname ?? ''));
  putString(b, 297, 32, toASCII(h.gname ?? ''));
  putOctal(b, 329, 8, h.devmajor);
  putOctal(b, 337, 8, h.devminor);
  checksum(b);
  parts.push(b);
  return parts.length === 1 ? b : Buffer.concat(parts);
}

/** Zero padding after a body of `size` bytes (a view of one shared zero block: never write into it). */
export function padding(size: number): Buffer {
  return ZERO_BLOCK.subarray(0, paddingFor(size));
}

const ZERO_BLOCK = Buffer.alloc(BLOCK);

/** The end-of-archive marker Go writes: two zero blocks. */
export function trailer(): Buffer {
  return Buffer.alloc(BLOCK * 2);
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

/** Pulls exact byte counts out of an async stream of chunks without copying more than needed. */
class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private done = false;
  private readonly it: AsyncIterator<Buffer | string> | Iterator<Buffer | string>;

  constructor(src: AsyncIterable<Buffer | string> | Iterable<Buffer | string>) {
    this.it = Symbol.asyncIterator in src ? src[Symbol.asyncIterator]() : src[Symbol.iterator]();
  }

  private async fill(n: number): Promise<void> {
    while (this.buffered < n && !this.done) {
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        break;
      }
      const c = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
      if (c.length === 0) continue;
      this.chunks.push(c);
      this.buffered += c.length;
    }
  }

  /** Exactly n bytes, or fewer only at end of input. */
  async read(n: number): Promise<Buffer> {
    await this.fill(n);
    const take = Math.min(n, this.buffered);
    const out = this.take(take);
    return out;
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return out;
    }
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      const c = this.chunks[0]!;
      if (c.length <= need) {
        parts.push(c);
        this.chunks.shift();
        need -= c.length;
      } else {
        parts.push(c.subarray(0, need));
        this.chunks[0] = c.subarray(need);
        need = 0;
      }
    }
    this.buffered -= n;
    return Buffer.concat(parts, n);
  }

  /** Up to n bytes as they arrive (at least one chunk unless at end). */
  async readSome(n: number): Promise<Buffer> {
    if (this.buffered === 0) await this.fill(1);
    if (this.buffered === 0) return Buffer.alloc(0);
    return this.take(Math.min(n, this.chunks[0]!.length));
  }

  async close(): Promise<void> {
    if (!this.done && this.it.return) await this.it.return();
  }
}

export class TarFormatError extends KilnError {
  constructor(message: string) {
    super('TAR_INVALID', message, { hint: 'the archive is corrupt or not a tar file' });
  }
}

function cstr(b: Buffer, off: number, width: number): string {
  const s = b.subarray(off, off + width);
  const nul = s.indexOf(0);
  return (nul >= 0 ? s.subarray(0, nul) : s).toString('utf8');
}

function parseNumeric(b: Buffer, off: number, width: number, what: string): number {
  const f = b.subarray(off, off + width);
  if (f[0]! & 0x80) {
    // base-256 (GNU): big-endian two's complement with the top bit of the first byte as the marker.
    if (f[0] === 0xff) throw new TarFormatError(`negative ${what} in tar header`);
    let n = f[0]! & 0x7f;
    for (let i = 1; i < f.length; i++) {
      n = n * 256 + f[i]!;
      if (n > Number.MAX_SAFE_INTEGER) throw new TarFormatError(`${what} too large in tar header`);
    }
    return n;
  }
  const s = f
    .toString('latin1')
    .replace(/[\0 ]+$/g, '')
    .replace(/^[ \0]+/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new TarFormatError(`invalid ${what} field "${s.replace(/\0.*$/, '')}" in tar header`);
  return parseInt(s, 8);
}

function parsePax(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let i = 0;
  while (i < data.length) {
    const sp = data.indexOf(0x20, i);
    if (sp < 0) throw new TarFormatError('malformed PAX record');
    const len = parseInt(data.subarray(i, sp).toString('latin1'), 10);
    if (!Number.isFinite(len) || len <= sp - i || i + len > data.length)
      throw new TarFormatError('malformed PAX record');
    const rec = data.subarray(sp + 1, i + len);
    if (rec[rec.length - 1] !== 0x0a) throw new TarFormatError('malformed PAX record');
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new TarFormatError('malformed PAX record');
    out.set(rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1, rec.length - 1)));
    i += len;
  }
  return out;
}

function applyPax(h: TarHeader, pax: Map<string, Buffer>): void {
  for (const [k, v] of pax) {
    const s = v.toString('utf8');
    switch (k) {
      case 'path':
        h.name = s;
        break;
      case 'linkpath':
        h.linkname = s;
        break;
      case 'size':
      case 'uid':
      case 'gid': {
        if (!/^\d+$/.test(s)) throw new TarFormatError(`invalid PAX ${k} "${s}"`);
        h[k] = Number(s);
        break;
      }
      case 'mtime': {
        const t = Number(s);
        if (!Number.isFinite(t)) throw new TarFormatError(`invalid PAX mtime "${s}"`);
        h.mtime = t;
        break;
      }
      case 'uname':
        h.uname = s;
        break;
      case 'gname':
        h.gname = s;
        break;
      default:
        if (k.startsWith('SCHILY.xattr.')) {
          (h.xattrs ??= new Map()).set(k.slice('SCHILY.xattr.'.length), v);
        } else if (k.startsWith('LIBARCHIVE.xattr.')) {
          const name = decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length));
          (h.xattrs ??= new Map()).set(name, Buffer.from(s, 'base64'));
        } else if (k.startsWith('GNU.sparse.')) {
          throw new TarFormatError('sparse files in tar archives are not supported');
        }
    }
  }
}

export interface TarEntry {
  header: TarHeader;
  /** The entry's body (regular files only; empty otherwise). Must be consumed before the next entry, or it is skipped. */
  body: AsyncIterable<Buffer>;
}

/**
 * Parse a tar stream. Yields each entry; bodies stream. Throws TarFormatError (code TAR_INVALID) on corrupt input,
 * including a truncated archive.
 */
export async function* readTar(
  src: AsyncIterable<Buffer | string> | Iterable<Buffer | string>,
  opts: { drain?: boolean } = {},
): AsyncGenerator<TarEntry> {
  const r = new ByteReader(src);
  let complete = false;
  const globalPax = new Map<string, Buffer>();
  let localPax: Map<string, Buffer> | undefined;
  let longName: string | undefined;
  let longLink: string | undefined;
  try {
    for (;;) {
      const block = await r.read(BLOCK);
      if (block.length === 0) {
        complete = true; // EOF without trailer: tolerated like Go (io.EOF at a block boundary)
        return;
      }
      if (block.length < BLOCK) throw new TarFormatError('unexpected end of tar archive');
      if (block.every((x) => x === 0)) {
        // End-of-archive marker. Optionally consume the rest (containerd drains it so the diffID covers it).
        if (opts.drain) while ((await r.readSome(1 << 20)).length > 0);
        complete = true;
        return;
      }
      // Checksum: unsigned sum, with the checksum field as spaces (also accept the historical signed sum).
      const stored = parseNumeric(block, 148, 8, 'checksum');
      let uns = 0;
      let sig = 0;
      for (let i = 0; i < BLOCK; i++) {
        const c = i >= 148 && i < 156 ? 0x20 : block[i]!;
        uns += c;
        sig += c >= 0x80 ? c - 256 : c;
      }
      if (stored !== uns && stored !== sig) throw new TarFormatError('tar header checksum mismatch');

      const flag = String.fromCharCode(block[156]!);
      const magic = block.subarray(257, 263).toString('latin1');
      const version = block.subarray(263, 265).toString('latin1');
      const isUstar = magic === 'ustar\0';
      const isGnu = magic === 'ustar ' && version === ' \0';
      let name = cstr(block, 0, 100);
      if (isUstar) {
        const prefix = cstr(block, 345, 155);
        if (prefix) name = prefix + '/' + name;
      }
      const size = parseNumeric(block, 124, 12, 'size');

      // Meta entries: their data modifies the next header.
      if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
        if (size > 16 * 1024 * 1024) throw new TarFormatError(`tar metadata entry too large (${size} bytes)`);
        const data = await r.read(size);
        if (data.length < size) throw new TarFormatError('unexpected end of tar archive');
        await r.read(paddingFor(size));
        if (flag === 'x') localPax = new Map([...(localPax ?? []), ...parsePax(data)]);
        else if (flag === 'g') for (const [k, v] of parsePax(data)) globalPax.set(k, v);
        else if (flag === 'L') longName = cstr(data, 0, data.length);
        else longLink = cstr(data, 0, data.length);
        continue;
      }

      let type: EntryType;
      switch (flag) {
        case '0':
        case '7':
          type = 'file';
          break;
        case '\0':
          type = 'file'; // old V7 type: a directory when the (final) name ends with '/', decided below
          break;
        case '1':
          type = 'link';
          break;
        case '2':
          type = 'symlink';
          break;
        case '3':
          type = 'char';
          break;
        case '4':
          type = 'block';
          break;
        case '5':
          type = 'dir';
          break;
        case '6':
          type = 'fifo';
          break;
        case 'S':
          throw new TarFormatError(`sparse file "${name}" in tar archive is not supported`);
        default:
          throw new TarFormatError(`unsupported tar entry type "${flag}" for "${name}"`);
      }
      const h: TarHeader = {
        name,
        type,
        mode: parseNumeric(block, 100, 8, 'mode') & 0o7777,
        uid: parseNumeric(block, 108, 8, 'uid'),
        gid: parseNumeric(block, 116, 8, 'gid'),
        size,
        mtime: parseNumeric(block, 136, 12, 'mtime'),
        linkname: cstr(block, 157, 100),
        devmajor: isUstar || isGnu ? parseNumeric(block, 329, 8, 'devmajor') : 0,
        devminor: isUstar || isGnu ? parseNumeric(block, 337, 8, 'devminor') : 0,
        uname: isUstar || isGnu ? cstr(block, 265, 32) : '',
        gname: isUstar || isGnu ? cstr(block, 297, 32) : '',
      };
      if (longName !== undefined) h.name = longName;
      if (longLink !== undefined) h.linkname = longLink;
      if (globalPax.size) applyPax(h, globalPax);
      if (localPax) applyPax(h, localPax);
      if (flag === '\0' && h.name.endsWith('/')) h.type = 'dir';
      localPax = undefined;
      longName = undefined;
      longLink = undefined;
      // Only regular files carry data (Go: links, dirs, devices have none even if size says otherwise).
      const dataSize = h.type === 'file' ? h.size : 0;
      if (h.type !== 'file') h.size = 0;
      let remaining = dataSize;
      const body: AsyncIterable<Buffer> = {
        async *[Symbol.asyncIterator]() {
          while (remaining > 0) {
            const c = await r.readSome(Math.min(remaining, 1 << 20));
            if (c.length === 0) throw new TarFormatError(`unexpected end of tar archive in "${h.name}"`);
            remaining -= c.length;
            yield c;
          }
        },
      };
      yield { header: h, body };
      while (remaining > 0) {
        const c = await r.readSome(Math.min(remaining, 1 << 20));
        if (c.length === 0) throw new TarFormatError(`unexpected end of tar archive in "${h.name}"`);
        remaining -= c.length;
      }
      const pad = paddingFor(dataSize);
      if (pad) {
        const p = await r.read(pad);
        if (p.length < pad) throw new TarFormatError('unexpected end of tar archive');
      }
    }
  } finally {
    if (!complete) await r.close();
  }
}
