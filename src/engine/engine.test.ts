/**
 * Engine unit tests: real Dockerfile parsing, real layer writing and extraction (LocalLayerStore), real cache, with
 * a simple snapshotter (the step's root is its upper dir) and a scripted executor instead of the namespace
 * sandbox, so they run anywhere. Integration tests (test/integration/build-*.test.ts) cover the real sandbox.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile, readFile, cp, readdir, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { parseDockerfile } from '../dockerfile/convert.js';
import { BlobDir } from '../oci/blobs.js';
import { sha256 } from '../oci/digest.js';
import type { Image } from '../oci/types.js';
import { hostPlatform } from '../oci/platform.js';
import { BuildCache } from '../cache/cache.js';
import { makeBusyboxImage } from '../../test/helpers/images.js';
import { runEngine, type EngineRequest, type EngineDeps, neededStages, lowerDirs } from './engine.js';
import { LocalLayerStore } from './local.js';
import { LocalFileCopier } from './copy.js';
import { loadContext } from './context.js';
import { parseTrigger } from './build.js';
import type { CopyRequest, CopySource, ProcessSpec, Snapshot } from './ports.js';

let home: string;
let base: Image;

before(async () => {
  home = await mkdtemp(join(tmpdir(), 'kiln-engine-test-'));
  base = await makeBusyboxImage({ config: { Cmd: ['sh'], Env: ['PATH=/usr/bin:/bin'] } });
});
after(async () => {
  await rm(home, { recursive: true, force: true });
});

interface Harness {
  deps: EngineDeps;
  runs: ProcessSpec[];
  log: string[];
}

/** Scripted executor: the shell command is `;`-separated `write PATH TEXT`, `echo TEXT`, `exit N`. */
function harness(name: string): Harness {
  const dir = join(home, name);
  const runs: ProcessSpec[] = [];
  const log: string[] = [];
  let n = 0;
  const deps: EngineDeps = {
    executor: {
      async run(spec) {
        runs.push(spec);
        const script = spec.argv[spec.argv.length - 1] ?? '';
        for (const part of script.split(';').map((s) => s.trim())) {
          const [cmd, ...rest] = part.split(' ');
          if (cmd === 'write') {
            const p = join(spec.rootfs, rest[0] as string);
            await mkdir(dirname(p), { recursive: true });
            await writeFile(p, rest.slice(1).join(' '));
          } else if (cmd === 'echo') spec.onStdout?.(Buffer.from(rest.join(' ') + '\n'));
          else if (cmd === 'exit') return { exitCode: Number(rest[0]) };
        }
        return { exitCode: 0 };
      },
    },
    snapshotter: {
      async prepare(): Promise<Snapshot> {
        const upper = join(dir, 'snap', String(++n));
        await mkdir(upper, { recursive: true });
        return { root: upper, upper, release: async () => rm(upper, { recursive: true, force: true }) };
      },
    },
    layers: new LocalLayerStore({ layersDir: join(dir, 'layers'), blobs: new BlobDir(join(dir, 'blobs')) }),
    bases: {
      async resolve(ref) {
        if (ref !== 'localhost/busybox:latest' && ref !== 'busybox') {
          throw Object.assign(new Error(`${ref}: not found`), {});
        }
        return { name: 'localhost/busybox:latest', digest: await base.digest(), image: base };
      },
    },
    cache: new BuildCache(join(dir, 'cache')),
    progress: {
      start: (id, nm) => log.push(`start ${id} ${nm}`),
      log: (id, _s, b) => log.push(`log ${id} ${b.toString().trim()}`),
      cached: (id) => log.push(`cached ${id}`),
      done: (id) => log.push(`done ${id}`),
      error: (id, m) => log.push(`error ${id} ${m}`),
      warn: (m) => log.push(`warn ${m}`),
    },
    copier: {
      async checksum(req: CopyRequest, src: CopySource) {
        const parts: string[] = [];
        for (const s of req.sources) parts.push(s + ':' + (await readFile(join(src.dir, s), 'utf8')));
        return sha256(parts.join('\n'));
      },
      async apply(req: CopyRequest, src: CopySource, root: string) {
        for (const s of req.sources) {
          const dest = req.dest.endsWith('/') ? join(req.dest, s) : req.dest;
          const abs = join(root, dest.startsWith('/') ? dest : join(req.workdir, dest));
          await mkdir(dirname(abs), { recursive: true });
          await cp(join(src.dir, s), abs);
        }
      },
    },
    contextDir: join(dir, 'context'),
    cacheMountsDir: join(dir, 'cache-mounts'),
    tmpDir: join(dir, 'tmp'),
    parseTrigger,
  };
  return { deps, runs, log };
}

