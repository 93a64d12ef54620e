import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { isKilnError } from '../../errors.js';
import { launcherScript, resolvedEnv, type LaunchLayerEnv } from './launcher.js';
import {
  applyEnv,
  envOps,
  escapeId,
  parseBuildpackToml,
  parseDetectPlan,
  parseLaunchToml,
  parseLayerToml,
  parseOrder,
  parseRunToml,
  resolveGroup,
  type DetectResult,
} from './spec.js';

const throwsLine = (fn: () => unknown, re: RegExp): void =>
  assert.throws(fn, (e: unknown) => isKilnError(e) && re.test(e.message) && !e.message.includes('\n'));

test('ids are escaped as the lifecycle does', () => {
  assert.equal(escapeId('acme/static'), 'acme_static');
  assert.equal(escapeId('paketo-buildpacks/node-engine'), 'paketo-buildpacks_node-engine');
});

test('order.toml, run.toml and buildpack.toml', () => {
  const o = parseOrder(
    '[[order]]\n[[order.group]]\nid = "a"\nversion = "1"\n[[order.group]]\nid = "b"\noptional = true\n',
    'o',
  );
  assert.deepEqual(o, [
    [
      { id: 'a', version: '1', optional: false },
      { id: 'b', optional: true },
    ],
  ]);
  assert.deepEqual(parseRunToml('[[images]]\nimage = "r/run:1"\nmirrors = ["m/run:1"]\n', 'r'), [
    { image: 'r/run:1', mirrors: ['m/run:1'] },
  ]);
  assert.deepEqual(parseRunToml('[run-image]\nimage = "old/run"\n', 's'), [{ image: 'old/run', mirrors: [] }]);
  const d = parseBuildpackToml('api = "0.10"\n[buildpack]\nid = "x/y"\nversion = "2.0"\nclear-env = true\n', 'f');
  assert.equal(d.id, 'x/y');
  assert.equal(d.clearEnv, true);
  throwsLine(
    () => parseBuildpackToml('api = "0.2"\n[buildpack]\nid = "x"\nversion = "1"\n', 'bp.toml'),
    /bp\.toml: buildpack API 0\.2/,
  );
  throwsLine(
    () => parseOrder('[[order]]\n[[order.group]]\nversion = "1"\n', '/cnb/order.toml'),
    /order\[0\]\.group\[0\]\.id/,
  );
  throwsLine(() => parseOrder('[[order]\n', '/cnb/order.toml'), /^\/cnb\/order\.toml: /);
});

test('layer.toml and launch.toml: types, metadata, processes; malformed keys named', () => {
  assert.deepEqual(parseLayerToml('[types]\nlaunch = true\ncache = true\n[metadata]\nv = "1"\n', 'l'), {
    launch: true,
    build: false,
    cache: true,
    metadata: { v: '1' },
  });
  throwsLine(
    () => parseLayerToml('[types]\nlaunch = "yes"\n', '/layers/a/x.toml'),
    /\/layers\/a\/x\.toml: key types\.launch must be a boolean/,
  );
  throwsLine(() => parseLayerToml('launch = true\n', 'x.toml'), /x\.toml: key launch must be under \[types\]/);
  const l = parseLaunchToml(
    '[[processes]]\ntype = "web"\ncommand = ["node", "server.js"]\nargs = ["--port", "8080"]\ndefault = true\nworking-dir = "/workspace/app"\n[[labels]]\nkey = "k"\nvalue = "v"\n',
    'launch.toml',
    'acme/node',
  );
  assert.deepEqual(l.processes[0], {
    type: 'web',
    command: ['node', 'server.js'],
    args: ['--port', '8080'],
    default: true,
    workingDir: '/workspace/app',
    buildpackID: 'acme/node',
  });
  assert.deepEqual(l.labels, [{ key: 'k', value: 'v' }]);
  throwsLine(
    () => parseLaunchToml('[[processes]]\ntype = "web"\ncommand = 3\n', '/layers/a/launch.toml', 'a'),
    /launch\.toml: key processes\[0\]\.command must be an array of strings/,
  );
  throwsLine(
    () => parseLaunchToml('[[processes]]\ntype = "a b"\ncommand = ["x"]\n', 'launch.toml', 'a'),
    /processes\[0\]\.type/,
  );
});

