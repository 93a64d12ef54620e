/**
 * The diff of one step from its change list, without walking the base: every path the step (or kiln, for COPY and
 * WORKDIR) created, wrote, renamed, removed or changed the metadata of is recorded by the helper while the step
 * runs; afterwards each one is compared with what the lower layers show, which yields exactly what an overlay
 * upper dir holds:
 *
 *  - a path that exists now: a directory is recorded with its metadata (parents of anything recorded too); a new
 *    directory (the lowers have none there) is copied with its whole subtree (it may have been renamed in); a
 *    directory the lowers had that was removed or replaced during the step becomes opaque and is copied whole;
 *    anything else is copied (hard-linked: files are frozen, see kiln-restricted.c);
 *  - a path that is gone: a whiteout when the lowers show something there (only the topmost removed path).
 *
 * Paths touched without a change (opened for writing, say) are recorded as they are, like an overlay copy-up.
 */
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { LowerView } from '../../layer/writer.js';
import { REMOVED, REPLACED } from './client.js';

export type PlanEntry =
  | { kind: 'D'; rel: string; opaque: boolean; recursive: boolean }
  | { kind: 'F'; rel: string }
  | { kind: 'X'; rel: string };

function parentsOf(rel: string): string[] {
  const parts = rel.split('/');
  const out: string[] = [];
  for (let i = 1; i < parts.length; i++) out.push(parts.slice(0, i).join('/'));
  return out;
}

function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/**
 * Plan the diff of `root` against `lowers` (bottom-most first) from the recorded `changes` (rel path → flags).
 * Entries come parents first.
 */
export async function planDiff(root: string, lowers: string[], changes: Map<string, number>): Promise<PlanEntry[]> {
  const view = lowers.length > 0 ? await LowerView.open(lowers) : undefined;
  const lookup = (rel: string) => (view ? view.lookup(rel) : null);
  const rels = [...changes.keys()].filter((r) => r !== '' && !r.startsWith('/')).sort(byteCompare);
  const entries = new Map<string, PlanEntry>();
  /** Dirs copied whole or whited out: nothing below them needs an entry of its own. */
  const covered: string[] = [];
  const isCovered = (rel: string) => covered.some((c) => rel.startsWith(c + '/'));
  const exists = new Map<string, boolean>();
  const existsNow = async (rel: string): Promise<{ dir: boolean } | undefined> => {
    try {
      const st = await lstat(join(root, rel));
      exists.set(rel, true);
      return { dir: st.isDirectory() };
    } catch {
      exists.set(rel, false);
      return undefined;
    }
  };
  for (const rel of rels) {
    if (isCovered(rel)) continue;
    const flags = changes.get(rel) ?? 0;
    const now = await existsNow(rel);
    if (!now) {
      // the topmost removed path carries the whiteout
      let parentGone = false;
      for (const p of parentsOf(rel)) {
        if (exists.get(p) === false || (exists.get(p) === undefined && !(await existsNow(p)))) {
          parentGone = true;
          break;
        }
      }
      if (parentGone) continue;
      if (lookup(rel) !== null) {
        entries.set(rel, { kind: 'X', rel });
        covered.push(rel);
      }
      continue;
    }
    if (now.dir) {
      const before = lookup(rel);
      const isNew = before === null || !before.st.isDirectory();
      const replaced = !isNew && (flags & (REMOVED | REPLACED)) !== 0;
      entries.set(rel, { kind: 'D', rel, opaque: replaced, recursive: isNew || replaced });
      if (isNew || replaced) covered.push(rel);
      continue;
    }
    entries.set(rel, { kind: 'F', rel });
  }
  // parents of everything recorded, with their current metadata
  for (const rel of [...entries.keys()]) {
    for (const p of parentsOf(rel)) {
      if (!entries.has(p)) entries.set(p, { kind: 'D', rel: p, opaque: false, recursive: false });
    }
  }
  return [...entries.values()].sort((a, b) => byteCompare(a.rel, b.rel));
}

/** The plan file the helper's `apply` reads. */
export function planText(plan: PlanEntry[]): string {
  const esc = (s: string) => s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n');
  return plan
    .map((e) =>
      e.kind === 'D' ? `D\t${esc(e.rel)}\t${e.opaque ? 1 : 0}\t${e.recursive ? 1 : 0}\n` : `${e.kind}\t${esc(e.rel)}\n`,
    )
    .join('');
}
