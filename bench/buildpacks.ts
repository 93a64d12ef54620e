/**
 * `npm run bench:buildpacks` — a Cloud Native Buildpacks rebuild with nothing changed: `kiln pack build NAME
 * --builder B --path APP --publish` (compiled CLI, a process, warm kiln home) of the test builder's static-file and
 * process-type buildpacks (test/integration/buildpacks-fixtures.ts) onto a busybox run image, pushed to a real
 * registry. Per round: wall time and the blob uploads the registry logged (target: ≤ 1.5 s, no upload). For scale,
 * rounds with one app file changed (only the app layer is new) are measured beside them.
 *
 * Environment: BENCH_ROUNDS (default 5), BENCH_FILES (app files, default 200). Needs root or subordinate ids
 * (the buildpacks run in kiln's user namespace sandbox). Output: a table.
 */
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry } from '../test/helpers/registry.js';
import { pushTestImages } from '../test/integration/buildpacks-fixtures.js';
import { compiledCli, runCompiled } from './compiled.js';

const REPO = dirname(dirname(fileURLToPath(import.meta.url)));
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const files = Number(process.env.BENCH_FILES ?? 200);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

async function main(): Promise<void> {
  const main = compiledCli('bench-buildpacks');
  // the compiled CLI reads its version from ../../package.json (.tmp/package.json for a .tmp build)
  await copyFile(join(REPO, 'package.json'), join(dirname(dirname(dirname(main))), 'package.json'));
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-bp-'));
  const registry = await startRegistry();
  try {
    const R = registry.host;
    await pushTestImages(R);
    const app = join(work, 'app');
    await mkdir(join(app, 'assets'), { recursive: true });
    await writeFile(join(app, 'index.html'), '<h1>bench</h1>\n');
    for (let i = 0; i < files; i++) await writeFile(join(app, 'assets', `f${i}.txt`), `file ${i}\n`.repeat(50));
    const env = { KILN_HOME: join(work, 'home') };
    const args = ['pack', 'build', `${R}/bench:1`, '--builder', `${R}/builder:1`, '--path', app, '--publish'];
    const build = async (): Promise<{ ms: number; uploads: number }> => {
      const before = registry.log().length;
      const t0 = performance.now();
      await runCompiled(main, [...args, '--insecure-registry', R, '--progress', 'quiet'], env);
      const ms = performance.now() - t0;
      await registry.waitForLog(/PUT \/v2\/bench\/manifests/);
      const uploads = registry
        .log()
        .slice(before)
        .split('\n')
        .filter((l) => /"(POST|PUT|PATCH) \/v2\/bench\/blobs\/uploads/.test(l)).length;
      return { ms, uploads };
    };
    const cold = await build();
    await build(); // warm-up
    const same: { ms: number; uploads: number }[] = [];
    const changed: { ms: number; uploads: number }[] = [];
    for (let r = 0; r < rounds; r++) {
      same.push(await build());
      await writeFile(join(app, 'assets', 'f0.txt'), `changed ${r}\n`);
      changed.push(await build());
      same.push(await build());
    }
    const row = (name: string, xs: { ms: number; uploads: number }[]): string =>
      `| ${name} | ${(median(xs.map((x) => x.ms)) / 1000).toFixed(2)} s | ` +
      `${(Math.min(...xs.map((x) => x.ms)) / 1000).toFixed(2)}–${(Math.max(...xs.map((x) => x.ms)) / 1000).toFixed(2)} s | ` +
      `${xs.map((x) => x.uploads).join(', ')} |`;
    const out = [
      `buildpacks rebuild (kiln pack build --publish, compiled CLI), ${files} app files, load ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
      '',
      '| case | median | range | blob uploads per build |',
      '|---|---|---|---|',
      `| cold (first build) | ${(cold.ms / 1000).toFixed(2)} s | | ${cold.uploads} |`,
      row(`nothing changed (${same.length} builds)`, same),
      row(`one app file changed (${changed.length} builds)`, changed),
    ].join('\n');
    process.stdout.write(out + '\n');
  } finally {
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
