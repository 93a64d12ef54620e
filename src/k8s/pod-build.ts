/**
 * Inside a build pod (`kiln pod-build`): fetch the job's commit with git, build it with `kiln build --push` (a
 * child process: the isolation level re-executes kiln the same way on a workstation), and report the result as
 * JSON on the termination log (`/dev/termination-log`, at most 4 KiB), which the executor and the controller read
 * from the pod's status. Everything printed goes to the container's log, which the service follows.
 *
 * Secrets come only from mounted files: the docker config.json at $DOCKER_CONFIG (the registry Secret), the
 * build secrets at /kiln/secrets/s<i> and the git credentials at /kiln/git (`username` + `password`, or
 * `ssh-privatekey` + `known_hosts`); the job itself (KILN_POD_JOB) carries none. The fetch uses the service's own
 * git plumbing (src/service/git/exec.ts): the password reaches git through the askpass script from the one git
 * process's environment (never argv or a URL), the ssh key is copied to a private 0600 file for ssh, host keys
 * are checked strictly, and no git or ssh configuration of the image applies.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { KilnError, errorMessage, isKilnError } from '../errors.js';
import type { GitCredentials } from '../service/model.js';
import { reasonOf } from '../service/runner/protocol.js';
import { ASKPASS_SCRIPT, baseEnv, configArgs, gitAuth, lastLine, runGit } from '../service/git/exec.js';
import { parseRepositoryUrl, redactText, redactUrl } from '../service/git/url.js';
import { BUILD_SECRETS_DIR, GIT_AUTH_DIR, type PodJob, type PodResult } from './pod.js';

function run(cmd: string, args: string[], cwd: string, signal: AbortSignal): Promise<number> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd, stdio: ['ignore', 'inherit', 'inherit'], signal });
    p.on('error', () => resolve(127));
    p.on('close', (code) => resolve(code ?? 1));
  });
}

/**
 * The git credentials mounted at `dir` (the build pod's git Secret), as references to its files: `password`
 * (+ `username`, default `git`) for https, `ssh-privatekey` + `known_hosts` for ssh; undefined when nothing is
 * mounted. A key without known_hosts is refused: kiln never trusts a host key on first use.
 */
export async function podGitCredentials(dir = GIT_AUTH_DIR): Promise<GitCredentials | undefined> {
  const has = (k: string): boolean => existsSync(join(dir, k));
  if (has('ssh-privatekey')) {
    if (!has('known_hosts')) {
      throw new KilnError(
        'GIT_CREDENTIALS_MISSING',
        `the git Secret mounted at ${dir} has ssh-privatekey but no known_hosts`,
        {
          hint: 'add the server host keys to the Secret as known_hosts (ssh-keyscan HOST, then verify them)',
        },
      );
    }
    return { sshKeyFile: join(dir, 'ssh-privatekey'), knownHostsFile: join(dir, 'known_hosts') };
  }
  if (has('password')) {
    const creds: GitCredentials = { passwordFile: join(dir, 'password') };
    if (has('username')) creds.username = (await readFile(join(dir, 'username'), 'utf8')).trim();
    return creds;
  }
  return undefined;
}

/**
 * Fetch the job's commit (or ref) into `checkout` — only that commit, depth 1 — with the credentials mounted at
 * `authDir`. Resolves to the commit checked out. A failure is one line (git's last error line, secrets redacted).
 */
export async function fetchSource(
  job: Pick<PodJob, 'repository' | 'commit' | 'ref'>,
  checkout: string,
  o: { authDir?: string; signal?: AbortSignal; allowFile?: boolean } = {},
): Promise<string> {
  const repo = parseRepositoryUrl(job.repository, { allowFile: o.allowFile ?? false });
  const creds = await podGitCredentials(o.authDir);
  const priv = await mkdtemp(join(tmpdir(), 'kiln-git-'));
  const askpass = join(priv, 'askpass.sh');
  await writeFile(askpass, ASKPASS_SCRIPT, { mode: 0o700 });
  const auth = await gitAuth(repo, creds, {
    project: redactUrl(job.repository),
    sameHost: true,
    privateDir: priv,
    askpass,
  }).catch(async (e: unknown) => {
    await rm(priv, { recursive: true, force: true });
    throw e;
  });
  const want = job.commit ?? job.ref ?? 'HEAD';
  try {
    const env = { ...baseEnv(), ...auth.env };
    const cfg = configArgs(o.allowFile ?? false);
    const steps: [string[], string | undefined][] = [
      [['init', '-q', checkout], undefined],
      [['fetch', '-q', '--no-tags', '--depth', '1', '--', repo.url, want], checkout],
      [['checkout', '-q', '--detach', 'FETCH_HEAD'], checkout],
      [['rev-parse', 'HEAD'], checkout],
    ];
    let out = '';
    for (const [args, cwd] of steps) {
      const r = await runGit([...cfg, ...args], { env, ...(cwd ? { cwd } : {}), signal: o.signal });
      if (r.code !== 0) {
        throw new KilnError(
          'GIT_FAILED',
          `git ${args[0]} of ${redactUrl(job.repository)} ${want} failed: ${redactText(lastLine(r.stderr), auth.secrets)}`,
          { hint: 'check the repository URL, the commit and the git Secret of the build' },
        );
      }
      out = r.stdout.toString('utf8').trim();
    }
    return out;
  } finally {
    await auth.cleanup();
    await rm(priv, { recursive: true, force: true });
  }
}

