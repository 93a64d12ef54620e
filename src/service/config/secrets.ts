/**
 * Credentials of the build service are stored and shown as references (an environment variable name or a file path)
 * and resolved only when used: `readSecretRef` resolves one, with errors that name the variable or the file but never
 * the value; `redactProject` is what the API answers with — a copy built field by field from the model, so that no
 * resolved value (nor anything else a caller attached to the object) can ride along.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { KilnError } from '../../errors.js';
import type {
  GitCredentials,
  GitSecretValues,
  ImageSpec,
  Project,
  RegistryCredentials,
  SecretRef,
  WebhookSecrets,
} from '../model.js';
import { redactDelivery } from '../delivery/config.js';

/** Any reference shape of the model: `{env|file}`, git or registry credentials (their password), webhook secrets. */
export type SecretReference =
  | SecretRef
  | GitCredentials
  | RegistryCredentials
  | { secretEnv?: string; secretFile?: string }
  | { tokenEnv?: string; tokenFile?: string };

/** Secret files larger than this are refused (a token or a key, not a disk image; also guards against /dev/zero). */
const MAX_SECRET_FILE = 1024 * 1024;

function unavailable(message: string, hint: string): KilnError {
  return new KilnError('SECRET_UNAVAILABLE', message, { hint });
}

function readSecretFile(file: string, what: string): string {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw unavailable(`${what}: cannot read ${file} (${code})`, 'the file must exist and be readable by kiln serve');
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw unavailable(`${what}: ${file} is not a regular file`, 'point the reference at a file');
    if (st.size > MAX_SECRET_FILE) {
      throw unavailable(`${what}: ${file} is larger than 1 MiB`, 'point the reference at the secret itself');
    }
    const buf = Buffer.alloc(st.size);
    let n = 0;
    while (n < buf.length) {
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) break;
      n += r;
    }
    return buf.subarray(0, n).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** The reference pairs of the model, in the order they are looked for. */
const PAIRS = [
  ['env', 'file'],
  ['passwordEnv', 'passwordFile'],
  ['secretEnv', 'secretFile'],
  ['tokenEnv', 'tokenFile'],
] as const;

/**
 * The value a reference points at: the environment variable (of the service process, or `env`) or the file's
 * content with one trailing newline removed (`echo token > file` works). Takes any reference shape of the model; of
 * `GitCredentials` it reads the password (`passwordEnv`/`passwordFile`; ssh key files are paths handed to ssh, not
 * values). `what` says whose secret it is (`project shop: git password`) and starts every error. Throws KilnError
 * `SECRET_UNAVAILABLE` when there is no reference or two, the variable is unset or empty, or the file cannot be read,
 * is not a regular file, is larger than 1 MiB or is empty. Messages name the variable or the file, never the value.
 */
export function readSecretRef(ref: SecretReference, what: string, env: NodeJS.ProcessEnv = process.env): string {
  const r: Record<string, unknown> = { ...ref };
  const str = (k: string): string | undefined => {
    const v = r[k];
    return typeof v === 'string' ? v : undefined;
  };
  const pair = PAIRS.find(([e, f]) => str(e) !== undefined || str(f) !== undefined);
  if (pair === undefined) {
    throw unavailable(`${what}: no secret reference`, 'give an environment variable (…Env) or a file (…File)');
  }
  const name = str(pair[0]);
  const file = str(pair[1]);
  if (name !== undefined && file !== undefined) {
    throw unavailable(`${what}: both ${pair[0]} and ${pair[1]} are given`, 'give one of them');
  }
  if (name !== undefined) {
    const v = env[name];
    if (v === undefined) {
      throw unavailable(`${what}: environment variable ${name} is not set`, 'set it in the environment of kiln serve');
    }
    if (v === '') throw unavailable(`${what}: environment variable ${name} is empty`, 'set it to the secret');
    return v;
  }
  const value = readSecretFile(file!, what).replace(/\r?\n$/, '');
  if (value === '') throw unavailable(`${what}: ${file!} is empty`, 'write the secret into the file');
  return value;
}

/**
 * The values of a project's git credentials, for a runner that fetches the source itself (the Kubernetes
 * executor puts them into the build pod's git Secret): the password from its reference, the ssh key and
 * known_hosts as their files hold them (a key needs its final newline).
 */
