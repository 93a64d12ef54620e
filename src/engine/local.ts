/**
 * The local implementations of the engine's storage ports: the layer store (`$KILN_HOME/layers/<diffID hex>`,
 * extracted once, in overlay format) backed by a content-addressed blob directory, and committing a step's upper
 * dir — one streaming pass writes the layer blob, then the upper dir itself is renamed into the layer store.
 */

import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Layer } from '../oci/types.js';
import { BlobDir } from '../oci/blobs.js';
import { digestHex } from '../oci/digest.js';
import { layerFromBlob } from '../oci/image.js';
import { KilnError } from '../errors.js';
import { writeLayer } from '../layer/writer.js';
import { writeLayerOffThread } from '../layer/worker.js';
import { ensureLayerDir } from '../layer/extract.js';
import type { LayerStore, WriteBlobOptions, WrittenBlob } from './ports.js';
import type { LayerCompression } from './options.js';
import { writeFileAtomic } from '../util/atomic.js';
import { ensureSpreadDir } from '../util/spread.js';
import { debugMark } from '../util/debug.js';
import { noteMadeBlob } from '../util/made.js';
import { memberIndexFile, type MemberIndex } from '../layer/segments.js';

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

export interface LocalLayerStoreOptions {
  /** `$KILN_HOME/layers`. */
  layersDir: string;
  /** The blob store new layer blobs go to. */
  blobs: BlobDir;
  /** Layer media types of committed layers. */
  mediaTypes?: 'oci' | 'docker';
  /** Compression of committed layers (default gzip) and its level. */
  compression?: LayerCompression;
  level?: number;
  onWarning?: (msg: string) => void;
}

export class LocalLayerStore implements LayerStore {
  /** Member indexes of blobs written from upper dirs not yet adopted. */
  private readonly memberIndexes = new Map<string, MemberIndex>();

  constructor(private readonly opts: LocalLayerStoreOptions) {}

  /**
   * Extract `layer` once. Its compressed blob is first stored in the blob store (verified), then extracted from
   * there: the image written at the end (local store, layouts) then finds the base layers locally instead of
   * downloading them a second time.
   */
  async unpack(layer: Layer): Promise<string> {
    const diffID = await layer.diffID();
    const have = await this.dirOf(diffID);
    if (have) return have;
    const digest = await layer.digest();
    const o: { digest?: string; onWarning?: (m: string) => void } = { digest };
    if (this.opts.onWarning) o.onWarning = this.opts.onWarning;
    const blobs = this.opts.blobs;
    let local = await blobs.has(digest);
    if (!local) {
      try {
        await blobs.write(await layer.compressed(), { digest, size: await layer.size() }, await layer.mediaType());
        local = true;
      } catch (e) {
        if (e instanceof KilnError && (e.code === 'DIGEST_MISMATCH' || e.code === 'SIZE_MISMATCH')) throw e;
        local = false; // e.g. a foreign layer: extract straight from the source
      }
    }
    return ensureLayerDir(this.opts.layersDir, diffID, () => (local ? blobs.open(digest) : layer.uncompressed()), o);
  }

  async dirOf(diffID: string): Promise<string | undefined> {
    const dir = join(this.opts.layersDir, digestHex(diffID));
    try {
      return (await lstat(dir)).isDirectory() ? dir : undefined;
    } catch {
      return undefined;
    }
  }

