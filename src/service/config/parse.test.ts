import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../../errors.js';
import type { Project } from '../model.js';
import {
  checkProjectSet,
  ConfigError,
  loadConfigFile,
  parseConfigDocument,
  parseConfigText,
  parseProjectDocument,
  parseProjectsDocument,
  parseProjectsText,
  parseProjectText,
} from './parse.js';
import { DEFAULT_TAG_TEMPLATES } from './schema.js';

const EXAMPLE = `# server config (kiln serve --config FILE)
allowFileRepositories: false
concurrency: 2            # builds at once
timeoutSeconds: 3600
shutdownGraceSeconds: 30
retryInterrupted: true
insecureRegistries: ["127.0.0.1:5000"]
projects:
  - name: shop
    repository: https://git.example.com/acme/shop.git
    gitCredentials: {username: ci, passwordEnv: SHOP_GIT_TOKEN}
    registry: registry.example.com/shop
    registryCredentials: {username: u, passwordEnv: X}
    insecureRegistry: false
    branches: ["main", "release/*"]
    tags: ["v*"]
    defaultBranch: main
    webhooks: {github: {secretEnv: SHOP_HOOK_SECRET}, gitlab: {tokenEnv: SHOP_HOOK_SECRET}}
    submodules: false
    depth: 0
    lfs: false
    runPolicy: SerialLatestOnly      # Serial | SerialLatestOnly | Parallel
    concurrency: 1
    timeoutSeconds: 1800
    retention: {successfulCount: 20, failedCount: 20, maxAgeDays: 30}
    images:
      - name: web
        context: .
        dockerfile: services/web/Dockerfile
        target: prod
        buildArgs: {A: "1"}
        secrets: {npm: {env: NPM_TOKEN}}
        strategy: dockerfile
        backend: kiln
        paths: ["services/web/**", "lib/**"]
        tags: ["{{branch}}", "{{branch}}-{{shortSha}}"]
        timeoutSeconds: 600
`;

const EXAMPLE_PROJECT: Project = {
  name: 'shop',
  repository: 'https://git.example.com/acme/shop.git',
  gitCredentials: { username: 'ci', passwordEnv: 'SHOP_GIT_TOKEN' },
  registry: 'registry.example.com/shop',
  registryCredentials: { username: 'u', passwordEnv: 'X' },
  insecureRegistry: false,
  branches: ['main', 'release/*'],
  tags: ['v*'],
  defaultBranch: 'main',
  webhooks: { github: { secretEnv: 'SHOP_HOOK_SECRET' }, gitlab: { tokenEnv: 'SHOP_HOOK_SECRET' } },
  images: [
    {
      name: 'web',
      context: '.',
      dockerfile: 'services/web/Dockerfile',
      target: 'prod',
      buildArgs: { A: '1' },
      secrets: { npm: { env: 'NPM_TOKEN' } },
      strategy: 'dockerfile',
      backend: 'kiln',
      paths: ['services/web/**', 'lib/**'],
      tags: ['{{branch}}', '{{branch}}-{{shortSha}}'],
      timeoutSeconds: 600,
    },
  ],
  submodules: false,
  depth: 0,
  lfs: false,
  runPolicy: 'SerialLatestOnly',
  concurrency: 1,
  timeoutSeconds: 1800,
  retention: { successfulCount: 20, failedCount: 20, maxAgeDays: 30 },
};

/** The ConfigError `fn` throws. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  assert.fail('expected a ConfigError');
}

/** The error lines (after the summary) of parsing `text` as the server config. */
function errorLines(text: string): string[] {
  const e = configError(() => parseConfigText(text, 'kiln.yaml'));
  assert.equal(e.code, 'CONFIG_INVALID');
  const lines = e.message.split('\n');
  assert.equal(lines[0], `kiln.yaml: ${e.errors.length} configuration error${e.errors.length === 1 ? '' : 's'}`);
  assert.equal(lines.length, e.errors.length + 1);
  return lines.slice(1);
}

/** A config with one project whose project-level YAML lines are `projectLines` (4-space indented). */
function withProject(projectLines: string): string {
  return `projects:\n  - name: shop\n${projectLines
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => `    ${l}`)
    .join('\n')}\n`;
}

const BASE = `repository: https://git.example.com/acme/shop.git
registry: r.example.com/shop
`;

/** A config with one project of one image whose image-level lines are `imageLines`. */
function withImage(imageLines: string, projectExtra = ''): string {
  const image = imageLines
    .split('\n')
    .filter((l) => l !== '')
    .map((l, i) => (i === 0 ? `  - ${l}` : `    ${l}`))
    .join('\n');
  return withProject(`${BASE}${projectExtra}images:\n${image}`);
}

