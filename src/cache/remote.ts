/**
 * The registry-backed build cache: `--cache-to type=registry,ref=REPO[:TAG][,mode=min|max]` and
 * `--cache-from type=registry,ref=REPO[:TAG]` (also plain `--cache-from REPO[:TAG]`, as buildx).
 *
 * Format — one plain OCI image manifest per cache ref, so registries that accept only image manifests (ECR) work:
 *   manifest (application/vnd.oci.image.manifest.v1+json, annotation `dev.kiln.cache.version: 1`)
 *     config: a valid OCI image config whose `rootfs.diff_ids` list the layers below, plus one extra key,
 *             `dev.kiln.cache.v1`: { records: CacheRecord[], bases?: diffID → path summary } — step key (content
 *             addressed, see cache.ts) → the layer the step produced, its history time, a secret-free fingerprint
 *             of the step's inputs and its layer's path summary; `bases` summarizes the base image layers (their
 *             blobs stay in the base's repository) so a fresh home leaves those unfetched too;
 *     layers: every layer a record names — the very blobs the built image uses (cross-repository mounted from the
 *             image's repository or the imported cache, uploaded only when the registry has no copy).
 * Keys are the engine's own step keys (parent state + everything that determines the result), so a lookup is one
 * map access per step: a miss in one stage never stops lookups in another, and steps whose key does not include
 * the parent (COPY --link) hit on their own.
 *
 * Degradation: an unreachable, unauthorised or missing cache ref is one warning line and "no cache", never a
 * failed build; a record whose blob fails verification (digest mismatch) or does not extract is ignored (the step
 * runs) and the fresh record replaces it on the next `--cache-to`.
 *
 * `RemoteBuildCache` extends the local `BuildCache`, so the engine uses it where it uses the local cache: `get(key)`
 * answers from $KILN_HOME/cache first, then from the imported records; `put` records what the build produced;
 * `exportTo()` after the push writes the cache manifest. An imported hit is pulled and extracted at once, unless the
 * build only pushes to the cache's registry (`allowLazy`): then it stays a descriptor (`lazyLayer`, BuildKit's lazy
 * refs) — the push mounts its blob, and the engine fetches it only for a later step that runs and needs its files
 * (src/engine/lazy.ts; records carry a path summary of their layer for that, src/cache/summary.ts). Miss explanations: `noteStep(key, info)` (called by the engine before `get`) remembers each step's
 * inputs; `explainMiss(key)` compares them with the previous build of the same step (local or imported).
 */
import { lstatSync, readFileSync, readdirSync, readlinkSync, type Stats } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join, posix, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import { KilnError, errorMessage } from '../errors.js';
import { BuildCache, canonicalJSON, type CacheEntry, type LazyLayer, type StepNote } from './cache.js';
import { summarizeLayerDir } from './summary.js';
import type { BlobDir } from '../oci/blobs.js';
import { imageFromParts, layerFromBlob } from '../oci/image.js';
import { MediaType } from '../oci/mediatypes.js';
import type { ImageConfig, Layer, Manifest } from '../oci/types.js';
import { hostPlatform } from '../oci/platform.js';
import { RepositoryClient } from '../registry/client.js';
import { push, type PushOptions } from '../registry/push.js';
import { parseReferenceWithDefaultTag, type Reference } from '../registry/reference.js';
import { closeTransports } from '../registry/transport.js';
import type { LayerStore } from '../engine/ports.js';
import { writeFileAtomic } from '../util/atomic.js';

// ---------------------------------------------------------------------------------------------------------------
// Options

export interface CacheSpec {
  type: 'registry';
  /** The cache manifest's reference (a tag is added: `latest` when none is given). */
  ref: string;
  /** `min` (default): only the layers of the exported image; `max`: every step of every stage. */
  mode: 'min' | 'max';
}

/**
 * Parse a `--cache-from` / `--cache-to` value: `type=registry,ref=REPO[:TAG][,mode=min|max]`, or for
 * `--cache-from` a bare `REPO[:TAG]`. Other buildx types (local, gha, s3, inline) are refused with a hint.
 */