  async writeBlob(upper: string, opts: WriteBlobOptions): Promise<WrittenBlob> {
    const blobsSha = join(this.opts.blobs.root, 'sha256');
    await mkdir(blobsSha, { recursive: true });
    const c = this.opts.compression ?? 'gzip';
    const w: Parameters<typeof writeLayer>[1] = {
      tmpDir: blobsSha,
      file: join(blobsSha, `.kiln-layer-${randomBytes(8).toString('hex')}.tmp`),
      mediaTypes: c === 'zstd' ? 'oci' : (this.opts.mediaTypes ?? 'oci'),
      compression: c === 'uncompressed' ? 'none' : c,
    };
    if (this.opts.level !== undefined) w.level = this.opts.level;
    if (opts.sourceDateEpoch !== undefined) w.sourceDateEpoch = opts.sourceDateEpoch;
    if (opts.reuseFrom !== undefined) w.reuseFrom = { dir: opts.reuseFrom, blobsDir: this.opts.blobs.root };
    if (opts.upperXattrs) w.upperXattrs = opts.upperXattrs;
    if (opts.reroot) w.reroot = opts.reroot;
    if (opts.knownStats && opts.inProcess) w.knownStats = opts.knownStats;
    if (opts.knownAbsStats && opts.inProcess) w.knownAbsStats = opts.knownAbsStats;
    const t0 = performance.now();
    const writing = opts.inProcess ? writeLayer(upper, w) : writeLayerOffThread(upper, w);
    if (opts.onFile) {
      const done = writing.then((x) => ({ digest: x.digest, size: x.size }));
      done.catch(() => undefined); // the writer's own failure is reported below
      opts.onFile({ path: w.file as string, written: done });
    }
    const written = await writing;
    try {
      await rename(written.file, this.opts.blobs.path(written.digest));
    } catch (e) {
      await rm(written.file, { force: true });
      throw e;
    }
    noteMadeBlob(written.digest);
    if (written.members) this.memberIndexes.set(upper, written.members);
    debugMark(
      `layer ${written.digest}: ${written.size} bytes in ${(performance.now() - t0).toFixed(0)} ms` +
        (written.members ? `, ${written.reused ?? 0}/${written.members.members.length} parts reused` : ''),
    );
    return { diffID: written.diffID, digest: written.digest, size: written.size, mediaType: written.mediaType };
  }

  async adopt(upper: string, diffID: string): Promise<string> {
    await ensureSpreadDir(this.opts.layersDir);
    const dir = join(this.opts.layersDir, digestHex(diffID));
    const members = this.memberIndexes.get(upper);
    this.memberIndexes.delete(upper);
    // an index always names the inodes of the dir beside it: none while the dir changes hands
    const side = memberIndexFile(dir);
    const exists = await lstat(dir).then(
      () => true,
      () => false,
    );
    try {
      if (exists) {
        // the same layer was produced before: keep that dir and its index
        await rm(upper, { recursive: true, force: true });
        return dir;
      }
      await rm(side, { force: true });
      await rename(upper, dir);
    } catch (e) {
      const c = errCode(e);
      if (c !== 'ENOTEMPTY' && c !== 'EEXIST') throw e;
      // another process adopted the same layer meanwhile: keep its dir (its index may be gone: only reuse is lost)
      await rm(upper, { recursive: true, force: true });
      return dir;
    }
    // the blob's member index describes these very files (inodes): the next write of the step may reuse it
    if (members) await writeFileAtomic(side, JSON.stringify(members)).catch(() => undefined);
    return dir;
  }

  private slotFile(slot: string): string {
    return join(this.opts.layersDir, '..', 'slots', digestHex(slot));
  }

  async previous(slot: string): Promise<{ dir: string; sources?: Record<string, string> } | undefined> {
    let rec: { diffID?: unknown; sources?: unknown };
    try {
      rec = JSON.parse(await readFile(this.slotFile(slot), 'utf8')) as typeof rec;
    } catch {
      return undefined; // none yet, or unreadable: a fresh copy
    }
    if (typeof rec.diffID !== 'string' || !/^sha256:[a-f0-9]{64}$/.test(rec.diffID)) return undefined;
    const dir = await this.dirOf(rec.diffID);
    if (dir === undefined) return undefined;
    const ok =
      typeof rec.sources === 'object' &&
      rec.sources !== null &&
      Object.values(rec.sources).every((v) => typeof v === 'string');
    return ok ? { dir, sources: rec.sources as Record<string, string> } : { dir };
  }

  async remember(slot: string, diffID: string, sources?: Record<string, string>): Promise<void> {
    const file = this.slotFile(slot);
    await mkdir(dirname(file), { recursive: true });
    await writeFileAtomic(file, JSON.stringify(sources ? { diffID, sources } : { diffID }));
  }

  async layer(digest: string, diffID: string, size: number, mediaType: string): Promise<Layer> {
    if (!(await this.opts.blobs.has(digest))) {
      throw new KilnError('BLOB_NOT_FOUND', `layer blob ${digest} is missing from ${this.opts.blobs.root}`);
    }
    return layerFromBlob(this.opts.blobs, { mediaType, digest, size }, diffID);
  }
}
