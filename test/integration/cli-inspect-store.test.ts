/**
 * `kiln inspect NAME` prefers the local store for bare names, including `name:tag` forms that look like a
 * `scheme:` prefix (regression: `hello:latest` was sent to Docker Hub).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const KILN = join(import.meta.dirname, '..', '..', 'bin', 'kiln.js');

test('inspect NAME:TAG of a local store image reads the store, not a registry', async () => {
  const home = await mkdtemp(join(tmpdir(), 'kiln-inspect-'));
  try {
    const env = { ...process.env, KILN_HOME: home };
    await run(process.execPath, [KILN, 'bootstrap', 'busybox', '--name', 'hello:latest'], { env });
    const { stdout } = await run(process.execPath, [KILN, 'inspect', 'hello:latest', '--config'], { env });
    const cfg = JSON.parse(stdout) as { architecture?: string; rootfs?: { diff_ids?: string[] } };
    assert.equal(typeof cfg.architecture, 'string');
    assert.equal(cfg.rootfs?.diff_ids?.length, 1);
  } finally {
    await rm(home, { recursive: true, force: true });
  }
});
