// Differential test: the files kiln's .dockerignore matcher puts in the build context (listContextPaths) must be
// exactly the files the reference BuildKit (Debian's dockerd, DOCKER_BUILDKIT=1) copies with `COPY . /ctx/`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { listContextPaths, loadDockerignore, newMatcher } from '../../src/dockerfile/dockerignore.js';
import { DOCKERD, startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { run } from '../differential/exec.js';

const skip =
  process.getuid?.() !== 0
    ? 'needs root (starts a private dockerd)'
    : !existsSync(DOCKERD)
      ? `${DOCKERD} missing`
      : false;

let dockerd: Dockerd | undefined;
let work = '';
before(async () => {
  if (skip) return;
  work = mkdtempSync(join(tmpdir(), 'kiln-dockerignore-bk-'));
  dockerd = await startDockerd();
});
after(async () => {
  await dockerd?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

let n = 0;
/** Paths BuildKit copies from `ctx` with its Dockerfile `COPY . /ctx/` (relative, dirs with a trailing slash, sorted). */
async function buildkitContext(ctx: string): Promise<string[]> {
  const d = dockerd!;
  const tag = `kiln-dockerignore-bk:${++n}`;
  await d.build({ context: ctx, tag });
  const name = `kiln-dockerignore-bk-${n}`;
  await d.docker(['create', '--name', name, tag, 'none']);
  const tar = join(work, `${name}.tar`);
  await d.docker(['export', name, '-o', tar]);
  await d.docker(['rm', name]);
  const list = (await run('tar', ['-tf', tar])).stdout.split('\n');
  return list
    .filter((p) => p.startsWith('ctx/') && p !== 'ctx/')
    .map((p) => p.slice(4))
    .sort();
}

function ours(ctx: string): string[] {
  return listContextPaths(ctx, loadDockerignore(ctx, join(ctx, 'Dockerfile'))).sort();
}

test(
  'testdata/dockerignore/walk: exceptions inside excluded dirs, root-only globs, ** patterns',
  { skip },
  async () => {
    const ctx = mkdtempSync(join(work, 'walk-'));
    cpSync(resolve(import.meta.dirname, 'testdata', 'dockerignore', 'walk'), ctx, { recursive: true });
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY . /ctx/\n');
    const expected = ours(ctx);
    assert.ok(expected.includes('docs/README.md') && !expected.includes('docs/a.md'));
    assert.deepEqual(await buildkitContext(ctx), expected);
  },
);

/** A synthetic tree exercising many pattern forms; `empty/` is an empty directory. */
function makeTree(ignore: string): string {
  const ctx = mkdtempSync(join(work, 'tree-'));
  const files = [
    'a.md',
    'b.txt',
    'abc',
    'axc',
    'bcd',
    '#hash',
    'dir/a.md',
    'dir/b.txt',
    'dir/keep/k.txt',
    'dir/keep/deep/k2.txt',
    'dir/sub/x.go',
    'src/main.go',
    'src/pkg/util.go',
    'src/pkg/util_test.go',
    'vendor/m/mod.go',
    'vendor/m/README',
    'y/file',
    'x',
  ];
  for (const f of files) {
    mkdirSync(dirname(join(ctx, f)), { recursive: true });
    writeFileSync(join(ctx, f), f);
  }
  mkdirSync(join(ctx, 'empty'));
  writeFileSync(join(ctx, '.dockerignore'), ignore);
  writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY . /ctx/\n');
  return ctx;
}

const cases: [string, string][] = [
  ['root globs with exceptions', '*\n!*.md\n!dir\ndir/*.txt\n'],
  ['directory excluded, deep exception', 'dir\n!dir/keep/deep\n'],
  ['** forms', '**/*.go\n!src/**/*_test.go\n**/README\n'],
  ['prefix ** with exception subtree', 'dir/**\n!dir/keep/**\n'],
  ['?, classes, cleaning, leading slash, comments', 'a?c\n[b-c]*\n/vendor/../y/\n ./x \n# comment\n\\#hash\n'],
  ['exclude all, re-include', '**\n!src\n'],
];

for (const [name, ignore] of cases) {
  test(`pattern set: ${name}`, { skip }, async () => {
    const ctx = makeTree(ignore);
    const expected = ours(ctx);
    // the case must both exclude and include something to be a real check
    const all = listContextPaths(ctx, newMatcher([]));
    assert.ok(expected.length > 0 && expected.length < all.length, `${expected.length} paths: ${expected.join(' ')}`);
    assert.deepEqual(await buildkitContext(ctx), expected);
  });
}
