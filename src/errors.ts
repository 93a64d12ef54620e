/**
 * Typed errors for kiln. Every failure a user can cause or meet carries a stable machine-readable `code`
 * (so callers, tests and the service can branch on it), a one-line human message, an optional `hint`
 * that says what to do about it, and the underlying `cause`. The CLI prints `kiln: <message>` plus the hint,
 * and only prints stacks with `--debug`.
 */
export class KilnError extends Error {
  readonly code: string;
  readonly hint: string | undefined;
  /** The process exit code this error means, when not the default (1; 130 for INTERRUPTED). */
  readonly exitCode: number | undefined;

  constructor(code: string, message: string, opts: { hint?: string; cause?: unknown; exitCode?: number } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'KilnError';
    this.code = code;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode;
  }
}

/** Narrowing helper: is `e` a KilnError (optionally with the given code)? */
export function isKilnError(e: unknown, code?: string): e is KilnError {
  return e instanceof KilnError && (code === undefined || e.code === code);
}

/** Error message of an unknown thrown value, without a stack. */
export function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}