test('the example config parses into the expected ServiceConfig', () => {
  const c = parseConfigText(EXAMPLE, 'kiln.yaml');
  assert.deepEqual(c, {
    allowFileRepositories: false,
    concurrency: 2,
    timeoutSeconds: 3600,
    shutdownGraceSeconds: 30,
    retryInterrupted: true,
    insecureRegistries: ['127.0.0.1:5000'],
    baseWatch: { intervalSeconds: 60, concurrency: 2 },
    projects: [EXAMPLE_PROJECT],
  });
});

test('JSON is accepted too (parsed as YAML, or as a document)', () => {
  const json = JSON.stringify({ projects: [EXAMPLE_PROJECT] });
  assert.deepEqual(parseConfigText(json, 'kiln.json').projects, [EXAMPLE_PROJECT]);
  assert.deepEqual(parseConfigDocument(JSON.parse(json), 'body').projects, [EXAMPLE_PROJECT]);
  // A parsed project is a valid project document again (the API answers can be applied back).
  assert.deepEqual(parseProjectDocument(structuredClone(EXAMPLE_PROJECT), 'body'), EXAMPLE_PROJECT);
});

test('defaults: an empty file is the default service config', () => {
  const want = {
    allowFileRepositories: false,
    concurrency: 2,
    timeoutSeconds: 3600,
    shutdownGraceSeconds: 30,
    retryInterrupted: true,
    insecureRegistries: [],
    baseWatch: { intervalSeconds: 60, concurrency: 2 },
    projects: [],
  };
  assert.deepEqual(parseConfigText('', 'kiln.yaml'), want);
  assert.deepEqual(parseConfigText('# nothing\n', 'kiln.yaml'), want);
  assert.deepEqual(parseConfigDocument({}, 'defaults'), want);
});

test('defaults: a minimal project gets every default', () => {
  const c = parseConfigText(withImage('name: web'), 'kiln.yaml');
  assert.deepEqual(c.projects[0], {
    name: 'shop',
    repository: 'https://git.example.com/acme/shop.git',
    registry: 'r.example.com/shop',
    insecureRegistry: false,
    branches: ['**'],
    tags: ['**'],
    defaultBranch: 'main',
    images: [
      {
        name: 'web',
        context: '.',
        dockerfile: 'Dockerfile',
        buildArgs: {},
        secrets: {},
        strategy: 'dockerfile',
        backend: 'kiln',
        paths: [],
        tags: [...DEFAULT_TAG_TEMPLATES],
      },
    ],
    submodules: false,
    depth: 0,
    lfs: false,
    runPolicy: 'SerialLatestOnly',
    concurrency: 1,
    retention: { successfulCount: 50, failedCount: 50, maxAgeDays: 0 },
  } satisfies Project);
});

test('defaults: dockerfile is <context>/Dockerfile; paths are normalised; partial retention is completed', () => {
  const c = parseConfigText(
    withImage('name: web\ncontext: ./services/web/\n', 'retention: {failedCount: 3}\nbranches: []\n'),
    'kiln.yaml',
  );
  const p = c.projects[0]!;
  assert.equal(p.images[0]!.context, 'services/web');
  assert.equal(p.images[0]!.dockerfile, 'services/web/Dockerfile');
  assert.deepEqual(p.retention, { successfulCount: 50, failedCount: 3, maxAgeDays: 0 });
  assert.deepEqual(p.branches, [], 'an explicit empty list stays empty (no automatic builds)');
  const d = parseConfigText(withImage('name: web\ncontext: a\ndockerfile: b/../docker/Dockerfile.prod'), 'k');
  assert.equal(d.projects[0]!.images[0]!.dockerfile, 'docker/Dockerfile.prod');
});

test('YAML syntax errors are one FILE:LINE:COL line', () => {
  const e = configError(() => parseConfigText('projects:\n  - name: [shop\nx: 1\n', 'kiln.yaml'));
  assert.match(e.message, /^kiln\.yaml:\d+:\d+: \S/);
  assert.ok(!e.message.includes('\n'), e.message);
  assert.equal(e.errors.length, 1);
  assert.equal(typeof e.errors[0]!.line, 'number');
  const tab = configError(() => parseConfigText('projects:\n\t- name: x\n', 'kiln.yaml'));
  assert.equal(tab.message, 'kiln.yaml:2:1: Tabs are not allowed as indentation');
  const dup = configError(() => parseConfigText('concurrency: 1\nconcurrency: 2\n', 'kiln.yaml'));
  assert.match(dup.message, /^kiln\.yaml:2:1: Map keys must be unique/);
  const multi = configError(() => parseConfigText('concurrency: 1\n---\nconcurrency: 2\n', 'kiln.yaml'));
  assert.match(multi.message, /^kiln\.yaml:\d+:\d+: more than one YAML document/);
  assert.ok(isKilnError(multi, 'CONFIG_INVALID'));
  assert.ok(multi.hint !== undefined);
});

