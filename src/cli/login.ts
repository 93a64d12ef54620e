/** `kiln login [-u USER] [-p PASS | --password-stdin] REGISTRY` — verify against the registry, then store. */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import { Keychain, login } from '../registry/keychain.js';
import { addRegistryOptions, registryOptionsFrom, type RegistryFlags } from './options.js';

interface LoginFlags extends RegistryFlags {
  username?: string;
  password?: string;
  passwordStdin?: boolean;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

export function register(program: Command): void {
  const cmd = program
    .command('login')
    .description('log in to a registry (credentials go to the docker config or its credential helper)')
    .argument('[registry]', 'registry host[:port]', 'docker.io')
    .option('-u, --username <user>', 'user name')
    .option('-p, --password <password>', 'password (prefer --password-stdin)')
    .option('--password-stdin', 'read the password from stdin');
  addRegistryOptions(cmd);
  cmd.action(async (registry: string, flags: LoginFlags) => {
    if (flags.password !== undefined && flags.passwordStdin) {
      throw new KilnError('INVALID_OPTION', 'login: --password and --password-stdin are mutually exclusive');
    }
    if (flags.passwordStdin && !flags.username) {
      throw new KilnError('INVALID_OPTION', 'login: --password-stdin needs --username');
    }
    const password = flags.passwordStdin ? await readStdin() : flags.password;
    if (!flags.username || !password) {
      throw new KilnError('INVALID_OPTION', 'login: user name and password are required', {
        hint: 'kiln login -u USER --password-stdin REGISTRY < password-file',
      });
    }
    const kc = new Keychain();
    const opts = registryOptionsFrom({ ...flags, progress: 'quiet' }, { keychain: kc });
    const r = await login(registry, { username: flags.username, password }, { ...opts, keychain: kc });
    process.stderr.write(
      r.storedIn === 'helper' ? `Login Succeeded (credential helper)\n` : `Login Succeeded (stored in ${r.file})\n`,
    );
  });
}
