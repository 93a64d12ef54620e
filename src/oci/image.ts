/**
 * Concrete Image / Layer / ImageIndex implementations. Everything is lazy and memoized (src/util/memo.ts): nothing
 * is read until asked, and a digest that must be computed (e.g. of a freshly compressed layer) is computed once by
 * a streaming pass. Every stream handed out is wrapped in a verifying stream, so a corrupt blob fails at the end
 * of its stream with DIGEST_MISMATCH instead of silently producing a wrong image.
 *
 * - `imageFromBlobs` / `indexFromBlobs` / `layerFromBlob`: backed by a BlobSource (layout dir, tar, store).
 * - `imageFromParts`: an image assembled from a config and Layer objects (manifest computed on demand); the basis
 *   of `emptyImage` and of every mutation in mutate.ts.
 * - `layerFromOpener` / `layerFromBytes` / `layerFromUncompressed`: layers from streams, buffers (tests) or an
 *   uncompressed tar compressed lazily.
 * - `newIndex`: a multi-platform index from child images.
 */
import { Readable } from 'node:stream';
import { KilnError } from '../errors.js';
import { memo } from '../util/memo.js';
import { type BlobSource, chain, parseJSON, readBlob } from './blobs.js';
import { type Compression, compress, decompress } from './compress.js';
import { DigestingStream, parseDigest, sha256, verifyingStream } from './digest.js';
import { MediaType, isImageManifest, isIndex, layerCompression } from './mediatypes.js';
import { formatPlatform, hostPlatform, selectManifest } from './platform.js';
import type { Descriptor, Image, ImageConfig, ImageIndex, Index, Layer, Manifest, Platform } from './types.js';

/** Docker's uncompressed layer media type (not in mediatypes.ts). */
export const DockerLayerTar = 'application/vnd.docker.image.rootfs.diff.tar';
/** OCI non-distributable gzip layer (deprecated in the spec, still seen). */
export const OCIForeignLayerGzip = 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip';

/** Runtime check: is this an ImageIndex (rather than an Image)? */
export function isImageIndex(x: Image | ImageIndex): x is ImageIndex {
  return typeof (x as Partial<ImageIndex>).indexManifest === 'function';
}

/** Drain a stream through a hasher: digest and byte count. */
export async function digestStream(s: Readable): Promise<{ digest: string; size: number }> {
  const h = new DigestingStream();
  chain(s, h);
  for await (const _ of h) {
    /* consume */
  }
  return { digest: h.digest(), size: h.size() };
}

function wrapVerify(s: Readable, digest: string | undefined, what: string, size?: number): Readable {
  if (!digest) return s;
  const v = verifyingStream(digest, what, size);
  return chain(s, v);
}

// ---------------------------------------------------------------------------------------------------------------
// Layers

export interface OpenerLayerOptions {
  mediaType: string;
  /** Digest/size of the bytes `open` yields; computed by a streaming pass when not given. */
  digest?: string;
  size?: number;
  /** Digest of the uncompressed tar; computed by a decompressing pass when not given. */
  diffID?: string;
  /** Names the layer in errors. */
  what?: string;
  /** Descriptor extras (urls, annotations). */
  annotations?: Record<string, string>;
  urls?: string[];
}

/**
 * A layer whose stored bytes come from `open()` (called once per stream). Streams are verified against the known
 * (or first-computed) digest, and `uncompressed()` against the diffID.
 */