test('unresolved aliases and alias bombs are errors, not crashes', () => {
  assert.match(configError(() => parseConfigText('concurrency: *nope\n', 'k.yaml')).message, /^k\.yaml:\d+:\d+: /);
  let bomb = 'a: &a [x, x, x, x, x, x, x, x, x, x]\n';
  for (let i = 0; i < 8; i++) {
    const prev = String.fromCharCode(97 + i);
    const next = String.fromCharCode(98 + i);
    bomb += `${next}: &${next} [*${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}]\n`;
  }
  const e = configError(() => parseConfigText(bomb, 'k.yaml'));
  assert.match(e.message, /^k\.yaml: /);
});

test('unknown keys name the key, suggest the closest one, and give the line', () => {
  const lines = errorLines(withImage('name: web\ndockerfle: Dockerfile'));
  assert.deepEqual(lines, ['projects[0].images[0].dockerfle: unknown key (did you mean "dockerfile"?) (kiln.yaml:7)']);
  assert.deepEqual(errorLines('concurency: 3\n'), [
    'concurency: unknown key (did you mean "concurrency"?) (kiln.yaml:1)',
  ]);
  assert.deepEqual(errorLines('Concurrency: 3\n'), [
    'Concurrency: unknown key (did you mean "concurrency"?) (kiln.yaml:1)',
  ]);
  assert.deepEqual(errorLines('frobnicate: 3\n'), ['frobnicate: unknown key (kiln.yaml:1)']);
});

test('required fields are reported by path', () => {
  const lines = errorLines('projects:\n  - name: shop\n    images:\n      - context: .\n');
  assert.deepEqual(lines, [
    'projects[0].repository: required (kiln.yaml:2)',
    'projects[0].registry: required (kiln.yaml:2)',
    'projects[0].images[0].name: required (kiln.yaml:4)',
  ]);
  assert.deepEqual(errorLines(withProject(BASE)), ['projects[0].images: required (kiln.yaml:2)']);
  assert.deepEqual(errorLines(withProject(`${BASE}images: []`)), [
    'projects[0].images: must list at least 1 entry (kiln.yaml:5)',
  ]);
});

test('enum errors list the allowed values', () => {
  assert.deepEqual(errorLines(withImage('name: web\nstrategy: docker')), [
    'projects[0].images[0].strategy: must be one of dockerfile, s2i, buildpacks, node (kiln.yaml:7)',
  ]);
  assert.deepEqual(errorLines(withImage('name: web', 'runPolicy: serial\n')), [
    'projects[0].runPolicy: must be one of Serial, SerialLatestOnly, Parallel (did you mean "Serial"?) (kiln.yaml:5)',
  ]);
});

test('type errors say what was expected and never echo a string value', () => {
  const lines = errorLines(withImage('name: web', 'gitCredentials: hunter2-secret-token\ndepth: 1.5\nlfs: "yes"\n'));
  assert.deepEqual(lines, [
    'projects[0].gitCredentials: must be a mapping, not a string (kiln.yaml:5)',
    'projects[0].depth: must be a whole number, not 1.5 (kiln.yaml:6)',
    'projects[0].lfs: must be a boolean (true or false), not a string (kiln.yaml:7)',
  ]);
  assert.deepEqual(errorLines('projects: [null]\n'), ['projects[0]: must be a mapping, not empty (kiln.yaml:1)']);
  assert.deepEqual(errorLines('projects:\n'), ['projects: must be a list, not empty (kiln.yaml:1)']);
  assert.deepEqual(errorLines('- a\n'), ['(document): must be a mapping, not a list (kiln.yaml:1)']);
  assert.deepEqual(errorLines(withImage('name: web\nbuildArgs: {V: 1.10}')), [
    'projects[0].images[0].buildArgs.V: must be a string (quote numbers and booleans in YAML: "1.10") (kiln.yaml:7)',
  ]);
});

