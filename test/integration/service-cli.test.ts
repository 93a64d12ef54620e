/**
 * `kiln builds …` and `kiln project …` end to end through `node bin/kiln.js` (from source) against the real API
 * server (src/service/api) listening on 127.0.0.1 over an in-memory core (test/helpers/fake-core.ts): what the
 * CLI sends, what it prints, its exit codes, the exact log bytes of `logs -f`, and one-line errors.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFile, chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../../src/service/api/server.js';
import { resolveClientConfig } from '../../src/service/client.js';
import { FakeCore, build, project } from '../helpers/fake-core.js';

const KILN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'kiln.js');

let work: string;
let core: FakeCore;
let app: FastifyInstance;
let server: string;

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** `kiln ARGS` with KILN_SERVER/KILN_TOKEN (admin unless `env` says otherwise) and an empty config dir. */
function kiln(
  args: string[],
  o: { env?: NodeJS.ProcessEnv; input?: string; onStdout?: (all: Buffer) => void } = {},
): Promise<Run> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    KILN_FROM_SOURCE: '1',
    KILN_SERVER: server,
    KILN_TOKEN: 'admin-token',
    KILN_CONFIG_DIR: join(work, 'config'),
    ...o.env,
  };
  delete env.KILN_DEBUG;
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [KILN, ...args], {
      env,
      cwd: work,
      stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => {
      out.push(d);
      o.onStdout?.(Buffer.concat(out));
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    if (o.input !== undefined) child.stdin!.end(o.input);
    // a safety net, not a timing assertion
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(guard);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
  });
}

/** An error run: non-zero, exactly one `kiln:` line (plus an optional hint), no stack. */
function assertOneLineError(r: Run, re: RegExp): void {
  assert.notEqual(r.code, 0, r.stderr);
  const lines = r.stderr.trimEnd().split('\n');
  assert.match(lines[0]!, /^kiln: /);
  assert.match(lines[0]!, re);
  assert.ok(lines.length <= 2 && (lines.length === 1 || lines[1]!.startsWith('hint: ')), r.stderr);
  assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'kiln-svc-cli-'));
  await mkdir(join(work, 'logs'));
  await mkdir(join(work, 'config'));
  core = new FakeCore(join(work, 'logs'));
  app = createApi(core, { follow: { pollMs: 20 } });
  server = await app.listen({ host: '127.0.0.1', port: 0 });
});

after(async () => {
  await app.close();
  await rm(work, { recursive: true, force: true });
});

