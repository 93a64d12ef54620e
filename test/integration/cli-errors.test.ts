/**
 * QA of bad input end to end through `node bin/kiln.js`: every case asserts the DEVELOPERS.md standard — ONE
 * `kiln:` line naming what and where (Dockerfile:N, the registry or the file) plus a hint, a non-zero exit, no
 * stack trace without --debug, nothing half-written (registry repositories, store names, temp dirs in a private
 * TMPDIR and $KILN_HOME/tmp, mounts) — and the security rules (no host file through a symlink or a hostile
 * context tar, no secret or undeclared build arg in history, layers or progress output).
 *
 * One plain registry, one htpasswd registry and one token registry are shared by the whole file; a busybox
 * base is bootstrapped once into a shared $KILN_HOME (`kiln bootstrap busybox`) and pushed to the registry.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { KILN_FROM_SOURCE, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { makeBusyboxImage, makeTar } from '../helpers/images.js';
import { writeLayout } from '../../src/oci/layout.js';
import { writeDockerArchive } from '../../src/oci/docker-archive.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const KILN = join(REPO, 'bin', 'kiln.js');

let work: string;
/** Shared $KILN_HOME with localhost/busybox:latest bootstrapped. */
let home: string;
/** Private TMPDIR for every kiln run: must be empty after each one. */
let tmp: string;
let reg: TestRegistry;
let basic: TestRegistry;
let token: TestRegistry;
let base: string;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  home?: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string | Buffer;
  onStderr?: (all: string, child: ChildProcess) => void;
}

/** Run `node bin/kiln.js ARGS` (from source) with a private TMPDIR and DOCKER_CONFIG. */
function kiln(args: string[], o: RunOptions = {}): Promise<Run> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    KILN_FROM_SOURCE,
    KILN_HOME: o.home ?? home,
    TMPDIR: tmp,
    DOCKER_CONFIG: join(work, 'docker-config'),
    ...o.env,
  };
  delete env.KILN_DEBUG;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [KILN, ...args], {
      env,
      cwd: o.cwd ?? work,
      stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      o.onStderr?.(stderr, child);
    });
    if (o.input !== undefined) child.stdin!.end(o.input);
    // a safety net, not a timing assertion: a hung kiln fails its test instead of hanging the suite
    const guard = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * The standard for a failure: non-zero exit, exactly one `kiln:` line (matching `re`), no other error-looking
 * lines, no stack trace. Returns the error line.
 */
function oneLineError(r: Run, re: RegExp, what = ''): string {
  const ctx = `${what}\n--- stderr ---\n${r.stderr}\n--- stdout ---\n${r.stdout}`;
  assert.ok(r.code !== 0 && r.code !== null, `expected a non-zero exit ${ctx}`);
  const lines = r.stderr.split('\n').filter((l) => /^(kiln|error):/.test(l));
  assert.equal(lines.length, 1, `expected one error line ${ctx}`);
  assert.match(lines[0]!, re, ctx);
  assert.doesNotMatch(r.stderr, /^\s+at .*(\.ts|\.js|node:)/m, `no stack trace without --debug ${ctx}`);
  assert.doesNotMatch(r.stderr, /\b(TypeError|ReferenceError|RangeError|SyntaxError|AssertionError)\b/, ctx);
  return lines[0]!;
}

function hintOf(r: Run): string | undefined {
  return r.stderr
    .split('\n')
    .find((l) => l.startsWith('hint: '))
    ?.slice(6);
}

/** Nothing left in the private TMPDIR or $KILN_HOME/tmp, no mounts under either. */
async function assertClean(h = home): Promise<void> {
  assert.deepEqual(
    (await readdir(tmp)).filter((n) => !n.startsWith('tsx-')),
    [],
    'no leftovers in TMPDIR',
  );
  const ktmp = (await readdir(join(h, 'tmp')).catch(() => [] as string[])).filter((n) => !n.startsWith('.'));
  assert.deepEqual(ktmp, [], 'no leftovers in $KILN_HOME/tmp');
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const mounts = info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(h + '/') || p.startsWith(tmp + '/') || p.startsWith(work + '/'));
  assert.deepEqual(mounts, [], 'no mounts left');
}

/** Repositories the registry has (filesystem storage), e.g. ['app', 'base/busybox']. */
async function repositories(r: TestRegistry): Promise<string[]> {
  const root = join(r.dataDir, 'docker', 'registry', 'v2', 'repositories');
  const out: string[] = [];
  const walk = async (dir: string, prefix: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (!e.isDirectory()) continue;
      if (e.name === '_manifests') out.push(prefix.replace(/\/$/, ''));
      else if (!e.name.startsWith('_')) await walk(join(dir, e.name), `${prefix}${e.name}/`);
    }
  };
  await walk(root, '');
  return out.sort();
}

/** Tags of `repo` in the registry (filesystem storage). */
async function tags(r: TestRegistry, repo: string): Promise<string[]> {
  const dir = join(r.dataDir, 'docker', 'registry', 'v2', 'repositories', repo, '_manifests', 'tags');
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/** Every blob the registry stores, decompressed when gzip. */
async function registryBlobs(r: TestRegistry): Promise<Buffer[]> {
  const out: Buffer[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name === 'data') {
        const b = await readFile(p);
        out.push(b[0] === 0x1f && b[1] === 0x8b ? gunzipSync(b) : b);
      }
    }
  };
  await walk(join(r.dataDir, 'docker', 'registry', 'v2', 'blobs'));
  return out;
}

