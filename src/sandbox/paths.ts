/**
 * Where the sandbox keeps its state. `$KILN_HOME` (default `/var/lib/kiln` for root, else
 * `$XDG_DATA_HOME/kiln` or `~/.local/share/kiln`) holds `layers/`, `cache-mounts/` and `tmp/` (snapshots and
 * per-RUN state). `tmp/` lives on the same filesystem as `layers/` so an upper dir can be renamed into the layer
 * store.
 */
import { mkdir, mkdtemp } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';

export function defaultKilnHome(): string {
  if (process.env.KILN_HOME) return process.env.KILN_HOME;
  if (process.getuid?.() === 0 && process.env[BUILD_NS_ENV] !== '1') return '/var/lib/kiln';
  const data = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(data, 'kiln');
}

/** Env marker set for a process re-executed inside the build user namespace. */
export const BUILD_NS_ENV = 'KILN_IN_BUILD_NS';

/** A fresh private (0700) temp dir under `$KILN_HOME/tmp`. */
export async function kilnTempDir(kilnHome: string, prefix: string): Promise<string> {
  const base = join(kilnHome, 'tmp');
  await mkdir(base, { recursive: true, mode: 0o700 });
  return mkdtemp(join(base, prefix));
}
