/**
 * Inside a build pod (`kiln pod-build`): fetch the job's commit with git, build it with `kiln build --push` (a
 * child process: the isolation level re-executes kiln the same way on a workstation), and report the result as
 * JSON on the termination log (`/dev/termination-log`, at most 4 KiB), which the executor and the controller read
 * from the pod's status. Everything printed goes to the container's log, which the service follows.
 *
 * Secrets come only from mounted files: the docker config.json at $DOCKER_CONFIG (the registry Secret) and the
 * build secrets at /kiln/secrets/s<i>; the job itself (KILN_POD_JOB) carries none.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { KilnError, errorMessage, isKilnError } from '../errors.js';
import { reasonOf } from '../service/runner/protocol.js';
import { BUILD_SECRETS_DIR, type PodJob, type PodResult } from './pod.js';

function run(cmd: string, args: string[], cwd: string, signal: AbortSignal): Promise<number> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd, stdio: ['ignore', 'inherit', 'inherit'], signal });
    p.on('error', () => resolve(127));
    p.on('close', (code) => resolve(code ?? 1));
  });
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
    process.stdout.write(`#0 [pod] fetch ${job.repository} ${want}\n`);
    for (const [cmd, args, cwd] of [
      ['git', ['init', '-q', checkout], work],
      ['git', ['fetch', '-q', '--depth', '1', job.repository, want], checkout],
      ['git', ['checkout', '-q', 'FETCH_HEAD'], checkout],
    ] as const) {
      if ((await run(cmd, [...args], cwd, ac.signal)) !== 0) {
        throw new KilnError('GIT_FAILED', `git ${args[0]} failed for ${job.repository} ${want}`, {
          hint: 'see the log above',
        });
      }
    }
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
