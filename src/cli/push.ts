/** `kiln push SRC REF` — SRC: a store name, `oci:DIR[:name]`, `oci-archive:FILE[:name]`, `docker-archive:FILE[:tag]`. */
import type { Command } from 'commander';
import { loadLocation, parseLocation } from '../registry/locations.js';
import { push } from '../registry/push.js';
import { parseReference } from '../registry/reference.js';
import { withLabel } from '../registry/transport.js';
import {
  addPlatformOption,
  addProgressOption,
  addRegistryOptions,
  platformFrom,
  withRegistryOptions,
  type RegistryFlags,
} from './options.js';

export function register(program: Command): void {
  const cmd = program
    .command('push')
    .description('push an image to a registry')
    .argument('<src>', 'store name, oci:DIR[:name], oci-archive:FILE[:name] or docker-archive:FILE[:tag]')
    .argument('[ref]', 'destination reference (default: SRC when it is a store name)');
  addPlatformOption(cmd, 'push only this platform of a multi-platform source');
  addRegistryOptions(cmd);
  addProgressOption(cmd);
  cmd.action(async (srcArg: string, refArg: string | undefined, flags: RegistryFlags) => {
    const src = parseLocation(srcArg, 'store');
    const ref = parseReference(refArg ?? srcArg);
    await withRegistryOptions(flags, async (opts) => {
      let x = await loadLocation(src, opts);
      const platform = platformFrom(flags);
      if (platform && 'indexManifest' in x) {
        const { imageForPlatform } = await import('../oci/image.js');
        x = await imageForPlatform(x, platform);
      }
      const r = await push(x, ref, withLabel(opts, `push ${ref.toString()}`));
      opts.progress?.close();
      process.stdout.write(`${ref.name()}@${r.digest}\n`);
    });
  });
}
