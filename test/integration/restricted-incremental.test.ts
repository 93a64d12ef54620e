/**
 * Incremental COPY at the `restricted` isolation level (src/sandbox/restricted/snapshotter.ts: the previous result
 * is moved into the step's tree, the engine prunes what the copy did not produce again, the tree is settled before
 * the next step): in the emulated restricted container, after edits, deletions, additions and a COPY that replaces
 * base files, the image must equal a fresh build's layer for layer, a later RUN must see the tree a fresh build
 * would show it (deleted sources gone, the base's files back), and unchanged files must be shared with the previous
 * build's layer (reuse really happened).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, chown, lstat, mkdir, mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { ensureRootlessUser } from '../helpers/rootless.js';
import { kilnRestricted } from '../helpers/restricted.js';

/** cap_net_raw=ep */
const CAP = '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=';
const EPOCH = Math.floor(Date.now() / 1000);
const OLD = EPOCH - 1000;
let dir: string;

async function own(...paths: string[]): Promise<void> {
  const { uid, gid } = ensureRootlessUser();
  for (const p of paths) spawnSync('chown', ['-R', `${uid}:${gid}`, p]);
  for (const p of paths) await chown(p, uid, gid);
}

async function put(ctx: string, rel: string, data: string, mtime = OLD): Promise<void> {
  const p = join(ctx, rel);
  await mkdir(join(p, '..'), { recursive: true });
  await writeFile(p, data);
  await utimes(p, mtime, mtime);
}

function setxattr(path: string, name: string, value: string): void {
  const r = spawnSync('setfattr', ['-n', name, '-v', value, path], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
}

function getxattrs(path: string): string {
  const r = spawnSync('getfattr', ['-d', '-m', '.', path], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

async function home(name: string): Promise<string> {
  const h = join(dir, name);
  await mkdir(h);
  await own(h);
  const r = await kilnRestricted(['bootstrap', 'busybox'], { home: h });
  assert.equal(r.code, 0, r.stderr);
  return h;
}

/** Build `ctx` in `h`; the image's diffIDs and the listing the last RUN wrote. */
async function build(h: string, ctx: string): Promise<{ diffIDs: string[]; listing: string }> {
  await own(ctx);
  // (a chown drops file capabilities)
  if (existsSync(join(ctx, 'src/d1/capable'))) setxattr(join(ctx, 'src/d1/capable'), 'security.capability', CAP);
  const out = join(dir, `out-${Date.now()}`);
  const args = ['build', '--isolation', 'restricted', '-t', 'incr:latest', '--progress', 'plain'];
  const r = await kilnRestricted([...args, '-o', 'type=image', '-o', `type=local,dest=${out}`, ctx], {
    home: h,
    env: { SOURCE_DATE_EPOCH: String(EPOCH) },
  });
  assert.equal(r.code, 0, r.stderr);
  const cfg = await kilnRestricted(['inspect', 'incr:latest', '--config'], { home: h });
  assert.equal(cfg.code, 0, cfg.stderr);
  const diffIDs = (JSON.parse(cfg.stdout) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
  const listing = await readFile(join(out, 'listing'), 'utf8');
  await rm(out, { recursive: true, force: true });
  return { diffIDs, listing };
}

before(async () => {
  ensureRootlessUser();
  dir = await mkdtemp(join(tmpdir(), 'kiln-rincr-'));
  await chmod(dir, 0o755);
  await own(dir);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('restricted incremental COPY: edits, deletions, a replaced base file; the image and the next RUN equal a fresh build', async () => {
  const ctx = join(dir, 'ctx');
  await mkdir(ctx);
  await writeFile(
    join(ctx, 'Dockerfile'),
    [
      'FROM localhost/busybox:latest',
      'WORKDIR /app',
      'COPY src/ ./src/',
      // replaces a base file (the tree's own entry is set aside, and back when the source is gone)
      'COPY etc/ /etc/',
      "RUN find /app /etc -exec ls -ld {} + | awk '{ print $1, $3, $4, $5, $NF }' | sort > /listing && cat /etc/group >> /listing",
      '',
    ].join('\n'),
  );
  for (let d = 0; d < 3; d++) {
    for (let f = 0; f < 20; f++) await put(ctx, `src/d${d}/f${f}.txt`, `dir ${d} file ${f}\n`.repeat(f + 1));
  }
  // sources with xattrs: read by the helper (src/sandbox/restricted/xattrs.ts), written by the copier, left out
  // of the plant — a user xattr as it is, a file capability as the emulated security.capability
  await put(ctx, 'src/d1/noted.txt', 'noted\n');
  await put(ctx, 'src/d1/capable', 'capable\n');
  setxattr(join(ctx, 'src/d1/noted.txt'), 'user.note', 'kept');
  await put(ctx, 'etc/group', 'root:x:0:\nfromcontext:x:42:\n');
  await put(ctx, 'etc/extra.conf', 'extra\n');
  for (const d of ['src/d0', 'src/d1', 'src/d2', 'src', 'etc']) await utimes(join(ctx, d), OLD, OLD);
  const reuse = await home('reuse');
  const first = await build(reuse, ctx);
  assert.match(first.listing, /fromcontext/);

  await put(ctx, 'src/d0/f1.txt', 'edited\n');
  await rm(join(ctx, 'src/d0/f3.txt'));
  await rm(join(ctx, 'src/d2'), { recursive: true });
  await put(ctx, 'src/new/n.txt', 'new\n');
  await rm(join(ctx, 'etc/group')); // the base's /etc/group must be what the RUN sees again
  for (const d of ['src/d0', 'src/new', 'src', 'etc']) await utimes(join(ctx, d), OLD, OLD);
  const second = await build(reuse, ctx);
  assert.notDeepEqual(second.diffIDs, first.diffIDs);
  assert.doesNotMatch(second.listing, /fromcontext|src\/d2|src\/d0\/f3\.txt/);
  assert.match(second.listing, /src\/new\/n\.txt/);

  // the incremental COPY's layer shares the unchanged files' inodes with the first build's
  const layerFile = (ids: string[]) =>
    lstat(join(reuse, 'restricted', 'layers', (ids.at(-3) as string).slice('sha256:'.length), 'app/src/d1/f6.txt'));
  assert.equal((await layerFile(second.diffIDs)).ino, (await layerFile(first.diffIDs)).ino, 'unchanged file reused');

  // the xattrs made it into the incremental build's layer (the restricted layer dir keeps the capability as its
  // emulation record)
  const layerDir = join(reuse, 'restricted', 'layers', (second.diffIDs.at(-3) as string).slice('sha256:'.length));
  assert.match(getxattrs(join(layerDir, 'app/src/d1/noted.txt')), /user\.note="kept"/);
  assert.match(getxattrs(join(layerDir, 'app/src/d1/capable')), /user\.kiln\.cap=/);
  assert.match(second.listing, /src\/d1\/noted\.txt/);

  const fresh = await build(await home('fresh'), ctx);
  assert.deepEqual(second.diffIDs, fresh.diffIDs, 'layers of the incremental build equal a fresh build');
  assert.equal(second.listing, fresh.listing);
});
