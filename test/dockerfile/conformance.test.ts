/**
 * BuildKit parser conformance: every case of moby/buildkit's frontend/dockerfile/parser testfiles, read from
 * ../shared/conformance/buildkit-parser next to the repository (never copied into it). Positive cases must dump
 * exactly like BuildKit (`result`), negative cases must be rejected with a DockerfileError.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DockerfileError, dumpAst, parseAst, parseDockerfile } from '../../src/dockerfile/index.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const base = resolve(repoRoot, '..', 'shared', 'conformance', 'buildkit-parser');
const present = existsSync(join(base, 'testfiles'));

if (!present) {
  test(
    'BuildKit parser conformance',
    { skip: `conformance data not found at ${base} (not checked out here)` },
    () => {},
  );
} else {
  const positive = readdirSync(join(base, 'testfiles')).filter((c) => existsSync(join(base, 'testfiles', c, 'result')));
  const negative = readdirSync(join(base, 'testfiles-negative'));

  test('conformance data has cases', () => {
    assert.ok(positive.length >= 30, `only ${positive.length} positive cases`);
    assert.ok(negative.length >= 3, `only ${negative.length} negative cases`);
  });

  for (const c of positive.sort()) {
    test(`buildkit-parser/${c}`, () => {
      const text = readFileSync(join(base, 'testfiles', c, 'Dockerfile'), 'utf8');
      const want = readFileSync(join(base, 'testfiles', c, 'result'), 'utf8');
      const got = dumpAst(parseAst(text, { filename: `${c}/Dockerfile` }).ast);
      assert.equal(got, want);
    });
  }

  for (const c of negative.sort()) {
    test(`buildkit-parser negative/${c}`, () => {
      const f = join(base, 'testfiles-negative', c, 'Dockerfile');
      const text = existsSync(f) ? readFileSync(f, 'utf8') : '';
      assert.throws(
        () => parseDockerfile(text, { filename: `${c}/Dockerfile` }),
        (e: unknown) => e instanceof DockerfileError && e.message.startsWith(`${c}/Dockerfile`),
      );
    });
  }
}
