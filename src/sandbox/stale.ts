/**
 * Clean-up after a kiln that died without cleaning up (SIGKILL, OOM, power loss): its snapshot and RUN state
 * dirs under `$KILN_HOME/tmp` (`snap-*`, `run-*`, `probe-*`, `build-*`, `svc-*`) carry an `.owner` file (pid + start time); when that
 * process no longer exists, the mounts below the dir are detached and the dir removed. Dirs of live processes
 * (concurrent builds sharing the home) and dirs without an owner file are left alone.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { mountsUnder, unmount } from './mount.js';
import { OWNER_FILE, ownerId } from './paths.js';

/** snapshot, RUN and probe dirs; a build's temp dir (`build-`); a service worker's secrets (`svc-`). */
const PREFIXES = ['snap-', 'run-', 'probe-', 'build-', 'svc-', 'rtree-', 'rsnap-', 'rrun-'];

function alive(owner: string): boolean {
  const [pid] = owner.trim().split(' ');
  const n = Number(pid);
  if (!Number.isInteger(n) || n <= 0) return false;
  const now = ownerId(n);
  return now !== undefined && (owner.trim().includes(' ') ? now === owner.trim() : true);
}

/** Remove the temp dirs of dead kiln processes under `<kilnHome>/tmp`; returns the removed dirs. */
export async function cleanupStaleTempDirs(kilnHome: string): Promise<string[]> {
  const base = join(kilnHome, 'tmp');
  let names: string[];
  try {
    names = await readdir(base);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    if (!PREFIXES.some((p) => name.startsWith(p))) continue;
    const dir = join(base, name);
    let owner: string;
    try {
      owner = await readFile(join(dir, OWNER_FILE), 'utf8');
    } catch {
      continue;
    }
    if (alive(owner)) continue;
    try {
      for (const m of (await mountsUnder(dir)).reverse()) await unmount(m);
      await rm(dir, { recursive: true, force: true });
      removed.push(dir);
    } catch {
      // best effort: try again next time
    }
  }
  return removed;
}
