/**
 * RestrictedSnapshotter: step root file systems without mounts (the restricted level has no overlay).
 *
 * A *tree* is a materialised root file system: directories are its own, files are hard links to the (frozen)
 * files of the layer dirs — building one costs a walk of the layers' names, never a copy of their data, and is
 * done once per build and stage. A step works on the tree in place while the helper records every change below it
 * (kiln-restricted.c); `unmount()` turns the change list into the step's upper dir (plan.ts: overlay format —
 * whiteout placeholders, opaque markers — with the changed files hard-linked and frozen), and the tree then stands
 * for `lowers + [upper]`, which is exactly what the engine asks for at the next step. Writing to a frozen file, or
 * changing its metadata, first replaces it in the tree by a private copy (copy on write in the helper), so layer
 * dirs and earlier uppers never change.
 *
 * A tree is reused when `prepare(lowers)` asks for the state it holds and no other snapshot has it open; anything
 * else (another stage, `COPY --from`, a step after cache hits) materialises a new tree. Trees are removed once
 * every snapshot of theirs has been released.
 *
 * Incremental COPY (src/engine/reuse.ts) works here too, in the tree instead of an upper dir: the engine's `plant`
 * hook mirrors the previous result into a staging dir (hard links), which is then moved into the tree before the
 * change tracking starts — whole subtrees the tree does not have with one rename, a file or directory where the
 * tree has something else replacing it (what the overlay's upper would hide; the tree's entry is set aside). The
 * moved paths are added to the change list, so the step's upper gets them (hard links again: the unchanged files
 * share their inodes with the previous layer, whose blob parts the layer writer reuses). The engine's `prune` then
 * removes from the upper what the copy did not produce again; `settle` brings the tree back in line (removes those
 * entries from the tree, puts back what they replaced) before the tree is used again.
 */
