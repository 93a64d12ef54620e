/**
 * `kiln serve-worker` (hidden): a build worker of `kiln serve`'s local runner. Not for people: the service starts
 * it with a socket on fd 3 (src/service/runner/protocol.ts) and hands it one build.
 */
import type { Command } from 'commander';

export function register(program: Command): void {
  program
    .command('serve-worker', { hidden: true })
    .description('internal: a build worker of kiln serve')
    .action(async () => {
      const { workerMain } = await import('../service/runner/worker.js');
      process.exitCode = await workerMain();
    });
}
