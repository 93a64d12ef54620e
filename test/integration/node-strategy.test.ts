/**
 * `kiln build --strategy node` end to end with real parts: a Node.js base image built by kiln from the cached
 * debootstrap root (scripts/debian-rootfs.sh) plus this machine's node and npm, pushed to a real registry; apps
 * whose lockfiles the real npm resolves from the npm registry; real `npm ci` in kiln's sandbox; the image run by
 * Debian's dockerd answering HTTP; a second build after an app change uploading only the app layer (registry log);
 * two apps — the second built rootless by an ordinary user with subordinate ids — sharing express's layer digest; skopeo and umoci reading the image; bad input refused with one line and
 * nothing pushed.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { startRegistry, runKiln, type TestRegistry } from '../helpers/registry.js';
import { pushNodeBase } from '../helpers/node-base.js';
import { run } from '../differential/exec.js';
import { ensureRootlessUser, rootlessTempDir } from '../helpers/rootless.js';
import { kiln as kilnAs } from './build-helpers.js';

const isRoot = process.getuid?.() === 0;
const here = dirname(fileURLToPath(import.meta.url));
const testdata = join(here, '..', '..', 'testdata', 'node');

interface Manifest {
  config: { digest: string };
  layers: { digest: string; size: number }[];
}

/** An app from testdata/node/NAME with its lockfile resolved by the real npm from the npm registry. */
async function makeApp(
  work: string,
  name: string,
  edit?: (dir: string) => Promise<void>,
  full = false,
): Promise<string> {
  const dir = join(work, name + '-' + Math.random().toString(36).slice(2, 8));
  await run('cp', ['-r', join(testdata, name), dir]);
  if (edit) await edit(dir);
  // --package-lock-only resolves from the registry's metadata; a full install (scripts not run) also records
  // hasInstallScript, which only the package's files tell (binding.gyp)
  const args = ['install', '--no-audit', '--no-fund', '--ignore-scripts', ...(full ? [] : ['--package-lock-only'])];
  const r = await run('npm', args, { cwd: dir, allowFail: true });
  if (r.code !== 0) throw new Error(`npm ${args.join(' ')} in ${name}:\n${r.stderr}`);
  await rm(join(dir, 'node_modules'), { recursive: true, force: true });
  return dir;
}

