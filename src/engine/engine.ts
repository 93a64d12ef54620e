/**
 * The Dockerfile build engine. Given parsed stages it builds the target stage and everything it needs, as
 * BuildKit's dockerfile2llb would: stages in dependency order (independent stages concurrently, unused stages
 * never), each FROM resolved (scratch, an earlier stage, or an image through the BaseResolver) with its layers
 * unpacked once into the layer store, then one dispatch per instruction. Layer steps (RUN, COPY, ADD, WORKDIR)
 * run in an overlay snapshot whose upper dir becomes the layer; metadata steps only change the config. Each layer
 * step has a cache key (parent state + everything that determines its result); a hit reuses the stored layer.
 *
 * The engine only talks to the ports in ./ports.ts, so the same logic runs with the local namespace sandbox, a
 * Kubernetes executor or test doubles.
 */
import { debugMark } from '../util/debug.js';
import { ephemeralHome } from '../util/paths.js';
import { warmUpWorker } from '../layer/worker.js';
import { chmod, chown, lstat, mkdir, mkdtemp, rename, rm, utimes, writeFile } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { destPath, rootPath } from './copy.js';
import { join, posix, resolve } from 'node:path';
import { PlantedCopy, newCopyTrack, relativeSources, type CopyTrack } from './reuse.js';
import { createHash } from 'node:crypto';
import { KilnError, errorMessage, isKilnError } from '../errors.js';
import type { GrowingBlob, History, Layer, Platform } from '../oci/types.js';
import type { LazyLayer } from '../cache/cache.js';
import type {
  ArgInstruction,
  Command,
  CopyInstruction,
  AddInstruction,
  Instruction,
  RunInstruction,
  Stage,
} from '../dockerfile/instructions.js';
import { expandInstruction } from '../dockerfile/instructions.js';
import { parseMount } from '../dockerfile/convert.js';
import { processWord, type LexOptions } from '../dockerfile/shell.js';
import { BuildCache, cacheKey, type LazyLayers, type MissExplainer, type StepNote } from '../cache/cache.js';
import { lowersFor, narrowedSafely } from './lazy.js';
import type { PathNeed } from '../cache/summary.js';
import type {
  BaseResolver,
  CopyRequest,
  CopySource,
  DirectCopyLayer,
  Executor,
  FileCopier,
  LayerStore,
  ProcessSpec,
  ProgressSink,
  ResolvedBase,
  RunMount,
  Snapshot,
  Snapshotter,
  WriteBlobOptions,
  WrittenBlob,
} from './ports.js';
import { copyRequest } from './ports.js';
import type { SecretSpec } from './options.js';
import { formatPlatform } from './options.js';
import { normalizePlatform, parsePlatform } from '../oci/platform.js';
import {
  type BuildImage,
  type HistoryStyle,
  type ScopedArg,
  exposeHistory,
  addEnv,
  cloneImage,
  commitHistory,
  emptyImage,
  epochTime,
  fromBaseConfig,
  getEnv,
  goList,
  goQuote,
  goQuoteList,
  goTime,
  healthcheckHistory,
  normalizeHistory,
  normalizePorts,
  runCommandString,
  serializeConfig,
  withShell,
} from './imageconfig.js';
import { knownContextDigest, knownContextStat } from './context.js';
import { mkdirAllIn, resolveUser } from './rootfs.js';

export interface EngineRequest {
  stages: Stage[];
  /** ARGs before the first FROM. */
  metaArgs: ArgInstruction[];
  /** Dockerfile name for messages (`Dockerfile:4: ...`). */
  file: string;
  target?: string;
  buildArgs: Map<string, string>;
  labels: Record<string, string>;
  platform: Platform;
  noCache: boolean;
  pull: boolean;
  network: 'host' | 'none';
  secrets: SecretSpec[];
  sourceDateEpoch?: number;
  /** Escape token from the `# escape=` directive. */
  escape?: string;
  /** Which BuildKit's history strings to write (default `buildkit-latest`: current moby/buildkit, the reference). */
  historyStyle?: HistoryStyle;
  /** Layer blob format when not gzip (`zstd:3`, `uncompressed`): part of every layer step's cache key. */
  layerFormat?: string;
}

export interface EngineDeps {
  executor: Executor;
  snapshotter: Snapshotter;
  layers: LayerStore;
  bases: BaseResolver;
  cache: BuildCache;
  progress: ProgressSink;
  copier: FileCopier;
  contextDir: string;
  /** Persistent dirs for RUN --mount=type=cache. */
  cacheMountsDir: string;
  /** Private scratch space (secrets from env are written here); removed by the caller. */
  tmpDir: string;
  signal?: AbortSignal;
  /** Parses an ONBUILD trigger expression into a command (the Dockerfile parser). */
  parseTrigger?: (expression: string) => Command;
  /** Each layer of the target stage as soon as its blob exists (a push can start uploading it). */
  onLayer?: (layer: Layer) => void;
  /** A target-stage layer blob as it starts being written (push sessions stream it; onLayer still follows). */
  onLayerFile?: (blob: GrowingBlob) => void;
  /** Progress vertex ids start after this one (a build run again after an unusable cache record). */
  firstVertex?: number;
}

/** A layer of a stage's filesystem. */
export interface StageLayer {
  diffID: string;
  /** Extracted dir in the layer store; '' while `lazy` is not fetched. */
  dir: string;
  layer: Layer;
  /** A registry cache hit not fetched yet (src/engine/lazy.ts fetches it when a step needs its files). */
  lazy?: LazyLayer;
  /** Made by a step whose result does not depend on the layers below (COPY --link): rebasable. */
  independent?: boolean;
}

export interface EngineResult {
  config: BuildImage;
  rawConfig: Buffer;
  layers: StageLayer[];
  /** Base image of the target stage (for annotations and metadata). */
  base?: { name: string; digest: string };
  /** Digest of the final state (cache lineage). */
  stateDigest: string;
  /** Progress vertices used (the next free id is `vertices + 1`). */
  vertices: number;
}

/** Extra work around a layer step (incremental COPY, src/engine/reuse.ts). */
interface StepHooks {
  /** Fill the upper dir before the snapshot is mounted. */
  plant?: (upper: string) => Promise<boolean>;
  /** See PrepareOptions.unchanged. */
  unchanged?: (root: string) => ReadonlySet<string>;
  /** After the work, with the snapshot unmounted, before the layer is written. */
  afterUnmount?: (snap: Snapshot) => Promise<void>;
  /** The layer's blob is written and cached (in the background, possibly after the step is reported done). */
  written?: (diffID: string) => Promise<void>;
  /** The step's key does not include the parent state (its layer does not depend on what is below: COPY --link). */
  independent?: boolean;
  /** The previous layer dir the upper dir was planted from (its blob's members may be reused). */
  reuseFrom?: () => string | undefined;
  /** After the step: lstats of upper-relative paths already taken (WriteBlobOptions.knownStats). */
  knownStats?: () => ReadonlyMap<string, Stats> | undefined;
  /** What the step reads of the layers below (COPY: its destination); undefined: everything. */
  need?: PathNeed;
  /**
   * The step's layer without a snapshot, given the lower dirs it needs (FileCopier.direct), or undefined: the
   * step runs as usual.
   */
  direct?: (lowers: string[]) => Promise<DirectCopyLayer | undefined>;
}

interface StageState {
  stage: Stage;
  img: BuildImage;
  baseHistory: History[];
  layers: StageLayer[];
  /** Cache lineage digest of the filesystem state. */
  state: string;
  /** The build environment: image env + ARGs, later writes win (BuildKit's llb state env). */
  stateEnv: string[];
  buildArgs: ScopedArg[];
  cmdSet: boolean;
  base?: { name: string; digest: string };
  /** ONBUILD instructions of this stage (triggers for stages built FROM it). */
  ownOnBuild: string[];
  /** The step being dispatched is the stage's last layer step. */
  lastStep?: boolean;
  /** COPYs folded into the next RUN's layer (`foldIntoRun`), their sources held until it ran. */
  folded: FoldedCopy[];
}

/** A COPY whose files go into the next RUN's snapshot (CopyInstruction.foldIntoRun). */
interface FoldedCopy {
  c: CopyInstruction;
  req: CopyRequest;
  src: CopySource;
  release: () => Promise<void>;
}

/** BuildKit's predefined platform ARGs. */
function defaultArgs(p: Platform, target: string | undefined): [string, string][] {
  const fmt = formatPlatform(p);
  return [
    ['BUILDPLATFORM', fmt],
    ['BUILDOS', p.os],
    ['BUILDOSVERSION', p['os.version'] ?? ''],
    ['BUILDARCH', p.architecture],
    ['BUILDVARIANT', p.variant ?? ''],
    ['TARGETPLATFORM', fmt],
    ['TARGETOS', p.os],
    ['TARGETOSVERSION', p['os.version'] ?? ''],
    ['TARGETARCH', p.architecture],
    ['TARGETVARIANT', p.variant ?? ''],
    ['TARGETSTAGE', target || 'default'],
  ];
}

