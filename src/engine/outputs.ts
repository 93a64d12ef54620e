/**
 * Build outputs (buildx `--output`): push to a registry (`type=registry`, `type=image,push=true`, `--push`), an OCI
 * layout or its tar (`type=oci`), a docker-archive tar (`type=docker`), the final root filesystem as a directory
 * (`type=local`, whiteouts applied) or as a tar (`type=tar`); plus `--iidfile` and `--metadata-file`.
 *
 * Manifest media types follow BuildKit: Docker schema 2 for registry/image/docker outputs unless
 * `oci-mediatypes=true`, OCI for `type=oci` unless `oci-mediatypes=false`. The config bytes (and thus the image
 * ID) are the same in every output.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KilnError } from '../errors.js';
import type { Image } from '../oci/types.js';
import { sha256 } from '../oci/digest.js';
import { destinationError, ensureDir, prepareFileDest } from '../oci/fsutil.js';
import { withManifestMediaType } from '../oci/mutate.js';
import { MediaType } from '../oci/mediatypes.js';
import { extractLayer } from '../layer/extract.js';
import { isRealRoot } from '../layer/fsops.js';
import { layerTar } from '../layer/writer.js';
import { noteMadeBlob } from '../util/made.js';
import { parseReferenceWithDefaultTag } from '../registry/reference.js';
import { push, PushSession, type PushOptions } from '../registry/push.js';
import type { BuildOptions, OutputSpec } from './options.js';

/** Default outputs: `--output`s, else `--push` (registry) or the local store, under the -t names. */
export function effectiveOutputs(opts: Pick<BuildOptions, 'outputs' | 'push'>): BuildOptions['outputs'] {
  if (opts.outputs.length > 0) {
    if (opts.push) {
      return opts.outputs.map((o) => (o.type === 'image' ? { ...o, push: true } : o));
    }
    return opts.outputs;
  }
  return [{ type: opts.push ? 'registry' : 'image', names: [], push: opts.push, tar: false, attrs: {} }];
}

/** What the exporters produced, as buildx reports it in --metadata-file. */
export interface ExportResult {
  /** Manifest digest (`containerimage.digest`). */
  digest: string;
  /** Config digest = image ID (`containerimage.config.digest`). */
  configDigest: string;
  /** The manifest descriptor (`containerimage.descriptor`). */
  descriptor: { mediaType: string; digest: string; size: number };
  /** Image names written or pushed (`image.name`). */
  names: string[];
  /** The names that were pushed to registries. */
  pushed: string[];
}

/** Writers the build uses for outputs that live in other modules (local store, layout and archive writers). */
export interface OutputWriters {
  /** Store the image in the local store under `names` (default output). */
  saveLocal?: (image: Image, names: string[]) => Promise<void>;
  /** Write an OCI layout dir (`tar=false`) or tar (`dest` file, or '-' for stdout). */
  writeOCI?: (
    image: Image,
    dest: string,
    opts: { tar: boolean; names: string[]; annotations: Record<string, string> },
  ) => Promise<void>;
  /** Write a docker-archive tar (`docker load` format). */
  writeDocker?: (image: Image, dest: string, names: string[]) => Promise<void>;
}

export interface ExportOptions {
  outputs: OutputSpec[];
  tags: string[];
  registry: PushOptions;
  writers: OutputWriters;
  /** The final root filesystem: layers in order (for local/tar outputs). */
  layers: { uncompressed: () => Promise<Readable>; digest: string }[];
  /** `org.opencontainers.image.created` and base image annotations for layout index entries. */
  annotations: Record<string, string>;
  /** Scratch space for tar outputs. */
  tmpDir: string;
  sourceDateEpoch?: number;
  /** Interrupts stop the export before the next output / push (nothing half-named). */
  signal?: AbortSignal;
  /** Pushes already under way (layers uploaded during the build), by reference. */
  sessions?: Map<string, PushSession>;
}

/** One push session per registry name the outputs push to (see PushSession); invalid names are left to export. */
export function pushSessions(outputs: OutputSpec[], tags: string[], registry: PushOptions): Map<string, PushSession> {
  const sessions = new Map<string, PushSession>();
  for (const o of outputs) {
    if ((o.type !== 'registry' && o.type !== 'image') || !o.push) continue;
    for (const n of o.names.length > 0 ? o.names : tags) {
      try {
        const ref = parseReferenceWithDefaultTag(n);
        sessions.set(ref.toString(), new PushSession(ref, registry));
      } catch {
        /* exportImage reports it */
      }
    }
  }
  return sessions;
}

function boolAttr(v: string | undefined, def: boolean): boolean {
  if (v === undefined) return def;
  return v === '' || v === 'true' || v === '1';
}

/** Media types of an output: `oci-mediatypes=` if given; else OCI for type=oci and for zstd layers (as BuildKit). */
function mediaTypesFor(o: OutputSpec, zstd = false): 'oci' | 'docker' {
  const def = o.type === 'oci' || zstd;
  return boolAttr(o.attrs['oci-mediatypes'], def) ? 'oci' : 'docker';
}

/** Write `dest` (a file path or '-' for stdout) from a producer, atomically for files. */
async function toFileOrStdout(dest: string, produce: (w: Writable) => Promise<void>): Promise<void> {
  if (dest === '-') {
    await produce(process.stdout);
    return;
  }
  await prepareFileDest(dest, 'tar output');
  const tmp = `${dest}.kiln-tmp-${process.pid}`;
  try {
    const ws = createWriteStream(tmp, { flags: 'w', mode: 0o644 });
    await produce(ws);
    await rename(tmp, dest);
  } catch (e) {
    await rm(tmp, { force: true });
    throw destinationError(e, dest, 'tar output');
  }
}

