/**
 * Layers end to end with independent tools: a base tree → writeLayer → extracted in overlay format →
 * a real kernel overlay mount makes changes → the upper dir → writeLayer; GNU tar and umoci must read what we
 * wrote, and `umoci unpack` of a hand-built OCI layout must apply our whiteouts exactly.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import {
  createReadStream,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ensureLayerDir } from '../../src/layer/extract.js';
import { writeLayer, type WrittenLayer } from '../../src/layer/writer.js';

const tmp = mkdtempSync(join(tmpdir(), 'kiln-layer-it-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const isRoot = process.getuid?.() === 0;

function baseTree(d: string): void {
  mkdirSync(join(d, 'etc'), { recursive: true });
  mkdirSync(join(d, 'var/cache/pkg'), { recursive: true });
  mkdirSync(join(d, 'bin'));
  writeFileSync(join(d, 'etc/keep'), 'keep\n');
  writeFileSync(join(d, 'etc/remove'), 'bye\n');
  writeFileSync(join(d, 'var/cache/pkg/old'), 'old\n');
  writeFileSync(join(d, 'bin/tool'), '#!/bin/sh\necho tool\n');
  execFileSync('chmod', ['4755', join(d, 'bin/tool')]);
  linkSync(join(d, 'bin/tool'), join(d, 'bin/tool-alias'));
  symlinkSync('tool', join(d, 'bin/sym'));
  const long = 'l'.repeat(140);
  writeFileSync(join(d, long), 'long name');
  writeFileSync(join(d, 'owned'), 'owned');
  if (isRoot) execFileSync('chown', ['1000:1000', join(d, 'owned')]);
  for (const p of ['etc/keep', 'etc/remove', 'bin/tool', long, 'owned', 'etc', 'bin']) {
    utimesSync(join(d, p), 1600000000, 1600000000);
  }
}

function snapshot(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string, rel: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(p);
      const kind = st.isDirectory()
        ? 'd'
        : st.isSymbolicLink()
          ? `l:${readlinkSync(p)}`
          : `f:${readFileSync(p, 'utf8')}`;
      const mtime = st.isDirectory() ? '' : String(Math.floor(st.mtimeMs / 1000));
      out.set(r, `${kind} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${mtime}`);
      if (st.isDirectory()) walk(p, r);
    }
  };
  walk(root, '');
  return out;
}

function sha256File(p: string): string {
  return 'sha256:' + createHash('sha256').update(readFileSync(p)).digest('hex');
}

/** Write an OCI image layout by hand around our layer blobs. */
function ociLayout(dir: string, layers: WrittenLayer[]): void {
  const blobs = join(dir, 'blobs/sha256');
  mkdirSync(blobs, { recursive: true });
  for (const l of layers) renameSync(l.file, join(blobs, l.digest.slice(7)));
  const put = (data: string): { digest: string; size: number } => {
    const digest = 'sha256:' + createHash('sha256').update(data).digest('hex');
    writeFileSync(join(blobs, digest.slice(7)), data);
    return { digest, size: Buffer.byteLength(data) };
  };
  const config = put(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffID) },
    }),
  );
  const manifest = put(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
  );
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...manifest,
          annotations: { 'org.opencontainers.image.ref.name': 'latest' },
        },
      ],
    }),
  );
}

test('GNU tar extracts a written layer into an identical tree', async () => {
  const src = join(tmp, 'gnu-src');
  mkdirSync(src);
  baseTree(src);
  const layer = await writeLayer(src, { tmpDir: tmp, whiteouts: 'none' });
  assert.equal(sha256File(layer.file), layer.digest);
  const out = join(tmp, 'gnu-out');
  mkdirSync(out);
  execFileSync('tar', ['--same-owner', '-xpzf', layer.file, '-C', out]);
  assert.deepEqual(snapshot(out), snapshot(src));
  assert.equal(lstatSync(join(out, 'bin/tool')).ino, lstatSync(join(out, 'bin/tool-alias')).ino, 'hard link kept');
  const listing = execFileSync('tar', ['-tvzf', layer.file], { encoding: 'utf8' });
  assert.match(listing, /^-rwsr-xr-x 0\/0 .* bin\/tool$/m);
  assert.match(listing, /^hrwsr-xr-x 0\/0 .* bin\/tool-alias link to bin\/tool$/m);
  rmSync(layer.file);
});

