/**
 * Which insecure registries answered over plain HTTP last time (`$KILN_HOME/registry-schemes.json`).
 *
 * Why: for an `--insecure-registry` (or loopback) host kiln does what docker does — try HTTPS, then HTTP — and the
 * failed TLS attempt costs ~25 ms of every kiln run against a plain-HTTP registry (the common in-cluster case). A
 * host remembered here is pinged over HTTP first; if that fails in any way, the full HTTPS-then-HTTP probe runs as
 * before (a registry that moved to TLS answers plain HTTP with an error). Only hosts already allowed to be
 * insecure are remembered, and only when the HTTPS attempt met a server speaking plain HTTP on that very port (a
 * timed-out or reset TLS attempt is not evidence: a host with HTTPS on :443 and HTTP on :80 stays HTTPS-first).
 * At most MAX_HOSTS are kept.
 */
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { kilnHome } from '../util/paths.js';
import { writeFileAtomic } from '../util/atomic.js';

const MAX_HOSTS = 64;

/** The memo file's contents (read each time: once per registry per process, and other processes write it too). */
function memo(): { file: string; hosts: Record<string, 'http'> } {
  const file = join(kilnHome(), 'registry-schemes.json');
  let hosts: Record<string, 'http'> = {};
  try {
    const parsed = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) hosts = parsed as Record<string, 'http'>;
  } catch {
    /* none yet, or unreadable: probe */
  }
  return { file, hosts };
}

/** Did `host` answer over plain HTTP last time? */
export function rememberedHttp(host: string): boolean {
  return memo().hosts[host] === 'http';
}

/** Record (or forget) that `host` answers over plain HTTP. Best effort. */
export async function rememberHttp(host: string, http: boolean): Promise<void> {
  const m = memo();
  if ((m.hosts[host] === 'http') === http) return;
  if (http) {
    const all = Object.keys(m.hosts);
    for (const h of all.slice(0, Math.max(0, all.length - MAX_HOSTS + 1))) delete m.hosts[h]; // oldest first
    m.hosts[host] = 'http';
  } else delete m.hosts[host];
  try {
    await mkdir(dirname(m.file), { recursive: true });
    await writeFileAtomic(m.file, JSON.stringify(m.hosts));
  } catch {
    /* the memo is an optimisation only */
  }
}
