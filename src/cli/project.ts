/**
 * `kiln project apply|ls|show|rm` — the build service's projects, through its REST API (src/service/client.ts).
 * `apply -f FILE` sends the file as it is (YAML or JSON; `-f -` reads stdin): a document with a `projects:` list
 * is applied as a whole, a single project (a mapping with `name`) is created or replaced on its own.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { parse, stringify } from 'yaml';
import { KilnError } from '../errors.js';
import type { ApplyResult } from '../service/core.js';
import type { Project } from '../service/model.js';
import { addServiceOptions, withClient } from '../service/client.js';
import { table } from './builds.js';
import { formatTriggerResult } from './deliveries.js';

async function readInput(file: string): Promise<string> {
  if (file !== '-') {
    try {
      return await readFile(file, 'utf8');
    } catch (e) {
      throw new KilnError('FILE_NOT_FOUND', `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
  }
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** What `apply` prints: one `project/NAME created|updated|unchanged` line per project. */
export function formatApply(r: ApplyResult): string {
  const lines = (names: string[], verb: string): string[] => names.map((n) => `project/${n} ${verb}\n`);
  return [...lines(r.created, 'created'), ...lines(r.updated, 'updated'), ...lines(r.unchanged, 'unchanged')].join('');
}

/** The `kiln project ls` table. */
export function formatProjectsTable(projects: Project[]): string {
  return table([
    ['NAME', 'REPOSITORY', 'REGISTRY', 'IMAGES', 'RUN POLICY'],
    ...projects.map((p) => [p.name, p.repository, p.registry, p.images.map((i) => i.name).join(','), p.runPolicy]),
  ]);
}

/** A single project document (not a `projects:` list): its name, for a PUT. */
function singleProjectName(text: string, file: string): string | undefined {
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (e) {
    throw new KilnError('CONFIG_INVALID', `${file}: invalid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new KilnError('CONFIG_INVALID', `${file}: expected a mapping with a "projects:" list`, {
      hint: 'the file needs a "projects:" list, as in the service config file',
    });
  }
  if ('projects' in doc) return undefined;
  const name = (doc as { name?: unknown }).name;
  if (typeof name !== 'string' || !name) {
    throw new KilnError('CONFIG_INVALID', `${file}: expected a "projects:" list (or one project with a "name")`);
  }
  return name;
}

export function register(program: Command): void {
  const project = addServiceOptions(
    program.command('project').description('manage the projects of the kiln build service'),
  );

  project
    .command('apply')
    .description('create or update projects from a YAML (or JSON) file')
    .requiredOption('-f, --file <file>', 'the file ("-" reads stdin)')
    .action(async (flags: { file: string }, cmd: Command) => {
      const text = await readInput(flags.file);
      const where = flags.file === '-' ? 'stdin' : flags.file;
      const single = singleProjectName(text, where);
      await withClient(cmd, async (c) => {
        if (single === undefined) {
          process.stdout.write(formatApply(await c.applyProjects(text)));
          return;
        }
        const { created } = await c.putProject(single, text);
        process.stdout.write(`project/${single} ${created ? 'created' : 'updated'}\n`);
      });
    });

  project
    .command('ls')
    .description('list projects')
    .option('--json', 'print them as JSON')
    .action(async (flags: { json?: boolean }, cmd: Command) =>
      withClient(cmd, async (c) => {
        const list = await c.listProjects();
        process.stdout.write(flags.json ? JSON.stringify(list, null, 2) + '\n' : formatProjectsTable(list));
      }),
    );

  project
    .command('show')
    .description('print a project as YAML, with defaults filled in')
    .argument('<name>', 'project name')
    .option('--json', 'print it as JSON')
    .action(async (name: string, flags: { json?: boolean }, cmd: Command) =>
      withClient(cmd, async (c) => {
        const p = await c.getProject(name);
        process.stdout.write(flags.json ? JSON.stringify(p, null, 2) + '\n' : stringify(p));
      }),
    );

  project
    .command('rm')
    .description('remove a project and its queued builds (running ones are cancelled)')
    .argument('<name>', 'project name')
    .action(async (name: string, _flags: unknown, cmd: Command) =>
      withClient(cmd, async (c) => {
        await c.deleteProject(name);
        process.stdout.write(`project/${name} removed\n`);
      }),
    );

  addTrigger(project);
}

/**
 * `kiln project trigger PROJECT --ref R`: act as if R had just been pushed — the service fetches and resolves it
 * and handles it like a webhook push (filters and coalescing apply, recorded as a delivery of forge `kiln`;
 * every image whose filters pass builds). `kiln builds start` builds whatever the filters say.
 */
function addTrigger(project: Command): void {
  project
    .command('trigger')
    .description('build a ref as if it had just been pushed (branch/tag filters apply; admin)')
    .argument('<name>', 'project name')
    .requiredOption('--ref <ref>', 'branch, tag or full ref (main, v1.2, refs/heads/main)')
    .action(async (name: string, flags: { ref: string }, cmd: Command) =>
      withClient(cmd, async (c) => {
        process.stdout.write(formatTriggerResult(await c.triggerProject(name, flags.ref)));
      }),
    );
}
