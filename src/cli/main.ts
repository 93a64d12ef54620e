/**
 * kiln's CLI entry point. Commands live one per file in this folder and stay thin: each exports
 * `register(program)`, parses its options and calls into src/. Errors are printed as one line (plus a hint),
 * with a stack only under --debug.
 */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { KilnError } from '../errors.js';
import { debugMark } from '../util/debug.js';
import { findUp } from '../util/find-up.js';

/** kiln's version (the package.json above src/cli, dist/cli or dist/bundle): `kiln --version` for images and scripts. */
function kilnVersion(): string {
  const pkg = findUp('package.json');
  if (pkg === undefined) throw new KilnError('INTERNAL', "cannot find kiln's package.json");
  return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
}

/**
 * Command modules in help order, each imported only when needed. Literal `import()`s (not paths built at run
 * time) so that the bundler (scripts/bundle.mjs) makes one chunk per command and `kiln build` never parses the
 * service's code. Each module exports `register(program: Command)`.
 */
const COMMANDS = {
  build: () => import('./build.js'),
  strategy: () => import('./strategy.js'),
  pack: () => import('./pack.js'),
  rebase: () => import('./rebase.js'),
  pull: () => import('./pull.js'),
  push: () => import('./push.js'),
  copy: () => import('./copy.js'),
  inspect: () => import('./inspect.js'),
  images: () => import('./images.js'),
  rmi: () => import('./rmi.js'),
  login: () => import('./login.js'),
  logout: () => import('./logout.js'),
  dockerfile: () => import('./dockerfile.js'),
  bootstrap: () => import('./bootstrap.js'),
  serve: () => import('./serve.js'),
  'serve-worker': () => import('./serve-worker.js'),
  builds: () => import('./builds.js'),
  project: () => import('./project.js'),
  bases: () => import('./bases.js'),
  deliveries: () => import('./deliveries.js'),
  controller: () => import('./controller.js'),
} satisfies Record<string, () => Promise<CommandModule>>;

type CommandName = keyof typeof COMMANDS;

/** Commands registered by a module of another name (`kiln s2i` lives in strategy.ts). */
const MODULE_OF: Record<string, CommandName> = { s2i: 'strategy' };

interface CommandModule {
  register(program: Command): void;
}

/**
 * Register command modules. Only the invoked command's module is loaded when argv names one (start-up time matters
 * for short commands like `kiln copy` in scripts); `--version` loads none; help and unknown commands load them all.
 */
async function loadCommands(program: Command, argv: string[]): Promise<void> {
  const first = argv.find((a) => !a.startsWith('-'));
  if (first === undefined && argv.includes('--version')) return;
  const name = first !== undefined ? (MODULE_OF[first] ?? first) : undefined;
  const wanted = name !== undefined && Object.hasOwn(COMMANDS, name) ? (name as CommandName) : undefined;
  for (const n of wanted ? [wanted] : (Object.keys(COMMANDS) as CommandName[])) {
    (await COMMANDS[n]()).register(program);
  }
}

/** Run the CLI with `argv` (without node and script path); resolves to the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug') || process.env.KILN_DEBUG === '1';
  const program = new Command('kiln')
    .description('Daemonless, rootless container image builder')
    .option('--debug', 'print stack traces and debug logs')
    .version(kilnVersion(), '--version', "print kiln's version")
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  try {
    debugMark('cli loaded');
    await loadCommands(program, argv);
    debugMark('command module loaded');
    for (const c of program.commands) c.exitOverride();
    await program.parseAsync(argv, { from: 'user' });
    debugMark('command done');
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    printError(e, debug);
    if (e instanceof KilnError && e.exitCode !== undefined) return e.exitCode;
    return e instanceof KilnError && e.code === 'INTERRUPTED' ? 130 : 1;
  }
}

/** Print an error as one line (`kiln: message`), a hint line if any, and the stack only when debugging. */
export function printError(e: unknown, debug: boolean): void {
  if (e instanceof KilnError) {
    process.stderr.write(`kiln: ${e.message}\n`);
    if (e.hint) process.stderr.write(`hint: ${e.hint}\n`);
  } else {
    process.stderr.write(`kiln: ${e instanceof Error ? e.message : String(e)}\n`);
  }
  if (debug && e instanceof Error && e.stack) process.stderr.write(e.stack + '\n');
}
