/**
 * `npm run bench`: kiln vs its peers on the same deterministic inputs, everything pushed to one local
 * docker-registry, tools alternating within each round (the order rotates per round):
 *
 *   buildctl — current BuildKit (buildkitd + buildctl at the version pinned in scripts/go-tools.sh, built once per
 *              machine; OCI worker on Debian's runc; `buildctl build --frontend dockerfile.v0 --output
 *              type=image,push=true`), test/helpers/buildkit.ts
 *   docker   — Debian docker.io's BuildKit v0.8 (`DOCKER_BUILDKIT=1 docker build --network host` + `docker push`)
 *   buildah  — `bud --isolation chroot --layers` + `buildah push`
 *   kaniko   — the executor of github.com/chainguard-dev/kaniko (the maintained fork; pinned in go-tools.sh), run
 *              the way kaniko runs: inside a container (`docker run` on Debian's dockerd) of an image holding only
 *              the static executor (built with kiln from scratch), `--cache=true` with a registry cache repository
 *              (empty for cold builds), the context bind-mounted; the container start is part of its time
 *
 *   W1 cold  — 5,000 small source files + 20 × 5 MiB assets; empty state on every side (fresh KILN_HOME, BuildKit
 *              cache and images pruned, buildah images removed), pushed to a fresh repository.
 *   W1 warm  — one source file changed after the cold build, rebuilt and pushed.
 *   W4       — the cached W1 build pushed to a new repository of the same registry (mount, not upload).
 *   W2       — `RUN touch /x` on a busybox base vs on a base of 20,000 files / 200 MB (bases already present):
 *              the RUN must not cost more on the big base. kiln's and BuildKit's own step durations are reported
 *              too (from their progress output).
 *   W3       — one RUN creating 50,000 small files (base present), pushed.
 *   W5       — a fresh pod: W1 built with a registry cache export (untimed), all local state emptied, one source
 *              file changed, rebuilt with the registry cache (kiln --cache-from; BuildKit inline cache
 *              `--cache-from IMAGE`; buildah --cache-from REPO).
 *
 * Environment: BENCH_ROUNDS (default 3), BENCH_ONLY=W1,W3 (workloads), BENCH_TOOLS=kiln,buildctl,docker,buildah,kaniko
 * (`buildkit` is accepted for `docker`),
 * BENCH_SMALL=1 (tiny inputs, to check the harness), BENCH_KEEP=1 (keep the temp dir).
 * Output: the table on stdout and in bench/results/latest.md (with the machine: nproc, memory, kernel; date);
 * partial runs (BENCH_SMALL, BENCH_ONLY, BENCH_TOOLS) write .tmp/bench-partial.md instead.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleCli, launcherSource } from './compiled.js';
import { startRegistry, type TestRegistry } from '../test/helpers/registry.js';
import { makeBusyboxImage } from '../test/helpers/images.js';
import { startDockerd, type Dockerd } from '../test/helpers/dockerd.js';
import { startBuildah, type Buildah } from '../test/helpers/buildah.js';
import { startBuildKit, type BuildKit } from '../test/helpers/buildkit.js';
import { goTools } from '../test/helpers/go-tools.js';
import { push } from '../src/registry/push.js';
import { closeTransports } from '../src/registry/transport.js';
import { makeBigBase, touchW1Source, w1Dockerfile, w2Dockerfile, w3Dockerfile, writeW1Context } from './inputs.js';
import { measure, median, type Measured } from './procs.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..');
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3) || 3);
const ALL = ['W1', 'W2', 'W3', 'W4', 'W5'];
const ONLY = new Set((process.env.BENCH_ONLY ?? ALL.join(',')).split(',').map((s) => s.trim().toUpperCase()));
const ALL_TOOLS: ToolName[] = ['kiln', 'buildctl', 'docker', 'buildah', 'kaniko'];
const TOOLS = (process.env.BENCH_TOOLS ?? ALL_TOOLS.join(','))
  .split(',')
  .map((s) => s.trim())
  .map((s) => (s === 'buildkit' ? 'docker' : s)) as ToolName[];
for (const t of TOOLS)
  if (!ALL_TOOLS.includes(t)) throw new Error(`BENCH_TOOLS: unknown tool ${t} (${ALL_TOOLS.join(', ')})`);
const SMALL = process.env.BENCH_SMALL === '1';

type ToolName = 'kiln' | 'buildctl' | 'docker' | 'buildah' | 'kaniko';

/** Column titles of the peers. */
const TITLE: Record<ToolName, string> = {
  kiln: 'kiln',
  buildctl: 'BuildKit (buildctl)',
  docker: 'docker 20.10 BuildKit',
  buildah: 'buildah',
  kaniko: 'kaniko',
};

