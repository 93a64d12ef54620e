/**
 * kiln's CLI entry point. Commands live one per file in this folder and stay thin: they parse options and call
 * into src/. Errors are printed as one line (plus a hint), with a stack only under --debug.
 */
import { Command, CommanderError } from 'commander';
import { KilnError } from '../errors.js';

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug') || process.env.KILN_DEBUG === '1';
  const program = new Command('kiln')
    .description('Daemonless, rootless container image builder')
    .option('--debug', 'print stack traces and debug logs')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    printError(e, debug);
    return 1;
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