function request(dockerfile: string, over: Partial<EngineRequest> = {}): EngineRequest {
  const p = parseDockerfile(dockerfile);
  return {
    stages: p.stages,
    metaArgs: p.globalArgs,
    file: 'Dockerfile',
    buildArgs: new Map(),
    labels: {},
    platform: hostPlatform(),
    noCache: false,
    pull: false,
    network: 'host',
    secrets: [],
    ...over,
  };
}

describe('engine', () => {
  test('scratch build: config, history and layers like BuildKit', async () => {
    const h = harness('scratch');
    const res = await runEngine(
      request(
        'FROM scratch\nENV A=b C=d\nWORKDIR /app\nRUN write /app/out hello\nLABEL x=1\nEXPOSE 80 53/udp\nUSER 1000:1000\nCMD ["run", "x"]\n',
      ),
      h.deps,
    );
    const c = res.config;
    assert.deepEqual(c.config.Env, ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'A=b', 'C=d']);
    assert.equal(c.config.WorkingDir, '/app');
    assert.deepEqual(c.config.Cmd, ['run', 'x']);
    assert.equal(c.config.ArgsEscaped, true);
    assert.equal(c.config.User, '1000:1000');
    assert.deepEqual(c.config.ExposedPorts, { '53/udp': {}, '80/tcp': {} });
    assert.deepEqual(
      c.history.map((x) => [x.created_by, x.empty_layer ?? false, x.comment]),
      [
        ['ENV A=b C=d', true, 'buildkit.dockerfile.v0'],
        ['WORKDIR /app', false, 'buildkit.dockerfile.v0'],
        ['RUN /bin/sh -c write /app/out hello # buildkit', false, 'buildkit.dockerfile.v0'],
        ['LABEL x=1', true, 'buildkit.dockerfile.v0'],
        ['EXPOSE 53/udp 80/tcp', true, 'buildkit.dockerfile.v0'],
        ['USER 1000:1000', true, 'buildkit.dockerfile.v0'],
        ['CMD ["run" "x"]', true, 'buildkit.dockerfile.v0'],
      ],
    );
    assert.equal(c.rootfs.diff_ids.length, 2);
    assert.equal(res.layers.length, 2);
    // every history entry has a time and the config's created is the last one
    assert.ok(c.history.every((x) => typeof x.created === 'string'));
    assert.equal(c.created, c.history[c.history.length - 1]?.created);
    // top-level keys sorted like BuildKit's exporter writes them
    const raw = JSON.parse(res.rawConfig.toString()) as Record<string, unknown>;
    assert.deepEqual(Object.keys(raw), ['architecture', 'config', 'created', 'history', 'os', 'rootfs']);
    assert.equal(h.runs.length, 1);
    assert.equal(h.runs[0]?.cwd, '/app');
    assert.equal(h.runs[0]?.user, '');
    assert.deepEqual(h.runs[0]?.argv, ['/bin/sh', '-c', 'write /app/out hello']);
  });

  test('rebuild is fully cached with the same config digest; --no-cache reruns', async () => {
    const h = harness('cache');
    const df = 'FROM busybox\nRUN write /a 1\nRUN echo hi; write /b 2\nCMD ["x"]\n';
    const first = await runEngine(request(df), h.deps);
    assert.equal(h.runs.length, 2);
    assert.ok(
      h.log.some((l) => l.endsWith(' hi')),
      'RUN output is streamed',
    );
    h.log.length = 0;
    const second = await runEngine(request(df), h.deps);
    assert.equal(h.runs.length, 2, 'no RUN executed on rebuild');
    assert.equal(h.log.filter((l) => l.startsWith('cached')).length, 2);
    assert.equal(sha256(second.rawConfig), sha256(first.rawConfig));
    await runEngine(request(df, { noCache: true }), h.deps);
    assert.equal(h.runs.length, 4);
    // changing an earlier step invalidates the later ones
    await runEngine(request('FROM busybox\nRUN write /a 2\nRUN echo hi; write /b 2\nCMD ["x"]\n'), h.deps);
    assert.equal(h.runs.length, 6);
  });

  test('FROM an image keeps its history and env, ENTRYPOINT resets an inherited CMD', async () => {
    const h = harness('base');
    const res = await runEngine(request('FROM busybox\nENTRYPOINT ["/bin/sh"]\n'), h.deps);
    const baseCfg = await base.config();
    assert.equal(res.config.history.length, (baseCfg.history ?? []).length + 1);
    assert.deepEqual(res.config.history[0], baseCfg.history?.[0]);
    assert.deepEqual(res.config.config.Env, ['PATH=/usr/bin:/bin']);
    assert.deepEqual(res.config.config.Entrypoint, ['/bin/sh']);
    assert.equal(res.config.config.Cmd, undefined);
    assert.equal(res.config.history.at(-1)?.created_by, 'ENTRYPOINT ["/bin/sh"]');
    assert.deepEqual(res.base, { name: 'localhost/busybox:latest', digest: await base.digest() });
    assert.deepEqual(res.config.rootfs.diff_ids, baseCfg.rootfs.diff_ids);
  });

  test('build args: RUN history gets the |N prefix, --build-arg overrides, global args expand FROM', async () => {
    const h = harness('args');
    const df = 'ARG IMG=busybox\nFROM ${IMG}\nARG V=1\nARG W\nRUN write /v $V\n';
    const res = await runEngine(
      request(df, { buildArgs: new Map([['V', '2']]), historyStyle: 'buildkit-0.8' }),
      h.deps,
    );
    const runH = res.config.history.at(-1);
    assert.equal(runH?.created_by, 'RUN |2 V=2 W= /bin/sh -c write /v $V # buildkit');
    assert.ok(h.runs[0]?.env.includes('V=2'));
    // BuildKit v0.8 records the ARG as declared; current BuildKit (the default) the value in effect
    assert.deepEqual(
      res.config.history.slice(-3, -1).map((x) => x.created_by),
      ['ARG V=1', 'ARG W'],
    );
    const latest = await runEngine(request(df, { buildArgs: new Map([['V', '2']]) }), harness('args-latest').deps);
    assert.deepEqual(
      latest.config.history.slice(-3, -1).map((x) => x.created_by),
      ['ARG V=2', 'ARG W'],
    );
    assert.ok(!(res.config.config.Env ?? []).some((e) => e.startsWith('V=')), 'ARGs are not in the image env');
  });

  test('failing RUN: one line with Dockerfile:N, the command and the exit code; nothing cached', async () => {
    const h = harness('fail');
    const df = 'FROM busybox\nRUN write /x 1\n\nRUN exit 3\n';
    await assert.rejects(runEngine(request(df), h.deps), (e: Error) => {
      assert.equal(
        e.message,
        'Dockerfile:4: RUN exit 3: process "/bin/sh -c exit 3" did not complete successfully: exit code: 3',
      );
      return true;
    });
    const before = h.runs.length;
    await assert.rejects(runEngine(request(df), h.deps));
    assert.equal(h.runs.length, before + 1, 'the failed step reran, the good one was cached');
  });

  test('multi-stage: only needed stages are built, COPY --from reads the stage', async () => {
    const h = harness('multi');
    const df = [
      'FROM busybox AS build',
      'RUN write /out/app binary',
      'FROM busybox AS unused',
      'RUN write /nope x',
      'FROM scratch',
      'COPY --from=build /out/app /app',
      'CMD ["/app"]',
      '',
    ].join('\n');
    assert.deepEqual(neededStages(request(df)), [0, 2]);
    // the fake snapshotter shows only the upper dir, so COPY --from of the build stage reads an empty dir: point
    // the copier at the stage's layer dir instead
    const layers = h.deps.layers;
    h.deps.snapshotter = {
      async prepare(lowers) {
        const root = await mkdtemp(join(home, 'snap-'));
        for (const l of lowers) await cp(l, root, { recursive: true, verbatimSymlinks: true });
        return { root, upper: root, release: async () => rm(root, { recursive: true, force: true }) };
      },
    };
    void layers;
    const res = await runEngine(request(df), h.deps);
    assert.equal(h.runs.length, 1);
    assert.deepEqual(h.runs[0]?.argv, ['/bin/sh', '-c', 'write /out/app binary']);
    assert.equal(res.config.history.at(-2)?.created_by, 'COPY /out/app /app # buildkit');
    assert.equal(res.layers.length, 1);
  });

  test('--target picks a stage; unknown target is a clear error', async () => {
    const h = harness('target');
    const df = 'FROM busybox AS a\nRUN write /a 1\nFROM busybox AS b\nRUN write /b 1\n';
    await runEngine(request(df, { target: 'a' }), h.deps);
    assert.equal(h.runs.length, 1);
    assert.deepEqual(h.runs[0]?.argv.at(-1), 'write /a 1');
    await assert.rejects(runEngine(request(df, { target: 'c' }), h.deps), /target stage "c" could not be found/);
  });

  test('SOURCE_DATE_EPOCH: new history entries and created are the epoch, base entries untouched', async () => {
    const h = harness('sde');
    const res = await runEngine(
      request('FROM busybox\nRUN write /a 1\nENV X=1\n', { sourceDateEpoch: 1700000000 }),
      h.deps,
    );
    const baseN = ((await base.config()).history ?? []).length;
    assert.equal(res.config.created, '2023-11-14T22:13:20Z');
    for (const x of res.config.history.slice(baseN)) assert.equal(x.created, '2023-11-14T22:13:20Z');
    assert.deepEqual(res.config.history[0], (await base.config()).history?.[0]);
  });

  test('ONBUILD: recorded in the config, triggers run in a stage built FROM it', async () => {
    const h = harness('onbuild');
    const df = 'FROM busybox AS parent\nONBUILD RUN write /triggered yes\nFROM parent\nRUN write /after 1\n';
    const res = await runEngine(request(df), h.deps);
    assert.deepEqual(
      h.runs.map((r) => r.argv.at(-1)),
      ['write /triggered yes', 'write /after 1'],
    );
    assert.equal(res.config.config.OnBuild, undefined);
    const parentOnly = await runEngine(request(df, { target: 'parent' }), harness('onbuild2').deps);
    assert.deepEqual(parentOnly.config.config.OnBuild, ['RUN write /triggered yes']);
  });

  test('missing base image: one line naming the FROM line', async () => {
    const h = harness('missing');
    await assert.rejects(runEngine(request('FROM nothere:1\n'), h.deps), /^KilnError: Dockerfile:1: FROM nothere:1: /);
  });

  test('secrets are mounted, never in history or cache key material', async () => {
    const h = harness('secret');
    const file = join(home, 'secret.txt');
    await writeFile(file, 's3cr3t');
    const res = await runEngine(
      request('FROM busybox\nRUN --mount=type=secret,id=tok,env=TOKEN echo using\n', {
        secrets: [{ id: 'tok', src: file }],
      }),
      h.deps,
    );
    const spec = h.runs[0];
    assert.deepEqual(spec?.mounts, [
      {
        type: 'secret',
        id: 'tok',
        source: file,
        target: '',
        readonly: true,
        mode: 0o400,
        uid: 0,
        gid: 0,
        env: 'TOKEN',
      },
    ]);
    assert.ok(!spec?.env.some((e) => e.includes('s3cr3t')));
    assert.ok(!JSON.stringify(res.config).includes('s3cr3t'));
    assert.equal(res.config.history.at(-1)?.created_by, 'RUN /bin/sh -c echo using # buildkit');
  });
});

