/**
 * `node --import tsx bench/fresh-pod.ts`: W1 warm in a fresh KILN_HOME with the registry cache — what a build pod
 * does (`kiln build --push --cache-from X --cache-to X,mode=max` with KILN_EPHEMERAL_HOME=1, nothing local) — against the local warm build of
 * the same change, without a cluster (bench/k8s-pods.ts runs the real pods). KILN_BINS=name=path/to/kiln.js,…
 * compares checkouts alternately (default: this one); ROUNDS (default 3); ISO=restricted|userns sets --isolation;
 * ISO=restricted gives the fresh builds the warm home's compiled helper as KILN_RESTRICTED_HELPER (a pod has kiln's
 * image's); CHECKOUT=1 gives each fresh build a copy of the context (new inodes and times, as the pod's git checkout);
 * SHOW=1 prints the last fresh build's timeline (KILN_DEBUG); LOGS=DIR keeps every build's KILN_DEBUG log there.
 * Prints one line per round and the medians.
 */
import { cp, mkdir, mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { startRegistry } from '../test/helpers/registry.js';
import { makeBusyboxImage } from '../test/helpers/images.js';
import { push } from '../src/registry/push.js';
import { closeTransports } from '../src/registry/transport.js';
import { touchW1Source, w1Dockerfile, writeW1Context } from './inputs.js';

const BINS = (process.env.KILN_BINS ?? `kiln=${join(import.meta.dirname, '..', 'bin', 'kiln.js')}`)
  .split(',')
  .map((x) => x.split('=') as [string, string]);
const ISO = process.env.ISO ? ['--isolation', process.env.ISO] : [];
const work = await mkdtemp(join(tmpdir(), 'k8sw-'));
const reg = await startRegistry();
const host = reg.host;
const load = async () => (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
try {
  const ropts = { insecureRegistries: [host] };
  await push(await makeBusyboxImage({ kind: 'docker' }), `${host}/bench/busybox:1`, ropts);
  await closeTransports(ropts);
  const w1 = join(work, 'w1');
  await mkdir(w1);
  await writeW1Context(w1, {});
  await writeFile(join(w1, 'Dockerfile'), w1Dockerfile(`${host}/bench/busybox:1`));
  // a fresh build runs as the build pod does: its KILN_HOME (an emptyDir) is thrown away after it
  const run = (
    bin: string,
    home: string,
    tag: string,
    extra: string[],
    ctx = w1,
    env: Record<string, string> = {},
  ): { ms: number; err: string } => {
    const t0 = performance.now();
    const r = spawnSync(
      process.execPath,
      [bin, 'build', '--push', '-t', tag, '--progress', 'plain', '--insecure-registry', host, ...ISO, ...extra, ctx],
      {
        env: { ...process.env, KILN_HOME: home, KILN_DEBUG: '1', ...env },
        encoding: 'utf8',
        maxBuffer: 1 << 28,
      },
    );
    const ms = performance.now() - t0;
    if (r.status !== 0) throw new Error(r.stderr.slice(-3000) + r.stdout);
    return { ms, err: r.stderr };
  };
  // The restricted level's helper: kiln's image carries it pre-built (deploy/image/Dockerfile sets
  // KILN_RESTRICTED_HELPER); a fresh home here takes the one the warm home compiled, as a pod takes the image's,
  // instead of compiling it (~1.3 s with cc) in every fresh build.
  const podHelper = (warmHome: string): Record<string, string> => {
    if (process.env.ISO !== 'restricted' || process.env.KILN_RESTRICTED_HELPER) return {};
    const bin = join(warmHome, 'bin');
    const helper = readdirSync(bin).find((f) => /^kiln-restricted-[0-9a-f]+$/.test(f));
    return helper ? { KILN_RESTRICTED_HELPER: join(bin, helper) } : {};
  };
  const rounds = Number(process.env.ROUNDS ?? 3);
  for (const [name, bin] of BINS) {
    run(bin, join(work, `home-${name}`), `${host}/w1/${name}:1`, [
      '--cache-to',
      `type=registry,ref=${host}/w1/${name}-cache:1,mode=max`,
    ]);
  }
  const res: Record<string, { warm: number[]; fresh: number[] }> = {};
  for (let r = 0; r < rounds; r++) {
    for (const [name, bin] of BINS) {
      await touchW1Source(w1, 300 + r * 10 + name.length, {});
      const warm = run(bin, join(work, `home-${name}`), `${host}/w1/${name}:w${r}`, []);
      const fresh = join(work, `fresh-${name}-${r}`);
      const cache = `type=registry,ref=${host}/w1/${name}-cache:1`;
      // CHECKOUT=1: the pod's context is a new checkout (new inodes and times), not the warm build's files
      const checkout = process.env.CHECKOUT ? join(work, `checkout-${name}-${r}`) : w1;
      if (checkout !== w1) await cp(w1, checkout, { recursive: true });
      const f = run(
        bin,
        fresh,
        `${host}/w1/${name}-pod:w${r}`,
        ['--cache-from', cache, '--cache-to', `${cache},mode=max`],
        checkout,
        { KILN_EPHEMERAL_HOME: '1', ...podHelper(join(work, `home-${name}`)) },
      );
      await rm(fresh, { recursive: true, force: true });
      if (checkout !== w1) await rm(checkout, { recursive: true, force: true });
      (res[name] ??= { warm: [], fresh: [] }).warm.push(warm.ms);
      res[name].fresh.push(f.ms);
      console.log(
        `round ${r} ${name}: local warm ${(warm.ms / 1000).toFixed(2)} s, fresh home --cache-from/--cache-to ${(f.ms / 1000).toFixed(2)} s, ratio ${(f.ms / warm.ms).toFixed(2)} (load ${await load()})`,
      );
      if (process.env.LOGS) {
        await writeFile(join(process.env.LOGS, `warm-${name}-${r}.log`), warm.err);
        await writeFile(join(process.env.LOGS, `fresh-${name}-${r}.log`), f.err);
      }
      if (r === rounds - 1 && process.env.SHOW)
        process.stderr.write(
          f.err
            .split('\n')
            .filter((l) => /at \d+ ms: (#|engine|exported|command|layer)/.test(l))
            .join('\n') + '\n',
        );
    }
  }
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
  for (const [name, v] of Object.entries(res))
    console.log(
      `${name}: median local warm ${(med(v.warm) / 1000).toFixed(2)} s, fresh ${(med(v.fresh) / 1000).toFixed(2)} s, ratio of medians ${(med(v.fresh) / med(v.warm)).toFixed(2)}`,
    );
} finally {
  await reg.stop();
  await rm(work, { recursive: true, force: true });
}
