/**
 * Push then pull through each of the four kinds of real registry (plain, htpasswd, TLS with a private CA, token
 * auth), validating what kiln pushed with skopeo (and umoci for the unpacked rootfs).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { push, copy } from '../../src/registry/push.js';
import { getRemoteImage } from '../../src/registry/remote.js';
import { closeTransports } from '../../src/registry/transport.js';
import type { PushOptions } from '../../src/registry/push.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

const run = async (cmd: string, args: string[]): Promise<string> =>
  (await promisify(execFile)(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })).stdout;

async function sha(s: Readable): Promise<string> {
  const h = createHash('sha256');
  for await (const c of s) h.update(c as Buffer);
  return 'sha256:' + h.digest('hex');
}

function optsFor(reg: TestRegistry): PushOptions {
  const o: PushOptions = { monolithicMax: 64 * 1024, chunkSize: 256 * 1024 };
  if (reg.caFile) o.caFiles = [reg.caFile];
  if (reg.username) o.credentials = async () => ({ username: reg.username!, password: reg.password! });
  return o;
}

function skopeoCreds(reg: TestRegistry): string[] {
  return reg.username ? ['--creds', `${reg.username}:${reg.password}`] : [];
}

for (const mode of ['none', 'htpasswd', 'tls', 'token'] as const) {
  test(`push and pull through a ${mode} registry, validated by skopeo`, async () => {
    const reg = await startRegistry({ auth: mode });
    const opts = optsFor(reg);
    try {
      const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/kiln-test', content: `mode ${mode}\n` }] });
      const ref = `${reg.host}/kiln/app:v1`;
      const res = await push(img, ref, opts);
      assert.equal(res.digest, await img.digest());
      assert.deepEqual([...res.blobs.values()].sort(), ['uploaded', 'uploaded', 'uploaded']);

      // Pushing again uploads nothing: the blobs are known to be there (the manifest PUT confirms them)…
      const again = await push(img, ref, opts);
      assert.deepEqual([...again.blobs.values()], ['known', 'known', 'known']);
      // …or, checked, the registry says they exist.
      const checked = await push(img, ref, { ...opts, trustKnownBlobs: false });
      assert.deepEqual([...checked.blobs.values()], ['exists', 'exists', 'exists']);

      const pulled = await getRemoteImage(ref, opts);
      assert.equal(await pulled.digest(), await img.digest());
      assert.deepEqual(await pulled.rawManifest(), await img.rawManifest());
      assert.deepEqual(await pulled.rawConfig(), await img.rawConfig());
      const layers = await pulled.layers();
      assert.equal(layers.length, 2);
      for (const l of layers) {
        assert.equal(await sha(await l.compressed()), await l.digest());
        assert.equal(await sha(await l.uncompressed()), await l.diffID());
      }

      const out = await run('skopeo', [
        'inspect',
        '--tls-verify=false',
        ...skopeoCreds(reg),
        '--raw',
        `docker://${ref}`,
      ]);
      assert.equal('sha256:' + createHash('sha256').update(out).digest('hex'), res.digest);
      const info = JSON.parse(
        await run('skopeo', ['inspect', '--tls-verify=false', ...skopeoCreds(reg), `docker://${ref}`]),
      ) as { Digest: string; Layers: string[] };
      assert.equal(info.Digest, res.digest);
      assert.equal(info.Layers.length, 2);

      if (mode === 'none') {
        // Independent pull + unpack of what kiln pushed (the chunked busybox layer included).
        const dir = mkdtempSync(join(tmpdir(), 'kiln-umoci-'));
        try {
          await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${ref}`, `oci:${join(dir, 'layout')}:v1`]);
          await run('umoci', ['unpack', '--rootless', '--image', `${join(dir, 'layout')}:v1`, join(dir, 'bundle')]);
          assert.ok(existsSync(join(dir, 'bundle', 'rootfs', 'bin', 'busybox')));
          assert.ok(existsSync(join(dir, 'bundle', 'rootfs', 'etc', 'kiln-test')));
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }

      // Copy to another repository of the same registry: everything mounted, same digest.
      const c = await copy(ref, `${reg.host}/kiln/copy:v1`, opts);
      assert.equal(c.digest, res.digest);
      assert.deepEqual([...c.blobs.values()], ['mounted', 'mounted', 'mounted']);
      assert.ok(
        await reg.waitForLog(
          /POST \/v2\/kiln\/copy\/blobs\/uploads\/\?mount=sha256%3A[0-9a-f]{64}&from=kiln%2Fapp HTTP\/1\.1" 201/,
        ),
        'the registry saw a cross-repository mount',
      );
    } finally {
      await closeTransports(opts);
      await reg.stop();
    }
  });
}
