/**
 * `kiln builds ls|show|logs|start|cancel|rerun` — the build service's builds, through its REST API
 * (src/service/client.ts; `--server`/`--token` or KILN_SERVER/KILN_TOKEN).
 *
 * `kiln builds logs -f ID` writes the log's exact bytes to stdout and exits 0 when the build succeeded, 1 when it
 * failed, was cancelled or timed out (so `kiln builds logs -f $id && deploy` works); without -f it prints the log
 * as it is now and exits 0.
 */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import type { LogEnd } from '../service/api/sse.js';
import { addServiceOptions, withClient, type ServiceClient } from '../service/client.js';
import { FINAL_PHASES, PHASES, type Build, type Phase } from '../service/model.js';
import type { ListedBuild } from '../service/core.js';

/** Short duration: `850ms`, `12s`, `3m05s`, `2h04m`, `3d02h`. */
export function shortDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const s = Math.floor(ms / 1000);
  const pad = (n: number): string => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}

/** How long a build ran (so far, when it still runs); '-' before it started. */
export function buildDuration(b: ListedBuild, now = Date.now()): string {
  if (!b.startedAt) return '-';
  const end = b.finishedAt ? Date.parse(b.finishedAt) : now;
  return shortDuration(end - Date.parse(b.startedAt));
}

/** `refs/heads/main` → `main`, `refs/tags/v1` → `v1`; '-' for a build by commit. */
export function shortRef(ref: string): string {
  if (!ref) return '-';
  return ref.replace(/^refs\/(heads|tags)\//, '');
}

/** Columns padded to their widest cell, three spaces apart (like `kiln images`). */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return (
    rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]! + 3))).join('')).join('\n') +
    '\n'
  );
}

/** The `kiln builds ls` table. */
export function formatBuildsTable(builds: readonly ListedBuild[], now = Date.now()): string {
  return table([
    ['ID', 'PROJECT', 'IMAGE', '#', 'REF', 'COMMIT', 'PHASE', 'AGE', 'DURATION'],
    ...builds.map((b) => [
      b.id,
      b.project,
      b.image,
      String(b.number),
      shortRef(b.ref),
      b.commit ? b.commit.slice(0, 7) : '-',
      b.phase,
      shortDuration(now - Date.parse(b.createdAt)),
      buildDuration(b, now),
    ]),
  ]);
}

function trigger(b: Build): string {
  const t = b.trigger;
  const parts: string[] = [t.type];
  if (t.by) parts.push(`by ${t.by}`);
  if (t.of) parts.push(`of ${t.of}`);
  if (t.forge) parts.push(`from ${t.forge}${t.delivery ? ` (${t.delivery})` : ''}`);
  if (t.base) parts.push(`base ${t.base}${t.baseDigest ? `@${t.baseDigest}` : ''}`);
  return parts.join(' ');
}

/** The `kiln builds show` text. */
export function formatBuild(b: Build, now = Date.now()): string {
  const when = (iso: string | null): string => (iso ? `${iso} (${shortDuration(now - Date.parse(iso))} ago)` : '-');
  const fields: [string, string][] = [
    ['ID', b.id],
    ['Project', b.project],
    ['Image', b.image],
    ['Number', String(b.number)],
    ['Ref', b.ref || '-'],
    ['Commit', b.commit ?? '-'],
    ['Phase', b.phase + (b.cancelRequested && !FINAL_PHASES.includes(b.phase) ? ' (cancel requested)' : '')],
    ['Reason', b.reason ?? '-'],
    ['Trigger', trigger(b)],
    ['Created', when(b.createdAt)],
    ['Started', when(b.startedAt)],
    ['Finished', when(b.finishedAt)],
    ['Duration', buildDuration(b, now)],
    ['Digest', b.digest ?? '-'],
  ];
  let out = fields.map(([k, v]) => `${(k + ':').padEnd(10)}${v}\n`).join('');
  out += `Tags:${b.tags.length ? '' : '     -'}\n` + b.tags.map((t) => `  ${t}\n`).join('');
  if (b.stages.length) {
    out += 'Stages:\n';
    out += table(
      b.stages.map((s) => [
        `  ${s.name}`,
        s.kind,
        s.status,
        s.durationMs !== undefined ? shortDuration(s.durationMs) : s.status === 'running' ? '…' : '-',
      ]),
    );
  }
  return out;
}

/** stdout with backpressure; a closed pipe (`| head`) ends the command quietly. */
async function toStdout(b: Buffer): Promise<void> {
  if (process.stdout.write(b)) return;
  await new Promise<void>((resolve, reject) => {
    const done = (e?: Error): void => {
      process.stdout.off('drain', done);
      process.stdout.off('error', done);
      if (e) reject(e);
      else resolve();
    };
    process.stdout.on('drain', done);
    process.stdout.on('error', done);
  });
}

/** The exit status of a followed build: 0 when it succeeded; otherwise a line on stderr and 1. */
function settle(id: string, end: LogEnd): boolean {
  if (end.phase === 'succeeded') return true;
  if (end.shutdown) {
    throw new KilnError(
      'SERVICE_SHUTDOWN',
      `the kiln service stopped while build ${id} was ${end.phase ?? 'running'}`,
      {
        hint: `follow it again once the service is back: kiln builds logs -f ${id}`,
      },
    );
  }
  const why = end.reason ? `: ${end.reason}` : '';
  process.stderr.write(`kiln: build ${id} ${end.phase === null ? 'ended' : end.phase}${why}\n`);
  return false;
}

