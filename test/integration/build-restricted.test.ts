/**
 * `kiln build --isolation restricted` in the emulated Pod Security Standards `restricted` container (kilntest, no
 * capabilities, no_new_privs, containerd's RuntimeDefault seccomp profile: scripts/restricted-run.sh) against the
 * same build with the userns level (kilntest, rootless, subordinate ids): with SOURCE_DATE_EPOCH the two must
 * write the same layers — file lists, owners, modes (setuid/setgid/sticky), contents, symlinks, hard links, fifos,
 * whiteouts and opaque directories — for busybox Dockerfiles that chown, chmod, link, delete base files, add a
 * user, run steps as that user (permission checks included), COPY with --chown/--chmod and --from, and use cache,
 * secret, bind and tmpfs mounts; and for a debootstrap Debian base where `apt-get install` fetches a real package
 * from the Debian mirror, `setcap` sets a file capability and `useradd` + `chown` run (time-dependent files'
 * contents aside). What the level cannot provide fails with one line.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureRootlessUser } from '../helpers/rootless.js';
import { REPO, kilnRestricted, layerDifferences, ociLayers } from '../helpers/restricted.js';
import { kiln } from './build-helpers.js';
import { LocalStore } from '../../src/oci/store.js';
import { imageFromParts, layerFromUncompressed } from '../../src/oci/image.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { hostPlatform } from '../../src/oci/platform.js';

const EPOCH = '1700000000';
let dir: string;
let homeU: string;
let homeR: string;

async function own(...paths: string[]): Promise<void> {
  const { uid, gid } = ensureRootlessUser();
  for (const p of paths) await chown(p, uid, gid);
}

before(async () => {
  ensureRootlessUser();
  dir = await mkdtemp(join(tmpdir(), 'kiln-build-restricted-'));
  await chmod(dir, 0o755);
  homeU = join(dir, 'home-userns');
  homeR = join(dir, 'home-restricted');
  await mkdir(homeU);
  await mkdir(homeR);
  await own(dir, homeU, homeR);
  const u = await kiln(['bootstrap', 'busybox'], { home: homeU, rootless: true });
  assert.equal(u.code, 0, u.stderr);
  const r = await kilnRestricted(['bootstrap', 'busybox'], { home: homeR });
  assert.equal(r.code, 0, r.stderr);
});

after(async () => {
  // userns layer dirs hold files owned by subordinate ids: removed as root
  await rm(dir, { recursive: true, force: true });
});

/** Build `ctx` at both levels into OCI tars; returns their paths. */
async function buildBoth(name: string, ctx: string, extra: string[] = []): Promise<{ u: string; r: string }> {
  const u = join(dir, `${name}-userns.tar`);
  const r = join(dir, `${name}-restricted.tar`);
  const args = ['build', '--progress', 'plain', '--build-arg', `SOURCE_DATE_EPOCH=${EPOCH}`, ...extra];
  const a = await kiln([...args, '-o', `type=oci,dest=${u}`, ctx], { home: homeU, rootless: true });
  assert.equal(a.code, 0, `userns build of ${name} failed:\n${a.stderr}`);
  const b = await kilnRestricted([...args, '--isolation', 'restricted', '-o', `type=oci,dest=${r}`, ctx], {
    home: homeR,
  });
  assert.equal(b.code, 0, `restricted build of ${name} failed:\n${b.stderr}`);
  return { u, r };
}

