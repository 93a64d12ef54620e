// BuildKit's own shell-expansion tables (envVarTest, wordsTest), read from ../shared/conformance/buildkit-shell.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { envFromSlice, processWord, processWords } from '../../src/dockerfile/shell.js';
import { isKilnError } from '../../src/errors.js';

// the repository root's sibling: /work/main -> /work/shared
const dir = resolve(import.meta.dirname, '..', '..', '..', 'shared', 'conformance', 'buildkit-shell');
const present = existsSync(join(dir, 'envVarTest')) && existsSync(join(dir, 'wordsTest'));
const skip = present ? false : `conformance data not found at ${dir}`;

test('envVarTest (BuildKit shell conformance)', { skip }, () => {
  const env = envFromSlice(['PWD=/home', 'SHELL=bash', 'KOREAN=한국어', 'NULL=']);
  const lines = readFileSync(join(dir, 'envVarTest'), 'utf8').split('\n');
  let checked = 0;
  const failures: string[] = [];
  lines.forEach((raw, i) => {
    if (raw.startsWith('#')) return;
    const line = raw.trim();
    if (line === '') return;
    const parts = line.split('|');
    assert.equal(parts.length, 3, `bad line ${i + 1}`);
    const [platform, source, expected] = parts.map((p) => p.trim());
    if (platform === 'W') return;
    assert.ok(platform === 'A' || platform === 'U', `bad platform at line ${i + 1}`);
    checked++;
    if (expected === 'error') {
      try {
        const got = processWord(source, env);
        failures.push(`line ${i + 1}: ${JSON.stringify(source)} should fail, got ${JSON.stringify(got)}`);
      } catch (e) {
        if (!isKilnError(e, 'DOCKERFILE_EXPANSION')) throw e;
      }
      return;
    }
    try {
      const got = processWord(source, env);
      if (got !== expected) {
        failures.push(
          `line ${i + 1}: ${JSON.stringify(source)} -> ${JSON.stringify(got)}, want ${JSON.stringify(expected)}`,
        );
      }
    } catch (e) {
      failures.push(`line ${i + 1}: ${JSON.stringify(source)} threw ${String(e)}`);
    }
  });
  assert.deepEqual(failures, []);
  assert.ok(checked > 200, `only ${checked} cases checked`);
});

// BuildKit runs wordsTest a second time (raw quotes, unset variables kept) but with an exhausted file scanner,
// so that pass checks nothing upstream; the normal mode is the specification. Raw mode is covered by shell.test.ts.
test('wordsTest (BuildKit shell conformance)', { skip }, () => {
  const opts = {};
  const envs: string[] = [];
  const lines = readFileSync(join(dir, 'wordsTest'), 'utf8').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  let checked = 0;
  const failures: string[] = [];
  lines.forEach((line, i) => {
    if (line.startsWith('#')) return;
    if (line.startsWith('ENV ')) {
      envs.push(line.slice(3).replace(/^ +/, ''));
      return;
    }
    const parts = line.split('|');
    assert.equal(parts.length, 2, `bad line ${i + 1}`);
    const input = parts[0].trim();
    const expected = parts[1].replace(/^ +/, '').split(',');
    let got: string[];
    try {
      got = processWords(input, envFromSlice(envs), opts);
    } catch (e) {
      if (!isKilnError(e, 'DOCKERFILE_EXPANSION')) throw e;
      got = ['error'];
    }
    checked++;
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      failures.push(
        `line ${i + 1}: ${JSON.stringify(input)} -> ${JSON.stringify(got)}, want ${JSON.stringify(expected)}`,
      );
    }
  });
  assert.deepEqual(failures, []);
  assert.ok(checked > 20, `only ${checked} cases checked`);
});
