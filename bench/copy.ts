/**
 * `node --import tsx bench/copy.ts`: `kiln copy` vs `skopeo copy` (Debian) vs `crane copy` (go-containerregistry,
 * built once per machine by scripts/go-tools.sh) of a ~500 MB multi-layer random image, side by side, over several
 * rounds (the order rotates per round), reporting median wall time, throughput, the ratio to the fastest tool and
 * the peak RSS of each tool's process tree (polled from /proc).
 *
 *   same-registry  — copy to a new repository of the same registry (kiln mounts every blob: trivial),
 *   cross-registry — copy to a second registry (every byte streamed: GET piped into the upload, digest-checked).
 *
 * Each round copies to a fresh repository name, so nothing is already present at the destination.
 * Environment: KILN_BENCH_ROUNDS (default 3), KILN_BENCH_COPY_MB (default 500), KILN_BENCH_LAYERS (default 5),
 * KILN_BENCH_KEEP=1 (leave the registries' data), KILN_BENCH_TSX=1 (run kiln through tsx instead of compiling it
 * to .tmp/bench-dist first; tsx's esbuild helper then counts toward kiln's RSS).
 * The cross-registry destination is a fresh registry every round.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { push } from '../src/registry/push.js';
import { closeTransports } from '../src/registry/transport.js';
import { makeRandomImage } from '../test/helpers/images.js';
import { startRegistry, type TestRegistry } from '../test/helpers/registry.js';
import { goTools } from '../test/helpers/go-tools.js';
import { measure, median, type Measured } from './procs.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..');
const ROUNDS = Math.max(1, Number(process.env.KILN_BENCH_ROUNDS ?? 3) || 3);
const TOTAL_MB = Math.max(1, Number(process.env.KILN_BENCH_COPY_MB ?? 500) || 500);
const LAYERS = Math.max(1, Number(process.env.KILN_BENCH_LAYERS ?? 5) || 5);

type Tool = 'kiln' | 'skopeo' | 'crane';
type Scenario = 'same-registry' | 'cross-registry';

function log(msg: string): void {
  process.stderr.write(`[bench copy ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/**
 * Compile kiln into .tmp/bench-dist (gitignored) so the measurement is of plain node, not tsx + esbuild.
 * Returns the output directory, or undefined when compilation produced nothing (then tsx is used).
 */
function buildForBench(): string | undefined {
  const out = join(REPO, '.tmp', 'bench-dist');
  log('compiling kiln for the benchmark (tsc -p tsconfig.build.json)');
  spawnSync(
    process.execPath,
    [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json', '--outDir', out],
    {
      cwd: REPO,
      stdio: 'ignore',
    },
  );
  return existsSync(join(out, 'cli', 'main.js')) ? out : undefined;
}

let compiled: string | undefined | null = null;

function kilnCommand(): { cmd: string; args: string[]; env: NodeJS.ProcessEnv; how: string } {
  if (compiled === null) compiled = process.env.KILN_BENCH_TSX === '1' ? undefined : buildForBench();
  if (compiled) {
    const runner =
      'const { main } = await import(process.argv[1]); process.exitCode = await main(process.argv.slice(2));';
    return {
      cmd: process.execPath,
      args: ['--input-type=module', '-e', runner, pathToFileURL(join(compiled, 'cli', 'main.js')).href],
      env: process.env,
      how: 'compiled JS',
    };
  }
  return {
    cmd: process.execPath,
    args: [join(REPO, 'bin', 'kiln.js')],
    env: { ...process.env, KILN_FROM_SOURCE: '1' },
    how: 'tsx (from source; its esbuild helper counts toward RSS)',
  };
}

async function runTool(tool: Tool, src: string, dst: string): Promise<Measured> {
  if (tool === 'kiln') {
    const k = kilnCommand();
    return measure(k.cmd, [...k.args, 'copy', src, dst, '--progress', 'quiet'], { env: k.env });
  }
  if (tool === 'crane') {
    // crane copies every platform of an index and mounts blobs within one registry, like the others
    const crane = goTools('crane').crane as string;
    return measure(crane, ['copy', '--insecure', src, dst]);
  }
  return measure('skopeo', [
    'copy',
    '--quiet',
    '--src-tls-verify=false',
    '--dest-tls-verify=false',
    `docker://${src}`,
    `docker://${dst}`,
  ]);
}

function fmt(n: number, digits = 2): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '-';
}

