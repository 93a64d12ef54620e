/**
 * Shared bits of the build integration tests: run the real `kiln` CLI (from source) as root or as the rootless
 * user, wait for a line of its output, and inspect what is left on the machine (mounts, temp dirs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KILN_FROM_SOURCE } from '../helpers/registry.js';
import { rootlessPrefix } from '../helpers/rootless.js';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const KILN = join(REPO, 'bin', 'kiln.js');

export interface KilnRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface KilnOptions {
  home: string;
  env?: NodeJS.ProcessEnv;
  rootless?: boolean;
  cwd?: string;
  /** Called with each stderr chunk (e.g. to send a signal once a step started). */
  onStderr?: (text: string, child: ChildProcess) => void;
}

/** Run `kiln ARGS` to completion. */
export function kiln(args: string[], o: KilnOptions): Promise<KilnRun> {
  const env: NodeJS.ProcessEnv = { ...process.env, KILN_HOME: o.home, KILN_FROM_SOURCE, ...o.env };
  delete env.SOURCE_DATE_EPOCH;
  if (o.env?.SOURCE_DATE_EPOCH) env.SOURCE_DATE_EPOCH = o.env.SOURCE_DATE_EPOCH;
  const prefix = o.rootless ? rootlessPrefix() : [];
  const cmd = prefix.length ? (prefix[0] as string) : process.execPath;
  const argv = prefix.length
    ? [
        ...prefix.slice(1),
        'env',
        `KILN_HOME=${o.home}`,
        `KILN_FROM_SOURCE=${KILN_FROM_SOURCE}`,
        `HOME=${o.home}`,
        process.execPath,
      ]
    : [];
  if (o.rootless && o.env) for (const [k, v] of Object.entries(o.env)) argv.splice(argv.length - 1, 0, `${k}=${v}`);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...argv, KILN, ...args], {
      env,
      cwd: o.cwd ?? REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      o.onStderr?.(stderr, child);
    });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Mount points (from /proc/self/mountinfo) under `dir`. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p === dir || p.startsWith(dir + '/'));
}

/** Entries of `$KILN_HOME/tmp` (snapshots, build temp dirs): empty after every build. */
export async function tmpLeftovers(home: string): Promise<string[]> {
  return (await readdir(join(home, 'tmp')).catch(() => [] as string[])).filter((n) => !n.startsWith('.'));
}

/** Lines of the build log that are `#N CACHED`. */
export function cachedCount(stderr: string): number {
  return stderr.split('\n').filter((l) => /^#\d+ CACHED$/.test(l)).length;
}