export function readGitCredentials(c: GitCredentials, what: string): GitSecretValues {
  const out: GitSecretValues = {};
  if (c.username !== undefined) out.username = c.username;
  if (c.passwordEnv !== undefined || c.passwordFile !== undefined) out.password = readSecretRef(c, `${what} password`);
  if (c.sshKeyFile !== undefined) out.sshKey = readSecretFile(c.sshKeyFile, `${what} sshKeyFile`);
  if (c.knownHostsFile !== undefined) out.knownHosts = readSecretFile(c.knownHostsFile, `${what} knownHostsFile`);
  return out;
}

/** The listed keys of `o` whose values are strings (references are strings; anything else is dropped). */
function refs<T extends { [K in keyof T]?: string }>(o: T, keys: readonly (keyof T & string)[]): T {
  const out: Partial<Record<keyof T, string>> = {};
  for (const k of keys) {
    const v: unknown = o[k];
    if (typeof v === 'string') out[k] = v;
  }
  return out as T;
}

/** A repository URL without any user-info secret (the parser rejects them; this is the second line of defence). */
function redactUrl(url: string): string {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*:\/\/)([^/?#@]*)@/.exec(url);
  if (m !== null) {
    const scheme = m[1]!.toLowerCase();
    const user = m[2]!.split(':')[0]!;
    const keep = scheme.startsWith('http') ? '' : `${user}@`;
    return `${m[1]!}${keep}${url.slice(m[0].length)}`;
  }
  // scp-like user:password@host:path
  return url.replace(/^([^@/:]+):[^@/]*@/, '$1@');
}

function redactWebhooks(w: WebhookSecrets): WebhookSecrets {
  const out: WebhookSecrets = {};
  if (w.github) out.github = refs(w.github, ['secretEnv', 'secretFile']);
  if (w.gitlab) out.gitlab = refs(w.gitlab, ['tokenEnv', 'tokenFile']);
  if (w.gitea) out.gitea = refs(w.gitea, ['secretEnv', 'secretFile']);
  if (w.forgejo) out.forgejo = refs(w.forgejo, ['secretEnv', 'secretFile']);
  if (w.bitbucket) out.bitbucket = refs(w.bitbucket, ['secretEnv', 'secretFile']);
  if (w.generic) out.generic = refs(w.generic, ['secretEnv', 'secretFile']);
  return out;
}

function redactImage(img: ImageSpec): ImageSpec {
  return {
    name: img.name,
    context: img.context,
    dockerfile: img.dockerfile,
    ...(img.target === undefined ? {} : { target: img.target }),
    // Build args are not secrets (they end up in the image history); secrets are references only.
    buildArgs: Object.fromEntries(Object.entries(img.buildArgs)),
    secrets: Object.fromEntries(
      Object.entries(img.secrets).map(([id, ref]): [string, SecretRef] => [id, refs(ref, ['env', 'file'])]),
    ),
    strategy: img.strategy,
    backend: img.backend,
    paths: [...img.paths],
    tags: [...img.tags],
    ...(img.timeoutSeconds === undefined ? {} : { timeoutSeconds: img.timeoutSeconds }),
  };
}

/**
 * A copy of the project for API answers and logs: every field of the model copied explicitly, credentials reduced to
 * their references (`username`, `…Env`, `…File`), the repository URL without user-info secrets. Whatever else an
 * object carries (a resolved password a caller attached, say) is not copied.
 */
export function redactProject(p: Project): Project {
  return {
    name: p.name,
    repository: redactUrl(p.repository),
    ...(p.gitCredentials === undefined
      ? {}
      : {
          gitCredentials: refs(p.gitCredentials, [
            'username',
            'passwordEnv',
            'passwordFile',
            'sshKeyFile',
            'knownHostsFile',
          ]),
        }),
    registry: p.registry,
    ...(p.registryCredentials === undefined
      ? {}
      : { registryCredentials: refs(p.registryCredentials, ['username', 'passwordEnv', 'passwordFile']) }),
    insecureRegistry: p.insecureRegistry,
    branches: [...p.branches],
    tags: [...p.tags],
    defaultBranch: p.defaultBranch,
    ...(p.webhooks === undefined ? {} : { webhooks: redactWebhooks(p.webhooks) }),
    images: p.images.map(redactImage),
    submodules: p.submodules,
    depth: p.depth,
    lfs: p.lfs,
    runPolicy: p.runPolicy,
    concurrency: p.concurrency,
    ...(p.timeoutSeconds === undefined ? {} : { timeoutSeconds: p.timeoutSeconds }),
    retention: {
      successfulCount: p.retention.successfulCount,
      failedCount: p.retention.failedCount,
      maxAgeDays: p.retention.maxAgeDays,
    },
    ...(p.poll === undefined ? {} : { poll: { intervalSeconds: p.poll.intervalSeconds } }),
    ...redactDelivery(p),
  };
}
