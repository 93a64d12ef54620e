import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_SYMLINKS, resolveInRoot, resolveInRootSync, type InRootOptions } from './inroot.js';

/**
 * A root with: dir/ (file.txt), abs -> /dir, rel -> dir, up -> ../../.., out -> /etc/passwd-like absolute outside,
 * dangling -> nowhere, loop1 <-> loop2, self -> self, file (regular), chain0 -> chain1 -> … (3 hops) -> dir.
 */
function withRoot(fn: (root: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const base = mkdtempSync(join(tmpdir(), 'kiln-inroot-'));
    const root = join(base, 'root');
    try {
      mkdirSync(join(root, 'dir'), { recursive: true });
      writeFileSync(join(root, 'dir', 'file.txt'), 'inside');
      writeFileSync(join(base, 'secret'), 'outside');
      writeFileSync(join(root, 'file'), 'x');
      symlinkSync('/dir', join(root, 'abs'));
      symlinkSync('dir', join(root, 'rel'));
      symlinkSync('../../..', join(root, 'up'));
      symlinkSync(join(base, 'secret'), join(root, 'out'));
      symlinkSync('../secret', join(root, 'outrel'));
      symlinkSync('nowhere/deeper', join(root, 'dangling'));
      symlinkSync('loop2', join(root, 'loop1'));
      symlinkSync('loop1', join(root, 'loop2'));
      symlinkSync('self', join(root, 'self'));
      symlinkSync('chain1', join(root, 'chain0'));
      symlinkSync('chain2', join(root, 'chain1'));
      symlinkSync('./dir/', join(root, 'chain2'));
      await fn(root);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  };
}

/** Both variants, which must agree. */
async function both(root: string, p: string, o: InRootOptions = {}): Promise<string | undefined> {
  const a = await resolveInRoot(root, p, o);
  const s = resolveInRootSync(root, p, o);
  assert.equal(s, a, `sync and async differ for ${p}`);
  return a;
}

test(
  '.. never climbs above the root, lexically or through links',
  withRoot(async (root) => {
    assert.equal(await both(root, '../../../dir/file.txt'), join(root, 'dir/file.txt'));
    assert.equal(await both(root, '/dir/../../..'), root);
    assert.equal(await both(root, 'up/dir/file.txt'), join(root, 'dir/file.txt'));
    assert.equal(await both(root, 'dir/./../dir//file.txt'), join(root, 'dir/file.txt'));
    assert.equal(await both(root, ''), root);
  }),
);

test(
  'absolute and relative symlinks resolve inside the root',
  withRoot(async (root) => {
    assert.equal(await both(root, 'abs/file.txt'), join(root, 'dir/file.txt'));
    assert.equal(await both(root, '/rel/file.txt'), join(root, 'dir/file.txt'));
    assert.equal(await both(root, 'abs'), join(root, 'dir'));
    assert.equal(await both(root, 'chain0/file.txt'), join(root, 'dir/file.txt'));
  }),
);

test(
  'links pointing out of the root land inside it',
  withRoot(async (root) => {
    const base = join(root, '..');
    // An absolute target outside: re-rooted, so it names root/<base>/secret, which does not exist.
    const out = (await both(root, 'out'))!;
    assert.equal(out, join(root, base, 'secret'));
    assert.ok(out.startsWith(root + '/'));
    assert.equal(existsSync(out), false);
    // A relative target climbing out is clamped at the root.
    assert.equal(await both(root, 'outrel'), join(root, 'secret'));
    assert.equal(existsSync(join(root, 'secret')), false);
  }),
);

test(
  'dangling links: kept as named by default, stop on request',
  withRoot(async (root) => {
    assert.equal(await both(root, 'dangling/x'), join(root, 'nowhere/deeper/x'));
    const seen: string[] = [];
    const stop: InRootOptions = {
      onMissing: (e, rel) => {
        seen.push(`${e.code} ${rel}`);
        return 'stop';
      },
    };
    assert.equal(await both(root, 'dangling/x', stop), undefined);
    assert.deepEqual(seen, ['ENOENT nowhere', 'ENOENT nowhere']);
  }),
);

test(
  'symlink loops: an error by default, a hook can stop; a chain below the limit resolves',
  withRoot(async (root) => {
    await assert.rejects(resolveInRoot(root, 'loop1/x'), /too many levels of symbolic links/);
    assert.throws(() => resolveInRootSync(root, 'self'), /too many levels of symbolic links at "self"/);
    const rels: string[] = [];
    const o: InRootOptions = { onLoop: (rel) => (rels.push(rel), 'stop') };
    assert.equal(await both(root, 'loop1', o), undefined);
    assert.deepEqual(rels, ['loop2', 'loop2']);
    // maxLinks bounds the hops: the 3-link chain fails with 2, passes with 3.
    assert.equal(await both(root, 'chain0', { maxLinks: 2, onLoop: () => 'stop' }), undefined);
    assert.equal(await both(root, 'chain0', { maxLinks: 3 }), join(root, 'dir'));
    assert.ok(MAX_SYMLINKS >= 40);
  }),
);

test(
  'non-directories in the middle: kept by default, reported to onNotDir',
  withRoot(async (root) => {
    assert.equal(await both(root, 'file/x'), join(root, 'file/x'));
    const calls: string[] = [];
    const o: InRootOptions = { onNotDir: (rel, last) => (calls.push(`${rel} ${last}`), last ? 'keep' : 'stop') };
    assert.equal(await both(root, 'file/x', o), undefined);
    assert.equal(await both(root, 'rel/file.txt', o), join(root, 'dir/file.txt'));
    assert.deepEqual(calls, ['file false', 'file false', 'dir/file.txt true', 'dir/file.txt true']);
    assert.throws(
      () =>
        resolveInRootSync(root, 'file/x', {
          onNotDir: (rel) => {
            throw new Error(`not a dir: ${rel}`);
          },
        }),
      /not a dir: file/,
    );
  }),
);

test(
  "'create' makes missing directories 0755 inside the root, through links",
  withRoot(async (root) => {
    const created: string[] = [];
    const o: InRootOptions = { onMissing: () => 'create', onCreate: (rel) => created.push(rel) };
    assert.equal(await resolveInRoot(root, 'abs/a/b', o), join(root, 'dir/a/b'));
    assert.deepEqual(created, ['dir/a', 'dir/a/b']);
    assert.ok(statSync(join(root, 'dir/a/b')).isDirectory());
    assert.equal(statSync(join(root, 'dir/a')).mode & 0o7777, 0o755);
    // Through a dangling link the directory is made inside the root, never outside.
    assert.equal(resolveInRootSync(root, 'outrel/d', o), join(root, 'secret/d'));
    assert.ok(statSync(join(root, 'secret/d')).isDirectory());
    assert.ok(statSync(join(root, '..', 'secret')).isFile());
  }),
);
