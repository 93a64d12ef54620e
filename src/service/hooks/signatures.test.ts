/**
 * Webhook signature checks: each forge's header format (good, wrong, missing, malformed), computed independently
 * here with node:crypto the way each forge documents it, and proof that every comparison of a well-formed
 * signature goes through `timingSafeEqual` over equal-length buffers (no early exit on the first differing byte).
 */
import { test, mock, type Mock } from 'node:test';
import assert from 'node:assert/strict';
import crypto, { createHmac } from 'node:crypto';
import { syncBuiltinESMExports } from 'node:module';
import {
  signStandardWebhook,
  standardWebhookKey,
  verifyGitHub,
  verifyGitLabToken,
  verifyHexHmac,
  verifyStandardWebhook,
  type SignatureCheck,
} from './signatures.js';

const SECRET = 'It’s a Secret to Everybody';
const BODY = Buffer.from('{"ref":"refs/heads/main","zen":"Keep it logically awesome. ✓"}');
const hex = (key: string | Buffer, ...parts: (string | Buffer)[]): string => {
  const h = createHmac('sha256', key);
  for (const p of parts) h.update(p);
  return h.digest('hex');
};
const bad = (reason: string): SignatureCheck => ({ ok: false, reason }) as SignatureCheck;

/** Runs `fn` with `timingSafeEqual` spied on (also through the named imports of ESM modules). */
async function spyTimingSafeEqual<T>(
  fn: () => T | Promise<T>,
): Promise<{ result: T; calls: Mock<typeof crypto.timingSafeEqual>['mock']['calls'] }> {
  const m = mock.method(crypto, 'timingSafeEqual');
  syncBuiltinESMExports();
  try {
    const result = await fn();
    return { result, calls: m.mock.calls };
  } finally {
    m.mock.restore();
    syncBuiltinESMExports();
  }
}

test('GitHub: sha256=<hex HMAC of the raw body> (GitHub’s documented test vector), wrong, missing, malformed', async () => {
  // The example of GitHub's "Validating webhook deliveries" page: secret and payload below give this signature.
  const vector = await verifyGitHub(
    "It's a Secret to Everybody",
    Buffer.from('Hello, World!'),
    'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17',
  );
  assert.deepEqual(vector, { ok: true });
  const sig = `sha256=${hex(SECRET, BODY)}`;
  assert.deepEqual(await verifyGitHub(SECRET, BODY, sig), { ok: true });
  assert.deepEqual(await verifyGitHub('other secret', BODY, sig), bad('bad signature'));
  assert.deepEqual(await verifyGitHub(SECRET, Buffer.concat([BODY, Buffer.from(' ')]), sig), bad('bad signature'));
  assert.deepEqual(await verifyGitHub(SECRET, BODY, undefined), bad('missing signature'));
  assert.deepEqual(await verifyGitHub(SECRET, BODY, ''), bad('missing signature'));
  for (const h of [
    hex(SECRET, BODY),
    `sha1=${hex(SECRET, BODY).slice(0, 40)}`,
    `sha256=${hex(SECRET, BODY).toUpperCase()}`,
    `sha256=${hex(SECRET, BODY)}0`,
    `sha256=${hex(SECRET, BODY).slice(1)}`,
    `sha256= ${hex(SECRET, BODY)}`,
  ]) {
    assert.deepEqual(await verifyGitHub(SECRET, BODY, h), bad('malformed signature'), h);
  }
  // a body that is not UTF-8 cannot match (octokit hashes text)
  const binary = Buffer.from([0xff, 0xfe, 0x00]);
  assert.deepEqual(await verifyGitHub(SECRET, binary, `sha256=${hex(SECRET, binary)}`), bad('bad signature'));
});

test('Gitea/Forgejo (bare hex) and Bitbucket (sha256= prefix): good in either case, wrong, missing, malformed', () => {
  const h = hex(SECRET, BODY);
  assert.deepEqual(verifyHexHmac(SECRET, BODY, h, ''), { ok: true });
  assert.deepEqual(verifyHexHmac(SECRET, BODY, h.toUpperCase(), ''), { ok: true });
  assert.deepEqual(verifyHexHmac(SECRET, BODY, `sha256=${h}`, 'sha256='), { ok: true });
  assert.deepEqual(verifyHexHmac(SECRET, BODY, `SHA256=${h}`, 'sha256='), { ok: true });
  assert.deepEqual(verifyHexHmac('nope', BODY, h, ''), bad('bad signature'));
  assert.deepEqual(verifyHexHmac(SECRET, BODY, 'f'.repeat(64), ''), bad('bad signature'));
  assert.deepEqual(verifyHexHmac(SECRET, BODY, undefined, ''), bad('missing signature'));
  assert.deepEqual(verifyHexHmac(SECRET, BODY, undefined, 'sha256='), bad('missing signature'));
  assert.deepEqual(verifyHexHmac(SECRET, BODY, `sha256=${h}`, ''), bad('malformed signature'));
  assert.deepEqual(verifyHexHmac(SECRET, BODY, h, 'sha256='), bad('malformed signature'));
  assert.deepEqual(verifyHexHmac(SECRET, BODY, h.slice(2), ''), bad('malformed signature'));
  assert.deepEqual(verifyHexHmac(SECRET, BODY, `${h.slice(1)}g`, ''), bad('malformed signature'));
});

test('GitLab: X-Gitlab-Token equals the token; anything else, also a prefix or a longer value, is wrong', () => {
  const token = 'glpat-like-token-0123';
  assert.deepEqual(verifyGitLabToken(token, token), { ok: true });
  for (const v of [token.slice(0, -1), `${token}x`, token.toUpperCase(), ' ' + token, 'x']) {
    assert.deepEqual(verifyGitLabToken(token, v), bad('bad signature'), v);
  }
  assert.deepEqual(verifyGitLabToken(token, undefined), bad('missing signature'));
  assert.deepEqual(verifyGitLabToken(token, ''), bad('missing signature'));
});

