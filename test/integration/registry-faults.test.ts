/**
 * Failure handling against a real registry behind fault-injecting proxies: chunked upload resume after a cut
 * connection, retries on 503/429 (Retry-After honoured, bounded), a corrupted blob (DIGEST_MISMATCH, nothing
 * written), unreachable registries, TLS trust, malformed references, missing manifests.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { isKilnError } from '../../src/errors.js';
import { copy, push, type PushOptions } from '../../src/registry/push.js';
import { RepositoryClient } from '../../src/registry/client.js';
import { parseReference } from '../../src/registry/reference.js';
import { getRemoteImage } from '../../src/registry/remote.js';
import { closeTransports } from '../../src/registry/transport.js';
import { writeLocation } from '../../src/registry/locations.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startHttpProxy, startRegistry, startTcpProxy, runKiln } from '../helpers/registry.js';

const kiln = runKiln;

for (const bodyBytes of [0, 100_000]) {
  test(`chunked upload survives a connection cut mid-PATCH (${bodyBytes ? 'partial body' : 'headers only'})`, async () => {
    const reg = await startRegistry();
    const proxy = await startTcpProxy(reg.host, { cutPatch: 2, bodyBytes });
    const opts: PushOptions = { monolithicMax: 1024, chunkSize: 200 * 1024, parallelism: 1, retryBaseMs: 1 };
    try {
      const img = await makeBusyboxImage();
      const res = await push(img, `${proxy.host}/app:v1`, opts);
      assert.equal(proxy.cuts, 1, 'the proxy cut one PATCH');
      assert.equal(res.digest, await img.digest());
      if (bodyBytes === 0) {
        // Nothing reached the registry: kiln asked where the upload stood and continued in the same session.
        assert.ok(await reg.waitForLog(/"GET \/v2\/app\/blobs\/uploads\/[0-9a-f-]+\?_state=[^ ]+ HTTP\/1\.1" 204/));
      }
      // Independent read-back through the registry itself, digest-verified.
      const pulled = await getRemoteImage(`${reg.host}/app:v1`, opts);
      for (const l of await pulled.layers()) for await (const _ of await l.compressed());
      assert.equal(await pulled.digest(), res.digest);
    } finally {
      await closeTransports(opts);
      await proxy.stop();
      await reg.stop();
    }
  });
}

test('503 and 429 (with Retry-After) are retried; persistent 503 fails after bounded retries', async () => {
  const reg = await startRegistry();
  let mode: 'flaky' | 'down' = 'flaky';
  const proxy = await startHttpProxy(reg.host, {
    intercept: (req, n) => {
      if (!req.url.includes('/manifests/')) return undefined;
      if (mode === 'down')
        return { status: 503, body: '{"errors":[{"code":"UNAVAILABLE","message":"service unavailable"}]}' };
      if (req.method === 'GET' && n === 1) return { status: 503 };
      if (req.method === 'GET' && n === 2) return { status: 429, headers: { 'retry-after': '1' } };
      return undefined;
    },
  });
  const opts: PushOptions = { retryBaseMs: 5, maxRetries: 3 };
  try {
    const img = await makeBusyboxImage();
    await push(img, `${reg.host}/app:v1`, opts);
    const t0 = Date.now();
    const pulled = await getRemoteImage(`${proxy.host}/app:v1`, opts);
    assert.equal(await pulled.digest(), await img.digest());
    assert.ok(Date.now() - t0 >= 900, 'waited for Retry-After: 1');
    const gets = proxy.requests.filter((r) => r.method === 'GET' && r.url.includes('/manifests/'));
    assert.deepEqual(
      gets.map((r) => r.status),
      [503, 429, 200],
    );

    mode = 'down';
    const fresh: PushOptions = { retryBaseMs: 1, maxRetries: 2 };
    await assert.rejects(getRemoteImage(`${proxy.host}/app:v2`, fresh), (e: unknown) => {
      assert.ok(isKilnError(e, 'UNAVAILABLE'));
      assert.equal(e.message, `pull ${proxy.host}/app:v2: service unavailable (UNAVAILABLE)`);
      return true;
    });
    await closeTransports(fresh);
    const downGets = proxy.requests.filter((r) => r.url.includes('/manifests/v2'));
    assert.equal(downGets.length, 3, 'one attempt plus two retries');
  } finally {
    await closeTransports(opts);
    await proxy.stop();
    await reg.stop();
  }
});

test('a corrupted blob fails with DIGEST_MISMATCH and leaves no output behind', async () => {
  const reg = await startRegistry();
  const img = await makeBusyboxImage();
  const layerDigest = await (await img.layers())[0]!.digest();
  const proxy = await startHttpProxy(reg.host, {
    transform: (req, status) => {
      if (status !== 200 || req.method !== 'GET' || !req.url.endsWith(`/blobs/${layerDigest}`)) return undefined;
      let flipped = false;
      return new Transform({
        transform(chunk: Buffer, _e, cb) {
          if (!flipped && chunk.length > 100) {
            chunk = Buffer.from(chunk);
            chunk[100] = chunk[100]! ^ 0xff;
            flipped = true;
          }
          cb(null, chunk);
        },
      });
    },
  });
  const dir = mkdtempSync(join(tmpdir(), 'kiln-corrupt-'));
  const opts: PushOptions = {};
  try {
    await push(img, `${reg.host}/app:v1`, opts);
    // Library: writing the pulled image to an OCI layout fails and writes nothing.
    const remote = await getRemoteImage(`${proxy.host}/app:v1`, opts);
    await assert.rejects(
      writeLocation({ kind: 'oci', path: join(dir, 'lib-out') }, remote, opts),
      (e: unknown) => isKilnError(e, 'DIGEST_MISMATCH') && e.message.includes(layerDigest),
    );
    assert.ok(!existsSync(join(dir, 'lib-out')));
    // CLI: one line, exit 1, nothing written.
    const r = await kiln([
      'pull',
      `${proxy.host}/app:v1`,
      '--output',
      `type=oci,dest=${join(dir, 'cli-out')}`,
      '--progress',
      'quiet',
    ]);
    assert.equal(r.code, 1);
    const lines = r.stderr.trim().split('\n');
    assert.match(
      lines[0]!,
      new RegExp(
        `^kiln: pull ${proxy.host}/app:v1: blob ${layerDigest}: content digest sha256:[0-9a-f]{64} does not match`,
      ),
    );
    assert.ok(!existsSync(join(dir, 'cli-out')));
    assert.deepEqual(
      readdirSync(dir).filter((f) => !f.startsWith('.')),
      [],
    );
  } finally {
    await closeTransports(opts);
    rmSync(dir, { recursive: true, force: true });
    await proxy.stop();
    await reg.stop();
  }
});

test('unreachable registry, missing manifest, malformed reference: one-line errors', async () => {
  const reg = await startRegistry();
  const host = reg.host;
  const opts: PushOptions = {};
  try {
    await assert.rejects(getRemoteImage(`${host}/app:nope`, opts), (e: unknown) => {
      assert.ok(isKilnError(e, 'MANIFEST_UNKNOWN'));
      assert.equal(e.message, `pull ${host}/app:nope: manifest unknown (MANIFEST_UNKNOWN)`);
      return true;
    });
  } finally {
    await closeTransports(opts);
    await reg.stop();
  }
  // Port 1 (tcpmux) is privileged and unused: connections are refused (a stopped registry's port could be reused
  // by a registry of a concurrently running test).
  const dead = '127.0.0.1:1';
  const r = await kiln(['pull', `${dead}/app:v1`, '--output', 'type=oci,dest=/nonexistent/never']);
  assert.equal(r.code, 1);
  assert.equal(r.stderr.split('\n')[0], `kiln: pull ${dead}/app:v1: registry ${dead} is unreachable (ECONNREFUSED)`);
  assert.ok(!existsSync('/nonexistent/never'));
  const bad = await kiln(['pull', '127.0.0.1:5000/App:v1']);
  assert.equal(bad.code, 1);
  assert.equal(
    bad.stderr.split('\n')[0],
    'kiln: invalid reference "127.0.0.1:5000/App:v1": repository name must be lowercase',
  );
  const bad2 = await kiln(['inspect', 'app@sha256:1234']);
  assert.equal(bad2.code, 1);
  assert.match(bad2.stderr.split('\n')[0]!, /^kiln: invalid reference "app@sha256:1234": invalid reference format$/);
});

test('TLS: an untrusted certificate is refused unless the CA is given (or the host is insecure)', async () => {
  const reg = await startRegistry({ auth: 'tls' });
  const img = await makeBusyboxImage();
  const all: PushOptions[] = [];
  const o = (x: PushOptions): PushOptions => (all.push(x), x);
  try {
    await assert.rejects(push(img, `${reg.host}/app:v1`, o({})), (e: unknown) => {
      assert.ok(isKilnError(e, 'TLS_VERIFY_FAILED'));
      assert.match(e.message, new RegExp(`^push ${reg.host}/app:v1: TLS certificate of ${reg.host} not trusted`));
      assert.match(e.hint ?? '', /--registry-ca/);
      return true;
    });
    await push(img, `${reg.host}/app:v1`, o({ caFiles: [reg.caFile!] }));
    const pulled = await getRemoteImage(`${reg.host}/app:v1`, o({ insecureRegistries: [reg.host] }));
    assert.equal(await pulled.digest(), await img.digest());
  } finally {
    for (const x of all) await closeTransports(x);
    await reg.stop();
  }
});

test('--registry-mirror serves docker.io pulls, falling back past a dead mirror', async () => {
  const reg = await startRegistry();
  const opts: PushOptions = {};
  try {
    const img = await makeBusyboxImage();
    await push(img, `${reg.host}/library/busybox:latest`, opts);
    // The first mirror is down: kiln falls back to the next one.
    const pulled = await getRemoteImage('busybox', { mirrors: ['http://127.0.0.1:1', `http://${reg.host}`] });
    assert.equal(await pulled.digest(), await img.digest());
    assert.ok(await reg.waitForLog(/GET \/v2\/library\/busybox\/manifests\/latest HTTP\/1\.1" 200/));
  } finally {
    await closeTransports(opts);
    await reg.stop();
  }
});

for (const chunked of [false, true]) {
  test(`copy from a corrupting source fails with DIGEST_MISMATCH and commits nothing (${chunked ? 'chunked' : 'monolithic'})`, async () => {
    const a = await startRegistry();
    const b = await startRegistry();
    const img = await makeBusyboxImage();
    const layer = await (await img.layers())[0]!.digest();
    const proxy = await startHttpProxy(a.host, {
      transform: (req, status) =>
        status === 200 && req.method === 'GET' && req.url.endsWith(`/blobs/${layer}`)
          ? new Transform({
              transform(chunk: Buffer, _e, cb) {
                const c = Buffer.from(chunk);
                c[0] = c[0]! ^ 0x55;
                cb(null, c);
              },
            })
          : undefined,
    });
    const opts: PushOptions = chunked ? { monolithicMax: 1024, chunkSize: 128 * 1024 } : {};
    try {
      await push(img, `${a.host}/app:v1`, opts);
      await assert.rejects(copy(`${proxy.host}/app:v1`, `${b.host}/app:v1`, opts), (e: unknown) => {
        assert.ok(isKilnError(e, 'DIGEST_MISMATCH'), String(e));
        return true;
      });
      const dst = new RepositoryClient(parseReference(`${b.host}/app:v1`), opts, 'check');
      assert.equal(await dst.headBlob(layer), undefined, 'the corrupt blob was not committed');
      assert.equal(await dst.headManifest('v1'), undefined, 'no manifest was pushed');
    } finally {
      await closeTransports(opts);
      await proxy.stop();
      await a.stop();
      await b.stop();
    }
  });
}

test('a blob download cut mid-body resumes with a Range request and still verifies', async () => {
  const reg = await startRegistry();
  const img = await makeBusyboxImage();
  const layer = (await img.layers())[0]!;
  const digest = await layer.digest();
  const proxy = await startTcpProxy(reg.host, { cutGetResponse: `/blobs/${digest}`, responseBytes: 64 * 1024 });
  const opts: PushOptions = { retryBaseMs: 1 };
  try {
    await push(img, `${reg.host}/app:v1`, opts);
    const pulled = await getRemoteImage(`${proxy.host}/app:v1`, opts);
    const l = await pulled.layerByDigest(digest);
    let n = 0;
    for await (const c of await l.compressed()) n += (c as Buffer).length;
    assert.equal(n, await layer.size());
    assert.equal(proxy.cuts, 1, 'the first download was cut');
    assert.ok(await reg.waitForLog(new RegExp(`"GET /v2/app/blobs/${digest} HTTP/1.1" 206`)), 'resumed with a range');
  } finally {
    await closeTransports(opts);
    await proxy.stop();
    await reg.stop();
  }
});