export function layerFromOpener(open: () => Promise<Readable>, o: OpenerLayerOptions): Layer {
  const what = o.what ?? `layer ${o.digest ?? ''}`.trim();
  const comp = layerCompression(o.mediaType);
  const stored = memo(async () => {
    if (o.digest && o.size !== undefined) return { digest: parseDigest(o.digest, what), size: o.size };
    const r = await digestStream(wrapVerify(await open(), o.digest, what));
    return r;
  });
  const compressed = async (): Promise<Readable> => {
    const { digest, size } = await stored();
    return wrapVerify(await open(), digest, what, size);
  };
  const diffID = memo(async () => {
    if (o.diffID) return parseDigest(o.diffID, what);
    if (comp === 'none') return (await stored()).digest;
    return (await digestStream(decompress(await compressed(), comp, what))).digest;
  });
  return {
    digest: async () => (await stored()).digest,
    size: async () => (await stored()).size,
    diffID,
    mediaType: async () => o.mediaType,
    compressed,
    uncompressed: async () => {
      const s = decompress(await compressed(), comp, what);
      if (comp === 'none') return s;
      return wrapVerify(s, await diffID(), `${what} (uncompressed)`);
    },
    descriptor: async () => {
      const { digest, size } = await stored();
      const d: Descriptor = { mediaType: o.mediaType, digest, size };
      if (o.urls) d.urls = o.urls;
      if (o.annotations) d.annotations = o.annotations;
      return d;
    },
  };
}

/** A layer blob in a BlobSource, described by its manifest descriptor; diffID from the image config. */
export function layerFromBlob(blobs: BlobSource, desc: Descriptor, diffID?: string): Layer {
  return layerFromOpener(() => blobs.open(desc.digest, desc.size), {
    mediaType: desc.mediaType,
    digest: desc.digest,
    size: desc.size,
    diffID,
    what: `${blobs.where}: layer ${desc.digest}`,
    annotations: desc.annotations,
    urls: desc.urls,
  });
}

/** A layer from in-memory (already compressed per `mediaType`) bytes. For tests and tiny generated layers. */
export function layerFromBytes(buf: Buffer, mediaType: string = MediaType.OCILayerGzip, diffID?: string): Layer {
  return layerFromOpener(async () => Readable.from([buf]), {
    mediaType,
    digest: sha256(buf),
    size: buf.length,
    diffID,
    what: 'in-memory layer',
  });
}

/**
 * A layer from an uncompressed tar stream, compressed lazily with `compression`. The compressed digest is computed
 * by one full compression pass (memoized); later streams recompress deterministically and are verified against it.
 */
export function layerFromUncompressed(
  openTar: () => Promise<Readable>,
  o: { compression: Compression; diffID?: string; mediaType?: string; what?: string } = { compression: 'gzip' },
): Layer {
  const what = o.what ?? 'layer';
  const mediaType =
    o.mediaType ??
    (o.compression === 'gzip'
      ? MediaType.OCILayerGzip
      : o.compression === 'zstd'
        ? MediaType.OCILayerZstd
        : MediaType.OCILayer);
  const tar = async (): Promise<Readable> => wrapVerify(await openTar(), o.diffID, `${what} (uncompressed)`);
  if (o.compression === 'none') {
    return layerFromOpener(tar, { mediaType, digest: o.diffID, diffID: o.diffID, what });
  }
  const base = layerFromOpener(async () => compress(await tar(), o.compression, what), { mediaType, what });
  let diff: Promise<string> | undefined;
  return {
    ...base,
    diffID: () =>
      (diff ??= o.diffID ? Promise.resolve(o.diffID) : openTar().then(async (t) => (await digestStream(t)).digest)),
    uncompressed: tar,
  };
}

/** A copy of `layer` reporting another media type (same bytes). */
export function withLayerMediaType(layer: Layer, mediaType: string): Layer {
  return {
    digest: () => layer.digest(),
    diffID: () => layer.diffID(),
    size: () => layer.size(),
    mediaType: async () => mediaType,
    compressed: () => layer.compressed(),
    uncompressed: () => layer.uncompressed(),
    descriptor: async () => ({ ...(await layerDescriptor(layer)), mediaType }),
  };
}

/** The manifest descriptor of a layer (including urls/annotations when the layer has them). */
export async function layerDescriptor(layer: Layer): Promise<Descriptor> {
  if (layer.descriptor) return layer.descriptor();
  return { mediaType: await layer.mediaType(), digest: await layer.digest(), size: await layer.size() };
}

// ---------------------------------------------------------------------------------------------------------------
// Images

