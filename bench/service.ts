/**
 * `npm run bench:service` (the second half of `npm run bench`): the build service, `kiln serve`, measured end to end
 * with real parts — the service as a process (compiled like bench/run.ts's kiln, SQLite on disk, warm workers in
 * user namespaces), a git smart-HTTP server (`git http-backend`), Debian's docker-registry, the base image pushed
 * to that registry (busybox from /bin/busybox) so both sides pull it the same way.
 *
 *   S1 warm   — the W1 repository (bench/inputs.ts) in the git server, one project with one image. After one
 *               untimed build, per round: one source file changed, committed and pushed, then request → pushed
 *               digest (POST builds, GET the build every 20 ms until it succeeded) vs the same change in a
 *               separate clone built by hand (`kiln build --push`, its own warm KILN_HOME). Target ≤ 1.0×.
 *   S2 cold   — a fresh data dir and KILN_HOME (no git mirror, no layers): request → pushed digest vs `git clone` +
 *               `kiln build --push` with a fresh KILN_HOME. Target ≤ 1.3×.
 *   S3 queue  — 1,000 finished builds in the database (written with the Store while the service was stopped):
 *               request → the build leaves `queued`, for a tiny cached Dockerfile, the queue empty. Target ≤ 50 ms.
 *   S4 API    — 100 clients in flight on loopback hammering `GET /api/v1/builds` (default page, 50 builds), idle
 *               and with 2 builds running (`RUN sleep`, cancelled afterwards): p50/p99. Target p99 ≤ 50 ms.
 *   S5 logs   — a RUN printing ~5 MB/s for ~6 s, alone vs with 50 clients following its log (SSE, read to the
 *               end). Target ≤ 5 % slower.
 *   S6 RSS    — 10,000 finished builds (~20 stages each) in the database: the service process's VmRSS after start
 *               and a few listings (its workers apart). Target ≤ 150 MB.
 *
 * Environment: BENCH_ROUNDS (default 3), BENCH_ONLY=S1,S4 (parts), BENCH_SMALL=1 (tiny inputs, to check the
 * harness), BENCH_REV=HEAD (measure a committed revision, not the working tree), BENCH_KEEP=1 (keep the temp dir),
 * BENCH_SERVICE_NODE_ARGS='--cpu-prof --cpu-prof-dir=D' (node options of the service process, e.g. to profile
 * it), BENCH_SERVICE_STDERR=FILE (the services' and workers' stderr, e.g. with KILN_DEBUG=1). Output: the tables on stdout and in bench/results/service.md (with the machine); partial runs (BENCH_SMALL,
 * BENCH_ONLY) write .tmp/bench-service-partial.md instead.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync, statSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { randomBytes, randomUUID } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as prettier from 'prettier';
import { Agent, Pool, request } from 'undici';
import { startRegistry, type TestRegistry } from '../test/helpers/registry.js';
import { startGitServer, type GitServer } from '../test/helpers/git-server.js';
import { makeBusyboxImage } from '../test/helpers/images.js';
import { push } from '../src/registry/push.js';
import { closeTransports } from '../src/registry/transport.js';
import type { Store as StoreClass } from '../src/service/store/store.js';
import { FINAL_PHASES, type Build, type BuildStage } from '../src/service/model.js';
import { touchW1Source, w1Dockerfile, writeW1Context } from './inputs.js';
import { measure, median, treeRss } from './procs.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..');
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3) || 3);
const ALL = ['S1', 'S2', 'S3', 'S4', 'S5', 'S6'];
const ONLY = new Set((process.env.BENCH_ONLY ?? ALL.join(',')).split(',').map((s) => s.trim().toUpperCase()));
const SMALL = process.env.BENCH_SMALL === '1';
const LOAD_AT_START = readFileSync('/proc/loadavg', 'utf8').trim();
/** Node options of the service process only, e.g. `--cpu-prof --cpu-prof-dir=D` to profile it (not its workers). */
/** BENCH_SERVICE_STDERR=FILE: the services' (and their workers') stderr appended there (KILN_DEBUG=1 timelines). */
const STDERR_FILE = process.env.BENCH_SERVICE_STDERR;
const SERVICE_NODE_ARGS = (process.env.BENCH_SERVICE_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
/** Benchmark a committed revision (e.g. HEAD) instead of the working tree. */
const REV = process.env.BENCH_REV || undefined;

/** Sizes: the full run, or tiny ones that check the harness in a minute. */
const N = SMALL
  ? { w1: { files: 500, dirs: 10, assets: 4, assetSize: 1 << 20 }, s3History: 100, s3Builds: 5, s4Ms: 1000 }
  : { w1: {}, s3History: 1000, s3Builds: 20, s4Ms: 5000 };
const S4_CLIENTS = 100;
const S4_MAX_REQUESTS = 5000;
const S5_FOLLOWERS = 50;
/** S5's RUN: this many times 500,000 bytes of 100-byte lines, 0.1 s apart (~5 MB/s). */
const S5_BURSTS = SMALL ? 10 : 60;
const S6_HISTORY = SMALL ? 1000 : 10_000;
const STAGES_PER_BUILD = 20;
const HISTORY_PROJECTS = 10;

function log(msg: string): void {
  process.stderr.write(`[bench-service ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------------------
// kiln, compiled once for the whole run

/**
 * Compile kiln (never into dist/, which other checkouts' launchers use): the working tree into
 * `.tmp/bench-service/dist`, or with BENCH_REV a committed revision, extracted with `git archive` into
 * `.tmp/bench-service/tree` and compiled there (a shared checkout's half-done edits then cannot break the run).
 * A `bin/kiln.js` goes beside `dist/`: the service's runner looks for `bin/kiln.js` above its own module, so its
 * workers run the same compiled code as the service and as the builds made by hand. Returns that launcher.
 */
async function compileKiln(): Promise<string> {
  MEASURED = measuredCode();
  const root = join(REPO, '.tmp', 'bench-service');
  const tree = REV ? join(root, 'tree') : REPO;
  const out = REV ? join(tree, 'dist') : join(root, 'dist');
  await rm(REV ? tree : out, { recursive: true, force: true });
  if (REV) {
    await mkdir(tree, { recursive: true });
    const tar = join(root, 'tree.tar');
    const a = spawnSync('git', ['archive', '--format=tar', '-o', tar, REV], { cwd: REPO, encoding: 'utf8' });
    const x = a.status === 0 ? spawnSync('tar', ['-xf', tar, '-C', tree], { encoding: 'utf8' }) : a;
    if (x.status !== 0) throw new Error(`git archive ${REV}: ${a.stderr}${x.stderr}`);
    await rm(tar, { force: true });
  }
  log(`compiling kiln (${REV ?? 'working tree'}: ${MEASURED}) into ${out}`);
  const tsc = join(REPO, 'node_modules/typescript/bin/tsc');
  const args = ['-p', 'tsconfig.build.json', '--outDir', out, '--declaration', 'false', '--sourceMap', 'false'];
  const r = spawnSync(process.execPath, [tsc, ...args], { cwd: tree, encoding: 'utf8' });
  if (!existsSync(join(out, 'cli', 'main.js'))) throw new Error(`kiln did not compile:\n${r.stdout}${r.stderr}`);
  if (r.status !== 0)
    log(`tsc reported errors (using the emitted JS anyway):\n${(r.stdout + r.stderr).slice(0, 2000)}`);
  // the web UI's bundle, where the sources have one (what `npm run build` does after tsc)
  const bundler = join(out, 'service', 'ui', 'bundle.js');
  if (existsSync(bundler)) {
    const ui = (await import(pathToFileURL(bundler).href)) as {
      bundleUi(clientDir: string): Promise<unknown[]>;
      writeBundle(dir: string, files: unknown[]): Promise<void>;
    };
    await ui.writeBundle(join(out, 'service', 'ui', 'assets'), await ui.bundleUi(join(tree, 'src/service/ui/client')));
  }
  Store = (
    (await import(pathToFileURL(join(out, 'service', 'store', 'store.js')).href)) as { Store: typeof StoreClass }
  ).Store;
  // kiln reads its version from the package.json above dist/ (a git archive has one; a working-tree build needs it)
  if (!REV) await copyFile(join(REPO, 'package.json'), join(dirname(out), 'package.json'));
  const bin = join(dirname(out), 'bin', 'kiln.js');
  await mkdir(dirname(bin), { recursive: true });
  await writeFile(
    bin,
    "const { main } = await import('../dist/cli/main.js');\nprocess.exitCode = await main(process.argv.slice(2));\n",
  );
  return bin;
}

/** What was measured: the revision's commit, or HEAD plus whether the working tree had changes. */
function measuredCode(): string {
  const git = (args: string[]): string => spawnSync('git', args, { cwd: REPO, encoding: 'utf8' }).stdout.trim();
  if (REV) return `${REV} = ${git(['rev-parse', '--short', REV])}`;
  const dirty = git(['status', '--porcelain', '--', 'src']) !== '';
  return `working tree at ${git(['rev-parse', '--short', 'HEAD'])}${dirty ? ' with uncommitted changes in src/' : ''}`;
}

let KILN = '';
/** The code measured, named when it is compiled (HEAD may move while a long run goes on). */
let MEASURED = '';
/** The compiled service's own Store (its schema version is the one the service expects). */
let Store: typeof StoreClass;

function kilnEnv(home: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, KILN_HOME: home };
  delete env.KILN_FROM_SOURCE;
  delete env.SOURCE_DATE_EPOCH;
  return env;
}

// ---------------------------------------------------------------------------------------------------------------
// The service as a process

interface Service {
  url: string;
  pid: number;
  dataDir: string;
  home: string;
  token: string;
  proc: ChildProcess;
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body: unknown): Promise<{ status: number; body: T }>;
  stop(): Promise<void>;
}

/** Start `kiln serve` on a free loopback port with `config`; an admin token is written into the database first. */
async function startService(dataDir: string, home: string, config: string): Promise<Service> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const cfg = `${dataDir}.yaml`;
  await writeFile(cfg, config);
  const store = Store.open(join(dataDir, 'kiln.db'));
  const token = store.createToken('bench', 'admin').token;
  store.close();
  const proc = spawn(
    process.execPath,
    [...SERVICE_NODE_ARGS, KILN, 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--config', cfg],
    { env: kilnEnv(home), stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  const exited = new Promise<void>((r) => proc.on('close', () => r()));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`kiln serve did not start:\n${err}`)), 60_000);
    proc.stderr?.on('data', (d: Buffer) => {
      if (STDERR_FILE) appendFileSync(STDERR_FILE, d);
      err = (err + d.toString()).slice(-65536);
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(t);
        resolve(m[1] as string);
      }
    });
    void exited.then(() => {
      clearTimeout(t);
      reject(new Error(`kiln serve exited:\n${err}`));
    });
  });
  const headers = { authorization: `Bearer ${token}` };
  const call = async <T>(
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
  ): Promise<{ status: number; body: T }> => {
    const r = await request(url + path, {
      method,
      headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' },
      body: body === undefined ? null : JSON.stringify(body),
    });
    const text = await r.body.text();
    let parsed: unknown = text;
    if (text.startsWith('{')) parsed = JSON.parse(text);
    return { status: r.statusCode, body: parsed as T };
  };
  return {
    url,
    pid: proc.pid as number,
    dataDir,
    home,
    token,
    proc,
    async get<T>(path: string): Promise<T> {
      const r = await call<T>('GET', path);
      if (r.status !== 200) throw new Error(`GET ${path}: ${r.status} ${JSON.stringify(r.body).slice(0, 500)}`);
      return r.body;
    },
    post: (path, body) => call('POST', path, body),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(t);
    },
  };
}

interface ProjectSpec {
  name: string;
  repository: string;
  registry: string;
  dockerfile?: string;
  parallel?: number;
}

/** The config file: every project keeps its whole history (retention would delete the builds S3–S6 rely on). */
function serviceConfig(registryHost: string, projects: ProjectSpec[]): string {
  const lines = ['concurrency: 2', 'timeoutSeconds: 1800', 'shutdownGraceSeconds: 5'];
  lines.push(`insecureRegistries: ["${registryHost}"]`, 'projects:');
  for (const p of projects) {
    lines.push(
      `  - name: ${p.name}`,
      `    repository: ${p.repository}`,
      `    registry: ${p.registry}`,
      '    insecureRegistry: true',
      '    retention: {successfulCount: 1000000, failedCount: 1000000}',
    );
    if (p.parallel) lines.push('    runPolicy: Parallel', `    concurrency: ${p.parallel}`);
    lines.push('    images:', '      - name: app', `        dockerfile: ${p.dockerfile ?? 'Dockerfile'}`);
    lines.push('        tags: ["b{{buildNumber}}"]');
  }
  return lines.join('\n') + '\n';
}

async function waitFinal(svc: Service, id: string, pollMs: number, timeoutMs = 30 * 60_000): Promise<Build> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const b = await svc.get<Build>(`/api/v1/builds/${id}`);
    if (FINAL_PHASES.includes(b.phase)) return b;
    if (Date.now() > until) throw new Error(`build ${id} still ${b.phase} after ${timeoutMs} ms`);
    await sleep(pollMs);
  }
}

async function startBuild(svc: Service, project: string, body: unknown = { ref: 'main' }): Promise<Build> {
  const r = await svc.post<{ builds: Build[] }>(`/api/v1/projects/${project}/builds`, body);
  const b = r.body.builds?.[0];
  if (r.status !== 201 || !b) throw new Error(`POST builds of ${project}: ${r.status} ${JSON.stringify(r.body)}`);
  return b;
}

async function logTail(svc: Service, id: string): Promise<string> {
  const text = await svc.get<string>(`/api/v1/builds/${id}/log`).catch((e: unknown) => String(e));
  return String(text).split('\n').slice(-30).join('\n');
}

interface ServiceRun {
  /** Request → pushed digest seen by the client, ms. */
  ms: number;
  build: Build;
  /** Date.now() when the request was sent (the service's timestamps use the same clock). */
  sentAt: number;
  seenAt: number;
}

/** POST a build and poll it every 20 ms until it is final; throws unless it succeeded with a digest. */
async function buildThroughService(svc: Service, project: string): Promise<ServiceRun> {
  const sentAt = Date.now();
  const t0 = performance.now();
  const { id } = await startBuild(svc, project);
  const build = await waitFinal(svc, id, 20);
  const ms = performance.now() - t0;
  if (build.phase !== 'succeeded' || !build.digest) {
    throw new Error(`build ${id} of ${project}: ${build.phase} (${build.reason})\n${await logTail(svc, id)}`);
  }
  return { ms, build, sentAt, seenAt: Date.now() };
}

// ---------------------------------------------------------------------------------------------------------------
// Finished builds written straight into the database (the service stopped)

const hex = (n: number): string => randomBytes(n).toString('hex');

/** ~`n` stages the way the worker records them: fetch, the Dockerfile's steps, the export and push. */
function realisticStages(n: number, startMs: number): BuildStage[] {
  const steps = [
    '[internal] load build definition from Dockerfile',
    '[internal] load metadata for registry.example.com/library/node:20-bookworm-slim',
    '[internal] load .dockerignore',
    '[internal] load build context',
    '[build 1/9] FROM registry.example.com/library/node:20-bookworm-slim@sha256:' + hex(32),
    '[build 2/9] WORKDIR /src',
    '[build 3/9] COPY package.json package-lock.json ./',
    '[build 4/9] RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund',
    '[build 5/9] COPY tsconfig.json tsconfig.build.json ./',
    '[build 6/9] COPY src/ ./src/',
    '[build 7/9] RUN npm run build && npm prune --omit=dev',
    '[build 8/9] RUN find dist -name "*.map" -delete',
    '[build 9/9] RUN node dist/cli.js --version > /src/VERSION',
    '[stage-1 1/5] FROM registry.example.com/library/node:20-bookworm-slim@sha256:' + hex(32),
    '[stage-1 2/5] WORKDIR /app',
    '[stage-1 3/5] COPY --from=build /src/dist ./dist',
    '[stage-1 4/5] COPY --from=build /src/node_modules ./node_modules',
    '[stage-1 5/5] RUN useradd -r app && chown -R app /app',
    'exporting to image and pushing registry.example.com/team/app:b1234',
  ];
  const out: BuildStage[] = [];
  let t = startMs;
  for (let i = 0; i < n; i++) {
    const name = i === 0 ? 'fetch' : (steps[(i - 1) % steps.length] as string);
    const kind = i === 0 ? 'fetch' : name.startsWith('exporting') ? 'push' : 'step';
    const durationMs = Math.floor(Math.random() * 4000);
    const cached = kind === 'step' && Math.random() < 0.4;
    out.push({
      name,
      kind,
      status: cached ? 'cached' : 'done',
      startedAt: new Date(t).toISOString(),
      durationMs: cached ? 0 : durationMs,
    });
    t += cached ? 0 : durationMs;
  }
  return out;
}

/**
 * `count` finished builds spread over `projects`, written with the Store (the service's own code: enqueue, then
 * the phases a runner goes through), 500 per transaction. One build in ten failed.
 */
function fillHistory(dataDir: string, projects: string[], count: number, registryHost: string): void {
  const store = Store.open(join(dataDir, 'kiln.db'));
  try {
    for (let done = 0; done < count;) {
      const n = Math.min(500, count - done);
      store.transaction(() => {
        const items = Array.from({ length: n }, (_, i) => ({
          project: projects[(done + i) % projects.length] as string,
          image: 'app',
          ref: 'refs/heads/main',
          commit: hex(20),
          trigger: { type: 'webhook' as const, forge: 'github', delivery: randomUUID() },
          changedPaths: ['src/server/routes.ts', 'src/server/db.ts', 'package.json'],
        }));
        const { builds } = store.enqueue(items);
        for (const b of builds) {
          const start = Date.now() - Math.floor(Math.random() * 30 * 86_400_000);
          const stages = realisticStages(STAGES_PER_BUILD, start);
          const last = stages[stages.length - 1] as BuildStage;
          const end = Date.parse(last.startedAt) + (last.durationMs ?? 0);
          const tags = [`${registryHost}/h-${b.project}/app:b${b.number}`];
          store.updateBuild(b.id, { phase: 'fetching' });
          store.updateBuild(b.id, { phase: 'building', tags });
          const failed = b.number % 10 === 0;
          store.updateBuild(b.id, {
            phase: failed ? 'failed' : 'succeeded',
            stages,
            startedAt: new Date(start).toISOString(),
            finishedAt: new Date(end).toISOString(),
            ...(failed
              ? { reason: 'RUN npm run build: exit status 2' }
              : { digest: `sha256:${hex(32)}`, reason: null }),
          });
        }
      });
      done += n;
    }
  } finally {
    store.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Small tools

function procField(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** CPU seconds of `pid` itself and of its children it has waited for (workers of finished builds, git). */
function cpuOf(pid: number): { self: number; children: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = stat
      .slice(stat.lastIndexOf(')') + 2)
      .split(' ')
      .map(Number);
    // fields 14–17 of stat(5): utime stime cutime cstime, in clock ticks (100 Hz on Linux)
    return { self: ((f[11] ?? 0) + (f[12] ?? 0)) / 100, children: ((f[13] ?? 0) + (f[14] ?? 0)) / 100 };
  } catch {
    return { self: NaN, children: NaN };
  }
}

/** Nearest-rank percentile. */
function pct(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] as number;
}

async function git(args: string[], cwd?: string): Promise<void> {
  const env = { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null' };
  const m = await measure('git', args, { cwd, env, rss: false });
  if (m.code !== 0) throw new Error(`git ${args.join(' ')}: ${m.stderr}`);
}

/** A step's name without its `[n/m]` prefix and registry host (the same across rounds and sides). */
function stepLabel(name: string): string {
  return name
    .replace(/^\[[^\]]*\] /, '')
    .replace(/\d+\.\d+\.\d+\.\d+:\d+\//g, '')
    .replace(/^(exporting to image and pushing) .*/, '$1')
    .slice(0, 40);
}

/** kiln build's `--progress json` events → step name → ms, from each vertex's start and end times (CACHED: 0). */
function progressSteps(stderr: string): Map<string, number> {
  const steps = new Map<string, number>();
  const starts = new Map<string, number>();
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    let ev: { type?: string; id?: unknown; name?: string; time?: number };
    try {
      ev = JSON.parse(line) as typeof ev;
    } catch {
      continue;
    }
    // vertices only (`#N`), not the registry's blob events
    if (typeof ev.id !== 'string' || !ev.id.startsWith('#') || typeof ev.time !== 'number' || !ev.name) continue;
    if (ev.type === 'start') starts.set(ev.id, ev.time);
    else if (ev.type === 'cached') steps.set(stepLabel(ev.name), 0);
    else if (ev.type === 'done') steps.set(stepLabel(ev.name), ev.time - (starts.get(ev.id) ?? ev.time));
  }
  return steps;
}

/** Where a service build's time went: request → enqueued, queue, fetch + checkout, hand-off, steps, → client. */
function serviceTimeline(r: ServiceRun): Map<string, number> {
  const b = r.build;
  const created = Date.parse(b.createdAt);
  const started = Date.parse(b.startedAt ?? b.createdAt);
  const finished = Date.parse(b.finishedAt ?? b.createdAt);
  const fetch = b.stages.find((s) => s.kind === 'fetch');
  const firstStep = b.stages.find((s) => s.kind !== 'fetch');
  const m = new Map<string, number>();
  m.set('POST → enqueued (git fetch)', created - r.sentAt);
  m.set('queued', started - created);
  m.set('fetch + checkout', fetch?.durationMs ?? 0);
  if (fetch && firstStep) {
    m.set(
      '→ first step (worker, context)',
      Date.parse(firstStep.startedAt) - Date.parse(fetch.startedAt) - (fetch.durationMs ?? 0),
    );
  }
  for (const s of b.stages) if (s.kind !== 'fetch') m.set(stepLabel(s.name), s.durationMs ?? 0);
  if (firstStep) {
    const stepsEnd = Math.max(...b.stages.map((s) => Date.parse(s.startedAt) + (s.durationMs ?? 0)));
    m.set('last step → succeeded', finished - stepsEnd);
  }
  m.set('succeeded → seen (poll)', r.seenAt - finished);
  return m;
}

// ---------------------------------------------------------------------------------------------------------------
// Results

interface Row {
  part: string;
  what: string;
  value: string;
  target?: string;
  met?: boolean;
}

const rows: Row[] = [];
/** Per part and side: step name → ms per round. */
const breakdowns = new Map<string, Map<string, number[]>>();

function addSteps(key: string, steps: Map<string, number>): void {
  const m = breakdowns.get(key) ?? new Map<string, number[]>();
  for (const [k, v] of steps) m.set(k, [...(m.get(k) ?? []), v]);
  breakdowns.set(key, m);
}

const secs = (ms: number): string => (Number.isFinite(ms) ? (ms / 1000).toFixed(2) : '—');
const msf = (ms: number): string => (Number.isFinite(ms) ? ms.toFixed(ms < 10 ? 1 : 0) : '—');
const mb = (b: number): string => `${(b / 1048576).toFixed(0)} MB`;

function spread(xs: number[], f: (x: number) => string): string {
  if (xs.length === 0) return '—';
  if (xs.length === 1) return f(xs[0] as number);
  return `${f(median(xs))} (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
}

function table(): string {
  const out = ['| part | measure | median (min–max) | target | met |', '|---|---|---|---|---|'];
  for (const r of rows) {
    const met = r.met === undefined ? '' : r.met ? 'yes' : '**no**';
    out.push(`| ${r.part} | ${r.what} | ${r.value} | ${r.target ?? ''} | ${met} |`);
  }
  return out.join('\n');
}

function breakdownTable(): string {
  if (breakdowns.size === 0) return '';
  const out = ['| build | where the time went: median ms over rounds (CPU rows: CPU ms) |', '|---|---|'];
  for (const [key, m] of breakdowns) {
    const cells = [...m].map(([k, v]) => `${k.replace(/\|/g, '\\|')}: ${Math.round(median(v))}`);
    out.push(`| ${key} | ${cells.join(' · ')} |`);
  }
  return out.join('\n');
}

function machine(): string {
  const memKb = Number(/MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  const gitVersion = spawnSync('git', ['--version'], { encoding: 'utf8' }).stdout.trim();
  return [
    `- date: ${new Date().toISOString()}`,
    `- machine: ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ${((memKb * 1024 || totalmem()) / 2 ** 30).toFixed(1)} GiB ` +
      `memory, kernel ${release()}, node ${process.version}`,
    `- kiln: ${MEASURED}, compiled (tsc, like bench/run.ts); kiln serve with config concurrency 2 (2 warm workers); ${gitVersion} through ` +
      '`git http-backend` on loopback; registry: Debian docker-registry (loopback); clients run in the benchmark process',
    `- rounds: ${ROUNDS}${SMALL ? ' (BENCH_SMALL: reduced inputs)' : ''}; parts: ${[...ONLY].join(',')}`,
    `- load: ${LOAD_AT_START} at the start, ${readFileSync('/proc/loadavg', 'utf8').trim()} at the end (the machine is ` +
      'shared; compare ratios within one run)',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// The parts

interface Env {
  work: string;
  reg: TestRegistry;
  gitServer: GitServer;
  base: string;
  /** The long-lived service of S1, S3, S4, S5 (started on first use). */
  main?: Service;
  mainHistory: boolean;
  mainConfig: string;
}

const HISTORY = Array.from({ length: HISTORY_PROJECTS }, (_, i) => `hist-${String(i).padStart(2, '0')}`);

async function mainService(e: Env): Promise<Service> {
  e.main ??= await startService(join(e.work, 'main-data'), join(e.work, 'main-home'), e.mainConfig);
  return e.main;
}

/** S3/S4 need 1,000 finished builds in the main service's database: stop it, write them, start it again. */
async function ensureHistory(e: Env): Promise<Service> {
  if (e.mainHistory) return mainService(e);
  const svc = await mainService(e);
  await svc.stop();
  const t0 = performance.now();
  fillHistory(svc.dataDir, HISTORY, N.s3History, e.reg.host);
  log(`wrote ${N.s3History} finished builds in ${secs(performance.now() - t0)} s`);
  e.main = await startService(svc.dataDir, svc.home, e.mainConfig);
  e.mainHistory = true;
  await sleep(2000);
  return e.main;
}

/** The W1 repository in the git server (Dockerfile on the registry's busybox, `.git` ignored). */
async function makeW1Repo(e: Env): Promise<string> {
  await e.gitServer.createRepo('w1', { Dockerfile: w1Dockerfile(e.base), '.dockerignore': '.git\n' });
  const dir = (await e.gitServer.git('w1', ['rev-parse', '--show-toplevel'])).trim();
  await writeW1Context(dir, N.w1);
  await e.gitServer.git('w1', ['add', '-A']);
  await e.gitServer.git('w1', ['commit', '-q', '-m', 'W1 context']);
  await e.gitServer.git('w1', ['push', '-q', 'origin', 'HEAD:refs/heads/main']);
  return dir;
}

async function kilnBuildPush(
  home: string,
  dir: string,
  tag: string,
  host: string,
): Promise<{ ms: number; steps: Map<string, number> }> {
  const m = await measure(
    process.execPath,
    [KILN, 'build', '--push', '--insecure-registry', host, '-t', tag, '--progress', 'json', dir],
    { env: kilnEnv(home), rss: false },
  );
  if (m.code !== 0)
    throw new Error(`kiln build ${tag} failed (${m.code}):\n${m.stderr.split('\n').slice(-30).join('\n')}`);
  return { ms: m.ms, steps: progressSteps(m.stderr) };
}

async function s1(e: Env, repoDir: string): Promise<void> {
  const svc = await mainService(e);
  const hand = join(e.work, 's1-hand-clone');
  const handHome = join(e.work, 's1-hand-home');
  await git(['clone', '-q', e.gitServer.repoUrl('w1'), hand]);
  log('S1: cold builds (untimed): service, by hand');
  await buildThroughService(svc, 'w1');
  await kilnBuildPush(handHome, hand, `${e.reg.host}/hand-w1/app:cold`, e.reg.host);
  const service: number[] = [];
  const byHand: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const sides = round % 2 ? ['service', 'hand'] : ['hand', 'service'];
    for (const side of sides) {
      if (side === 'service') {
        const changed = await touchW1Source(repoDir, 1000 + round, N.w1);
        await e.gitServer.git('w1', ['commit', '-q', '-am', `edit ${round}`]);
        await e.gitServer.git('w1', ['push', '-q', 'origin', 'HEAD:refs/heads/main']);
        const r = await buildThroughService(svc, 'w1');
        log(`S1 round ${round}: service ${secs(r.ms)} s (${changed} changed)`);
        service.push(r.ms);
        addSteps('S1 warm, service', serviceTimeline(r));
      } else {
        const changed = await touchW1Source(hand, 2000 + round, N.w1);
        const r = await kilnBuildPush(handHome, hand, `${e.reg.host}/hand-w1/app:r${round}`, e.reg.host);
        log(`S1 round ${round}: by hand ${secs(r.ms)} s (${changed} changed)`);
        byHand.push(r.ms);
        addSteps('S1 warm, by hand', r.steps);
      }
    }
  }
  const ratio = median(service) / median(byHand);
  rows.push({ part: 'S1 warm', what: 'service: request → pushed digest, s', value: spread(service, secs) });
  rows.push({ part: 'S1 warm', what: 'by hand: `kiln build --push` in a warm clone, s', value: spread(byHand, secs) });
  rows.push({
    part: 'S1 warm',
    what: 'service / by hand',
    value: ratio.toFixed(2),
    target: '≤ 1.0',
    met: ratio <= 1.0,
  });
}

async function s2(e: Env): Promise<void> {
  const service: number[] = [];
  const byHand: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const sides = round % 2 ? ['service', 'hand'] : ['hand', 'service'];
    for (const side of sides) {
      const dir = join(e.work, `s2-${side}-r${round}`);
      if (side === 'service') {
        const project: ProjectSpec = {
          name: 'w1',
          repository: e.gitServer.repoUrl('w1'),
          registry: `${e.reg.host}/cold-svc-r${round}`,
        };
        const svc = await startService(join(dir, 'data'), join(dir, 'home'), serviceConfig(e.reg.host, [project]));
        await sleep(3000); // a service that is up: its warm workers started
        try {
          const r = await buildThroughService(svc, 'w1');
          log(`S2 round ${round}: service ${secs(r.ms)} s`);
          service.push(r.ms);
          addSteps('S2 cold, service', serviceTimeline(r));
        } finally {
          await svc.stop();
        }
      } else {
        const t0 = performance.now();
        await git(['clone', '-q', e.gitServer.repoUrl('w1'), join(dir, 'clone')]);
        const cloneMs = performance.now() - t0;
        const r = await kilnBuildPush(
          join(dir, 'home'),
          join(dir, 'clone'),
          `${e.reg.host}/cold-hand-r${round}/app:1`,
          e.reg.host,
        );
        const ms = performance.now() - t0;
        log(`S2 round ${round}: git clone + kiln build ${secs(ms)} s`);
        byHand.push(ms);
        addSteps('S2 cold, by hand', new Map([['git clone', cloneMs], ...r.steps]));
      }
      await rm(dir, { recursive: true, force: true });
    }
  }
  const ratio = median(service) / median(byHand);
  rows.push({
    part: 'S2 cold',
    what: 'service (fresh data dir, KILN_HOME): request → pushed digest, s',
    value: spread(service, secs),
  });
  rows.push({
    part: 'S2 cold',
    what: 'by hand: `git clone` + `kiln build --push`, fresh KILN_HOME, s',
    value: spread(byHand, secs),
  });
  rows.push({
    part: 'S2 cold',
    what: 'service / by hand',
    value: ratio.toFixed(2),
    target: '≤ 1.3',
    met: ratio <= 1.3,
  });
}

async function s3(e: Env): Promise<void> {
  const svc = await ensureHistory(e);
  log('S3: tiny build (untimed, pulls the base)');
  const first = await buildThroughService(svc, 'tiny');
  const commit = first.build.commit as string;
  for (const [label, body] of [
    ['{"ref": "main"}', { ref: 'main' }],
    ['{"commit": SHA}', { commit }],
  ] as const) {
    const toRunning: number[] = [];
    const post: number[] = [];
    const queued: number[] = [];
    const seen: number[] = [];
    for (let i = 0; i < N.s3Builds; i++) {
      const sentAt = Date.now();
      const t0 = performance.now();
      const b = await startBuild(svc, 'tiny', body);
      post.push(performance.now() - t0);
      let cur = b;
      while (cur.phase === 'queued') cur = await svc.get<Build>(`/api/v1/builds/${b.id}`);
      seen.push(performance.now() - t0);
      toRunning.push(Date.parse(cur.startedAt ?? '') - sentAt);
      queued.push(Date.parse(cur.startedAt ?? '') - Date.parse(cur.createdAt));
      const done = await waitFinal(svc, b.id, 20);
      if (done.phase !== 'succeeded') throw new Error(`tiny build ${b.id}: ${done.phase} ${done.reason}`);
    }
    const p = `S3 queue, ${label}`;
    const m = median(toRunning);
    rows.push({
      part: p,
      what: 'request → phase leaves `queued` (startedAt, server clock), ms',
      value: spread(toRunning, msf),
      target: '≤ 50',
      met: m <= 50,
    });
    rows.push({ part: p, what: 'POST latency (client), ms', value: spread(post, msf) });
    rows.push({ part: p, what: 'createdAt → startedAt (server), ms', value: spread(queued, msf) });
    rows.push({ part: p, what: 'request → a GET shows it running (client), ms', value: spread(seen, msf) });
    log(`S3 ${label}: request → running ${msf(m)} ms (POST ${msf(median(post))} ms)`);
  }
}

interface Hammered {
  lat: number[];
  rps: number;
  bytes: number;
  errors: number;
}

/** `clients` requests in flight on one pool (a connection each) for `ms` or `S4_MAX_REQUESTS`, whichever first. */
async function hammer(svc: Service, clients: number, ms: number): Promise<Hammered> {
  const pool = new Pool(svc.url, { connections: clients, pipelining: 1 });
  const headers = { authorization: `Bearer ${svc.token}` };
  const lat: number[] = [];
  let started = 0;
  let bytes = 0;
  let errors = 0;
  const t0 = performance.now();
  const loop = async (): Promise<void> => {
    while (started < S4_MAX_REQUESTS && performance.now() - t0 < ms) {
      started++;
      const t = performance.now();
      const r = await pool.request({ path: '/api/v1/builds', method: 'GET', headers });
      const body = await r.body.arrayBuffer();
      lat.push(performance.now() - t);
      bytes += body.byteLength;
      if (r.statusCode !== 200) errors++;
    }
  };
  await Promise.all(Array.from({ length: clients }, loop));
  const elapsed = performance.now() - t0;
  await pool.close();
  return { lat, rps: (lat.length / elapsed) * 1000, bytes: bytes / Math.max(1, lat.length), errors };
}

async function s4(e: Env): Promise<void> {
  const svc = await ensureHistory(e);
  await hammer(svc, S4_CLIENTS, 500); // warm-up: connections, JIT
  const report = (label: string, clients: number, runs: Hammered[], target: boolean): void => {
    const p50 = runs.map((r) => pct(r.lat, 0.5));
    const p99 = runs.map((r) => pct(r.lat, 0.99));
    const p = `S4 API, ${label}`;
    const m = median(p99);
    rows.push({ part: p, what: `GET /api/v1/builds, ${clients} in flight: p50, ms`, value: spread(p50, msf) });
    rows.push({
      part: p,
      what: 'p99, ms',
      value: spread(p99, msf),
      ...(target ? { target: '≤ 50', met: m <= 50 } : {}),
    });
    const errors = runs.reduce((a, r) => a + r.errors, 0);
    rows.push({
      part: p,
      what: 'requests/s · response size · errors',
      value: `${median(runs.map((r) => r.rps)).toFixed(0)} · ${(median(runs.map((r) => r.bytes)) / 1024).toFixed(0)} KiB · ${errors}`,
    });
    log(`S4 ${label}: p50 ${msf(median(p50))} ms, p99 ${msf(m)} ms`);
  };
  // one client: the time the service takes per request, without queueing behind the 99 others
  const single: Hammered[] = [];
  for (let round = 1; round <= ROUNDS; round++) single.push(await hammer(svc, 1, N.s4Ms / 5));
  report('no build running', 1, single, false);
  const idle: Hammered[] = [];
  for (let round = 1; round <= ROUNDS; round++) idle.push(await hammer(svc, S4_CLIENTS, N.s4Ms));
  report('no build running', S4_CLIENTS, idle, false);

  await e.gitServer.commit('sleepy', { nonce: randomUUID() }, 'nonce');
  const a = await startBuild(svc, 'sleepy');
  const b = await startBuild(svc, 'sleepy');
  for (const id of [a.id, b.id]) {
    const until = Date.now() + 300_000;
    while (!(await svc.get<string>(`/api/v1/builds/${id}/log`)).includes('started-42')) {
      if (Date.now() > until) throw new Error(`sleepy build ${id} never reached its RUN:\n${await logTail(svc, id)}`);
      await sleep(200);
    }
  }
  const loaded: Hammered[] = [];
  try {
    for (let round = 1; round <= ROUNDS; round++) loaded.push(await hammer(svc, S4_CLIENTS, N.s4Ms));
  } finally {
    for (const id of [a.id, b.id]) await svc.post(`/api/v1/builds/${id}/cancel`, {});
    for (const id of [a.id, b.id]) await waitFinal(svc, id, 100);
  }
  report('2 builds running', S4_CLIENTS, loaded, true);
}

interface Followed {
  bytes: number;
  ended: boolean;
}

async function follow(svc: Service, agent: Agent, id: string): Promise<Followed> {
  const r = await request(`${svc.url}/api/v1/builds/${id}/log?follow=1`, {
    dispatcher: agent,
    headers: { authorization: `Bearer ${svc.token}` },
  });
  let bytes = 0;
  let tail = '';
  for await (const chunk of r.body as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    tail = (tail + chunk.subarray(-512).toString('latin1')).slice(-512);
  }
  if (r.statusCode !== 200) log(`S5: a follower got ${r.statusCode}: ${tail.slice(-200)}`);
  return { bytes, ended: r.statusCode === 200 && tail.includes('event: end') };
}

async function s5(e: Env): Promise<void> {
  const svc = await mainService(e);
  await e.gitServer.commit('chatty', { nonce: 'warm-up' }, 'nonce');
  log('S5: warm-up build (untimed)');
  await buildThroughService(svc, 'chatty');
  const alone: number[] = [];
  const followed: number[] = [];
  const runAlone: number[] = [];
  const runFollowed: number[] = [];
  let allEnded = true;
  let followerBytes = 0;
  let lastId = '';
  for (let round = 1; round <= ROUNDS; round++) {
    const modes = round % 2 ? ['alone', 'followed'] : ['followed', 'alone'];
    for (const mode of modes) {
      await e.gitServer.commit('chatty', { nonce: `${round}-${mode}` }, 'nonce');
      const agent = new Agent({ connections: S5_FOLLOWERS + 1 });
      const cpu0 = cpuOf(svc.pid);
      const own0 = process.cpuUsage();
      const t0 = performance.now();
      const { id } = await startBuild(svc, 'chatty');
      lastId = id;
      const readers = mode === 'followed' ? Array.from({ length: S5_FOLLOWERS }, () => follow(svc, agent, id)) : [];
      const build = await waitFinal(svc, id, 20);
      const ms = performance.now() - t0;
      const got = await Promise.all(readers);
      await agent.close();
      const cpu1 = cpuOf(svc.pid);
      const own = process.cpuUsage(own0);
      addSteps(
        `S5 ${mode}, CPU`,
        new Map([
          ['service process', (cpu1.self - cpu0.self) * 1000],
          ['its build worker tree', (cpu1.children - cpu0.children) * 1000],
          ['benchmark process (followers, polling)', (own.user + own.system) / 1000],
        ]),
      );
      if (build.phase !== 'succeeded') throw new Error(`chatty build ${id}: ${build.phase} ${build.reason}`);
      const run = build.stages.find((s) => s.name.includes('RUN'))?.durationMs ?? NaN;
      (mode === 'alone' ? alone : followed).push(ms);
      (mode === 'alone' ? runAlone : runFollowed).push(run);
      if (got.length) {
        allEnded &&= got.every((g) => g.ended);
        followerBytes = Math.max(followerBytes, median(got.map((g) => g.bytes)));
      }
      log(`S5 round ${round}: ${mode} ${secs(ms)} s (RUN ${secs(run)} s)`);
    }
  }
  const slow = (median(followed) / median(alone) - 1) * 100;
  const logBytes = lastId ? statSync(join(svc.dataDir, 'logs', `${lastId}.log`)).size : NaN;
  rows.push({
    part: 'S5 logs',
    what: `build alone: request → pushed, s (log ${mb(logBytes)})`,
    value: spread(alone, secs),
  });
  rows.push({
    part: 'S5 logs',
    what: `with ${S5_FOLLOWERS} SSE followers (each read ${mb(followerBytes)}, all to \`end\`: ${allEnded ? 'yes' : 'NO'}), s`,
    value: spread(followed, secs),
  });
  rows.push({
    part: 'S5 logs',
    what: 'RUN step alone / followed, s',
    value: `${spread(runAlone, secs)} / ${spread(runFollowed, secs)}`,
  });
  rows.push({
    part: 'S5 logs',
    what: 'slowdown with followers',
    value: `${slow.toFixed(1)} %`,
    target: '≤ 5 %',
    met: slow <= 5 && allEnded,
  });
}

async function s6(e: Env): Promise<void> {
  const dataDir = join(e.work, 'rss-data');
  const home = join(e.work, 'rss-home');
  const projects = HISTORY.map((name) => ({
    name,
    repository: e.gitServer.repoUrl('tiny'),
    registry: `${e.reg.host}/rss-${name}`,
  }));
  const config = serviceConfig(e.reg.host, projects);
  const sample = async (svc: Service): Promise<{ rss: number; hwm: number; workers: number }> => {
    await sleep(3000);
    await svc.get('/api/v1/builds');
    await svc.get('/api/v1/builds?limit=500');
    const page = await svc.get<{ builds: Build[]; next: string | null }>(`/api/v1/builds?project=${HISTORY[3]}`);
    if (page.next) await svc.get(`/api/v1/builds?project=${HISTORY[3]}&cursor=${page.next}`);
    for (const b of page.builds.slice(0, 5)) await svc.get(`/api/v1/builds/${b.id}`);
    await svc.get('/metrics').catch(() => undefined);
    await sleep(1000);
    const rss = procField(svc.pid, 'VmRSS');
    return { rss, hwm: procField(svc.pid, 'VmHWM'), workers: treeRss(svc.pid) - rss };
  };
  let svc = await startService(dataDir, home, config);
  const empty = await sample(svc);
  await svc.stop();
  const t0 = performance.now();
  fillHistory(dataDir, HISTORY, S6_HISTORY, e.reg.host);
  log(`S6: wrote ${S6_HISTORY} finished builds in ${secs(performance.now() - t0)} s`);
  svc = await startService(dataDir, home, config);
  const full = await sample(svc);
  await svc.stop();
  const n = S6_HISTORY.toLocaleString('en');
  rows.push({
    part: 'S6 RSS',
    what: 'service VmRSS, empty database (peak VmHWM)',
    value: `${mb(empty.rss)} (${mb(empty.hwm)})`,
  });
  rows.push({
    part: 'S6 RSS',
    what: `service VmRSS, ${n} builds × ${STAGES_PER_BUILD} stages, after listings (peak VmHWM)`,
    value: `${mb(full.rss)} (${mb(full.hwm)})`,
    target: '≤ 150 MB',
    met: full.rss <= 150 * 1048576,
  });
  rows.push({ part: 'S6 RSS', what: 'its 2 idle warm workers (process trees, apart)', value: mb(full.workers) });
  log(`S6: ${mb(empty.rss)} empty, ${mb(full.rss)} with ${n} builds; workers ${mb(full.workers)}`);
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-svc-'));
  let reg: TestRegistry | undefined;
  let gitServer: GitServer | undefined;
  let env: Env | undefined;
  try {
    KILN = await compileKiln();
    reg = await startRegistry();
    gitServer = await startGitServer();
    const base = `${reg.host}/bench/busybox:1`;
    const ropts = { insecureRegistries: [reg.host] };
    await push(await makeBusyboxImage({ kind: 'docker' }), base, ropts);
    await closeTransports(ropts);
    log(`registry ${reg.host}, git ${gitServer.url}; work dir ${work}`);
    const line = 'kiln bench log line: the quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuv';
    await gitServer.createRepo('tiny', { Dockerfile: `FROM ${base}\nRUN echo tiny > /tiny\n` });
    await gitServer.createRepo('sleepy', {
      Dockerfile: `FROM ${base}\nCOPY nonce /nonce\nRUN echo started-$((6*7)) && sleep 1200\n`,
      nonce: 'x',
    });
    await gitServer.createRepo('chatty', {
      Dockerfile:
        `FROM ${base}\nCOPY nonce /nonce\n` +
        `RUN i=0; while [ $i -lt ${S5_BURSTS} ]; do yes '${line}' | head -c 500000; sleep 0.1; i=$((i+1)); done\n`,
      nonce: 'x',
    });
    const projects: ProjectSpec[] = [
      { name: 'w1', repository: gitServer.repoUrl('w1'), registry: `${reg.host}/p-w1` },
      { name: 'tiny', repository: gitServer.repoUrl('tiny'), registry: `${reg.host}/p-tiny` },
      { name: 'sleepy', repository: gitServer.repoUrl('sleepy'), registry: `${reg.host}/p-sleepy`, parallel: 2 },
      { name: 'chatty', repository: gitServer.repoUrl('chatty'), registry: `${reg.host}/p-chatty` },
      ...HISTORY.map((name) => ({ name, repository: gitServer!.repoUrl('tiny'), registry: `${reg!.host}/h-${name}` })),
    ];
    env = { work, reg, gitServer, base, mainHistory: false, mainConfig: serviceConfig(reg.host, projects) };
    if (ONLY.has('S1') || ONLY.has('S2')) {
      log('writing the W1 repository');
      const repoDir = await makeW1Repo(env);
      if (ONLY.has('S1')) await s1(env, repoDir);
      if (ONLY.has('S2')) await s2(env);
    }
    if (ONLY.has('S3')) await s3(env);
    if (ONLY.has('S4')) await s4(env);
    if (ONLY.has('S5')) await s5(env);
    if (ONLY.has('S6')) await s6(env);
  } finally {
    await env?.main?.stop().catch((e: unknown) => log(`stopping the service: ${String(e)}`));
    await gitServer?.stop();
    await reg?.stop();
    if (process.env.BENCH_KEEP !== '1') await rm(work, { recursive: true, force: true });
    else log(`kept ${work}`);
  }
  const md =
    `# kiln serve benchmark — latest run\n\n${machine()}\n\n${table()}\n\n${breakdownTable()}\n\n` +
    'Targets: warm build through the service ≤ 1.0× the same build by hand, cold ≤ 1.3×; request → running ≤ 50 ms ' +
    'with 1,000 builds in history; API p99 ≤ 50 ms under load; ≤ 5 % slowdown with 50 log followers; idle service ' +
    'RSS ≤ 150 MB with 10,000 builds in history.\n';
  process.stdout.write(md);
  // reduced-input and partial runs never replace the published table, which keeps the repo's markdown style
  const partial = SMALL || !ALL.every((p) => ONLY.has(p));
  const outFile = join(REPO, ...(partial ? ['.tmp', 'bench-service-partial.md'] : ['bench', 'results', 'service.md']));
  await mkdir(dirname(outFile), { recursive: true });
  const style = (await prettier.resolveConfig(outFile)) ?? {};
  await writeFile(outFile, await prettier.format(md, { ...style, filepath: outFile }));
  log(`wrote ${outFile}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
