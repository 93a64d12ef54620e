/**
 * The seams of the build engine. The engine (src/engine/engine.ts) is written against these narrow interfaces only;
 * concrete implementations live in src/sandbox (namespaces, overlay snapshots, RUN processes), src/layer (layer
 * tar writing and extraction), src/registry + src/oci (base images, outputs). Other build strategies (S2I,
 * buildpacks) and other executors (a Kubernetes pod executor) plug in here without touching the engine.
 */
import type { Stats } from 'node:fs';
import type { CopyTrack } from './reuse.js';
import type { GrowingBlob, Image, Layer, Platform } from '../oci/types.js';
import type { Reroot } from '../layer/writer.js';

/** A mount made inside a RUN sandbox. Paths in `target` are absolute inside the container. */
export interface RunMount {
  type: 'bind' | 'tmpfs' | 'secret' | 'cache';
  /** Host path (bind: a directory or file; secret: a file holding the secret; cache: the cache dir). */
  source?: string;
  target: string;
  readonly?: boolean;
  /** File mode for secret files (default 0400). */
  mode?: number;
  uid?: number;
  gid?: number;
  /** secret: also (or, without target, only) expose the value as this environment variable. */
  env?: string;
  /** secret id / cache id (for messages and cache sharing). */
  id?: string;
  /** cache: shared (default) | private | locked. */
  sharing?: 'shared' | 'private' | 'locked';
  /** tmpfs: size limit in bytes. */
  size?: number;
}

/** One process to run in a prepared root filesystem. */
export interface ProcessSpec {
  /** The merged root (from Snapshotter.prepare). */
  rootfs: string;
  argv: string[];
  /** Complete environment, `KEY=value`. */
  env: string[];
  /** Absolute working directory inside the root (created by the executor when missing). */
  cwd: string;
  /** User as written in USER (`name`, `uid`, `name:group`, `uid:gid`); empty means root. */
  user: string;
  network: 'host' | 'none';
  mounts: RunMount[];
  hostname?: string;
  /** Output of the process, as produced (stdout and stderr separately). */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** Aborting kills the process (and its descendants). */
  signal?: AbortSignal;
}

export interface ProcessResult {
  exitCode: number;
  /** Set when the process was killed by a signal. */
  signal?: string;
}

/** Runs RUN commands. The local one uses namespaces (src/sandbox); a Kubernetes one would use a pod. */
export interface Executor {
  run(spec: ProcessSpec): Promise<ProcessResult>;
}

/** A writable root filesystem for one step: overlay(lowers) with a fresh upper dir. */
export interface Snapshot {
  /** The merged view; the step writes here. */
  readonly root: string;
  /** The upper dir: after the step it IS the layer diff (overlay format). */
  readonly upper: string;
  /**
   * Finish the step's writes so `upper` is a complete overlay-format diff (unmount the overlay, or compute the
   * diff for a copying snapshotter). Called before LayerStore.writeBlob; idempotent.
   */
  unmount?(): Promise<void>;
  /** After unmount: the upper dir's layer xattrs (UPPER_XATTRS) by absolute path, if the snapshotter read them. */
  upperXattrs?(): ReadonlyMap<string, ReadonlyMap<string, Uint8Array>> | undefined;
  /** Unmount and remove the work dir (and the upper dir unless it was taken by LayerStore.adopt). */
  release(): Promise<void>;
}

