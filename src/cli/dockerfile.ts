/**
 * `kiln dockerfile`: inspect a Dockerfile without building it.
 *   dump FILE [--json]      BuildKit's parse-tree dump (one S-expression per instruction), or typed JSON
 *   lint FILE               lint warnings like `docker build --check`; non-zero exit on check=error=true or bad file
 *   stages FILE [--target]  the stage graph: bases, dependencies, what a build of the target needs
 * FILE may be `-` for standard input.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import { parseAst } from '../dockerfile/parser.js';
import { dumpAst } from '../dockerfile/dump.js';
import { parseDockerfile } from '../dockerfile/convert.js';
import { formatLintWarning, lintDockerfile } from '../dockerfile/lint.js';
import { loadDockerignore } from '../dockerfile/dockerignore.js';
import { buildStageGraph, formatStageGraph } from '../dockerfile/stages.js';

const READ_ERRORS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EISDIR: 'is a directory',
  EACCES: 'permission denied',
  ENOTDIR: 'a parent is not a directory',
};

function readDockerfile(file: string): { text: string; name: string } {
  try {
    if (file === '-') return { text: readFileSync(0, 'utf8'), name: 'Dockerfile' };
    return { text: readFileSync(file, 'utf8'), name: file };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code ? (READ_ERRORS[code] ?? code) : String(e);
    throw new KilnError('DOCKERFILE_READ', `cannot read ${file}: ${why}`, {
      hint: 'pass the path of a Dockerfile, or - for standard input',
      cause: e,
    });
  }
}

function parseBuildArgFlags(list: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of list) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new KilnError('USAGE', `invalid --build-arg ${kv}`, { hint: 'use --build-arg NAME=value' });
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

export function register(program: Command): void {
  const df = program.command('dockerfile').description('parse, dump and lint Dockerfiles');

  df.command('dump')
    .description("print BuildKit's parse tree of a Dockerfile")
    .argument('<file>', 'Dockerfile path, or - for stdin')
    .option('--json', 'print the typed instructions (stages, global ARGs, directives) as JSON instead')
    .action((file: string, o: { json?: boolean }) => {
      const { text, name } = readDockerfile(file);
      if (o.json) {
        const p = parseDockerfile(text, { filename: name });
        const out = { directives: p.directives, globalArgs: p.globalArgs, stages: p.stages, warnings: p.warnings };
        process.stdout.write(JSON.stringify(out, null, 2) + '\n');
        return;
      }
      process.stdout.write(dumpAst(parseAst(text, { filename: name }).ast));
    });

  df.command('lint')
    .description('check a Dockerfile with BuildKit lint rules (like docker build --check)')
    .argument('<file>', 'Dockerfile path, or - for stdin')
    .option('--context <dir>', 'build context (for .dockerignore checks); default: the Dockerfile directory')
    .option('--build-arg <k=v>', 'build argument (repeatable)', collect, [])
    .option('--target <stage>', 'build target stage')
    .option('--format <fmt>', 'text or json', 'text')
    .action((file: string, o: { context?: string; buildArg: string[]; target?: string; format: string }) => {
      const { text, name } = readDockerfile(file);
      const ctx = resolve(o.context ?? (file === '-' ? '.' : dirname(file)));
      const buildArgs = parseBuildArgFlags(o.buildArg);
      const ignorePatterns = loadDockerignore(ctx, file === '-' ? undefined : file).patterns;
      const res = lintDockerfile(text, {
        filename: name,
        buildArgs,
        ...(o.target !== undefined ? { target: o.target } : {}),
        ignorePatterns,
      });
      if (o.format === 'json') {
        process.stdout.write(JSON.stringify({ warnings: res.warnings, failed: res.failed }, null, 2) + '\n');
      } else {
        for (const w of res.warnings) process.stdout.write(formatLintWarning(w) + '\n');
      }
      if (res.failed) {
        const rules = [...new Set(res.warnings.map((w) => w.rule))].sort();
        throw new KilnError('DOCKERFILE_LINT', `lint violation found for rules: ${rules.join(', ')}`, {
          hint: 'fix the warnings above, or skip rules with # check=skip=<Rule>',
        });
      }
    });

  df.command('stages')
    .description('show the stage graph: bases, dependencies and which stages a build of the target needs')
    .argument('<file>', 'Dockerfile path, or - for stdin')
    .option('--target <stage>', 'target stage (default: the last one)')
    .option('--build-arg <k=v>', 'build argument (repeatable)', collect, [])
    .option('--format <fmt>', 'text or json', 'text')
    .action((file: string, o: { target?: string; buildArg: string[]; format: string }) => {
      const { text, name } = readDockerfile(file);
      const parsed = parseDockerfile(text, { filename: name });
      const graph = buildStageGraph(parsed, {
        file: name,
        buildArgs: new Map(Object.entries(parseBuildArgFlags(o.buildArg))),
        ...(o.target !== undefined ? { target: o.target } : {}),
      });
      if (o.format === 'json') process.stdout.write(JSON.stringify(graph, null, 2) + '\n');
      else process.stdout.write(formatStageGraph(graph));
    });
}
