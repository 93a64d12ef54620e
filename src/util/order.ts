/** Byte order for names: the order Go (and so BuildKit) sorts and walks in — not JavaScript's UTF-16 order. */
import { readdirSync } from 'node:fs';

/** Compares two strings by their UTF-8 bytes. */
export function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** The names in directory `dir`, in byte order. */
export function readdirSortedSync(dir: string): string[] {
  return readdirSync(dir).sort(byteOrder);
}
