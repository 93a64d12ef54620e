/**
 * The S2I frontend: decides the steps of a Source-to-Image build from the builder image's labels and the prepared
 * source (src/strategies/s2i/prepare.ts), writes them as the Dockerfile `s2i build --as-dockerfile` writes
 * (src/strategies/s2i/dockerfile.ts) and hands the engine that text's typed instructions — one engine, no second copy.
 * After the engine ran, an incremental build runs `save-artifacts` in the finished image and keeps its tar for the
 * next build of that image name (kiln's artifacts cache: the next build needs no pull of the previous image).
 *
 * `runS2IBuild` is the whole build for the CLI (`kiln build --strategy s2i`, `kiln s2i build`) and the service.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { finished } from 'node:stream/promises';
import { dirname, join } from 'node:path';
import { KilnError, errorMessage, isKilnError } from '../../errors.js';
import { parseDockerfile } from '../../dockerfile/convert.js';
import type { CopyInstruction, Stage } from '../../dockerfile/instructions.js';
import type { Frontend, FrontendInput, FrontendPlan, FrontendTools } from '../../engine/frontend.js';
import type { EngineResult } from '../../engine/engine.js';
import { lowerDirs } from '../../engine/engine.js';
import type { BuildOptions } from '../../engine/options.js';
import type { BuildOutcome } from '../../engine/build.js';
import type { EmbeddedBuild } from '../../engine/services.js';
import type { ImageConfig } from '../../oci/types.js';
import { parseReferenceWithDefaultTag } from '../../ref/reference.js';
import { homeDirs, kilnHome } from '../../util/paths.js';
import { debugMark } from '../../util/debug.js';
import { s2iWorkDir, syncFile } from './workdir.js';
import { pullArtifacts, pushArtifacts } from './artifacts.js';
import type { CacheSpec } from '../../cache/remote.js';
import { Keychain } from '../../registry/keychain.js';
import type { PushOptions } from '../../registry/push.js';
import { closeTransports } from '../../registry/transport.js';
import { s2iDockerfile, type EnvEntry, type RuntimeArtifact, type S2IDockerfilePlan } from './dockerfile.js';
import {
  DEFAULT_DESTINATION,
  DEFAULT_SCRIPTS_URL,
  LABEL,
  checkAllowedUser,
  parseRuntimeArtifact,
  prepareSource,
  sourceLabels,
  type PreparedSource,
  type UidRange,
} from './prepare.js';

/** The S2I settings of one build (CLI flags or the service's image config). */
export interface S2IOptions {
  builderImage: string;
  runtimeImage?: string;
  /** `--runtime-artifact` (else the runtime image's assemble-input-files label). */
  runtimeArtifacts?: RuntimeArtifact[];
  incremental?: boolean;
  env?: EnvEntry[];
  scriptsUrl?: string;
  assembleUser?: string;
  /** `--destination` (else the builder's io.openshift.s2i.destination, else /tmp). */
  destination?: string;
  allowedUids?: UidRange[];
  /** `--cache-dir`: persistent cache mounts for assemble. */
  cacheDirs?: string[];
  /** Whose cache dirs these are (a project; default: the first tag's repository). */
  cacheScope?: string;
  /** Also write the generated Dockerfile here (s2i's `--as-dockerfile`). */
  asDockerfile?: string;
  /** Keep `.git` in the source of a git URL (s2i keeps it). */
  keepGitDir?: boolean;
}

/** What the frontend decided (for tests, metadata and `--as-dockerfile`). */
export interface S2IDecision {
  dockerfile: string;
  plan: S2IDockerfilePlan;
  /** Where save-artifacts is in the image, when the build saves artifacts. */
  saveArtifacts?: string;
}

const scriptsDirOf = (url: string | undefined): string | undefined =>
  url?.startsWith('image://') ? url.slice('image://'.length) : undefined;

function labelsOf(cfg: ImageConfig): Record<string, string> {
  return cfg.config?.Labels ?? {};
}

/** The artifacts cache file of an image name. */
export function artifactsCacheFile(home: string, tag: string): string {
  const name = parseReferenceWithDefaultTag(tag).toString();
  return join(homeDirs(home).s2iArtifacts, createHash('sha256').update(name).digest('hex') + '.tar');
}

