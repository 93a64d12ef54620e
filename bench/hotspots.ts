/**
 * Micro-benchmarks of kiln hot spots found with `npm run bench` (CPU profiles and syscall timelines of W1/W3), each
 * timed as it is today and with the proposed change, on the same 50,000-file tree (W3's RUN output):
 *
 *   1. layer writing (src/layer/writer.ts writeLayer): every tar header, body and padding is its own stream chunk
 *      through DigestingStream → gzip → DigestingStream → file (≈150k chunks for 50k files); proposed: coalesce the
 *      layerTar output into 64 KiB chunks, and gzip level 1 instead of zlib's default 6 for layer blobs.
 *   2. src/sandbox/overlay.ts pruneUnchangedDirs: one awaited fs/promises lstat per entry of the upper dir (a
 *      threadpool round trip per file); proposed: readdir({ withFileTypes: true }) and lstat only directories.
 *
 * Run: `node --import tsx bench/hotspots.ts [files]` (default 50,000).
 */
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { layerTar, writeLayer } from '../src/layer/writer.js';
import { pruneUnchangedDirs } from '../src/sandbox/overlay.js';
import { DigestingStream } from '../src/oci/digest.js';
import { median } from './procs.js';

/** Coalesce a stream of small buffers into ~`size`-byte chunks. */
export async function* coalesce(src: AsyncIterable<Buffer>, size = 1 << 16): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let n = 0;
  for await (const b of src) {
    parts.push(b);
    n += b.length;
    if (n >= size) {
      yield parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n);
      parts = [];
      n = 0;
    }
  }
  if (n > 0) yield Buffer.concat(parts, n);
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
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`hotspots failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