interface RunResult {
  ms: number;
  peakRss?: number;
  /** Duration of the step whose name matches the workload's step pattern (ms), when the tool reports it. */
  stepMs?: number;
  /** kiln: every vertex of its progress (name without the `[n/m]` prefix → ms; CACHED vertices are 0). */
  steps?: Map<string, number>;
}

/** W5: export a registry cache (`to`) or build from one (`from`), each tool its own way. */
interface CacheUse {
  /** kiln: --cache-to type=registry,ref=REF,mode=max; BuildKit: inline cache in the pushed image; buildah: --cache-to REPO. */
  to?: string;
  /** kiln: --cache-from REF; BuildKit: --cache-from IMAGE; buildah: --cache-from REPO. */
  from?: string;
}

interface Tool {
  name: ToolName;
  /** Empty state (cold). */
  reset(): Promise<void>;
  /** Build `ctx` (Dockerfile at ctx/Dockerfile) as `tag` and push it. */
  buildPush(ctx: string, tag: string, step?: RegExp, cache?: CacheUse): Promise<RunResult>;
  stop(): Promise<void>;
}

function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function fail(what: string, m: Measured | { code: number; stdout: string; stderr: string }): never {
  throw new Error(`${what} failed (exit ${m.code}):\n${(m.stderr + m.stdout).split('\n').slice(-40).join('\n')}`);
}

// ---------------------------------------------------------------------------------------------------------------
// kiln

/** A progress vertex name without its `[n/m]` prefix, nonces and registry host (stable across rounds). */
function stepLabel(name: string): string {
  return name
    .replace(/^\[[^\]]*\] /, '')
    .replace(/\b(r\d+|warm)-(kiln|buildctl|docker|buildah|kaniko)\b/g, 'N')
    .replace(/\d+\.\d+\.\d+\.\d+:\d+\//g, '')
    .replace(/@sha256:[a-f0-9]{64}/, '')
    .slice(0, 60);
}

/** Compile kiln into a private dir (never touching dist/, which other checkouts' launchers use). */
function compileKiln(work: string): string {
  const out = join(REPO, '.tmp', 'bench-dist');
  log('compiling kiln (tsc -p tsconfig.build.json)');
  const r = spawnSync(
    process.execPath,
    [
      join(REPO, 'node_modules/typescript/bin/tsc'),
      '-p',
      'tsconfig.build.json',
      '--outDir',
      out,
      '--declaration',
      'false',
      '--sourceMap',
      'false',
    ],
    {
      cwd: REPO,
      encoding: 'utf8',
    },
  );
  if (!existsSync(join(out, 'cli', 'main.js'))) {
    throw new Error(`kiln did not compile:\n${r.stdout}${r.stderr}`);
  }
  if (r.status !== 0)
    log(`tsc reported errors (using the emitted JS anyway):\n${(r.stdout + r.stderr).slice(0, 2000)}`);
  return join(work, 'kiln.mjs');
}

