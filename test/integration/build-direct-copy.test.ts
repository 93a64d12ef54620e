/**
 * KILN_EPHEMERAL_HOME=1 (a build pod's emptyDir home): the target's last COPY writes its layer straight from the
 * build context, without copying the files into a snapshot (FileCopier.direct). The image must be exactly the
 * snapshot path's: each Dockerfile here is built in two fresh homes, with and without the variable, and the image
 * digests compared — setuid/executable/0700 modes, a symlink, an empty dir, a user.* xattr, --chown, parents with
 * their own mode and owner, a fresh home importing a registry cache (lazy lower layers). Where the shortcut is not
 * certain (hard links, a .dockerignore'd file, a capability, an existing or symlinked destination, a --chown name)
 * the build must take the snapshot path (asserted from KILN_DEBUG) and still give the same image. The restricted
 * level (a build pod's default) takes the shortcut too, with the image of its own snapshot path.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, link, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { push } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import { kiln } from './build-helpers.js';
import { ensureRootlessUser, rootlessTempDir } from '../helpers/rootless.js';
import { kilnRestricted } from '../helpers/restricted.js';

let reg: TestRegistry;
let work: string;
let base: string;
let n = 0;

/** Source times before the epoch: only the copied-up parents (the build's time) are clamped. */
const OLD = new Date('2021-03-04T05:06:07.890Z');
const EPOCH = String(Date.parse('2023-01-01T00:00:00Z') / 1000);

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'kiln-direct-copy-it-'));
  reg = await startRegistry();
  base = `${reg.host}/base/busybox:1`;
  const opts = { insecureRegistries: [reg.host] };
  await push(await makeBusyboxImage({ kind: 'docker' }), base, opts);
  await closeTransports(opts);
});

