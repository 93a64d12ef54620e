import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../errors.js';
import { BlobDir } from '../oci/blobs.js';
import { cacheKey } from './cache.js';
import type { LayerStore } from '../engine/ports.js';
import {
  CACHE_CONFIG_KEY,
  RemoteBuildCache,
  decodeCacheBases,
  decodeCacheConfig,
  encodeCacheConfig,
  explainDifference,
  fingerprint,
  listContextFiles,
  parseCacheSpec,
  recordLayers,
  type CacheRecord,
  type StepInfo,
} from './remote.js';

const D = (c: string): string => 'sha256:' + c.repeat(64);

test('parseCacheSpec: buildx forms, defaults and one-line errors', () => {
  assert.deepEqual(parseCacheSpec('type=registry,ref=127.0.0.1:5000/app/cache', '--cache-to'), {
    type: 'registry',
    ref: '127.0.0.1:5000/app/cache:latest',
    mode: 'min',
  });
  assert.deepEqual(parseCacheSpec('type=registry,ref=reg.example/app:buildcache,mode=max', '--cache-to'), {
    type: 'registry',
    ref: 'reg.example/app:buildcache',
    mode: 'max',
  });
  // bare ref shorthand is --cache-from only
  assert.equal(parseCacheSpec('reg.example/app:c', '--cache-from').ref, 'reg.example/app:c');
  for (const [v, flag, re] of [
    ['reg.example/app:c', '--cache-to', /key=value/],
    ['type=local,dest=/tmp/x', '--cache-to', /not supported/],
    ['type=registry', '--cache-from', /ref= is required/],
    ['type=registry,ref=Bad/Name', '--cache-from', /invalid ref/],
    ['type=registry,ref=r.example/a:b,mode=all', '--cache-to', /mode must be min or max/],
    ['type=registry,ref=r.example/a:b,colour=red', '--cache-to', /unknown field "colour"/],
    [`type=registry,ref=r.example/a@${D('a')}`, '--cache-to', /not a digest/],
  ] as const) {
    assert.throws(
      () => parseCacheSpec(v, flag),
      (e: unknown) => isKilnError(e, 'OPTION_INVALID') && re.test(e.message) && !e.message.includes('\n'),
      v,
    );
  }
});

function info(parts: Record<string, unknown>, extra: Partial<StepInfo> = {}): StepInfo {
  return { slot: 'Dockerfile/stage-0/3', name: '[3/4] RUN make', parts, ...extra };
}

test('fingerprints hash values (no secrets stored) and keep keys and file digests', () => {
  const fp = fingerprint(
    info(
      { parent: D('1'), op: 'RUN', argv: ['sh', '-c', 'make'], env: ['TOKEN=hunter2', 'A=1'] },
      { files: { 'a.txt': 'x' } },
    ),
  );
  assert.equal(fp.fields.parent, D('1'));
  assert.match(fp.fields.argv as string, /^[a-f0-9]{16}$/);
  assert.deepEqual(Object.keys(fp.env ?? {}).sort(), ['A', 'TOKEN']);
  assert.ok(!JSON.stringify(fp).includes('hunter2'), 'a build-arg value must never be stored');
  assert.deepEqual(fp.files, { 'a.txt': 'x' });
});

test('explainDifference names the input that changed', () => {
  const base = { parent: D('1'), op: 'RUN', argv: ['sh', '-c', 'make'], env: ['A=1', 'B=2'], user: '' };
  const prev = fingerprint(info(base, { base: D('b') }));
  assert.equal(
    explainDifference(fingerprint(info(base, { base: D('b') })), undefined),
    'no earlier build of this step in the cache',
  );
  assert.equal(
    explainDifference(fingerprint(info({ ...base, argv: ['sh', '-c', 'make all'] }, { base: D('b') })), prev),
    'command text changed',
  );
  assert.equal(
    explainDifference(fingerprint(info({ ...base, env: ['A=1', 'B=3', 'C=1'] }, { base: D('b') })), prev),
    'ARG/ENV changed: B, C',
  );
  assert.match(
    explainDifference(fingerprint(info({ ...base, parent: D('2') }, { base: D('c') })), prev),
    /^base image changed: sha256:bbbbbbbbbbbb → sha256:cccccccccccc$/,
  );
  assert.equal(
    explainDifference(fingerprint(info({ ...base, parent: D('2') }, { base: D('b') })), prev),
    'an earlier step changed',
  );
  assert.equal(explainDifference(fingerprint(info({ ...base, user: 'app' }, { base: D('b') })), prev), 'USER changed');
  const copy = { parent: D('1'), op: 'COPY', sources: D('5') };
  const p2 = fingerprint(info(copy, { files: { 'src/a.js': '1', 'src/b.js': '2', 'src/c.js': '3' } }));
  const c2 = fingerprint(
    info({ ...copy, sources: D('6') }, { files: { 'src/a.js': '1', 'src/b.js': '9', 'src/d.js': '4' } }),
  );
  assert.equal(explainDifference(c2, p2), 'file changed: src/b.js; file added: src/d.js; file removed: src/c.js');
  // no file lists on one side: still names the input
  assert.equal(
    explainDifference(fingerprint(info({ ...copy, sources: D('6') })), fingerprint(info(copy))),
    'source files changed',
  );
});

