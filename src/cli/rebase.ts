/**
 * `kiln rebase IMAGE --base NEWBASE [--old-base OLD] [-t NAME] [--push] [--force]` — swap an image's base layers
 * in the registry without a build (src/rebase/rebase.ts). Without --push it reports what it would write.
 */
import type { Command } from 'commander';
import { addProgressOption, addRegistryOptions, withRegistryOptions, type RegistryFlags } from './options.js';

interface RebaseFlags extends RegistryFlags {
  base: string;
  oldBase?: string;
  tag?: string;
  push?: boolean;
  force?: boolean;
  quiet?: boolean;
}

export function register(program: Command): void {
  const cmd = program
    .command('rebase')
    .description('replace the base layers of a registry image with a new base (no build, no layer upload)')
    .argument('<image>', 'the image (or multi-platform index) to rebase, e.g. 127.0.0.1:5000/app:v1')
    .requiredOption('--base <image>', 'the new base image')
    .option('--old-base <image>', 'the base the image was built on (default: its base annotations)')
    .option('-t, --tag <name>', 'where to push the result (default: IMAGE)')
    .option('--push', 'push the rebased image')
    .option('--force', 'rebase even layers that may depend on the base (RUN, plain COPY)')
    .option('-q, --quiet', 'print only the new manifest digest');
  addProgressOption(addRegistryOptions(cmd)).action(async (image: string, flags: RebaseFlags) => {
    const { rebase } = await import('../rebase/rebase.js');
    const res = await withRegistryOptions(
      { ...flags, progress: flags.quiet ? 'quiet' : flags.progress },
      (registry) => {
        const o: Parameters<typeof rebase>[1] = { base: flags.base, registry };
        if (flags.oldBase) o.oldBase = flags.oldBase;
        if (flags.force) o.force = true;
        if (flags.push) o.target = flags.tag ?? image;
        return rebase(image, o);
      },
    );
    if (flags.quiet) {
      process.stdout.write(res.digest + '\n');
      return;
    }
    for (const r of res.images) {
      process.stdout.write(
        `${r.platform.os}/${r.platform.architecture}: ${r.replaced.from} base layer(s) → ${r.replaced.to} of ` +
          `${r.newBase.name}@${r.newBase.digest}, ${r.kept} layer(s) kept\n`,
      );
    }
    process.stdout.write(
      res.pushed ? `pushed ${res.pushed}@${res.digest}\n` : `${res.digest} (not pushed: add --push)\n`,
    );
  });
}