import { lstatSync, readdirSync, renameSync, type Stats } from 'node:fs';
import { copyFile, lutimes, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { PrepareOptions, Snapshot, Snapshotter } from '../../engine/ports.js';
import { debugLog } from '../../registry/transport.js';
import { kilnTempDir } from '../paths.js';
import { CHANGED, parseChanges, parseXattrs, type RestrictedClient } from './client.js';
import { planDiff, planText } from './plan.js';

interface Tree {
  dir: string;
  root: string;
  /** The lowers (bottom-most first) the tree's content stands for; undefined while unknown (a step failed). */
  state: string[] | undefined;
  open: boolean;
  refs: number;
  /** What an incremental COPY moved into the tree; set until `settle` compared it with the step's pruned upper. */
  planted?: Planted;
  /** Subtrees the last step's `apply` moved from the tree into its upper dir: `settle` puts them back. */
  movedOut?: { upper: string; rels: string[] };
  /** Counter for the names of set-aside entries. */
  asides: number;
}

/** Paths (relative to the tree root) an incremental COPY moved into a tree, and what they replaced. */
interface Planted {
  /** The step's upper dir (after the engine's prune: what the copy produced). */
  upper: string;
  /** Moved-in path → the entry it replaced, set aside in the tree's dir (undefined: the tree had nothing there). */
  moved: Map<string, string | undefined>;
}

let traced = 0;

function sameList(a: string[] | undefined, b: string[]): boolean {
  return a !== undefined && a.length === b.length && a.every((x, i) => x === b[i]);
}

export interface RestrictedSnapshotterOptions {
  kilnHome: string;
  client: RestrictedClient;
}

export class RestrictedSnapshotter implements Snapshotter {
  readonly kind = 'restricted' as const;
  private readonly trees: Tree[] = [];

  constructor(private readonly opts: RestrictedSnapshotterOptions) {}

  private async newTree(lowers: string[]): Promise<Tree> {
    const dir = await kilnTempDir(this.opts.kilnHome, 'rtree-');
    const root = join(dir, 'root');
    await mkdir(root, { mode: 0o755 });
    const t: Tree = { dir, root, state: undefined, open: false, refs: 0, asides: 0 };
    try {
      if (lowers.length > 0) await this.opts.client.materialize(root, lowers);
    } catch (e) {
      await this.opts.client.remove(dir).catch(() => undefined);
      throw e;
    }
    t.state = [...lowers];
    this.trees.push(t);
    return t;
  }

  private async dropTree(t: Tree): Promise<void> {
    const i = this.trees.indexOf(t);
    if (i >= 0) this.trees.splice(i, 1);
    await this.opts.client.remove(t.dir).catch(() => rm(t.dir, { recursive: true, force: true }));
  }

  /**
   * Move the staged previous result (`stage`, what the engine's plant hook made) into the tree, below `rel`:
   * directories on both sides are merged, anything else moves in whole (replacing — setting aside — the tree's entry).
   */
  private moveIn(t: Tree, stage: string, rel: string, moved: Map<string, string | undefined>): void {
    for (const e of readdirSync(join(stage, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const dst = join(t.root, r);
      const there = lstatSync(dst, { throwIfNoEntry: false });
      if (there?.isDirectory() && e.isDirectory()) {
        this.moveIn(t, stage, r, moved);
        continue;
      }
      let aside: string | undefined;
      if (there) {
        aside = join(t.dir, `aside-${++t.asides}`);
        renameSync(dst, aside);
      }
      renameSync(join(stage, r), dst);
      moved.set(r, aside);
    }
  }

  /**
   * After an incremental COPY: what the engine pruned from the step's upper (files whose source is gone) goes from
   * the tree too, and the entries they had replaced come back — the tree then holds `lowers + upper` again.
   */
  private async settle(t: Tree): Promise<void> {
    const out = t.movedOut;
    if (out) {
      // first: the planted paths below them are then compared with what the upper holds after the prune
      t.movedOut = undefined;
      await this.opts.client.restore(t.root, out.upper, out.rels);
    }
    const p = t.planted;
    if (!p) return;
    t.planted = undefined;
    const times = new Map<string, Stats>();
    const keepTimes = (abs: string): void => {
      const d = dirname(abs);
      if (times.has(d)) return;
      const st = lstatSync(d, { throwIfNoEntry: false });
      if (st) times.set(d, st);
    };
    const client = this.opts.client;
    // entries below a moved-in directory that the upper no longer has (deepest last: parents are checked first)
    const extras = async (rel: string): Promise<void> => {
      for (const name of readdirSync(join(t.root, rel))) {
        const r = `${rel}/${name}`;
        const inUpper = lstatSync(join(p.upper, r), { throwIfNoEntry: false });
        if (!inUpper) {
          keepTimes(join(t.root, r));
          await client.remove(join(t.root, r));
        } else if (inUpper.isDirectory()) await extras(r);
      }
    };
    for (const [rel, aside] of p.moved) {
      const abs = join(t.root, rel);
      if (!lstatSync(join(p.upper, rel), { throwIfNoEntry: false })) {
        keepTimes(abs);
        await client.remove(abs);
        if (aside) renameSync(aside, abs);
      } else {
        if (lstatSync(abs).isDirectory()) await extras(rel);
        if (aside) await client.remove(aside);
      }
    }
    for (const [d, st] of times) await lutimes(d, st.atime, st.mtime).catch(() => undefined);
  }

  async prepare(lowers: string[], opts?: PrepareOptions): Promise<Snapshot> {
    const client = this.opts.client;
    let tree = this.trees.find((t) => !t.open && sameList(t.state, lowers));
    if (tree) tree.open = true; // claimed before any await: another prepare must not take it while it settles
    if (tree?.planted || tree?.movedOut) {
      try {
        await this.settle(tree);
      } catch (e) {
        debugLog(`restricted: tree not settled after the last step (${String(e)}): a new one is made`);
        tree.state = undefined;
        tree.open = false;
        tree = undefined;
      }
    }
    tree ??= await this.newTree(lowers);
    const t = tree;
    t.open = true;
    t.refs++;
    const snapDir = await kilnTempDir(this.opts.kilnHome, 'rsnap-');
    const upper = join(snapDir, 'upper');
    let track: number;
    /** Paths an incremental COPY moved into the tree before the tracking started. */
    let moved: Map<string, string | undefined> | undefined;
    try {
      await mkdir(upper, { mode: 0o755 });
      if (opts?.plant) {
        // (before the tracking: the moves themselves are no changes of the step, the moved paths are added below)
        const stage = join(snapDir, 'plant');
        await mkdir(stage, { mode: 0o755 });
        moved = new Map();
        await opts.plant(stage);
        this.moveIn(t, stage, '', moved);
      }
      track = await client.track(t.root);
    } catch (e) {
      t.open = false;
      t.refs--;
      if (moved) t.state = undefined; // the tree may hold part of the previous result
      await rm(snapDir, { recursive: true, force: true });
      throw e;
    }
    let unmounted = false;
    let released = false;
    let xattrs: Map<string, Map<string, Uint8Array>> | undefined;
    const stepLowers = [...lowers];
    const finish = async (): Promise<void> => {
      if (unmounted) return;
      unmounted = true;
      try {
        const list = join(snapDir, 'changes');
        const t0 = performance.now();
        await client.changes(track, list);
        const changes = parseChanges(await readFile(list, 'utf8'));
        for (const rel of moved?.keys() ?? []) changes.set(rel, (changes.get(rel) ?? 0) | CHANGED);
        const t1 = performance.now();
        const plan = await planDiff(t.root, stepLowers, changes);
        const planFile = join(snapDir, 'plan');
        await writeFile(planFile, planText(plan, true));
        const t2 = performance.now();
        const xattrFile = join(snapDir, 'xattrs');
        await client.apply(t.root, upper, planFile, xattrFile);
        xattrs = parseXattrs(await readFile(xattrFile, 'utf8'));
        debugLog(
          `restricted diff: ${changes.size} changes read in ${(t1 - t0).toFixed(0)} ms, ${plan.length} entries planned in ${(t2 - t1).toFixed(0)} ms, applied in ${(performance.now() - t2).toFixed(0)} ms`,
        );
        const trace = process.env.KILN_RESTRICTED_TRACE;
        if (trace) {
          // debugging aid: keep each step's change list and plan
          const n = String(++traced).padStart(3, '0');
          await copyFile(list, join(trace, `${n}.changes`)).catch(() => undefined);
          await copyFile(planFile, join(trace, `${n}.plan`)).catch(() => undefined);
        }
        t.state = [...stepLowers, upper];
        const rels = plan.filter((e) => e.kind === 'D' && e.recursive).map((e) => e.rel);
        if (rels.length > 0) t.movedOut = { upper, rels };
        if (moved && moved.size > 0) t.planted = { upper, moved };
      } catch (e) {
        t.state = undefined;
        throw e;
      } finally {
        t.open = false;
        await client.untrack(track).catch(() => undefined);
      }
    };
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      if (!unmounted) {
        // never unmounted: a source view (COPY --from) or a failed step. Unchanged → the tree still holds its state.
        unmounted = true;
        const list = join(snapDir, 'changes');
        const n = await client.changes(track, list).catch(() => -1);
        if (n !== 0 || (moved && moved.size > 0)) t.state = undefined;
        await client.untrack(track).catch(() => undefined);
        t.open = false;
      }
      t.refs--;
      if (t.refs <= 0) await this.dropTree(t);
      await client.remove(snapDir).catch(() => rm(snapDir, { recursive: true, force: true }));
    };
    return {
      root: t.root,
      upper,
      unmount: finish,
      // what the helper noted while it wrote the upper dir: the layer writer needs no getfattr pass
      upperXattrs: () => xattrs,
      release,
    };
  }
}
