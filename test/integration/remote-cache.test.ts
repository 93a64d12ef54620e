/**
 * The registry-backed build cache end to end, with the real engine, sandbox, layer store and a real registry:
 * a build exports its cache (`--cache-to ...,mode=max`) as a plain OCI image manifest whose layers are mounted
 * from the image's repository; a fresh $KILN_HOME importing it (`--cache-from`) rebuilds a W1-like Dockerfile
 * with only the changed COPY running (progress JSON: CACHED events); an unreachable cache registry is one
 * warning and a normal build; a corrupt blob (digest mismatch through a proxy) is ignored and the step rebuilt.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cp, mkdtemp, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { startHttpProxy, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { push, type PushOptions } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import { parseReference } from '../../src/registry/reference.js';
import { parseDockerfile } from '../../src/dockerfile/convert.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { localServices } from '../../src/engine/services.js';
import { BuildProgress } from '../../src/engine/progress.js';
import { runEngine } from '../../src/engine/engine.js';
import { imageOf } from '../../src/engine/build.js';
import {
  RemoteBuildCache,
  decodeCacheBases,
  decodeCacheConfig,
  encodeCacheConfig,
  parseCacheSpec,
  recordLayers,
} from '../../src/cache/remote.js';
import { getRemoteImage } from '../../src/registry/remote.js';
import { imageFromParts } from '../../src/oci/image.js';
import { withManifestMediaType } from '../../src/oci/mutate.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { kiln } from './build-helpers.js';

let reg: TestRegistry;
let work: string;
let ctx: string;
let base: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'kiln-remote-cache-it-'));
  ctx = join(work, 'ctx');
  reg = await startRegistry();
  base = `${reg.host}/base/busybox:1`;
  const opts = { insecureRegistries: [reg.host] };
  await push(await makeBusyboxImage({ kind: 'docker' }), base, opts);
  await closeTransports(opts);
  // a small W1: 40 source files in 4 dirs, 3 incompressible assets
  for (let d = 0; d < 4; d++) await mkdir(join(ctx, 'src', `d${d}`), { recursive: true });
  for (let i = 0; i < 40; i++)
    await writeFile(join(ctx, 'src', `d${i % 4}`, `f${i}.js`), `export const v${i} = ${i};\n`);
  await mkdir(join(ctx, 'assets'));
  for (let i = 0; i < 3; i++) {
    await writeFile(
      join(ctx, 'assets', `a${i}.bin`),
      Buffer.from(Array.from({ length: 65536 }, (_, j) => (i * 7 + j * 31) % 251)),
    );
  }
  await writeFile(
    join(ctx, 'Dockerfile'),
    `FROM ${base}\nWORKDIR /app\nCOPY assets/ ./assets/\nRUN ls assets | wc -l > /app/asset-count\nCOPY src/ ./src/\n`,
  );
});

after(async () => {
  await reg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

interface Events {
  cached: string[];
  done: string[];
  warnings: string[];
  /** Step output lines as `NAME: line` (miss explanations are among them). */
  logs: string[];
}

/** The build's JSON progress (src/progress.ts ProgressEvent shape: ids "#N", names on every vertex event). */
function parseEvents(text: string): Events {
  const names = new Map<string, string>();
  const ev: Events = { cached: [], done: [], warnings: [], logs: [] };
  for (const l of text.split('\n')) {
    if (!l.startsWith('{')) continue;
    const e = JSON.parse(l) as { type: string; id?: number | string; name?: string; message?: string };
    if (e.type === 'log' && e.id === undefined && e.message?.startsWith('WARNING: ')) {
      ev.warnings.push(e.message.slice('WARNING: '.length));
      continue;
    }
    if (e.id === undefined || (typeof e.id === 'string' && !e.id.startsWith('#'))) continue; // push events
    const id = String(e.id);
    if (e.type === 'start') names.set(id, e.name ?? '');
    const name = names.get(id) ?? e.name ?? '';
    if (e.type === 'cached') ev.cached.push(name);
    if (e.type === 'done') ev.done.push(name);
    if (e.type === 'log') ev.logs.push(`${name}: ${e.message ?? ''}`);
  }
  return ev;
}

