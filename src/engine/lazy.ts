/**
 * Lazy cache hits in the engine (BuildKit's lazy refs): a registry cache hit is a layer descriptor until a step that
 * runs needs its files. A RUN, WORKDIR or ADD needs every layer below it; a COPY only the layers that matter at its
 * destination (src/cache/summary.ts) — the others are left out of that step's lower dirs, unfetched. The image push
 * mounts unfetched blobs from the cache repository; a step that needs one fetches and extracts it (once).
 */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ancestorsOf, layerNeeded, providedParents, relPath, type PathNeed } from '../cache/summary.js';

/** A stage layer as far as this module cares (src/engine/engine.ts StageLayer). */
interface LayerRef {
  dir: string;
  lazy?: { summary?: string[]; materialize(): Promise<string> };
}

/**
 * The layers (bottom-most first) a step that reads `need` (undefined: everything) must see, with every unfetched one
 * among them fetched; `omitted` counts the unfetched layers it does not need. A fetched layer's dir is set on the
 * layer object itself, so every stage sharing it sees the fetch.
 */
export async function lowersFor<T extends LayerRef>(
  layers: T[],
  need?: PathNeed,
): Promise<{ layers: T[]; omitted: number }> {
  const keep: T[] = [];
  let omitted = 0;
  const shadowed = new Set<string>();
  for (let i = layers.length - 1; i >= 0; i--) {
    const l = layers[i] as T;
    if (l.dir !== '' || !l.lazy) {
      if (need && l.dir !== '') await providedParents(l.dir, need, shadowed);
      keep.unshift(l);
    } else if (!need || layerNeeded(l.lazy.summary, need, shadowed)) keep.unshift(l);
    else omitted++;
  }
  await Promise.all(
    keep.map(async (l) => {
      if (l.dir === '' && l.lazy) l.dir = await l.lazy.materialize();
    }),
  );
  return { layers: keep, omitted };
}

/**
 * Whether a snapshot made of fewer lower layers is safe for a step reading `need`: no symlink on the way to or
 * below its paths (a symlink could lead the copy to a path whose layers were left out).
 */
export async function narrowedSafely(root: string, need: PathNeed): Promise<boolean> {
  for (const sub of need.subtrees) {
    const rel = relPath(sub);
    for (const p of [...ancestorsOf(rel), rel]) {
      if (p === '') continue;
      let st;
      try {
        st = await lstat(join(root, p));
      } catch {
        break; // missing: nothing further down exists either
      }
      if (st.isSymbolicLink()) return false;
      if (p === rel && st.isDirectory() && (await hasSymlink(join(root, p)))) return false;
    }
  }
  return true;
}

async function hasSymlink(dir: string): Promise<boolean> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isSymbolicLink()) return true;
    if (e.isDirectory() && (await hasSymlink(join(dir, e.name)))) return true;
  }
  return false;
}
