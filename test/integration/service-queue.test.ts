/**
 * The build queue with an in-process `BuildService` and real parts: a git smart-HTTP server (`git http-backend`),
 * Debian's `docker-registry`, warm build workers (`LocalBuildRunner`) that really run RUN steps in user namespaces,
 * and `skopeo` to see what was pushed. Covers what only the whole service shows: branch/tag and path filters of
 * automatic triggers, coalescing under SerialLatestOnly, global and per-project limits, run policies, fair share,
 * timeouts, retention, cancel and rerun. Assertions are about orderings and states (phases, reasons, startedAt /
 * finishedAt intervals), never about how long something took. One git server, registry and KILN_HOME for the file;
 * each test starts its own service (own data dir) with the config it needs.
 */
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { BuildService } from '../../src/service/service.js';
import { LocalBuildRunner } from '../../src/service/runner/local.js';
import { parseConfigText } from '../../src/service/config/parse.js';
import { FINAL_PHASES, type Build, type Trigger } from '../../src/service/model.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { cleanup, makeKilnHome } from '../helpers/service.js';

const BASE = 'FROM localhost/busybox:latest\n';
/** A Dockerfile that builds in a moment (a distinct layer per `what`). */
const quick = (what: string): string => `${BASE}RUN echo ${what} > /x\n`;
/** A Dockerfile whose RUN stays busy (`secs` doubles as a unique marker for pgrep). */
const busy = (secs: number): string => `${BASE}RUN echo busy-start && sleep ${secs}\n`;

const MANUAL: Trigger = { type: 'manual', by: 'tester' };
const hook = (delivery: string): Trigger => ({ type: 'webhook', forge: 'generic', delivery });

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function run(cmd: string, args: string[]): Promise<{ code: number; stdout: Buffer }> {
  return new Promise((resolve) =>
    execFile(cmd, args, { encoding: 'buffer', maxBuffer: 16 << 20 }, (err, stdout) =>
      resolve({ code: err ? 1 : 0, stdout }),
    ),
  );
}

/** Digest of the manifest the registry serves for `ref`, or undefined when there is none. */
async function pushedDigest(ref: string): Promise<string | undefined> {
  const r = await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${ref}`]);
  return r.code === 0 ? 'sha256:' + createHash('sha256').update(r.stdout).digest('hex') : undefined;
}

async function pushedTags(repo: string): Promise<string[]> {
  const r = await run('skopeo', ['list-tags', '--tls-verify=false', `docker://${repo}`]);
  assert.equal(r.code, 0, `skopeo list-tags ${repo}`);
  return ((JSON.parse(r.stdout.toString()) as { Tags: string[] }).Tags ?? []).sort();
}

async function pgrep(pattern: string): Promise<boolean> {
  return (await run('pgrep', ['-f', pattern])).code === 0;
}

