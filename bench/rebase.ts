/**
 * `npm run bench:rebase` — `kiln rebase` of an image with a 100 MB app layer (COPY --link of random bytes) onto a
 * new base, against Debian's docker-registry on loopback: the wall time of the whole `kiln rebase … --push`
 * command (a process, node start-up included) and of the rebase itself (in process), and the blobs uploaded,
 * counted from the registry's access log (an upload is a POST …/blobs/uploads/ without `mount=`; a mount is not
 * an upload; the new config is the one expected). Target: ≤ 1 s and zero layer bytes uploaded.
 *
 * Environment: BENCH_ROUNDS (default 5), BENCH_MB (default 100). Output: a table on stdout.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compiledCli, runCompiled } from './compiled.js';
import { startRegistry, runKiln } from '../test/helpers/registry.js';
import { rebase } from '../src/rebase/rebase.js';
import { closeTransports } from '../src/registry/transport.js';

const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const mb = Number(process.env.BENCH_MB ?? 100);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-rebase-'));
  const home = join(work, 'home');
  const registry = await startRegistry();
  const R = registry.host;
  const kiln = async (args: string[]): Promise<string> => {
    const r = await runKiln([...args, '--insecure-registry', R], { KILN_HOME: home });
    if (r.code !== 0) throw new Error(`kiln ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const cliMain = compiledCli('bench-rebase-dist');
  try {
    const b = await runKiln(['bootstrap', 'busybox'], { KILN_HOME: home });
    if (b.code !== 0) throw new Error(b.stderr);
    for (const v of ['1', '2']) {
      const dir = join(work, `base${v}`);
      await mkdir(dir);
      await writeFile(join(dir, 'Dockerfile'), `FROM localhost/busybox\nRUN echo v${v} > /etc/base-version\n`);
      await kiln(['build', '--push', '-t', `${R}/base:v${v}`, dir]);
    }
    const app = join(work, 'app');
    await mkdir(app);
    await writeFile(join(app, 'blob.bin'), randomBytes(mb << 20));
    await writeFile(join(app, 'Dockerfile'), `FROM ${R}/base:v1\nCOPY --link blob.bin /app/\nCMD ["/bin/true"]\n`);
    await kiln(['build', '--push', '--compression-level', '1', '-t', `${R}/app:1`, app]);

    const cli: number[] = [];
    const inProcess: number[] = [];
    let uploads: string[] = [];
    let mounts = 0;
    let heads = 0;
    for (let i = 0; i < rounds; i++) {
      const before = registry.log().length;
      const t0 = performance.now();
      const target = `${R}/app:cli${i}`;
      await runCompiled(
        cliMain,
        [
          'rebase',
          `${R}/app:1`,
          '--base',
          `${R}/base:v${i % 2 ? 1 : 2}`,
          '-t',
          target,
          '--push',
          '--insecure-registry',
          R,
          '-q',
        ],
        { KILN_HOME: home },
      );
      cli.push(performance.now() - t0);
      await registry.waitForLog(new RegExp(`PUT /v2/app/manifests/cli${i} `));
      if (i === 0) {
        // the first rebase onto v2: the new base's layers reach the app repository
        const log = registry.log().slice(before).split('\n');
        uploads = log.filter((l) => /"POST \/v2\/app\/blobs\/uploads\/ /.test(l));
        mounts = log.filter((l) => /"POST \/v2\/app\/blobs\/uploads\/\?[^ ]*mount=/.test(l)).length;
        heads = log.filter((l) => /"HEAD \/v2\/app\/blobs\//.test(l)).length;
      }
      const opts = { insecureRegistries: [R] };
      const t1 = performance.now();
      await rebase(`${R}/app:1`, { base: `${R}/base:v${i % 2 ? 1 : 2}`, registry: opts, target: `${R}/app:fn${i}` });
      inProcess.push(performance.now() - t1);
      await closeTransports(opts);
    }
    const row = (k: string, v: string): string => `| ${k} | ${v} |`;
    console.log(`\nkiln rebase of an image with a ${mb} MB COPY --link layer onto a new base (${rounds} rounds)\n`);
    console.log('| measure | value |\n| --- | --- |');
    console.log(row('`kiln rebase --push` (process), median', `${(median(cli) / 1000).toFixed(2)} s`));
    console.log(row('rebase + push in process, median', `${(median(inProcess) / 1000).toFixed(3)} s`));
    console.log(row('blob uploads started (first round: the new config only)', String(uploads.length)));
    console.log(row('cross-repository mounts (first round: the new base layers)', String(mounts)));
    console.log(row('HEAD checks (first round)', String(heads)));
    console.log(row('layer bytes uploaded', uploads.length <= 1 ? '0 (one config blob)' : 'SOME — see the log'));
  } finally {
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
