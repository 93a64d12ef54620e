import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isKilnError } from '../errors.js';
import { mergeScopes, parseWWWAuthenticate, redact, TokenAuthenticator, type TokenFetcher } from './auth.js';
import { retryAfterMs, statusError } from './transport.js';

test('WWW-Authenticate: Bearer with quoted params, commas inside quotes, escaped quotes', () => {
  const [c] = parseWWWAuthenticate(
    'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"',
  );
  assert.equal(c?.scheme, 'bearer');
  assert.deepEqual(c?.params, {
    realm: 'https://auth.example.com/token',
    service: 'registry.example.com',
    scope: 'repository:a/b:pull,push repository:c:pull',
    error: 'insufficient_scope',
  });
  const [d] = parseWWWAuthenticate('Bearer realm="a \\"quoted\\" realm", service=plain');
  assert.equal(d?.params['realm'], 'a "quoted" realm');
  assert.equal(d?.params['service'], 'plain');
});

test('WWW-Authenticate: Basic, case-insensitive scheme and keys, several challenges, token68', () => {
  assert.deepEqual(parseWWWAuthenticate('Basic realm="Registry Realm"'), [
    { scheme: 'basic', params: { realm: 'Registry Realm' } },
  ]);
  assert.deepEqual(parseWWWAuthenticate('BEARER Realm="r" , Service="s"'), [
    { scheme: 'bearer', params: { realm: 'r', service: 's' } },
  ]);
  const many = parseWWWAuthenticate('Negotiate abc123==, Basic realm="x", Bearer realm="y",service="z"');
  assert.deepEqual(
    many.map((c) => c.scheme),
    ['negotiate', 'basic', 'bearer'],
  );
  assert.equal(many[0]?.params['token68'], 'abc123==');
  assert.equal(many[2]?.params['service'], 'z');
  assert.deepEqual(parseWWWAuthenticate(''), []);
});

test('scope merging unions actions per resource', () => {
  assert.deepEqual(mergeScopes(['repository:b:push', 'repository:a:pull', 'repository:b:pull']), [
    'repository:a:pull',
    'repository:b:pull,push',
  ]);
  assert.deepEqual(mergeScopes(['registry:catalog:*']), ['registry:catalog:*']);
});

test('redaction removes credentials from text', () => {
  const s = redact(
    'GET https://user:secret@h/v2/?access_token=abc&x=1 Authorization: Basic dXNlcjpwYXNz Bearer eyJhbGc.x.y',
  );
  assert.ok(!s.includes('secret'));
  assert.ok(!s.includes('dXNlcjpwYXNz'));
  assert.ok(!s.includes('eyJhbGc'));
  assert.ok(!s.includes('abc&'));
  assert.match(s, /x=1/);
});

test('token flow: anonymous GET with service+scopes, access_token preferred, cached per scope set, refresh', async () => {
  const calls: { url: string; headers: Record<string, string> }[] = [];
  let n = 0;
  const fetcher: TokenFetcher = async (url, init) => {
    calls.push({ url, headers: init.headers });
    n++;
    return {
      status: 200,
      body: Buffer.from(JSON.stringify({ token: `t${n}`, access_token: `a${n}`, expires_in: 300 })),
    };
  };
  const auth = new TokenAuthenticator(
    { scheme: 'bearer', params: { realm: 'http://auth/token', service: 'svc' } },
    undefined,
    fetcher,
  );
  assert.equal(await auth.token(['repository:app:pull']), 'a1');
  assert.equal(await auth.token(['repository:app:pull']), 'a1', 'cached');
  const u = new URL(calls[0]!.url);
  assert.equal(u.searchParams.get('service'), 'svc');
  assert.deepEqual(u.searchParams.getAll('scope'), ['repository:app:pull']);
  assert.equal(calls[0]!.headers['authorization'], undefined, 'anonymous');
  assert.equal(await auth.token(['repository:app:push', 'repository:app:pull', 'repository:src:pull']), 'a2');
  assert.deepEqual(new URL(calls[1]!.url).searchParams.getAll('scope'), [
    'repository:app:pull,push',
    'repository:src:pull',
  ]);
  assert.equal(await auth.token(['repository:app:pull'], true), 'a3', 'refresh bypasses the cache');
});

test('token flow: Basic credentials, `token` field, rejected credentials', async () => {
  const fetcher: TokenFetcher = async (_url, init) => {
    if (init.headers['authorization'] === 'Basic ' + Buffer.from('u:p').toString('base64')) {
      return { status: 200, body: Buffer.from(JSON.stringify({ token: 'tok' })) };
    }
    return { status: 401, body: Buffer.from('{"details":"invalid credentials"}') };
  };
  const ch = { scheme: 'bearer', params: { realm: 'http://auth/token' } };
  assert.equal(await new TokenAuthenticator(ch, { username: 'u', password: 'p' }, fetcher).token([]), 'tok');
  await assert.rejects(
    new TokenAuthenticator(ch, { username: 'u', password: 'wrong' }, fetcher).token([]),
    (e: unknown) => isKilnError(e, 'UNAUTHORIZED') && !e.message.includes('wrong'),
  );
});

test('token flow: identity token uses the OAuth2 refresh_token grant', async () => {
  let body = '';
  const fetcher: TokenFetcher = async (_url, init) => {
    assert.equal(init.method, 'POST');
    body = init.body ?? '';
    return { status: 200, body: Buffer.from(JSON.stringify({ access_token: 'x' })) };
  };
  const ch = { scheme: 'bearer', params: { realm: 'http://auth/token', service: 's' } };
  assert.equal(await new TokenAuthenticator(ch, { identityToken: 'rt' }, fetcher).token(['repository:a:pull']), 'x');
  const f = new URLSearchParams(body);
  assert.equal(f.get('grant_type'), 'refresh_token');
  assert.equal(f.get('refresh_token'), 'rt');
  assert.equal(f.get('scope'), 'repository:a:pull');
  assert.equal(f.get('service'), 's');
});

test('registry error bodies map to typed one-line errors', () => {
  const e = statusError(
    404,
    '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v1"}}]}',
    { label: 'pull 127.0.0.1:5000/app:v1', kind: 'manifest' },
  );
  assert.equal(e.code, 'MANIFEST_UNKNOWN');
  assert.equal(e.message, 'pull 127.0.0.1:5000/app:v1: manifest unknown (MANIFEST_UNKNOWN)');
  assert.equal(statusError(404, '', { label: 'x', kind: 'blob' }).code, 'BLOB_UNKNOWN');
  assert.equal(statusError(403, '', { label: 'x' }).message, 'x: requested access to the resource is denied (DENIED)');
  assert.equal(statusError(401, '', { label: 'x' }).code, 'UNAUTHORIZED');
  assert.equal(statusError(503, 'oops', { label: 'x' }).code, 'UNAVAILABLE');
  assert.equal(
    statusError(500, '{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}', { label: 'x' }).code,
    'REGISTRY_ERROR',
  );
  const t = statusError(429, '', { label: 'x' }, { 'retry-after': '7' });
  assert.equal(t.code, 'TOOMANYREQUESTS');
  assert.match(t.hint ?? '', /7s/);
});

test('Retry-After: seconds and HTTP dates', () => {
  assert.equal(retryAfterMs('3'), 3000);
  assert.equal(retryAfterMs(undefined), undefined);
  assert.equal(retryAfterMs('garbage'), undefined);
  const now = Date.parse('2024-01-01T00:00:00Z');
  assert.equal(retryAfterMs('Mon, 01 Jan 2024 00:00:05 GMT', now), 5000);
});
