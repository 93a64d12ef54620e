/**
 * Images and indexes in a registry, implementing the lazy interfaces of src/oci/types.ts: nothing is fetched until
 * asked, every fetch is memoized, manifests are digest-checked (always computed; verified when pulled by digest)
 * and blobs stream through a digest verifier. Layers remember where they came from (`origin`) so a push to the same
 * registry can mount them instead of copying bytes.
 */
import { Readable, Transform } from 'node:stream';
import { KilnError } from '../errors.js';
import { verifyingStream } from '../oci/digest.js';
import { readBlob } from '../oci/blobs.js';
import { decompress } from '../oci/compress.js';
import { isImageManifest, isIndex, layerCompression, MediaType } from '../oci/mediatypes.js';
import { hostPlatform, formatPlatform, selectManifest } from '../oci/platform.js';
import type { Descriptor, Image, ImageConfig, ImageIndex, Index, Layer, Manifest, Platform } from '../oci/types.js';
import { memo } from '../util/memo.js';
import { shortDigest, type Progress } from '../progress.js';
import { RepositoryClient, type FetchedManifest } from './client.js';
import { originIndexFor } from './origins.js';
import { parseReference, type Reference } from './reference.js';
import { withLabel, type RegistryOptions } from './transport.js';

/** Where a remote blob lives. */
export interface BlobOrigin {
  registry: string;
  repository: string;
}

/** A Layer that knows its registry origin (for cross-repository mounts). */
export interface RemoteLayer extends Layer {
  readonly origin: BlobOrigin;
}

export function isRemoteLayer(l: Layer): l is RemoteLayer {
  return typeof (l as Partial<RemoteLayer>).origin === 'object';
}

/** An image or index that came from a registry. */
export interface RemoteOrigin {
  readonly origin: BlobOrigin;
}

function parseJson<T>(raw: Buffer, where: string): T {
  try {
    return JSON.parse(raw.toString('utf8')) as T;
  } catch (e) {
    throw new KilnError('MANIFEST_INVALID', `${where}: invalid JSON`, { cause: e });
  }
}

/** Report a blob stream's bytes to a progress reporter (start on open, done at its end, error on failure). */
function reported(s: Readable, p: Progress | undefined, digest: string, size: number): Readable {
  if (!p || p.mode === 'quiet') return s;
  const id = digest;
  p.start(id, `blob ${shortDigest(digest)}`, size);
  let n = 0;
  const t = new Transform({
    transform(chunk: Buffer, _e, cb) {
      n += chunk.length;
      p.update(id, n, size);
      cb(null, chunk);
    },
    flush(cb) {
      p.done(id, 'pulled');
      cb();
    },
  });
  s.on('error', (e) => {
    p.error(id, e.message);
    t.destroy(e);
  });
  return s.pipe(t);
}

function remoteLayer(
  client: RepositoryClient,
  desc: Descriptor,
  diffID: string | undefined,
  progress?: Progress,
): RemoteLayer {
  const comp = layerCompression(desc.mediaType);
  const what = `${client.label}: layer ${desc.digest}`;
  return {
    origin: { registry: client.registry, repository: client.repository },
    digest: async () => desc.digest,
    size: async () => desc.size,
    mediaType: async () => desc.mediaType,
    diffID: async () => {
      if (diffID) return diffID;
      if (comp === 'none') return desc.digest;
      throw new KilnError('MANIFEST_INVALID', `${what}: no diff_id in the image config`);
    },
    compressed: async () => reported(await client.blob(desc.digest, desc.size), progress, desc.digest, desc.size),
    uncompressed: async () => {
      const s = decompress(await client.blob(desc.digest, desc.size), comp, what);
      if (comp === 'none' || !diffID) return s;
      const v = verifyingStream(diffID, `${what} (uncompressed)`);
      s.on('error', (e) => v.destroy(e));
      return s.pipe(v);
    },
    descriptor: async () => ({ ...desc }),
  };
}

