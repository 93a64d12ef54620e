/** `kiln pull REF [--platform P] [--output type=oci,dest=DIR|type=oci-archive,dest=FILE|type=docker,dest=FILE]` */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import { hostPlatform } from '../oci/platform.js';
import { getRemote, getRemoteImage } from '../registry/remote.js';
import { parseReference } from '../registry/reference.js';
import { writeLocation, type Location } from '../registry/locations.js';
import { withLabel } from '../registry/transport.js';
import {
  addPlatformOption,
  addProgressOption,
  addRegistryOptions,
  platformFrom,
  withRegistryOptions,
  type RegistryFlags,
} from './options.js';

/** Parse `type=oci,dest=DIR` (BuildKit-style --output). */
export function parseOutput(s: string): Location {
  const kv: Record<string, string> = {};
  for (const part of s.split(',')) {
    const i = part.indexOf('=');
    if (i < 0) throw new KilnError('INVALID_OPTION', `invalid --output "${s}"`, { hint: 'use type=oci,dest=DIR' });
    kv[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  const dest = kv['dest'];
  if (!dest) throw new KilnError('INVALID_OPTION', `--output "${s}": dest= is required`);
  switch (kv['type']) {
    case 'oci':
      return kv['name'] ? { kind: 'oci', path: dest, name: kv['name'] } : { kind: 'oci', path: dest };
    case 'oci-archive':
      return kv['name'] ? { kind: 'oci-archive', path: dest, name: kv['name'] } : { kind: 'oci-archive', path: dest };
    case 'docker':
    case 'docker-archive':
      return kv['name']
        ? { kind: 'docker-archive', path: dest, tag: kv['name'] }
        : { kind: 'docker-archive', path: dest };
    default:
      throw new KilnError('INVALID_OPTION', `--output "${s}": unknown type "${kv['type'] ?? ''}"`, {
        hint: 'types: oci, oci-archive, docker',
      });
  }
}

interface PullFlags extends RegistryFlags {
  output?: string;
  allPlatforms?: boolean;
}

export function register(program: Command): void {
  const cmd = program
    .command('pull')
    .description('pull an image from a registry (into the local store, or --output)')
    .argument('<ref>', 'image reference, e.g. 127.0.0.1:5000/app:v1')
    .option('-o, --output <spec>', 'write to type=oci,dest=DIR | type=oci-archive,dest=FILE | type=docker,dest=FILE')
    .option('--all-platforms', 'keep every platform of a multi-platform image (OCI outputs only)');
  addPlatformOption(cmd);
  addRegistryOptions(cmd);
  addProgressOption(cmd);
  cmd.action(async (refArg: string, flags: PullFlags) => {
    const ref = parseReference(refArg);
    await withRegistryOptions(flags, async (opts) => {
      const tagged = ref.tag !== undefined || ref.digest === undefined ? ref.withTag(ref.tag ?? 'latest') : undefined;
      if (!flags.output && !tagged) {
        throw new KilnError('INVALID_REFERENCE', `pull ${ref.toString()}: the local store names images by tag`, {
          hint: `pull ${ref.name()}:TAG@${ref.digest} to pin the digest under a tag, or use --output`,
        });
      }
      let dest: Location = flags.output ? parseOutput(flags.output) : { kind: 'store', name: tagged!.toString() };
      if (dest.kind === 'oci' && dest.name === undefined && tagged) dest = { ...dest, name: tagged.tag! };
      if (dest.kind === 'docker-archive' && dest.tag === undefined && tagged)
        dest = { ...dest, tag: tagged.toString() };
      const getOpts = opts.progress
        ? { ...withLabel(opts, `pull ${ref.toString()}`), pullProgress: opts.progress }
        : opts;
      const x = flags.allPlatforms
        ? await getRemote(ref, getOpts)
        : await getRemoteImage(ref, { ...getOpts, platform: platformFrom(flags) ?? hostPlatform() });
      const r = await writeLocation(dest, x, opts);
      opts.progress?.close();
      process.stdout.write(`${ref.name()}@${r.digest}\n`);
    });
  });
}