describe('engine: RUN details', () => {
  test('heredoc RUN runs its content; proxy build args reach RUN but not history', async () => {
    const h = harness('heredoc');
    const res = await runEngine(
      request('FROM busybox\nRUN <<EOF\nwrite /h 1\nEOF\n', { buildArgs: new Map([['HTTP_PROXY', 'http://p:3128']]) }),
      h.deps,
    );
    assert.deepEqual(h.runs[0]?.argv, ['/bin/sh', '-c', 'write /h 1\n']);
    assert.ok(h.runs[0]?.env.includes('HTTP_PROXY=http://p:3128'));
    assert.equal(res.config.history.at(-1)?.created_by, 'RUN /bin/sh -c write /h 1\n # buildkit');
    assert.ok(!h.log.some((l) => l.startsWith('warn ')), 'proxy args are never reported as unused');
  });

  test('a heredoc with a shebang runs as a file mounted from /dev/pipes', async () => {
    const h = harness('shebang');
    const res = await runEngine(request('FROM busybox\nRUN <<EOF\n#!/bin/sh\necho hi\nEOF\n'), h.deps);
    assert.equal(res.config.history.at(-1)?.created_by, 'RUN /bin/sh -c /dev/pipes/EOF # buildkit');
    const spec = h.runs[0];
    assert.deepEqual(spec?.argv, ['/bin/sh', '-c', '/.kiln-pipes/EOF']);
    const m = spec?.mounts.find((x) => x.target === '/.kiln-pipes/EOF');
    assert.equal(m?.type, 'bind');
    assert.equal(m?.readonly, true);
  });

  test('unused build args are warned about once', async () => {
    const h = harness('unused');
    await runEngine(
      request('FROM busybox\nARG USED\n', {
        buildArgs: new Map([
          ['USED', '1'],
          ['NOPE', '2'],
        ]),
      }),
      h.deps,
    );
    assert.deepEqual(
      h.log.filter((l) => l.startsWith('warn ')),
      ['warn One or more build-args [NOPE] were not consumed'],
    );
  });
});