/** An image manifest in a registry. */
export function remoteImage(
  client: RepositoryClient,
  fetched: () => Promise<FetchedManifest>,
  progress?: Progress,
): Image & RemoteOrigin {
  const f = memo(fetched);
  const manifest = memo(async () => {
    const { raw, digest } = await f();
    const m = parseJson<Manifest>(raw, `${client.label}: manifest ${digest}`);
    if (m.schemaVersion !== 2 || !m.config || !Array.isArray(m.layers)) {
      throw new KilnError('MANIFEST_INVALID', `${client.label}: manifest ${digest} is not a schema 2 image manifest`, {
        hint: 'docker schema 1 manifests and non-image artifacts are not supported',
      });
    }
    // the registry holds every blob a manifest it serves names: remember where, for later cross-repository mounts
    const origin = { registry: client.registry, repository: client.repository };
    void originIndexFor(client.opts)?.recordAll(
      [m.config, ...m.layers].map((d) => (d as Partial<Descriptor> | null)?.digest),
      origin,
    );
    return m;
  });
  const rawConfig = memo(async () => {
    const c = (await manifest()).config;
    const cache = client.opts.configCache;
    if (cache && (await cache.has(c.digest))) {
      try {
        return await readBlob(cache, c.digest, c.size);
      } catch {
        await cache.remove(c.digest).catch(() => undefined); // damaged: fetched again below, and stored again
      }
    }
    const raw = await client.blobBuffer(c.digest, c.size);
    await cache?.write(Readable.from([raw]), { digest: c.digest, size: c.size }).catch(() => undefined);
    return raw;
  });
  const config = memo(async () => parseJson<ImageConfig>(await rawConfig(), `${client.label}: config`));
  const layers = memo(async () => {
    const m = await manifest();
    const cfg = await config();
    const diffIDs = cfg.rootfs?.diff_ids ?? [];
    if (
      diffIDs.length !== m.layers.length &&
      (m.config.mediaType === MediaType.OCIConfig || m.config.mediaType === MediaType.DockerConfig)
    ) {
      throw new KilnError(
        'MANIFEST_INVALID',
        `${client.label}: ${m.layers.length} layers but the config lists ${diffIDs.length} diff_ids`,
      );
    }
    return m.layers.map((d, i) => remoteLayer(client, d, diffIDs[i], progress));
  });
  return {
    origin: { registry: client.registry, repository: client.repository },
    mediaType: async () => (await manifest()).mediaType ?? (await f()).mediaType,
    digest: async () => (await f()).digest,
    size: async () => (await f()).raw.length,
    rawManifest: async () => (await f()).raw,
    manifest,
    rawConfig,
    config,
    layers,
    layerByDigest: async (d) => {
      for (const l of await layers()) if ((await l.digest()) === d) return l;
      throw new KilnError('BLOB_NOT_FOUND', `${client.label}: image has no layer ${d}`);
    },
  };
}

/** An image index / manifest list in a registry. */
export function remoteIndex(
  client: RepositoryClient,
  fetched: () => Promise<FetchedManifest>,
  progress?: Progress,
): ImageIndex & RemoteOrigin {
  const f = memo(fetched);
  const indexManifest = memo(async () => {
    const { raw, digest } = await f();
    const ix = parseJson<Index>(raw, `${client.label}: index ${digest}`);
    if (ix.schemaVersion !== 2 || !Array.isArray(ix.manifests)) {
      throw new KilnError('MANIFEST_INVALID', `${client.label}: ${digest} is not an image index`);
    }
    return ix;
  });
  const child = async (digest: string): Promise<Descriptor> => {
    const d = (await indexManifest()).manifests.find((m) => m.digest === digest);
    if (!d) throw new KilnError('MANIFEST_NOT_FOUND', `${client.label}: index has no manifest ${digest}`);
    return d;
  };
  return {
    origin: { registry: client.registry, repository: client.repository },
    mediaType: async () => (await indexManifest()).mediaType ?? (await f()).mediaType,
    digest: async () => (await f()).digest,
    size: async () => (await f()).raw.length,
    rawManifest: async () => (await f()).raw,
    indexManifest,
    image: async (digest) => {
      const d = await child(digest);
      if (isIndex(d.mediaType)) throw new KilnError('NOT_AN_IMAGE', `${client.label}: ${digest} is an index`);
      return remoteImage(client, () => client.getManifest(digest, d.mediaType || undefined), progress);
    },
    imageIndex: async (digest) => {
      const d = await child(digest);
      if (isImageManifest(d.mediaType)) throw new KilnError('NOT_AN_INDEX', `${client.label}: ${digest} is an image`);
      return remoteIndex(client, () => client.getManifest(digest), progress);
    },
  };
}