/** Polls `get` until it yields a value (not undefined/false); fails with `what()` after `ms`. */
async function until<T>(
  what: () => string,
  get: () => T | undefined | false | Promise<T | undefined | false>,
  ms = 90_000,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what()}`);
    await sleep(25);
  }
}

const isFinal = (b: Build): boolean => FINAL_PHASES.includes(b.phase);
const ms = (iso: string | null, what: string): number => {
  assert.ok(iso, `${what} is set`);
  return Date.parse(iso);
};

describe('build queue (in-process BuildService, git http-backend, docker-registry, real workers)', () => {
  let reg: TestRegistry;
  let git: GitServer;
  let home: string;
  let savedHome: string | undefined;
  const open: BuildService[] = [];
  const dataDirs: string[] = [];
  const serviceLog: string[] = [];

  before(async () => {
    [reg, git, home] = await Promise.all([startRegistry(), startGitServer(), makeKilnHome()]);
    savedHome = process.env.KILN_HOME;
    process.env.KILN_HOME = home;
  });

  afterEach(async () => {
    for (const svc of open.splice(0)) await svc.stop(5000);
  });

  after(async () => {
    for (const svc of open.splice(0)) await svc.stop(5000);
    if (savedHome === undefined) delete process.env.KILN_HOME;
    else process.env.KILN_HOME = savedHome;
    await git?.stop();
    await reg?.stop();
    await cleanup(...dataDirs, ...(home ? [home] : []));
  });

  /** One project of the config: `images` are YAML flow mappings, `extra` more project keys (one per line). */
  const project = (name: string, images: string[], extra: string[] = []): string =>
    [
      `  - name: ${name}`,
      `    repository: ${git.repoUrl(name)}`,
      `    registry: ${reg.host}/${name}`,
      ...extra.map((l) => `    ${l}`),
      '    images:',
      ...images.map((i) => `      - ${i}`),
    ].join('\n');

  /** A service on a fresh data dir with these projects (YAML, parsed like `kiln serve --config`). */
  async function serve(projects: string[], o: { concurrency?: number; warm?: number } = {}): Promise<BuildService> {
    const yaml = [
      `concurrency: ${o.concurrency ?? 2}`,
      `insecureRegistries: ["${reg.host}"]`,
      'projects:',
      ...projects,
      '',
    ].join('\n');
    const config = parseConfigText(yaml, 'service-queue.yaml');
    const dataDir = await mkdtemp(join(tmpdir(), 'kiln-queue-data-'));
    dataDirs.push(dataDir);
    const runner = new LocalBuildRunner({ warm: o.warm ?? 1, env: { KILN_HOME: home } });
    const svc = await BuildService.start({ dataDir, config, runner, log: (l) => serviceLog.push(l) }).catch(
      async (e: unknown) => {
        await runner.close();
        throw e;
      },
    );
    open.push(svc);
    return svc;
  }

  const current = (svc: BuildService, id: string): Build => svc.getBuild(id) ?? assert.fail(`build ${id} is gone`);

  const settled = (svc: BuildService, id: string, timeoutMs?: number): Promise<Build> =>
    until(
      () => `build ${id} to end: ${JSON.stringify(svc.getBuild(id))}`,
      () => {
        const b = current(svc, id);
        return isFinal(b) && b;
      },
      timeoutMs,
    );

  /** Until the build's RUN step is running (its worker is inside the RUN, not only starting). */
  const inRun = (svc: BuildService, id: string): Promise<Build> =>
    until(
      () => `build ${id} to be in its RUN step: ${JSON.stringify(svc.getBuild(id))}`,
      () => {
        const b = current(svc, id);
        assert.ok(!isFinal(b), `build ${id} ended early: ${b.phase} ${b.reason}`);
        return b.stages.some((s) => s.name.includes('RUN') && s.status === 'running') && b;
      },
    );

  const idle = (svc: BuildService): Promise<true> =>
    until(
      () => `the queue to drain (running ${svc.runningIds().join(', ')})`,
      () => svc.runningIds().length === 0 && svc.store.queued().length === 0,
    );

  /**
   * Brings the service's mirror of the project up to date (all branches and tags). Automatic builds need it until
   * the service fetches the commit of an automatic build itself — see the test "an automatic build of a commit the
   * service has not fetched yet succeeds".
   */
  async function fetchMirror(svc: BuildService, name: string): Promise<void> {
    await svc.mirrors.resolve(svc.getProject(name) ?? assert.fail(`project ${name}`), { ref: 'main' });
  }

  test('an automatic build of a commit the service has not fetched yet succeeds', async () => {
    await git.createRepo('fresh', { Dockerfile: quick('fresh-0') });
    const svc = await serve([project('fresh', ['{name: app, tags: ["{{branch}}"]}'])]);
    const head = await git.commit('fresh', { Dockerfile: quick('fresh-1') }, 'pushed after the service started');
    const [b] = svc.enqueueAutomatic('fresh', { ref: 'refs/heads/main', commit: head }, hook('fresh-1'));
    assert.ok(b, 'one build');
    const done = await settled(svc, b.id);
    assert.equal(
      done.phase,
      'succeeded',
      'BUG (src/service/service.ts execute): a build with a commit (webhook, poll) is checked out without fetching ' +
        `the mirror first, so a freshly pushed commit is never there — reason: ${done.reason}`,
    );
    assert.equal(done.commit, head);
  });

  test('branch and tag filters decide automatic builds; manual builds ignore them', async () => {
    const main = await git.createRepo('filters', { Dockerfile: quick('filters-main') });
    const rel = await git.commit('filters', { Dockerfile: quick('filters-rel') }, 'release', 'release/1.2');
    const nested = await git.commit('filters', { Dockerfile: quick('filters-nested') }, 'nested', 'release/1/2');
    const feature = await git.commit('filters', { Dockerfile: quick('filters-feature') }, 'feature', 'feature/x');
    await git.tag('filters', 'v1.0', main);
    const svc = await serve([
      project(
        'filters',
        ['{name: app, tags: ["{{branch}}", "{{tag}}"]}'],
        ['branches: ["main", "release/*"]', 'tags: ["v*"]'],
      ),
    ]);
    await fetchMirror(svc, 'filters');
    const repo = `${reg.host}/filters/app`;
    const auto = (ref: string, commit: string): Build[] =>
      svc.enqueueAutomatic('filters', { ref, commit }, hook(`d-${ref}`));

    // refused refs: nothing returned, nothing stored
    assert.deepEqual(auto('refs/heads/release/1/2', nested), [], '`*` does not cross a /');
    assert.deepEqual(auto('refs/heads/feature/x', feature), []);
    assert.deepEqual(auto('refs/tags/1.0', main), [], 'tag filter v*');
    assert.deepEqual(svc.listBuilds({ project: 'filters' }).builds, []);

    const built = new Map<string, Build>();
    for (const [ref, commit] of [
      ['refs/heads/main', main],
      ['refs/heads/release/1.2', rel],
      ['refs/tags/v1.0', main],
    ] as const) {
      const bs = auto(ref, commit);
      assert.equal(bs.length, 1, `${ref} builds`);
      const b = await settled(svc, (bs[0] as Build).id);
      assert.equal(b.phase, 'succeeded', `${ref}: ${b.reason}`);
      assert.equal(b.commit, commit);
      assert.deepEqual(b.trigger, hook(`d-${ref}`));
      built.set(ref, b);
    }
    const tagOf = (ref: string): string[] => built.get(ref)?.tags ?? [];
    assert.deepEqual(tagOf('refs/heads/main'), [`${repo}:main`]);
    assert.deepEqual(tagOf('refs/heads/release/1.2'), [`${repo}:release-1.2`], 'a tag-safe {{branch}}');
    assert.deepEqual(tagOf('refs/tags/v1.0'), [`${repo}:v1.0`], '{{tag}} (and no {{branch}}) for a git tag');
    for (const b of built.values()) {
      for (const t of b.tags) assert.equal(await pushedDigest(t), b.digest, `${t} is the build's image`);
    }

    // a person may build any branch
    const [m] = await svc.startBuilds('filters', { ref: 'feature/x' }, MANUAL);
    assert.ok(m);
    const manual = await settled(svc, m.id);
    assert.equal(manual.phase, 'succeeded', manual.reason ?? '');
    assert.equal(manual.commit, feature);
    assert.deepEqual(manual.tags, [`${repo}:feature-x`]);

    assert.deepEqual(await pushedTags(repo), ['feature-x', 'main', 'release-1.2', 'v1.0']);
    assert.equal(svc.listBuilds({ project: 'filters' }).builds.length, 4);
  });

  test('path filters: only the images a change concerns build; unknown changes build all', async () => {
    const head = await git.createRepo('paths', {
      'services/web/Dockerfile': quick('web'),
      'services/api/Dockerfile': quick('api'),
      'README.md': 'paths\n',
    });
    const svc = await serve([
      project('paths', [
        '{name: web, context: services/web, paths: ["services/web/**"], tags: ["{{branch}}"]}',
        '{name: api, context: services/api, paths: ["services/api/**"], tags: ["{{branch}}"]}',
      ]),
    ]);
    await fetchMirror(svc, 'paths');
    const auto = (changedPaths: string[] | undefined, delivery: string): Build[] =>
      svc.enqueueAutomatic(
        'paths',
        { ref: 'refs/heads/main', commit: head, ...(changedPaths ? { changedPaths } : {}) },
        hook(delivery),
      );

    assert.deepEqual(auto(['README.md', 'docs/x.md'], 'p0'), [], 'a change no image cares about builds nothing');
    const web = auto(['services/web/a.txt'], 'p1');
    assert.deepEqual(
      web.map((b) => b.image),
      ['web'],
    );
    assert.deepEqual(current(svc, (web[0] as Build).id).changedPaths, ['services/web/a.txt']);
    const first = await settled(svc, (web[0] as Build).id);
    assert.equal(first.phase, 'succeeded', first.reason ?? '');

    const both = auto(undefined, 'p2');
    assert.deepEqual(both.map((b) => b.image).sort(), ['api', 'web']);
    for (const b of both) {
      const done = await settled(svc, b.id);
      assert.equal(done.phase, 'succeeded', `${b.image}: ${done.reason}`);
      assert.equal(await pushedDigest(`${reg.host}/paths/${b.image}:main`), done.digest);
    }
    assert.equal(svc.listBuilds({ project: 'paths' }).builds.length, 3);
  });

  test('SerialLatestOnly: pushes while a build runs coalesce into one build of the newest commit', async () => {
    const c0 = await git.createRepo('coalesce', { Dockerfile: busy(3091) });
    const svc = await serve([project('coalesce', ['{name: app, tags: ["{{branch}}"]}'])]);
    await fetchMirror(svc, 'coalesce');
    const ref = 'refs/heads/main';
    const [b0] = svc.enqueueAutomatic('coalesce', { ref, commit: c0 }, hook('c0'));
    assert.ok(b0);
    await inRun(svc, b0.id);

    const commits: string[] = [];
    const queued: Build[] = [];
    for (let i = 1; i <= 5; i++) {
      const c = await git.commit('coalesce', { Dockerfile: quick(`coalesce-${i}`) }, `push ${i}`);
      await fetchMirror(svc, 'coalesce');
      const bs = svc.enqueueAutomatic('coalesce', { ref, commit: c }, hook(`c${i}`));
      assert.equal(bs.length, 1);
      assert.equal((bs[0] as Build).phase, 'queued', 'waits behind the running build of the same image and ref');
      commits.push(c);
      queued.push(bs[0] as Build);
    }
    assert.ok(!isFinal(current(svc, b0.id)), 'the running build is not superseded');
    for (let i = 0; i < 4; i++) {
      const b = current(svc, (queued[i] as Build).id);
      assert.equal(b.phase, 'cancelled', `push ${i + 1}`);
      assert.equal(b.reason, `superseded by ${(queued[i + 1] as Build).id}`);
    }
    const newest = queued[4] as Build;
    assert.equal(current(svc, newest.id).phase, 'queued');

    const c = await svc.cancelBuild(b0.id, 'tester');
    assert.equal(c.phase, 'cancelled');
    assert.equal(c.reason, 'cancelled by tester');
    const done = await settled(svc, newest.id);
    assert.equal(done.phase, 'succeeded', done.reason ?? '');
    assert.equal(done.commit, commits[4]);
    await idle(svc);

    const all = svc.listBuilds({ project: 'coalesce' }).builds;
    assert.equal(all.length, 6);
    assert.deepEqual(
      all.filter((b) => b.startedAt !== null).map((b) => b.id),
      [newest.id, b0.id],
      'besides the build that was running, exactly one build ran: the newest',
    );
    const cfg = await run('skopeo', [
      'inspect',
      '--tls-verify=false',
      '--config',
      `docker://${reg.host}/coalesce/app:main`,
    ]);
    const labels = (JSON.parse(cfg.stdout.toString()) as { config: { Labels: Record<string, string> } }).config.Labels;
    assert.equal(labels['org.opencontainers.image.revision'], commits[4], 'the pushed image is of the newest commit');
  });

  test('global concurrency: while the only slot is taken, another project waits', async () => {
    await git.createRepo('g1', { Dockerfile: busy(3092) });
    await git.createRepo('g2', { Dockerfile: quick('g2') });
    const svc = await serve(
      [project('g1', ['{name: app, tags: ["{{branch}}"]}']), project('g2', ['{name: app, tags: ["{{branch}}"]}'])],
      { concurrency: 1 },
    );
    const [a] = await svc.startBuilds('g1', { ref: 'main' }, MANUAL);
    assert.ok(a);
    await inRun(svc, a.id);
    const [b] = await svc.startBuilds('g2', { ref: 'main' }, MANUAL);
    assert.ok(b);
    assert.equal(b.phase, 'queued', 'the second project waits for the global slot');
    assert.deepEqual(svc.runningIds(), [a.id]);

    await svc.cancelBuild(a.id, 'tester');
    const done = await settled(svc, b.id);
    assert.equal(done.phase, 'succeeded', done.reason ?? '');
    const first = current(svc, a.id);
    assert.equal(first.phase, 'cancelled');
    assert.ok(ms(done.startedAt, 'g2 startedAt') >= ms(first.finishedAt, 'g1 finishedAt'));
  });

  test('per-project concurrency and run policies: Serial never overlaps, Parallel does', async () => {
    await git.createRepo('pp', { 'one/Dockerfile': quick('pp-one'), 'two/Dockerfile': quick('pp-two') });
    const slow = `${BASE}RUN sleep 1\n`;
    await git.createRepo('par', { Dockerfile: slow });
    await git.createRepo('ser', { Dockerfile: slow });
    const svc = await serve(
      [
        project('pp', [
          '{name: one, context: one, tags: ["{{branch}}"]}',
          '{name: two, context: two, tags: ["{{branch}}"]}',
        ]),
        project('par', ['{name: app, tags: ["{{branch}}"]}'], ['runPolicy: Parallel', 'concurrency: 2']),
        project('ser', ['{name: app, tags: ["{{branch}}"]}'], ['runPolicy: Serial', 'concurrency: 2']),
      ],
      { concurrency: 2, warm: 2 },
    );
    /** The two builds, ordered by start, after both succeeded. */
    const pair = async (builds: Build[]): Promise<[Build, Build]> => {
      assert.equal(builds.length, 2);
      const done: Build[] = [];
      for (const b of builds) done.push(await settled(svc, b.id));
      for (const b of done) assert.equal(b.phase, 'succeeded', `${b.project}/${b.image}: ${b.reason}`);
      done.sort((x, y) => ms(x.startedAt, 'startedAt') - ms(y.startedAt, 'startedAt'));
      return done as [Build, Build];
    };
    const twice = async (name: string): Promise<Build[]> =>
      (
        await Promise.all([
          svc.startBuilds(name, { ref: 'main' }, MANUAL),
          svc.startBuilds(name, { ref: 'main' }, MANUAL),
        ])
      ).flat();

    // concurrency 1 (default), global 2: the project's two images run one after the other
    const [p1, p2] = await pair(await svc.startBuilds('pp', { ref: 'main' }, MANUAL));
    assert.ok(
      ms(p2.startedAt, 'second startedAt') >= ms(p1.finishedAt, 'first finishedAt'),
      `per-project concurrency 1: ${p1.image} ${p1.startedAt}–${p1.finishedAt} overlaps ${p2.image} ${p2.startedAt}`,
    );
    await idle(svc);

    // Parallel, concurrency 2: two builds of the same image and ref run at once
    const [a1, a2] = await pair(await twice('par'));
    assert.ok(
      ms(a2.startedAt, 'second startedAt') < ms(a1.finishedAt, 'first finishedAt'),
      `Parallel: the second build started (${a2.startedAt}) only after the first finished (${a1.finishedAt})`,
    );
    await idle(svc);

    // Serial, concurrency 2: same image and ref never overlap, though the project has room
    const [s1, s2] = await pair(await twice('ser'));
    assert.ok(
      ms(s2.startedAt, 'second startedAt') >= ms(s1.finishedAt, 'first finishedAt'),
      `Serial: ${s1.startedAt}–${s1.finishedAt} overlaps ${s2.startedAt}–${s2.finishedAt}`,
    );
  });

  test("fair share: project A enqueues 20 builds, project B's one build starts before A's 3rd finishes", async () => {
    await git.createRepo('fa', { Dockerfile: `${BASE}RUN sleep 2\n` });
    await git.createRepo('fb', { Dockerfile: quick('fb') });
    const svc = await serve(
      [
        project('fa', ['{name: app, tags: ["{{branch}}"]}'], ['runPolicy: Parallel', 'concurrency: 2']),
        project('fb', ['{name: app, tags: ["{{branch}}"]}']),
      ],
      { concurrency: 2, warm: 2 },
    );
    await fetchMirror(svc, 'fb'); // B's enqueue below then costs one quick fetch
    const a = (
      await Promise.all(Array.from({ length: 20 }, () => svc.startBuilds('fa', { ref: 'main' }, MANUAL)))
    ).flat();
    const [b] = await svc.startBuilds('fb', { ref: 'main' }, MANUAL);
    assert.ok(b);
    assert.equal(a.length, 20);
    const byNumber = (n: number): Build => current(svc, (a.find((x) => x.number === n) ?? assert.fail(`A#${n}`)).id);
    assert.ok(
      [1, 2].every((n) => byNumber(n).phase !== 'queued' && !isFinal(byNumber(n))),
      'setup: A#1 and A#2 run when B is enqueued',
    );

    const bStarted = await until(
      () => `B to start: ${JSON.stringify(svc.getBuild(b.id))}`,
      () => current(svc, b.id).startedAt ?? undefined,
    );
    for (const x of a) {
      if (current(svc, x.id).phase === 'queued') await svc.cancelBuild(x.id, 'tester');
    }
    await idle(svc);
    const doneB = current(svc, b.id);
    assert.equal(doneB.phase, 'succeeded', doneB.reason ?? '');
    const a3 = byNumber(3);
    // ≤: a 3rd A build still queued when B starts is cancelled just above, in the same millisecond at times
    assert.ok(
      Date.parse(bStarted) <= ms(a3.finishedAt, "A's 3rd finishedAt"),
      `B started ${bStarted}, A's 3rd build finished ${a3.finishedAt}`,
    );
    for (const x of a.map((y) => current(svc, y.id)).filter((y) => y.number >= 3 && y.startedAt !== null)) {
      assert.ok(Date.parse(bStarted) <= ms(x.startedAt, 'startedAt'), `A#${x.number} started before B`);
    }
  });

  test('timeout: the build is timed-out, its RUN process is gone and nothing is pushed', async () => {
    await git.createRepo('slow', { Dockerfile: busy(6173) });
    const svc = await serve([project('slow', ['{name: app, timeoutSeconds: 5, tags: ["{{branch}}"]}'])]);
    const [b] = await svc.startBuilds('slow', { ref: 'main' }, MANUAL);
    assert.ok(b);
    let sawRun = false;
    const done = await until(
      () => `build ${b.id} to end`,
      async () => {
        sawRun ||= await pgrep('sleep 6173');
        const x = current(svc, b.id);
        return isFinal(x) && x;
      },
      60_000,
    );
    assert.equal(done.phase, 'timed-out', done.reason ?? '');
    assert.match(done.reason ?? '', /timed out after 5s/);
    assert.ok(sawRun, 'the RUN step was running when the timeout hit');
    assert.equal(await pgrep('sleep 6173'), false, 'the RUN process was killed');
    assert.equal(done.digest, null);
    assert.equal(await pushedDigest(`${reg.host}/slow/app:main`), undefined, 'nothing pushed');
    assert.match(await readFile(svc.logPath(b.id), 'utf8'), /timed out after 5s/);
  });

  test('retention keeps the newest successful and failed builds and removes the logs of the others', async () => {
    await git.createRepo('keep', { Dockerfile: quick('keep'), 'bad/Dockerfile': `${BASE}RUN exit 3\n` });
    const svc = await serve([
      project(
        'keep',
        ['{name: ok, tags: ["{{branch}}"]}', '{name: bad, dockerfile: bad/Dockerfile, tags: ["{{branch}}"]}'],
        ['retention: {successfulCount: 2, failedCount: 1, maxAgeDays: 0}'],
      ),
    ]);
    const enqueued: Build[] = [];
    for (const images of [['ok', 'bad'], ['ok', 'bad'], ['ok'], ['ok']]) {
      enqueued.push(...(await svc.startBuilds('keep', { ref: 'main', images }, MANUAL)));
    }
    assert.deepEqual(
      enqueued.map((b) => b.image),
      ['ok', 'bad', 'ok', 'bad', 'ok', 'ok'],
    );
    await idle(svc);

    const [ok1, bad1, ok2, bad2, ok3, ok4] = enqueued as [Build, Build, Build, Build, Build, Build];
    const kept = svc.listBuilds({ project: 'keep' }).builds;
    assert.deepEqual(
      kept.map((b) => b.id),
      [ok4.id, ok3.id, bad2.id],
      `kept: ${kept.map((b) => `${b.image}#${b.number} ${b.phase}`).join(', ')}`,
    );
    assert.deepEqual(
      kept.map((b) => b.phase),
      ['succeeded', 'succeeded', 'failed'],
    );
    assert.equal((kept[2] as Build).reason, 'Dockerfile:2: RUN exited 3');
    for (const gone of [ok1, bad1, ok2]) assert.equal(svc.getBuild(gone.id), undefined);
    const logs = (await readdir(dirname(svc.logPath(ok4.id)))).sort();
    assert.deepEqual(logs, [ok4.id, ok3.id, bad2.id].map((id) => `${id}.log`).sort(), 'only the kept builds have logs');
  });

  test('a build cancelled while its worker starts ends cancelled and pushes nothing', async () => {
    await git.createRepo('early', { Dockerfile: quick('early') });
    // no warm worker: the runner starts one for the build, and the cancel arrives while it starts
    const svc = await serve([project('early', ['{name: app, tags: ["{{branch}}"]}'])], { warm: 0 });
    const [b] = await svc.startBuilds('early', { ref: 'main' }, MANUAL);
    assert.ok(b);
    await until(
      () => `build ${b.id} to hand its job to the runner: ${JSON.stringify(svc.getBuild(b.id))}`,
      () => current(svc, b.id).phase === 'building',
    );
    const c = await svc.cancelBuild(b.id, 'tester');
    assert.equal(
      c.phase,
      'cancelled',
      'BUG (src/engine/services.ts runBuildCommand): a worker that got the cancel before it started building ' +
        `(embed signal already aborted) builds and pushes anyway — ${c.phase} ${c.reason ?? ''}`,
    );
    assert.equal(c.reason, 'cancelled by tester');
    assert.equal(await pushedDigest(`${reg.host}/early/app:main`), undefined, 'nothing pushed');
  });

  test('a queued build cancelled is cancelled at once and never starts; its rerun builds', async () => {
    await git.createRepo('rc', { 'slow/Dockerfile': busy(3093), 'quick/Dockerfile': quick('rc') });
    const svc = await serve([
      project('rc', [
        '{name: slow, context: slow, tags: ["{{branch}}"]}',
        '{name: quick, context: quick, tags: ["{{branch}}"]}',
      ]),
    ]);
    const [s] = await svc.startBuilds('rc', { ref: 'main', images: ['slow'] }, MANUAL);
    assert.ok(s);
    await inRun(svc, s.id);
    const [q] = await svc.startBuilds('rc', { ref: 'main', images: ['quick'] }, MANUAL);
    assert.ok(q);
    assert.equal(q.phase, 'queued', 'project concurrency 1: waits');

    const c = await svc.cancelBuild(q.id, 'tester');
    assert.equal(c.phase, 'cancelled');
    assert.equal(c.reason, 'cancelled by tester');
    assert.equal(c.startedAt, null);
    assert.ok(c.finishedAt);
    await assert.rejects(svc.cancelBuild(q.id, 'tester'), /already ended/);

    const r = await svc.rerunBuild(q.id, 'tester');
    assert.equal(r.phase, 'queued');
    assert.deepEqual(r.trigger, { type: 'rerun', of: q.id, by: 'tester' });
    assert.equal(r.commit, q.commit);
    assert.equal(r.ref, q.ref);

    const cs = await svc.cancelBuild(s.id, 'tester');
    assert.equal(cs.phase, 'cancelled');
    const rerun = await settled(svc, r.id);
    assert.equal(rerun.phase, 'succeeded', rerun.reason ?? '');
    await idle(svc);
    const never = current(svc, q.id);
    assert.equal(never.phase, 'cancelled');
    assert.equal(never.startedAt, null, 'the cancelled queued build never started');
    assert.deepEqual(never.stages, []);
  });
});
