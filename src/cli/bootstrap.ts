/** `kiln bootstrap busybox [--name NAME] [--busybox PATH]`: a local busybox base image for first builds. */
import type { Command } from 'commander';
import { BOOTSTRAP_BUSYBOX_NAME, busyboxImage } from '../engine/bootstrap.js';
import { KilnError } from '../errors.js';
import { LocalStore, normalizeImageName } from '../oci/store.js';

export function register(program: Command): void {
  program
    .command('bootstrap')
    .description('create a base image locally (no registry needed): kiln bootstrap busybox')
    .argument('<kind>', 'what to create: busybox')
    .option('--name <name>', 'image name in the local store', BOOTSTRAP_BUSYBOX_NAME)
    .option('--busybox <path>', 'static busybox binary to use', '/bin/busybox')
    .action(async (kind: string, flags: { name: string; busybox: string }) => {
      if (kind !== 'busybox') {
        throw new KilnError('OPTION_INVALID', `bootstrap ${kind}: unknown kind`, { hint: 'kiln bootstrap busybox' });
      }
      const image = await busyboxImage(flags.busybox);
      const store = await LocalStore.open();
      const name = normalizeImageName(flags.name);
      await store.put(image, [name]);
      process.stdout.write(`${name}@${await image.digest()}\n`);
    });
}
