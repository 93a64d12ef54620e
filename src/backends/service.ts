/**
 * What the build service's worker runs for one image: `runStrategyBuild(job, …)` honours the image's `strategy:`
 * (dockerfile, s2i) and `backend:` (kiln, buildah, docker) and answers in the shape of a kiln build
 * (`exported.digest`, `.configDigest`, `.pushed`), so the worker stays the same for all of them. The Dockerfile
 * on kiln's engine is exactly `runBuildCommand`.
 */
import { KilnError } from '../errors.js';
import { parseReferenceWithDefaultTag } from '../ref/reference.js';
import type { BuildOptions } from '../engine/options.js';
import { runBuildCommand, type EmbeddedBuild } from '../engine/services.js';
import type { BuildOutcome } from '../engine/build.js';
import type { RebaseRecord, WorkerJob } from '../service/runner/protocol.js';
import { runS2IBuild, type S2IOptions } from '../strategies/s2i/frontend.js';
import { parseEnvFlag, parseRuntimeArtifact, parseUidRanges } from '../strategies/s2i/flags.js';
import { builderFor } from './index.js';
import type { BuildpacksOptions } from '../strategies/buildpacks/build.js';

/** The part of a build's outcome the worker reports. */
export interface StrategyOutcome {
  exported: { digest: string; configDigest: string; pushed: string[] };
  /** kiln's rebase verdict (the service's base-change trigger rebases rebasable images); other backends give none. */
  rebase?: RebaseRecord;
}

/** The engine's outcome with its rebase verdict naming the base it is about (the final stage's FROM). */
function withRebaseBase(o: BuildOutcome): StrategyOutcome {
  const out: StrategyOutcome = { exported: o.exported };
  if (o.rebase) {
    const { rebasable, baseLayers, blocker } = o.rebase;
    out.rebase = { rebasable, baseLayers, ...(blocker ? { blocker } : {}) };
    if (o.engine.base) out.rebase.base = o.engine.base.name;
  }
  return out;
}

/** S2I options from the service's image config. */
export function s2iOptionsOf(job: WorkerJob): S2IOptions {
  const s = job.s2i;
  if (!s?.builderImage) {
    throw new KilnError('OPTION_INVALID', 'strategy s2i needs s2i.builderImage in the image config', {
      hint: 'images: [{name: app, strategy: s2i, s2i: {builderImage: registry/builder:1}}]',
    });
  }
  const o: S2IOptions = { builderImage: s.builderImage };
  if (s.runtimeImage) o.runtimeImage = s.runtimeImage;
  if (s.runtimeArtifacts?.length) o.runtimeArtifacts = s.runtimeArtifacts.map(parseRuntimeArtifact);
  if (s.incremental) o.incremental = true;
  if (s.env) o.env = Object.entries(s.env).map(([k, v]) => parseEnvFlag(`${k}=${v}`));
  if (s.scriptsUrl) o.scriptsUrl = s.scriptsUrl;
  if (s.assembleUser) o.assembleUser = s.assembleUser;
  if (s.allowedUids !== undefined) o.allowedUids = parseUidRanges(s.allowedUids);
  if (s.cacheDirs?.length) o.cacheDirs = s.cacheDirs;
  if (job.project) o.cacheScope = job.project;
  return o;
}

/** Buildpacks options from the service's image config. */
export function buildpacksOptionsOf(job: WorkerJob): BuildpacksOptions {
  const b = job.buildpacks;
  if (!b?.builder) {
    throw new KilnError('OPTION_INVALID', 'strategy buildpacks needs buildpacks.builder in the image config', {
      hint: 'images: [{name: app, strategy: buildpacks, buildpacks: {builder: registry/builder:1}}]',
    });
  }
  const o: BuildpacksOptions = { builder: b.builder };
  if (b.buildpacks?.length) o.buildpacks = b.buildpacks;
  if (b.runImage) o.runImage = b.runImage;
  if (b.env) o.env = Object.entries(b.env);
  return o;
}

