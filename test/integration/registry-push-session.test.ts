/**
 * PushSession (src/registry/push.ts): layers uploaded while a build still runs, then the image pushed without
 * sending them again; a prefetch that fails is retried and reported by the push proper. Real registry behind a
 * request-recording proxy. Upload sessions opened ahead (RepositoryClient.openUploads) are taken by the push.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { appendFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RepositoryClient } from '../../src/registry/client.js';
import { OriginIndex } from '../../src/registry/origins.js';
import { PushSession, type PushOptions } from '../../src/registry/push.js';
import { parseReference } from '../../src/registry/reference.js';
import { closeTransports } from '../../src/registry/transport.js';
import type { Layer } from '../../src/oci/types.js';
import { makeBusyboxImage } from '../helpers/images.js';
import {
  startHttpProxy,
  startRegistry,
  type HttpProxyHooks,
  type ProxiedRequest,
  type TestProxy,
  type TestRegistry,
} from '../helpers/registry.js';

const uploadsOf = (reqs: ProxiedRequest[]): ProxiedRequest[] =>
  reqs.filter((r) => r.method === 'POST' && r.url.includes('/blobs/uploads/') && !r.url.includes('mount='));

interface Fixture {
  reg: TestRegistry;
  proxy: TestProxy;
  work: string;
  opts: PushOptions;
}

/** A real registry behind a recording (fault-injecting) proxy, a scratch dir and push options; all torn down. */
async function withRegistry(
  hooks: HttpProxyHooks,
  opts: (work: string) => PushOptions,
  fn: (f: Fixture) => Promise<void>,
): Promise<void> {
  const reg = await startRegistry();
  const proxy = await startHttpProxy(reg.host, hooks);
  const work = await mkdtemp(join(tmpdir(), 'kiln-session-'));
  const o = opts(work);
  try {
    await fn({ reg, proxy, work, opts: o });
  } finally {
    await closeTransports(o);
    await proxy.stop();
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
}

const noOrigins = (): PushOptions => ({ origins: null });

test('PushSession: prefetched layers are uploaded once, no manifest until push, then a complete image', async () => {
  const origins = (work: string): PushOptions => ({ origins: new OriginIndex(join(work, 'origins')) });
  await withRegistry({}, origins, async ({ reg, proxy, opts }) => {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/session', content: 'prefetched\n' }] });
    const layers = await img.layers();
    const s = new PushSession(parseReference(`${proxy.host}/team/app:1`), opts);
    for (const l of layers) s.prefetch(l);
    for (const l of layers) s.prefetch(l); // a second prefetch of the same blob is a no-op
    await s.settle();
    const before = proxy.requests.length;
    assert.equal(uploadsOf(proxy.requests).length, layers.length, 'one upload per layer');
    const tag = await fetch(`http://${reg.host}/v2/team/app/manifests/1`, { method: 'HEAD' });
    assert.equal(tag.status, 404, 'nothing is tagged before push');
    for (const l of layers) {
      const h = await fetch(`http://${reg.host}/v2/team/app/blobs/${await l.digest()}`, { method: 'HEAD' });
      assert.equal(h.status, 200);
    }

    const res = await s.push(img);
    assert.equal(res.digest, await img.digest());
    const after = proxy.requests.slice(before);
    assert.equal(uploadsOf(after).length, 1, 'only the config is uploaded by push: ' + JSON.stringify(after));
    const got = await fetch(`http://${reg.host}/v2/team/app/manifests/1`, {
      headers: { accept: await img.mediaType() },
    });
    assert.equal(got.status, 200);
    assert.equal(Buffer.from(await got.arrayBuffer()).equals(await img.rawManifest()), true);
  });
});

test('PushSession: a failed prefetch is forgotten; push uploads the blob and succeeds', async () => {
  let refuse = true;
  const hooks: HttpProxyHooks = {
    intercept: (r) =>
      refuse && r.method === 'POST' && r.url.includes('/blobs/uploads/') ? { status: 400 } : undefined,
  };
  await withRegistry(hooks, noOrigins, async ({ proxy, opts }) => {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/session', content: 'retry\n' }] });
    const s = new PushSession(parseReference(`${proxy.host}/team/app:2`), opts);
    for (const l of await img.layers()) s.prefetch(l);
    await s.settle(); // never throws
    refuse = false;
    const res = await s.push(img);
    assert.equal(res.digest, await img.digest());
    assert.deepEqual([...res.blobs.values()].sort(), ['uploaded', 'uploaded', 'uploaded']);
  });
});

/** Write `data` to `file` in pieces, like the layer writer does; resolves to its digest and size (or fails). */
async function slowWriter(file: string, data: Buffer, fail = false): Promise<{ digest: string; size: number }> {
  const step = Math.ceil(data.length / 7);
  for (let off = 0; off < data.length; off += step) {
    await appendFile(file, data.subarray(off, off + step));
    await new Promise((r) => setTimeout(r, 10));
    if (fail && off > 0) throw new Error('layer writer failed');
  }
  return { digest: 'sha256:' + createHash('sha256').update(data).digest('hex'), size: data.length };
}

async function blobBytes(l: Layer): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of await l.compressed()) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