test('overlay upper dir → layer → umoci unpack applies whiteouts and opaque dirs', async () => {
  const src = join(tmp, 'base-src');
  mkdirSync(src);
  baseTree(src);
  const base = await writeLayer(src, { tmpDir: tmp, whiteouts: 'none' });
  const layersDir = join(tmp, 'layers');
  const lower = await ensureLayerDir(layersDir, base.diffID, async () => createReadStream(base.file), {
    digest: base.digest,
  });
  assert.deepEqual(snapshot(lower), snapshot(src), 'overlay-format extraction equals the source');

  // A real overlay mount (userxattr, as the sandbox does) in a private mount namespace that dies with the shell.
  const upper = join(tmp, 'upper');
  const work = join(tmp, 'work');
  const merged = join(tmp, 'merged');
  for (const d of [upper, work, merged]) mkdirSync(d);
  const script = [
    'set -e',
    `mount -t overlay overlay -o lowerdir=${lower},upperdir=${upper},workdir=${work},userxattr ${merged}`,
    `rm ${merged}/etc/remove`,
    `echo changed > ${merged}/etc/keep`,
    `rm -rf ${merged}/var/cache`,
    `mkdir -p ${merged}/var/cache && echo new > ${merged}/var/cache/new`,
    `echo added > ${merged}/added`,
  ].join('\n');
  execFileSync('unshare', [...(isRoot ? [] : ['--user', '--map-root-user']), '--mount', 'sh', '-c', script]);

  const top = await writeLayer(upper, { tmpDir: tmp });
  const names = execFileSync('tar', ['-tzf', top.file], { encoding: 'utf8' }).trim().split('\n');
  assert.ok(names.includes('etc/.wh.remove'), names.join(' '));
  assert.ok(names.includes('var/cache/.wh..wh..opq'), names.join(' '));
  assert.ok(names.indexOf('var/cache/.wh..wh..opq') < names.indexOf('var/cache/new'), 'opaque marker first');

  // Our overlay-format extraction of that layer, stacked on the base in a read-only kernel overlay, must show the
  // same tree as the merged view the changes were made in.
  const topDir = await ensureLayerDir(layersDir, top.diffID, async () => createReadStream(top.file), {
    digest: top.digest,
  });
  const view = join(tmp, 'view');
  mkdirSync(view);
  const listing = execFileSync(
    'unshare',
    [
      ...(isRoot ? [] : ['--user', '--map-root-user']),
      '--mount',
      'sh',
      '-c',
      `mount -t overlay overlay -o lowerdir=${topDir}:${lower},userxattr ${view} && cd ${view} && find . | sort`,
    ],
    { encoding: 'utf8' },
  );
  const seen = listing.trim().split('\n');
  assert.ok(!seen.includes('./etc/remove'), 'whiteout device hides the base file');
  assert.ok(!seen.includes('./var/cache/pkg'), 'opaque xattr hides the base directory content');
  assert.ok(seen.includes('./var/cache/new') && seen.includes('./added') && seen.includes('./etc/keep'));

  const layout = join(tmp, 'layout');
  ociLayout(layout, [base, top]);
  const bundle = join(tmp, 'bundle');
  execFileSync('umoci', ['unpack', ...(isRoot ? [] : ['--rootless']), '--image', `${layout}:latest`, bundle], {
    stdio: 'pipe',
  });
  const rootfs = join(bundle, 'rootfs');
  const got = snapshot(rootfs);
  assert.equal(got.has('etc/remove'), false, 'whiteout applied');
  assert.equal(got.has('var/cache/pkg'), false, 'opaque dir hides the lower content');
  assert.match(got.get('var/cache/new') ?? '', /^f:new\n/);
  assert.match(got.get('etc/keep') ?? '', /^f:changed\n/);
  assert.match(got.get('added') ?? '', /^f:added\n/);
  assert.equal(got.get('bin/tool'), snapshot(src).get('bin/tool'), 'setuid file from the base layer unchanged');
  assert.equal(got.get('owned'), snapshot(src).get('owned'));
});

test('with the lower dirs, the writer records only what changed (BuildKit overlay differ) and umoci agrees', async () => {
  const src = join(tmp, 'lw-src');
  mkdirSync(src);
  baseTree(src);
  const base = await writeLayer(src, { tmpDir: tmp, whiteouts: 'none' });
  const lower = await ensureLayerDir(join(tmp, 'lw-layers'), base.diffID, async () => createReadStream(base.file));
  const upper = join(tmp, 'lw-upper');
  const work = join(tmp, 'lw-work');
  const merged = join(tmp, 'lw-merged');
  for (const d of [upper, work, merged]) mkdirSync(d);
  const script = [
    'set -e',
    `mount -t overlay overlay -o lowerdir=${lower},upperdir=${upper},workdir=${work},userxattr ${merged}`,
    `chown $(stat -c %u:%g ${merged}/owned) ${merged}/owned`, // copy-up without a change (not setuid: chown clears that)
    `touch ${merged}/bin/tmp && rm ${merged}/bin/tmp`, // bin/ copied up, nothing left in it
    `rm ${merged}/etc/remove`,
    `rm -rf ${merged}/var/cache && mkdir ${merged}/var/cache && echo new > ${merged}/var/cache/new`,
    `cp -a ${merged} ${tmp}/lw-expected`,
  ].join('\n');
  execFileSync('unshare', [...(isRoot ? [] : ['--user', '--map-root-user']), '--mount', 'sh', '-c', script]);
  const list = (f: string): string[] => execFileSync('tar', ['-tzf', f], { encoding: 'utf8' }).trim().split('\n');

  const plain = await writeLayer(upper, { tmpDir: tmp });
  const diff = await writeLayer(upper, { tmpDir: tmp, lowers: [lower] });
  assert.ok(list(plain.file).includes('owned') && list(plain.file).includes('bin/'), 'without lowers all is recorded');
  assert.deepEqual(list(diff.file), [
    'etc/',
    'etc/.wh.remove',
    'var/',
    'var/cache/',
    'var/cache/.wh..wh..opq',
    'var/cache/new',
  ]);

  const layout = join(tmp, 'lw-layout');
  ociLayout(layout, [base, diff]);
  const bundle = join(tmp, 'lw-bundle');
  execFileSync('umoci', ['unpack', ...(isRoot ? [] : ['--rootless']), '--image', `${layout}:latest`, bundle], {
    stdio: 'pipe',
  });
  const got = snapshot(join(bundle, 'rootfs'));
  const want = snapshot(join(tmp, 'lw-expected'));
  // Unrecorded directories keep the base's metadata (as with BuildKit); compare everything else exactly.
  for (const m of [got, want]) for (const [k, v] of m) if (v.startsWith('d ')) m.set(k, 'd');
  assert.deepEqual(got, want);
});
