/**
 * Multi-platform images: an index is pushed children first (each by digest), then the index; pulls select the
 * requested platform; copies keep every platform byte for byte (mounted within a registry); skopeo agrees.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { newIndex } from '../../src/oci/image.js';
import { copy, push, type PushOptions } from '../../src/registry/push.js';
import { getRemote, getRemoteImage, isRemoteIndex } from '../../src/registry/remote.js';
import { closeTransports } from '../../src/registry/transport.js';
import { isKilnError } from '../../src/errors.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startRegistry } from '../helpers/registry.js';

const run = async (cmd: string, args: string[]): Promise<string> =>
  (await promisify(execFile)(cmd, args, { encoding: 'utf8' })).stdout;

for (const kind of ['oci', 'docker'] as const) {
  test(`push, pull by platform and copy a ${kind} multi-platform index`, async () => {
    const reg = await startRegistry();
    const opts: PushOptions = {};
    try {
      const amd = await makeBusyboxImage({ kind, platform: { os: 'linux', architecture: 'amd64' } });
      const arm = await makeBusyboxImage({ kind, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } });
      const ix = newIndex([{ image: amd }, { image: arm }], { kind });
      const ref = `${reg.host}/multi:v1`;
      const r = await push(ix, ref, opts);
      assert.equal(r.digest, await ix.digest());
      assert.equal(
        r.mediaType,
        kind === 'oci'
          ? 'application/vnd.oci.image.index.v1+json'
          : 'application/vnd.docker.distribution.manifest.list.v2+json',
      );
      // children are addressable by digest before the index was written
      assert.ok(await reg.waitForLog(new RegExp(`PUT /v2/multi/manifests/${await amd.digest()} HTTP/1.1" 201`)));

      const raw = await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${ref}`]);
      assert.deepEqual(Buffer.from(raw), await ix.rawManifest());
      const armInfo = JSON.parse(
        await run('skopeo', ['inspect', '--tls-verify=false', '--override-arch', 'arm64', `docker://${ref}`]),
      ) as { Digest: string; Architecture: string };
      assert.equal(armInfo.Architecture, 'arm64');

      const top = await getRemote(ref, opts);
      assert.ok(isRemoteIndex(top));
      assert.equal((await top.indexManifest()).manifests.length, 2);
      const pulledArm = await getRemoteImage(ref, { ...opts, platform: { os: 'linux', architecture: 'arm64' } });
      assert.equal(await pulledArm.digest(), await arm.digest());
      assert.equal((await pulledArm.config()).architecture, 'arm64');
      await assert.rejects(
        getRemoteImage(ref, { ...opts, platform: { os: 'linux', architecture: 's390x' } }),
        (e: unknown) =>
          isKilnError(e, 'PLATFORM_NOT_FOUND') && /linux\/s390x/.test(e.message) && /arm64/.test(e.hint ?? ''),
      );

      const c = await copy(ref, `${reg.host}/multi-copy:v1`, opts);
      assert.equal(c.digest, r.digest);
      assert.ok([...c.blobs.values()].every((v) => v === 'mounted'));
      const copiedArm = await getRemoteImage(`${reg.host}/multi-copy@${await arm.digest()}`, opts);
      assert.equal(await copiedArm.digest(), await arm.digest());
    } finally {
      await closeTransports(opts);
      await reg.stop();
    }
  });
}