/**
 * Apply the layers in order onto `dir` (whiteouts delete, opaque dirs reset). `chown` applies the image's owners
 * (default: when running as uid 0, also inside the build user namespace).
 */
export async function materializeRootfs(
  layers: ExportOptions['layers'],
  dir: string,
  opts: { chown?: boolean } = {},
): Promise<void> {
  await ensureDir(dir, dir, 'local output');
  for (const l of layers) {
    const o: { mode: 'apply'; digest: string; chown?: boolean } = { mode: 'apply', digest: l.digest };
    if (opts.chown !== undefined) o.chown = opts.chown;
    await extractLayer(await l.uncompressed(), dir, o);
  }
}

/** Run every requested output; returns what buildx would report. Nothing is pushed when an earlier step failed. */
export async function exportImage(image: Image, opts: ExportOptions): Promise<ExportResult> {
  const rawConfig = await image.rawConfig();
  const configDigest = sha256(rawConfig);
  noteMadeBlob(configDigest); // pushed without a HEAD first unless the origin index knows it (src/util/made.ts)
  const names: string[] = [];
  const pushed: string[] = [];
  let result: { digest: string; mediaType: string; size: number } | undefined;
  const record = async (img: Image): Promise<void> => {
    if (!result) result = { digest: await img.digest(), mediaType: await img.mediaType(), size: await img.size() };
  };
  const outputs = opts.outputs;
  const zstd = (await image.manifest()).layers.some((l) => l.mediaType === MediaType.OCILayerZstd);
  const check = (): void => {
    if (opts.signal?.aborted) throw new KilnError('INTERRUPTED', 'build interrupted');
  };
  for (const o of outputs) {
    check();
    const oNames = o.names.length > 0 ? o.names : opts.tags;
    switch (o.type) {
      case 'registry':
      case 'image': {
        const img = withManifestMediaType(image, mediaTypesFor(o, zstd));
        await record(img);
        if (o.push) {
          if (oNames.length === 0) {
            throw new KilnError('OUTPUT_INVALID', 'push requires an image name', {
              hint: 'give -t NAME or --output type=registry,name=NAME',
            });
          }
          for (const n of oNames) {
            check();
            const ref = parseReferenceWithDefaultTag(n);
            const session = opts.sessions?.get(ref.toString());
            await (session ? session.push(img) : push(img, ref, opts.registry));
            names.push(ref.toString());
            pushed.push(ref.toString());
          }
        } else if (opts.writers.saveLocal) {
          await opts.writers.saveLocal(img, oNames);
          names.push(...oNames.map((n) => parseReferenceWithDefaultTag(n).toString()));
        }
        break;
      }
      case 'oci':
      case 'docker': {
        const img = withManifestMediaType(image, mediaTypesFor(o, zstd));
        await record(img);
        const dest = o.dest as string;
        if (o.type === 'oci') {
          if (!opts.writers.writeOCI) throw new KilnError('OUTPUT_UNSUPPORTED', 'type=oci output is not available');
          await opts.writers.writeOCI(img, dest, { tar: o.tar, names: oNames, annotations: opts.annotations });
        } else {
          if (!opts.writers.writeDocker) {
            throw new KilnError('OUTPUT_UNSUPPORTED', 'type=docker output is not available');
          }
          await opts.writers.writeDocker(img, dest, oNames);
        }
        names.push(...oNames);
        break;
      }
      case 'local': {
        const dest = o.dest as string;
        // like buildx: the files belong to whoever runs the build; image owners only for real root (a rootless
        // build would otherwise leave files owned by subordinate ids the user cannot remove)
        await materializeRootfs(opts.layers, dest, { chown: isRealRoot() });
        break;
      }
      case 'tar': {
        const dest = o.dest as string;
        await mkdir(opts.tmpDir, { recursive: true });
        const dir = await mkdtemp(join(opts.tmpDir, 'rootfs-'));
        try {
          await materializeRootfs(opts.layers, dir);
          const tarOpts: { whiteouts: 'none'; sourceDateEpoch?: number } = { whiteouts: 'none' };
          if (opts.sourceDateEpoch !== undefined) tarOpts.sourceDateEpoch = opts.sourceDateEpoch;
          await toFileOrStdout(dest, (w) => pipeline(Readable.from(layerTar(dir, tarOpts)), w));
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
        break;
      }
    }
  }
  if (!result) {
    const img = withManifestMediaType(image, 'docker');
    await record(img);
  }
  const r = result as { digest: string; mediaType: string; size: number };
  const descriptor = { mediaType: r.mediaType, digest: r.digest, size: r.size };
  return { digest: r.digest, configDigest, descriptor, names: [...new Set(names)], pushed };
}

/** `--iidfile`: the image ID (config digest), as docker writes it. */
export async function writeIidFile(path: string, res: ExportResult): Promise<void> {
  await writeFile(path, res.configDigest).catch((e: unknown) => {
    throw destinationError(e, path, '--iidfile');
  });
}

/** `--metadata-file`: buildx's exporter response keys. */
export async function writeMetadataFile(
  path: string,
  res: ExportResult,
  extra: Record<string, unknown> = {},
): Promise<void> {
  const md: Record<string, unknown> = {
    'containerimage.config.digest': res.configDigest,
    'containerimage.descriptor': res.descriptor,
    'containerimage.digest': res.digest,
    ...extra,
  };
  if (res.names.length > 0) md['image.name'] = res.names.join(',');
  await writeFile(path, JSON.stringify(md, null, 2) + '\n').catch((e: unknown) => {
    throw destinationError(e, path, '--metadata-file');
  });
}
