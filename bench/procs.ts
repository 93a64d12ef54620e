/**
 * Process measurement for the benchmarks: run a command to completion while polling /proc for the resident set
 * of its whole process tree (the command and every descendant, summed), and time it with a monotonic clock.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export interface Measured {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall time in ms. */
  ms: number;
  /** Peak of the summed RSS of the process tree, bytes (sampled every `pollMs`). */
  peakRss: number;
}

/** pid → parent pid, for every process visible in /proc. */
function parentMap(): Map<number, number> {
  const m = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'latin1');
      // the comm field may contain spaces and parens: fields after the last ')'
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      m.set(Number(name), Number(rest[1]));
    } catch {
      /* exited */
    }
  }
  return m;
}

function rssOf(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'latin1');
    const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Summed RSS of `root` and all its descendants. */
export function treeRss(root: number): number {
  const parents = parentMap();
  const children = new Map<number, number[]>();
  for (const [pid, ppid] of parents) {
    const l = children.get(ppid);
    if (l) l.push(pid);
    else children.set(ppid, [pid]);
  }
  let sum = 0;
  const stack = [root];
  const seen = new Set<number>();
  while (stack.length) {
    const p = stack.pop() as number;
    if (seen.has(p)) continue;
    seen.add(p);
    sum += rssOf(p);
    for (const c of children.get(p) ?? []) stack.push(c);
  }
  return sum;
}

export interface MeasureOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  pollMs?: number;
  /** Track RSS (default true). */
  rss?: boolean;
}

/** Run `cmd args`, measuring wall time and the peak RSS of its process tree. Never throws on a non-zero exit. */
export function measure(cmd: string, args: string[], o: MeasureOptions = {}): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { env: o.env ?? process.env, cwd: o.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    let peak = 0;
    const sample = (): void => {
      if (child.pid !== undefined) peak = Math.max(peak, treeRss(child.pid));
    };
    const timer = o.rss === false ? undefined : setInterval(sample, o.pollMs ?? 50);
    child.on('error', (e) => {
      if (timer) clearInterval(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      const ms = performance.now() - t0;
      if (timer) clearInterval(timer);
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        ms,
        peakRss: peak,
      });
    });
  });
}

/** Median of numbers (mean of the middle two for even counts). */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}
