/**
 * Dockerfile errors: a KilnError that knows the file and line range it is about, formatted BuildKit-style as
 * `Dockerfile:LINE: message`, with the offending source line available for display.
 */
import { KilnError } from '../errors.js';

export type DockerfileErrorCode =
  | 'DOCKERFILE_PARSE'
  | 'DOCKERFILE_EMPTY'
  | 'DOCKERFILE_DIRECTIVE'
  | 'DOCKERFILE_HEREDOC'
  | 'DOCKERFILE_INSTRUCTION'
  | 'DOCKERFILE_UNKNOWN_INSTRUCTION'
  | 'DOCKERFILE_UNKNOWN_FLAG'
  | 'DOCKERFILE_LINT';

export interface DockerfileErrorInit {
  file?: string;
  startLine?: number;
  endLine?: number;
  /** The source line(s) the error is about, shown under the message. */
  source?: string;
  hint?: string;
  cause?: unknown;
}

/** An error in a Dockerfile. `message` is `FILE:LINE: reason`; `reason` is the bare reason. */
export class DockerfileError extends KilnError {
  readonly file: string;
  readonly startLine: number;
  readonly endLine: number;
  readonly reason: string;
  readonly source: string | undefined;

  constructor(code: DockerfileErrorCode, reason: string, init: DockerfileErrorInit = {}) {
    const file = init.file ?? 'Dockerfile';
    const startLine = init.startLine ?? 0;
    const endLine = Math.max(init.endLine ?? startLine, startLine);
    const where = startLine > 0 ? `${file}:${startLine}` : file;
    const opts: { hint?: string; cause?: unknown } = {};
    const hint = init.hint ?? (init.source !== undefined ? sourceHint(init.source, startLine) : undefined);
    if (hint !== undefined) opts.hint = hint;
    if (init.cause !== undefined) opts.cause = init.cause;
    super(code, `${where}: ${reason}`, opts);
    this.name = 'DockerfileError';
    this.file = file;
    this.startLine = startLine;
    this.endLine = endLine;
    this.reason = reason;
    this.source = init.source;
  }

  /** Multi-line rendering: the message, then the offending lines numbered like `docker build` does. */
  format(): string {
    const out = [this.message];
    if (this.source !== undefined && this.startLine > 0) {
      const lines = this.source.split('\n');
      lines.forEach((l, i) => out.push(` ${String(this.startLine + i).padStart(4)} | ${truncate(l, 200)}`));
    }
    return out.join('\n');
  }
}

function truncate(s: string, n: number): string {
  return s.length > n ? s.slice(0, n) + '...' : s;
}

function sourceHint(source: string, line: number): string {
  const first = source.split('\n')[0] ?? '';
  return line > 0 ? `line ${line}: ${truncate(first.trim(), 120)}` : truncate(first.trim(), 120);
}

/** Is `e` a DockerfileError? */
export function isDockerfileError(e: unknown): e is DockerfileError {
  return e instanceof DockerfileError;
}
