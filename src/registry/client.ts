/**
 * Operations on one repository of a registry (distribution spec v2 API): manifests (GET/HEAD/PUT), blobs
 * (GET/HEAD, streamed and digest-verified), blob uploads (cross-repository mount, monolithic PUT, chunked PATCH with
 * resume) and tag listing. For docker.io, reads go to the configured mirrors first and fall back to Docker Hub.
 */
import { Readable, Transform } from 'node:stream';
import { KilnError } from '../errors.js';
import { sha256, verifyingStream } from '../oci/digest.js';
import { MANIFEST_ACCEPT } from '../oci/mediatypes.js';
import { repositoryScope } from './auth.js';
import { DEFAULT_REGISTRY, type Reference } from './reference.js';
import {
  debugLog,
  getHeader,
  netErrorCode,
  responseError,
  transportFor,
  type ErrorContext,
  type RegistryOptions,
  type Response,
  type Transport,
} from './transport.js';

/** PATCH chunk size. Chunks are streamed from the source (never buffered), so this only sets the request count. */
export const DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024;

/** Largest manifest kiln accepts (containerd uses 4 MiB). */
export const MAX_MANIFEST_SIZE = 4 * 1024 * 1024;

export interface FetchedManifest {
  raw: Buffer;
  mediaType: string;
  digest: string;
}

/** Where a blob upload ended. */
export type UploadResult = 'exists' | 'mounted' | 'uploaded';

/** Mount sources tried per blob, at most. */
export const MAX_MOUNT_SOURCES = 3;

/**
 * Upload sessions opened before their blobs were known (`RepositoryClient.openUploads`), per transport (its
 * credentials and tokens) and repository: the next uploads there start with one instead of a POST.
 */
const openedUploads = new WeakMap<Transport, Map<string, Promise<string | undefined>[]>>();

export interface UploadOptions {
  /**
   * Repositories of the same registry to mount the blob from, tried in order (at most MAX_MOUNT_SOURCES). A refused
   * mount (401/403/404, or 202: the registry opened an upload instead) falls back to the next source, then to an
   * upload.
   */
  mountFrom?: string | readonly string[];
  /** Called with the repository the blob was mounted from. */
  onMounted?: (from: string) => void;
  /** Called with a repository that turned out not to have the blob (the registry answered a mount with 202). */
  onMountMissed?: (from: string) => void;
  /** Blobs up to this size go in one PUT (default 16 MiB). */
  monolithicMax?: number;
  /** PATCH chunk size for larger blobs (default 32 MiB, streamed). */
  chunkSize?: number;
  /** Called with the number of bytes confirmed so far. */
  onProgress?: (bytes: number) => void;
  /** How many times to restart an upload after a broken connection (default 3). */
  maxRestarts?: number;
  /** Upload without asking first whether the repository has the blob (a blob just made; no mount sources). */
  skipHead?: boolean;
}

