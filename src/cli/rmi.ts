/** `kiln rmi NAME...`: untag images in the local store and garbage-collect their unreferenced blobs. */
import type { Command } from 'commander';
import { KilnError, errorMessage, isKilnError } from '../errors.js';
import { LocalStore } from '../oci/store.js';

export function register(program: Command): void {
  program
    .command('rmi')
    .description('remove images (names, digests or short IDs) from the local store')
    .argument('<name...>', 'image names, e.g. app:v1 or localhost:5000/app:v1')
    .action(async (names: string[]) => {
      const store = await LocalStore.open();
      const missing: string[] = [];
      for (const n of names) {
        try {
          const r = await store.remove(n);
          for (const u of r.untagged) process.stdout.write(`Untagged: ${u}\n`);
          if (r.deletedBlobs)
            process.stdout.write(`Deleted: ${r.deletedBlobs} blob${r.deletedBlobs === 1 ? '' : 's'}\n`);
        } catch (e) {
          if (isKilnError(e, 'IMAGE_NOT_FOUND')) missing.push(n);
          else if (isKilnError(e)) throw e;
          else throw new KilnError('RMI_FAILED', `rmi ${n}: ${errorMessage(e)}`, { cause: e });
        }
      }
      if (missing.length) {
        throw new KilnError('IMAGE_NOT_FOUND', `no such image: ${missing.join(', ')}`, {
          hint: 'list local images with `kiln images`',
        });
      }
    });
}