export interface S2IFrontendState {
  /**
   * The source laid out in the work dir, and whether `upload/artifacts.tar` is in place (from kiln's artifacts
   * cache). A promise: the source is still being synced while the engine starts and the builder image is resolved.
   */
  prepared: Promise<{ source: PreparedSource; cachedArtifacts: boolean }>;
  /** The tag the image is built as (display-name label, incremental lookup), as written. */
  tag?: string;
  /** Where to keep the artifacts tar after the build (incremental builds). */
  saveTo?: string;
  onDecision?: (d: S2IDecision) => void;
}

/** The S2I frontend for one prepared source. */
export function s2iFrontend(o: S2IOptions, st: S2IFrontendState): Frontend {
  return {
    name: 's2i',
    async plan(input: FrontendInput): Promise<FrontendPlan> {
      const { options, bases, progress } = input;
      const resolve = async (ref: string, what: string): Promise<ImageConfig> => {
        try {
          const b = await bases.resolve(ref, { pull: options.pull, platform: options.platform });
          return await b.image.config();
        } catch (e) {
          throw new KilnError('S2I_IMAGE', `${what} ${ref}: ${errorMessage(e)}`, {
            hint: `check the ${what} name (kiln images, or the registry)`,
            cause: e,
          });
        }
      };
      if (o.incremental && o.runtimeImage) {
        throw new KilnError('OPTION_INVALID', 'incremental builds are not supported together with a runtime image', {
          hint: 'drop --incremental or --runtime-image (s2i refuses the combination too)',
        });
      }
      // the builder image's round trips overlap the source sync
      const [builder, { source, cachedArtifacts }] = await Promise.all([
        resolve(o.builderImage, 'builder image').then((b) => {
          debugMark('s2i builder image resolved');
          return b;
        }),
        st.prepared,
      ]);
      const bl = labelsOf(builder);
      const imageScriptsDir =
        scriptsDirOf(o.scriptsUrl) ??
        scriptsDirOf(bl[LABEL.scriptsUrl] ?? bl[LABEL.deprecatedScriptsUrl]) ??
        (scriptsDirOf(DEFAULT_SCRIPTS_URL) as string);
      const provided = scriptsDirOf(o.scriptsUrl) !== undefined ? new Set<string>() : source.provided;
      const destination = o.destination ?? bl[LABEL.destination] ?? DEFAULT_DESTINATION;
      const assembleUser = o.assembleUser ?? bl[LABEL.assembleUser] ?? (builder.config?.User || '0');
      checkAllowedUser(assembleUser, o.allowedUids ?? [], 'assemble user');
      const labels: Record<string, string> = {};
      if (st.tag) labels['io.k8s.display-name'] = st.tag;
      labels['io.openshift.s2i.build.image'] = o.builderImage;
      Object.assign(labels, sourceLabels(source.info, source.location));
      if (o.scriptsUrl) labels[LABEL.scriptsUrl] = o.scriptsUrl;
      if (o.destination !== undefined || bl[LABEL.destination] !== undefined) labels[LABEL.destination] = destination;
      const plan: S2IDockerfilePlan = {
        builderImage: o.builderImage,
        assembleUser,
        destination,
        imageScriptsDir,
        providedScripts: provided,
        labels,
        env: [...source.env, ...(o.env ?? [])],
      };
      if (o.incremental) {
        if (cachedArtifacts) plan.incremental = { kind: 'cached' };
        else if (st.tag) {
          const prev = await bases
            .resolve(st.tag, { pull: false, platform: options.platform })
            .then(() => true)
            .catch(() => false);
          if (prev) plan.incremental = { kind: 'previous', image: st.tag };
          else progress.warn(`incremental build: no previous image ${st.tag} and no cached artifacts; building clean`);
        }
      }
      if (o.cacheDirs?.length) {
        const uid = /^\d+(:\d+)?$/.test(assembleUser) ? Number(assembleUser.split(':')[0]) : undefined;
        const scope = o.cacheScope ?? (st.tag ? parseReferenceWithDefaultTag(st.tag).repository : 'default');
        plan.cacheDirs = o.cacheDirs.map((target) => {
          const c: { target: string; id: string; uid?: number } = {
            target,
            id: 's2i-' + createHash('sha256').update(`${scope}\0${target}`).digest('hex').slice(0, 24),
          };
          if (uid !== undefined) c.uid = uid;
          return c;
        });
      }
      if (o.runtimeImage) {
        const rt = await resolve(o.runtimeImage, 'runtime image');
        const rl = labelsOf(rt);
        const user = rl[LABEL.assembleRuntimeUser] ?? (rt.config?.User || '0');
        checkAllowedUser(user, o.allowedUids ?? [], 'assemble-runtime user');
        let artifacts = o.runtimeArtifacts ?? [];
        if (artifacts.length === 0) {
          artifacts = (rl[LABEL.assembleInputFiles] ?? '')
            .split(';')
            .filter((s) => s.trim() !== '')
            .map((s) => parseRuntimeArtifact(s.trim()));
        }
        if (artifacts.length === 0) {
          throw new KilnError('S2I_RUNTIME', `runtime image ${o.runtimeImage}: no runtime artifacts to copy`, {
            hint: `give --runtime-artifact /path/in/builder[:dest] or set the ${LABEL.assembleInputFiles} label`,
          });
        }
        const rtProvided = new Set([...provided].filter((s) => s === 'assemble-runtime' || s === 'run'));
        plan.runtime = {
          image: o.runtimeImage,
          user,
          workdir: rt.config?.WorkingDir || '/',
          scriptsDir:
            scriptsDirOf(o.scriptsUrl) ??
            scriptsDirOf(rl[LABEL.scriptsUrl] ?? rl[LABEL.deprecatedScriptsUrl]) ??
            (scriptsDirOf(DEFAULT_SCRIPTS_URL) as string),
          providedScripts: rtProvided,
          artifacts,
        };
      }
      const dockerfile = s2iDockerfile(plan);
      await writeFile(join(source.workDir, 'Dockerfile'), dockerfile);
      if (o.asDockerfile) {
        await mkdir(dirname(o.asDockerfile), { recursive: true });
        await writeFile(o.asDockerfile, dockerfile);
      }
      const decision: S2IDecision = { dockerfile, plan };
      const parsed = parseDockerfile(dockerfile, { filename: 'Dockerfile' });
      if (process.env.KILN_S2I_ONE_LAYER !== '0') {
        // the builder stage follows the `cached` one of an incremental build
        const builderStage = parsed.stages[plan.incremental ? 1 : 0];
        if (builderStage) foldCopiesIntoRun(builderStage);
      }
      const out: FrontendPlan = { stages: parsed.stages, metaArgs: parsed.globalArgs, file: 'Dockerfile' };
      if (o.incremental && st.saveTo && !plan.runtime) {
        const script = provided.has('save-artifacts')
          ? `${destination.replace(/\/+$/, '')}/scripts/save-artifacts`
          : `${imageScriptsDir.replace(/\/+$/, '')}/save-artifacts`;
        decision.saveArtifacts = script;
        const saveTo = st.saveTo;
        out.afterEngine = (res, tools) =>
          saveArtifacts(res, tools, { script, user: assembleUser, dest: saveTo, network: options.network });
      }
      st.onDecision?.(decision);
      debugMark('s2i plan ready');
      return out;
    },
  };
}

