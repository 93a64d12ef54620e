import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../errors.js';
import { resolveExecUser } from './user.js';
import { sandboxResolvConf, sandboxHosts, sandboxEnv, DEFAULT_PATH } from './run.js';
import { overlayMountOptions } from './overlay.js';
import { parseSubIdFile, assertRootlessSupported, idMapArgs, type UserNamespaceStatus } from './userns.js';

async function withRoot(files: Record<string, string>, fn: (root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'kiln-user-'));
  try {
    for (const [p, c] of Object.entries(files)) {
      await mkdir(join(root, p, '..'), { recursive: true });
      await writeFile(join(root, p), c);
    }
    await fn(root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

const PASSWD = 'root:x:0:0:root:/root:/bin/sh\nu1:x:1000:1000:u1:/home/u1:/bin/sh\n42:x:1500:1500::/home/n:/bin/sh\n';
const GROUP = 'root:x:0:\nwheel:x:10:root,u1\ng1:x:1000:\nextra:x:2000:u1\nself:x:1000:u1\n';

describe('resolveExecUser (current BuildKit semantics: the primary gid is always a supplementary group)', () => {
  test('names, numeric ids, groups and HOME', async () => {
    await withRoot({ 'etc/passwd': PASSWD, 'etc/group': GROUP }, async (root) => {
      // No USER: root, its primary group only (BuildKit's fast path reads no /etc/group).
      assert.deepEqual(await resolveExecUser(root, ''), { uid: 0, gid: 0, additionalGids: [0], home: '/root' });
      // Named or numeric root: the primary gid first, then the groups that list root.
      assert.deepEqual(await resolveExecUser(root, 'root'), { uid: 0, gid: 0, additionalGids: [0, 10], home: '/root' });
      assert.deepEqual(await resolveExecUser(root, '0'), { uid: 0, gid: 0, additionalGids: [0, 10], home: '/root' });
      // The groups listing the user, in /etc/group order; the primary gid is listed there already (self), so kept.
      assert.deepEqual(await resolveExecUser(root, 'u1'), {
        uid: 1000,
        gid: 1000,
        additionalGids: [10, 1000, 2000],
        home: '/home/u1',
      });
      // A numeric user is always a UID (never the user named "42"); its passwd entry still gives gid and groups.
      assert.deepEqual(await resolveExecUser(root, '1000'), {
        uid: 1000,
        gid: 1000,
        additionalGids: [10, 1000, 2000],
        home: '/home/u1',
      });
      assert.equal((await resolveExecUser(root, '42')).uid, 42);
      // An explicit group: no groups from /etc/group, just the primary one.
      assert.deepEqual(await resolveExecUser(root, 'u1:extra'), {
        uid: 1000,
        gid: 2000,
        additionalGids: [2000],
        home: '/home/u1',
      });
      // Fast path uid:gid (also "root"), HOME from the passwd entry of the uid.
      assert.deepEqual(await resolveExecUser(root, '1000:5'), {
        uid: 1000,
        gid: 5,
        additionalGids: [5],
        home: '/home/u1',
      });
      assert.deepEqual(await resolveExecUser(root, 'root:root'), {
        uid: 0,
        gid: 0,
        additionalGids: [0],
        home: '/root',
      });
      assert.deepEqual(await resolveExecUser(root, '777'), { uid: 777, gid: 0, additionalGids: [0], home: '/' });
      assert.deepEqual(await resolveExecUser(root, 'u1:4321'), {
        uid: 1000,
        gid: 4321,
        additionalGids: [4321],
        home: '/home/u1',
      });
    });
  });

  test('unknown names fail with one clear error', async () => {
    await withRoot({ 'etc/passwd': PASSWD, 'etc/group': GROUP }, async (root) => {
      await assert.rejects(resolveExecUser(root, 'ghost'), (e) => isKilnError(e, 'USER_UNKNOWN'));
      await assert.rejects(resolveExecUser(root, 'u1:nogroup'), (e) => isKilnError(e, 'GROUP_UNKNOWN'));
    });
  });

  test('no /etc files: numeric works, default is root, names fail', async () => {
    await withRoot({}, async (root) => {
      assert.deepEqual(await resolveExecUser(root, ''), { uid: 0, gid: 0, additionalGids: [0], home: '/' });
      assert.deepEqual(await resolveExecUser(root, '5'), { uid: 5, gid: 0, additionalGids: [0], home: '/' });
      await assert.rejects(resolveExecUser(root, 'u1'), (e) => isKilnError(e, 'USER_UNKNOWN'));
    });
  });

  test('never reads /etc/passwd through a symlink out of the root', async () => {
    await withRoot({ 'outside/passwd': 'evil:x:0:0::/evil:/bin/sh\n' }, async (dir) => {
      const root = join(dir, 'root');
      await mkdir(join(root, 'etc'), { recursive: true });
      await symlink(join(dir, 'outside', 'passwd'), join(root, 'etc', 'passwd'));
      await assert.rejects(resolveExecUser(root, 'evil'), (e) => isKilnError(e, 'USER_UNKNOWN'));
    });
  });
});

describe('sandbox files', () => {
  test('resolv.conf: loopback resolvers kept with host network, replaced otherwise (BuildKit)', () => {
    const host = '# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.com corp\noptions ndots:2\n';
    assert.equal(sandboxResolvConf(host, 'host'), host.replace('# generated\n', ''));
    assert.equal(sandboxResolvConf(host, 'none'), 'nameserver 10.0.0.2\nsearch example.com corp\noptions ndots:2\n');
    assert.equal(
      sandboxResolvConf('nameserver 127.0.0.1\n', 'none'),
      'nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844\n',
    );
    assert.match(sandboxResolvConf('', 'host'), /^nameserver 8\.8\.8\.8\n/);
  });

  test('hosts file as BuildKit writes it', () => {
    assert.equal(
      sandboxHosts('buildkitsandbox'),
      '127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n',
    );
  });

  test('env: kept exactly, PATH and HOME added only when absent', () => {
    assert.deepEqual(sandboxEnv(['A=1'], '/root'), ['A=1', `PATH=${DEFAULT_PATH}`, 'HOME=/root']);
    assert.deepEqual(sandboxEnv(['PATH=/x', 'HOME=/h', 'B='], '/root'), ['PATH=/x', 'HOME=/h', 'B=']);
  });
});

describe('overlay options', () => {
  test('lowerdir is topmost first; short relative links when the page limit is exceeded', () => {
    const o = overlayMountOptions(['/l/a', '/l/b'], '/s/upper', '/s/work', '/s');
    assert.equal(o.options, 'lowerdir=/l/b:/l/a,upperdir=/s/upper,workdir=/s/work,userxattr');
    assert.equal(o.links, undefined);
    const many = Array.from(
      { length: 120 },
      (_, i) => `/var/lib/kiln/layers/${'0'.repeat(60)}${String(i).padStart(4, '0')}`,
    );
    const big = overlayMountOptions(many, '/s/upper', '/s/work', '/s');
    assert.ok(big.links, 'links are used');
    assert.ok(big.options.length < 4096);
    assert.equal(big.links?.[0]?.target, many[many.length - 1], 'topmost first');
    assert.match(big.options, /^lowerdir=l\/0:l\/1:/);
    assert.match(big.options, /,upperdir=upper,workdir=work,userxattr$/);
  });

  test('rejects paths overlay cannot express and too many layers', () => {
    assert.throws(
      () => overlayMountOptions(['/a:b'], '/u', '/w', '/'),
      (e) => isKilnError(e, 'OVERLAY_BAD_PATH'),
    );
    assert.throws(
      () =>
        overlayMountOptions(
          Array.from({ length: 501 }, (_, i) => `/l/${i}`),
          '/u',
          '/w',
          '/',
        ),
      (e) => isKilnError(e, 'TOO_MANY_LAYERS'),
    );
  });
});

describe('user namespace status', () => {
  test('subuid parsing by name or uid', () => {
    const text = '# c\nalice:100000:65536\n1001:300000:1000\nbob:bad:1\n';
    assert.deepEqual(parseSubIdFile(text, 'alice', 1000), { start: 100000, count: 65536 });
    assert.deepEqual(parseSubIdFile(text, 'carol', 1001), { start: 300000, count: 1000 });
    assert.equal(parseSubIdFile(text, 'bob', 5), undefined);
    assert.deepEqual(idMapArgs(1000, { start: 100000, count: 65536 }), ['0', '1000', '1', '1', '100000', '65536']);
  });

  const ok: UserNamespaceStatus = {
    uid: 1000,
    gid: 1000,
    isRoot: false,
    insideBuildNamespace: false,
    userName: 'alice',
    subuid: { start: 100000, count: 65536 },
    subgid: { start: 100000, count: 65536 },
    newuidmap: '/usr/bin/newuidmap',
    newgidmap: '/usr/bin/newgidmap',
    unshare: '/usr/bin/unshare',
    usernsAllowed: true,
    usernsProblem: undefined,
  };

  test('one clear error naming what to enable', () => {
    assert.doesNotThrow(() => assertRootlessSupported(ok));
    assert.doesNotThrow(() => assertRootlessSupported({ ...ok, isRoot: true, subuid: undefined }));
    assert.throws(
      () => assertRootlessSupported({ ...ok, subuid: undefined, newuidmap: undefined }),
      (e) =>
        isKilnError(e, 'ROOTLESS_UNAVAILABLE') &&
        /no subordinate uid range for alice in \/etc\/subuid/.test(e.message) &&
        /newuidmap/.test(e.message) &&
        /apt-get install uidmap/.test(e.hint ?? '') &&
        /alice:100000:65536/.test(e.hint ?? ''),
    );
    assert.throws(
      () => assertRootlessSupported({ ...ok, usernsAllowed: false, usernsProblem: 'disabled' }),
      (e) => isKilnError(e, 'ROOTLESS_UNAVAILABLE') && /unprivileged_userns_clone/.test(e.hint ?? ''),
    );
  });
});
