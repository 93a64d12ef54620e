/**
 * `kiln rebase`: swap the lower layers that came from an image's old base for a new base's layers, keeping every
 * layer above by digest (pushed by mount or found by HEAD — no layer bytes uploaded), the config updated
 * (diff_ids, history, the base's env and labels where the image did not override them) and the manifest
 * annotations `org.opencontainers.image.base.name`/`.base.digest` naming the new base. Multi-platform indexes are
 * rebased platform by platform onto the matching platform of the new base.
 *
 * Safety is decided from the image alone: only layers that cannot depend on the base may be kept — those kiln
 * marked in the manifest annotation `dev.kiln.rebasable-layers` (COPY --link without a --chown by name, S2I
 * runtime artifact layers). RUN, assemble and plain COPY layers (which follow the base's symlinks and take parent
 * directory metadata and --chown names from it) are refused, naming the instruction: rebuild those instead.
 */
import { KilnError, errorMessage } from '../errors.js';
import { imageFromParts, isImageIndex, newIndex, withLayerMediaType } from '../oci/image.js';
import { MediaType } from '../oci/mediatypes.js';
import { formatPlatform } from '../oci/platform.js';
import type { ContainerConfig, Image, ImageConfig, ImageIndex, Layer, Platform } from '../oci/types.js';
import { sha256 } from '../oci/digest.js';
import { parseReference, parseReferenceWithDefaultTag } from '../ref/reference.js';
import { getRemote, getRemoteImage, isRemoteLayer, type BlobOrigin } from '../registry/remote.js';
import { push, type PushOptions } from '../registry/push.js';
import {
  BASE_DIGEST,
  BASE_NAME,
  REBASABLE_LAYERS,
  parseRebasable,
  rebasableAnnotation,
  rebaseVerdict,
  type RebaseVerdict,
} from './verdict.js';

export { BASE_NAME, BASE_DIGEST, REBASABLE_LAYERS, rebasableAnnotation, rebaseVerdict, parseRebasable };
export type { RebaseVerdict };

/** Env entries of a config by name. */
function envMap(env: string[] | undefined): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of env ?? []) {
    const i = e.indexOf('=');
    m.set(i < 0 ? e : e.slice(0, i), i < 0 ? '' : e.slice(i + 1));
  }
  return m;
}

/**
 * The image's env/labels with the base's part replaced: a value the image left as the old base had it takes the
 * new base's value (or goes when the new base dropped it); values the image set itself stay; new base values the
 * image never had are added.
 */
export function rebaseMap(
  image: Map<string, string>,
  oldBase: Map<string, string>,
  newBase: Map<string, string>,
): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of image) {
    const inherited = oldBase.has(k) && oldBase.get(k) === v;
    if (!inherited) out.set(k, v);
    else if (newBase.has(k)) out.set(k, newBase.get(k) as string);
  }
  for (const [k, v] of newBase) if (!out.has(k) && !oldBase.has(k)) out.set(k, v);
  return out;
}

export interface RebaseOptions {
  /** The new base, as given. */
  base: string;
  /** The old base (default: the image's base annotations). */
  oldBase?: string;
  /** Rebase even layers that may depend on the base. */
  force?: boolean;
  registry: PushOptions;
}

export interface RebasedImage {
  image: Image;
  platform: Platform;
  /** Layers kept from the image (not uploaded again). */
  kept: number;
  replaced: { from: number; to: number };
  newBase: { name: string; digest: string };
}

function sameLayerKind(manifestType: string, l: Layer, mt: string): Layer {
  const docker = manifestType === MediaType.DockerManifest;
  let want = mt;
  if (docker && mt === MediaType.OCILayerGzip) want = MediaType.DockerLayerGzip;
  if (!docker && mt === MediaType.DockerLayerGzip) want = MediaType.OCILayerGzip;
  if (want === mt) return l;
  const w = withLayerMediaType(l, want);
  return isRemoteLayer(l) ? Object.assign(w, { origin: l.origin as BlobOrigin }) : w;
}