/**
 * Mark the COPYs right before a RUN (USER lines between them are fine: a COPY does not depend on USER) to be copied
 * by that RUN into its own snapshot: the sources and assemble's changes become one layer, as `s2i build` commits
 * them (its container gets the sources, runs assemble and is committed once), instead of `--as-dockerfile`'s COPY
 * layer + RUN layer — one overlay mount, one upper-dir scan, one layer blob and one upload less per build, and the
 * same file tree. `KILN_S2I_ONE_LAYER=0` keeps the `--as-dockerfile` layer layout.
 */
export function foldCopiesIntoRun(stage: Stage): void {
  let pending: CopyInstruction[] = [];
  for (const c of stage.commands) {
    if (c.kind === 'COPY' && !c.link) pending.push(c);
    else if (c.kind === 'RUN') {
      for (const p of pending) p.foldIntoRun = true;
      pending = [];
    } else if (c.kind !== 'USER') pending = [];
  }
}

/**
 * Run `save-artifacts` in the finished image (a throwaway snapshot over its layers, never part of the image) and
 * keep its stdout as the artifacts tar of this image name. An empty output removes the cached tar.
 */
async function saveArtifacts(
  res: EngineResult,
  tools: FrontendTools,
  o: { script: string; user: string; dest: string; network: 'host' | 'none' },
): Promise<void> {
  await mkdir(tools.tmpDir, { recursive: true });
  await mkdir(dirname(o.dest), { recursive: true });
  const tmpFile = `${o.dest}.${process.pid}.tmp`;
  const out = createWriteStream(tmpFile, { mode: 0o600 });
  const snap = await tools.snapshotter.prepare(lowerDirs(res.layers));
  let code: number;
  let stderr = '';
  try {
    const spec: Parameters<FrontendTools['executor']['run']>[0] = {
      rootfs: snap.root,
      argv: ['/bin/sh', '-c', `if [ -s ${o.script} ]; then exec ${o.script}; fi`],
      env: res.config.config.Env ?? [],
      cwd: res.config.config.WorkingDir || '/',
      user: o.user,
      network: o.network,
      mounts: [],
      onStdout: (b) => out.write(b),
      onStderr: (b) => {
        stderr = (stderr + b.toString()).slice(-2000);
      },
    };
    if (tools.signal) spec.signal = tools.signal;
    code = (await tools.executor.run(spec)).exitCode;
  } finally {
    out.end();
    await finished(out).catch(() => undefined);
    await snap.release();
  }
  if (code !== 0) {
    await rm(tmpFile, { force: true });
    tools.progress.warn(`save-artifacts exited ${code}; no artifacts kept for the next build: ${stderr.trim()}`);
    return;
  }
  if ((await stat(tmpFile)).size === 0) {
    await rm(tmpFile, { force: true });
    await rm(o.dest, { force: true });
    return;
  }
  await rename(tmpFile, o.dest);
}