describe('engine: RUN --mount=type=cache,from=', () => {
  /** A harness whose snapshots hold their lowers (copied) and whose copier is the real one. */
  function seeded(name: string): Harness & { caches: { source: string; files: string[] }[] } {
    const h = harness(name);
    const caches: { source: string; files: string[] }[] = [];
    let n = 0;
    h.deps.snapshotter = {
      async prepare(lowers): Promise<Snapshot> {
        const upper = join(home, name, 'merged', String(++n));
        await mkdir(upper, { recursive: true });
        for (const l of lowers) execFileSync('cp', ['-a', l + '/.', upper]); // owners kept
        return { root: upper, upper, release: async () => rm(upper, { recursive: true, force: true }) };
      },
    };
    h.deps.copier = new LocalFileCopier();
    const scripted = h.deps.executor;
    h.deps.executor = {
      async run(spec) {
        // `own PATH UID` chowns a tree of the step's root; the cache mount's dir is listed before the step runs
        const script = spec.argv[spec.argv.length - 1] ?? '';
        const own = /own (\S+) (\d+)/.exec(script);
        const res = await scripted.run({ ...spec, argv: [script.replace(/;?\s*own \S+ \d+/, '')] });
        if (own && process.getuid?.() === 0)
          execFileSync('chown', ['-R', `${own[2]}:${own[2]}`, join(spec.rootfs, own[1] as string)]);
        for (const m of spec.mounts) {
          if (m.type !== 'cache' || !m.source) continue;
          const files = (await readdir(m.source, { recursive: true })).map(String).sort();
          caches.push({ source: m.source, files });
          // the step leaves something in the cache: a later build with the same seed finds it
          await writeFile(join(m.source, 'left-by-step'), 'x');
        }
        return res;
      },
    };
    return { ...h, caches };
  }
  const dockerfile = (seedText: string, source = '/seed') =>
    `FROM busybox AS seed\nRUN write /seed/s ${seedText}; write /seed/sub/d deeper; own /seed 1000\n` +
    `FROM busybox\nRUN --mount=type=cache,target=/c,from=seed,source=${source},id=k write /out done\n`;

  test('a new cache is a copy of the stage dir with its owners; the same seed reuses it, another seed is another cache', async () => {
    const h = seeded('cachefrom');
    await runEngine(request(dockerfile('one')), h.deps);
    const first = h.caches[0];
    assert.ok(first);
    assert.deepEqual(first.files, ['s', 'sub', 'sub/d']);
    assert.equal(await readFile(join(first.source, 's'), 'utf8'), 'one');
    const cm = h.runs.at(-1)?.mounts[0];
    assert.equal(cm?.source, first.source);
    // the dir's own owner and mode, so the sandbox gives an empty seed the same
    assert.equal(cm?.uid, process.getuid?.() === 0 ? 1000 : (await stat(first.source)).uid);
    assert.equal(cm?.mode, 0o755);
    if (process.getuid?.() === 0) {
      assert.equal((await stat(first.source)).uid, 1000);
      assert.equal((await stat(join(first.source, 'sub', 'd'))).gid, 1000);
    }
    assert.notEqual(
      first.source,
      join(h.deps.cacheMountsDir, createHash('sha256').update('k').digest('hex')),
      'keyed by the seed too',
    );

    // same seed, the RUN step not cached: the cache is kept as the step left it, not seeded again
    await runEngine(request(dockerfile('one'), { noCache: true }), h.deps);
    assert.equal(h.caches[1]?.source, first.source);
    assert.deepEqual(h.caches[1]?.files, ['left-by-step', 's', 'sub', 'sub/d']);

    // another seed: another cache, seeded from it
    await runEngine(request(dockerfile('two')), h.deps);
    const other = h.caches[2];
    assert.ok(other && other.source !== first.source);
    assert.equal(await readFile(join(other.source, 's'), 'utf8'), 'two');
    assert.deepEqual(other.files, ['s', 'sub', 'sub/d']);
    assert.deepEqual(
      (await readdir(h.deps.cacheMountsDir)).filter((f) => f.includes('.seed-')),
      [],
    );
  });

  test('a source that is not a directory of the stage: one line naming the RUN', async () => {
    const h = seeded('cachefrom-missing');
    await assert.rejects(
      runEngine(request(dockerfile('one', '/seed/s')), h.deps),
      /^KilnError: Dockerfile:4: .*cache mount source \/seed\/s is not a directory in seed$/m,
    );
  });
});

