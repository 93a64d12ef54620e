/**
 * `node --import tsx bench/isolation.ts`: kiln alone, the `userns` isolation level against `restricted`, on the
 * benchmark's own inputs (bench/inputs.ts) — no registry, no peers; each build writes to the local store.
 *
 *   W1 cold — 5,000 small source files + 20 × 5 MiB assets (WORKDIR, 2 COPY, 1 RUN), fresh KILN_HOME
 *   W1 warm — one source file changed, rebuilt
 *   W3      — one RUN creating 50,000 small files (base present)
 *   apt     — `apt-get update && apt-get install -y hello` on a debootstrap Debian base (present), from the mirror
 *   COMPAT  — the compatibility cases of the README table, each level, the measured step's own
 *             time and whether it worked: useradd + chown + su, npm ci (the host's node and npm in the Debian
 *             base, packages from the npm registry), pip install (Debian's python3-pip, a local package), a
 *             setuid binary used by a non-root USER (sudo), RUN --mount=type=cache|secret|bind, mknod, and
 *             RUN --network=none
 *
 * Both levels run as the ordinary user kilntest: userns as today (subordinate ids), restricted inside the emulated
 * Pod Security Standards restricted container (scripts/restricted-run.sh). The levels alternate within each round
 * (the order flips every round), rounds are BENCH_ROUNDS (default 3), BENCH_ONLY=W1,W3,APT,COMPAT picks workloads,
 * BENCH_COMPAT=npm,sudo picks compatibility cases by name, BENCH_SMALL=1 shrinks the inputs (harness check). kiln runs compiled (a private tsc output under .tmp/, so the
 * layer worker thread is used as in a release); the restricted helper is compiled once, outside the timings.
 * BENCH_DEBUG=1 runs kiln with KILN_DEBUG=1 and keeps each W1/W3 build's stderr (its timeline) in .tmp/bench-isolation-debug/.
 * KILN_PROOT=PATH (readable by kilntest) picks the restricted level's proot instead of kiln-proot on PATH.
 * Output: the table on stdout and in bench/results/isolation.md (partial runs: .tmp/bench-isolation.md).
 */
import { spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { chmod, chown, copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { touchW1Source, w1Dockerfile, w3Dockerfile, writeW1Context, type W1Options } from './inputs.js';
import { measure, median, type Measured } from './procs.js';
import { ensureRootlessUser, ROOTLESS_USER } from '../test/helpers/rootless.js';
import { LocalStore } from '../src/oci/store.js';
import { imageFromParts, layerFromUncompressed } from '../src/oci/image.js';
import { MediaType } from '../src/oci/mediatypes.js';
import { hostPlatform } from '../src/oci/platform.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..');
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3) || 3);
const ONLY = new Set((process.env.BENCH_ONLY ?? 'W1,W3,APT,COMPAT').split(',').map((s) => s.trim().toUpperCase()));
const SMALL = process.env.BENCH_SMALL === '1';
/** BENCH_DEBUG=1: builds run with KILN_DEBUG=1, each W1/W3 build's stderr kept in .tmp/bench-isolation-debug/. */
const DEBUG = process.env.BENCH_DEBUG === '1';
const W1: W1Options = SMALL ? { files: 200, dirs: 10, assets: 2, assetSize: 64 * 1024 } : {};
const W3_FILES = SMALL ? 2000 : 50_000;
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
type Level = 'userns' | 'restricted';
const LEVELS: Level[] = ['userns', 'restricted'];

