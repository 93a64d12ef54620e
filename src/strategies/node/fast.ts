/**
 * The Node.js builder's fast path (ko/Jib style): when the dependency install is cached — same base digest, same
 * dependency part of package.json, same lockfile, same start command and build settings — the engine is not run at
 * all. The previous engine build recorded, per install key, the image it made (config and layer descriptors, the
 * blobs in kiln's blob store); a rebuild writes only the app layer with the deterministic layer writer, swaps it in
 * (the config's last diffID), and exports the image through the engine's own exporter (local store or registry push,
 * which skips every blob the registry has). `--label` values may differ from the recorded build's (names may not).
 * Walking ~90 cached `COPY --link` steps costs ~0.1 s each; this costs the
 * app layer alone. The image is byte-identical to what the engine path makes (the integration test compares).
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalLayerStore } from '../../engine/local.js';
import { writeLayer } from '../../layer/writer.js';
import { StoreFirstResolver } from '../../engine/bases.js';
import type { BuildOutcome } from '../../engine/build.js';
import type { BuildImage } from '../../engine/imageconfig.js';
import type { EngineResult, StageLayer } from '../../engine/engine.js';
import { effectiveOutputs, exportImage, pushSessions, writeIidFile, writeMetadataFile } from '../../engine/outputs.js';
import type { BuildOptions } from '../../engine/options.js';
import type { EmbeddedBuild } from '../../engine/services.js';
import { imageFromParts } from '../../oci/image.js';
import { withAnnotations } from '../../oci/mutate.js';
import { MediaType } from '../../oci/mediatypes.js';
import { LocalStore } from '../../oci/store.js';
import type { Layer } from '../../oci/types.js';
import { Progress } from '../../progress.js';
import { Keychain, embedderFirst } from '../../registry/keychain.js';
import type { PushOptions } from '../../registry/push.js';
import { closeTransports, transportFor } from '../../registry/transport.js';
import { parseReference } from '../../ref/reference.js';
import { RepositoryClient } from '../../registry/client.js';
import { debugMark } from '../../util/debug.js';
import { homeDirs } from '../../util/paths.js';
import { writeFileAtomic } from '../../util/atomic.js';

/** One layer of a recorded image. */
interface RecordedLayer {
  digest: string;
  diffID: string;
  size: number;
  mediaType: string;
  independent?: boolean;
}

/** What an engine build of a project left for the next build with the same install key. */
interface NodeCacheEntry {
  v: 1;
  rawConfig: string;
  /** Every layer above the base (dependencies, .bin, WORKDIR, the app layer last). */
  layers: RecordedLayer[];
  baseLayers: number;
  base: { name: string; digest: string };
  /** The manifest's annotations (base name and digest, rebasable layers). */
  annotations: Record<string, string>;
  rebase?: BuildOutcome['rebase'];
}

/** What decides whether a recorded image still holds (everything but the app files). */
export interface NodeFastKey {
  base: string;
  installManifest: string;
  lockText: string;
  cmd: string[];
}

/** Why a build may not take the fast path (undefined: it may). Unusual outputs and caches go through the engine. */
export function fastPathRefusal(opts: BuildOptions): string | undefined {
  if (process.env.KILN_NODE_FAST === '0') return 'KILN_NODE_FAST=0';
  if (opts.noCache) return '--no-cache';
  if (opts.outputs.length > 0) return '--output';
  if (opts.cacheFrom?.length || opts.cacheTo?.length) return '--cache-from/--cache-to';
  if (opts.target) return '--target';
  // the app layer is written with owner 0:0 as the engine writes it: only possible as (namespace) root
  if (process.getuid?.() !== 0) return 'not root';
  return undefined;
}

function keyOf(k: NodeFastKey, baseDigest: string, opts: BuildOptions): string {
  const parts = [
    'kiln-node-fast/1',
    k.base,
    baseDigest,
    k.installManifest,
    k.lockText,
    k.cmd,
    opts.platform,
    opts.sourceDateEpoch ?? null,
    // label names, not values: a new value is set in the recorded config (the build service labels every build
    // with its commit, which must not miss the fast path)
    Object.keys(opts.labels).sort(),
    [...opts.buildArgs.entries()],
    opts.compression ?? 'gzip',
    opts.compressionLevel ?? null,
    opts.isolation ?? 'userns',
  ];
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

const mark = (what: string): void => debugMark(`node fast path: ${what}`);

const entryFile = (home: string, key: string): string => join(homeDirs(home).cache, 'node', `${key}.json`);

/**
 * The registry options a fast-path build uses (docker keychain after the embedder's credentials). The same embedder
 * credentials function gives the same credentials function here, and so the same transport pool
 * (src/registry/transport.ts pools by it): a build worker that pinged the registry and resolved the base while the
 * service fetched the commit (`prepareNodeBuild`) reuses those connections and tokens for its job.
 */
export function nodeRegistryOptions(
  opts: Pick<BuildOptions, 'insecureRegistries' | 'registryMirrors' | 'progress'>,
  flags: { registryCa?: string[] },
  embed: Pick<EmbeddedBuild, 'credentials'>,
): PushOptions {
  const credentials = embed.credentials ? embedderFirst(embed.credentials) : new Keychain().source();
  return {
    insecureRegistries: opts.insecureRegistries.map((h) => h.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '')),
    caFiles: flags.registryCa ?? [],
    mirrors: opts.registryMirrors.map((u) => u.replace(/\/+$/, '')),
    credentials,
    progress: new Progress(opts.progress === 'json' ? 'json' : 'quiet'),
  };
}