describe('kiln build --strategy node', { skip: !isRoot && 'needs root (dockerd, debootstrap root)' }, () => {
  let work: string;
  let home: string;
  let registry: TestRegistry;
  let dockerd: Dockerd;
  let base: string;
  const R = (): string => registry.host;
  const kiln = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    runKiln([...args, '--insecure-registry', R(), '--progress', 'plain'], { KILN_HOME: home, ...env });
  const build = (src: string, tag: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}) =>
    kiln(['build', '--strategy', 'node', '--base', base, '-t', tag, '--push', ...extra, src], env);
  const skopeoManifest = async (ref: string): Promise<Manifest> =>
    JSON.parse((await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`])).stdout) as Manifest;
  const skopeoConfig = async (ref: string): Promise<{ config: Record<string, unknown> }> =>
    JSON.parse((await run('skopeo', ['inspect', '--config', '--tls-verify=false', `docker://${ref}`])).stdout) as {
      config: Record<string, unknown>;
    };
  const uploads = (log: string, repo: string): string[] =>
    [...log.matchAll(new RegExp(`PUT /v2/${repo}/blobs/uploads/\\S*digest=sha256%3A([0-9a-f]{64})`, 'g'))].map(
      (m) => `sha256:${m[1]}`,
    );

  /** Run the image detached on the host network and ask it over HTTP. */
  async function answer(ref: string, port: number): Promise<string> {
    const id = (
      await dockerd.docker(['run', '-d', '--network', 'host', '--pull', 'always', '-e', `PORT=${port}`, ref])
    ).stdout.trim();
    try {
      for (let i = 0; i < 100; i++) {
        try {
          const res = await fetch(`http://127.0.0.1:${port}/`);
          return await res.text();
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      throw new Error(`no answer on ${port}: ${(await dockerd.docker(['logs', id], { allowFail: true })).stderr}`);
    } finally {
      await dockerd.docker(['rm', '-f', id], { allowFail: true });
    }
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'kiln-node-'));
    home = join(work, 'home');
    registry = await startRegistry();
    dockerd = await startDockerd({ insecureRegistries: [registry.host] });
    base = await pushNodeBase(work, registry.host, home);
  });
  after(async () => {
    await dockerd?.stop();
    await registry?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('layer per dependency, runs, app change uploads only the app layer, apps share dependency layers', async () => {
    const app = await makeApp(work, 'hello');
    const tag = `${R()}/hello:1`;
    // a label whose value changes every build, as the build service's commit label
    const rev = (n: number): string[] => ['--label', `org.opencontainers.image.revision=r${n}`];
    const first = await build(app, tag, rev(1));
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /npm ci --omit=dev|install\.sh/, 'the install step shows in the progress output');
    const m1 = await skopeoManifest(tag);
    const baseLayers = (await skopeoManifest(base)).layers.length;
    const lock = JSON.parse(await readFile(join(app, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { dev?: boolean }>;
    };
    const prod = Object.entries(lock.packages).filter(([k, v]) => k !== '' && !v.dev).length;
    assert.ok(prod > 20, `express brings its tree (${prod} packages)`);
    // base + one layer per package + .bin + WORKDIR + app
    assert.equal(m1.layers.length, baseLayers + prod + 3);
    assert.ok(m1.layers.length <= 100);
    const cfg = await skopeoConfig(tag);
    assert.equal(cfg.config.User, '1000:1000');
    assert.equal(cfg.config.WorkingDir, '/app');
    assert.deepEqual(cfg.config.Cmd, ['node', 'server.js']);
    assert.ok((cfg.config.Env as string[]).includes('NODE_ENV=production'));
    assert.match(await answer(tag, 18000 + Math.floor(Math.random() * 2000)), /^hello from kiln v1 production /);

    // umoci unpacks what kiln wrote (rootless unpack: owners mapped)
    const layout = join(work, 'oci');
    await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${tag}`, `oci:${layout}:app`]);
    await run('umoci', ['unpack', '--rootless', '--image', `${layout}:app`, join(work, 'bundle')]);
    const expressPkg = JSON.parse(
      await readFile(join(work, 'bundle', 'rootfs', 'app', 'node_modules', 'express', 'package.json'), 'utf8'),
    ) as { version: string };
    assert.equal(expressPkg.version, '4.19.2');

    // an app change: only the app layer (and the config) is uploaded; the install step is not run again
    await writeFile(join(app, 'version.js'), "module.exports = 'v2';\n");
    const before2 = registry.log().length;
    const second = await build(app, `${R()}/hello:2`, rev(2));
    assert.equal(second.code, 0, second.stderr);
    assert.doesNotMatch(second.stderr, /added \d+ packages/, 'npm ci did not run again');
    // the fast path: the engine did not walk the dependency layers (not even as cached steps)
    assert.match(second.stderr, /\[node\] dependencies cached: \d+ layers/);
    assert.doesNotMatch(second.stderr, /COPY --link --chown=0:0 layers\//, 'no engine step for a dependency layer');
    await registry.waitForLog(/PUT \/v2\/hello\/manifests\/2 /);
    const m2 = await skopeoManifest(`${R()}/hello:2`);
    assert.equal(m2.layers.length, m1.layers.length);
    assert.deepEqual(m2.layers.slice(0, -1), m1.layers.slice(0, -1), 'dependency layers kept their digests');
    assert.notEqual(m2.layers.at(-1)?.digest, m1.layers.at(-1)?.digest);
    assert.deepEqual(
      uploads(registry.log().slice(before2), 'hello').sort(),
      [m2.layers.at(-1)?.digest, m2.config.digest].sort(),
      'only the app layer and the config were uploaded',
    );
    // the same source through the engine (fast path off): the very same image, byte for byte
    const engine2 = await build(app, `${R()}/hello:2e`, rev(2), { KILN_NODE_FAST: '0' });
    assert.equal(engine2.code, 0, engine2.stderr);
    assert.match(engine2.stderr, /COPY --link --chown=0:0 layers\//, 'the engine path ran');
    const digestOf = async (ref: string): Promise<string> =>
      JSON.parse((await run('skopeo', ['inspect', '--tls-verify=false', `docker://${ref}`])).stdout).Digest as string;
    assert.equal(await digestOf(`${R()}/hello:2e`), await digestOf(`${R()}/hello:2`), 'fast path = engine path');
    const labels2 = (await skopeoConfig(`${R()}/hello:2`)).config.Labels as Record<string, string>;
    assert.equal(labels2['org.opencontainers.image.revision'], 'r2', 'the new label value');
    // a changed start command is outside the recorded image: the engine builds it (install still cached)
    const pj = JSON.parse(await readFile(join(app, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    pj.scripts.start = 'node ./server.js';
    await writeFile(join(app, 'package.json'), JSON.stringify(pj, null, 2));
    const third = await build(app, `${R()}/hello:3`);
    assert.equal(third.code, 0, third.stderr);
    assert.doesNotMatch(third.stderr, /dependencies cached|added \d+ packages/);
    assert.deepEqual((await skopeoConfig(`${R()}/hello:3`)).config.Cmd, ['node', './server.js']);
    assert.match(await answer(`${R()}/hello:2`, 20000 + Math.floor(Math.random() * 2000)), /^hello from kiln v2 /);

    // another app with express@4.19.2 and one more package, built as an ordinary user (kilntest, subordinate ids)
    // with its own kiln home (no shared cache): the same dependency layer digests
    const rdir = await rootlessTempDir('kiln-node-rootless-');
    try {
      const other = await makeApp(rdir, 'hello', async (dir) => {
        const p = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as {
          name: string;
          dependencies: Record<string, string>;
        };
        p.name = 'other';
        p.dependencies['is-number'] = '7.0.0';
        await writeFile(join(dir, 'package.json'), JSON.stringify(p, null, 2));
        await writeFile(join(dir, 'version.js'), "module.exports = 'other';\n");
      });
      const { uid, gid } = ensureRootlessUser();
      await run('chown', ['-R', `${uid}:${gid}`, rdir]);
      const o = await kilnAs(
        ['build', '--strategy', 'node', '--base', base, '-t', `${R()}/other:1`, '--push'].concat([
          '--insecure-registry',
          R(),
          '--progress',
          'plain',
          other,
        ]),
        { home: join(rdir, 'home'), rootless: true },
      );
      assert.equal(o.code, 0, o.stderr);
      assert.match(o.stderr, /added \d+ packages/, 'npm ci ran in the rootless sandbox');
    } finally {
      await rm(rdir, { recursive: true, force: true });
    }
    const mo = await skopeoManifest(`${R()}/other:1`);
    assert.equal(mo.layers.length, m1.layers.length + 1);
    const shared = m1.layers
      .slice(baseLayers, baseLayers + prod)
      .filter((l) => mo.layers.some((x) => x.digest === l.digest));
    assert.equal(shared.length, prod, 'every dependency layer of the first app is in the second');
  });

  test('bad input: one clear line, nothing pushed', async () => {
    const cases: { name: string; edit: (dir: string) => Promise<void>; re: RegExp; lock?: boolean }[] = [
      {
        name: 'out-of-sync',
        edit: async (dir) => {
          const p = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as {
            dependencies: Record<string, string>;
          };
          p.dependencies['is-number'] = '7.0.0';
          await writeFile(join(dir, 'package.json'), JSON.stringify(p));
        },
        re: /^kiln: package-lock\.json is out of sync with package\.json: dependencies is-number@7\.0\.0 is missing from the lockfile$/m,
      },
      {
        name: 'no-start',
        edit: async (dir) => {
          const p = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as Record<string, unknown>;
          delete p.scripts;
          await writeFile(join(dir, 'package.json'), JSON.stringify(p));
          await rm(join(dir, 'server.js'));
        },
        re: /^kiln: package\.json: no start command/m,
        lock: true,
      },
    ];
    const hello = await makeApp(work, 'hello');
    for (const c of cases) {
      const dir = join(work, 'bad-' + c.name);
      await run('cp', ['-r', hello, dir]);
      await c.edit(dir);
      const before = registry.log().length;
      const r = await build(dir, `${R()}/bad-${c.name}:1`);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, c.re);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      assert.doesNotMatch(registry.log().slice(before), /\/v2\/bad-/, 'the registry was not even asked');
    }
    // a native addon on a base without a C/C++ toolchain: the real npm ci runs node-gyp, which fails
    const native = await makeApp(work, 'native', undefined, true);
    const before = registry.log().length;
    const r = await build(native, `${R()}/bad-native:1`);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /^kiln: a native addon \(node-gyp\) failed to build: base image \S+ has no C\/C\+\+ toolchain \(make, g\+\+, python3\); packages with install scripts: heapdump@0\.3\.15$/m,
    );
    // the push session may have mounted the base's blobs into the repository meanwhile (as for any build): no
    // manifest, no uploaded byte
    assert.doesNotMatch(
      registry.log().slice(before),
      /"(PUT|PATCH) \/v2\/bad-native\/(manifests|blobs\/uploads)/,
      'nothing pushed',
    );
  });
});
