/** Shared by the benches (rebase, s2i, k8s, k8s-pods): run kiln's CLI compiled, as users run it. */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const REPO = dirname(dirname(fileURLToPath(import.meta.url)));

/**
 * kiln compiled into .tmp/NAME (gitignored): a command is measured as plain node, not tsx, and bundled as
 * `npm run build` bundles it (.tmp/NAME/bundle/kiln.cjs, what bin/kiln.js runs; BENCH_BUNDLE=0: tsc's
 * cli/main.js). Run either with `runCompiled` or a `launcherSource` script.
 */
export function compiledCli(name: string): string {
  const out = join(REPO, '.tmp', name);
  const tsc = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
  spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', out], { cwd: REPO, stdio: 'ignore' });
  const main = join(out, 'cli', 'main.js');
  if (!existsSync(main)) throw new Error(`tsc produced no .tmp/${name}/cli/main.js`);
  return process.env.BENCH_BUNDLE === '0' ? main : bundleCli(join(out, 'bundle'));
}

/** scripts/bundle.mjs into `out`: the path of its kiln.cjs (loaded by bin/load-bundle.js, exports `main`). */
export function bundleCli(out: string): string {
  const r = spawnSync(process.execPath, [join(REPO, 'scripts', 'bundle.mjs'), out], { cwd: REPO, encoding: 'utf8' });
  const entry = join(out, 'kiln.cjs');
  if (r.status !== 0 || !existsSync(entry)) throw new Error(`scripts/bundle.mjs failed:\n${r.stderr}`);
  return entry;
}

/** dist/cli/main.js, refusing one older than a source file (a bench that measures dist/, or ships it in an image). */
export function compiledDist(): string {
  const main = join(REPO, 'dist', 'cli', 'main.js');
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce(
      (m, e) =>
        Math.max(
          m,
          e.isDirectory()
            ? newest(join(dir, e.name))
            : e.name.endsWith('.ts')
              ? statSync(join(dir, e.name)).mtimeMs
              : 0,
        ),
      0,
    );
  if (!existsSync(main) || statSync(main).mtimeMs < newest(join(REPO, 'src'))) {
    throw new Error('dist/ is missing or older than src/: run `npm run build` first (the bench measures dist/)');
  }
  return main;
}

/** An ES module that runs the CLI `main` (a bundle's kiln.cjs as bin/kiln.js loads it, or tsc's cli/main.js). */
export function launcherSource(main: string): string {
  const load = main.endsWith('.cjs')
    ? `(await import(${JSON.stringify(pathToFileURL(join(REPO, 'bin', 'load-bundle.js')).href)})).loadBundle(${JSON.stringify(main)})`
    : `await import(${JSON.stringify(pathToFileURL(main).href)})`;
  // BENCH_PROF=DIR: a CPU profile of the main thread (200 µs samples) to DIR/<pid>.cpuprofile at exit — also of the
  // processes that run this launcher themselves (kiln serve's build workers); --cpu-prof is refused in NODE_OPTIONS
  const dir = process.env.BENCH_PROF;
  const prof = dir
    ? "import { Session } from 'node:inspector';\nimport { writeFileSync } from 'node:fs';\n" +
      "const prof = new Session();\nprof.connect();\nprof.post('Profiler.enable');\n" +
      "prof.post('Profiler.setSamplingInterval', { interval: 200 });\nprof.post('Profiler.start');\n" +
      "process.on('exit', () => prof.post('Profiler.stop', (e, r) => e || writeFileSync(" +
      `${JSON.stringify(dir)} + '/' + process.pid + '.cpuprofile', JSON.stringify(r.profile))));\n`
    : '';
  return `${prof}const { main } = ${load};\nprocess.exitCode = await main(process.argv.slice(2));\n`;
}

export function runCompiled(main: string, args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((res, rej) =>
    execFile(
      process.execPath,
      ['--input-type=module', '-e', launcherSource(main), 'kiln', ...args],
      { env: { ...process.env, ...env } },
      (err, stdout, stderr) => (err ? rej(new Error(stderr)) : res(stdout)),
    ),
  );
}
