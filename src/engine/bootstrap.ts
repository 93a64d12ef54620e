/**
 * `kiln bootstrap busybox`: a small, real, runnable base image made from the host's static busybox
 * (Debian `busybox-static`), stored in the local store as `localhost/busybox:latest` — so examples and first builds
 * work without any registry. The image is deterministic for a given busybox binary: fixed mtimes (2024-01-01),
 * owners and entry order, Docker media types and a BuildKit-like config.
 *
 * Root filesystem (src/engine/busybox.ts): /bin/busybox plus a symlink per applet (`busybox --list`), /etc/passwd
 * (root, app 1000, nobody), /etc/group, /root 0700, /home/app (1000:1000), /tmp 1777, /usr/bin/env.
 */
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { KilnError } from '../errors.js';
import { imageFromParts, layerFromBytes } from '../oci/image.js';
import { MediaType } from '../oci/mediatypes.js';
import { sha256 } from '../oci/digest.js';
import { hostPlatform } from '../oci/platform.js';
import type { Image, ImageConfig, Platform } from '../oci/types.js';
import { BUSYBOX_CREATED, busyboxRootfsEntries, makeTar } from './busybox.js';
import { DEFAULT_PATH, serializeConfig } from './imageconfig.js';

export const BOOTSTRAP_BUSYBOX_NAME = 'localhost/busybox:latest';

/** The applets the binary provides (`busybox --list`), sorted; a small fixed set if it cannot list them. */
export function busyboxApplets(busybox: string): string[] {
  const r = spawnSync(busybox, ['--list'], { encoding: 'utf8' });
  const list = r.status === 0 ? r.stdout.split('\n').filter((a) => /^[a-z0-9_.[-]+$/i.test(a)) : [];
  const fallback = ['sh', 'ls', 'cat', 'echo', 'id', 'mkdir', 'rm', 'cp', 'mv', 'env', 'true', 'false', 'test'];
  return [...new Set(list.length ? list : fallback)].filter((a) => a !== 'busybox').sort();
}

/** The busybox base image (see the file comment). */
export async function busyboxImage(busybox = '/bin/busybox', platform: Platform = hostPlatform()): Promise<Image> {
  let bin: Buffer;
  try {
    bin = readFileSync(busybox);
  } catch (e) {
    throw new KilnError('BOOTSTRAP_NO_BUSYBOX', `cannot read ${busybox}`, {
      hint: 'install a static busybox (apt-get install busybox-static) or pass its path',
      cause: e,
    });
  }
  const entries = busyboxRootfsEntries(bin, busyboxApplets(busybox));
  const tar = await makeTar(entries);
  const layer = layerFromBytes(gzipSync(tar, { level: 9 }), MediaType.DockerLayerGzip, sha256(tar));
  const created = BUSYBOX_CREATED;
  const cfg: ImageConfig = {
    created,
    architecture: platform.architecture,
    os: platform.os,
    config: { Env: ['PATH=' + DEFAULT_PATH], Cmd: ['sh'] },
    rootfs: { type: 'layers', diff_ids: [sha256(tar)] },
    history: [{ created, created_by: `kiln bootstrap busybox: ${busybox}` }],
  };
  if (platform.variant) cfg.variant = platform.variant;
  const raw = serializeConfig(cfg);
  return imageFromParts({
    mediaType: async () => MediaType.DockerManifest,
    rawConfig: async () => raw,
    layers: async () => [layer],
  });
}