test('lowerDirs keeps only the topmost occurrence of a repeated layer dir', () => {
  assert.deepEqual(lowerDirs([{ dir: 'a' }, { dir: 'e' }, { dir: 'b' }, { dir: 'e' }, { dir: 'c' }]), [
    'a',
    'b',
    'e',
    'c',
  ]);
  assert.deepEqual(lowerDirs([]), []);
});

test('a failing stage stops the stages running concurrently with it', async () => {
  const h = harness('cancel');
  let release: (() => void) | undefined;
  const slowStarted = new Promise<void>((r) => (release = r));
  const inner = h.deps.executor;
  h.deps.executor = {
    async run(spec) {
      const script = spec.argv.at(-1) ?? '';
      if (script === 'slow') {
        release?.();
        // wait until aborted, like a killed process
        await new Promise<void>((r) => {
          if (spec.signal?.aborted) r();
          spec.signal?.addEventListener('abort', () => r(), { once: true });
        });
        return { exitCode: 137, signal: 'SIGKILL' };
      }
      if (script === 'fail') await slowStarted;
      return inner.run(spec);
    },
  };
  const df =
    'FROM busybox AS a\nRUN slow\nRUN write /never 1\nFROM busybox AS b\nRUN exit 2\nFROM scratch\nCOPY --from=a /x /x\nCOPY --from=b /y /y\n';
  await assert.rejects(
    runEngine(request(df.replace('RUN exit 2', 'RUN fail; exit 2')), h.deps),
    /Dockerfile:5: RUN fail; exit 2: .*exit code: 2/,
  );
  assert.ok(!h.runs.some((r) => r.argv.at(-1) === 'write /never 1'), 'stage a stopped after its running step');
});