export function parseCacheSpec(value: string, flag: '--cache-from' | '--cache-to'): CacheSpec {
  const v = value.trim();
  const bad = (msg: string, hint?: string): KilnError =>
    new KilnError('OPTION_INVALID', `${flag} ${value}: ${msg}`, {
      hint: hint ?? `use ${flag} type=registry,ref=REGISTRY/REPO[:TAG]${flag === '--cache-to' ? '[,mode=max]' : ''}`,
    });
  if (v === '') throw bad('empty value');
  const fields = new Map<string, string>();
  if (!v.includes('=')) {
    if (flag === '--cache-to') throw bad('expected key=value fields');
    fields.set('type', 'registry');
    fields.set('ref', v);
  } else {
    for (const part of v.split(',')) {
      const i = part.indexOf('=');
      if (i <= 0) throw bad(`invalid field "${part}"`);
      const k = part.slice(0, i).trim().toLowerCase();
      fields.set(k, part.slice(i + 1).trim());
    }
  }
  const type = fields.get('type') ?? 'registry';
  if (type !== 'registry')
    throw bad(`cache type "${type}" is not supported`, 'kiln stores its cache in a registry: type=registry,ref=...');
  const ref = fields.get('ref') ?? '';
  if (ref === '') throw bad('ref= is required');
  let parsed: Reference;
  try {
    parsed = parseReferenceWithDefaultTag(ref);
  } catch (e) {
    throw bad(`invalid ref: ${errorMessage(e)}`);
  }
  if (parsed.digest !== undefined && flag === '--cache-to') throw bad('ref must be a tag, not a digest');
  const mode = fields.get('mode') ?? 'min';
  if (mode !== 'min' && mode !== 'max') throw bad(`mode must be min or max, not "${mode}"`);
  for (const k of fields.keys()) {
    if (!['type', 'ref', 'mode', 'image-manifest', 'oci-mediatypes', 'ignore-error', 'compression'].includes(k)) {
      throw bad(`unknown field "${k}"`);
    }
  }
  return { type: 'registry', ref: parsed.toString(), mode };
}

// ---------------------------------------------------------------------------------------------------------------
// Step fingerprints (miss explanations)

/** What the engine knows about a step when it computes its key (passed to `noteStep`): the cache's StepNote. */
export type StepInfo = StepNote;

/**
 * The stored, secret-free form of a StepInfo: every key part reduced to a short hash, environment values hashed
 * per variable (so a changed ARG can be named without storing its value), file digests kept per path.
 */
export interface StepFingerprint {
  slot: string;
  name: string;
  base?: string;
  /** Key part → 16-hex-char hash of its canonical JSON (`parent` and `from` are kept whole: they are keys). */
  fields: Record<string, string>;
  /** For `env` parts: variable → short hash of its value. */
  env?: Record<string, string>;
  files?: Record<string, string>;
}

const short = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 16);

export function fingerprint(info: StepInfo): StepFingerprint {
  const fields: Record<string, string> = {};
  let env: Record<string, string> | undefined;
  for (const [k, v] of Object.entries(info.parts)) {
    if (v === undefined) continue;
    if ((k === 'parent' || k === 'from') && typeof v === 'string') fields[k] = v;
    else fields[k] = short(canonicalJSON(v));
    if (k === 'env' && Array.isArray(v)) {
      env = {};
      for (const e of v) {
        if (typeof e !== 'string') continue;
        const i = e.indexOf('=');
        const name = i < 0 ? e : e.slice(0, i);
        env[name] = short(i < 0 ? '' : e.slice(i + 1));
      }
    }
  }
  const fp: StepFingerprint = { slot: info.slot, name: info.name, fields };
  if (info.base !== undefined) fp.base = info.base;
  if (env) fp.env = env;
  if (info.files) fp.files = { ...info.files };
  return fp;
}

const FIELD_WORDS: Record<string, string> = {
  op: 'instruction changed',
  argv: 'command text changed',
  req: 'instruction paths/options changed',
  sources: 'source files changed',
  user: 'USER changed',
  cwd: 'WORKDIR changed',
  path: 'WORKDIR path changed',
  network: 'network mode changed',
  security: 'security mode changed',
  mounts: 'RUN --mount options changed',
  bindSources: 'bind-mount sources changed',
  from: 'the --from stage changed',
  epoch: 'SOURCE_DATE_EPOCH changed',
  pipeFile: 'heredoc script changed',
};

function listChanged(kind: string, names: string[], max = 5): string {
  const shown = names.slice(0, max).join(', ');
  return `${kind} ${shown}${names.length > max ? ` (+${names.length - max} more)` : ''}`;
}

/**
 * Why `cur` missed, compared with the previous build of the same step (`prev`): the first input that differs,
 * named (base image digest, command text, which ARG/ENV, which files). Pure; used by `explainMiss`.
 */