test('every error is reported: three errors, three lines, in document order', () => {
  const text = withImage('name: web\ndockerfile: ../Dockerfile\ntags: ["{{branh}}"]', 'timeoutSeconds: 0\n');
  const lines = errorLines(text);
  assert.deepEqual(lines, [
    'projects[0].timeoutSeconds: must be at least 1 (kiln.yaml:5)',
    'projects[0].images[0].dockerfile: path leaves the repository (kiln.yaml:8)',
    'projects[0].images[0].tags[0]: unknown placeholder {{branh}} (known: {{branch}}, {{tag}}, {{ref}}, {{sha}}, {{shortSha}}, {{buildNumber}}, {{date}}, {{timestamp}}, {{version}}, {{versionMinor}}, {{versionMajor}}) (kiln.yaml:9)',
  ]);
  const e = configError(() => parseConfigText(text, 'kiln.yaml'));
  assert.deepEqual(
    e.errors.map((i) => [i.path, i.line]),
    [
      ['projects[0].timeoutSeconds', 5],
      ['projects[0].images[0].dockerfile', 8],
      ['projects[0].images[0].tags[0]', 9],
    ],
  );
});

test('schema errors do not hide the semantic errors of the same project', () => {
  const lines = errorLines(
    withImage('name: web\ndockerfle: x\ncontext: /etc', 'lfs: maybe\n').replace(
      'https://git.example.com',
      'https://me:pw@git.example.com',
    ),
  );
  assert.deepEqual(lines, [
    'projects[0].repository: must not contain credentials (kiln.yaml:3)',
    'projects[0].lfs: must be a boolean (true or false), not a string (kiln.yaml:5)',
    'projects[0].images[0].dockerfle: unknown key (did you mean "dockerfile"?) (kiln.yaml:8)',
    'projects[0].images[0].context: path leaves the repository (it must be relative to the repository root) (kiln.yaml:9)',
  ]);
});

test('image names must be one path component', () => {
  for (const name of ['../x', 'a/b', 'UP', 'a..b', '-x', 'x_']) {
    const lines = errorLines(withImage(`name: "${name}"`));
    assert.deepEqual(lines, [
      `projects[0].images[0].name: must be one path component ([a-z0-9] words joined by ".", "_", "__" or "-"): images are pushed as r.example.com/shop/<name> (kiln.yaml:6)`,
    ]);
  }
  for (const name of ['web', 'a.b', 'a__b', 'a---b', 'x1']) {
    assert.equal(parseConfigText(withImage(`name: "${name}"`), 'k').projects[0]!.images[0]!.name, name);
  }
  assert.deepEqual(errorLines(withImage(`name: ${'a'.repeat(240)}`)), [
    `projects[0].images[0].name: r.example.com/shop/${'a'.repeat(240)} is longer than 255 characters (kiln.yaml:6)`,
  ]);
});

test('duplicate image names and duplicate project names', () => {
  const text = `projects:
  - name: shop
    repository: https://h.example/a.git
    registry: r.example.com/a
    images: [{name: web}, {name: api}, {name: web}]
  - name: shop
    repository: https://h.example/b.git
    registry: r.example.com/b
    images: [{name: web}]
`;
  assert.deepEqual(errorLines(text), [
    'projects[0].images[2].name: duplicate image name "web" (also images[0]) (kiln.yaml:5)',
    'projects[1].name: duplicate project name "shop" (also projects[0]) (kiln.yaml:6)',
  ]);
});

function twoProjects(a: string, b: string): string {
  return `projects:
  - {name: one, repository: "https://h.example/a.git", registry: "${a}", images: [{name: web}]}
  - {name: two, repository: "https://h.example/b.git", registry: "${b}", images: [{name: web}]}
`;
}

test('registry prefixes of two projects must neither match nor nest', () => {
  const e = configError(() => parseConfigText(twoProjects('r.io/shop', 'r.io/shop/web'), 'kiln.yaml'));
  assert.equal(e.errors.length, 1);
  assert.equal(
    e.message.split('\n')[1],
    'projects[1].registry: r.io/shop/web nests with the registry r.io/shop of project "one" (kiln.yaml:3)',
  );
  assert.match(e.hint ?? '', /prefix of its own/);
  assert.deepEqual(errorLines(twoProjects('r.io/shop/web', 'r.io/shop')), [
    'projects[1].registry: r.io/shop nests with the registry r.io/shop/web of project "one" (kiln.yaml:3)',
  ]);
  assert.deepEqual(errorLines(twoProjects('r.io/shop', 'R.IO/shop')), [
    'projects[1].registry: R.IO/shop is also the registry of project "one" (kiln.yaml:3)',
  ]);
  assert.deepEqual(errorLines(twoProjects('docker.io/acme/x', 'index.docker.io/acme')), [
    'projects[1].registry: index.docker.io/acme nests with the registry docker.io/acme/x of project "one" (kiln.yaml:3)',
  ]);
  // Siblings and other hosts are fine.
  assert.equal(parseConfigText(twoProjects('r.io/shop', 'r.io/shopx'), 'k').projects.length, 2);
  assert.equal(parseConfigText(twoProjects('r.io/shop', 'r.io:5000/shop'), 'k').projects.length, 2);
});

