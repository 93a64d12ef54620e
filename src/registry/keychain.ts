/**
 * Credentials from docker's config.json (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), read and
 * written the way the docker CLI does: `auths` entries (base64 `user:password` in `auth`, or `username`/`password`,
 * `identitytoken`, `registrytoken`), a global `credsStore` and per-registry `credHelpers` run as
 * `docker-credential-<name> get|store|erase` (server URL on stdin, JSON on stdout). Docker Hub is stored under
 * `https://index.docker.io/v1/`; lookups match keys by hostname (a key may carry a scheme or a path).
 * `login` verifies the credentials against the registry before storing them; files are written atomically, mode 0600.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { KilnError } from '../errors.js';
import type { Credential } from './auth.js';
import { DEFAULT_REGISTRY, normalizeRegistryHost } from './reference.js';
import { Transport, type CredentialSource, type RegistryOptions } from './transport.js';

/** The config.json key docker uses for Docker Hub. */
export const DOCKER_HUB_CONFIG_KEY = 'https://index.docker.io/v1/';

export interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
  registrytoken?: string;
  email?: string;
}

export interface DockerConfigFile {
  auths?: Record<string, AuthEntry>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
  [key: string]: unknown;
}

/** `$DOCKER_CONFIG` or `~/.docker`. */
export function dockerConfigDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_CONFIG || join(env.HOME || homedir(), '.docker');
}

