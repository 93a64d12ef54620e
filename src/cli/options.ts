/**
 * Shared CLI flags for commands that talk to registries: `--insecure-registry HOST` (repeatable),
 * `--registry-ca FILE` (repeatable), `--registry-mirror URL` (repeatable, docker.io only), `--progress MODE`,
 * `--platform OS/ARCH[/VARIANT]`, and their conversion into RegistryOptions (credentials from the docker keychain).
 */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import { parsePlatform } from '../oci/platform.js';
import type { Platform } from '../oci/types.js';
import { Progress, parseProgressMode } from '../progress.js';
import { Keychain } from '../registry/keychain.js';
import type { PushOptions } from '../registry/push.js';
import { closeTransports } from '../registry/transport.js';

export interface RegistryFlags {
  insecureRegistry?: string[];
  registryCa?: string[];
  registryMirror?: string[];
  progress?: string;
  platform?: string;
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

/** Add the registry flags to a command. */
export function addRegistryOptions(cmd: Command): Command {
  return cmd
    .option('--insecure-registry <host>', 'allow plain HTTP / unverified TLS for this registry (repeatable)', collect)
    .option('--registry-ca <file>', 'trust this extra CA certificate (PEM) for registries (repeatable)', collect)
    .option('--registry-mirror <url>', 'pull docker.io images through this mirror first (repeatable)', collect);
}

export function addProgressOption(cmd: Command): Command {
  return cmd.option('--progress <mode>', 'progress output: auto, tty, plain, json or quiet', 'auto');
}

export function addPlatformOption(cmd: Command, what = 'platform to select from a multi-platform image'): Command {
  return cmd.option('--platform <os/arch[/variant]>', what);
}

/** The platform flag, parsed (undefined when absent). */
export function platformFrom(flags: RegistryFlags): Platform | undefined {
  if (!flags.platform) return undefined;
  try {
    return parsePlatform(flags.platform);
  } catch (e) {
    if (e instanceof KilnError) throw e;
    throw new KilnError('INVALID_OPTION', `invalid --platform "${flags.platform}"`, { hint: 'use os/arch[/variant]' });
  }
}

function checkMirror(u: string): string {
  if (!/^https?:\/\/[^/]+/i.test(u)) {
    throw new KilnError('INVALID_OPTION', `invalid --registry-mirror "${u}"`, {
      hint: 'use a URL like https://mirror.example.com',
    });
  }
  return u.replace(/\/+$/, '');
}

/** RegistryOptions (plus progress) from the parsed flags. */
export function registryOptionsFrom(flags: RegistryFlags, extra: { keychain?: Keychain } = {}): PushOptions {
  const kc = extra.keychain ?? new Keychain();
  const o: PushOptions = {
    insecureRegistries: (flags.insecureRegistry ?? []).map((h) => h.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '')),
    caFiles: flags.registryCa ?? [],
    mirrors: (flags.registryMirror ?? []).map(checkMirror),
    credentials: kc.source(),
    progress: new Progress(parseProgressMode(flags.progress)),
    // One connection/token pool for the whole command, shared by every copy of these options.
    pool: new Map(),
  };
  const env = process.env;
  if (env.KILN_REGISTRY_CHUNK_SIZE) o.chunkSize = Number(env.KILN_REGISTRY_CHUNK_SIZE);
  if (env.KILN_REGISTRY_MONOLITHIC_MAX) o.monolithicMax = Number(env.KILN_REGISTRY_MONOLITHIC_MAX);
  if (env.KILN_REGISTRY_RETRY_BASE_MS) o.retryBaseMs = Number(env.KILN_REGISTRY_RETRY_BASE_MS);
  return o;
}

/**
 * Run one registry command: `fn` gets RegistryOptions from `flags` (see registryOptionsFrom); afterwards, whatever
 * happens, the progress display is closed and the command's registry connections are shut.
 */
export async function withRegistryOptions<T>(flags: RegistryFlags, fn: (opts: PushOptions) => Promise<T>): Promise<T> {
  const opts = registryOptionsFrom(flags);
  try {
    return await fn(opts);
  } finally {
    opts.progress?.close();
    await closeTransports(opts);
  }
}