async function follow(client: ServiceClient, id: string): Promise<boolean> {
  return settle(id, await client.followLog(id, toStdout));
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

function parseLimit(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 500) {
    throw new KilnError('INVALID_OPTION', `--limit "${v}": expected a whole number from 1 to 500`);
  }
  return n;
}

function parsePhase(v: string): Phase {
  const p = PHASES.find((x) => x === v);
  if (!p) throw new KilnError('INVALID_OPTION', `--phase "${v}": expected one of ${PHASES.join(', ')}`);
  return p;
}

export function register(program: Command): void {
  const builds = addServiceOptions(
    program.command('builds').description('list, start, follow and cancel builds of the kiln build service'),
  );

  builds
    .command('ls')
    .description('list builds, newest first')
    .option('--project <name>', 'only this project')
    .option('--image <name>', 'only this image')
    .option('--phase <phase>', `only this phase (${PHASES.join(', ')})`, parsePhase)
    .option('--limit <n>', 'at most this many (1-500)', parseLimit, 20)
    .option('--json', 'print the page as JSON ({"builds": [...], "next": cursor|null})')
    .action(
      async (flags: { project?: string; image?: string; phase?: Phase; limit: number; json?: boolean }, cmd: Command) =>
        withClient(cmd, async (c) => {
          const page = await c.listBuilds({
            project: flags.project,
            image: flags.image,
            phase: flags.phase,
            limit: flags.limit,
          });
          if (flags.json) process.stdout.write(JSON.stringify(page, null, 2) + '\n');
          else process.stdout.write(formatBuildsTable(page.builds));
        }),
    );

  builds
    .command('show')
    .description('show a build: phase, reason, stages with durations, pushed tags and digest')
    .argument('<id>', 'build id')
    .option('--json', 'print the build as JSON')
    .action(async (id: string, flags: { json?: boolean }, cmd: Command) =>
      withClient(cmd, async (c) => {
        const b = await c.getBuild(id);
        process.stdout.write(flags.json ? JSON.stringify(b, null, 2) + '\n' : formatBuild(b));
      }),
    );

  builds
    .command('logs')
    .description("print a build's log; -f follows it until the build ends")
    .argument('<id>', 'build id')
    .option('-f, --follow', 'follow the log; exit 0 when the build succeeded, 1 when it did not')
    .addHelpText(
      'after',
      "\nWith -f the exit status is the build's: 0 succeeded, 1 failed, cancelled or timed out.\n" +
        'The log goes to stdout byte for byte; what kiln itself says goes to stderr.\n',
    )
    .action(async (id: string, flags: { follow?: boolean }, cmd: Command) =>
      withClient(cmd, async (c) => {
        if (!flags.follow) return c.log(id, toStdout);
        if (!(await follow(c, id))) process.exitCode = 1;
      }),
    );

  builds
    .command('start')
    .description('start builds of a project (one per image); prints the new build ids')
    .argument('<project>', 'project name')
    .option('--ref <ref>', "branch, tag or full ref (default: the project's default branch)")
    .option('--commit <sha>', 'commit to build (with --ref: must be on it)')
    .option('--image <name>', 'only this image (repeatable; default: all)', collect)
    .option('--follow', 'then follow their logs one after another; exit 1 unless all succeeded')
    .action(
      async (
        project: string,
        flags: { ref?: string; commit?: string; image?: string[]; follow?: boolean },
        cmd: Command,
      ) =>
        withClient(cmd, async (c) => {
          let ref = flags.ref;
          if (ref === undefined && flags.commit === undefined) ref = (await c.getProject(project)).defaultBranch;
          const started = await c.startBuilds(project, { ref, commit: flags.commit, images: flags.image });
          process.stdout.write(started.map((b) => b.id + '\n').join(''));
          if (!flags.follow) return;
          let ok = true;
          for (const b of started) {
            process.stderr.write(`==> build ${b.id} (${b.project}/${b.image})\n`);
            ok = (await follow(c, b.id)) && ok;
          }
          if (!ok) process.exitCode = 1;
        }),
    );

  builds
    .command('cancel')
    .description('cancel a queued or running build')
    .argument('<id>', 'build id')
    .action(async (id: string, _flags: unknown, cmd: Command) =>
      withClient(cmd, async (c) => {
        const b = await c.cancelBuild(id);
        process.stderr.write(
          b.phase === 'cancelled' ? `build ${b.id} cancelled\n` : `build ${b.id}: cancel requested (${b.phase})\n`,
        );
      }),
    );

  builds
    .command('rerun')
    .description('build the same image at the same commit again; prints the new build id')
    .argument('<id>', 'build id')
    .action(async (id: string, _flags: unknown, cmd: Command) =>
      withClient(cmd, async (c) => {
        process.stdout.write((await c.rerunBuild(id)).id + '\n');
      }),
    );
}
