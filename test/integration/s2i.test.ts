/**
 * S2I end to end with real parts: builder images built by Debian's docker.io from busybox, a real
 * registry, kiln's `kiln s2i build` — compared file by file and config by config with BuildKit building the
 * Dockerfile `s2i build --as-dockerfile` writes (the real s2i v1.6, built from its Go module by scripts/s2i-tool.sh), with the assemble user and destination
 * passed explicitly. Then `docker run` of both; refusals (root assemble user under --allowed-uids, missing scripts,
 * missing builder) push nothing; an incremental build restores save-artifacts output without touching the
 * previous image in the registry.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { startBuildKit, type BuildKit } from '../helpers/buildkit.js';
import { startRegistry, runKiln, type TestRegistry } from '../helpers/registry.js';
import { compareImages, formatDifferences } from '../helpers/compare.js';
import { pushBaseImage } from '../differential/env.js';
import { run } from '../differential/exec.js';

const isRoot = process.getuid?.() === 0;
/** The real s2i (scripts/s2i-tool.sh builds it once per machine; setup runs it): a missing one fails the suite. */
function s2iBinary(): string {
  const script = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 's2i-tool.sh');
  const r = spawnSync('bash', [script], { encoding: 'utf8' });
  const m = /^s2i=(.*)$/m.exec(r.stdout);
  if (r.status !== 0 || !m) throw new Error(`scripts/s2i-tool.sh failed:\n${r.stderr.trim()}`);
  return m[1] as string;
}

const ASSEMBLE = `#!/bin/sh
set -e
echo "assemble uid=$(id -u) gid=$(id -g) pwd=$PWD mode=$APP_MODE"
mkdir -p "$HOME/app" 2>/dev/null || true
cp -Rf /DEST/src/. /opt/app/
if [ -f /DEST/artifacts/counter ]; then cp /DEST/artifacts/counter /opt/app/counter; fi
c=$(cat /opt/app/counter 2>/dev/null || echo 0); echo $((c+1)) > /opt/app/counter
cd /DEST/src && find . | sort | xargs stat -c '%n %a %u %g' > /opt/app/listing
`;
const RUN = `#!/bin/sh
echo "run mode=$APP_MODE counter=$(cat /opt/app/counter) $(cat /opt/app/hello.txt)"
`;
const SAVE = `#!/bin/sh
cd /opt/app && tar -cf - counter
`;

/** A builder image: busybox + scripts in /usr/libexec/s2i, /opt/app owned by the user, labels. */
async function builderContext(dir: string, o: { base: string; dest: string; user: string; named?: boolean }) {
  await mkdir(join(dir, 's2i'), { recursive: true });
  await writeFile(join(dir, 's2i', 'assemble'), ASSEMBLE.replace(/\/DEST/g, o.dest));
  await writeFile(join(dir, 's2i', 'run'), RUN);
  await writeFile(join(dir, 's2i', 'save-artifacts'), SAVE);
  for (const f of ['assemble', 'run', 'save-artifacts']) await chmod(join(dir, 's2i', f), 0o755);
  const lines = [`FROM ${o.base}`];
  if (o.named) lines.push("RUN echo 'fakeuser:x:431:0::/opt/app:/bin/sh' >> /etc/passwd");
  lines.push(
    `RUN mkdir -p /opt/app ${o.dest} /usr/libexec/s2i && chown ${o.user === '' ? '0' : o.user}:0 /opt/app ${o.dest}`,
    'COPY s2i/ /usr/libexec/s2i/',
    `LABEL io.openshift.s2i.scripts-url=image:///usr/libexec/s2i io.openshift.s2i.destination=${o.dest}`,
    'WORKDIR /opt/app',
  );
  if (o.user) lines.push(`USER ${o.user}`);
  await writeFile(join(dir, 'Dockerfile'), lines.join('\n') + '\n');
}