export interface ImageParts {
  /** Manifest media type (default OCI). */
  mediaType?: () => Promise<string>;
  rawConfig: () => Promise<Buffer>;
  /** Config media type (default matches the manifest media type). */
  configMediaType?: () => Promise<string>;
  layers: () => Promise<Layer[]>;
  annotations?: () => Promise<Record<string, string> | undefined>;
  subject?: () => Promise<Descriptor | undefined>;
}

/** Config media type that goes with a manifest media type. */
export function configMediaTypeFor(manifestMediaType: string): string {
  return manifestMediaType === MediaType.DockerManifest ? MediaType.DockerConfig : MediaType.OCIConfig;
}

/** Build an Image whose manifest is computed (lazily, once) from a config and layers. */
export function imageFromParts(parts: ImageParts): Image {
  const mediaType = memo(async () => (parts.mediaType ? parts.mediaType() : MediaType.OCIManifest));
  const rawConfig = memo(parts.rawConfig);
  const config = memo(async () => parseJSON<ImageConfig>(await rawConfig(), 'image config'));
  const layers = memo(parts.layers);
  const rawManifest = memo(async () => {
    const mt = await mediaType();
    const cfg = await rawConfig();
    const ls = await layers();
    const m: Manifest = {
      schemaVersion: 2,
      mediaType: mt,
      config: {
        mediaType: parts.configMediaType ? await parts.configMediaType() : configMediaTypeFor(mt),
        digest: sha256(cfg),
        size: cfg.length,
      },
      layers: await Promise.all(ls.map((l) => layerDescriptor(l))),
    };
    const subject = parts.subject ? await parts.subject() : undefined;
    if (subject) m.subject = subject;
    const ann = parts.annotations ? await parts.annotations() : undefined;
    if (ann && Object.keys(ann).length > 0) m.annotations = ann;
    return Buffer.from(JSON.stringify(m));
  });
  return imageWith(mediaType, rawManifest, rawConfig, config, layers, 'image');
}

function imageWith(
  mediaType: () => Promise<string>,
  rawManifest: () => Promise<Buffer>,
  rawConfig: () => Promise<Buffer>,
  config: () => Promise<ImageConfig>,
  layers: () => Promise<Layer[]>,
  where: string,
): Image {
  const manifest = memo(async () => parseJSON<Manifest>(await rawManifest(), `${where}: manifest`));
  const digest = memo(async () => sha256(await rawManifest()));
  return {
    mediaType,
    digest,
    size: async () => (await rawManifest()).length,
    rawManifest,
    manifest,
    rawConfig,
    config,
    layers,
    layerByDigest: async (d: string) => {
      for (const l of await layers()) if ((await l.digest()) === d) return l;
      throw new KilnError('BLOB_NOT_FOUND', `${where}: image has no layer ${d}`);
    },
  };
}

/** Is this the media type of an image config (rather than an artifact's config)? */
export function isImageConfig(mt: string | undefined): boolean {
  return mt === MediaType.OCIConfig || mt === MediaType.DockerConfig;
}

function checkManifest(m: Manifest, where: string): Manifest {
  if (m === null || typeof m !== 'object' || m.schemaVersion !== 2 || !m.config || !Array.isArray(m.layers)) {
    throw new KilnError('MANIFEST_INVALID', `${where}: not a schema 2 image manifest`, {
      hint: 'docker schema 1 and non-image artifacts are not supported',
    });
  }
  return m;
}

/** An image whose manifest, config and layers are blobs in `blobs`. The manifest digest is verified on read. */
export function imageFromBlobs(blobs: BlobSource, desc: Descriptor): Image {
  const where = `${blobs.where}: manifest ${desc.digest}`;
  const rawManifest = memo(() => readBlob(blobs, desc.digest, desc.size));
  const manifest = memo(async () => checkManifest(parseJSON<Manifest>(await rawManifest(), where), where));
  const mediaType = memo(async () => (await manifest()).mediaType ?? desc.mediaType);
  const rawConfig = memo(async () => {
    const c = (await manifest()).config;
    return readBlob(blobs, c.digest, c.size);
  });
  const config = memo(async () => parseJSON<ImageConfig>(await rawConfig(), `${blobs.where}: config`));
  const layers = memo(async () => {
    const m = await manifest();
    if (!isImageConfig(m.config.mediaType)) {
      // An artifact (attestation, signature…): its "layers" need not be tars and have no diff_ids.
      return m.layers.map((d) => layerFromBlob(blobs, d));
    }
    const diffIDs = (await config()).rootfs?.diff_ids ?? [];
    if (diffIDs.length !== m.layers.length) {
      throw new KilnError(
        'MANIFEST_INVALID',
        `${where}: ${m.layers.length} layers but the config lists ${diffIDs.length} diff_ids`,
      );
    }
    return m.layers.map((d, i) => layerFromBlob(blobs, d, diffIDs[i]));
  });
  const img = imageWith(mediaType, rawManifest, rawConfig, config, layers, where);
  return { ...img, digest: async () => desc.digest, manifest };
}

