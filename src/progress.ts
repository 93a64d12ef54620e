/**
 * A small progress reporter shared by pull/push/copy and the build engine. Tasks are named (`blob sha256:abcd…`)
 * and go through start → progress* → done | cached | error. Modes:
 *  - `tty`: a live block of lines redrawn in place (`blob sha256:abcd12345678  12.3MB/40.0MB`),
 *  - `plain`: one line per start/done/cached/error (CI logs), no byte-level noise,
 *  - `json`: one JSON event per line (progress events throttled per task),
 *  - `quiet`: nothing; `auto`: tty when the stream is a TTY and not in CI, else plain.
 */
import type { Writable } from 'node:stream';
import { KilnError } from './errors.js';

export type ProgressMode = 'auto' | 'tty' | 'plain' | 'json' | 'quiet';
export const PROGRESS_MODES: readonly ProgressMode[] = ['auto', 'tty', 'plain', 'json', 'quiet'];

export type ProgressEventType = 'start' | 'progress' | 'done' | 'cached' | 'error' | 'log';

export interface ProgressEvent {
  type: ProgressEventType;
  /** Task id (stable key, e.g. a digest); absent for free-form log lines. */
  id?: string;
  /** Human name of the task. */
  name?: string;
  current?: number;
  total?: number;
  message?: string;
  /** Milliseconds since the epoch. */
  time: number;
}

interface Task {
  id: string;
  name: string;
  current: number;
  total: number | undefined;
  state: 'running' | 'done' | 'cached' | 'error';
  message: string | undefined;
  lastEmit: number;
}

/** Format a byte count like docker: 12.3MB (decimal units). */
export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${v}B` : `${v.toFixed(1)}${units[i]}`;
}

/** Short form of a digest for display: `sha256:0123456789ab`. */
export function shortDigest(d: string): string {
  const i = d.indexOf(':');
  return i < 0 ? d.slice(0, 12) : d.slice(0, i + 1 + 12);
}

export class Progress {
  readonly mode: Exclude<ProgressMode, 'auto'>;
  private readonly tasks = new Map<string, Task>();
  private drawnLines = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Every event, for tests and for consumers that want to forward them (e.g. the build service). */
  readonly listeners: ((e: ProgressEvent) => void)[] = [];

  constructor(
    mode: ProgressMode = 'auto',
    private readonly out: Writable & { isTTY?: boolean } = process.stderr,
    private readonly throttleMs = 200,
  ) {
    this.mode = mode === 'auto' ? (out.isTTY && !process.env.CI ? 'tty' : 'plain') : mode;
  }

  private emit(e: Omit<ProgressEvent, 'time'>): void {
    const ev: ProgressEvent = { ...e, time: Date.now() };
    for (const l of this.listeners) l(ev);
    if (this.mode === 'json') this.out.write(JSON.stringify(ev) + '\n');
  }

  private line(t: Task): string {
    const amount =
      t.total !== undefined && t.total > 0
        ? `${formatBytes(t.current)}/${formatBytes(t.total)}`
        : t.current > 0
          ? formatBytes(t.current)
          : '';
    switch (t.state) {
      case 'running':
        return `${t.name}  ${amount}`.trimEnd();
      case 'done':
        return `${t.name}  ${t.message ?? 'done'}`;
      case 'cached':
        return `${t.name}  ${t.message ?? 'cached'}`;
      case 'error':
        return `${t.name}  error: ${t.message ?? ''}`;
    }
  }

  private plain(s: string): void {
    if (this.mode === 'plain') this.out.write(s + '\n');
  }

  private scheduleDraw(): void {
    if (this.mode !== 'tty' || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.draw();
    }, this.throttleMs);
    this.timer.unref();
  }

  private draw(): void {
    if (this.mode !== 'tty') return;
    let s = '';
    if (this.drawnLines > 0) s += `\x1b[${this.drawnLines}A`;
    const lines = [...this.tasks.values()].map((t) => this.line(t));
    for (const l of lines) s += `\x1b[2K${l}\n`;
    this.drawnLines = lines.length;
    this.out.write(s);
  }

  /** A task begins. */
  start(id: string, name: string, total?: number): void {
    this.tasks.set(id, { id, name, current: 0, total, state: 'running', message: undefined, lastEmit: 0 });
    this.emit({ type: 'start', id, name, total });
    this.plain(`${name}  started`);
    this.scheduleDraw();
  }

  /** Bytes (or units) done so far. */
  update(id: string, current: number, total?: number): void {
    const t = this.tasks.get(id);
    if (!t) return;
    t.current = current;
    if (total !== undefined) t.total = total;
    const now = Date.now();
    if (this.mode === 'json' && now - t.lastEmit >= this.throttleMs) {
      t.lastEmit = now;
      this.emit({ type: 'progress', id, name: t.name, current, total: t.total });
    } else if (this.mode !== 'json') {
      for (const l of this.listeners) l({ type: 'progress', id, name: t.name, current, total: t.total, time: now });
    }
    this.scheduleDraw();
  }

  private finish(id: string, state: 'done' | 'cached' | 'error', message?: string): void {
    const t = this.tasks.get(id) ?? {
      id,
      name: id,
      current: 0,
      total: undefined,
      state,
      message,
      lastEmit: 0,
    };
    t.state = state;
    t.message = message;
    if (state === 'done' && t.total !== undefined) t.current = t.total;
    this.tasks.set(id, t);
    this.emit({ type: state, id, name: t.name, message, current: t.current, total: t.total });
    this.plain(this.line(t));
    this.scheduleDraw();
  }

  done(id: string, message?: string): void {
    this.finish(id, 'done', message);
  }

  cached(id: string, message?: string): void {
    this.finish(id, 'cached', message);
  }

  error(id: string, message: string): void {
    this.finish(id, 'error', message);
  }

  /** A free-form status line (e.g. a build step header or `pushed app@sha256:…`). */
  log(message: string): void {
    this.emit({ type: 'log', message });
    if (this.mode === 'plain') this.out.write(message + '\n');
    else if (this.mode === 'tty') {
      this.draw();
      this.out.write(message + '\n');
      this.drawnLines = 0;
      this.tasks.clear();
    }
  }

  /** Flush the final state (tty) and stop timers. */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.draw();
  }
}

/** Parse a --progress value. */
export function parseProgressMode(s: string | undefined): ProgressMode {
  const v = (s ?? 'auto').toLowerCase();
  if (!(PROGRESS_MODES as readonly string[]).includes(v)) {
    throw new KilnError('INVALID_OPTION', `invalid --progress "${s}"`, { hint: `use ${PROGRESS_MODES.join('|')}` });
  }
  return v as ProgressMode;
}

/** A reporter that prints nothing (default for library calls). */
export function silentProgress(): Progress {
  return new Progress('quiet');
}