/** A buildpacks build for the worker: pushed, its run image recorded as the base it can be rebased from. */
async function runBuildpacks(job: WorkerJob, opts: BuildOptions, embed: EmbeddedBuild): Promise<StrategyOutcome> {
  const { runBuildpacksBuild } = await import('../strategies/buildpacks/build.js');
  const { BuildProgress } = await import('../engine/progress.js');
  const { Keychain } = await import('../registry/keychain.js');
  const keychain = new Keychain().source();
  const first = embed.credentials;
  const res = await runBuildpacksBuild({
    source: job.contextDir,
    bp: opts.noCache ? { ...buildpacksOptionsOf(job), clearCache: true } : buildpacksOptionsOf(job),
    tags: opts.tags,
    publish: true,
    registry: {
      insecureRegistries: opts.insecureRegistries,
      credentials: first ? async (r) => (await first(r)) ?? keychain(r) : keychain,
      ...(embed.signal ? { signal: embed.signal } : {}),
    },
    progress: embed.progress ?? new BuildProgress('plain'),
    platform: opts.platform,
    network: opts.network,
    pull: true,
    ...(embed.signal ? { signal: embed.signal } : {}),
    ...(embed.bases ? { bases: embed.bases } : {}),
  });
  return {
    exported: { digest: res.digest, configDigest: res.configDigest, pushed: opts.tags },
    rebase: { rebasable: true, baseLayers: res.baseLayers, base: res.runImage.name },
  };
}

export async function runStrategyBuild(
  job: WorkerJob,
  opts: BuildOptions,
  log: (text: string) => void,
  embed: EmbeddedBuild,
): Promise<StrategyOutcome> {
  const strategy = job.strategy ?? 'dockerfile';
  const backend = job.backend ?? 'kiln';
  if (strategy === 'dockerfile' && backend === 'kiln') return withRebaseBase(await runBuildCommand(opts, {}, embed));
  if (strategy === 's2i' && backend === 'kiln') {
    // an incremental build looks at its own previous image: that is no base to watch (its push would trigger it)
    const own = new Set(job.tags.map((t) => parseReferenceWithDefaultTag(t).name()));
    const outer = embed.bases;
    const e: EmbeddedBuild = outer
      ? {
          ...embed,
          bases: (inner) => {
            const recorded = outer(inner);
            return {
              resolve: (ref, o) =>
                own.has(parseReferenceWithDefaultTag(ref).name())
                  ? inner.resolve(ref, { ...o, pull: true })
                  : recorded.resolve(ref, o),
            };
          },
        }
      : embed;
    return withRebaseBase(
      await runS2IBuild({ source: job.contextDir, s2i: s2iOptionsOf(job), build: opts, flags: {}, embed: e }),
    );
  }
  if (strategy === 'buildpacks' && backend === 'kiln') return runBuildpacks(job, opts, embed);
  if (strategy === 'node' && backend === 'kiln') {
    const { runNodeBuild } = await import('../strategies/node/frontend.js');
    const node = job.node?.base ? { base: job.node.base } : {};
    return withRebaseBase(await runNodeBuild({ source: job.contextDir, node, build: opts, flags: {}, embed }));
  }
  if (strategy !== 'dockerfile') {
    throw new KilnError(
      'STRATEGY_UNSUPPORTED',
      `strategy ${strategy} is not available${backend !== 'kiln' ? ` on backend ${backend}` : ''}`,
      {
        hint: strategy === 's2i' ? 'S2I runs on the kiln backend' : 'use strategy dockerfile or s2i',
      },
    );
  }
  const req: Parameters<ReturnType<typeof builderFor>['build']>[0] = {
    options: opts,
    registry: { insecureRegistry: opts.insecureRegistries },
    log,
  };
  if (embed.credentials) req.credentials = embed.credentials;
  if (embed.signal) req.signal = embed.signal;
  const res = await builderFor(backend).build(req);
  for (const st of res.steps) log(`${(st.durationMs / 1000).toFixed(1)}s ${st.name}\n`);
  if (!res.digest)
    throw new KilnError('BACKEND_NO_DIGEST', `${backend} pushed nothing`, { hint: 'service builds push' });
  return { exported: { digest: res.digest, configDigest: res.imageId ?? '', pushed: res.pushed } };
}