/**
 * Runs the app layer's writer once on a throwaway tree (a few small files, the fast path's options: reroot, gzip,
 * in this thread), the blob deleted. Why: a build worker is a fresh process per build, so the writer's code (walk,
 * tar headers, gzip members, digests) ran cold in every build — ~40 ms for a 26 KB app layer against ~10 ms once
 * warm. The worker calls this before it says it is ready (off the build's path). Never throws.
 */
export async function warmAppLayerWriter(home: string): Promise<void> {
  const tmpBase = homeDirs(home).tmp;
  let dir: string | undefined;
  try {
    await mkdir(tmpBase, { recursive: true, mode: 0o700 });
    dir = await mkdtemp(join(tmpBase, 'node-warm-'));
    const src = join(dir, 'src');
    await mkdir(join(src, 'lib'), { recursive: true });
    await writeFile(join(src, 'package.json'), '{"name":"warm-up","version":"1.0.0"}\n');
    for (let i = 0; i < 8; i++) await writeFile(join(src, 'lib', `m${i}.js`), `module.exports = ${i};\n`);
    for (let i = 0; i < 3; i++) {
      const w = await writeLayer(src, {
        tmpDir: dir,
        mediaTypes: 'docker',
        sourceDateEpoch: 0,
        reroot: { name: 'app', uid: 0, gid: 0, mtime: 0, skip: ['node_modules', '.git'] },
      });
      await rm(w.file, { force: true });
    }
  } catch {
    // only a warm-up: the build writes its layer either way
  } finally {
    if (dir) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** Clients that opened upload sessions in prepareNodeBuild. */
const preparedClients: RepositoryClient[] = [];

/** Delete the upload sessions prepareNodeBuild opened that no upload took (after the build; best effort). */
export async function cancelPreparedUploads(): Promise<void> {
  await Promise.all(preparedClients.splice(0).map((c) => c.cancelOpenedUploads()));
}

/**
 * What a build worker can do for a Node.js build before its source exists (the build service is still fetching the
 * commit): resolve the base — registry ping, token, manifest — through the embedder's resolver (`embed.bases`,
 * which keeps the answer for the job), ping the registries of `push` (tags) and open two upload sessions there
 * (the app layer's and the config's), all over the transports the job will use (see nodeRegistryOptions). Why: these round trips were the fast path's first ~50–80 ms, after the
 * checkout; now they run beside the git fetch. Never throws: the build resolves again and reports errors itself.
 */
export async function prepareNodeBuild(o: {
  home: string;
  base: string;
  push: string[];
  opts: Pick<BuildOptions, 'insecureRegistries' | 'registryMirrors' | 'progress' | 'pull' | 'platform'>;
  embed: Pick<EmbeddedBuild, 'credentials' | 'bases'>;
}): Promise<void> {
  const registry = nodeRegistryOptions(o.opts, {}, o.embed);
  const pings = o.push.map(async (tag) => {
    const ref = parseReference(tag);
    await transportFor(ref.registry, ref.apiHost(), registry).ping({ label: `push ${tag}` });
    // the fast path uploads two blobs, the app layer and the config: their POSTs now, not after the checkout
    const client = new RepositoryClient(ref, registry, `push ${tag}`);
    client.openUploads(2);
    preparedClients.push(client);
  });
  const base = (async () => {
    const inner = new StoreFirstResolver(await LocalStore.open(o.home), registry);
    const bases = o.embed.bases ? o.embed.bases(inner) : inner;
    await bases.resolve(o.base, { pull: o.opts.pull, platform: o.opts.platform });
  })();
  await Promise.all([...pings, base].map((p) => p.catch(() => undefined)));
  mark('prepared');
}

/**
 * Remember an engine build's image under its install key (after the build succeeded). Skipped quietly when the
 * image does not have the expected shape (a config that does not survive a JSON round trip byte for byte).
 */
export async function recordNodeImage(
  home: string,
  k: NodeFastKey,
  opts: BuildOptions,
  res: BuildOutcome,
  baseLayers: number,
): Promise<void> {
  const base = res.engine.base;
  if (!base || fastPathRefusal(opts)) return;
  const raw = res.engine.rawConfig.toString('utf8');
  if (JSON.stringify(JSON.parse(raw)) !== raw) return;
  const layers: RecordedLayer[] = [];
  for (const l of res.engine.layers.slice(baseLayers)) {
    const r: RecordedLayer = {
      digest: await l.layer.digest(),
      diffID: l.diffID,
      size: await l.layer.size(),
      mediaType: await l.layer.mediaType(),
    };
    if (l.independent) r.independent = true;
    layers.push(r);
  }
  const annotations = (await res.image.manifest()).annotations ?? {};
  const entry: NodeCacheEntry = { v: 1, rawConfig: raw, layers, baseLayers, base, annotations };
  if (res.rebase) entry.rebase = res.rebase;
  const file = entryFile(home, keyOf(k, base.digest, opts));
  await mkdir(join(homeDirs(home).cache, 'node'), { recursive: true });
  await writeFileAtomic(file, JSON.stringify(entry));
}

/**
 * Build the image without the engine when an engine build with the same install key was recorded and its blobs
 * are still in the blob store. Returns undefined (the caller runs the engine) on any miss.
 */
export async function tryFastNodeBuild(o: {
  home: string;
  key: NodeFastKey;
  source: string;
  skip: Set<string>;
  opts: BuildOptions;
  flags: { registryCa?: string[] };
  embed: EmbeddedBuild;
  progress: {
    start(id: number, name: string): void;
    done(id: number): void;
    log(id: number, s: 'stdout' | 'stderr', b: Buffer): void;
    error(id: number, m: string): void;
  };
}): Promise<BuildOutcome | undefined> {
  const { opts, home } = o;
  if (fastPathRefusal(opts)) return undefined;
  mark('entered');
  const registry = nodeRegistryOptions(opts, o.flags, o.embed);
  const tmpBase = homeDirs(home).tmp;
  await mkdir(tmpBase, { recursive: true, mode: 0o700 });
  let work: string | undefined;
  let app: Promise<{ w: Awaited<ReturnType<LocalLayerStore['writeBlob']>>; layer: Layer }> | undefined;
  try {
    const store = await LocalStore.open(home);
    const writer = new LocalLayerStore({
      layersDir: homeDirs(home).layers,
      blobs: store.blobs,
      mediaTypes: 'docker',
      ...(opts.compression ? { compression: opts.compression } : {}),
      ...(opts.compressionLevel !== undefined ? { level: opts.compressionLevel } : {}),
    });
    // The app layer depends on the source alone: written while the base is resolved (registry round trips). On a
    // miss the engine path writes this very layer (same diffID) anyway.
    const workDir = await mkdtemp(join(tmpBase, 'node-fast-'));
    work = workDir;
    app = (async () => {
      // straight from the source: what `cp` to app/ and a chown to 0:0 of every entry would give (no staging copy)
      const epoch = opts.sourceDateEpoch ?? 0;
      const w = await writer.writeBlob(o.source, {
        sourceDateEpoch: epoch,
        inProcess: true,
        reroot: { name: 'app', uid: 0, gid: 0, mtime: epoch, skip: [...o.skip] },
      });
      const layer = await writer.layer(w.digest, w.diffID, w.size, w.mediaType);
      mark('app layer written');
      return { w, layer };
    })();
    app.catch(() => undefined); // awaited below, or settled in finally
    const inner = new StoreFirstResolver(store, registry);
    const bases = o.embed.bases ? o.embed.bases(inner) : inner;
    let base;
    try {
      base = await bases.resolve(o.key.base, { pull: opts.pull, platform: opts.platform });
    } catch {
      return undefined; // the engine path reports it
    }
    let entry: NodeCacheEntry;
    try {
      entry = JSON.parse(await readFile(entryFile(home, keyOf(o.key, base.digest, opts)), 'utf8')) as NodeCacheEntry;
    } catch {
      return undefined;
    }
    const baseLayerList = await base.image.layers();
    if (entry.v !== 1 || baseLayerList.length !== entry.baseLayers || entry.layers.length < 1) return undefined;
    const docker = MediaType.DockerManifest;
    const found = await Promise.all(
      entry.layers
        .slice(0, -1)
        .map(async (l) =>
          (await store.blobs.has(l.digest)) ? writer.layer(l.digest, l.diffID, l.size, l.mediaType) : undefined,
        ),
    );
    if (found.some((l) => l === undefined)) return undefined; // pruned: the engine writes it again
    const kept = found as Layer[];
    const progress = o.progress;
    progress.start(
      1,
      `[node] dependencies cached: ${entry.layers.length - 1} layers of ${entry.base.name}@${base.digest.slice(0, 19)} reused`,
    );
    progress.done(1);
    mark('base resolved, record read, blobs checked');
    progress.start(2, '[node] COPY --link --chown=0:0 app/ /app/');
    const { w, layer: appLayer } = await app;
    progress.done(2);
    const cfg = JSON.parse(entry.rawConfig) as BuildImage;
    cfg.rootfs.diff_ids[cfg.rootfs.diff_ids.length - 1] = w.diffID;
    // the engine applies --label last (`{...Labels, ...labels}`, serialized with sorted keys): same names, new values
    if (Object.keys(opts.labels).length > 0) cfg.config.Labels = { ...(cfg.config.Labels ?? {}), ...opts.labels };
    const rawConfig = Buffer.from(JSON.stringify(cfg));
    const layers = [...baseLayerList, ...kept, appLayer];
    const image = withAnnotations(
      imageFromParts({ mediaType: async () => docker, rawConfig: async () => rawConfig, layers: async () => layers }),
      entry.annotations,
    );
    const outputs = effectiveOutputs(opts);
    const exportOpts: Parameters<typeof exportImage>[1] = {
      outputs,
      tags: opts.tags,
      registry,
      writers: { saveLocal: async (img, names) => void (await store.put(img, names)) },
      layers: await Promise.all(
        layers.map(async (l) => ({ uncompressed: () => l.uncompressed(), digest: await l.diffID() })),
      ),
      annotations: {
        'org.opencontainers.image.created': new Date((opts.sourceDateEpoch ?? 0) * 1000)
          .toISOString()
          .replace(/\.000Z$/, 'Z'),
        ...entry.annotations,
      },
      tmpDir: join(workDir, 'export'),
      sessions: pushSessions(outputs, opts.tags, registry),
    };
    if (opts.sourceDateEpoch !== undefined) exportOpts.sourceDateEpoch = opts.sourceDateEpoch;
    if (o.embed.signal) exportOpts.signal = o.embed.signal;
    progress.start(3, outputs.some((x) => x.push) ? 'exporting to image and pushing' : 'exporting to image');
    let exported;
    try {
      exported = await exportImage(image, exportOpts);
    } catch (e) {
      progress.error(3, e instanceof Error ? e.message : String(e));
      throw e;
    }
    const line = (s: string): void => progress.log(3, 'stdout', Buffer.from(s + '\n'));
    line(`writing image ${exported.configDigest} done`);
    for (const n of exported.names) line(`${exported.pushed.includes(n) ? 'pushing' : 'naming to'} ${n} done`);
    progress.done(3);
    mark('exported');
    if (opts.iidfile) await writeIidFile(opts.iidfile, exported);
    if (opts.metadataFile)
      await writeMetadataFile(opts.metadataFile, exported, entry.rebase ? { 'kiln.rebase': entry.rebase } : {});
    // the engine's result shape for the callers (they read the base and the layers; nothing here was extracted)
    const stage: StageLayer[] = [];
    for (const l of baseLayerList) stage.push({ diffID: await l.diffID(), dir: '', layer: l });
    entry.layers.slice(0, -1).forEach((l, i) =>
      stage.push({
        diffID: l.diffID,
        dir: '',
        layer: kept[i] as Layer,
        ...(l.independent ? { independent: true } : {}),
      }),
    );
    stage.push({
      diffID: w.diffID,
      dir: '',
      layer: appLayer,
      ...(entry.layers.at(-1)?.independent ? { independent: true } : {}),
    });
    const engine: EngineResult = {
      config: cfg,
      rawConfig,
      layers: stage,
      base: entry.base,
      stateDigest: '',
      vertices: 3,
    };
    return entry.rebase ? { engine, image, exported, rebase: entry.rebase } : { engine, image, exported };
  } finally {
    await app?.catch(() => undefined); // never remove its dir under it
    // at once, not one by one; after the result when the embedder takes it (the build service's worker)
    const cleanup = async (): Promise<void> =>
      void (await Promise.all([
        work ? rm(work, { recursive: true, force: true }) : undefined,
        closeTransports(registry),
      ]));
    if (o.embed.after) o.embed.after(cleanup);
    else await cleanup();
  }
}
