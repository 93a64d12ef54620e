/**
 * A Node.js buildpack (POSIX sh) that runs `npm ci` into a cache+launch layer, on a builder and run image that
 * share one base layer: busybox plus the host's Node.js runtime (node, its shared libraries, npm). A real npm
 * install of a small real package; the image runs under `docker run`; the second build takes node_modules from
 * kiln's cache (no npm run), keeps the layer's digest and uploads nothing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, readdir, readlink, lstat, rm, writeFile } from 'node:fs/promises';
import { realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { startRegistry, runKiln, type TestRegistry } from '../helpers/registry.js';
import { makeBusyboxImage, type ExtraFile } from '../helpers/images.js';
import { push } from '../../src/registry/push.js';
import { parseReference } from '../../src/registry/reference.js';

const isRoot = process.getuid?.() === 0;

const NODE_DETECT = `#!/bin/sh
[ -f package-lock.json ] || exit 100
`;
const NODE_BUILD = `#!/bin/sh
set -e
L="$CNB_LAYERS_DIR/modules"
sum=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if [ -d "$L/node_modules" ] && grep -q "$sum" "$L.toml" 2>/dev/null; then
  echo "node_modules from the cache"
else
  rm -rf "$L"; mkdir -p "$L"
  cp package.json package-lock.json "$L/"
  cd "$L" && HOME=/tmp npm ci --omit=dev --no-audit --no-fund --cache /tmp/npm-cache --loglevel=error
  rm -f "$L/package.json" "$L/package-lock.json"; cd /workspace
  echo "npm ci done"
fi
mkdir -p "$L/env.launch"
printf %s "$L/node_modules" > "$L/env.launch/NODE_PATH.default"
printf '[types]\\nlaunch = true\\ncache = true\\n[metadata]\\nsum = "%s"\\n' "$sum" > "$L.toml"
cat > "$CNB_LAYERS_DIR/launch.toml" <<'EOF'
[[processes]]
type = "web"
command = ["node", "server.js"]
default = true
EOF
`;

/** The host's Node.js runtime as image entries: node, the libraries it links, npm. */
async function nodeRuntime(): Promise<ExtraFile[]> {
  const node = realpathSync(execFileSync('sh', ['-c', 'command -v node'], { encoding: 'utf8' }).trim());
  const out: ExtraFile[] = [
    { path: 'usr/local', type: 'directory' },
    { path: 'usr/local/bin', type: 'directory' },
    { path: 'usr/local/lib', type: 'directory' },
    { path: 'usr/local/lib/node_modules', type: 'directory' },
    { path: 'usr/local/bin/node', content: await readFile(node), mode: 0o755 },
  ];
  const dirs = new Set<string>();
  for (const line of execFileSync('ldd', [node], { encoding: 'utf8' }).split('\n')) {
    const m = /(\/\S+) \(0x/.exec(line);
    if (!m) continue;
    const p = m[1] as string;
    for (let d = dirname(p); d !== '/' && !dirs.has(d); d = dirname(d)) dirs.add(d);
    out.push({ path: p.slice(1), content: await readFile(realpathSync(p)), mode: 0o755 });
  }
  for (const d of [...dirs].sort()) out.unshift({ path: d.slice(1), type: 'directory' });
  const npmRoot = join(
    dirname(realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim())),
    '..',
  );
  const walk = async (abs: string, rel: string): Promise<void> => {
    for (const e of await readdir(abs)) {
      const a = join(abs, e);
      const r = `${rel}/${e}`;
      const st = await lstat(a);
      if (st.isDirectory()) {
        out.push({ path: r, type: 'directory' });
        await walk(a, r);
      } else if (st.isSymbolicLink()) out.push({ path: r, type: 'symlink', linkname: await readlink(a) });
      else if (st.isFile()) out.push({ path: r, content: await readFile(a), mode: st.mode & 0o777 });
    }
  };
  out.push({ path: 'usr/local/lib/node_modules/npm', type: 'directory' });
  await walk(realpathSync(npmRoot), 'usr/local/lib/node_modules/npm');
  out.push({ path: 'usr/local/bin/npm', type: 'symlink', linkname: '../lib/node_modules/npm/bin/npm-cli.js' });
  return out;
}

