/** Byte order for names: the order Go (and so BuildKit) sorts and walks in — not JavaScript's UTF-16 order. */
import { readdirSync } from 'node:fs';

/**
 * Compares two strings by their UTF-8 bytes. Without encoding them (sorting a directory of thousands of names
 * encoded two buffers per comparison): below the first UTF-16 surrogate (U+D800), code unit order is byte order.
 */
export function byteOrder(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    if (x < 0xd800 && y < 0xd800) return x - y;
    return Buffer.compare(Buffer.from(a), Buffer.from(b));
  }
  return a.length - b.length;
}

/** The names in directory `dir`, in byte order. */
export function readdirSortedSync(dir: string): string[] {
  return readdirSync(dir).sort(byteOrder);
}