/** The Cloud Native Buildpacks label that names the run image of a buildpacks image (src/strategies/buildpacks). */
export const CNB_LIFECYCLE_METADATA = 'io.buildpacks.lifecycle.metadata';

/**
 * The lifecycle metadata of a buildpacks image on its new run image: `runImage.topLayer`/`reference` name the new
 * base, as the CNB rebaser writes them (`pack rebase` and kiln's next build read them). Unparsable JSON stays as is.
 */
export function cnbRunImageMoved(json: string, base: ImageConfig, name: string, digest: string): string {
  let md: { runImage?: Record<string, unknown> };
  try {
    md = JSON.parse(json) as { runImage?: Record<string, unknown> };
  } catch {
    return json;
  }
  const ids = base.rootfs.diff_ids;
  md.runImage = { ...md.runImage, topLayer: ids[ids.length - 1] ?? '', reference: digest, image: name };
  return JSON.stringify(md);
}

/** Rebase one (single-platform) image. */
export async function rebaseImage(name: string, img: Image, o: RebaseOptions): Promise<RebasedImage> {
  const manifest = await img.manifest();
  const cfg = await img.config();
  const platform: Platform = { os: cfg.os, architecture: cfg.architecture };
  if (cfg.variant) platform.variant = cfg.variant;
  const ann = manifest.annotations ?? {};
  let oldRef = o.oldBase;
  if (!oldRef) {
    const n = ann[BASE_NAME];
    if (!n) {
      throw new KilnError('REBASE_NO_BASE', `cannot rebase ${name}: the image does not name its base`, {
        hint: 'give --old-base IMAGE (the base it was built on)',
      });
    }
    const d = ann[BASE_DIGEST];
    const r = parseReferenceWithDefaultTag(n);
    oldRef = d ? `${r.registry}/${r.repository}@${d}` : n;
  }
  const ropts = { ...o.registry, platform };
  const oldBase = await getRemoteImage(oldRef, { ...ropts, label: `old base ${oldRef}` });
  const oldCfg = await oldBase.config();
  const ids = cfg.rootfs.diff_ids;
  const oldIds = oldCfg.rootfs.diff_ids;
  if (oldIds.length > ids.length || oldIds.some((d, i) => ids[i] !== d)) {
    throw new KilnError('REBASE_NOT_PREFIX', `cannot rebase ${name}: old base ${oldRef} is not a prefix of the image`, {
      hint: 'give the base the image was built on with --old-base',
    });
  }
  const verdict = rebaseVerdict(cfg, oldIds.length, parseRebasable(ann[REBASABLE_LAYERS]));
  if (!verdict.rebasable && !o.force) {
    const b = verdict.blocker as { layer: number; instruction: string };
    throw new KilnError(
      'REBASE_UNSAFE',
      `cannot rebase ${name}: layer ${b.layer} was made by ${b.instruction}; rebuild instead`,
      {
        hint: 'only COPY --link layers (no --chown by name), buildpack and S2I runtime artifact layers can be rebased; --force rebases anyway',
      },
    );
  }
  const newBase = await getRemoteImage(o.base, { ...ropts, label: `new base ${o.base}` });
  const newCfg = await newBase.config();
  const newName = parseReferenceWithDefaultTag(o.base).toString();
  const newDigest = await newBase.digest();
  const oldHistory = (oldCfg.history ?? []).length;
  const out: ImageConfig = structuredClone(cfg);
  out.rootfs = { type: 'layers', diff_ids: [...newCfg.rootfs.diff_ids, ...ids.slice(oldIds.length)] };
  out.history = [...(newCfg.history ?? []), ...(cfg.history ?? []).slice(oldHistory)];
  const c: ContainerConfig = out.config ?? {};
  const env = rebaseMap(envMap(cfg.config?.Env), envMap(oldCfg.config?.Env), envMap(newCfg.config?.Env));
  c.Env = [...env].map(([k, v]) => `${k}=${v}`);
  const labels = rebaseMap(
    new Map(Object.entries(cfg.config?.Labels ?? {})),
    new Map(Object.entries(oldCfg.config?.Labels ?? {})),
    new Map(Object.entries(newCfg.config?.Labels ?? {})),
  );
  const cnb = labels.get(CNB_LIFECYCLE_METADATA);
  if (cnb !== undefined) labels.set(CNB_LIFECYCLE_METADATA, cnbRunImageMoved(cnb, newCfg, newName, newDigest));
  if (labels.size > 0) c.Labels = Object.fromEntries(labels);
  else delete c.Labels;
  out.config = c;
  const rawConfig = Buffer.from(JSON.stringify(out));
  const mt = await img.mediaType();
  const layers = await img.layers();
  const baseLayers = await newBase.layers();
  const annotations: Record<string, string> = { ...ann, [BASE_NAME]: newName, [BASE_DIGEST]: newDigest };
  const kept = layers.slice(oldIds.length);
  const newLayers = await Promise.all(baseLayers.map(async (l) => sameLayerKind(mt, l, await l.mediaType())));
  if (ann[REBASABLE_LAYERS] !== undefined) {
    // the same layers stay independent, at their new positions
    const shift = newLayers.length - oldIds.length;
    annotations[REBASABLE_LAYERS] = [...parseRebasable(ann[REBASABLE_LAYERS])]
      .filter((i) => i >= oldIds.length)
      .map((i) => String(i + shift))
      .join(',');
  }
  const image = imageFromParts({
    mediaType: async () => mt,
    rawConfig: async () => rawConfig,
    layers: async () => [...newLayers, ...kept],
    annotations: async () => annotations,
  });
  return {
    image,
    platform,
    kept: kept.length,
    replaced: { from: oldIds.length, to: newLayers.length },
    newBase: { name: newName, digest: newDigest },
  };
}

