import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isKilnError } from '../../errors.js';
import {
  checkInSync,
  installManifest,
  missingLockfile,
  parseLockfile,
  parsePackageJson,
  planLayers,
  productionPackages,
  startCommand,
  type InstalledPackage,
  type Lockfile,
} from './project.js';
import { layerList, nodeDockerfile } from './frontend.js';

const lock = (packages: Lockfile['packages'], v = 3): Lockfile => ({ lockfileVersion: v, packages });

test('start command: plain node script in exec form, others through sh, then main, then server.js', () => {
  assert.deepEqual(startCommand({ scripts: { start: 'node server.js' } }, false), ['node', 'server.js']);
  assert.deepEqual(startCommand({ scripts: { start: 'node --enable-source-maps dist/main.js' } }, false), [
    'node',
    '--enable-source-maps',
    'dist/main.js',
  ]);
  assert.deepEqual(startCommand({ scripts: { start: 'node a.js && echo done' } }, false), [
    '/bin/sh',
    '-c',
    'node a.js && echo done',
  ]);
  assert.deepEqual(startCommand({ main: 'lib/index.js' }, true), ['node', 'lib/index.js']);
  assert.deepEqual(startCommand({}, true), ['node', 'server.js']);
  assert.throws(
    () => startCommand({ scripts: { test: 'x' } }, false),
    (e) => isKilnError(e, 'NODE_NO_START'),
  );
});

test('lockfile: v1 and garbage refused, other package managers named', () => {
  assert.throws(() => parseLockfile('{"lockfileVersion":1,"dependencies":{}}'), /lockfileVersion 1 is not supported/);
  assert.throws(
    () => parseLockfile('{'),
    (e) => isKilnError(e, 'NODE_LOCKFILE'),
  );
  assert.match(missingLockfile(['package.json', 'yarn.lock']).message, /^yarn\.lock: yarn lockfiles are not supported/);
  assert.match(missingLockfile(['package.json', 'pnpm-lock.yaml']).message, /pnpm lockfiles/);
  assert.match(missingLockfile(['package.json']).message, /package-lock\.json: missing/);
  assert.throws(() => parsePackageJson('{"dependencies": {"a": 1}}'), /"dependencies" must be an object of strings/);
});

test('in sync: added, changed and removed dependencies are each named', () => {
  const l = lock({ '': { dependencies: { a: '^1.0.0' }, devDependencies: { t: '1' } } });
  checkInSync({ dependencies: { a: '^1.0.0' }, devDependencies: { t: '1' } }, l);
  assert.throws(
    () => checkInSync({ dependencies: { a: '^1.0.0', b: '2' }, devDependencies: { t: '1' } }, l),
    /dependencies b@2 is missing from the lockfile/,
  );
  assert.throws(
    () => checkInSync({ dependencies: { a: '^1.1.0' }, devDependencies: { t: '1' } }, l),
    /dependencies a is \^1\.1\.0 in package\.json but \^1\.0\.0 in the lockfile/,
  );
  assert.throws(
    () => checkInSync({ dependencies: { a: '^1.0.0' } }, l),
    /devDependencies t is in the lockfile but not in package\.json/,
  );
});

test('production packages: dev omitted, devOptional kept, links and odd paths refused', () => {
  const pkgs = productionPackages(
    lock({
      '': {},
      'node_modules/a': { version: '1.0.0' },
      'node_modules/@s/b': { version: '2.0.0', hasInstallScript: true },
      'node_modules/a/node_modules/c': { version: '3.0.0' },
      'node_modules/t': { version: '1.0.0', dev: true },
      'node_modules/o': { version: '1.0.0', devOptional: true },
    }),
  );
  assert.deepEqual(
    pkgs.map((p) => `${p.path} ${p.name}@${p.version}${p.hasInstallScript ? ' native?' : ''}`),
    [
      'node_modules/@s/b @s/b@2.0.0 native?',
      'node_modules/a a@1.0.0',
      'node_modules/a/node_modules/c c@3.0.0',
      'node_modules/o o@1.0.0',
    ],
  );
  assert.throws(
    () => productionPackages(lock({ '': {}, 'node_modules/w': { link: true, resolved: 'packages/w' } })),
    /workspaces and file: dependencies are not supported/,
  );
  assert.throws(
    () => productionPackages(lock({ '': {}, 'node_modules/../../etc': { version: '1' } })),
    /is not a node_modules path/,
  );
});