test('a miss-explaining cache gets every step noted and its explanation is shown on a miss', async () => {
  const h = harness('explain');
  const noted: { key: string; slot: string; op: unknown }[] = [];
  const cache = h.deps.cache as BuildCache & {
    noteStep?: (k: string, n: { slot: string; parts: Record<string, unknown> }) => void;
    explainMiss?: (k: string) => Promise<string | undefined>;
  };
  cache.noteStep = (key, n) => noted.push({ key, slot: n.slot, op: n.parts.op });
  cache.explainMiss = async () => 'an earlier step changed';
  await runEngine(request('FROM busybox\nWORKDIR /w\nRUN write /a 1\n'), h.deps);
  assert.deepEqual(
    noted.map((n) => [n.slot, n.op]),
    [
      ['Dockerfile/stage-0/1', 'WORKDIR'],
      ['Dockerfile/stage-0/2', 'RUN'],
    ],
  );
  assert.equal(h.log.filter((l) => l.endsWith('cache miss: an earlier step changed')).length, 2);
});

test('FROM --platform: $BUILDPLATFORM/$TARGETPLATFORM work, a foreign platform is a clear error', async () => {
  const h = harness('fromplatform');
  await runEngine(request('FROM --platform=$BUILDPLATFORM busybox\nRUN write /x 1\n'), h.deps);
  await runEngine(request('FROM --platform=${TARGETPLATFORM} scratch\nENV A=1\n'), h.deps);
  const host = hostPlatform();
  const foreign = host.architecture === 'amd64' ? 'linux/arm64' : 'linux/amd64';
  await assert.rejects(
    runEngine(request(`FROM --platform=${foreign} busybox\n`), h.deps),
    new RegExp(`^KilnError: Dockerfile:1: FROM --platform=${foreign}: cannot build for a foreign platform`),
  );
});

test('WORKDIR: an absolute path is kept as written in config and history, a relative one is joined and cleaned', async () => {
  const h = harness('workdir-raw');
  const df = 'FROM scratch\nWORKDIR /a/b/../c\nWORKDIR /t/s/\nWORKDIR rel/./x/../y/\n';
  const res = await runEngine(request(df), h.deps);
  assert.equal(res.config.config.WorkingDir, '/t/s/rel/y');
  assert.deepEqual(
    res.config.history.map((x) => x.created_by),
    ['WORKDIR /a/b/../c', 'WORKDIR /t/s/', 'WORKDIR /t/s/rel/y'],
  );
});