/**
 * The overlay lower dirs for a layer list (bottom-most first). The layer store is content addressed, so the same
 * dir can occur twice (e.g. two empty layers); overlay refuses repeated lowers. Keeping only the topmost
 * occurrence is equivalent: everything the lower copy provides, the upper copy provides again on top.
 */
export function lowerDirs(layers: { dir: string }[]): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  for (let i = layers.length - 1; i >= 0; i--) {
    const d = (layers[i] as { dir: string }).dir;
    if (seen.has(d)) continue;
    seen.add(d);
    out.unshift(d);
  }
  return out;
}

/** Where a RUN heredoc with a shebang is mounted (BuildKit: /dev/pipes, see dispatchRun). */
const PIPES_MOUNT = '/.kiln-pipes';

const PROXY_ARGS = ['HTTP_PROXY', 'HTTPS_PROXY', 'FTP_PROXY', 'NO_PROXY', 'ALL_PROXY'];

function isLayerStep(c: Command): boolean {
  return c.kind === 'RUN' || c.kind === 'COPY' || c.kind === 'ADD' || c.kind === 'WORKDIR';
}

function upperKeyword(original: string): string {
  const i = original.search(/\s/);
  return i < 0 ? original.toUpperCase() : original.slice(0, i).toUpperCase() + original.slice(i);
}

class Engine {
  private vertex = 0;
  private readonly stageByName = new Map<string, Stage>();
  private readonly stageRuns = new Map<number, Promise<StageState>>();
  private readonly globalArgs: string[] = [];
  private readonly usedBuildArgs = new Set<string>();
  private readonly epoch: string | undefined;
  private readonly style: HistoryStyle;

  constructor(
    private readonly req: EngineRequest,
    private readonly deps: EngineDeps,
  ) {
    this.vertex = deps.firstVertex ?? 0;
    for (const s of req.stages) if (s.name !== undefined) this.stageByName.set(s.name, s);
    this.epoch = req.sourceDateEpoch === undefined ? undefined : epochTime(req.sourceDateEpoch);
    this.style = req.historyStyle ?? 'buildkit-latest';
    // global scope: predefined platform args, then the meta ARGs (build-args override defaults)
    let env: string[] = [];
    for (const [k, v] of defaultArgs(req.platform, req.target)) env = addEnv(env, k, req.buildArgs.get(k) ?? v);
    for (const a of req.metaArgs) {
      for (const d of a.args) {
        let v = req.buildArgs.get(d.key);
        if (v !== undefined) this.usedBuildArgs.add(d.key);
        else if (d.value !== undefined) v = this.expandWord(d.value, env, a);
        if (v !== undefined) env = addEnv(env, d.key, v);
      }
    }
    this.globalArgs = env;
  }

  private where(i: Instruction): string {
    return `${this.req.file}:${i.range.startLine}`;
  }

  private fail(i: Instruction, code: string, msg: string, hint?: string, cause?: unknown): KilnError {
    const opts: { hint?: string; cause?: unknown } = {};
    if (hint) opts.hint = hint;
    if (cause !== undefined) opts.cause = cause;
    return new KilnError(code, `${this.where(i)}: ${msg}`, opts);
  }

  private expandWord(word: string, env: string[], i: Instruction, extra: LexOptions = {}): string {
    try {
      return processWord(word, env, this.req.escape ? { ...extra, escape: this.req.escape } : extra);
    } catch (e) {
      throw this.fail(i, 'DOCKERFILE_EXPANSION', errorMessage(e));
    }
  }

  /** Aborted when the user interrupts or when a stage fails (the other stages stop at their next step). */
  private readonly stop = new AbortController();
  private signalCache: AbortSignal | undefined;
  private firstError: unknown;
  private readonly baseImages = new Map<string, Promise<ResolvedBase>>();

  private get signal(): AbortSignal {
    this.signalCache ??= this.deps.signal ? AbortSignal.any([this.deps.signal, this.stop.signal]) : this.stop.signal;
    return this.signalCache;
  }

  private checkAbort(): void {
    if (this.deps.signal?.aborted) throw new KilnError('INTERRUPTED', 'build interrupted');
    if (this.stop.signal.aborted) throw new KilnError('CANCELLED', 'cancelled: another build stage failed');
  }

  /** The target stage. */
  targetStage(): Stage {
    const stages = this.req.stages;
    if (stages.length === 0) throw new KilnError('DOCKERFILE_EMPTY', `${this.req.file}: no build stage`);
    if (this.req.target === undefined || this.req.target === '') return stages[stages.length - 1] as Stage;
    const s = this.stageByName.get(this.req.target.toLowerCase());
    if (!s) {
      const names = [...this.stageByName.keys()];
      throw new KilnError('TARGET_NOT_FOUND', `target stage "${this.req.target}" could not be found`, {
        hint: names.length ? `stages: ${names.join(', ')}` : 'the Dockerfile has no named stages',
      });
    }
    return s;
  }

  /** The stage a FROM / --from names, if it is an earlier stage. */
  private stageRef(name: string, before: number): Stage | undefined {
    const byName = this.stageByName.get(name.toLowerCase());
    if (byName && byName.index < before) return byName;
    if (/^\d+$/.test(name)) {
      const idx = Number(name);
      const s = this.req.stages[idx];
      if (s && idx < before) return s;
    }
    return undefined;
  }

  private fromImageName(stage: Stage): string {
    return this.expandWord(stage.from.image, this.globalArgs, stage.from);
  }

  /** Stages this stage depends on (FROM stage, COPY --from, RUN --mount from=). */
  private dependencies(stage: Stage): Stage[] {
    const out: Stage[] = [];
    const base = this.stageRef(this.fromImageName(stage), stage.index);
    if (base) out.push(base);
    for (const c of stage.commands) {
      const refs: string[] = [];
      if (c.kind === 'COPY' && c.from) refs.push(c.from);
      if (c.kind === 'RUN') {
        for (const m of c.mounts) {
          const from = /(?:^|,)from=([^,]+)/.exec(m);
          if (from?.[1]) refs.push(from[1]);
        }
      }
      for (const r of refs) {
        const s = this.stageRef(r, stage.index);
        if (s) out.push(s);
      }
    }
    return out;
  }

  /** The stages this build runs: the target and, transitively, what it depends on (in Dockerfile order). */
  neededStages(): Stage[] {
    const seen = new Set<number>();
    const visit = (s: Stage): void => {
      if (seen.has(s.index)) return;
      seen.add(s.index);
      for (const d of this.dependencies(s)) visit(d);
    };
    visit(this.targetStage());
    return this.req.stages.filter((s) => seen.has(s.index));
  }

  /**
   * Hash the literal build-context sources of the COPY/ADD steps this build runs in the background from the start
   * (while the base is pulled and earlier steps run), so a cold build finds its COPY keys ready. Sources with
   * variables are left to the step; the copier skips what it cannot read as plain paths (globs, URLs, git).
   */
  private prefetchContext(): () => Promise<void> {
    const none = async (): Promise<void> => undefined;
    if (!this.deps.copier.prefetch) return none;
    const paths: string[] = [];
    try {
      for (const stage of this.neededStages()) {
        for (const c of stage.commands) {
          if (!((c.kind === 'COPY' && c.from === '') || c.kind === 'ADD')) continue;
          for (const s of c.sources) {
            if (s.includes('$') || paths.includes(s)) continue; // not expanded yet: left to the step
            paths.push(s);
          }
        }
      }
    } catch {
      return none; // a stage reference that does not resolve fails where the build reaches it
    }
    return paths.length ? this.deps.copier.prefetch(paths) : none;
  }

  /** Start (once) the build of a stage; all its dependencies are started too, so they run concurrently. */
  private runStage(stage: Stage): Promise<StageState> {
    let p = this.stageRuns.get(stage.index);
    if (!p) {
      for (const d of this.dependencies(stage)) void this.runStage(d).catch(() => undefined);
      p = this.buildStage(stage);
      // fail fast like BuildKit: the first real failure of any stage stops all the others
      p.catch((e: unknown) => {
        if (this.firstError === undefined && !isKilnError(e, 'CANCELLED')) this.firstError = e;
        this.stop.abort();
      });
      this.stageRuns.set(stage.index, p);
    }
    return p;
  }