export interface RebaseResult {
  /** Manifest (or index) digest of the rebased image. */
  digest: string;
  configDigest?: string;
  images: RebasedImage[];
  /** The first reference pushed (`target`, else the first of `targets`). */
  pushed?: string;
}

/**
 * Rebase `name` (a registry image or index) and push the result to `target` and every one of `targets` when given
 * (the service's base-change trigger pushes the tags the original build pushed).
 */
export async function rebase(
  name: string,
  o: RebaseOptions & { target?: string; targets?: string[] },
): Promise<RebaseResult> {
  let src: Image | ImageIndex;
  try {
    src = await getRemote(parseReference(name), { ...o.registry, label: `rebase ${name}` });
  } catch (e) {
    throw new KilnError('REBASE_IMAGE', `cannot rebase ${name}: ${errorMessage(e)}`, { cause: e });
  }
  let result: Image | ImageIndex;
  const images: RebasedImage[] = [];
  if (isImageIndex(src)) {
    const ix = await src.indexManifest();
    const entries = [];
    for (const d of ix.manifests) {
      if (!d.platform || d.platform.os === 'unknown') continue; // attestations are not rebased
      const child = await src.image(d.digest);
      const r = await rebaseImage(`${name} (${formatPlatform(d.platform)})`, child, o);
      images.push(r);
      entries.push({ image: r.image, platform: d.platform });
    }
    const kind = ix.mediaType === MediaType.DockerManifestList ? 'docker' : 'oci';
    result = newIndex(entries, ix.annotations ? { kind, annotations: ix.annotations } : { kind });
  } else {
    const r = await rebaseImage(name, src, o);
    images.push(r);
    result = r.image;
  }
  const digest = sha256(await result.rawManifest());
  const out: RebaseResult = { digest, images };
  if (!isImageIndex(result)) out.configDigest = sha256(await result.rawConfig());
  for (const t of [...(o.target ? [o.target] : []), ...(o.targets ?? [])]) {
    const ref = parseReferenceWithDefaultTag(t);
    await push(result, ref, { ...o.registry, label: `push ${ref.toString()}` });
    out.pushed ??= ref.toString();
  }
  return out;
}
