/**
 * The pluggable builders with real tools: the same Dockerfile built by kiln, buildah (`buildah bud`, its own
 * storage) and docker (`docker build` against a private dockerd through DOCKER_HOST), each pushed to a registry
 * that wants a password. Checks: the logs stream, step timings are reported, the digest each adapter reports is
 * the registry's, the password is in no process argument (a wrapper records every argv) and in no log, the
 * three images hold the same files; a missing tool and an unreachable daemon are one clear line.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, runKiln, type TestRegistry } from '../helpers/registry.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { compareImages, formatDifferences } from '../helpers/compare.js';
import { run } from '../differential/exec.js';
import { pushBaseImage } from '../differential/env.js';
import type { BuildOptions } from '../../src/engine/options.js';
import type { ImageBuildResult } from '../../src/backends/types.js';

const isRoot = process.getuid?.() === 0;

describe(
  'backends: kiln, buildah and docker behind ImageBuilder',
  { skip: isRoot ? false : 'needs root (dockerd)' },
  () => {
    let registry: TestRegistry;
    let plain: TestRegistry;
    let dockerd: Dockerd;
    let work = '';
    let context = '';
    let argvLog = '';
    const password = (): string => registry.password as string;

    /** A wrapper that records its argv (and the environment variable names) before running the real tool. */
    async function wrapper(name: string, real: string, extra: string): Promise<string> {
      const file = join(work, `${name}-wrapper.sh`);
      await writeFile(file, `#!/bin/sh\nprintf '%s\\n' "${name} $*" >> ${argvLog}\nexec ${real} ${extra} "$@"\n`);
      await chmod(file, 0o755);
      return file;
    }

    function options(tag: string): BuildOptions {
      return {
        context,
        tags: [tag],
        buildArgs: new Map([['GREETING', 'hello']]),
        labels: { 'org.example.built-by': 'kiln-test' },
        platform: { os: 'linux', architecture: 'amd64' },
        noCache: false,
        pull: false,
        push: true,
        outputs: [],
        network: 'host',
        secrets: [],
        progress: 'plain',
        insecureRegistries: [registry.host, plain.host],
        registryMirrors: [],
        debug: false,
      };
    }

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'kiln-backends-'));
      argvLog = join(work, 'argv.log');
      registry = await startRegistry({ auth: 'htpasswd' });
      plain = await startRegistry();
      dockerd = await startDockerd({ insecureRegistries: [registry.host, plain.host] });
      const base = await pushBaseImage(dockerd, plain.host, await mkdtemp(join(work, 'base-')));
      context = join(work, 'ctx');
      await mkdir(context);
      await writeFile(
        join(context, 'Dockerfile'),
        `FROM ${base}\nARG GREETING\nRUN mkdir -p /app && echo "$GREETING" > /app/greeting\nCOPY app.sh /app/\nWORKDIR /app\nCMD ["/app/app.sh"]\n`,
      );
      await writeFile(join(context, 'app.sh'), '#!/bin/sh\ncat /app/greeting\n');
      await chmod(join(context, 'app.sh'), 0o755);
      const storage = join(work, 'buildah');
      process.env.KILN_BUILDAH = await wrapper(
        'buildah',
        '/usr/bin/buildah',
        `--root ${storage}/root --runroot ${storage}/runroot --storage-driver vfs`,
      );
      process.env.KILN_DOCKER = await wrapper('docker', '/usr/bin/docker', '');
    });

    after(async () => {
      delete process.env.KILN_BUILDAH;
      delete process.env.KILN_DOCKER;
      await dockerd?.stop().catch(() => undefined);
      await registry?.stop().catch(() => undefined);
      await plain?.stop().catch(() => undefined);
      if (work) await rm(work, { recursive: true, force: true });
    });

    const results = new Map<string, ImageBuildResult>();
    for (const backend of ['kiln', 'buildah', 'docker']) {
      test(`${backend}: builds, streams logs, reports steps and the registry's digest; no password in argv or logs`, async () => {
        const { builderFor } = await import('../../src/backends/index.js');
        const tag = `${registry.host}/app-${backend}:1`;
        let log = '';
        const prevHost = process.env.DOCKER_HOST;
        if (backend === 'docker') process.env.DOCKER_HOST = dockerd.host;
        let res: ImageBuildResult;
        try {
          res = await builderFor(backend).build({
            options: options(tag),
            registry: { insecureRegistry: [registry.host, plain.host] },
            credentials: async (host) =>
              host === registry.host ? { username: registry.username as string, password: password() } : undefined,
            log: (s) => (log += s),
          });
        } finally {
          if (prevHost === undefined) delete process.env.DOCKER_HOST;
          else process.env.DOCKER_HOST = prevHost;
        }
        results.set(backend, res);
        assert.equal(res.backend, backend);
        assert.match(log, /greeting|GREETING/, 'the build log streamed');
        assert.ok(res.steps.length >= 2, `step timings: ${JSON.stringify(res.steps)}`);
        assert.deepEqual(res.pushed, [tag]);
        const inspect = await run('skopeo', [
          'inspect',
          '--tls-verify=false',
          '--creds',
          `${registry.username}:${password()}`,
          '--format',
          '{{.Digest}}',
          `docker://${tag}`,
        ]);
        assert.equal(res.digest, inspect.stdout.trim(), "the reported digest is the registry's");
        assert.ok(!log.includes(password()), 'no password in the log');
        const argv = await readFile(argvLog, 'utf8').catch(() => '');
        assert.ok(!argv.includes(password()), 'no password in any argv');
        if (backend !== 'kiln') assert.match(argv, new RegExp(`^${backend} `, 'm'), 'the tool ran through the wrapper');
        const out = await run('docker', [
          '-H',
          dockerd.host,
          'run',
          '--rm',
          `${plain.host}/busybox:latest`,
          'true',
        ]).then(() => 'ok');
        assert.equal(out, 'ok');
      });
    }

    test('the three images hold the same files (config differences are reported, not failed)', async () => {
      assert.equal(results.size, 3, 'all three built');
      const creds = `${registry.username}:${password()}`;
      // copy each to the plain registry so the comparison helper (no auth) can read them
      for (const b of ['kiln', 'buildah', 'docker']) {
        await run('skopeo', [
          'copy',
          '--src-tls-verify=false',
          '--dest-tls-verify=false',
          '--src-creds',
          creds,
          `docker://${registry.host}/app-${b}:1`,
          `docker://${plain.host}/app-${b}:1`,
        ]);
      }
      for (const other of ['buildah', 'docker']) {
        const { differences } = await compareImages(`${plain.host}/app-${other}:1`, `${plain.host}/app-kiln:1`, {
          workDir: join(work, `cmp-${other}`),
          // buildah leaves the RUN mount points behind (test/differential/BUILDAH-DIFFERENCES.md)
          ...(other === 'buildah'
            ? { ignore: ['file:/etc/hostname:*', 'file:/etc/hosts:*', 'file:/etc/resolv.conf:*', 'file:/run:*'] }
            : {}),
        });
        const files = differences.filter((d) => d.severity === 'error' && d.key.startsWith('file:'));
        assert.deepEqual(files, [], formatDifferences(files, [other, 'kiln']));
        const config = differences.filter((d) => d.severity === 'error' && !d.key.startsWith('file:'));
        if (config.length)
          console.log(`kiln vs ${other}, config differences:\n${formatDifferences(config, [other, 'kiln'])}`);
      }
    });

    test('a missing tool and an unreachable daemon are one clear line; nothing pushed', async () => {
      const missing = await runKiln(
        ['build', '--backend', 'buildah', '--push', '-t', `${plain.host}/nope:1`, context],
        {
          KILN_BUILDAH: '/nonexistent/buildah',
        },
      );
      assert.notEqual(missing.code, 0);
      assert.match(missing.stderr, /^kiln: --backend buildah: \/nonexistent\/buildah not found/m);
      assert.match(missing.stderr, /hint: install buildah/);
      const daemon = await runKiln(['build', '--backend', 'docker', '--push', '-t', `${plain.host}/nope:1`, context], {
        KILN_DOCKER: '/usr/bin/docker',
        DOCKER_HOST: `unix://${join(work, 'no-such.sock')}`,
      });
      assert.notEqual(daemon.code, 0);
      assert.match(daemon.stderr, /^kiln: --backend docker: \/usr\/bin\/docker version .* failed: /m);
      assert.doesNotMatch(missing.stderr + daemon.stderr, /\n\s+at /);
      const gone = await run('skopeo', ['inspect', '--tls-verify=false', `docker://${plain.host}/nope:1`], {
        allowFail: true,
      });
      assert.notEqual(gone.code, 0);
    });
  },
);
