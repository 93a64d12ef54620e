/**
 * Child entry point of `runInBuildNamespace`: `node ns-entry.js <modulePath> <exportName> <argsJSON>`.
 * Enters the build namespace first (re-executing itself when not root, keeping fd 3), then calls the export and
 * writes `NsEntryResult` JSON to fd 3.
 */
import { createWriteStream } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { isAbsolute, resolve } from 'node:path';
import { isKilnError, errorMessage } from '../errors.js';
import { enterBuildNamespace, type NsEntryResult } from './userns.js';

async function main(): Promise<number> {
  const [modulePath, exportName, argsJson] = process.argv.slice(2);
  if (!modulePath || !exportName || argsJson === undefined) {
    process.stderr.write('usage: ns-entry <modulePath> <exportName> <argsJSON>\n');
    return 2;
  }
  let result: NsEntryResult;
  try {
    const code = await enterBuildNamespace(undefined, { passFds: 1 });
    if (code !== null) return code;
    const url = pathToFileURL(isAbsolute(modulePath) ? modulePath : resolve(modulePath)).href;
    const mod = (await import(url)) as Record<string, unknown>;
    const fn = mod[exportName];
    if (typeof fn !== 'function') throw new Error(`${modulePath} has no function export ${exportName}`);
    const value: unknown = await (fn as (...a: unknown[]) => unknown)(...(JSON.parse(argsJson) as unknown[]));
    result = { ok: true, value: value === undefined ? null : value };
  } catch (e) {
    result = isKilnError(e)
      ? { ok: false, code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) }
      : { ok: false, code: 'NAMESPACE_CHILD_ERROR', message: errorMessage(e) };
  }
  await new Promise<void>((res) => {
    const out = createWriteStream('', { fd: 3 });
    out.on('error', () => res());
    out.end(JSON.stringify(result), () => res());
  });
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`kiln ns-entry: ${errorMessage(e)}\n`);
    process.exit(1);
  },
);
