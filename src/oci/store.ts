/**
 * kiln's local image store: an OCI image layout at `$KILN_HOME/store` (so skopeo/umoci can read it as
 * `oci:$KILN_HOME/store:<name>`), whose index.json refs are normalised image names
 * (`docker.io/library/alpine:latest`, `localhost:5000/app:v1`) and whose blob directory is shared by every image.
 *
 * Concurrency: blobs are written atomically and content-addressed, so writers never conflict on them. Every
 * change to index.json (and garbage collection) happens under `store/index.lock` (an O_EXCL lock file holding the
 * owner's pid; a lock whose owner is dead is broken) and index.json is replaced by rename. `put` writes its blobs
 * before taking the lock, then re-checks them under it, so a concurrent `remove`'s GC cannot leave a ref pointing
 * at deleted blobs.
 *
 * Garbage collection (after `remove`, or when `put` moves a name) deletes blobs no ref reaches — but never blobs
 * written or touched within the grace period (GC_GRACE_MS), nor, while a live process holds a `lease()`, any blob
 * written since that lease began. That protects work in flight in other processes (a build's freshly committed
 * layers, a pull not yet tagged), which the store cannot see in index.json.
 */
import { mkdir, readdir, readFile, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { KilnError } from '../errors.js';
import { ephemeralHome, kilnHome } from '../util/paths.js';
import { parseReference, parseReferenceWithDefaultTag } from '../ref/reference.js';
import { BlobDir, parseJSON, readBlob } from './blobs.js';
import { imageFromBlobs, indexFromBlobs } from './image.js';
import { pidAlive, withFileLock } from './lock.js';
import { REF_NAME, copyBlobs, dirSink, imageFromDescriptor, writeFileAtomic } from './layout.js';
import { MediaType, isImageManifest, isIndex } from './mediatypes.js';
import type { Descriptor, Image, ImageConfig, ImageIndex, Index, Manifest, Platform } from './types.js';

/** kiln's data directory (moved to src/util/paths.ts; re-exported for existing imports). */
export { kilnHome };

/**
 * Normalise an image name for the store: docker's rules (`alpine` → `docker.io/library/alpine:latest`). A digest
 * reference (`name@sha256:…`) is not a storable name.
 */
export function normalizeImageName(name: string): string {
  const r = parseReferenceWithDefaultTag(name);
  if (r.digest !== undefined) {
    throw new KilnError('INVALID_REFERENCE', `"${name}": an image name in the store needs a tag, not a digest`);
  }
  return r.toString();
}

export interface StoreEntry {
  /** Normalised name, e.g. `docker.io/library/alpine:latest`. */
  name: string;
  /** `registry/repository`. */
  repository: string;
  tag: string;
  /** Manifest (or index) digest. */
  digest: string;
  mediaType: string;
  /** Total bytes of the manifest(s), config(s) and (compressed) layers. */
  size: number;
  /** The config's `created`, for single-platform images. */
  created?: string;
}

/** Unreferenced blobs younger than this (by mtime) survive garbage collection. */
export const GC_GRACE_MS = 15 * 60 * 1000;

export interface GcOptions {
  /** Override GC_GRACE_MS (0: collect every unreferenced blob not protected by a lease). */
  graceMs?: number;
}

/** Protection of in-flight blobs from garbage collection; release it when done (or let the process exit). */
export interface Lease {
  release(): Promise<void>;
}
/** The local image store (see the file comment). */
export class LocalStore {
  readonly home: string;
  /** The OCI layout directory. */
  readonly root: string;
  readonly blobs: BlobDir;

  private constructor(home: string) {
    this.home = home;
    this.root = join(home, 'store');
    this.blobs = new BlobDir(join(this.root, 'blobs'), { durable: !ephemeralHome() });
  }

  /** Open (creating if needed) the store under `home` (default: kilnHome()). */
  static async open(home: string = kilnHome()): Promise<LocalStore> {
    const s = new LocalStore(home);
    await mkdir(join(s.root, 'blobs', 'sha256'), { recursive: true });
    const ready = async (): Promise<boolean> =>
      (await stat(join(s.root, 'index.json')).catch(() => undefined)) !== undefined &&
      (await stat(join(s.root, 'oci-layout')).catch(() => undefined)) !== undefined;
    if (!(await ready())) {
      await s.locked(async () => {
        if (!(await stat(join(s.root, 'oci-layout')).catch(() => undefined))) {
          await writeFileAtomic(join(s.root, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
        }
        if (!(await stat(join(s.root, 'index.json')).catch(() => undefined))) {
          await s.writeIndex({ schemaVersion: 2, mediaType: MediaType.OCIIndex, manifests: [] });
        }
      });
    }
    return s;
  }

  /** Run `fn` holding the store lock (serialised within this process too). */
  async locked<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(join(this.root, 'index.lock'), fn, 'the image store');
  }

  /** The current index.json. */
  async readIndex(): Promise<Index> {
    const p = join(this.root, 'index.json');
    const ix = parseJSON<Index>(await readFile(p), p);
    if (!ix || !Array.isArray(ix.manifests)) {
      throw new KilnError('STORE_CORRUPT', `${p}: not an image index`, { hint: 'restore or delete the store' });
    }
    return ix;
  }

  private async writeIndex(ix: Index): Promise<void> {
    await writeFileAtomic(join(this.root, 'index.json'), JSON.stringify(ix));
  }

  /** Store an image or index under `names` (normalised; each name now points at it). Returns its descriptor. */
  async put(image: Image | ImageIndex, names: string[]): Promise<Descriptor> {
    const normalized = [...new Set(names.map(normalizeImageName))];
    const sink = dirSink(this.blobs, { touch: true });
    await copyBlobs(image, sink);
    return this.locked(async () => {
      // Re-check under the lock: a concurrent GC may have removed blobs that were not referenced yet.
      const desc = await copyBlobs(image, sink);
      const ix = await this.readIndex();
      const keep = ix.manifests.filter((d) => !normalized.includes(d.annotations?.[REF_NAME] ?? ''));
      const added = normalized.map((n) => ({ ...desc, annotations: { [REF_NAME]: n } }));
      await this.writeIndex({ ...ix, manifests: [...keep, ...added] });
      const untagged = ix.manifests.filter((d) => !keep.includes(d));
      if (untagged.some((d) => d.digest !== desc.digest)) await this.gcLocked();
      return desc;
    });
  }

  /**
   * The top-level descriptor for a name (normalised), `name@digest`, a full digest, or a unique hex prefix of a
   * digest (at least 4 characters, like docker's short image IDs). Throws IMAGE_NOT_FOUND / IMAGE_AMBIGUOUS.
   */
  async resolve(ref: string): Promise<Descriptor> {
    const ix = await this.readIndex();
    const notFound = (): KilnError =>
      new KilnError('IMAGE_NOT_FOUND', `no such image: ${ref}`, { hint: 'list local images with `kiln images`' });
    let parsed;
    try {
      parsed = parseReference(ref);
    } catch {
      parsed = undefined;
    }
    if (parsed) {
      if (parsed.digest !== undefined) {
        const d = ix.manifests.find((m) => m.digest === parsed.digest);
        if (d) return d;
      } else {
        const name = parseReferenceWithDefaultTag(ref).toString();
        const d = ix.manifests.find((m) => m.annotations?.[REF_NAME] === name);
        if (d) return d;
      }
    }
    const m = /^(?:sha256:)?([a-f0-9]{4,64})$/.exec(ref);
    if (m) {
      const hits = new Map<string, Descriptor>();
      for (const d of ix.manifests) if (d.digest.slice(7).startsWith(m[1]!)) hits.set(d.digest, d);
      if (hits.size === 1) return [...hits.values()][0]!;
      if (hits.size > 1) {
        throw new KilnError('IMAGE_AMBIGUOUS', `"${ref}" matches ${hits.size} images`, { hint: 'give more digits' });
      }
      if (m[1]!.length === 64 && (await this.blobs.has('sha256:' + m[1]))) {
        // A digest of a manifest not referenced at top level (e.g. a child of an index).
        const raw = await readBlob(this.blobs, 'sha256:' + m[1]);
        const mt = parseJSON<{ mediaType?: string; manifests?: unknown }>(raw, 'manifest').mediaType;
        const mediaType =
          mt ?? (parseJSON<Index>(raw, 'manifest').manifests ? MediaType.OCIIndex : MediaType.OCIManifest);
        if (isImageManifest(mediaType) || isIndex(mediaType))
          return { mediaType, digest: 'sha256:' + m[1], size: raw.length };
      }
    }
    throw notFound();
  }

  /** A single-platform image (an index resolves to `platform`, default the host's). */
  async image(ref: string, platform?: Platform): Promise<Image> {
    return imageFromDescriptor(this.blobs, await this.resolve(ref), platform, `image ${ref}`);
  }

  /** An image or index, as stored. */
  async get(ref: string): Promise<Image | ImageIndex> {
    const d = await this.resolve(ref);
    return isIndex(d.mediaType) ? indexFromBlobs(this.blobs, d) : imageFromBlobs(this.blobs, d);
  }

  /** Every named image, sorted by name. */
  async list(): Promise<StoreEntry[]> {
    const ix = await this.readIndex();
    const out: StoreEntry[] = [];
    for (const d of ix.manifests) {
      const name = d.annotations?.[REF_NAME];
      if (!name) continue;
      const i = name.lastIndexOf(':');
      const e: StoreEntry = {
        name,
        repository: name.slice(0, i),
        tag: name.slice(i + 1),
        digest: d.digest,
        mediaType: d.mediaType,
        size: 0,
      };
      const reach = await this.reachable(d);
      for (const s of reach.values()) e.size += s;
      if (isImageManifest(d.mediaType)) {
        const cfg = await imageFromBlobs(this.blobs, d)
          .config()
          .catch(() => undefined as ImageConfig | undefined);
        if (cfg?.created) e.created = cfg.created;
      }
      out.push(e);
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * Take a GC lease: until it is released (or this process dies), no blob written after now is collected by any
   * kiln process. Builds and pulls that write blobs before tagging should hold one.
   */
  async lease(): Promise<Lease> {
    const dir = join(this.root, 'leases');
    await mkdir(dir, { recursive: true });
    const file = join(dir, `${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}.json`);
    await writeFileAtomic(file, JSON.stringify({ pid: process.pid, created: Date.now() }));
    return { release: () => unlink(file).catch(() => undefined) };
  }

  /** Blobs with an mtime at or after this are spared by GC. */
  private async gcCutoff(graceMs: number): Promise<number> {
    let cutoff = Date.now() - graceMs;
    const dir = join(this.root, 'leases');
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.endsWith('.json')) continue;
      const p = join(dir, name);
      const l = await readFile(p, 'utf8')
        .then((s) => JSON.parse(s) as { pid?: number; created?: number })
        .catch(() => undefined);
      if (!l || typeof l.pid !== 'number' || typeof l.created !== 'number') continue;
      if (l.pid !== process.pid && !pidAlive(l.pid)) {
        await unlink(p).catch(() => undefined);
        continue;
      }
      cutoff = Math.min(cutoff, l.created - 2000);
    }
    return cutoff;
  }

  /** Untag `ref` (a name; or a digest/ID, which removes every name of that image) and garbage-collect. */
  async remove(ref: string, gc: GcOptions = {}): Promise<{ untagged: string[]; deletedBlobs: number }> {
    return this.locked(async () => {
      const d = await this.resolve(ref);
      const ix = await this.readIndex();
      let name: string | undefined;
      try {
        const r = parseReference(ref);
        if (r.digest === undefined) name = parseReferenceWithDefaultTag(ref).toString();
      } catch {
        name = undefined;
      }
      const byName = name !== undefined && ix.manifests.some((m) => m.annotations?.[REF_NAME] === name);
      const gone = ix.manifests.filter((m) => (byName ? m.annotations?.[REF_NAME] === name : m.digest === d.digest));
      if (gone.length === 0) throw new KilnError('IMAGE_NOT_FOUND', `no such image: ${ref}`);
      await this.writeIndex({ ...ix, manifests: ix.manifests.filter((m) => !gone.includes(m)) });
      const deletedBlobs = await this.gcLocked(gc);
      return { untagged: gone.map((m) => m.annotations?.[REF_NAME] ?? m.digest), deletedBlobs };
    });
  }

  /** Delete blobs no ref reaches (sparing recent and leased ones). Returns how many were deleted. */
  async gc(opts: GcOptions = {}): Promise<number> {
    return this.locked(() => this.gcLocked(opts));
  }

  private async gcLocked(opts: GcOptions = {}): Promise<number> {
    const cutoff = await this.gcCutoff(opts.graceMs ?? GC_GRACE_MS);
    const ix = await this.readIndex();
    const keep = new Set<string>();
    for (const d of ix.manifests) for (const k of (await this.reachable(d)).keys()) keep.add(k);
    let n = 0;
    for (const b of await this.blobs.list()) {
      if (keep.has(b)) continue;
      const st = await stat(this.blobs.path(b)).catch(() => undefined);
      if (!st || st.mtimeMs >= cutoff) continue;
      await this.blobs.remove(b);
      n++;
    }
    await this.blobs.cleanTemp();
    return n;
  }

  /** Digest → size of every blob a descriptor reaches (missing blobs are skipped). */
  private async reachable(d: Descriptor, out = new Map<string, number>()): Promise<Map<string, number>> {
    if (out.has(d.digest)) return out;
    out.set(d.digest, d.size);
    if (!isImageManifest(d.mediaType) && !isIndex(d.mediaType)) return out;
    const raw = await readBlob(this.blobs, d.digest, d.size).catch(() => undefined);
    if (!raw) return out;
    const doc = parseJSON<Partial<Manifest> & Partial<Index>>(raw, `${this.blobs.path(d.digest)}`);
    if (isIndex(d.mediaType)) {
      for (const c of doc.manifests ?? []) await this.reachable(c, out);
    } else {
      if (doc.config) out.set(doc.config.digest, doc.config.size);
      for (const l of doc.layers ?? []) out.set(l.digest, l.size);
    }
    return out;
  }
}