const BUSYBOX_DOCKERFILE = `FROM localhost/busybox:latest AS base
RUN echo hello > /hello \\
 && mkdir -p /app && touch /app/f && chown 1000:1000 /app/f && chmod 4755 /app/f \\
 && ln -s /app/f /app/l && chown -h 5:6 /app/l && ln /app/f /app/h \\
 && mkfifo /app/p && chown 7:8 /app/p && chmod 0640 /app/p \\
 && rm /etc/group /usr/bin/env && rm -rf /tmp && mkdir -m 1777 /tmp \\
 && echo 'bob:x:2000:2000::/home/bob:/bin/sh' >> /etc/passwd && echo 'bob:x:2000:' > /etc/group \\
 && mkdir -p /home/bob && chown bob:bob /home/bob && chmod 0750 /home/bob \\
 && mkdir /x.new && touch /x.new/f && mv /x.new /x && chown :2000 /x && chmod 2775 /x \\
 && mkdir -p /rel/sub && ln -s /rel/sub /rel/via && cd /rel && echo a > sub/a && cd via && echo b > b \\
 && echo c > ../c && (umask 002 && echo u > /rel/u) && echo more >> /hello && echo n > /dev/null \\
 && mkfifo /rel/q && { cat /rel/q > /rel/from-fifo & } && echo through-fifo > /rel/q && wait && cd /
COPY --chown=1000:1000 a.txt /app/a.txt
COPY --chmod=0600 a.txt /app/b.txt
WORKDIR /w
USER bob
RUN echo mine > /home/bob/mine && mkdir /home/bob/d && ln -s mine /home/bob/lnk && touch /x/inherits-gid \\
 && (echo no > /etc/passwd || echo denied >> /home/bob/log) && (touch /root/nope || echo denied >> /home/bob/log)
USER root
RUN --mount=type=cache,target=/cache,uid=2000 --mount=type=secret,id=s,target=/run/s \\
    --mount=type=bind,source=data,target=/data --mount=type=tmpfs,target=/scratch \\
    cat /run/s > /secret-copy && ls /data > /data-list && echo x > /scratch/t && touch /cache/c \\
 && stat -c '%u:%g %a %n' /cache /cache/c > /cache-list && (echo y > /data/new || echo ro > /bind-readonly) \\
 && rm -rf /app/h /etc/passwd- && mkdir /etc/new && chmod 0000 /hello
FROM localhost/busybox:latest
COPY --from=base /app /copied
COPY --from=base /home/bob /bobhome
RUN stat -c '%u:%g %a %h %n' /copied/* /bobhome/* > /copied.txt
`;