/**
 * An image from a raw manifest, raw config and layers (in manifest order), e.g. reassembled from an archive.
 * The manifest is used byte-for-byte; its config digest must match `rawConfig`.
 */
export function imageFromRaw(rawManifest: Buffer, rawConfig: Buffer, layers: Layer[]): Image {
  const m = checkManifest(parseJSON<Manifest>(rawManifest, 'manifest'), 'manifest');
  if (m.config.digest !== sha256(rawConfig)) {
    throw new KilnError('DIGEST_MISMATCH', `config digest ${sha256(rawConfig)} does not match ${m.config.digest}`);
  }
  const config = memo(async () => parseJSON<ImageConfig>(rawConfig, 'image config'));
  return imageWith(
    async () => m.mediaType ?? MediaType.OCIManifest,
    async () => rawManifest,
    async () => rawConfig,
    config,
    async () => layers,
    'image',
  );
}

/** A FROM-scratch image: no layers, a minimal config for `platform`. */
export function emptyImage(platform: Platform = hostPlatform(), kind: 'oci' | 'docker' = 'oci'): Image {
  const cfg: ImageConfig = { architecture: platform.architecture, os: platform.os } as ImageConfig;
  if (platform['os.version']) cfg['os.version'] = platform['os.version'];
  if (platform.variant) cfg.variant = platform.variant;
  cfg.config = {};
  cfg.rootfs = { type: 'layers', diff_ids: [] };
  const raw = Buffer.from(JSON.stringify(cfg));
  return imageFromParts({
    mediaType: async () => (kind === 'docker' ? MediaType.DockerManifest : MediaType.OCIManifest),
    rawConfig: async () => raw,
    layers: async () => [],
  });
}

/** The platform an image's config declares. */
export async function imagePlatform(image: Image): Promise<Platform> {
  const c = await image.config();
  const p: Platform = { architecture: c.architecture, os: c.os };
  if (c.variant) p.variant = c.variant;
  if (c['os.version']) p['os.version'] = c['os.version'];
  return p;
}

/** Descriptor of an image or index (for an index's manifests list or a layout's index.json). */
export async function descriptorOf(x: Image | ImageIndex): Promise<Descriptor> {
  return { mediaType: await x.mediaType(), digest: await x.digest(), size: await x.size() };
}

// ---------------------------------------------------------------------------------------------------------------
// Indexes

function checkIndex(ix: Index, where: string): Index {
  if (ix === null || typeof ix !== 'object' || ix.schemaVersion !== 2 || !Array.isArray(ix.manifests)) {
    throw new KilnError('MANIFEST_INVALID', `${where}: not an image index`);
  }
  return ix;
}