async function ctxDir(name: string, files: Record<string, string>): Promise<string> {
  const dir = join(work, 'ctx', name);
  await mkdir(dir, { recursive: true });
  for (const [p, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, p)), { recursive: true });
    await writeFile(join(dir, p), content);
  }
  return dir;
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'kiln-qa-'));
  home = join(work, 'home');
  tmp = join(work, 'tmp');
  await mkdir(tmp);
  [reg, basic, token] = await Promise.all([
    startRegistry(),
    startRegistry({ auth: 'htpasswd' }),
    startRegistry({
      auth: 'token',
      token: {
        users: {
          reader: { password: 'reader-pw', grants: [{ repository: '*', actions: ['pull'] }] },
        },
        anonymous: [],
      },
    }),
  ]);
  const boot = await kiln(['bootstrap', 'busybox']);
  assert.equal(boot.code, 0, boot.stderr);
  base = `${reg.host}/base/busybox:1`;
  const pushed = await kiln(['push', '--progress', 'quiet', 'localhost/busybox:latest', base]);
  assert.equal(pushed.code, 0, pushed.stderr);
});

after(async () => {
  await Promise.all([reg?.stop(), basic?.stop(), token?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

describe('kiln CLI: usage', () => {
  test('kiln --help and every command --help exit 0 and print usage', async () => {
    const top = await kiln(['--help']);
    assert.equal(top.code, 0, top.stderr);
    assert.match(top.stdout, /^Usage: kiln /);
    const commands = [...top.stdout.matchAll(/^ {2}([a-z]+) /gm)].map((m) => m[1]!).filter((c) => c !== 'help');
    for (const c of ['build', 'pull', 'push', 'copy', 'inspect', 'images', 'rmi', 'login', 'logout']) {
      assert.ok(commands.includes(c), `kiln --help lists ${c}`);
    }
    const subs = [...commands.map((c) => [c]), ['dockerfile', 'dump'], ['dockerfile', 'lint'], ['help', 'build']];
    const runs = await Promise.all(subs.map((c) => kiln(c[0] === 'help' ? c : [...c, '--help'])));
    runs.forEach((r, i) => {
      assert.equal(r.code, 0, `${subs[i]!.join(' ')} --help: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^Usage: kiln ${subs[i]!.filter((s) => s !== 'help').join(' ')}`));
      assert.equal(r.stderr, '');
    });
  });

  test('an unknown command fails with one line and a "did you mean"', async () => {
    const r = await kiln(['buidl', '.']);
    oneLineError(r, /unknown command 'buidl'/);
    assert.match(r.stderr, /Did you mean build\?/);
    const r2 = await kiln(['frobnicate']);
    oneLineError(r2, /unknown command 'frobnicate'/);
  });

  test('an unknown flag fails with one line naming it', async () => {
    const r = await kiln(['build', '--frobnicate', '.']);
    oneLineError(r, /unknown option '--frobnicate'/);
    const r2 = await kiln(['pull']);
    oneLineError(r2, /missing required argument 'ref'/);
  });

  test('a bad option value fails with one line naming the option', async () => {
    const cases: [string[], RegExp][] = [
      [['build', '--progress', 'fancy', '.'], /progress/],
      [['build', '--output', 'type=nope,dest=x', '.'], /type=nope|output/],
      [['build', '--secret', 'nonsense', '.'], /secret/],
      [['build', '--network', 'bridge', '.'], /network/],
      [['images', '--format', 'yaml'], /format/],
    ];
    for (const [args, re] of cases) {
      const r = await kiln(args);
      oneLineError(r, re, args.join(' '));
    }
    await assertClean();
  });
});

describe('kiln CLI: dockerfile tools', () => {
  test('kiln dockerfile dump/lint/stages on a missing file or a directory: one line naming it', async () => {
    const missing = join(work, 'no-such-Dockerfile');
    const runs = await Promise.all([
      kiln(['dockerfile', 'dump', missing]),
      kiln(['dockerfile', 'lint', work]),
      kiln(['dockerfile', 'stages', missing]),
    ]);
    oneLineError(runs[0]!, new RegExp(`^kiln: cannot read ${missing}: no such file or directory$`));
    oneLineError(runs[1]!, new RegExp(`^kiln: cannot read ${work}: is a directory$`));
    oneLineError(runs[2]!, /no such file or directory/);
    for (const r of runs) assert.match(hintOf(r) ?? '', /Dockerfile/);
  });

  test('kiln dockerfile lint reports a malformed Dockerfile with FILE:LINE', async () => {
    const d = await ctxDir('lint-bad', { Dockerfile: `FROM ${base}\nRUNN true\n` });
    const r = await kiln(['dockerfile', 'lint', join(d, 'Dockerfile')]);
    oneLineError(
      r,
      new RegExp(`^kiln: ${join(d, 'Dockerfile')}:2: unknown instruction: RUNN \\(did you mean RUN\\?\\)$`),
    );
  });
});

describe('kiln CLI: references and registries', () => {
  test('malformed references: one line quoting the reference, with a hint', async () => {
    const refs = ['app/UPPER:tag', 'foo:bar:baz', 'app@sha256:xyz', 'a//b', 'app:' + 'x'.repeat(200), ':tag'];
    const commands = [['pull'], ['inspect'], ['push', 'localhost/busybox:latest']];
    const runs = await Promise.all(refs.map((ref, i) => kiln([...commands[i % commands.length]!, ref])));
    runs.forEach((r, i) => {
      const line = oneLineError(r, /^kiln: .*invalid reference/, refs[i]);
      assert.ok(line.includes(JSON.stringify(refs[i])), `${line} quotes ${refs[i]}`);
      assert.ok(hintOf(r), 'a hint');
    });
  });

  test('unreachable registry (closed port): one line naming host:port, nothing stored', async () => {
    const h = join(work, 'home-unreachable');
    const dead = '127.0.0.1:9'; // discard port: nothing listens on it here
    for (const args of [
      ['pull', `${dead}/app:v1`],
      ['inspect', `${dead}/app:v1`],
      ['push', 'localhost/busybox:latest', `${dead}/app:v1`],
      ['copy', base, `${dead}/app:v1`],
    ]) {
      const r = await kiln(args, { home: args[0] === 'push' ? home : h });
      oneLineError(r, new RegExp(`^kiln: .*${dead.replace(/\./g, '\\.')}.*unreachable`), args.join(' '));
      assert.ok(hintOf(r));
    }
    const images = await kiln(['images', '--format', 'json'], { home: h });
    assert.equal(images.code, 0, images.stderr);
    assert.deepEqual(JSON.parse(images.stdout || '[]'), []);
    await assertClean(h);
  });

  test('404: a missing tag or repository names the reference', async () => {
    const r = await kiln(['pull', `${reg.host}/base/busybox:nope`]);
    oneLineError(r, new RegExp(`^kiln: .*${reg.host}/base/busybox:nope.*(not found|unknown)`, 'i'));
    const r2 = await kiln(['inspect', `${reg.host}/no/such-repo:1`]);
    oneLineError(r2, new RegExp(`^kiln: .*${reg.host}/no/such-repo:1.*(not found|unknown)`, 'i'));
    const r3 = await kiln(['inspect', `${reg.host}/base/busybox@sha256:${'0'.repeat(64)}`]);
    oneLineError(r3, /^kiln: .*sha256:0{64}.*(not found|unknown)/i);
    await assertClean();
  });

  test('401 (htpasswd): pull/push without or with wrong credentials: one line, login hint, nothing pushed', async () => {
    const r = await kiln(['pull', `${basic.host}/app:v1`]);
    oneLineError(r, new RegExp(`^kiln: .*${basic.host}.*(unauthorized|authentication|401)`, 'i'));
    assert.match(hintOf(r) ?? '', /login/);
    const login = await kiln(['login', '-u', 'kiln', '--password-stdin', basic.host], {
      input: 'wrong-password-XYZZY\n',
    });
    oneLineError(login, new RegExp(`^kiln: .*${basic.host}`));
    assert.doesNotMatch(login.stderr + login.stdout, /XYZZY/, 'the password is never printed');
    const cfg = join(work, 'docker-config', 'config.json');
    if (existsSync(cfg)) assert.doesNotMatch(await readFile(cfg, 'utf8'), new RegExp(basic.host));
    const p = await kiln(['push', '--progress', 'plain', 'localhost/busybox:latest', `${basic.host}/app:v1`]);
    oneLineError(p, new RegExp(`^kiln: .*${basic.host}.*(unauthorized|authentication|401)`, 'i'));
    assert.deepEqual(await repositories(basic), []);
    // and with the right password, login works and the password is not echoed
    const ok = await kiln(['login', '-u', 'kiln', '--password-stdin', basic.host], {
      input: basic.password!,
      env: { DOCKER_CONFIG: join(work, 'docker-config-ok') },
    });
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(!(ok.stderr + ok.stdout).includes(basic.password!));
    await assertClean();
  });

  test('403 (token, pull-only user): push is denied with one line, nothing pushed', async () => {
    const dc = join(work, 'docker-config-reader');
    await mkdir(dc, { recursive: true });
    const auth = Buffer.from('reader:reader-pw').toString('base64');
    await writeFile(join(dc, 'config.json'), JSON.stringify({ auths: { [token.host]: { auth } } }));
    const p = await kiln(['push', '--progress', 'plain', 'localhost/busybox:latest', `${token.host}/app:v1`], {
      env: { DOCKER_CONFIG: dc },
    });
    const line = oneLineError(p, new RegExp(`^kiln: .*${token.host}.*(denied|forbidden|403|unauthorized)`, 'i'));
    assert.ok(!line.includes('reader-pw') && !p.stderr.includes(auth), 'no credential in the output');
    assert.deepEqual(await repositories(token), []);
    await assertClean();
  });
});

describe('kiln CLI: corrupt layouts and archives', () => {
  let layoutSrc: string;
  let archiveSrc: string;

  before(async () => {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'hello', content: 'hi\n' }] });
    layoutSrc = join(work, 'layout-good');
    await writeLayout(layoutSrc, [{ image: img, name: 'v1' }]);
    archiveSrc = join(work, 'good.tar');
    await writeDockerArchive(archiveSrc, [{ image: img, tags: ['example.com/app:v1'] }]);
  });

  async function copyLayout(name: string): Promise<string> {
    const dst = join(work, name);
    await rm(dst, { recursive: true, force: true });
    await mkdir(dst);
    const r = await new Promise<number | null>((resolve) =>
      spawn('cp', ['-a', `${layoutSrc}/.`, dst]).on('close', resolve),
    );
    assert.equal(r, 0);
    return dst;
  }

  async function blobFiles(dir: string): Promise<{ path: string; size: number }[]> {
    const d = join(dir, 'blobs', 'sha256');
    const out = [];
    for (const n of await readdir(d)) out.push({ path: join(d, n), size: (await stat(join(d, n))).size });
    return out.sort((a, b) => b.size - a.size);
  }

  test('OCI layouts: missing index.json, bad JSON, missing and truncated blobs name the file; nothing pushed', async () => {
    const cases: [string, (dir: string) => Promise<void>, RegExp][] = [
      ['no-index', async (d) => rm(join(d, 'index.json')), /index\.json/],
      ['bad-index', async (d) => writeFile(join(d, 'index.json'), '{"manifests": ['), /index\.json/],
      ['bad-oci-layout', async (d) => writeFile(join(d, 'oci-layout'), 'nope'), /oci-layout/],
      [
        'missing-layer',
        async (d) => {
          await rm((await blobFiles(d))[0]!.path);
        },
        /[0-9a-f]{64}/,
      ],
      [
        'truncated-layer',
        async (d) => {
          const big = (await blobFiles(d))[0]!;
          await truncate(big.path, Math.floor(big.size / 2));
        },
        /[0-9a-f]{64}/,
      ],
    ];
    for (const [name, corrupt, re] of cases) {
      const dir = await copyLayout(`layout-${name}`);
      await corrupt(dir);
      const r = await kiln(['push', '--progress', 'plain', `oci:${dir}:v1`, `${reg.host}/corrupt/${name}:v1`]);
      const line = oneLineError(r, re, name);
      assert.ok(line.includes(dir), `${name}: "${line}" names the layout`);
      assert.deepEqual(await tags(reg, `corrupt/${name}`), [], `${name}: nothing pushed`);
    }
    assert.ok(!(await repositories(reg)).some((r) => r.startsWith('corrupt/')));
    await assertClean();
  });

  test('hostile digests and paths in layouts and archives are refused, never resolved on the host', async () => {
    const lay = join(work, 'layout-traversal');
    await mkdir(join(lay, 'blobs', 'sha256'), { recursive: true });
    await writeFile(join(lay, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    const evil = {
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: 'sha256:../../../../../../../../etc/passwd',
      size: 100,
      annotations: { 'org.opencontainers.image.ref.name': 'v1' },
    };
    await writeFile(join(lay, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [evil] }));
    const r = await kiln(['inspect', '--raw', `oci:${lay}:v1`]);
    const line = oneLineError(r, /^kiln: .*index\.json.*invalid descriptor/);
    assert.ok(!r.stdout.includes('root:x:0:0'), 'no host file printed');
    assert.ok(line.includes(lay));
    const arch = join(work, 'archive-traversal.tar');
    const manifest = JSON.stringify([{ Config: '../../../../etc/passwd', RepoTags: ['x:1'], Layers: ['/etc/shadow'] }]);
    await writeFile(
      arch,
      await makeTar([{ header: { name: 'manifest.json', size: manifest.length }, body: Buffer.from(manifest) }]),
    );
    const r2 = await kiln(['inspect', `docker-archive:${arch}`]);
    const line2 = oneLineError(r2, /^kiln: .*(missing|not found)/);
    assert.ok(line2.includes(arch));
    assert.ok(!r2.stdout.includes('root:x:0:0'), 'no host file printed');
  });

  test('a corrupt local store: a truncated blob and a garbage index.json give one line naming the file', async () => {
    const h = join(work, 'home-corrupt');
    const boot = await kiln(['bootstrap', 'busybox'], { home: h });
    assert.equal(boot.code, 0, boot.stderr);
    const blobs = join(h, 'store', 'blobs', 'sha256');
    const sizes = await Promise.all(
      (await readdir(blobs)).map(async (n) => ({ n, s: (await stat(join(blobs, n))).size })),
    );
    const biggest = sizes.sort((a, b) => b.s - a.s)[0]!.n;
    await truncate(join(blobs, biggest), 1000);
    const p = await kiln(
      ['push', '--progress', 'plain', 'localhost/busybox:latest', `${reg.host}/qa/corrupt-store:v1`],
      {
        home: h,
      },
    );
    oneLineError(p, new RegExp(`^kiln: .*${biggest}`));
    assert.deepEqual(await tags(reg, 'qa/corrupt-store'), [], 'nothing pushed');
    const d = await ctxDir('corrupt-store', { Dockerfile: 'FROM localhost/busybox\nRUN true\n' });
    const b = await kiln(['build', '--progress', 'plain', d], { home: h });
    oneLineError(b, new RegExp(`^kiln: Dockerfile:1: .*${biggest}`));
    await writeFile(join(h, 'store', 'index.json'), '{garbage');
    const i = await kiln(['images'], { home: h });
    oneLineError(i, /^kiln: .*store\/index\.json: invalid JSON/);
    await assertClean(h);
  });

  test('a build FROM a local image in a corrupt store names the store file instead of falling back to a registry', async () => {
    const h = join(work, 'home-corrupt-index');
    const boot = await kiln(['bootstrap', 'busybox'], { home: h });
    assert.equal(boot.code, 0, boot.stderr);
    await writeFile(join(h, 'store', 'index.json'), '{garbage');
    const d = await ctxDir('corrupt-index', { Dockerfile: 'FROM localhost/busybox\nRUN true\n' });
    const b = await kiln(['build', '--progress', 'plain', d], { home: h });
    oneLineError(b, /^kiln: Dockerfile:1: .*store\/index\.json/);
  });

  test('docker archives: truncated, not a tar, no manifest.json: one line naming the file, nothing stored', async () => {
    const data = await readFile(archiveSrc);
    const truncated = join(work, 'truncated.tar');
    await writeFile(truncated, data.subarray(0, Math.floor(data.length * 0.6)));
    const garbage = join(work, 'garbage.tar');
    await writeFile(garbage, 'this is not a tar archive\n'.repeat(100));
    const noManifest = join(work, 'nomanifest.tar');
    await writeFile(noManifest, await makeTar([{ header: { name: 'hello.txt', size: 2 }, body: Buffer.from('hi') }]));
    const h = join(work, 'home-archives');
    const push = (file: string): string[] => [
      'push',
      '--progress',
      'plain',
      `docker-archive:${file}`,
      `${reg.host}/corrupt/archive:v1`,
    ];
    const copy = (file: string): string[] => [
      'copy',
      '--progress',
      'plain',
      `docker-archive:${file}`,
      `oci:${join(work, 'from-archive')}:v1`,
    ];
    const cases: [string, string[]][] = [
      [truncated, push(truncated)],
      [truncated, copy(truncated)],
      [garbage, push(garbage)],
      [garbage, ['inspect', `docker-archive:${garbage}`]],
      [noManifest, copy(noManifest)],
      [join(work, 'does-not-exist.tar'), push(join(work, 'does-not-exist.tar'))],
    ];
    for (const [file, args] of cases) {
      const r = await kiln(args, { home: h });
      const line = oneLineError(r, /^kiln: /, args.join(' '));
      assert.ok(line.includes(file), `"${line}" names ${file}`);
    }
    assert.deepEqual(await tags(reg, 'corrupt/archive'), []);
    assert.ok(!existsSync(join(work, 'from-archive', 'index.json')), 'no half-written layout');
    await assertClean(h);
  });
});