describe('kiln build --isolation restricted (emulated restricted pod) vs userns', () => {
  test('busybox: owners, modes, links, fifos, whiteouts, opaque dirs, USER, COPY and mounts give the same layers', async () => {
    const ctx = join(dir, 'busybox');
    await mkdir(join(ctx, 'data'), { recursive: true });
    await writeFile(join(ctx, 'Dockerfile'), BUSYBOX_DOCKERFILE);
    await writeFile(join(ctx, 'a.txt'), 'a\n');
    await writeFile(join(ctx, 'data', 'd1'), 'd1\n');
    const secret = join(dir, 'secret.txt');
    await writeFile(secret, 's3cret\n');
    await own(ctx, join(ctx, 'data'), join(ctx, 'Dockerfile'), join(ctx, 'a.txt'), join(ctx, 'data', 'd1'), secret);
    const secretArg = ['--secret', `id=s,src=${secret}`];
    // the first stage, then the whole build (its first stage cached)
    const { u, r } = await buildBoth('busybox-base', ctx, [...secretArg, '--target', 'base']);
    const [a, b] = await Promise.all([ociLayers(u), ociLayers(r)]);
    assert.deepEqual(layerDifferences(a, b), []);
    // the same bytes: the layers are identical, not just alike
    assert.deepEqual(b.diffIDs, a.diffIDs);
    const final = await buildBoth('busybox', ctx, secretArg);
    const [fa, fb] = await Promise.all([ociLayers(final.u), ociLayers(final.r)]);
    assert.deepEqual(layerDifferences(fa, fb), []);
    assert.deepEqual(fb.diffIDs, fa.diffIDs);
    assert.ok((fb.layers[1] as Map<string, unknown>).has('copied/f'), 'COPY --from the first stage');
    // and they hold what the Dockerfile asked for (so "equal" is not "equally empty")
    const first = b.layers[1] as Map<string, { uid: number; gid: number; mode: string; type: string; sha256?: string }>;
    assert.deepEqual(
      [first.get('app/f')?.uid, first.get('app/f')?.gid, first.get('app/f')?.mode],
      [1000, 1000, '4755'],
    );
    assert.equal(first.get('app/h')?.type, 'link');
    assert.deepEqual([first.get('app/l')?.uid, first.get('app/l')?.gid], [5, 6]);
    assert.deepEqual([first.get('app/p')?.type, first.get('app/p')?.uid, first.get('app/p')?.mode], ['fifo', 7, '640']);
    assert.ok(first.has('usr/bin/.wh.env'), 'the base file removed is a whiteout');
    assert.ok(first.has('tmp/.wh..wh..opq'), 'a base dir removed and made again is opaque');
    assert.ok(first.has('x/.wh..wh..opq'), 'a dir renamed into place is opaque, as overlay makes it');
    assert.equal(first.get('x')?.mode, '2775');
    // opens for writing the helper performs itself under kiln's proot (relative to a `cd` through a symlink, the
    // step's umask, a FIFO whose writer waits for its reader)
    assert.ok(first.has('rel/sub/a') && first.has('rel/sub/b') && first.has('rel/c'), 'relative paths after cd');
    assert.equal(first.get('rel/u')?.mode, '664', 'umask 002');
    assert.equal(
      first.get('rel/from-fifo')?.sha256,
      createHash('sha256').update('through-fifo\n').digest('hex').slice(0, 16),
    );
    const userStep = b.layers[5] as Map<string, { uid: number; gid: number; type: string }>;
    assert.deepEqual([userStep.get('home/bob/mine')?.uid, userStep.get('home/bob/lnk')?.uid], [2000, 2000]);
    assert.equal(userStep.get('x/inherits-gid')?.gid, 2000, 'setgid directory passes its group on');
    assert.equal(userStep.has('etc/passwd'), false, 'bob may not write /etc/passwd');
    const mounts = b.layers[6] as Map<string, { sha256?: string; type: string }>;
    assert.ok(mounts.has('secret-copy') && mounts.has('bind-readonly') && mounts.has('cache-list'));
    assert.equal(mounts.has('scratch/t'), false, 'tmpfs content is not in the layer');
    assert.equal(mounts.has('data/new'), false, 'a read-only bind refuses writes');
  });

  test("kiln's proot (seccomp mode, marked calls) and Debian's proot 5.1 (the fallback) give the same layers", async () => {
    const ctx = join(dir, 'busybox');
    const secret = join(dir, 'secret.txt');
    const args = ['build', '--progress', 'plain', '--build-arg', `SOURCE_DATE_EPOCH=${EPOCH}`, '--no-cache'];
    const more = ['--secret', `id=s,src=${secret}`, '--target', 'base', '--isolation', 'restricted'];
    const out: Record<string, Awaited<ReturnType<typeof ociLayers>>> = {};
    const probes: Record<string, string> = {};
    for (const [name, proot] of [
      ['kiln', '/usr/local/bin/kiln-proot'],
      ['debian', '/usr/bin/proot'],
    ] as const) {
      const tar = join(dir, `proot-${name}.tar`);
      const r = await kilnRestricted([...args, ...more, '-o', `type=oci,dest=${tar}`, ctx], {
        home: homeR,
        env: { KILN_PROOT: proot },
      });
      assert.equal(r.code, 0, `the build with ${proot} failed:\n${r.stderr}`);
      out[name] = await ociLayers(tar);
      probes[name] = await readFile(join(homeR, 'restricted', 'probe-ok'), 'utf8');
    }
    // what restrictedStatus found: kiln's build marks, Debian's is blind to statx and friends
    assert.match(probes.kiln ?? '', /kiln-proot .*\nmarks\ndirect\n$/);
    assert.match(probes.debian ?? '', /\/usr\/bin\/proot .*\nblind\n$/);
    const [k, d] = [out.kiln, out.debian];
    assert.ok(k && d);
    assert.deepEqual(layerDifferences(k, d), []);
    assert.deepEqual(k.diffIDs, d.diffIDs);
    assert.deepEqual((k.layers[1] as Map<string, { uid: number }>).get('app/f')?.uid, 1000);
  });

  test('what the level cannot provide fails with one line', async () => {
    const ctx = join(dir, 'unsupported');
    await mkdir(ctx);
    await writeFile(join(ctx, 'Dockerfile'), 'FROM localhost/busybox:latest\nRUN --network=none true\n');
    await own(ctx, join(ctx, 'Dockerfile'));
    const r = await kilnRestricted(['build', '--isolation', 'restricted', '--progress', 'plain', ctx], { home: homeR });
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^kiln: Dockerfile:2: .*RUN --network=none \(a network namespace\) is not available at isolation level restricted/m,
    );
    assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
  });
});