test('the registry must be a host[:port]/path prefix with lowercase path components', () => {
  const cases: [string, RegExp][] = [
    ['r.example.com', /must be host\[:port\]\/path/],
    ['shop/web', /must start with a registry host/],
    ['r.example.com/Shop', /repository path must be lowercase/],
    ['r.example.com/shop/', /repository path must be components/],
    ['https://r.example.com/shop', /must not have a scheme/],
    ['r.example.com/a//b', /repository path must be components/],
  ];
  for (const [registry, want] of cases) {
    const text = withProject(`repository: https://h.example/a.git\nregistry: "${registry}"\nimages: [{name: web}]`);
    const lines = errorLines(text);
    assert.equal(lines.length, 1, registry);
    assert.match(lines[0]!, want, registry);
    assert.ok(lines[0]!.startsWith('projects[0].registry: '), lines[0]);
  }
  for (const ok of ['localhost/x', '127.0.0.1:5000/a/b', 'r.example.com/a.b/c__d']) {
    const text = withProject(`repository: https://h.example/a.git\nregistry: "${ok}"\nimages: [{name: web}]`);
    assert.equal(parseConfigText(text, 'k').projects[0]!.registry, ok);
  }
});

test('dockerfile and context must stay inside the repository', () => {
  assert.deepEqual(errorLines(withImage('name: web\ndockerfile: ../x')), [
    'projects[0].images[0].dockerfile: path leaves the repository (kiln.yaml:7)',
  ]);
  assert.deepEqual(errorLines(withImage('name: web\ndockerfile: /etc/passwd')), [
    'projects[0].images[0].dockerfile: path leaves the repository (it must be relative to the repository root) (kiln.yaml:7)',
  ]);
  assert.deepEqual(errorLines(withImage('name: web\ncontext: a/../../x')), [
    'projects[0].images[0].context: path leaves the repository (kiln.yaml:7)',
  ]);
  assert.deepEqual(errorLines(withImage('name: web\ndockerfile: "a\\0b"')), [
    'projects[0].images[0].dockerfile: must not contain NUL (kiln.yaml:7)',
  ]);
  assert.deepEqual(errorLines(withImage('name: web\ndockerfile: a/..')), [
    'projects[0].images[0].dockerfile: must name a file in the repository (kiln.yaml:7)',
  ]);
  assert.deepEqual(errorLines(withImage('name: web\ncontext: ""')), [
    'projects[0].images[0].context: must not be empty (kiln.yaml:7)',
  ]);
});

function repoLines(url: string, extra = '', head = ''): string[] {
  return errorLines(
    `${head}${withProject(`repository: "${url}"\nregistry: r.example.com/x\n${extra}images: [{name: web}]`)}`,
  );
}

test('repository URLs: schemes, embedded credentials, remote helpers, local paths', () => {
  const e = configError(() =>
    parseConfigText(
      withProject(
        'repository: https://bob:hunter2@git.example.com/x.git\nregistry: r.example.com/x\nimages: [{name: a}]',
      ),
      'kiln.yaml',
    ),
  );
  assert.equal(e.message.split('\n')[1], 'projects[0].repository: must not contain credentials (kiln.yaml:3)');
  assert.ok(!e.message.includes('hunter2') && !(e.hint ?? '').includes('hunter2'));
  assert.match(e.hint ?? '', /gitCredentials/);
  assert.match(repoLines('https://ghp_token@github.com/a/b.git')[0]!, /must not contain credentials/);
  assert.match(repoLines('ssh://git:pw@host/x.git')[0]!, /must not contain credentials/);
  assert.match(repoLines('git:pw@host:x.git')[0]!, /must not contain credentials/);
  assert.match(repoLines('git://host/x.git')[0]!, /scheme git:\/\/ is not allowed/);
  assert.match(repoLines('ext::sh -c touch% /tmp/pwned')[0]!, /spaces/);
  assert.match(repoLines('ext::ssh')[0]!, /remote-helper/);
  assert.match(repoLines('--upload-pack=touch')[0]!, /must not start with "-"/);
  assert.match(repoLines('h.example:--upload-pack=x')[0]!, /no valid repository path/);
  assert.match(repoLines('/srv/git/x.git')[0]!, /local repositories are not allowed/);
  assert.match(repoLines('nonsense')[0]!, /is not a repository URL/);
  assert.match(repoLines('./x')[0]!, /is not a repository URL/);
  assert.match(repoLines('https://h.example/x?a=1')[0]!, /query or a fragment/);
  assert.match(repoLines('https://h_x/x')[0]!, /no valid host name/);
  assert.match(repoLines('https://')[0]!, /is not a valid URL|no valid host/);
  for (const ok of [
    'https://h.example/x.git',
    'http://h.example:8080/x',
    'ssh://git@h.example:2222/x.git',
    'git@h.example:acme/x.git',
    'h.example:x.git',
  ]) {
    const text = withProject(`repository: "${ok}"\nregistry: r.example.com/x\nimages: [{name: web}]`);
    assert.equal(parseConfigText(text, 'k').projects[0]!.repository, ok);
  }
});

