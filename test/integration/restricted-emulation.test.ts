/**
 * The local emulation of a Pod Security Standards `restricted` container (scripts/restricted-run.sh) is what the
 * restricted isolation level is tested in, so first: it really is one. As kilntest with no capabilities,
 * no_new_privs and containerd's RuntimeDefault seccomp profile; the profile itself refuses unshare, namespace
 * flags of clone, mount, umount2, pivot_root, setns, keyctl and bpf (checked as root with every capability, where
 * only the filter can refuse), answers clone3 with ENOSYS and lets ptrace through; kiln's userns level fails there
 * with one clear line and the restricted level builds.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureRootlessUser } from '../helpers/rootless.js';
import { REPO, kilnRestricted, restrictedRun } from '../helpers/restricted.js';

const SECCOMP_EXEC = join(REPO, 'scripts', 'restricted', 'seccomp-exec.py');
const PYTHON = '/usr/bin/python3';

/** errno names of raw system calls made by perl (x86_64 numbers), one `name=ERRNO` per line. */
const PROBE = String.raw`
use POSIX ();
my %calls = (
  unshare_user => [272, 0x10000000], unshare_mount => [272, 0x00020000], clone_newuser => [56, 0x10000000 | 17, 0, 0, 0, 0],
  mount => [165, "none", "/tmp", "tmpfs", 0, 0], umount2 => [166, "/tmp", 0], pivot_root => [155, "/", "/"],
  setns => [308, 0, 0], keyctl => [250, 0, 0], bpf => [321, 0, 0, 0], clone3 => [435, 0, 0],
);
for my $n (sort keys %calls) {
  my ($nr, @a) = @{$calls{$n}};
  $! = 0;
  my $r = syscall($nr, @a);
  if ($r == 0 && $n eq 'clone_newuser') { POSIX::_exit(0); }
  # reap the child now: its SIGCHLD arriving after PTRACE_TRACEME below would stop this process (a signal-delivery
  # stop its parent, not a debugger, never resumes) — the test hung that way under load
  waitpid($r, 0) if ($r > 0 && $n eq 'clone_newuser');
  print "$n=", ($r == -1 ? ($! + 0) : "ok"), "\n";
}
$! = 0;
my $r = syscall(101, 0, 0, 0, 0);
print "ptrace=", ($r == -1 ? ($! + 0) : "ok"), "\n";
`;

let dir: string;