/** The job from KILN_POD_JOB, checked. */
export function readPodJob(env: NodeJS.ProcessEnv = process.env): PodJob {
  const raw = env.KILN_POD_JOB;
  if (!raw) throw new KilnError('POD_JOB_INVALID', 'KILN_POD_JOB is not set: kiln pod-build runs only in a build pod');
  let job: PodJob;
  try {
    job = JSON.parse(raw) as PodJob;
  } catch (e) {
    throw new KilnError('POD_JOB_INVALID', `KILN_POD_JOB is not JSON: ${errorMessage(e)}`);
  }
  if (!job.repository || (!job.commit && !job.ref) || !Array.isArray(job.tags) || job.tags.length === 0) {
    throw new KilnError('POD_JOB_INVALID', 'KILN_POD_JOB needs repository, commit or ref, and tags');
  }
  return job;
}

/** The `kiln build` arguments of a job (secrets by file, never by value). */
export function buildArgs(
  job: PodJob,
  checkout: string,
  metadataFile: string,
  isolation: string | undefined,
): string[] {
  const args = ['build', '--push', '--progress', 'plain', '--metadata-file', metadataFile];
  args.push('--file', join(checkout, job.dockerfile));
  for (const t of job.tags) args.push('--tag', t);
  for (const [k, v] of Object.entries(job.buildArgs)) args.push('--build-arg', `${k}=${v}`);
  for (const [k, v] of Object.entries(job.labels)) args.push('--label', `${k}=${v}`);
  if (job.target) args.push('--target', job.target);
  if (job.noCache) args.push('--no-cache');
  for (const h of job.insecureRegistries) args.push('--insecure-registry', h);
  job.secretIds.forEach((id, i) => args.push('--secret', `id=${id},src=${join(BUILD_SECRETS_DIR, `s${i}`)}`));
  if (job.cacheRef)
    args.push(
      '--cache-from',
      `type=registry,ref=${job.cacheRef}`,
      '--cache-to',
      `type=registry,ref=${job.cacheRef},mode=max`,
    );
  if (isolation) args.push('--isolation', isolation);
  args.push(join(checkout, job.context));
  return args;
}

/** Run the pod's build; resolves to the exit code (the result is on the termination log). */
export async function podBuildMain(terminationLog = '/dev/termination-log'): Promise<number> {
  const ac = new AbortController();
  process.once('SIGTERM', () => ac.abort());
  const report = async (r: PodResult): Promise<void> => {
    const s = JSON.stringify(r);
    await writeFile(terminationLog, s.length <= 4096 ? s : JSON.stringify({ ...r, message: 'result too long' })).catch(
      () => undefined,
    );
  };
  try {
    const job = readPodJob();
    const work = await mkdtemp(join(process.env.KILN_HOME ?? tmpdir(), 'src-'));
    const checkout = join(work, 'src');
    const want = job.commit ?? job.ref ?? 'HEAD';
    process.stdout.write(`#0 [pod] fetch ${redactUrl(job.repository)} ${want}\n`);
    const commit = await fetchSource(job, checkout, { signal: ac.signal });
    process.stdout.write(`#0 checked out ${commit}\n`);
    const md = join(work, 'metadata.json');
    const kiln = process.argv[1] ?? 'kiln';
    const code = await run(
      process.execPath,
      [kiln, ...buildArgs(job, checkout, md, process.env.KILN_ISOLATION)],
      checkout,
      ac.signal,
    );
    if (code !== 0 || !existsSync(md)) {
      const message = ac.signal.aborted ? 'build interrupted' : `kiln build exited ${code}`;
      await report({ ok: false, code: ac.signal.aborted ? 'INTERRUPTED' : 'BUILD_FAILED', message, reason: message });
      return code || 1;
    }
    const meta = JSON.parse(await readFile(md, 'utf8')) as Record<string, string>;
    await report({
      ok: true,
      digest: meta['containerimage.digest'] ?? '',
      configDigest: meta['containerimage.config.digest'] ?? '',
      pushed: job.tags,
    });
    return 0;
  } catch (e) {
    const code = isKilnError(e) ? e.code : 'INTERNAL';
    const message = errorMessage(e).split('\n')[0] ?? 'failed';
    process.stderr.write(`kiln: ${message}\n`);
    await report({ ok: false, code, message, reason: reasonOf(code, message) });
    return 1;
  }
}
