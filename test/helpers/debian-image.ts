/**
 * The cached debootstrap root (scripts/debian-rootfs.sh: minbase bookworm from the Debian mirror, made once per
 * machine) as a one-layer OCI image in kiln's local store, for tests whose Dockerfiles need a real distribution
 * (apt-get, dpkg, useradd) without Docker Hub.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LocalStore } from '../../src/oci/store.js';
import { imageFromParts, layerFromUncompressed } from '../../src/oci/image.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { hostPlatform } from '../../src/oci/platform.js';

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'debian-rootfs.sh');

/** Put the Debian root into the store of KILN_HOME `home` as `ref` (default localhost/debian:bookworm). */
export async function storeDebianImage(home: string, ref = 'localhost/debian:bookworm'): Promise<void> {
  const made = spawnSync('bash', [SCRIPT], { encoding: 'utf8' });
  assert.equal(made.status, 0, made.stderr);
  const tar = made.stdout.trim();
  const layer = layerFromUncompressed(async () => createReadStream(tar), { compression: 'gzip' });
  const p = hostPlatform();
  const created = '2024-01-01T00:00:00Z';
  const raw = Buffer.from(
    JSON.stringify({
      created,
      architecture: p.architecture,
      os: p.os,
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['bash'] },
      rootfs: { type: 'layers', diff_ids: [await layer.diffID()] },
      history: [{ created, created_by: 'debootstrap --variant=minbase' }],
    }),
  );
  const image = imageFromParts({
    mediaType: async () => MediaType.OCIManifest,
    rawConfig: async () => raw,
    layers: async () => [layer],
  });
  const store = await LocalStore.open(home);
  await store.put(image, [ref]);
}
