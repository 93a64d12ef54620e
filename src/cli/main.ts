/**
 * kiln's CLI entry point. Commands live one per file in this folder and stay thin: each exports
 * `register(program)`, parses its options and calls into src/. Errors are printed as one line (plus a hint),
 * with a stack only under --debug.
 */
import { Command, CommanderError } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { KilnError } from '../errors.js';
import { debugMark } from '../util/debug.js';

/** kiln's version (package.json, two levels up from src/cli and dist/cli): `kiln --version` for images and scripts. */
function kilnVersion(): string {
  const pkg = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json');
  return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
}

/** Command modules in help order. Each file exports `register(program: Command)`. */
const COMMANDS = [
  'build',
  'strategy',
  'pack',
  'rebase',
  'pull',
  'push',
  'copy',
  'inspect',
  'images',
  'rmi',
  'login',
  'logout',
  'dockerfile',
  'bootstrap',
  'serve',
  'serve-worker',
  'builds',
  'project',
  'bases',
  'deliveries',
  'controller',
] as const;

/** Commands registered by a module of another name (`kiln s2i` lives in strategy.ts). */
const MODULE_OF: Record<string, (typeof COMMANDS)[number]> = { s2i: 'strategy' };

interface CommandModule {
  register(program: Command): void;
}

/**
 * Register command modules. Only the invoked command's module is loaded when argv names one (start-up time matters
 * for short commands like `kiln copy` in scripts); help and unknown commands load them all.
 */
async function loadCommands(program: Command, argv: string[]): Promise<void> {
  const here = dirname(fileURLToPath(import.meta.url));
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  const first = argv.find((a) => !a.startsWith('-'));
  const wanted = COMMANDS.find((c) => c === (first !== undefined ? (MODULE_OF[first] ?? first) : first));
  for (const name of wanted ? [wanted] : COMMANDS) {
    const file = join(here, name + ext);
    if (!existsSync(file)) continue;
    const mod = (await import(pathToFileURL(file).href)) as Partial<CommandModule>;
    if (typeof mod.register === 'function') mod.register(program);
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
