/**
 * `kiln build` as the ordinary user kilntest (rootless: the whole build runs in one user namespace with the
 * /etc/subuid range mapped): the example app over a bootstrapped busybox base, RUN steps that chown to image
 * uids, a failing step, and the same build as root — with SOURCE_DATE_EPOCH both produce the identical image.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chown, cp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureRootlessUser, rootlessTempDir } from '../helpers/rootless.js';
import { REPO, kiln, mountsUnder, tmpLeftovers, cachedCount } from './build-helpers.js';

let dir: string;
let rlHome: string;
let rootHome: string;
let ctx: string;
const EPOCH = '1700000000';

const DOCKERFILE = `FROM localhost/busybox:latest AS build
RUN mkdir -p /out && echo data > /out/file && chown -R 1000:50 /out && chmod 0640 /out/file

FROM localhost/busybox:latest
COPY --from=build /out /srv
RUN touch /srv/extra && chown 65534:65534 /srv/extra && rm /etc/group && echo uid=$(id -u)
USER app
CMD ["cat", "/srv/file"]
`;

before(async () => {
  const { uid, gid } = ensureRootlessUser();
  dir = await rootlessTempDir('kiln-build-rootless-');
  rlHome = join(dir, 'home');
  rootHome = join(dir, 'root-home');
  ctx = join(dir, 'ctx');
  await mkdir(ctx);
  await writeFile(join(ctx, 'Dockerfile'), DOCKERFILE);
  await cp(join(REPO, 'examples', 'hello'), join(dir, 'hello'), { recursive: true });
  for (const p of [ctx, join(ctx, 'Dockerfile')]) await chown(p, uid, gid);
  spawnSync('chown', ['-R', `${uid}:${gid}`, join(dir, 'hello')]);
  for (const [home, rootless] of [
    [rlHome, true],
    [rootHome, false],
  ] as const) {
    const r = await kiln(['bootstrap', 'busybox'], { home, rootless });
    assert.equal(r.code, 0, r.stderr);
  }
});

after(async () => {
  // layer dirs hold files owned by mapped ids: remove as root
  await rm(dir, { recursive: true, force: true });
});

async function layoutDigest(layout: string): Promise<string> {
  const ix = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  assert.equal(ix.manifests.length, 1);
  return ix.manifests[0]?.digest as string;
}

describe('kiln build (rootless, as kilntest)', () => {
  test('the example app builds rootless and runs', async () => {
    const out = join(dir, 'hello-rootfs');
    const r = await kiln(
      ['build', '--progress', 'plain', '-t', 'hello:latest', '-o', `type=local,dest=${out}`, join(dir, 'hello')],
      { home: rlHome, rootless: true },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await readFile(join(out, 'app', 'greeting.txt'), 'utf8'), 'Hello from kiln!\n');
    // like buildx, a local output belongs to the user who ran the build (no subordinate ids left to clean up)
    const { uid } = ensureRootlessUser();
    assert.equal((await stat(join(out, 'home', 'app'))).uid, uid);
    assert.equal((await stat(join(out, 'app', 'greeting.txt'))).uid, uid);
    const run = spawnSync('/usr/sbin/chroot', [out, '/app/hello.sh'], { encoding: 'utf8', env: { PATH: '/bin' } });
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /^Hello from kiln!\n/);
  });

  test('rootless and root builds of the same Dockerfile are identical (SOURCE_DATE_EPOCH)', async () => {
    const rlOut = join(dir, 'rl-layout');
    const rootOut = join(dir, 'root-layout');
    const args = (out: string): string[] => [
      'build',
      '--progress',
      'plain',
      '-o',
      `type=oci,dest=${out},tar=false`,
      ctx,
    ];
    const rl = await kiln(args(rlOut), { home: rlHome, rootless: true, env: { SOURCE_DATE_EPOCH: EPOCH } });
    assert.equal(rl.code, 0, rl.stderr);
    assert.match(rl.stderr, /^#\d+ [\d.]+ uid=0$/m, 'RUN is uid 0 inside the namespace');
    const root = await kiln(args(rootOut), { home: rootHome, env: { SOURCE_DATE_EPOCH: EPOCH } });
    assert.equal(root.code, 0, root.stderr);
    assert.equal(await layoutDigest(rlOut), await layoutDigest(rootOut));

    // the image-level ownership is what the Dockerfile asked for, not the host's mapped ids
    const bundle = join(dir, 'bundle');
    const cpR = spawnSync('skopeo', ['copy', `oci:${rlOut}`, `oci:${join(dir, 'tagged')}:t`], { encoding: 'utf8' });
    assert.equal(cpR.status, 0, cpR.stderr);
    const u = spawnSync('umoci', ['unpack', '--image', `${join(dir, 'tagged')}:t`, bundle], { encoding: 'utf8' });
    assert.equal(u.status, 0, u.stderr);
    const f = await stat(join(bundle, 'rootfs', 'srv', 'file'));
    assert.equal(f.uid, 1000);
    assert.equal(f.gid, 50);
    assert.equal(f.mode & 0o777, 0o640);
    const extra = await stat(join(bundle, 'rootfs', 'srv', 'extra'));
    assert.equal(extra.uid, 65534);
    await assert.rejects(stat(join(bundle, 'rootfs', 'etc', 'group')));
  });

  test('rebuild is cached; a failing RUN is one line and leaves nothing behind', async () => {
    const again = await kiln(['build', '--progress', 'plain', ctx], {
      home: rlHome,
      rootless: true,
      env: { SOURCE_DATE_EPOCH: EPOCH },
    });
    assert.equal(again.code, 0, again.stderr);
    assert.equal(cachedCount(again.stderr), 3, again.stderr);

    await writeFile(join(ctx, 'Dockerfile'), 'FROM localhost/busybox:latest\nRUN exit 7\n');
    const bad = await kiln(['build', '--progress', 'plain', ctx], { home: rlHome, rootless: true });
    assert.equal(bad.code, 1);
    assert.equal(
      bad.stderr.trim().split('\n').at(-1),
      'kiln: Dockerfile:2: RUN exit 7: process "/bin/sh -c exit 7" did not complete successfully: exit code: 7',
    );
    assert.deepEqual(await mountsUnder(rlHome), []);
    assert.deepEqual(await tmpLeftovers(rlHome), []);
    await writeFile(join(ctx, 'Dockerfile'), DOCKERFILE);
  });

  test('Ctrl-C (SIGINT to kiln) interrupts a rootless build: exit 130, nothing left behind', async () => {
    const slow = join(dir, 'slow');
    await mkdir(slow);
    await writeFile(join(slow, 'Dockerfile'), 'FROM localhost/busybox:latest\nRUN echo started-sleeping && sleep 60\n');
    spawnSync('chown', ['-R', 'kilntest', slow]);
    let sent = false;
    const r = await kiln(['build', '--progress', 'plain', slow], {
      home: rlHome,
      rootless: true,
      onStderr: (text, child) => {
        if (sent || !/started-sleeping/.test(text) || child.pid === undefined) return;
        sent = true;
        // runuser does not forward signals; a terminal's Ctrl-C reaches kiln through the process group. Signal
        // the kiln process (runuser -> env -> node) the way the terminal would.
        let pid = child.pid;
        for (let i = 0; i < 3; i++) {
          const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/);
          if (!kids[0]) break;
          pid = Number(kids[0]);
          if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'node') break;
        }
        process.kill(pid, 'SIGINT');
      },
    });
    assert.ok(sent, r.stderr);
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /kiln: build interrupted/);
    assert.deepEqual(await mountsUnder(rlHome), []);
    assert.deepEqual(await tmpLeftovers(rlHome), []);
  });
});
