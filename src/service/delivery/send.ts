/**
 * One HTTP attempt of a delivery and the retry policy around it, kept apart from the queue so both are tested on
 * their own against real local servers.
 *
 * Policy: 2xx is delivered. 408, 429, 5xx, a timeout or a network error are retried — after `base · 2^(n-1)`
 * (1 s, 2 s, 4 s, … capped at 10 minutes), or later when the answer carries `Retry-After` (seconds or an HTTP date,
 * capped at one hour) — until the notification's attempts are used up. Any other answer (3xx: redirects are not
 * followed, a moved hook must be reconfigured; 4xx: the receiver refuses this request and would refuse it again)
 * fails at once. Bodies of answers are read and dropped (at most 64 KiB are waited for).
 */
import { errorMessage } from '../../errors.js';
import { request, type Dispatcher } from '../../registry/http.js';

/** What one attempt came to. */
export interface AttemptResult {
  ok: boolean;
  /** HTTP status, when an answer came. */
  status?: number;
  /** One line, without any secret (a network error, a timeout, `HTTP 500`). */
  error?: string;
  /** Whether another attempt may succeed. */
  retryable: boolean;
  /** What the receiver asked for with `Retry-After`, ms from now. */
  retryAfterMs?: number;
  durationMs: number;
}

export interface OutgoingRequest {
  url: string;
  headers: Record<string, string>;
  body: string;
}

export const DEFAULT_RETRY_BASE_MS = 1000;
export const MAX_BACKOFF_MS = 10 * 60_000;
export const MAX_RETRY_AFTER_MS = 60 * 60_000;

/** Whether an HTTP status is worth another attempt. */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/** `Retry-After` (delta seconds or an HTTP date) as ms from `now`, capped; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | string[] | undefined, now: number = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined) return undefined;
  const t = v.trim();
  let ms: number;
  if (/^\d+$/.test(t)) ms = Number(t) * 1000;
  else {
    const at = Date.parse(t);
    if (Number.isNaN(at)) return undefined;
    ms = at - now;
  }
  return Math.min(MAX_RETRY_AFTER_MS, Math.max(0, ms));
}

/** Wait before attempt `next` (2, 3, …): exponential from `baseMs`, at least what `Retry-After` asked. */
export function retryDelay(next: number, baseMs: number, retryAfterMs?: number): number {
  const backoff = Math.min(MAX_BACKOFF_MS, baseMs * 2 ** Math.max(0, next - 2));
  return Math.max(backoff, retryAfterMs ?? 0);
}

/** A network error as one line: its code and message, with every `mask` value replaced by `***`. */
function describeError(e: unknown, mask: readonly string[]): string {
  const code = (e as { code?: unknown }).code;
  let msg = errorMessage(e).split('\n')[0] ?? 'error';
  if (typeof code === 'string' && !msg.includes(code)) msg = `${code}: ${msg}`;
  for (const m of mask) if (m !== '') msg = msg.split(m).join('***');
  return msg.slice(0, 300);
}

/**
 * POST `req` once. Never throws: every outcome is an {@link AttemptResult}. `mask` lists secret values that must
 * not reach the error text. An abort through `signal` (shutdown) reports `aborted` as retryable.
 */
export async function postOnce(
  req: OutgoingRequest,
  opts: { dispatcher: Dispatcher; timeoutMs: number; signal?: AbortSignal; mask?: readonly string[] },
): Promise<AttemptResult> {
  const t0 = performance.now();
  const took = (): number => Math.round(performance.now() - t0);
  const timeout = AbortSignal.timeout(opts.timeoutMs);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  try {
    const res = await request(req.url, {
      method: 'POST',
      headers: req.headers,
      body: req.body,
      dispatcher: opts.dispatcher,
      signal,
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
    });
    await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined);
    const status = res.statusCode;
    if (status >= 200 && status < 300) return { ok: true, status, retryable: false, durationMs: took() };
    const retryAfterMs = parseRetryAfter(res.headers['retry-after']);
    return {
      ok: false,
      status,
      error: `HTTP ${status}`,
      retryable: isRetryableStatus(status),
      ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
      durationMs: took(),
    };
  } catch (e) {
    let error: string;
    if (opts.signal?.aborted) error = 'aborted: the service is stopping';
    else if (timeout.aborted) error = `timed out after ${opts.timeoutMs} ms`;
    else error = describeError(e, opts.mask ?? []);
    return { ok: false, error, retryable: true, durationMs: took() };
  }
}
