/**
 * Running the `git` CLI for the build service, with nothing of the host leaking in and no secret leaking out:
 * argument arrays only (no shell), the host's git config and credential helpers ignored, protocols whitelisted,
 * no terminal prompts, and credentials handed over through an askpass script that reads them from environment
 * variables set only on the one git process that needs them (never argv, a URL or a file). The askpass script
 * answers only for the project's own host, so a submodule or redirect elsewhere never gets the password.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KilnError } from '../../errors.js';
import type { GitCredentials } from '../model.js';
import type { RepoUrl } from './url.js';

/** Result of one git run; a non-zero exit is a result, not an exception (callers know what it means). */
export interface GitRun {
  code: number;
  stdout: Buffer;
  stderr: string;
}

export interface GitCall {
  env: Record<string, string>;
  cwd?: string;
  signal?: AbortSignal | undefined;
  /** Written to git's stdin (then closed). */
  input?: string;
  /**
   * Run git under an exclusive lock of this file that other processes respect: `flock(1)` takes it and runs git as
   * its child, which holds it until git ends (also when flock is gone: git inherits the locked file). One process
   * start instead of a lock holder beside git (see lockFile). The pair runs in its own process group, killed
   * together on abort. A lock that cannot be taken is a result with code ≠ 0 and a `flock:` line (see lockFailure).
   */
  lock?: string;
}

/**
 * Runs `git ...args`. Rejects only when git could not run or `signal` aborted it (KilnError `INTERRUPTED`; the
 * process is killed).
 */
