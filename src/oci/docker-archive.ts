/**
 * `docker save` / `docker load` archives.
 *
 * Writing produces the classic format that every docker (20.10 … 26+), skopeo and crane load: `manifest.json`
 * (`[{Config, RepoTags, Layers}]`), the config as `<config hex>.json`, each layer as an *uncompressed* tar at
 * `<diffID hex>/layer.tar` (with a `VERSION` file), and a legacy `repositories` file. Compressed layers are
 * decompressed while writing (spooled to a temp file next to the archive, since tar headers need sizes first).
 * The archive is written to a temp file and renamed into place.
 *
 * Reading accepts that format and the newer docker 25+ one (layers and config under `blobs/sha256/`, paths given
 * by manifest.json, symlinks followed inside the archive), plain or gzip/zstd-compressed (`docker save | gzip`).
 * The tar is indexed in place, never extracted (a compressed one is first decompressed to an anonymous temp file).
 * Layers are exposed as they are stored — normally uncompressed (`application/vnd.docker.image.rootfs.diff.tar`,
 * digest = diffID, verified while streaming) — in a Docker schema 2 manifest. Pass `{compression: 'gzip'}` (or use
 * `withLayerCompression`) to get lazily gzip-compressed layers for pushing to a registry.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createReadStream, createWriteStream } from 'node:fs';
import { dirname, join, basename, posix } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { KilnError } from '../errors.js';
import { parseReferenceWithDefaultTag } from '../ref/reference.js';
import { parseJSON } from './blobs.js';
import { type Compression, sniffCompression } from './compress.js';
import { DigestingStream, digestHex, sha256, verifyingStream } from './digest.js';
import { DockerLayerTar, imageFromParts, layerFromOpener } from './image.js';
import { MediaType } from './mediatypes.js';
import { withLayerCompression, withManifestMediaType } from './mutate.js';
import { TarIndex, TarWriter } from './tarfile.js';
import { destinationError, prepareFileDest } from './fsutil.js';
import type { Image, ImageConfig, Layer } from './types.js';

/** One entry of a docker-save manifest.json. */
export interface DockerArchiveManifestEntry {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
  LayerSources?: Record<string, unknown>;
}

/** docker's familiar form of a tag (`busybox:latest`, `localhost:5000/app:v1`); invalid names are kept as is. */
function familiarTag(t: string): string {
  try {
    return parseReferenceWithDefaultTag(t).familiar();
  } catch {
    return t;
  }
}

function normalizedTag(t: string): string | undefined {
  try {
    return parseReferenceWithDefaultTag(t).toString();
  } catch {
    return undefined;
  }
}

/** Write images with their tags as a docker-save archive at `file` (atomically). */
export async function writeDockerArchive(file: string, entries: { image: Image; tags?: string[] }[]): Promise<void> {
  await prepareFileDest(file, 'docker archive');
  const spool = await mkdtemp(join(dirname(file), `.${basename(file)}.kiln-spool-`)).catch((e: unknown) => {
    throw destinationError(e, file, 'docker archive');
  });
  const w = new TarWriter(file);
  try {
    const manifest: DockerArchiveManifestEntry[] = [];
    const repositories: Record<string, Record<string, string>> = {};
    const written = new Set<string>();
    for (const { image, tags = [] } of entries) {
      const rawConfig = await image.rawConfig();
      const cfgName = `${digestHex(sha256(rawConfig))}.json`;
      if (!written.has(cfgName)) {
        written.add(cfgName);
        await w.addBytes(cfgName, rawConfig);
      }
      const layers = await image.layers();
      const paths: string[] = [];
      for (const l of layers) {
        const hex = digestHex(await l.diffID());
        const p = `${hex}/layer.tar`;
        paths.push(p);
        if (written.has(p)) continue;
        written.add(p);
        await w.addDir(hex);
        await w.addBytes(`${hex}/VERSION`, '1.0');
        await addUncompressedLayer(w, p, l, join(spool, hex));
      }
      const repoTags = tags.map(familiarTag);
      manifest.push({ Config: cfgName, RepoTags: repoTags, Layers: paths });
      const top = paths.length ? paths[paths.length - 1]!.split('/')[0]! : undefined;
      for (const t of repoTags) {
        const i = t.lastIndexOf(':');
        if (top && i > 0 && !t.slice(i).includes('/')) {
          (repositories[t.slice(0, i)] ??= {})[t.slice(i + 1)] = top;
        }
      }
    }
    await w.addBytes('manifest.json', JSON.stringify(manifest));
    if (Object.keys(repositories).length) await w.addBytes('repositories', JSON.stringify(repositories));
    await w.commit();
  } catch (e) {
    await w.abort();
    throw destinationError(e, file, 'docker archive');
  } finally {
    await rm(spool, { recursive: true, force: true });
  }
}

async function addUncompressedLayer(w: TarWriter, name: string, l: Layer, tmp: string): Promise<void> {
  const mt = await l.mediaType();
  if (mt === MediaType.OCILayer || mt === DockerLayerTar) {
    await w.addStream(name, await l.size(), await l.compressed());
    return;
  }
  // Size of the uncompressed tar is needed before its bytes: spool it (verified against the diffID).
  const diffID = await l.diffID();
  const counter = new DigestingStream();
  await pipeline(await l.uncompressed(), counter, verifyingStream(diffID, `layer ${diffID}`), createWriteStream(tmp));
  try {
    await w.addStream(name, counter.size(), createReadStream(tmp));
  } finally {
    await rm(tmp, { force: true });
  }
}

