/**
 * `kiln inspect REF [--raw] [--config] [--platform P]` — manifest and config as JSON, for registry references,
 * `oci:`/`oci-archive:`/`docker-archive:` locations and local store names (tried first for bare names that are
 * in the store).
 */
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { kilnHome } from '../util/paths.js';
import { KilnError } from '../errors.js';
import { imageForPlatform, isImageIndex } from '../oci/image.js';
import { hostPlatform } from '../oci/platform.js';
import type { Image, ImageIndex } from '../oci/types.js';
import { describeLocation, loadLocation, parseLocation, type Location } from '../registry/locations.js';
import { withLabel, type RegistryOptions } from '../registry/transport.js';
import {
  addPlatformOption,
  addRegistryOptions,
  platformFrom,
  withRegistryOptions,
  type RegistryFlags,
} from './options.js';

interface InspectFlags extends RegistryFlags {
  raw?: boolean;
  config?: boolean;
}

async function load(arg: string, opts: RegistryOptions): Promise<{ loc: Location; x: Image | ImageIndex }> {
  const loc = parseLocation(arg);
  if (loc.kind === 'registry' && !arg.startsWith('docker://') && existsSync(join(kilnHome(), 'store', 'index.json'))) {
    // A bare name may be a local store image: prefer it when the store has it.
    try {
      const storeLoc: Location = { kind: 'store', name: arg };
      return { loc: storeLoc, x: await loadLocation(storeLoc, opts) };
    } catch (e) {
      if (!(e instanceof KilnError)) throw e;
    }
  }
  return { loc, x: await loadLocation(loc, withLabel(opts, `inspect ${describeLocation(loc)}`)) };
}

export function register(program: Command): void {
  const cmd = program
    .command('inspect')
    .description('show an image manifest and config')
    .argument('<ref>', 'reference, store name, or oci:/oci-archive:/docker-archive: location')
    .option('--raw', 'print the raw manifest (or index) bytes exactly as stored')
    .option('--config', 'print the image config');
  addPlatformOption(cmd, 'platform to pick from an index for --config (default: host)');
  addRegistryOptions(cmd);
  cmd.action(async (arg: string, flags: InspectFlags) => {
    await withRegistryOptions({ ...flags, progress: 'quiet' }, async (opts) => {
      const { loc, x } = await load(arg, opts);
      if (flags.raw && !flags.config) {
        process.stdout.write(await x.rawManifest());
        return;
      }
      const img: Image | undefined = isImageIndex(x)
        ? flags.config || flags.platform
          ? await imageForPlatform(x, platformFrom(flags) ?? hostPlatform())
          : undefined
        : x;
      if (flags.config) {
        if (flags.raw) process.stdout.write(await img!.rawConfig());
        else process.stdout.write(JSON.stringify(await img!.config(), null, 2) + '\n');
        return;
      }
      const out: Record<string, unknown> = {
        name: describeLocation(loc),
        digest: await x.digest(),
        mediaType: await x.mediaType(),
        size: await x.size(),
      };
      if (isImageIndex(x)) out.index = await x.indexManifest();
      if (img) {
        if (img !== x) out.platformDigest = await img.digest();
        out.manifest = await img.manifest();
        out.config = await img.config();
      }
      process.stdout.write(JSON.stringify(out, null, 2) + '\n');
    });
  });
}
