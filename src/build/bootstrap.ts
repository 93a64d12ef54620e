/**
 * `kiln bootstrap busybox`: a small, real, runnable base image made from the host's static busybox
 * (Debian `busybox-static`), stored in the local store as `localhost/busybox:latest` — so examples and first builds
 * work without any registry. The image is deterministic for a given busybox binary: fixed mtimes (2024-01-01),
 * owners and entry order, Docker media types and a BuildKit-like config.
 *
 * Root filesystem: /bin/busybox plus a symlink per applet (`busybox --list`), /etc/passwd (root, app 1000,
 * nobody), /etc/group, /root 0700, /home/app (1000:1000), /tmp 1777, /usr/bin/env.
 */
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { KilnError } from '../errors.js';
import { imageFromParts, layerFromBytes } from '../oci/image.js';
import { MediaType } from '../oci/mediatypes.js';
import { sha256 } from '../oci/digest.js';
import { hostPlatform } from '../oci/platform.js';
import type { Image, ImageConfig, Platform } from '../oci/types.js';
import { DEFAULT_PATH, serializeConfig } from './imageconfig.js';

const EPOCH = new Date('2024-01-01T00:00:00Z');
export const BOOTSTRAP_BUSYBOX_NAME = 'localhost/busybox:latest';

interface Entry {
  header: Partial<tarStream.Header> & { name: string };
  body?: Buffer;
}

async function makeTar(entries: Entry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      pack.entry(
        { uid: 0, gid: 0, uname: '', gname: '', mtime: EPOCH, ...e.header },
        e.body ?? Buffer.alloc(0),
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

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
  const dir = (name: string, mode = 0o755, uid = 0, gid = 0): Entry => ({
    header: { name: name + '/', type: 'directory', mode, uid, gid },
  });
  const file = (name: string, content: string | Buffer, mode = 0o644): Entry => {
    const body = Buffer.from(content);
    return { header: { name, type: 'file', mode, size: body.length }, body };
  };
  const link = (name: string, target: string): Entry => ({
    header: { name, type: 'symlink', linkname: target, mode: 0o777 },
  });
  const entries: Entry[] = [
    dir('bin'),
    file('bin/busybox', bin, 0o755),
    ...busyboxApplets(busybox).map((a) => link(`bin/${a}`, 'busybox')),
    dir('etc'),
    file('etc/group', 'root:x:0:\nstaff:x:50:app\napp:x:1000:\nnobody:x:65534:\n'),
    file(
      'etc/passwd',
      'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
    ),
    dir('home'),
    dir('home/app', 0o755, 1000, 1000),
    dir('root', 0o700),
    dir('tmp', 0o1777),
    dir('usr'),
    dir('usr/bin'),
    link('usr/bin/env', '../../bin/busybox'),
  ];
  const tar = await makeTar(entries);
  const layer = layerFromBytes(gzipSync(tar, { level: 9 }), MediaType.DockerLayerGzip, sha256(tar));
  const created = EPOCH.toISOString().replace('.000Z', 'Z');
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
