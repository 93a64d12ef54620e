/**
 * RUN --mount types in real sandboxes (root and kilntest): bind (read-only; writable with writes discarded),
 * tmpfs (size, nesting), secret (file and env, missing/required), ssh (clear error), cache sharing modes, and an
 * overlay over more layers than fit in one page of mount options.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runInBuildNamespace } from '../../src/sandbox/userns.js';
import { ensureRootlessUser, rootlessPrefix, rootlessTempDir, type ScenarioReport } from '../helpers/rootless.js';

const HELPER = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'rootless.ts');

type Mode = 'root' | 'rootless';

const SYSTEM_DIRS = ['/dev', '/proc', '/sys'].map((path) => ({ path, type: 'dir', opaque: false }));

function inNs<T>(mode: Mode, name: string, args: unknown[]): Promise<T> {
  return runInBuildNamespace<T>(HELPER, name, args, mode === 'rootless' ? { commandPrefix: rootlessPrefix() } : {});
}

for (const mode of ['root', 'rootless'] as Mode[]) {
  describe(`sandbox mounts (${mode})`, () => {
    let home: string;
    before(async () => {
      if (mode === 'rootless') {
        ensureRootlessUser();
        home = await rootlessTempDir('kiln-mnt-');
      } else {
        home = await mkdtemp(join(tmpdir(), 'kiln-mnt-'));
      }
    });
    after(async () => {
      await rm(home, { recursive: true, force: true });
    });

    test('bind, tmpfs, secret and ssh mounts', async () => {
      const ctx = join(home, 'ctx');
      const rep = await inNs<ScenarioReport>(mode, 'runStepScenario', [
        {
          kilnHome: home,
          hostFiles: { 'ctx/a.txt': 'hello\n', 'ctx/sub/b.txt': 'b\n', secret: 'tok-123' },
          steps: [
            {
              argv: ['/bin/sh', '-c', 'cat /ctx/a.txt; (echo x > /ctx/new) 2>/dev/null || echo ro-denied'],
              mounts: [{ type: 'bind', source: ctx, target: '/ctx' }],
            },
            {
              argv: [
                '/bin/sh',
                '-c',
                'echo changed > /rw/a.txt && echo n > /rw/new && rm /rw/sub/b.txt && cat /rw/a.txt',
              ],
              mounts: [{ type: 'bind', source: ctx, target: '/rw', readonly: false }],
            },
            {
              argv: [
                '/bin/sh',
                '-c',
                'echo t > /scratch/t; grep " /scratch " /proc/mounts | cut -d" " -f3; df -k /scratch | awk "NR==2{print \\$2}"; cat /scratch/ctx/a.txt',
              ],
              mounts: [
                { type: 'tmpfs', target: '/scratch', size: 2 * 1024 * 1024 },
                { type: 'bind', source: ctx, target: '/scratch/ctx' },
              ],
            },
            {
              argv: [
                '/bin/sh',
                '-c',
                'echo "env=$TOKEN"; cat /run/secrets/s; test -e /run/secrets/missing || echo no-missing',
              ],
              mounts: [
                { type: 'secret', id: 's', source: join(home, 'secret'), target: '/run/secrets/s', env: 'TOKEN' },
                { type: 'secret', id: 'missing', source: join(home, 'nope'), target: '/run/secrets/missing' },
              ],
            },
            {
              argv: ['true'],
              mounts: [
                { type: 'secret', id: 'req', source: join(home, 'nope'), target: '/run/secrets/req', required: true },
              ],
            },
            { argv: ['true'], mounts: [{ type: 'ssh', target: '/run/ssh' }] },
          ],
        },
      ]);
      const [ro, rw, tmp, sec, req, ssh] = rep.steps;
      assert.equal(ro?.stdout, 'hello\nro-denied\n', ro?.stderr);
      assert.equal(rw?.exitCode, 0, rw?.stderr);
      assert.equal(rw?.stdout, 'changed\n');
      assert.equal(tmp?.exitCode, 0, tmp?.stderr);
      assert.equal(tmp?.stdout, 'tmpfs\n2048\nhello\n');
      assert.equal(sec?.stdout, 'env=tok-123\ntok-123no-missing\n', sec?.stderr);
      assert.equal(req?.error?.code, 'SECRET_NOT_FOUND');
      assert.equal(ssh?.error?.code, 'RUN_MOUNT_SSH_UNSUPPORTED');
      // Writes to a writable bind are discarded: the host dir is untouched.
      assert.equal(await readFile(join(ctx, 'a.txt'), 'utf8'), 'hello\n');
      assert.deepEqual((await readdir(ctx)).sort(), ['a.txt', 'sub']);
      assert.equal(await readFile(join(ctx, 'sub', 'b.txt'), 'utf8'), 'b\n');
      // Nothing from the mounts reaches the layer, not even /etc (copied up for the /etc/hosts stub, then
      // unchanged); only the /proc, /dev, /sys dirs the base lacked (kept, as BuildKit does).
      assert.deepEqual(rep.upper, SYSTEM_DIRS);
      assert.ok(!JSON.stringify(rep.upper).includes('tok-123'));
      assert.deepEqual(rep.leftoverMounts, []);
      assert.deepEqual(rep.leftoverTemp, []);
    });

    test('copy snapshotter: mount stubs and the sandbox files leave no trace in the diff', async () => {
      const rep = await inNs<ScenarioReport>(mode, 'runStepScenario', [
        {
          kilnHome: home,
          snapshotter: 'copy',
          steps: [
            {
              argv: ['/bin/sh', '-c', 'echo t > /scratch/t && cat /etc/hosts >/dev/null'],
              mounts: [{ type: 'tmpfs', target: '/scratch' }],
            },
          ],
        },
      ]);
      assert.equal(rep.kind, 'copy');
      assert.equal(rep.steps[0]?.exitCode, 0, rep.steps[0]?.stderr);
      assert.deepEqual(rep.upper, SYSTEM_DIRS);
      assert.deepEqual(rep.leftoverTemp, []);
    });

    test('cache uid/gid/mode on an empty caller-made dir; keepMountStubs keeps mount target dirs (BuildKit 0.8)', async () => {
      const pre = join(home, 'engine-cache');
      const rep = await inNs<ScenarioReport>(mode, 'runStepScenario', [
        {
          kilnHome: home,
          hostDirs: ['engine-cache/sub'],
          hostFiles: { 'secret-k': 'k' },
          steps: [
            {
              argv: ['/bin/sh', '-c', 'ls -ld /c | cut -c1-10; stat -c %u:%g /c'],
              mounts: [{ type: 'cache', id: 'c-mode', target: '/c', uid: 1000, gid: 1000, mode: 0o700 }],
            },
            {
              argv: ['/bin/sh', '-c', 'stat -c %a:%u:%g /e'],
              mounts: [
                { type: 'cache', id: 'c-engine', source: join(pre, 'sub'), target: '/e', uid: 7, gid: 8, mode: 0o750 },
              ],
            },
            {
              argv: ['true'],
              mounts: [
                { type: 'tmpfs', target: '/keep/me' },
                { type: 'secret', id: 'k', source: join(home, 'secret-k'), target: '/run/secrets/k' },
              ],
              keepMountStubs: true,
            },
          ],
        },
      ]);
      const [c, e, keep] = rep.steps;
      assert.equal(c?.stdout, 'drwx------\n1000:1000\n', c?.stderr);
      assert.equal(e?.stdout, '750:7:8\n', e?.stderr);
      assert.equal(keep?.exitCode, 0);
      // BuildKit 0.8 keeps the dirs made for mount targets (also /run/secrets) but not the secret file stub.
      assert.deepEqual(
        rep.upper.filter((x) => x.path.startsWith('/keep') || x.path.startsWith('/run')),
        [
          { path: '/keep', type: 'dir', opaque: false },
          { path: '/keep/me', type: 'dir', opaque: false },
          { path: '/run', type: 'dir', opaque: false },
          { path: '/run/secrets', type: 'dir', opaque: false },
        ],
      );
    });

    test('cache sharing: shared runs concurrently, private gets its own dir, locked waits', async () => {
      type R = { log: string; bOut: string; aExit: number; bExit: number };
      const shared = await inNs<R>(mode, 'runCacheSharingScenario', [home, 'shared']);
      assert.equal(shared.log, 'A-start\nB\nA-end\n');
      const priv = await inNs<R>(mode, 'runCacheSharingScenario', [home, 'private']);
      assert.equal(priv.log, 'A-start\nA-end\n');
      assert.equal(priv.bOut, 'B\n', 'private: B saw a fresh cache dir');
      const locked = await inNs<R>(mode, 'runCacheSharingScenario', [home, 'locked']);
      assert.equal(locked.log, 'A-start\nA-end\nB\n');
      assert.equal(locked.bOut, 'A-start\nA-end\nB\n');
      for (const r of [shared, priv, locked]) {
        assert.equal(r.aExit, 0);
        assert.equal(r.bExit, 0);
      }
    });

    test('cache sharing=locked also waits for another process holding the cache', async () => {
      const r = await inNs<{ log: string; exitCode: number }>(mode, 'runLockedAcrossProcessesScenario', [home]);
      assert.equal(r.exitCode, 0);
      assert.equal(r.log, 'other\nstep\n');
    });

    test('overlay over 80 layers with long paths (mount options beyond one page)', async () => {
      const r = await inNs<{ out: string; exitCode: number }>(mode, 'runManyLayersScenario', [home, 80]);
      assert.equal(r.exitCode, 0, r.out);
      assert.equal(r.out, 'layer 0\nlayer 79\nfrom 79\n80\n');
    });
  });
}