test('file:// repositories only with allowFileRepositories (or allowFile)', () => {
  const e = configError(() =>
    parseConfigText(
      withProject('repository: file:///srv/x.git\nregistry: r.example.com/x\nimages: [{name: a}]'),
      'k.yaml',
    ),
  );
  assert.equal(e.errors[0]!.message, 'file:// repositories are not allowed on this service');
  assert.match(e.hint ?? '', /allowFileRepositories: true/);
  const allowed = `allowFileRepositories: true\n${withProject('repository: file:///srv/x.git\nregistry: r.example.com/x\nimages: [{name: a}]')}`;
  assert.equal(parseConfigText(allowed, 'k').projects[0]!.repository, 'file:///srv/x.git');
  assert.equal(parseConfigText(allowed.replace('file://', ''), 'k').projects[0]!.repository, '/srv/x.git');
  assert.match(
    repoLines('file://host/srv/x.git', '', 'allowFileRepositories: true\n')[0]!,
    /file:\/\/\/absolute\/path/,
  );
  const doc = { projects: [{ name: 'a', repository: 'file:///srv/a', registry: 'r.io/a', images: [{ name: 'x' }] }] };
  assert.throws(() => parseProjectsDocument(structuredClone(doc), 'body'), /file:\/\/ repositories are not allowed/);
  assert.equal(
    parseProjectsDocument(structuredClone(doc), 'body', { allowFile: true })[0]!.repository,
    'file:///srv/a',
  );
  assert.match(
    repoLines('file:///srv/x', 'gitCredentials: {username: u, passwordEnv: P}\n', 'allowFileRepositories: true\n')[0]!,
    /take no credentials/,
  );
});

test('git credentials: combinations, env names, absolute files', () => {
  assert.deepEqual(repoLines('https://h.example/x', 'gitCredentials: {passwordEnv: TOKEN}\n'), [
    'projects[0].gitCredentials.username: required with a password (kiln.yaml:5)',
  ]);
  const ssh = configError(() =>
    parseConfigText(
      withProject(
        'repository: git@h.example:x\nregistry: r.example.com/x\ngitCredentials: {sshKeyFile: /k}\nimages: [{name: a}]',
      ),
      'kiln.yaml',
    ),
  );
  assert.deepEqual(ssh.message.split('\n').slice(1), [
    'projects[0].gitCredentials.knownHostsFile: required with sshKeyFile (kiln.yaml:5)',
  ]);
  assert.match(ssh.hint ?? '', /StrictHostKeyChecking/);
  assert.deepEqual(
    repoLines(
      'git@h.example:x',
      'gitCredentials: {username: u, passwordEnv: P, sshKeyFile: /k, knownHostsFile: /kh}\n',
    ),
    ['projects[0].gitCredentials: a password and an ssh key are exclusive: give one (kiln.yaml:5)'],
  );
  assert.deepEqual(
    repoLines('https://h.example/x', 'gitCredentials: {username: u, passwordEnv: P, passwordFile: /p}\n'),
    ['projects[0].gitCredentials.passwordFile: passwordEnv and passwordFile are exclusive: give one (kiln.yaml:5)'],
  );
  assert.deepEqual(repoLines('https://h.example/x', 'gitCredentials: {sshKeyFile: /k, knownHostsFile: /kh}\n'), [
    'projects[0].gitCredentials.sshKeyFile: an ssh key needs an ssh repository URL (ssh://host/path or user@host:path) (kiln.yaml:5)',
  ]);
  assert.match(
    repoLines('ssh://h.example/x', 'gitCredentials: {username: u, passwordEnv: P}\n')[0]!,
    /a password needs an https:\/\/ repository URL/,
  );
  assert.deepEqual(repoLines('https://h.example/x', 'gitCredentials: {username: u, passwordEnv: 1TOKEN}\n'), [
    'projects[0].gitCredentials.passwordEnv: must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*) (kiln.yaml:5)',
  ]);
  assert.deepEqual(repoLines('https://h.example/x', 'gitCredentials: {username: u, passwordFile: token.txt}\n'), [
    'projects[0].gitCredentials.passwordFile: must be an absolute file path (kiln.yaml:5)',
  ]);
  assert.deepEqual(repoLines('https://h.example/x', 'gitCredentials: {}\n'), [
    'projects[0].gitCredentials: must not be empty (leave it out for a public repository) (kiln.yaml:5)',
  ]);
  assert.deepEqual(repoLines('https://h.example/x', 'registryCredentials: {username: u}\n'), [
    'projects[0].registryCredentials.passwordEnv: required (or passwordFile) (kiln.yaml:5)',
  ]);
});

