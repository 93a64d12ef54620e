/**
 * Thin wrappers over util-linux mount/umount and a reader of /proc/self/mountinfo. All mounting in kiln goes
 * through here so errors are uniform (MOUNT_FAILED with the tool's stderr).
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { KilnError } from '../errors.js';

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a host tool to completion, capturing output (never throws for a non-zero exit). */
export function runTool(cmd: string, args: string[], opts: { cwd?: string; input?: string } = {}): Promise<ToolResult> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, {
      cwd: opts.cwd,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    if (opts.input !== undefined) p.stdin?.end(opts.input);
    p.on('error', (e) => resolve({ code: 127, stdout, stderr: stderr + e.message }));
    p.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

/** `mount -t <fstype> -o <options> <source> <target>` (options passed verbatim, never canonicalized). */
export async function mount(
  source: string,
  target: string,
  fstype: string | undefined,
  options: string | undefined,
  cwd?: string,
): Promise<void> {
  const args = ['--no-canonicalize'];
  if (fstype) args.push('-t', fstype);
  if (options) args.push('-o', options);
  args.push(source, target);
  const r = await runTool('mount', args, cwd === undefined ? {} : { cwd });
  if (r.code !== 0) {
    throw new KilnError('MOUNT_FAILED', `mounting ${fstype ?? 'bind'} on ${target} failed: ${r.stderr.trim()}`);
  }
}

/** Unmount `target`; falls back to a lazy (detached) unmount when it is busy. No error when not mounted. */
export async function unmount(target: string): Promise<void> {
  if (!(await isMountPoint(target))) return;
  const r = await runTool('umount', ['--no-canonicalize', target]);
  if (r.code === 0) return;
  const lazy = await runTool('umount', ['--no-canonicalize', '-l', target]);
  if (lazy.code !== 0 && (await isMountPoint(target))) {
    throw new KilnError('UNMOUNT_FAILED', `unmounting ${target} failed: ${r.stderr.trim()}`);
  }
}

export interface MountInfo {
  mountPoint: string;
  fstype: string;
  source: string;
  options: string;
}

/** Decode the octal escapes (\040 etc.) of /proc/self/mountinfo fields. */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The mounts of this process's mount namespace. */
export async function mountTable(): Promise<MountInfo[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const f = pre.split(' ');
    const g = post.split(' ');
    out.push({
      mountPoint: unescapeMountField(f[4] ?? ''),
      fstype: g[0] ?? '',
      source: unescapeMountField(g[1] ?? ''),
      options: g[2] ?? '',
    });
  }
  return out;
}

export async function isMountPoint(p: string): Promise<boolean> {
  return (await mountTable()).some((m) => m.mountPoint === p);
}

/** Mount points at or below `dir`. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const prefix = dir.endsWith('/') ? dir : dir + '/';
  return (await mountTable()).map((m) => m.mountPoint).filter((p) => p === dir || p.startsWith(prefix));
}
