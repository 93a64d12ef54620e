/**
 * S2I as an ordinary user (kilntest, subordinate ids): a builder image built rootless, `kiln s2i build` with a
 * numeric assemble user, then an incremental build whose save-artifacts output (taken in a rootless sandbox
 * after the first build) is restored from kiln's cache; the image runs in the store's eyes with the right config.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ensureRootlessUser, rootlessTempDir } from '../helpers/rootless.js';
import { kiln } from './build-helpers.js';

const isRoot = process.getuid?.() === 0;
let dir = '';
let home = '';

before(async () => {
  if (!isRoot) return;
  const { uid, gid } = ensureRootlessUser();
  dir = await rootlessTempDir('kiln-s2i-rootless-');
  home = join(dir, 'home');
  const b = join(dir, 'builder');
  await mkdir(join(b, 's2i'), { recursive: true });
  await writeFile(
    join(b, 's2i', 'assemble'),
    '#!/bin/sh\nset -e\ncp -R /tmp/src/. /opt/app/\nn=$(cat /tmp/artifacts/n 2>/dev/null || echo 0)\n' +
      'echo $((n+1)) > /opt/app/n\necho "assemble uid=$(id -u) n=$(cat /opt/app/n)"\n',
  );
  await writeFile(join(b, 's2i', 'run'), '#!/bin/sh\ncat /opt/app/hello\n');
  await writeFile(join(b, 's2i', 'save-artifacts'), '#!/bin/sh\ncd /opt/app && tar -cf - n\n');
  for (const f of ['assemble', 'run', 'save-artifacts']) await chmod(join(b, 's2i', f), 0o755);
  await writeFile(
    join(b, 'Dockerfile'),
    'FROM localhost/busybox:latest\nRUN mkdir -p /opt/app && chown 1001:0 /opt/app\nCOPY s2i/ /usr/libexec/s2i/\n' +
      'LABEL io.openshift.s2i.scripts-url=image:///usr/libexec/s2i\nUSER 1001\n',
  );
  await mkdir(join(dir, 'app'));
  await writeFile(join(dir, 'app', 'hello'), 'hello rootless\n');
  spawnSync('chown', ['-R', `${uid}:${gid}`, b, join(dir, 'app')]);
  const r = await kiln(['bootstrap', 'busybox'], { home, rootless: true });
  assert.equal(r.code, 0, r.stderr);
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test(
  'rootless: kiln s2i build, then an incremental build restores save-artifacts output',
  { skip: isRoot ? false : 'needs root to switch to the rootless user' },
  async () => {
    const b = await kiln(['build', '-q', '-t', 'localhost/builder:1', join(dir, 'builder')], { home, rootless: true });
    assert.equal(b.code, 0, b.stderr);
    const build = (): ReturnType<typeof kiln> =>
      kiln(
        [
          's2i',
          'build',
          join(dir, 'app'),
          'localhost/builder:1',
          'localhost/app:1',
          '--incremental',
          '--progress',
          'plain',
        ],
        {
          home,
          rootless: true,
        },
      );
    const first = await build();
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /assemble uid=1001 n=1/);
    const second = await build();
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stderr, /assemble uid=1001 n=2/, 'the artifacts of the first build came back');
    assert.match(second.stderr, /FROM scratch|COPY upload\/artifacts.tar/, "from kiln's artifacts cache");
    const inspect = await kiln(['inspect', '--config', 'localhost/app:1'], { home, rootless: true });
    assert.equal(inspect.code, 0, inspect.stderr);
    const cfg = JSON.parse(inspect.stdout) as { config: { User: string; Cmd: string[] } };
    assert.equal(cfg.config.User, '1001');
    assert.deepEqual(cfg.config.Cmd, ['/bin/sh', '-c', '/usr/libexec/s2i/run']);
  },
);
