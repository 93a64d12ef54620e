/**
 * The pieces of a busybox base image shared by `kiln bootstrap busybox` (src/engine/bootstrap.ts) and the test
 * images (test/helpers/images.ts): an in-memory deterministic tar writer and the root filesystem entries.
 *
 * Root filesystem: /bin/busybox plus a symlink per applet, /etc/passwd (root, app 1000, nobody), /etc/group
 * (root, staff 50 with member app, app 1000, nobody), /root 0700, /home/app (1000:1000), /tmp 1777, /usr/bin/env.
 * Every entry is root-owned unless stated, with mtime 2024-01-01.
 */
import tarStream from 'tar-stream';

/** The mtime of every entry and the default `created` of the images. */
export const BUSYBOX_EPOCH = new Date('2024-01-01T00:00:00Z');
/** BUSYBOX_EPOCH as an image config `created` string (no milliseconds). */
export const BUSYBOX_CREATED = BUSYBOX_EPOCH.toISOString().replace('.000Z', 'Z');

export interface TarEntry {
  header: Partial<tarStream.Header> & { name: string };
  body?: Buffer;
}

/**
 * A deterministic tar of `entries` built in memory (small layers only): owner 0:0 without names and mtime
 * BUSYBOX_EPOCH unless an entry's header says otherwise.
 */
export async function makeTar(entries: TarEntry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      pack.entry(
        { uid: 0, gid: 0, uname: '', gname: '', mtime: BUSYBOX_EPOCH, ...e.header },
        e.body ?? Buffer.alloc(0),
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** The root filesystem entries (see the file comment) for busybox binary `bin`, one `bin/<applet>` link each. */
export function busyboxRootfsEntries(bin: Buffer, applets: readonly string[]): TarEntry[] {
  const dir = (name: string, mode = 0o755, uid = 0, gid = 0): TarEntry => ({
    header: { name: name + '/', type: 'directory', mode, uid, gid },
  });
  const file = (name: string, content: string | Buffer, mode = 0o644): TarEntry => {
    const body = Buffer.from(content);
    return { header: { name, type: 'file', mode, size: body.length }, body };
  };
  const link = (name: string, target: string): TarEntry => ({
    header: { name, type: 'symlink', linkname: target, mode: 0o777 },
  });
  return [
    dir('bin'),
    file('bin/busybox', bin, 0o755),
    ...applets.map((a) => link(`bin/${a}`, 'busybox')),
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
}
