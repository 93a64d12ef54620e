/**
 * `npm run bench:triggers` — the base-image trigger at scale (issue 11's performance targets):
 *   T1 — 500 projects on 20 base images: manifest requests per polling round (target ≤ 20, one per base);
 *   T2 — a base with 25 dependents moves: time from the round's start until every dependent is queued (≤ 1 s);
 *   T3 — while those rebuilds run (base-change cap 1, service concurrency 2), another project's manual build:
 *        request → finished, against the same build on an idle service (target ≤ 2×);
 *   T4 — a signed GitHub push webhook over HTTP (the service's real API server and receiver) → its build running
 *        (phase `fetching`, the build started) and → the runner holding the job (after the mirror fetch and the
 *        workspace checkout), medians; target ≤ 100 ms with the mirror warm.
 * Real parts: docker-registry behind a counting proxy, SQLite, git (one file:// repository shared by every project),
 * the service's queue and scheduler. The runner is a stub that succeeds after 150 ms: this measures the trigger and
 * the queue, not the engine (bench/run.ts and bench/service.ts measure builds).
 * Output: stdout and bench/results/triggers.md. BENCH_ROUNDS (default 3) repeats T3; T4 runs max(7, BENCH_ROUNDS).
 */
import { execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { startHttpProxy, startRegistry } from '../test/helpers/registry.js';
import { makeBusyboxImage } from '../test/helpers/images.js';
import { push } from '../src/registry/push.js';
import { closeTransports } from '../src/registry/transport.js';
import { BuildService } from '../src/service/service.js';
import { parseConfigDocument } from '../src/service/config/parse.js';
import { createApi } from '../src/service/api/server.js';
import { registerHooks } from '../src/service/hooks/index.js';
import type { BuildRunner, RunOutcome } from '../src/service/runner/local.js';
import type { WorkerJob } from '../src/service/runner/protocol.js';
import type { Build } from '../src/service/model.js';
import { median } from './procs.js';

const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3) || 3);
const PROJECTS = 500;
const BASES = 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Succeeds after `ms`, reporting the job's base as resolved to `digestOf(base)`. */
class StubRunner implements BuildRunner {
  /** Called when a job reaches the runner (T4). */
  onRun: ((job: WorkerJob) => void) | undefined;
  constructor(
    private readonly ms: number,
    private readonly digestOf: () => Map<string, string>,
  ) {}
  async run(job: WorkerJob): Promise<RunOutcome> {
    this.onRun?.(job);
    await sleep(this.ms);
    const base = job.buildArgs.BASE as string;
    return {
      ok: true,
      digest: 'sha256:' + 'f'.repeat(64),
      configDigest: 'sha256:' + 'e'.repeat(64),
      pushed: job.tags,
      bases: [{ name: base, digest: this.digestOf().get(base) as string }],
    };
  }
  async close(): Promise<void> {}
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-triggers-'));
  const reg = await startRegistry();
  const proxy = await startHttpProxy(reg.host);
  const opts = { insecureRegistries: [proxy.host, reg.host] };
  const digests = new Map<string, string>();
  const pushBase = async (i: number, v: string): Promise<void> => {
    const img = await makeBusyboxImage({ extraFiles: [{ path: 'etc/v', content: `${i}-${v}\n` }] });
    const name = `${proxy.host}/bases/b${i}:1`;
    await push(img, name, opts);
    digests.set(name, await img.digest());
  };
  for (let i = 0; i < BASES; i++) await pushBase(i, 'v1');
  const repo = join(work, 'repo.git');
  const git = (args: string[], cwd?: string): string =>
    execFileSync('git', ['-c', 'user.name=b', '-c', 'user.email=b@e', '-c', 'init.defaultBranch=main', ...args], {
      cwd,
      encoding: 'utf8',
    });
  git(['init', '-q', '--bare', repo]);
  const wc = join(work, 'wc');
  git(['clone', '-q', repo, wc]);
  await writeFile(join(wc, 'Dockerfile'), 'ARG BASE\nFROM $BASE\n');
  git(['add', '-A'], wc);
  git(['commit', '-qm', 'x'], wc);
  git(['push', '-q', 'origin', 'HEAD:main'], wc);

