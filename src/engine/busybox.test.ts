import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readTar, type TarHeader } from '../layer/tarformat.js';
import { sha256 } from '../oci/digest.js';
import { BUSYBOX_CREATED, BUSYBOX_EPOCH, busyboxRootfsEntries, makeTar } from './busybox.js';
import { busyboxApplets, busyboxImage } from './bootstrap.js';

async function headers(tar: Buffer): Promise<Map<string, TarHeader>> {
  const out = new Map<string, TarHeader>();
  for await (const e of readTar([tar])) {
    for await (const _ of e.body);
    out.set(e.header.name, e.header);
  }
  return out;
}

test('busybox rootfs: owners, modes, links and a fixed mtime; the tar is deterministic', async () => {
  const bin = Buffer.from('not really busybox');
  const entries = busyboxRootfsEntries(bin, ['sh', 'ls']);
  const tar = await makeTar(entries);
  assert.ok(tar.equals(await makeTar(busyboxRootfsEntries(bin, ['sh', 'ls']))));
  const h = await headers(tar);
  assert.deepEqual(
    [...h.keys()],
    [
      'bin/',
      'bin/busybox',
      'bin/sh',
      'bin/ls',
      'etc/',
      'etc/group',
      'etc/passwd',
      'home/',
      'home/app/',
      'root/',
    ].concat(['tmp/', 'usr/', 'usr/bin/', 'usr/bin/env']),
  );
  for (const x of h.values()) assert.equal(x.mtime, BUSYBOX_EPOCH.getTime() / 1000, x.name);
  assert.equal(h.get('bin/busybox')!.mode, 0o755);
  assert.equal(h.get('bin/busybox')!.size, bin.length);
  assert.deepEqual([h.get('home/app/')!.uid, h.get('home/app/')!.gid], [1000, 1000]);
  assert.equal(h.get('root/')!.mode, 0o700);
  assert.equal(h.get('tmp/')!.mode, 0o1777);
  assert.equal(h.get('bin/sh')!.linkname, 'busybox');
  assert.equal(h.get('usr/bin/env')!.linkname, '../../bin/busybox');
  assert.equal(BUSYBOX_CREATED, '2024-01-01T00:00:00Z');
});

test('kiln bootstrap busybox: one layer of exactly that rootfs for /bin/busybox', async () => {
  const img = await busyboxImage('/bin/busybox');
  const tar = await makeTar(busyboxRootfsEntries(readFileSync('/bin/busybox'), busyboxApplets('/bin/busybox')));
  const cfg = await img.config();
  assert.deepEqual(cfg.rootfs.diff_ids, [sha256(tar)]);
  assert.equal(cfg.created, BUSYBOX_CREATED);
  assert.ok(busyboxApplets('/bin/busybox').includes('sh'));
});