test('history style: buildkit-latest (default) writes COPY flags, EXPOSE list, HEALTHCHECK %+v; buildkit-0.8 not', async () => {
  const h = harness('latest-style');
  await mkdir(h.deps.contextDir, { recursive: true });
  await writeFile(join(h.deps.contextDir, 'f'), 'x');
  const df = 'FROM busybox\nCOPY --chown=1:2 --chmod=600 f /f\nEXPOSE 80\nHEALTHCHECK --retries=3 CMD true\n';
  const v08 = await runEngine(request(df, { historyStyle: 'buildkit-0.8' }), h.deps);
  const latest = await runEngine(request(df), h.deps);
  assert.deepEqual(
    v08.config.history.slice(-3).map((x) => x.created_by),
    ['COPY f /f # buildkit', 'EXPOSE map[80/tcp:{}]', 'HEALTHCHECK &{["CMD-SHELL" "true"] "0s" "0s" "0s" \'\\x03\'}'],
  );
  assert.deepEqual(
    latest.config.history.slice(-3).map((x) => x.created_by),
    [
      'COPY --chown=1:2 --chmod=600 f /f # buildkit',
      'EXPOSE 80/tcp',
      'HEALTHCHECK {Test:[CMD-SHELL true] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}',
    ],
  );
  assert.equal(sha256(v08.config.rootfs.diff_ids.join()), sha256(latest.config.rootfs.diff_ids.join()));
});

test('COPY heredoc content: variables expanded, quotes kept (BuildKit raw expansion)', async () => {
  const h = harness('heredoc-copy');
  const seen: string[] = [];
  h.deps.copier = {
    checksum: async (req) => sha256(JSON.stringify(req.contents)),
    apply: async (req) => {
      seen.push(...req.contents.map((c) => c.data));
    },
  };
  await runEngine(request('FROM busybox\nENV WHO=world\nCOPY <<EOF /hello\necho "hi $WHO"\nEOF\n'), h.deps);
  assert.deepEqual(seen, ['echo "hi world"\n']);
});

test('RUN --security=insecure is refused with one line', async () => {
  const h = harness('insecure');
  await assert.rejects(
    runEngine(request('FROM busybox\nRUN --security=insecure true\n'), h.deps),
    /^KilnError: Dockerfile:2: RUN --security=insecure: security.insecure is not allowed/,
  );
  assert.equal(h.runs.length, 0);
});

test('LocalLayerStore: a base layer is stored as a blob once and extracted from it', async () => {
  const dir = join(home, 'layerstore');
  const blobs = new BlobDir(join(dir, 'blobs'));
  const store = new LocalLayerStore({ layersDir: join(dir, 'layers'), blobs });
  const [l] = await base.layers();
  const layer = l as NonNullable<typeof l>;
  const d1 = await store.unpack(layer);
  assert.ok(await blobs.has(await layer.digest()), 'the compressed blob is kept for the outputs');
  assert.equal(await store.dirOf(await layer.diffID()), d1);
  assert.equal(await store.unpack(layer), d1);
  assert.equal((await readFile(join(d1, 'etc', 'passwd'), 'utf8')).split('\n')[0], 'root:x:0:0:root:/root:/bin/sh');
});

