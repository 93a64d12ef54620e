import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  chmod,
  link,
  lstat,
  lutimes,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lstatSync, readdirSync, type Stats } from 'node:fs';
import { COPIED_XATTRS, knownCopiedXattrs } from '../../engine/context.js';
import { readXattrsRecursive } from '../../layer/fsops.js';
import { s2iWorkDir, syncFile, syncTree } from './workdir.js';

/** Every entry of a tree (the root too) with its lstat, as the context hash walk records them. */
function treeStats(root: string, out = new Map<string, Stats>()): Map<string, Stats> {
  const st = lstatSync(root);
  out.set(root, st);
  if (st.isDirectory()) for (const n of readdirSync(root)) treeStats(join(root, n), out);
  return out;
}

/** The entries of `root` whose xattrs are noted in their current state, each with what getfattr reads of it. */
async function notedVersusRead(root: string): Promise<[string, string, string][]> {
  const out: [string, string, string][] = [];
  const show = (x: Map<string, Map<string, Buffer>>, p: string): string =>
    [...(x.get(p) ?? [])].map(([k, v]) => `${k}=${v.toString('hex')}`).join(' ');
  for (const [p, st] of treeStats(root)) {
    const noted = knownCopiedXattrs([p], new Map([[p, st]]));
    if (!noted) continue;
    out.push([p, show(noted, p), show(await readXattrsRecursive([p], COPIED_XATTRS, { recursive: false }), p)]);
  }
  return out;
}

/**
 * What of a tree goes into an S2I image's layer (writer.ts): type, mode, mtime in seconds, symlink target, bytes,
 * user.* xattrs, and which names are one file (hard links) — by path relative to `root`.
 */
async function manifest(root: string): Promise<Record<string, string>> {
  const xattrs = await readXattrsRecursive(root, '^user\\.');
  const out: Record<string, string> = {};
  const inodes = new Map<number, string>();
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const p = join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(p);
      const x = [...(xattrs.get(p) ?? new Map<string, Buffer>())].map(([k, v]) => `${k}=${v.toString('hex')}`);
      let what = `${(st.mode & 0o170000).toString(8)} ${(st.mode & 0o7777).toString(8)} ${Math.floor(st.mtimeMs / 1000)}`;
      if (st.isSymbolicLink()) what += ` -> ${await readlink(p)}`;
      if (st.isFile()) {
        const first = inodes.get(st.ino);
        if (first === undefined) inodes.set(st.ino, r);
        what += first === undefined ? ` ${await readFile(p, 'utf8')}` : ` link to ${first}`;
      }
      out[r] = `${what} [${x.join(' ')}]`;
      if (st.isDirectory()) await walk(p, r);
    }
  };
  await walk(root, '');
  return out;
}

const setfattr = (p: string, name: string, value: string): void => {
  execFileSync('setfattr', ['-h', '-n', name, '-v', value, '--', p]);
};