interface Built {
  ev: Events;
  diffIDs: string[];
  cache: RemoteBuildCache;
  /** Whether the build's layer store holds an extracted dir for a diffID. */
  extracted: (diffID: string) => Promise<boolean>;
}

/** One build with a fresh or given $KILN_HOME through the real services; pushes the image to `tag`. */
async function build(
  home: string,
  tag: string,
  cacheFrom: string[],
  cacheTo: string[],
  registryHosts: string[] = [],
  o: { context?: string; buildArgs?: Record<string, string>; lazy?: boolean; epoch?: number } = {},
): Promise<Built> {
  const lines: string[] = [];
  const progress = new BuildProgress('json', (s) => lines.push(s));
  const registry: PushOptions = { insecureRegistries: [reg.host, ...registryHosts] };
  const svc = await localServices({ home, registry, progress, context: o.context ?? ctx });
  const cache = new RemoteBuildCache({
    dir: join(home, 'cache'),
    from: cacheFrom.map((c) => parseCacheSpec(c, '--cache-from')),
    to: cacheTo.map((c) => parseCacheSpec(c, '--cache-to')),
    registry,
    blobs: svc.store.blobs,
    layers: svc.layers,
    warn: (m) => progress.warn(m),
  });
  if (o.lazy) cache.allowLazy([reg.host]);
  try {
    const parsed = parseDockerfile(svc.dockerfile.text, { filename: 'Dockerfile' });
    const tmp = await svc.tempDir('rc-');
    const res = await runEngine(
      {
        stages: parsed.stages,
        metaArgs: parsed.globalArgs,
        file: 'Dockerfile',
        buildArgs: new Map(Object.entries(o.buildArgs ?? {})),
        labels: {},
        platform: hostPlatform(),
        noCache: false,
        pull: false,
        network: 'host',
        secrets: [],
        ...(o.epoch === undefined ? {} : { sourceDateEpoch: o.epoch }),
      },
      {
        executor: svc.executor,
        snapshotter: svc.snapshotter,
        layers: svc.layers,
        bases: svc.bases,
        cache,
        progress,
        copier: svc.copier,
        contextDir: svc.contextDir,
        cacheMountsDir: join(home, 'cache-mounts'),
        tmpDir: join(tmp, 'engine'),
      },
    );
    await rm(tmp, { recursive: true, force: true });
    // as the build's export does: layer media types follow the manifest's (cache records keep OCI ones)
    await push(withManifestMediaType(imageOf(res), 'docker'), tag, registry);
    const diffIDs = res.layers.map((l) => l.diffID);
    await cache.exportTo(diffIDs, [parseReference(tag)]);
    const ev = parseEvents(lines.join(''));
    return { ev, diffIDs, cache, extracted: async (d) => (await svc.layers.dirOf(d)) !== undefined };
  } finally {
    await cache.close();
    await svc.context.cleanup();
    await closeTransports(registry);
  }
}

const steps = (names: string[]): string[] =>
  names.filter((n) => /^\[\d\/\d\] (?!FROM)/.test(n)).map((n) => n.replace(/^\[\d\/\d\] /, ''));