test('build plan: requires met by an earlier provider, provides required later, alternatives, optional dropped', () => {
  const r = (id: string, plan: string, optional = false, passed = true): DetectResult => ({
    id,
    version: '1',
    optional,
    passed,
    plan: passed ? parseDetectPlan(plan, id) : [],
  });
  const node = r(
    'node',
    '[[provides]]\nname = "node"\n[[requires]]\nname = "node"\n[requires.metadata]\nversion = "20"\n',
  );
  const npm = r('npm', '[[requires]]\nname = "node"\n[requires.metadata]\nbuild = true\n');
  const g = resolveGroup([node, npm]);
  assert.ok(g);
  assert.deepEqual(
    g.group[0]?.entries.map((e) => e.metadata),
    [{ version: '20' }, { build: true }],
  );
  assert.deepEqual(g.group[1]?.entries, []);
  // a requirement nobody provides fails, unless an alternative works
  assert.equal(resolveGroup([r('npm', '[[requires]]\nname = "node"\n')]), undefined);
  const alt = r('x', '[[requires]]\nname = "jdk"\n[[or]]\n[[or.provides]]\nname = "x"\n[[or.requires]]\nname = "x"\n');
  assert.ok(resolveGroup([alt]));
  // a provide nobody requires: an optional buildpack is left out, a required one fails the group
  const lonely = r('lonely', '[[provides]]\nname = "nothing"\n', true);
  assert.deepEqual(
    resolveGroup([node, lonely])?.group.map((b) => b.id),
    ['node'],
  );
  assert.equal(resolveGroup([node, { ...lonely, optional: false }]), undefined);
  // a failed required buildpack fails the group; a failed optional one is skipped
  assert.equal(resolveGroup([node, r('y', '', false, false)]), undefined);
  assert.deepEqual(
    resolveGroup([node, r('y', '', true, false)])?.group.map((b) => b.id),
    ['node'],
  );
});

test('env rules: override (also without suffix), default, append/prepend with and without delim', () => {
  const ops = envOps(
    [
      { name: 'A', content: 'a' },
      { name: 'B.default', content: 'b' },
      { name: 'C.default', content: 'c' },
      { name: 'PATH.prepend', content: '/x/bin' },
      { name: 'PATH.delim', content: ':' },
      { name: 'OPTS.append', content: '-v' },
    ],
    'env',
  );
  const env = new Map([
    ['A', 'old'],
    ['C', 'kept'],
    ['PATH', '/bin'],
    ['OPTS', '-q'],
  ]);
  applyEnv(env, ops);
  assert.deepEqual(Object.fromEntries(env), { A: 'a', B: 'b', C: 'kept', PATH: '/x/bin:/bin', OPTS: '-q-v' });
  throwsLine(() => envOps([{ name: 'BAD-NAME', content: '' }], '/layers/a/l/env'), /\/layers\/a\/l\/env\/BAD-NAME/);
});

test('the sh launcher applies the same rules at start as resolvedEnv does at export, and picks the process', () => {
  const layer: LaunchLayerEnv = {
    path: '/layers/a/l',
    hasBin: true,
    hasLib: false,
    ops: envOps(
      [
        { name: 'GREETING.default', content: "it's" },
        { name: 'OPTS.append', content: 'b' },
        { name: 'OPTS.delim', content: ' ' },
      ],
      'env',
    ),
    processOps: new Map([['worker', envOps([{ name: 'ROLE', content: 'w' }], 'env')]]),
    profile: [],
    processProfile: new Map(),
  };
  const li = {
    layers: [layer],
    processes: [
      {
        type: 'web',
        command: ['sh', '-c', 'echo "web $GREETING|$OPTS|$ROLE|${PATH%%:*}|$*"', 'x'],
        args: ['d'],
        default: true,
        buildpackID: 'a',
      },
      {
        type: 'worker',
        command: ['sh', '-c', 'echo "worker $ROLE $PWD"'],
        args: [],
        default: false,
        buildpackID: 'a',
        workingDir: '/',
      },
    ],
    defaultProcess: 'web',
    appDir: '/tmp',
    appProfile: false,
  };
  const script = launcherScript(li);
  const sh = (args: string[], env: NodeJS.ProcessEnv = {}): string =>
    spawnSync('/bin/sh', ['-c', script, ...args], {
      env: { PATH: '/usr/bin:/bin', OPTS: 'a', ...env },
      encoding: 'utf8',
    }).stdout.trim();
  // $0 of `sh -c SCRIPT NAME ARGS` is NAME: /cnb/process/<type> selects the type
  assert.equal(sh(['/cnb/process/web']), "web it's|a b||/layers/a/l/bin|d");
  assert.equal(sh(['/cnb/process/web', 'u1', 'u2']), "web it's|a b||/layers/a/l/bin|u1 u2", 'user args replace args');
  assert.equal(sh(['/cnb/process/worker']), 'worker w /');
  assert.equal(sh(['/cnb/lifecycle/launcher', 'worker']), 'worker w /', 'a process type as the first argument');
  assert.equal(
    sh(['/cnb/lifecycle/launcher', 'sh', '-c', 'echo "$GREETING"'], { GREETING: 'mine' }),
    'mine',
    'a default does not override',
  );
  const env = resolvedEnv(
    new Map([
      ['PATH', '/bin'],
      ['OPTS', 'a'],
    ]),
    li,
  );
  assert.equal(env.get('PATH'), '/layers/a/l/bin:/bin');
  assert.equal(env.get('OPTS'), 'a b');
  assert.equal(env.get('GREETING'), "it's");
  throwsLine(
    () => resolvedEnv(new Map(), { ...li, layers: [{ ...layer, profile: ['/layers/a/l/profile.d/x.sh'] }] }),
    /profile\.d scripts need a shell/,
  );
});