export interface WriteBlobOptions {
  sourceDateEpoch?: number;
  /** Called once the blob's file is chosen, before it is written (to stream it while it grows). */
  onFile?: (blob: GrowingBlob) => void;
  /** The previous layer dir of the same step (the upper dir holds hard links into it): reuse its blob's parts. */
  reuseFrom?: string;
  /** Write on the calling thread, not the layer worker (nothing else is left to run meanwhile). */
  inProcess?: boolean;
  /**
   * Upper-relative paths → their lstat, already taken (incremental COPY: planted files the copy kept): the layer
   * writer does not lstat them again. In-process writes only (Stats do not cross to the worker thread).
   */
  knownStats?: ReadonlyMap<string, Stats>;
  /** Absolute paths → their lstat, already taken (TarOptions.knownAbsStats; in-process writes only). */
  knownAbsStats?: ReadonlyMap<string, Stats>;
  /** The upper dir's xattrs as the snapshot read them (Snapshot.upperXattrs). */
  upperXattrs?: ReadonlyMap<string, ReadonlyMap<string, Uint8Array>>;
  /** Write the directory as a subdirectory of the layer, copied and chowned (TarOptions.reroot). */
  reroot?: Reroot;
}

/**
 * A COPY's layer written straight from its source directory (FileCopier.direct): `dir` as the layer's `reroot.name`,
 * with the destination's ancestors as `reroot.parents` — what the snapshot path's upper dir would hold.
 */
export interface DirectCopyLayer {
  dir: string;
  reroot: Reroot;
  /** The lstat of the source's entries the COPY's key was computed from, by absolute path (not taken again). */
  stats?: ReadonlyMap<string, Stats>;
}

export interface PrepareOptions {
  /** Fill the empty upper dir before the overlay is mounted (incremental COPY, src/engine/reuse.ts). */
  plant?: (upper: string) => Promise<boolean>;
  /**
   * After the step (given the merged root it ran on): upper-relative paths of planted files the step left as they
   * were planted. They carry no xattrs the layer records (plant leaves such files out), so the snapshotter does not
   * read theirs again — 5,000 kept files of a warm COPY cost a getfattr walk otherwise.
   */
  unchanged?: (root: string) => ReadonlySet<string>;
}

export interface Snapshotter {
  /** `lowers` are layer dirs, bottom-most first. A snapshotter without an upper dir of its own ignores `plant`. */
  prepare(lowers: string[], opts?: PrepareOptions): Promise<Snapshot>;
}

/** A layer blob written from an upper dir into the blob store. */
export interface WrittenBlob {
  diffID: string;
  digest: string;
  size: number;
  mediaType: string;
}

/** Content-addressed extracted layers ($KILN_HOME/layers/<diffID hex>) plus the blob store behind them. */
export interface LayerStore {
  /** Extract `layer` (once) into the layer store; returns its dir. */
  unpack(layer: Layer): Promise<string>;
  /** The dir of an already extracted/committed layer, or undefined. */
  dirOf(diffID: string): Promise<string | undefined>;
  /**
   * Write `upper` as a layer blob (deterministic, with SOURCE_DATE_EPOCH clamping) and leave the dir where it is:
   * this runs in the background while later steps already use `upper` as a lower dir.
   */
  writeBlob(upper: string, opts: WriteBlobOptions): Promise<WrittenBlob>;
  /** Move `upper` (whose blob has `diffID`) into the store once nothing mounts it any more; returns its dir. */
  adopt(upper: string, diffID: string): Promise<string>;
  /**
   * The layer dir last produced for a step `slot` (same step, sources changed: src/engine/reuse.ts), if still here,
   * with what was remembered about its files.
   */
  previous?(slot: string): Promise<{ dir: string; sources?: Record<string, string> } | undefined>;
  /** Remember `diffID` (and the source keys of its files) as the latest result of `slot`. */
  remember?(slot: string, diffID: string, sources?: Record<string, string>): Promise<void>;
  /** A Layer (for images/outputs) backed by a stored blob. */
  layer(digest: string, diffID: string, size: number, mediaType: string): Promise<Layer>;
}

/** A resolved base image. */
export interface ResolvedBase {
  /** The normalized reference (e.g. docker.io/library/busybox:latest, localhost/busybox:latest). */
  name: string;
  /** Manifest digest of the image for the build platform. */
  digest: string;
  image: Image;
}

