/**
 * `npm run bench:node` — the Node.js builder's promise: an app with ~50 dependencies, one application file changed,
 * rebuilt and pushed. `kiln build --strategy node --push` (compiled CLI, a process) against current BuildKit
 * (`buildctl build --push`, buildkitd warm) building a well-written multi-stage Dockerfile (`COPY package*.json` →
 * `RUN --mount=type=cache npm ci --omit=dev` → `COPY .`), side by side in one run, medians. Also the bytes kiln
 * uploaded per round (from the registry log: blob uploads by digest, sizes from the manifest) against the app layer
 * + config + manifest. Targets: ratio ≤ 0.3×, bytes ≤ app layer + config + manifest.
 *
 * A second kiln column measures kiln the way BuildKit's figure is made — a client asking a warm daemon: `kiln serve`
 * (compiled, its own warm KILN_HOME) with a project whose image has `strategy: node`, the app in a git smart-HTTP
 * server (`git http-backend`); per round the app change is committed and pushed, then request → pushed digest
 * (POST the build; its final record read from the service's build feed, `GET /ui/events`, opened before the first
 * round — an event, not a poll, so the figure has no polling interval in it and the service no poll traffic beside
 * the build). Its warm worker takes the same fast path.
 *
 * The base image is Debian minbase (scripts/debian-rootfs.sh) + this machine's node and npm (and its CA bundle),
 * built and pushed by kiln. Environment: BENCH_ROUNDS (default 5); BENCH_ONLY=serve skips the CLI rounds (kiln serve
 * and BuildKit only); BENCH_DEBUG=1 runs the service with KILN_DEBUG=1 (epoch clock) and prints each serve round's
 * timeline (ms since the request: the service's and its worker's marks, registry requests). BENCH_SERVE_B="K=V …"
 * starts a second `kiln serve` with that environment (its own data dir, KILN_HOME and repository) and alternates the
 * two per round (order swapped every round): an A/B of the service path in one run. Needs root (buildkitd).
 * Output: a table.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { request } from 'undici';
import { startGitServer } from '../test/helpers/git-server.js';
import { startRegistry } from '../test/helpers/registry.js';
import { startBuildKit } from '../test/helpers/buildkit.js';
import { pushNodeBase } from '../test/helpers/node-base.js';
import { compiledCli, launcherSource, runCompiled } from './compiled.js';
import type { Build } from '../src/service/model.js';
import { openBuildFeed } from './feed.js';

const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const serveOnly = process.env.BENCH_ONLY === 'serve';
const DEBUG = process.env.BENCH_DEBUG === '1';
const REPO = dirname(dirname(fileURLToPath(import.meta.url)));

/** ~50 direct dependencies of a typical service (small and mid-sized, many with trees of their own). */
const DEPS = [
  'express',
  'cors',
  'helmet',
  'compression',
  'morgan',
  'cookie-parser',
  'body-parser',
  'dotenv',
  'debug',
  'ms',
  'uuid',
  'nanoid',
  'lodash',
  'dayjs',
  'luxon',
  'semver',
  'minimist',
  'commander',
  'yargs',
  'chalk',
  'qs',
  'mime',
  'mime-types',
  'async',
  'bluebird',
  'p-limit',
  'lru-cache',
  'node-cache',
  'jsonwebtoken',
  'bcryptjs',
  'validator',
  'joi',
  'zod',
  'ajv',
  'yaml',
  'js-yaml',
  'ini',
  'fs-extra',
  'graceful-fs',
  'glob',
  'winston',
  'pino',
  'ws',
  'eventemitter3',
  'escape-html',
  'he',
  'marked',
  'classnames',
  'axios',
  'tslib',
];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

