/**
 * Durability of `kiln serve`: `kill -9` of the service during a RUN step and during a push, then a restart on the
 * same data dir. Rules checked: no orphan worker or RUN process keeps going, no half-pushed tag, no mount or temp
 * dir left, the database is intact, the interrupted build is `failed: interrupted` and runs again once as a new
 * build (trigger `retry`), queued builds still run.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { cleanup, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import { mountsUnder, tmpLeftovers } from './build-helpers.js';
import type { Build } from '../../src/service/model.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** A sleep only this run's RUN step does (pgrep must not see another test run's). */
const SLEEP = `sleep ${3000 + Math.floor(Math.random() * 6000)}`;

/** Pids of processes whose environment has KILN_HOME=home (the service's workers and everything they run). */
async function processesOf(home: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      const env = await readFile(`/proc/${p}/environ`, 'latin1');
      if (env.split('\0').includes(`KILN_HOME=${home}`)) out.push(Number(p));
    } catch {
      // gone or not ours
    }
  }
  return out;
}

async function until(what: string, ms: number, cond: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    assert.ok(Date.now() < end, `timed out waiting: ${what}`);
    await sleep(50);
  }
}

function pgrep(pattern: string): Promise<boolean> {
  return new Promise((resolve) => execFile('pgrep', ['-f', pattern], (err) => resolve(!err)));
}