function indexWith(
  rawManifest: () => Promise<Buffer>,
  indexManifest: () => Promise<Index>,
  defaultMediaType: string,
  child: (d: Descriptor) => { image: () => Image; index: () => ImageIndex },
  where: string,
): ImageIndex {
  const find = async (digest: string): Promise<Descriptor> => {
    const d = (await indexManifest()).manifests.find((m) => m.digest === digest);
    if (!d) throw new KilnError('MANIFEST_NOT_FOUND', `${where}: index has no manifest ${digest}`);
    return d;
  };
  return {
    mediaType: async () => (await indexManifest()).mediaType ?? defaultMediaType,
    digest: memo(async () => sha256(await rawManifest())),
    size: async () => (await rawManifest()).length,
    rawManifest,
    indexManifest,
    image: async (digest) => {
      const d = await find(digest);
      if (isIndex(d.mediaType)) throw new KilnError('NOT_AN_IMAGE', `${where}: ${digest} is an index, not an image`);
      return child(d).image();
    },
    imageIndex: async (digest) => {
      const d = await find(digest);
      if (isImageManifest(d.mediaType)) {
        throw new KilnError('NOT_AN_INDEX', `${where}: ${digest} is an image, not an index`);
      }
      return child(d).index();
    },
  };
}

/** An index whose manifest and children are blobs in `blobs`. */
export function indexFromBlobs(blobs: BlobSource, desc: Descriptor): ImageIndex {
  const where = `${blobs.where}: index ${desc.digest}`;
  const rawManifest = memo(() => readBlob(blobs, desc.digest, desc.size));
  const indexManifest = memo(async () => checkIndex(parseJSON<Index>(await rawManifest(), where), where));
  const ix = indexWith(
    rawManifest,
    indexManifest,
    desc.mediaType,
    (d) => ({ image: () => imageFromBlobs(blobs, d), index: () => indexFromBlobs(blobs, d) }),
    where,
  );
  return { ...ix, digest: async () => desc.digest };
}

export interface IndexEntry {
  image: Image | ImageIndex;
  /** Defaults to the platform in the image's config (none for nested indexes). */
  platform?: Platform;
  annotations?: Record<string, string>;
}

/** A new index over `entries` (OCI index or Docker manifest list). */
export function newIndex(
  entries: IndexEntry[],
  opts: { kind?: 'oci' | 'docker'; annotations?: Record<string, string> } = {},
): ImageIndex {
  const mt = opts.kind === 'docker' ? MediaType.DockerManifestList : MediaType.OCIIndex;
  const byDigest = new Map<string, Image | ImageIndex>();
  const rawManifest = memo(async () => {
    const manifests: Descriptor[] = [];
    for (const e of entries) {
      const d = await descriptorOf(e.image);
      byDigest.set(d.digest, e.image);
      const platform = e.platform ?? (isImageIndex(e.image) ? undefined : await imagePlatform(e.image));
      if (platform) d.platform = platform;
      if (e.annotations) d.annotations = e.annotations;
      manifests.push(d);
    }
    const ix: Index = { schemaVersion: 2, mediaType: mt, manifests };
    if (opts.annotations) ix.annotations = opts.annotations;
    return Buffer.from(JSON.stringify(ix));
  });
  const indexManifest = memo(async () => parseJSON<Index>(await rawManifest(), 'index'));
  return indexWith(
    rawManifest,
    indexManifest,
    mt,
    (d) => ({
      image: () => byDigest.get(d.digest) as Image,
      index: () => byDigest.get(d.digest) as ImageIndex,
    }),
    'index',
  );
}

/** The image in `index` (searched recursively) for `platform` (default: the host's). */
export async function imageForPlatform(index: ImageIndex, platform: Platform = hostPlatform()): Promise<Image> {
  const ix = await index.indexManifest();
  const d = selectManifest(ix, platform);
  if (d) {
    if (isIndex(d.mediaType)) return imageForPlatform(await index.imageIndex(d.digest), platform);
    return index.image(d.digest);
  }
  for (const m of ix.manifests) {
    if (isIndex(m.mediaType)) {
      try {
        return await imageForPlatform(await index.imageIndex(m.digest), platform);
      } catch (e) {
        if (!(e instanceof KilnError && e.code === 'PLATFORM_NOT_FOUND')) throw e;
      }
    }
  }
  const have = ix.manifests
    .map((m) => (m.platform ? formatPlatform(m.platform) : undefined))
    .filter((x) => x && x !== 'unknown/unknown');
  throw new KilnError('PLATFORM_NOT_FOUND', `no image for platform ${formatPlatform(platform)} in index`, {
    hint: have.length ? `available: ${have.join(', ')}` : undefined,
  });
}