/** Resolves FROM references (local store first unless pull, then registry). */
export interface BaseResolver {
  resolve(ref: string, opts: { pull: boolean; platform: Platform }): Promise<ResolvedBase>;
}

/** Where a finished image goes. */
export interface Publisher {
  publish(image: Image, build: PublishContext): Promise<PublishResult>;
}

export interface PublishContext {
  /** Image names (tags) given for this output. */
  names: string[];
  /** The final rootfs dirs (lower first) for filesystem outputs (`local`, `tar`). */
  layerDirs: string[];
}

export interface PublishResult {
  /** Names actually written/pushed (for --metadata-file image.name). */
  names: string[];
}

/** Progress events the engine emits; src/engine/progress.ts renders them (plain, tty, json). */
export interface ProgressSink {
  /** A vertex (step) starts: `#id name`. */
  start(id: number, name: string): void;
  /** A line of output of a running vertex. */
  log(id: number, stream: 'stdout' | 'stderr', chunk: Buffer): void;
  cached(id: number): void;
  done(id: number): void;
  error(id: number, message: string): void;
  /** Free-form warning (lint), printed once. */
  warn(message: string): void;
}

/** Where COPY/ADD read from: the build context or another stage's (merged) root filesystem. */
export interface CopySource {
  kind: 'context' | 'stage';
  /** Host dir holding the files (context dir, or a stage's merged rootfs). */
  dir: string;
  /** For `stage`: a stable digest of the stage's content (its final state). */
  stateDigest?: string;
}

/** A COPY/ADD to apply (words already expanded). */
export interface CopyRequest {
  kind: 'COPY' | 'ADD';
  sources: string[];
  /** Heredoc sources: file name → content. */
  contents: { path: string; data: string }[];
  dest: string;
  chown: string;
  chmod: string;
  link: boolean;
  parents: boolean;
  exclude: string[];
  /** ADD only. */
  checksum?: string;
  keepGitDir?: boolean;
  unpack?: boolean;
  /** The step's working directory (relative dest is joined to it). */
  workdir: string;
  /** The source line for error messages (`Dockerfile:N`). */
  location: string;
  sourceDateEpoch?: number;
}

/**
 * A COPY request with the defaults of a plain `COPY src /`: destination and working directory `/`, no --chown,
 * --chmod, --link, --parents or --exclude, no heredoc contents; `over` sets the rest (at least `location`).
 */
export function copyRequest(over: Partial<CopyRequest> & { location: string }): CopyRequest {
  return {
    kind: 'COPY',
    sources: [],
    contents: [],
    dest: '/',
    chown: '',
    chmod: '',
    link: false,
    parents: false,
    exclude: [],
    workdir: '/',
    ...over,
  };
}

/** COPY/ADD semantics (src/engine/copy.ts, add.ts). */
export interface FileCopier {
  /** A digest of everything the request reads from `src` (for the cache key); missing sources fail here. */
  checksum(req: CopyRequest, src: CopySource): Promise<string>;
  /**
   * Apply the copy into the merged root `destRoot`. With `track`, the destination may already hold the previous
   * build's result (src/engine/reuse.ts): identical files are kept and reported.
   */
  apply(req: CopyRequest, src: CopySource, destRoot: string, track?: CopyTrack): Promise<void>;
  /**
   * A hint at build start: these build-context paths (literal COPY/ADD sources, relative to the context) will be
   * checksummed; start reading them in the background. Returns a function that stops that work and waits for it.
   */
  prefetch?(paths: string[]): () => Promise<void>;
  /**
   * The layer `apply` would produce over `lowers` (the layer dirs below, bottom-most first, every one that holds the
   * destination or its parents), described for the layer writer without copying a file — or undefined whenever
   * that is not certain (then the step copies as usual). Why: a fresh KILN_HOME (a build pod) would otherwise
   * create every file of the COPY once only to read it back into the layer.
   */
  direct?(req: CopyRequest, src: CopySource, lowers: string[]): Promise<DirectCopyLayer | undefined>;
}
