/**
 * Pushing images and indexes to a registry, and registry-to-registry copies. Blobs go first — each one HEADed
 * (skipped when present), mounted from another repository of the same registry when its origin is known (a remote
 * layer's repository, then the blob origin index of src/registry/origins.ts), otherwise uploaded streaming
 * (monolithic for small blobs, chunked PATCHes for large ones) — with a bounded number in flight. Every blob that
 * ends up in the repository is recorded in the origin index, so a later push to another repository can mount it.
 * Manifests are PUT only after all their blobs are confirmed; an index's children are pushed before the index.
 *
 * Optimistic push of known blobs: a blob the origin index says is in the target repository (in a manifest kiln
 * pushed there — one file per repository, read once — or pushed, found or pulled there) is not HEADed — the manifest PUT confirms it, because a registry checks
 * every blob a manifest references (distribution answers MANIFEST_BLOB_UNKNOWN otherwise). When the registry refuses
 * the manifest that way, those entries are forgotten and the blobs pushed the checked way (HEAD, mount or upload),
 * then the manifest is PUT again: a registry that garbage-collected a blob still ends up with a complete image. Why:
 * a rebuild that changed one layer of ~90 spent most of its push time asking about blobs it had pushed itself.
 */
import { KilnError } from '../errors.js';
import { isIndex } from '../oci/mediatypes.js';
import type { GrowingBlob, Image, ImageIndex, Layer } from '../oci/types.js';
import { Progress, shortDigest, silentProgress } from '../progress.js';
import { RepositoryClient, type UploadOptions, type UploadResult } from './client.js';
import { originIndexFor, type OriginIndex } from './origins.js';
import { getRemote, isRemoteIndex, isRemoteLayer, type BlobOrigin, type RemoteOrigin } from './remote.js';
import { parseReference, type Reference } from './reference.js';
import { debugLog, withLabel, type RegistryOptions } from './transport.js';
import { followFile } from '../util/tail.js';
import { madeHere } from '../util/made.js';

/** Blobs up to this size that the build just made are uploaded without a HEAD first. */
const SKIP_HEAD_MAX = 1 << 20;

export interface PushOptions extends RegistryOptions {
  /** Blobs uploaded at once (default 3). */
  parallelism?: number;
  /** Blobs up to this size are uploaded with one PUT (default 16 MiB). */
  monolithicMax?: number;
  /** Chunk size for chunked uploads (default 32 MiB; streamed, not buffered). */
  chunkSize?: number;
  progress?: Progress;
  /** Label for errors; default `push REF`. */
  label?: string;
  /**
   * Checked before a manifest is written: an interrupted build (SIGTERM, a cancel, the build service going away)
   * may leave uploaded blobs — invisible without a manifest — but never a tag.
   */
  signal?: AbortSignal;
  /**
   * Skip the HEAD of blobs the origin index records in the target repository, letting the manifest PUT confirm them
   * (see the module comment). Default: on, unless `KILN_PUSH_TRUST_KNOWN=0` or the origin index is off
   * (`origins: null`). Off for a registry that stores manifests without checking their blobs.
   */
  trustKnownBlobs?: boolean;
}

/**
 * Where a blob of a push ended: the client's outcomes, or `known` — not asked about, because the origin index
 * records it in the target repository (the manifest PUT confirmed it).
 */
export type BlobResult = UploadResult | 'known';

/** Codes of a manifest PUT refused because a referenced blob is missing (distribution, and registries that say less). */
const STALE_BLOB_CODES = ['MANIFEST_BLOB_UNKNOWN', 'BLOB_UNKNOWN', 'MANIFEST_INVALID', 'NAME_UNKNOWN'];

export interface PushResult {
  digest: string;
  mediaType: string;
  size: number;
  /** Per-blob outcome, for reporting and tests. */
  blobs: Map<string, BlobResult>;
}