async function appSource(dir: string): Promise<void> {
  await mkdir(join(dir, '.s2i', 'bin'), { recursive: true });
  await mkdir(join(dir, 'sub'), { recursive: true });
  await writeFile(join(dir, 'hello.txt'), 'hello from the source\n');
  await writeFile(join(dir, 'sub', 'data.json'), '{"a": 1}\n');
  await writeFile(join(dir, 'debug.log'), 'must be ignored\n');
  await writeFile(join(dir, 'keep.log'), 'kept by !\n');
  await writeFile(join(dir, '.s2iignore'), '# ignore logs\n*.log\n!keep.log\n');
  await writeFile(join(dir, '.s2i', 'environment'), 'APP_MODE=prod\n# a comment\nQUOTED=a"b$c\\d\n');
  await writeFile(join(dir, '.s2i', 'bin', 'run'), RUN.replace('run mode', 'override-run mode'));
  await chmod(join(dir, '.s2i', 'bin', 'run'), 0o755);
}

/** LABEL continuation lines sorted: s2i writes labels in Go's random map order, kiln sorted. */
function sortLabels(dockerfile: string): string {
  const lines = dockerfile.split('\n');
  const start = lines.findIndex((l) => l.startsWith('LABEL '));
  if (start < 0) return dockerfile;
  let end = start;
  while (lines[end]?.endsWith(' \\')) end++;
  const items = lines
    .slice(start, end + 1)
    .map((l, i) => (i === 0 ? l.slice('LABEL '.length) : l.trim()).replace(/ \\$/, ''))
    .sort();
  const label = ['LABEL ' + items.join(' \\\n      ')];
  return [...lines.slice(0, start), ...label, ...lines.slice(end + 1)].join('\n');
}

