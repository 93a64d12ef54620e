/**
 * Cloud Native Buildpacks end to end with real parts: a builder image made here from busybox with POSIX sh
 * buildpacks following the spec (a static-file one with a launch layer it reuses by metadata and a cache layer, one
 * that writes process types and a label, one that fails detect in the first order group), pushed to a real
 * registry; `kiln build --strategy buildpacks` then `kiln pack build --publish`; the image runs under `docker run`
 * (default process, another process type, an overriding command), skopeo and umoci read it; a build with nothing
 * changed gives the same digest and uploads no blob; a changed file rebuilds only its layers; `kiln rebase` swaps
 * the run image; bad input (no group passes detect, bin/build failing, a malformed layer.toml) is one clear line and
 * pushes nothing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { startRegistry, runKiln, type TestRegistry } from '../helpers/registry.js';
import { pushTestImages, writeBuildpackDir } from './buildpacks-fixtures.js';

const isRoot = process.getuid?.() === 0;

describe(
  'buildpacks: builder, detect, build, export, reuse, rebase',
  { skip: isRoot ? false : 'needs root (dockerd)' },
  () => {
    let registry: TestRegistry;
    let dockerd: Dockerd;
    let work = '';
    let home = '';
    let src = '';
    const R = (): string => registry.host;
    const kiln = (args: string[]) =>
      runKiln([...args, '--insecure-registry', R(), '--progress', 'plain'], { KILN_HOME: home });
    const runNow = async (ref: string, cmd?: string[], entrypoint?: string): Promise<string> => {
      await dockerd.docker(['pull', ref]);
      return (await dockerd.runImage(ref, cmd, entrypoint ? { entrypoint } : {})).trim();
    };
    const skopeo = (args: string[]) => spawnSync('skopeo', args, { encoding: 'utf8' });
    const inspect = (ref: string): { Digest: string; Labels: Record<string, string>; Layers: string[] } =>
      JSON.parse(skopeo(['inspect', '--tls-verify=false', `docker://${ref}`]).stdout);
    const uploadsSince = (from: number, repo: string): string[] =>
      registry
        .log()
        .slice(from)
        .split('\n')
        .filter((l) => new RegExp(`"(POST|PUT|PATCH) /v2/${repo}/blobs/uploads`).test(l));

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'kiln-bp-'));
      await chmod(work, 0o755);
      home = join(work, 'home');
      registry = await startRegistry();
      dockerd = await startDockerd({ insecureRegistries: [registry.host] });
      await pushTestImages(R());
      src = join(work, 'app');
      await mkdir(src);
      await writeFile(join(src, 'index.html'), 'page-1');
    });

    after(async () => {
      await dockerd?.stop();
      await registry?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    test('build, run, reuse with nothing changed, a changed file, rebase', async () => {
      const tag = `${R()}/app:1`;
      const first = await kiln([
      'build', '--strategy', 'buildpacks', '--builder', `${R()}/builder:1`, '--env', 'MODE=prod', '-t', tag, '--push', src,
    ]); // prettier-ignore
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stderr, /build as 1000:1000 in \/workspace plan: 1/);
      assert.match(first.stderr, /cache restored: 0/);
      assert.match(first.stderr, /platform env MODE=prod/);
      assert.match(
        first.stderr,
        /test\/static@1\.0\.0, test\/procs@1\.0\.0 on /,
        'group 2 without the optional failing one',
      );
      assert.equal(await runNow(tag), 'hello from page-1 mode= extra=profiled');
      // a command of one's own through the launcher gets the buildpack env too
      assert.equal(
        await runNow(tag, ['sh', '-c', 'echo "$GREETING $(id -u) $PWD $CNB_LAYERS_DIR"'], '/cnb/lifecycle/launcher'),
        'hello 1000 /workspace /layers',
      );
      assert.equal(await runNow(tag, [], '/cnb/process/worker'), 'worker in /layers with default-arg');
      const i1 = inspect(tag);
      assert.equal(i1.Labels['org.example.app'], 'static-site');
      assert.equal(i1.Labels['io.buildpacks.stack.id'], 'kiln.test', 'run image labels kept');
      const md = JSON.parse(i1.Labels['io.buildpacks.lifecycle.metadata'] as string) as {
        buildpacks: { key: string; layers: Record<string, { sha: string; launch: boolean; data: { sum?: string } }> }[];
        runImage: { topLayer: string };
      };
      assert.deepEqual(
        md.buildpacks.map((b) => b.key),
        ['test/static', 'test/procs'],
      );
      assert.ok(md.buildpacks[0]?.layers.web?.data.sum, 'layer metadata recorded');
      assert.equal(md.buildpacks[0]?.layers.counter, undefined, 'a cache-only layer is not in the image');
      assert.ok(JSON.parse(i1.Labels['io.buildpacks.build.metadata'] as string).processes.length === 2);
      // run image (1 layer) + web + app + launcher
      assert.equal(i1.Layers.length, 4);

      // umoci reads it: the app is owned by the CNB user, the launch layer is at /layers/<escaped id>/<name>
      const layout = join(work, 'layout');
      const cp = skopeo(['copy', '--src-tls-verify=false', `docker://${tag}`, `oci:${layout}:v1`]);
      assert.equal(cp.status, 0, cp.stderr);
      const bundle = join(work, 'bundle');
      const u = spawnSync('umoci', ['unpack', '--image', `${layout}:v1`, bundle], { encoding: 'utf8' });
      assert.equal(u.status, 0, u.stderr);
      assert.equal(await readFile(join(bundle, 'rootfs', 'workspace', 'index.html'), 'utf8'), 'page-1');
      const st = spawnSync(
        'stat',
        ['-c', '%u:%g', join(bundle, 'rootfs', 'layers', 'test_static', 'web', 'bin', 'show')],
        {
          encoding: 'utf8',
        },
      );
      assert.equal(st.stdout.trim(), '1000:1000');
      await rm(bundle, { recursive: true, force: true });

      // the same build again as `kiln pack build`: same digest, the web layer reused by metadata, nothing uploaded
      const before = registry.log().length;
      const second = await kiln([
      'pack', 'build', tag, '--builder', `${R()}/builder:1`, '--path', src, '--env', 'MODE=prod', '--publish',
      '--report', join(work, 'report.toml'),
    ]); // prettier-ignore
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stderr, /reusing web layer/);
      assert.match(second.stderr, /cache restored: 1/);
      assert.match(second.stderr, /1 reused, 0 uploaded/);
      await registry.waitForLog(/PUT \/v2\/app\/manifests[^]*PUT \/v2\/app\/manifests/);
      assert.deepEqual(uploadsSince(before, 'app'), [], 'no blob uploaded');
      const i2 = inspect(tag);
      assert.equal(i2.Digest, i1.Digest, 'same digest');
      assert.equal(await runNow(tag), 'hello from page-1 mode= extra=profiled', 'the reused layer keeps its env');
      assert.match(await readFile(join(work, 'report.toml'), 'utf8'), new RegExp(`digest = "${i1.Digest}"`));

      // a changed page: the buildpack writes its layer again (same bytes, same digest); the app layer changes
      await writeFile(join(src, 'index.html'), 'page-2');
      const third = await kiln(['pack', 'build', tag, '--builder', `${R()}/builder:1`, '--path', src, '--publish']);
      assert.equal(third.code, 0, third.stderr);
      const i3 = inspect(tag);
      assert.notEqual(i3.Digest, i1.Digest);
      assert.equal(i3.Layers[0], i1.Layers[0], 'run image layer');
      assert.doesNotMatch(third.stderr, /reusing web layer/, 'the buildpack rebuilt its layer (its metadata changed)');
      assert.equal(i3.Layers[1], i1.Layers[1], 'same files, same digest (layers are written reproducibly)');
      assert.notEqual(i3.Layers[2], i1.Layers[2], 'app layer rebuilt');
      assert.equal(i3.Layers[3], i1.Layers[3], 'launcher layer');
      assert.equal(await runNow(tag), 'hello from page-2 mode= extra=profiled');

      // rebase onto run:2 — every layer above the run image kept
      const rb = await kiln(['rebase', tag, '--base', `${R()}/run:2`, '-t', `${R()}/app:rebased`, '--push']);
      assert.equal(rb.code, 0, rb.stderr);
      const ir = inspect(`${R()}/app:rebased`);
      assert.deepEqual(ir.Layers.slice(1), i3.Layers.slice(1));
      assert.notEqual(ir.Layers[0], i3.Layers[0]);
      const rcfg = JSON.parse(
        skopeo(['inspect', '--config', '--tls-verify=false', `docker://${R()}/app:rebased`]).stdout,
      ) as { rootfs: { diff_ids: string[] }; config: { Labels: Record<string, string> } };
      const rmd = JSON.parse(rcfg.config.Labels['io.buildpacks.lifecycle.metadata'] as string) as {
        runImage: { topLayer: string; image: string };
      };
      assert.equal(rmd.runImage.topLayer, rcfg.rootfs.diff_ids[0], 'the label names the new run image');
      assert.equal(rmd.runImage.image, `${R()}/run:2`);
      assert.equal(await runNow(`${R()}/app:rebased`, ['cat', '/etc/run-version'], '/cnb/lifecycle/launcher'), '2');
      assert.equal(await runNow(`${R()}/app:rebased`), 'hello from page-2 mode= extra=profiled');
    });

    test('bad input: one clear line, nothing pushed', async () => {
      const manifestPuts = (repo: string): number =>
        registry
          .log()
          .split('\n')
          .filter((l) => new RegExp(`"PUT /v2/${repo}/manifests`).test(l)).length;
      // no group passes detect: what each said
      const empty = join(work, 'empty');
      await mkdir(empty, { recursive: true });
      const nd = await kiln([
        'pack',
        'build',
        `${R()}/bad:1`,
        '--builder',
        `${R()}/builder:1`,
        '--path',
        empty,
        '--publish',
      ]);
      assert.notEqual(nd.code, 0);
      assert.match(
        nd.stderr,
        /no buildpack group passed detection: group 1: test\/never@1\.0\.0 failed; group 2: test\/static@1\.0\.0 failed; group 2: test\/procs@1\.0\.0 passed; group 2: test\/never@1\.0\.0 failed \(optional\)/,
      );
      assert.doesNotMatch(nd.stderr, /\n\s+at /, 'no stack trace');
      const withBuildpack = (dir: string) =>
        kiln([
          'pack',
          'build',
          `${R()}/bad:1`,
          '--builder',
          `${R()}/builder:1`,
          '--path',
          src,
          '--buildpack',
          dir,
          '--publish',
        ]);
      // bin/build fails: its output and exit code
      const failing = join(work, 'bp-failing');
      await writeBuildpackDir(
        failing,
        'test/failing',
        '#!/bin/sh\nexit 0\n',
        '#!/bin/sh\necho "compiler said no" >&2\nexit 3\n',
      );
      const bf = await withBuildpack(failing);
      assert.notEqual(bf.code, 0);
      assert.match(bf.stderr, /buildpack test\/failing@1\.0\.0: bin\/build exited 3: compiler said no/);
      // a malformed layer.toml: file and key
      const malformed = join(work, 'bp-malformed');
      await writeBuildpackDir(
        malformed,
        'test/malformed',
        '#!/bin/sh\nexit 0\n',
        '#!/bin/sh\nmkdir -p "$CNB_LAYERS_DIR/x"\nprintf \'[types]\\nlaunch = "yes"\\n\' > "$CNB_LAYERS_DIR/x.toml"\n',
      );
      const mf = await withBuildpack(malformed);
      assert.notEqual(mf.code, 0);
      assert.match(mf.stderr, /\/layers\/test_malformed\/x\.toml: key types\.launch must be a boolean/);
      assert.equal(manifestPuts('bad'), 0, 'nothing pushed');
      // a flag for another strategy
      const wrong = await kiln(['build', '--builder', `${R()}/builder:1`, '-t', `${R()}/bad:1`, src]);
      assert.notEqual(wrong.code, 0);
      assert.match(wrong.stderr, /--builder, --buildpack, --run-image and --clear-cache need --strategy buildpacks/);
    });
  },
);
