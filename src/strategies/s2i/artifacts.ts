/**
 * The S2I artifacts tar in the registry build cache. An incremental build restores `save-artifacts` output from
 * kiln's local cache ($KILN_HOME/s2i-artifacts); a fresh pod has none. With `--cache-to type=registry,ref=R:T`
 * the tar is also pushed beside the cache manifest, as `R:T-s2i-artifacts` (one plain OCI image manifest whose
 * only layer is the tar, uncompressed — registries that accept only image manifests take it), and
 * `--cache-from` reads it back when the local cache has none: the next build needs neither the previous image
 * nor a local cache. Failures are warnings (the build then runs without artifacts, or falls back to the previous
 * image), never a failed build — the same rule as the registry cache itself.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { errorMessage } from '../../errors.js';
import { imageFromParts, layerFromOpener } from '../../oci/image.js';
import { MediaType } from '../../oci/mediatypes.js';
import { hostPlatform } from '../../oci/platform.js';
import type { ImageConfig } from '../../oci/types.js';
import { parseReferenceWithDefaultTag } from '../../ref/reference.js';
import { push, type PushOptions } from '../../registry/push.js';
import { getRemoteImage } from '../../registry/remote.js';
import type { CacheSpec } from '../../cache/remote.js';

/** Manifest annotation marking an artifacts image (and the format version). */
export const ARTIFACTS_ANNOTATION = 'dev.kiln.s2i.artifacts';
/** Largest artifacts tar read back from a registry (a cache entry, not an image: bounded). */
export const MAX_ARTIFACTS_BYTES = 4 * 1024 ** 3;
const LAYER_TYPE = 'application/vnd.oci.image.layer.v1.tar';

/** The reference of the artifacts tar beside a registry cache ref: its tag + `-s2i-artifacts` (≤ 128 chars). */
export function artifactsRef(cacheRef: string): string {
  const r = parseReferenceWithDefaultTag(cacheRef);
  const suffix = '-s2i-artifacts';
  const tag = (r.tag ?? 'latest').slice(0, 128 - suffix.length) + suffix;
  return `${r.registry}/${r.repository}:${tag}`;
}

/** Push the artifacts tar `file` beside every registry `--cache-to` ref. Returns warnings (one line each). */
export async function pushArtifacts(file: string, to: CacheSpec[], registry: PushOptions): Promise<string[]> {
  const warnings: string[] = [];
  if (to.length === 0) return warnings;
  const size = (await stat(file)).size;
  const layer = layerFromOpener(async () => createReadStream(file), { mediaType: LAYER_TYPE, what: 's2i artifacts' });
  const digest = await layer.digest();
  const p = hostPlatform();
  const cfg: ImageConfig = {
    architecture: p.architecture,
    os: p.os,
    config: {},
    rootfs: { type: 'layers', diff_ids: [digest] },
    history: [{ created_by: 'kiln: s2i save-artifacts output' }],
  };
  const raw = Buffer.from(JSON.stringify(cfg));
  const image = imageFromParts({
    mediaType: async () => MediaType.OCIManifest,
    rawConfig: async () => raw,
    layers: async () => [layer],
    annotations: async () => ({ [ARTIFACTS_ANNOTATION]: '1' }),
  });
  for (const spec of to) {
    const ref = artifactsRef(spec.ref);
    try {
      await push(image, ref, { ...registry, label: `s2i artifacts ${ref}` });
    } catch (e) {
      warnings.push(`s2i artifacts not exported to ${ref} (${size} bytes): ${errorMessage(e).split('\n')[0]}`);
    }
  }
  return warnings;
}

/**
 * Fetch the artifacts tar from the first `--cache-from` ref that has one into `dest` (written whole or not at
 * all). Returns whether it did, and warnings for refs that failed otherwise than by not existing.
 */
export async function pullArtifacts(
  from: CacheSpec[],
  dest: string,
  registry: PushOptions,
): Promise<{ found: boolean; warnings: string[] }> {
  const warnings: string[] = [];
  for (const spec of from) {
    const ref = artifactsRef(spec.ref);
    try {
      const img = await getRemoteImage(ref, { ...registry, label: `s2i artifacts ${ref}` });
      const m = await img.manifest();
      const l = m.layers[0];
      if (m.annotations?.[ARTIFACTS_ANNOTATION] !== '1' || m.layers.length !== 1 || !l) {
        warnings.push(`${ref} is not an s2i artifacts cache entry; ignored`);
        continue;
      }
      if (l.size > MAX_ARTIFACTS_BYTES) {
        warnings.push(
          `${ref}: artifacts tar of ${l.size} bytes is over the ${MAX_ARTIFACTS_BYTES} byte limit; ignored`,
        );
        continue;
      }
      const [layer] = await img.layers();
      if (!layer) continue;
      const tmp = `${dest}.${process.pid}.pull`;
      let seen = 0;
      const limit = new Transform({
        transform(c: Buffer, _e, cb) {
          seen += c.length;
          cb(seen > l.size ? new Error(`more than the ${l.size} bytes announced`) : null, c);
        },
      });
      try {
        // the layer's stream is verified against its digest (a mismatch fails the pipeline)
        await pipeline(await layer.compressed(), limit, createWriteStream(tmp, { mode: 0o600 }));
        await rename(tmp, dest);
      } finally {
        await rm(tmp, { force: true });
      }
      return { found: true, warnings };
    } catch (e) {
      const msg = errorMessage(e).split('\n')[0] ?? '';
      if (!/MANIFEST_UNKNOWN|NAME_UNKNOWN|not found|404/i.test(msg)) warnings.push(`s2i artifacts ${ref}: ${msg}`);
    }
  }
  return { found: false, warnings };
}