describe('kiln project', () => {
  test('apply -f FILE (YAML): prints what changed; again: unchanged; -f - reads stdin', async () => {
    const file = join(work, 'projects.yaml');
    await writeFile(
      file,
      'projects:\n  - name: web\n    repository: https://git.example.com/web.git\n  - name: api\n    repository: https://git.example.com/api.git\n',
    );
    const r = await kiln(['project', 'apply', '-f', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'project/web created\nproject/api created\n');
    assert.equal(core.calls.at(-1)!.method, 'applyProjects');
    const again = await kiln(['project', 'apply', '-f', '-'], { input: await readFile(file, 'utf8') });
    assert.equal(again.stdout.toString(), 'project/web unchanged\nproject/api unchanged\n');
  });

  test('apply -f of a single project PUTs it; ls, show (YAML), rm', async () => {
    const file = join(work, 'one.yaml');
    await writeFile(file, 'name: shop\nrepository: https://git.example.com/shop.git\ndepth: 3\n');
    const r = await kiln(['project', 'apply', '-f', file]);
    assert.equal(r.stdout.toString(), 'project/shop created\n', r.stderr);
    assert.deepEqual(core.calls.at(-1), {
      method: 'putProject',
      args: ['shop', { name: 'shop', repository: 'https://git.example.com/shop.git', depth: 3 }],
    });
    const ls = await kiln(['project', 'ls']);
    const lines = ls.stdout.toString().trimEnd().split('\n');
    assert.match(lines[0]!, /^NAME\s+REPOSITORY\s+REGISTRY\s+IMAGES\s+RUN POLICY$/);
    assert.ok(
      lines.some((l) => /^shop\s+https:\/\/git\.example\.com\/shop\.git\s/.test(l)),
      ls.stdout.toString(),
    );
    const json = JSON.parse((await kiln(['project', 'ls', '--json'])).stdout.toString()) as { name: string }[];
    assert.ok(json.some((p) => p.name === 'shop'));
    const show = await kiln(['project', 'show', 'shop']);
    assert.match(show.stdout.toString(), /^name: shop\nrepository: https:\/\/git\.example\.com\/shop\.git\n/);
    assert.match(show.stdout.toString(), /^depth: 3$/m);
    const rm1 = await kiln(['project', 'rm', 'shop']);
    assert.equal(rm1.stdout.toString(), 'project/shop removed\n');
    assertOneLineError(await kiln(['project', 'rm', 'shop']), /project "shop" not found/);
  });

  test('a config error from the service is one line with its hint; a missing file is one line', async () => {
    const file = join(work, 'bad.yaml');
    await writeFile(file, 'projects:\n  - name: nope\n');
    const r = await kiln(['project', 'apply', '-f', file]);
    assertOneLineError(r, /projects\[nope\]\.repository: required; second: error/);
    assert.match(r.stderr, /^hint: see docs$/m);
    assertOneLineError(await kiln(['project', 'apply', '-f', join(work, 'missing.yaml')]), /missing\.yaml/);
    await writeFile(file, 'projects:\n  - name: x\n    bogus: 1\n');
    assertOneLineError(await kiln(['project', 'apply', '-f', file]), /unknown field "bogus"/);
  });
});

describe('kiln builds', () => {
  before(() => {
    core.projects.set('web', project('web', { defaultBranch: 'trunk' }));
  });

  test('start: prints the new ids; the default branch when no --ref/--commit; the token user is the trigger', async () => {
    const r = await kiln(['builds', 'start', 'web']);
    assert.equal(r.code, 0, r.stderr);
    const ids = r.stdout.toString().trimEnd().split('\n');
    assert.equal(ids.length, 1);
    assert.deepEqual(core.calls.at(-1)!.args, ['web', { ref: 'trunk' }, { type: 'manual', by: 'alice' }]);
    const two = await kiln(['builds', 'start', 'web', '--commit', 'abcdef1', '--image', 'app', '--image', 'worker']);
    assert.equal(two.stdout.toString().trimEnd().split('\n').length, 2);
    assert.deepEqual(core.calls.at(-1)!.args[1], { commit: 'abcdef1', images: ['app', 'worker'] });
    assertOneLineError(await kiln(['builds', 'start', 'web', '--ref', 'nope']), /ref "nope" not found/);
  });

  test('ls: the table (newest first) with filters passed through; --json; --phase checked locally', async () => {
    core.builds.push(
      build('t1', {
        project: 'web',
        number: 7,
        phase: 'succeeded',
        ref: 'refs/tags/v1.2',
        startedAt: new Date(Date.now() - 65_000).toISOString(),
        finishedAt: new Date(Date.now() - 5_000).toISOString(),
      }),
    );
    const r = await kiln(['builds', 'ls', '--project', 'web', '--limit', '3']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.toString().trimEnd().split('\n');
    assert.match(lines[0]!, /^ID\s+PROJECT\s+IMAGE\s+#\s+REF\s+COMMIT\s+PHASE\s+AGE\s+DURATION$/);
    assert.match(lines[1]!, /^t1\s+web\s+app\s+7\s+v1\.2\s+0123456\s+succeeded\s+\S+\s+1m00s$/);
    assert.equal(lines.length, 4);
    assert.deepEqual(core.calls.at(-1), { method: 'listBuilds', args: [{ project: 'web', limit: 3 }] });
    const json = JSON.parse((await kiln(['builds', 'ls', '--json', '--phase', 'succeeded'])).stdout.toString()) as {
      builds: { id: string }[];
      next: string | null;
    };
    assert.deepEqual(
      json.builds.map((b) => b.id),
      ['t1'],
    );
    assertOneLineError(await kiln(['builds', 'ls', '--phase', 'done']), /--phase "done": expected one of/);
  });

  test('show: fields, stages with durations, tags and digest', async () => {
    core.builds.push(
      build('s1', {
        phase: 'succeeded',
        digest: 'sha256:' + 'a'.repeat(64),
        tags: ['registry.example.com/web/app:latest', 'registry.example.com/web/app:0123456'],
        stages: [
          { name: 'fetch', kind: 'fetch', status: 'done', startedAt: '2024-01-01T00:00:00Z', durationMs: 1500 },
          { name: '[1/2] RUN make', kind: 'step', status: 'cached', startedAt: '2024-01-01T00:00:02Z', durationMs: 3 },
          { name: 'push', kind: 'push', status: 'done', startedAt: '2024-01-01T00:00:03Z', durationMs: 125_000 },
        ],
      }),
    );
    const out = (await kiln(['builds', 'show', 's1'])).stdout.toString();
    assert.match(out, /^Phase:\s+succeeded$/m);
    assert.match(out, /^Digest:\s+sha256:a{64}$/m);
    assert.match(out, /^ {2}registry\.example\.com\/web\/app:latest$/m);
    assert.match(out, /^ {2}fetch\s+fetch\s+done\s+1s$/m);
    assert.match(out, /^ {2}\[1\/2\] RUN make\s+step\s+cached\s+3ms$/m);
    assert.match(out, /^ {2}push\s+push\s+done\s+2m05s$/m);
    assertOneLineError(await kiln(['builds', 'show', 'nope']), /build "nope" not found/);
  });

  test('logs: the file as it is; -f: the exact bytes from mid-build to the end, exit 0 on success, 1 on failure', async () => {
    core.builds.push(build('f1', { phase: 'building' }), build('f2', { phase: 'building' }));
    const path = core.logPath('f1');
    await writeFile(
      path,
      Buffer.concat([Buffer.from('step 1\r\n'), Buffer.from([0xff, 0xfe, 0x0a]), Buffer.from('half')]),
    );
    const plain = await kiln(['builds', 'logs', 'f1']);
    assert.equal(plain.code, 0);
    assert.deepEqual(plain.stdout, await readFile(path));

    let started!: () => void;
    const first = new Promise<void>((r) => (started = r));
    const following = kiln(['builds', 'logs', '-f', 'f1'], { onStdout: () => started() });
    await first;
    for (let i = 0; i < 10; i++) {
      await appendFile(path, `${i === 0 ? ' line' : ''} more ${i} ✓\n`);
      await sleep(10);
    }
    await appendFile(path, 'tail without newline');
    core.builds.find((b) => b.id === 'f1')!.phase = 'succeeded';
    const r = await following;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout, await readFile(path));
    assert.equal(r.stderr, '');

    await writeFile(core.logPath('f2'), 'RUN false\n');
    const failing = kiln(['builds', 'logs', '-f', 'f2']);
    await sleep(300);
    Object.assign(
      core.builds.find((b) => b.id === 'f2')!,
      { phase: 'failed', reason: 'RUN exited 1' },
    );
    const f = await failing;
    assert.equal(f.code, 1);
    assert.equal(f.stdout.toString(), 'RUN false\n');
    assert.equal(f.stderr, 'kiln: build f2 failed: RUN exited 1\n');
  });

  test('start --follow streams each build log in turn; exit 1 unless all succeeded', async () => {
    const before = core.builds.length;
    const run = kiln(['builds', 'start', 'web', '--ref', 'main', '--image', 'a', '--image', 'b', '--follow']);
    while (core.builds.length < before + 2) await sleep(20);
    const [a, b] = core.builds.slice(before);
    await writeFile(core.logPath(a!.id), 'log of a\n');
    await writeFile(core.logPath(b!.id), 'log of b\n');
    a!.phase = 'succeeded';
    b!.phase = 'timed-out';
    b!.reason = 'timeout after 3600s';
    const r = await run;
    assert.equal(r.code, 1);
    assert.equal(r.stdout.toString(), `${a!.id}\n${b!.id}\nlog of a\nlog of b\n`);
    assert.match(r.stderr, new RegExp(`^==> build ${a!.id} \\(web/a\\)$`, 'm'));
    assert.match(r.stderr, new RegExp(`^kiln: build ${b!.id} timed-out: timeout after 3600s$`, 'm'));
  });

  test('cancel and rerun; 409 when the build already ended; a viewer gets 403', async () => {
    core.builds.push(build('c1', { phase: 'building' }));
    const c = await kiln(['builds', 'cancel', 'c1']);
    assert.equal(c.code, 0, c.stderr);
    assert.equal(c.stderr, 'build c1 cancelled\n');
    assertOneLineError(await kiln(['builds', 'cancel', 'c1']), /already cancelled/);
    const rerun = await kiln(['builds', 'rerun', 'c1']);
    assert.match(rerun.stdout.toString(), /^b\d+\n$/);
    const viewer = await kiln(['builds', 'cancel', 'c1'], { env: { KILN_TOKEN: 'viewer-token' } });
    assertOneLineError(viewer, /may only read/);
  });
});

describe('server, token and errors', () => {
  test('no token, a wrong token, an unreachable service: one line each with a hint', async () => {
    const none = await kiln(['builds', 'ls'], { env: { KILN_TOKEN: undefined } });
    assertOneLineError(none, /^kiln: no token$/);
    assert.match(none.stderr, /^hint: no token: set KILN_TOKEN/m);
    const wrong = await kiln(['builds', 'ls'], { env: { KILN_TOKEN: 'guess' } });
    assertOneLineError(wrong, /^kiln: invalid token$/);
    assert.ok(!wrong.stderr.includes('guess'));
    const down = await kiln(['builds', 'ls', '--server', 'http://127.0.0.1:1']);
    assertOneLineError(down, /^kiln: cannot reach the kiln service at http:\/\/127\.0\.0\.1:1$/);
    assertOneLineError(await kiln(['builds', 'ls', '--server', 'ftp://x']), /invalid service URL/);
  });

  test('the config file gives server and token (mode 0600), the token only for its own server', async () => {
    const dir = join(work, 'cfg2');
    await mkdir(dir);
    const file = join(dir, 'service.json');
    await writeFile(file, JSON.stringify({ server, token: 'viewer-token' }), { mode: 0o600 });
    const env = { KILN_CONFIG_DIR: dir, KILN_SERVER: undefined, KILN_TOKEN: undefined };
    const ok = await kiln(['project', 'ls', '--json'], { env });
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(resolveClientConfig({}, env), { server, token: 'viewer-token' });
    // Another server does not get the stored token.
    assert.deepEqual(resolveClientConfig({ server: 'http://other.example:8080/' }, env), {
      server: 'http://other.example:8080',
      token: undefined,
    });
    assert.equal(resolveClientConfig({ token: 'flag' }, { ...env, KILN_TOKEN: 'env' }).token, 'flag');
    await chmod(file, 0o644);
    assertOneLineError(await kiln(['project', 'ls'], { env }), /readable by other users/);
  });
});