async function kilnTool(reg: TestRegistry, work: string): Promise<Tool> {
  const launcher = compileKiln(work);
  const tscMain = join(REPO, '.tmp', 'bench-dist', 'cli', 'main.js');
  const main = process.env.BENCH_BUNDLE === '0' ? tscMain : bundleCli(join(REPO, '.tmp', 'bench-dist', 'bundle'));
  await writeFile(launcher, launcherSource(main));
  let home = '';
  let n = 0;
  return {
    name: 'kiln',
    async reset() {
      if (home) await rm(home, { recursive: true, force: true });
      home = join(work, `kiln-home-${++n}`);
    },
    async buildPush(ctx, tag, step, cache) {
      const env: NodeJS.ProcessEnv = { ...process.env, KILN_HOME: home };
      delete env.SOURCE_DATE_EPOCH;
      const extra: string[] = [];
      if (cache?.to) extra.push('--cache-to', `type=registry,ref=${cache.to},mode=max`);
      if (cache?.from) extra.push('--cache-from', cache.from);
      const m = await measure(
        process.execPath,
        [launcher, 'build', '--push', '-t', tag, '--progress', 'json', '--insecure-registry', reg.host, ...extra, ctx],
        { env },
      );
      if (m.code !== 0) fail(`kiln build ${tag}`, m);
      const r: RunResult = { ms: m.ms, peakRss: m.peakRss, steps: new Map() };
      const starts = new Map<string, { name: string; t: number }>();
      for (const line of m.stderr.split('\n')) {
        if (!line.startsWith('{')) continue;
        // the progress JSON has carried ids as numbers or "#N" strings, times as ISO strings or epoch ms
        let ev: { type?: string; id?: number | string; name?: string; time?: string | number };
        try {
          ev = JSON.parse(line) as typeof ev;
        } catch {
          continue;
        }
        if (ev.id === undefined || typeof ev.type !== 'string') continue;
        const id = String(ev.id);
        if (typeof ev.id === 'string' && !id.startsWith('#')) continue; // registry push events (blob digests)
        const t = typeof ev.time === 'number' ? ev.time : Date.parse(ev.time ?? '');
        if (ev.type === 'start') starts.set(id, { name: ev.name ?? '', t });
        const s = starts.get(id);
        if (!s || (ev.type !== 'done' && ev.type !== 'cached')) continue;
        const ms = ev.type === 'done' ? t - s.t : 0;
        if (step?.test(s.name) && ev.type === 'done') r.stepMs = ms;
        r.steps?.set(stepLabel(s.name), ms);
      }
      return r;
    },
    async stop() {
      if (home) await rm(home, { recursive: true, force: true });
    },
  };
}

