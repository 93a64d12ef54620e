/**
 * `kiln build` end to end as root: real Dockerfiles over a busybox base pushed to a real registry
 * (docker-registry), RUN steps in the namespace sandbox, pushes checked with skopeo and unpacked with umoci;
 * rebuilds (all CACHED, same digest), --no-cache (same digest with SOURCE_DATE_EPOCH), failure one-liners,
 * interrupts (nothing pushed, nothing left behind), outputs, and the image run by a real dockerd.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile, readFile, readlink, stat, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KILN_FROM_SOURCE, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { push } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import { kiln, mountsUnder, tmpLeftovers, cachedCount } from './build-helpers.js';

let reg: TestRegistry;
let work: string;
let home: string;
let ctx: string;
const EPOCH = '1700000000';

function skopeo(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync('skopeo', args, { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

interface ConfigJSON {
  created?: string;
  config: Record<string, unknown>;
  history: { created?: string; created_by?: string; empty_layer?: boolean; comment?: string }[];
  rootfs: { diff_ids: string[] };
}

function inspectConfig(ref: string): ConfigJSON {
  const r = skopeo(['inspect', '--tls-verify=false', '--config', `docker://${ref}`]);
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out) as ConfigJSON;
}

function rawManifest(ref: string): { mediaType: string; layers: { digest: string }[] } {
  const r = skopeo(['inspect', '--tls-verify=false', '--raw', `docker://${ref}`]);
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out) as { mediaType: string; layers: { digest: string }[] };
}

const APP_DOCKERFILE = (host: string): string => `FROM ${host}/base/busybox:1 AS build
ARG MSG=hi
RUN mkdir /out && echo "$MSG" > /out/msg && ln -s msg /out/link

FROM ${host}/base/busybox:1 AS unused
RUN echo this stage must never run && false

FROM ${host}/base/busybox:1
ENV APP=/app
WORKDIR /app
COPY hello.txt ./
COPY --from=build /out/ ./out/
RUN chown -R 1000:1000 /app && rm /etc/group && echo step-ran
LABEL a=b
EXPOSE 8080
USER app
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/hello.txt"]
`;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'kiln-build-it-'));
  home = join(work, 'home');
  ctx = join(work, 'ctx');
  await mkdir(ctx, { recursive: true });
  reg = await startRegistry();
  // like real distro images, the base has the dirs the RUN sandbox mounts over
  const base = await makeBusyboxImage({
    kind: 'docker',
    extraFiles: ['dev', 'proc', 'sys'].map((p) => ({ path: p, type: 'directory' as const, mode: 0o755 })),
  });
  const opts = { insecureRegistries: [reg.host] };
  await push(base, `${reg.host}/base/busybox:1`, opts);
  await closeTransports(opts);
  await writeFile(join(ctx, 'hello.txt'), 'hello from the context\n');
  await writeFile(join(ctx, 'Dockerfile'), APP_DOCKERFILE(reg.host));
});

after(async () => {
  await reg?.stop();
  await rm(work, { recursive: true, force: true });
});

function buildArgs(tag: string, extra: string[] = [], dir = ctx): string[] {
  return [
    'build',
    '--progress',
    'plain',
    '--insecure-registry',
    reg.host,
    '-t',
    `${reg.host}/${tag}`,
    '--push',
    ...extra,
    dir,
  ];
}

describe('kiln build (root, registry)', () => {
  let firstDigest = '';

  test('build + push: config, history, layers and files as BuildKit makes them', async () => {
    const md = join(work, 'md1.json');
    const iid = join(work, 'iid1');
    const r = await kiln(buildArgs('app:v1', ['--metadata-file', md, '--iidfile', iid]), {
      home,
      env: { SOURCE_DATE_EPOCH: EPOCH },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /this stage must never run/);
    assert.match(r.stderr, /^#\d+ \d+\.\d{3} step-ran$/m, 'RUN output is streamed with the vertex prefix');
    const meta = JSON.parse(await readFile(md, 'utf8')) as Record<string, string>;
    firstDigest = meta['containerimage.digest'] as string;
    assert.match(firstDigest, /^sha256:[a-f0-9]{64}$/);
    assert.equal(meta['image.name'], `${reg.host}/app:v1`);
    assert.equal(await readFile(iid, 'utf8'), meta['containerimage.config.digest']);

    const m = rawManifest(`${reg.host}/app:v1`);
    assert.equal(m.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    const digest = skopeo(['inspect', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${reg.host}/app:v1`]);
    assert.equal(digest.out.trim(), firstDigest);

    const cfg = inspectConfig(`${reg.host}/app:v1`);
    assert.deepEqual(cfg.config, {
      User: 'app',
      ExposedPorts: { '8080/tcp': {} },
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'APP=/app'],
      Entrypoint: ['/bin/sh', '-c'],
      Cmd: ['cat /app/hello.txt'],
      WorkingDir: '/app',
      Labels: { a: 'b' },
      ArgsEscaped: true,
    });
    const ours = cfg.history.slice(1);
    assert.deepEqual(
      ours.map((h) => [h.created_by, h.empty_layer === true]),
      [
        ['ENV APP=/app', true],
        ['WORKDIR /app', false],
        ['COPY hello.txt ./ # buildkit', false],
        ['COPY /out/ ./out/ # buildkit', false],
        ['RUN /bin/sh -c chown -R 1000:1000 /app && rm /etc/group && echo step-ran # buildkit', false],
        ['LABEL a=b', true],
        ['EXPOSE 8080/tcp', true], // current BuildKit's rendering (kiln's default history style)
        ['USER app', true],
        ['ENTRYPOINT ["/bin/sh" "-c"]', true],
        ['CMD ["cat /app/hello.txt"]', true],
      ],
    );
    assert.ok(ours.every((h) => h.comment === 'buildkit.dockerfile.v0'));
    assert.ok(
      ours.every((h) => h.created === '2023-11-14T22:13:20Z'),
      JSON.stringify(ours),
    );
    assert.equal(cfg.created, '2023-11-14T22:13:20Z');
    assert.equal(cfg.history[0]?.created, '2024-01-01T00:00:00Z', 'base history keeps its times');
    assert.equal(cfg.rootfs.diff_ids.length, 5);
    assert.equal(m.layers.length, 5);

    // unpack with independent tools and look at the files
    const layout = join(work, 'layout');
    const cp = skopeo(['copy', '--src-tls-verify=false', `docker://${reg.host}/app:v1`, `oci:${layout}:v1`]);
    assert.equal(cp.code, 0, cp.err);
    const bundle = join(work, 'bundle');
    const u = spawnSync('umoci', ['unpack', '--image', `${layout}:v1`, bundle], { encoding: 'utf8' });
    assert.equal(u.status, 0, u.stderr);
    const rootfs = join(bundle, 'rootfs');
    assert.equal(await readFile(join(rootfs, 'app/hello.txt'), 'utf8'), 'hello from the context\n');
    assert.equal(await readFile(join(rootfs, 'app/out/msg'), 'utf8'), 'hi\n');
    assert.equal(await readlink(join(rootfs, 'app/out/link')), 'msg');
    assert.equal((await stat(join(rootfs, 'app/hello.txt'))).uid, 1000);
    await assert.rejects(stat(join(rootfs, 'etc/group')), 'the deleted file is whited out');
    assert.ok((await stat(join(rootfs, 'etc/passwd'))).isFile());
    // nothing the sandbox provided leaked into the layers
    for (const p of ['etc/hosts', 'etc/resolv.conf', 'etc/hostname']) {
      await assert.rejects(stat(join(rootfs, p)), `${p} is not in the image`);
    }
    assert.deepEqual(await mountsUnder(home), []);
    assert.deepEqual(await tmpLeftovers(home), []);
  });

  test('rebuild: every step CACHED, same digest; --no-cache reruns and reproduces it', async () => {
    const md = join(work, 'md2.json');
    const r = await kiln(buildArgs('app:v2', ['--metadata-file', md]), { home, env: { SOURCE_DATE_EPOCH: EPOCH } });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(cachedCount(r.stderr), 5, r.stderr);
    assert.doesNotMatch(r.stderr, /^#\d+ [\d.]+ step-ran$/m);
    const meta = JSON.parse(await readFile(md, 'utf8')) as Record<string, string>;
    assert.equal(meta['containerimage.digest'], firstDigest);

    const md3 = join(work, 'md3.json');
    const nc = await kiln(buildArgs('app:v3', ['--metadata-file', md3, '--no-cache']), {
      home,
      env: { SOURCE_DATE_EPOCH: EPOCH },
    });
    assert.equal(nc.code, 0, nc.stderr);
    assert.equal(cachedCount(nc.stderr), 0);
    assert.match(nc.stderr, /^#\d+ [\d.]+ step-ran$/m);
    const meta3 = JSON.parse(await readFile(md3, 'utf8')) as Record<string, string>;
    assert.equal(meta3['containerimage.digest'], firstDigest, 'SOURCE_DATE_EPOCH builds are reproducible');
  });

  test('a changed build arg invalidates only the steps that use it', async () => {
    const r = await kiln(buildArgs('app:v4', ['--build-arg', 'MSG=other']), {
      home,
      env: { SOURCE_DATE_EPOCH: EPOCH },
    });
    assert.equal(r.code, 0, r.stderr);
    // WORKDIR and COPY hello.txt stay cached; the build-stage RUN, the COPY --from and the last RUN rerun
    assert.equal(cachedCount(r.stderr), 2, r.stderr);
    const cfg = inspectConfig(`${reg.host}/app:v4`);
    assert.notDeepEqual(cfg.rootfs.diff_ids, inspectConfig(`${reg.host}/app:v1`).rootfs.diff_ids);
  });

  test('failing RUN: one line with Dockerfile:N, command and exit code; nothing pushed or left behind', async () => {
    const bad = join(work, 'bad');
    await mkdir(bad, { recursive: true });
    await writeFile(
      join(bad, 'Dockerfile'),
      `FROM ${reg.host}/base/busybox:1\nRUN echo ok\nRUN false\nRUN echo never\n`,
    );
    const r = await kiln(
      ['build', '--progress', 'plain', '--insecure-registry', reg.host, '-t', `${reg.host}/bad:v1`, '--push', bad],
      { home },
    );
    assert.equal(r.code, 1);
    const lines = r.stderr.trim().split('\n');
    assert.equal(
      lines.at(-1),
      'kiln: Dockerfile:3: RUN false: process "/bin/sh -c false" did not complete successfully: exit code: 1',
    );
    assert.doesNotMatch(r.stderr, /at .*\.ts:\d+/, 'no stack trace without --debug');
    assert.doesNotMatch(r.stderr, /never/);
    assert.notEqual(skopeo(['inspect', '--tls-verify=false', `docker://${reg.host}/bad:v1`]).code, 0);
    assert.deepEqual(await mountsUnder(home), []);
    assert.deepEqual(await tmpLeftovers(home), []);
  });

  test('steps that change nothing give empty layers, like BuildKit, and stack fine', async () => {
    const dir = join(work, 'empty');
    await mkdir(dir, { recursive: true });
    await writeFile(
      join(dir, 'Dockerfile'),
      `FROM ${reg.host}/base/busybox:1\nRUN true\nRUN true\nWORKDIR /tmp\nRUN echo stacked-ok\n`,
    );
    const r = await kiln(
      ['build', '--progress', 'plain', '--insecure-registry', reg.host, '-t', `${reg.host}/empty:v1`, '--push', dir],
      { home },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^#\d+ [\d.]+ stacked-ok$/m);
    const cfg = inspectConfig(`${reg.host}/empty:v1`);
    const empty = 'sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef';
    assert.deepEqual(cfg.rootfs.diff_ids.slice(1), [empty, empty, empty, empty]);
    assert.equal(cfg.history.at(-2)?.created_by, 'WORKDIR /tmp');
    assert.equal(cfg.history.at(-2)?.empty_layer, undefined);
  });

  test('secrets, cache mounts, --network none and WORKDIR owned by USER', async () => {
    const dir = join(work, 'features');
    await mkdir(dir, { recursive: true });
    const secretFile = join(work, 'token.txt');
    await writeFile(secretFile, 'S3CRET-VALUE');
    await writeFile(
      join(dir, 'Dockerfile'),
      [
        `FROM ${reg.host}/base/busybox:1`,
        'RUN --mount=type=secret,id=tok test "$(cut -c1-3 /run/secrets/tok)" = S3C && echo secret-file-ok',
        'RUN --mount=type=secret,id=tok,env=TOKEN test "${#TOKEN}" = 12 && echo secret-env-ok',
        'RUN --mount=type=cache,target=/var/cache/x echo run >> /var/cache/x/log && wc -l < /var/cache/x/log',
        'RUN --network=none sh -c "cat /sys/class/net/*/operstate 2>/dev/null | sort | tr -d \\n; echo; ls /sys/class/net"',
        'USER app',
        'WORKDIR /work/deep',
        '',
      ].join('\n'),
    );
    const r = await kiln(
      [
        'build',
        '--progress',
        'plain',
        '--insecure-registry',
        reg.host,
        '--secret',
        `id=tok,src=${secretFile}`,
        '-t',
        `${reg.host}/features:v1`,
        '--push',
        dir,
      ],
      { home },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /secret-file-ok/);
    assert.match(r.stderr, /secret-env-ok/);
    assert.match(r.stderr, /^#\d+ [\d.]+ lo$/m, 'only loopback with --network=none');
    const cfg = inspectConfig(`${reg.host}/features:v1`);
    assert.doesNotMatch(JSON.stringify(cfg), /S3CRET-VALUE/);
    assert.doesNotMatch(r.stderr, /S3CRET-VALUE/);
    const layout = join(work, 'features-layout');
    assert.equal(
      skopeo(['copy', '--src-tls-verify=false', `docker://${reg.host}/features:v1`, `oci:${layout}:v1`]).code,
      0,
    );
    const bundle = join(work, 'features-bundle');
    const u = spawnSync('umoci', ['unpack', '--image', `${layout}:v1`, bundle], { encoding: 'utf8' });
    assert.equal(u.status, 0, u.stderr);
    const rootfs = join(bundle, 'rootfs');
    await assert.rejects(stat(join(rootfs, 'run/secrets/tok')), 'no secret file in the image');
    await assert.rejects(stat(join(rootfs, 'var/cache/x/log')), 'cache mount content is not in the image');
    const wd = await stat(join(rootfs, 'work/deep'));
    assert.deepEqual([wd.uid, wd.gid], [1000, 1000]);
    // the cache mount persists across builds
    const again = await kiln(
      ['build', '--progress', 'plain', '--no-cache', '--secret', `id=tok,src=${secretFile}`, dir],
      { home },
    );
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /^#\d+ [\d.]+ 2$/m);
  });

  test('--cache-to / --cache-from: a fresh KILN_HOME reuses the registry cache', async () => {
    const cacheRef = `${reg.host}/cache/app:buildcache`;
    const first = await kiln(buildArgs('cached-app:v1', ['--cache-to', `type=registry,ref=${cacheRef},mode=max`]), {
      home,
      env: { SOURCE_DATE_EPOCH: EPOCH },
    });
    assert.equal(first.code, 0, first.stderr);
    assert.equal(skopeo(['inspect', '--tls-verify=false', '--raw', `docker://${cacheRef}`]).code, 0);
    const fresh = join(work, 'fresh-home');
    const second = await kiln(buildArgs('cached-app:v2', ['--cache-from', cacheRef]), {
      home: fresh,
      env: { SOURCE_DATE_EPOCH: EPOCH },
    });
    assert.equal(second.code, 0, second.stderr);
    assert.equal(cachedCount(second.stderr), 5, second.stderr);
    assert.doesNotMatch(second.stderr, /^#\d+ [\d.]+ step-ran$/m);
    const d = (t: string): string =>
      skopeo(['inspect', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${reg.host}/${t}`]).out.trim();
    assert.equal(d('cached-app:v2'), d('cached-app:v1'));
  });

  test("a COPY of 1,200 files in a fresh KILN_HOME (new files copied on both threads) pushes the warm build's image", async () => {
    const many = join(work, 'many');
    for (let d = 0; d < 6; d++) {
      await mkdir(join(many, 'src', `d${d}`, 'sub'), { recursive: true });
      for (let i = 0; i < 200; i++) {
        const f = join(many, 'src', `d${d}`, i % 4 ? `f${i}.js` : `sub/f${i}.js`);
        await writeFile(f, `export const v${i} = ${d * 1000 + i};\n`.repeat(1 + (i % 9)), {
          mode: i % 5 ? 0o644 : 0o755,
        });
      }
    }
    await writeFile(join(many, 'Dockerfile'), `FROM ${reg.host}/base/busybox:1\nWORKDIR /app\nCOPY src/ ./src/\n`);
    const args = (tag: string, extra: string[]): string[] => buildArgs(tag, extra, many);
    const warmHome = join(work, 'many-home');
    const cacheRef = `${reg.host}/cache/many:1`;
    const env = { SOURCE_DATE_EPOCH: EPOCH, KILN_DEBUG: '1' };
    const cold = await kiln(args('many:v1', ['--cache-to', `type=registry,ref=${cacheRef},mode=max`]), {
      home: warmHome,
      env,
    });
    assert.equal(cold.code, 0, cold.stderr);
    await writeFile(join(many, 'src', 'd3', 'f7.js'), 'export const v7 = "changed";\n');
    const warm = await kiln(args('many:warm', []), { home: warmHome, env });
    assert.equal(warm.code, 0, warm.stderr);
    const fresh = await kiln(args('many:fresh', ['--cache-from', cacheRef]), { home: join(work, 'many-fresh'), env });
    assert.equal(fresh.code, 0, fresh.stderr);
    assert.equal(cachedCount(fresh.stderr), 1, 'WORKDIR from the registry cache, the COPY ran');
    if (KILN_FROM_SOURCE === '0') {
      // the compiled CLI has the worker thread: it took some of the 1,200 new files
      assert.match(fresh.stderr, /copy: [1-9]\d* of 1200 new files on the worker/);
    }
    const d = (t: string): string =>
      skopeo(['inspect', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${reg.host}/${t}`]).out.trim();
    assert.match(d('many:fresh'), /^sha256:/);
    assert.equal(d('many:fresh'), d('many:warm'), 'same image from a fresh and from a warm KILN_HOME');
    assert.notEqual(d('many:fresh'), d('many:v1'));
  });

  test('COPY of a missing source names it', async () => {
    const bad = join(work, 'badcopy');
    await mkdir(bad, { recursive: true });
    await writeFile(join(bad, 'Dockerfile'), `FROM ${reg.host}/base/busybox:1\nCOPY nothere.txt /x\n`);
    const r = await kiln(['build', '--progress', 'plain', '--insecure-registry', reg.host, bad], { home });
    assert.equal(r.code, 1);
    const last = r.stderr
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('kiln:'));
    assert.equal(last.length, 1, r.stderr);
    assert.match(last[0] as string, /^kiln: Dockerfile:2: .*nothere\.txt/);
  });

  test('missing base image: one line naming the registry', async () => {
    const bad = join(work, 'nobase');
    await mkdir(bad, { recursive: true });
    await writeFile(join(bad, 'Dockerfile'), `FROM ${reg.host}/does/not-exist:1\nRUN true\n`);
    const r = await kiln(['build', '--progress', 'plain', '--insecure-registry', reg.host, bad], { home });
    assert.equal(r.code, 1);
    const err = r.stderr
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('kiln:'));
    assert.equal(err.length, 1, r.stderr);
    assert.match(err[0] as string, new RegExp(`^kiln: Dockerfile:1: FROM .*${reg.host.replace(/\./g, '\\.')}`));
  });

  test('SIGINT during a RUN: exit 130, nothing pushed, no mounts or temp dirs, cache still usable', async () => {
    const slow = join(work, 'slow');
    await mkdir(slow, { recursive: true });
    await writeFile(
      join(slow, 'Dockerfile'),
      `FROM ${reg.host}/base/busybox:1\nRUN echo before > /f\nRUN echo started-sleeping && sleep 60\n`,
    );
    let sent = false;
    const r = await kiln(
      ['build', '--progress', 'plain', '--insecure-registry', reg.host, '-t', `${reg.host}/slow:v1`, '--push', slow],
      {
        home,
        onStderr: (text, child) => {
          if (!sent && /started-sleeping/.test(text)) {
            sent = true;
            child.kill('SIGINT');
          }
        },
      },
    );
    assert.ok(sent, r.stderr);
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /interrupted/);
    assert.notEqual(skopeo(['inspect', '--tls-verify=false', `docker://${reg.host}/slow:v1`]).code, 0);
    assert.deepEqual(await mountsUnder(home), []);
    assert.deepEqual(await tmpLeftovers(home), []);
    // the completed step is cached, the interrupted one is not
    await writeFile(join(slow, 'Dockerfile'), `FROM ${reg.host}/base/busybox:1\nRUN echo before > /f\nRUN true\n`);
    const again = await kiln(['build', '--progress', 'plain', '--insecure-registry', reg.host, slow], { home });
    assert.equal(again.code, 0, again.stderr);
    assert.equal(cachedCount(again.stderr), 1);
  });

  test('outputs: oci layout, docker archive, local rootfs, rootfs tar', async () => {
    const out = join(work, 'outputs');
    const r = await kiln(
      [
        'build',
        '--progress',
        'plain',
        '--insecure-registry',
        reg.host,
        '-t',
        'app:out',
        '-o',
        `type=oci,dest=${join(out, 'layout')},tar=false`,
        '-o',
        `type=docker,dest=${join(out, 'image.tar')}`,
        '-o',
        `type=local,dest=${join(out, 'rootfs')}`,
        '-o',
        `type=tar,dest=${join(out, 'rootfs.tar')}`,
        ctx,
      ],
      { home, env: { SOURCE_DATE_EPOCH: EPOCH } },
    );
    assert.equal(r.code, 0, r.stderr);
    const ins = skopeo(['inspect', '--format', '{{.Digest}}', `oci:${join(out, 'layout')}:out`]);
    assert.equal(ins.code, 0, ins.err);
    const arch = skopeo(['inspect', '--config', `docker-archive:${join(out, 'image.tar')}`]);
    assert.equal(arch.code, 0, arch.err);
    assert.equal((JSON.parse(arch.out) as ConfigJSON).config.WorkingDir, '/app');
    assert.equal(await readFile(join(out, 'rootfs', 'app/out/msg'), 'utf8'), 'hi\n');
    await assert.rejects(stat(join(out, 'rootfs', 'etc/group')));
    const list = spawnSync('tar', ['-tf', join(out, 'rootfs.tar')], { encoding: 'utf8' });
    assert.equal(list.status, 0);
    assert.ok(list.stdout.split('\n').includes('app/hello.txt'), list.stdout);
    assert.ok(!list.stdout.includes('.wh.'));
    assert.ok((await readdir(join(out, 'layout', 'blobs', 'sha256'))).length >= 7);
  });
});

describe('the built image runs in dockerd', () => {
  let dockerd: Dockerd | undefined;
  after(async () => {
    await dockerd?.stop();
  });

  test('docker run prints what the image was built to print', async () => {
    dockerd = await startDockerd({ insecureRegistries: [reg.host] });
    const out = await dockerd.runImage(`${reg.host}/app:v1`);
    assert.equal(out, 'hello from the context\n');
    const who = await dockerd.runImage(`${reg.host}/app:v1`, ['id -u; cat /app/out/msg; echo $APP; pwd']);
    assert.equal(who, '1000\nhi\n/app\n/app\n');
  });
});
