/**
 * The copy snapshotter on its own (as root): materialising overlay-format layer dirs (whiteouts, opaque dirs,
 * hardlinks, symlinks, ownership) and turning changes made to the root into an overlay-format diff by stat
 * comparison only.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  readlink,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CopySnapshotter } from '../../src/sandbox/copy.js';
import { pruneUnchangedDirs } from '../../src/sandbox/overlay.js';
import { listUpper } from '../helpers/rootless.js';

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
}

test('copy snapshotter: overlay-format lowers in, overlay-format diff out', async () => {
  assert.equal(process.getuid?.(), 0, 'needs root (whiteout device nodes, chown)');
  const dir = await mkdtemp(join(tmpdir(), 'kiln-copy-'));
  try {
    const l1 = join(dir, 'l1');
    const l2 = join(dir, 'l2');
    for (const p of ['a', 'b/deep', 'c', 'keep', 'e1', 'e2', 'e3']) await mkdir(join(l1, p), { recursive: true });
    await writeFile(join(l1, 'a/x'), 'x');
    await writeFile(join(l1, 'a/y'), 'y');
    await writeFile(join(l1, 'b/deep/z'), 'z');
    await writeFile(join(l1, 'c/file'), 'old');
    await writeFile(join(l1, 'keep/untouched'), 'same');
    await chown(join(l1, 'keep/untouched'), 1234, 5678);
    await link(join(l1, 'keep/untouched'), join(l1, 'keep/hardlink'));
    await symlink('../a/y', join(l1, 'keep/sym'));
    // Layer 2: deletes /a/x (whiteout), makes /b opaque with new content.
    await mkdir(join(l2, 'a'), { recursive: true });
    sh('mknod', [join(l2, 'a/x'), 'c', '0', '0']);
    await mkdir(join(l2, 'b'), { recursive: true });
    sh('setfattr', ['-n', 'user.overlay.opaque', '-v', 'y', join(l2, 'b')]);
    await writeFile(join(l2, 'b/new'), 'n');

    const snap = await new CopySnapshotter({ kilnHome: join(dir, 'home') }).prepare([l1, l2]);
    try {
      const root = snap.root;
      assert.deepEqual((await readdir(join(root, 'a'))).sort(), ['y']);
      assert.deepEqual((await readdir(join(root, 'b'))).sort(), ['new'], 'opaque dir hides the lower content');
      const u = await lstat(join(root, 'keep/untouched'));
      const h = await lstat(join(root, 'keep/hardlink'));
      assert.equal(u.ino, h.ino, 'hardlinks survive materialisation');
      assert.equal(u.uid, 1234);
      assert.equal(u.gid, 5678);
      assert.equal(await readlink(join(root, 'keep/sym')), '../a/y');
      const x = spawnSync('getfattr', ['-h', '--only-values', '-n', 'user.overlay.opaque', join(root, 'b')]);
      assert.notEqual(x.status, 0, 'the opaque marker is not left in the merged root');
      const lowerIno = (await lstat(join(l1, 'keep/untouched'))).ino;
      assert.notEqual(u.ino, lowerIno, 'files are copies, never hardlinks into the layer store');

      // "RUN": changes made in the root.
      await writeFile(join(root, 'new.txt'), 'new');
      await writeFile(join(root, 'c/file'), 'changed');
      await rm(join(root, 'a/y'));
      await rm(join(root, 'b'), { recursive: true });
      await mkdir(join(root, 'b'));
      await writeFile(join(root, 'b/again'), 'again');
      await writeFile(join(root, 'h1'), 'linked');
      await link(join(root, 'h1'), join(root, 'h2'));
      await chmod(join(root, 'c'), 0o700);
      // Re-created empty dirs: the filesystem may hand out the same inode numbers again.
      for (const e of ['e1', 'e2', 'e3']) {
        await rm(join(root, e), { recursive: true });
        await mkdir(join(root, e));
      }
      await rm(join(root, 'keep/sym'));
      await symlink('/elsewhere', join(root, 'keep/sym'));

      await snap.unmount();
      const up = await listUpper(snap.upper);
      const paths = up.map((e) => `${e.path}:${e.type}${e.opaque ? ':opaque' : ''}`);
      assert.deepEqual(paths, [
        '/a:dir',
        '/a/y:whiteout',
        '/b:dir:opaque',
        '/b/again:file',
        '/c:dir',
        '/c/file:file',
        '/e1:dir:opaque',
        '/e2:dir:opaque',
        '/e3:dir:opaque',
        '/h1:file',
        '/h2:file',
        '/keep:dir',
        '/keep/sym:symlink',
        '/new.txt:file',
      ]);
      assert.equal(await readFile(join(snap.upper, 'c/file'), 'utf8'), 'changed');
      assert.equal((await lstat(join(snap.upper, 'c'))).mode & 0o7777, 0o700, 'dir metadata change captured');
      assert.equal(
        (await lstat(join(snap.upper, 'h1'))).ino,
        (await lstat(join(snap.upper, 'h2'))).ino,
        'new hardlinks stay hardlinks in the diff',
      );
      assert.equal(await readlink(join(snap.upper, 'keep/sym')), '/elsewhere');
    } finally {
      await snap.release();
    }
    assert.deepEqual(await readdir(join(dir, 'home', 'tmp')), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('overlay upper pruning: only empty copied-up dirs identical to the visible lower dir go', async () => {
  assert.equal(process.getuid?.(), 0, 'needs root (whiteout device nodes)');
  const dir = await mkdtemp(join(tmpdir(), 'kiln-prune-'));
  try {
    const l1 = join(dir, 'l1');
    const l2 = join(dir, 'l2');
    const up = join(dir, 'upper');
    for (const p of ['etc', 'gone/sub', 'opq/sub', 'kept']) await mkdir(join(l1, p), { recursive: true });
    await mkdir(join(l2, 'opq'), { recursive: true });
    sh('setfattr', ['-n', 'user.overlay.opaque', '-v', 'y', join(l2, 'opq')]);
    sh('mknod', [join(l2, 'gone'), 'c', '0', '0']);
    // The upper: copies of lower dirs with the same metadata (cp -a keeps mode/owner/mtime).
    await mkdir(up);
    sh('cp', ['-a', join(l1, 'etc'), join(up, 'etc')]);
    sh('cp', ['-a', join(l1, 'kept'), join(up, 'kept')]);
    await writeFile(join(up, 'kept', 'file'), 'x');
    // /gone/sub and /opq/sub exist in l1 only, hidden by l2's whiteout / opaque dir: never "unchanged".
    await mkdir(join(up, 'gone'));
    sh('setfattr', ['-n', 'user.overlay.opaque', '-v', 'y', join(up, 'gone')]);
    sh('cp', ['-a', join(l1, 'gone', 'sub'), join(up, 'gone', 'sub')]);
    sh('cp', ['-a', join(l1, 'opq'), join(up, 'opq')]);
    sh('touch', ['-r', join(l2, 'opq'), join(up, 'opq')]);
    await pruneUnchangedDirs(up, [l2, l1]);
    const left = (await listUpper(up)).map((e) => e.path);
    assert.deepEqual(left, ['/gone', '/gone/sub', '/kept', '/kept/file', '/opq', '/opq/sub']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