export interface S2IBuildRequest {
  /** A directory or a git URL (`#ref`). */
  source: string;
  s2i: S2IOptions;
  /** The build's options; `context` and `file` are set here. */
  build: BuildOptions;
  flags: { insecureRegistry?: string[]; registryCa?: string[]; registryMirror?: string[] };
  embed?: EmbeddedBuild;
  home?: string;
  onDecision?: (d: S2IDecision) => void;
}

/** A whole S2I build: prepare the source, then the engine through `runBuildCommand` with the S2I frontend. */
export async function runS2IBuild(req: S2IBuildRequest): Promise<BuildOutcome & { decision?: S2IDecision }> {
  if (!req.s2i.builderImage) {
    throw new KilnError('OPTION_INVALID', 'the s2i strategy needs a builder image', {
      hint: 'give --builder-image IMAGE (kiln s2i build SOURCE BUILDER TAG)',
    });
  }
  debugMark('s2i build');
  const home = req.home ?? kilnHome();
  // kept between builds of this source and image name (the stat cache then sees unchanged files as unchanged)
  // the engine (and the registry's HTTP client it resolves the builder with) load while the source is synced
  const engine = import('../../engine/services.js');
  void import('../../registry/http.js').catch(() => undefined);
  engine.catch(() => undefined); // awaited below
  const work = await s2iWorkDir(home, req.source, req.build.tags[0]);
  const workDir = work.dir;
  let decision: S2IDecision | undefined;
  const cache = await artifactsCache(req);
  const progress = req.embed?.progress;
  const warn = (m: string): void => {
    if (progress) progress.warn(m);
    else process.stderr.write(`kiln: warning: ${m}\n`);
  };
  // the context loader wants a Dockerfile; the frontend writes the real one when it has seen the builder image
  // (written first: the source sync below touches only upload/)
  let prepared: S2IFrontendState['prepared'] | undefined;
  try {
    await writeFile(join(workDir, 'Dockerfile'), '# generated by the S2I frontend\n');
    const tag = req.build.tags[0];
    const saveTo = req.s2i.incremental && tag ? artifactsCacheFile(home, tag) : undefined;
    // the source is synced while the engine's services start and the frontend resolves the builder image
    prepared = (async () => {
      const po: { scriptsUrl?: string; keepGitDir?: boolean } = {};
      if (req.s2i.scriptsUrl) po.scriptsUrl = req.s2i.scriptsUrl;
      if (req.s2i.keepGitDir) po.keepGitDir = true;
      const source = await prepareSource(req.source, workDir, po);
      debugMark('s2i source synced');
      let cachedArtifacts = false;
      if (saveTo) {
        // a fresh pod has no local artifacts: the registry cache (--cache-from) may have them
        if (!req.build.noCache && cache.from.length && !(await stat(saveTo).catch(() => undefined))) {
          await mkdir(dirname(saveTo), { recursive: true });
          const pulled = await pullArtifacts(cache.from, saveTo, cache.registry());
          pulled.warnings.forEach(warn);
        }
        // unchanged since the last build: left as it is (no new inode, no re-digest)
        // (no cached artifacts: the previous image's save-artifacts, s2i's way)
        if (!req.build.noCache) cachedArtifacts = await syncFile(saveTo, join(workDir, 'upload', 'artifacts.tar'));
      }
      if (!cachedArtifacts) await rm(join(workDir, 'upload', 'artifacts.tar'), { force: true });
      return { source, cachedArtifacts };
    })();
    prepared.catch(() => undefined); // awaited by the frontend, and below
    const st: S2IFrontendState = { prepared, onDecision: (d) => (decision = d) };
    if (tag) st.tag = tag;
    if (saveTo) st.saveTo = saveTo;
    const opts: BuildOptions = { ...req.build, context: workDir, file: join(workDir, 'Dockerfile') };
    const { runBuildCommand } = await engine;
    const embed: EmbeddedBuild = { ...req.embed, frontend: s2iFrontend(req.s2i, st) };
    let res: BuildOutcome;
    try {
      res = await runBuildCommand(opts, req.flags, embed);
    } catch (e) {
      // a sync that failed is the build's error (the engine may have failed on its own before waiting for it)
      await prepared;
      throw explainFailure(e, decision);
    }
    if (st.saveTo && cache.to.length && (await stat(st.saveTo).catch(() => undefined))) {
      (await pushArtifacts(st.saveTo, cache.to, cache.registry())).forEach(warn);
    }
    if (req.onDecision && decision) req.onDecision(decision);
    return decision ? { ...res, decision } : res;
  } finally {
    await prepared?.catch(() => undefined); // never release the work dir under the sync
    await work.release();
    await cache.close();
  }
}

