/**
 * Re-chunk a stream of small buffers into ~`size`-byte buffers. A layer tar is a sequence of 512-byte headers,
 * small file bodies and padding; pushing each through hash → gzip → hash → file as its own chunk costs far more than
 * the bytes themselves (measured: 7.15 s → 1.09 s for a 50,000-file layer, bench/hotspots.ts). The bytes are
 * unchanged, so digests are too.
 */
export async function* coalesce(src: AsyncIterable<Buffer>, size = 1 << 16): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let n = 0;
  for await (const b of src) {
    parts.push(b);
    n += b.length;
    if (n >= size) {
      yield parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n);
      parts = [];
      n = 0;
    }
  }
  if (n > 0) yield Buffer.concat(parts, n);
}
