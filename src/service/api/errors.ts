/**
 * How the API answers a failure — the one place that maps error codes to HTTP statuses and shapes the error body
 * `{"error": {"code", "message", "hint"?}}`. Core errors are KilnErrors with stable codes; request errors come from
 * Fastify (validation, body size, content type). Anything else is a bug: 500 with a generic message, never the
 * error's own text or stack (it may name paths or internals), and the caller logs it.
 */
import type { ErrorObject } from 'ajv';
import { KilnError } from '../../errors.js';

/** The JSON error body. */
export interface ApiError {
  error: { code: string; message: string; hint?: string };
}

/** Error codes with a fixed status; `*_INVALID` codes not listed are 400 as well. */
const STATUS: Record<string, number> = {
  REQUEST_INVALID: 400,
  BODY_INVALID: 400,
  CONFIG_INVALID: 400,
  GIT_REF_NOT_FOUND: 400,
  GIT_URL_FORBIDDEN: 400,
  GIT_URL_INVALID: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  CONFLICT: 409,
  BUILD_CONFLICT: 409,
  BODY_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  GIT_FETCH_FAILED: 502,
};

/** The HTTP status of a KilnError code. */
export function statusOf(code: string): number {
  return STATUS[code] ?? (code.endsWith('_INVALID') ? 400 : 500);
}

/** Messages are one line in the API: multi-line ones (a config error per line) are joined with "; ". */
export function oneLine(s: string): string {
  return s
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter(Boolean)
    .join('; ');
}

/** Fastify's own request errors, by their `code`. */
const FASTIFY: Record<string, { code: string; message?: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'BODY_TOO_LARGE', message: 'request body is too large' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    code: 'UNSUPPORTED_MEDIA_TYPE',
    message: 'unsupported Content-Type: send application/json (or application/yaml for projects)',
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { code: 'BODY_INVALID', message: 'request body does not match Content-Length' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'BODY_INVALID', message: 'empty JSON body' },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'BODY_INVALID' },
};

/** The shape of the errors Fastify hands to the error handler (its FastifyError, structurally). */
export interface RequestError {
  code?: string;
  statusCode?: number;
  message: string;
  validation?: ErrorObject[];
  validationContext?: string;
}

/** One line for an Ajv validation failure (the first error; Fastify stops at it). */
export function validationMessage(context: string, errors: ErrorObject[]): string {
  const where = (e: ErrorObject): string => (context === 'querystring' ? 'query' : context) + e.instancePath;
  const e = errors[errors.length - 1];
  if (!e) return `invalid ${context}`;
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties':
      return `${where(e)}: unknown field "${String(p.additionalProperty)}"`;
    case 'required':
      return `${where(e)}: missing field "${String(p.missingProperty)}"`;
    case 'enum':
      return `${where(e)} must be one of ${(p.allowedValues as unknown[]).map(String).join(', ')}`;
    case 'anyOf': {
      // anyOf of `required` branches: name the alternatives.
      const names = errors
        .filter((x) => x.keyword === 'required' && x.instancePath === e.instancePath)
        .map((x) => `"${String((x.params as Record<string, unknown>).missingProperty)}"`);
      if (names.length) return `${where(e)} needs ${names.join(' or ')}`;
      return `${where(e)} ${e.message ?? 'is invalid'}`;
    }
    default:
      return `${where(e)} ${e.message ?? 'is invalid'}`;
  }
}

/** Status and body for any error thrown while handling a request; `internal` tells the caller to log it. */
export function toApiError(e: unknown): { status: number; body: ApiError; internal: boolean } {
  if (e instanceof KilnError) {
    const status = statusOf(e.code);
    const body: ApiError = { error: { code: e.code, message: oneLine(e.message) } };
    if (e.hint) body.error.hint = oneLine(e.hint);
    return { status, body, internal: status >= 500 && !STATUS[e.code] };
  }
  const r = (typeof e === 'object' && e !== null ? e : { message: String(e) }) as RequestError;
  if (r.validation) {
    const message = validationMessage(r.validationContext ?? 'request', r.validation);
    return { status: 400, body: { error: { code: 'REQUEST_INVALID', message } }, internal: false };
  }
  const known = r.code ? FASTIFY[r.code] : undefined;
  if (known) {
    const status = statusOf(known.code);
    return {
      status,
      body: { error: { code: known.code, message: known.message ?? oneLine(r.message) } },
      internal: false,
    };
  }
  if (typeof r.statusCode === 'number' && r.statusCode >= 400 && r.statusCode < 500) {
    // Other client errors Fastify raises (bad URL encoding, …): their messages are about the request.
    return {
      status: r.statusCode,
      body: { error: { code: 'REQUEST_INVALID', message: oneLine(r.message) } },
      internal: false,
    };
  }
  return {
    status: 500,
    body: { error: { code: 'INTERNAL', message: 'internal error (see the service log)' } },
    internal: true,
  };
}