function rec(key: string, layer: string, diff: string): CacheRecord {
  return {
    key: D(key),
    layer: { diffID: D(diff), digest: D(layer), size: 10, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' },
  };
}

test('cache config round-trips, is a valid image config, and drops malformed records', () => {
  const records = [rec('1', 'a', 'd'), rec('2', 'b', 'e'), rec('3', 'a', 'd')];
  const layers = recordLayers(records);
  assert.deepEqual(
    layers.map((l) => l.digest),
    [D('a'), D('b')],
  );
  const raw = encodeCacheConfig(records, layers);
  const cfg = JSON.parse(raw.toString()) as {
    rootfs: { type: string; diff_ids: string[] };
    os: string;
    architecture: string;
  };
  assert.equal(cfg.rootfs.type, 'layers');
  assert.deepEqual(cfg.rootfs.diff_ids, [D('d'), D('e')]);
  assert.equal(cfg.os, 'linux');
  assert.deepEqual(decodeCacheConfig(raw), records);
  const j = JSON.parse(raw.toString()) as Record<string, { records: unknown[] }>;
  j[CACHE_CONFIG_KEY]!.records.push({ key: 'nope' }, { key: D('4'), layer: { diffID: 'x' } });
  assert.deepEqual(decodeCacheConfig(Buffer.from(JSON.stringify(j))), records);
  assert.throws(
    () => decodeCacheConfig(Buffer.from('{"architecture":"amd64"}')),
    (e: unknown) => isKilnError(e, 'CACHE_INVALID'),
  );
  assert.throws(
    () => decodeCacheConfig(Buffer.from('{')),
    (e: unknown) => isKilnError(e, 'CACHE_INVALID'),
  );
});

test('base layer summaries travel in the cache config; malformed entries are dropped, older caches have none', () => {
  const records: CacheRecord[] = [];
  assert.deepEqual(decodeCacheBases(encodeCacheConfig(records, [])), {});
  const bases = { [D('b')]: ['bin/', 'etc', 'etc/passwd'] };
  const raw = encodeCacheConfig(records, [], bases);
  assert.deepEqual(decodeCacheBases(raw), bases);
  assert.deepEqual(decodeCacheConfig(raw), records);
  const j = JSON.parse(raw.toString()) as Record<string, { bases: Record<string, unknown> }>;
  j[CACHE_CONFIG_KEY]!.bases['sha256:short'] = ['x'];
  j[CACHE_CONFIG_KEY]!.bases[D('c')] = [1];
  assert.deepEqual(decodeCacheBases(Buffer.from(JSON.stringify(j))), bases);
  assert.deepEqual(decodeCacheBases(Buffer.from('{')), {});
});

test('RemoteBuildCache without --cache-from behaves as the local cache and selects min/max records', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-remote-cache-'));
  try {
    const have = new Set<string>();
    const layers: LayerStore = {
      unpack: async () => {
        throw new Error('no unpack expected');
      },
      dirOf: async (d) => (have.has(d) ? '/x' : undefined),
      writeBlob: async () => {
        throw new Error('no layer writing expected');
      },
      adopt: async () => {
        throw new Error('no layer writing expected');
      },
      layer: async () => {
        throw new Error('no layer expected');
      },
    };
    const blobs = new BlobDir(join(dir, 'blobs'));
    const warnings: string[] = [];
    const c = new RemoteBuildCache({
      dir: join(dir, 'cache'),
      from: [],
      to: [],
      registry: {},
      blobs,
      layers,
      warn: (m) => warnings.push(m),
    });
    const k1 = cacheKey({ step: 1 });
    const k2 = cacheKey({ step: 2 });
    assert.equal(await c.get(k1), undefined);
    const l1 = await blobs.writeBytes('layer one');
    const l2 = await blobs.writeBytes('layer two');
    c.noteStep(k1, info({ parent: D('0'), op: 'RUN', argv: ['a'] }, { slot: 's/1' }));
    await c.put(k1, { version: 1, layer: { diffID: D('d'), digest: l1.digest, size: l1.size, mediaType: 'm' } });
    await c.put(k2, { version: 1, layer: { diffID: D('e'), digest: l2.digest, size: l2.size, mediaType: 'm' } });
    // the layer dir is missing: not a usable hit, the entry is still returned (the engine re-checks)
    assert.equal(c.stats.localHits, 0);
    have.add(D('d'));
    assert.equal((await c.get(k1))?.layer?.digest, l1.digest);
    assert.equal(c.stats.localHits, 1);
    assert.deepEqual(
      c.recordsFor('max', [D('e')]).map((r) => r.key),
      [k1, k2],
    );
    assert.deepEqual(
      c.recordsFor('min', [D('e')]).map((r) => r.key),
      [k2],
    );
    assert.equal(c.recordsFor('max', [])[0]?.step?.slot, 's/1');
    // explanations use the previous build of the same slot
    await c.saveStepHistory();
    const c2 = new RemoteBuildCache({
      dir: join(dir, 'cache'),
      from: [],
      to: [],
      registry: {},
      blobs,
      layers,
      warn: () => undefined,
    });
    const k3 = cacheKey({ step: 3 });
    c2.noteStep(k3, info({ parent: D('0'), op: 'RUN', argv: ['b'] }, { slot: 's/1' }));
    assert.equal(await c2.explainMiss(k3), 'command text changed');
    assert.equal(await c2.explainMiss(cacheKey({ unknown: 1 })), undefined);
    assert.ok((await readdir(join(dir, 'cache', 'steps'))).every((n) => n.endsWith('.json')));
    assert.deepEqual(warnings, []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('listContextFiles lists inside the context only, reuses unchanged hashes, and explains file changes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-remote-files-'));
  try {
    const ctx = join(dir, 'ctx');
    await mkdir(join(ctx, 'src', 'sub'), { recursive: true });
    await writeFile(join(ctx, 'src', 'a.js'), 'a');
    await writeFile(join(ctx, 'src', 'sub', 'b.js'), 'b');
    await writeFile(join(ctx, 'src', 'skip.log'), 'x');
    await writeFile(join(dir, 'outside'), 'secret');
    await symlink('../../outside', join(ctx, 'src', 'link'));
    const ignore = (rel: string): boolean => rel.endsWith('.log');
    const first = listContextFiles(ctx, ['src/', '../outside', '*.js'], {}, ignore) as Record<string, string>;
    assert.deepEqual(Object.keys(first).sort(), ['src/a.js', 'src/link', 'src/sub/b.js']);
    assert.match(first['src/a.js'] as string, /^[a-f0-9]{16}:1:\d+:\d+$/);
    // an unchanged signature reuses the previous hash without reading (proved by a planted fake hash)
    const planted = {
      ...first,
      'src/a.js': 'ffffffffffffffff:' + (first['src/a.js'] as string).split(':').slice(1).join(':'),
    };
    assert.equal(listContextFiles(ctx, ['src'], planted, ignore)?.['src/a.js'], planted['src/a.js']);
    assert.equal(listContextFiles(ctx, ['./src/../src'], {}, ignore)?.['src/a.js'], first['src/a.js']);
    // a digest the caller already has is taken without reading the file (a fresh checkout is not read twice)
    const known = (rel: string): string | undefined => (rel === 'src/sub/b.js' ? 'e'.repeat(64) : undefined);
    const withKnown = listContextFiles(ctx, ['src'], {}, ignore, known);
    assert.match(withKnown?.['src/sub/b.js'] ?? '', /^eeeeeeeeeeeeeeee:1:/);
    assert.equal(withKnown?.['src/a.js'], first['src/a.js']);

    // through the cache: a miss names the changed file
    const layers: LayerStore = {
      unpack: async () => '/x',
      dirOf: async () => undefined,
      writeBlob: async () => {
        throw new Error('unused');
      },
      adopt: async () => {
        throw new Error('unused');
      },
      layer: async () => {
        throw new Error('unused');
      },
    };
    const mk = (): RemoteBuildCache =>
      new RemoteBuildCache({
        dir: join(dir, 'cache'),
        from: [],
        to: [],
        registry: {},
        blobs: new BlobDir(join(dir, 'b')),
        layers,
        warn: () => undefined,
      });
    const copyStep = (c: RemoteBuildCache, n: string): string => {
      const k = cacheKey({ sources: n });
      const i = info({ parent: D('0'), op: 'COPY', sources: D(n) }, { slot: 'D/0/2' });
      c.noteStep(k, { ...i, context: { dir: ctx, paths: ['src/'], ignore } });
      return k;
    };
    const c1 = mk();
    const k1 = copyStep(c1, '1');
    assert.equal(await c1.explainMiss(k1), undefined, 'a first build explains nothing');
    await c1.saveStepHistory();
    await writeFile(join(ctx, 'src', 'sub', 'b.js'), 'changed');
    await writeFile(join(ctx, 'src', 'skip.log'), 'ignored change');
    const c2 = mk();
    const k2 = copyStep(c2, '2');
    assert.equal(await c2.explainMiss(k2), 'file changed: src/sub/b.js');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