export interface GetOptions extends RegistryOptions {
  /** Label for errors; default `pull REF`. */
  label?: string;
  /** Reports layer downloads (when their streams are read). */
  pullProgress?: Progress;
}

/** Fetch the manifest `ref` names and wrap it as an Image or an ImageIndex. */
export async function getRemote(
  ref: Reference | string,
  opts: GetOptions = {},
): Promise<(Image | ImageIndex) & RemoteOrigin> {
  const r = typeof ref === 'string' ? parseReference(ref) : ref;
  const client = new RepositoryClient(r, opts, opts.label ?? `pull ${r.toString()}`);
  const fetched = await client.getManifest(r.identifier());
  if (isIndex(fetched.mediaType)) return remoteIndex(client, async () => fetched, opts.pullProgress);
  if (isImageManifest(fetched.mediaType)) return remoteImage(client, async () => fetched, opts.pullProgress);
  throw new KilnError('UNSUPPORTED_MEDIA_TYPE', `${client.label}: unsupported manifest type ${fetched.mediaType}`, {
    hint: 'kiln handles OCI and Docker schema 2 images and indexes',
  });
}

export function isRemoteIndex(x: Image | ImageIndex): x is ImageIndex {
  return typeof (x as Partial<ImageIndex>).indexManifest === 'function';
}

/** Fetch `ref` and resolve an index to the image for `platform` (default: the host's). */
export async function getRemoteImage(
  ref: Reference | string,
  opts: GetOptions & { platform?: Platform } = {},
): Promise<Image & RemoteOrigin> {
  const r = typeof ref === 'string' ? parseReference(ref) : ref;
  const label = opts.label ?? `pull ${r.toString()}`;
  let x = await getRemote(r, withLabel(opts, label));
  const want = opts.platform ?? hostPlatform();
  for (let depth = 0; isRemoteIndex(x); depth++) {
    if (depth > 4) throw new KilnError('MANIFEST_INVALID', `${label}: indexes nested too deeply`);
    const ix = await x.indexManifest();
    const d = selectManifest(ix, want);
    if (!d) {
      const have = ix.manifests.map((m) => (m.platform ? formatPlatform(m.platform) : '?')).join(', ');
      throw new KilnError('PLATFORM_NOT_FOUND', `${label}: no image for platform ${formatPlatform(want)}`, {
        hint: `available: ${have || 'none'}`,
      });
    }
    if (isIndex(d.mediaType)) x = (await x.imageIndex(d.digest)) as ImageIndex & RemoteOrigin;
    else return (await x.image(d.digest)) as Image & RemoteOrigin;
  }
  return x as Image & RemoteOrigin;
}

/** Stream of one blob of a repository, verified (for tools that need raw blobs). */
export async function fetchBlob(ref: Reference, digest: string, opts: GetOptions = {}): Promise<Readable> {
  const client = new RepositoryClient(ref, opts, opts.label ?? `pull ${ref.toString()}`);
  return client.blob(digest);
}