export function explainDifference(cur: StepFingerprint, prev: StepFingerprint | undefined): string {
  if (!prev) return 'no earlier build of this step in the cache';
  const why: string[] = [];
  if (cur.base !== prev.base && cur.base !== undefined && prev.base !== undefined) {
    why.push(`base image changed: ${prev.base.slice(0, 19)} → ${cur.base.slice(0, 19)}`);
  } else if (cur.fields.parent !== prev.fields.parent) {
    why.push('an earlier step changed');
  }
  const keys = new Set([...Object.keys(cur.fields), ...Object.keys(prev.fields)]);
  keys.delete('parent');
  for (const k of [...keys].sort()) {
    if (cur.fields[k] === prev.fields[k]) continue;
    if (k === 'env' && cur.env && prev.env) {
      const names = new Set([...Object.keys(cur.env), ...Object.keys(prev.env)]);
      const changed = [...names].filter((n) => cur.env?.[n] !== prev.env?.[n]).sort();
      if (changed.length) why.push(listChanged('ARG/ENV changed:', changed));
      continue;
    }
    if (k === 'sources' && cur.files && prev.files) {
      const names = new Set([...Object.keys(cur.files), ...Object.keys(prev.files)]);
      const added: string[] = [];
      const removed: string[] = [];
      const modified: string[] = [];
      for (const n of [...names].sort()) {
        const a = prev.files[n]?.split(':')[0];
        const b = cur.files[n]?.split(':')[0];
        if (a === b) continue;
        if (a === undefined) added.push(n);
        else if (b === undefined) removed.push(n);
        else modified.push(n);
      }
      if (modified.length) why.push(listChanged('file changed:', modified));
      if (added.length) why.push(listChanged('file added:', added));
      if (removed.length) why.push(listChanged('file removed:', removed));
      if (modified.length + added.length + removed.length > 0) continue;
    }
    why.push(FIELD_WORDS[k] ?? `${k} changed`);
  }
  if (why.length === 0) return 'same inputs as the cached step, but its layer is not available';
  return why.join('; ');
}

/** At most this many files are listed per step (beyond it, explanations name the input, not the files). */
export const MAX_LISTED_FILES = 50_000;

/**
 * The files under `paths` (relative to `dir`) as `rel → "sha16:size:mtimeMs:ino"`. Content hashes of files whose
 * size/mtime/inode match `previous` are reused (no read), so a rebuild only hashes what changed; `known` supplies
 * digests the caller already has (the context's stat cache: a fresh checkout is not read twice) and `stat` the lstats
 * it already took (the hash walk of the step's key). Never leaves `dir`
 * (paths are normalized inside it; symlinks are listed, not followed). Wildcard paths are skipped; undefined when
 * the listing would exceed MAX_LISTED_FILES.
 */
