/**
 * `kiln build` end to end: read and parse the Dockerfile, run the engine, export the image, write --iidfile and
 * --metadata-file. Concrete services (sandbox, layer store, context, copier, local store, registry) are injected
 * through `BuildServices`, so tests and other front ends (the build service) can swap them.
 *
 * Failure behaviour: an error or an interrupt (the AbortSignal) stops the build before any output is written, so
 * nothing is pushed; every temp dir this build created is removed; the cache only ever gets complete entries.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { KilnError, isKilnError } from '../errors.js';
import type { Command } from '../dockerfile/instructions.js';
import { parseDockerfile, type ParsedDockerfile } from '../dockerfile/convert.js';
import { formatLintWarning, lintDockerfile, type LintOptions } from '../dockerfile/lint.js';
import { imageFromParts } from '../oci/image.js';
import { withAnnotations } from '../oci/mutate.js';
import { MediaType } from '../oci/mediatypes.js';
import type { Image } from '../oci/types.js';
import type { BuildOptions } from './options.js';
import type { BaseResolver, Executor, FileCopier, LayerStore, ProgressSink, Snapshotter } from './ports.js';
import type { Frontend, FrontendPlan } from './frontend.js';
import { BuildCache, type LazyLayers } from '../cache/cache.js';
import { runEngine, type EngineResult } from './engine.js';
import { debugMark } from '../util/debug.js';
import {
  effectiveOutputs,
  exportImage,
  pushSessions,
  writeIidFile,
  writeMetadataFile,
  type ExportResult,
  type OutputWriters,
} from './outputs.js';
import type { PushOptions } from '../registry/push.js';

export { effectiveOutputs };
import { REBASABLE_LAYERS, rebasableAnnotation, rebaseVerdict, type RebaseVerdict } from '../rebase/verdict.js';

export interface BuildServices {
  kilnHome: string;
  /** The step cache (default: the local cache in $KILN_HOME/cache; the remote cache extends it). */
  cache?: BuildCache;
  /** Runs after the outputs were written (e.g. exporting the remote cache); failures are the hook's business. */
  afterExport?: (engine: EngineResult, exported: ExportResult) => Promise<void>;
  /** The loaded build context directory. */
  contextDir: string;
  /** The Dockerfile text and its display name (`Dockerfile`, or the -f base name). */
  dockerfile: { text: string; file: string };
  executor: Executor;
  snapshotter: Snapshotter;
  layers: LayerStore;
  bases: BaseResolver;
  copier: FileCopier;
  progress: ProgressSink;
  writers: OutputWriters;
  registry: PushOptions;
  /** A fresh private temp dir (removed by the build). */
  tempDir(prefix: string): Promise<string>;
  signal?: AbortSignal;
  /** How the steps are decided (default: the Dockerfile frontend on `dockerfile`). */
  frontend?: Frontend;
}

export interface BuildOutcome {
  engine: EngineResult;
  image: Image;
  exported: ExportResult;
  /**
   * Whether `kiln rebase` may swap this image's base (every layer above the base is independent of it): the
   * service's base-change trigger can rebase instead of rebuilding. Absent for images without a base.
   */
  rebase?: RebaseVerdict & { baseLayers: number };
}

/** BuildKit's build checks: warnings are printed; with `# check=error=true` they fail the build. */
function lint(text: string, file: string, opts: BuildOptions, progress: ProgressSink): void {
  const lo: LintOptions = {
    filename: file,
    buildArgs: Object.fromEntries(opts.buildArgs),
    platform: opts.platform,
  };
  if (opts.target) lo.target = opts.target;
  let res;
  try {
    res = lintDockerfile(text, lo);
  } catch {
    return; // parse errors surface from parseDockerfile with their location
  }
  for (const w of res.warnings) progress.warn(formatLintWarning(w).replace(/^WARN: /, ''));
  if (res.failed) {
    const first = res.warnings[0];
    throw new KilnError(
      'DOCKERFILE_LINT',
      `${file}${first && first.line > 0 ? `:${first.line}` : ''}: lint violations found for build (${res.warnings.length})`,
      { hint: 'fix the warnings above, or drop error=true from the # check= directive' },
    );
  }
}

/** The Dockerfile frontend: BuildKit's parser, lint (warnings; `# check=error=true` fails), typed instructions. */
export const dockerfileFrontend: Frontend = {
  name: 'dockerfile',
  plan({ options, dockerfile, progress }): Promise<FrontendPlan> {
    const { text, file } = dockerfile;
    const parsed: ParsedDockerfile = parseDockerfile(text, { filename: file });
    lint(text, file, options, progress);
    const plan: FrontendPlan = { stages: parsed.stages, metaArgs: parsed.globalArgs, file };
    if (options.target) plan.target = options.target;
    if (parsed.escapeToken !== '\\') plan.escape = parsed.escapeToken;
    return Promise.resolve(plan);
  },
};

