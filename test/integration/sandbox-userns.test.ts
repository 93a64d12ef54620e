/**
 * The build user namespace as an ordinary user: re-exec with the subordinate id ranges mapped, exit code and
 * signal relay, and the one clear error when the user has no subordinate ids.
 */
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureRootlessUser, spawnAsUser } from '../helpers/rootless.js';

const HELPER = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'rootless.ts');

function probe(user: string, args: string[], onLine?: (line: string, kill: () => void) => void) {
  const child = spawnAsUser(user, [process.execPath, '--import', 'tsx', HELPER, 'ns-probe', ...args]);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    for (const line of d.toString().split('\n')) if (line) onLine?.(line, () => child.kill('SIGTERM'));
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('build user namespace (kilntest)', () => {
  before(() => {
    ensureRootlessUser();
  });

  test('re-executes as uid 0 with own uid and the 65536 subordinate ids mapped; exit code relayed', async () => {
    const r = await probe('kilntest', ['exit', '7']);
    assert.equal(r.code, 7, r.stderr);
    const info = JSON.parse(r.stdout.split('\n')[0] as string) as { uid: number; map: string; marker: string };
    assert.equal(info.uid, 0);
    assert.equal(info.marker, '1');
    const rows = info.map
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/).map(Number));
    assert.deepEqual(rows[1], [1, 200000, 65536]);
    assert.equal(rows[0]?.[0], 0);
    assert.equal(rows[0]?.[2], 1);
  });

  test('SIGTERM to the parent is relayed into the namespace', async () => {
    let sent = false;
    const r = await probe('kilntest', ['wait-signal'], (line, kill) => {
      if (line === 'ready' && !sent) {
        sent = true;
        kill();
      }
    });
    assert.ok(sent);
    assert.equal(r.code, 42, r.stderr);
  });

  test('a user without /etc/subuid entries gets one clear error', async () => {
    const r = await probe('nobody', []);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^kiln: rootless builds are not available: no subordinate uid range for nobody in \/etc\/subuid/m,
    );
    assert.match(r.stderr, /^hint: .*add "nobody:100000:65536" to \/etc\/subuid/m);
    assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
  });
});
