/** `kiln copy SRC DST` — registry to registry (mounting within one registry), or any location to any other. */
import type { Command } from 'commander';
import { copyLocation, describeLocation, parseLocation } from '../registry/locations.js';
import { withLabel } from '../registry/transport.js';
import { addProgressOption, addRegistryOptions, type RegistryFlags, withRegistryOptions } from './options.js';

export function register(program: Command): void {
  const cmd = program
    .command('copy')
    .description('copy an image (all platforms) between registries or to/from oci:, oci-archive:, docker-archive:')
    .argument('<src>', 'source reference or location')
    .argument('<dst>', 'destination reference or location');
  addRegistryOptions(cmd);
  addProgressOption(cmd);
  cmd.action(async (srcArg: string, dstArg: string, flags: RegistryFlags) => {
    const src = parseLocation(srcArg);
    const dst = parseLocation(dstArg);
    await withRegistryOptions(flags, async (opts) => {
      const r = await copyLocation(src, dst, withLabel(opts, `copy ${describeLocation(src)}`));
      opts.progress?.close();
      process.stdout.write(`${describeLocation(dst).replace(/[:@][^/:@]*$/, '')}@${r.digest}\n`);
    });
  });
}