  const projects: Record<string, unknown>[] = Array.from({ length: PROJECTS + 1 }, (_, i) => ({
    name: i === PROJECTS ? 'other' : `p${i}`,
    repository: `file://${repo}`,
    registry: `${proxy.host}/${i === PROJECTS ? 'other' : `p${i}`}`,
    images: [{ name: 'app', buildArgs: { BASE: `${proxy.host}/bases/b${i % BASES}:1` } }],
  }));
  // T4's project: GitHub pushes signed with this secret
  const hookSecret = 'bench-hook-secret-0123456789';
  process.env.KILN_BENCH_HOOK_SECRET = hookSecret;
  const hooked = {
    name: 'hooked',
    repository: `file://${repo}`,
    registry: `${proxy.host}/hooked`,
    webhooks: { github: { secretEnv: 'KILN_BENCH_HOOK_SECRET' } },
    images: [{ name: 'app', buildArgs: { BASE: `${proxy.host}/bases/b0:1` } }],
  };
  const config = parseConfigDocument(
    {
      allowFileRepositories: true,
      concurrency: 2,
      insecureRegistries: [proxy.host, reg.host],
      baseWatch: { intervalSeconds: 0, concurrency: 1 },
      projects: [...projects, hooked],
    },
    'bench',
  );
  const runner = new StubRunner(150, () => digests);
  const svc = await BuildService.start({
    dataDir: join(work, 'data'),
    config,
    runner,
    log: () => undefined,
  });
  const app = createApi(svc);
  registerHooks(app, svc, { log: () => undefined });
  try {
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    // seed: every project built once (their latest successful builds record the bases)
    for (const p of projects.slice(0, PROJECTS))
      await svc.startBuilds(String(p.name), { ref: 'main' }, { type: 'manual' });
    const until = Date.now() + 600_000;
    while (svc.store.countByPhase().succeeded < PROJECTS) {
      if (Date.now() > until) throw new Error('seeding did not finish');
      await sleep(200);
    }
    // idle latency of another project's build (request → finished)
    const latency = async (): Promise<number> => {
      const t0 = Date.now();
      const [b] = await svc.startBuilds('other', { ref: 'main' }, { type: 'manual' });
      for (;;) {
        const x = svc.getBuild((b as Build).id) as Build;
        if (x.phase === 'succeeded') return Date.now() - t0;
        await sleep(5);
      }
    };
    const idle: number[] = [];
    for (let r = 0; r < ROUNDS; r++) idle.push(await latency());

    // T4: webhook → build running (mirror warm: one build of the project first)
    const warm = await svc.startBuilds('hooked', { ref: 'main' }, { type: 'manual' });
    while (svc.getBuild((warm[0] as Build).id)?.phase !== 'succeeded') await sleep(5);
    const toStarted: number[] = [];
    const toRunner: number[] = [];
    let head = git(['rev-parse', 'HEAD'], wc).trim();
    for (let r = 0; r < Math.max(7, ROUNDS); r++) {
      await writeFile(join(wc, 'CHANGES'), `round ${r}\n`);
      git(['add', '-A'], wc);
      git(['commit', '-qm', `round ${r}`], wc);
      git(['push', '-q', 'origin', 'HEAD:main'], wc);
      const before = head;
      head = git(['rev-parse', 'HEAD'], wc).trim();
      const body = JSON.stringify({
        ref: 'refs/heads/main',
        before,
        after: head,
        created: false,
        deleted: false,
        forced: false,
        commits: [{ id: head, message: `round ${r}`, added: [], removed: [], modified: ['CHANGES'] }],
        head_commit: { id: head, message: `round ${r}` },
        repository: { full_name: 'bench/hooked', clone_url: 'https://forge.invalid/bench/hooked.git' },
      });
      let started: number | undefined;
      let ran: number | undefined;
      const onBuild = (b: Build): void => {
        if (b.project === 'hooked' && b.phase === 'fetching') started ??= performance.now();
      };
      svc.events.on('build', onBuild);
      runner.onRun = (job) => {
        if (job.tags.some((t) => t.includes('/hooked/'))) ran ??= performance.now();
      };
      const t0 = performance.now();
      const res = await fetch(`${url}/hooks/github/hooked`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'x-github-event': 'push',
          'x-github-delivery': `bench-${r}-${Date.now()}`,
          'x-hub-signature-256': 'sha256=' + createHmac('sha256', hookSecret).update(body).digest('hex'),
        },
        body,
      });
      if (res.status !== 202) throw new Error(`webhook answered ${res.status}: ${await res.text()}`);
      const { builds } = (await res.json()) as { builds?: string[] };
      const id = builds?.[0];
      if (!id) throw new Error('the webhook queued no build');
      for (;;) {
        const b = svc.getBuild(id) as Build;
        if (b.phase === 'succeeded') break;
        if (b.phase === 'failed') throw new Error(`webhook build failed: ${b.reason}`);
        await sleep(5);
      }
      svc.events.off('build', onBuild);
      runner.onRun = undefined;
      toStarted.push((started as number) - t0);
      toRunner.push((ran as number) - t0);
    }

    // T1: one polling round
    let before = proxy.requests.length;
    await svc.bases.check();
    const t1 = proxy.requests.slice(before).filter((q) => q.url.includes('/manifests/')).length;

    // T2: base 0 moves (25 dependents)
    await pushBase(0, 'v2');
    before = proxy.requests.length;
    const t2start = performance.now();
    const queued = await svc.bases.check();
    const t2 = performance.now() - t2start;
    const t2requests = proxy.requests.slice(before).filter((q) => q.url.includes('/manifests/')).length;

    // T3: another project's build while the rebuilds run
    const busy: number[] = [];
    for (let r = 0; r < ROUNDS; r++) busy.push(await latency());
    const left = svc.store.queued().filter((b) => b.trigger.type === 'base-change').length;

    const lines = [
      `# Trigger benchmark (${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${cpus().length} vCPU, ` +
        `${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version})`,
      '',
      `${PROJECTS} projects on ${BASES} base images (bases in docker-registry behind a counting proxy), stub runner ` +
        `(150 ms builds), service concurrency 2, base-change rebuild cap 1.`,
      '',
      '| measure | result | target |',
      '| --- | --- | --- |',
      `| T1 manifest requests in one polling round | ${t1} | ≤ ${BASES} |`,
      `| T2 base with ${queued.length} dependents moved → all queued | ${t2.toFixed(0)} ms (${t2requests} manifest requests) | ≤ 1000 ms |`,
      `| T3 another project's build, request → finished: idle | ${median(idle).toFixed(0)} ms (median of ${ROUNDS}) | |`,
      `| T3 … while the rebuilds run (${left} still queued after) | ${median(busy).toFixed(0)} ms (${(median(busy) / median(idle)).toFixed(2)}×) | ≤ 2× |`,
      `| T4 signed GitHub push webhook → build running (phase fetching) | ${median(toStarted).toFixed(1)} ms (median of ${toStarted.length}; max ${Math.max(...toStarted).toFixed(1)}) | ≤ 100 ms |`,
      `| T4 … → the runner has the job (mirror fetch + workspace checkout done) | ${median(toRunner).toFixed(1)} ms (median; max ${Math.max(...toRunner).toFixed(1)}) | |`,
      '',
      `Load while measuring (1/5/15 min): ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' / ')}.`,
    ];
    const out = lines.join('\n') + '\n';
    process.stdout.write(out);
    await writeFile(join(import.meta.dirname, 'results', 'triggers.md'), out);
  } finally {
    await app.close();
    await svc.stop(0);
    await closeTransports(opts);
    await proxy.stop();
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
