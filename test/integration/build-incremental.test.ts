/**
 * Incremental COPY (src/engine/reuse.ts): a COPY whose sources changed starts from the previous build's result
 * (hard links) — and must still produce exactly what a fresh build produces. Real CLI, real overlay, as root.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, link, lstat, mkdir, mkdtemp, readFile, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { kiln } from './build-helpers.js';
import { ensureRootlessUser, rootlessTempDir } from '../helpers/rootless.js';

const EPOCH = Math.floor(Date.now() / 1000);
const OLD = EPOCH - 1000;

async function put(ctx: string, rel: string, data: string, mtime = OLD): Promise<void> {
  const p = join(ctx, rel);
  await mkdir(join(p, '..'), { recursive: true });
  await writeFile(p, data);
  await utimes(p, mtime, mtime);
}

async function home(rootless = false): Promise<string> {
  const h = rootless ? await rootlessTempDir('kiln-incr-') : await mkdtemp(join(tmpdir(), 'kiln-incr-'));
  const r = await kiln(['bootstrap', 'busybox'], { home: h, rootless });
  assert.equal(r.code, 0, r.stderr);
  return h;
}

async function build(
  h: string,
  ctx: string,
  rootless = false,
): Promise<{ id: string; diffIDs: string[]; stderr: string }> {
  if (rootless) {
    const { uid, gid } = ensureRootlessUser();
    spawnSync('chown', ['-R', `${uid}:${gid}`, ctx]);
  }
  const iid = join(h, 'iid');
  const r = await kiln(['build', '-t', 'incr:latest', '--iidfile', iid, '--progress', 'plain', ctx], {
    home: h,
    rootless,
    env: { SOURCE_DATE_EPOCH: String(EPOCH) },
  });
  assert.equal(r.code, 0, r.stderr);
  const cfg = await kiln(['inspect', 'incr:latest', '--config'], { home: h, rootless });
  assert.equal(cfg.code, 0, cfg.stderr);
  const diffIDs = (JSON.parse(cfg.stdout) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
  return { id: (await readFile(iid, 'utf8')).trim(), diffIDs, stderr: r.stderr };
}

for (const rootless of [false, true]) {
  const who = rootless ? 'rootless' : 'root';
  test(`incremental COPY (${who}): after edits, deletions, renames, mode/mtime/link changes the image equals a fresh build`, async () => {
    const ctx = rootless ? await rootlessTempDir('kiln-incr-ctx-') : await mkdtemp(join(tmpdir(), 'kiln-incr-ctx-'));
    const reuse = await home(rootless);
    const homes = [reuse];
    try {
      await writeFile(
        join(ctx, 'Dockerfile'),
        [
          'FROM localhost/busybox:latest',
          'WORKDIR /app',
          'COPY src/ ./src/',
          'COPY --chown=1:2 --chmod=640 src/ /other/',
          'COPY src/d1 /etc/',
          '',
        ].join('\n'),
      );
      for (let d = 0; d < 4; d++) {
        for (let f = 0; f < 25; f++) await put(ctx, `src/d${d}/f${f}.txt`, `dir ${d} file ${f}\n`.repeat(f + 1));
      }
      await put(ctx, 'src/keep.txt', 'kept\n');
      if (!rootless) {
        // a capability (recorded in the layer): the file is never planted, its xattrs are read after the step
        const cap = '0x0100000200040000000000000000000000000000'; // v2, cap_net_bind_service permitted
        const r = spawnSync('setfattr', ['-n', 'security.capability', '-v', cap, join(ctx, 'src/d3/f8.txt')]);
        assert.equal(r.status, 0, String(r.stderr));
      }
      await utimes(join(ctx, 'src'), OLD, OLD);
      const first = await build(reuse, ctx, rootless);

      // every kind of change
      await put(ctx, 'src/d0/f1.txt', 'edited, same mtime as before\n');
      await put(ctx, 'src/d0/f0.txt', 'DIR 0 FILE 0\n'); // same size and mtime, other bytes
      await put(ctx, 'src/d0/f2.txt', 'dir 0 file 2\n'.repeat(3), OLD + 1); // same bytes, new mtime
      await rm(join(ctx, 'src/d0/f3.txt'));
      await rename(join(ctx, 'src/d1/f4.txt'), join(ctx, 'src/d1/renamed.txt'));
      await chmod(join(ctx, 'src/d1/f5.txt'), 0o600);
      await rm(join(ctx, 'src/d2'), { recursive: true });
      await put(ctx, 'src/new/deep/n.txt', 'new\n');
      await mkdir(join(ctx, 'src/new/empty'));
      await link(join(ctx, 'src/d3/f6.txt'), join(ctx, 'src/d3/hard.txt'));
      await symlink('d3/f7.txt', join(ctx, 'src/sym'));
      for (const d of ['src/d0', 'src/d1', 'src/d3', 'src/new', 'src/new/deep', 'src/new/empty', 'src']) {
        await utimes(join(ctx, d), OLD, OLD);
      }
      const second = await build(reuse, ctx, rootless);
      assert.notEqual(second.id, first.id);

      // the reused COPY layers share inodes with the first build's: reuse really happened
      const last = (second.diffIDs.at(-3) as string).slice('sha256:'.length);
      const st = await lstat(join(reuse, 'layers', last, 'app/src/d1/f6.txt'));
      assert.ok(st.nlink > 1, 'unchanged files are hard links to the previous result');

      const fresh = await home(rootless);
      homes.push(fresh);
      const ref = await build(fresh, ctx, rootless);
      assert.deepEqual(second.diffIDs, ref.diffIDs, 'layers of the incremental build equal a fresh build');
      assert.equal(second.id, ref.id);

      // and back: the next incremental step removes what was added
      await rm(join(ctx, 'src/new'), { recursive: true });
      await rm(join(ctx, 'src/sym'));
      await rm(join(ctx, 'src/d3/hard.txt'));
      await utimes(join(ctx, 'src/d3'), OLD, OLD);
      await utimes(join(ctx, 'src'), OLD, OLD);
      const third = await build(reuse, ctx, rootless);
      const fresh2 = await home(rootless);
      homes.push(fresh2);
      const ref2 = await build(fresh2, ctx, rootless);
      assert.deepEqual(third.diffIDs, ref2.diffIDs);
    } finally {
      for (const h of [ctx, ...homes]) await rm(h, { recursive: true, force: true });
    }
  });
}

test('incremental COPY: overlapping sources (a later source replaces a file an earlier one wrote)', async () => {
  const ctx = await mkdtemp(join(tmpdir(), 'kiln-incr-ctx-'));
  const h = await home();
  const fresh = await home();
  try {
    await writeFile(join(ctx, 'Dockerfile'), 'FROM localhost/busybox:latest\nCOPY a/ b/ /merged/\n');
    for (let f = 0; f < 10; f++) {
      await put(ctx, `a/f${f}`, `from a ${f}\n`);
      await put(ctx, `b/f${f}`, `from b ${f}\n`); // same size: only the bytes tell them apart
    }
    await build(h, ctx);
    await put(ctx, 'a/f3', 'from A 3\n'); // a changed: the step runs again from the planted result
    const incr = await build(h, ctx);
    const ref = await build(fresh, ctx);
    assert.deepEqual(incr.diffIDs, ref.diffIDs, 'b still wins everywhere');
  } finally {
    for (const d of [ctx, h, fresh]) await rm(d, { recursive: true, force: true });
  }
});

test('incremental COPY: --no-cache builds from scratch and gives the same image', async () => {
  const ctx = await mkdtemp(join(tmpdir(), 'kiln-incr-ctx-'));
  const h = await home();
  try {
    await writeFile(join(ctx, 'Dockerfile'), 'FROM localhost/busybox:latest\nCOPY src/ /src/\n');
    for (let f = 0; f < 20; f++) await put(ctx, `src/f${f}`, `file ${f}\n`);
    await utimes(join(ctx, 'src'), OLD, OLD);
    await build(h, ctx);
    await put(ctx, 'src/f0', 'changed\n');
    const incr = await build(h, ctx);
    const iid = join(h, 'iid2');
    const r = await kiln(['build', '--no-cache', '-t', 'incr:nc', '--iidfile', iid, ctx], {
      home: h,
      env: { SOURCE_DATE_EPOCH: String(EPOCH) },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await readFile(iid, 'utf8')).trim(), incr.id);
  } finally {
    await rm(ctx, { recursive: true, force: true });
    await rm(h, { recursive: true, force: true });
  }
});

test('COPY --link is found in the cache whatever changed below it; --chown by name is not', async () => {
  const ctx = await mkdtemp(join(tmpdir(), 'kiln-link-ctx-'));
  const h = await home();
  try {
    await put(ctx, 'data/big.txt', 'payload\n'.repeat(10_000));
    const df = (chown: string): string =>
      [
        'FROM localhost/busybox:latest',
        'ARG X=1',
        'RUN echo "$X" > /x',
        `COPY --link${chown} data/ /data/`,
        // what it writes depends on the layers below (the line count alone would not, and mtimes are seconds)
        'RUN cat /x > /lines && wc -l < /data/big.txt >> /lines',
        '',
      ].join('\n');
    const run = async (x: string): Promise<{ stderr: string; diffIDs: string[] }> => {
      const r = await kiln(['build', '--progress', 'plain', '--build-arg', `X=${x}`, '-t', 'link:latest', ctx], {
        home: h,
      });
      assert.equal(r.code, 0, r.stderr);
      const cfg = await kiln(['inspect', 'link:latest', '--config'], { home: h });
      return {
        stderr: r.stderr,
        diffIDs: (JSON.parse(cfg.stdout) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids,
      };
    };
    const cachedLink = (stderr: string): boolean => /COPY --link[^\n]*\n#\d+ CACHED/.test(stderr);
    await writeFile(join(ctx, 'Dockerfile'), df(''));
    const a = await run('1');
    const b = await run('2'); // the RUN below the COPY --link runs again
    assert.match(b.stderr, /RUN echo "\$X" > \/x\n#\d+ DONE/);
    assert.ok(cachedLink(b.stderr), b.stderr);
    assert.equal(b.diffIDs[2], a.diffIDs[2], 'the --link layer is reused as is');
    assert.notEqual(b.diffIDs[1], a.diffIDs[1]);
    assert.notEqual(b.diffIDs[3], a.diffIDs[3], 'the step after it sees the new state below');
    const c = await run('1'); // back: everything cached
    assert.deepEqual(c.diffIDs, a.diffIDs);

    await writeFile(join(ctx, 'Dockerfile'), df(' --chown=root'));
    await run('3');
    const d = await run('4');
    assert.ok(!cachedLink(d.stderr), 'a --chown name depends on the /etc/passwd below: not independent');
  } finally {
    await rm(ctx, { recursive: true, force: true });
    await rm(h, { recursive: true, force: true });
  }
});
