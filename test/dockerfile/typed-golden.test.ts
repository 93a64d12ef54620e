/**
 * Golden tests for typed instructions: each test/dockerfile/testdata/typed/<case>/Dockerfile is parsed with
 * parseDockerfile and compared with <case>/expected.json (stages, global ARGs, warnings — not the AST).
 * Regenerate after an intended change with KILN_UPDATE_GOLDEN=1 and review the diff.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDockerfile } from '../../src/dockerfile/index.js';

const dir = join(dirname(fileURLToPath(import.meta.url)), 'testdata', 'typed');

for (const name of readdirSync(dir).sort()) {
  test(`typed instructions: ${name}`, () => {
    const text = readFileSync(join(dir, name, 'Dockerfile'), 'utf8');
    const parsed = parseDockerfile(text, { filename: 'Dockerfile' });
    const got = JSON.stringify(
      {
        directives: parsed.directives,
        globalArgs: parsed.globalArgs,
        stages: parsed.stages,
        warnings: parsed.warnings,
      },
      null,
      2,
    );
    const file = join(dir, name, 'expected.json');
    if (process.env.KILN_UPDATE_GOLDEN === '1') writeFileSync(file, got + '\n');
    assert.equal(got + '\n', readFileSync(file, 'utf8'));
  });
}