after(async () => {
  await reg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

/** A context: `src/` with nested dirs, modes, a symlink and an empty dir (all dated OLD), plus `extra(ctx)`. */
async function context(
  dockerfile: string,
  extra?: (ctx: string) => Promise<void>,
  ctx = join(work, `ctx${++n}`),
): Promise<string> {
  await mkdir(join(ctx, 'src', 'a', 'deep'), { recursive: true });
  await mkdir(join(ctx, 'src', 'empty'));
  await mkdir(join(ctx, 'src', 'private'));
  await writeFile(join(ctx, 'src', 'a', 'one.txt'), 'one\n');
  await writeFile(join(ctx, 'src', 'a', 'deep', 'two.txt'), 'two\n'.repeat(1000));
  await writeFile(join(ctx, 'src', 'run.sh'), '#!/bin/sh\necho hi\n');
  await chmod(join(ctx, 'src', 'run.sh'), 0o755);
  await writeFile(join(ctx, 'src', 'suid'), 'x');
  await chmod(join(ctx, 'src', 'suid'), 0o4755);
  await writeFile(join(ctx, 'src', 'private', 'key'), 'k');
  await chmod(join(ctx, 'src', 'private', 'key'), 0o600);
  await chmod(join(ctx, 'src', 'private'), 0o700);
  await writeFile(join(ctx, 'src', 'empty.txt'), '');
  await symlink('a/one.txt', join(ctx, 'src', 'link'));
  if (extra) await extra(ctx);
  for (const p of ['src/a/one.txt', 'src/a/deep/two.txt', 'src/run.sh', 'src/suid', 'src/private/key', 'src/empty.txt'])
    await utimes(join(ctx, p), OLD, OLD).catch(() => undefined);
  for (const p of ['src/a/deep', 'src/a', 'src/empty', 'src/private', 'src']) await utimes(join(ctx, p), OLD, OLD);
  await writeFile(join(ctx, 'Dockerfile'), dockerfile);
  return ctx;
}

interface Result {
  digest: string;
  direct: boolean;
}

async function build(
  ctx: string,
  ephemeral: boolean,
  extra: string[] = [],
  home?: string,
  rootless = false,
): Promise<Result> {
  const h = home ?? join(work, `home${++n}`);
  const tag = `${reg.host}/direct/t:${n}`;
  const args = ['build', '--progress', 'plain', '--insecure-registry', reg.host, '-t', tag, '--push'];
  const r = await kiln([...args, ...extra, ctx], {
    home: h,
    env: { SOURCE_DATE_EPOCH: EPOCH, KILN_DEBUG: '1', ...(ephemeral ? { KILN_EPHEMERAL_HOME: '1' } : {}) },
    rootless,
  });
  assert.equal(r.code, 0, r.stderr.slice(-3000));
  const m = /built (sha256:[0-9a-f]{64})/.exec(r.stderr);
  assert.ok(m, r.stderr.slice(-2000));
  if (!home) await rm(h, { recursive: true, force: true });
  return { digest: m[1] as string, direct: /\(no snapshot\)/.test(r.stderr) };
}

/** Build `dockerfile` both ways; the ephemeral build took the shortcut iff `direct`; same image either way. */
async function same(dockerfile: string, direct: boolean, extra?: (ctx: string) => Promise<void>): Promise<void> {
  const ctx = await context(dockerfile, extra);
  const normal = await build(ctx, false);
  const eph = await build(ctx, true);
  assert.equal(normal.direct, false, 'without KILN_EPHEMERAL_HOME the COPY always runs in a snapshot');
  assert.equal(eph.direct, direct, direct ? 'the shortcut was expected' : 'the shortcut must not be taken');
  assert.equal(eph.digest, normal.digest);
}

test('direct COPY layer: the image of the snapshot path (modes, symlink, empty dir, user xattr, WORKDIR parent)', async () => {
  await same(`FROM ${base}\nWORKDIR /app\nRUN echo hi > /app/x\nCOPY src/ ./src/\nCMD ["sh"]\n`, true, async (ctx) => {
    if (spawnSync('setfattr', ['-n', 'user.note', '-v', 'hello', join(ctx, 'src', 'a', 'one.txt')]).status !== 0)
      throw new Error('setfattr failed');
  });
});

test('direct COPY layer: --chown=uid:gid, a parent with its own mode and owner, a destination without a slash', async () => {
  await same(
    `FROM ${base}\nRUN mkdir -p /opt/data && chmod 0750 /opt/data && chown 5:6 /opt/data\nCOPY --chown=1000:1001 src /opt/data/app\n`,
    true,
  );
});

test('direct COPY layer: a fresh home importing the registry cache (lazy lower layers) gives the same image', async () => {
  const ctx = await context(`FROM ${base}\nWORKDIR /app\nCOPY src/a ./a/\nRUN ls /app > /app/list\nCOPY src/ ./src/\n`);
  const cache = `type=registry,ref=${reg.host}/direct/cache:1`;
  await build(ctx, false, ['--cache-to', `${cache},mode=max`]);
  // a change only the last COPY reads: every other step is a cache hit
  await writeFile(join(ctx, 'src', 'empty.txt'), 'changed\n');
  await utimes(join(ctx, 'src', 'empty.txt'), OLD, OLD);
  const normalHome = join(work, `home${++n}`);
  const normal = await build(ctx, false, ['--cache-from', cache], normalHome);
  const ephHome = join(work, `home${++n}`);
  const eph = await build(ctx, true, ['--cache-from', cache, '--cache-to', `${cache},mode=max`], ephHome);
  assert.equal(normal.direct, false);
  assert.equal(eph.direct, true);
  assert.equal(eph.digest, normal.digest);
  // no snapshot was prepared: overlay was never probed (the probe's success marker is missing)
  assert.equal(existsSync(join(normalHome, 'overlay-ok')), true);
  assert.equal(existsSync(join(ephHome, 'overlay-ok')), false);
});

test('direct COPY layer: not taken where it is not certain, and the image is the same', async () => {
  // a hard link in the source
  await same(`FROM ${base}\nCOPY src/ /app/\n`, false, (ctx) =>
    link(join(ctx, 'src', 'run.sh'), join(ctx, 'src', 'again.sh')),
  );
  // a .dockerignore'd file below the source
  await same(`FROM ${base}\nCOPY src/ /app/\n`, false, (ctx) => writeFile(join(ctx, '.dockerignore'), 'src/a/deep\n'));
  // a file capability
  if (spawnSync('setcap', ['--help']).status !== null) {
    await same(`FROM ${base}\nCOPY src/ /app/\n`, false, async (ctx) => {
      const r = spawnSync('setcap', ['cap_net_bind_service=+ep', join(ctx, 'src', 'run.sh')]);
      if (r.status !== 0) throw new Error(`setcap: ${r.stderr}`);
    });
  }
  // the destination exists below / a parent is a symlink in the base / a --chown name
  await same(`FROM ${base}\nRUN mkdir -p /app/src && echo old > /app/src/old\nCOPY src/ /app/src/\n`, false);
  await same(`FROM ${base}\nRUN mkdir /real && ln -s /real /app\nCOPY src/ /app/src/\n`, false);
  await same(`FROM ${base}\nCOPY --chown=root:root src/ /app/\n`, false);
  // not the last step of the stage
  await same(`FROM ${base}\nCOPY src/ /app/\nRUN ls -R /app > /list\n`, false);
});

test('direct COPY layer, rootless (as kilntest, in its user namespace): the image of a root build without it', async () => {
  const { uid, gid } = ensureRootlessUser();
  const dir = await rootlessTempDir('kiln-direct-rl-');
  try {
    const ctx = await context(
      `FROM ${base}\nRUN mkdir -p /opt/data && chmod 0750 /opt/data && chown 5:6 /opt/data\nWORKDIR /opt/data\nCOPY src/ ./app/\n`,
      undefined,
      join(dir, 'ctx'),
    );
    assert.equal(spawnSync('chown', ['-R', `${uid}:${gid}`, ctx]).status, 0);
    const normal = await build(ctx, false);
    const home = join(dir, 'home');
    await mkdir(home);
    await chown(home, uid, gid);
    const eph = await build(ctx, true, [], home, true);
    assert.equal(eph.direct, true);
    assert.equal(eph.digest, normal.digest);
  } finally {
    // the home's layer dirs hold files owned by mapped ids: removed as root
    await rm(dir, { recursive: true, force: true });
  }
});

test('direct COPY layer at the restricted level (a build pod default; the emulated restricted container): the snapshot path image', async () => {
  const { uid, gid } = ensureRootlessUser();
  const dir = await rootlessTempDir('kiln-direct-rs-');
  try {
    const ctx = await context(
      `FROM ${base}\nRUN mkdir -p /opt/data && chmod 0750 /opt/data && chown 5:6 /opt/data\nWORKDIR /opt/data\nCOPY --chown=1000:1001 src/ ./app/\n`,
      undefined,
      join(dir, 'ctx'),
    );
    assert.equal(spawnSync('chown', ['-R', `${uid}:${gid}`, ctx]).status, 0);
    const restricted = async (ephemeral: boolean): Promise<Result> => {
      const home = join(dir, `home${++n}`);
      await mkdir(home);
      await chown(home, uid, gid);
      const tag = `${reg.host}/direct/r:${n}`;
      const r = await kilnRestricted(
        [
          'build',
          '--isolation',
          'restricted',
          '--progress',
          'plain',
          '--insecure-registry',
          reg.host,
          '-t',
          tag,
          '--push',
          ctx,
        ],
        {
          home,
          env: { SOURCE_DATE_EPOCH: EPOCH, KILN_DEBUG: '1', ...(ephemeral ? { KILN_EPHEMERAL_HOME: '1' } : {}) },
        },
      );
      assert.equal(r.code, 0, r.stderr.slice(-3000));
      const m = /built (sha256:[0-9a-f]{64})/.exec(r.stderr);
      assert.ok(m, r.stderr.slice(-2000));
      return { digest: m[1] as string, direct: /\(no snapshot\)/.test(r.stderr) };
    };
    const normal = await restricted(false);
    const eph = await restricted(true);
    assert.equal(normal.direct, false);
    assert.equal(eph.direct, true, 'the restricted level takes the shortcut too');
    assert.equal(eph.digest, normal.digest);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
