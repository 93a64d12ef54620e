/**
 * `npm run bench:s2i` — an S2I build of a small app (200 source files, ~1 MB) on a warm cache: `kiln s2i build …
 * --push` (compiled CLI, a process) against current BuildKit (`buildctl build --push`, buildkitd warm) building
 * what `s2i build --as-dockerfile` generates (the real s2i, scripts/s2i-tool.sh; generating is not timed), side by
 * side, one source file changed per round. Then an incremental kiln build with a cached artifacts tar: the
 * previous image's manifests and layers read from the registry are counted (target: none). Target: kiln ≤ 0.5×.
 *
 * Environment: BENCH_ROUNDS (default 5), BENCH_FILES (default 200); BENCH_TRACE=1 adds one more kiln round with
 * `--progress plain` and prints its log with the time of each line (where the warm time goes). Needs root
 * (buildkitd). Output: a table, also in bench/results/s2i.md.
 */
import { execFile, spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry, runKiln } from '../test/helpers/registry.js';
import { startBuildKit } from '../test/helpers/buildkit.js';
import { compiledCli, runCompiled } from './compiled.js';

const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const files = Number(process.env.BENCH_FILES ?? 200);
const REPO = dirname(dirname(fileURLToPath(import.meta.url)));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

function s2iBinary(): string {
  const r = spawnSync('bash', [join(REPO, 'scripts', 's2i-tool.sh')], { encoding: 'utf8' });
  const m = /^s2i=(.*)$/m.exec(r.stdout);
  if (r.status !== 0 || !m) throw new Error(`scripts/s2i-tool.sh: ${r.stderr}`);
  return m[1] as string;
}

/** One compiled-CLI run with `--progress plain`, its output lines prefixed with the ms since the start. */
function traced(main: string, args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const runner =
    'const { main } = await import(process.argv[1]); process.exitCode = await main(process.argv.slice(2));';
  const t0 = performance.now();
  let out = '';
  return new Promise((res, rej) => {
    const p = execFile(
      process.execPath,
      ['--input-type=module', '-e', runner, pathToFileURL(main).href, ...args, '--progress', 'plain'],
      { env: { ...process.env, ...env } },
      (err) => (err ? rej(new Error(out)) : res(out + `${(performance.now() - t0).toFixed(0).padStart(6)} exit\n`)),
    );
    const add = (b: Buffer): void => {
      const t = (performance.now() - t0).toFixed(0).padStart(6);
      for (const l of b.toString().split('\n')) if (l.trim()) out += `${t} ${l}\n`;
    };
    p.stdout?.on('data', add);
    p.stderr?.on('data', add);
  });
}