function sh(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

interface Manifest {
  config: { digest: string; size: number };
  layers: { digest: string; size: number }[];
}

interface Service {
  /** POST a build of `project`, wait for its final record on the build feed; the build (throws unless it succeeded). */
  build(project: string): Promise<Build>;
  /** With BENCH_DEBUG: the service's debug lines since the last call (its workers' too: one stderr). */
  debugLines(): string[];
  stop(): Promise<void>;
}

/**
 * `kiln serve` from the compiled CLI (a `bin/kiln.js` beside it: the runner starts its workers from there) with
 * `config`, KILN_HOME `home`, an admin token made with `kiln serve token create`.
 */
async function startService(
  cli: string,
  work: string,
  home: string,
  config: string,
  extraEnv: Record<string, string> = {},
  name = 'svc',
): Promise<Service> {
  const root = dirname(dirname(cli));
  const bin = join(root, 'bin', 'kiln.js');
  await mkdir(dirname(bin), { recursive: true });
  await writeFile(bin, launcherSource(cli));
  // the web UI's bundle (what `npm run build` adds after tsc): `kiln serve` serves it
  const ui = (await import(pathToFileURL(join(root, 'service', 'ui', 'bundle.js')).href)) as {
    bundleUi(clientDir: string): Promise<unknown[]>;
    writeBundle(dir: string, files: unknown[]): Promise<void>;
  };
  await ui.writeBundle(join(root, 'service', 'ui', 'assets'), await ui.bundleUi(join(REPO, 'src/service/ui/client')));
  const dataDir = join(work, `${name}-data`);
  const cfg = join(work, `${name}.yaml`);
  await writeFile(cfg, config);
  const env = {
    ...process.env,
    KILN_HOME: home,
    ...(DEBUG ? { KILN_DEBUG: '1', KILN_DEBUG_CLOCK: 'epoch' } : {}),
    ...extraEnv,
  };
  const made = spawnSync(
    process.execPath,
    [bin, 'serve', 'token', 'create', '--role', 'admin', '--name', 'bench', '--data-dir', dataDir],
    {
      env,
      encoding: 'utf8',
    },
  );
  if (made.status !== 0) throw new Error(`kiln serve token create: ${made.stderr}`);
  const token = made.stdout.trim().split('\n').at(-1) as string;
  const proc = spawn(
    process.execPath,
    [bin, 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--config', cfg],
    {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let err = '';
  let debug: string[] = [];
  let partial = '';
  const exited = new Promise<void>((r) => proc.on('close', () => r()));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`kiln serve did not start:\n${err}`)), 60_000);
    proc.stderr.on('data', (d: Buffer) => {
      err = (err + d.toString()).slice(-65536);
      if (DEBUG) {
        const lines = (partial + d.toString()).split('\n');
        partial = lines.pop() ?? '';
        debug.push(...lines.filter((l) => l.startsWith('kiln: debug:')));
      }
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(t);
        resolve(m[1] as string);
      }
    });
    void exited.then(() => reject(new Error(`kiln serve exited:\n${err}`)));
  });
  const call = async <T>(
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
  ): Promise<{ status: number; body: T }> => {
    const r = await request(url + path, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? null : JSON.stringify(body),
    });
    return { status: r.statusCode, body: (await r.body.json()) as T };
  };
  const feed = await openBuildFeed(url, token);
  return {
    async build(project) {
      const r = await call<{ builds: Build[] }>('POST', `/api/v1/projects/${project}/builds`, { ref: 'main' });
      const id = r.body.builds?.[0]?.id;
      if (r.status !== 201 || !id) throw new Error(`POST builds: ${r.status} ${JSON.stringify(r.body)}`);
      const b = await feed.finalOf(id);
      if (b.phase !== 'succeeded' || !b.digest) {
        const log = await request(`${url}/api/v1/builds/${id}/log`, {
          headers: { authorization: `Bearer ${token}` },
        });
        throw new Error(`service build ${b.phase}: ${b.reason}\n${(await log.body.text()).slice(-3000)}`);
      }
      return b;
    },
    debugLines() {
      const d = debug;
      debug = [];
      return d;
    },
    async stop() {
      feed.close();
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(t);
    },
  };
}