before(async () => {
  const { uid, gid } = ensureRootlessUser();
  dir = await mkdtemp(join(tmpdir(), 'kiln-restricted-emu-'));
  await chown(dir, uid, gid);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function parseProbe(out: string): Record<string, string> {
  return Object.fromEntries(
    out
      .trim()
      .split('\n')
      .map((l) => l.split('=') as [string, string]),
  );
}

describe('the emulated restricted container', () => {
  test('runs as kilntest with no capabilities, no_new_privs and a seccomp filter', async () => {
    const r = await restrictedRun('cat', ['/proc/self/status']);
    assert.equal(r.code, 0, r.stderr);
    const { uid } = ensureRootlessUser();
    assert.match(r.stdout, new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s+${uid}\\s+${uid}$`, 'm'));
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) {
      assert.match(r.stdout, new RegExp(`^${set}:\\s+0000000000000000$`, 'm'), set);
    }
    assert.match(r.stdout, /^NoNewPrivs:\s+1$/m);
    assert.match(r.stdout, /^Seccomp:\s+2$/m);
  });

  test(
    'the filter refuses unshare and mount even to root with every capability',
    { skip: process.arch !== 'x64' },
    async () => {
      // without the filter, root can do all of it (in a throwaway mount namespace)
      const free = spawnSync('unshare', ['--mount', '--', 'sh', '-c', `mount -t tmpfs none ${dir} && umount ${dir}`], {
        encoding: 'utf8',
      });
      assert.equal(free.status, 0, free.stderr);
      // the same under the filter
      const r = spawnSync(PYTHON, [SECCOMP_EXEC, '--', 'unshare', '--mount', '--', 'true'], { encoding: 'utf8' });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /unshare failed: Operation not permitted/);
      const m = spawnSync(PYTHON, [SECCOMP_EXEC, '--', 'mount', '-t', 'tmpfs', 'none', dir], { encoding: 'utf8' });
      if (m.status === 0) spawnSync('umount', [dir]);
      assert.notEqual(m.status, 0, 'mount must be refused');
      // raw system calls: EPERM (1) for what needs CAP_SYS_ADMIN, ENOSYS (38) for clone3, ptrace allowed
      const p = spawnSync(PYTHON, [SECCOMP_EXEC, '--', 'perl', '-e', PROBE], { encoding: 'utf8' });
      assert.equal(p.status, 0, p.stderr);
      const got = parseProbe(p.stdout);
      for (const name of [
        'unshare_user',
        'unshare_mount',
        'clone_newuser',
        'mount',
        'umount2',
        'pivot_root',
        'setns',
        'keyctl',
        'bpf',
      ]) {
        assert.equal(got[name], '1', `${name}: ${p.stdout}`);
      }
      assert.equal(got.clone3, '38', p.stdout);
      assert.equal(got.ptrace, 'ok', 'ptrace is allowed on kernels >= 4.8 (proot needs it)');
      // and without the filter the same probe gets further (so the numbers above are the filter's doing)
      const unfiltered = spawnSync('unshare', ['--mount', '--', 'perl', '-e', PROBE], { encoding: 'utf8' });
      const free2 = parseProbe(unfiltered.stdout);
      assert.equal(free2.unshare_mount, 'ok', unfiltered.stdout + unfiltered.stderr);
    },
  );

  test('kilntest can create a user namespace without the filter, not with it', async () => {
    const { uid, gid } = ensureRootlessUser();
    const bare = spawnSync(
      'setpriv',
      [
        '--reuid',
        String(uid),
        '--regid',
        String(gid),
        '--clear-groups',
        '--no-new-privs',
        '--',
        'unshare',
        '--user',
        'true',
      ],
      { encoding: 'utf8' },
    );
    assert.equal(bare.status, 0, `unprivileged user namespaces must work on this machine: ${bare.stderr}`);
    const r = await restrictedRun('unshare', ['--user', 'true']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Operation not permitted/);
  });

  test('the shipped Localhost profile for the userns level allows what RuntimeDefault refuses', async () => {
    const script = 'unshare --user --map-root-user --mount sh -c "mount -t tmpfs none /mnt && echo mounted"';
    const denied = await restrictedRun('sh', ['-c', script]);
    assert.notEqual(denied.code, 0);
    const profile = join(REPO, 'scripts', 'restricted', 'kiln-userns.json');
    const allowed = await restrictedRun('sh', ['-c', script], {}, profile);
    assert.equal(allowed.code, 0, allowed.stderr);
    assert.equal(allowed.stdout.trim(), 'mounted');
    // the rest is RuntimeDefault's: still no keyctl, bpf or 32-bit unshare for instance
    const p = await restrictedRun('perl', ['-e', PROBE], {}, profile);
    const got = parseProbe(p.stdout);
    assert.equal(got.keyctl, '1', p.stdout + p.stderr);
    assert.equal(got.bpf, '1', p.stdout);
  });

  test('kiln build with the userns level fails there with one clear line', async () => {
    const ctx = join(dir, 'ctx-userns');
    const home = join(dir, 'home-userns');
    await mkdir(ctx);
    await writeFile(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY Dockerfile /\n');
    await mkdir(home);
    const { uid, gid } = ensureRootlessUser();
    for (const p of [ctx, join(ctx, 'Dockerfile'), home]) await chown(p, uid, gid);
    const r = await kilnRestricted(['build', '--progress', 'plain', ctx], { home });
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      /^kiln: isolation userns is not available here: could not create a user namespace .*no_new_privs under a seccomp filter/m,
    );
    assert.match(r.stderr, /^hint: build with --isolation restricted/m);
    assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
  });

  test('kiln build --isolation restricted works there and records the level', async () => {
    const ctx = join(dir, 'ctx');
    const home = join(dir, 'home');
    await mkdir(ctx);
    await mkdir(home);
    await writeFile(join(ctx, 'Dockerfile'), 'FROM localhost/busybox:latest\nRUN id -u > /uid && uname -n > /host\n');
    const { uid, gid } = ensureRootlessUser();
    for (const p of [ctx, join(ctx, 'Dockerfile'), home]) await chown(p, uid, gid);
    const boot = await kilnRestricted(['bootstrap', 'busybox'], { home });
    assert.equal(boot.code, 0, boot.stderr);
    const md = join(home, 'md.json');
    const out = join(home, 'out');
    const args = ['build', '--isolation', 'restricted', '--progress', 'plain', '--metadata-file', md];
    const r = await kilnRestricted([...args, '-o', `type=local,dest=${out}`, ctx], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await readFile(join(out, 'uid'), 'utf8'), '0\n');
    assert.equal(await readFile(join(out, 'host'), 'utf8'), 'buildkitsandbox\n');
    const meta = JSON.parse(await readFile(md, 'utf8')) as Record<string, unknown>;
    assert.equal(meta['kiln.isolation'], 'restricted');
    assert.match(String(meta['containerimage.config.digest']), /^sha256:[0-9a-f]{64}$/);
  });

  test("with containerd 1.6's RuntimeDefault (no process_vm_readv/writev) the restricted level still builds", async () => {
    // Debian bookworm's containerd 1.6 allows process_vm_readv/writev only with CAP_SYS_PTRACE (1.7 and Docker
    // allow them from Linux 4.8, like ptrace): the helper then reads and writes the supervised processes' memory
    // through /proc/PID/mem — a real kubelet with that containerd refused every restricted build pod before
    const rd = JSON.parse(await readFile(join(REPO, 'scripts', 'restricted', 'runtime-default.json'), 'utf8')) as {
      syscalls: { names: string[] }[];
    };
    for (const rule of rd.syscalls)
      rule.names = rule.names.filter((n) => n !== 'process_vm_readv' && n !== 'process_vm_writev');
    const profile = join(dir, 'containerd-1.6-runtime-default.json');
    await writeFile(profile, JSON.stringify(rd));
    const probe = await restrictedRun(
      'perl',
      ['-e', 'my $r = syscall(310, $$, 0, 0, 0, 0, 0); print $r < 0 ? $! + 0 : "ok"'],
      {},
      profile,
    );
    assert.equal(probe.stdout, '1', `process_vm_readv is refused (EPERM) by that profile: ${probe.stderr}`);
    const ctx = join(dir, 'ctx-cd16');
    const home = join(dir, 'home-cd16');
    await mkdir(ctx);
    await mkdir(home);
    await writeFile(
      join(ctx, 'Dockerfile'),
      'FROM localhost/busybox:latest\nRUN mkdir -p /srv && echo hi > /srv/f && chown 7:8 /srv/f && stat -c %u:%g /srv/f > /own\n',
    );
    const { uid, gid } = ensureRootlessUser();
    for (const p of [ctx, join(ctx, 'Dockerfile'), home]) await chown(p, uid, gid);
    assert.equal((await kilnRestricted(['bootstrap', 'busybox'], { home, profile })).code, 0);
    const out = join(home, 'out');
    const r = await kilnRestricted(
      ['build', '--isolation', 'restricted', '--progress', 'plain', '-o', `type=local,dest=${out}`, ctx],
      { home, profile },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await readFile(join(out, 'own'), 'utf8'), '7:8\n');
  });

  test('a missing helper is one clear line naming the level', async () => {
    const home = join(dir, 'home-missing');
    await mkdir(home);
    const { uid, gid } = ensureRootlessUser();
    await chown(home, uid, gid);
    const r = await kilnRestricted(['build', '--isolation', 'restricted', join(dir, 'ctx')], {
      home,
      env: { KILN_RESTRICTED_HELPER: '/nonexistent/kiln-restricted' },
    });
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^kiln: isolation restricted is not available here: KILN_RESTRICTED_HELPER=\/nonexistent\/kiln-restricted is not executable$/m,
    );
    assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
  });
});
