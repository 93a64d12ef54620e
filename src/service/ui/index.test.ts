/**
 * The UI's routes and the API's cookie auth, in process: a real SQLite store for tokens and sessions, the API
 * server from createApi over the in-memory FakeCore, and a stand-in bundle (the real one is tested in Chromium by
 * test/integration/ui.test.ts).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../api/server.js';
import { Store } from '../store/store.js';
import { FakeCore, build } from '../../../test/helpers/fake-core.js';
import { uiRoutes, safeNext } from './index.js';
import { UiSessions, csrfOf } from './sessions.js';
import type { UiAssets } from './assets.js';

let dir: string;
let app: FastifyInstance;
let sessions: UiSessions;
let store: Store;
let admin: string;
let viewer: string;
let core: FakeCore;

const assets: UiAssets = {
  js: 'app-T.js',
  css: 'app-T.css',
  files: new Map([
    [
      'app-T.js',
      {
        name: 'app-T.js',
        type: 'text/javascript',
        body: Buffer.from('1'),
        gzip: Buffer.from('g'),
        br: Buffer.from('b'),
        etag: '"e"',
      },
    ],
  ]),
};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-ui-'));
  store = Store.open(join(dir, 'kiln.db'));
  admin = store.createToken('alice', 'admin').token;
  viewer = store.createToken('victor', 'viewer').token;
  sessions = UiSessions.open(join(dir, 'kiln.db'));
  core = new FakeCore(dir);
  core.builds.push(build('b1'));
  app = createApi(core, { sessions });
  await app.register(uiRoutes({ core, sessions, assets }));
  await app.ready();
});

after(async () => {
  await app.close();
  sessions.close();
  store.close();
  await rm(dir, { recursive: true, force: true });
});

async function login(token: string, headers: Record<string, string> = {}) {
  return app.inject({
    method: 'POST',
    url: '/ui/login',
    headers: { 'content-type': 'application/x-www-form-urlencoded', host: 'kiln.test', ...headers },
    payload: new URLSearchParams({ token, next: '/builds/b1' }).toString(),
  });
}

function cookieOf(setCookie: unknown): string {
  const v = String(Array.isArray(setCookie) ? setCookie[0] : setCookie);
  return v.split(';')[0] as string;
}

test('the sign-in page is public, carries a CSP, and posts the token', async () => {
  const r = await app.inject({ url: '/' });
  assert.equal(r.statusCode, 200);
  assert.match(r.headers['content-security-policy'] as string, /default-src 'self'; script-src 'self'/);
  assert.match(r.body, /<input id="token" type="password" name="token"/);
  assert.doesNotMatch(r.body, /<script>|style=/);
  const x = await app.inject({ url: '/?next=%22%3E%3Cscript%3E' });
  assert.doesNotMatch(x.body, /"><script>/);
});

test('a valid token gets an HttpOnly SameSite=Strict cookie; a wrong one the form again', async () => {
  const bad = await login('kiln_wrong');
  assert.equal(bad.statusCode, 401);
  assert.match(bad.body, /not valid/);
  assert.equal(bad.headers['set-cookie'], undefined);
  const ok = await login(admin);
  assert.equal(ok.statusCode, 303);
  assert.equal(ok.headers.location, '/builds/b1');
  const sc = String(ok.headers['set-cookie']);
  assert.match(sc, /^kiln_session=[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Strict; Max-Age=\d+$/);
  assert.ok(!sc.includes(admin), 'never the token');
  const https = await login(admin, { 'x-forwarded-proto': 'https' });
  assert.match(String(https.headers['set-cookie']), /; Secure$/);
  const cross = await login(admin, { origin: 'https://evil.example' });
  assert.equal(cross.statusCode, 403);
});

test('the cookie authenticates API reads; mutations need the CSRF header; viewers stay read-only', async () => {
  const cookie = cookieOf((await login(admin)).headers['set-cookie']);
  const read = await app.inject({ url: '/api/v1/builds/b1', headers: { cookie } });
  assert.equal(read.statusCode, 200);
  const s = (await app.inject({ url: '/ui/session', headers: { cookie } })).json() as { role: string; csrf: string };
  assert.equal(s.role, 'admin');
  assert.equal(s.csrf, csrfOf(cookie.slice('kiln_session='.length)));
  const noCsrf = await app.inject({ method: 'POST', url: '/api/v1/builds/b1/cancel', headers: { cookie } });
  assert.equal(noCsrf.statusCode, 403);
  const wrong = await app.inject({
    method: 'POST',
    url: '/api/v1/builds/b1/cancel',
    headers: { cookie, 'x-kiln-csrf': s.csrf.slice(1) },
  });
  assert.equal(wrong.statusCode, 403);
  const ok = await app.inject({
    method: 'POST',
    url: '/api/v1/builds/b1/cancel',
    headers: { cookie, 'x-kiln-csrf': s.csrf },
  });
  assert.equal(ok.statusCode, 200, ok.body);
  const vcookie = cookieOf((await login(viewer)).headers['set-cookie']);
  const vs = (await app.inject({ url: '/ui/session', headers: { cookie: vcookie } })).json() as { csrf: string };
  const refused = await app.inject({
    method: 'POST',
    url: '/api/v1/builds/b1/rerun',
    headers: { cookie: vcookie, 'x-kiln-csrf': vs.csrf },
  });
  assert.equal(refused.statusCode, 403);
  assert.match(refused.body, /may only read/);
});

test('pages redirect to sign-in without a session; unknown builds are 404; sign-out ends the session', async () => {
  const anon = await app.inject({ url: '/builds/b1' });
  assert.equal(anon.statusCode, 303);
  assert.equal(anon.headers.location, '/?next=%2Fbuilds%2Fb1');
  assert.equal((await app.inject({ url: '/api/v1/builds' })).statusCode, 401);
  const cookie = cookieOf((await login(admin)).headers['set-cookie']);
  const page = await app.inject({ url: '/builds/b1', headers: { cookie } });
  assert.equal(page.statusCode, 200);
  assert.match(page.body, /<script type="module" src="\/ui\/assets\/app-T.js"><\/script>/);
  assert.equal((await app.inject({ url: '/builds/nope', headers: { cookie } })).statusCode, 404);
  const csrf = csrfOf(cookie.slice('kiln_session='.length));
  assert.equal((await app.inject({ method: 'POST', url: '/ui/logout', headers: { cookie } })).statusCode, 403);
  assert.equal(
    (await app.inject({ method: 'POST', url: '/ui/logout', headers: { cookie, 'x-kiln-csrf': csrf } })).statusCode,
    204,
  );
  assert.equal((await app.inject({ url: '/api/v1/builds', headers: { cookie } })).statusCode, 401);
  const back = await app.inject({ url: '/', headers: { cookie } });
  assert.match(back.body, /session has ended/);
});

test('revoking a token ends its sessions; sessions expire', async () => {
  const t = store.createToken('temp', 'admin');
  const made = sessions.create(t.token);
  assert.ok(made);
  const header = `other=1; kiln_session=${made.cookie}`;
  assert.equal(sessions.fromCookie(header)?.principal.name, 'temp');
  store.revokeToken(t.id);
  assert.equal(sessions.fromCookie(header), undefined);
  const later = UiSessions.open(join(dir, 'kiln.db'), { ttlMs: 1000, now: () => new Date(Date.now() - 5000) });
  const old = later.create(admin);
  later.close();
  assert.ok(old);
  assert.equal(sessions.fromCookie(`kiln_session=${old.cookie}`), undefined);
});

test('assets are served compressed and immutable; next never leaves the UI', async () => {
  const r = await app.inject({ url: '/ui/assets/app-T.js', headers: { 'accept-encoding': 'gzip, br' } });
  assert.equal(r.headers['content-encoding'], 'br');
  assert.match(String(r.headers['cache-control']), /immutable/);
  assert.equal((await app.inject({ url: '/ui/assets/nope.js' })).statusCode, 404);
  for (const bad of ['//evil.example', '/\\evil.example', 'https://evil.example', '/api/v1/builds', '/builds/../x']) {
    assert.equal(safeNext(bad), '/projects', bad);
  }
  assert.equal(safeNext('/builds?project=a&phase=failed'), '/builds?project=a&phase=failed');
});
