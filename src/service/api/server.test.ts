/**
 * The REST API against an in-memory ServiceCore (test/helpers/fake-core.ts): auth, validation, error mapping, YAML
 * bodies, paging, and log following over a real socket (SSE) while the fake "runner" appends to a real log file.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import { createApi } from './server.js';
import { LogEventDecoder, type LogEnd } from './sse.js';
import { FakeCore, build, project } from '../../../test/helpers/fake-core.js';
import { assertSchema } from '../../../test/helpers/openapi.js';

const ADMIN = { authorization: 'Bearer admin-token' };
const VIEWER = { authorization: 'Bearer viewer-token' };

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-api-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function setup(opts: Parameters<typeof createApi>[1] = {}): { core: FakeCore; app: FastifyInstance } {
  const core = new FakeCore(dir);
  core.projects.set('web', project('web'));
  core.builds.push(
    build('b1', { phase: 'succeeded' }),
    build('b2', { phase: 'failed', image: 'api' }),
    build('b3', { phase: 'building' }),
  );
  return { core, app: createApi(core, opts) };
}

function errorOf(body: string): { code: string; message: string; hint?: string } {
  const parsed = JSON.parse(body) as { error: { code: string; message: string; hint?: string } };
  assertSchema('Error', parsed);
  assert.ok(!parsed.error.message.includes('\n'), 'one-line message');
  assert.ok(!/\bat .+:\d+:\d+/.test(body), 'no stack trace');
  return parsed.error;
}

describe('auth', () => {
  test('no token: 401 with WWW-Authenticate; /healthz is public', async () => {
    const { app } = setup();
    const r = await app.inject({ url: '/api/v1/projects' });
    assert.equal(r.statusCode, 401);
    assert.match(String(r.headers['www-authenticate']), /^Bearer/);
    assert.equal(errorOf(r.body).code, 'UNAUTHENTICATED');
    const h = await app.inject({ url: '/healthz' });
    assert.equal(h.statusCode, 200);
    assert.deepEqual(h.json(), { status: 'ok' });
    // An unknown path is not a way around auth, and a path under /hooks/ that leaves it is not public.
    assert.equal((await app.inject({ url: '/nope' })).statusCode, 401);
    assert.equal((await app.inject({ url: '/hooks/../api/v1/projects' })).statusCode, 401);
    assert.equal((await app.inject({ url: '/metrics' })).statusCode, 401);
  });

  test('bad token: 401, and the token is not echoed', async () => {
    const { app } = setup();
    for (const authorization of ['Bearer s3cr3t-wrong', 'Basic YWxpY2U6cHc=', 'Bearer', 'admin-token']) {
      const r = await app.inject({ url: '/api/v1/builds', headers: { authorization } });
      assert.equal(r.statusCode, 401, authorization);
      assert.ok(!r.body.includes('s3cr3t') && !r.body.includes('YWxp'), r.body);
    }
  });

  test('viewer: may read (projects, builds, metrics), may not write (403, core not called)', async () => {
    const { app, core } = setup();
    const list = await app.inject({ url: '/api/v1/builds', headers: VIEWER });
    assert.equal(list.statusCode, 200);
    assertSchema('BuildPage', list.json());
    const projects = await app.inject({ url: '/api/v1/projects', headers: VIEWER });
    assert.equal(projects.statusCode, 200);
    assert.deepEqual(
      (projects.json() as { projects: { name: string }[] }).projects.map((p) => p.name),
      ['web'],
    );
    const m = await app.inject({ url: '/metrics', headers: VIEWER });
    assert.equal(m.statusCode, 200);
    assert.equal(m.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
    assert.match(m.body, /^kiln_builds_total 3$/m);
    for (const [method, url] of [
      ['POST', '/api/v1/builds/b3/cancel'],
      ['POST', '/api/v1/builds/b1/rerun'],
      ['DELETE', '/api/v1/projects/web'],
      ['POST', '/api/v1/projects/web/builds'],
    ] as const) {
      const r = await app.inject({ method, url, headers: VIEWER });
      assert.equal(r.statusCode, 403, url);
      assert.equal(errorOf(r.body).code, 'FORBIDDEN');
    }
    assert.deepEqual(core.calls, [{ method: 'listBuilds', args: [{}] }]);
    assert.equal(core.builds[2]!.phase, 'building');
  });
});

describe('validation', () => {
  test('unknown body field, missing ref/commit, bad commit: 400 one line, core not called', async () => {
    const { app, core } = setup();
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ ref: 'main', foo: 1 }, /unknown field "foo"/],
      [{}, /"ref" or "commit"/],
      [{ commit: 'xyz!' }, /commit/],
      [{ ref: 'main', images: [] }, /images/],
    ];
    for (const [payload, re] of cases) {
      const r = await app.inject({ method: 'POST', url: '/api/v1/projects/web/builds', headers: ADMIN, payload });
      assert.equal(r.statusCode, 400, JSON.stringify(payload));
      const e = errorOf(r.body);
      assert.equal(e.code, 'REQUEST_INVALID');
      assert.match(e.message, re);
    }
    assert.equal(core.calls.length, 0);
  });

  test('query: limit 0 or 501, phase=bogus, unknown parameter: 400', async () => {
    const { app, core } = setup();
    for (const q of ['limit=0', 'limit=501', 'limit=two', 'phase=bogus', 'sort=asc']) {
      const r = await app.inject({ url: `/api/v1/builds?${q}`, headers: VIEWER });
      assert.equal(r.statusCode, 400, q);
      assert.equal(errorOf(r.body).code, 'REQUEST_INVALID');
    }
    assert.match(
      errorOf((await app.inject({ url: '/api/v1/builds?phase=x', headers: VIEWER })).body).message,
      /succeeded/,
    );
    assert.equal(core.calls.length, 0);
  });

  test('a project body with an unknown top-level field is refused before the core sees it', async () => {
    const { app, core } = setup();
    const r = await app.inject({
      method: 'PUT',
      url: '/api/v1/projects/web',
      headers: ADMIN,
      payload: { repository: 'https://x/y.git', registyr: 'typo' },
    });
    assert.equal(r.statusCode, 400);
    assert.match(errorOf(r.body).message, /unknown field "registyr"/);
    assert.equal(core.calls.length, 0);
  });

  test('413 on a body over the limit, 415 on a body that is neither JSON nor YAML', async () => {
    const { app, core } = setup({ bodyLimit: 1024 });
    const big = await app.inject({
      method: 'POST',
      url: '/api/v1/projects/web/builds',
      headers: ADMIN,
      payload: { ref: 'x'.repeat(2000) },
    });
    assert.equal(big.statusCode, 413);
    assert.equal(errorOf(big.body).code, 'BODY_TOO_LARGE');
    const form = await app.inject({
      method: 'POST',
      url: '/api/v1/projects/web/builds',
      headers: { ...ADMIN, 'content-type': 'text/plain' },
      payload: 'ref=main',
    });
    assert.equal(form.statusCode, 415);
    assert.equal(errorOf(form.body).code, 'UNSUPPORTED_MEDIA_TYPE');
    const broken = await app.inject({
      method: 'PUT',
      url: '/api/v1/projects/web',
      headers: { ...ADMIN, 'content-type': 'application/json' },
      payload: '{"repository": ',
    });
    assert.equal(broken.statusCode, 400);
    assert.equal(errorOf(broken.body).code, 'BODY_INVALID');
    assert.equal(core.calls.length, 0);
  });
});

describe('projects', () => {
  test('PUT as YAML: 201 when created (with Location), 200 when updated; the core gets the parsed document', async () => {
    const { app, core } = setup();
    const yaml = 'repository: https://git.example.com/shop.git\nregistry: reg.example.com/shop\ndepth: 1\n';
    const r = await app.inject({
      method: 'PUT',
      url: '/api/v1/projects/shop',
      headers: { ...ADMIN, 'content-type': 'application/yaml' },
      payload: yaml,
    });
    assert.equal(r.statusCode, 201, r.body);
    assert.equal(r.headers.location, '/api/v1/projects/shop');
    assertSchema('Project', r.json());
    assert.equal((r.json() as { depth: number }).depth, 1);
    assert.deepEqual(core.calls[0], {
      method: 'putProject',
      args: ['shop', { repository: 'https://git.example.com/shop.git', registry: 'reg.example.com/shop', depth: 1 }],
    });
    const again = await app.inject({
      method: 'PUT',
      url: '/api/v1/projects/shop',
      headers: { ...ADMIN, 'content-type': 'text/yaml; charset=utf-8' },
      payload: yaml.replace('depth: 1', 'depth: 2'),
    });
    assert.equal(again.statusCode, 200);
    assert.equal((again.json() as { depth: number }).depth, 2);
    const bad = await app.inject({
      method: 'PUT',
      url: '/api/v1/projects/shop',
      headers: { ...ADMIN, 'content-type': 'application/yaml' },
      payload: 'repository: [oops\n',
    });
    assert.equal(bad.statusCode, 400);
    assert.match(errorOf(bad.body).message, /^invalid YAML body/);
  });

  test('apply (both paths, JSON and YAML) returns the ApplyResult; CONFIG_INVALID is a one-line 400 with its hint', async () => {
    const { app } = setup();
    const yaml = 'projects:\n  - name: a\n    repository: r\n  - name: web\n    repository: r2\n';
    const r = await app.inject({
      method: 'POST',
      url: '/api/v1/projects:apply',
      headers: { ...ADMIN, 'content-type': 'application/yaml' },
      payload: yaml,
    });
    assert.equal(r.statusCode, 200, r.body);
    assertSchema('ApplyResult', r.json());
    assert.deepEqual(r.json(), { created: ['a'], updated: ['web'], unchanged: [] });
    const same = await app.inject({
      method: 'POST',
      url: '/api/v1/projects/apply',
      headers: ADMIN,
      payload: { projects: [{ name: 'a', repository: 'r' }] },
    });
    assert.deepEqual(same.json(), { created: [], updated: [], unchanged: ['a'] });
    const invalid = await app.inject({
      method: 'POST',
      url: '/api/v1/projects:apply',
      headers: ADMIN,
      payload: { projects: [{ name: 'z' }] },
    });
    assert.equal(invalid.statusCode, 400);
    const e = errorOf(invalid.body);
    assert.deepEqual(e, {
      code: 'CONFIG_INVALID',
      message: 'projects[z].repository: required; second: error',
      hint: 'see docs',
    });
  });

  test('GET and DELETE: 404 for an unknown project, 204 on removal', async () => {
    const { app } = setup();
    assert.equal((await app.inject({ url: '/api/v1/projects/web', headers: VIEWER })).statusCode, 200);
    const missing = await app.inject({ url: '/api/v1/projects/none', headers: VIEWER });
    assert.equal(missing.statusCode, 404);
    assert.equal(errorOf(missing.body).code, 'NOT_FOUND');
    const del = await app.inject({ method: 'DELETE', url: '/api/v1/projects/web', headers: ADMIN });
    assert.equal(del.statusCode, 204);
    assert.equal(del.body, '');
    assert.equal((await app.inject({ method: 'DELETE', url: '/api/v1/projects/web', headers: ADMIN })).statusCode, 404);
  });
});

describe('builds', () => {
  test('list: filters, limit and cursor go to the core as they are; next comes back', async () => {
    const { app, core } = setup();
    const r = await app.inject({ url: '/api/v1/builds?project=web&limit=2', headers: VIEWER });
    const page = r.json() as { builds: { id: string }[]; next: string | null };
    assert.deepEqual(
      page.builds.map((b) => b.id),
      ['b3', 'b2'],
    );
    assert.equal(page.next, '2');
    const r2 = await app.inject({ url: `/api/v1/builds?project=web&limit=2&cursor=${page.next}`, headers: VIEWER });
    const page2 = r2.json() as { builds: { id: string }[]; next: string | null };
    assert.deepEqual(
      page2.builds.map((b) => b.id),
      ['b1'],
    );
    assert.equal(page2.next, null);
    assert.deepEqual(core.calls[1], { method: 'listBuilds', args: [{ project: 'web', limit: 2, cursor: '2' }] });
    await app.inject({ url: '/api/v1/builds?phase=failed&image=api', headers: VIEWER });
    assert.deepEqual(core.calls[2]!.args, [{ phase: 'failed', image: 'api' }]);
  });

  test('list: served again without asking the core while listMark is unchanged; per query; JSON as before', async () => {
    const { app, core } = setup();
    let mark = 'm1';
    Object.assign(core, { listMark: () => mark });
    const listings = (): number => core.calls.filter((c) => c.method === 'listBuilds').length;
    const get = async (url: string): Promise<string> => {
      const r = await app.inject({ url, headers: VIEWER });
      assert.equal(r.statusCode, 200);
      assert.equal(r.headers['content-type'], 'application/json; charset=utf-8');
      assertSchema('BuildPage', r.json());
      return r.body;
    };
    const first = await get('/api/v1/builds');
    assert.ok(!first.includes('"stages"'), 'listed builds carry no stages');
    assert.equal(await get('/api/v1/builds'), first);
    assert.equal(listings(), 1, 'the second request was answered from the cache');
    await get('/api/v1/builds?limit=1');
    assert.equal(listings(), 2, 'another query is another entry');
    core.builds[2]!.phase = 'succeeded';
    assert.equal(await get('/api/v1/builds'), first, 'same mark: the stored answer (the core said nothing changed)');
    mark = 'm2';
    const after = await get('/api/v1/builds');
    assert.equal(listings(), 3);
    assert.match(after, /"id":"b3"[^}]*"phase":"succeeded"/, 'a new mark: a fresh listing');
  });

  test('start: 201 with the builds, trigger manual by the token user; core errors map to statuses', async () => {
    const { app, core } = setup();
    const r = await app.inject({
      method: 'POST',
      url: '/api/v1/projects/web/builds',
      headers: ADMIN,
      payload: { ref: 'main', images: ['app'] },
    });
    assert.equal(r.statusCode, 201, r.body);
    const { builds } = r.json() as { builds: { id: string; trigger: unknown }[] };
    assert.equal(builds.length, 1);
    builds.forEach((b) => assertSchema('Build', b));
    assert.deepEqual(builds[0]!.trigger, { type: 'manual', by: 'alice' });
    assert.deepEqual(core.calls[0]!.args.slice(1), [
      { ref: 'main', images: ['app'] },
      { type: 'manual', by: 'alice' },
    ]);
    const ref = await app.inject({
      method: 'POST',
      url: '/api/v1/projects/web/builds',
      headers: ADMIN,
      payload: { ref: 'nope' },
    });
    assert.equal(ref.statusCode, 400);
    assert.equal(errorOf(ref.body).code, 'GIT_REF_NOT_FOUND');
    const none = await app.inject({
      method: 'POST',
      url: '/api/v1/projects/x/builds',
      headers: ADMIN,
      payload: { commit: 'abcd' },
    });
    assert.equal(none.statusCode, 404);
  });

  test('cancel: 200, then 409 once ended, 404 unknown; rerun: 201', async () => {
    const { app } = setup();
    const ok = await app.inject({ method: 'POST', url: '/api/v1/builds/b3/cancel', headers: ADMIN });
    assert.equal(ok.statusCode, 200);
    assert.equal((ok.json() as { phase: string }).phase, 'cancelled');
    const again = await app.inject({ method: 'POST', url: '/api/v1/builds/b3/cancel', headers: ADMIN });
    assert.equal(again.statusCode, 409);
    assert.equal(errorOf(again.body).code, 'CONFLICT');
    assert.equal(
      (await app.inject({ method: 'POST', url: '/api/v1/builds/zz/cancel', headers: ADMIN })).statusCode,
      404,
    );
    const rerun = await app.inject({ method: 'POST', url: '/api/v1/builds/b1/rerun', headers: ADMIN });
    assert.equal(rerun.statusCode, 201);
    assert.deepEqual((rerun.json() as { trigger: unknown }).trigger, { type: 'rerun', by: 'alice', of: 'b1' });
  });

  test('an unexpected error is a generic 500 that leaks nothing', async () => {
    const { app, core } = setup();
    core.getBuild = () => {
      throw new Error('database /var/lib/kiln/secret.db is locked');
    };
    const stderr = process.stderr.write.bind(process.stderr);
    let logged = '';
    process.stderr.write = ((s: string) => ((logged += s), true)) as typeof process.stderr.write;
    let r;
    try {
      r = await app.inject({ url: '/api/v1/builds/b1', headers: VIEWER });
    } finally {
      process.stderr.write = stderr;
    }
    assert.equal(r.statusCode, 500);
    const e = errorOf(r.body);
    assert.equal(e.code, 'INTERNAL');
    assert.ok(!r.body.includes('secret'), r.body);
    assert.match(logged, /secret\.db is locked/);
  });

  test('log: the file as text/plain; empty for a queued build without a log; 404 for an unknown build', async () => {
    const { app, core } = setup();
    await writeFile(core.logPath('b1'), 'step 1\nstep 2\n');
    const r = await app.inject({ url: '/api/v1/builds/b1/log', headers: VIEWER });
    assert.equal(r.statusCode, 200);
    assert.equal(r.headers['content-type'], 'text/plain; charset=utf-8');
    assert.equal(r.body, 'step 1\nstep 2\n');
    core.builds.push(build('q1'));
    const q = await app.inject({ url: '/api/v1/builds/q1/log', headers: VIEWER });
    assert.equal(q.statusCode, 200);
    assert.equal(q.body, '');
    assert.equal((await app.inject({ url: '/api/v1/builds/zz/log', headers: VIEWER })).statusCode, 404);
    assert.equal((await app.inject({ url: '/api/v1/builds/b1/log?follow=maybe', headers: VIEWER })).statusCode, 400);
  });
});

test('request logging redacts the Authorization header', () => {
  const script = `
    import { createApi } from './src/service/api/server.ts';
    import { FakeCore } from './test/helpers/fake-core.ts';
    const app = createApi(new FakeCore('/nonexistent'), { logger: true });
    app.addHook('onRequest', async (req) => { req.log.info({ req }, 'with headers'); });
    await app.inject({ url: '/api/v1/builds?x=1', headers: { authorization: 'Bearer admin-token' } });
    await app.inject({ url: '/api/v1/builds', headers: { authorization: 'Bearer wrong-token-x' } });
    await app.close();
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    cwd: join(import.meta.dirname, '..', '..', '..'),
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /"statusCode":400/);
  assert.match(r.stdout, /"statusCode":401/);
  assert.ok(!r.stdout.includes('admin-token') && !r.stdout.includes('wrong-token-x'), r.stdout);
});

/** A follow stream read over a real socket. */
interface Followed {
  status: number;
  type: string | undefined;
  bytes: Buffer;
  end: LogEnd | undefined;
}

