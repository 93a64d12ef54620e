/**
 * Where the sandbox keeps its state. `$KILN_HOME` (default `$XDG_DATA_HOME/kiln` or `~/.local/share/kiln`)
 * holds `layers/`, `cache-mounts/` and `tmp/` (snapshots and per-RUN state). `tmp/` lives on the same filesystem as `layers/` so an upper dir can be renamed into the layer
 * store.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { kilnHome } from '../util/paths.js';
import { ensureSpreadDir } from '../util/spread.js';

/** `$KILN_HOME`, resolved exactly as the rest of kiln does (src/util/paths.ts). */
export function defaultKilnHome(): string {
  return kilnHome();
}

/** Env marker set for a process re-executed inside the build user namespace. */
export const BUILD_NS_ENV = 'KILN_IN_BUILD_NS';

/**
 * A live process's identity for `.owner` files: pid and start time (so a reused pid is not mistaken for it);
 * undefined when there is no such live process.
 */
export function ownerId(pid: number = process.pid): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime), counted after the ")" that ends the command name.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // A zombie (exited, not yet reaped) or dead task does not own anything any more.
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
    return `${pid} ${fields[19]}`;
  } catch {
    return undefined;
  }
}

/**
 * A fresh private (0700) temp dir under `$KILN_HOME/tmp`, with an `.owner` file naming this process, so a later
 * kiln can clean it up (mounts included) when this process died without doing so (see stale.ts).
 */
export async function kilnTempDir(home: string, prefix: string): Promise<string> {
  const base = join(home, 'tmp');
  await ensureSpreadDir(base, 0o700);
  const dir = await mkdtemp(join(base, prefix));
  await writeFile(join(dir, OWNER_FILE), ownerId() ?? String(process.pid));
  return dir;
}

export const OWNER_FILE = '.owner';
