/**
 * Small process and filesystem helpers shared by the differential-test helpers (dockerd, buildah, compare) and the
 * runner. Every command is run with an argument vector (never through a shell) and its output captured; a non-zero
 * exit throws an Error naming the command and the tail of its stderr.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Data written to the child's stdin (stdin is closed either way). */
  input?: string | Buffer;
  /** Return the result instead of throwing when the command exits non-zero. */
  allowFail?: boolean;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Human-readable command line for logs and errors. */
export function formatCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly result: RunResult,
  ) {
    super(
      `command failed (exit ${result.code}): ${command}\n` +
        tail(result.stderr || result.stdout, 60)
          .split('\n')
          .map((l) => `  | ${l}`)
          .join('\n'),
    );
    this.name = 'CommandError';
  }
}

/** Last `n` lines of a text. */
export function tail(text: string, n: number): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(Math.max(0, lines.length - n)).join('\n');
}

/** Run a command to completion and capture its output. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.stdin.on('error', () => {
      /* the child may exit before reading its input */
    });
    child.stdin.end(opts.input ?? '');
    child.on('close', (code, signal) => {
      const result: RunResult = {
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (signal ? `\n(killed by ${signal})` : ''),
      };
      if (result.code !== 0 && !opts.allowFail) reject(new CommandError(formatCommand(cmd, args), result));
      else resolve(result);
    });
  });
}

/** Mount points at or below `dir`, deepest first (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  let info: string;
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const prefix = dir.endsWith('/') ? dir : dir + '/';
  const found: string[] = [];
  for (const line of info.split('\n')) {
    const fields = line.split(' ');
    if (fields.length < 5) continue;
    // mountinfo escapes space, tab, newline and backslash as octal
    const mp = fields[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (mp === dir || mp.startsWith(prefix)) found.push(mp);
  }
  return [...new Set(found)].sort((a, b) => b.length - a.length);
}

/** Unmount everything below `dir` (lazily, deepest first) and remove it. Never throws. */
export async function removeTree(dir: string): Promise<void> {
  for (let pass = 0; pass < 3; pass++) {
    const mounts = mountsUnder(dir);
    if (mounts.length === 0) break;
    for (const mp of mounts) await run('umount', ['-l', mp], { allowFail: true });
  }
  await rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(async () => {
    // immutable/odd permission bits left by a build: make writable and retry once
    await run('chmod', ['-R', 'u+rwx', dir], { allowFail: true });
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  });
}
