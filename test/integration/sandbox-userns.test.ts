/**
 * The build user namespace as an ordinary user: re-exec with the subordinate id ranges mapped, exit code and
 * signal relay, and the one clear error when the user has no subordinate ids.
 */
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readdirSync, readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { ensureRootlessUser, rootlessPrefix, rootlessTempDir, spawnAsUser } from '../helpers/rootless.js';
import { readdir, rm } from 'node:fs/promises';
import { runInBuildNamespace } from '../../src/sandbox/userns.js';
import { mountsUnder, unmount } from '../../src/sandbox/mount.js';

const HELPER = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'rootless.ts');
const STALE = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'sandbox', 'stale.ts');
const ENTRY = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'sandbox', 'ns-entry.ts');

/** Pids whose command line contains `token`. */
function pidsWith(token: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(token)) out.push(Number(p));
    } catch {
      // gone
    }
  }
  return out;
}

/** Wait (bounded: a readiness limit, not an assertion on speed) until `cond()` holds. */
async function until(cond: () => boolean, what: string, limitMs = 20_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`gave up waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

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

  for (const mode of ['root', 'rootless'] as const) {
    test(`SIGKILL of kiln itself takes the running RUN step down; the next kiln cleans up (${mode})`, async () => {
      const token = `kiln-orphan-${mode}-${process.pid}`;
      const home = await rootlessTempDir('kiln-orphan-'); // owned by kilntest: usable in both modes
      const req = [
        {
          kilnHome: home,
          steps: [{ argv: ['/bin/sh', '-c', `sh -c 'sleep 1000; echo ${token}' & sleep 1000`], user: 'u1' }],
        },
      ];
      // The token is on the command lines of kiln (both processes when rootless) and of the step's processes:
      // all of them must be gone after kiln is SIGKILLed.
      const argv = [process.execPath, '--import', 'tsx', ENTRY, HELPER, 'runStepScenario', JSON.stringify(req)];
      const child =
        mode === 'rootless'
          ? spawnAsUser('kilntest', argv)
          : spawn(argv[0] as string, argv.slice(1), { cwd: join(dirname(HELPER), '..', '..'), stdio: 'pipe' });
      try {
        // the step's own shells (`sh -c …sleep 1000…`), not kiln, the wrapper that started it or the rootless
        // re-exec's `/bin/sh -c <script> kiln-userns node …` (a shell too, for a moment): their arguments hold the token
        const isStep = (pid: number) => {
          const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
          return /^(\/bin\/)?sh$/.test(args[0] ?? '') && args[1] === '-c' && (args[2] ?? '').includes('sleep 1000');
        };
        await until(
          () =>
            pidsWith(token).some((p) => {
              try {
                return isStep(p);
              } catch {
                return false;
              }
            }),
          'the RUN step to start',
        );
        child.kill('SIGKILL');
        await until(() => pidsWith(token).length === 0, 'the RUN step and kiln to be gone');
        // The next kiln cleans up what the killed one left: the snapshot dir (as root: with its overlay mount).
        const before = await readdir(join(home, 'tmp'));
        const removed = await runInBuildNamespace<string[]>(STALE, 'cleanupStaleTempDirs', [home], {
          ...(mode === 'rootless' ? { commandPrefix: rootlessPrefix() } : {}),
        });
        assert.equal(
          removed.filter((d) => /\/tmp\/snap-/.test(d)).length,
          1,
          `removed ${JSON.stringify(removed)} of ${JSON.stringify(before)}`,
        );
        assert.deepEqual(await mountsUnder(home), []);
        assert.deepEqual(await readdir(join(home, 'tmp')), []);
      } finally {
        child.kill('SIGKILL');
        for (const p of pidsWith(token)) {
          try {
            process.kill(p, 'SIGKILL');
          } catch {
            // gone
          }
        }
        // As root the step's overlay mount lives in the host mount namespace: a SIGKILLed kiln cannot unmount it.
        for (const m of (await mountsUnder(home)).reverse()) await unmount(m);
        await rm(home, { recursive: true, force: true });
      }
    });
  }

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
