/**
 * Real RUN steps in real namespaces over a busybox rootfs, as root and as the ordinary user kilntest (through
 * the build user namespace), with the overlay snapshotter and with the copy fallback.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, chmod, chown, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runInBuildNamespace } from '../../src/sandbox/userns.js';
import {
  ensureRootlessUser,
  rootlessPrefix,
  rootlessTempDir,
  type ScenarioReport,
  type ScenarioRequest,
  type UpperEntry,
} from '../helpers/rootless.js';

const HELPER = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'rootless.ts');

type Mode = 'root' | 'rootless';

async function scenario(mode: Mode, req: ScenarioRequest): Promise<ScenarioReport> {
  return runInBuildNamespace<ScenarioReport>(HELPER, 'runStepScenario', [req], {
    ...(mode === 'rootless' ? { commandPrefix: rootlessPrefix() } : {}),
  });
}

function entry(upper: UpperEntry[], path: string): UpperEntry | undefined {
  return upper.find((e) => e.path === path);
}

const MAIN_SCRIPT = [
  'echo "pid=$$"',
  'echo "cwd=$(pwd)"',
  'echo "env=$FOO|$EMPTY|$PATH|$HOME"',
  'echo "hosts=$(grep -c localhost /etc/hosts)"',
  'echo "hostname=$(hostname)"',
  'echo "resolv=$(grep -c nameserver /etc/resolv.conf)"',
  'echo "secret=$(cat /run/secrets/tok)"',
  'echo "secretmode=$(stat -c %a /run/secrets/tok)"',
  'echo "devnull=$(stat -c %t,%T /dev/null)"',
  'echo "keys=$(stat -c %t,%T /proc/keys)"',
  'echo "firmware=$(stat -f -c %T /sys/firmware)"',
  `echo "procsys=$(awk '$5=="/proc/sys"{print substr($6,1,3)}' /proc/self/mountinfo)"`,
  'echo "caps=$(grep CapBnd /proc/self/status)"',
  'echo created > /created.txt',
  'rm /etc/deleteme',
  'rm -rf /data && mkdir /data && echo fresh > /data/new.txt',
  'exit 7',
].join('\n');

function mainRequest(kilnHome: string, secretFile: string, snapshotter?: 'overlay' | 'copy'): ScenarioRequest {
  return {
    kilnHome,
    ...(snapshotter ? { snapshotter } : {}),
    baseFiles: { 'etc/deleteme': 'x', 'data/old1.txt': 'old', 'data/sub/old2.txt': 'old' },
    topFiles: { 'etc/fromtop': 'top' },
    steps: [
      {
        argv: ['/bin/sh', '-c', MAIN_SCRIPT],
        env: ['FOO=bar baz', 'EMPTY='],
        cwd: '/work/dir',
        mounts: [{ type: 'secret', id: 'tok', source: secretFile, target: '/run/secrets/tok', required: true }],
      },
    ],
  };
}

function checkMain(rep: ScenarioReport, mode: Mode): void {
  const s = rep.steps[0];
  assert.ok(s, 'one step');
  assert.equal(s.error, undefined, JSON.stringify(s.error));
  assert.equal(s.exitCode, 7, s.stderr);
  const out = s.stdout;
  assert.match(out, /^pid=1$/m, 'the command is pid 1 of its pid namespace');
  assert.match(out, /^cwd=\/work\/dir$/m);
  assert.match(
    out,
    /^env=bar baz\|\|\/usr\/local\/sbin:\/usr\/local\/bin:\/usr\/sbin:\/usr\/bin:\/sbin:\/bin\|\/root$/m,
  );
  assert.match(out, /^hosts=2$/m);
  assert.match(out, /^hostname=buildkitsandbox$/m);
  assert.match(out, /^resolv=[1-9]\d*$/m);
  assert.match(out, /^secret=s3cr3t-value$/m);
  assert.match(out, /^secretmode=400$/m);
  assert.match(out, /^devnull=1,3$/m);
  assert.match(out, /^keys=1,3$/m, '/proc/keys is masked (a /dev/null bind)');
  assert.match(out, /^firmware=tmpfs$/m, '/sys/firmware is masked (an empty read-only tmpfs)');
  assert.match(out, /^procsys=ro,$/m, '/proc/sys is read-only');
  // Docker's default capability set: chown dac_override fowner fsetid kill setgid setuid setpcap
  // net_bind_service net_raw sys_chroot mknod audit_write setfcap.
  assert.match(out, /^caps=CapBnd:\s+00000000a80425fb$/m);
  const up = rep.upper;
  assert.equal(entry(up, '/created.txt')?.content, 'created\n', 'a created file lands in the upper dir');
  assert.equal(entry(up, '/etc/deleteme')?.type, 'whiteout', 'a deleted lower file becomes a whiteout');
  assert.deepEqual(entry(up, '/data'), { path: '/data', type: 'dir', opaque: true }, 'rm -rf + mkdir → opaque dir');
  assert.equal(entry(up, '/data/new.txt')?.content, 'fresh\n');
  assert.equal(entry(up, '/data/old1.txt'), undefined, 'no whiteouts needed under an opaque dir');
  assert.equal(entry(up, '/work/dir')?.type, 'dir', 'the working dir is created (and kept, as BuildKit)');
  // As BuildKit (runc): the mount points /proc, /dev, /sys of a base without them stay, empty.
  for (const kept of ['/proc', '/dev', '/sys']) {
    assert.deepEqual(entry(up, kept), { path: kept, type: 'dir', opaque: false }, kept);
    assert.ok(!up.some((e) => e.path.startsWith(kept + '/')), `${kept} is empty in the layer`);
  }
  for (const gone of ['/etc/hosts', '/etc/resolv.conf', '/etc/hostname', '/run', '/run/secrets']) {
    assert.equal(entry(up, gone), undefined, `${gone} must not be left in the layer (${mode})`);
  }
  assert.ok(!JSON.stringify(up).includes('s3cr3t'), 'the secret is not in the upper dir');
  assert.deepEqual(rep.leftoverMounts, []);
  assert.deepEqual(rep.leftoverTemp, []);
}

for (const mode of ['root', 'rootless'] as Mode[]) {
  describe(`sandbox RUN (${mode})`, () => {
    let home: string;
    let secretFile: string;
    before(async () => {
      if (mode === 'rootless') {
        ensureRootlessUser();
        home = await rootlessTempDir('kiln-sbx-');
      } else {
        home = await mkdtemp(join(tmpdir(), 'kiln-sbx-'));
      }
      secretFile = join(home, 'secret.txt');
      await writeFile(secretFile, 's3cr3t-value');
      await chmod(secretFile, 0o600);
      if (mode === 'rootless') {
        const { uid, gid } = ensureRootlessUser();
        await chown(secretFile, uid, gid);
      }
    });
    after(async () => {
      await rm(home, { recursive: true, force: true });
    });

    test('exit code, env, cwd, hosts, secret; upper dir has the diff and no sandbox files (overlay)', async () => {
      const rep = await scenario(mode, mainRequest(home, secretFile, 'overlay'));
      assert.equal(rep.kind, 'overlay');
      assert.equal(rep.uid, 0, 'runs as root inside the namespace');
      checkMain(rep, mode);
    });

    test('copy snapshotter produces the same overlay-format diff', async () => {
      const rep = await scenario(mode, mainRequest(home, secretFile, 'copy'));
      assert.equal(rep.kind, 'copy');
      checkMain(rep, mode);
      // Untouched files are not in the diff.
      assert.equal(entry(rep.upper, '/bin/busybox'), undefined);
      assert.equal(entry(rep.upper, '/etc/passwd'), undefined);
      assert.equal(entry(rep.upper, '/etc/fromtop'), undefined);
    });

    test('user, groups, network none, cache mount persistence, exec errors', async () => {
      const cache = { type: 'cache' as const, id: 'c1', target: '/cache', sharing: 'shared' as const };
      const rep = await scenario(mode, {
        kilnHome: home,
        steps: [
          { argv: ['id'], user: 'u1' },
          { argv: ['id'], user: '1000:2000' },
          { argv: ['id'], user: 'nobody' },
          { argv: ['/bin/sh', '-c', 'echo $HOME; id -u; id -g'], user: '4242' },
          { argv: ['/bin/sh', '-c', 'ip -o link | wc -l; ip -o link'], network: 'none' },
          { argv: ['/bin/sh', '-c', 'echo one > /cache/persist; echo $(ls -ld /cache | cut -c1-10)'], mounts: [cache] },
          { argv: ['cat', '/cache/persist'], mounts: [cache] },
          { argv: ['/no/such/binary'] },
          { argv: ['id'], user: 'ghost' },
          { argv: ['/bin/sh', '-c', 'ls /proc/self/fd | wc -l'] },
          { argv: ['true'], cwd: '/etc/passwd' },
        ],
      });
      const [u1, numeric, nobody, unknownUid, net, c1, c2, noexec, ghost, fds, badCwd] = rep.steps;
      // As current BuildKit (containerd's ensureAdditionalGids): the groups listing the user plus the primary gid,
      // ascending; an explicit uid:gid or a user in no group has just its primary gid.
      assert.equal(u1?.stdout.trim(), 'uid=1000(u1) gid=1000(g1) groups=10(wheel),1000(g1),2000(extra)');
      assert.equal(numeric?.stdout.trim(), 'uid=1000(u1) gid=2000(extra) groups=2000(extra)');
      assert.equal(nobody?.stdout.trim(), 'uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)');
      assert.equal(unknownUid?.stdout, '/\n4242\n0\n');
      assert.equal(net?.exitCode, 0, net?.stderr);
      const netLines = (net?.stdout ?? '').trim().split('\n');
      assert.equal(netLines[0], '1', `only lo: ${net?.stdout}`);
      assert.match(netLines[1] ?? '', /: lo: /);
      assert.equal(c1?.exitCode, 0, c1?.stderr);
      assert.equal(c2?.stdout, 'one\n', 'the cache mount persists between runs');
      assert.equal(noexec?.error?.code, 'RUN_EXEC_FAILED');
      assert.match(noexec?.error?.message ?? '', /no\/such\/binary/);
      assert.equal(ghost?.error?.code, 'USER_UNKNOWN');
      // ls's own dir fd makes 4: 0, 1, 2 and the fd ls reads: nothing inherited from kiln leaks in.
      assert.equal(fds?.stdout.trim(), '4');
      assert.equal(badCwd?.error?.code, 'WORKDIR_INVALID');
      assert.match(badCwd?.error?.message ?? '', /working directory \/etc\/passwd/);
      assert.equal(entry(rep.upper, '/cache'), undefined, 'the cache mount point stub is removed');
      assert.deepEqual(rep.leftoverMounts, []);
      assert.deepEqual(rep.leftoverTemp, []);
      const caches = await readdir(join(home, 'cache-mounts'));
      assert.equal(caches.length, 1);
    });

    test('abort kills the whole process tree and leaves no mounts and no temp dirs', async () => {
      const token = `kiln-abort-${mode}-${process.pid}`;
      const rep = await scenario(mode, {
        kilnHome: home,
        steps: [
          {
            argv: ['/bin/sh', '-c', `sh -c 'sleep 1000; echo ${token}' & sleep 1000 & echo started; wait`],
            abortOn: 'started',
          },
        ],
      });
      assert.equal(rep.steps[0]?.error?.code, 'RUN_ABORTED');
      const procs = await readdir('/proc');
      for (const p of procs.filter((x) => /^\d+$/.test(x))) {
        let cmdline: string;
        try {
          cmdline = (await import('node:fs')).readFileSync(`/proc/${p}/cmdline`, 'utf8');
        } catch {
          continue;
        }
        assert.ok(!cmdline.includes(token), `process ${p} of the aborted step survived: ${cmdline}`);
      }
      assert.deepEqual(rep.leftoverMounts, []);
      assert.deepEqual(rep.leftoverTemp, []);
      const mountinfo = (await import('node:fs')).readFileSync('/proc/self/mountinfo', 'utf8');
      assert.ok(!mountinfo.includes(home), 'no mount under the kiln home is left');
    });
  });
}