async function readLimited(res: Response, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res.body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > limit) {
      res.body.destroy();
      throw new KilnError('MANIFEST_TOO_LARGE', `${what}: more than ${limit} bytes`);
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

/** A client for one repository, used for one operation (its label prefixes every error). */
export class RepositoryClient {
  readonly registry: string;
  readonly repository: string;
  private readonly canonical: Transport;
  private readonly readEndpoints: Transport[];

  constructor(
    ref: Pick<Reference, 'registry' | 'repository' | 'apiHost'>,
    readonly opts: RegistryOptions,
    readonly label: string,
  ) {
    this.registry = ref.registry;
    this.repository = ref.repository;
    this.canonical = transportFor(ref.registry, ref.apiHost(), opts);
    // Mirrors get their own credentials (looked up by the mirror's host), never Docker Hub's.
    const mirrors =
      ref.registry === DEFAULT_REGISTRY
        ? (opts.mirrors ?? []).map((m) => transportFor(m.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, ''), m, opts))
        : [];
    this.readEndpoints = [...mirrors, this.canonical];
  }

  private ctx(kind: ErrorContext['kind']): ErrorContext {
    return { label: this.label, kind };
  }

  pullScope(): string[] {
    return [repositoryScope(this.repository, ['pull'])];
  }

  pushScope(extra: string[] = []): string[] {
    return [repositoryScope(this.repository, ['pull', 'push']), ...extra];
  }

  /** Run a read against the mirrors, then the registry itself; mirrors' failures fall through. */
  private async read<T>(fn: (t: Transport) => Promise<T>): Promise<T> {
    let lastErr: unknown;
    for (const [i, t] of this.readEndpoints.entries()) {
      try {
        return await fn(t);
      } catch (e) {
        lastErr = e;
        if (i === this.readEndpoints.length - 1) throw e;
        if (e instanceof KilnError && (e.code === 'DIGEST_MISMATCH' || e.code === 'SIZE_MISMATCH')) throw e;
        debugLog(`mirror ${t.endpoint} failed (${e instanceof KilnError ? e.code : netErrorCode(e)}), falling back`);
      }
    }
    throw lastErr;
  }

  /** GET a manifest by tag or digest; verifies the digest when pulling by digest. */
  async getManifest(identifier: string, accept = MANIFEST_ACCEPT): Promise<FetchedManifest> {
    return this.read(async (t) => {
      const res = await t.request({
        method: 'GET',
        path: `/v2/${this.repository}/manifests/${identifier}`,
        headers: { accept },
        scopes: this.pullScope(),
        expect: [200],
        ctx: this.ctx('manifest'),
      });
      const raw = await readLimited(res, MAX_MANIFEST_SIZE, `${this.label}: manifest`);
      const digest = sha256(raw);
      if (identifier.includes(':') && identifier !== digest) {
        throw new KilnError(
          'DIGEST_MISMATCH',
          `${this.label}: manifest digest ${digest} does not match the requested ${identifier}`,
          { hint: 'the registry sent different content than requested' },
        );
      }
      let mediaType = getHeader(res.headers, 'content-type')?.split(';')[0]?.trim() ?? '';
      try {
        const j = JSON.parse(raw.toString('utf8')) as { mediaType?: string; manifests?: unknown };
        if (j.mediaType) mediaType = j.mediaType;
        else if (!mediaType || mediaType === 'application/json')
          mediaType = j.manifests
            ? 'application/vnd.oci.image.index.v1+json'
            : 'application/vnd.oci.image.manifest.v1+json';
      } catch (e) {
        throw new KilnError('MANIFEST_INVALID', `${this.label}: manifest is not valid JSON`, { cause: e });
      }
      return { raw, mediaType, digest };
    });
  }

  /** HEAD a manifest: its descriptor, or undefined when absent. */
  async headManifest(identifier: string): Promise<{ digest?: string; mediaType?: string; size?: number } | undefined> {
    const headers = await this.head('manifest', identifier, this.pullScope(), { accept: MANIFEST_ACCEPT });
    if (!headers) return undefined;
    const len = getHeader(headers, 'content-length');
    return {
      digest: getHeader(headers, 'docker-content-digest'),
      mediaType: getHeader(headers, 'content-type'),
      size: len ? Number(len) : undefined,
    };
  }

  /**
   * A verifying stream of a blob (fails with DIGEST_MISMATCH/SIZE_MISMATCH at its end if corrupt). A connection
   * that breaks mid-body is resumed with a `Range: bytes=N-` request (bounded), so a long download is not lost.
   */
  async blob(digest: string, size?: number): Promise<Readable> {
    return this.read(async (t) => {
      const path = `/v2/${this.repository}/blobs/${digest}`;
      const res = await t.request({
        method: 'GET',
        path,
        scopes: this.pullScope(),
        expect: [200],
        ctx: this.ctx('blob'),
      });
      const what = `${this.label}: blob ${digest}`;
      const v = verifyingStream(digest, what, size);
      const resumeFrom = async (received: number): Promise<AsyncIterable<Buffer>> => {
        const r = await t.request({
          method: 'GET',
          path,
          headers: { range: `bytes=${received}-` },
          scopes: this.pullScope(),
          expect: [206, 200],
          ctx: this.ctx('blob'),
        });
        if (r.status === 206) return r.body as AsyncIterable<Buffer>;
        // The registry ignored the range: skip what we already have.
        return skipBytes(r.body as AsyncIterable<Buffer>, received);
      };
      async function* withResume(): AsyncGenerator<Buffer> {
        let body: AsyncIterable<Buffer> = res.body as AsyncIterable<Buffer>;
        let received = 0;
        for (let resumes = 0; ;) {
          try {
            for await (const c of body) {
              received += c.length;
              yield c;
            }
            return;
          } catch (e) {
            if (!isBroken(e) || resumes >= 5 || (size !== undefined && received >= size)) throw e;
            resumes++;
            debugLog(`resuming download of ${digest} at byte ${received}`);
            body = await resumeFrom(received);
          }
        }
      }
      const src = Readable.from(withResume(), { objectMode: false });
      src.on('error', (e) => v.destroy(e));
      v.on('close', () => src.destroy());
      return src.pipe(v);
    });
  }

  /** Read a small blob (config) fully, verified. */
  async blobBuffer(digest: string, size?: number): Promise<Buffer> {
    if (size !== undefined && size > MAX_MANIFEST_SIZE * 8) {
      throw new KilnError('BLOB_TOO_LARGE', `${this.label}: blob ${digest} is too large (${size} bytes)`);
    }
    const s = await this.blob(digest, size);
    const chunks: Buffer[] = [];
    for await (const c of s) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }

  /** Size of a blob if the repository has it. */
  async headBlob(digest: string, scopes: string[] = this.pullScope()): Promise<number | undefined> {
    const headers = await this.head('blob', digest, scopes);
    if (!headers) return undefined;
    const len = getHeader(headers, 'content-length');
    return len ? Number(len) : 0;
  }

  /** HEAD `/v2/<repo>/<kind>s/<identifier>`: the response headers, or undefined when the registry says 404. */
  private async head(
    kind: 'manifest' | 'blob',
    identifier: string,
    scopes: string[],
    headers?: Record<string, string>,
  ): Promise<Response['headers'] | undefined> {
    const res = await this.canonical.request({
      method: 'HEAD',
      path: `/v2/${this.repository}/${kind}s/${identifier}`,
      ...(headers ? { headers } : {}),
      scopes,
      expect: [200, 404],
      ctx: this.ctx(kind),
    });
    await res.body.dump().catch(() => undefined);
    return res.status === 404 ? undefined : res.headers;
  }

  /** PUT a manifest under a tag or digest; returns its digest. */
  async putManifest(identifier: string, raw: Buffer, mediaType: string): Promise<string> {
    const digest = sha256(raw);
    const res = await this.canonical.request({
      method: 'PUT',
      path: `/v2/${this.repository}/manifests/${identifier}`,
      headers: { 'content-type': mediaType },
      body: raw,
      scopes: this.pushScope(),
      expect: [201, 200, 202],
      ctx: this.ctx('manifest'),
    });
    await res.body.dump().catch(() => undefined);
    const got = getHeader(res.headers, 'docker-content-digest');
    if (got && got !== digest) {
      throw new KilnError('DIGEST_MISMATCH', `${this.label}: registry stored manifest as ${got}, expected ${digest}`);
    }
    return digest;
  }

  /** List tags (follows Link pagination). */
  async listTags(): Promise<string[]> {
    const tags: string[] = [];
    let path: string | undefined = `/v2/${this.repository}/tags/list?n=1000`;
    while (path) {
      const res = await this.canonical.request({
        method: 'GET',
        path,
        scopes: this.pullScope(),
        expect: [200],
        ctx: this.ctx('tags'),
      });
      const body = JSON.parse((await readLimited(res, MAX_MANIFEST_SIZE, this.label)).toString()) as {
        tags?: string[] | null;
      };
      tags.push(...(body.tags ?? []));
      const link = getHeader(res.headers, 'link');
      const m = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
      path = m ? m[1] : undefined;
    }
    return tags;
  }

  /** Delete a manifest by digest. */
  async deleteManifest(digest: string): Promise<void> {
    const res = await this.canonical.request({
      method: 'DELETE',
      path: `/v2/${this.repository}/manifests/${digest}`,
      scopes: [repositoryScope(this.repository, ['delete'])],
      expect: [202, 200],
      ctx: this.ctx('manifest'),
    });
    await res.body.dump().catch(() => undefined);
  }

  private uploadUrl(location: string | undefined, base: string): string {
    if (!location) throw new KilnError('REGISTRY_ERROR', `${this.label}: registry sent no upload Location`);
    return new URL(location, base).toString();
  }

  /**
   * Open `n` upload sessions in this repository now (POSTs, nothing uploaded): the next `n` uploads through this
   * transport start with them instead of a POST of their own. Why: a build worker knows where it will push before
   * it knows its blobs (the build service fetches the source meanwhile); the POST's round trip then leaves the
   * critical path. A session that failed to open, or that the registry lost meanwhile, is replaced by a fresh POST;
   * `cancelOpenedUploads` deletes those no upload took (an unused session is invisible, but not kept around).
   */
  openUploads(n: number): void {
    let byRepo = openedUploads.get(this.canonical);
    if (!byRepo) {
      byRepo = new Map();
      openedUploads.set(this.canonical, byRepo);
    }
    const list = byRepo.get(this.repository) ?? [];
    for (let i = 0; i < n; i++) {
      list.push(
        this.startUpload('', undefined).then(
          (u) => (u === 'mounted' ? undefined : u),
          (e: unknown) => {
            debugLog(
              `opening an upload session in ${this.repository} failed: ${e instanceof Error ? e.message : String(e)}`,
            );
            return undefined;
          },
        ),
      );
    }
    byRepo.set(this.repository, list);
  }

  /** An upload session opened ahead (openUploads), if one is left and it opened. */
  private async openedUpload(): Promise<string | undefined> {
    const list = openedUploads.get(this.canonical)?.get(this.repository);
    for (let p = list?.shift(); p; p = list?.shift()) {
      const url = await p;
      if (url) return url;
    }
    return undefined;
  }

  /** Delete the sessions `openUploads` opened here that no upload took (best effort). */
  async cancelOpenedUploads(): Promise<void> {
    const list = openedUploads.get(this.canonical)?.get(this.repository)?.splice(0) ?? [];
    await Promise.all(
      list.map(async (p) => {
        const url = await p;
        if (url) await this.cancelUpload(url);
      }),
    );
  }

  /** POST to start an upload (optionally mounting); returns 'mounted' or the upload URL. */
  private async startUpload(
    digest: string,
    mountFrom: string | undefined,
    scopes = this.pushScope(mountFrom ? [repositoryScope(mountFrom, ['pull'])] : []),
  ): Promise<'mounted' | string> {
    let path = `/v2/${this.repository}/blobs/uploads/`;
    if (mountFrom) path += `?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(mountFrom)}`;
    const res = await this.canonical.request({
      method: 'POST',
      path,
      headers: { 'content-length': '0' },
      body: '',
      scopes,
      expect: [201, 202],
      ctx: this.ctx('upload'),
    });
    await res.body.dump().catch(() => undefined);
    if (res.status === 201) return 'mounted';
    return this.uploadUrl(getHeader(res.headers, 'location'), res.url);
  }

  private withDigest(url: string, digest: string): string {
    const u = new URL(url);
    u.searchParams.set('digest', digest);
    return u.toString();
  }

  /**
   * Upload a blob unless the repository already has it: HEAD, then cross-repo mount when `mountFrom` is given,
   * else a monolithic PUT (small blobs) or chunked PATCHes (large ones). `open` returns a fresh stream of the blob
   * (called again only if the upload has to restart from scratch).
   */
  async uploadBlob(
    digest: string,
    size: number,
    open: () => Promise<Readable>,
    o: UploadOptions = {},
  ): Promise<UploadResult> {
    const wanted = typeof o.mountFrom === 'string' ? [o.mountFrom] : (o.mountFrom ?? []);
    let sources = [...new Set(wanted)].filter((r) => r !== this.repository).slice(0, MAX_MOUNT_SOURCES);
    // Ask for the push (and mount sources') scopes right away: one token for the HEAD and the mounts.
    let scopes = this.pushScope(sources.map((r) => repositoryScope(r, ['pull'])));
    let size0: number | undefined;
    try {
      if (!(o.skipHead && sources.length === 0)) size0 = await this.headBlob(digest, scopes);
    } catch (e) {
      // A token server that refuses a mount source's pull scope outright: push without mounting.
      if (!sources.length || !hasCode(e, 'UNAUTHORIZED', 'DENIED', 'TOKEN_FETCH_FAILED')) throw e;
      debugLog(`no token for the mount sources of ${digest} (${e.code}); uploading`);
      sources = [];
      scopes = this.pushScope();
      size0 = await this.headBlob(digest, scopes);
    }
    if (size0 !== undefined) return 'exists';
    let session = await this.tryMounts(digest, sources, scopes, o);
    if (session === 'mounted') return 'mounted';
    const monolithicMax = o.monolithicMax ?? 16 * 1024 * 1024;
    const maxRestarts = o.maxRestarts ?? 3;
    for (let restart = 0; ; restart++) {
      // the upload the registry opened when it declined the last mount, else a fresh one
      const ahead = session === undefined ? await this.openedUpload() : undefined;
      const start = session ?? ahead ?? (await this.startUpload(digest, undefined));
      session = undefined;
      try {
        if (size <= monolithicMax) await this.putMonolithic(start, digest, size, open, o);
        else await this.putChunked(start, digest, size, open, o);
        return 'uploaded';
      } catch (e) {
        // a session opened ahead that the registry refuses now (expired, forgotten; registries answer that in
        // different ways): the next one, else a fresh POST — not one of the restarts
        if (ahead !== undefined && e instanceof KilnError) {
          debugLog(`upload session opened ahead refused (${e.code}); starting another for ${digest}`);
          restart--;
          continue;
        }
        // A broken connection, or a registry that lost/invalidated the upload session: start over (bounded).
        const lost = e instanceof KilnError && (e.code === 'BLOB_UPLOAD_INVALID' || e.code === 'BLOB_UPLOAD_UNKNOWN');
        if (!(e instanceof UploadBroken || lost) || restart >= maxRestarts) throw unwrapBroken(e, this.label);
        debugLog(`restarting upload of ${digest} (${restart + 1}/${maxRestarts}): ${(e as Error).message}`);
      }
    }
  }

  /**
   * Try to mount `digest` from each source in turn: 'mounted', else the upload URL the registry opened when it
   * declined the last source (earlier declined sessions are cancelled), else undefined. Refusals (401/403/404) are
   * not errors: the blob is uploaded instead.
   */
  private async tryMounts(
    digest: string,
    sources: string[],
    scopes: string[],
    o: UploadOptions,
  ): Promise<'mounted' | string | undefined> {
    for (const [i, from] of sources.entries()) {
      let start: 'mounted' | string;
      try {
        start = await this.startUpload(digest, from, scopes);
      } catch (e) {
        if (!hasCode(e, ...MOUNT_REFUSALS)) throw e;
        debugLog(`mount of ${digest} from ${from} refused (${e.code})`);
        continue;
      }
      if (start === 'mounted') {
        debugLog(`mounted ${digest} from ${from}`);
        o.onMounted?.(from);
        return 'mounted';
      }
      o.onMountMissed?.(from);
      if (i === sources.length - 1) return start;
      await this.cancelUpload(start);
    }
    return undefined;
  }

  /** DELETE an upload session we will not use (best effort: the registry purges stale uploads anyway). */
  private async cancelUpload(url: string): Promise<void> {
    try {
      const res = await this.canonical.request({
        method: 'DELETE',
        path: url,
        scopes: this.pushScope(),
        expect: [204, 200, 202, 404],
        ctx: this.ctx('upload'),
      });
      await res.body.dump().catch(() => undefined);
    } catch (e) {
      debugLog(`cancelling upload ${url} failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  private async putMonolithic(
    url: string,
    digest: string,
    size: number,
    open: () => Promise<Readable>,
    o: UploadOptions,
  ): Promise<void> {
    const raw = await open();
    let sent = 0;
    const src = new Transform({
      transform(c: Buffer, _e, cb) {
        sent += c.length;
        o.onProgress?.(sent);
        cb(null, c);
      },
    });
    let srcErr: unknown;
    raw.on('error', (e) => {
      srcErr = e;
      src.destroy(e);
    });
    raw.pipe(src);
    let res: Response;
    try {
      res = await this.canonical.request({
        method: 'PUT',
        path: this.withDigest(url, digest),
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
        body: src,
        scopes: this.pushScope(),
        expect: [201, 204],
        ctx: this.ctx('upload'),
        noRetry: true,
      });
    } catch (e) {
      raw.destroy();
      src.destroy();
      if (srcErr) throw srcErr;
      if (isBroken(e)) throw new UploadBroken(e);
      throw e;
    }
    await res.body.dump().catch(() => undefined);
    if (srcErr) throw srcErr;
  }

  /** Where the registry says an upload stands: the next byte offset it expects. */
  private async uploadStatus(url: string): Promise<{ offset: number; url: string }> {
    const res = await this.canonical.request({
      method: 'GET',
      path: url,
      scopes: this.pushScope(),
      expect: [204, 200],
      ctx: this.ctx('upload'),
    });
    await res.body.dump().catch(() => undefined);
    const range = getHeader(res.headers, 'range');
    const m = range ? /^(?:bytes=)?(\d+)-(\d+)$/.exec(range.trim()) : null;
    const loc = getHeader(res.headers, 'location');
    // "0-0" is ambiguous in the spec (distribution reports it for an empty upload); treat it as nothing received.
    const offset = m ? (Number(m[2]) === 0 && Number(m[1]) === 0 ? 0 : Number(m[2]) + 1) : 0;
    return { offset, url: loc ? this.uploadUrl(loc, url) : url };
  }

  private async putChunked(
    startUrl: string,
    digest: string,
    size: number,
    open: () => Promise<Readable>,
    o: UploadOptions,
  ): Promise<void> {
    const chunkSize = Math.max(1, o.chunkSize ?? DEFAULT_CHUNK_SIZE);
    const what = `${this.label}: blob ${digest}`;
    let url = startUrl;
    let offset = 0; // bytes the registry has confirmed
    let cursor = new BlobCursor(open, what);
    let resumes = 0;
    try {
      while (offset < size) {
        const len = Math.min(chunkSize, size - offset);
        try {
          await cursor.seek(offset);
          const res = await this.canonical.request({
            method: 'PATCH',
            path: url,
            headers: {
              'content-type': 'application/octet-stream',
              'content-length': String(len),
              'content-range': `${offset}-${offset + len - 1}`,
            },
            body: cursor.range(len),
            scopes: this.pushScope(),
            expect: [202, 204],
            ctx: this.ctx('upload'),
            noRetry: true,
          });
          await res.body.dump().catch(() => undefined);
          url = this.uploadUrl(getHeader(res.headers, 'location'), url);
          offset += len;
          o.onProgress?.(offset);
        } catch (e) {
          if (cursor.error !== undefined) throw cursor.error; // the source failed (e.g. DIGEST_MISMATCH)
          if (!isBroken(e) || resumes >= 5) throw isBroken(e) ? new UploadBroken(e) : e;
          resumes++;
          // Ask the registry how much it has and continue from there, re-reading the source from that offset.
          let st: { offset: number; url: string };
          try {
            st = await this.uploadStatus(url);
          } catch (e2) {
            debugLog(`upload status failed: ${e2 instanceof Error ? e2.message : String(e2)}`);
            throw new UploadBroken(e);
          }
          if (st.offset < offset || st.offset > offset + len) throw new UploadBroken(e);
          debugLog(`resuming upload of ${digest} at byte ${st.offset}`);
          url = st.url;
          offset = st.offset;
          cursor.close();
          cursor = new BlobCursor(open, what);
        }
      }
      // Read the source to its end so its digest check runs before we commit the blob.
      await cursor.seek(offset);
      await cursor.finish();
    } finally {
      cursor.close();
    }
    await this.closeUpload(url, digest);
  }

  /** The closing PUT of an upload whose bytes were all PATCHed: the registry checks them against `digest`. */
  private async closeUpload(url: string, digest: string): Promise<void> {
    const res = await this.canonical.request({
      method: 'PUT',
      path: this.withDigest(url, digest),
      headers: { 'content-length': '0' },
      body: '',
      scopes: this.pushScope(),
      expect: [201, 204],
      ctx: this.ctx('upload'),
      noRetry: true,
    });
    await res.body.dump().catch(() => undefined);
  }

  /**
   * Upload a blob whose bytes are still being produced (a layer being written): one upload session, one PATCH
   * streaming `body` as it grows (chunked transfer encoding, no length up front), then the closing PUT with the
   * digest `final` resolves to once the producer is done. The registry checks the digest, so bytes the producer
   * did not mean cannot end up under it. No HEAD or mount first (the digest is not known yet) and no retries: a
   * failure rejects (after cancelling the session) and the caller uploads the finished blob the usual way.
   */
  async uploadStreaming(
    body: AsyncIterable<Buffer>,
    final: () => Promise<{ digest: string; size: number }>,
  ): Promise<string> {
    const url = await this.startUpload('', undefined, this.pushScope());
    if (url === 'mounted') throw new KilnError('REGISTRY_ERROR', `${this.label}: registry mounted an unnamed blob`);
    let sent = 0;
    const counted = async function* (): AsyncGenerator<Buffer> {
      for await (const c of body) {
        sent += c.length;
        yield c;
      }
    };
    let next = url;
    try {
      const res = await this.canonical.request({
        method: 'PATCH',
        path: url,
        headers: { 'content-type': 'application/octet-stream' },
        body: Readable.from(counted(), { objectMode: false }),
        scopes: this.pushScope(),
        expect: [202, 204],
        ctx: this.ctx('upload'),
        noRetry: true,
      });
      await res.body.dump().catch(() => undefined);
      next = this.uploadUrl(getHeader(res.headers, 'location'), url);
      const { digest, size } = await final();
      if (sent !== size) {
        throw new KilnError('SIZE_MISMATCH', `${this.label}: streamed ${sent} bytes of blob ${digest} (${size} bytes)`);
      }
      await this.closeUpload(next, digest);
      return digest;
    } catch (e) {
      await this.cancelUpload(next);
      throw e;
    }
  }

  /** Error for a failed response, for callers doing custom requests. */
  async errorFor(res: Response, kind: ErrorContext['kind']): Promise<KilnError> {
    return responseError(res, this.ctx(kind));
  }
}

/**
 * A sequential reader over a (re-openable) blob stream that hands out exact byte ranges as streams, so chunked
 * uploads stream without buffering a chunk. Errors of the source (including digest verification at its end) are
 * kept in `error` so callers can tell them from upload failures.
 */
class BlobCursor {
  private src: Readable | undefined;
  private it: AsyncIterator<Buffer> | undefined;
  private pending: Buffer | undefined;
  private pos = 0;
  error: unknown;

  constructor(
    private readonly open: () => Promise<Readable>,
    private readonly what: string,
  ) {}

  private async next(max: number): Promise<Buffer | undefined> {
    if (!this.it) {
      this.src = await this.open();
      this.it = (this.src as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    }
    let b = this.pending;
    this.pending = undefined;
    if (!b) {
      let r: IteratorResult<Buffer>;
      try {
        r = await this.it.next();
      } catch (e) {
        this.error = e;
        throw e;
      }
      if (r.done) return undefined;
      b = r.value;
    }
    if (b.length > max) {
      this.pending = b.subarray(max);
      b = b.subarray(0, max);
    }
    this.pos += b.length;
    return b;
  }

  /** Skip forward to `offset` (only forward: open a new cursor to go back). */
  async seek(offset: number): Promise<void> {
    while (this.pos < offset) {
      const b = await this.next(offset - this.pos);
      if (!b) throw this.short();
    }
  }

  private short(): KilnError {
    this.error = new KilnError('SIZE_MISMATCH', `${this.what}: blob ended early at byte ${this.pos}`);
    return this.error as KilnError;
  }

  /** A stream of exactly `len` bytes from the current position. */
  range(len: number): Readable {
    const next = (max: number): Promise<Buffer | undefined> => this.next(max);
    const short = (): KilnError => this.short();
    return Readable.from(
      (async function* () {
        let left = len;
        while (left > 0) {
          const b = await next(Math.min(left, 1024 * 1024));
          if (!b) throw short();
          left -= b.length;
          yield b;
        }
      })(),
      { objectMode: false },
    );
  }

  /** Consume the end of the source: surfaces its verification error; fails if bytes remain. */
  async finish(): Promise<void> {
    const b = await this.next(1);
    if (b) {
      this.error = new KilnError('SIZE_MISMATCH', `${this.what}: more bytes than the declared size`);
      throw this.error;
    }
  }

  close(): void {
    this.src?.destroy();
    this.src = undefined;
    this.it = undefined;
  }
}

async function* skipBytes(body: AsyncIterable<Buffer>, n: number): AsyncGenerator<Buffer> {
  let left = n;
  for await (const c of body) {
    if (left >= c.length) {
      left -= c.length;
      continue;
    }
    yield left > 0 ? c.subarray(left) : c;
    left = 0;
  }
}

/** Answers to a mount request that mean "not from there" rather than "the push failed". */
const MOUNT_REFUSALS = [
  'UNAUTHORIZED',
  'DENIED',
  'NAME_UNKNOWN',
  'NAME_INVALID',
  'BLOB_UNKNOWN',
  'BLOB_UPLOAD_UNKNOWN',
];

function hasCode(e: unknown, ...codes: string[]): e is KilnError {
  return e instanceof KilnError && codes.includes(e.code);
}

/** A connection broke mid-upload (the upload may be restarted). */
class UploadBroken extends Error {
  constructor(readonly original: unknown) {
    super(original instanceof Error ? original.message : String(original));
  }
}

function unwrapBroken(e: unknown, label: string): unknown {
  if (!(e instanceof UploadBroken)) return e;
  const o = e.original;
  if (o instanceof KilnError) return o;
  return new KilnError('UPLOAD_FAILED', `${label}: upload failed (${netErrorCode(o) ?? e.message})`, { cause: o });
}

function isBroken(e: unknown): boolean {
  if (e instanceof KilnError) return e.code === 'REGISTRY_UNREACHABLE' && e.message.includes('connection to');
  const c = netErrorCode(e);
  return c !== undefined && /ECONNRESET|EPIPE|UND_ERR_SOCKET|UND_ERR_CLOSED|ECONNABORTED|ETIMEDOUT/.test(c);
}
