// loadDockerignore / listContextPaths against real directory trees under testdata/dockerignore.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, symlinkSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { listContextPaths, loadDockerignore } from '../../src/dockerfile/dockerignore.js';
import { isKilnError } from '../../src/errors.js';

const data = resolve(import.meta.dirname, 'testdata', 'dockerignore');

test('context walk honours exclusions, exceptions in excluded dirs and ** patterns', () => {
  const dir = join(data, 'walk');
  const m = loadDockerignore(dir, join(dir, 'Dockerfile'));
  assert.equal(m.file, join(dir, '.dockerignore'));
  assert.deepEqual(listContextPaths(dir, m), [
    'build/',
    'build/out/',
    'build/out/bin/',
    'build/out/bin/app',
    'docs/',
    'docs/README.md',
    'keep.out',
    'logs/',
    'logs/a.out',
    'src/',
    'src/lib/',
    'src/lib/util.go',
    'src/main.go',
  ]);
  // Excluded Dockerfile/.dockerignore are not in the context (BuildKit reads the Dockerfile separately).
  assert.equal(m.matches('Dockerfile'), true);
  assert.equal(m.matches('.dockerignore'), true);
  assert.equal(m.mayContainIncluded('vendor'), false);
  assert.equal(m.mayContainIncluded('docs'), true);
});

test('<Dockerfile>.dockerignore next to the Dockerfile takes precedence over the context .dockerignore', () => {
  const dir = join(data, 'override');
  const m1 = loadDockerignore(dir, join(dir, 'Dockerfile'));
  assert.equal(m1.file, join(dir, 'Dockerfile.dockerignore'));
  assert.deepEqual([m1.matches('foo'), m1.matches('bar')], [false, true]);
  const m2 = loadDockerignore(dir, join(dir, 'sub', 'Dockerfile2'));
  assert.equal(m2.file, join(dir, 'sub', 'Dockerfile2.dockerignore'));
  assert.deepEqual([m2.matches('foo'), m2.matches('bar')], [true, false]);
  // A Dockerfile without its own ignore file (or from stdin) uses the context's .dockerignore.
  const m3 = loadDockerignore(dir, join(dir, 'sub', 'Other'));
  assert.equal(m3.file, join(dir, '.dockerignore'));
  assert.deepEqual([m3.matches('foo'), m3.matches('bar')], [true, true]);
  assert.equal(loadDockerignore(dir, '-').file, join(dir, '.dockerignore'));
  assert.equal(loadDockerignore(dir).file, join(dir, '.dockerignore'));
});

test('no ignore file: nothing is excluded', () => {
  const m = loadDockerignore(join(data, 'override', 'sub'), undefined);
  assert.equal(m.file, undefined);
  assert.equal(m.matches('anything/at/all'), false);
  assert.equal(m.mayContainIncluded('x'), true);
});

test('invalid ignore file: one clear error naming the file', () => {
  const dir = join(data, 'invalid');
  assert.throws(
    () => loadDockerignore(dir, join(dir, 'Dockerfile')),
    (e: unknown) =>
      isKilnError(e, 'DOCKERIGNORE_PATTERN') &&
      e.message.includes('.dockerignore') &&
      /illegal exclusion/.test(e.message),
  );
});

test('symlinks are listed, not followed', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-dockerignore-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'real'));
  writeFileSync(join(dir, 'real', 'f'), 'x');
  symlinkSync('real', join(dir, 'link'));
  symlinkSync('/etc', join(dir, 'outside'));
  writeFileSync(join(dir, '.dockerignore'), 'real\n');
  assert.deepEqual(listContextPaths(dir, loadDockerignore(dir)), ['.dockerignore', 'link', 'outside']);
});

test('a symlinked ignore file is resolved inside its root, never outside', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-dockerignore-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const outside = mkdtempSync(join(tmpdir(), 'kiln-dockerignore-outside-'));
  t.after(() => rmSync(outside, { recursive: true, force: true }));
  writeFileSync(join(outside, 'ignore'), 'secret\n');
  mkdirSync(join(dir, 'conf'));
  writeFileSync(join(dir, 'conf', 'ignore'), 'inside\n');

  symlinkSync(join(outside, 'ignore'), join(dir, '.dockerignore')); // absolute: resolved under the root
  assert.equal(loadDockerignore(dir).file, undefined);
  rmSync(join(dir, '.dockerignore'));
  symlinkSync('../'.repeat(12) + outside.slice(1) + '/ignore', join(dir, '.dockerignore')); // .. clamps at the root
  assert.equal(loadDockerignore(dir).file, undefined);
  rmSync(join(dir, '.dockerignore'));
  symlinkSync('conf/ignore', join(dir, '.dockerignore'));
  const m = loadDockerignore(dir);
  assert.deepEqual(m.patterns, ['inside']);
  rmSync(join(dir, '.dockerignore'));
  symlinkSync('/conf/ignore', join(dir, '.dockerignore')); // absolute inside the root
  assert.deepEqual(loadDockerignore(dir).patterns, ['inside']);
  rmSync(join(dir, '.dockerignore'));
  symlinkSync('.dockerignore', join(dir, '.dockerignore')); // loop
  assert.equal(loadDockerignore(dir).file, undefined);
});
