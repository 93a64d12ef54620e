/**
 * The build service builds `strategy: node` images on its warm worker like `kiln build --strategy node`: the first
 * build installs the dependencies (engine path) and records the image; a commit that changes only an application
 * file takes the Node.js builder's fast path in the worker — although the service labels every build with its new
 * commit — and uploads only the app layer and the config (registry log). The image carries the new commit's label
 * and the dependency layers of the first build (skopeo). The image is the one `kiln build --strategy node` makes of
 * the same files with the same labels in a fresh KILN_HOME (its engine path): same manifest digest — also now that
 * the worker resolves the base while the service fetches the commit.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../differential/exec.js';
import { startGitServer, type GitServer, type RepoFiles } from '../helpers/git-server.js';
import { pushNodeBase } from '../helpers/node-base.js';
import { runKiln, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { cleanup, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import type { Build } from '../../src/service/model.js';

const isRoot = process.getuid?.() === 0;
const testdata = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'testdata', 'node', 'hello');

interface Manifest {
  config: { digest: string };
  layers: { digest: string }[];
}

describe('kiln serve: strategy node', { skip: !isRoot && 'needs root (debootstrap root)' }, () => {
  let reg: TestRegistry;
  let git: GitServer;
  let home: string;
  let work: string;
  let svc: ServiceProcess;
  let base: string;
  let app: string;

  before(async () => {
    reg = await startRegistry();
    git = await startGitServer();
    home = await makeKilnHome();
    work = await mkdtemp(join(tmpdir(), 'kiln-svc-node-'));
    base = await pushNodeBase(work, reg.host, home);
    // the app of testdata/node/hello with its lockfile resolved by the real npm
    app = join(work, 'app');
    await run('cp', ['-r', testdata, app]);
    const npm = await run('npm', ['install', '--package-lock-only', '--no-audit', '--no-fund', '--ignore-scripts'], {
      cwd: app,
      allowFail: true,
    });
    assert.equal(npm.code, 0, npm.stderr);
    const files: RepoFiles = {};
    for (const f of ['package.json', 'package-lock.json', 'server.js', 'version.js'])
      files[f] = await readFile(join(app, f), 'utf8');
    await git.createRepo('shop', files);
    svc = await startService({
      kilnHome: home,
      config: [
        `insecureRegistries: ["${reg.host}"]`,
        'projects:',
        '  - name: shop',
        `    repository: ${git.repoUrl('shop')}`,
        `    registry: ${reg.host}/shop`,
        '    insecureRegistry: true',
        '    images:',
        '      - name: web',
        '        strategy: node',
        `        node: {base: "${base}"}`,
        '        tags: ["b{{buildNumber}}"]',
        '',
      ].join('\n'),
    });
  });

  after(async () => {
    await svc?.stop('SIGTERM');
    await git?.stop();
    await reg?.stop();
    if (svc) await cleanup(svc.dataDir);
    if (home) await cleanup(home);
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('an app-only commit takes the fast path in the warm worker: only the app layer and config uploaded', async () => {
    const build = async (): Promise<{ b: Build; log: string }> => {
      const r = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/shop/builds', { ref: 'main' });
      assert.equal(r.status, 201, r.text);
      const b = await svc.waitBuild((r.body.builds[0] as Build).id, undefined, 600_000);
      const log = (await svc.api('GET', `/api/v1/builds/${b.id}/log`)).text;
      assert.equal(b.phase, 'succeeded', `${b.reason}\n${log}`);
      return { b, log };
    };
    const inspect = async <T>(ref: string, what: '--raw' | '--config'): Promise<T> =>
      JSON.parse((await run('skopeo', ['inspect', what, '--tls-verify=false', `docker://${ref}`])).stdout) as T;

    const first = await build();
    assert.doesNotMatch(first.log, /dependencies cached/, 'the first build installs');
    const m1 = await inspect<Manifest>(first.b.tags[0] as string, '--raw');

    const commit = await git.commit('shop', { 'version.js': "module.exports = 'v2';\n" }, 'app change');
    const seen = reg.log().length;
    const second = await build();
    assert.equal(second.b.commit, commit);
    assert.match(second.log, /\[node\] dependencies cached: \d+ layers/, 'the worker took the fast path');
    assert.ok(second.b.stages.some((s) => s.name.startsWith('[node] dependencies cached')));
    const ref2 = second.b.tags[0] as string;
    await reg.waitForLog(new RegExp(`PUT /v2/shop/web/manifests/${ref2.split(':').pop() as string} `));
    const m2 = await inspect<Manifest>(ref2, '--raw');
    assert.notEqual(second.b.digest, first.b.digest);
    assert.deepEqual(m2.layers.slice(0, -1), m1.layers.slice(0, -1), 'the dependency layers are the first build’s');
    const uploaded = [
      ...reg
        .log()
        .slice(seen)
        .matchAll(/PUT \/v2\/shop\/web\/blobs\/uploads\/\S*digest=sha256%3A([0-9a-f]{64})/g),
    ].map((m) => `sha256:${m[1]}`);
    assert.deepEqual(uploaded.sort(), [m2.layers.at(-1)?.digest, m2.config.digest].sort());
    const cfg = await inspect<{ config: { Labels: Record<string, string> } }>(ref2, '--config');
    assert.equal(cfg.config.Labels['org.opencontainers.image.revision'], commit, 'labelled with the new commit');

    // the CLI, same files and labels, a fresh KILN_HOME (it installs: the engine path): the same image
    await writeFile(join(app, 'version.js'), "module.exports = 'v2';\n");
    const cliHome = await makeKilnHome();
    try {
      const labels = Object.entries(cfg.config.Labels)
        .filter(([k]) => k.startsWith('org.opencontainers.image.'))
        .flatMap(([k, v]) => ['--label', `${k}=${v}`]);
      const cli = await runKiln(
        [
          'build',
          '--strategy',
          'node',
          '--base',
          base,
          ...labels,
          '-t',
          `${reg.host}/cli/web:1`,
          '--push',
          '--insecure-registry',
          reg.host,
          '--progress',
          'plain',
          app,
        ],
        { KILN_HOME: cliHome },
      );
      assert.equal(cli.code, 0, cli.stderr);
      const m3 = await inspect<Manifest>(`${reg.host}/cli/web:1`, '--raw');
      assert.deepEqual(m3, m2, 'the CLI made the same manifest');
      const raw = (await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/cli/web:1`]))
        .stdout;
      assert.equal(`sha256:${createHash('sha256').update(raw).digest('hex')}`, second.b.digest);
    } finally {
      await cleanup(cliHome);
    }
  });
});
