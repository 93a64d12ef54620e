/**
 * How each forge proves that a webhook delivery is its own, checked over the raw request body (a re-serialised
 * JSON body would not hash the same) and always in constant time: HMAC digests are compared as fixed-length
 * buffers with `timingSafeEqual`, and a shared token (GitLab) is compared through the SHA-256 of both sides, so
 * neither a prefix of the right value nor its length can be learnt from response times.
 *
 * - GitHub: `X-Hub-Signature-256: sha256=<hex>` (HMAC-SHA256 of the body), checked by `@octokit/webhooks-methods`.
 * - Gitea / Forgejo: `X-Gitea-Signature` / `X-Forgejo-Signature`: the bare hex HMAC-SHA256 of the body.
 * - Bitbucket Cloud: `X-Hub-Signature: sha256=<hex>` (same HMAC as GitHub's, under GitHub's old header name).
 * - GitLab: `X-Gitlab-Token`: the secret token itself.
 * - Standard Webhooks (`generic`): `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` (a
 *   space-separated list; any entry may match), keyed with the base64 secret after its `whsec_` prefix, and a
 *   `webhook-timestamp` within five minutes of now (a captured request cannot be replayed later).
 *
 * The Standard Webhooks check uses node:crypto rather than the `standardwebhooks` package: the package computes the
 * HMAC in JavaScript (fast-sha256) and brings two dependencies for what is one HMAC and one comparison here.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { verify as verifyGitHubSignature } from '@octokit/webhooks-methods';

/** Why a delivery was not accepted as signed (recorded with the delivery; never includes a secret). */
export type SignatureFailure = 'missing signature' | 'malformed signature' | 'bad signature' | 'stale timestamp';

export type SignatureCheck = { ok: true } | { ok: false; reason: SignatureFailure };

const OK: SignatureCheck = { ok: true };
const fail = (reason: SignatureFailure): SignatureCheck => ({ ok: false, reason });

/** Standard Webhooks' tolerance between the sender's clock and ours, seconds. */
export const TIMESTAMP_TOLERANCE_S = 5 * 60;

const HEX_SHA256 = /^[0-9a-f]{64}$/i;

/** Constant-time equality of a received hex digest and the expected digest bytes. */
function hexDigestMatches(receivedHex: string, expected: Buffer): boolean {
  const got = Buffer.from(receivedHex, 'hex');
  // Both are 32 bytes: HEX_SHA256 was checked by the caller.
  return got.length === expected.length && timingSafeEqual(got, expected);
}

function hmacSha256(key: string | Buffer, ...parts: (string | Buffer)[]): Buffer {
  const h = createHmac('sha256', key);
  for (const p of parts) h.update(p);
  return h.digest();
}

/**
 * GitHub: `X-Hub-Signature-256` against the body. The header must be `sha256=` and 64 lowercase hex digits (what
 * GitHub sends); octokit's `verify` then compares in constant time. The body is hashed as UTF-8 text, as octokit
 * requires a string: a body that is not valid UTF-8 cannot match (GitHub sends JSON, which is).
 */
export async function verifyGitHub(secret: string, body: Buffer, header: string | undefined): Promise<SignatureCheck> {
  if (header === undefined || header === '') return fail('missing signature');
  if (!/^sha256=[0-9a-f]{64}$/.test(header)) return fail('malformed signature');
  const text = body.toString('utf8');
  if (body.length === 0 || !Buffer.from(text, 'utf8').equals(body)) return fail('bad signature');
  return (await verifyGitHubSignature(secret, text, header)) ? OK : fail('bad signature');
}

/**
 * Gitea, Forgejo (`bare hex`) and Bitbucket Cloud (`sha256=` prefix): the hex HMAC-SHA256 of the body. Hex digits
 * may come in either case.
 */
export function verifyHexHmac(
  secret: string,
  body: Buffer,
  header: string | undefined,
  prefix: '' | 'sha256=',
): SignatureCheck {
  if (header === undefined || header === '') return fail('missing signature');
  const value = header.trim();
  if (!value.toLowerCase().startsWith(prefix)) return fail('malformed signature');
  const hex = value.slice(prefix.length);
  if (!HEX_SHA256.test(hex)) return fail('malformed signature');
  return hexDigestMatches(hex, hmacSha256(secret, body)) ? OK : fail('bad signature');
}

/** GitLab: `X-Gitlab-Token` equals the project's token; compared as SHA-256 digests (equal length, constant time). */
export function verifyGitLabToken(secret: string, header: string | undefined): SignatureCheck {
  if (header === undefined || header === '') return fail('missing signature');
  const a = createHash('sha256').update(header, 'utf8').digest();
  const b = createHash('sha256').update(secret, 'utf8').digest();
  return timingSafeEqual(a, b) ? OK : fail('bad signature');
}

/** The key bytes of a Standard Webhooks secret (`whsec_` + base64; the prefix is optional); empty when unusable. */
export function standardWebhookKey(secret: string): Buffer {
  const b64 = secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return Buffer.alloc(0);
  return Buffer.from(b64, 'base64');
}

export interface StandardWebhookHeaders {
  id: string | undefined;
  timestamp: string | undefined;
  signature: string | undefined;
}

/**
 * Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`). The timestamp (integer seconds)
 * must be within {@link TIMESTAMP_TOLERANCE_S} of `now`; the signature header may list several `v1,<base64>`
 * entries (key rotation): one matching entry suffices. Entries of other versions are skipped; every `v1` entry is
 * compared in constant time, and all of them are compared (no early exit on the first match).
 */
export function verifyStandardWebhook(
  secret: string,
  body: Buffer,
  h: StandardWebhookHeaders,
  now: Date = new Date(),
): SignatureCheck {
  if (!h.signature || !h.id || !h.timestamp) return fail('missing signature');
  if (!/^\d{1,12}$/.test(h.timestamp)) return fail('malformed signature');
  if (Math.abs(now.getTime() / 1000 - Number(h.timestamp)) > TIMESTAMP_TOLERANCE_S) return fail('stale timestamp');
  const key = standardWebhookKey(secret);
  if (key.length === 0) return fail('bad signature');
  const expected = hmacSha256(key, `${h.id}.${h.timestamp}.`, body);
  let seen = 0;
  let matched = false;
  for (const entry of h.signature.split(' ')) {
    const comma = entry.indexOf(',');
    if (comma < 0 || entry.slice(0, comma) !== 'v1') continue;
    const b64 = entry.slice(comma + 1);
    if (!/^[A-Za-z0-9+/]{43}=$/.test(b64)) continue;
    seen++;
    const got = Buffer.from(b64, 'base64');
    if (got.length === expected.length && timingSafeEqual(got, expected)) matched = true;
  }
  if (matched) return OK;
  return fail(seen === 0 ? 'malformed signature' : 'bad signature');
}

/**
 * A Standard Webhooks signature header value for `body` (senders and tests; kiln's own outgoing hooks may use it).
 */
export function signStandardWebhook(secret: string, id: string, timestamp: number, body: Buffer | string): string {
  const mac = hmacSha256(standardWebhookKey(secret), `${id}.${timestamp}.`, body);
  return `v1,${mac.toString('base64')}`;
}