/** Files whose content depends on the time they were written. */
const TIME_DEPENDENT = [
  /^var\/log\//,
  /^var\/cache\/apt\/(src)?pkgcache\.bin$/,
  /^var\/cache\/debconf\/.*\.dat(-old)?$/,
];

describe('a debootstrap Debian base: apt-get install from the Debian mirror, useradd + chown', () => {
  before(async () => {
    const script = join(REPO, 'scripts', 'debian-rootfs.sh');
    const made = spawnSync('bash', [script], { encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);
    const tar = made.stdout.trim();
    const layer = layerFromUncompressed(async () => createReadStream(tar), { compression: 'gzip' });
    const p = hostPlatform();
    const cfg = {
      created: '2024-01-01T00:00:00Z',
      architecture: p.architecture,
      os: p.os,
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['bash'] },
      rootfs: { type: 'layers', diff_ids: [await layer.diffID()] },
      history: [{ created: '2024-01-01T00:00:00Z', created_by: 'debootstrap --variant=minbase' }],
    };
    const raw = Buffer.from(JSON.stringify(cfg));
    const image = imageFromParts({
      mediaType: async () => MediaType.OCIManifest,
      rawConfig: async () => raw,
      layers: async () => [layer],
    });
    for (const home of [homeU, homeR]) {
      const store = await LocalStore.open(home);
      await store.put(image, ['localhost/debian:bookworm']);
      spawnSync('chown', ['-R', `${ensureRootlessUser().uid}:${ensureRootlessUser().gid}`, join(home, 'store')]);
    }
  });

  test('the same owners, modes and files as the userns build', async () => {
    const ctx = join(dir, 'debian');
    await mkdir(ctx);
    await writeFile(
      join(ctx, 'Dockerfile'),
      'FROM localhost/debian:bookworm\n' +
        'RUN apt-get update && apt-get install -y --no-install-recommends hello libcap2-bin && hello ' +
        '&& setcap cap_net_raw+ep /usr/bin/hello && getcap /usr/bin/hello | grep -q cap_net_raw ' +
        '&& useradd -m -u 1234 alice && touch /home/alice/f && chown alice: /home/alice/f\n' +
        // coreutils' stat and ls use statx, which Debian's proot leaves untranslated: the helper must answer it
        // with the step's paths and the emulated owners (the outputs land in the layer, compared with userns)
        "RUN stat -c '%u:%g %a %n' /etc/shadow /usr/bin/chage /home/alice/f > /stat.txt && ls -lnA /home/alice | awk 'NR > 1 {print $1, $3, $4, $NF}' > /ls.txt " +
        '&& cd /home && test -r alice/f && stat -c %u alice/f > /rel.txt\n',
    );
    await own(ctx, join(ctx, 'Dockerfile'));
    const { u, r } = await buildBoth('debian', ctx);
    const [a, b] = await Promise.all([ociLayers(u), ociLayers(r)]);
    assert.deepEqual(
      layerDifferences(a, b, (name) => TIME_DEPENDENT.some((re) => re.test(name))),
      [],
    );
    const step = b.layers[1] as Map<string, { uid: number; gid: number; mode: string; xattrs?: string }>;
    assert.ok(step.has('usr/bin/hello'), 'the package is installed');
    assert.match(step.get('usr/bin/hello')?.xattrs ?? '', /^security\.capability=/, 'setcap lands in the layer');
    assert.deepEqual([step.get('home/alice/f')?.uid, step.get('home/alice/f')?.gid], [1234, 1234]);
    assert.equal(step.get('home/alice')?.uid, 1234);
    assert.equal(step.get('var/cache/apt/archives/partial')?.uid, 42, 'apt leaves its partial dir to _apt (42)');
    const stats = b.layers[2] as Map<string, { digest?: string }>;
    assert.ok(stats.has('stat.txt') && stats.has('ls.txt') && stats.has('rel.txt'), 'the statx step ran');
  });
});
