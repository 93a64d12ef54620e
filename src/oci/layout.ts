/**
 * OCI image layouts (image-spec image-layout.md), as a directory or a tar ("oci-archive"):
 * `oci-layout` ({"imageLayoutVersion":"1.0.0"}), `index.json` (refs named by the
 * `org.opencontainers.image.ref.name` annotation) and `blobs/sha256/<hex>`.
 *
 * Reading validates up front (oci-layout, index.json, every top-level manifest blob present) and verifies every
 * blob's digest as it is streamed; tars are indexed in place (see tarfile.ts), never extracted or loaded.
 * Writing is atomic: a new directory is assembled in a sibling temp dir and renamed into place; a tar is written to
 * a temp file and renamed; writing into an existing layout adds blobs atomically and replaces index.json by
 * rename, adding or replacing the named refs.
 */
import { chmod, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile, open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { KilnError } from '../errors.js';
import { parseReferenceWithDefaultTag } from '../ref/reference.js';
import { BlobDir, type BlobSource, parseJSON, readBlob } from './blobs.js';
import {
  descriptorOf,
  imageForPlatform,
  imageFromBlobs,
  imagePlatform,
  indexFromBlobs,
  isImageIndex,
} from './image.js';
import { MediaType, isImageManifest, isIndex } from './mediatypes.js';
import { formatPlatform, platformMatches } from './platform.js';
import { TarBlobs, TarIndex, TarWriter } from './tarfile.js';
import { withFileLock } from './lock.js';
import { destinationError, ensureDir, prepareFileDest } from './fsutil.js';
import type { Descriptor, Image, ImageIndex, Index, Platform } from './types.js';

export const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';
const LAYOUT_FILE = JSON.stringify({ imageLayoutVersion: '1.0.0' });

export interface LayoutEntry {
  name?: string;
  descriptor: Descriptor;
}

/** A readable OCI layout (directory or tar). */
export class Layout {
  constructor(
    /** The directory or tar file. */
    readonly path: string,
    readonly blobs: BlobSource,
    readonly indexJSON: Index,
    readonly isTar: boolean,
  ) {}

  /** Top-level entries of index.json, with their ref names. */
  list(): LayoutEntry[] {
    return this.indexJSON.manifests.map((d) => {
      const name = d.annotations?.[REF_NAME];
      return name === undefined ? { descriptor: d } : { name, descriptor: d };
    });
  }

  /**
   * The top-level descriptor for a ref name (`org.opencontainers.image.ref.name`, else containerd's
   * `io.containerd.image.name`), a manifest digest, or — when omitted — the only entry.
   */
  descriptor(nameOrDigest?: string): Descriptor {
    const ms = this.indexJSON.manifests;
    const names = (): string | undefined => {
      const ns = this.list()
        .map((e) => e.name ?? e.descriptor.digest)
        .slice(0, 10);
      return ns.length ? `available: ${ns.join(', ')}` : undefined;
    };
    if (nameOrDigest === undefined || nameOrDigest === '') {
      if (ms.length === 1) return ms[0]!;
      if (ms.length === 0) throw new KilnError('IMAGE_NOT_FOUND', `${this.path}: the layout has no images`);
      throw new KilnError('IMAGE_AMBIGUOUS', `${this.path}: the layout holds ${ms.length} images; name one`, {
        hint: names(),
      });
    }
    const norm = normalizedRef(nameOrDigest);
    const found =
      ms.find((d) => d.annotations?.[REF_NAME] === nameOrDigest) ??
      ms.find((d) => d.annotations?.[CONTAINERD_NAME] === nameOrDigest) ??
      ms.find((d) => d.digest === nameOrDigest) ??
      // `busybox` finds `docker.io/library/busybox:latest` (containerd/BuildKit exports name images in full).
      (norm === undefined
        ? undefined
        : ms.find(
            (d) =>
              normalizedRef(d.annotations?.[CONTAINERD_NAME]) === norm ||
              normalizedRef(d.annotations?.[REF_NAME]) === norm,
          ));
    if (!found) {
      throw new KilnError('IMAGE_NOT_FOUND', `${this.path}: no image "${nameOrDigest}" in the layout`, {
        hint: names(),
      });
    }
    return found;
  }

  /**
   * A single-platform image. An index entry resolves to the child for `platform` (default: the host's); for a
   * plain image entry a given `platform` must match its config.
   */
  async image(nameOrDigest?: string, platform?: Platform): Promise<Image> {
    return imageFromDescriptor(this.blobs, this.descriptor(nameOrDigest), platform, this.path);
  }

  /** A multi-platform index entry. */
  async index(nameOrDigest?: string): Promise<ImageIndex> {
    const d = this.descriptor(nameOrDigest);
    if (!isIndex(d.mediaType)) {
      throw new KilnError('NOT_AN_INDEX', `${this.path}: ${nameOrDigest ?? d.digest} is an image, not an index`);
    }
    return indexFromBlobs(this.blobs, d);
  }

  /** The entry as whichever it is. */
  async get(nameOrDigest?: string): Promise<Image | ImageIndex> {
    const d = this.descriptor(nameOrDigest);
    return isIndex(d.mediaType) ? indexFromBlobs(this.blobs, d) : imageFromBlobs(this.blobs, d);
  }
}

/**
 * The image a top-level descriptor names: an index resolves to its child for `platform` (default: the host's); a
 * plain image must match `platform` when one is given.
 */
export async function imageFromDescriptor(
  blobs: BlobSource,
  d: Descriptor,
  platform: Platform | undefined,
  where: string,
): Promise<Image> {
  if (isIndex(d.mediaType)) return imageForPlatform(indexFromBlobs(blobs, d), platform);
  if (!isImageManifest(d.mediaType)) {
    throw new KilnError('MEDIATYPE_UNSUPPORTED', `${where}: ${d.digest} has media type ${d.mediaType}`);
  }
  const img = imageFromBlobs(blobs, d);
  if (platform) {
    const have = await imagePlatform(img);
    if (!platformMatches(platform, have)) {
      throw new KilnError(
        'PLATFORM_NOT_FOUND',
        `${where}: image is ${formatPlatform(have)}, not ${formatPlatform(platform)}`,
      );
    }
  }
  return img;
}

/** docker-normalised form of an image name (`busybox` → `docker.io/library/busybox:latest`), if it is one. */
function normalizedRef(s: string | undefined): string | undefined {
  if (s === undefined) return undefined;
  try {
    const r = parseReferenceWithDefaultTag(s);
    return r.digest === undefined ? r.toString() : undefined;
  } catch {
    return undefined;
  }
}

function layoutError(where: string, why: string, hint?: string): KilnError {
  return new KilnError('LAYOUT_INVALID', `${where}: ${why}`, {
    hint: hint ?? 'expected an OCI image layout (oci-layout, index.json, blobs/sha256/)',
  });
}

function checkLayoutFile(buf: Buffer, where: string): void {
  const v = parseJSON<{ imageLayoutVersion?: unknown }>(buf, where);
  if (typeof v?.imageLayoutVersion !== 'string') throw layoutError(where, 'no imageLayoutVersion');
  if (!v.imageLayoutVersion.startsWith('1.')) {
    throw layoutError(where, `unsupported imageLayoutVersion ${v.imageLayoutVersion}`);
  }
}

function checkIndexJSON(buf: Buffer, where: string): Index {
  const ix = parseJSON<Index>(buf, where);
  if (ix === null || typeof ix !== 'object' || ix.schemaVersion !== 2 || !Array.isArray(ix.manifests)) {
    throw layoutError(where, 'not an image index (schemaVersion 2 with manifests)');
  }
  for (const d of ix.manifests) {
    if (!d || typeof d.digest !== 'string' || !/^sha256:[a-f0-9]{64}$/.test(d.digest) || typeof d.size !== 'number') {
      throw layoutError(where, `invalid descriptor ${JSON.stringify(d)}`);
    }
  }
  return ix;
}

/** Open an OCI layout directory or tar, validating its structure. */
export async function readLayout(src: string): Promise<Layout> {
  const st = await stat(src).catch(() => undefined);
  if (!st) throw new KilnError('FILE_NOT_FOUND', `${src}: no such file or directory`);
  let layout: Layout;
  if (st.isDirectory()) {
    const lf = await readFile(join(src, 'oci-layout')).catch(() => undefined);
    if (!lf) throw layoutError(join(src, 'oci-layout'), 'missing — not an OCI image layout');
    checkLayoutFile(lf, join(src, 'oci-layout'));
    const ij = await readFile(join(src, 'index.json')).catch(() => undefined);
    if (!ij) throw layoutError(join(src, 'index.json'), 'missing');
    layout = new Layout(src, new BlobDir(join(src, 'blobs')), checkIndexJSON(ij, join(src, 'index.json')), false);
  } else {
    const tar = await TarIndex.open(src);
    if (!tar.find('oci-layout')) throw layoutError(`${src}:oci-layout`, 'missing — not an OCI image layout archive');
    checkLayoutFile(await tar.readEntry('oci-layout'), `${src}:oci-layout`);
    if (!tar.find('index.json')) throw layoutError(`${src}:index.json`, 'missing');
    const ix = checkIndexJSON(await tar.readEntry('index.json'), `${src}:index.json`);
    layout = new Layout(src, new TarBlobs(tar), ix, true);
  }
  for (const d of layout.indexJSON.manifests) {
    if (!(await layout.blobs.has(d.digest))) {
      const file = layout.isTar
        ? `${src}:blobs/sha256/${d.digest.slice(7)}`
        : join(src, 'blobs', 'sha256', d.digest.slice(7));
      throw new KilnError(
        'BLOB_NOT_FOUND',
        `${file}: missing blob for ${d.annotations?.[REF_NAME] ?? d.digest} listed in index.json`,
        {
          hint: 'the layout is incomplete; re-export it',
        },
      );
    }
  }
  return layout;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

/** Where blobs go while writing: a blob dir or a tar. */
export interface BlobSink {
  has(digest: string): Promise<boolean>;
  put(desc: { digest: string; size: number }, open: () => Promise<Readable>): Promise<void>;
}

/**
 * Blobs go into a BlobDir. With `touch`, blobs that already exist get their mtime refreshed (the local store's
 * GC spares recently touched blobs, so an image being stored keeps blobs it shares with a removed one).
 */
export function dirSink(dir: BlobDir, opts: { touch?: boolean } = {}): BlobSink {
  const has = async (d: string): Promise<boolean> => {
    const yes = await dir.has(d);
    if (yes && opts.touch) await dir.touch(d);
    return yes;
  };
  return {
    has,
    put: async (desc, openStream) => {
      if (await has(desc.digest)) return;
      await dir.write(await openStream(), desc);
    },
  };
}

export function tarSink(w: TarWriter, prefix = 'blobs/sha256/'): BlobSink {
  const seen = new Set<string>();
  return {
    has: async (d) => seen.has(d),
    put: async (desc, openStream) => {
      if (seen.has(desc.digest)) return;
      seen.add(desc.digest);
      await w.addStream(prefix + desc.digest.slice(7), desc.size, await openStream());
    },
  };
}

async function putBytes(sink: BlobSink, raw: Buffer, digest: string): Promise<void> {
  await sink.put({ digest, size: raw.length }, async () => Readable.from([raw]));
}

/** Copy every blob of an image or index (children, configs, layers, manifests — manifests last) into `sink`. */
export async function copyBlobs(x: Image | ImageIndex, sink: BlobSink): Promise<Descriptor> {
  if (isImageIndex(x)) {
    const ix = await x.indexManifest();
    for (const d of ix.manifests) {
      if (isIndex(d.mediaType)) await copyBlobs(await x.imageIndex(d.digest), sink);
      else if (isImageManifest(d.mediaType)) await copyBlobs(await x.image(d.digest), sink);
      else {
        throw new KilnError(
          'MEDIATYPE_UNSUPPORTED',
          `index child ${d.digest} has unsupported media type ${d.mediaType}`,
        );
      }
    }
  } else {
    for (const l of await x.layers()) {
      const digest = await l.digest();
      if (await sink.has(digest)) continue;
      await sink.put({ digest, size: await l.size() }, () => l.compressed());
    }
    const m = await x.manifest();
    await putBytes(sink, await x.rawConfig(), m.config.digest);
  }
  const desc = await descriptorOf(x);
  await putBytes(sink, await x.rawManifest(), desc.digest);
  return desc;
}

export interface LayoutWriteEntry {
  image: Image | ImageIndex;
  /** Ref name (`org.opencontainers.image.ref.name`); an entry with the same name is replaced. */
  name?: string;
  /** Extra annotations on the index.json descriptor. */
  annotations?: Record<string, string>;
}

async function entryDescriptors(entries: LayoutWriteEntry[], sink: BlobSink): Promise<Descriptor[]> {
  const out: Descriptor[] = [];
  for (const e of entries) {
    const d = await copyBlobs(e.image, sink);
    const ann = { ...(e.annotations ?? {}) };
    if (e.name !== undefined) ann[REF_NAME] = e.name;
    if (Object.keys(ann).length) d.annotations = ann;
    if (!isImageIndex(e.image)) {
      const p = await imagePlatform(e.image).catch(() => undefined);
      if (p && p.os && p.architecture) d.platform = p;
    }
    out.push(d);
  }
  return out;
}

function mergeIndex(existing: Descriptor[], added: Descriptor[]): Index {
  const newNames = new Set(added.map((d) => d.annotations?.[REF_NAME]).filter((n) => n !== undefined));
  const kept = existing.filter((d) => {
    const n = d.annotations?.[REF_NAME];
    if (n !== undefined) return !newNames.has(n);
    // Unnamed entries are replaced by an identical unnamed one.
    return !added.some((a) => a.digest === d.digest && a.annotations?.[REF_NAME] === undefined);
  });
  return { schemaVersion: 2, mediaType: MediaType.OCIIndex, manifests: [...kept, ...added] };
}

/** Write `data` to `file` atomically (temp file in the same directory, fsync, rename). */
export async function writeFileAtomic(file: string, data: Buffer | string): Promise<void> {
  const tmp = join(dirname(file), `.${basename(file)}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`);
  try {
    await writeFile(tmp, data, { mode: 0o644 });
    const fh = await open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

async function isLayoutDir(p: string): Promise<boolean> {
  return (await stat(join(p, 'oci-layout')).catch(() => undefined))?.isFile() ?? false;
}

/**
 * Write images/indexes to an OCI layout directory (default) or tar (`{tar: true}`). Returns the index.json
 * descriptors written for `entries`.
 */
export async function writeLayout(
  dest: string,
  entries: LayoutWriteEntry[],
  opts: { tar?: boolean } = {},
): Promise<Descriptor[]> {
  return opts.tar ? writeLayoutTar(dest, entries) : writeLayoutDir(dest, entries);
}

async function writeLayoutDir(dest: string, entries: LayoutWriteEntry[]): Promise<Descriptor[]> {
  const st = await stat(dest).catch(() => undefined);
  if (st && !st.isDirectory()) throw new KilnError('LAYOUT_INVALID', `${dest}: exists and is not a directory`);
  if (st && (await isLayoutDir(dest))) {
    // Existing layout: add blobs (each atomically), then swap index.json.
    await readLayout(dest);
    const added = await entryDescriptors(entries, dirSink(new BlobDir(join(dest, 'blobs'))));
    // Re-read index.json under a lock, so two writers adding refs at once both land.
    await withFileLock(
      join(dest, 'index.json.lock'),
      async () => {
        const current = await readLayout(dest);
        await writeFileAtomic(join(dest, 'index.json'), JSON.stringify(mergeIndex(current.indexJSON.manifests, added)));
      },
      dest,
    );
    return added;
  }
  if (st && (await readdir(dest)).length > 0) {
    throw new KilnError('LAYOUT_INVALID', `${dest}: exists, is not empty and is not an OCI layout`, {
      hint: 'choose a new or empty directory',
    });
  }
  await ensureDir(dirname(dest), dest, 'OCI layout');
  const tmp = await mkdtemp(join(dirname(dest), `.${basename(dest)}.kiln-tmp-`)).catch((e: unknown) => {
    throw destinationError(e, dest, 'OCI layout');
  });
  try {
    await chmod(tmp, 0o755);
    await writeFile(join(tmp, 'oci-layout'), LAYOUT_FILE);
    const added = await entryDescriptors(entries, dirSink(new BlobDir(join(tmp, 'blobs'))));
    await mkdir(join(tmp, 'blobs', 'sha256'), { recursive: true });
    await writeFile(join(tmp, 'index.json'), JSON.stringify(mergeIndex([], added)));
    // rename(2) replaces an empty directory atomically.
    await rename(tmp, dest);
    return added;
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw destinationError(e, dest, 'OCI layout');
  }
}

async function writeLayoutTar(dest: string, entries: LayoutWriteEntry[]): Promise<Descriptor[]> {
  const st = await stat(dest).catch(() => undefined);
  if (st?.isDirectory()) throw new KilnError('LAYOUT_INVALID', `${dest}: is a directory, expected a tar file path`);
  const previous = st ? await readLayout(dest) : undefined;
  await prepareFileDest(dest, 'OCI archive');
  const w = new TarWriter(dest);
  try {
    await w.addBytes('oci-layout', LAYOUT_FILE);
    await w.addDir('blobs');
    await w.addDir('blobs/sha256');
    const sink = tarSink(w);
    const added = await entryDescriptors(entries, sink);
    let existing: Descriptor[] = [];
    if (previous) {
      // Keep the old refs that are not replaced, with everything they reference.
      const ix = mergeIndex(previous.indexJSON.manifests, added);
      existing = ix.manifests.slice(0, ix.manifests.length - added.length);
      for (const d of existing) {
        if (isIndex(d.mediaType)) await copyBlobs(indexFromBlobs(previous.blobs, d), sink);
        else if (isImageManifest(d.mediaType)) await copyBlobs(imageFromBlobs(previous.blobs, d), sink);
        else await putBytes(sink, await readBlob(previous.blobs, d.digest, d.size), d.digest);
      }
    }
    await w.addBytes('index.json', JSON.stringify(mergeIndex(existing, added)));
    await w.commit();
    return added;
  } catch (e) {
    await w.abort();
    throw destinationError(e, dest, 'OCI archive');
  }
}
