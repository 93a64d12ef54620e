import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { LocalBuildRunner } from './local.js';
import type { WorkerJob, WorkerPrepare } from './protocol.js';

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

/** pids of this process's `serve-worker` children. */
function workerPids(): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        return argv[0] === process.execPath && argv.includes('serve-worker') && ppid === process.pid;
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function until<T>(what: string, f: () => T | undefined): Promise<T> {
  for (let i = 0; i < 600; i++) {
    const v = f();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test('prepare takes a worker for the build: run() uses that one, release() ends it; the pool refills after the build', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-runner-'));
  const runner = new LocalBuildRunner({ warm: 1, nice: 0 });
  const prep = (buildId: string): WorkerPrepare => ({
    buildId,
    repository: '127.0.0.1:1/p/app',
    insecureRegistries: [],
    strategy: 'node',
    backend: 'kiln',
  });
  try {
    const first = await until('an idle worker', () => workerPids()[0]);
    runner.prepare(prep('b1'));
    let started: number | undefined;
    const job: WorkerJob = {
      buildId: 'b1',
      contextDir: join(dir, 'missing'),
      dockerfile: join(dir, 'missing', 'Dockerfile'),
      buildArgs: {},
      labels: {},
      secrets: {},
      tags: ['127.0.0.1:1/p/app:1'],
      insecureRegistries: [],
      logFile: join(dir, 'b1.log'),
    };
    const outcome = await runner.run(job, { onStart: (pid) => (started = pid) }, new AbortController().signal);
    assert.equal(outcome.ok, false, 'a build of a missing context fails');
    assert.equal(started, first, 'the build ran on the worker prepare took');
    // the pool is refilled once the build is over
    const second = await until('a replacement', () => workerPids().find((p) => p !== first));
    // prepare then release: that worker ends, and the pool is refilled again
    runner.prepare(prep('b2'));
    runner.release('b2');
    await until('the released worker to exit', () => (workerPids().includes(second) ? undefined : true));
    await until('another replacement', () => workerPids().find((p) => p !== first && p !== second));
  } finally {
    await runner.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
