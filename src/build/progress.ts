/**
 * Build progress rendering, BuildKit `--progress=plain` style: each step is a numbered vertex
 * (`#5 [2/4] RUN echo hi`), its output lines are prefixed with the vertex number and the seconds since it started
 * (`#5 0.213 hi`), and it ends with `#5 DONE 0.3s`, `#5 CACHED` or `#5 ERROR: ...`. `json` mode writes one JSON
 * event per line instead; `quiet` prints nothing. Output of concurrent steps is interleaved line by line.
 */
import type { ProgressSink } from './ports.js';
import type { ProgressMode } from './options.js';

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

  private emit(obj: Record<string, unknown>): void {
    this.out(JSON.stringify({ time: new Date().toISOString(), ...obj }) + '\n');
  }

  start(id: number, name: string): void {
    this.vertices.set(id, { name, started: this.now(), partial: { stdout: '', stderr: '' } });
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
    if (this.mode === 'json') this.emit({ type: 'log', id, stream, line });
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
    if (this.mode === 'quiet') return;
    if (this.mode === 'json') this.emit({ type: 'cached', id });
    else this.out(`#${id} CACHED\n`);
  }

  done(id: number): void {
    const v = this.flush(id);
    if (this.mode === 'quiet') return;
    const secs = v ? ((this.now() - v.started) / 1000).toFixed(1) : '0.0';
    if (this.mode === 'json') this.emit({ type: 'done', id, duration: Number(secs) });
    else this.out(`#${id} DONE ${secs}s\n`);
  }

  error(id: number, message: string): void {
    this.flush(id);
    if (this.mode === 'quiet') return;
    if (this.mode === 'json') this.emit({ type: 'error', id, error: message });
    else this.out(`#${id} ERROR: ${message}\n`);
  }

  warn(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    if (this.mode === 'json') this.emit({ type: 'warning', message });
    else if (this.mode !== 'quiet') this.out(`WARNING: ${message}\n`);
  }
}
