/**
 * `configCache` (src/registry/remote.ts): an image config read from a registry once is kept in a content-addressed
 * blob dir and not fetched again — observed through a request-recording proxy in front of a real registry — and a
 * damaged cache entry is fetched again (and the result is still the registry's config, digest-verified).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobDir } from '../../src/oci/blobs.js';
import { push } from '../../src/registry/push.js';
import { getRemoteImage } from '../../src/registry/remote.js';
import { closeTransports, type RegistryOptions } from '../../src/registry/transport.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startHttpProxy, startRegistry } from '../helpers/registry.js';

test('a config read once comes from the config cache; a damaged entry is fetched again', async () => {
  const reg = await startRegistry();
  const proxy = await startHttpProxy(reg.host);
  const work = await mkdtemp(join(tmpdir(), 'kiln-config-cache-'));
  const cache = new BlobDir(join(work, 'blobs'));
  const opts: RegistryOptions = { origins: null, configCache: cache };
  try {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/cfg', content: 'cfg\n' }] });
    const ref = `${proxy.host}/team/base:1`;
    await push(img, ref, { origins: null });
    const cfgDigest = (await img.manifest()).config.digest;
    const configGets = (): number =>
      proxy.requests.filter((r) => r.method === 'GET' && r.url.endsWith(`/blobs/${cfgDigest}`)).length;

    assert.deepEqual(await (await getRemoteImage(ref, opts)).rawConfig(), await img.rawConfig());
    assert.equal(configGets(), 1);
    assert.ok(await cache.has(cfgDigest), 'kept in the cache');
    // a new image object (as a new build resolves its base): no request for the config
    const again = await getRemoteImage(ref, opts);
    assert.deepEqual(await again.rawConfig(), await img.rawConfig());
    assert.deepEqual((await again.layers()).length, 2);
    assert.equal(configGets(), 1, 'served from the cache');
    // a damaged entry (same size, other bytes) fails verification: fetched from the registry again
    const raw = await img.rawConfig();
    await writeFile(cache.path(cfgDigest), Buffer.alloc(raw.length, 0x20));
    assert.deepEqual(await (await getRemoteImage(ref, opts)).rawConfig(), raw);
    assert.equal(configGets(), 2);
    assert.deepEqual(await (await getRemoteImage(ref, opts)).rawConfig(), raw);
    assert.equal(configGets(), 2, 'the entry was replaced by the good one');
  } finally {
    await closeTransports(opts);
    await proxy.stop();
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
});
