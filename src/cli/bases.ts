/**
 * `kiln bases ls` — the base images the build service watches (the FROMs of each image's latest successful build),
 * the digest the registry had at the last check, a warning when the check fails, and the images that depend on each.
 */
import type { Command } from 'commander';
import { addServiceOptions, withClient } from '../service/client.js';

export function register(program: Command): void {
  const bases = addServiceOptions(program.command('bases').description('base images watched by the build service'));
  bases
    .command('ls')
    .description('list watched bases, their current digests and dependent images')
    .option('--json', 'print JSON')
    .action(async (flags: { json?: boolean }, cmd: Command) => {
      const list = await withClient(cmd, (c) => c.listBases());
      if (flags.json) {
        process.stdout.write(JSON.stringify({ bases: list }, null, 2) + '\n');
        return;
      }
      if (list.length === 0) {
        process.stdout.write('no bases watched yet (a build must succeed first)\n');
        return;
      }
      for (const b of list) {
        const state = b.warning ? `WARNING: ${b.warning}` : (b.digest ?? 'not checked yet');
        process.stdout.write(`${b.name}  ${state}\n`);
        for (const d of b.dependents) {
          process.stdout.write(
            `  ${d.project}/${d.image}  ${d.ref || '(commit)'}  built on ${d.digest.slice(0, 19)}\n`,
          );
        }
      }
    });
}