/** Every regular file under `dir` (gunzipped when gzip) that contains `needle`. */
async function filesContaining(dir: string, needle: string): Promise<string[]> {
  const hits: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) {
        let b = await readFile(p);
        if (b[0] === 0x1f && b[1] === 0x8b) b = gunzipSync(b);
        if (b.includes(needle)) hits.push(p);
      }
    }
  };
  await walk(dir);
  return hits;
}

interface ImageConfigJSON {
  config: { Env?: string[] };
  history: { created_by?: string }[];
}

/** The config of `repo:tag` in the test registry, read over HTTP. */
async function registryConfig(r: TestRegistry, repo: string, tag: string): Promise<ImageConfigJSON> {
  const accept = [
    'application/vnd.oci.image.manifest.v1+json',
    'application/vnd.docker.distribution.manifest.v2+json',
  ].join(', ');
  const m = (await (await fetch(`${r.url}/v2/${repo}/manifests/${tag}`, { headers: { accept } })).json()) as {
    config: { digest: string };
  };
  return (await (await fetch(`${r.url}/v2/${repo}/blobs/${m.config.digest}`)).json()) as ImageConfigJSON;
}

describe('kiln build: malformed Dockerfiles and failing steps', () => {
  test('parse errors: one line with Dockerfile:N, the offending line as hint, before any work', async () => {
    const cases: { df: string; line: number; re: RegExp; hint?: RegExp }[] = [
      { df: 'FROM B\nCOPY\n', line: 2, re: /COPY requires at least two arguments/, hint: /^line 2: COPY$/ },
      { df: 'FROM B\nRUN true\nENV\n', line: 3, re: /ENV requires at least one argument/ },
      { df: '\n\nFROM\n', line: 3, re: /FROM requires either one or three arguments/ },
      { df: 'FROM B AS\n', line: 1, re: /FROM requires either one or three arguments/ },
      { df: '# comment\nRUN echo\nFROM B\n', line: 2, re: /no build stage in current context/ },
      { df: 'FROM B\nRUN <<EOF\necho hi\n', line: 2, re: /unterminated heredoc/ },
      { df: 'FROM B\nCOPY --bogus=1 a b\n', line: 2, re: /unknown flag: --?bogus/ },
      { df: 'FROM B\nHEALTHCHECK --interval=bad CMD true\n', line: 2, re: /invalid duration "bad"/ },
      { df: 'FROM B\nEXPOSE abc\n', line: 2, re: /invalid containerPort: abc/ },
      { df: 'FROM B\nONBUILD FROM x\n', line: 2, re: /FROM isn't allowed as an ONBUILD trigger/ },
      { df: 'FROM B\nRUN --mount=type=bogus true\n', line: 2, re: /mount type "bogus"/ },
      { df: 'FROM B\nWORKDIR\n', line: 2, re: /WORKDIR requires exactly one argument/ },
    ];
    const dirs = await Promise.all(
      cases.map((c, i) => ctxDir(`parse-${i}`, { Dockerfile: c.df.replace(/\bB\b/g, base) })),
    );
    const runs = await Promise.all(dirs.map((d) => kiln(['build', '--progress', 'plain', d])));
    runs.forEach((r, i) => {
      const c = cases[i]!;
      const line = oneLineError(r, new RegExp(`^kiln: Dockerfile:${c.line}: `), c.df);
      assert.match(line, c.re, c.df);
      if (c.hint) assert.match(hintOf(r) ?? '', c.hint, c.df);
      assert.doesNotMatch(r.stderr, /^#\d+ \[\d+\/\d+\] RUN/m, `${c.df}: no step ran`);
    });
    await assertClean();
  });

  test('an unknown instruction names it with "did you mean" and the line', async () => {
    const d = await ctxDir('unknown-instr', { Dockerfile: `FROM ${base}\nRUN true\nCOPPY a b\n` });
    const r = await kiln(['build', d]);
    oneLineError(r, /^kiln: Dockerfile:3: unknown instruction: COPPY \(did you mean COPY\?\)$/);
    assert.equal(hintOf(r), 'line 3: COPPY a b');
    const d2 = await ctxDir('unknown-instr-2', { Dockerfile: `FROM ${base}\nFROBNICATE x\n` });
    const r2 = await kiln(['build', '-f', join(d2, 'Dockerfile'), d2]);
    const line = oneLineError(r2, /Dockerfile:2: unknown instruction: FROBNICATE/);
    assert.doesNotMatch(line, /did you mean/, 'no suggestion when nothing is close');
    // a hostile Dockerfile cannot send terminal escape sequences through the error line
    const d3 = await ctxDir('unknown-instr-3', { Dockerfile: `FROM ${base}\nRUN\x1b]0;pwned\x07\x1b[2J echo\n` });
    const r3 = await kiln(['build', d3]);
    oneLineError(r3, /^kiln: Dockerfile:2: unknown instruction: RUN\\x1b\]0;pwned\\x07\\x1b\[2J$/);
    assert.ok(!r3.stderr.includes('\x1b'), 'no raw ESC on stderr');
  });

  test('--debug adds the stack trace; KILN_DEBUG-less runs never show one', async () => {
    const d = await ctxDir('debug', { Dockerfile: `FROM ${base}\nRUNN true\n` });
    const r = await kiln(['--debug', 'build', d]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^kiln: Dockerfile:2: unknown instruction: RUNN/m);
    assert.match(r.stderr, /^\s+at /m, 'stack printed with --debug');
  });

  test('failing RUN: Dockerfile:N, the command and the exit code; later steps skipped, nothing pushed', async () => {
    const d = await ctxDir('failing-run', {
      Dockerfile: `FROM ${base}\nRUN echo ok > /ok\n\nRUN echo about-to-fail && exit 7\nRUN echo never-runs\n`,
    });
    const r = await kiln(['build', '--progress', 'plain', '-t', `${reg.host}/qa/failing:v1`, '--push', d]);
    oneLineError(
      r,
      /^kiln: Dockerfile:4: RUN echo about-to-fail && exit 7: process "\/bin\/sh -c echo about-to-fail && exit 7" did not complete successfully: exit code: 7$/,
    );
    assert.match(r.stderr, /about-to-fail/);
    assert.doesNotMatch(r.stderr, /never-runs\n(?!.*RUN)/);
    assert.deepEqual(await tags(reg, 'qa/failing'), []);
    await assertClean();
  });

  test('COPY --from=<missing image> points at the COPY line', async () => {
    const d = await ctxDir('copy-from-missing', {
      Dockerfile: `FROM ${base}\nRUN true\nCOPY --from=${reg.host}/no/such:1 /a /b\n`,
    });
    const r = await kiln(['build', '--progress', 'plain', d]);
    oneLineError(r, new RegExp(`^kiln: Dockerfile:3: .*${reg.host}/no/such:1`));
  });

  test('COPY of a missing source names it; a missing Dockerfile or context names the path', async () => {
    const d = await ctxDir('missing-src', {
      Dockerfile: `FROM ${base}\nCOPY present.txt nothere.txt /dst/\n`,
      'present.txt': 'x',
    });
    const r = await kiln(['build', '--progress', 'plain', d]);
    oneLineError(r, /^kiln: Dockerfile:2: .*"?nothere\.txt"?.*not found/);
    const r2 = await kiln(['build', '-f', join(d, 'Nope.Dockerfile'), d]);
    oneLineError(r2, /Nope\.Dockerfile/);
    const r3 = await kiln(['build', join(work, 'no-such-context')]);
    oneLineError(r3, /no-such-context/);
    await assertClean();
  });
});

describe('kiln build: hostile contexts, build args and secrets', () => {
  test('COPY through symlinks pointing outside the context never reads a host file', async () => {
    const hostDir = join(work, 'host-only');
    await mkdir(hostDir, { recursive: true });
    const HOST_SECRET = 'HOST-ONLY-CONTENT-5d1c7e';
    await writeFile(join(hostDir, 'secret.txt'), HOST_SECRET + '\n');
    const d = await ctxDir('symlinks', {
      Dockerfile: `FROM ${base}\nCOPY dir /dir\nCOPY abs-in /abs-in\nCOPY rel-out /rel-out\n`,
      // decoy: where the links land when resolved inside the context, like BuildKit does
      [join(hostDir.slice(1), 'secret.txt')]: 'in-context decoy\n',
      'dir/plain.txt': 'plain\n',
    });
    await symlink(join(hostDir, 'secret.txt'), join(d, 'dir', 'abs-link'));
    await symlink(hostDir, join(d, 'dir', 'dir-link'));
    await symlink(join(hostDir, 'secret.txt'), join(d, 'abs-in'));
    await symlink('../'.repeat(12) + join(hostDir, 'secret.txt').slice(1), join(d, 'rel-out'));
    const out = join(work, 'symlinks-out');
    const r = await kiln(['build', '--progress', 'plain', '-t', `${reg.host}/qa/symlinks:v1`, '--push', d]);
    assert.equal(r.code, 0, r.stderr);
    // links inside a copied directory stay links (never followed); top-level sources resolve inside the context
    const local = await kiln(['build', '--progress', 'quiet', '-o', `type=local,dest=${out}`, d]);
    assert.equal(local.code, 0, local.stderr);
    assert.equal(await readFile(join(out, 'dir', 'plain.txt'), 'utf8'), 'plain\n');
    assert.equal((await stat(join(out, 'abs-in'))).isFile(), true);
    assert.equal(await readFile(join(out, 'abs-in'), 'utf8'), 'in-context decoy\n');
    assert.equal(await readFile(join(out, 'rel-out'), 'utf8'), 'in-context decoy\n');
    assert.deepEqual(await filesContaining(out, HOST_SECRET), [], 'no host content in the rootfs');
    const blobs = await registryBlobs(reg);
    assert.ok(!blobs.some((b) => b.includes(HOST_SECRET)), 'no host content in any pushed blob');
    assert.deepEqual(await filesContaining(home, HOST_SECRET), [], 'no host content in the store or cache');
    await assertClean();
  });

  test('a context tarball with ../ entries is rejected; absolute and through-symlink entries stay inside', async () => {
    const victim = join(work, 'victim');
    await mkdir(victim, { recursive: true });
    type Entries = Parameters<typeof makeTar>[0];
    const file = (name: string, content: string): Entries[number] => ({
      header: { name, type: 'file', size: Buffer.byteLength(content) },
      body: Buffer.from(content),
    });
    const dockerfile = file('Dockerfile', `FROM ${base}\nCOPY . /ctx/\n`);
    const dotdot = await makeTar([
      dockerfile,
      file('ok.txt', 'ok\n'),
      file('../'.repeat(16) + join(victim, 'escaped.txt').slice(1), 'ESCAPED\n'),
    ]);
    const out = join(work, 'hostile-out');
    const viaFile = join(work, 'hostile-ctx.tar');
    await writeFile(viaFile, dotdot);
    for (const r of [
      await kiln(['build', '--progress', 'plain', '-o', `type=local,dest=${out}`, viaFile]),
      await kiln(['build', '--progress', 'plain', '-o', `type=local,dest=${out}`, '-'], { input: dotdot }),
    ]) {
      oneLineError(r, /^kiln: .*\.\.\/.*(escapes|outside|invalid)/);
      assert.ok(hintOf(r));
    }
    assert.ok(!existsSync(out), 'no output written');
    const confined = await makeTar([
      dockerfile,
      file(join(victim, 'absolute.txt'), 'ABS\n'),
      { header: { name: 'lnk', type: 'symlink', linkname: victim, size: 0 } },
      file('lnk/through-link.txt', 'THRU\n'),
    ]);
    const r = await kiln(['build', '--progress', 'plain', '-o', `type=local,dest=${out}`, '-'], { input: confined });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await readFile(join(out, 'ctx', victim.slice(1), 'absolute.txt'), 'utf8'), 'ABS\n');
    assert.equal(await readFile(join(out, 'ctx', victim.slice(1), 'through-link.txt'), 'utf8'), 'THRU\n');
    assert.deepEqual(await readdir(victim), [], 'nothing written outside the context');
    await assertClean();
  });

  test('--build-arg: undeclared values and proxy args stay out of history and config; declared ones are recorded', async () => {
    const d = await ctxDir('build-args', {
      Dockerfile:
        `FROM ${base}\nRUN echo first > /first\nARG DECLARED\n` +
        `RUN test -n "$HTTP_PROXY" && echo "proxy-visible-to-run" && echo "$DECLARED" > /declared\n`,
    });
    const UNDECLARED = 'undeclared-token-91b2';
    const PROXY_PW = 'proxy-password-7fa3';
    const r = await kiln([
      'build',
      '--progress',
      'plain',
      '--build-arg',
      `UNDECLARED_TOKEN=${UNDECLARED}`,
      '--build-arg',
      'DECLARED=declared-value',
      '--build-arg',
      `HTTP_PROXY=http://user:${PROXY_PW}@127.0.0.1:9`,
      '-t',
      `${reg.host}/qa/args:v1`,
      '--push',
      d,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /proxy-visible-to-run/);
    assert.match(r.stderr, /UNDECLARED_TOKEN/, 'an unconsumed build arg is warned about (by name)');
    assert.ok(!(r.stderr + r.stdout).includes(UNDECLARED), 'undeclared value not printed');
    assert.ok(!(r.stderr + r.stdout).includes(PROXY_PW), 'proxy credential not printed');
    const cfg = await registryConfig(reg, 'qa/args', 'v1');
    const history = cfg.history.map((h) => h.created_by ?? '');
    assert.ok(
      history.some((h) => h.startsWith('RUN |1 DECLARED=declared-value /bin/sh -c')),
      `declared ARG recorded like BuildKit: ${history.join('\n')}`,
    );
    const text = JSON.stringify(cfg);
    assert.ok(!text.includes(UNDECLARED) && !text.includes(PROXY_PW) && !text.includes('HTTP_PROXY='), text);
    const blobs = await registryBlobs(reg);
    assert.ok(!blobs.some((b) => b.includes(UNDECLARED) || b.includes(PROXY_PW)), 'not in any pushed blob');
    await assertClean();
  });

  test('--secret content never reaches layers, history, progress output or the store', async () => {
    const FILE_SECRET = 'file-secret-value-0c4e8a';
    const ENV_SECRET = 'env-secret-value-a81f2b';
    const secretFile = join(work, 'secret-token.txt');
    await writeFile(secretFile, FILE_SECRET);
    const d = await ctxDir('secrets', {
      Dockerfile:
        `FROM ${base}\n` +
        'RUN --mount=type=secret,id=tok test "$(wc -c < /run/secrets/tok)" -eq 24 && echo file-secret-ok > /ok\n' +
        'RUN --mount=type=secret,id=envtok,env=TOKEN test "${#TOKEN}" -eq 23 && echo env-secret-ok\n' +
        'RUN --mount=type=secret,id=tok,target=/etc/app-token sh -c "test -s /etc/app-token" && ls -la /etc > /etc-listing\n',
    });
    const r = await kiln(
      [
        'build',
        '--progress',
        'plain',
        '--secret',
        `id=tok,src=${secretFile}`,
        '--secret',
        'id=envtok,env=QA_SECRET_ENV',
        '-t',
        `${reg.host}/qa/secrets:v1`,
        '--push',
        d,
      ],
      { env: { QA_SECRET_ENV: ENV_SECRET } },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /env-secret-ok/);
    for (const s of [FILE_SECRET, ENV_SECRET]) {
      assert.ok(!(r.stderr + r.stdout).includes(s), 'not in the progress output');
      assert.ok(!(await registryBlobs(reg)).some((b) => b.includes(s)), 'not in any pushed blob');
      assert.deepEqual(await filesContaining(home, s), [], 'not in the store, cache or logs');
    }
    const cfg = await registryConfig(reg, 'qa/secrets', 'v1');
    assert.ok(!JSON.stringify(cfg).includes('QA_SECRET_ENV'), 'the env var name does not leak either');
    const listing = await kiln(
      [
        'build',
        '--progress',
        'quiet',
        '-o',
        `type=local,dest=${join(work, 'sec-out')}`,
        '--secret',
        `id=tok,src=${secretFile}`,
        '--secret',
        'id=envtok,env=QA_SECRET_ENV',
        d,
      ],
      { env: { QA_SECRET_ENV: ENV_SECRET } },
    );
    assert.equal(listing.code, 0, listing.stderr);
    assert.ok(!existsSync(join(work, 'sec-out', 'run', 'secrets', 'tok')), 'no secret file in the rootfs');
    assert.ok(!existsSync(join(work, 'sec-out', 'etc', 'app-token')), 'no mount target left in the rootfs');
    await assertClean();
  });
});

/** Pids of live processes whose command line contains `marker`. */
async function processesWith(marker: string): Promise<number[]> {
  const pids: number[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    const cmd = await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(marker)) pids.push(Number(p));
  }
  return pids;
}

/**
 * Build `FROM base + extra + a RUN that sleeps 30 s`, tagged REPO:v1 with --push, and send `signal` once the RUN
 * printed its first line. Asserts the interrupt standard: non-zero exit with one "interrupted" line, the RUN's
 * processes gone, nothing pushed, no temp dir or mount left.
 */
async function interruptedBuild(name: string, signal: NodeJS.Signals, extra = ''): Promise<{ dir: string; run: Run }> {
  const marker = `qa-${name}-${process.pid}`;
  const dir = await ctxDir(name, {
    Dockerfile: `FROM ${base}\n${extra}RUN echo started-sleeping && sh -c 'sleep 30; echo ${marker}' && echo finished-sleeping\n`,
  });
  let sent = false;
  const r = await kiln(['build', '--progress', 'plain', '-t', `${reg.host}/qa/${name}:v1`, '--push', dir], {
    onStderr: (all, child) => {
      if (!sent && /^#\d+ \d+\.\d+ started-sleeping$/m.test(all)) {
        sent = true;
        child.kill(signal);
      }
    },
  });
  assert.ok(sent, r.stderr);
  oneLineError(r, /^kiln: .*interrupted/i);
  assert.doesNotMatch(r.stderr, /^#\d+ \d+\.\d+ finished-sleeping$/m, 'did not wait for the RUN to end');
  assert.deepEqual(await processesWith(marker), [], 'the RUN processes are gone');
  assert.deepEqual(await tags(reg, `qa/${name}`), [], 'nothing pushed');
  await assertClean();
  return { dir, run: r };
}

describe('kiln build: interrupts and outputs', () => {
  test('SIGINT during a long RUN: non-zero exit, no process, mount or temp dir left, nothing pushed, cache usable', async () => {
    const { dir, run } = await interruptedBuild('sigint', 'SIGINT', 'RUN echo before > /before\n');
    assert.equal(run.code, 130, run.stderr);
    // the store and cache still work: the completed step is reused
    await writeFile(join(dir, 'Dockerfile'), `FROM ${base}\nRUN echo before > /before\nRUN echo after > /after\n`);
    const again = await kiln(['build', '--progress', 'plain', '-t', `${reg.host}/qa/sigint:v1`, '--push', dir]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /^#\d+ \[2\/3\] RUN echo before > \/before\n#\d+ CACHED$/m);
    assert.deepEqual(await tags(reg, 'qa/sigint'), ['v1']);
    await assertClean();
  });

  test('SIGTERM (a Kubernetes pod stop) during a RUN cleans up like SIGINT', async () => {
    const { run } = await interruptedBuild('sigterm', 'SIGTERM');
    assert.equal(run.code, 143, `exit code ${run.code} (signal ${run.signal}): 128 + SIGTERM, like a shell`);
  });

  test('--output to an unwritable path: one line naming it, nothing half-written', async () => {
    const d = await ctxDir('unwritable', { Dockerfile: `FROM ${base}\nRUN echo hi > /hi\n` });
    const afile = join(work, 'a-regular-file');
    await writeFile(afile, 'x');
    const ctxParent = join(work, 'ctx');
    const cases: [string, RegExp][] = [
      [`type=oci,dest=${join(afile, 'out.tar')}`, /cannot write OCI archive .*: a parent is not a directory/],
      [`type=oci,dest=${join(work, 'layout-dir')},tar=false`, /^kiln: /],
      [`type=docker,dest=${join(afile, 'img.tar')}`, /cannot write docker archive .*: a parent is not a directory/],
      [`type=docker,dest=${ctxParent}`, /cannot write docker archive .*: it is a directory/],
      [
        'type=docker,dest=/proc/kiln-qa/img.tar',
        /cannot write docker archive .*: the parent directory cannot be created/,
      ],
      ['type=oci,dest=/proc/kiln-qa/img.tar', /cannot write OCI archive .*: the parent directory cannot be created/],
      [`type=local,dest=${join(afile, 'rootfs')}`, /cannot write local output .*: a parent is not a directory/],
      ['type=local,dest=/proc/kiln-qa/rootfs', /cannot write local output .*: the parent directory cannot be created/],
      [`type=tar,dest=${ctxParent}`, /cannot write tar output .*: it is a directory/],
      ['type=tar,dest=/proc/kiln-qa/rootfs.tar', /cannot write tar output .*: the parent directory cannot be created/],
    ];
    await mkdir(join(work, 'layout-dir'));
    await writeFile(join(work, 'layout-dir', 'not-a-layout.txt'), 'x');
    for (const [spec, re] of cases) {
      const dest = spec.slice(spec.indexOf('dest=') + 5).split(',')[0]!;
      const r = await kiln(['build', '--progress', 'plain', '-o', spec, d]);
      const line = oneLineError(r, re, spec);
      assert.ok(line.includes(dest) || line.includes(dirname(dest)), `"${line}" names ${dest}`);
    }
    assert.equal(await readFile(afile, 'utf8'), 'x');
    assert.deepEqual(await readdir(join(work, 'layout-dir')), ['not-a-layout.txt']);
    assert.deepEqual(
      (await readdir(work)).filter((n) => n.includes('kiln-spool') || n.includes('kiln-tmp')),
      [],
      'no temp files next to the destinations',
    );
    await assertClean();
  });

  // Known gaps in src/engine + src/cli/build.ts (owned by the build engineer), kept as TODO tests so they show up
  // in every run until fixed; see the QA report.
  test('a --secret whose source file is missing fails before the build, naming the file (like buildx)', async () => {
    const d = await ctxDir('secret-missing', {
      Dockerfile: `FROM ${base}\nRUN --mount=type=secret,id=x cat /run/secrets/x\n`,
    });
    const missing = join(work, 'no-such-secret-file');
    const r = await kiln(['build', '--progress', 'plain', '--secret', `id=x,src=${missing}`, d]);
    oneLineError(r, new RegExp(`^kiln: .*${missing}`));
    assert.doesNotMatch(r.stderr, /\[2\/2\] RUN/, 'no step ran');
  });

  test('an invalid -t is rejected before any step runs', async () => {
    const d = await ctxDir('bad-tag', { Dockerfile: `FROM ${base}\nRUN echo step-ran\n` });
    const r = await kiln(['build', '--progress', 'plain', '-t', 'Bad:Tag:x', d]);
    oneLineError(r, /^kiln: invalid reference "Bad:Tag:x"/);
    assert.doesNotMatch(r.stderr, /step-ran/);
  });

  test('--iidfile / --metadata-file to an unwritable path: one kiln line naming the option, no raw errno', async () => {
    const d = await ctxDir('iidfile', { Dockerfile: `FROM ${base}\n` });
    const afile = join(work, 'a-regular-file-2');
    await writeFile(afile, 'x');
    for (const opt of ['--iidfile', '--metadata-file']) {
      const r = await kiln(['build', '--progress', 'plain', opt, join(afile, 'out'), d]);
      const line = oneLineError(r, new RegExp(`^kiln: .*${afile}`));
      assert.doesNotMatch(line, /^kiln: E[A-Z]+:/, 'not a bare errno message');
    }
  });
});
