/**
 * FROM resolution of a local build: the local store first (unless --pull), then the registry. A module of its own
 * (not services.ts) so that the Node.js builder's fast path resolves its base without loading the engine.
 */
import { isKilnError } from '../errors.js';
import type { LocalStore } from '../oci/store.js';
import type { Image, Platform } from '../oci/types.js';
import { parseReferenceWithDefaultTag } from '../registry/reference.js';
import { getRemoteImage } from '../registry/remote.js';
import type { PushOptions } from '../registry/push.js';
import type { BaseResolver, ResolvedBase } from './ports.js';

/** FROM resolution: the local store first (unless --pull), then the registry. */
export class StoreFirstResolver implements BaseResolver {
  constructor(
    private readonly store: LocalStore,
    private readonly registry: PushOptions,
  ) {}

  async resolve(ref: string, opts: { pull: boolean; platform: Platform }): Promise<ResolvedBase> {
    const r = parseReferenceWithDefaultTag(ref);
    const name = r.toString();
    if (!opts.pull) {
      let local: Image | undefined;
      try {
        local = await this.store.image(name, opts.platform);
      } catch (e) {
        // Only 'not in the store' falls back to the registry; a corrupt store must be reported, not masked.
        if (!isKilnError(e, 'IMAGE_NOT_FOUND') && !isKilnError(e, 'PLATFORM_NOT_FOUND')) throw e;
        local = undefined;
      }
      if (local) return { name, digest: await local.digest(), image: local };
    }
    const image = await getRemoteImage(r, {
      // the config of a base seen before comes from the store's blob dir (an unchanged base: no config request)
      configCache: this.store.blobs,
      ...this.registry,
      platform: opts.platform,
      label: `pull ${name}`,
    });
    return { name, digest: await image.digest(), image };
  }
}