describe(
  's2i: kiln vs current BuildKit building the --as-dockerfile equivalent',
  { skip: isRoot ? false : 'needs root (dockerd)' },
  () => {
    let registry: TestRegistry;
    let dockerd: Dockerd;
    let buildkit: BuildKit;
    let work = '';
    let home = '';
    let s2i = '';
    let base = '';
    const R = (): string => registry.host;
    /** `docker run` of what the registry has now under `ref` (pulled again: tags move between builds). */
    const runNow = async (ref: string, cmd?: string[]): Promise<string> => {
      await dockerd.docker(['pull', ref]);
      return dockerd.runImage(ref, cmd);
    };
    const kiln = (args: string[], env: Record<string, string> = {}) =>
      runKiln([...args, '--insecure-registry', R(), '--progress', 'plain'], { KILN_HOME: home, ...env });

    before(async () => {
      s2i = s2iBinary();
      work = await mkdtemp(join(tmpdir(), 'kiln-s2i-'));
      await chmod(work, 0o755);
      home = join(work, 'home');
      registry = await startRegistry();
      dockerd = await startDockerd({ insecureRegistries: [registry.host] });
      buildkit = await startBuildKit({ insecureRegistries: [registry.host] });
      base = await pushBaseImage(dockerd, registry.host, await mkdtemp(join(work, 'base-')));
      for (const b of [
        { name: 'builder-num', dest: '/opt/s2i', user: '1001' },
        { name: 'builder-named', dest: '/tmp', user: 'fakeuser', named: true },
        { name: 'builder-root', dest: '/tmp', user: '' },
      ]) {
        const dir = join(work, b.name);
        await builderContext(dir, { base, ...b });
        await dockerd.build({ context: dir, tag: `${R()}/${b.name}:1` });
        await dockerd.push(`${R()}/${b.name}:1`);
      }
      await writeFile(
        join(work, 'empty.Dockerfile'),
        `FROM ${base}\nLABEL io.openshift.s2i.scripts-url=image:///nowhere\n`,
      );
      await dockerd.build({ context: work, dockerfile: join(work, 'empty.Dockerfile'), tag: `${R()}/builder-empty:1` });
      await dockerd.push(`${R()}/builder-empty:1`);
      // a runtime image (s2i docs/runtime_image.md): its own scripts, input files label, a numeric USER
      const rt = join(work, 'runtime');
      await mkdir(join(rt, 's2i'), { recursive: true });
      await writeFile(
        join(rt, 's2i', 'assemble-runtime'),
        '#!/bin/sh\necho "runtime assembled as $(id -u)" > /srv/app/runtime-note\n',
      );
      await writeFile(join(rt, 's2i', 'run'), '#!/bin/sh\ncat /srv/app/hello.txt /srv/app/runtime-note\n');
      for (const f of ['assemble-runtime', 'run']) await chmod(join(rt, 's2i', f), 0o755);
      await writeFile(
        join(rt, 'Dockerfile'),
        `FROM ${base}\nRUN mkdir -p /srv/app && chown 1002:0 /srv/app\nCOPY s2i/ /usr/libexec/s2i/\n` +
          'LABEL io.openshift.s2i.scripts-url=image:///usr/libexec/s2i io.openshift.s2i.assemble-input-files=/opt/app/hello.txt:app\n' +
          'WORKDIR /srv\nUSER 1002\n',
      );
      await dockerd.build({ context: rt, tag: `${R()}/runtime:1` });
      await dockerd.push(`${R()}/runtime:1`);
    });

    after(async () => {
      await buildkit?.stop().catch(() => undefined);
      await dockerd?.stop().catch(() => undefined);
      await registry?.stop().catch(() => undefined);
      if (work) await rm(work, { recursive: true, force: true });
    });

    // kiln commits the sources and assemble's changes as one layer (as `s2i build` does); KILN_S2I_ONE_LAYER=0
    // keeps --as-dockerfile's COPY + RUN layers, which must then equal BuildKit's image in every respect
    for (const c of [
      { builder: 'builder-num', user: '1001', dest: '/opt/s2i', oneLayer: true },
      { builder: 'builder-named', user: 'fakeuser', dest: '/tmp', oneLayer: false },
    ]) {
      const layout = c.oneLayer ? 'one layer for sources + assemble' : 'KILN_S2I_ONE_LAYER=0';
      test(`${c.builder} (${layout}): same files, owners, modes and config as BuildKit; both run`, async () => {
        const src = join(work, `app-${c.builder}`);
        await appSource(src);
        const builder = `${R()}/${c.builder}:1`;
        const kilnTag = `${R()}/app-kiln-${c.builder}:1`;
        const refTag = `${R()}/app-ref-${c.builder}:1`;
        const kilnDockerfile = join(work, `${c.builder}.kiln.Dockerfile`);
        const k = await kiln(
          ['s2i', 'build', src, builder, kilnTag, '--push', '--as-dockerfile', kilnDockerfile, '-e', 'EXTRA=x y'],
          c.oneLayer ? {} : { KILN_S2I_ONE_LAYER: '0' },
        );
        assert.equal(k.code, 0, k.stderr);
        const kilnText = await readFile(kilnDockerfile, 'utf8');
        assert.match(kilnText, new RegExp(`COPY --chown=${c.user}:0 upload/src ${c.dest}/src`));
        assert.match(
          kilnText,
          new RegExp(`CMD ${c.dest}/scripts/run\\n`),
          'the source .s2i/bin/run overrides the image',
        );

        // the reference: the real s2i's context and Dockerfile (labels sorted, as kiln writes them)
        const refDir = join(work, `${c.builder}-ref`);
        {
          await run(s2i, [
            'build',
            src,
            builder,
            kilnTag,
            '--as-dockerfile',
            join(refDir, 'Dockerfile'),
            '--assemble-user',
            c.user,
            '--destination',
            c.dest,
            '-e',
            'EXTRA=x y',
          ]);
          const s2iText = await readFile(join(refDir, 'Dockerfile'), 'utf8');
          assert.equal(sortLabels(s2iText), kilnText, 'kiln writes what s2i --as-dockerfile writes (labels sorted)');
          await writeFile(join(refDir, 'Dockerfile'), kilnText);
        }
        await buildkit.build({ context: refDir, tag: refTag });
        const { differences, reference, candidate } = await compareImages(refTag, kilnTag, {
          workDir: join(work, `cmp-${c.builder}`),
        });
        const errors = differences.filter((d) => d.severity === 'error');
        if (c.oneLayer) {
          // the COPYs of the scripts (.s2i/bin) and the sources are folded into assemble's layer: their history
          // entries stay, marked empty_layer; the file tree and everything else in the config are BuildKit's
          const folded = (reference.config.history ?? []).flatMap((h, i) =>
            /^COPY --chown=\S+ upload\/(src|scripts) /.test(h.created_by ?? '') ? [i] : [],
          );
          assert.equal(folded.length, 2, 'the scripts and the sources COPY');
          assert.equal(candidate.layers.length, reference.layers.length - folded.length);
          assert.deepEqual(
            errors.map((d) => d.key).sort(),
            ['image.layers', 'manifest.layers', ...folded.map((i) => `history[${i}].empty_layer`)].sort(),
            formatDifferences(errors, ['BuildKit', 'kiln']),
          );
          for (const i of folded) assert.equal(candidate.config.history?.[i]?.empty_layer, true);
        } else assert.deepEqual(errors, [], formatDifferences(errors, ['BuildKit', 'kiln']));
        const outRef = await runNow(refTag);
        const outKiln = await runNow(kilnTag);
        assert.match(outKiln, /override-run mode=prod counter=1 hello from the source/);
        assert.equal(outKiln, outRef);
        const listing = await runNow(kilnTag, ['cat', '/opt/app/listing']);
        assert.doesNotMatch(listing, /debug\.log/, '.s2iignore applied');
        assert.match(listing, /keep\.log/, '! in .s2iignore keeps a file');
      });
    }

    test('runtime image: the input files of the assembled image, assemble-runtime as the runtime user', async () => {
      const src = join(work, 'app-rt');
      await appSource(src);
      await rm(join(src, '.s2i', 'bin'), { recursive: true });
      const tag = `${R()}/app-rt:1`;
      const r = await kiln([
        's2i',
        'build',
        src,
        `${R()}/builder-num:1`,
        tag,
        '--push',
        '--runtime-image',
        `${R()}/runtime:1`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await runNow(tag), 'hello from the source\nruntime assembled as 1002\n');
      const ls = await runNow(tag, ['sh', '-c', 'ls -ln /srv/app/hello.txt; ls /opt/s2i 2>&1 || true']);
      assert.match(ls, /^-rw-r--r-- +1 1002 +0 .*\/srv\/app\/hello.txt$/m, 'copied with the runtime user as owner');
      assert.match(ls, /No such file or directory/, 'nothing of the builder image');
      const cfg = JSON.parse(
        (await run('skopeo', ['inspect', '--tls-verify=false', '--config', `docker://${tag}`])).stdout,
      ) as { config: { User: string; Cmd: string[]; Env: string[] } };
      assert.equal(cfg.config.User, '1002');
      assert.deepEqual(cfg.config.Cmd, ['/bin/sh', '-c', '/usr/libexec/s2i/run']);
      assert.ok(cfg.config.Env.includes('APP_MODE=prod'), 'the build environment is in the runtime image too');
    });

    test('a root assemble user is refused under --allowed-uids; nothing is pushed', async () => {
      const src = join(work, 'app-root');
      await appSource(src);
      const tag = `${R()}/app-root:1`;
      const r = await kiln(['s2i', 'build', src, `${R()}/builder-root:1`, tag, '--push', '--allowed-uids', '1-']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /kiln: assemble user "0" is not allowed: --allowed-uids 1-/);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      const named = await kiln(['s2i', 'build', src, `${R()}/builder-named:1`, tag, '--push', '--allowed-uids', '1-']);
      assert.match(
        named.stderr,
        /assemble user "fakeuser" is not allowed: --allowed-uids 1- \(the user must be numeric\)/,
      );
      const ok = await kiln([
        's2i',
        'build',
        src,
        `${R()}/builder-root:1`,
        tag,
        '--allowed-uids',
        '0-',
        '--assemble-user',
        '0',
      ]);
      assert.equal(ok.code, 0, ok.stderr);
      const inspect = await run('skopeo', ['inspect', '--tls-verify=false', `docker://${tag}`], { allowFail: true });
      assert.notEqual(inspect.code, 0, 'nothing was pushed');
    });

    test('bad input: one clear line each', async () => {
      const src = join(work, 'app-bad');
      await appSource(src);
      await rm(join(src, '.s2i', 'bin'), { recursive: true });
      const noScripts = await kiln(['s2i', 'build', src, `${R()}/builder-empty:1`, `${R()}/app-bad:1`, '--push']);
      assert.notEqual(noScripts.code, 0);
      assert.match(noScripts.stderr, /kiln: .*builder-empty:1: no assemble script at \/nowhere\/assemble/);
      const noBuilder = await kiln(['build', '--strategy', 's2i', src, '-t', `${R()}/app-bad:1`]);
      assert.match(noBuilder.stderr, /kiln: --strategy s2i needs --builder-image/);
      const strategy = await kiln(['build', '--strategy', 'pack', src]);
      assert.match(strategy.stderr, /kiln: --strategy pack: unknown strategy/);
      const backend = await kiln(['build', '--backend', 'podman', src]);
      assert.match(backend.stderr, /kiln: --backend podman: unknown backend/);
      const both = await kiln([
        's2i',
        'build',
        src,
        `${R()}/builder-num:1`,
        'x:1',
        '--incremental',
        '--runtime-image',
        'y',
      ]);
      assert.match(both.stderr, /--incremental cannot be used together with --runtime-image/);
      const inspect = await run('skopeo', ['inspect', '--tls-verify=false', `docker://${R()}/app-bad:1`], {
        allowFail: true,
      });
      assert.notEqual(inspect.code, 0, 'nothing was pushed');
    });

    test('incremental: the artifacts tar comes from kiln cache, the previous image is not pulled', async () => {
      const src = join(work, 'app-inc');
      await appSource(src);
      const tag = `${R()}/app-inc:1`;
      const builder = `${R()}/builder-num:1`;
      const first = await kiln(['s2i', 'build', src, builder, tag, '--push', '--incremental']);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stderr, /no previous image .* building clean/);
      assert.match(await runNow(tag), /counter=1 /);
      const before = registry.log().length;
      const second = await kiln(['s2i', 'build', src, builder, tag, '--push', '--incremental']);
      assert.equal(second.code, 0, second.stderr);
      // the registry logs a request after answering it: wait (bounded) for the second manifest PUT
      await registry.waitForLog(/PUT \/v2\/app-inc\/manifests[^\n]*\n[^]*PUT \/v2\/app-inc\/manifests/);
      const requests = registry.log().slice(before).split('\n');
      assert.ok(
        requests.some((l) => /PUT \/v2\/app-inc\/manifests/.test(l)),
        'the second build pushed',
      );
      const reads = requests.filter((l) => /"(GET) \/v2\/app-inc\/(manifests|blobs)\//.test(l));
      assert.deepEqual(reads, [], 'no manifest or layer of the previous image was read');
      assert.match(await runNow(tag), /counter=2 /, 'save-artifacts output restored');
      // without kiln's cache (another home), s2i's way: the previous image runs save-artifacts
      const other = await runKiln(
        [
          's2i',
          'build',
          src,
          builder,
          tag,
          '--push',
          '--incremental',
          '--insecure-registry',
          R(),
          '--progress',
          'plain',
        ],
        { KILN_HOME: join(work, 'home2') },
      );
      assert.equal(other.code, 0, other.stderr);
      assert.match(other.stderr, /\[cached /);
      assert.match(await runNow(tag), /counter=3 /);
    });

    test('incremental with a registry cache: a fresh home gets the artifacts tar from --cache-from', async () => {
      const src = join(work, 'app-rc');
      await appSource(src);
      const tag = `${R()}/app-rc:1`;
      const builder = `${R()}/builder-num:1`;
      const cache = `type=registry,ref=${R()}/cache/app-rc:s2i`;
      const inHome = (h: string, extra: string[]) =>
        runKiln(
          [
            ...['build', '--strategy', 's2i', '--builder-image', builder, '-t', tag, '--push', '--incremental'],
            ...extra,
          ].concat(['--insecure-registry', R(), src]),
          { KILN_HOME: join(work, h) },
        );
      const first = await inHome('pod-1', ['--cache-to', cache]);
      assert.equal(first.code, 0, first.stderr);
      assert.match(await runNow(tag), /counter=1 /);
      await registry.waitForLog(/PUT \/v2\/cache\/app-rc\/manifests\/s2i-s2i-artifacts /);
      const before = registry.log().length;
      // a fresh pod: no local artifacts, no local image; the tar comes from the registry cache
      const second = await inHome('pod-2', ['--cache-from', cache, '--cache-to', cache]);
      assert.equal(second.code, 0, second.stderr);
      assert.doesNotMatch(second.stderr, /building clean|warning/);
      await registry.waitForLog(/PUT \/v2\/app-rc\/manifests[^\n]*\n[^]*PUT \/v2\/app-rc\/manifests/);
      const requests = registry.log().slice(before).split('\n');
      assert.ok(requests.some((l) => /GET \/v2\/cache\/app-rc\/manifests\/s2i-s2i-artifacts /.test(l)));
      const reads = requests.filter((l) => /"GET \/v2\/app-rc\/(manifests|blobs)\//.test(l));
      assert.deepEqual(reads, [], 'no manifest or layer of the previous image was read');
      assert.match(await runNow(tag), /counter=2 /, 'save-artifacts output restored in a fresh home');
    });
  },
);
