/**
 * scripts/go-tools.sh, the once-per-machine builder of the Go peers (current BuildKit, crane, kaniko): its failures
 * say what to install, it never builds what is already cached, and it refuses unknown tools. (The builds themselves
 * run in scripts/setup.sh and at the first use by the differential suite and the benchmarks.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './runner.js';

const SCRIPT = join(REPO_ROOT, 'scripts', 'go-tools.sh');

function goTools(args: string[], env: NodeJS.ProcessEnv): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync('bash', [SCRIPT, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('without a usable Go it fails with one line naming what to install', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-go-tools-'));
  try {
    const r = goTools(['crane'], { KILN_TOOLS_DIR: dir, KILN_GO: join(dir, 'no-such-go') });
    assert.notEqual(r.code, 0);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^go-tools: .*install Go >= \d+\.\d+ \(https:\/\/go\.dev\/dl\)/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a cached pin is reported without Go and without building; unknown tools are refused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-go-tools-'));
  try {
    const version = /^CRANE_VERSION=(\S+)$/m.exec(readFileSync(SCRIPT, 'utf8'))?.[1] as string;
    const tool = join(dir, `crane-${version}`);
    await mkdir(join(tool, 'bin'), { recursive: true });
    await writeFile(join(tool, '.complete'), 'test\n');
    const r = goTools(['crane'], { KILN_TOOLS_DIR: dir, KILN_GO: join(dir, 'no-such-go') });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `crane=${join(tool, 'bin', 'crane')}\ncrane-version=${version}\n`);
    const bad = goTools(['podman'], { KILN_TOOLS_DIR: dir });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /unknown tool 'podman'/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