test('secrets and webhook secrets: exactly one reference each', () => {
  assert.deepEqual(
    errorLines(withImage('name: web\nsecrets: {npm: {env: NPM, file: /npm}, "bad id": {env: X}, x: {}}')),
    [
      'projects[0].images[0].secrets.npm: needs env or file, not both (kiln.yaml:7)',
      'projects[0].images[0].secrets["bad id"]: invalid key: a secret id must be [A-Za-z0-9_.-]+ (kiln.yaml:7)',
      'projects[0].images[0].secrets.x: needs env or file (kiln.yaml:7)',
    ],
  );
  const hooks =
    'webhooks: {github: {secretEnv: X, secretFile: /x}, gitlab: {}, gitea: {tokenEnv: X}, forgejo: {secretEnv: Y}}';
  assert.deepEqual(errorLines(withImage('name: web', `${hooks}\n`)), [
    'projects[0].webhooks.github: needs secretEnv or secretFile, not both (kiln.yaml:5)',
    'projects[0].webhooks.gitlab: needs tokenEnv or tokenFile (kiln.yaml:5)',
    'projects[0].webhooks.gitea.tokenEnv: unknown key (kiln.yaml:5)',
  ]);
});

test('filter patterns: a /regex/ must compile, globs must be well-formed', () => {
  assert.deepEqual(errorLines(withImage('name: web\npaths: ["src/[a"]', 'branches: [main, "/(/"]\ntags: [""]\n')), [
    'projects[0].branches[1]: invalid filter pattern "/(/": not a valid regular expression: Unterminated group (kiln.yaml:5)',
    'projects[0].tags[0]: must not be empty (kiln.yaml:6)',
    'projects[0].images[0].paths[0]: invalid filter pattern "src/[a": unclosed [ (kiln.yaml:9)',
  ]);
});

test('tag templates: unknown placeholders and impossible tags', () => {
  assert.deepEqual(errorLines(withImage('name: web\ntags: ["{{branch}}", "{{commit}}", "v:{{tag}}"]')), [
    'projects[0].images[0].tags[1]: unknown placeholder {{commit}} (known: {{branch}}, {{tag}}, {{ref}}, {{sha}}, {{shortSha}}, {{buildNumber}}, {{date}}, {{timestamp}}, {{version}}, {{versionMinor}}, {{versionMajor}}) (kiln.yaml:7)',
    'projects[0].images[0].tags[2]: cannot render a valid tag: tags are [A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters (kiln.yaml:7)',
  ]);
});

test('service settings: insecure registries, bounds, default branch names', () => {
  assert.deepEqual(
    errorLines('insecureRegistries: ["127.0.0.1:5000", "http://x/"]\nconcurrency: 0\nshutdownGraceSeconds: -1\n'),
    [
      'insecureRegistries[1]: must be a registry host[:port] (kiln.yaml:1)',
      'concurrency: must be at least 1 (kiln.yaml:2)',
      'shutdownGraceSeconds: must be at least 0 (kiln.yaml:3)',
    ],
  );
  for (const bad of ['a..b', 'refs/heads/', '-x', 'a b', 'x.lock', 'a/.b']) {
    assert.match(
      errorLines(withImage('name: web', `defaultBranch: "${bad}"\n`))[0]!,
      /defaultBranch: must be a branch name/,
      bad,
    );
  }
  assert.equal(
    parseConfigText(withImage('name: web', 'defaultBranch: release/v1.x\n'), 'k').projects[0]!.defaultBranch,
    'release/v1.x',
  );
});

