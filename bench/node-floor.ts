/**
 * `node --import tsx bench/node-floor.ts` — the floor under bench/node.ts's `kiln serve` rebuild: the external parts
 * a rebuild cannot skip, each alone, so a note can say how far the 0.3× target is from what they cost.
 *
 * 1. The mirror fetch of one new commit (one file changed) from the tests' smart-HTTP server (`git http-backend` as
 *    a CGI program, test/helpers/git-server.ts, as bench/node.ts uses it): `git fetch` the way the service runs it
 *    (under `flock`, `--prune`, branches and tags, no auto-maintenance) against the service's in-process fetch
 *    (src/service/git/smart-http.ts), into two mirrors, alternating (order swapped every round); and the two
 *    protocol-v2 requests alone (ls-refs, then fetch with the new tip and the old one as have; the pack read and
 *    dropped): what the server costs.
 * 2. The registry calls of the push, with undici straight against the tests' registry (`docker-registry`): the app
 *    layer (26 KB) and the config uploaded in parallel (POST + PUT each), then the manifest PUT naming 90 layers —
 *    and the same without the POSTs (the service opens its upload sessions while git fetches).
 *
 * BENCH_ROUNDS (default 15). Output: medians (and min–max) in ms, with the load average.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { startGitServer } from '../test/helpers/git-server.js';
import { startRegistry } from '../test/helpers/registry.js';
import { baseEnv, configArgs, runGit } from '../src/service/git/exec.js';
import { smartFetch } from '../src/service/git/smart-http.js';

const rounds = Number(process.env.BENCH_ROUNDS ?? 15);

function stats(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  const med = s[Math.floor(s.length / 2)] as number;
  return `${med.toFixed(1)} ms (${(s[0] as number).toFixed(1)}–${(s.at(-1) as number).toFixed(1)})`;
}

function pkt(line: string): string {
  return (Buffer.byteLength(line) + 4).toString(16).padStart(4, '0') + line;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

async function gitFloor(work: string): Promise<Record<string, number[]>> {
  const server = await startGitServer();
  try {
    const files: Record<string, string> = {
      'package.json': '{"name":"app","version":"1.0.0","main":"server.js"}\n',
      'package-lock.json': JSON.stringify({ packages: randomBytes(60_000).toString('hex') }),
      'server.js': "require('./lib/v.js');\n",
      'lib/v.js': 'module.exports = 0;\n',
    };
    await server.createRepo('app', files);
    const url = server.repoUrl('app');
    const env = baseEnv();
    const mirrors = { git: join(work, 'git.git'), smart: join(work, 'smart.git') };
    for (const dir of Object.values(mirrors)) {
      await runGit(['init', '-q', '--bare', '--template=', dir], { env });
      const r = await runGit(['--git-dir', dir, 'fetch', '-q', url, '+refs/heads/*:refs/heads/*'], { env });
      if (r.code !== 0) throw new Error(r.stderr);
    }
    const gitFetch = async (): Promise<void> => {
      const r = await runGit(
        [
          ...configArgs(false),
          `--git-dir=${mirrors.git}`,
          'fetch',
          '--quiet',
          '--no-tags',
          '--no-write-fetch-head',
          '--no-recurse-submodules',
          '--no-auto-maintenance',
          '--prune',
          '--',
          url,
          '+refs/heads/*:refs/heads/*',
          '+refs/tags/*:refs/tags/*',
        ],
        { env, lock: `${mirrors.git}.lock` },
      );
      if (r.code !== 0) throw new Error(r.stderr);
    };
    const inProcess = async (): Promise<void> => {
      await smartFetch({
        url,
        gitDir: mirrors.smart,
        lock: `${mirrors.smart}.lock`,
        env,
        gitArgs: [...configArgs(false), `--git-dir=${mirrors.smart}`],
      });
    };
    const post = async (body: string): Promise<void> => {
      const r = await request(`${url}/git-upload-pack`, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-git-upload-pack-request',
          'git-protocol': 'version=2',
        },
        body,
      });
      if (r.statusCode !== 200) throw new Error(`HTTP ${r.statusCode}`);
      await r.body.arrayBuffer();
    };
    await inProcess(); // the capability GET, once per process
    const out: Record<string, number[]> = { 'git fetch': [], 'in-process fetch': [], 'the 2 requests alone': [] };
    let old = (await server.git('app', ['rev-parse', 'HEAD'])).trim();
    for (let i = 0; i < rounds; i++) {
      const tip = await server.commit('app', { 'lib/v.js': `module.exports = ${i + 1};\n` }, `round ${i}`);
      const pair: [string, () => Promise<void>][] = [
        ['git fetch', gitFetch],
        ['in-process fetch', inProcess],
      ];
      if (i % 2 === 1) pair.reverse();
      for (const [name, fn] of pair) out[name]?.push(await timed(fn));
      out['the 2 requests alone']?.push(
        await timed(async () => {
          await post(`${pkt('command=ls-refs\n')}0001${pkt('ref-prefix refs/heads/\n')}0000`);
          await post(
            `${pkt('command=fetch\n')}0001${pkt('thin-pack\n')}${pkt('no-progress\n')}${pkt('ofs-delta\n')}` +
              `${pkt(`want ${tip}\n`)}${pkt(`have ${old}\n`)}${pkt('done\n')}0000`,
          );
        }),
      );
      old = tip;
    }
    return out;
  } finally {
    await server.stop();
  }
}

async function registryFloor(): Promise<Record<string, number[]>> {
  const registry = await startRegistry();
  const base = `http://${registry.host}/v2/floor/app`;
  const digest = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  const open = async (): Promise<string> => {
    const r = await request(`${base}/blobs/uploads/`, { method: 'POST' });
    await r.body.dump();
    if (r.statusCode !== 202) throw new Error(`POST: HTTP ${r.statusCode}`);
    const loc = String(r.headers.location);
    return loc.startsWith('http') ? loc : `http://${registry.host}${loc}`;
  };
  const put = async (session: string, blob: Buffer): Promise<void> => {
    const u = new URL(session);
    u.searchParams.set('digest', digest(blob));
    const r = await request(u.href, {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream' },
      body: blob,
    });
    await r.body.dump();
    if (r.statusCode !== 201) throw new Error(`PUT: HTTP ${r.statusCode}`);
  };
  try {
    // 89 dependency layers pushed once (as the first build pushed them)
    const layers: { digest: string; size: number }[] = [];
    for (let i = 0; i < 89; i++) {
      const blob = randomBytes(2048);
      await put(await open(), blob);
      layers.push({ digest: digest(blob), size: blob.length });
    }
    const out: Record<string, number[]> = {
      'blob uploads (POST + PUT, 2 in parallel) + manifest PUT': [],
      'blob PUTs (sessions opened ahead) + manifest PUT': [],
    };
    for (let i = 0; i < rounds * 2; i++) {
      const ahead = i % 2 === 1;
      const app = randomBytes(26_000);
      const sessions = ahead ? await Promise.all([open(), open()]) : undefined;
      const all = [...layers, { digest: digest(app), size: app.length }];
      const config = Buffer.from(JSON.stringify({ rootfs: { diff_ids: all.map((l) => l.digest) }, round: i }));
      const manifest = JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digest(config), size: config.length },
        layers: all.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...l })),
      });
      const ms = await timed(async () => {
        await Promise.all([
          (async () => put(sessions?.[0] ?? (await open()), app))(),
          (async () => put(sessions?.[1] ?? (await open()), config))(),
        ]);
        const r = await request(`${base}/manifests/main`, {
          method: 'PUT',
          headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
          body: manifest,
        });
        await r.body.dump();
        if (r.statusCode !== 201) throw new Error(`manifest PUT: HTTP ${r.statusCode}`);
      });
      out[
        ahead
          ? 'blob PUTs (sessions opened ahead) + manifest PUT'
          : 'blob uploads (POST + PUT, 2 in parallel) + manifest PUT'
      ]?.push(ms);
    }
    return out;
  } finally {
    await registry.stop();
  }
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-floor-'));
  await mkdir(work, { recursive: true });
  const load0 = loadavg().map((l) => l.toFixed(2));
  try {
    const git = await gitFloor(work);
    const reg = await registryFloor();
    const load1 = loadavg().map((l) => l.toFixed(2));
    console.log(
      `\nFloor of a serve rebuild (${rounds} rounds; load average ${load0.join(' ')} → ${load1.join(' ')})\n`,
    );
    console.log('| part | median (min–max) |\n| --- | --- |');
    for (const [name, xs] of Object.entries({ ...git, ...reg })) console.log(`| ${name} | ${stats(xs)} |`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
