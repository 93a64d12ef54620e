/**
 * The local build cache ($KILN_HOME/cache): step key → what the step produced (its layer and creation time). A
 * step is skipped when its key is present and the layer it names still exists in the layer store. Entries are
 * written atomically (temp file + rename), so an interrupted build never leaves a half-written entry; a corrupt
 * or unreadable entry is treated as a miss.
 */
import type { Stats } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';

import { sha256, isDigest } from '../oci/digest.js';
import type { Layer } from '../oci/types.js';
import { writeFileAtomic } from '../util/atomic.js';

/** What a cached step produced. */
export interface CacheEntry {
  version: 1;
  /** The layer the step produced (RUN/COPY/ADD/WORKDIR). */
  layer?: { diffID: string; digest: string; size: number; mediaType: string };
  /** Creation time of the layer (history `created`). */
  created?: string;
  /** Step-specific extra data (e.g. the files a WORKDIR created). */
  extra?: Record<string, string>;
}

/** JSON with object keys sorted at every level: a stable serialization for hashing. */
export function canonicalJSON(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v ?? null);
  if (Array.isArray(v)) return '[' + v.map(canonicalJSON).join(',') + ']';
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort();
  return '{' + keys.map((k) => JSON.stringify(k) + ':' + canonicalJSON(o[k])).join(',') + '}';
}

/** A cache key: sha256 of the canonical JSON of everything that determines a step's result. */
export function cacheKey(parts: Record<string, unknown>): string {
  return sha256(canonicalJSON({ v: 1, ...parts }));
}

function isEntry(x: unknown): x is CacheEntry {
  if (typeof x !== 'object' || x === null) return false;
  const e = x as CacheEntry;
  if (e.version !== 1) return false;
  if (e.layer !== undefined) {
    const l = e.layer;
    if (!isDigest(l.diffID) || !isDigest(l.digest) || typeof l.size !== 'number' || typeof l.mediaType !== 'string')
      return false;
  }
  return true;
}

/**
 * What the engine knows about a step when it computes its key. A cache that explains misses (the remote cache)
 * implements {@link MissExplainer}; the engine calls `noteStep` before `get` and `explainMiss` after a miss.
 */
export interface StepNote {
  /**
   * Stable place of the step in the build, independent of its inputs: `Dockerfile/<stage>/<position>`. The previous
   * build of the same slot is what a miss is compared with.
   */
  slot: string;
  /** Display name (`[2/4] COPY src/ ./src/`). */
  name: string;
  /** Exactly the parts the key was computed from (`cacheKey(parts)`). */
  parts: Record<string, unknown>;
  /** Manifest digest of the stage's base image, when the stage starts from an image. */
  base?: string;
  /** For COPY/ADD from the context: relative path → content digest of every file read. */
  files?: Record<string, string>;
  /**
   * For COPY/ADD from the context when `files` is not known: the context dir and the source paths (as written;
   * wildcard sources are skipped); the remote cache lists the files itself, lazily (only to explain a miss or to save
   * the step for the next explanation).
   */
  context?: {
    dir: string;
    paths: string[];
    ignore?: (rel: string, isDir: boolean) => boolean;
    /** A file's content digest (sha256 hex) when the caller already has it for exactly this file (`st`). */
    known?: (rel: string, st: Stats) => string | undefined;
    /** An entry's lstat (by absolute path) when the caller already took it, else undefined. */
    stat?: (abs: string) => Stats | undefined;
  };
}

export interface MissExplainer {
  noteStep(key: string, note: StepNote): void;
  explainMiss(key: string): Promise<string | undefined>;
}

/**
 * A cache hit whose layer is not on this machine yet (a registry cache hit, BuildKit's lazy ref): the image needs
 * only its descriptor (a push mounts the blob); its files are fetched when a later step that runs needs them.
 */
export interface LazyLayer {
  /** The layer as a registry blob (with its origin: a push to the same registry mounts it). */
  layer: Layer;
  /** The paths it holds (src/cache/summary.ts); undefined: unknown, every step on top of it needs it. */
  summary?: string[];
  /** Pull, verify and extract it (once); its dir in the layer store. */
  materialize(): Promise<string>;
}

/** A cache whose hits may be lazy (the registry cache); the engine asks for the layer of a hit with no local dir. */
export interface LazyLayers {
  lazyLayer(key: string): LazyLayer | undefined;
  /** The build only pushes, to these registries: hits from a cache there may stay lazy. */
  allowLazy(registries: string[]): void;
  /**
   * The build's base layers (diffIDs): noted for the export; per layer its path summary when it may stay unfetched
   * (undefined: extract it now).
   */
  baseLayers?(diffIDs: string[]): Promise<(string[] | undefined)[]>;
}

export class BuildCache {
  constructor(readonly dir: string) {}

  private path(key: string): string {
    return join(this.dir, key.replace(/^sha256:/, '') + '.json');
  }

  /** The entry for `key`, or undefined (missing or unreadable entries are misses). */
  async get(key: string): Promise<CacheEntry | undefined> {
    try {
      const parsed: unknown = JSON.parse(await readFile(this.path(key), 'utf8'));
      return isEntry(parsed) ? parsed : undefined;
    } catch {
      return undefined;
    }
  }

  /** Store an entry atomically. */
  async put(key: string, entry: CacheEntry): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(this.path(key), JSON.stringify(entry));
  }

  async delete(key: string): Promise<void> {
    await rm(this.path(key), { force: true });
  }
}
