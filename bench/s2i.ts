/**
 * `npm run bench:s2i` — an S2I build of a small app (200 source files, ~1 MB) on a warm cache: `kiln s2i build …
 * --push` (compiled CLI, a process) against current BuildKit (`buildctl build --push`, buildkitd warm) building
 * what `s2i build --as-dockerfile` generates (the real s2i, scripts/s2i-tool.sh; generating is not timed), side by
 * side, one source file changed per round. Then an incremental kiln build with a cached artifacts tar: the
 * previous image's manifests and layers read from the registry are counted (target: none). Target: kiln ≤ 0.5×.
 *
 * A second kiln column: the build service's warm path (`kiln serve`, compiled, its own KILN_HOME), the same app in a
 * git repository (smart HTTP, `git http-backend`) and an S2I project: per round the change is committed and pushed
 * (not timed), then request → pushed digest (POST the build; its final record read from the service's build feed,
 * `GET /ui/events`, opened before the first round — an event, not a poll: no polling interval in the figure and
 * no poll traffic competing with the build for the service's CPU, as bench/node.ts measures it) — a warm
 * worker process, like BuildKit's client talking to a warm daemon, but including the service's git fetch and
 * checkout, which BuildKit's figure does not have.
 *
 * Environment: BENCH_ROUNDS (default 5), BENCH_FILES (default 200); BENCH_TRACE=1 adds one more kiln round with
 * `--progress plain` and prints its log with the time of each line (where the warm time goes); BENCH_SERVE_AB=1 adds
 * a second service without the worker's preparation (KILN_SERVE_PREPARE=0), alternating with the first;
 * BENCH_SERVE_BASE=DIR makes that second service another checkout's kiln instead (DIR, e.g. a worktree of main,
 * compiled into its own .tmp/): an A/B of a change on the service path in one run, same load;
 * BENCH_SERVE_B_ENV="K=V …" gives that second service (this checkout's unless BENCH_SERVE_BASE) that environment
 * instead of KILN_SERVE_PREPARE=0 (an A/B of a switch). The services run with
 * KILN_DEBUG=1 (epoch clock; a few stderr lines per build): the results show the median serve round's timeline (ms
 * since the request: the service's and its worker's marks), and BENCH_DEBUG=1 prints every round's. BENCH_ONLY=serve
 * skips the CLI rounds (the services and BuildKit only). BENCH_PROF=DIR: every compiled-CLI process (the services,
 * their workers) writes a CPU profile of its main thread to DIR/<pid>.cpuprofile when it exits. Needs root
 * (buildkitd). Output: a table and where the time goes, also in bench/results/s2i.md (its `## Notes` section,
 * written by hand, is kept).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { existsSync } from 'node:fs';
import { on } from 'node:events';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry, runKiln } from '../test/helpers/registry.js';
import { startBuildKit } from '../test/helpers/buildkit.js';
import { startGitServer } from '../test/helpers/git-server.js';
import { request } from 'undici';
import { compiledCli, launcherSource, runCompiled } from './compiled.js';
import { openBuildFeed } from './feed.js';
import type { Build } from '../src/service/model.js';

const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const DEBUG = process.env.BENCH_DEBUG === '1';
const serveOnly = process.env.BENCH_ONLY === 'serve';
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
  const t0 = performance.now();
  let out = '';
  return new Promise((res, rej) => {
    const p = execFile(
      process.execPath,
      ['--input-type=module', '-e', launcherSource(main), 'kiln', ...args, '--progress', 'plain'],
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

/** `kiln serve` (the compiled CLI) on a loopback port with `config`, an admin token made first; `stop()` ends it. */
async function startKilnServe(
  main: string,
  dir: string,
  home: string,
  config: string,
  env: NodeJS.ProcessEnv = {},
): Promise<{
  api: <T>(method: 'GET' | 'POST', path: string, body?: unknown) => Promise<T>;
  /** The build's final record (from the build feed). */
  finalOf: (id: string) => Promise<Build>;
  stop: () => Promise<void>;
  /** The service's debug lines since the last call (its workers' too: one stderr). */
  debugLines: () => string[];
}> {
  env = { ...env, KILN_DEBUG: '1', KILN_DEBUG_CLOCK: 'epoch' };
  const dataDir = join(dir, 'svc-data');
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await writeFile(join(dir, 'svc.yaml'), config);
  const created = await runCompiled(
    main,
    ['serve', 'token', 'create', '--role', 'admin', '--name', 'bench', '--data-dir', dataDir],
    { KILN_HOME: home },
  );
  const token = created.trim().split('\n').pop() as string;
  const args = ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--config', join(dir, 'svc.yaml')];
  // as bin/kiln.js runs the bundle (with its code cache); its build workers start from a bin/kiln.js beside it
  const bin = join(dirname(dirname(main)), 'bin', 'kiln.js');
  await mkdir(dirname(bin), { recursive: true });
  await writeFile(bin, launcherSource(main));
  const proc = spawn(process.execPath, [bin, ...args], {
    env: { ...process.env, ...env, KILN_HOME: home },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise<void>((r) => proc.on('close', () => r()));
  // its address from its first lines (bounded: a service that does not start or exits fails the bench)
  let err = '';
  const stop = new AbortController();
  const deadline = setTimeout(() => stop.abort(), 60_000);
  void exited.then(() => stop.abort());
  let url: string | undefined;
  try {
    // events.on: leaving the loop removes the listener without destroying the pipe
    const lines = on(proc.stderr as NodeJS.ReadableStream, 'data', { signal: stop.signal });
    for await (const [chunk] of lines as AsyncIterable<[Buffer]>) {
      err = (err + chunk.toString()).slice(-65536);
      url = /listening on (http:\/\/\S+)/.exec(err)?.[1];
      if (url) break;
    }
  } catch {
    /* aborted: reported below */
  }
  clearTimeout(deadline);
  if (!url) {
    proc.kill('SIGKILL');
    throw new Error(`kiln serve did not start:\n${err}`);
  }
  // keep draining it, its debug lines kept for the round's timeline
  let debug: string[] = [];
  let partial = '';
  proc.stderr?.on('data', (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop() ?? '';
    debug.push(...lines.filter((l) => l.startsWith('kiln: debug:')));
  });
  const feed = await openBuildFeed(url, token);
  return {
    finalOf: (id) => feed.finalOf(id),
    api: async <T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> => {
      const r = await request(url + path, {
        method,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: body === undefined ? null : JSON.stringify(body),
      });
      const text = await r.body.text();
      if (r.statusCode >= 300) throw new Error(`${method} ${path}: ${r.statusCode} ${text.slice(0, 500)}`);
      return JSON.parse(text) as T;
    },
    debugLines: () => {
      const d = debug;
      debug = [];
      return d;
    },
    stop: async () => {
      feed.close();
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(t);
    },
  };
}

type KilnServe = Awaited<ReturnType<typeof startKilnServe>>;

interface ServiceBuild {
  id: string;
  phase: string;
  digest?: string;
  reason?: string;
}

/** A serve round: its time (ms) and its timeline (ms since the request, + since the previous mark, what). */
interface ServeRound {
  t: number;
  marks: [number, number, string][];
}

/**
 * One API-triggered build of the service's S2I project: request → its final record on the build feed (succeeded
 * with a digest), ms, and the service's marks meanwhile. With BENCH_DEBUG the timeline is printed under `label`.
 */
async function serviceRound(svc: KilnServe, label = 'serve'): Promise<ServeRound> {
  svc.debugLines();
  const w0 = Date.now();
  const t0 = performance.now();
  const { builds } = await svc.api<{ builds: ServiceBuild[] }>('POST', '/api/v1/projects/app/builds', { ref: 'main' });
  const id = (builds[0] as ServiceBuild).id;
  const b = await svc.finalOf(id);
  if (b.phase !== 'succeeded' || !b.digest) throw new Error(`service build ${id}: ${b.phase} ${b.reason ?? ''}`);
  const t = performance.now() - t0;
  // the event is on its way when the service logs its last marks: let the stderr pipe catch up
  await new Promise((r) => setTimeout(r, 20));
  const marks: ServeRound['marks'] = [];
  let prev = 0;
  for (const l of svc.debugLines()) {
    const m = /^kiln: debug: (?:at (\d+) ms: (.*)|(.*) \(at (\d+) ms\))$/.exec(l);
    if (!m) continue;
    const at = Number(m[1] ?? m[4]) - w0;
    const what = (m[2] ?? m[3] ?? '').replace(/(sha256:[0-9a-f]{12})[0-9a-f]{52}/g, '$1…').replace(/\?_state=\S*/, '');
    marks.push([at, at - prev, what.slice(0, 140)]);
    prev = at;
  }
  if (DEBUG) {
    console.log(`\n${label}: ${t.toFixed(0)} ms (ms since the request; + since the previous mark)`);
    for (const [at, d, what] of marks) console.log(`  ${String(at).padStart(5)} ${('+' + d).padStart(5)}  ${what}`);
  }
  return { t, marks };
}

const secs = (xs: number[]): string => xs.map((x) => (x / 1000).toFixed(2)).join(' ');

/** A compiled-CLI run with KILN_DEBUG=1: its timeline marks as [at ms, + ms, what], then the process's end. */
function kilnTimeline(main: string, args: string[], home: string): Promise<[string, string, string][]> {
  const t0 = performance.now();
  return new Promise((res, rej) =>
    execFile(
      process.execPath,
      ['--input-type=module', '-e', launcherSource(main), 'kiln', ...args],
      { env: { ...process.env, KILN_HOME: home, KILN_DEBUG: '1' } },
      (err, _stdout, stderr) => {
        if (err) return rej(new Error(stderr));
        const marks: [number, string][] = [];
        for (const l of stderr.split('\n')) {
          const m = /^kiln: debug: at (\d+) ms: (.*)$/.exec(l);
          if (m) marks.push([Number(m[1]), (m[2] as string).replace(/(sha256:[0-9a-f]{12})[0-9a-f]{52}/g, '$1…')]);
        }
        marks.push([
          Math.round(performance.now() - t0),
          'exit seen by the bench (its clock starts before the process: + spawn and exit)',
        ]);
        let prev = 0;
        res(
          marks.map(([at, what]) => {
            const d = at - prev;
            prev = at;
            return [String(at), String(d), what];
          }),
        );
      },
    ),
  );
}

/** Each vertex of a `buildctl --progress plain` log with its DONE/CACHED time. */
function buildkitVertices(log: string): [string, string][] {
  const names = new Map<string, string>();
  const out: [string, string][] = [];
  for (const l of log.split('\n')) {
    const named = /^#(\d+) (\[.*|exporting.*|resolving.*|pushing.*|naming.*|writing.*)$/.exec(l);
    if (named && !names.has(named[1] as string)) names.set(named[1] as string, named[2] as string);
    const done = /^#(\d+) (DONE [\d.]+s|CACHED)$/.exec(l);
    if (done) out.push([names.get(done[1] as string) ?? `#${done[1]}`, (done[2] as string).replace(/^DONE /, '')]);
  }
  return out;
}

/** What `kiln serve` wants beside a compiled CLI: the web UI's bundle (what `npm run build` does after tsc). */
async function serveReady(cli: string, repo: string): Promise<void> {
  const ui = (await import(pathToFileURL(join(dirname(dirname(cli)), 'service', 'ui', 'bundle.js')).href)) as {
    bundleUi(clientDir: string): Promise<unknown[]>;
    writeBundle(dir: string, files: unknown[]): Promise<void>;
  };
  await ui.writeBundle(
    join(dirname(dirname(cli)), 'service', 'ui', 'assets'),
    await ui.bundleUi(join(repo, 'src', 'service', 'ui', 'client')),
  );
  // `kiln --version` reads package.json two levels above cli/main.js: give the compiled copy one
  const pkgCopy = join(dirname(dirname(dirname(cli))), 'package.json');
  if (!existsSync(pkgCopy)) await copyFile(join(repo, 'package.json'), pkgCopy);
}

async function main(): Promise<void> {
  const s2i = s2iBinary();
  const cli = compiledCli('bench-s2i-dist');
  await serveReady(cli, REPO);
  // BENCH_SERVE_BASE: the other checkout compiled by its own bench/compiled.ts (its .tmp/)
  const baseDir = process.env.BENCH_SERVE_BASE;
  let baseCli: string | undefined;
  if (baseDir) {
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        `import { compiledCli } from ${JSON.stringify(pathToFileURL(join(baseDir, 'bench', 'compiled.ts')).href)};` +
          `console.log(compiledCli('bench-s2i-dist'));`,
      ],
      { cwd: baseDir, encoding: 'utf8' },
    );
    baseCli = r.stdout.trim().split('\n').pop();
    if (r.status !== 0 || !baseCli) throw new Error(`compiling ${baseDir}: ${r.stderr}`);
    await serveReady(baseCli, baseDir);
  }
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-s2i-'));
  const home = join(work, 'home');
  const registry = await startRegistry();
  const R = registry.host;
  const buildkit = await startBuildKit({ insecureRegistries: [R] });
  const stops: (() => Promise<void>)[] = [];
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
    // the service's copy of the app: a git repository, an S2I project, a warm worker (its own KILN_HOME)
    const git = await startGitServer();
    stops.push(() => git.stop());
    const appFiles: Record<string, string> = {};
    for (let i = 0; i < files; i++) appFiles[`lib/f${i}.txt`] = await readFile(join(src, 'lib', `f${i}.txt`), 'utf8');
    await git.createRepo('app', appFiles);
    const svc = await startKilnServe(
      cli,
      work,
      join(work, 'svc-home'),
      `insecureRegistries: ["${R}"]\nprojects:\n  - name: app\n    repository: ${git.repoUrl('app')}\n` +
        `    registry: ${R}/svc\n    insecureRegistry: true\n    images:\n      - name: app\n        strategy: s2i\n` +
        `        s2i: {builderImage: "${builderRef}"}\n        tags: ["1"]\n`,
    );
    stops.unshift(() => svc.stop());
    // BENCH_SERVE_AB=1: the same service without the worker's preparation; BENCH_SERVE_BASE: another checkout's
    // (same project, its own home and data)
    let svcNoPrep: KilnServe | undefined;
    const bEnvText = process.env.BENCH_SERVE_B_ENV;
    const bEnv: NodeJS.ProcessEnv = bEnvText
      ? Object.fromEntries(
          bEnvText.split(/\s+/).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
        )
      : baseCli
        ? {}
        : { KILN_SERVE_PREPARE: '0' };
    const bLabel =
      (baseCli ? `kiln serve of ${baseDir}` : 'kiln serve') +
      (bEnvText ? ` with ${bEnvText}` : baseCli ? '' : " without the worker's preparation (KILN_SERVE_PREPARE=0)");
    if (process.env.BENCH_SERVE_AB === '1' || baseCli || bEnvText) {
      const d = join(work, 'noprep');
      await mkdir(d);
      const cfg = await readFile(join(work, 'svc.yaml'), 'utf8');
      const s = await startKilnServe(baseCli ?? cli, d, join(d, 'svc-home'), cfg, bEnv);
      svcNoPrep = s;
      stops.unshift(() => s.stop());
    }
    const kilnArgs = (): string[] => ['s2i', 'build', src, builderRef, `${R}/app-kiln:1`, '--push'];
    const kilnRun = (): Promise<string> => kiln(kilnArgs());
    const buildkitRun = async (round: number, onLog?: (log: string) => void): Promise<number> => {
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
      const log = await buildkit.build({ context: ctx, tag: `${R}/app-bk:1` });
      const t = performance.now() - t0;
      onLog?.(log);
      await rm(ctx, { recursive: true, force: true });
      return t;
    };
    // warm all three
    if (!serveOnly) await kilnRun();
    await buildkitRun(-1);
    await serviceRound(svc, 'serve warm-up');
    if (svcNoPrep) await serviceRound(svcNoPrep, 'B warm-up');
    const k: number[] = [];
    const svNoPrep: number[] = [];
    const bk: number[] = [];
    const sv: number[] = [];
    const svRounds: ServeRound[] = [];
    let bkLog = '';
    for (let i = 0; i < rounds; i++) {
      const change = `round ${i} ${Date.now()}\n`;
      await writeFile(join(src, 'lib', 'f0.txt'), change);
      if (!serveOnly) {
        const t0 = performance.now();
        await kilnRun();
        k.push(performance.now() - t0);
      }
      bk.push(await buildkitRun(i, (log) => (bkLog = log)));
      await git.commit('app', { 'lib/f0.txt': change }, `round ${i}`);
      // the two services take turns going first (what the first one's build leaves behind — page cache, the
      // registry's and git server's work — falls on the second)
      if (svcNoPrep && i % 2 === 1) svNoPrep.push((await serviceRound(svcNoPrep, `B round ${i}`)).t);
      const r = await serviceRound(svc, `serve round ${i}`);
      sv.push(r.t);
      svRounds.push(r);
      if (svcNoPrep && i % 2 === 0) svNoPrep.push((await serviceRound(svcNoPrep, `B round ${i}`)).t);
    }
    // where the time goes: one more kiln round with KILN_DEBUG=1 (its timeline marks), BuildKit's last log
    if (serveOnly) {
      console.log(
        `\nBuildKit ${secs(bk)} (median ${(median(bk) / 1000).toFixed(2)} s); kiln serve ${secs(sv)} (median ` +
          `${(median(sv) / 1000).toFixed(2)} s, ${(median(sv) / median(bk)).toFixed(2)}×)` +
          (svNoPrep.length
            ? `; ${bLabel} ${secs(svNoPrep)} (median ${(median(svNoPrep) / 1000).toFixed(2)} s, ` +
              `${(median(svNoPrep) / median(bk)).toFixed(2)}×)`
            : '') +
          `; load ${loadavg()
            .map((l) => l.toFixed(1))
            .join(' / ')}`,
      );
      return;
    }
    await writeFile(join(src, 'lib', 'f0.txt'), `timeline ${Date.now()}\n`);
    const timeline = await kilnTimeline(cli, [...kilnArgs(), '--insecure-registry', R, '--progress', 'quiet'], home);
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
        'kiln, BuildKit and kiln serve alternating round by round.',
      '',
      '| measure | value |',
      '| --- | --- |',
      row('kiln s2i build --push (process), median', `${(median(k) / 1000).toFixed(2)} s`),
      row(
        `BuildKit ${buildkit.version} building the --as-dockerfile output, median`,
        `${(median(bk) / 1000).toFixed(2)} s`,
      ),
      row('ratio kiln / BuildKit', `${(median(k) / median(bk)).toFixed(2)}×`),
      row(
        'kiln serve, warm worker: API request → pushed (incl. git fetch + checkout), median',
        `${(median(sv) / 1000).toFixed(2)} s`,
      ),
      row(
        '**ratio kiln serve / BuildKit** (the route to the target: no process start per build)',
        `**${(median(sv) / median(bk)).toFixed(2)}×** (target ≤ 0.5×)`,
      ),
      ...(svNoPrep.length
        ? [
            row(
              `${bLabel}, median`,
              `${(median(svNoPrep) / 1000).toFixed(2)} s (${(median(svNoPrep) / median(bk)).toFixed(2)}×)`,
            ),
          ]
        : []),
      row('incremental kiln build with the cached artifacts tar', `${(tInc / 1000).toFixed(2)} s`),
      row('previous image manifests/layers read from the registry', String(reads)),
      '',
      `Load while measuring (1/5/15 min): ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' / ')}. Rounds (s): kiln ${secs(k)}; BuildKit ${secs(bk)}; kiln serve ${secs(sv)}` +
        (svNoPrep.length ? `; ${bLabel} ${secs(svNoPrep)}.` : '.'),
      '',
      '## Where the time goes',
      '',
      'One more `kiln s2i build --push` with `KILN_DEBUG=1` (the timeline marks: ms since the process started; ' +
        'layer blobs are written in the background while the next step runs):',
      '',
      '| at ms | + ms | mark |',
      '| ---: | ---: | --- |',
      ...timeline.map(([at, d, what]) => `| ${at} | ${d} | ${what.replace(/\|/g, '\\|')} |`),
      '',
      `\`kiln serve\`, the median round (${(median(sv) / 1000).toFixed(2)} s; the service runs with ` +
        "`KILN_DEBUG=1`: ms since the request, the service's and its warm worker's marks and registry requests):",
      '',
      '| at ms | + ms | mark |',
      '| ---: | ---: | --- |',
      ...(svRounds.find((r) => r.t === median(sv)) as ServeRound).marks.map(
        ([at, d, what]) => `| ${at} | ${d} | ${what.replace(/\|/g, '\\|')} |`,
      ),
      '',
      'BuildKit, the last round (`buildctl --progress plain`, the daemon warm; vertex → seconds):',
      '',
      '| vertex | s |',
      '| --- | ---: |',
      ...buildkitVertices(bkLog).map(([v, t]) => `| ${v.replace(/\|/g, '\\|')} | ${t} |`),
    ].join('\n');
    console.log('\n' + out);
    // hand-written notes (a `## Notes` section of the file) are kept below the new figures
    const resultFile = join(REPO, 'bench', 'results', 's2i.md');
    const previous = await readFile(resultFile, 'utf8').catch(() => '');
    const notes = previous.indexOf('\n## Notes');
    await writeFile(resultFile, out + '\n' + (notes >= 0 ? previous.slice(notes) : ''));
  } finally {
    for (const stop of stops) await stop().catch(() => undefined);
    await buildkit.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
