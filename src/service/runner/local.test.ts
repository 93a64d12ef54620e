import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { LocalBuildRunner } from './local.js';

/** Nice values of this process's `serve-worker` children (Node running), read from /proc (field 19 of stat). */
function workerNices(): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // only once `nice` and `setpriv` have exec'd Node (before that the nice value is not applied yet)
      const argv = cmd.split('\0');
      if (argv[0] === process.execPath && argv.includes('serve-worker') && Number(fields[1]) === process.pid) {
        out.push(Number(fields[16]));
      }
    } catch {
      // the process went away while we looked
    }
  }
  return out;
}

async function idleWorkerNices(runner: LocalBuildRunner): Promise<number[]> {
  for (let i = 0; i < 200; i++) {
    const n = workerNices();
    if (n.length > 0) return n;
    await new Promise((r) => setTimeout(r, 50));
  }
  await runner.close();
  throw new Error('no serve-worker child appeared');
}

test('build workers start at the configured nice value; 0 keeps the service priority', async () => {
  const base = Number(readFileSync('/proc/self/stat', 'utf8').split(') ')[1]?.split(' ')[16]);
  const niced = new LocalBuildRunner({ warm: 1, nice: 7 });
  try {
    assert.deepEqual(await idleWorkerNices(niced), [Math.min(19, base + 7)]);
  } finally {
    await niced.close();
  }
  for (let i = 0; i < 200 && workerNices().length > 0; i++) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(workerNices(), [], 'close() leaves no worker behind');
  const plain = new LocalBuildRunner({ warm: 1, nice: 0 });
  try {
    assert.deepEqual(await idleWorkerNices(plain), [base]);
  } finally {
    await plain.close();
  }
});