/**
 * GET …/log?follow=1 and decode the stream. `pauseMs`: stop reading for a while after the first bytes (a slow
 * client); `onFirst`: called once the first bytes arrived; `abortAfter`: destroy the connection after that many bytes.
 */
function follow(
  base: string,
  id: string,
  o: { pauseMs?: number; onFirst?: () => void; abortAfter?: number } = {},
): Promise<Followed> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}/api/v1/builds/${id}/log?follow=1`, { headers: ADMIN }, (res: IncomingMessage) => {
      const decoder = new LogEventDecoder();
      const out: Buffer[] = [];
      let end: LogEnd | undefined;
      let seen = 0;
      let first = true;
      res.on('data', (chunk: Buffer) => {
        seen += chunk.length;
        const d = decoder.push(chunk);
        out.push(...d.bytes);
        end ??= d.end;
        if (first) {
          first = false;
          o.onFirst?.();
          if (o.pauseMs) {
            res.pause();
            setTimeout(() => res.resume(), o.pauseMs);
          }
        }
        if (o.abortAfter !== undefined && seen >= o.abortAfter) {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], bytes: Buffer.concat(out), end });
        }
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], bytes: Buffer.concat(out), end }),
      );
      res.on('error', reject);
    });
    req.on('error', (e) => (o.abortAfter !== undefined ? undefined : reject(e)));
    req.end();
  });
}

describe('log follow (SSE over a real socket)', () => {
  async function listen(opts: Parameters<typeof createApi>[1] = {}): Promise<{
    core: FakeCore;
    app: FastifyInstance;
    base: string;
  }> {
    const { core, app } = setup({ follow: { pollMs: 20 }, ...opts });
    const base = await app.listen({ host: '127.0.0.1', port: 0 });
    return { core, app, base };
  }

  test('a client connecting mid-build gets what was written, then the rest, exactly; then the end', async () => {
    const { core, app, base } = await listen();
    const path = core.logPath('b3');
    const early = Buffer.concat([
      Buffer.from('#1 [stage 1/3] FROM busybox\n'),
      Buffer.from('progress 10%\r50%\r100%\n'),
      Buffer.from([0xc3, 0x28, 0x0a]), // invalid UTF-8
      Buffer.from('héllo ✓\npartial li'),
    ]);
    await writeFile(path, early);
    let firstSeen!: () => void;
    const first = new Promise<void>((r) => (firstSeen = r));
    const late = follow(base, 'b3', { onFirst: () => firstSeen() });
    const joined = first.then(() => follow(base, 'b3'));
    await first;
    for (let i = 0; i < 20; i++) {
      await appendFile(path, i === 0 ? 'ne ends here\n' : `line ${i} ${'x'.repeat(i * 50)}\n`);
      await sleep(5);
    }
    await appendFile(path, 'no final newline');
    core.builds[2]!.phase = 'failed';
    core.builds[2]!.reason = 'RUN exited 1';
    const [a, b] = await Promise.all([late, joined]);
    const file = await readFile(path);
    for (const r of [a, b]) {
      assert.equal(r.status, 200);
      assert.equal(r.type, 'text/event-stream; charset=utf-8');
      assert.deepEqual(r.bytes, file);
      assert.deepEqual(r.end, { phase: 'failed', reason: 'RUN exited 1' });
    }
    await app.close();
  });

  test('a queued build without a log: waits for the file, streams it, ends', async () => {
    const { core, app, base } = await listen();
    core.builds.push(build('q9'));
    const path = core.logPath('q9');
    const got = follow(base, 'q9');
    await sleep(60);
    core.builds.at(-1)!.phase = 'fetching';
    await writeFile(path, 'fetching\n');
    await sleep(60);
    await appendFile(path, 'built\n');
    core.builds.at(-1)!.phase = 'succeeded';
    const r = await got;
    assert.equal(r.bytes.toString(), 'fetching\nbuilt\n');
    assert.deepEqual(r.end, { phase: 'succeeded', reason: null });
    // An ended build answers at once, even with no log at all.
    core.builds.push(build('c1', { phase: 'cancelled', reason: 'cancelled by alice' }));
    const c = await follow(base, 'c1');
    assert.equal(c.bytes.length, 0);
    assert.deepEqual(c.end, { phase: 'cancelled', reason: 'cancelled by alice' });
    await app.close();
  });

  test('a client that stops reading for a while still gets every byte (log-follow.test.ts: the fallback itself)', async () => {
    const { core, app, base } = await listen({ follow: { pollMs: 10, chunkSize: 16 * 1024, maxBuffered: 32 * 1024 } });
    const path = core.logPath('b3');
    await writeFile(path, 'start\n');
    const slow = follow(base, 'b3', { pauseMs: 200 });
    const fast = follow(base, 'b3');
    const block = Buffer.from(Array.from({ length: 2000 }, (_, i) => `${i} ${'y'.repeat(i % 97)}\n`).join(''));
    for (let i = 0; i < 20; i++) {
      await appendFile(path, block);
      await sleep(2);
    }
    core.builds[2]!.phase = 'succeeded';
    const [s, f] = await Promise.all([slow, fast]);
    const file = await readFile(path);
    assert.ok(file.length > 2_000_000);
    assert.ok(s.bytes.equals(file), `slow client: ${s.bytes.length} of ${file.length} bytes`);
    assert.ok(f.bytes.equals(file), `fast client: ${f.bytes.length} of ${file.length} bytes`);
    assert.equal(s.end?.phase, 'succeeded');
    await app.close();
  });

  test('a client that disconnects stops the polling (nothing keeps running)', async () => {
    const { core, app, base } = await listen();
    const path = core.logPath('b3');
    await writeFile(path, 'x'.repeat(1000) + '\n');
    const r = await follow(base, 'b3', { abortAfter: 1 });
    assert.ok(r.bytes.length > 0 || r.status === 200);
    await sleep(100);
    const calls = core.getBuildCalls;
    await sleep(200);
    assert.equal(core.getBuildCalls, calls, 'the build is still polled after the client left');
    // Closing does not wait for a stream that is gone.
    await app.close();
  });

  test('service shutdown (core.closing) and server close end open streams with the current phase', async () => {
    const { core, app, base } = await listen();
    await writeFile(core.logPath('b3'), 'running\n');
    const got = follow(base, 'b3');
    await sleep(80);
    core.close();
    const r = await got;
    assert.equal(r.bytes.toString(), 'running\n');
    assert.deepEqual(r.end, { phase: 'building', reason: null, shutdown: true });
    await app.close();

    const second = await listen();
    await writeFile(second.core.logPath('b3'), 'again\n');
    const open = follow(second.base, 'b3');
    await sleep(80);
    const closed = second.app.close();
    const r2 = await open;
    await closed;
    assert.deepEqual(r2.end, { phase: 'building', reason: null, shutdown: true });
  });
});