  async build(): Promise<EngineResult> {
    const target = this.targetStage();
    const stopPrefetch = this.prefetchContext();
    let st: StageState;
    try {
      st = await this.runStage(target);
    } catch (e) {
      // stop the stages still running and wait for them to clean up (snapshots, processes) before failing
      this.stop.abort();
      await Promise.allSettled([...this.stageRuns.values()]);
      await stopPrefetch();
      await this.settle().catch(() => undefined);
      throw this.firstError ?? e;
    }
    await Promise.allSettled([...this.stageRuns.values()]);
    await stopPrefetch();
    await this.settle();
    const unused = [...this.req.buildArgs.keys()].filter(
      (k) => !this.usedBuildArgs.has(k) && !defaultArgs(this.req.platform, undefined).some(([d]) => d === k),
    );
    const builtin = ['HTTP_PROXY', 'HTTPS_PROXY', 'FTP_PROXY', 'NO_PROXY', 'ALL_PROXY', 'SOURCE_DATE_EPOCH'];
    const reallyUnused = unused.filter((k) => !builtin.includes(k.toUpperCase()));
    if (reallyUnused.length > 0) {
      this.deps.progress.warn(`One or more build-args [${reallyUnused.join(' ')}] were not consumed`);
    }
    return this.finalize(st);
  }