describe(
  'buildpacks: a Node.js buildpack with npm ci into a cache+launch layer',
  { skip: isRoot ? false : 'needs root (dockerd)' },
  () => {
    let registry: TestRegistry;
    let dockerd: Dockerd;
    let work = '';
    let app = '';
    const R = (): string => registry.host;

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'kiln-bp-node-'));
      await chmod(work, 0o755);
      registry = await startRegistry();
      dockerd = await startDockerd({ insecureRegistries: [registry.host] });
      const runtime = await nodeRuntime();
      const opts = { insecureRegistries: [registry.host] };
      const cfg = { Env: ['PATH=/usr/local/bin:/usr/bin:/bin'] };
      // a host behind a TLS-inspecting proxy trusts its CA through NODE_EXTRA_CA_CERTS: the builder does the same
      const ca = process.env.NODE_EXTRA_CA_CERTS;
      if (ca) {
        runtime.push({ path: 'etc/kiln-test-ca.pem', content: await readFile(ca) });
        cfg.Env.push('NODE_EXTRA_CA_CERTS=/etc/kiln-test-ca.pem');
      }
      // uncompressed: the runtime layer is only made and read here (no gzip of ~120 MB twice)
      await push(
        await makeBusyboxImage({ compression: 'none', extraFiles: runtime, config: cfg }),
        parseReference(`${R()}/node-run:1`),
        opts,
      );
      const bp = 'cnb/buildpacks/test_node/1.0.0';
      const builder = await makeBusyboxImage({
        compression: 'none',
        extraFiles: runtime,
        secondLayer: [
          { path: 'cnb', type: 'directory' },
          { path: 'cnb/buildpacks', type: 'directory' },
          { path: 'cnb/buildpacks/test_node', type: 'directory' },
          { path: bp, type: 'directory' },
          { path: `${bp}/buildpack.toml`, content: 'api = "0.10"\n[buildpack]\nid = "test/node"\nversion = "1.0.0"\n' },
          { path: `${bp}/bin`, type: 'directory' },
          { path: `${bp}/bin/detect`, content: NODE_DETECT, mode: 0o755 },
          { path: `${bp}/bin/build`, content: NODE_BUILD, mode: 0o755 },
          { path: 'cnb/order.toml', content: '[[order]]\n[[order.group]]\nid = "test/node"\n' },
          { path: 'cnb/run.toml', content: `[[images]]\nimage = "${R()}/node-run:1"\n` },
        ],
        config: { ...cfg, Env: [...cfg.Env, 'CNB_USER_ID=1000', 'CNB_GROUP_ID=1000'] },
      });
      await push(builder, parseReference(`${R()}/node-builder:1`), opts);
      app = join(work, 'app');
      await mkdir(app);
      await writeFile(
        join(app, 'package.json'),
        JSON.stringify({ name: 'app', version: '1.0.0', dependencies: { ms: '2.1.3' } }),
      );
      await writeFile(join(app, 'server.js'), "console.log('node app', require('ms')(60000));\n");
      const lock = spawnSync('npm', ['install', '--package-lock-only', '--no-audit', '--no-fund'], {
        cwd: app,
        encoding: 'utf8',
      });
      assert.equal(lock.status, 0, lock.stderr);
    });

    after(async () => {
      await dockerd?.stop();
      await registry?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    test('npm ci into a cache+launch layer; the rebuild takes it from the cache and uploads nothing', async () => {
      const tag = `${R()}/node-app:1`;
      const kiln = () =>
        runKiln(
          [
            'pack',
            'build',
            tag,
            '--builder',
            `${R()}/node-builder:1`,
            '--path',
            app,
            '--publish',
            '--insecure-registry',
            R(),
            '--progress',
            'plain',
          ],
          { KILN_HOME: join(work, 'home') },
        );
      const first = await kiln();
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stderr, /npm ci done/);
      await dockerd.docker(['pull', tag]);
      assert.equal((await dockerd.runImage(tag)).trim(), 'node app 1m');
      const digest1 = /built (sha256:[0-9a-f]+)/.exec(first.stderr)?.[1];
      const before = registry.log().length;
      const second = await kiln();
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stderr, /node_modules from the cache/);
      assert.match(second.stderr, /0 uploaded/);
      assert.equal(/built (sha256:[0-9a-f]+)/.exec(second.stderr)?.[1], digest1, 'same image');
      await registry.waitForLog(/PUT \/v2\/node-app\/manifests[^]*PUT \/v2\/node-app\/manifests/);
      const uploads = registry
        .log()
        .slice(before)
        .split('\n')
        .filter((l) => /"(POST|PUT|PATCH) \/v2\/node-app\/blobs\/uploads/.test(l));
      assert.deepEqual(uploads, []);
    });
  },
);