/** Hostname form of a config key: strips scheme and path (docker's ConvertToHostname). */
export function configKeyHost(key: string): string {
  let h = key.replace(/^[a-z]+:\/\//i, '');
  h = h.split('/')[0] ?? h;
  if (h === 'index.docker.io' || h === 'registry-1.docker.io' || h === 'docker.io') return DEFAULT_REGISTRY;
  return h;
}

/** The key a registry is stored under. */
export function configKeyFor(registry: string): string {
  return registry === DEFAULT_REGISTRY ? DOCKER_HUB_CONFIG_KEY : registry;
}

interface HelperResult {
  code: number;
  stdout: string;
  stderr: string;
}

function runHelper(
  name: string,
  action: 'get' | 'store' | 'erase',
  input: string,
  env: NodeJS.ProcessEnv,
): Promise<HelperResult> {
  const bin = `docker-credential-${name}`;
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [action], { stdio: ['pipe', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        new KilnError(
          'CREDENTIAL_HELPER_FAILED',
          e.code === 'ENOENT' ? `credential helper ${bin} not found on PATH` : `credential helper ${bin}: ${e.message}`,
          { hint: 'install the helper or remove it from the docker config (credsStore/credHelpers)', cause: e },
        ),
      );
    });
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

function decodeAuth(key: string, e: AuthEntry): Credential | undefined {
  const c: Credential = {};
  if (e.auth) {
    const dec = Buffer.from(e.auth, 'base64').toString('utf8');
    const i = dec.indexOf(':');
    if (i < 0) {
      throw new KilnError('DOCKER_CONFIG_INVALID', `docker config: invalid "auth" value for ${key}`, {
        hint: 'it must be base64 of user:password; run kiln login again',
      });
    }
    c.username = dec.slice(0, i);
    c.password = dec.slice(i + 1);
  } else if (e.username !== undefined) {
    c.username = e.username;
    if (e.password !== undefined) c.password = e.password;
  }
  if (e.identitytoken) c.identityToken = e.identitytoken;
  if (e.registrytoken) c.registryToken = e.registrytoken;
  return Object.keys(c).length ? c : undefined;
}

export interface KeychainOptions {
  /** Directory holding config.json (default dockerConfigDir()). */
  configDir?: string;
  env?: NodeJS.ProcessEnv;
}

/** Docker-compatible credential store. */
export class Keychain {
  readonly configDir: string;
  readonly configFile: string;
  private readonly env: NodeJS.ProcessEnv;

  constructor(o: KeychainOptions = {}) {
    this.env = o.env ?? process.env;
    this.configDir = o.configDir ?? dockerConfigDir(this.env);
    this.configFile = join(this.configDir, 'config.json');
  }

  async readConfig(): Promise<DockerConfigFile> {
    let text: string;
    try {
      text = await readFile(this.configFile, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw new KilnError('DOCKER_CONFIG_INVALID', `${this.configFile}: cannot read`, { cause: e });
    }
    if (text.trim() === '') return {};
    try {
      const j = JSON.parse(text) as unknown;
      if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Error('not an object');
      return j as DockerConfigFile;
    } catch (e) {
      throw new KilnError('DOCKER_CONFIG_INVALID', `${this.configFile}: invalid JSON`, {
        hint: 'fix or remove the file',
        cause: e,
      });
    }
  }

  /** Write config.json atomically with mode 0600. */
  async writeConfig(cfg: DockerConfigFile): Promise<void> {
    await mkdir(dirname(this.configFile), { recursive: true, mode: 0o700 });
    const tmp = `${this.configFile}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(JSON.stringify(cfg, null, '\t') + '\n');
      await fh.sync();
    } catch (e) {
      await fh.close();
      await unlink(tmp).catch(() => undefined);
      throw e;
    }
    await fh.close();
    await rename(tmp, this.configFile);
  }

  private helperFor(cfg: DockerConfigFile, registry: string): string | undefined {
    const helpers = cfg.credHelpers ?? {};
    for (const [k, v] of Object.entries(helpers)) if (configKeyHost(k) === registry && v) return v;
    return cfg.credsStore || undefined;
  }

  /** Credentials for a registry (normalized host, `docker.io` for Docker Hub), or undefined. */
  async get(registryIn: string): Promise<Credential | undefined> {
    const registry = configKeyHost(registryIn);
    const cfg = await this.readConfig();
    const helper = this.helperFor(cfg, registry);
    if (helper) {
      const serverURL = configKeyFor(registry);
      const r = await runHelper(helper, 'get', serverURL, this.env);
      if (r.code !== 0) {
        if (/credentials not found/i.test(r.stdout + r.stderr)) return this.fromAuths(cfg, registry);
        throw new KilnError(
          'CREDENTIAL_HELPER_FAILED',
          `credential helper docker-credential-${helper} get failed for ${registry}: ${(r.stdout + r.stderr).trim().split('\n')[0] ?? ''}`,
        );
      }
      let j: { Username?: string; Secret?: string };
      try {
        j = JSON.parse(r.stdout) as typeof j;
      } catch (e) {
        throw new KilnError(
          'CREDENTIAL_HELPER_FAILED',
          `credential helper docker-credential-${helper}: invalid output`,
          {
            cause: e,
          },
        );
      }
      if (!j.Secret && !j.Username) return undefined;
      if (j.Username === '<token>') return { identityToken: j.Secret ?? '' };
      return { username: j.Username ?? '', password: j.Secret ?? '' };
    }
    return this.fromAuths(cfg, registry);
  }

  private fromAuths(cfg: DockerConfigFile, registry: string): Credential | undefined {
    const auths = cfg.auths ?? {};
    // Exact key first, then any key with the same host.
    const exact = auths[configKeyFor(registry)];
    if (exact) return decodeAuth(configKeyFor(registry), exact);
    for (const [k, v] of Object.entries(auths)) if (configKeyHost(k) === registry) return decodeAuth(k, v);
    return undefined;
  }

  /** Store credentials (via the helper if one is configured, else base64 in `auths`). */
  async store(registryIn: string, cred: { username: string; password: string }): Promise<'helper' | 'file'> {
    const registry = configKeyHost(registryIn);
    const cfg = await this.readConfig();
    const helper = this.helperFor(cfg, registry);
    const key = configKeyFor(registry);
    if (helper) {
      const r = await runHelper(
        helper,
        'store',
        JSON.stringify({ ServerURL: key, Username: cred.username, Secret: cred.password }),
        this.env,
      );
      if (r.code !== 0) {
        throw new KilnError('CREDENTIAL_HELPER_FAILED', `credential helper docker-credential-${helper} store failed`);
      }
      // docker keeps an empty entry so `auths` lists the registry
      cfg.auths = { ...(cfg.auths ?? {}), [key]: {} };
      await this.writeConfig(cfg);
      return 'helper';
    }
    const auths = { ...(cfg.auths ?? {}) };
    for (const k of Object.keys(auths)) if (configKeyHost(k) === registry && k !== key) delete auths[k];
    auths[key] = { auth: Buffer.from(`${cred.username}:${cred.password}`).toString('base64') };
    cfg.auths = auths;
    await this.writeConfig(cfg);
    return 'file';
  }

  /** Remove stored credentials; false when there were none. */
  async erase(registryIn: string): Promise<boolean> {
    const registry = configKeyHost(registryIn);
    const cfg = await this.readConfig();
    const helper = this.helperFor(cfg, registry);
    let found = false;
    if (helper) {
      const r = await runHelper(helper, 'erase', configKeyFor(registry), this.env);
      if (r.code === 0) found = true;
      else if (!/not found/i.test(r.stdout + r.stderr)) {
        throw new KilnError('CREDENTIAL_HELPER_FAILED', `credential helper docker-credential-${helper} erase failed`);
      }
    }
    const auths = { ...(cfg.auths ?? {}) };
    for (const k of Object.keys(auths)) {
      if (configKeyHost(k) === registry) {
        delete auths[k];
        found = true;
      }
    }
    if (cfg.auths) {
      cfg.auths = auths;
      await this.writeConfig(cfg);
    }
    return found;
  }

  /** A CredentialSource for RegistryOptions.credentials. */
  source(): CredentialSource {
    return (registry) => this.get(registry);
  }
}

/** The embedder's credentials after the docker keychain, one function per embedder source (see embedderFirst). */
const chainedSources = new WeakMap<CredentialSource, CredentialSource>();

/**
 * An embedder's credentials (the build service's project login) tried before the docker keychain — the same
 * function for the same embedder function. Why the same: registry transports are pooled by their credentials
 * function (src/registry/transport.ts), so a build worker's preparation (registry ping, token, a resolved base,
 * upload sessions opened ahead) and its job's engine use one pool, and the job reuses what was prepared.
 */
export function embedderFirst(first: CredentialSource): CredentialSource {
  let c = chainedSources.get(first);
  if (!c) {
    const keychain = new Keychain().source();
    c = async (r) => (await first(r)) ?? keychain(r);
    chainedSources.set(first, c);
  }
  return c;
}

/**
 * Verify credentials against a registry: ping `/v2/`, then authenticate (Basic: GET /v2/ with the credentials;
 * Bearer: fetch a token from the realm with them). Throws UNAUTHORIZED on rejection.
 */
export async function verifyLogin(
  registryIn: string,
  cred: { username: string; password: string },
  opts: RegistryOptions = {},
): Promise<void> {
  const registry = normalizeRegistryHost(registryIn);
  const apiHost = registry === DEFAULT_REGISTRY ? 'registry-1.docker.io' : registry;
  const t = new Transport(registry, apiHost, { ...opts, credentials: async () => cred });
  try {
    const res = await t.request({
      method: 'GET',
      path: '/v2/',
      scopes: [],
      expect: [200],
      ctx: { label: `login ${registry}`, kind: 'other' },
    });
    await res.body.dump().catch(() => undefined);
  } catch (e) {
    if (e instanceof KilnError && (e.code === 'UNAUTHORIZED' || e.code === 'DENIED')) {
      throw new KilnError('UNAUTHORIZED', `login ${registry}: invalid username or password (UNAUTHORIZED)`, {
        hint: 'check the credentials',
        cause: e,
      });
    }
    throw e;
  } finally {
    await t.close();
  }
}

/** `kiln login`: verify, then store. Returns where the credentials went. */
export async function login(
  registryIn: string,
  cred: { username: string; password: string },
  opts: RegistryOptions & { keychain?: Keychain } = {},
): Promise<{ registry: string; storedIn: 'helper' | 'file'; file: string }> {
  const registry = normalizeRegistryHost(registryIn);
  if (!cred.username) throw new KilnError('INVALID_OPTION', 'login: a user name is required', { hint: 'pass -u USER' });
  if (!cred.password)
    throw new KilnError('INVALID_OPTION', 'login: a password is required', { hint: 'use --password-stdin' });
  await verifyLogin(registry, cred, opts);
  const kc = opts.keychain ?? new Keychain();
  const storedIn = await kc.store(registry, cred);
  return { registry, storedIn, file: kc.configFile };
}

/** `kiln logout`: forget stored credentials; false when there were none. */
export async function logout(registryIn: string, keychain: Keychain = new Keychain()): Promise<boolean> {
  return keychain.erase(normalizeRegistryHost(registryIn));
}
