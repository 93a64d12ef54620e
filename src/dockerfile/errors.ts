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
    super(code, `${where}: ${displayable(reason, 500)}`, opts);
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

/**
 * `s` safe to print on one terminal line: control characters (C0 but tab, DEL, C1 — a hostile Dockerfile could
 * carry escape sequences or carriage returns) become `\xNN`, and it is cut at `n` characters.
 */
export function displayable(s: string, n: number): string {
  const escaped = s.replace(
    /[\x00-\x08\x0a-\x1f\x7f-\x9f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
  return truncate(escaped, n);
}

function sourceHint(source: string, line: number): string {
  const first = displayable((source.split('\n')[0] ?? '').trim(), 120);
  return line > 0 ? `line ${line}: ${first}` : first;
}

/** Is `e` a DockerfileError? */
export function isDockerfileError(e: unknown): e is DockerfileError {
  return e instanceof DockerfileError;
}