  private finalize(st: StageState): EngineResult {
    const img = cloneImage(st.img);
    if (Object.keys(this.req.labels).length > 0) {
      img.config.Labels = { ...(img.config.Labels ?? {}), ...this.req.labels };
    }
    img.rootfs = { type: 'layers', diff_ids: st.layers.map((l) => l.diffID) };
    img.history = normalizeHistory(img.history, st.baseHistory, this.epoch);
    let created: string | undefined;
    for (const h of img.history) if (h.created !== undefined) created = h.created;
    if (created !== undefined) img.created = created;
    else delete img.created;
    const result: EngineResult = {
      config: img,
      rawConfig: serializeConfig(img),
      layers: st.layers,
      stateDigest: st.state,
      vertices: this.vertex,
    };
    if (st.base) result.base = st.base;
    return result;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Stages

  private stepTotal(stage: Stage, fromImage: boolean, triggers: number): number {
    return (fromImage ? 1 : 0) + stage.commands.filter(isLayerStep).length + triggers;
  }

  private async buildStage(stage: Stage): Promise<StageState> {
    this.checkAbort();
    const baseName = this.fromImageName(stage);
    const from = stage.from;
    if (from.platform !== undefined) {
      const plat = this.expandWord(from.platform, this.globalArgs, from);
      if (plat !== '') {
        let want: Platform | undefined;
        try {
          want = normalizePlatform(parsePlatform(plat));
        } catch (e) {
          throw this.fail(from, 'PLATFORM_INVALID', `FROM --platform=${plat}: ${errorMessage(e)}`);
        }
        const have = normalizePlatform(this.req.platform);
        if (
          want.os !== have.os ||
          want.architecture !== have.architecture ||
          (want.variant ?? '') !== (have.variant ?? '')
        ) {
          throw this.fail(
            from,
            'PLATFORM_UNSUPPORTED',
            `FROM --platform=${plat}: cannot build for a foreign platform`,
            `this host builds ${formatPlatform(this.req.platform)}`,
          );
        }
      }
    }
    let st: StageState;
    const baseStage = this.stageRef(baseName, stage.index);
    let triggers: string[] = [];
    let fromImage = false;
    if (baseName === 'scratch') {
      st = this.newState(
        stage,
        emptyImage(this.req.platform),
        cacheKey({ scratch: formatPlatform(this.req.platform) }),
      );
    } else if (baseStage) {
      const parent = await this.runStage(baseStage);
      const img = cloneImage(parent.img);
      delete img.config.OnBuild;
      st = this.newState(stage, img, parent.state);
      st.layers = [...parent.layers];
      st.baseHistory = parent.baseHistory;
      st.stateEnv = [...parent.stateEnv];
      st.buildArgs = [...parent.buildArgs];
      st.cmdSet = false;
      if (parent.base) st.base = parent.base;
      triggers = [...parent.ownOnBuild];
    } else {
      fromImage = true;
      st = await this.fromImage(stage, baseName);
      triggers = st.ownOnBuild;
      st.ownOnBuild = [];
    }
    const commands: { cmd: Command; onbuild: boolean }[] = [];
    for (const t of triggers) {
      if (!this.deps.parseTrigger) throw this.fail(from, 'ONBUILD_UNSUPPORTED', 'cannot run ONBUILD triggers');
      let cmd: Command;
      try {
        cmd = this.deps.parseTrigger(t);
      } catch (e) {
        throw this.fail(from, 'ONBUILD_INVALID', `invalid ONBUILD trigger "${t}": ${errorMessage(e)}`);
      }
      cmd = { ...cmd, range: from.range } as Command;
      commands.push({ cmd, onbuild: true });
    }
    for (const c of stage.commands) commands.push({ cmd: c, onbuild: false });
    const total = this.stepTotal(stage, fromImage, triggers.length);
    const counter = { n: fromImage ? 1 : 0, total };
    for (const { cmd, onbuild } of commands) {
      this.checkAbort();
      st.lastStep = isLayerStep(cmd) && counter.n + 1 === counter.total;
      await this.dispatch(st, cmd, counter, onbuild);
    }
    st.lastStep = false;
    if (st.folded.length > 0) this.unfoldable(st);
    return st;
  }

  private newState(stage: Stage, img: BuildImage, state: string): StageState {
    return {
      stage,
      img,
      baseHistory: [],
      layers: [],
      state,
      stateEnv: [...(img.config.Env ?? [])],
      buildArgs: [],
      cmdSet: false,
      ownOnBuild: [],
      folded: [],
    };
  }

  private stepPrefix(st: StageState, counter: { n: number; total: number }, onbuild: boolean): string {
    if (counter.total === 0) return '';
    counter.n++;
    const width = String(counter.total).length;
    const name = this.req.stages.length > 1 ? (st.stage.name ?? `stage-${st.stage.index}`) + ' ' : '';
    return `[${name}${String(counter.n).padStart(width)}/${counter.total}] ${onbuild ? 'ONBUILD ' : ''}`;
  }

  /** `at`: the instruction that named the image, when it is not the stage's FROM (`COPY --from=IMAGE`). */
  private async fromImage(stage: Stage, ref: string, at?: Instruction): Promise<StageState> {
    const from = at ?? stage.from;
    const what = at ? `${at.kind} --from=${ref}` : `FROM ${ref}`;
    let resolving = this.baseImages.get(ref);
    if (!resolving) {
      // one resolution per reference, shared by every stage that uses it (one `load metadata` vertex)
      const loadId = ++this.vertex;
      this.deps.progress.start(loadId, `[internal] load metadata for ${ref}`);
      resolving = this.deps.bases.resolve(ref, { pull: this.req.pull, platform: this.req.platform });
      resolving.then(
        () => this.deps.progress.done(loadId),
        (e: unknown) => this.deps.progress.error(loadId, errorMessage(e)),
      );
      this.baseImages.set(ref, resolving);
    }
    let resolved;
    try {
      resolved = await resolving;
    } catch (e) {
      const hint = e instanceof KilnError ? e.hint : undefined;
      // the registry client's messages start with `pull NAME: `; the FROM line already names the image
      const why = errorMessage(e).replace(/^pull \S+: /, '');
      throw this.fail(from, e instanceof KilnError ? e.code : 'BASE_IMAGE', `${what}: ${why}`, hint, e);
    }
    const cfg = await resolved.image.config();
    const { image, onBuild } = fromBaseConfig(cfg);
    const state = cacheKey({ image: resolved.digest });
    const st = this.newState(stage, image, state);
    st.baseHistory = structuredClone(cfg.history ?? []);
    st.base = { name: resolved.name, digest: resolved.digest };
    st.ownOnBuild = onBuild;
    const total = this.stepTotal(stage, true, onBuild.length);
    const id = ++this.vertex;
    const width = String(total).length;
    const name = this.req.stages.length > 1 ? (stage.name ?? `stage-${stage.index}`) + ' ' : '';
    this.deps.progress.start(id, `[${name}${'1'.padStart(width)}/${total}] FROM ${resolved.name}@${resolved.digest}`);
    try {
      const layers = await resolved.image.layers();
      const diffIDs = cfg.rootfs?.diff_ids ?? [];
      st.layers = await this.baseLayers(layers, diffIDs);
      for (const l of layers) this.announce(st, l);
    } catch (e) {
      this.deps.progress.error(id, errorMessage(e));
      throw this.fail(from, 'BASE_IMAGE', `${what}: ${errorMessage(e)}`, undefined, e);
    }
    this.deps.progress.done(id);
    return st;
  }

  /** Extractions of base layers left unfetched at FROM (diffID → dir), once per build. */
  private readonly baseUnpacks = new Map<string, Promise<string>>();

  /**
   * A base image's layers as stage layers: extracted, or — when the registry cache knows the layer's path summary
   * and the build only pushes (src/cache/remote.ts baseLayers) — unfetched until a step that runs needs its files,
   * like a lazy cache hit (src/engine/lazy.ts). A fresh pod whose only missed step is a COPY into `/app` never pulls
   * the base; the push mounts its blobs.
   */
  private async baseLayers(layers: Layer[], diffIDs: string[]): Promise<StageLayer[]> {
    const cache = this.deps.cache as BuildCache & Partial<LazyLayers>;
    const summaries = (await cache.baseLayers?.(diffIDs)) ?? [];
    return Promise.all(
      layers.map(async (l, i): Promise<StageLayer> => {
        const diffID = diffIDs[i] as string;
        const summary = summaries[i];
        if (summary && (await this.deps.layers.dirOf(diffID)) === undefined) {
          const materialize = (): Promise<string> => {
            let p = this.baseUnpacks.get(diffID);
            if (!p) this.baseUnpacks.set(diffID, (p = this.deps.layers.unpack(l)));
            return p;
          };
          return { diffID, dir: '', layer: l, lazy: { layer: l, summary, materialize } };
        }
        return { diffID, dir: await this.deps.layers.unpack(l), layer: l };
      }),
    );
  }

  // -------------------------------------------------------------------------------------------------------------
  // Dispatch

  private async dispatch(
    st: StageState,
    raw: Command,
    counter: { n: number; total: number },
    onbuild: boolean,
  ): Promise<void> {
    const img = st.img;
    const env = st.stateEnv;
    const isArg = raw.kind === 'ARG';
    // heredoc sources are expanded raw, quotes kept (BuildKit ExpandRaw with SkipProcessQuotes)
    const c = isArg
      ? raw
      : expandInstruction(raw, (w, field) =>
          field === 'sourceContents'
            ? this.expandWord(w, env, raw, { skipProcessQuotes: true })
            : this.expandWord(w, env, raw),
        );
    const meta = (msg: string): void => commitHistory(img, msg, { withLayer: false, buildkitSuffix: false });
    switch (c.kind) {
      case 'RUN':
        return this.dispatchRun(st, c, this.stepPrefix(st, counter, onbuild));
      case 'COPY':
      case 'ADD':
        return this.dispatchCopy(st, c, this.stepPrefix(st, counter, onbuild));
      case 'WORKDIR':
        return this.dispatchWorkdir(st, c.path, c, this.stepPrefix(st, counter, onbuild));
      case 'ENV': {
        let msg = 'ENV';
        for (const kv of c.env) {
          st.stateEnv = addEnv(st.stateEnv, kv.key, kv.value);
          img.config.Env = addEnv(img.config.Env, kv.key, kv.value);
          msg += ` ${kv.key}=${kv.value}`;
        }
        return meta(msg);
      }
      case 'LABEL': {
        let msg = 'LABEL';
        img.config.Labels = { ...(img.config.Labels ?? {}) };
        for (const kv of c.labels) {
          img.config.Labels[kv.key] = kv.value;
          msg += ` ${kv.key}=${kv.value}`;
        }
        return meta(msg);
      }
      case 'MAINTAINER':
        img.author = c.maintainer;
        return meta(`MAINTAINER ${c.maintainer}`);
      case 'EXPOSE': {
        let ports: string[];
        try {
          ports = normalizePorts(c.ports.flatMap((p) => p.split(/\s+/).filter(Boolean)));
        } catch (e) {
          throw this.fail(c, 'DOCKERFILE_INSTRUCTION', errorMessage(e));
        }
        img.config.ExposedPorts = { ...(img.config.ExposedPorts ?? {}) };
        for (const p of ports) img.config.ExposedPorts[p] = {};
        return meta(exposeHistory(ports, this.style));
      }
      case 'USER':
        img.config.User = c.user;
        return meta(`USER ${c.user}`);
      case 'VOLUME': {
        img.config.Volumes = { ...(img.config.Volumes ?? {}) };
        for (const v of c.volumes) {
          if (v === '') throw this.fail(c, 'DOCKERFILE_INSTRUCTION', 'VOLUME specified can not be an empty string');
          img.config.Volumes[v] = {};
        }
        return meta(`VOLUME ${goList(c.volumes)}`);
      }
      case 'STOPSIGNAL':
        if (!/^(SIG)?[A-Z0-9+-]+$/i.test(c.signal)) {
          throw this.fail(c, 'DOCKERFILE_INSTRUCTION', `invalid signal: ${c.signal}`);
        }
        img.config.StopSignal = c.signal;
        return meta(`STOPSIGNAL ${c.signal}`);
      case 'SHELL':
        img.config.Shell = [...c.shell];
        return meta(`SHELL ${goList(c.shell)}`);
      case 'CMD': {
        const args = this.shellDependent(img, c.command, c.prependShell, c.files);
        img.config.Cmd = args;
        img.config.ArgsEscaped = true;
        st.cmdSet = true;
        return meta(`CMD ${goQuoteList(args)}`);
      }
      case 'ENTRYPOINT': {
        const args = this.shellDependent(img, c.command, c.prependShell, c.files);
        img.config.Entrypoint = args;
        if (!st.cmdSet) delete img.config.Cmd;
        return meta(`ENTRYPOINT ${goQuoteList(args)}`);
      }
      case 'HEALTHCHECK': {
        const h = c.health;
        const hc = {
          Test: h.test,
          Interval: h.interval,
          Timeout: h.timeout,
          StartPeriod: h.startPeriod,
          StartInterval: h.startInterval,
          Retries: h.retries,
        };
        img.config.Healthcheck = hc;
        return meta(healthcheckHistory(hc, this.style));
      }
      case 'ONBUILD':
        img.config.OnBuild = [...(img.config.OnBuild ?? []), c.expression];
        st.ownOnBuild.push(c.expression);
        return;
      case 'ARG':
        return this.dispatchArg(st, c);
      default:
        return;
    }
  }

  private shellDependent(img: BuildImage, command: string[], prependShell: boolean, files: { data: string }[]) {
    let args = command;
    if (files.length > 0 && prependShell && args.length === 1 && files[0]) args = [files[0].data];
    return prependShell ? withShell(img, args) : [...args];
  }

  private dispatchArg(st: StageState, c: ArgInstruction): void {
    const parts: string[] = [];
    for (const a of c.args) {
      const given = this.req.buildArgs.get(a.key);
      const declared = a.value === undefined ? undefined : this.expandWord(a.value, st.stateEnv, c);
      let value: string | undefined;
      if (given !== undefined) {
        value = given;
        this.usedBuildArgs.add(a.key);
      } else if (declared !== undefined) {
        value = declared;
      } else {
        value = getEnv(this.globalArgs, a.key);
      }
      if (value !== undefined) st.stateEnv = addEnv(st.stateEnv, a.key, value);
      st.buildArgs.push({ key: a.key, value });
      // BuildKit v0.8 records the ARG as written (its default); current BuildKit the value in effect
      const shown = this.style === 'buildkit-0.8' ? declared : value;
      parts.push(shown === undefined ? a.key : `${a.key}=${shown}`);
    }
    commitHistory(st.img, 'ARG ' + parts.join(' '), { withLayer: false, buildkitSuffix: false });
  }

  // -------------------------------------------------------------------------------------------------------------
  // Layer steps

  /** Run a layer step: cache lookup, else snapshot → work → commit. Records the layer and history. */
  private async layerStep(
    st: StageState,
    name: string,
    parts: Record<string, unknown>,
    history: string,
    buildkitSuffix: boolean,
    work: (snap: Snapshot, id: number) => Promise<void>,
    noteExtra?: Partial<StepNote>,
    hooks: StepHooks = {},
  ): Promise<void> {
    if (st.folded.length > 0 && parts.op !== 'RUN') this.unfoldable(st);
    const key = cacheKey(this.req.layerFormat ? { ...parts, layerFormat: this.req.layerFormat } : parts);
    const id = ++this.vertex;
    this.deps.progress.start(id, name);
    const note: StepNote = {
      slot: `${this.req.file}/${st.stage.name ?? `stage-${st.stage.index}`}/${st.img.history.length}`,
      name,
      parts,
    };
    if (st.base) note.base = st.base.digest;
    if (noteExtra) Object.assign(note, noteExtra);
    const explainer = this.deps.cache as BuildCache & Partial<MissExplainer>;
    explainer.noteStep?.(key, note);
    if (!this.req.noCache) {
      const hit = await this.deps.cache.get(key);
      if (hit?.layer) {
        const dir = await this.deps.layers.dirOf(hit.layer.diffID);
        const l = hit.layer;
        const layer =
          dir === undefined
            ? undefined
            : await this.deps.layers.layer(l.digest, l.diffID, l.size, l.mediaType).catch(() => undefined);
        if (dir !== undefined && layer !== undefined) {
          st.layers.push({ diffID: l.diffID, dir, layer, ...(hooks.independent ? { independent: true } : {}) });
          this.announce(st, layer);
          this.record(st, key, history, buildkitSuffix, hit.created, hooks.independent === true);
          this.deps.progress.cached(id);
          return;
        }
        // a registry cache hit not fetched: its descriptor now, its files when a later step needs them
        const lazy = (this.deps.cache as BuildCache & Partial<LazyLayers>).lazyLayer?.(key);
        if (lazy) {
          const sl: StageLayer = { diffID: l.diffID, dir: '', layer: lazy.layer, lazy };
          if (hooks.independent) sl.independent = true;
          st.layers.push(sl);
          this.announce(st, lazy.layer);
          this.record(st, key, history, buildkitSuffix, hit.created, hooks.independent === true);
          this.deps.progress.cached(id);
          return;
        }
      }
    }
    // the layer worker thread starts with the first step that runs (not when every step is cached, or only the
    // target's last step runs: that layer is written in-process) — its start-up costs ~100 ms of CPU
    if (!(st.lastStep && st.stage === this.targetStage())) warmUpWorker();
    // the miss explanation (it may list and hash the step's context files) runs while the layers below are fetched
    const why = this.req.noCache
      ? undefined
      : (this.deps.cache as BuildCache & Partial<MissExplainer>).explainMiss?.(key).catch(() => undefined);
    const prepOpts = hooks.plant
      ? { plant: hooks.plant, ...(hooks.unchanged ? { unchanged: hooks.unchanged } : {}) }
      : undefined;
    const below = await lowersFor(st.layers, hooks.need);
    const direct = hooks.direct ? await hooks.direct(lowerDirs(below.layers)).catch(() => undefined) : undefined;
    if (direct) {
      const explained = await why;
      if (explained) this.deps.progress.log(id, 'stderr', Buffer.from(`cache miss: ${explained}\n`));
      debugMark(`#${id} layer written from ${direct.dir} (no snapshot)`);
      const created = this.epoch ?? goTime(new Date());
      const sl: StageLayer = { diffID: '', dir: '', layer: undefined as unknown as Layer };
      st.layers.push(sl);
      this.writeDirect(st, direct, sl, key, created);
      this.record(st, key, history, buildkitSuffix, created, hooks.independent === true);
      this.deps.progress.done(id);
      return;
    }
    let snap = await this.deps.snapshotter.prepare(lowerDirs(below.layers), prepOpts);
    if (below.omitted > 0 && hooks.need && !(await narrowedSafely(snap.root, hooks.need))) {
      // a symlink on the way: the destination may lead anywhere, so the step sees every layer below
      await snap.release();
      snap = await this.deps.snapshotter.prepare(lowerDirs((await lowersFor(st.layers)).layers), prepOpts);
    } else if (below.omitted > 0) debugMark(`#${id} ${below.omitted} unfetched cache layer(s) not needed`);
    const explained = await why;
    if (explained) this.deps.progress.log(id, 'stderr', Buffer.from(`cache miss: ${explained}\n`));
    debugMark(`#${id} snapshot ready`);
    try {
      await work(snap, id);
      debugMark(`#${id} step ran`);
      this.checkAbort();
      if (snap.unmount) await snap.unmount();
      if (hooks.afterUnmount) await hooks.afterUnmount(snap);
    } catch (e) {
      this.deps.progress.error(id, e instanceof KilnError ? e.message.replace(/^[^:]+:\d+: /, '') : errorMessage(e));
      await snap.release();
      throw e;
    }
    const created = this.epoch ?? goTime(new Date());
    // The upper dir is final: later steps can mount it as a lower dir right away, while its tar is written,
    // compressed and digested on the other cores (BuildKit likewise defers layer blobs to the export).
    const sl: StageLayer = { diffID: '', dir: snap.upper, layer: undefined as unknown as Layer };
    if (hooks.independent) sl.independent = true;
    st.layers.push(sl);
    this.writeInBackground(st, snap, sl, key, created, hooks.written, hooks.reuseFrom?.(), hooks.knownStats);
    this.record(st, key, history, buildkitSuffix, created, hooks.independent === true);
    this.deps.progress.done(id);
  }

  /** Layer blobs being written in the background (see layerStep), in step order; no snapshot: FileCopier.direct. */
  private readonly pending: { sl: StageLayer; snap?: Snapshot; blob: Promise<void> }[] = [];

  /**
   * Write a layer FileCopier.direct described, in the background like writeInBackground. It has no dir in the layer
   * store: a later step that needs its files extracts the blob (a lazy layer, src/engine/lazy.ts), and no previous
   * result is remembered for the next build's incremental COPY (KILN_EPHEMERAL_HOME: there is none).
   */
  private writeDirect(st: StageState, plan: DirectCopyLayer, sl: StageLayer, key: string, created: string): void {
    const store = this.deps.layers;
    const blob = (async () => {
      const opts: WriteBlobOptions = { ...this.sdeOpts(), reroot: plan.reroot };
      if (this.inProcess(st)) {
        opts.inProcess = true;
        if (plan.stats) opts.knownAbsStats = plan.stats;
      }
      const stream = this.deps.onLayerFile;
      if (stream && st.stage === this.targetStage()) opts.onFile = stream;
      await this.written(st, sl, key, created, await store.writeBlob(plan.dir, opts));
    })();
    blob.catch(() => undefined); // observed in settle()
    sl.lazy = {
      get layer(): Layer {
        return sl.layer;
      },
      materialize: async () => {
        await blob;
        return store.unpack(sl.layer);
      },
    };
    this.pending.push({ sl, blob });
  }

  /** The target's last layer: nothing else runs on this thread until it is written, so it is written here. */
  private inProcess(st: StageState): boolean {
    return st.lastStep === true && st.stage === this.targetStage() && process.env.KILN_LAST_LAYER_IN_PROCESS !== '0';
  }

  /** A step's blob is written: the stage layer gets it, the target's push hears of it, the cache records it. */
  private async written(st: StageState, sl: StageLayer, key: string, created: string, w: WrittenBlob): Promise<void> {
    sl.diffID = w.diffID;
    sl.layer = await this.deps.layers.layer(w.digest, w.diffID, w.size, w.mediaType);
    this.announce(st, sl.layer);
    const layer = { diffID: w.diffID, digest: w.digest, size: w.size, mediaType: w.mediaType };
    await this.deps.cache.put(key, { version: 1, layer, created });
  }

  /** Hand a layer of the target stage to deps.onLayer. */
  private announce(st: StageState, layer: Layer): void {
    if (this.deps.onLayer && st.stage === this.targetStage()) this.deps.onLayer(layer);
  }

  private writeInBackground(
    st: StageState,
    snap: Snapshot,
    sl: StageLayer,
    key: string,
    created: string,
    written?: (diffID: string) => Promise<void>,
    reuseFrom?: string,
    knownStats?: () => ReadonlyMap<string, Stats> | undefined,
  ): void {
    const store = this.deps.layers;
    const blob = (async () => {
      const opts: WriteBlobOptions = this.sdeOpts();
      if (reuseFrom !== undefined) opts.reuseFrom = reuseFrom;
      const xattrs = snap.upperXattrs?.();
      if (xattrs) opts.upperXattrs = xattrs;
      if (this.inProcess(st)) {
        opts.inProcess = true;
        const known = knownStats?.();
        if (known && known.size > 0) opts.knownStats = known;
      }
      const stream = this.deps.onLayerFile;
      if (stream && st.stage === this.targetStage()) opts.onFile = stream;
      const w = await store.writeBlob(snap.upper, opts);
      await this.written(st, sl, key, created, w);
      if (written) await written(w.diffID);
    })();
    blob.catch(() => undefined); // observed in settle()
    this.pending.push({ sl, snap, blob });
  }

  /**
   * Wait for the background layer writes, then move the dirs of the written ones into the layer store (only now: no
   * snapshot mounts them any more) — also when the build failed later, so the next build finds those steps cached.
   * A dir whose blob failed is dropped with its snapshot.
   */
  private async settle(): Promise<void> {
    const all = this.pending.splice(0);
    const results = await Promise.allSettled(all.map((p) => p.blob));
    let err: unknown;
    for (const [i, p] of all.entries()) {
      const r = results[i] as PromiseSettledResult<void>;
      if (r.status === 'rejected') err ??= r.reason;
      if (!p.snap) continue;
      try {
        if (r.status === 'fulfilled') p.sl.dir = await this.deps.layers.adopt(p.snap.upper, p.sl.diffID);
      } catch (e) {
        err ??= e;
      }
      await p.snap.release().catch(() => undefined);
    }
    if (err !== undefined) throw err;
  }

  private sdeOpts(): { sourceDateEpoch?: number } {
    return this.req.sourceDateEpoch === undefined ? {} : { sourceDateEpoch: this.req.sourceDateEpoch };
  }

  private record(
    st: StageState,
    key: string,
    history: string,
    buildkitSuffix: boolean,
    created?: string,
    onTop = false,
  ): void {
    // a step looked up on its own (COPY --link) says nothing about what is below it: chain the two
    st.state = onTop ? cacheKey({ parent: st.state, on: key }) : key;
    const opts: { withLayer: boolean; buildkitSuffix: boolean; created?: string } = {
      withLayer: true,
      buildkitSuffix,
    };
    if (created !== undefined) opts.created = created;
    commitHistory(st.img, history, opts);
  }

  private workdir(st: StageState): string {
    return st.img.config.WorkingDir || '/';
  }

  private async dispatchWorkdir(st: StageState, path: string, c: Instruction, prefix: string): Promise<void> {
    const cur = this.workdir(st);
    // BuildKit (system.NormalizeWorkdir): an absolute path is kept as written (`/a/b/../c`, `/t/s/`) in the config
    // and the history, a relative one is joined to the current dir and cleaned (Go path.Join); the directory made
    // is the cleaned path
    const wd = posix.isAbsolute(path) ? path : posix.normalize(posix.join(cur, path)).replace(/(.)\/+$/, '$1');
    st.img.config.WorkingDir = wd;
    if (wd === '/') {
      commitHistory(st.img, `WORKDIR ${wd}`, { withLayer: false, buildkitSuffix: false });
      return;
    }
    const user = st.img.config.User ?? '';
    const parts = { parent: st.state, op: 'WORKDIR', path: wd, user, epoch: this.req.sourceDateEpoch };
    await this.layerStep(st, prefix + upperKeyword(c.original), parts, `WORKDIR ${wd}`, false, async (snap) => {
      let uid = 0;
      let gid = 0;
      if (user !== '') {
        try {
          ({ uid, gid } = await resolveUser(snap.root, user));
        } catch (e) {
          throw this.fail(c, 'USER_UNKNOWN', errorMessage(e));
        }
      }
      try {
        await mkdirAllIn(snap.root, wd, uid, gid);
      } catch (e) {
        throw this.fail(c, 'WORKDIR_FAILED', `WORKDIR ${wd}: ${errorMessage(e)}`);
      }
    });
  }

  private copyRequest(st: StageState, c: CopyInstruction | AddInstruction): CopyRequest {
    const req: CopyRequest = {
      kind: c.kind,
      sources: c.sources,
      contents: c.sourceContents.map((s) => ({ path: s.path, data: s.data })),
      dest: c.dest,
      chown: c.chown,
      chmod: c.chmod,
      link: c.link,
      parents: c.kind === 'COPY' ? c.parents : false,
      exclude: c.exclude,
      workdir: this.workdir(st),
      location: this.where(c),
    };
    if (this.req.sourceDateEpoch !== undefined) req.sourceDateEpoch = this.req.sourceDateEpoch;
    if (c.kind === 'ADD') {
      if (c.checksum) req.checksum = c.checksum;
      if (c.keepGitDir !== undefined) req.keepGitDir = c.keepGitDir;
      if (c.unpack !== undefined) req.unpack = c.unpack;
    }
    return req;
  }

  /** A read-only view of another stage's (or an image's) filesystem, for COPY --from / RUN --mount from=. */
  private async sourceFor(
    st: StageState,
    from: string,
    c: Instruction,
  ): Promise<{ src: CopySource; release: () => Promise<void> }> {
    if (from === '') {
      return { src: { kind: 'context', dir: this.deps.contextDir }, release: async () => undefined };
    }
    if (/\$/.test(from)) {
      throw this.fail(
        c,
        'DOCKERFILE_INSTRUCTION',
        'variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround',
      );
    }
    let other: StageState;
    const ref = this.stageRef(from, st.stage.index);
    if (ref) other = await this.runStage(ref);
    else if (this.stageByName.has(from.toLowerCase())) {
      throw this.fail(
        c,
        'DOCKERFILE_INSTRUCTION',
        `cannot copy from stage "${from}", it needs to be defined before current stage "${st.stage.name ?? `stage-${st.stage.index}`}"`,
      );
    } else {
      other = await this.fromImage({ ...st.stage, from: { ...st.stage.from, image: from }, commands: [] }, from, c);
    }
    const snap = await this.deps.snapshotter.prepare(lowerDirs((await lowersFor(other.layers)).layers));
    return {
      src: { kind: 'stage', dir: snap.root, stateDigest: other.state },
      release: () => snap.release(),
    };
  }

  private async dispatchCopy(st: StageState, c: CopyInstruction | AddInstruction, prefix: string): Promise<void> {
    const req = this.copyRequest(st, c);
    const from = c.kind === 'COPY' ? c.from : '';
    const { src, release } = await this.sourceFor(st, from, c);
    const direct = this.directCandidate(st, c, src);
    // a COPY reads the layers below only at its destination (and its parent dirs), and /etc/passwd and /etc/group
    // for --chown names: unfetched cache layers elsewhere stay unfetched (src/engine/lazy.ts)
    const need =
      c.kind === 'COPY'
        ? {
            subtrees: [
              destPath(req.dest, req.workdir),
              ...(req.chown !== '' && !/^\d*(:\d*)?$/.test(req.chown) ? ['/etc/passwd', '/etc/group'] : []),
            ],
          }
        : undefined;
    // the layers a direct COPY reads (its destination's parents, from unfetched cache hits) are fetched while its key
    // is computed: on a miss it needs them at once (W1: the RUN layer's blob, ~70 ms after the key); a hit ends the
    // build, so little is fetched for nothing
    if (direct && need) void lowersFor(st.layers, need).catch(() => undefined);
    let held = false;
    try {
      let sum: string;
      try {
        sum = await this.deps.copier.checksum(req, src);
      } catch (e) {
        if (e instanceof KilnError && e.message.startsWith(this.req.file + ':')) throw e;
        throw this.fail(c, e instanceof KilnError ? e.code : 'COPY_FAILED', errorMessage(e), undefined, e);
      }
      const { location: _loc, ...keyReq } = req;
      // COPY --link writes its files into an empty root: the layer does not depend on the layers below, so its
      // cache entry is found whatever changed under it (BuildKit: merge/diff ops). Not with --chmod (BuildKit then
      // ignores --link) or --chown by name (resolved in the destination's /etc/passwd).
      const independent =
        c.kind === 'COPY' && req.link && req.chmod === '' && (req.chown === '' || /^\d+(:\d+)?$/.test(req.chown));
      const parts = {
        parent: independent ? 'link' : st.state,
        op: c.kind,
        req: keyReq,
        sources: sum,
        from: src.stateDigest,
        epoch: this.req.sourceDateEpoch,
      };
      let msg = c.kind as string;
      if (this.style === 'buildkit-latest') {
        // BuildKit v0.8 records neither flag
        if (c.kind === 'COPY' && c.parents) msg += ' --parents';
        if (c.chown) msg += ' --chown=' + c.chown;
        if (c.chmod) msg += ' --chmod=' + c.chmod;
      }
      for (const s of c.sources) msg += ' ' + s;
      for (const s of c.sourceContents) msg += ' <<' + s.path;
      msg += ' ' + c.dest;
      if (c.kind === 'COPY' && c.foldIntoRun && !independent) {
        // its files are copied by the next RUN into its snapshot: no snapshot, layer or blob of its own; its
        // identity goes into the RUN's key through the state (not the key it would have had as a layer of its own)
        const id = ++this.vertex;
        this.deps.progress.start(id, prefix + upperKeyword(c.original));
        st.folded.push({ c, req, src, release });
        held = true;
        st.state = cacheKey({ parent: st.state, folded: parts });
        commitHistory(st.img, msg, { withLayer: false, buildkitSuffix: true });
        this.deps.progress.log(id, 'stdout', Buffer.from('copied into the next RUN step (one layer)\n'));
        this.deps.progress.done(id);
        return;
      }
      const hooks = this.incrementalCopy(st, c, keyReq, req);
      if (independent) hooks.independent = true;
      if (need) hooks.need = need;
      const copier = this.deps.copier;
      if (direct && copier.direct) hooks.direct = (lowers) => copier.direct!(req, src, lowers);
      await this.layerStep(
        st,
        prefix + upperKeyword(c.original),
        parts,
        msg,
        true,
        async (snap) => {
          try {
            await this.deps.copier.apply(req, src, snap.root, hooks.track);
          } catch (e) {
            if (e instanceof KilnError && e.message.startsWith(this.req.file + ':')) throw e;
            throw this.fail(c, e instanceof KilnError ? e.code : 'COPY_FAILED', errorMessage(e), undefined, e);
          }
        },
        src.kind === 'context'
          ? {
              context: {
                dir: src.dir,
                paths: [...c.sources],
                known: (rel: string, st: Stats) => knownContextDigest(src.dir, rel, st),
                stat: (abs: string) => knownContextStat(src.dir, abs),
              },
            }
          : undefined,
        hooks,
      );
    } finally {
      if (!held) await release();
    }
  }

  /**
   * A KILN_HOME thrown away after the build (a build pod's emptyDir): the last COPY of the target writes its layer
   * from the context without copying it into a snapshot first (FileCopier.direct) — nothing would reuse those files.
   */
  private directCandidate(st: StageState, c: CopyInstruction | AddInstruction, src: CopySource): boolean {
    return (
      c.kind === 'COPY' &&
      this.deps.copier.direct !== undefined &&
      ephemeralHome() &&
      src.kind === 'context' &&
      st.lastStep === true &&
      st.stage === this.targetStage()
    );
  }

  /** Folded COPYs with no RUN after them in their stage: a frontend's mistake, never the user's. */
  private unfoldable(st: StageState): never {
    const f = st.folded[0] as FoldedCopy;
    throw this.fail(f.c, 'INTERNAL', `${f.c.original}: folded into a RUN, but no RUN follows it in its stage`);
  }

  /**
   * A COPY that ran before with the same parent and instruction (only its sources changed) starts from the previous
   * result: src/engine/reuse.ts. Not for ADD (archives, URLs), --link, or --no-cache.
   */
  private incrementalCopy(
    st: StageState,
    c: CopyInstruction | AddInstruction,
    keyReq: Omit<CopyRequest, 'location'>,
    req: CopyRequest,
  ): StepHooks & { track?: CopyTrack } {
    const store = this.deps.layers;
    const { previous, remember } = store;
    if (c.kind !== 'COPY' || (req.link && req.chmod === '') || !previous || !remember) return {};
    const slot = cacheKey({ slot: 'copy/2', parent: st.state, req: keyReq, epoch: this.req.sourceDateEpoch });
    const track = newCopyTrack();
    let root = '';
    let planted: PlantedCopy | undefined;
    const hooks: StepHooks & { track?: CopyTrack } = {
      track,
      written: (diffID) => remember.call(store, slot, diffID, relativeSources(track, root)),
      reuseFrom: () => (planted && planted.size > 0 ? planted.dir : undefined),
      knownStats: () => (planted && planted.size > 0 && root ? planted.keptStats(root) : undefined),
      afterUnmount: async (snap) => {
        root = resolve(snap.root);
        if (planted) await planted.prune(snap.upper, root);
      },
    };
    // the previous result is looked up only when the step runs (a cache hit never reads it)
    if (!this.req.noCache) {
      hooks.plant = async (upper) => {
        const prev = await previous.call(store, slot);
        if (!prev) return false;
        if (prev.sources) track.previous = new Map(Object.entries(prev.sources));
        planted = new PlantedCopy(prev.dir, track);
        return planted.plant(upper);
      };
      hooks.unchanged = (root) => planted?.unchanged(resolve(root)) ?? new Set<string>();
    }
    return hooks;
  }

  private async dispatchRun(st: StageState, c: RunInstruction, prefix: string): Promise<void> {
    let args = c.command;
    let pipeFile: { name: string; data: string } | undefined;
    if (c.files.length > 0 && c.prependShell && args.length === 1) {
      const f = c.files[0];
      if (f && /^\s*\d*<<-?\s*(["']?)[^\s"']+\1\s*$/.test(args[0] as string)) {
        // a single heredoc: run its content (BuildKit), or with a shebang run it as a file from /dev/pipes
        const data = f.chomp ? f.data.replace(/^\t+/gm, '') : f.data;
        if (data.startsWith('#!')) {
          pipeFile = { name: f.name, data };
          args = [posix.join('/dev/pipes', f.name)];
        } else args = [data];
      } else {
        args = [(args[0] as string) + c.files.map((x) => '\n' + x.data + x.name).join('')];
      }
    }
    if (c.security === 'insecure') {
      throw this.fail(
        c,
        'RUN_INSECURE_DENIED',
        'RUN --security=insecure: security.insecure is not allowed',
        'kiln never runs steps with extra privileges',
      );
    }
    if (c.devices.length > 0) {
      throw this.fail(c, 'UNSUPPORTED', 'RUN --device is not supported');
    }
    const argv = c.prependShell ? withShell(st.img, args) : [...args];
    if (argv.length === 0) throw this.fail(c, 'DOCKERFILE_INSTRUCTION', 'RUN: empty command');
    const env = [...st.stateEnv];
    const user = st.img.config.User ?? '';
    const cwd = this.workdir(st);
    const network = c.network === 'none' ? 'none' : c.network === 'host' ? 'host' : this.req.network;
    const mounts = c.mounts.map((m) => parseMountSpec(m, (msg) => this.fail(c, 'DOCKERFILE_INSTRUCTION', msg)));
    const history = 'RUN ' + runCommandString(argv, st.buildArgs, (k) => getEnv(env, k), this.style);
    // BuildKit passes the predefined proxy build args to RUN without a declaration (never into history)
    const runEnv = [...env];
    for (const [k, v] of this.req.buildArgs) {
      if (PROXY_ARGS.includes(k.toUpperCase()) && getEnv(runEnv, k) === undefined) {
        runEnv.push(`${k}=${v}`);
        this.usedBuildArgs.add(k);
      }
    }
    // what bind mounts read is part of the step's identity
    const bindSources: string[] = [];
    for (const m of mounts) {
      // a cache mount with from= starts as a copy of that stage's or image's directory (BuildKit)
      if (m.type !== 'bind' && !(m.type === 'cache' && m.from !== '')) continue;
      const ref = m.from === '' ? undefined : this.stageRef(m.from, st.stage.index);
      if (ref) bindSources.push((await this.runStage(ref)).state);
      else if (m.from === '') {
        const req = copyRequest({ sources: [m.source || '.'], location: this.where(c) });
        bindSources.push(await this.deps.copier.checksum(req, { kind: 'context', dir: this.deps.contextDir }));
      } else bindSources.push('image:' + m.from);
    }
    const parts = {
      parent: st.state,
      op: 'RUN',
      argv,
      env: runEnv,
      user,
      cwd,
      network,
      security: c.security,
      mounts,
      bindSources,
      pipeFile,
      // layer mtimes are clamped to SOURCE_DATE_EPOCH: a layer made without it is not the same layer
      epoch: this.req.sourceDateEpoch,
    };
    const display = prefix + upperKeyword(c.original);
    const folded = st.folded.splice(0);
    const releases: (() => Promise<void>)[] = folded.map((f) => f.release);
    try {
      await this.layerStep(st, display, parts, history, true, async (snap, id) => {
        for (const f of folded) {
          try {
            await this.deps.copier.apply(f.req, f.src, snap.root);
          } catch (e) {
            if (e instanceof KilnError && e.message.startsWith(this.req.file + ':')) throw e;
            throw this.fail(f.c, e instanceof KilnError ? e.code : 'COPY_FAILED', errorMessage(e), undefined, e);
          }
        }
        if (folded.length > 0) debugMark(`#${id} folded COPY applied`);
        const runMounts: RunMount[] = [];
        for (const m of mounts) {
          if (m.type === 'secret') {
            const sid = m.id || posix.basename(m.target || '');
            const spec = this.req.secrets.find((s) => s.id === sid);
            if (!spec) {
              if (m.required) {
                throw this.fail(
                  c,
                  'SECRET_MISSING',
                  `secret ${sid} not found`,
                  `pass it with --secret id=${sid},src=FILE`,
                );
              }
              continue;
            }
            const secret: RunMount = {
              type: 'secret',
              id: sid,
              source: await this.secretFile(spec, c),
              target: m.target || (m.env !== undefined ? '' : `/run/secrets/${sid}`),
              readonly: true,
              mode: m.mode ?? 0o400,
              uid: m.uid ?? 0,
              gid: m.gid ?? 0,
            };
            if (m.env !== undefined) secret.env = m.env;
            runMounts.push(secret);
          } else if (m.type === 'cache') {
            const cid = m.id || m.target;
            let seed: Owned | undefined;
            let key = cid;
            if (m.from !== '') {
              const { src, release } = await this.sourceFor(st, m.from, c);
              releases.push(release);
              // BuildKit keys a seeded cache by its id and the seed's snapshot: another seed is another cache
              key += ':' + (src.stateDigest ?? 'image:' + m.from);
              seed = await this.seedCacheDir(join(this.deps.cacheMountsDir, sha256hex(key)), src, m, c);
            }
            // the sandbox creates the dir on first use with the mount's mode and owner (BuildKit)
            const dir = join(this.deps.cacheMountsDir, sha256hex(key));
            const cm: RunMount = { type: 'cache', id: cid, source: dir, target: m.target, readonly: m.readonly };
            if (seed) Object.assign(cm, seed);
            else {
              if (m.mode !== undefined) cm.mode = m.mode;
              if (m.uid !== undefined) cm.uid = m.uid;
              if (m.gid !== undefined) cm.gid = m.gid;
            }
            if (m.sharing) cm.sharing = m.sharing;
            runMounts.push(cm);
          } else if (m.type === 'tmpfs') {
            const tm: RunMount = { type: 'tmpfs', target: m.target };
            if (m.size) tm.size = m.size;
            runMounts.push(tm);
          } else if (m.type === 'bind') {
            const { src, release } = await this.sourceFor(st, m.from, c);
            releases.push(release);
            const rel = posix.normalize('/' + (m.source || '/'));
            runMounts.push({ type: 'bind', source: join(src.dir, rel), target: m.target, readonly: m.readonly });
          } else {
            throw this.fail(c, 'UNSUPPORTED', `RUN --mount=type=${m.type} is not supported`);
          }
        }
        if (pipeFile) {
          const pdir = await mkdtemp(join(this.deps.tmpDir, 'pipe-'));
          const file = join(pdir, 'script');
          await writeFile(file, pipeFile.data, { mode: 0o755 });
          // BuildKit mounts it under /dev/pipes; the sandbox's own /dev tmpfs hides mount points there, so the
          // script is mounted at PIPES_MOUNT (a stub the sandbox removes) and only history shows /dev/pipes.
          runMounts.push({
            type: 'bind',
            source: file,
            target: posix.join(PIPES_MOUNT, pipeFile.name),
            readonly: true,
          });
        }
        const execArgv = pipeFile
          ? argv.map((a) =>
              a === posix.join('/dev/pipes', (pipeFile as { name: string }).name)
                ? posix.join(PIPES_MOUNT, (pipeFile as { name: string }).name)
                : a,
            )
          : argv;
        const envWithSecrets = runEnv;
        let result;
        try {
          const spec: ProcessSpec = {
            rootfs: snap.root,
            argv: execArgv,
            env: envWithSecrets,
            cwd,
            user,
            network,
            mounts: runMounts,
            onStdout: (b) => this.deps.progress.log(id, 'stdout', b),
            onStderr: (b) => this.deps.progress.log(id, 'stderr', b),
          };
          spec.signal = this.signal;
          result = await this.deps.executor.run(spec);
        } catch (e) {
          if (e instanceof KilnError && e.code === 'INTERRUPTED') throw e;
          this.checkAbort();
          throw this.fail(
            c,
            e instanceof KilnError ? e.code : 'RUN_FAILED',
            `${c.original}: ${errorMessage(e)}`,
            undefined,
            e,
          );
        }
        this.checkAbort();
        if (result.exitCode !== 0 || result.signal) {
          const why = result.signal ? `signal: ${result.signal}` : `exit code: ${result.exitCode}`;
          throw this.fail(
            c,
            'RUN_FAILED',
            `${c.original}: process ${goQuote(argv.join(' '))} did not complete successfully: ${why}`,
          );
        }
      });
    } finally {
      for (const r of releases) await r();
    }
  }

  /**
   * Seed a new cache dir from `source` of a stage or image (RUN --mount=type=cache,from=…): BuildKit makes a new
   * cache a child of that snapshot mounted at `source`, so it starts as a copy of that directory with its owners,
   * modes and times; an existing cache is kept as it is. The copy goes to a temp dir renamed into place, so a
   * failed or concurrent seed never leaves a half-filled cache. Returns the mode and owner the sandbox must give
   * the dir when it finds it empty (the source dir's own; with source `/`, mode/uid/gid of the mount apply to an
   * empty dir, as BuildKit's `/cache` dir made on top of the stage).
   */
  private async seedCacheDir(dir: string, src: CopySource, m: MountSpec, c: Instruction): Promise<Owned> {
    const rel = posix.normalize('/' + (m.source || '/'));
    if (rel === '/' && (m.mode !== undefined || m.uid !== undefined || m.gid !== undefined)) {
      return { mode: m.mode ?? 0o755, uid: m.uid ?? 0, gid: m.gid ?? 0 };
    }
    const from = await rootPath(src.dir, rel, true);
    const st = await lstat(from).catch(() => undefined);
    if (!st?.isDirectory()) {
      throw this.fail(
        c,
        'DOCKERFILE_INSTRUCTION',
        `cache mount source ${rel} is not a directory in ${m.from}`,
        'a cache mount with from= is seeded from a directory of that stage or image',
      );
    }
    const owned: Owned = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
    if (
      await lstat(dir).then(
        () => true,
        () => false,
      )
    )
      return owned;
    await mkdir(this.deps.cacheMountsDir, { recursive: true, mode: 0o700 });
    const tmp = await mkdtemp(dir + '.seed-');
    try {
      const req = copyRequest({ sources: [rel], location: this.where(c) });
      await this.deps.copier.apply(req, src, tmp);
      await chown(tmp, owned.uid, owned.gid);
      await chmod(tmp, owned.mode);
      await utimes(tmp, st.atime, st.mtime);
      await rename(tmp, dir).catch((e: NodeJS.ErrnoException) => {
        // another build seeded it meanwhile: use theirs
        if (e.code !== 'EEXIST' && e.code !== 'ENOTEMPTY') throw e;
      });
    } catch (e) {
      if (e instanceof KilnError) throw e;
      throw this.fail(c, 'RUN_FAILED', `cannot seed cache mount ${m.target} from ${m.from}: ${errorMessage(e)}`);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    return owned;
  }

  private readonly secretFiles = new Map<string, string>();

  /** A host file holding the secret (env secrets are written to a private 0400 file in tmpDir). */
  private async secretFile(spec: SecretSpec, c: Instruction): Promise<string> {
    const have = this.secretFiles.get(spec.id);
    if (have) return have;
    let file: string;
    if (spec.env !== undefined) {
      const v = process.env[spec.env];
      if (v === undefined)
        throw this.fail(c, 'SECRET_MISSING', `secret ${spec.id}: environment variable ${spec.env} is not set`);
      const dir = await mkdtemp(join(this.deps.tmpDir, 'secret-'));
      file = join(dir, 'value');
      await writeFile(file, v, { mode: 0o400 });
    } else {
      file = spec.src as string;
    }
    this.secretFiles.set(spec.id, file);
    return file;
  }
}

/** A `RUN --mount` as the engine uses it. */
export interface MountSpec {
  type: 'bind' | 'cache' | 'tmpfs' | 'secret' | 'ssh';
  target: string;
  source: string;
  from: string;
  id: string;
  readonly: boolean;
  required: boolean;
  env?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  sharing?: 'shared' | 'private' | 'locked';
  /** tmpfs size in bytes. */
  size?: number;
}

/** Parse one (already expanded) `--mount=` value with the Dockerfile parser's BuildKit-compatible parseMount. */
export function parseMountSpec(v: string, fail: (msg: string) => Error): MountSpec {
  let m;
  try {
    m = parseMount(v, (w) => w);
  } catch (e) {
    throw fail(errorMessage(e));
  }
  const out: MountSpec = {
    type: m.type,
    target: m.target,
    source: m.source,
    from: m.from,
    id: m.cacheId,
    readonly: m.readOnly,
    required: m.required,
  };
  if (m.type === 'secret' && out.id === '' && m.source !== '') out.id = m.source;
  if (m.env !== undefined) out.env = m.env;
  if (m.mode !== undefined) out.mode = m.mode;
  if (m.uid !== undefined) out.uid = m.uid;
  if (m.gid !== undefined) out.gid = m.gid;
  if (m.cacheSharing) out.sharing = m.cacheSharing;
  if (m.sizeLimit) out.size = m.sizeLimit;
  if (m.type !== 'secret' && m.type !== 'ssh' && m.target === '') throw fail(`mount ${v}: target is required`);
  return out;
}

/** Build the target stage of `req` with `deps`. */
export async function runEngine(req: EngineRequest, deps: EngineDeps): Promise<EngineResult> {
  await mkdir(deps.tmpDir, { recursive: true });
  try {
    return await new Engine(req, deps).build();
  } finally {
    await rm(deps.tmpDir, { recursive: true, force: true });
  }
}

/** Exposed for unit tests of the stage graph. */
export function neededStages(req: EngineRequest): number[] {
  return new Engine(req, {} as EngineDeps).neededStages().map((s) => s.index);
}

/** Mode and owner the sandbox gives a cache dir it finds empty. */
interface Owned {
  mode: number;
  uid: number;
  gid: number;
}

function sha256hex(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}