/** Parse an ONBUILD trigger expression into the command it stands for. */
export function parseTrigger(expression: string): Command {
  const parsed = parseDockerfile(`FROM scratch\n${expression}\n`);
  const cmd = parsed.stages[0]?.commands[0];
  if (!cmd || parsed.stages[0]?.commands.length !== 1) {
    throw new KilnError('ONBUILD_INVALID', `invalid ONBUILD trigger: ${expression}`);
  }
  if (cmd.kind === 'ONBUILD')
    throw new KilnError('ONBUILD_INVALID', "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
  return cmd;
}

/** The Image for an engine result (Docker media types; outputs convert as needed). */
export function imageOf(res: EngineResult): Image {
  return imageFromParts({
    mediaType: async () => MediaType.DockerManifest,
    rawConfig: async () => res.rawConfig,
    layers: async () => res.layers.map((l) => l.layer),
  });
}

/**
 * One answer per reference in a build (the frontend and the engine may both look at an image, as S2I's builder),
 * remembering the images FROM resolved to (by manifest digest), to know how many layers the base has.
 */
function recordingBases(inner: BaseResolver, seen: Map<string, Image>): BaseResolver {
  const once = new Map<string, ReturnType<BaseResolver['resolve']>>();
  return {
    resolve: (ref, o) => {
      const key = JSON.stringify([ref, o.pull, o.platform]);
      let p = once.get(key);
      if (!p) {
        p = inner.resolve(ref, o).then((r) => {
          seen.set(r.digest, r.image);
          return r;
        });
        p.catch(() => once.delete(key));
        once.set(key, p);
      }
      return p;
    },
  };
}

export async function build(opts: BuildOptions, svc: BuildServices): Promise<BuildOutcome> {
  const frontend = svc.frontend ?? dockerfileFrontend;
  const resolved = new Map<string, Image>();
  const bases = recordingBases(svc.bases, resolved);
  const plan = await frontend.plan({
    options: opts,
    dockerfile: svc.dockerfile,
    contextDir: svc.contextDir,
    progress: svc.progress,
    bases,
  });
  const tmp = await svc.tempDir('build-');
  try {
    const engineReq: Parameters<typeof runEngine>[0] = {
      stages: plan.stages,
      metaArgs: plan.metaArgs,
      file: plan.file,
      buildArgs: opts.buildArgs,
      labels: opts.labels,
      platform: opts.platform,
      noCache: opts.noCache,
      pull: opts.pull,
      network: opts.network,
      secrets: opts.secrets,
    };
    if (plan.target) engineReq.target = plan.target;
    if (opts.sourceDateEpoch !== undefined) engineReq.sourceDateEpoch = opts.sourceDateEpoch;
    if (opts.compression && opts.compression !== 'gzip') {
      engineReq.layerFormat = `${opts.compression}:${opts.compressionLevel ?? ''}`;
    } else if (opts.compressionLevel !== undefined) engineReq.layerFormat = `gzip:${opts.compressionLevel}`;
    if (plan.escape !== undefined) engineReq.escape = plan.escape;
    const deps: Parameters<typeof runEngine>[1] = {
      executor: svc.executor,
      snapshotter: svc.snapshotter,
      layers: svc.layers,
      bases,
      cache: svc.cache ?? new BuildCache(join(svc.kilnHome, 'cache')),
      progress: svc.progress,
      copier: svc.copier,
      contextDir: svc.contextDir,
      cacheMountsDir: join(svc.kilnHome, 'cache-mounts'),
      tmpDir: join(tmp, 'engine'),
    };
    if (svc.signal) deps.signal = svc.signal;
    deps.parseTrigger = parseTrigger;
    // Pushes start during the build: each layer of the image uploads as soon as it is written.
    const sessions = pushSessions(effectiveOutputs(opts), opts.tags, svc.registry);
    if (sessions.size > 0) {
      deps.onLayer = (l) => sessions.forEach((s) => s.prefetch(l));
      // stream each layer while it is written, once per repository (tags of one repository share blobs)
      const streams = [...new Map([...sessions.values()].map((s) => [s.repository, s])).values()];
      if (process.env.KILN_STREAM_PUSH !== '0') deps.onLayerFile = (g) => streams.forEach((s) => s.stream(g));
    }
    // only pushes, and no frontend work on the layer dirs after the engine: registry cache hits may stay unfetched
    const lazy = deps.cache as BuildCache & Partial<LazyLayers>;
    const outs = effectiveOutputs(opts);
    if (
      lazy.allowLazy &&
      !plan.afterEngine &&
      sessions.size > 0 &&
      outs.every((o) => o.type === 'registry' || (o.type === 'image' && o.push))
    ) {
      lazy.allowLazy([...new Set([...sessions.values()].map((s) => s.ref.registry))]);
    }
    let engine: EngineResult;
    for (let attempt = 1; ; attempt++) {
      try {
        engine = await runEngine(engineReq, deps);
        break;
      } catch (e) {
        // an unfetched cache hit turned out unusable when a later step needed it: the cache has set it aside (the
        // warning is out), so the build runs again and that step runs; everything done so far is cached locally
        if (isKilnError(e, 'CACHE_RECORD_UNUSABLE') && attempt < 4 && !svc.signal?.aborted) {
          deps.firstVertex = (deps.firstVertex ?? 0) + 1000;
          continue;
        }
        await Promise.all([...sessions.values()].map((s) => s.settle()));
        throw e;
      }
    }
    debugMark('engine done (layers written)');
    if (svc.signal?.aborted) throw new KilnError('INTERRUPTED', 'build interrupted');
    if (plan.afterEngine) {
      const tools: Parameters<NonNullable<FrontendPlan['afterEngine']>>[1] = {
        snapshotter: svc.snapshotter,
        executor: svc.executor,
        progress: svc.progress,
        tmpDir: join(tmp, 'frontend'),
      };
      if (svc.signal) tools.signal = svc.signal;
      try {
        await plan.afterEngine(engine, tools);
      } catch (e) {
        await Promise.all([...sessions.values()].map((s) => s.settle()));
        throw e;
      }
    }
    let image = imageOf(engine);
    const annotations: Record<string, string> = {
      'org.opencontainers.image.created':
        opts.sourceDateEpoch !== undefined
          ? new Date(opts.sourceDateEpoch * 1000).toISOString().replace(/\.000Z$/, 'Z')
          : new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    };
    let rebase: BuildOutcome['rebase'];
    if (engine.base) {
      annotations['org.opencontainers.image.base.name'] = engine.base.name;
      annotations['org.opencontainers.image.base.digest'] = engine.base.digest;
      // which layers do not depend on what is below them (kiln rebase decides from the image alone)
      annotations[REBASABLE_LAYERS] = rebasableAnnotation(engine.layers);
      // the base and the rebasable layers are also manifest annotations of the image itself (pushed, stored)
      image = withAnnotations(image, {
        'org.opencontainers.image.base.name': engine.base.name,
        'org.opencontainers.image.base.digest': engine.base.digest,
        [REBASABLE_LAYERS]: annotations[REBASABLE_LAYERS],
      });
      const baseImage = resolved.get(engine.base.digest);
      if (baseImage) {
        const baseLayers = (await baseImage.config()).rootfs.diff_ids.length;
        const independent = new Set(engine.layers.flatMap((l, i) => (l.independent ? [i] : [])));
        rebase = { ...rebaseVerdict(engine.config, baseLayers, independent), baseLayers };
      }
    }
    const exportOpts: Parameters<typeof exportImage>[1] = {
      outputs: effectiveOutputs(opts),
      tags: opts.tags,
      registry: svc.registry,
      writers: svc.writers,
      layers: engine.layers.map((l) => ({ uncompressed: () => l.layer.uncompressed(), digest: l.diffID })),
      annotations,
      tmpDir: join(tmp, 'export'),
      sessions,
    };
    if (opts.sourceDateEpoch !== undefined) exportOpts.sourceDateEpoch = opts.sourceDateEpoch;
    if (svc.signal) exportOpts.signal = svc.signal;
    const id = engine.vertices + 1;
    const what = exportOpts.outputs.some((o) => o.push) ? 'exporting to image and pushing' : 'exporting to image';
    svc.progress.start(id, what);
    let exported: ExportResult;
    try {
      exported = await exportImage(image, exportOpts);
      debugMark('exported');
    } catch (e) {
      svc.progress.error(id, e instanceof Error ? e.message : String(e));
      throw e;
    }
    const line = (s: string): void => svc.progress.log(id, 'stdout', Buffer.from(s + '\n'));
    line(`writing image ${exported.configDigest} done`);
    for (const n of exported.names) line(`${exported.pushed.includes(n) ? 'pushing' : 'naming to'} ${n} done`);
    svc.progress.done(id);
    if (opts.iidfile) await writeIidFile(opts.iidfile, exported);
    // kiln's own key: may `kiln rebase` swap this image's base (the base-change trigger can rebase, not rebuild)
    if (opts.metadataFile)
      await writeMetadataFile(opts.metadataFile, exported, rebase ? { 'kiln.rebase': rebase } : {});
    if (svc.afterExport) await svc.afterExport(engine, exported);
    return rebase ? { engine, image, exported, rebase } : { engine, image, exported };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