test('a JSON document gets the same errors without positions', () => {
  const e = configError(() =>
    parseConfigDocument(
      {
        projects: [
          { name: 'shop', repository: 'https://h.example/x', registry: 'r.io/x', images: [{ name: 'a/b' }], extra: 1 },
        ],
      },
      'request body',
    ),
  );
  assert.deepEqual(e.message.split('\n'), [
    'request body: 2 configuration errors',
    'projects[0].extra: unknown key',
    'projects[0].images[0].name: must be one path component ([a-z0-9] words joined by ".", "_", "__" or "-"): images are pushed as r.io/x/<name>',
  ]);
  assert.equal(e.errors[0]!.line, undefined);
});

test('__proto__ keys stay keys and pollute nothing', () => {
  const c = parseConfigText(withImage('name: web\nbuildArgs: {__proto__: "x", A: "1"}'), 'k');
  const args = c.projects[0]!.images[0]!.buildArgs;
  assert.deepEqual(Object.keys(args), ['__proto__', 'A']);
  assert.equal(Object.getPrototypeOf(args), Object.prototype);
  assert.equal(({} as Record<string, unknown>)['x'], undefined);
});

test('projects documents: a projects list only; service settings belong in the server config', () => {
  const text = `concurrency: 3\nprojects:\n${withImage('name: web').split('\n').slice(1).join('\n')}`;
  const e = configError(() => parseProjectsText(text, 'shop.yaml'));
  assert.deepEqual(e.message.split('\n').slice(1), [
    'concurrency: a service setting: it belongs in the server config file (kiln serve --config), not in a projects document (shop.yaml:1)',
  ]);
  assert.deepEqual(configError(() => parseProjectsDocument({}, 'body')).message.split('\n'), [
    'body: 1 configuration error',
    'projects: required',
  ]);
  const projects = parseProjectsText(withImage('name: web'), 'shop.yaml');
  assert.deepEqual(
    projects.map((p) => p.name),
    ['shop'],
  );
  assert.deepEqual(parseProjectsDocument({ projects: [] }, 'body'), []);
});

test('one project document: paths relative to the project', () => {
  const e = configError(() =>
    parseProjectDocument(
      { name: 'shop', repository: 'https://h.example/x', registry: 'r.io/x', images: [{}] },
      'PUT /projects/shop',
    ),
  );
  assert.deepEqual(e.message.split('\n'), ['PUT /projects/shop: 1 configuration error', 'images[0].name: required']);
  const t = configError(() =>
    parseProjectText(
      'name: shop\nrepository: https://h.example/x\nregistry: r.io/x\nimages: [{name: web, context: ../..}]\n',
      'p.yaml',
    ),
  );
  assert.deepEqual(t.message.split('\n').slice(1), ['images[0].context: path leaves the repository (p.yaml:4)']);
  assert.deepEqual(
    configError(() => parseProjectDocument('shop', 'body'))
      .message.split('\n')
      .slice(1),
    ['(document): must be a mapping, not a string'],
  );
});

test('checkProjectSet: projects parsed apart are checked together', () => {
  const a = parseProjectDocument(
    { name: 'a', repository: 'https://h.example/a', registry: 'r.io/team', images: [{ name: 'x' }] },
    'a',
  );
  const b = parseProjectDocument(
    { name: 'b', repository: 'https://h.example/b', registry: 'r.io/team/b', images: [{ name: 'x' }] },
    'b',
  );
  const c = parseProjectDocument(
    { name: 'c', repository: 'https://h.example/c', registry: 'r.io/other', images: [{ name: 'x' }] },
    'c',
  );
  checkProjectSet([a, c], 'projects');
  const e = configError(() => checkProjectSet([a, c, b, { ...c }], 'projects'));
  assert.deepEqual(e.message.split('\n').slice(1), [
    'projects[2].registry: r.io/team/b nests with the registry r.io/team of project "a"',
    'projects[3].name: duplicate project name "c" (also projects[1])',
    'projects[3].registry: r.io/other is also the registry of project "c"',
  ]);
});

test('loadConfigFile reads the file and names it in errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-config-'));
  try {
    const file = join(dir, 'kiln.yaml');
    writeFileSync(file, EXAMPLE);
    assert.deepEqual(loadConfigFile(file).projects, [EXAMPLE_PROJECT]);
    writeFileSync(file, 'concurrency: many\n');
    assert.equal(
      configError(() => loadConfigFile(file)).message.split('\n')[1],
      `concurrency: must be a whole number, not a string (${file}:1)`,
    );
    assert.throws(
      () => loadConfigFile(join(dir, 'missing.yaml')),
      (e: unknown) => isKilnError(e, 'CONFIG_UNREADABLE') && e.message.includes('missing.yaml'),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