test('Standard Webhooks: v1 signature of "id.timestamp.body" with the whsec_ key, rotation lists, timestamp window', () => {
  const key = Buffer.from('kiln-generic-hook-key-32-bytes!!');
  const secret = `whsec_${key.toString('base64')}`;
  const now = new Date('2026-01-01T12:00:00Z');
  const ts = String(now.getTime() / 1000);
  const sig = `v1,${createHmac('sha256', key).update(`msg_1.${ts}.`).update(BODY).digest('base64')}`;
  const h = (over: Partial<{ id: string; timestamp: string; signature: string }> = {}) => ({
    id: 'msg_1',
    timestamp: ts,
    signature: sig,
    ...over,
  });
  assert.equal(signStandardWebhook(secret, 'msg_1', Number(ts), BODY), sig, 'signer and checker agree');
  assert.deepEqual(standardWebhookKey(secret), key);
  assert.deepEqual(standardWebhookKey(key.toString('base64')), key, 'the whsec_ prefix is optional');
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h(), now), { ok: true });
  // rotation: several signatures, one valid; other versions are skipped
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h({ signature: `v1a,xyz v1,${'A'.repeat(43)}= ${sig}` }), now), {
    ok: true,
  });
  // the id and timestamp are signed
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h({ id: 'msg_2' }), now), bad('bad signature'));
  const later = String(Number(ts) + 1);
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h({ timestamp: later }), now), bad('bad signature'));
  assert.deepEqual(
    verifyStandardWebhook(`whsec_${Buffer.from('other').toString('base64')}`, BODY, h(), now),
    bad('bad signature'),
  );
  // within five minutes either way; outside: stale, whatever the signature
  const at = (s: number): Date => new Date(now.getTime() + s * 1000);
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h(), at(299)), { ok: true });
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h(), at(-299)), { ok: true });
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h(), at(301)), bad('stale timestamp'));
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h(), at(-301)), bad('stale timestamp'));
  // missing and malformed headers
  assert.deepEqual(
    verifyStandardWebhook(secret, BODY, { ...h(), signature: undefined }, now),
    bad('missing signature'),
  );
  assert.deepEqual(verifyStandardWebhook(secret, BODY, { ...h(), id: undefined }, now), bad('missing signature'));
  assert.deepEqual(
    verifyStandardWebhook(secret, BODY, { ...h(), timestamp: undefined }, now),
    bad('missing signature'),
  );
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h({ timestamp: '1.5e9' }), now), bad('malformed signature'));
  assert.deepEqual(
    verifyStandardWebhook(secret, BODY, h({ signature: sig.slice(3) }), now),
    bad('malformed signature'),
  );
  assert.deepEqual(verifyStandardWebhook(secret, BODY, h({ signature: 'v1,short=' }), now), bad('malformed signature'));
  assert.deepEqual(
    verifyStandardWebhook('whsec_!!!', BODY, h(), now),
    bad('bad signature'),
    'an unusable key matches nothing',
  );
});

test('constant time: well-formed wrong signatures are compared with timingSafeEqual over equal lengths, fully', async () => {
  const h = hex(SECRET, BODY);
  // differing in the first and in the last digit: the same path, one full-length comparison each
  for (const wrong of [`${h[0] === 'a' ? 'b' : 'a'}${h.slice(1)}`, `${h.slice(0, -1)}${h.endsWith('a') ? 'b' : 'a'}`]) {
    const hexCase = await spyTimingSafeEqual(() => verifyHexHmac(SECRET, BODY, wrong, ''));
    assert.deepEqual(hexCase.result, bad('bad signature'));
    assert.equal(hexCase.calls.length, 1);
    const [a, b] = hexCase.calls[0]!.arguments as [Buffer, Buffer];
    assert.equal(a.length, 32);
    assert.equal(b.length, 32);
    const gh = await spyTimingSafeEqual(() => verifyGitHub(SECRET, BODY, `sha256=${wrong}`));
    assert.deepEqual(gh.result, bad('bad signature'));
    assert.equal(gh.calls.length, 1, 'octokit compares with timingSafeEqual');
    assert.equal((gh.calls[0]!.arguments[0] as Buffer).length, (gh.calls[0]!.arguments[1] as Buffer).length);
  }
  // GitLab: tokens of any length are compared as two 32-byte digests
  for (const guess of ['g', 'glpat-like-token-012', 'x'.repeat(500)]) {
    const gl = await spyTimingSafeEqual(() => verifyGitLabToken('glpat-like-token-0123', guess));
    assert.deepEqual(gl.result, bad('bad signature'));
    assert.equal(gl.calls.length, 1);
    assert.deepEqual(
      gl.calls[0]!.arguments.map((x) => x.byteLength),
      [32, 32],
    );
  }
  // Standard Webhooks: every v1 entry is compared, also after a match
  const secret = `whsec_${Buffer.from('k'.repeat(24)).toString('base64')}`;
  const ts = Math.floor(Date.now() / 1000);
  const good = signStandardWebhook(secret, 'id', ts, BODY);
  const sw = await spyTimingSafeEqual(() =>
    verifyStandardWebhook(secret, BODY, {
      id: 'id',
      timestamp: String(ts),
      signature: `${good} v1,${'B'.repeat(43)}=`,
    }),
  );
  assert.deepEqual(sw.result, { ok: true });
  assert.equal(sw.calls.length, 2);
});
