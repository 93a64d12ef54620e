/**
 * Where the sandbox keeps its state. `$KILN_HOME` (default `$XDG_DATA_HOME/kiln` or `~/.local/share/kiln`)
 * holds `layers/`, `cache-mounts/` and `tmp/` (snapshots and per-RUN state). `tmp/` lives on the same filesystem as `layers/` so an upper dir can be renamed into the layer
 * store.
 */
import { mkdir, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { kilnHome } from '../oci/store.js';

/** `$KILN_HOME`, resolved exactly as the rest of kiln does (src/oci/store.ts). */
export function defaultKilnHome(): string {
  return kilnHome();
}

/** Env marker set for a process re-executed inside the build user namespace. */
export const BUILD_NS_ENV = 'KILN_IN_BUILD_NS';

/** A fresh private (0700) temp dir under `$KILN_HOME/tmp`. */
export async function kilnTempDir(home: string, prefix: string): Promise<string> {
  const base = join(home, 'tmp');
  await mkdir(base, { recursive: true, mode: 0o700 });
  return mkdtemp(join(base, prefix));
}