test('COPY folded into the next RUN (foldIntoRun): one layer with both, the COPY in history as empty_layer, its sources in the key', async () => {
  const h = harness('fold');
  await mkdir(h.deps.contextDir, { recursive: true });
  await writeFile(join(h.deps.contextDir, 'f'), 'one');
  const df = 'FROM busybox\nCOPY f /src/f\nUSER 1\nRUN write /out x\nCMD ["x"]\n';
  const folded = (text: string): EngineRequest => {
    const r = request(text);
    for (const c of r.stages[0]?.commands ?? []) if (c.kind === 'COPY') c.foldIntoRun = true;
    return r;
  };
  const baseLayers = (await base.config()).rootfs.diff_ids.length;
  const res = await runEngine(folded(df), h.deps);
  assert.equal(res.layers.length, baseLayers + 1);
  const top = res.layers.at(-1)?.dir as string;
  assert.equal(await readFile(join(top, 'src', 'f'), 'utf8'), 'one', "the COPY's file is in the RUN's layer");
  assert.equal(await readFile(join(top, 'out'), 'utf8'), 'x');
  assert.deepEqual(
    res.config.history.slice(-4).map((x) => [x.created_by, x.empty_layer ?? false]),
    [
      ['COPY f /src/f # buildkit', true],
      ['USER 1', true],
      ['RUN /bin/sh -c write /out x # buildkit', false],
      ['CMD ["x"]', true],
    ],
  );
  assert.ok(h.log.some((l) => /copied into the next RUN step/.test(l)));
  // the same sources: cached; other sources: the RUN runs again
  await runEngine(folded(df), h.deps);
  assert.equal(h.runs.length, 1);
  await writeFile(join(h.deps.contextDir, 'f'), 'two');
  const again = await runEngine(folded(df), h.deps);
  assert.equal(h.runs.length, 2);
  assert.equal(await readFile(join(again.layers.at(-1)?.dir as string, 'src', 'f'), 'utf8'), 'two');
  // unfolded, the same Dockerfile is two layers (another cache key: no mix-up with the folded layer)
  const plain = await runEngine(request(df), h.deps);
  assert.equal(plain.layers.length, baseLayers + 2);
  assert.equal(h.runs.length, 3);
  // a folded COPY with no RUN after it is the frontend's mistake: one line, nothing run
  await assert.rejects(runEngine(folded('FROM busybox\nCOPY f /g\nCMD ["x"]\n'), h.deps), /no RUN follows it/);
  await assert.rejects(runEngine(folded('FROM busybox\nCOPY f /g\nWORKDIR /w\nRUN true\n'), h.deps), /no RUN follows/);
});

test('COPY key includes the copied xattrs: a user.* or setcap-only change misses (the capability lands in the layer); no change still hits', async () => {
  const h = harness('xattrkey');
  const ctxDir = h.deps.contextDir;
  await mkdir(ctxDir, { recursive: true });
  const f = join(ctxDir, 'f');
  await writeFile(f, 'same content');
  await writeFile(join(ctxDir, 'plain'), 'no xattrs');
  const setx = (v: string): void => void execFileSync('setfattr', ['-n', 'user.x', '-v', v, f]);
  const getx = (p: string): string =>
    execFileSync('getfattr', ['--only-values', '-n', 'user.x', p], { encoding: 'utf8' });
  setx('one');
  const df = 'FROM busybox\nCOPY plain /plain\nCOPY f /f\n';
  await writeFile(join(ctxDir, 'Dockerfile'), df);
  // a fresh context object per build, as the CLI loads it; the stat cache persists under the same home
  const build = async () => {
    const context = await loadContext(ctxDir, { kilnHome: join(home, 'xattrkey', 'home') });
    h.deps.copier = new LocalFileCopier({ context });
    h.log.length = 0;
    const res = await runEngine(request(df), h.deps);
    return { res, cached: h.log.filter((l) => l.startsWith('cached')).length };
  };
  const first = await build();
  assert.equal(first.cached, 0);
  assert.equal(getx(join(first.res.layers.at(-1)?.dir as string, 'f')), 'one');
  const same = await build();
  assert.equal(same.cached, 2, 'nothing changed: both COPYs are cache hits');
  assert.deepEqual(
    same.res.layers.map((l) => l.diffID),
    first.res.layers.map((l) => l.diffID),
  );
  setx('two'); // content and mtime unchanged, only the xattr (and ctime)
  const changed = await build();
  assert.equal(changed.cached, 1, 'the COPY of the untouched file still hits, the COPY of f misses');
  // (the layer tar records security.capability, not user.*: the same diffID, so the layer store keeps its dir)
  const again = await build();
  assert.equal(again.cached, 2, 'unchanged since: hits again');
  if (process.getuid?.() === 0) {
    // setcap: the capability is in the layer's tar too, so the image changes
    const cap = '0x0100000200040000000000000000000000000000'; // v2, cap_net_bind_service permitted
    execFileSync('setfattr', ['-n', 'security.capability', '-v', cap, f]);
    const capped = await build();
    assert.equal(capped.cached, 1);
    assert.notEqual(capped.res.layers.at(-1)?.diffID, again.res.layers.at(-1)?.diffID);
    const capOf = (p: string): string =>
      execFileSync('getfattr', ['-e', 'hex', '--only-values', '-n', 'security.capability', p], { encoding: 'utf8' });
    assert.equal(
      capOf(join(capped.res.layers.at(-1)?.dir as string, 'f')),
      capOf(f),
      'the new layer has the capability',
    );
  }
});
