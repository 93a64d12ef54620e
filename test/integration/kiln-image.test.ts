/**
 * kiln's own image (deploy/image/Dockerfile) built BY kiln, as the README documents: the context from
 * deploy/image/context.sh, the base the cached debootstrap root (scripts/debian-rootfs.sh) put into kiln's local
 * store as localhost/debian:bookworm, pushed to a real registry; then run by Debian's dockerd (a container runtime
 * that is not kiln): `kiln --version`, the non-root user, the setuid newuidmap, the package list, and `kiln serve`
 * answering /healthz from the image (better-sqlite3's addon loads there).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { buildKilnImage } from '../helpers/kiln-image.js';

const REPO = join(import.meta.dirname, '..', '..');
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

describe("kiln's own image, built by kiln", () => {
  let dir: string;
  let registry: TestRegistry;
  let dockerd: Dockerd | undefined;
  let ref: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-image-'));
    registry = await startRegistry();
    ref = `${registry.host}/kiln:test`;
  });

  after(async () => {
    await dockerd?.stop();
    await registry?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('kiln build -f deploy/image/Dockerfile: non-root user, entrypoint kiln, package list label', async (t) => {
    const meta = join(dir, 'metadata.json');
    const r = await buildKilnImage(dir, ref, ['--metadata-file', meta]);
    assert.equal(r.code, 0, r.stderr.slice(-4000));
    const inspect = spawnSync('skopeo', ['inspect', '--config', '--tls-verify=false', `docker://${ref}`], {
      encoding: 'utf8',
    });
    assert.equal(inspect.status, 0, inspect.stderr);
    const cfg = (JSON.parse(inspect.stdout) as { config: Record<string, unknown> }).config as {
      User: string;
      Entrypoint: string[];
      Env: string[];
      Labels: Record<string, string>;
    };
    assert.equal(cfg.User, '1000:1000');
    assert.deepEqual(cfg.Entrypoint, ['/usr/local/bin/kiln']);
    assert.equal(cfg.Labels['dev.kiln.sbom'], '/usr/share/kiln/packages.txt');
    assert.ok(cfg.Env.includes('KILN_RESTRICTED_HELPER=/usr/local/libexec/kiln/kiln-restricted'));
    const raw = spawnSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`], {
      encoding: 'utf8',
    });
    const layers = (JSON.parse(raw.stdout) as { layers: { size: number }[] }).layers;
    const mb = (n: number): string => (n / 1e6).toFixed(1);
    t.diagnostic(`image: ${layers.length} layers, ${mb(layers.reduce((a, l) => a + l.size, 0))} MB compressed (${layers.map((l) => mb(l.size)).join(' + ')})`); // prettier-ignore
  });

  test('runs under dockerd: kiln --version as uid 1000, setuid newuidmap, packages, kiln serve answers', async () => {
    dockerd = await startDockerd({ insecureRegistries: [registry.host] });
    const version = await dockerd.runImage(ref, ['--version']);
    assert.equal(version.trim(), VERSION);
    const id = await dockerd.runImage(ref, ['-u'], { entrypoint: 'id' });
    assert.equal(id.trim(), '1000');
    const mode = await dockerd.runImage(ref, ['-c', '%A %U', '/usr/bin/newuidmap'], { entrypoint: 'stat' });
    assert.equal(mode.trim(), '-rwsr-xr-x root', 'newuidmap keeps its setuid bit in the layer');
    const pkgs = await dockerd.runImage(ref, ['/usr/share/kiln/packages.txt'], { entrypoint: 'cat' });
    for (const p of ['git', 'uidmap', 'proot', 'ca-certificates'])
      assert.match(pkgs, new RegExp(`^${p} \\S+ \\S+$`, 'm'));
    // the restricted level's helper is there and executable (runImage throws on a non-zero exit)
    await dockerd.runImage(ref, ['-x', '/usr/local/libexec/kiln/kiln-restricted'], { entrypoint: 'test' });
    // kiln's proot runs there (its libtalloc comes with Debian's proot) and has the seccomp mode
    const proot = await dockerd.runImage(ref, ['--version'], { entrypoint: '/usr/local/bin/kiln-proot' });
    assert.match(proot, /seccomp_filter = yes/);

    // the service: kiln serve from the image, on the host network, answers /healthz
    const port = await freePort();
    const started = await dockerd.docker([
      'run', '-d', '--rm', '--network', 'host', ref, 'serve', '--listen', `127.0.0.1:${port}`,
    ]); // prettier-ignore
    const container = started.stdout.trim();
    try {
      let status = 0;
      for (let i = 0; i < 120 && status !== 200; i++) {
        status = await fetch(`http://127.0.0.1:${port}/healthz`).then(
          (res) => res.status,
          () => 0,
        );
        if (status !== 200) await new Promise((res) => setTimeout(res, 250));
      }
      const logs = await dockerd.docker(['logs', container], { allowFail: true });
      assert.equal(status, 200, logs.stderr);
      assert.match(logs.stderr, /kiln serve: listening on http:\/\/127\.0\.0\.1:/);
    } finally {
      await dockerd.docker(['rm', '-f', container], { allowFail: true });
    }
  });
});