test('syncTree: unchanged files keep their inode, changed ones are replaced, removed ones go; modes and times', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-s2i-sync-'));
  try {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    await mkdir(join(a, 'sub'), { recursive: true });
    await writeFile(join(a, 'same.txt'), 'same');
    await writeFile(join(a, 'sub', 'edit.txt'), 'v1');
    await writeFile(join(a, 'gone.txt'), 'bye');
    await writeFile(join(a, 'run.sh'), '#!/bin/sh\n');
    await chmod(join(a, 'run.sh'), 0o755);
    await symlink('same.txt', join(a, 'link'));
    // many files: a copy's mtime reads back within a millisecond of its source's (utimes takes a Date), not equal
    // when truncated — each of these would be copied again with probability ~1/2 if that were the comparison
    const many = Array.from({ length: 24 }, (_, i) => `many-${i}.txt`);
    for (const m of many) await writeFile(join(a, m), m);
    await syncTree(a, b);
    const ino = async (p: string): Promise<number> => (await stat(p)).ino;
    const before = { same: await ino(join(b, 'same.txt')), ctime: (await stat(join(b, 'same.txt'))).ctimeMs };
    const manyCtimes = await Promise.all(many.map(async (m) => (await stat(join(b, m), { bigint: true })).ctimeNs));
    assert.equal((await stat(join(b, 'run.sh'))).mode & 0o777, 0o755);
    assert.equal(await readlink(join(b, 'link')), 'same.txt');

    await writeFile(join(a, 'sub', 'edit.txt'), 'v2');
    const t = new Date('2020-01-02T03:04:05Z');
    await utimes(join(a, 'sub', 'edit.txt'), t, t);
    await rm(join(a, 'gone.txt'));
    await writeFile(join(a, 'new.txt'), 'new');
    await syncTree(a, b);
    assert.equal(await ino(join(b, 'same.txt')), before.same, 'an unchanged file is left alone');
    assert.equal((await stat(join(b, 'same.txt'))).ctimeMs, before.ctime, '… not even touched');
    const manyAfter = await Promise.all(many.map(async (m) => (await stat(join(b, m), { bigint: true })).ctimeNs));
    assert.deepEqual(manyAfter, manyCtimes, 'no unchanged file is copied again');
    assert.equal(await readFile(join(b, 'sub', 'edit.txt'), 'utf8'), 'v2');
    assert.equal((await stat(join(b, 'sub', 'edit.txt'))).mtime.getTime(), t.getTime());
    assert.equal(await readFile(join(b, 'new.txt'), 'utf8'), 'new');
    await assert.rejects(stat(join(b, 'gone.txt')));
    assert.equal((await stat(b)).mtime.getTime(), (await stat(a)).mtime.getTime(), 'directory times copied');

    // one file: copied when it differs, removed at the destination when the source is gone
    assert.equal(await syncFile(join(a, 'new.txt'), join(dir, 'one')), true);
    const one = await ino(join(dir, 'one'));
    assert.equal(await syncFile(join(a, 'new.txt'), join(dir, 'one')), true);
    assert.equal(await ino(join(dir, 'one')), one);
    assert.equal(await syncFile(join(a, 'missing'), join(dir, 'one')), false);
    await assert.rejects(stat(join(dir, 'one')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('syncTree: a warm sync gives what a cold cp -a gives (xattrs, hard links, types swapped, symlink times)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-s2i-sync-'));
  try {
    const a = join(dir, 'src');
    const warm = join(dir, 'warm');
    const cold = join(dir, 'cold');
    const old = new Date('2021-05-06T07:08:09Z');
    const t = (n: number): Date => new Date(Date.UTC(2022, 0, 1, 0, 0, n));
    // v1, copied as the first (cold) build copies it
    await mkdir(join(a, 'd1'), { recursive: true });
    await mkdir(join(a, 'd2'));
    await mkdir(join(a, 'xdir'));
    for (const f of ['edit.txt', 'xonly.txt', 'chmod.txt', 'tofile', 'hl-edit.txt', 'solo.txt']) {
      await writeFile(join(a, f), `v1 ${f}\n`);
    }
    await link(join(a, 'hl-edit.txt'), join(a, 'd1', 'hl-edit-2.txt'));
    await writeFile(join(a, 'd2', 'in.txt'), 'in d2\n');
    await symlink('edit.txt', join(a, 'relink'));
    await symlink('edit.txt', join(a, 'link-to-file'));
    setfattr(join(a, 'edit.txt'), 'user.origin', 'v1');
    setfattr(join(a, 'xdir'), 'user.gone', 'soon');
    execFileSync('cp', ['-a', '--no-target-directory', a, warm]);

    // v2: every kind of change a checkout or an editor makes
    await writeFile(join(a, 'edit.txt'), 'v2 edit, same length!\n');
    setfattr(join(a, 'edit.txt'), 'user.origin', 'v2');
    await utimes(join(a, 'edit.txt'), t(1), t(1));
    setfattr(join(a, 'xonly.txt'), 'user.only', 'an xattr, no other change');
    await chmod(join(a, 'chmod.txt'), 0o600);
    await rm(join(a, 'tofile'));
    await mkdir(join(a, 'tofile'));
    await writeFile(join(a, 'tofile', 'now-a-dir.txt'), 'x\n');
    await rm(join(a, 'd2'), { recursive: true });
    await writeFile(join(a, 'd2'), 'a dir became a file\n');
    await writeFile(join(a, 'hl-edit.txt'), 'v2 both names\n');
    await link(join(a, 'solo.txt'), join(a, 'd1', 'solo-2.txt'));
    await writeFile(join(a, 'new.txt'), 'new\n');
    setfattr(join(a, 'new.txt'), 'user.fresh', '1');
    await link(join(a, 'new.txt'), join(a, 'd1', 'new-2.txt'));
    await rm(join(a, 'link-to-file'));
    await writeFile(join(a, 'link-to-file'), 'a file now\n');
    await rm(join(a, 'relink'));
    await symlink('edit.txt', join(a, 'relink'));
    await lutimes(join(a, 'relink'), t(2), t(2));
    await mkdir(join(a, 'newdir'));
    setfattr(join(a, 'newdir'), 'user.dir', 'new');
    execFileSync('setfattr', ['-x', 'user.gone', join(a, 'xdir')]);
    setfattr(join(a, 'xdir'), 'user.kept', 'dir');
    for (const d of ['d1', 'tofile', 'newdir', 'xdir', '.']) await utimes(join(a, d), old, old);

    execFileSync('cp', ['-a', '--no-target-directory', a, cold]);
    await syncTree(a, warm);
    // the xattrs the sync notes for its copies are what getfattr reads of them (a COPY of the tree takes them)
    const noted = await notedVersusRead(warm);
    for (const [p, n, r] of noted) assert.equal(n, r, `noted xattrs of ${p}`);
    const names = noted.map(([p]) => p.slice(warm.length + 1));
    for (const n of ['', 'edit.txt', 'xonly.txt', 'newdir', 'xdir', 'chmod.txt', 'relink', 'd1'])
      assert.ok(names.includes(n), `${n || 'the root'} is noted`);
    assert.ok(!names.includes('solo.txt'), 'a hard-linked copy is not noted');
    const want = await manifest(cold);
    assert.match(want['solo.txt'] ?? '', /link to d1\/solo-2.txt/, 'the manifest sees hard links');
    assert.match(want['xonly.txt'] ?? '', /user\.only=/, '… and xattrs');
    assert.deepEqual(await manifest(warm), want);
    // and nothing more to do: a second sync copies nothing
    const ctime = (await stat(join(warm, 'new.txt'))).ctimeMs;
    await syncTree(a, warm);
    assert.equal((await stat(join(warm, 'new.txt'))).ctimeMs, ctime);
    assert.deepEqual(await manifest(warm), want);
    // a name of a linked file removed from the copy (as .s2iignore or a moved .s2i/bin script is) comes back linked
    await rm(join(warm, 'd1', 'solo-2.txt'));
    await syncTree(a, warm);
    assert.deepEqual(await manifest(warm), want);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('syncTree: a COPY of the synced tree knows its xattrs without a getfattr, until one of them changes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-s2i-sync-'));
  try {
    const a = join(dir, 'src');
    const copy = join(dir, 'copy');
    await mkdir(join(a, 'lib'), { recursive: true });
    for (let i = 0; i < 5; i++) await writeFile(join(a, 'lib', `f${i}.txt`), `v1 ${i}\n`);
    setfattr(join(a, 'lib', 'f1.txt'), 'user.mark', 'one');
    setfattr(join(a, 'lib'), 'user.dir', 'lib');
    await syncTree(a, copy);
    const read = (): Promise<Map<string, Map<string, Buffer>>> => readXattrsRecursive(copy, COPIED_XATTRS);
    assert.deepEqual(knownCopiedXattrs([copy], treeStats(copy)), await read(), 'a cold sync');
    // one file changed (as a checkout changes it): the warm sync copies it, the rest is read as it is
    await writeFile(join(a, 'lib', 'f0.txt'), 'v2 0, longer\n');
    setfattr(join(a, 'lib', 'f0.txt'), 'user.mark', 'zero');
    await syncTree(a, copy);
    const known = knownCopiedXattrs([copy], treeStats(copy));
    assert.deepEqual(known, await read(), 'a warm sync');
    assert.equal(
      known
        ?.get(join(copy, 'lib', 'f0.txt'))
        ?.get('user.mark')
        ?.toString(),
      'zero',
    );
    // an entry changed after the sync (its ctime): nothing is known of the tree, the copy reads it
    setfattr(join(copy, 'lib', 'f2.txt'), 'user.late', 'x');
    assert.equal(knownCopiedXattrs([copy], treeStats(copy)), undefined);
    // an entry the sync did not leave (not noted): likewise
    await syncTree(a, copy);
    await writeFile(join(copy, 'extra.txt'), 'not from the sync\n');
    assert.equal(knownCopiedXattrs([copy], treeStats(copy)), undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('s2iWorkDir: kept per (source, image); a second build at the same time gets a temp dir', async () => {
  const home = await mkdtemp(join(tmpdir(), 'kiln-s2i-home-'));
  try {
    const first = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(first.kept, true);
    const busy = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(busy.kept, false);
    assert.notEqual(busy.dir, first.dir);
    const other = await s2iWorkDir(home, '/src/app', 'r/other:1');
    assert.equal(other.kept, true);
    assert.notEqual(other.dir, first.dir);
    await busy.release();
    await assert.rejects(stat(busy.dir), 'a temp dir is removed');
    await first.release();
    await other.release();
    const again = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(again.dir, first.dir, 'the same dir next time');
    await again.release();
    // a lock left by a process that is gone is taken over
    await writeFile(join(first.dir, '.lock'), '999999999');
    await mkdir(join(first.dir, 'upload', 'src'), { recursive: true });
    await writeFile(join(first.dir, 'upload', 'src', 'f'), 'synced');
    const taken = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(taken.kept, true);
    assert.equal(await readFile(join(taken.dir, 'upload', 'src', 'f'), 'utf8'), 'synced', 'the copy is kept');
    await taken.release();
    // a copy an older sync made (no version, or another one) is not kept
    await writeFile(join(first.dir, '.sync-version'), '1');
    const older = await s2iWorkDir(home, '/src/app', 'r/app:1');
    assert.equal(older.kept, true);
    await assert.rejects(stat(join(older.dir, 'upload')), 'an older sync’s copy is removed');
    await older.release();
  } finally {
    await rm(home, { recursive: true, force: true });
  }
});