function tagExists(ref: string): Promise<boolean> {
  return new Promise((resolve) =>
    execFile('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${ref}`], (err) => resolve(!err)),
  );
}

/** A TCP proxy that forwards at most `bytesPerSec` from clients, and counts what it forwarded. */
async function slowProxy(
  target: string,
  bytesPerSec: number,
): Promise<{ host: string; up: () => number; stop(): Promise<void> }> {
  const [host, port] = [target.split(':')[0] as string, Number(target.split(':')[1])];
  let up = 0;
  const socks = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(port, host);
    socks.add(client).add(upstream);
    client.on('data', (d: Buffer) => {
      up += d.length;
      upstream.write(d);
      client.pause();
      setTimeout(() => client.resume(), (d.length / bytesPerSec) * 1000);
    });
    upstream.pipe(client);
    const close = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    up: () => up,
    stop: async () => {
      for (const s of socks) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('kiln serve survives kill -9', () => {
  let reg: TestRegistry;
  let git: GitServer;
  let home: string;
  let proxy: Awaited<ReturnType<typeof slowProxy>>;
  const started: ServiceProcess[] = [];

  before(async () => {
    reg = await startRegistry();
    proxy = await slowProxy(reg.host, 4 << 20);
    git = await startGitServer();
    home = await makeKilnHome();
    await git.createRepo('crash', {
      'run/Dockerfile': `FROM localhost/busybox:latest\nRUN echo begin && ${SLEEP} && echo end\n`,
      'push/Dockerfile':
        'FROM localhost/busybox:latest\nRUN head -c 24000000 /dev/urandom > /blob && echo wrote\nRUN echo small > /s\n',
      'later/Dockerfile': 'FROM localhost/busybox:latest\nRUN echo later > /later\n',
    });
  });

  after(async () => {
    for (const s of started) await s.stop('SIGKILL');
    await git?.stop();
    await proxy?.stop();
    await reg?.stop();
    for (const s of started) await cleanup(s.dataDir);
    if (home) await cleanup(home);
  });

  const config = (): string => `concurrency: 1
timeoutSeconds: 120
insecureRegistries: ["${reg.host}", "${proxy.host}"]
projects:
  - name: crash
    repository: ${git.repoUrl('crash')}
    registry: ${reg.host}/crash
    images:
      - {name: run, dockerfile: run/Dockerfile, tags: ["{{branch}}"]}
  - name: push
    repository: ${git.repoUrl('crash')}
    registry: ${proxy.host}/push
    images:
      - {name: push, dockerfile: push/Dockerfile, tags: ["{{branch}}"]}
      - {name: later, dockerfile: later/Dockerfile, tags: ["{{branch}}"]}
`;

  async function assertClean(svc: ServiceProcess): Promise<void> {
    // the workers die with the service: nothing of this KILN_HOME keeps running
    await until('orphans to exit', 30_000, async () => (await processesOf(home)).length === 0);
    assert.deepEqual(await mountsUnder(home), [], 'no mount left');
    assert.deepEqual(await tmpLeftovers(home), [], 'no temp dir left');
    const db = new Database(join(svc.dataDir, 'kiln.db'), { readonly: true });
    try {
      assert.equal((db.prepare('PRAGMA integrity_check').get() as { integrity_check: string }).integrity_check, 'ok');
    } finally {
      db.close();
    }
  }

  test('during a RUN step: the RUN dies with the service; on restart failed: interrupted, then one retry', async () => {
    let svc = await startService({ config: config(), kilnHome: home });
    started.push(svc);
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/crash/builds', { ref: 'main' });
    assert.equal(r.status, 201, r.text);
    const id = (r.body.builds[0] as Build).id;
    await until('RUN to start', 60_000, () => pgrep(SLEEP));
    await svc.stop('SIGKILL');
    await until('RUN to die', 30_000, async () => !(await pgrep(SLEEP)));
    await assertClean(svc);

    const tokens = { admin: svc.admin, viewer: svc.viewer };
    svc = await startService({ config: config(), kilnHome: home, dataDir: svc.dataDir, tokens });
    started.push(svc);
    const old = await svc.api<Build>('GET', `/api/v1/builds/${id}`);
    assert.equal(old.body.phase, 'failed');
    assert.equal(old.body.reason, 'interrupted');
    assert.ok(old.body.finishedAt);
    const log = await svc.api('GET', `/api/v1/builds/${id}/log`);
    assert.match(log.text, /begin/);
    assert.match(log.text, /interrupted/);
    const list = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=crash');
    const retry = list.body.builds.find((b) => b.trigger.type === 'retry');
    assert.ok(retry, 'the interrupted build runs again');
    assert.deepEqual(retry.trigger, { type: 'retry', of: id });
    assert.equal(retry.commit, old.body.commit);
    assert.equal(list.body.builds.filter((b) => b.trigger.type === 'retry').length, 1);
    await svc.waitBuild(retry.id, (b) => b.phase === 'building', 60_000);
    await until('retry RUN', 60_000, () => pgrep(SLEEP));
    // killed again: the retry is not retried a second time
    await svc.stop('SIGKILL');
    await assertClean(svc);
    svc = await startService({ config: config(), kilnHome: home, dataDir: svc.dataDir, tokens });
    started.push(svc);
    const after2 = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=crash');
    assert.equal(after2.body.builds.length, 2, JSON.stringify(after2.body.builds.map((b) => [b.phase, b.trigger])));
    assert.ok(after2.body.builds.every((b) => b.phase === 'failed' && b.reason === 'interrupted'));
    await svc.stop('SIGTERM');
  });

  test('during a push: no half-pushed tag; the retry and the queued build run after the restart', async () => {
    let svc = await startService({ config: config(), kilnHome: home });
    started.push(svc);
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/push/builds', { ref: 'main' });
    assert.equal(r.status, 201, r.text);
    const [push, later] = r.body.builds as [Build, Build];
    assert.equal(push.image, 'push');
    // concurrency 1: `later` waits in the queue while `push` uploads its 24 MB layer through the slow proxy
    const base = proxy.up();
    await until('the upload to be under way', 120_000, async () => proxy.up() - base > 4 << 20);
    const during = await svc.api<Build>('GET', `/api/v1/builds/${later.id}`);
    assert.equal(during.body.phase, 'queued');
    const atKill = proxy.up() - base;
    const phaseAtKill = (await svc.api<Build>('GET', `/api/v1/builds/${push.id}`)).body.phase;
    await svc.stop('SIGKILL');
    await assertClean(svc);
    const logAtKill = await readFile(join(svc.dataDir, 'logs', `${push.id}.log`), 'utf8');
    assert.equal(
      await tagExists(`${proxy.host}/push/push:main`),
      false,
      `no tag from the interrupted push (${atKill} bytes up, ${phaseAtKill}, after: ${proxy.up() - base}):\n${logAtKill}`,
    );

    svc = await startService({
      config: config(),
      kilnHome: home,
      dataDir: svc.dataDir,
      tokens: { admin: svc.admin, viewer: svc.viewer },
    });
    started.push(svc);
    const old = await svc.api<Build>('GET', `/api/v1/builds/${push.id}`);
    assert.equal(old.body.phase, 'failed');
    assert.equal(old.body.reason, 'interrupted');
    const l = await svc.waitBuild(later.id, undefined, 120_000);
    assert.equal(l.phase, 'succeeded', l.reason ?? '');
    const list = await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=push');
    const retry = list.body.builds.find((b) => b.trigger.type === 'retry');
    assert.ok(retry);
    const done = await svc.waitBuild(retry.id, undefined, 180_000);
    assert.equal(done.phase, 'succeeded', done.reason ?? '');
    assert.equal(await tagExists(`${proxy.host}/push/push:main`), true);
    await svc.stop('SIGTERM');
    await assertClean(svc);
  });

  test('a crashed worker fails only its build; the service and the next build carry on', async () => {
    const svc = await startService({ config: config(), kilnHome: home });
    started.push(svc);
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/crash/builds', { ref: 'main' });
    const id = (r.body.builds[0] as Build).id;
    await until('RUN to start', 60_000, () => pgrep(SLEEP));
    // the worker process: `kiln serve-worker` with this KILN_HOME
    const workers: number[] = [];
    for (const pid of await processesOf(home)) {
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'latin1').catch(() => '');
      if (cmd.includes('serve-worker') && !cmd.startsWith('setpriv')) workers.push(pid);
    }
    assert.ok(workers.length > 0, 'a worker is running');
    // kill every worker (the busy one and the idle warm one)
    for (const pid of workers) process.kill(pid, 'SIGKILL');
    const b = await svc.waitBuild(id, undefined, 60_000);
    assert.equal(b.phase, 'failed');
    assert.match(b.reason ?? '', /worker/);
    await until('RUN to die', 30_000, async () => !(await pgrep(SLEEP)));
    // the service still works: another build runs
    const next = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/push/builds', {
      ref: 'main',
      images: ['later'],
    });
    assert.equal(next.status, 201, next.text);
    const done = await svc.waitBuild((next.body.builds[0] as Build).id, undefined, 120_000);
    assert.equal(done.phase, 'succeeded', done.reason ?? '');
    await svc.stop('SIGTERM');
    await assertClean(svc);
  });

  test('SIGTERM: running builds get the grace period, then stop cleanly; queued builds wait for the next start', async () => {
    const graceful = config().replace('concurrency: 1\n', 'concurrency: 1\nshutdownGraceSeconds: 2\n');
    let svc = await startService({ config: graceful, kilnHome: home });
    started.push(svc);
    const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/crash/builds', { ref: 'main' });
    const id = (r.body.builds[0] as Build).id;
    const q = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/push/builds', {
      ref: 'main',
      images: ['later'],
    });
    const queuedId = (q.body.builds[0] as Build).id;
    await until('RUN to start', 60_000, () => pgrep(SLEEP));
    const t0 = Date.now();
    const code = await svc.stop('SIGTERM');
    assert.equal(code, 0, 'a graceful stop exits 0');
    assert.ok(Date.now() - t0 >= 2000, 'the running build had its grace period');
    assert.equal(await pgrep(SLEEP), false);
    await assertClean(svc);
    svc = await startService({
      config: graceful,
      kilnHome: home,
      dataDir: svc.dataDir,
      tokens: { admin: svc.admin, viewer: svc.viewer },
    });
    started.push(svc);
    const stopped = await svc.api<Build>('GET', `/api/v1/builds/${id}`);
    assert.equal(stopped.body.phase, 'failed');
    assert.equal(stopped.body.reason, 'interrupted: the service stopped');
    const later = await svc.waitBuild(queuedId, undefined, 120_000);
    assert.equal(later.phase, 'succeeded', 'the queued build ran after the restart');
    await svc.stop('SIGTERM');
  });
});