/** The duration of the step matching `step` in a BuildKit plain progress log (`#N [..] RUN …` … `#N DONE 0.1s`). */
function plainStepMs(text: string, step: RegExp): number | undefined {
  const names = new Map<string, string>();
  let ms: number | undefined;
  for (const m of text.matchAll(/^#(\d+) (\[.*)$/gm)) names.set(m[1] as string, m[2] as string);
  for (const m of text.matchAll(/^#(\d+) DONE ([\d.]+)s$/gm)) {
    const name = names.get(m[1] as string);
    if (name && step.test(name)) ms = Number(m[2]) * 1000;
  }
  return ms;
}

// ---------------------------------------------------------------------------------------------------------------
// current BuildKit (buildkitd + buildctl)

async function buildctlTool(reg: TestRegistry): Promise<Tool> {
  const bk: BuildKit = await startBuildKit({ insecureRegistries: [reg.host] });
  log(`buildctl: BuildKit ${bk.version}`);
  return {
    name: 'buildctl',
    reset: () => bk.prune(),
    async buildPush(ctx, tag, step, cache) {
      const t0 = performance.now();
      const out = await bk.build({
        context: ctx,
        tag,
        ...(cache?.to ? { exportCache: `type=registry,ref=${cache.to},mode=max` } : {}),
        ...(cache?.from ? { importCache: `type=registry,ref=${cache.from}` } : {}),
      });
      const r: RunResult = { ms: performance.now() - t0 };
      if (step) r.stepMs = plainStepMs(out, step);
      return r;
    },
    stop: () => bk.stop(),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Debian docker.io's BuildKit v0.8

async function dockerTool(d: Dockerd): Promise<Tool> {
  return {
    name: 'docker',
    async reset() {
      await d.docker(['builder', 'prune', '-af'], { allowFail: true });
      const ids = (await d.docker(['images', '-aq'], { allowFail: true })).stdout.split('\n').filter(Boolean);
      if (ids.length) await d.docker(['rmi', '-f', ...new Set(ids)], { allowFail: true });
      await d.docker(['builder', 'prune', '-af'], { allowFail: true });
    },
    async buildPush(ctx, tag, step, cache) {
      const t0 = performance.now();
      const extra: string[] = [];
      if (cache?.to) extra.push('--build-arg', 'BUILDKIT_INLINE_CACHE=1');
      if (cache?.from) extra.push('--cache-from', cache.from);
      const b = await d.docker(['build', '--network', 'host', '--progress', 'plain', ...extra, '-t', tag, ctx], {
        allowFail: true,
      });
      if (b.code !== 0) fail(`docker build ${tag}`, b);
      const p = await d.docker(['push', tag], { allowFail: true });
      if (p.code !== 0) fail(`docker push ${tag}`, p);
      const r: RunResult = { ms: performance.now() - t0 };
      if (step) r.stepMs = plainStepMs(b.stderr + b.stdout, step);
      return r;
    },
    // the shared dockerd is stopped by main()
    stop: async () => undefined,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// kaniko (executor in a container on Debian's dockerd)

/**
 * Build kaniko's executor image with kiln (scratch + the static executor from scripts/go-tools.sh, kaniko's own
 * environment) and push it to the bench registry; dockerd pulls it once, untimed.
 */
async function kanikoTool(reg: TestRegistry, d: Dockerd, work: string): Promise<Tool> {
  const tools = goTools('kaniko');
  const executor = tools['kaniko-executor'] as string;
  const ctx = join(work, 'kaniko-image');
  await mkdir(ctx, { recursive: true });
  await copyFile(executor, join(ctx, 'executor'));
  await writeFile(
    join(ctx, 'Dockerfile'),
    [
      'FROM scratch',
      'COPY --chmod=0755 executor /kaniko/executor',
      'ENV HOME=/root USER=root PATH=/usr/local/bin:/kaniko DOCKER_CONFIG=/kaniko/.docker/ SSL_CERT_DIR=/kaniko/ssl/certs',
      'WORKDIR /workspace',
      'ENTRYPOINT ["/kaniko/executor"]',
      '',
    ].join('\n'),
  );
  const image = `${reg.host}/bench/kaniko:${tools['kaniko-version'] ?? 'pinned'}`;
  const b = await measure(
    process.execPath,
    [join(REPO, 'bin', 'kiln.js'), 'build', '--push', '-t', image, '--insecure-registry', reg.host, ctx],
    { env: { ...process.env, KILN_HOME: join(work, 'kiln-home-kaniko-image') }, rss: false },
  );
  if (b.code !== 0) fail('kiln build of the kaniko executor image', b);
  await d.docker(['pull', image]);
  log(`kaniko ${tools['kaniko-version']}: executor image ${image}`);
  let cacheRepo = '';
  let n = 0;
  return {
    name: 'kaniko',
    async reset() {
      // an empty registry cache: kaniko keeps no other state between pods
      cacheRepo = `${reg.host}/kaniko-cache/c${++n}-${Date.now()}`;
    },
    async buildPush(ctxDir, tag, _step, cache) {
      const repo = cache?.to ?? cache?.from ?? cacheRepo;
      const t0 = performance.now();
      const r = await d.docker(
        [
          'run',
          '--rm',
          '--network',
          'host',
          '-v',
          `${ctxDir}:/workspace:ro`,
          image,
          '--context',
          'dir:///workspace',
          '--dockerfile',
          '/workspace/Dockerfile',
          '--destination',
          tag,
          '--insecure',
          '--insecure-pull',
          '--skip-tls-verify',
          '--cache=true',
          '--cache-repo',
          repo,
        ],
        { allowFail: true },
      );
      if (r.code !== 0) fail(`kaniko ${tag}`, r);
      // kaniko reports no per-step durations (only debug logs carry timestamps): wall time only
      const res: RunResult = { ms: performance.now() - t0 };
      return res;
    },
    stop: async () => undefined,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// buildah

async function buildahTool(): Promise<Tool> {
  let b: Buildah = await startBuildah({ storageDriver: 'overlay' });
  const probe = await b.buildah(['info'], { allowFail: true });
  if (probe.code !== 0) {
    log('buildah overlay storage unavailable; using vfs');
    await b.stop();
    b = await startBuildah({ storageDriver: 'vfs' });
  }
  return {
    name: 'buildah',
    reset: () => b.prune(),
    async buildPush(ctx, tag, _step, cache) {
      const t0 = performance.now();
      const extra: string[] = [];
      if (cache?.to) extra.push('--cache-to', cache.to);
      if (cache?.from) extra.push('--cache-from', cache.from);
      const r1 = await b.buildah(
        [
          'bud',
          '--isolation',
          'chroot',
          '--format',
          'docker',
          '--layers',
          '--tls-verify=false',
          ...extra,
          '-t',
          tag,
          ctx,
        ],
        { allowFail: true },
      );
      if (r1.code !== 0) fail(`buildah bud ${tag}`, r1);
      const r2 = await b.buildah(['push', '--tls-verify=false', tag, `docker://${tag}`], { allowFail: true });
      if (r2.code !== 0) fail(`buildah push ${tag}`, r2);
      return { ms: performance.now() - t0 };
    },
    stop: () => b.stop(),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Results

interface Row {
  workload: string;
  results: Map<ToolName, RunResult[]>;
  note?: string;
}

function add(rows: Row[], workload: string, tool: ToolName, r: RunResult): void {
  let row = rows.find((x) => x.workload === workload);
  if (!row) rows.push((row = { workload, results: new Map() }));
  const l = row.results.get(tool) ?? [];
  l.push(r);
  row.results.set(tool, l);
}

const secs = (ms: number): string => (Number.isFinite(ms) ? (ms / 1000).toFixed(2) : '—');

function cell(rs: RunResult[] | undefined, pick: (r: RunResult) => number | undefined = (r) => r.ms): string {
  const xs = (rs ?? []).map(pick).filter((x): x is number => x !== undefined);
  if (xs.length === 0) return '—';
  return `${secs(median(xs))} (${secs(Math.min(...xs))}–${secs(Math.max(...xs))})`;
}

function med(rs: RunResult[] | undefined, pick: (r: RunResult) => number | undefined = (r) => r.ms): number {
  return median((rs ?? []).map(pick).filter((x): x is number => x !== undefined));
}

function ratio(a: number, b: number): string {
  return Number.isFinite(a) && Number.isFinite(b) && b > 0 ? (a / b).toFixed(2) : '—';
}

/** The fastest peer (not kiln) of a row by median: [name, median ms]. */
function fastestPeer(r: Row): [ToolName, number] | undefined {
  let best: [ToolName, number] | undefined;
  for (const t of TOOLS) {
    if (t === 'kiln') continue;
    const m = med(r.results.get(t));
    if (Number.isFinite(m) && (!best || m < best[1])) best = [t, m];
  }
  return best;
}

function table(rows: Row[]): string {
  const out: string[] = [];
  const peers = TOOLS.filter((t) => t !== 'kiln');
  out.push(
    `| workload | kiln s, median (min–max) | ${peers.map((t) => `${TITLE[t]} s`).join(' | ')} | fastest peer | kiln/fastest | kiln peak RSS |`,
  );
  out.push(`|---|---|${peers.map(() => '---|').join('')}---|---|---|`);
  for (const r of rows) {
    const k = med(r.results.get('kiln'));
    const best = fastestPeer(r);
    const rss = (r.results.get('kiln') ?? []).map((x) => x.peakRss ?? 0);
    out.push(
      `| ${r.workload} | ${cell(r.results.get('kiln'))} | ${peers.map((t) => cell(r.results.get(t))).join(' | ')} | ` +
        `${best ? TITLE[best[0]] : '—'} | ${best ? ratio(k, best[1]) : '—'} | ${rss.length ? (Math.max(...rss) / 1048576).toFixed(0) + ' MB' : '—'} |`,
    );
  }
  return out.join('\n');
}

/** Every tool's median relative to the fastest tool of the row (1.00 = fastest). */
function ratioTable(rows: Row[]): string {
  const out = [`| workload | ${TOOLS.map((t) => TITLE[t]).join(' | ')} |`, `|---|${TOOLS.map(() => '---|').join('')}`];
  for (const r of rows) {
    const meds = TOOLS.map((t) => med(r.results.get(t)));
    const best = Math.min(...meds.filter((x) => Number.isFinite(x)));
    out.push(`| ${r.workload} | ${meds.map((m) => ratio(m, best)).join(' | ')} |`);
  }
  return out.join('\n');
}

function stepTable(rows: Row[]): string {
  const small = rows.find((r) => r.workload === 'W2 RUN, busybox base');
  const big = rows.find((r) => r.workload === 'W2 RUN, 200 MB base');
  if (!small || !big) return '';
  const out = ['| W2 `RUN touch /x` | busybox base | 200 MB / 20,000-file base | big/empty |', '|---|---|---|---|'];
  for (const t of TOOLS) {
    const s = small.results.get(t);
    const b = big.results.get(t);
    if (!s || !b) continue;
    out.push(`| ${t} build+push wall | ${cell(s)} | ${cell(b)} | ${ratio(med(b), med(s))} |`);
    if (s.some((x) => x.stepMs !== undefined)) {
      const p = (x: RunResult): number | undefined => x.stepMs;
      out.push(`| ${t} RUN step (own progress) | ${cell(s, p)} | ${cell(b, p)} | ${ratio(med(b, p), med(s, p))} |`);
    }
  }
  return out.join('\n');
}

/** kiln's own vertex times per workload (medians over rounds), to point at hot spots. */
function breakdown(rows: Row[]): string {
  const out = ['| workload | kiln vertices, median s (0 = CACHED) |', '|---|---|'];
  for (const r of rows) {
    const rs = r.results.get('kiln') ?? [];
    const names = new Map<string, number[]>();
    for (const x of rs) for (const [k, v] of x.steps ?? []) names.set(k, [...(names.get(k) ?? []), v]);
    if (names.size === 0) continue;
    const cells = [...names].map(([k, v]) => `${k.replace(/\|/g, '\\|')}: ${(median(v) / 1000).toFixed(2)}`);
    out.push(`| ${r.workload} | ${cells.join(' · ')} |`);
  }
  return out.join('\n');
}

function peerVersions(): string {
  const ver = (cmd: string, args: string[]): string =>
    (spawnSync(cmd, args, { encoding: 'utf8' }).stdout ?? '').split('\n')[0]?.trim() ?? '?';
  const parts: string[] = [];
  for (const t of TOOLS) {
    if (t === 'buildctl')
      parts.push(`BuildKit ${goTools('buildkit')['buildkit-version']} (buildkitd + buildctl, OCI worker, runc)`);
    if (t === 'docker') parts.push(`${ver('/usr/bin/docker', ['--version'])} (BuildKit v0.8)`);
    if (t === 'buildah') parts.push(ver('/usr/bin/buildah', ['--version']));
    if (t === 'kaniko')
      parts.push(`kaniko ${goTools('kaniko')['kaniko-version']} (chainguard-dev fork, in docker run)`);
  }
  return parts.join(', ');
}

function machine(): string {
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const memTotal = /MemTotal:\s+(\d+)/.exec(meminfo)?.[1];
  const ver = (cmd: string, args: string[]): string =>
    (spawnSync(cmd, args, { encoding: 'utf8' }).stdout ?? '').split('\n')[0]?.trim() ?? '?';
  return [
    `- date: ${new Date().toISOString()}`,
    `- machine: ${cpus().length} CPUs (nproc ${ver('nproc', [])}; ${cpus()[0]?.model ?? '?'}), ` +
      `${((memTotal ? Number(memTotal) * 1024 : totalmem()) / 2 ** 30).toFixed(1)} GiB memory, kernel ${release()}, node ${process.version}`,
    `- peers: ${peerVersions()}; registry: Debian docker-registry (filesystem storage, loopback)`,
    `- rounds: ${ROUNDS}${SMALL ? ' (BENCH_SMALL: reduced inputs)' : ''}; workloads: ${[...ONLY].join(',')}; times are build + push wall clock, seconds`,
    `- load: ${readFileSync('/proc/loadavg', 'utf8').trim()} (the machine is shared; compare ratios within one run)`,
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-'));
  const rows: Row[] = [];
  const tools: Tool[] = [];
  let reg: TestRegistry | undefined;
  let dockerd: Dockerd | undefined;
  try {
    reg = await startRegistry();
    const host = reg.host;
    const ropts = { insecureRegistries: [host] };
    log(`registry ${host}; generating inputs in ${work}`);
    const small = await makeBusyboxImage({ kind: 'docker' });
    await push(small, `${host}/bench/busybox:1`, ropts);
    const smallRef = `${host}/bench/busybox:1`;
    const bigRef = `${host}/bench/bigbase:1`;
    if (ONLY.has('W2')) {
      const big = SMALL ? await makeBigBase(small, 2000, 20 * 1024 * 1024) : await makeBigBase(small);
      await push(big, bigRef, ropts);
    }
    await closeTransports(ropts);
    const w1 = join(work, 'w1');
    await mkdir(w1);
    const w1Opts = SMALL ? { files: 500, dirs: 10, assets: 4, assetSize: 1 << 20 } : {};
    await writeW1Context(w1, w1Opts);
    await writeFile(join(w1, 'Dockerfile'), w1Dockerfile(smallRef));

    // dockerd serves two peers: its own BuildKit (docker) and kaniko's containers
    if (TOOLS.includes('docker') || TOOLS.includes('kaniko'))
      dockerd = await startDockerd({ insecureRegistries: [reg.host] });
    for (const t of TOOLS) {
      log(`starting ${t}`);
      if (t === 'kiln') tools.push(await kilnTool(reg, work));
      else if (t === 'buildctl') tools.push(await buildctlTool(reg));
      else if (t === 'docker') tools.push(await dockerTool(dockerd as Dockerd));
      else if (t === 'buildah') tools.push(await buildahTool());
      else if (t === 'kaniko') tools.push(await kanikoTool(reg, dockerd as Dockerd, work));
    }
    const ctxFor = async (name: string, dockerfile: string): Promise<string> => {
      const dir = join(work, name);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'Dockerfile'), dockerfile);
      return dir;
    };

    for (let round = 1; round <= ROUNDS; round++) {
      // rotate the order so that no tool always runs first (page cache, CPU boost)
      const order = tools.map((_, i) => tools[(i + round - 1) % tools.length] as Tool);
      if (ONLY.has('W1') || ONLY.has('W4')) {
        for (const t of order) {
          await t.reset();
          log(`round ${round}: W1 cold — ${t.name}`);
          add(rows, 'W1 cold', t.name, await t.buildPush(w1, `${host}/w1-${t.name}-r${round}:1`));
        }
        const changed = await touchW1Source(w1, round, w1Opts);
        for (const t of order) {
          log(`round ${round}: W1 warm (${changed} changed) — ${t.name}`);
          add(rows, 'W1 warm', t.name, await t.buildPush(w1, `${host}/w1-${t.name}-r${round}:2`));
        }
        if (ONLY.has('W4')) {
          for (const t of order) {
            log(`round ${round}: W4 push of the cached build to a new repository — ${t.name}`);
            add(rows, 'W4 cached build → new repo', t.name, await t.buildPush(w1, `${host}/w4-${t.name}-r${round}:1`));
          }
        }
      }
      if (ONLY.has('W5')) {
        // a fresh pod: empty state, the cache in the registry, one source file changed since it was written
        for (const t of order) {
          const image = `${host}/w5-${t.name}-r${round}`;
          const cacheRef =
            t.name === 'docker'
              ? `${image}:1`
              : t.name === 'buildah' || t.name === 'kaniko'
                ? `${image}-cache`
                : `${image}-cache:1`;
          await t.reset();
          log(`round ${round}: W5 cache export (untimed) — ${t.name}`);
          await t.buildPush(w1, `${image}:1`, undefined, { to: cacheRef });
          await t.reset();
          await touchW1Source(w1, 100 + round * 10 + order.indexOf(t), w1Opts);
          log(`round ${round}: W5 fresh state + registry cache — ${t.name}`);
          add(
            rows,
            'W5 fresh state, --cache-from registry, 1 file changed',
            t.name,
            await t.buildPush(w1, `${image}:2`, undefined, { from: cacheRef }),
          );
        }
      }
      if (ONLY.has('W2')) {
        const step = /RUN touch \/x/;
        for (const t of order) {
          {
            // every round: the W1 cold reset emptied each tool's state, and W2 measures the RUN, not the pull
            log(`W2 warm-up (bases pulled, untimed) — ${t.name}`);
            await t.buildPush(
              await ctxFor(`w2-${t.name}-warm-s`, w2Dockerfile(smallRef, `warm-${round}-${t.name}`)),
              `${host}/w2s-${t.name}:warm`,
            );
            await t.buildPush(
              await ctxFor(`w2-${t.name}-warm-b`, w2Dockerfile(bigRef, `warm-${round}-${t.name}`)),
              `${host}/w2b-${t.name}:warm`,
            );
          }
          log(`round ${round}: W2 — ${t.name}`);
          const n = `r${round}-${t.name}`;
          add(
            rows,
            'W2 RUN, busybox base',
            t.name,
            await t.buildPush(
              await ctxFor(`w2s-${n}`, w2Dockerfile(smallRef, n)),
              `${host}/w2s-${t.name}:${round}`,
              step,
            ),
          );
          add(
            rows,
            'W2 RUN, 200 MB base',
            t.name,
            await t.buildPush(
              await ctxFor(`w2b-${n}`, w2Dockerfile(bigRef, n)),
              `${host}/w2b-${t.name}:${round}`,
              step,
            ),
          );
        }
      }
      if (ONLY.has('W3')) {
        for (const t of order) {
          log(`round ${round}: W3 — ${t.name}`);
          const n = `r${round}-${t.name}`;
          const ctx = await ctxFor(`w3-${n}`, w3Dockerfile(smallRef, n, SMALL ? 5000 : 50_000));
          add(
            rows,
            'W3 RUN 50,000 files',
            t.name,
            await t.buildPush(ctx, `${host}/w3-${t.name}:${round}`, /RUN mkdir/),
          );
          await rm(ctx, { recursive: true, force: true });
        }
      }
    }
  } finally {
    for (const t of tools) await t.stop().catch((e: unknown) => log(`stopping ${t.name}: ${String(e)}`));
    await dockerd?.stop().catch((e: unknown) => log(`stopping dockerd: ${String(e)}`));
    await reg?.stop();
    if (process.env.BENCH_KEEP !== '1') await rm(work, { recursive: true, force: true });
    else log(`kept ${work}`);
  }
  const md =
    `# kiln benchmark — latest run\n\n${machine()}\n\n${table(rows)}\n\nEvery tool relative to the fastest of its row (1.00 = fastest):\n\n${ratioTable(rows)}\n\n${stepTable(rows)}\n\n${breakdown(rows)}\n\n` +
    'Targets (issues #5, #17): W1 cold ≤ 0.5× and W1 warm ≤ 0.3× the fastest peer; W2 RUN step ≤ 1.2× its empty-base time; ' +
    'kiln peak RSS (whole process tree) ≤ 300 MB.\n';
  process.stdout.write(md);
  // reduced-input and partial runs do not replace the published results
  const partial = SMALL || ONLY.size < ALL.length || TOOLS.length < ALL_TOOLS.length;
  const outFile = partial ? join(REPO, '.tmp', 'bench-partial.md') : join(REPO, 'bench', 'results', 'latest.md');
  await mkdir(dirname(outFile), { recursive: true });
  await writeFile(outFile, md);
  // keep the committed table in the repo's markdown style (`npm run format:check`)
  spawnSync(process.execPath, [join(REPO, 'node_modules/prettier/bin/prettier.cjs'), '--write', outFile], {
    cwd: REPO,
  });
  log(`wrote ${outFile}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