function invalid(file: string, why: string, hint?: string): KilnError {
  return new KilnError('DOCKER_ARCHIVE_INVALID', `${file}: ${why}`, { hint });
}

async function readManifestJSON(tar: TarIndex): Promise<DockerArchiveManifestEntry[]> {
  const file = tar.file;
  if (!tar.find('manifest.json')) {
    const oci = tar.find('oci-layout') !== undefined;
    throw invalid(
      file,
      'no manifest.json — not a docker-save archive',
      oci ? 'this is an OCI layout archive; read it as oci-archive' : undefined,
    );
  }
  const m = parseJSON<DockerArchiveManifestEntry[]>(await tar.readEntry('manifest.json'), `${file}:manifest.json`);
  if (!Array.isArray(m) || m.some((e) => !e || typeof e.Config !== 'string' || !Array.isArray(e.Layers))) {
    throw invalid(file, 'manifest.json: expected a list of {Config, RepoTags, Layers}');
  }
  return m;
}

/** The tags of every image in a docker-save archive (one list per image, in manifest order). */
export async function dockerArchiveTags(file: string): Promise<string[][]> {
  return (await readManifestJSON(await TarIndex.open(file))).map((e) => e.RepoTags ?? []);
}

/**
 * Read one image from a docker-save archive: the one tagged `tag` (docker's normalisation: `busybox` =
 * `docker.io/library/busybox:latest`), or the only image when `tag` is omitted.
 */
export async function readDockerArchive(
  file: string,
  tag?: string,
  opts: { compression?: Compression } = {},
): Promise<Image> {
  const tar = await TarIndex.open(file);
  const entries = await readManifestJSON(tar);
  let entry: DockerArchiveManifestEntry | undefined;
  const all = (): string => entries.flatMap((e) => e.RepoTags ?? []).join(', ') || '(untagged)';
  if (tag === undefined) {
    if (entries.length !== 1) {
      throw new KilnError(
        entries.length ? 'IMAGE_AMBIGUOUS' : 'IMAGE_NOT_FOUND',
        `${file}: archive holds ${entries.length} images; name one`,
        { hint: `tags: ${all()}` },
      );
    }
    entry = entries[0];
  } else {
    const want = normalizedTag(tag) ?? tag;
    entry = entries.find((e) => (e.RepoTags ?? []).some((t) => t === tag || normalizedTag(t) === want));
    if (!entry) throw new KilnError('IMAGE_NOT_FOUND', `${file}: no image tagged "${tag}"`, { hint: `tags: ${all()}` });
  }
  const e = entry!;
  const cfgPath = posix.normalize(e.Config);
  if (!tar.find(cfgPath)) throw invalid(file, `config ${cfgPath} listed in manifest.json is missing`);
  const rawConfig = await tar.readEntry(cfgPath);
  const cfgDigest = sha256(rawConfig);
  const named = /([a-f0-9]{64})(\.json)?$/.exec(cfgPath)?.[1];
  if (named && named !== digestHex(cfgDigest)) {
    throw new KilnError(
      'DIGEST_MISMATCH',
      `${file}:${cfgPath}: config content digest ${cfgDigest} does not match its name`,
      {
        hint: 'the archive is corrupt',
      },
    );
  }
  const config = parseJSON<ImageConfig>(rawConfig, `${file}:${cfgPath}`);
  const diffIDs = config?.rootfs?.diff_ids ?? [];
  if (diffIDs.length !== e.Layers.length) {
    throw invalid(file, `${e.Layers.length} layers in manifest.json but ${diffIDs.length} diff_ids in ${cfgPath}`);
  }
  const layers: Layer[] = [];
  for (let i = 0; i < e.Layers.length; i++) {
    const p = posix.normalize(e.Layers[i]!);
    const ent = tar.find(p);
    if (!ent) throw invalid(file, `layer ${p} listed in manifest.json is missing`);
    const c = sniffCompression(await tar.readHead(ent, 4));
    const diffID = diffIDs[i]!;
    // Uncompressed (the norm): the blob is the tar, so its digest is the diffID, verified while streaming.
    // Compressed (tolerated by docker load): digest computed lazily by one pass.
    const mediaType = c === 'none' ? DockerLayerTar : c === 'gzip' ? MediaType.DockerLayerGzip : MediaType.OCILayerZstd;
    layers.push(
      layerFromOpener(async () => tar.openEntry(p), {
        mediaType,
        ...(c === 'none' ? { digest: diffID } : {}),
        size: ent.size,
        diffID,
        what: `${file}:${p}`,
      }),
    );
  }
  let img = imageFromParts({
    mediaType: async () => MediaType.DockerManifest,
    rawConfig: async () => rawConfig,
    layers: async () => layers,
  });
  // Docker manifests cannot describe zstd layers: use OCI media types then.
  const types = await Promise.all(layers.map((l) => l.mediaType()));
  if (types.includes(MediaType.OCILayerZstd)) img = withManifestMediaType(img, 'oci');
  return opts.compression && opts.compression !== 'none' ? withLayerCompression(img, opts.compression) : img;
}
