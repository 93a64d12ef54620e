/** Runs `kiln dockerfile ...` in-process (register() on a fresh program) and captures stdout. */
import { Command } from 'commander';
import { register } from '../../src/cli/dockerfile.js';

export async function runDockerfileCli(...args: string[]): Promise<{ out: string; err: unknown }> {
  const program = new Command('kiln').exitOverride();
  register(program);
  for (const c of program.commands) {
    c.exitOverride();
    for (const s of c.commands) s.exitOverride();
  }
  let out = '';
  const orig = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array): boolean => {
    out += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    return true;
  }) as typeof process.stdout.write;
  let err: unknown;
  try {
    await program.parseAsync(['dockerfile', ...args], { from: 'user' });
  } catch (e) {
    err = e;
  } finally {
    process.stdout.write = orig;
  }
  return { out, err };
}
