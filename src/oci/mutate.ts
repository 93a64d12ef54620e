/**
 * Image mutations. Each returns a new Image (the input is untouched) whose manifest, config and digests are
 * recomputed lazily from the base's. The raw config bytes of the base are kept byte-for-byte unless the config
 * itself changes, so e.g. switching manifest media types keeps the config digest (the image ID).
 */
import { KilnError } from '../errors.js';
import { memo } from '../util/memo.js';
import { type Compression } from './compress.js';
import {
  DockerLayerTar,
  OCIForeignLayerGzip,
  configMediaTypeFor,
  imageFromParts,
  layerFromUncompressed,
  withLayerMediaType,
} from './image.js';
import { MediaType, layerCompression } from './mediatypes.js';
import type { History, Image, ImageConfig, Layer } from './types.js';

/** What a mutation may override; unset fields come from the base image. */
interface Overrides {
  mediaType?: () => Promise<string>;
  rawConfig?: () => Promise<Buffer>;
  configMediaType?: () => Promise<string>;
  layers?: () => Promise<Layer[]>;
  annotations?: () => Promise<Record<string, string> | undefined>;
}

function derive(base: Image, o: Overrides): Image {
  return imageFromParts({
    mediaType: o.mediaType ?? (() => base.mediaType()),
    rawConfig: o.rawConfig ?? (() => base.rawConfig()),
    configMediaType:
      o.configMediaType ??
      (async () => {
        // Keep the base's config media type, unless the manifest type changed (then follow it).
        const m = await base.manifest();
        const mt = o.mediaType ? await o.mediaType() : await base.mediaType();
        return mt === (await base.mediaType()) ? m.config.mediaType : configMediaTypeFor(mt);
      }),
    layers: o.layers ?? (() => base.layers()),
    annotations: o.annotations ?? (async () => (await base.manifest()).annotations),
    subject: async () => (await base.manifest()).subject,
  });
}

const toDocker: Record<string, string> = {
  [MediaType.OCILayerGzip]: MediaType.DockerLayerGzip,
  [MediaType.OCILayer]: DockerLayerTar,
  [OCIForeignLayerGzip]: MediaType.DockerForeignLayerGzip,
};
const toOCI: Record<string, string> = Object.fromEntries(Object.entries(toDocker).map(([a, b]) => [b, a]));

export interface Addendum {
  layer: Layer;
  /** History entry for the layer (default `{}`); `empty_layer` is forced off. */
  history?: History;
}

/**
 * Append layers (with their history entries and diff_ids) to an image. Added layers take the media type family
 * of the base manifest (an OCI gzip layer appended to a Docker image is described as a Docker gzip layer).
 */
export function appendLayers(base: Image, adds: Addendum[]): Image {
  const rawConfig = memo(async () => {
    const cfg = structuredClone(await base.config());
    cfg.rootfs = { type: 'layers', diff_ids: [...(cfg.rootfs?.diff_ids ?? [])] };
    cfg.history = [...(cfg.history ?? [])];
    for (const a of adds) {
      cfg.rootfs.diff_ids.push(await a.layer.diffID());
      const h: History = { ...(a.history ?? {}) };
      delete h.empty_layer;
      cfg.history.push(h);
    }
    return Buffer.from(JSON.stringify(cfg));
  });
  return derive(base, {
    rawConfig,
    layers: async () => {
      const map = (await base.mediaType()) === MediaType.DockerManifest ? toDocker : toOCI;
      const added = await Promise.all(
        adds.map(async ({ layer }) => {
          const to = map[await layer.mediaType()];
          return to ? withLayerMediaType(layer, to) : layer;
        }),
      );
      return [...(await base.layers()), ...added];
    },
  });
}

/** Replace the config with `fn(config)` (which gets a private copy). rootfs.diff_ids must stay consistent. */
export function withConfig(image: Image, fn: (cfg: ImageConfig) => ImageConfig | Promise<ImageConfig>): Image {
  const rawConfig = memo(async () => {
    const before = await image.config();
    const after = await fn(structuredClone(before));
    const n = (await image.layers()).length;
    if ((after.rootfs?.diff_ids?.length ?? 0) !== n) {
      throw new KilnError(
        'CONFIG_INVALID',
        `config change left ${after.rootfs?.diff_ids?.length ?? 0} diff_ids for ${n} layers`,
      );
    }
    return Buffer.from(JSON.stringify(after));
  });
  return derive(image, { rawConfig });
}

/**
 * Convert to OCI or Docker schema 2 media types (manifest, config and layers). Layer bytes and the raw config are
 * unchanged. zstd layers have no Docker media type: converting them to 'docker' fails with MEDIATYPE_UNSUPPORTED.
 */
export function withManifestMediaType(image: Image, kind: 'oci' | 'docker'): Image {
  const mt = kind === 'docker' ? MediaType.DockerManifest : MediaType.OCIManifest;
  const map = kind === 'docker' ? toDocker : toOCI;
  return derive(image, {
    mediaType: async () => mt,
    configMediaType: async () => configMediaTypeFor(mt),
    layers: async () =>
      Promise.all(
        (await image.layers()).map(async (l) => {
          const lmt = await l.mediaType();
          if (kind === 'docker' && lmt === MediaType.OCILayerZstd) {
            throw new KilnError('MEDIATYPE_UNSUPPORTED', 'zstd layers cannot be described by a Docker manifest', {
              hint: 'use OCI media types (oci-mediatypes=true) with zstd compression',
            });
          }
          const to = map[lmt];
          return to ? withLayerMediaType(l, to) : l;
        }),
      ),
  });
}

/** Merge manifest annotations (a value of `undefined`… is not possible: pass a new map to replace). */
export function withAnnotations(image: Image, annotations: Record<string, string>, replace = false): Image {
  return derive(image, {
    annotations: async () => ({ ...(replace ? {} : ((await image.manifest()).annotations ?? {})), ...annotations }),
  });
}

/**
 * Re-encode every layer whose compression differs from `c` (e.g. uncompressed docker-archive layers → gzip before a
 * push). Layers are decompressed and recompressed lazily; media types follow the manifest kind.
 */
export function withLayerCompression(image: Image, c: Compression): Image {
  return derive(image, {
    layers: async () => {
      const docker = (await image.mediaType()) === MediaType.DockerManifest;
      return Promise.all(
        (await image.layers()).map(async (l) => {
          const lmt = await l.mediaType();
          if (layerCompression(lmt) === c) return l;
          if (c === 'zstd' && docker) {
            throw new KilnError('MEDIATYPE_UNSUPPORTED', 'zstd layers cannot be described by a Docker manifest');
          }
          const mediaType =
            c === 'gzip'
              ? docker
                ? MediaType.DockerLayerGzip
                : MediaType.OCILayerGzip
              : c === 'zstd'
                ? MediaType.OCILayerZstd
                : docker
                  ? DockerLayerTar
                  : MediaType.OCILayer;
          return layerFromUncompressed(() => l.uncompressed(), {
            compression: c,
            diffID: await l.diffID(),
            mediaType,
            what: `layer ${await l.digest()}`,
          });
        }),
      );
    },
  });
}
