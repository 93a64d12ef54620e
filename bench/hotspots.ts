/**
 * Micro-benchmarks of kiln hot spots found with `npm run bench` (CPU profiles and syscall timelines of W1/W3), each
 * timed as it is today and with the proposed change, on the same 50,000-file tree (W3's RUN output):
 *
 *   1. layer writing (src/layer/writer.ts writeLayer): every tar header, body and padding is its own stream chunk
 *      through DigestingStream → gzip → DigestingStream → file (≈150k chunks for 50k files); proposed: coalesce the
 *      layerTar output into 64 KiB chunks, and gzip level 1 instead of zlib's default 6 for layer blobs.
 *   2. src/sandbox/overlay.ts pruneUnchangedDirs: one awaited fs/promises lstat per entry of the upper dir (a
 *      threadpool round trip per file); proposed: readdir({ withFileTypes: true }) and lstat only directories.
 *   4. gzip of incompressible data (W1's 100 MiB of assets): zlib runs at the same slow speed at every level on
 *      random bytes (~15–50 MB/s per core). Landed as `BlockGzip` (src/layer/compression.ts) — the stream is cut into 1 MiB blocks, each a
 *      gzip member (multi-member gzip is valid RFC 1952; Go's gzip reader, hence containerd/skopeo/umoci, reads it
 *      by default); a block whose 64 KiB sample does not shrink at level 1 is stored (level 0, memcpy speed).
 *      Deterministic (same bytes ⇒ same blob), and the blocks can go to worker threads for multi-core. Checked:
 *      `umoci unpack` and `skopeo inspect` accept such a layer in an OCI layout.
 *   3. COPY of W1's 5,000 source files (src/engine/copy.ts: copyFileSync + lchown + chmod + lutimes per file) into
 *      the overlay merged dir (today) vs straight into the snapshot's upper dir. Measured: 1.0–1.6× (busy vs
 *      quiet machine) — overlay costs something, but the per-file syscalls dominate, so the lever for warm builds
 *      is copying less (reuse the unchanged files of the previous build of the same step). As root only.
 *
 * Run: `node --import tsx bench/hotspots.ts [files]` (default 50,000).
 */
import {
  chmodSync,
  copyFileSync,
  createWriteStream,
  lchownSync,
  lutimesSync,
  mkdirSync,
  readdirSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip, gunzipSync } from 'node:zlib';
import type { Transform } from 'node:stream';
import { BlockGzip } from '../src/layer/compression.js';
import { randomBytesFor } from './inputs.js';
import { layerTar, writeLayer } from '../src/layer/writer.js';
import { pruneUnchangedDirs } from '../src/sandbox/overlay.js';
import { DigestingStream } from '../src/oci/digest.js';
import { median } from './procs.js';

/** Coalesce a stream of small buffers into ~`size`-byte chunks. */
import { coalesce } from '../src/util/coalesce.js';
export { coalesce };

async function gzipBench(work: string, rounds: number): Promise<void> {
  const data = randomBytesFor('hotspots', 64 << 20);
  const sink = async (t: Transform): Promise<Buffer> => {
    const out: Buffer[] = [];
    await pipeline(
      Readable.from([data.subarray(0, 32 << 20), data.subarray(32 << 20)]),
      t,
      async (src: AsyncIterable<Buffer>) => {
        for await (const c of src) out.push(c);
      },
    );
    return Buffer.concat(out);
  };
  await time('gzip 64 MiB incompressible, zlib level 6 (today)', rounds, () => sink(createGzip()));
  await time('  zlib level 1', rounds, () => sink(createGzip({ level: 1 })));
  let blob: Buffer = Buffer.alloc(0);
  await time(
    '  BlockGzip, landed (1 MiB members on the thread pool, stored when incompressible)',
    rounds,
    async () => (blob = await sink(new BlockGzip({ level: 1 }))),
  );
  if (!gunzipSync(blob).equals(data)) throw new Error('BlockGzip output does not round-trip');
  const g = spawnSync('gzip', ['-dc'], { input: blob, maxBuffer: 1 << 28 });
  process.stdout.write(
    `  round-trips through zlib and gzip(1): ${g.status === 0 && g.stdout.equals(data)}; size +${((blob.length / data.length - 1) * 100).toFixed(3)}%\n`,
  );
  void work;
}

/** The proposed pruneUnchangedDirs walk: only directories are stat'ed (returns the number of dirs visited). */
export async function walkDirsOnly(dir: string): Promise<number> {
  let count = 1;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isDirectory()) count += await walkDirsOnly(join(dir, e.name));
  }
  return count;
}