export function listContextFiles(
  dir: string,
  paths: string[],
  previous: Record<string, string> = {},
  ignore?: (rel: string, isDir: boolean) => boolean,
  known?: (rel: string, st: Stats) => string | undefined,
  stat?: (abs: string) => Stats | undefined,
): Record<string, string> | undefined {
  const root = resolve(dir);
  const out: Record<string, string> = {};
  let count = 0;
  const visit = (rel: string): boolean => {
    if (rel !== '' && ignore?.(rel, false) === true) return true;
    const abs = rel === '' ? root : join(root, rel);
    let st = stat?.(abs);
    try {
      st ??= lstatSync(abs);
    } catch {
      return true;
    }
    if (st.isDirectory()) {
      let names: string[];
      try {
        names = readdirSync(abs);
      } catch {
        return true;
      }
      for (const n of names.sort()) if (!visit(rel === '' ? n : `${rel}/${n}`)) return false;
      return true;
    }
    if (++count > MAX_LISTED_FILES) return false;
    const sig = `${st.size}:${Math.floor(st.mtimeMs)}:${st.ino}`;
    const prev = previous[rel];
    if (prev !== undefined && prev.slice(prev.indexOf(':') + 1) === sig) {
      out[rel] = prev;
      return true;
    }
    let sum: string;
    if (st.isSymbolicLink()) sum = short('link:' + readlinkSync(abs));
    else if (st.isFile())
      sum = (known?.(rel, st) ?? createHash('sha256').update(readFileSync(abs)).digest('hex')).slice(0, 16);
    else sum = short(`mode:${st.mode}`);
    out[rel] = `${sum}:${sig}`;
    return true;
  };
  for (const p of paths) {
    if (/[*?[]/.test(p)) continue;
    const rel = posix.normalize('/' + p.replace(/\\/g, '/')).replace(/^\/+|\/+$/g, '');
    if (!visit(rel)) return undefined;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Records and the cache manifest

/** One cached step, as stored in the cache config blob. */
export interface CacheRecord {
  key: string;
  layer: { diffID: string; digest: string; size: number; mediaType: string };
  created?: string;
  extra?: Record<string, string>;
  step?: StepFingerprint;
  /** The paths the layer holds (src/cache/summary.ts): lets a later step that misses leave the layer unfetched. */
  summary?: string[];
}

export const CACHE_CONFIG_KEY = 'dev.kiln.cache.v1';
export const CACHE_ANNOTATION = 'dev.kiln.cache.version';

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

function isRecord(x: unknown): x is CacheRecord {
  if (typeof x !== 'object' || x === null) return false;
  const r = x as CacheRecord;
  const l = r.layer as CacheRecord['layer'] | undefined;
  return (
    typeof r.key === 'string' &&
    DIGEST_RE.test(r.key) &&
    typeof l === 'object' &&
    l !== null &&
    DIGEST_RE.test(l.diffID) &&
    DIGEST_RE.test(l.digest) &&
    Number.isSafeInteger(l.size) &&
    l.size >= 0 &&
    typeof l.mediaType === 'string' &&
    (r.summary === undefined || (Array.isArray(r.summary) && r.summary.every((x) => typeof x === 'string')))
  );
}

/**
 * Path summaries of base image layers (diffID → summary, src/cache/summary.ts), carried beside the records: a
 * build in a fresh home leaves a base layer unfetched while no step that runs needs its files (a COPY into `/app`
 * does not need busybox's `/bin`). The blobs stay in the base image's repository; the cache names no base blob.
 */
export type BaseSummaries = Record<string, string[]>;

/** The image config that carries `records` (valid OCI config: its diff_ids match the manifest's layers). */
export function encodeCacheConfig(
  records: CacheRecord[],
  layers: CacheRecord['layer'][],
  bases: BaseSummaries = {},
): Buffer {
  const p = hostPlatform();
  const body: { records: CacheRecord[]; bases?: BaseSummaries } = { records };
  if (Object.keys(bases).length > 0) body.bases = bases;
  const cfg: ImageConfig & { [CACHE_CONFIG_KEY]: typeof body } = {
    architecture: p.architecture,
    os: p.os,
    config: { Labels: { [CACHE_ANNOTATION]: '1' } },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffID) },
    [CACHE_CONFIG_KEY]: body,
  };
  return Buffer.from(JSON.stringify(cfg));
}

/** The base layer summaries of a cache config blob (malformed entries dropped; none in older caches). */
export function decodeCacheBases(raw: Buffer): BaseSummaries {
  let j: unknown;
  try {
    j = JSON.parse(raw.toString('utf8'));
  } catch {
    return {};
  }
  const bases = ((j as Record<string, unknown> | null)?.[CACHE_CONFIG_KEY] as { bases?: unknown } | undefined)?.bases;
  const out: BaseSummaries = {};
  if (typeof bases !== 'object' || bases === null || Array.isArray(bases)) return out;
  for (const [d, v] of Object.entries(bases)) {
    if (DIGEST_RE.test(d) && Array.isArray(v) && v.every((x) => typeof x === 'string')) out[d] = v as string[];
  }
  return out;
}

/** Records from a cache config blob; malformed records are dropped, a blob without the key yields none. */
export function decodeCacheConfig(raw: Buffer): CacheRecord[] {
  let j: unknown;
  try {
    j = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new KilnError('CACHE_INVALID', 'cache config is not valid JSON');
  }
  const body = (j as Record<string, unknown> | null)?.[CACHE_CONFIG_KEY] as { records?: unknown } | undefined;
  if (!body || !Array.isArray(body.records)) {
    throw new KilnError('CACHE_INVALID', 'not a kiln cache manifest', {
      hint: `its config has no "${CACHE_CONFIG_KEY}"`,
    });
  }
  return body.records.filter(isRecord);
}

/** Unique layers of `records`, in first-use order. */
export function recordLayers(records: CacheRecord[]): CacheRecord['layer'][] {
  const seen = new Map<string, CacheRecord['layer']>();
  for (const r of records) if (!seen.has(r.layer.digest)) seen.set(r.layer.digest, r.layer);
  return [...seen.values()];
}

// ---------------------------------------------------------------------------------------------------------------
// The cache

export interface RemoteCacheOptions {
  /** `$KILN_HOME/cache` (the local cache this one extends). */
  dir: string;
  from: CacheSpec[];
  to: CacheSpec[];
  /** Registry options of the build (TLS, insecure hosts, credentials). */
  registry: PushOptions;
  /** The blob store behind the layer store (pulled layer blobs go here). */
  blobs: BlobDir;
  layers: LayerStore;
  /** One-line warnings (the build's progress). */
  warn: (msg: string) => void;
  /** Per-request retries against the cache registry (default 1: a dead cache must not stall the build). */
  maxRetries?: number;
}

/** A BlobOrigin-carrying Layer for push (enables cross-repository mounts). */
type OriginLayer = Layer & { origin: { registry: string; repository: string } };

function withOrigin(l: Layer, origin: { registry: string; repository: string }): OriginLayer {
  return Object.assign(Object.create(null) as object, l, { origin }) as OriginLayer;
}

export class RemoteBuildCache extends BuildCache {
  private readonly o: RemoteCacheOptions;
  private readonly reg: PushOptions;
  private imported: Promise<Map<string, { rec: CacheRecord; from: Reference }>> | undefined;
  /** Entries this build used or produced (key → record), for `exportTo`. */
  private readonly used = new Map<string, CacheRecord>();
  private readonly steps = new Map<string, StepInfo>();
  private readonly bad = new Set<string>();
  private readonly inflight = new Map<string, Promise<CacheEntry | undefined>>();
  /** Registries the build pushes to (and nothing else): hits from a cache there stay lazy (see allowLazy). */
  private lazyRegistries = new Set<string>();
  /** Remote hits not fetched yet: key → the record, where it is, and its fetch (once). */
  private readonly lazy = new Map<
    string,
    { rec: CacheRecord; from: Reference; entry: CacheEntry; got?: Promise<string> }
  >();
  /** Base layer summaries of the imported caches (diffID → summary). */
  private readonly importedBases = new Map<string, string[]>();
  /** Base image layers of this build (diffIDs, see baseLayers): their summaries go into the exported cache. */
  private readonly bases = new Set<string>();
  /** Counters for tests and progress (`fetched`: lazy hits whose layer a later step needed). */
  readonly stats = { localHits: 0, remoteHits: 0, misses: 0, corrupt: 0, lazy: 0, fetched: 0 };

  constructor(o: RemoteCacheOptions) {
    super(o.dir);
    this.o = o;
    // a private connection pool: the cache registry's retry policy is its own, and closing it leaves the build's
    // other registry connections alone
    this.reg = { ...o.registry, maxRetries: o.maxRetries ?? 1, maxRetryDelayMs: 2000, pool: new Map() };
  }

  /** The engine tells the cache what a step's key was made of (before `get`), for explanations and export. */
  noteStep(key: string, info: StepInfo): void {
    this.steps.set(key, info);
  }

  /**
   * Start importing the `--cache-from` records now (the engine asks for them at its first FROM): their manifest and
   * config round trips then overlap the base image's resolution instead of following it.
   */
  prefetch(): void {
    this.load().catch(() => undefined); // a failure reaches the engine when it awaits the same import
  }

  /** Import every `--cache-from` (once, concurrently); failures are one warning each. */
  private load(): Promise<Map<string, { rec: CacheRecord; from: Reference }>> {
    this.imported ??= (async () => {
      const out = new Map<string, { rec: CacheRecord; from: Reference }>();
      const lists = await Promise.all(
        this.o.from.map(async (spec) => {
          const ref = parseReferenceWithDefaultTag(spec.ref);
          try {
            return { ref, records: await this.fetchRecords(ref, this.importedBases) };
          } catch (e) {
            this.o.warn(`cache import from ${spec.ref} failed, building without it: ${oneLine(e)}`);
            return { ref, records: [] as CacheRecord[] };
          }
        }),
      );
      for (const { ref, records } of lists)
        for (const rec of records) if (!out.has(rec.key)) out.set(rec.key, { rec, from: ref });
      return out;
    })();
    return this.imported;
  }

  private async fetchRecords(ref: Reference, bases?: Map<string, string[]>): Promise<CacheRecord[]> {
    const client = new RepositoryClient(ref, this.reg, `cache ${ref.toString()}`);
    const m = await client.getManifest(ref.digest ?? ref.tag ?? 'latest');
    let manifest: Manifest;
    try {
      manifest = JSON.parse(m.raw.toString('utf8')) as Manifest;
    } catch {
      throw new KilnError('CACHE_INVALID', 'manifest is not JSON');
    }
    if (!manifest.config || !Array.isArray(manifest.layers))
      throw new KilnError('CACHE_INVALID', 'not an image manifest');
    const raw = await client.blobBuffer(manifest.config.digest, manifest.config.size);
    const records = decodeCacheConfig(raw);
    if (bases) for (const [d, sum] of Object.entries(decodeCacheBases(raw))) if (!bases.has(d)) bases.set(d, sum);
    // a record may only name layers the manifest references (those are the blobs the registry keeps for it)
    const have = new Set(manifest.layers.map((l) => l.digest));
    return records.filter((r) => have.has(r.layer.digest));
  }

  /**
   * The build's only outputs are pushes to `registries`: a hit from a cache in one of them is not fetched (BuildKit's
   * lazy refs) — the image push mounts its blob from the cache repository, and the engine fetches it only when a
   * later step that runs needs its files ({@link lazyLayer}). Any other output (local store, OCI layout, rootfs)
   * needs the bytes anyway: hits are then fetched and extracted at once.
   */
  allowLazy(registries: string[]): void {
    this.lazyRegistries = new Set(registries);
  }

  /**
   * The build's base image layers (`diffIDs`, bottom-most first): their path summaries are exported with the cache;
   * for each, the imported summary when the build may leave that layer unfetched (see allowLazy; undefined: fetch
   * it). The engine then extracts a base layer only for a step that runs and needs its files.
   */
  async baseLayers(diffIDs: string[]): Promise<(string[] | undefined)[]> {
    for (const d of diffIDs) this.bases.add(d);
    if (this.lazyRegistries.size === 0 || this.o.from.length === 0) return diffIDs.map(() => undefined);
    await this.load();
    return diffIDs.map((d) => this.importedBases.get(d));
  }

  /** The summaries of this build's base layers: imported, else read from the extracted layer. */
  private async baseSummaries(): Promise<BaseSummaries> {
    const out: BaseSummaries = {};
    for (const d of this.bases) {
      let sum = this.importedBases.get(d);
      if (!sum) {
        const dir = await this.o.layers.dirOf(d);
        sum = dir === undefined ? undefined : await summarizeLayerDir(dir).catch(() => undefined);
      }
      if (sum) out[d] = sum;
    }
    return out;
  }

  /**
   * The layer of a lazy hit (undefined for a complete one): a registry layer with the cache repository as its origin
   * (a push to the same registry mounts it), its path summary, and `materialize` — pull, verify, extract (once);
   * its dir. A record that turns out unusable then is a CACHE_RECORD_UNUSABLE error (the build runs again without
   * it: src/engine/build.ts).
   */
  lazyLayer(key: string): LazyLayer | undefined {
    const h = this.lazy.get(key);
    if (!h) return undefined;
    const l = h.rec.layer;
    const client = new RepositoryClient(h.from, this.reg, `cache ${h.from.toString()}`);
    const layer: Layer & { origin: { registry: string; repository: string } } = {
      origin: { registry: h.from.registry, repository: h.from.repository },
      digest: async () => l.digest,
      size: async () => l.size,
      mediaType: async () => l.mediaType,
      diffID: async () => l.diffID,
      compressed: async () => client.blob(l.digest, l.size),
      uncompressed: async () => (await this.local(l)).uncompressed(),
    };
    const out: LazyLayer = { layer, materialize: () => this.fetchLazy(key) };
    if (h.rec.summary) out.summary = h.rec.summary;
    return out;
  }

  private async local(l: CacheRecord['layer']): Promise<Layer> {
    const h = [...this.lazy.entries()].find(([, v]) => v.rec.layer.digest === l.digest);
    if (h) await this.fetchLazy(h[0]);
    return layerFromBlob(this.o.blobs, { mediaType: l.mediaType, digest: l.digest, size: l.size }, l.diffID);
  }

  private fetchLazy(key: string): Promise<string> {
    const h = this.lazy.get(key);
    if (!h) return Promise.reject(new KilnError('CACHE_INVALID', `no lazy cache hit ${key}`));
    h.got ??= (async () => {
      try {
        await this.materialize(h.rec, h.from);
        await super.put(key, h.entry);
        this.stats.fetched++;
        const dir = await this.o.layers.dirOf(h.rec.layer.diffID);
        if (dir === undefined) throw new KilnError('CACHE_INVALID', 'the extracted layer is gone');
        return dir;
      } catch (e) {
        this.bad.add(key);
        this.stats.corrupt++;
        const msg = `cache record ${key.slice(7, 19)} from ${h.from.toString()} is unusable, rebuilding the step: ${oneLine(e)}`;
        this.o.warn(msg);
        throw new KilnError('CACHE_RECORD_UNUSABLE', msg, { cause: e });
      }
    })();
    return h.got;
  }

  override async get(key: string): Promise<CacheEntry | undefined> {
    let p = this.inflight.get(key);
    if (!p) {
      p = this.lookup(key);
      this.inflight.set(key, p);
      p.finally(() => this.inflight.delete(key)).catch(() => undefined);
    }
    return p;
  }

  private async lookup(key: string): Promise<CacheEntry | undefined> {
    const local = await super.get(key);
    if (local?.layer && (await this.complete(local.layer))) {
      this.stats.localHits++;
      this.remember(key, local);
      return local;
    }
    if (this.o.from.length > 0 && !this.bad.has(key)) {
      const hit = (await this.load()).get(key);
      if (hit && this.lazyRegistries.has(hit.from.registry)) {
        const entry: CacheEntry = { version: 1, layer: { ...hit.rec.layer } };
        if (hit.rec.created !== undefined) entry.created = hit.rec.created;
        if (hit.rec.extra !== undefined) entry.extra = { ...hit.rec.extra };
        if (!this.lazy.has(key)) this.lazy.set(key, { rec: hit.rec, from: hit.from, entry });
        this.stats.remoteHits++;
        this.stats.lazy++;
        this.remember(key, entry, hit.rec.step, hit.rec.summary);
        return entry;
      }
      if (hit) {
        try {
          await this.materialize(hit.rec, hit.from);
          const entry: CacheEntry = { version: 1, layer: { ...hit.rec.layer } };
          if (hit.rec.created !== undefined) entry.created = hit.rec.created;
          if (hit.rec.extra !== undefined) entry.extra = { ...hit.rec.extra };
          await super.put(key, entry);
          this.stats.remoteHits++;
          this.remember(key, entry, hit.rec.step, hit.rec.summary);
          return entry;
        } catch (e) {
          this.bad.add(key);
          this.stats.corrupt++;
          this.o.warn(
            `cache record ${key.slice(7, 19)} from ${hit.from.toString()} is unusable, rebuilding the step: ${oneLine(e)}`,
          );
        }
      }
    }
    this.stats.misses++;
    if (local) this.remember(key, local);
    return local;
  }

  private async complete(l: NonNullable<CacheEntry['layer']>): Promise<boolean> {
    return (await this.o.layers.dirOf(l.diffID)) !== undefined && (await this.o.blobs.has(l.digest));
  }

  /** Pull a record's layer blob (verified) into the blob store and extract it into the layer store. */
  private async materialize(rec: CacheRecord, from: Reference): Promise<void> {
    const l = rec.layer;
    if (!(await this.o.blobs.has(l.digest))) {
      const client = new RepositoryClient(from, this.reg, `cache ${from.toString()}`);
      const s = await client.blob(l.digest, l.size);
      // a verification error can fire before BlobDir.write attaches its pipeline; it rejects the write either way
      s.on('error', () => undefined);
      await this.o.blobs.write(s, { digest: l.digest, size: l.size }, l.mediaType);
    }
    const layer = layerFromBlob(this.o.blobs, { mediaType: l.mediaType, digest: l.digest, size: l.size }, l.diffID);
    if ((await this.o.layers.dirOf(l.diffID)) === undefined) {
      await this.o.layers.unpack(layer); // verifies the uncompressed content against the diffID
    } else {
      // the dir exists (another layer with that diffID): the record must still prove its blob IS that layer,
      // or a lying record could make a step reuse an unrelated layer dir
      const s = await layer.uncompressed();
      for await (const _ of s) {
        /* drain: DIGEST_MISMATCH at the end when the blob is not this diffID */
      }
    }
  }

  override async put(key: string, entry: CacheEntry): Promise<void> {
    await super.put(key, entry);
    this.remember(key, entry);
    this.bad.delete(key);
  }

  private remember(key: string, entry: CacheEntry, prevStep?: StepFingerprint, summary?: string[]): void {
    if (!entry.layer) return;
    const rec: CacheRecord = { key, layer: { ...entry.layer } };
    if (entry.created !== undefined) rec.created = entry.created;
    if (entry.extra !== undefined) rec.extra = { ...entry.extra };
    if (prevStep) rec.step = prevStep;
    if (summary) rec.summary = summary;
    this.used.set(key, rec);
  }

  /** Records with their layers' path summaries (carried over from the import, else read from the layer dir). */
  private async withSummaries(records: CacheRecord[]): Promise<CacheRecord[]> {
    return Promise.all(
      records.map(async (r) => {
        if (r.summary) return r;
        const dir = await this.o.layers.dirOf(r.layer.diffID);
        const summary = dir === undefined ? undefined : await summarizeLayerDir(dir).catch(() => undefined);
        return summary ? { ...r, summary } : r;
      }),
    );
  }

  // -------------------------------------------------------------------------------------------------------------
  // Explanations

  private slotIndexDir(): string {
    return join(this.dir, 'steps');
  }

  private slotFile(slot: string): string {
    return join(this.slotIndexDir(), short(slot) + '.json');
  }

  /**
   * Why the step with `key` missed (call after `get` returned no usable entry): compares its inputs with the last
   * build of the same slot, from this machine's history or the imported cache; undefined when there is none.
   */
  async explainMiss(key: string): Promise<string | undefined> {
    const info = this.steps.get(key);
    if (!info) return undefined;
    const prev = await this.previousOf(info.slot);
    if (!prev) return undefined; // a first build: nothing to compare with, nothing worth printing
    const cur = this.fingerprintOf(info, prev);
    if (prev && canonicalJSON(prev.fields) === canonicalJSON(cur.fields) && prev.base === cur.base) {
      return this.bad.has(key)
        ? 'the cached layer was corrupt'
        : 'same inputs as the cached step, but its layer is not available';
    }
    return explainDifference(cur, prev);
  }

  /** The last build of `slot`: this machine's step history, else the imported cache. */
  private async previousOf(slot: string): Promise<StepFingerprint | undefined> {
    try {
      const j = JSON.parse(await readFile(this.slotFile(slot), 'utf8')) as StepFingerprint;
      if (j.slot === slot && typeof j.fields === 'object') return j;
    } catch {
      /* none */
    }
    if (this.o.from.length === 0) return undefined;
    let prev: StepFingerprint | undefined;
    for (const { rec } of (await this.load()).values()) if (rec.step?.slot === slot) prev = rec.step;
    return prev;
  }

  /** A step's fingerprint, listing its context files (once; unchanged files reuse `prev`'s hashes). */
  private fingerprintOf(info: StepInfo, prev?: StepFingerprint): StepFingerprint {
    if (!info.files && info.context) {
      const c = info.context;
      const files = listContextFiles(c.dir, c.paths, prev?.files, c.ignore, c.known, c.stat);
      if (files) info.files = files;
      delete info.context;
    }
    return fingerprint(info);
  }

  /**
   * A hit's file list from the fingerprint stored with the record it hit (`stored`), instead of reading and hashing
   * every context file again: the key matched, so the files' contents are those of the stored list (a 100 MiB COPY
   * that hit in a fresh pod checkout, whose inodes and times are all new, is not read at export). Only when the
   * stored fingerprint is of the same slot and its key parts are the same.
   */
  private adoptFiles(info: StepInfo, stored: StepFingerprint | undefined): void {
    if (info.files || !info.context || !stored?.files || stored.slot !== info.slot) return;
    if (canonicalJSON(fingerprint(info).fields) !== canonicalJSON(stored.fields)) return;
    info.files = { ...stored.files };
    delete info.context;
  }

  /** Record the fingerprints of this build's steps per slot (the "previous build" of the next explanation). */
  async saveStepHistory(): Promise<void> {
    await mkdir(this.slotIndexDir(), { recursive: true });
    for (const [key, info] of this.steps) {
      try {
        this.adoptFiles(info, this.used.get(key)?.step);
        const fp = this.fingerprintOf(info, info.context ? await this.previousOf(info.slot) : undefined);
        await writeFileAtomic(this.slotFile(info.slot), JSON.stringify(fp));
      } catch {
        /* only a hint for the next explanation */
      }
    }
  }

  // -------------------------------------------------------------------------------------------------------------
  // Export

  /** The records `--cache-to` with `mode` would write: max = every step this build used or produced. */
  recordsFor(mode: 'min' | 'max', finalDiffIDs: string[]): CacheRecord[] {
    const all = [...this.used.values()].map((r) => {
      const info = this.steps.get(r.key);
      if (info) this.adoptFiles(info, r.step);
      return info ? { ...r, step: this.fingerprintOf(info) } : r;
    });
    if (mode === 'max') return all;
    const keep = new Set(finalDiffIDs);
    return all.filter((r) => keep.has(r.layer.diffID));
  }

  /**
   * The end of a build: write every `--cache-to` (after the image was pushed: `pushed` names the repositories the
   * image went to, whose blobs are mounted instead of uploaded), save the step history for the next build's miss
   * explanations, and close the cache registry's connections. Failures are warnings: the build itself succeeded.
   */
  async exportTo(finalDiffIDs: string[], pushed: Reference[] = []): Promise<{ ref: string; digest: string }[]> {
    const out: { ref: string; digest: string }[] = [];
    let bases: Promise<BaseSummaries> | undefined;
    try {
      for (const spec of this.o.to) {
        const ref = parseReferenceWithDefaultTag(spec.ref);
        try {
          const records = await this.withSummaries(this.recordsFor(spec.mode, finalDiffIDs));
          bases ??= this.baseSummaries();
          const res = await this.writeManifest(ref, records, finalDiffIDs, pushed, await bases);
          out.push({ ref: ref.toString(), digest: res });
        } catch (e) {
          this.o.warn(`cache export to ${spec.ref} failed: ${oneLine(e)}`);
        }
      }
      await this.saveStepHistory().catch(() => undefined);
    } finally {
      await this.close();
    }
    return out;
  }

  private async writeManifest(
    ref: Reference,
    records: CacheRecord[],
    finalDiffIDs: string[],
    pushed: Reference[],
    bases: BaseSummaries,
  ): Promise<string> {
    const layers = recordLayers(records);
    const inImage = new Set(finalDiffIDs);
    const imageRepo = pushed.find((p) => p.registry === ref.registry);
    const imported = this.imported ? await this.imported : new Map<string, { rec: CacheRecord; from: Reference }>();
    const importedFrom = new Map<string, Reference>();
    for (const { rec, from } of imported.values()) importedFrom.set(rec.layer.digest, from);
    const layerObjs: Layer[] = [];
    const lazyByDigest = new Map<string, Layer>();
    for (const key of this.lazy.keys()) {
      const ll = this.lazyLayer(key);
      if (ll && !(await this.o.blobs.has(await ll.layer.digest()))) lazyByDigest.set(await ll.layer.digest(), ll.layer);
    }
    for (const l of layers) {
      let layer =
        lazyByDigest.get(l.digest) ??
        layerFromBlob(this.o.blobs, { mediaType: l.mediaType, digest: l.digest, size: l.size }, l.diffID);
      const src = inImage.has(l.diffID) && imageRepo ? imageRepo : importedFrom.get(l.digest);
      if (src && src.registry === ref.registry && src.repository !== ref.repository) {
        layer = withOrigin(layer, { registry: src.registry, repository: src.repository });
      }
      layerObjs.push(layer);
    }
    const raw = encodeCacheConfig(records, layers, bases);
    const img = imageFromParts({
      mediaType: async () => MediaType.OCIManifest,
      configMediaType: async () => MediaType.OCIConfig,
      rawConfig: async () => raw,
      layers: async () => layerObjs,
      annotations: async () => ({ [CACHE_ANNOTATION]: '1' }),
    });
    try {
      const res = await push(img, ref, { ...this.reg, label: `cache export ${ref.toString()}` });
      return res.digest;
    } finally {
      await closeTransports(this.reg);
    }
  }

  /** Release registry connections (call once after the build). */
  async close(): Promise<void> {
    await closeTransports(this.reg);
  }
}

function oneLine(e: unknown): string {
  return errorMessage(e).split('\n')[0] ?? '';
}