/** Run `fn` over `items` with at most `limit` in flight; the first failure rejects (others finish quietly). */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  let failed: unknown;
  let hasFailed = false;
  const worker = async (): Promise<void> => {
    while (!hasFailed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!);
      } catch (e) {
        if (!hasFailed) {
          hasFailed = true;
          failed = e;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (hasFailed) throw failed;
  return out;
}

interface BlobJob {
  digest: string;
  size: number;
  open: () => Promise<import('node:stream').Readable>;
  /** Where the blob is known to be (a remote layer's or image's origin), if anywhere. */
  origin?: BlobOrigin | undefined;
  name: string;
}

class Pusher {
  readonly blobs = new Map<string, BlobResult>();
  private readonly inflight = new Map<string, Promise<BlobResult>>();
  /** Blobs taken as present from the origin index (no HEAD): checked after all if the manifest PUT says otherwise. */
  private readonly trusted = new Set<string>();
  private readonly trustKnown: boolean;
  /** Origin index answers by digest (looked up once per push). */
  private readonly located = new Map<string, Promise<{ here: boolean; mount: string[] }>>();
  /** The blobs the target repository is known to have (one file for all, read once). */
  private knownHere: Promise<Set<string>> | undefined;
  /** Blobs streamed while they were written, by digest: whether that upload succeeded. */
  private readonly streamed = new Map<string, Promise<boolean>>();
  readonly progress: Progress;
  private readonly origins: OriginIndex | undefined;

  constructor(
    readonly client: RepositoryClient,
    readonly opts: PushOptions,
  ) {
    this.progress = opts.progress ?? silentProgress();
    this.origins = originIndexFor(opts);
    this.trustKnown = this.origins !== undefined && (opts.trustKnownBlobs ?? process.env.KILN_PUSH_TRUST_KNOWN !== '0');
  }

  private uploadOpts(onProgress: (n: number) => void): UploadOptions {
    const u: UploadOptions = { onProgress };
    if (this.opts.monolithicMax !== undefined) u.monolithicMax = this.opts.monolithicMax;
    if (this.opts.chunkSize !== undefined) u.chunkSize = this.opts.chunkSize;
    return u;
  }

  private at(repository: string): BlobOrigin {
    return { registry: this.client.registry, repository };
  }

  /**
   * Repositories of this registry to mount `digest` from (its known origin first, then the origin index's), and
   * whether the index records it in the target repository itself.
   */
  private whereIs(digest: string, origin: BlobOrigin | undefined): Promise<{ here: boolean; mount: string[] }> {
    let p = this.located.get(digest);
    if (!p) {
      p = this.lookUp(digest, origin);
      this.located.set(digest, p);
    }
    return p;
  }

  private async lookUp(digest: string, origin: BlobOrigin | undefined): Promise<{ here: boolean; mount: string[] }> {
    const { registry, repository } = this.client;
    this.knownHere ??= this.origins?.known(this.at(repository)) ?? Promise.resolve(new Set<string>());
    if ((await this.knownHere).has(digest)) return { here: true, mount: [] };
    const mount = origin && origin.registry === registry && origin.repository !== repository ? [origin.repository] : [];
    // an image read from this very repository (a rebase, a re-tag) has its blobs here
    let here = origin !== undefined && origin.registry === registry && origin.repository === repository;
    for (const o of (await this.origins?.lookup(digest)) ?? []) {
      if (o.registry !== registry) continue;
      if (o.repository === repository) here = true;
      else if (!mount.includes(o.repository)) mount.push(o.repository);
    }
    return { here, mount };
  }

  /**
   * Start uploading a layer before its image exists (a build's layers as they are written). A failure is only
   * forgotten here: image() uploads the blob again and reports the error.
   */
  async prefetch(l: Layer): Promise<void> {
    try {
      const job = await this.layerJob(l, undefined);
      if (this.inflight.has(job.digest)) return;
      const p = this.blob(job, true);
      await p.catch(() => {
        if (this.inflight.get(job.digest) === p) this.inflight.delete(job.digest);
      });
    } catch {
      /* reported by the push proper */
    }
  }

  /**
   * Upload a blob while it is being written (see GrowingBlob). As soon as its digest is known, uploads of that
   * digest wait for this one; if it fails they upload the finished blob as usual. Resolves when it is over.
   */
  async stream(g: GrowingBlob): Promise<void> {
    // Opened before the upload session: a blob written (and moved into the store) meanwhile is not streamed.
    const body = await followFile(g.path, g.written).catch(() => undefined);
    if (!body) return; // already written, or failed: the usual upload (or none) follows
    const up = this.client.uploadStreaming(body, () => g.written).finally(() => body.close());
    up.catch(() => undefined); // observed below
    let w: { digest: string; size: number };
    try {
      w = await g.written;
    } catch {
      await up.catch(() => undefined); // the writer failed: the upload was cancelled
      return;
    }
    const ok = up.then(
      () => true,
      (e: unknown) => {
        debugLog(`streaming ${w.digest} failed, uploading it again: ${e instanceof Error ? e.message : String(e)}`);
        return false;
      },
    );
    this.streamed.set(w.digest, ok);
    await ok;
  }

  /**
   * Upload one blob (deduplicated across images of one push). `checked`: ask the registry even when the origin index
   * records the blob in this repository.
   */
  blob(job: BlobJob, quiet = false, checked = false): Promise<BlobResult> {
    let p = this.inflight.get(job.digest);
    if (!p) {
      p = (async () => {
        const id = job.digest;
        this.progress.start(id, job.name, job.size);
        const streamed = this.streamed.get(job.digest);
        if (streamed && (await streamed)) {
          await this.origins?.record(job.digest, this.at(this.client.repository));
          this.progress.done(id, 'pushed');
          this.blobs.set(job.digest, 'uploaded');
          return 'uploaded';
        }
        try {
          const where = await this.whereIs(job.digest, job.origin);
          if (where.here && this.trustKnown && !checked) {
            this.trusted.add(job.digest);
            this.progress.cached(id, 'known to exist');
            this.blobs.set(job.digest, 'known');
            return 'known';
          }
          const u = this.uploadOpts((n) => this.progress.update(id, n, job.size));
          u.mountFrom = where.mount;
          // a small blob this process just made that the index knows nowhere on this registry: upload, no HEAD
          // first (a wrong guess re-sends at most SKIP_HEAD_MAX bytes; a large one is worth asking about, since a
          // fresh home — a build pod — may rebuild a layer the registry has)
          const fresh = !where.here && where.mount.length === 0 && job.size <= SKIP_HEAD_MAX && madeHere(job.digest);
          if (this.trustKnown && !checked && fresh) u.skipHead = true;
          let from = '';
          u.onMounted = (r) => (from = r);
          // the index applies one digest's updates in call order: the record below lands after these
          u.onMountMissed = (r) => void this.origins?.forget(job.digest, this.at(r));
          const r = await this.client.uploadBlob(job.digest, job.size, job.open, u);
          await this.origins?.record(job.digest, this.at(this.client.repository));
          if (r === 'uploaded') this.progress.done(id, 'pushed');
          else this.progress.cached(id, r === 'exists' ? 'already exists' : `mounted from ${from}`);
          this.blobs.set(job.digest, r);
          return r;
        } catch (e) {
          if (!quiet) this.progress.error(id, e instanceof Error ? e.message : String(e));
          throw e;
        }
      })();
      this.inflight.set(job.digest, p);
    }
    return p;
  }

  private async layerJob(l: Layer, imgOrigin: BlobOrigin | undefined): Promise<BlobJob> {
    const digest = await l.digest();
    return {
      digest,
      size: await l.size(),
      open: () => l.compressed(),
      origin: isRemoteLayer(l) ? l.origin : imgOrigin,
      name: `blob ${shortDigest(digest)}`,
    };
  }

  private checkAbort(): void {
    if (this.opts.signal?.aborted) throw new KilnError('INTERRUPTED', 'interrupted before the manifest was pushed');
  }

  /** Push an image's blobs, then its manifest under `tagOrDigest`. */
  async image(img: Image, tagOrDigest: string | undefined): Promise<PushResult> {
    const origin = (img as Partial<RemoteOrigin>).origin;
    const raw = await img.rawManifest();
    const mediaType = await img.mediaType();
    const manifest = await img.manifest();
    const rawConfig = await img.rawConfig();
    const layers = await img.layers();
    const jobs: BlobJob[] = [];
    const cfgDigest = manifest.config.digest;
    const cfgJob: BlobJob = {
      digest: cfgDigest,
      size: rawConfig.length,
      open: async () => (await import('node:stream')).Readable.from([rawConfig]),
      origin,
      name: `config ${shortDigest(cfgDigest)}`,
    };
    jobs.push(cfgJob);
    for (const l of layers) jobs.push(await this.layerJob(l, origin));
    // The manifest must reference exactly these blobs.
    const want = new Set([cfgDigest, ...manifest.layers.map((d) => d.digest)]);
    for (const j of jobs) want.delete(j.digest);
    if (want.size > 0) {
      throw new KilnError('MANIFEST_INVALID', `${this.client.label}: manifest references blobs the image lacks`);
    }
    // the origin index answers for every blob at once (its files read in parallel), so the blobs that need a
    // request start right away instead of queueing behind ~90 known ones
    await Promise.all(jobs.map((j) => this.whereIs(j.digest, j.origin)));
    await mapLimit(jobs, this.opts.parallelism ?? 3, (j) => this.blob(j));
    const digest = await img.digest();
    this.checkAbort();
    const here = this.at(this.client.repository);
    try {
      await this.client.putManifest(tagOrDigest ?? digest, raw, mediaType);
    } catch (e) {
      const trusted = jobs.filter((j) => this.trusted.has(j.digest));
      if (!trusted.length || !(e instanceof KilnError) || !STALE_BLOB_CODES.includes(e.code)) throw e;
      // The index was wrong about some of them (garbage-collected, repository deleted): check them all.
      debugLog(`${e.code} for the manifest: ${trusted.length} blobs taken as known are checked`);
      const known = await this.knownHere;
      for (const j of trusted) {
        this.trusted.delete(j.digest);
        this.inflight.delete(j.digest);
        this.located.delete(j.digest);
        known?.delete(j.digest);
        await this.origins?.forget(j.digest, here);
      }
      await this.origins?.updateKnown(
        here,
        [],
        trusted.map((j) => j.digest),
      );
      await mapLimit(trusted, this.opts.parallelism ?? 3, (j) => this.blob(j, false, true));
      this.checkAbort();
      await this.client.putManifest(tagOrDigest ?? digest, raw, mediaType);
    }
    // the registry accepted a manifest referencing all of them: it has them now
    await this.origins?.updateKnown(
      here,
      jobs.map((j) => j.digest),
    );
    return { digest, mediaType, size: raw.length, blobs: this.blobs };
  }

  /** Push every child of an index (by digest), then the index under `tagOrDigest`. */
  async index(ix: ImageIndex, tagOrDigest: string | undefined): Promise<PushResult> {
    const im = await ix.indexManifest();
    for (const d of im.manifests) {
      if (isIndex(d.mediaType)) await this.index(await ix.imageIndex(d.digest), d.digest);
      else await this.image(await ix.image(d.digest), d.digest);
    }
    const raw = await ix.rawManifest();
    const mediaType = await ix.mediaType();
    const digest = await ix.digest();
    this.checkAbort();
    await this.client.putManifest(tagOrDigest ?? digest, raw, mediaType);
    return { digest, mediaType, size: raw.length, blobs: this.blobs };
  }
}

function isIndexLike(x: Image | ImageIndex): x is ImageIndex {
  return isRemoteIndex(x);
}

/**
 * A push to one reference that can start before the image exists: `prefetch` uploads layers while a build is still
 * running (only blobs, which are invisible without a manifest), `push` then reuses those uploads and writes the
 * manifest. Why: a build's first layers upload while its last steps run.
 */
export class PushSession {
  private readonly pusher: Pusher;
  private readonly pending: Promise<void>[] = [];

  constructor(
    readonly ref: Reference,
    opts: PushOptions = {},
  ) {
    const client = new RepositoryClient(ref, opts, opts.label ?? `push ${ref.toString()}`);
    this.pusher = new Pusher(client, opts);
  }

  /** Start uploading `l` (errors are left to `push`). */
  prefetch(l: Layer): void {
    this.pending.push(this.pusher.prefetch(l));
  }

  /** Start uploading a blob that is still being written (a failure is retried by `prefetch`/`push`). */
  stream(g: GrowingBlob): void {
    this.pending.push(this.pusher.stream(g));
  }

  /** The repository this session pushes to (`registry/repository`). */
  get repository(): string {
    return `${this.ref.registry}/${this.ref.repository}`;
  }

  /** Wait until no prefetch is running (before giving up on a failed build). */
  async settle(): Promise<void> {
    await Promise.all(this.pending);
  }

  /** Push `x` (its tag, else its digest). Returns the pushed manifest's digest. */
  async push(x: Image | ImageIndex): Promise<PushResult> {
    const r = this.ref;
    const target = r.tag ?? r.digest;
    const res = isIndexLike(x) ? await this.pusher.index(x, target) : await this.pusher.image(x, target);
    if (r.digest && r.digest !== res.digest) {
      throw new KilnError(
        'DIGEST_MISMATCH',
        `${this.pusher.client.label}: pushed ${res.digest}, but the reference names ${r.digest}`,
      );
    }
    return res;
  }
}

/** Push an image or index to `ref` (its tag, else its digest). Returns the pushed manifest's digest. */
export async function push(
  x: Image | ImageIndex,
  ref: Reference | string,
  opts: PushOptions = {},
): Promise<PushResult> {
  return new PushSession(typeof ref === 'string' ? parseReference(ref) : ref, opts).push(x);
}

/**
 * Copy `src` to `dst` between (or within) registries: manifests byte for byte (digests unchanged), blobs mounted
 * when both are in the same registry, otherwise streamed from the source GET into the destination upload with
 * the digest verified on the way. Indexes are copied with all their children.
 */
export async function copy(
  src: Reference | string,
  dst: Reference | string,
  opts: PushOptions = {},
): Promise<PushResult> {
  const s = typeof src === 'string' ? parseReference(src) : src;
  const d = typeof dst === 'string' ? parseReference(dst) : dst;
  const x = await getRemote(s, withLabel(opts, opts.label ?? `copy ${s.toString()}`));
  const target = d.tag ?? d.digest ?? s.tag;
  const client = new RepositoryClient(d, opts, opts.label ?? `copy to ${d.toString()}`);
  const p = new Pusher(client, opts);
  return isIndexLike(x) ? p.index(x, target) : p.image(x, target);
}
