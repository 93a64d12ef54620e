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
import { spawnSync } from 'node:child_process';
import { DockerfileError, dumpAst, parseAst, parseDockerfile } from '../../src/dockerfile/index.js';
import { runDockerfileCli } from './run-cli.js';

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

  test('bin/kiln.js dockerfile dump: exit 0 with the result, non-zero for a negative case', () => {
    const kiln = join(repoRoot, 'bin', 'kiln.js');
    const ok = spawnSync(
      process.execPath,
      [kiln, 'dockerfile', 'dump', join(base, 'testfiles', 'json', 'Dockerfile')],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout, readFileSync(join(base, 'testfiles', 'json', 'result'), 'utf8'));
    const bad = join(base, 'testfiles-negative', 'shykes-nested-json', 'Dockerfile');
    const neg = spawnSync(process.execPath, [kiln, 'dockerfile', 'dump', bad], { encoding: 'utf8' });
    assert.notEqual(neg.status, 0);
    assert.equal(neg.stdout, '');
    assert.match(neg.stderr, /arrays must be comprised of strings only/);
  });

  for (const c of positive.sort()) {
    test(`buildkit-parser/${c}`, async () => {
      const text = readFileSync(join(base, 'testfiles', c, 'Dockerfile'), 'utf8');
      const want = readFileSync(join(base, 'testfiles', c, 'result'), 'utf8');
      const got = dumpAst(parseAst(text, { filename: `${c}/Dockerfile` }).ast);
      assert.equal(got, want);
      // and through `kiln dockerfile dump FILE`
      const cli = await runDockerfileCli('dump', join(base, 'testfiles', c, 'Dockerfile'));
      assert.equal(cli.err, undefined);
      assert.equal(cli.out, want);
    });
  }

  for (const c of negative.sort()) {
    test(`buildkit-parser negative/${c}`, async () => {
      const f = join(base, 'testfiles-negative', c, 'Dockerfile');
      const text = existsSync(f) ? readFileSync(f, 'utf8') : '';
      assert.throws(
        () => parseDockerfile(text, { filename: `${c}/Dockerfile` }),
        (e: unknown) => e instanceof DockerfileError && e.message.startsWith(`${c}/Dockerfile`),
      );
      if (existsSync(f)) {
        const cli = await runDockerfileCli('dump', f);
        assert.equal(cli.out, '');
        assert.ok(cli.err instanceof DockerfileError, `dump of ${c} must fail`);
      }
    });
  }
}
