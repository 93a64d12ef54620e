import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, utimes, writeFile, rename, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHANGED, MOVED_DIR, REMOVED, REPLACED, parseChanges } from './client.js';
import { planDiff, planText, type PlanEntry } from './plan.js';

let dir: string;
let lower: string;
let root: string;

/**
 * A lower layer (real overlay format: a 0/0 char device whiteout needs root, which the test runner is) and a tree
 * that started as a copy of it and then changed as a step would change it.
 */
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-plan-'));
  lower = join(dir, 'lower');
  root = join(dir, 'root');
  for (const base of [lower, root]) {
    for (const d of ['etc', 'var/lib/x', 'opt/old/sub', 'usr/share', 'tmp'])
      await mkdir(join(base, d), { recursive: true });
    await writeFile(join(base, 'etc/passwd'), 'root\n');
    await writeFile(join(base, 'etc/group'), 'root\n');
    await writeFile(join(base, 'opt/old/sub/f'), 'f\n');
    await writeFile(join(base, 'var/lib/x/keep'), 'k\n');
  }
  const gone = spawnSync('mknod', [join(lower, 'etc', 'shadow'), 'c', '0', '0']);
  assert.equal(gone.status, 0, 'mknod needs root');
  // same mtimes on both sides for the dirs the step leaves alone
  const t = new Date('2024-01-01T00:00:00Z');
  for (const d of ['etc', 'var', 'var/lib', 'var/lib/x', 'opt', 'usr', 'usr/share', 'tmp']) {
    await utimes(join(lower, d), t, t);
    await utimes(join(root, d), t, t);
  }
  // the step: rm /etc/group, edit passwd, rm -rf /opt/old and mkdir it again, mkdir /new/a, mv /usr/share/q.new
  // /usr/share/q and /x.new /x, touch+rm in /tmp (mtime changes), touch+rm in /var/lib/x (mtime restored)
  await rm(join(root, 'etc/group'));
  await writeFile(join(root, 'etc/passwd'), 'root\nbob\n');
  await rm(join(root, 'opt/old'), { recursive: true });
  await mkdir(join(root, 'opt/old'));
  await writeFile(join(root, 'opt/old/n'), 'n\n');
  await mkdir(join(root, 'new/a'), { recursive: true });
  await mkdir(join(root, 'usr/share/q.new'));
  await rename(join(root, 'usr/share/q.new'), join(root, 'usr/share/q'));
  await mkdir(join(root, 'x.new'));
  await writeFile(join(root, 'x.new/f'), 'x\n');
  await rename(join(root, 'x.new'), join(root, 'x'));
  await utimes(join(root, 'tmp'), new Date(), new Date());
  await utimes(join(root, 'usr/share'), t, t);
  await utimes(join(root, 'var/lib/x'), t, t);
  assert.equal((await stat(join(root, 'var/lib/x'))).mtimeMs, t.getTime());
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('a step diff from its change list: whiteouts, opaque dirs, new trees, pruned copy-ups', async () => {
  const changes = new Map<string, number>([
    ['etc/group', REMOVED],
    ['etc/passwd', CHANGED],
    ['etc/nope', CHANGED | REMOVED], // created and removed again: nothing (not in the lowers)
    ['opt/old/sub/f', REMOVED],
    ['opt/old/sub', REMOVED],
    ['opt/old', REMOVED | CHANGED],
    ['opt/old/n', CHANGED],
    ['new', CHANGED],
    ['new/a', CHANGED],
    ['usr/share/q.new', REMOVED],
    ['usr/share/q', CHANGED | MOVED_DIR],
    ['x.new', REMOVED],
    ['x.new/f', CHANGED],
    ['x', CHANGED | MOVED_DIR],
    ['tmp/t1', CHANGED | REMOVED],
    ['var/lib/x/t2', CHANGED | REMOVED],
  ]);
  const plan = await planDiff(root, [lower], changes);
  const show = (e: PlanEntry) =>
    e.kind === 'D' ? `D ${e.rel}${e.opaque ? ' opaque' : ''}${e.recursive ? ' tree' : ''}` : `${e.kind} ${e.rel}`;
  assert.deepEqual(plan.map(show), [
    'D etc',
    'X etc/group',
    'F etc/passwd',
    'D new tree',
    'D opt',
    'D opt/old opaque tree',
    'D tmp',
    'D usr',
    'D usr/share',
    'D usr/share/q opaque tree',
    'D x opaque tree',
  ]);
  // parents come before children, and the plan file round-trips odd names
  const odd = await planDiff(root, [lower], new Map([['etc/passwd', CHANGED | REPLACED]]));
  assert.equal(planText(odd), 'D\tetc\t0\t0\nF\tetc/passwd\n');
  assert.deepEqual(
    [...parseChanges('1\ta\\tb\n2\tc\\\\d\\ne\n').entries()],
    [
      ['a\tb', 1],
      ['c\\d\ne', 2],
    ],
  );
});
