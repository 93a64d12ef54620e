/**
 * PushSession (src/registry/push.ts): layers uploaded while a build still runs, then the image pushed without
 * sending them again; a prefetch that fails is retried and reported by the push proper. Real registry behind a
 * request-recording proxy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OriginIndex } from '../../src/registry/origins.js';
import { PushSession, type PushOptions } from '../../src/registry/push.js';
import { parseReference } from '../../src/registry/reference.js';
import { closeTransports } from '../../src/registry/transport.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startHttpProxy, startRegistry, type ProxiedRequest } from '../helpers/registry.js';

const uploadsOf = (reqs: ProxiedRequest[]): ProxiedRequest[] =>
  reqs.filter((r) => r.method === 'POST' && r.url.includes('/blobs/uploads/') && !r.url.includes('mount='));

test('PushSession: prefetched layers are uploaded once, no manifest until push, then a complete image', async () => {
  const reg = await startRegistry();
  const proxy = await startHttpProxy(reg.host);
  const work = await mkdtemp(join(tmpdir(), 'kiln-session-'));
  const opts: PushOptions = { origins: new OriginIndex(join(work, 'origins')) };
  try {
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
  } finally {
    await closeTransports(opts);
    await proxy.stop();
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
});

test('PushSession: a failed prefetch is forgotten; push uploads the blob and succeeds', async () => {
  const reg = await startRegistry();
  let refuse = true;
  const proxy = await startHttpProxy(reg.host, {
    intercept: (r) =>
      refuse && r.method === 'POST' && r.url.includes('/blobs/uploads/') ? { status: 400 } : undefined,
  });
  const work = await mkdtemp(join(tmpdir(), 'kiln-session-'));
  const opts: PushOptions = { origins: null };
  try {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/session', content: 'retry\n' }] });
    const s = new PushSession(parseReference(`${proxy.host}/team/app:2`), opts);
    for (const l of await img.layers()) s.prefetch(l);
    await s.settle(); // never throws
    refuse = false;
    const res = await s.push(img);
    assert.equal(res.digest, await img.digest());
    assert.deepEqual([...res.blobs.values()].sort(), ['uploaded', 'uploaded', 'uploaded']);
  } finally {
    await closeTransports(opts);
    await proxy.stop();
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
});
