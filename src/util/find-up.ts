/**
 * Files of kiln's own checkout or package found from where the running code is. Why not a fixed `../..`: the same
 * module runs from src/ (tsx), from tsc's dist/ tree, and bundled into dist/bundle/ (scripts/bundle.mjs), each at
 * a different depth below the package root — so callers name the file by its path below the root and this walks up.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The first `join(dir, rel)` that exists, `dir` being `from` (default: this module's directory) or one of its
 * ancestors, up to `levels` levels up; undefined when none does.
 */
export function findUp(
  rel: string,
  from: string = dirname(fileURLToPath(import.meta.url)),
  levels = 6,
): string | undefined {
  let dir = from;
  for (let i = 0; i <= levels; i++) {
    const p = join(dir, rel);
    if (existsSync(p)) return p;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return undefined;
}
