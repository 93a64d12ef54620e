import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureSpreadDir } from './spread.js';

/** The ext4 flags of `dir` as `lsattr -d` prints them, or undefined where lsattr cannot read them. */
function flags(dir: string): string | undefined {
  try {
    return execFileSync('lsattr', ['-d', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split(' ')[0];
  } catch {
    return undefined;
  }
}

test('ensureSpreadDir creates the dir (and parents) with the mode and marks only a dir it created', async () => {
  const base = mkdtempSync(join(tmpdir(), 'kiln-spread-'));
  try {
    const dir = join(base, 'home', 'tmp');
    await ensureSpreadDir(dir, 0o700);
    assert.equal(statSync(dir).mode & 0o777, 0o700 & ~process.umask());
    await ensureSpreadDir(dir, 0o700); // exists: fine, nothing to do

    const existing = join(base, 'existing');
    mkdirSync(existing);
    await ensureSpreadDir(existing);

    const off = join(base, 'off');
    process.env.KILN_SPREAD_DIRS = '0';
    try {
      await ensureSpreadDir(off);
    } finally {
      delete process.env.KILN_SPREAD_DIRS;
    }

    const probe = flags(dir);
    if (probe === undefined) return; // no lsattr or a filesystem without ext4 flags: the mark is only a hint
    // this machine's /tmp is ext4: the created dir carries the top-directory flag, the others do not
    assert.match(probe, /T/, `created dir flags ${probe}`);
    assert.doesNotMatch(flags(existing) ?? '', /T/);
    assert.doesNotMatch(flags(off) ?? '', /T/);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});
