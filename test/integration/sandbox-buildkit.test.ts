/**
 * Differential test of the RUN environment: the same report script runs under BuildKit (Debian's dockerd
 * 20.10 / BuildKit v0.8, the project's reference builder) and in kiln's sandbox over the same busybox rootfs,
 * and the sections that BuildKit defines must be identical: pid, environment, /etc/hosts, hostname,
 * resolv.conf, /dev, the capability sets, umask, cwd, open fds, uid/gid and HOME for USER.
 *
 * Known, intended differences are not compared: /etc/hostname (kiln provides it), seccomp and cgroup mounts
 * (kiln has neither), masked-path details.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { writeBusyboxRootfs } from '../helpers/rootless.js';
import { OverlaySnapshotter } from '../../src/sandbox/overlay.js';
import { runProcess } from '../../src/sandbox/run.js';

const REPORT = `
echo "== pid"; echo $$
echo "== env"; env | sort
echo "== hosts"; cat /etc/hosts
echo "== hostname"; hostname
echo "== resolv"; cat /etc/resolv.conf
echo "== dev"; ls -1 /dev; stat -c '%n %F %a %u %g %t,%T' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/pts/ptmx
echo "== devlinks"; for l in fd stdin stdout stderr ptmx; do echo "$l -> $(readlink /dev/$l)"; done
echo "== devdirs"; stat -c '%n %a' /dev /dev/pts /dev/shm
echo "== caps"; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status
echo "== umask"; umask
echo "== cwd"; pwd
echo "== fds"; ls /proc/self/fd | wc -l
echo "== ids"; id -u; id -g; echo "$HOME"
echo "== id"; id
echo "== groups"; grep '^Groups' /proc/self/status
`;

function sections(report: string): Map<string, string> {
  const out = new Map<string, string>();
  let name = '';
  for (const line of report.split('\n')) {
    const m = /^== (\w+)$/.exec(line);
    if (m) name = m[1] as string;
    else if (name) out.set(name, (out.get(name) ?? '') + line + '\n');
  }
  return out;
}

describe('RUN environment matches BuildKit', () => {
  let dir: string;
  let dockerd: Dockerd;
  before(async () => {
    assert.equal(process.getuid?.(), 0, 'this differential test starts dockerd and needs root');
    dir = await mkdtemp(join(tmpdir(), 'kiln-sbx-bk-'));
    dockerd = await startDockerd();
  });
  after(async () => {
    await dockerd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('same report from BuildKit and from the kiln sandbox (no USER, USER 1000:2000, USER u1)', async () => {
    const rootfs = join(dir, 'rootfs');
    await writeBusyboxRootfs(rootfs, { 'report.sh': REPORT });
    await mkdir(join(rootfs, 'work'));
    // /tmp must be writable for the user step in both builders.
    await mkdir(join(rootfs, 'tmp'));
    await chmod(join(rootfs, 'tmp'), 0o1777);
    const tar = join(dir, 'rootfs.tar');
    assert.equal(spawnSync('tar', ['-C', rootfs, '-cf', tar, '.']).status, 0);
    await dockerd.importRootfs(tar, 'kiln-sbx/busybox:latest');
    const ctx = join(dir, 'ctx');
    await mkdir(ctx);
    await writeFile(
      join(ctx, 'Dockerfile'),
      [
        'FROM kiln-sbx/busybox:latest',
        'WORKDIR /work',
        'RUN /bin/sh /report.sh > /report-root 2>&1',
        'USER 1000:2000',
        'RUN /bin/sh /report.sh > /tmp/report-user 2>&1',
        'USER u1',
        'RUN /bin/sh /report.sh > /tmp/report-u1 2>&1',
      ].join('\n') + '\n',
    );
    await dockerd.build({ context: ctx, tag: 'kiln-sbx/report:1', noCache: true });
    const bkRoot = await dockerd.runImage('kiln-sbx/report:1', ['cat', '/report-root'], { user: '0' });
    const bkUser = await dockerd.runImage('kiln-sbx/report:1', ['cat', '/tmp/report-user'], { user: '0' });
    const bkU1 = await dockerd.runImage('kiln-sbx/report:1', ['cat', '/tmp/report-u1'], { user: '0' });

    const home = join(dir, 'home');
    const snap = await new OverlaySnapshotter({ kilnHome: home }).prepare([rootfs]);
    const runReport = async (user: string): Promise<string> => {
      let out = '';
      const r = await runProcess({
        rootfs: snap.root,
        argv: ['/bin/sh', '-c', '/bin/sh /report.sh 2>&1'],
        env: [], // an imported image has no Env: both add the default PATH (and HOME)
        cwd: '/work',
        user,
        kilnHome: home,
        onStdout: (d) => (out += d.toString()),
        onStderr: (d) => (out += d.toString()),
      });
      assert.equal(r.exitCode, 0, out);
      return out;
    };
    try {
      const kRoot = await runReport('');
      const kUser = await runReport('1000:2000');
      const kU1 = await runReport('u1');
      const names = [
        'pid',
        'env',
        'hosts',
        'hostname',
        'resolv',
        'dev',
        'devlinks',
        'devdirs',
        'caps',
        'umask',
        'cwd',
        'fds',
        'ids',
        'groups',
      ];
      // BuildKit v0.8 passes only the /etc/group memberships; current BuildKit (the differential suite's reference,
      // cases 17 and 87) and kiln put the primary gid first (containerd's ensureAdditionalGids). The kernel lists
      // Groups sorted: v0.8's list with the primary gid added is what kiln must show. (`id` names the same groups.)
      const withPrimary = (groups: string | undefined, ids: string | undefined): string | undefined => {
        const gid = (ids ?? '').split('\n')[1]?.trim();
        const m = /^Groups:\s*(.*?)\s*$/.exec((groups ?? '').trim());
        if (!m || !gid) return groups;
        const all = new Set([...(m[1] ?? '').split(/\s+/).filter(Boolean), gid]);
        const line = `Groups:\t${[...all].sort((a, b) => Number(a) - Number(b)).join(' ')} `;
        return (groups ?? '').replace(/^Groups:.*$/m, line);
      };
      for (const [label, bk, kiln] of [
        ['root', bkRoot, kRoot],
        ['user', bkUser, kUser],
        ['u1', bkU1, kU1],
      ] as const) {
        const b = sections(bk);
        const k = sections(kiln);
        if (b.has('groups')) b.set('groups', withPrimary(b.get('groups'), b.get('ids')) ?? '');
        for (const n of names) {
          assert.ok(b.has(n), `BuildKit report (${label}) lacks section ${n}:\n${bk}`);
          assert.equal(k.get(n), b.get(n), `section ${n} (${label}) differs from BuildKit`);
        }
      }
    } finally {
      await snap.release();
      await dockerd.removeImages(['kiln-sbx/report:1', 'kiln-sbx/busybox:latest']);
    }
  });
});
