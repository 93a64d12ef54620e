/**
 * Layer path summaries: what a lazy cache hit's layer touches, without its bytes.
 *
 * A registry cache record can carry a short list of the paths its layer holds (`summary`), so a later step that
 * misses can tell whether it needs that layer's files at all: a COPY into `/app/src` needs the layers that hold
 * something at or below `/app/src`, the topmost layer holding each of its parent dirs (their mode, owner and times
 * are copied up into the new layer), and every whiteout or opaque dir on that path — not a 100 MiB assets layer
 * beside it. The engine leaves unneeded lazy layers out of that step's lower dirs (src/engine/lazy.ts); the step's
 * result is the same because overlay copies up only the dirs on the written paths.
 *
 * Format: relative paths (no leading slash) of the layer dir's entries, breadth first, up to a depth that keeps the
 * list at most {@link MAX_SUMMARY} long; `P/` marks a dir whose entries are not listed (anything may be below it),
 * `!P` a whiteout or an opaque dir. A layer without a summary is needed by every step on top of it.
 */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { readXattrsRecursive } from '../layer/fsops.js';

/** At most this many paths per layer (a few KiB of JSON in the cache config). */
export const MAX_SUMMARY = 512;
const MAX_DEPTH = 8;

/** What a step reads below it: these absolute paths with everything under them, and their parent dirs. */
export interface PathNeed {
  subtrees: string[];
}

/** `a/b/c` → `a/b/c` (absolute or relative, trailing slashes dropped); '' for the root. */
export function relPath(p: string): string {
  return p
    .split('/')
    .filter((x) => x !== '' && x !== '.')
    .join('/');
}

/** The proper ancestors of a relative path, without the root: `a/b/c` → [`a`, `a/b`]. */
export function ancestorsOf(rel: string): string[] {
  const parts = rel === '' ? [] : rel.split('/');
  const out: string[] = [];
  for (let i = 1; i < parts.length; i++) out.push(parts.slice(0, i).join('/'));
  return out;
}

const within = (p: string, root: string): boolean => root === '' || p === root || p.startsWith(root + '/');

/**
 * The summary of an extracted layer dir (overlay format: whiteouts are 0/0 character devices, opaque dirs carry
 * `*.overlay.opaque=y`), or undefined when even its top level has more than MAX_SUMMARY entries.
 */
export async function summarizeLayerDir(dir: string): Promise<string[] | undefined> {
  const out: { rel: string; dir: boolean; mark: boolean }[] = [];
  let level = [''];
  for (let depth = 1; depth <= MAX_DEPTH && level.length > 0; depth++) {
    const found: { rel: string; dir: boolean; mark: boolean }[] = [];
    for (const d of level) {
      const entries = await readdir(join(dir, d), { withFileTypes: true });
      for (const e of entries) {
        const rel = d === '' ? e.name : `${d}/${e.name}`;
        // any character device may be a whiteout: marked (a marked path is needed whenever it is on the way)
        found.push({ rel, dir: e.isDirectory(), mark: e.isCharacterDevice() });
      }
    }
    if (out.length + found.length > MAX_SUMMARY) {
      if (depth === 1) return undefined;
      break;
    }
    out.push(...found);
    level = found.filter((f) => f.dir).map((f) => f.rel);
  }
  // dirs whose entries were not listed (the depth limit): truncated
  const listedDirs = new Set(out.filter((o) => o.dir).map((o) => o.rel));
  const hasListedChild = new Set<string>();
  for (const o of out) {
    const i = o.rel.lastIndexOf('/');
    if (i > 0) hasListedChild.add(o.rel.slice(0, i));
  }
  const dirs = [...listedDirs].map((r) => join(dir, r));
  const opaque = new Set<string>();
  if (dirs.length > 0) {
    // the listed dirs only (a layer of 5,000 files is not walked again for the few dirs a summary names)
    for (const [abs, x] of await readXattrsRecursive(dirs, '.*overlay\\.opaque', { recursive: false })) {
      for (const v of x.values()) if (v.toString('latin1') === 'y') opaque.add(abs);
    }
  }
  const lines: string[] = [];
  for (const o of out) {
    let line = o.rel;
    if (o.mark || (o.dir && opaque.has(join(dir, o.rel)))) line = '!' + line;
    if (o.dir && !hasListedChild.has(o.rel) && (await hasEntries(join(dir, o.rel)))) line += '/';
    lines.push(line);
  }
  return lines;
}

async function hasEntries(dir: string): Promise<boolean> {
  try {
    return (await readdir(dir)).length > 0;
  } catch {
    return true;
  }
}

/** A parsed summary line. */
interface Item {
  rel: string;
  truncated: boolean;
  marked: boolean;
}

function parseItem(line: string): Item {
  const marked = line.startsWith('!');
  let rel = marked ? line.slice(1) : line;
  const truncated = rel.endsWith('/');
  if (truncated) rel = rel.slice(0, -1);
  return { rel, truncated, marked };
}

/**
 * Whether a layer with `summary` (undefined: unknown, so needed) matters to a step that reads `need`, given the
 * parent dirs a higher layer of the same step already provides (`shadowed`, relative paths). When it does, the
 * parent dirs it holds are added to `shadowed` (it is then the topmost provider of their metadata).
 */
export function layerNeeded(summary: readonly string[] | undefined, need: PathNeed, shadowed: Set<string>): boolean {
  const roots = need.subtrees.map(relPath);
  if (summary === undefined || roots.includes('')) return true;
  const parents = new Set(roots.flatMap(ancestorsOf));
  const provides: string[] = [];
  let needed = false;
  for (const line of summary) {
    const it = parseItem(line);
    if (roots.some((r) => within(it.rel, r))) needed = true;
    else if (parents.has(it.rel)) {
      provides.push(it.rel);
      if (it.marked || it.truncated || !shadowed.has(it.rel)) needed = true;
    } else if (it.truncated && roots.some((r) => within(r, it.rel))) needed = true;
  }
  if (needed) for (const p of provides) shadowed.add(p);
  return needed;
}

/** The parent dirs of `need` that `dir` (a local layer dir, always used) holds: they shadow the layers below. */
export async function providedParents(dir: string, need: PathNeed, shadowed: Set<string>): Promise<void> {
  for (const p of new Set(need.subtrees.map(relPath).flatMap(ancestorsOf))) {
    if (shadowed.has(p)) continue;
    try {
      await lstat(join(dir, p));
      shadowed.add(p);
    } catch {
      /* not in this layer */
    }
  }
}
