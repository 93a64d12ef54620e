/**
 * Build progress rendering, BuildKit `--progress=plain` style: each step is a numbered vertex
 * (`#5 [2/4] RUN echo hi`), its output lines are prefixed with the vertex number and the seconds since it started
 * (`#5 0.213 hi`), and it ends with `#5 DONE 0.3s`, `#5 CACHED` or `#5 ERROR: ...`. `json` mode writes one JSON
 * event per line instead, in src/progress.ts's ProgressEvent shape (`{type, id: "#5", name, message, time}`, plus
 * `stream` for log lines), the same stream the registry pushes report into; `quiet` prints nothing. Output of concurrent steps is interleaved line by line.
 */
import type { ProgressSink } from './ports.js';
import type { ProgressMode } from './options.js';
import type { ProgressEvent } from '../progress.js';
import { debugMark } from '../util/debug.js';

interface Vertex {
  name: string;
  started: number;
  partial: { stdout: string; stderr: string };
}

export class BuildProgress implements ProgressSink {
  private readonly vertices = new Map<number, Vertex>();
  private readonly warned = new Set<string>();

  constructor(
    private readonly mode: ProgressMode,
    private readonly out: (s: string) => void = (s) => process.stderr.write(s),
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** JSON events in src/progress.ts's ProgressEvent shape, so build steps and pushes read as one stream. */
  private emit(e: Omit<ProgressEvent, 'time' | 'id'> & { id: number; stream?: string; duration?: number }): void {
    this.out(JSON.stringify({ ...e, id: `#${e.id}`, time: Date.now() }) + '\n');
  }

  start(id: number, name: string): void {
    this.vertices.set(id, { name, started: this.now(), partial: { stdout: '', stderr: '' } });
    debugMark(`#${id} start ${name}`);
    if (this.mode === 'quiet') return;
    if (this.mode === 'json') this.emit({ type: 'start', id, name });
    else this.out(`\n#${id} ${name}\n`);
  }

  log(id: number, stream: 'stdout' | 'stderr', chunk: Buffer): void {
    const v = this.vertices.get(id);
    if (!v || this.mode === 'quiet') return;
    const text = v.partial[stream] + chunk.toString('utf8');
    const lines = text.split('\n');
    v.partial[stream] = lines.pop() ?? '';
    for (const line of lines) this.line(id, v, stream, line);
  }

  private line(id: number, v: Vertex, stream: string, line: string): void {
    const t = ((this.now() - v.started) / 1000).toFixed(3);
    if (this.mode === 'json') this.emit({ type: 'log', id, stream, message: line });
    else this.out(`#${id} ${t} ${line.replace(/\r$/, '')}\n`);
  }

  private flush(id: number): Vertex | undefined {
    const v = this.vertices.get(id);
    if (!v) return undefined;
    for (const s of ['stdout', 'stderr'] as const) {
      if (v.partial[s] !== '') this.line(id, v, s, v.partial[s]);
      v.partial[s] = '';
    }
    return v;
  }

  cached(id: number): void {
    this.flush(id);
    debugMark(`#${id} cached`);
    if (this.mode === 'quiet') return;
    if (this.mode === 'json') this.emit({ type: 'cached', id, name: this.vertices.get(id)?.name ?? '' });
    else this.out(`#${id} CACHED\n`);
  }

  done(id: number): void {
    const v = this.flush(id);
    debugMark(`#${id} done`);
    if (this.mode === 'quiet') return;
    const secs = v ? ((this.now() - v.started) / 1000).toFixed(1) : '0.0';
    if (this.mode === 'json') this.emit({ type: 'done', id, name: v?.name ?? '', duration: Number(secs) });
    else this.out(`#${id} DONE ${secs}s\n`);
  }

  error(id: number, message: string): void {
    this.flush(id);
    if (this.mode === 'quiet') return;
    if (this.mode === 'json') this.emit({ type: 'error', id, name: this.vertices.get(id)?.name ?? '', message });
    else this.out(`#${id} ERROR: ${message}\n`);
  }

  warn(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    if (this.mode === 'json')
      this.out(JSON.stringify({ type: 'log', message: `WARNING: ${message}`, time: Date.now() }) + '\n');
    else if (this.mode !== 'quiet') this.out(`WARNING: ${message}\n`);
  }
}
