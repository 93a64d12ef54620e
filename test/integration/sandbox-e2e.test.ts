/**
 * End to end through the CLI: the same Dockerfile (RUN steps that create, delete, replace a directory, make
 * hardlinks, symlinks and setuid files, use cache and tmpfs mounts and switch USER) built with
 * SOURCE_DATE_EPOCH gives the SAME image digest as root and as the ordinary user kilntest (build user
 * namespace), with the overlay snapshotter and with the copy fallback.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureRootlessUser, rootlessTempDir, runCapture } from '../helpers/rootless.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const KILN = join(REPO, 'bin', 'kiln.js');

const DOCKERFILE = `FROM localhost/busybox:latest
RUN mkdir -p /data/sub && echo a > /data/a && echo b > /data/sub/b && echo x > /etc/x
RUN rm /etc/x && rm -rf /data && mkdir /data && echo new > /data/new && ln /data/new /data/hard && ln -s new /data/sym && chmod 4755 /data/new
RUN --mount=type=cache,target=/cache --mount=type=tmpfs,target=/scratch echo c > /cache/c && echo s > /scratch/s && echo done > /done
USER 1000:1000
RUN id > /tmp/id && echo "$HOME" > /tmp/home
`;

function kiln(
  args: string[],
  env: NodeJS.ProcessEnv,
  asUser?: { uid: number; gid: number },
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const argv = [process.execPath, KILN, ...args];
  const [cmd, ...rest] = asUser
    ? ['setpriv', `--reuid=${asUser.uid}`, `--regid=${asUser.gid}`, '--init-groups', '--', ...argv]
    : argv;
  return runCapture(cmd as string, rest, { cwd: REPO, env });
}

test('same image digest as root and rootless, with overlay and copy snapshotters', async () => {
  const user = ensureRootlessUser();
  const rootHome = await mkdtemp(join(tmpdir(), 'kiln-e2e-root-'));
  const userHome = await rootlessTempDir('kiln-e2e-user-');
  const ctx = await mkdtemp(join(tmpdir(), 'kiln-e2e-ctx-'));
  try {
    await writeFile(join(ctx, 'Dockerfile'), DOCKERFILE);
    await chmod(ctx, 0o755);
    await chmod(join(ctx, 'Dockerfile'), 0o644);
    const digests: Record<string, string> = {};
    for (const [who, home, as] of [
      ['root', rootHome, undefined],
      ['kilntest', userHome, user],
    ] as const) {
      const env = { KILN_HOME: home, HOME: home, SOURCE_DATE_EPOCH: '1700000000' };
      const boot = await kiln(['bootstrap', 'busybox'], env, as);
      assert.equal(boot.code, 0, `bootstrap as ${who}: ${boot.stderr}`);
      for (const snapshotter of ['overlay', 'copy']) {
        const r = await kiln(
          ['build', '--no-cache', '-q', '-t', `e2e-${snapshotter}:latest`, ctx],
          {
            ...env,
            KILN_SNAPSHOTTER: snapshotter,
          },
          as,
        );
        assert.equal(r.code, 0, `build as ${who} with ${snapshotter}: ${r.stderr}`);
        const digest = r.stdout.trim().split('\n').pop() ?? '';
        assert.match(digest, /^sha256:[0-9a-f]{64}$/);
        digests[`${who}/${snapshotter}`] = digest;
      }
    }
    const values = new Set(Object.values(digests));
    assert.equal(values.size, 1, `digests differ: ${JSON.stringify(digests, null, 2)}`);
  } finally {
    await rm(rootHome, { recursive: true, force: true });
    await rm(userHome, { recursive: true, force: true });
    await rm(ctx, { recursive: true, force: true });
  }
});