async function main(): Promise<void> {
  const s2i = s2iBinary();
  const cli = compiledCli('bench-s2i-dist');
  // `kiln --version` reads package.json two levels above cli/main.js: give the compiled copy one
  const pkgCopy = join(dirname(dirname(dirname(cli))), 'package.json');
  if (!existsSync(pkgCopy)) await copyFile(join(REPO, 'package.json'), pkgCopy);
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-s2i-'));
  const home = join(work, 'home');
  const registry = await startRegistry();
  const R = registry.host;
  const buildkit = await startBuildKit({ insecureRegistries: [R] });
  const kiln = (args: string[]): Promise<string> =>
    runCompiled(cli, [...args, '--insecure-registry', R, '--progress', 'quiet'], { KILN_HOME: home });
  try {
    const b = await runKiln(['bootstrap', 'busybox'], { KILN_HOME: home });
    if (b.code !== 0) throw new Error(b.stderr);
    const builder = join(work, 'builder');
    await mkdir(join(builder, 's2i'), { recursive: true });
    await writeFile(
      join(builder, 's2i', 'assemble'),
      '#!/bin/sh\nset -e\nmkdir -p /opt/app\ncp -R /tmp/src/. /opt/app/\nn=$(cat /tmp/artifacts/n 2>/dev/null || echo 0)\necho $((n+1)) > /opt/app/n\n',
    );
    await writeFile(join(builder, 's2i', 'run'), '#!/bin/sh\nls /opt/app | wc -l\n');
    await writeFile(join(builder, 's2i', 'save-artifacts'), '#!/bin/sh\ncd /opt/app && tar -cf - n\n');
    for (const f of ['assemble', 'run', 'save-artifacts']) await chmod(join(builder, 's2i', f), 0o755);
    await writeFile(
      join(builder, 'Dockerfile'),
      'FROM localhost/busybox\nRUN mkdir -p /opt/app && chown 1001:0 /opt/app\nCOPY s2i/ /usr/libexec/s2i/\n' +
        'LABEL io.openshift.s2i.scripts-url=image:///usr/libexec/s2i\nUSER 1001\n',
    );
    await kiln(['build', '--push', '-t', `${R}/builder:1`, builder]);
    const src = join(work, 'app');
    await mkdir(join(src, 'lib'), { recursive: true });
    for (let i = 0; i < files; i++)
      await writeFile(join(src, 'lib', `f${i}.txt`), randomBytes(2560).toString('base64'));
    const builderRef = `${R}/builder:1`;
    const kilnArgs = (): string[] => ['s2i', 'build', src, builderRef, `${R}/app-kiln:1`, '--push'];
    const kilnRun = (): Promise<string> => kiln(kilnArgs());
    const buildkitRun = async (round: number): Promise<number> => {
      const ctx = join(work, `ref-${round}`);
      const g = spawnSync(
        s2i,
        [
          'build',
          src,
          builderRef,
          `${R}/app-bk:1`,
          '--as-dockerfile',
          join(ctx, 'Dockerfile'),
          '--assemble-user',
          '1001',
        ],
        { encoding: 'utf8' },
      );
      if (g.status !== 0) throw new Error(`s2i --as-dockerfile: ${g.stderr}`);
      const t0 = performance.now();
      await buildkit.build({ context: ctx, tag: `${R}/app-bk:1` });
      const t = performance.now() - t0;
      await rm(ctx, { recursive: true, force: true });
      return t;
    };
    // warm both
    await kilnRun();
    await buildkitRun(-1);
    const k: number[] = [];
    const bk: number[] = [];
    for (let i = 0; i < rounds; i++) {
      await writeFile(join(src, 'lib', 'f0.txt'), `round ${i} ${Date.now()}\n`);
      const t0 = performance.now();
      await kilnRun();
      k.push(performance.now() - t0);
      bk.push(await buildkitRun(i));
    }
    if (process.env.BENCH_TRACE === '1') {
      await writeFile(join(src, 'lib', 'f0.txt'), `trace ${Date.now()}\n`);
      process.stderr.write(await traced(cli, [...kilnArgs(), '--insecure-registry', R], { KILN_HOME: home }));
    }
    // incremental: the first build saves the artifacts; the second restores them from kiln's cache
    const inc = (): Promise<string> =>
      kiln(['s2i', 'build', src, builderRef, `${R}/app-inc:1`, '--push', '--incremental']);
    await inc();
    await registry.waitForLog(/PUT \/v2\/app-inc\/manifests\/1 /);
    const before = registry.log().length;
    const t0 = performance.now();
    await inc();
    const tInc = performance.now() - t0;
    await registry.waitForLog(/PUT \/v2\/app-inc\/manifests[^\n]*\n[^]*PUT \/v2\/app-inc\/manifests/);
    const reads = registry
      .log()
      .slice(before)
      .split('\n')
      .filter((l) => /"GET \/v2\/app-inc\/(manifests|blobs)\//.test(l)).length;
    const row = (a: string, b: string): string => `| ${a} | ${b} |`;
    const out = [
      `# S2I benchmark (${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${cpus().length} vCPU, ` +
        `${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version})`,
      '',
      `S2I build of a small app (${files} files), warm cache, one file changed per round (${rounds} rounds), ` +
        'kiln and BuildKit alternating round by round.',
      '',
      '| measure | value |',
      '| --- | --- |',
      row('kiln s2i build --push (process), median', `${(median(k) / 1000).toFixed(2)} s`),
      row(
        `BuildKit ${buildkit.version} building the --as-dockerfile output, median`,
        `${(median(bk) / 1000).toFixed(2)} s`,
      ),
      row('ratio kiln / BuildKit', `${(median(k) / median(bk)).toFixed(2)}× (target ≤ 0.5×)`),
      row('incremental kiln build with the cached artifacts tar', `${(tInc / 1000).toFixed(2)} s`),
      row('previous image manifests/layers read from the registry', String(reads)),
      '',
      `Load while measuring (1/5/15 min): ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' / ')}.`,
    ].join('\n');
    console.log('\n' + out);
    await writeFile(join(REPO, 'bench', 'results', 's2i.md'), out + '\n');
  } finally {
    await buildkit.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