function skopeoRaw(ref: string): {
  mediaType: string;
  config: { mediaType: string };
  layers: { digest: string }[];
  annotations?: Record<string, string>;
} {
  const r = spawnSync('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${ref}`], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as ReturnType<typeof skopeoRaw>;
}

test('a fresh $KILN_HOME with --cache-from a warm registry cache runs only the changed step', async () => {
  const cacheRef = `${reg.host}/cache/app:w1`;
  const first = await build(
    join(work, 'home1'),
    `${reg.host}/app/w1:1`,
    [],
    [`type=registry,ref=${cacheRef},mode=max`],
  );
  assert.deepEqual(first.ev.cached, [], 'cold build: nothing cached');
  assert.deepEqual(steps(first.ev.done), [
    'WORKDIR /app',
    'COPY assets/ ./assets/',
    'RUN ls assets | wc -l > /app/asset-count',
    'COPY src/ ./src/',
  ]);
  assert.deepEqual(first.ev.warnings, []);
  // the cache is a plain OCI image manifest; its layers are the image's own blobs, mounted not re-uploaded
  const m = skopeoRaw(cacheRef);
  assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
  assert.equal(m.config.mediaType, 'application/vnd.oci.image.config.v1+json');
  assert.equal(m.annotations?.['dev.kiln.cache.version'], '1');
  const img = skopeoRaw(`${reg.host}/app/w1:1`);
  assert.deepEqual(
    new Set(m.layers.map((l) => l.digest)),
    new Set(img.layers.slice(1).map((l) => l.digest)),
    'cache layers = the built layers of the image',
  );
  assert.ok(
    await reg.waitForLog(/POST \/v2\/cache\/app\/blobs\/uploads\/\?mount=sha256/),
    'layers mounted from app/w1',
  );

  // change one source file; build on a brand-new $KILN_HOME with only the registry cache
  await writeFile(join(ctx, 'src', 'd1', 'f5.js'), 'export const v5 = "changed";\n');
  const second = await build(join(work, 'home2'), `${reg.host}/app/w1:2`, [cacheRef], []);
  assert.deepEqual(steps(second.ev.cached), [
    'WORKDIR /app',
    'COPY assets/ ./assets/',
    'RUN ls assets | wc -l > /app/asset-count',
  ]);
  assert.deepEqual(steps(second.ev.done), ['COPY src/ ./src/'], 'only the changed step ran');
  assert.deepEqual(second.ev.warnings, []);
  assert.deepEqual(second.diffIDs.slice(0, 4), first.diffIDs.slice(0, 4), 'cached layers are the same layers');
  assert.notEqual(second.diffIDs[4], first.diffIDs[4]);
  assert.equal(second.cache.stats.remoteHits, 3);
});

test('prefetch() imports the --cache-from records before the engine asks (kiln build calls it at start-up)', async () => {
  const cacheRef = `${reg.host}/cache/app:w1`; // exported by the test above
  const home = join(work, 'prefetch-home');
  const registry: PushOptions = { insecureRegistries: [reg.host] };
  const svc = await localServices({
    home,
    registry,
    progress: new BuildProgress('json', () => undefined),
    context: ctx,
  });
  const cache = new RemoteBuildCache({
    dir: join(home, 'cache'),
    from: [parseCacheSpec(`type=registry,ref=${cacheRef}`, '--cache-from')],
    to: [],
    registry,
    blobs: svc.store.blobs,
    layers: svc.layers,
    warn: () => undefined,
  });
  try {
    const before = reg
      .log()
      .split('\n')
      .filter((l) => l.includes('/v2/cache/app/manifests/w1')).length;
    cache.prefetch();
    assert.ok(await reg.waitForLog(/GET \/v2\/cache\/app\/manifests\/w1/), 'the cache manifest was fetched');
    const deadline = Date.now() + 10_000;
    while (
      reg
        .log()
        .split('\n')
        .filter((l) => l.includes('/v2/cache/app/manifests/w1')).length <= before
    ) {
      assert.ok(Date.now() < deadline, 'no new cache manifest request after prefetch()');
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await cache.close();
    await svc.context.cleanup();
    await closeTransports(registry);
  }
});

test('an unreachable cache registry is one warning and a normal build', async () => {
  const deadHost = '127.0.0.1:9'; // discard port: connection refused
  const r = await build(
    join(work, 'home3'),
    `${reg.host}/app/dead:1`,
    [`type=registry,ref=${deadHost}/cache/app:x`],
    [`type=registry,ref=${deadHost}/cache/app:x`],
    [deadHost],
  );
  assert.equal(r.ev.warnings.length, 2, r.ev.warnings.join('\n'));
  assert.match(
    r.ev.warnings[0] as string,
    /^cache import from 127\.0\.0\.1:9\/cache\/app:x failed, building without it: /,
  );
  assert.match(r.ev.warnings[1] as string, /^cache export to 127\.0\.0\.1:9\/cache\/app:x failed: /);
  assert.deepEqual(r.ev.cached, []);
  assert.equal(steps(r.ev.done).length, 4);
});

test('a corrupt cached blob is ignored (the step runs) and the fresh export replaces the record', async () => {
  const cacheRef = `${reg.host}/cache/corrupt:1`;
  await build(join(work, 'home4'), `${reg.host}/app/corrupt:1`, [], [`type=registry,ref=${cacheRef},mode=max`]);
  const m = skopeoRaw(cacheRef);
  const assetsLayer = m.layers[1]?.digest as string;
  // a proxy flipping one byte of that blob on every GET
  const proxy = await startHttpProxy(reg.host, {
    transform: (req, status) => {
      if (req.method !== 'GET' || status !== 200 || !req.url.endsWith(assetsLayer)) return undefined;
      let flipped = false;
      return new Transform({
        transform(c: Buffer, _e, cb) {
          if (!flipped && c.length > 0) {
            c = Buffer.from(c);
            c[c.length >> 1] = (c[c.length >> 1] as number) ^ 0xff;
            flipped = true;
          }
          cb(null, c);
        },
      });
    },
  });
  try {
    const viaProxy = `${proxy.host}/cache/corrupt:1`;
    const r = await build(join(work, 'home5'), `${reg.host}/app/corrupt:2`, [viaProxy], [], [proxy.host]);
    assert.equal(r.ev.warnings.length, 1, r.ev.warnings.join('\n'));
    assert.match(
      r.ev.warnings[0] as string,
      /^cache record [a-f0-9]{12} from .* is unusable, rebuilding the step: .*(digest|DIGEST)/,
    );
    // the rebuilt COPY produces the same layer (deterministic), so the steps above it still hit
    assert.deepEqual(steps(r.ev.done), ['COPY assets/ ./assets/'], 'the corrupt step ran');
    assert.deepEqual(steps(r.ev.cached), [
      'WORKDIR /app',
      'RUN ls assets | wc -l > /app/asset-count',
      'COPY src/ ./src/',
    ]);
    assert.equal(r.cache.stats.corrupt, 1);
    assert.ok(r.cache.recordsFor('max', []).length >= 4, 'the rebuilt steps are records for the next export');
  } finally {
    await proxy.stop();
  }
});

test('an unauthorised cache registry is one warning and a normal build', async () => {
  const locked = await startRegistry({ auth: 'htpasswd' });
  try {
    const ref = `${locked.host}/cache/app:x`;
    const r = await build(join(work, 'home6'), `${reg.host}/app/unauth:1`, [ref], [], [locked.host]);
    assert.equal(r.ev.warnings.length, 1, r.ev.warnings.join('\n'));
    assert.match(
      r.ev.warnings[0] as string,
      /^cache import from .* failed, building without it: .*(unauthori[sz]ed|UNAUTHORIZED|401|credentials)/i,
    );
    assert.equal(steps(r.ev.done).length + steps(r.ev.cached).length, 4, 'the build completed');
  } finally {
    await locked.stop();
  }
});

test('kiln build --cache-to/--cache-from: a fresh $KILN_HOME rebuilds only the changed step and says why', async () => {
  const ctx2 = join(work, 'ctx-cli');
  await cp(ctx, ctx2, { recursive: true });
  const cacheRef = `${reg.host}/cache/cli:1`;
  const common = ['--push', '--progress', 'json', '--insecure-registry', reg.host];
  const r1 = await kiln(
    ['build', ...common, '-t', `${reg.host}/app/cli:1`, '--cache-to', `type=registry,ref=${cacheRef},mode=max`, ctx2],
    {
      home: join(work, 'cli-home1'),
    },
  );
  assert.equal(r1.code, 0, r1.stderr);
  await writeFile(join(ctx2, 'src', 'd2', 'f6.js'), 'export const v6 = "changed";\n');
  const r2 = await kiln(['build', ...common, '-t', `${reg.host}/app/cli:2`, '--cache-from', cacheRef, ctx2], {
    home: join(work, 'cli-home2'),
  });
  assert.equal(r2.code, 0, r2.stderr);
  const { cached, done, logs, warnings } = parseEvents(r2.stderr);
  assert.deepEqual(steps(cached), [
    'WORKDIR /app',
    'COPY assets/ ./assets/',
    'RUN ls assets | wc -l > /app/asset-count',
  ]);
  assert.deepEqual(steps(done), ['COPY src/ ./src/']);
  assert.ok(
    logs.some((l) => /COPY src\/ \.\/src\/: cache miss: file changed: src\/d2\/f6\.js$/.test(l)),
    `a miss explanation for the COPY: ${logs.join('\n')}`,
  );
  assert.deepEqual(warnings, []);
});

test('a miss in one stage does not stop hits in another', async () => {
  const ctx3 = join(work, 'ctx-stages');
  await mkdir(ctx3);
  await writeFile(
    join(ctx3, 'Dockerfile'),
    `FROM ${base} AS a\nARG V=1\nRUN echo "$V" > /a\n\nFROM ${base} AS b\nRUN echo b > /b\n\n` +
      `FROM ${base}\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n`,
  );
  const cacheRef = `${reg.host}/cache/stages:1`;
  const first = await build(
    join(work, 'home7'),
    `${reg.host}/app/stages:1`,
    [],
    [`type=registry,ref=${cacheRef},mode=max`, `type=registry,ref=${reg.host}/cache/stages:min`],
    [],
    {
      context: ctx3,
    },
  );
  assert.equal(first.ev.cached.length, 0);
  // mode=max keeps every stage's steps; mode=min (the default) only the exported image's own layers
  assert.equal(skopeoRaw(cacheRef).layers.length, 4);
  const minLayers = skopeoRaw(`${reg.host}/cache/stages:min`).layers.map((l) => l.digest);
  assert.deepEqual(
    minLayers,
    skopeoRaw(`${reg.host}/app/stages:1`)
      .layers.slice(1)
      .map((l) => l.digest),
  );
  const second = await build(join(work, 'home8'), `${reg.host}/app/stages:2`, [cacheRef], [], [], {
    context: ctx3,
    buildArgs: { V: '2' },
  });
  const stepsOf = (names: string[]): string[] =>
    names.filter((n) => /\] (RUN|COPY)/.test(n)).map((n) => n.replace(/^\[(\S+) .*?\] /, '$1: '));
  // stage a's RUN misses (its ARG changed); stage b's RUN still hits
  assert.deepEqual(stepsOf(second.ev.cached), ['b: RUN echo b > /b']);
  assert.deepEqual(stepsOf(second.ev.done).sort(), [
    'a: RUN echo "$V" > /a',
    'stage-2: COPY --from=a /a /a',
    'stage-2: COPY --from=b /b /b',
  ]);
});

test('a record whose layer blob does not match its diffID is ignored (no layer dir is reused for it)', async () => {
  const cacheRef = `${reg.host}/cache/poison:1`;
  const built = await build(
    join(work, 'home9'),
    `${reg.host}/app/poison:1`,
    [],
    [`type=registry,ref=${cacheRef},mode=max`],
  );
  // rewrite the cache: the RUN step's record now claims the COPY assets layer's diffID (a lie)
  const opts = { insecureRegistries: [reg.host] };
  const raw = await getRemoteImage(cacheRef, opts);
  const records = decodeCacheConfig(await raw.rawConfig());
  const run = records.find((r) => r.step?.name.includes('RUN ls assets'));
  const assets = records.find((r) => r.step?.name.includes('COPY assets'));
  assert.ok(run && assets, 'records carry their step names');
  run.layer = { ...run.layer, diffID: assets.layer.diffID };
  const layers = recordLayers(records);
  const cfg = encodeCacheConfig(records, layers);
  const lie = imageFromParts({
    mediaType: async () => MediaType.OCIManifest,
    rawConfig: async () => cfg,
    layers: async () => raw.layers(), // same blobs, same order (recordLayers keeps first-use order)
  });
  await push(lie, `${reg.host}/cache/poison:2`, opts);
  await closeTransports(opts);
  const r = await build(join(work, 'home10'), `${reg.host}/app/poison:2`, [`${reg.host}/cache/poison:2`], []);
  assert.deepEqual(steps(r.ev.done), ['RUN ls assets | wc -l > /app/asset-count'], r.ev.warnings.join('\n'));
  assert.equal(r.ev.warnings.length, 1);
  assert.match(r.ev.warnings[0] as string, /is unusable, rebuilding the step: .*does not match/);
  assert.deepEqual(r.diffIDs.slice(0, 3), built.diffIDs.slice(0, 3));
  assert.notEqual(r.diffIDs[3], assets.layer.diffID, 'the RUN step got its own layer, not the one the record named');

  // pushing to the cache's registry, hits stay unfetched until a step needs them: the changed COPY needs the RUN
  // layer (the topmost holder of /app), whose fetch finds the lie; the build runs again and the RUN step runs
  const ctxP = join(work, 'ctx-poison');
  await cp(ctx, ctxP, { recursive: true });
  await writeFile(join(ctxP, 'src', 'd0', 'f0.js'), 'export const v0 = "poison";\n');
  const cli = await kiln(
    [
      'build',
      ...['--push', '--progress', 'json', '--insecure-registry', reg.host],
      ...['-t', `${reg.host}/app/poison:3`, '--cache-from', `${reg.host}/cache/poison:2`, ctxP],
    ],
    { home: join(work, 'home11') },
  );
  assert.equal(cli.code, 0, cli.stderr);
  const ev = parseEvents(cli.stderr);
  assert.equal(ev.warnings.length, 1, ev.warnings.join('\n'));
  assert.match(ev.warnings[0] as string, /is unusable, rebuilding the step: .*does not match/);
  assert.deepEqual(steps(ev.done), ['RUN ls assets | wc -l > /app/asset-count', 'COPY src/ ./src/']);
  const digests = (ref: string): string[] => skopeoRaw(ref).layers.map((l) => l.digest);
  assert.deepEqual(
    digests(`${reg.host}/app/poison:3`).slice(0, 3),
    digests(`${reg.host}/app/poison:1`).slice(0, 3),
    'base, WORKDIR and COPY assets came from the cache',
  );
});

test('pushing to the cache registry: unneeded hits stay unfetched, mounted into the image, same layers as a full build', async () => {
  const ctxL = join(work, 'ctx-lazy');
  await cp(ctx, ctxL, { recursive: true });
  const cacheRef = `${reg.host}/cache/lazy:1`;
  const epoch = 1_700_000_000; // clamps the times the COPY sets (its parent dir's mtime): the layers compare exactly
  await build(join(work, 'lazy-home1'), `${reg.host}/app/lazy:1`, [], [`type=registry,ref=${cacheRef},mode=max`], [], {
    context: ctxL,
    epoch,
  });
  const records = decodeCacheConfig(
    await (await getRemoteImage(cacheRef, { insecureRegistries: [reg.host] })).rawConfig(),
  );
  const assetsRec = records.find((r) => r.step?.name.includes('COPY assets'));
  assert.deepEqual(assetsRec?.summary?.slice(0, 2), ['app', 'app/assets'], 'records carry their layer paths');
  const baseCfg = await (await getRemoteImage(base, { insecureRegistries: [reg.host] })).config();
  const baseDiffID = baseCfg.rootfs.diff_ids[0] as string;
  const bases = decodeCacheBases(
    await (await getRemoteImage(cacheRef, { insecureRegistries: [reg.host] })).rawConfig(),
  );
  assert.deepEqual(Object.keys(bases), [baseDiffID], 'the cache carries the base layer summary');
  assert.ok(bases[baseDiffID]?.includes('bin/busybox'), bases[baseDiffID]?.slice(0, 5).join(' '));
  await writeFile(join(ctxL, 'src', 'd3', 'f7.js'), 'export const v7 = "lazy";\n');
  await cp(join(ctxL, 'assets'), join(ctxL, 'assets.new'), { recursive: true });
  await rm(join(ctxL, 'assets'), { recursive: true });
  await rename(join(ctxL, 'assets.new'), join(ctxL, 'assets'));
  const lazy = await build(join(work, 'lazy-home2'), `${reg.host}/app/lazy-fresh:2`, [cacheRef], [], [], {
    context: ctxL,
    lazy: true,
    epoch,
  });
  assert.deepEqual(steps(lazy.ev.done), ['COPY src/ ./src/']);
  assert.equal(lazy.cache.stats.lazy, 3);
  assert.equal(lazy.cache.stats.fetched, 1, 'only the RUN layer (the topmost /app) was fetched');
  assert.equal(await lazy.extracted(baseDiffID), false, 'the base layer was not pulled: the COPY does not need it');
  // the hit's file list is the imported record's (same content, by its key): the assets, on new inodes since, were
  // not listed and hashed again (a fresh pod's checkout would be read whole)
  const assetsFiles = lazy.cache.recordsFor('max', []).find((r) => r.step?.name.includes('COPY assets'))?.step?.files;
  assert.ok(assetsRec?.step?.files?.['assets/a0.bin']);
  assert.deepEqual(assetsFiles, assetsRec.step.files);
  const full = await build(join(work, 'lazy-home3'), `${reg.host}/app/lazy:3`, [cacheRef], [], [], {
    context: ctxL,
    epoch,
  });
  assert.equal(full.cache.stats.lazy, 0);
  assert.deepEqual(lazy.diffIDs, full.diffIDs, 'the COPY on fewer lower layers wrote the same layer');
  // the unfetched blobs were mounted from the cache repository, and the image is complete (skopeo verifies blobs)
  const assetsDigest = skopeoRaw(cacheRef).layers.find((l) => l.digest === assetsRec?.layer.digest)?.digest;
  assert.ok(assetsDigest);
  assert.ok(
    await reg.waitForLog(
      new RegExp(
        `POST /v2/app/lazy-fresh/blobs/uploads/\\?mount=sha256(:|%3A)${assetsDigest.slice(7)}&from=cache(%2F|/)lazy`,
      ),
    ),
    `assets blob mounted from cache/lazy: ${reg
      .log()
      .split('\n')
      .filter((l) => l.includes('lazy-fresh/blobs/uploads'))
      .map((l) => /"(POST|PUT|PATCH) [^"]*"/.exec(l)?.[0] ?? l.slice(0, 300))
      .join('\n')}`,
  );
  const out = join(work, 'lazy-oci');
  const r = spawnSync(
    'skopeo',
    ['copy', '--src-tls-verify=false', `docker://${reg.host}/app/lazy-fresh:2`, `oci:${out}:x`],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(r.status, 0, r.stderr);
});

test('an unfetched base layer is pulled when a missed RUN needs it: same layers as a build that pulled it first', async () => {
  const ctxR = join(work, 'ctx-lazy-run');
  await cp(ctx, ctxR, { recursive: true });
  await writeFile(
    join(ctxR, 'Dockerfile'),
    `FROM ${base}\nWORKDIR /app\nCOPY src/ ./src/\nRUN ls /bin | wc -l > /app/bin-count && cat src/d3/f7.js > /app/v7\n`,
  );
  const cacheRef = `${reg.host}/cache/lazy-run:1`;
  const epoch = 1_700_000_000;
  const o = { context: ctxR, epoch };
  await build(
    join(work, 'lazy-run-home1'),
    `${reg.host}/app/lazy-run:1`,
    [],
    [`type=registry,ref=${cacheRef},mode=max`],
    [],
    o,
  );
  await writeFile(join(ctxR, 'src', 'd3', 'f7.js'), 'export const v7 = "run";\n');
  const baseDiffID = (await (await getRemoteImage(base, { insecureRegistries: [reg.host] })).config()).rootfs
    .diff_ids[0] as string;
  const lazy = await build(join(work, 'lazy-run-home2'), `${reg.host}/app/lazy-run:2`, [cacheRef], [], [], {
    ...o,
    lazy: true,
  });
  assert.deepEqual(steps(lazy.ev.done), [
    'COPY src/ ./src/',
    'RUN ls /bin | wc -l > /app/bin-count && cat src/d3/f7.js > /app/v7',
  ]);
  assert.equal(await lazy.extracted(baseDiffID), true, 'the RUN needed the base: pulled and extracted');
  const full = await build(join(work, 'lazy-run-home3'), `${reg.host}/app/lazy-run:3`, [cacheRef], [], [], o);
  assert.deepEqual(lazy.diffIDs, full.diffIDs, 'same layers as the build that extracted the base at FROM');
});