function log(msg: string): void {
  process.stderr.write(`[bench isolation ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

let work: string;
let launcher: string;
let helper: string;
const { uid, gid } = ensureRootlessUser();

async function own(p: string): Promise<void> {
  spawnSync('chown', ['-R', `${uid}:${gid}`, p]);
}

/** Compile kiln (private output, so the repository's dist/ is left alone) and the restricted helper. */
async function prepare(): Promise<void> {
  work = await mkdtemp(join(REPO, '.tmp', 'bench-isolation-'));
  await chmod(work, 0o755);
  const out = join(work, 'dist');
  log('compiling kiln (tsc) and the restricted helper');
  spawnSync(
    process.execPath,
    [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(REPO, 'tsconfig.build.json'), '--outDir', out],
    { stdio: 'ignore' },
  );
  launcher = join(out, 'launch.mjs');
  // the CLI reads its version from the package.json above its dist/ directory
  await copyFile(join(REPO, 'package.json'), join(work, 'package.json'));
  await writeFile(
    launcher,
    `const { main } = await import('./cli/main.js');\nprocess.exitCode = await main(process.argv.slice(2));\n`,
  );
  helper = join(work, 'kiln-restricted');
  const cc = spawnSync(
    'cc',
    ['-O2', '-static', '-o', helper, join(REPO, 'src', 'sandbox', 'restricted', 'kiln-restricted.c')],
    {
      encoding: 'utf8',
    },
  );
  if (cc.status !== 0) throw new Error(`building the helper failed: ${cc.stderr}`);
  await own(work);
}

/** `kiln ARGS` as kilntest at `level`. */
function kiln(level: Level, home: string, args: string[]): Promise<Measured> {
  const env = [
    `KILN_HOME=${home}`,
    `HOME=${home}`,
    `PATH=${PATH}`,
    `KILN_RESTRICTED_HELPER=${helper}`,
    `KILN_ISOLATION=${level}`,
    // KILN_PROOT: the proot of the restricted level's RUN steps (an A/B of two builds; default kiln-proot on PATH)
    ...(process.env.KILN_PROOT ? [`KILN_PROOT=${process.env.KILN_PROOT}`] : []),
    ...(DEBUG ? ['KILN_DEBUG=1'] : []),
  ];
  const cmd = [process.execPath, launcher, ...args];
  if (level === 'userns') return measure('runuser', ['-u', ROOTLESS_USER, '--', 'env', ...env, ...cmd], { cwd: REPO });
  return measure(join(REPO, 'scripts', 'restricted-run.sh'), ['--', 'env', ...env, ...cmd], { cwd: REPO });
}

async function ok(level: Level, home: string, args: string[], what: string): Promise<Measured> {
  const m = await kiln(level, home, args);
  if (m.code !== 0)
    throw new Error(`${what} (${level}) failed (exit ${m.code}):\n${m.stderr.split('\n').slice(-30).join('\n')}`);
  return m;
}

/** With BENCH_DEBUG=1, keep a build's stderr (its KILN_DEBUG timeline) as .tmp/bench-isolation-debug/NAME.log. */
async function keepLog(name: string, m: Measured): Promise<void> {
  if (!DEBUG) return;
  const dir = join(REPO, '.tmp', 'bench-isolation-debug');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, `${name}.log`), m.stderr);
}

async function freshHome(name: string): Promise<string> {
  const home = join(work, name);
  await rm(home, { recursive: true, force: true });
  await mkdir(home);
  await chown(home, uid, gid);
  return home;
}

/** Seconds of the step whose progress name matches `re` ("#N DONE x.ys"). */
function stepSeconds(stderr: string, re: RegExp): number | undefined {
  let id: string | undefined;
  for (const line of stderr.split('\n')) {
    const start = /^#(\d+) (.*)$/.exec(line);
    if (start && !id && re.test(start[2] as string) && !/DONE|CACHED/.test(start[2] as string)) id = start[1];
    const done = /^#(\d+) DONE ([\d.]+)s$/.exec(line);
    if (done && done[1] === id) return Number(done[2]);
  }
  return undefined;
}

async function importDebian(home: string): Promise<void> {
  const made = spawnSync('bash', [join(REPO, 'scripts', 'debian-rootfs.sh')], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`scripts/debian-rootfs.sh failed: ${made.stderr}`);
  const tar = made.stdout.trim();
  const layer = layerFromUncompressed(async () => createReadStream(tar), { compression: 'gzip' });
  const p = hostPlatform();
  const raw = Buffer.from(
    JSON.stringify({
      architecture: p.architecture,
      os: p.os,
      config: { Env: [`PATH=${PATH}`], Cmd: ['bash'] },
      rootfs: { type: 'layers', diff_ids: [await layer.diffID()] },
    }),
  );
  const image = imageFromParts({
    mediaType: async () => MediaType.OCIManifest,
    rawConfig: async () => raw,
    layers: async () => [layer],
  });
  await (await LocalStore.open(home)).put(image, ['localhost/debian:bookworm']);
  await own(home);
}

interface CompatCase {
  name: string;
  /** The Dockerfile; `nonce` goes into the measured step only (the steps before it are cached after round 1). */
  dockerfile: (nonce: string) => string;
  /** The measured step (progress name). */
  step: RegExp;
  /** Files of the context (copied from the host when the value is a path). */
  files?: Record<string, { text: string } | { from: string }>;
  args?: string[];
}

const DEBIAN = 'FROM localhost/debian:bookworm\n';

function compatCases(work: string): CompatCase[] {
  return [
    {
      name: 'useradd + chown + su',
      dockerfile: (n) =>
        DEBIAN +
        `RUN echo ${n} && useradd -m -u 1234 alice && mkdir /data && chown -R alice:alice /data ` +
        `&& su alice -s /bin/sh -c 'touch /data/by-alice' && test "$(stat -c %U /data/by-alice)" = alice\n`,
      step: /useradd/,
    },
    {
      name: 'npm ci (express, from the npm registry)',
      dockerfile: (n) =>
        DEBIAN +
        // the host's CA bundle: where the registry is reached through a TLS-inspecting proxy, npm needs its CA
        'COPY node /usr/local/bin/node\nCOPY npm /usr/local/lib/node_modules/npm\nCOPY ca.crt /etc/kiln-host-ca.crt\n' +
        'ENV NODE_EXTRA_CA_CERTS=/etc/kiln-host-ca.crt\n' +
        'RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm\nWORKDIR /app\n' +
        `COPY package.json package-lock.json ./\nRUN echo ${n} && npm ci --no-audit --no-fund\n`,
      step: /npm ci/,
      files: {
        node: { from: process.execPath },
        'ca.crt': { from: process.env.NODE_EXTRA_CA_CERTS || '/etc/ssl/certs/ca-certificates.crt' },
        npm: { from: '/usr/lib/node_modules/npm' },
        'package.json': { from: join(work, 'npm', 'package.json') },
        'package-lock.json': { from: join(work, 'npm', 'package-lock.json') },
      },
    },
    {
      name: 'pip install (local package, Debian python3-pip)',
      dockerfile: (n) =>
        DEBIAN +
        'RUN apt-get update && apt-get install -y --no-install-recommends python3-pip python3-setuptools\n' +
        'COPY pkg /src/pkg\n' +
        `RUN echo ${n} && pip install --no-index --no-build-isolation --break-system-packages /src/pkg && kiln-hello\n`,
      step: /pip install/,
      files: {
        'pkg/pyproject.toml': {
          text:
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n' +
            '[project]\nname = "kiln-hello"\nversion = "1.0"\n[project.scripts]\nkiln-hello = "kiln_hello:main"\n',
        },
        'pkg/kiln_hello.py': { text: 'def main():\n    print("hello from pip")\n' },
      },
    },
    {
      name: 'setuid binary used by a non-root USER (sudo)',
      dockerfile: (n) =>
        DEBIAN +
        'RUN apt-get update && apt-get install -y --no-install-recommends sudo && useradd -m bob ' +
        "&& echo 'bob ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/bob\nUSER bob\n" +
        `RUN echo ${n} && test "$(sudo id -u)" = 0\n`,
      step: /sudo id/,
    },
    {
      name: 'RUN --mount=type=cache|secret|bind',
      dockerfile: (n) =>
        'FROM localhost/busybox:latest\n' +
        `RUN --mount=type=cache,target=/cache --mount=type=secret,id=s,target=/run/s --mount=type=bind,source=pkg,target=/b ` +
        `echo ${n} && cat /run/s > /dev/null && ls /b > /dev/null && touch /cache/x\n`,
      step: /--mount=type=cache/,
      files: { 'pkg/x': { text: 'x\n' } },
      args: ['--secret', `id=s,src=${join(work, 'secret')}`],
    },
    {
      name: 'device node (mknod c 1 3)',
      dockerfile: (n) => `FROM localhost/busybox:latest\nRUN echo ${n} && mknod /null2 c 1 3\n`,
      step: /mknod/,
    },
    {
      name: 'RUN --network=none',
      dockerfile: (n) => `FROM localhost/busybox:latest\nRUN --network=none echo ${n}\n`,
      step: /network=none/,
    },
  ];
}

interface Row {
  name: string;
  /** level → wall seconds per round */
  wall: Record<Level, number[]>;
  /** level → the RUN step's own seconds per round (when there is one) */
  step: Record<Level, number[]>;
}

function row(name: string): Row {
  return { name, wall: { userns: [], restricted: [] }, step: { userns: [], restricted: [] } };
}

async function compat(homes: Record<Level, string>): Promise<string[]> {
  // npm: a lock file made here, against the registry (the steps install from it)
  const npmDir = join(work, 'npm');
  await mkdir(npmDir, { recursive: true });
  await writeFile(
    join(npmDir, 'package.json'),
    JSON.stringify({ name: 'app', version: '1.0.0', dependencies: { express: '4.21.2' } }),
  );
  const lock = spawnSync('npm', ['install', '--package-lock-only', '--no-audit', '--no-fund'], {
    cwd: npmDir,
    encoding: 'utf8',
  });
  if (lock.status !== 0) throw new Error(`npm install --package-lock-only failed: ${lock.stderr}`);
  await writeFile(join(work, 'secret'), 's3cret\n');
  // BENCH_COMPAT=npm,sudo: only the cases whose name contains one of these
  const pick = (process.env.BENCH_COMPAT ?? '').split(',').filter(Boolean);
  const cases = compatCases(work).filter((c) => !pick.length || pick.some((p) => c.name.includes(p)));
  const results = new Map<string, Record<Level, { ok: boolean; why: string; s: number[] }>>();
  for (const c of cases) {
    const ctx = join(work, 'compat', c.name.replace(/[^a-z0-9]+/gi, '-'));
    await mkdir(ctx, { recursive: true });
    for (const [rel, f] of Object.entries(c.files ?? {})) {
      await mkdir(dirname(join(ctx, rel)), { recursive: true });
      if ('text' in f) await writeFile(join(ctx, rel), f.text);
      else spawnSync('cp', ['-a', f.from, join(ctx, rel)]);
    }
    await own(work);
    results.set(c.name, { userns: { ok: true, why: '', s: [] }, restricted: { ok: true, why: '', s: [] } });
    for (let round = 0; round < ROUNDS; round++) {
      for (const level of round % 2 === 0 ? LEVELS : [...LEVELS].reverse()) {
        await writeFile(join(ctx, 'Dockerfile'), c.dockerfile(`${level}-${round}-${Date.now()}`));
        await own(join(ctx, 'Dockerfile'));
        const m = await kiln(level, homes[level], ['build', '--progress', 'plain', ...(c.args ?? []), ctx]);
        const r = (results.get(c.name) as Record<Level, { ok: boolean; why: string; s: number[] }>)[level];
        if (m.code !== 0) {
          r.ok = false;
          r.why = (m.stderr.split('\n').find((l) => l.startsWith('kiln: ')) ?? `exit ${m.code}`).slice(6, 200);
        } else {
          const sec = stepSeconds(m.stderr, c.step);
          if (sec !== undefined) r.s.push(sec);
        }
        log(`compat ${c.name} (${level}): ${m.code === 0 ? 'ok' : 'failed: ' + r.why} ${(m.ms / 1000).toFixed(1)} s`);
      }
    }
  }
  const cell = (r: { ok: boolean; why: string; s: number[] }) =>
    r.ok ? `ok ${r.s.length ? median(r.s).toFixed(2) + ' s' : ''}` : `fails: ${r.why.replace(/\|/g, '\\|')}`;
  return [
    '',
    '| case | userns | restricted | restricted/userns |',
    '| --- | --- | --- | --- |',
    ...[...results].map(([name, r]) => {
      const ratio =
        r.userns.ok && r.restricted.ok && r.userns.s.length && r.restricted.s.length
          ? (median(r.restricted.s) / median(r.userns.s)).toFixed(2)
          : '–';
      return `| ${name.replace(/\|/g, '\\|')} | ${cell(r.userns)} | ${cell(r.restricted)} | ${ratio} |`;
    }),
    '',
  ];
}

async function main(): Promise<void> {
  await prepare();
  const ctxW1 = join(work, 'w1');
  await mkdir(ctxW1);
  await writeW1Context(ctxW1, W1);
  await writeFile(join(ctxW1, 'Dockerfile'), w1Dockerfile('localhost/busybox:latest'));
  const ctxW3 = join(work, 'w3');
  await mkdir(ctxW3);
  const ctxApt = join(work, 'apt');
  await mkdir(ctxApt);
  await own(work);
  const rows = {
    w1cold: row('W1 cold'),
    w1warm: row('W1 warm'),
    w3: row('W3 RUN 50,000 files'),
    apt: row('apt-get install hello (Debian base)'),
  };
  // long-lived homes for W3 and apt (bases present)
  const homes: Record<Level, string> = {
    userns: await freshHome('home-userns'),
    restricted: await freshHome('home-restricted'),
  };
  for (const level of LEVELS) {
    await ok(level, homes[level], ['bootstrap', 'busybox'], 'bootstrap');
    if (ONLY.has('APT') || ONLY.has('COMPAT')) {
      await importDebian(homes[level]);
      // the base's extraction happens once per home, as in a warm pod: not timed
      await writeFile(join(ctxApt, 'Dockerfile'), 'FROM localhost/debian:bookworm\nRUN true\n');
      await own(ctxApt);
      await ok(level, homes[level], ['build', '--progress', 'plain', ctxApt], 'apt warm-up');
    }
  }
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? LEVELS : [...LEVELS].reverse();
    for (const level of order) {
      if (ONLY.has('W1')) {
        // a new home per build, nothing deleted until the end: ext4 makes file creation right after mass
        // deletions quadratic (DEVELOPERS.md), which would bias whichever level runs next
        const home = await freshHome(`w1-${level}-${round}`);
        await ok(level, home, ['bootstrap', 'busybox'], 'bootstrap');
        const cold = await ok(level, home, ['build', '--progress', 'plain', '-t', 'w1:cold', ctxW1], 'W1 cold');
        rows.w1cold.wall[level].push(cold.ms / 1000);
        await touchW1Source(ctxW1, round * 2 + (level === 'userns' ? 0 : 1), W1);
        await own(ctxW1);
        const warm = await ok(level, home, ['build', '--progress', 'plain', '-t', 'w1:warm', ctxW1], 'W1 warm');
        rows.w1warm.wall[level].push(warm.ms / 1000);
        await keepLog(`w1-cold-${level}-${round}`, cold);
        await keepLog(`w1-warm-${level}-${round}`, warm);
        log(
          `round ${round + 1} ${level}: W1 cold ${(cold.ms / 1000).toFixed(2)} s, warm ${(warm.ms / 1000).toFixed(2)} s`,
        );
      }
      if (ONLY.has('W3')) {
        await writeFile(
          join(ctxW3, 'Dockerfile'),
          w3Dockerfile('localhost/busybox:latest', `${level}-${round}-${Date.now()}`, W3_FILES),
        );
        await own(ctxW3);
        const m = await ok(level, homes[level], ['build', '--progress', 'plain', '-t', 'w3:x', ctxW3], 'W3');
        rows.w3.wall[level].push(m.ms / 1000);
        await keepLog(`w3-${level}-${round}`, m);
        const s = stepSeconds(m.stderr, /RUN mkdir -p \/data/);
        if (s !== undefined) rows.w3.step[level].push(s);
        log(`round ${round + 1} ${level}: W3 ${(m.ms / 1000).toFixed(2)} s (RUN ${s ?? '?'} s)`);
      }
      if (ONLY.has('APT')) {
        const nonce = `${level}-${round}-${Date.now()}`;
        await writeFile(
          join(ctxApt, 'Dockerfile'),
          `FROM localhost/debian:bookworm\nRUN echo ${nonce} > /nonce && apt-get update && apt-get install -y --no-install-recommends hello\n`,
        );
        await own(ctxApt);
        const m = await ok(level, homes[level], ['build', '--progress', 'plain', '-t', 'apt:x', ctxApt], 'apt');
        rows.apt.wall[level].push(m.ms / 1000);
        const s = stepSeconds(m.stderr, /apt-get install/);
        if (s !== undefined) rows.apt.step[level].push(s);
        log(`round ${round + 1} ${level}: apt ${(m.ms / 1000).toFixed(2)} s (RUN ${s ?? '?'} s)`);
      }
    }
  }
  const fmt = (xs: number[]) =>
    xs.length ? `${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})` : '–';
  const ratio = (a: number[], b: number[]) => (a.length && b.length ? (median(b) / median(a)).toFixed(2) : '–');
  const lines = [
    '# kiln isolation levels: userns vs restricted',
    '',
    `- date: ${new Date().toISOString()}`,
    `- machine: ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, kernel ${release()}, node ${process.version}`,
    `- load at the end: ${spawnSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).stdout.trim()} (the machine is shared: compare within the run)`,
    `- rounds: ${ROUNDS}${SMALL ? ' (BENCH_SMALL inputs)' : ''}; seconds, median (min–max); both levels as kilntest, restricted in the emulated restricted container`,
    '',
    '| workload | userns s | restricted s | restricted/userns | RUN step userns s | RUN step restricted s | RUN restricted/userns |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...Object.values(rows)
      .filter((r) => r.wall.userns.length > 0)
      .map(
        (r) =>
          `| ${r.name} | ${fmt(r.wall.userns)} | ${fmt(r.wall.restricted)} | ${ratio(r.wall.userns, r.wall.restricted)} | ${fmt(r.step.userns)} | ${fmt(r.step.restricted)} | ${ratio(r.step.userns, r.step.restricted)} |`,
      ),
    '',
  ];
  if (ONLY.has('COMPAT')) lines.push("Compatibility (the measured step's own time, s):", ...(await compat(homes)));
  const text = lines.join('\n');
  process.stdout.write(text);
  const partial = SMALL || process.env.BENCH_ONLY !== undefined || process.env.BENCH_COMPAT !== undefined || ROUNDS < 3;
  const file = partial ? join(REPO, '.tmp', 'bench-isolation.md') : join(REPO, 'bench', 'results', 'isolation.md');
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, text);
  log(`wrote ${file}`);
  if (process.env.BENCH_KEEP !== '1') await rm(work, { recursive: true, force: true });
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