async function time(label: string, rounds: number, fn: () => Promise<unknown>): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    await fn();
    xs.push(performance.now() - t0);
  }
  const m = median(xs);
  process.stdout.write(`${label.padEnd(58)} ${(m / 1000).toFixed(2)} s (median of ${rounds})\n`);
  return m;
}

/** Copy a tree file by file the way the COPY implementation does (content, owner, mode, times). */
function copyTree(src: string, dst: string): void {
  mkdirSync(dst, { recursive: true });
  for (const e of readdirSync(src, { withFileTypes: true })) {
    const s = join(src, e.name);
    const d = join(dst, e.name);
    if (e.isDirectory()) copyTree(s, d);
    else {
      const st = statSync(s);
      copyFileSync(s, d);
      lchownSync(d, 0, 0);
      chmodSync(d, st.mode & 0o7777);
      lutimesSync(d, st.atime, st.mtime);
    }
  }
}

async function copyBench(work: string, rounds: number): Promise<void> {
  const { writeW1Context } = await import('./inputs.js');
  const ctx = join(work, 'ctx');
  await writeW1Context(ctx, { assets: 0 });
  const lower = join(work, 'lower');
  mkdirSync(join(lower, 'app'), { recursive: true });
  let n = 0;
  const viaOverlay = async (): Promise<void> => {
    const d = join(work, `ov${++n}`);
    for (const x of ['upper', 'work', 'merged']) mkdirSync(join(d, x), { recursive: true });
    const opts = `lowerdir=${lower},upperdir=${join(d, 'upper')},workdir=${join(d, 'work')},userxattr`;
    const m = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', opts, join(d, 'merged')]);
    if (m.status !== 0) throw new Error(`overlay mount failed: ${m.stderr.toString()}`);
    try {
      copyTree(join(ctx, 'src'), join(d, 'merged', 'app', 'src'));
    } finally {
      spawnSync('umount', [join(d, 'merged')]);
      await rm(d, { recursive: true, force: true });
    }
  };
  const direct = async (): Promise<void> => {
    const d = join(work, `up${++n}`);
    try {
      copyTree(join(ctx, 'src'), join(d, 'upper', 'app', 'src'));
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  };
  const a = await time('COPY 5,000 files into the overlay merged dir (today)', rounds, viaOverlay);
  const b = await time('  straight into the upper dir', rounds, direct);
  process.stdout.write(`  → ${(a / b).toFixed(2)}× faster\n`);
}

async function main(): Promise<void> {
  const files = Number(process.argv[2] ?? 50_000);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
  const work = await mkdtemp(join(tmpdir(), 'kiln-hotspots-'));
  try {
    const tree = join(work, 'tree');
    for (let i = 0; i < files; i++) {
      const d = join(tree, 'data', `d${Math.floor(i / 1000)}`);
      if (i % 1000 === 0) mkdirSync(d, { recursive: true });
      writeFileSync(join(d, `f${i}`), `file ${i}\n`);
    }
    process.stdout.write(
      `tree: ${files} files in ${Math.ceil(files / 1000)} dirs; load ${(await import('node:os'))
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')}\n`,
    );
    const out = join(work, 'out.gz');
    const base = await time('writeLayer (today: gzip 6, one chunk per header/body)', rounds, () =>
      writeLayer(tree, { tmpDir: work }).then((w) => rm(w.file)),
    );
    const viaTar = async (level: number, batch: boolean): Promise<void> => {
      const src = batch ? coalesce(layerTar(tree)) : layerTar(tree);
      await pipeline(
        Readable.from(src),
        new DigestingStream(),
        createGzip({ level }),
        new DigestingStream(),
        createWriteStream(out),
      );
    };
    const b6 = await time('  coalesced 64 KiB chunks, gzip 6', rounds, () => viaTar(6, true));
    const b1 = await time('  coalesced 64 KiB chunks, gzip 1', rounds, () => viaTar(1, true));
    process.stdout.write(`  → ${(base / b6).toFixed(2)}× from coalescing, ${(base / b1).toFixed(2)}× with gzip 1\n`);
    const p0 = await time('pruneUnchangedDirs (today: lstat every entry)', rounds, () => pruneUnchangedDirs(tree, []));
    const p1 = await time('  directories only (readdir withFileTypes)', rounds, () => walkDirsOnly(tree));
    process.stdout.write(`  → ${(p0 / p1).toFixed(1)}× faster\n`);
    await gzipBench(work, rounds);
    if (process.getuid?.() === 0) await copyBench(work, rounds);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

// run only as a script (the prototypes above may be imported)
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`hotspots failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  });
}
