/**
 * Whether an image's layers above its base may be kept on another base — decided from the image alone: its
 * history (to name the instruction) and kiln's manifest annotation listing the layers made by steps that do not
 * depend on what is below them (COPY --link without a --chown by name; S2I runtime artifact layers are such
 * COPYs). Pure; used by `kiln build` (recorded with the build) and `kiln rebase`.
 */
import type { History, ImageConfig } from '../oci/types.js';

export const BASE_NAME = 'org.opencontainers.image.base.name';
export const BASE_DIGEST = 'org.opencontainers.image.base.digest';
/** Comma-separated 0-based indexes (manifest order) of layers made by steps independent of the layers below. */
export const REBASABLE_LAYERS = 'dev.kiln.rebasable-layers';

/** The annotation value for a list of layers (only the independent ones are listed). */
export function rebasableAnnotation(layers: { independent?: boolean }[]): string {
  return layers.flatMap((l, i) => (l.independent ? [String(i)] : [])).join(',');
}

/** What a rebase of one image would do, or why it must not. */
export interface RebaseVerdict {
  rebasable: boolean;
  /** The first layer above the base that cannot be rebased (1-based, as the message says). */
  blocker?: { layer: number; instruction: string };
}

/** The instruction of a history entry, as a person reads it (`RUN /bin/sh -c make`, `COPY . /app`). */
function instructionOf(h: History | undefined): string {
  const c = (h?.created_by ?? '').replace(/ # buildkit$/, '').trim();
  if (!c) return 'an unknown step';
  return c.replace(/^\/bin\/sh -c #\(nop\) +/, '').replace(/^\|\d+ [^ ]+(?: [^ ]+=[^ ]*)* /, '');
}

/**
 * Can the layers of `cfg` above the first `baseLayers` be kept on another base? `rebasable` lists the layer
 * indexes kiln recorded as independent of what is below.
 */
export function rebaseVerdict(cfg: ImageConfig, baseLayers: number, rebasable: ReadonlySet<number>): RebaseVerdict {
  const history = cfg.history ?? [];
  const withLayer = history.filter((h) => !h.empty_layer);
  const n = cfg.rootfs.diff_ids.length;
  for (let i = baseLayers; i < n; i++) {
    if (!rebasable.has(i)) {
      const h = withLayer.length === n ? withLayer[i] : undefined;
      return { rebasable: false, blocker: { layer: i + 1, instruction: instructionOf(h) } };
    }
  }
  return { rebasable: true };
}

export function parseRebasable(v: string | undefined): Set<number> {
  return new Set(
    (v ?? '')
      .split(',')
      .filter((s) => /^\d+$/.test(s))
      .map(Number),
  );
}
