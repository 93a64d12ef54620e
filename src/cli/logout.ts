/** `kiln logout REGISTRY` — forget stored credentials. */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import { Keychain, logout } from '../registry/keychain.js';

export function register(program: Command): void {
  program
    .command('logout')
    .description('remove stored credentials for a registry')
    .argument('[registry]', 'registry host[:port]', 'docker.io')
    .action(async (registry: string) => {
      const removed = await logout(registry, new Keychain());
      if (!removed) {
        throw new KilnError('NOT_LOGGED_IN', `logout ${registry}: not logged in`);
      }
      process.stderr.write(`Removing login credentials for ${registry}\n`);
    });
}