/**
 * The registry caches of an incremental build (its artifacts tar travels with them) and the registry access to
 * reach them, made like the engine's (flags, the embedding service's credentials first, then the keychain).
 */
async function artifactsCache(req: S2IBuildRequest): Promise<{
  from: CacheSpec[];
  to: CacheSpec[];
  registry: () => PushOptions;
  close: () => Promise<void>;
}> {
  const on = req.s2i.incremental === true && (req.build.cacheFrom?.length || req.build.cacheTo?.length);
  // loaded only when a registry cache is used (start-up time of every other build)
  const parse = on ? (await import('../../cache/remote.js')).parseCacheSpec : undefined;
  const from = parse ? (req.build.cacheFrom ?? []).map((c) => parse(c, '--cache-from')) : [];
  const to = parse ? (req.build.cacheTo ?? []).map((c) => parse(c, '--cache-to')) : [];
  let opts: PushOptions | undefined;
  return {
    from,
    to,
    registry: () => {
      if (opts) return opts;
      const keychain = new Keychain().source();
      const first = req.embed?.credentials;
      opts = {
        insecureRegistries: req.build.insecureRegistries.map((h) =>
          h.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, ''),
        ),
        caFiles: req.flags.registryCa ?? [],
        credentials: first ? async (r) => (await first(r)) ?? keychain(r) : keychain,
      };
      if (req.embed?.signal) opts.signal = req.embed.signal;
      return opts;
    },
    close: async () => {
      if (opts) await closeTransports(opts);
    },
  };
}

/** A RUN of a script the builder image does not have (exit 127) is the builder's fault: say so. */
function explainFailure(e: unknown, d: S2IDecision | undefined): unknown {
  if (!d || !isKilnError(e, 'RUN_FAILED') || !/exit code: 12[67]\b/.test(e.message)) return e;
  const m = /RUN (?:--mount=\S+ )*(\/\S+\/(assemble|assemble-runtime))\b/.exec(e.message);
  if (!m) return e;
  const image = m[2] === 'assemble-runtime' ? d.plan.runtime?.image : d.plan.builderImage;
  return new KilnError('S2I_SCRIPTS', `${image}: no ${m[2]} script at ${m[1]} (exit 127)`, {
    hint: 'the builder image needs assemble and run scripts there (io.openshift.s2i.scripts-url), or give them in .s2i/bin or --scripts-url',
    cause: e,
  });
}