async function main(): Promise<void> {
  const a = await startRegistry();
  let b = await startRegistry();
  const seedOpts = {};
  try {
    const layerSize = Math.floor((TOTAL_MB * 1024 * 1024) / LAYERS);
    log(`seeding ${LAYERS} × ${(layerSize / 1048576).toFixed(0)} MiB random layers into ${a.host}/bench/src:v1`);
    const img = makeRandomImage({ layers: LAYERS, layerSize, compression: 'none', seed: `bench-${Date.now()}` });
    const src = `${a.host}/bench/src:v1`;
    await push(img, src, seedOpts);
    let bytes = (await img.rawConfig()).length;
    for (const l of await img.layers()) bytes += await l.size();
    log(`seeded ${(bytes / 1e6).toFixed(0)} MB; kiln runs as ${kilnCommand().how}`);

    const results = new Map<string, Measured[]>();
    const tools: Tool[] = ['kiln', 'skopeo', 'crane'];
    log(`crane ${goTools('crane')['crane-version']}`);
    for (let round = 0; round < ROUNDS; round++) {
      const order = tools.map((_, i) => tools[(i + round) % tools.length] as Tool);
      // A fresh destination registry each round: nothing there yet, and no client-side cache (skopeo's blob info
      // cache) can turn the copy into mounts.
      if (round > 0) {
        await b.stop();
        b = await startRegistry();
      }
      for (const scenario of ['same-registry', 'cross-registry'] as Scenario[]) {
        for (const tool of order) {
          const dstReg: TestRegistry = scenario === 'same-registry' ? a : b;
          const dst = `${dstReg.host}/bench/${tool}-${scenario}-${round}:v1`;
          const m = await runTool(tool, src, dst);
          if (m.code !== 0) throw new Error(`${tool} copy failed (${m.code}): ${m.stderr.trim().split('\n').pop()}`);
          log(
            `round ${round + 1} ${scenario} ${tool}: ${(m.ms / 1000).toFixed(2)}s, peak RSS ${(m.peakRss / 1048576).toFixed(0)} MiB`,
          );
          const key = `${scenario}\t${tool}`;
          results.set(key, [...(results.get(key) ?? []), m]);
        }
      }
    }

    const fastest = new Map<string, number>();
    for (const [key, ms] of results) {
      const scenario = key.split('\t')[0] as string;
      const t = median(ms.map((m) => m.ms));
      fastest.set(scenario, Math.min(fastest.get(scenario) ?? Infinity, t));
    }
    const rows = [...results.entries()].map(([key, ms]) => {
      const [scenario, tool] = key.split('\t') as [string, string];
      const t = median(ms.map((m) => m.ms)) / 1000;
      const rss = Math.max(...ms.map((m) => m.peakRss)) / 1048576;
      const rssMed = median(ms.map((m) => m.peakRss)) / 1048576;
      const vsFastest = (t * 1000) / (fastest.get(scenario) ?? NaN);
      return [scenario, tool, fmt(t), fmt(bytes / 1e6 / t, 0), fmt(vsFastest), fmt(rssMed, 0), fmt(rss, 0)];
    });
    const header = ['scenario', 'tool', 'median s', 'MB/s', '× fastest', 'median peak RSS MiB', 'max peak RSS MiB'];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (cells: string[]): string => '| ' + cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ') + ' |';
    const out = [
      `kiln copy vs skopeo copy vs crane copy — ${(bytes / 1e6).toFixed(0)} MB in ${LAYERS} layers, ${ROUNDS} round(s), kiln as ${kilnCommand().how}`,
      line(header),
      line(widths.map((w) => '-'.repeat(w))),
      ...rows.map(line),
    ].join('\n');
    process.stdout.write(out + '\n');
  } finally {
    await closeTransports(seedOpts);
    if (process.env.KILN_BENCH_KEEP !== '1') {
      await a.stop();
      await b.stop();
    }
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench copy: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