export function runGit(args: string[], call: GitCall): Promise<GitRun> {
  return new Promise((resolve, reject) => {
    if (call.signal?.aborted) {
      reject(interrupted(call.signal));
      return;
    }
    const lock = call.lock;
    const child =
      lock === undefined
        ? spawn('git', args, { env: call.env, cwd: call.cwd, stdio: ['pipe', 'pipe', 'pipe'], signal: call.signal })
        : spawn('flock', ['--exclusive', lock, 'git', ...args], {
            env: call.env,
            cwd: call.cwd,
            stdio: ['pipe', 'pipe', 'pipe'],
            detached: true,
          });
    if (lock !== undefined && call.signal) {
      const signal = call.signal;
      // flock does not pass signals on to git: the whole group goes
      const onAbort = (): void => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      };
      signal.addEventListener('abort', onAbort, { once: true });
      child.on('close', () => signal.removeEventListener('abort', onAbort));
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.stdin.on('error', () => undefined);
    child.stdin.end(call.input ?? '');
    child.on('error', (e) => {
      if (call.signal?.aborted) reject(interrupted(call.signal));
      else if (lock !== undefined)
        reject(
          new KilnError('GIT_LOCK_FAILED', `cannot lock ${lock}: ${e.message}`, { hint: 'install util-linux (flock)' }),
        );
      else
        reject(new KilnError('GIT_NOT_FOUND', `cannot run git: ${e.message}`, { hint: 'install git (2.39 or later)' }));
    });
    child.on('close', (code) => {
      if (call.signal?.aborted) reject(interrupted(call.signal));
      else resolve({ code: code ?? 1, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

/** The error of a `lock` run whose lock flock could not take (its `flock:` line), else undefined. */
export function lockFailure(r: GitRun, lock: string): KilnError | undefined {
  const m = /^flock: .*$/m.exec(r.stderr);
  if (r.code === 0 || m === null) return undefined;
  return new KilnError('GIT_LOCK_FAILED', `cannot lock ${lock}: ${m[0]}`, {
    hint: 'check that the data dir is writable',
  });
}

export function interrupted(signal: AbortSignal): KilnError {
  return new KilnError('INTERRUPTED', 'git operation interrupted', { cause: signal.reason });
}

/**
 * The line of git's stderr that says what went wrong, shortened for a one-line message: its last `fatal:` or
 * `error:` line (else the last line) — except git's generic "Could not read from remote repository" after an ssh
 * failure, where the transport's own line before it (`ssh: connect to host …`) is the useful one.
 */
export function lastLine(stderr: string): string {
  const lines = stderr
    .split(/\r?\n|\r/)
    .map((l) => l.trim())
    .filter((l) => l !== '');
  let i = lines.length - 1;
  while (i >= 0 && !/^(fatal|error):/.test(lines[i] as string)) i--;
  if (i < 0) i = lines.length - 1;
  if (i > 0 && /^fatal: Could not read from remote repository/.test(lines[i] as string)) i--;
  const line = lines[i] ?? 'no error output';
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}

/**
 * The environment of every git process: the service's own, minus anything that steers git (`GIT_*`), ssh agents
 * and askpass programs, plus isolation from the system and user git config (no credential helpers, `insteadOf`
 * rewrites or filters from the host), no terminal prompts, and the C locale (stable messages).
 */
export function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || k.startsWith('GIT_') || k.startsWith('KILN_GIT_')) continue;
    if (k === 'SSH_ASKPASS' || k === 'SSH_AUTH_SOCK' || k === 'LANGUAGE') continue;
    env[k] = v;
  }
  env.GIT_CONFIG_NOSYSTEM = '1';
  env.GIT_CONFIG_GLOBAL = '/dev/null';
  env.GIT_TERMINAL_PROMPT = '0';
  env.LC_ALL = 'C';
  return env;
}

/**
 * `-c` options for every git run: only http(s), ssh and (when allowed) file transports — `ext::` and `fd::` never;
 * no credential helper; automatic gc in the foreground (under the mirror's lock, not detached behind it).
 */
export function configArgs(allowFile: boolean): string[] {
  const cfg = [
    'protocol.allow=never',
    'protocol.https.allow=always',
    'protocol.http.allow=always',
    'protocol.ssh.allow=always',
    `protocol.file.allow=${allowFile ? 'always' : 'never'}`,
    'protocol.ext.allow=never',
    'protocol.fd.allow=never',
    'credential.helper=',
    'core.askPass=',
    'gc.autoDetach=false',
    'maintenance.autoDetach=false',
  ];
  return cfg.flatMap((c) => ['-c', c]);
}

/**
 * The askpass program: git calls it with a prompt like `Username for 'https://host:port': ` or
 * `Password for 'https://user@host:port': `. It answers from `KILN_GIT_USERNAME` / `KILN_GIT_PASSWORD` only when
 * the prompt's host is `KILN_GIT_HOST`, and fails otherwise (git then fails without prompting).
 */
export const ASKPASS_SCRIPT = `#!/bin/sh
# kiln: answers git's credential prompts from the environment of this one git process.
url=\${1#*\\'}
url=\${url%\\'*}
rest=\${url#*://}
auth=\${rest%%/*}
host=\${auth##*@}
[ -n "$KILN_GIT_HOST" ] && [ "$host" = "$KILN_GIT_HOST" ] || exit 1
case "$1" in
  Username*) printf '%s\\n' "$KILN_GIT_USERNAME" ;;
  Password*) printf '%s\\n' "$KILN_GIT_PASSWORD" ;;
  *) exit 1 ;;
esac
`;

/** Quotes `s` for the POSIX shell git runs `GIT_SSH_COMMAND` with. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** `GIT_SSH_COMMAND`: no host ssh config or agent, no prompts, strict host keys, only the given key. */
export function sshCommand(keyFile: string | undefined, knownHostsFile: string | undefined): string {
  const parts = ['ssh', '-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes'];
  if (knownHostsFile !== undefined) parts.push('-o', shellQuote(`UserKnownHostsFile=${knownHostsFile}`));
  if (keyFile !== undefined) parts.push('-i', shellQuote(keyFile), '-o', 'IdentitiesOnly=yes');
  return parts.join(' ');
}

/** What a git process needs to authenticate: env additions, the secret values (for redaction), a clean-up. */
export interface GitAuth {
  env: Record<string, string>;
  /** The same http(s) credentials for an in-process fetch (smart-http.ts): only when the askpass would answer. */
  basic?: { username: string; password: string };
  secrets: string[];
  cleanup(): Promise<void>;
}

function missing(project: string, what: string, cause?: unknown): KilnError {
  return new KilnError('GIT_CREDENTIALS_MISSING', `git credentials of project "${project}": ${what}`, {
    hint: 'check gitCredentials in the project config and the secret mounted into the service',
    cause,
  });
}

/** A password from `passwordEnv` (the service's environment) or `passwordFile` (trailing newline trimmed). */
async function readPassword(creds: GitCredentials, project: string): Promise<string | undefined> {
  if (creds.passwordEnv !== undefined) {
    const v = process.env[creds.passwordEnv];
    if (v === undefined) throw missing(project, `environment variable ${creds.passwordEnv} is not set`);
    return v;
  }
  if (creds.passwordFile !== undefined) {
    try {
      return (await readFile(creds.passwordFile, 'utf8')).replace(/\r?\n$/, '');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? 'error';
      throw missing(project, `cannot read passwordFile ${creds.passwordFile} (${code})`);
    }
  }
  return undefined;
}

/**
 * Credentials for fetching `repo`. `creds` are used only when `sameHost` (the project's own host: a submodule on
 * another host gets none); the known_hosts file applies to every ssh host. An ssh key readable by group or others
 * (a Kubernetes secret's default mode) is copied into `privateDir` with mode 0600, since ssh refuses it otherwise.
 */
export async function gitAuth(
  repo: RepoUrl,
  creds: GitCredentials | undefined,
  opts: { project: string; sameHost: boolean; privateDir: string; askpass: string },
): Promise<GitAuth> {
  const env: Record<string, string> = {};
  const secrets: string[] = [];
  const temp: string[] = [];
  let basic: GitAuth['basic'];
  const cleanup = async (): Promise<void> => {
    for (const f of temp) await rm(f, { force: true });
  };
  if (repo.kind === 'http' && creds !== undefined && opts.sameHost) {
    const password = await readPassword(creds, opts.project);
    if (password !== undefined || creds.username !== undefined) {
      env.GIT_ASKPASS = opts.askpass;
      env.KILN_GIT_HOST = repo.host;
      env.KILN_GIT_USERNAME = creds.username ?? 'git';
      env.KILN_GIT_PASSWORD = password ?? '';
      if (password !== undefined && password !== '') secrets.push(password);
      basic = { username: env.KILN_GIT_USERNAME, password: env.KILN_GIT_PASSWORD };
    }
  }
  if (repo.kind === 'ssh') {
    let key = opts.sameHost ? creds?.sshKeyFile : undefined;
    if (key !== undefined) {
      try {
        if (((await stat(key)).mode & 0o077) !== 0) {
          const copy = join(opts.privateDir, `key-${randomBytes(8).toString('hex')}`);
          temp.push(copy);
          await writeFile(copy, await readFile(key), { mode: 0o600 });
          key = copy;
        }
      } catch (e) {
        await cleanup();
        const code = (e as NodeJS.ErrnoException).code ?? 'error';
        throw missing(opts.project, `cannot read sshKeyFile ${creds?.sshKeyFile ?? ''} (${code})`);
      }
    }
    env.GIT_SSH_COMMAND = sshCommand(key, creds?.knownHostsFile);
  }
  return { env, secrets, cleanup, ...(basic ? { basic } : {}) };
}

/**
 * Takes an exclusive lock on `path` (created when missing) that other processes respect: `flock(1)` holds it
 * for as long as its child (cat) reads our pipe. The kernel drops it when that process ends — also when the service
 * dies — so a crash never leaves a stale lock. Resolves with the release function once the lock is held.
 */
export function lockFile(path: string, signal?: AbortSignal): Promise<() => Promise<void>> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(interrupted(signal));
      return;
    }
    // flock runs cat once it holds the lock; cat echoes the newline written below: that echo says the lock is held
    // (no shell in between: one exec less on every build's fetch)
    const child = spawn('flock', ['--exclusive', path, 'cat'], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin.write('\n');
    let held = false;
    let stderr = '';
    const exited = new Promise<void>((r) => child.on('close', () => r()));
    const onAbort = (): void => {
      child.kill('SIGKILL');
      reject(interrupted(signal as AbortSignal));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    child.stdin.on('error', () => undefined);
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.stdout.once('data', () => {
      held = true;
      signal?.removeEventListener('abort', onAbort);
      resolve(async () => {
        child.stdin.end();
        await exited;
      });
    });
    const fail = (why: string): void => {
      signal?.removeEventListener('abort', onAbort);
      if (!held) {
        reject(new KilnError('GIT_LOCK_FAILED', `cannot lock ${path}: ${why}`, { hint: 'install util-linux (flock)' }));
      }
    };
    child.on('error', (e) => fail(e.message));
    child.on('close', (code) => fail(lastLine(stderr || `flock exited with ${code}`)));
  });
}
