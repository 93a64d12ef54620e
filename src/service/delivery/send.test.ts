/**
 * One delivery attempt against a real local HTTP server (node:http): what counts as delivered, what is retried,
 * Retry-After in both forms, timeouts, refused connections, and error texts that never carry a secret.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Agent } from '../../registry/http.js';
import { isRetryableStatus, parseRetryAfter, postOnce, retryDelay } from './send.js';

let server: Server;
let base: string;
const agent = new Agent();
const seen: { method: string; url: string; headers: IncomingMessage['headers']; body: string }[] = [];
let respond: (req: IncomingMessage, res: ServerResponse) => void = (_q, res) => res.end();

before(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      });
      respond(req, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await agent.close();
});

const send = (path: string, timeoutMs = 2000, mask?: string[]) =>
  postOnce(
    { url: base + path, headers: { 'content-type': 'application/json', 'x-test': '1' }, body: '{"a":1}' },
    { dispatcher: agent, timeoutMs, ...(mask ? { mask } : {}) },
  );

test('2xx is delivered; the request arrives as sent (POST, headers, body)', async () => {
  respond = (_q, res) => res.writeHead(202).end('accepted');
  seen.length = 0;
  const r = await send('/hook?x=1');
  assert.deepEqual({ ok: r.ok, status: r.status, retryable: r.retryable }, { ok: true, status: 202, retryable: false });
  assert.equal(seen.length, 1);
  assert.equal(seen[0]!.method, 'POST');
  assert.equal(seen[0]!.url, '/hook?x=1');
  assert.equal(seen[0]!.headers['content-type'], 'application/json');
  assert.equal(seen[0]!.headers['x-test'], '1');
  assert.equal(seen[0]!.body, '{"a":1}');
});

test('5xx, 408 and 429 are retried; other 4xx and 3xx are not', async () => {
  for (const [status, retryable] of [
    [500, true],
    [502, true],
    [503, true],
    [408, true],
    [429, true],
    [400, false],
    [401, false],
    [404, false],
    [410, false],
    [301, false],
  ] as const) {
    respond = (_q, res) => res.writeHead(status, status === 301 ? { location: '/elsewhere' } : {}).end('no');
    const r = await send('/s');
    assert.equal(r.ok, false, String(status));
    assert.equal(r.status, status);
    assert.equal(r.retryable, retryable, String(status));
    assert.equal(r.error, `HTTP ${status}`);
    assert.equal(isRetryableStatus(status), retryable);
  }
});

test('Retry-After in seconds and as an HTTP date', async () => {
  respond = (_q, res) => res.writeHead(429, { 'retry-after': '7' }).end();
  assert.equal((await send('/r')).retryAfterMs, 7000);
  const at = new Date(Date.now() + 30_000).toUTCString();
  respond = (_q, res) => res.writeHead(503, { 'retry-after': at }).end();
  const ms = (await send('/r')).retryAfterMs!;
  assert.ok(ms > 25_000 && ms <= 30_000, String(ms));
  assert.equal(parseRetryAfter('soon'), undefined);
  assert.equal(parseRetryAfter(undefined), undefined);
  assert.equal(parseRetryAfter('999999'), 3600_000, 'capped at an hour');
  assert.equal(parseRetryAfter(new Date(0).toUTCString()), 0, 'a date in the past: now');
});

test('retryDelay doubles from the base, is capped, and waits at least Retry-After', () => {
  assert.deepEqual(
    [2, 3, 4, 5].map((n) => retryDelay(n, 1000)),
    [1000, 2000, 4000, 8000],
  );
  assert.equal(retryDelay(30, 1000), 600_000);
  assert.equal(retryDelay(2, 1000, 5000), 5000);
  assert.equal(retryDelay(4, 1000, 10), 4000);
});

test('a receiver that does not answer in time: timed out, retryable', async () => {
  respond = () => undefined; // never answers
  const r = await send('/slow', 300);
  assert.equal(r.ok, false);
  assert.equal(r.retryable, true);
  assert.match(r.error!, /timed out after 300 ms/);
  server.closeAllConnections();
});

test('a refused connection is retryable and its error text carries no masked secret', async () => {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const r = await postOnce(
    { url: `http://127.0.0.1:${port}/x`, headers: {}, body: '' },
    { dispatcher: agent, timeoutMs: 2000, mask: [String(port)] },
  );
  assert.equal(r.ok, false);
  assert.equal(r.retryable, true);
  assert.match(r.error!, /ECONNREFUSED/);
  assert.ok(!r.error!.includes(String(port)), `masked: ${r.error}`);
});

test('an abort through the signal (shutdown) is reported as such', async () => {
  respond = () => undefined;
  const ac = new AbortController();
  const p = postOnce(
    { url: base + '/a', headers: {}, body: '' },
    { dispatcher: agent, timeoutMs: 5000, signal: ac.signal },
  );
  setTimeout(() => ac.abort(), 50);
  const r = await p;
  assert.equal(r.ok, false);
  assert.match(r.error!, /aborted/);
  server.closeAllConnections();
});