async function main(): Promise<void> {
  const cli = compiledCli('bench-node-dist');
  // `kiln --version` reads package.json two levels above cli/main.js: give the compiled copy one
  const pkgCopy = join(dirname(dirname(dirname(cli))), 'package.json');
  if (!existsSync(pkgCopy)) await copyFile(join(REPO, 'package.json'), pkgCopy);
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-node-'));
  const home = join(work, 'home');
  const registry = await startRegistry();
  const R = registry.host;
  const buildkit = await startBuildKit({ insecureRegistries: [R] });
  const gitServer = await startGitServer();
  let service: Service | undefined;
  let serviceB: Service | undefined;
  const kiln = (args: string[]): Promise<string> =>
    runCompiled(cli, [...args, '--insecure-registry', R, '--progress', 'quiet'], { KILN_HOME: home });
  const manifest = (ref: string): Manifest =>
    JSON.parse(sh('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`])) as Manifest;
  try {
    const base = await pushNodeBase(work, R, home);

    // the app: ~50 dependencies resolved by the real npm, a few source files
    const src = join(work, 'app');
    await mkdir(join(src, 'lib'), { recursive: true });
    await writeFile(
      join(src, 'package.json'),
      JSON.stringify({ name: 'bench-app', version: '1.0.0', private: true, scripts: { start: 'node server.js' } }),
    );
    sh('npm', ['install', '--package-lock-only', '--no-audit', '--no-fund', '--ignore-scripts', ...DEPS], src);
    sh('rm', ['-rf', join(src, 'node_modules')]);
    await writeFile(join(src, 'server.js'), "require('express')().get('/', (q, s) => s.send(require('./lib/v')));\n");
    for (let i = 0; i < 20; i++) await writeFile(join(src, 'lib', `m${i}.js`), `module.exports = ${i};\n`);
    await writeFile(join(src, '.dockerignore'), 'node_modules\nDockerfile\n');
    const bkDockerfile = join(work, 'Dockerfile');
    await writeFile(
      bkDockerfile,
      [
        `FROM ${base} AS deps`,
        'WORKDIR /app',
        'COPY package.json package-lock.json ./',
        'RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev',
        `FROM ${base}`,
        'WORKDIR /app',
        'COPY --from=deps /app/node_modules ./node_modules',
        'COPY . .',
        'ENV NODE_ENV=production',
        'USER 1000:1000',
        'CMD ["node", "server.js"]',
        '',
      ].join('\n'),
    );
    const kilnRun = (): Promise<string> =>
      kiln(['build', '--strategy', 'node', '--base', base, '-t', `${R}/app-kiln:1`, '--push', src]);
    // the same app in a git repository, built by `kiln serve` (its own KILN_HOME, warmed by a first build)
    const repoFiles: Record<string, string> = {};
    for (const f of ['package.json', 'package-lock.json', 'server.js', '.dockerignore'])
      repoFiles[f] = await readFile(join(src, f), 'utf8');
    for (let i = 0; i < 20; i++) repoFiles[`lib/m${i}.js`] = `module.exports = ${i};\n`;
    repoFiles['lib/v.js'] = "module.exports = 'start';\n";
    await gitServer.createRepo('app', repoFiles);
    const svcConfig = (repo: string): string =>
      [
        `insecureRegistries: ["${R}"]`,
        'projects:',
        '  - name: app',
        `    repository: ${gitServer.repoUrl('app')}`,
        `    registry: ${R}/${repo}`,
        '    insecureRegistry: true',
        '    images:',
        '      - name: app',
        '        strategy: node',
        `        node: {base: "${base}"}`,
        '        tags: ["main"]',
        '',
      ].join('\n');
    service = await startService(cli, work, join(work, 'svc-home'), svcConfig('svc'));
    const envB = process.env.BENCH_SERVE_B;
    if (envB) {
      const env = Object.fromEntries(
        envB
          .split(/\s+/)
          .filter(Boolean)
          .map((kv) => kv.split('=', 2) as [string, string]),
      );
      serviceB = await startService(cli, work, join(work, 'svcb-home'), svcConfig('svcb'), env, 'svcb');
    }
    const svc = service;
    const bkRun = (): Promise<string> =>
      buildkit.build({ context: src, dockerfile: bkDockerfile, tag: `${R}/app-bk:1` });
    // warm both (the first builds install)
    if (!serveOnly) await kilnRun();
    await bkRun();
    await svc.build('app');
    await serviceB?.build('app');
    const ksB: number[] = [];
    const packages = Object.keys(
      (JSON.parse(sh('cat', [join(src, 'package-lock.json')])) as { packages: Record<string, unknown> }).packages,
    ).length;
    const k: number[] = [];
    const ks: number[] = [];
    const bk: number[] = [];
    const bytes: { uploaded: number; allowed: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      await writeFile(join(src, 'lib', 'v.js'), `module.exports = 'round ${i} ${Date.now()}';\n`);
      let t0 = performance.now();
      if (!serveOnly) {
        const before = registry.log().length;
        t0 = performance.now();
        await kilnRun();
        k.push(performance.now() - t0);
        await registry.waitForLog(/PUT \/v2\/app-kiln\/manifests\/1 /);
        const log = registry.log().slice(before);
        const m = manifest(`${R}/app-kiln:1`);
        const raw = sh('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${R}/app-kiln:1`]);
        const sizes = new Map([...m.layers, m.config].map((d) => [d.digest, d.size]));
        const up = [...log.matchAll(/PUT \/v2\/app-kiln\/blobs\/uploads\/\S*digest=sha256%3A([0-9a-f]{64})/g)].map(
          (x) => sizes.get(`sha256:${x[1]}`) ?? Number.NaN,
        );
        const manifestBytes = Buffer.byteLength(raw);
        bytes.push({
          uploaded: up.reduce((a, n) => a + n, 0) + manifestBytes,
          allowed: (m.layers.at(-1)?.size ?? 0) + m.config.size + manifestBytes,
        });
      }
      // the service: the change committed and pushed (untimed), then request → pushed digest
      await gitServer.commit('app', { 'lib/v.js': `module.exports = 'round ${i} ${Date.now()}';\n` }, `round ${i}`);
      const serveRound = async (s: Service, out: number[]): Promise<void> => {
        s.debugLines();
        const w0 = Date.now();
        t0 = performance.now();
        const b = await s.build('app');
        out.push(performance.now() - t0);
        if (DEBUG) {
          console.log(`\nserve${s === svc ? '' : ' B'} round ${i}: ${(performance.now() - t0).toFixed(0)} ms`);
          for (const l of s.debugLines()) {
            const m = /^kiln: debug: (?:at (\d+) ms: (.*)|(.*) \(at (\d+) ms\))$/.exec(l);
            if (!m) continue;
            const at = Number(m[1] ?? m[4]) - w0;
            console.log(`  ${at.toFixed(0).padStart(5)} ms  ${(m[2] ?? m[3] ?? '').slice(0, 140)}`);
          }
        }
        if (!b.stages?.some((st) => st.name.startsWith('[node] dependencies cached')))
          throw new Error(`the service's build did not take the fast path: ${JSON.stringify(b.stages)}`);
      };
      const order: [Service, number[]][] = serviceB
        ? [
            [svc, ks],
            [serviceB, ksB],
          ]
        : [[svc, ks]];
      if (i % 2 === 1) order.reverse();
      for (const [s, out] of order) await serveRound(s, out);
      t0 = performance.now();
      await bkRun();
      bk.push(performance.now() - t0);
    }
    const kLayers = serveOnly ? 0 : manifest(`${R}/app-kiln:1`).layers.length;
    const bkLayers = manifest(`${R}/app-bk:1`).layers.length;
    const row = (a: string, b: string): string => `| ${a} | ${b} |`;
    const load = sh('cat', ['/proc/loadavg']).split(' ').slice(0, 3).join(' ');
    console.log(
      `\nNode app: ${DEPS.length} direct dependencies, ${packages - 1} packages in the lockfile; one app file changed per round (${rounds} rounds; load average ${load})\n`,
    );
    console.log('| measure | value |\n| --- | --- |');
    if (!serveOnly)
      console.log(
        row(
          `kiln build --strategy node --push (process), median (${kLayers} layers)`,
          `${(median(k) / 1000).toFixed(2)} s`,
        ),
      );
    console.log(
      row(
        `BuildKit ${buildkit.version} multi-stage Dockerfile --push, median (${bkLayers} layers)`,
        `${(median(bk) / 1000).toFixed(2)} s`,
      ),
    );
    console.log(
      row(
        'kiln serve, warm worker: API request → pushed digest (git commit fetched), median',
        `${(median(ks) / 1000).toFixed(2)} s`,
      ),
    );
    if (!serveOnly)
      console.log(row('ratio kiln CLI / BuildKit', `${(median(k) / median(bk)).toFixed(2)}× (target ≤ 0.3×)`));
    if (serviceB) {
      console.log(
        row(
          `kiln serve B (${process.env.BENCH_SERVE_B ?? ''}), median`,
          `${(median(ksB) / 1000).toFixed(2)} s (${(median(ksB) / median(bk)).toFixed(2)}×)`,
        ),
      );
      console.log(row('kiln serve B rounds, s', ksB.map((x) => (x / 1000).toFixed(2)).join(', ')));
    }
    console.log(row('ratio kiln serve / BuildKit', `${(median(ks) / median(bk)).toFixed(2)}× (target ≤ 0.3×)`));
    // the round that uploaded most beyond what it had to (no initial value: a round with uploaded == allowed is
    // still reported as it is, not as 0 B)
    const worst = bytes.length
      ? bytes.reduce((a, x) => (x.uploaded - x.allowed > a.uploaded - a.allowed ? x : a))
      : undefined;
    if (worst)
      console.log(
        row(
          'kiln bytes uploaded per round (worst)',
          `${worst.uploaded} B (app layer + config + manifest: ${worst.allowed} B)`,
        ),
      );
    if (!serveOnly) console.log(row('kiln rounds, s', k.map((x) => (x / 1000).toFixed(2)).join(', ')));
    console.log(row('kiln serve rounds, s', ks.map((x) => (x / 1000).toFixed(2)).join(', ')));
    console.log(row('BuildKit rounds, s', bk.map((x) => (x / 1000).toFixed(2)).join(', ')));
  } finally {
    await service?.stop();
    await serviceB?.stop();
    await gitServer.stop();
    await buildkit.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
