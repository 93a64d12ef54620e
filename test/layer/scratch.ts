/**
 * Temp dirs for the layer/COPY/context tests: one root per test file, removed after the file's tests, and
 * `fresh(name)` for a new empty dir inside it.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';

export function scratch(prefix: string): { root: string; fresh: (name?: string) => string } {
  const root = mkdtempSync(join(tmpdir(), `kiln-${prefix}-`));
  after(() => rmSync(root, { recursive: true, force: true }));
  let n = 0;
  return {
    root,
    fresh(name = 'd') {
      const d = join(root, `${name}${n++}`);
      mkdirSync(d);
      return d;
    },
  };
}