test('PushSession.stream: a layer is uploaded while it is written, once, and push reuses it', async () => {
  await withRegistry({}, noOrigins, async ({ reg, proxy, work, opts }) => {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/streamed', content: 'x'.repeat(300_000) }] });
    const layers = await img.layers();
    const s = new PushSession(parseReference(`${proxy.host}/team/app:3`), opts);
    for (const [i, l] of layers.entries()) {
      const path = join(work, `layer${i}.tmp`);
      const written = slowWriter(path, await blobBytes(l));
      s.stream({ path, written });
      await written;
      s.prefetch(l); // what the engine does once the blob is in the store: waits for the stream
    }
    await s.settle();
    const res = await s.push(img);
    assert.equal(res.digest, await img.digest());
    const patches = proxy.requests.filter((r) => r.method === 'PATCH');
    assert.equal(patches.length, layers.length, 'one streamed PATCH per layer');
    assert.equal(uploadsOf(proxy.requests).length, layers.length + 1, 'layers streamed once, then only the config');
    for (const l of layers) {
      const got = await fetch(`http://${reg.host}/v2/team/app/blobs/${await l.digest()}`);
      assert.equal(Buffer.from(await got.arrayBuffer()).equals(await blobBytes(l)), true);
    }
  });
});

test('PushSession.stream: a refused stream or a failed writer leaves no blob; push uploads the finished one', async () => {
  const hooks: HttpProxyHooks = {
    intercept: (r, n) => (r.method === 'PATCH' && n === 1 ? { status: 500 } : undefined),
  };
  await withRegistry(hooks, noOrigins, async ({ reg, proxy, work, opts }) => {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/refused', content: 'y'.repeat(200_000) }] });
    const [base, top] = (await img.layers()) as [Layer, Layer];
    const s = new PushSession(parseReference(`${proxy.host}/team/app:4`), opts);
    // the registry answers the streamed PATCH with 500
    const p1 = join(work, 'base.tmp');
    const w1 = slowWriter(p1, await blobBytes(base));
    s.stream({ path: p1, written: w1 });
    await w1;
    // the writer of the other layer fails half-way: its upload session is cancelled
    const p2 = join(work, 'top.tmp');
    const w2 = slowWriter(p2, await blobBytes(top), true);
    w2.catch(() => undefined);
    s.stream({ path: p2, written: w2 });
    await s.settle();
    for (const l of [base, top]) {
      const h = await fetch(`http://${reg.host}/v2/team/app/blobs/${await l.digest()}`, { method: 'HEAD' });
      assert.equal(h.status, 404, 'no blob from a failed stream');
    }
    assert.ok(
      proxy.requests.some((r) => r.method === 'DELETE' && r.url.includes('/blobs/uploads/')),
      'the broken upload session is cancelled',
    );
    const res = await s.push(img);
    assert.equal(res.digest, await img.digest());
    assert.deepEqual([...res.blobs.values()].sort(), ['uploaded', 'uploaded', 'uploaded']);
  });
});

test('openUploads: sessions opened before the image exist are used by its push; one the registry lost is replaced; the rest are deleted', async () => {
  let loseFirstPut = true;
  const hooks: HttpProxyHooks = {
    // the registry refuses the first opened session when its blob arrives (expired: each registry says it its way)
    intercept: (r) => {
      if (loseFirstPut && r.method === 'PUT' && r.url.includes('/blobs/uploads/')) {
        loseFirstPut = false;
        return {
          status: 400,
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'upload session expired' }] }),
        };
      }
      return undefined;
    },
  };
  await withRegistry(hooks, noOrigins, async ({ reg, proxy, opts }) => {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/opened', content: 'opened\n' }] });
    const ref = parseReference(`${proxy.host}/team/app:4`);
    const client = new RepositoryClient(ref, opts, 'test');
    client.openUploads(5);
    for (let i = 0; i < 400 && uploadsOf(proxy.requests).length < 5; i++) await new Promise((r) => setTimeout(r, 25));
    const opened = uploadsOf(proxy.requests).length;
    assert.equal(opened, 5, 'five sessions opened');
    const res = await new PushSession(ref, opts).push(img);
    assert.equal(res.digest, await img.digest());
    // three blobs (two layers and the config), one lost session: four of the opened ones taken, no POST of its own
    assert.equal(uploadsOf(proxy.requests).length, opened, 'no upload started a session of its own');
    const got = await fetch(`http://${reg.host}/v2/team/app/manifests/4`, {
      headers: { accept: await img.mediaType() },
    });
    assert.equal(got.status, 200);
    for (const l of await img.layers()) {
      const h = await fetch(`http://${reg.host}/v2/team/app/blobs/${await l.digest()}`, { method: 'HEAD' });
      assert.equal(h.status, 200, 'every blob of the manifest is there');
    }
    await client.cancelOpenedUploads();
    const deletes = proxy.requests.filter((r) => r.method === 'DELETE' && r.url.includes('/blobs/uploads/'));
    assert.equal(deletes.length, 1, 'the one session left is deleted');
  });
});
