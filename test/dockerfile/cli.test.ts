/**
 * `kiln dockerfile dump|lint|stages`: in-process through register() for most cases, and through the real
 * bin/kiln.js for exit codes and error output.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runDockerfileCli } from './run-cli.js';
import { DockerfileError } from '../../src/dockerfile/index.js';
import { KilnError } from '../../src/errors.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
let dir = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-df-cli-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

const run = runDockerfileCli;

test('dump prints the BuildKit parse tree', async () => {
  const f = write('Dockerfile', 'FROM alpine AS b\nCOPY --from=b ["a", "b"]\nONBUILD RUN echo hi\n');
  const { out, err } = await run('dump', f);
  assert.equal(err, undefined);
  assert.equal(out, '(from "alpine" "AS" "b")\n(copy ["--from=b"] "a" "b")\n(onbuild (run "echo hi"))\n');
});

test('dump --json prints the typed instructions', async () => {
  const f = write('json.Dockerfile', 'ARG V=1\nFROM alpine:$V AS b\nRUN --network=none echo hi\n');
  const { out, err } = await run('dump', '--json', f);
  assert.equal(err, undefined);
  const p = JSON.parse(out) as {
    globalArgs: unknown[];
    stages: { name: string; commands: { kind: string; network: string }[] }[];
  };
  assert.equal(p.globalArgs.length, 1);
  assert.equal(p.stages[0]!.name, 'b');
  assert.deepEqual(
    p.stages[0]!.commands.map((c) => [c.kind, c.network]),
    [['RUN', 'none']],
  );
});

test('dump rejects invalid files with a DockerfileError naming the file and line', async () => {
  const f = write('bad.Dockerfile', 'FROM a\nCMD ["x", 1]\n');
  const { out, err } = await run('dump', f);
  assert.equal(out, '');
  assert.ok(err instanceof DockerfileError);
  assert.equal(err.message, `${f}:2: when using JSON array syntax, arrays must be comprised of strings only`);
});

test('lint prints warnings like docker build --check', async () => {
  const f = write('lint.Dockerfile', 'FROM alpine as build\nMAINTAINER me\nCMD echo hi\n');
  const { out, err } = await run('lint', f);
  assert.equal(err, undefined);
  assert.equal(
    out,
    [
      "WARN: FromAsCasing - 'as' and 'FROM' keywords' casing do not match (line 1)",
      'WARN: MaintainerDeprecated - Maintainer instruction is deprecated in favor of using label (line 2)',
      'WARN: JSONArgsRecommended - JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 3)',
      '',
    ].join('\n'),
  );
  const json = await run('lint', '--format', 'json', f);
  const parsed = JSON.parse(json.out) as { warnings: { rule: string }[]; failed: boolean };
  assert.equal(parsed.failed, false);
  assert.deepEqual(
    parsed.warnings.map((w) => w.rule),
    ['FromAsCasing', 'MaintainerDeprecated', 'JSONArgsRecommended'],
  );
});

test('lint fails with check=error=true, and reads .dockerignore from the context', async () => {
  const ctx = join(dir, 'ctx');
  const f = write('err.Dockerfile', '# check=error=true\nFROM alpine\nCOPY secret.env /\n');
  mkdirSync(ctx, { recursive: true });
  writeFileSync(join(ctx, '.dockerignore'), '*.env\n');
  const { out, err } = await run('lint', '--context', ctx, f);
  assert.match(
    out,
    /WARN: CopyIgnoredFile - Attempting to Copy file "secret.env" that is excluded by .dockerignore \(line 3\)/,
  );
  assert.ok(err instanceof KilnError);
  assert.equal(err.code, 'DOCKERFILE_LINT');
  assert.equal(err.message, 'lint violation found for rules: CopyIgnoredFile');
});

test('stages shows the graph for the target', async () => {
  const f = write(
    'stages.Dockerfile',
    'FROM alpine AS base\nFROM base AS build\nFROM busybox AS other\nFROM scratch\nCOPY --from=build /a /a\n',
  );
  const all = await run('stages', f);
  assert.equal(all.err, undefined);
  const lines = all.out.trim().split('\n');
  assert.equal(lines.length, 5);
  assert.match(lines[3]!, /other .*skipped/);
  assert.match(lines[4]!, /target/);
  const t = await run('stages', '--target', 'other', f);
  assert.match(t.out.trim().split('\n')[3]!, /other .*target/);
  const missing = await run('stages', '--target', 'nope', f);
  assert.ok(missing.err instanceof KilnError);
});

test('bin/kiln.js: exit codes and one-line errors', () => {
  const good = write('good.Dockerfile', 'FROM alpine\nRUN echo hi\n');
  const bad = write('bad2.Dockerfile', 'FROM alpine\nRUNN echo hi\n');
  const kiln = join(repoRoot, 'bin', 'kiln.js');
  const ok = spawnSync(process.execPath, [kiln, 'dockerfile', 'dump', good], { encoding: 'utf8' });
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stdout, '(from "alpine")\n(run "echo hi")\n');
  const lint = spawnSync(process.execPath, [kiln, 'dockerfile', 'lint', bad], { encoding: 'utf8' });
  assert.notEqual(lint.status, 0);
  assert.match(
    lint.stderr,
    new RegExp(
      `kiln: ${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: unknown instruction: RUNN \\(did you mean RUN\\?\\)`,
    ),
  );
  assert.doesNotMatch(lint.stderr, /\n\s+at /, 'no stack trace');
});
