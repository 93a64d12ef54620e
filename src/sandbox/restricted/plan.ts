/**
 * The diff of one step from its change list, without walking the base: every path the step (or kiln, for COPY and
 * WORKDIR) created, wrote, renamed, removed or changed the metadata of is recorded by the helper while the step
 * runs; afterwards each one is compared with what the lower layers show, which yields what kiln's overlay upper
 * dir holds after the same step (overlay copy-up, then pruneUnchangedDirs):
 *
 *  - a path that exists now: a directory is recorded with its metadata; a new directory (the lowers have none
 *    there) is copied with its whole subtree (it may have been renamed in); a directory the lowers had that was
 *    removed or replaced during the step becomes opaque and is copied whole, and so does a directory renamed into
 *    a directory the lowers have (overlay without redirect_dir marks it opaque); anything else is copied
 *    (hard-linked: files are frozen, see kiln-restricted.c);
 *  - a path that is gone: a whiteout when the lowers show something there (only the topmost removed path);
 *  - the directories above every recorded path are copied up as overlay does; the ones with nothing recorded below
 *    them and the lowers' mode, owner and mtime are left out again (pruneUnchangedDirs).
 *
 * Paths touched without a change (opened for writing, say) are recorded as they are, like an overlay copy-up.
 */
import type { BigIntStats } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { LowerView } from '../../layer/writer.js';
import { MOVED_DIR, REMOVED, REPLACED } from './client.js';

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

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
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
  const lowerHasDir = (rel: string) => (rel === '' ? view !== undefined : lookup(rel)?.st.isDirectory() === true);
  const rels = [...changes.keys()].filter((r) => r !== '' && !r.startsWith('/')).sort(byteCompare);
  const entries = new Map<string, PlanEntry>();
  /** Dirs copied whole or whited out: nothing below them needs an entry of its own. */
  const covered: string[] = [];
  const isCovered = (rel: string) => covered.some((c) => rel.startsWith(c + '/'));
  const stats = new Map<string, BigIntStats | null>();
  const statNow = async (rel: string): Promise<BigIntStats | null> => {
    let st = stats.get(rel);
    if (st === undefined) {
      st = await lstat(join(root, rel), { bigint: true }).catch(() => null);
      stats.set(rel, st);
    }
    return st;
  };
  /** Directories overlay copied up only because something below them was touched. */
  const copiedUp = new Set<string>();
  for (const rel of rels) {
    if (isCovered(rel)) continue;
    for (const p of parentsOf(rel)) copiedUp.add(p);
    const flags = changes.get(rel) ?? 0;
    const now = await statNow(rel);
    if (!now) {
      // the topmost removed path carries the whiteout
      let parentGone = false;
      for (const p of parentsOf(rel)) {
        if (!(await statNow(p))?.isDirectory()) {
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
    if (now.isDirectory()) {
      const before = lookup(rel);
      const isNew = before === null || !before.st.isDirectory();
      const replaced = !isNew && (flags & (REMOVED | REPLACED)) !== 0;
      const movedIn = isNew && (flags & MOVED_DIR) !== 0 && lowerHasDir(parentOf(rel));
      entries.set(rel, { kind: 'D', rel, opaque: replaced || movedIn, recursive: isNew || replaced });
      if (isNew || replaced) covered.push(rel);
      continue;
    }
    entries.set(rel, { kind: 'F', rel });
  }
  // the copied-up parents: kept when something below them is recorded or their metadata changed
  const needed = new Set<string>();
  for (const rel of entries.keys()) for (const p of parentsOf(rel)) needed.add(p);
  for (const p of copiedUp) {
    if (entries.has(p) || isCovered(p)) continue;
    const now = await statNow(p);
    if (!now?.isDirectory()) continue;
    if (!needed.has(p)) {
      const before = lookup(p)?.st;
      if (
        before?.isDirectory() &&
        before.mode === now.mode &&
        before.uid === now.uid &&
        before.gid === now.gid &&
        before.mtimeNs === now.mtimeNs
      ) {
        continue;
      }
    }
    entries.set(p, { kind: 'D', rel: p, opaque: false, recursive: false });
  }
  for (const rel of [...entries.keys()]) {
    for (const p of parentsOf(rel)) {
      if (!entries.has(p)) entries.set(p, { kind: 'D', rel: p, opaque: false, recursive: false });
    }
  }
  return [...entries.values()].sort((a, b) => byteCompare(a.rel, b.rel));
}

/**
 * The plan file the helper's `apply` reads. `moveNew`: recursive directories are moved from the tree into the upper
 * dir instead of linked file by file (`2`); the tree then needs them back (`RestrictedClient.restore`) before its
 * next use.
 */
export function planText(plan: PlanEntry[], moveNew = false): string {
  const esc = (s: string) => s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n');
  const rec = moveNew ? 2 : 1;
  return plan
    .map((e) =>
      e.kind === 'D'
        ? `D\t${esc(e.rel)}\t${e.opaque ? 1 : 0}\t${e.recursive ? rec : 0}\n`
        : `${e.kind}\t${esc(e.rel)}\n`,
    )
    .join('');
}