test('layers: one per package while they fit; past the budget, stable name-hash groups', () => {
  const mk = (n: number): InstalledPackage[] =>
    Array.from({ length: n }, (_, i) => ({
      path: `node_modules/p${i}`,
      name: `p${i}`,
      version: '1.0.0',
      hasInstallScript: false,
    }));
  const small = planLayers(mk(5), 10);
  assert.equal(small.length, 5);
  assert.equal(small[0]?.id, 'p-p0@1.0.0');
  const big = planLayers(mk(300), 90);
  assert.ok(big.length <= 90 && big.length > 80, `${big.length} groups`);
  assert.equal(
    big.reduce((a, l) => a + l.packages.length, 0),
    300,
  );
  // a package's group does not depend on the rest of the tree
  const groupOf = (layers: typeof big, name: string): string | undefined =>
    layers.find((l) => l.packages.some((p) => p.name === name))?.id;
  const bigger = planLayers([...mk(300), ...mk(400).slice(300)], 90);
  for (const n of ['p1', 'p77', 'p299']) assert.equal(groupOf(bigger, n), groupOf(big, n));
});

test('layer list puts nested packages before their parents; the image phase has no RUN', () => {
  const layers = planLayers(
    productionPackages(
      lock({
        '': {},
        'node_modules/a': { version: '1.0.0' },
        'node_modules/a/node_modules/c': { version: '3.0.0' },
      }),
    ),
    10,
  );
  assert.equal(layerList(layers), 'p-a+c@3.0.0 node_modules/a/node_modules/c\np-a@1.0.0 node_modules/a\n');
  const o = { base: 'r/node:20', layers, cmd: ['node', 'server.js'], user: '1000:1000', install: true };
  const inst = nodeDockerfile({ ...o, phase: 'install' });
  assert.match(
    inst,
    /^RUN --mount=type=cache,id=kiln-node-npm,target=\/kiln\/npm-cache,uid=1000,gid=1000 \["\/bin\/sh", "\/kiln\/deps\/install\.sh"\]\n$/m,
  );
  assert.match(inst, /^USER 1000:1000$/m, 'npm runs as uid 1000');
  const df = nodeDockerfile({ ...o, phase: 'image' });
  assert.match(
    df,
    /^FROM r\/node:20\nCOPY --link --chown=0:0 layers\/p-a@1\.0\.0\/ \/\nCOPY --link --chown=0:0 layers\/p-a\+c@3\.0\.0\/ \/\n/,
  );
  assert.match(
    df,
    /layers\/bin\/ \/\nWORKDIR \/app\nCOPY --link --chown=0:0 app\/ \/app\/\nENV NODE_ENV=production\nUSER 1000:1000\nCMD \["node","server\.js"\]\n$/,
  );
  assert.doesNotMatch(df, /RUN/, 'no RUN in the image');
  assert.deepEqual(Object.keys(installManifest({ name: 'x', scripts: { start: 'y' }, dependencies: {}, files: [] })), [
    'name',
    'dependencies',
  ]);
});

test('the build service reads images[].node (strategy node) and refuses unknown keys there', async () => {
  const { parseProjectDocument } = await import('../../service/config/parse.js');
  const doc = (node: unknown): unknown => ({
    name: 'shop',
    repository: 'https://h.example/x',
    registry: 'r.io/x',
    images: [{ name: 'web', strategy: 'node', node }],
  });
  const p = parseProjectDocument(doc({ base: 'r.io/node:20' }), 'p');
  assert.equal(p.images[0]?.strategy, 'node');
  assert.deepEqual(p.images[0]?.node, { base: 'r.io/node:20' });
  assert.throws(() => parseProjectDocument(doc({ image: 'x' }), 'p'), /images\[0\]\.node/);
});
