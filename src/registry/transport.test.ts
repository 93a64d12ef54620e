import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isLoopbackHost, Transport } from './transport.js';

async function serve(
  handler: (req: IncomingMessage, res: ServerResponse, port: number) => void,
): Promise<{ host: string; port: number; close(): Promise<void> }> {
  let port = 0;
  const s = createServer((req, res) => handler(req, res, port));
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  port = (s.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    port,
    close: async () => {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    },
  };
}

test('loopback detection', () => {
  for (const h of ['127.0.0.1:5000', '127.3.2.1', 'localhost:80', 'localhost', '[::1]:5000', '::1']) {
    assert.ok(isLoopbackHost(h), h);
  }
  for (const h of ['10.0.0.1:5000', 'example.com', '128.0.0.1', 'localhost.example.com']) {
    assert.ok(!isLoopbackHost(h), h);
  }
});

test('a Bearer token the registry stops accepting is refreshed once (with the challenge scope) and the request replayed', async () => {
  let issued = 0;
  let valid = '';
  const tokenScopes: string[][] = [];
  const srv = await serve((req, res, port) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/token') {
      issued++;
      valid = `tok${issued}`;
      tokenScopes.push(url.searchParams.getAll('scope'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: valid, expires_in: 300 }));
      return;
    }
    if (req.headers.authorization !== `Bearer ${valid}` || url.pathname === '/v2/') {
      res.writeHead(401, {
        'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="fake",scope="repository:app:pull repository:base:pull"`,
      });
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
  });
  const t = new Transport(srv.host, srv.host, { retryBaseMs: 1 });
  try {
    const ctx = { label: 'pull x', kind: 'manifest' as const };
    const r1 = await t.request({
      method: 'GET',
      path: '/v2/app/manifests/a',
      scopes: ['repository:app:pull'],
      expect: [200],
      ctx,
    });
    assert.equal(await r1.body.text(), 'ok');
    assert.equal(issued, 1);
    valid = 'rotated'; // the registry stops accepting tok1 (e.g. revoked early)
    const r2 = await t.request({
      method: 'GET',
      path: '/v2/app/manifests/b',
      scopes: ['repository:app:pull'],
      expect: [200],
      ctx,
    });
    assert.equal(await r2.body.text(), 'ok', 'replayed with the refreshed token');
    assert.equal(issued, 2, 'exactly one refresh');
    assert.deepEqual(tokenScopes[0], ['repository:app:pull']);
    assert.deepEqual(tokenScopes[1], ['repository:app:pull', 'repository:base:pull'], 'challenge scope merged in');
  } finally {
    await t.close();
    await srv.close();
  }
});

test('Basic auth is sent to the registry, redirects to another host drop Authorization, 5xx is retried', async () => {
  const seen: (string | undefined)[] = [];
  const blobSrv = await serve((req, res) => {
    seen.push(req.headers.authorization);
    res.writeHead(200);
    res.end('blob-bytes');
  });
  let fails = 1;
  const reg = await serve((req, res) => {
    if (req.headers.authorization !== 'Basic ' + Buffer.from('u:p').toString('base64')) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' });
      res.end();
      return;
    }
    if (req.url === '/v2/app/blobs/flaky' && fails-- > 0) {
      res.writeHead(503);
      res.end();
      return;
    }
    if (req.url?.startsWith('/v2/app/blobs/')) {
      res.writeHead(307, { location: `http://localhost:${blobSrv.port}/storage/x` });
      res.end();
      return;
    }
    res.writeHead(200);
    res.end('{}');
  });
  const t = new Transport(reg.host, reg.host, {
    retryBaseMs: 1,
    credentials: async () => ({ username: 'u', password: 'p' }),
  });
  try {
    const ctx = { label: 'pull x', kind: 'blob' as const };
    const r = await t.request({ method: 'GET', path: '/v2/app/blobs/sha', scopes: [], expect: [200], ctx });
    assert.equal(await r.body.text(), 'blob-bytes');
    assert.deepEqual(seen, [undefined], 'no credentials to the storage host');
    const f = await t.request({ method: 'GET', path: '/v2/app/blobs/flaky', scopes: [], expect: [200], ctx });
    assert.equal(await f.body.text(), 'blob-bytes');
  } finally {
    await t.close();
    await reg.close();
    await blobSrv.close();
  }
});

test('a registry with an open /v2/ that challenges per repository: the challenge is adopted', async () => {
  const srv = await serve((req, res, port) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/v2/') {
      res.writeHead(200);
      res.end('{}');
    } else if (url.pathname === '/token') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: 'repo-token' }));
    } else if (req.headers.authorization === 'Bearer repo-token') {
      res.writeHead(200);
      res.end('ok');
    } else {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="s"` });
      res.end();
    }
  });
  const t = new Transport(srv.host, srv.host, {});
  try {
    const r = await t.request({
      method: 'GET',
      path: '/v2/private/manifests/v1',
      scopes: ['repository:private:pull'],
      expect: [200],
      ctx: { label: 'pull x', kind: 'manifest' },
    });
    assert.equal(await r.body.text(), 'ok');
  } finally {
    await t.close();
    await srv.close();
  }
});
