/**
 * A warm S2I build (the kept working dir, synced in place) makes the layers a cold one (a fresh `cp -a` of the
 * source) makes from the same tree: a file capability (`security.capability`, which goes into the layer) on a
 * rewritten file and set on an unchanged one, a hard link made and a symlink made again between the builds. Root: a
 * capability can only be set (and kept by cp -a) with CAP_SETFCAP.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, link, lutimes, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kiln } from './build-helpers.js';

const isRoot = process.getuid?.() === 0;
let dir = '';
let home = '';

before(async () => {
  if (!isRoot) return;
  dir = await mkdtemp(join(tmpdir(), 'kiln-s2i-warm-'));
  home = join(dir, 'home');
  const b = join(dir, 'builder');
  await mkdir(join(b, 's2i'), { recursive: true });
  // assemble writes nothing: the layer is the sources the COPY folded into it
  await writeFile(join(b, 's2i', 'assemble'), '#!/bin/sh\nls -l /tmp/src\n');
  await writeFile(join(b, 's2i', 'run'), '#!/bin/sh\ntrue\n');
  for (const f of ['assemble', 'run']) await chmod(join(b, 's2i', f), 0o755);
  await writeFile(
    join(b, 'Dockerfile'),
    'FROM localhost/busybox:latest\nCOPY s2i/ /usr/libexec/s2i/\n' +
      'LABEL io.openshift.s2i.scripts-url=image:///usr/libexec/s2i\nUSER 1001\n',
  );
  const r = await kiln(['bootstrap', 'busybox'], { home });
  assert.equal(r.code, 0, r.stderr);
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** `kiln s2i build` of `app` with the test's builder (SOURCE_DATE_EPOCH 2021), then the image's diff_ids. */
async function s2iBuild(app: string, tag: string, ...more: string[]): Promise<string[]> {
  const r = await kiln(['s2i', 'build', app, 'localhost/builder:1', tag, '--progress', 'plain', ...more], {
    home,
    env: { SOURCE_DATE_EPOCH: String(new Date('2021-01-01T00:00:00Z').getTime() / 1000) },
  });
  assert.equal(r.code, 0, r.stderr);
  const i = await kiln(['inspect', '--config', tag], { home });
  assert.equal(i.code, 0, i.stderr);
  return (JSON.parse(i.stdout) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
}

test(
  's2i: a warm build (synced working dir) gives the layers a cold build (cp -a) gives',
  { skip: isRoot ? false : 'needs root (CAP_SETFCAP for a file capability)' },
  async () => {
    const b = await kiln(['build', '-q', '-t', 'localhost/builder:1', join(dir, 'builder')], { home });
    assert.equal(b.code, 0, b.stderr);
    const app = join(dir, 'app');
    await mkdir(join(app, 'bin'), { recursive: true });
    await writeFile(join(app, 'bin', 'tool'), '#!/bin/sh\necho v1\n');
    await chmod(join(app, 'bin', 'tool'), 0o755);
    execFileSync('setcap', ['cap_net_bind_service=+ep', join(app, 'bin', 'tool')]);
    await writeFile(join(app, 'data.txt'), 'data\n');
    await symlink('data.txt', join(app, 'link'));
    // sources older than SOURCE_DATE_EPOCH (2021), which clamps the times the RUN gives its mount points
    const t = (s: string): Date => new Date(`${s}T00:00:00Z`);
    const age = async (linkTime: Date): Promise<void> => {
      for (const f of ['bin/tool', 'bin/tool2', 'data.txt'])
        await utimes(join(app, f), t('2020-01-01'), t('2020-01-01'));
      for (const d of ['bin', '.']) await utimes(join(app, d), t('2020-02-01'), t('2020-02-01'));
      await lutimes(join(app, 'link'), linkTime, linkTime);
    };
    const build = (tag: string, ...more: string[]): Promise<string[]> => s2iBuild(app, tag, ...more);
    await build('localhost/app:1');
    // between the builds: a file rewritten and given a capability (writing to a file clears one), a capability set
    // on an unchanged file, a hard link made, a symlink made again with the same target (and another mtime)
    await writeFile(join(app, 'bin', 'tool2'), '#!/bin/sh\necho v2\n');
    await utimes(join(app, 'bin', 'tool2'), t('2020-01-01'), t('2020-01-01'));
    await chmod(join(app, 'bin', 'tool2'), 0o755);
    execFileSync('setcap', ['cap_net_raw=+ep', join(app, 'bin', 'tool2')]);
    execFileSync('setcap', ['cap_net_raw=+ep', join(app, 'bin', 'tool')]);
    await link(join(app, 'data.txt'), join(app, 'bin', 'data-link.txt'));
    await rm(join(app, 'link'));
    await symlink('data.txt', join(app, 'link'));
    await age(t('2020-04-01'));
    const warm = await build('localhost/app:1');
    // another image name: another working dir, copied cold; not the warm build's layer from the cache (its key is
    // the files' contents, as BuildKit's is)
    const cold = await build('localhost/app-cold:1', '--no-cache');
    assert.deepEqual(warm, cold, 'the warm build has the layers of the cold one');
  },
);

test(
  "s2i: a warm build whose COPY takes the sync's noted xattrs (no getfattr of its own) gives the cold build's layers",
  { skip: isRoot ? false : 'needs root (CAP_SETFCAP for a file capability)' },
  async () => {
    const b = await kiln(['build', '-q', '-t', 'localhost/builder:1', join(dir, 'builder')], { home });
    assert.equal(b.code, 0, b.stderr);
    const app = join(dir, 'app2');
    await mkdir(join(app, 'lib'), { recursive: true });
    for (let i = 0; i < 20; i++) await writeFile(join(app, 'lib', `f${i}.txt`), `v1 ${i}\n`);
    execFileSync('setfattr', ['-n', 'user.mark', '-v', 'kept', join(app, 'lib', 'f3.txt')]);
    execFileSync('setfattr', ['-n', 'user.dir', '-v', 'lib', join(app, 'lib')]);
    execFileSync('setcap', ['cap_net_bind_service=+ep', join(app, 'lib', 'f4.txt')]);
    const t = (s: string): Date => new Date(`${s}T00:00:00Z`);
    const build = (tag: string, ...more: string[]): Promise<string[]> => s2iBuild(app, tag, ...more);
    const age = async (): Promise<void> => {
      for (let i = 0; i < 20; i++) await utimes(join(app, 'lib', `f${i}.txt`), t('2020-01-01'), t('2020-01-01'));
      for (const d of ['lib', '.']) await utimes(join(app, d), t('2020-02-01'), t('2020-02-01'));
    };
    await age();
    const first = await build('localhost/app2:1');
    // one file rewritten with an xattr of its own (as a checkout rewrites it): the sync copies it and reads the rest
    await writeFile(join(app, 'lib', 'f0.txt'), 'v2 0, rewritten\n');
    execFileSync('setfattr', ['-n', 'user.mark', '-v', 'new', join(app, 'lib', 'f0.txt')]);
    await age();
    const warm = await build('localhost/app2:1');
    assert.notDeepEqual(warm, first, 'the change made another layer');
    const cold = await build('localhost/app2-cold:1', '--no-cache');
    assert.deepEqual(warm, cold, 'the warm build has the layers of the cold one');
  },
);
