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
 */
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { PrepareOptions, Snapshot, Snapshotter } from '../../engine/ports.js';
import { debugLog } from '../../registry/transport.js';
import { kilnTempDir } from '../paths.js';
import { parseChanges, parseXattrs, type RestrictedClient } from './client.js';
import { planDiff, planText } from './plan.js';

interface Tree {
  dir: string;
  root: string;
  /** The lowers (bottom-most first) the tree's content stands for; undefined while unknown (a step failed). */
  state: string[] | undefined;
  open: boolean;
  refs: number;
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
    const t: Tree = { dir, root, state: undefined, open: false, refs: 0 };
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

  async prepare(lowers: string[], _opts?: PrepareOptions): Promise<Snapshot> {
    const client = this.opts.client;
    let tree = this.trees.find((t) => !t.open && sameList(t.state, lowers));
    tree ??= await this.newTree(lowers);
    const t = tree;
    t.open = true;
    t.refs++;
    const snapDir = await kilnTempDir(this.opts.kilnHome, 'rsnap-');
    const upper = join(snapDir, 'upper');
    let track: number;
    try {
      await mkdir(upper, { mode: 0o755 });
      track = await client.track(t.root);
    } catch (e) {
      t.open = false;
      t.refs--;
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
        const t1 = performance.now();
        const plan = await planDiff(t.root, stepLowers, changes);
        const planFile = join(snapDir, 'plan');
        await writeFile(planFile, planText(plan));
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
        if (n !== 0) t.state = undefined;
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
