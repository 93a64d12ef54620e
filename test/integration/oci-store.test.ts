/**
 * The local store through the CLI (`kiln images`, `kiln rmi`), read by skopeo/umoci as an OCI layout, and shared by
 * two kiln processes writing and garbage-collecting at the same time.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readdir, rm, stat, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeBusyboxImage } from '../helpers/images.js';
import { LocalStore, type StoreEntry } from '../../src/oci/store.js';
import { readLayout } from '../../src/oci/layout.js';

const exec = promisify(execFile);
const KILN = join(process.cwd(), 'bin', 'kiln.js');

let home: string;
before(async () => {
  home = await mkdtemp(join(tmpdir(), 'kiln-oci-store-'));
});
after(async () => {
  await rm(home, { recursive: true, force: true });
});

async function kiln(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await exec(process.execPath, [KILN, ...args], { env: { ...process.env, KILN_HOME: home } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

test('kiln images / rmi on a store that skopeo and umoci can read', async () => {
  const store = await LocalStore.open(home);
  const img = await makeBusyboxImage();
  await store.put(img, ['busybox', 'localhost:5000/app:v1']);

  const table = await kiln(['images']);
  assert.equal(table.code, 0, table.stderr);
  const lines = table.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^REPOSITORY\s+TAG\s+DIGEST\s+SIZE\s+CREATED$/);
  const short = (await img.digest()).slice(7, 19);
  assert.match(lines[1]!, new RegExp(`^busybox\\s+latest\\s+${short}\\s+1\\.\\d+MB\\s+\\S`));
  assert.match(lines[2]!, new RegExp(`^localhost:5000/app\\s+v1\\s+${short}\\s`));

  const json = JSON.parse((await kiln(['images', '--format', 'json'])).stdout) as StoreEntry[];
  assert.deepEqual(
    json.map((e) => e.name),
    ['docker.io/library/busybox:latest', 'localhost:5000/app:v1'],
  );
  assert.equal(json[0]!.digest, await img.digest());

  // The store is an OCI layout: skopeo and umoci read it by normalised name.
  const { stdout } = await exec('skopeo', ['inspect', `oci:${join(home, 'store')}:localhost:5000/app:v1`]);
  assert.equal((JSON.parse(stdout) as { Digest: string }).Digest, await img.digest());
  const bundle = join(home, 'bundle');
  await exec('umoci', [
    'unpack',
    '--rootless',
    '--image',
    `${join(home, 'store')}:docker.io/library/busybox:latest`,
    bundle,
  ]);
  assert.ok((await stat(join(bundle, 'rootfs', 'bin', 'busybox'))).isFile());
  await rm(bundle, { recursive: true });

  const rmi = await kiln(['rmi', 'busybox']);
  assert.equal(rmi.code, 0, rmi.stderr);
  assert.equal(rmi.stdout, 'Untagged: docker.io/library/busybox:latest\n');
  const blobsBefore = (await readdir(join(home, 'store', 'blobs', 'sha256'))).length;
  assert.equal(blobsBefore, 3, 'blobs still referenced by the other tag are kept');

  const missing = await kiln(['rmi', 'busybox']);
  assert.equal(missing.code, 1);
  assert.equal(missing.stderr.split('\n')[0], 'kiln: no such image: busybox');
  assert.ok(!missing.stderr.includes('    at '), 'no stack trace');

  // Outside the GC grace period, the now unreferenced blobs go.
  const old = new Date(Date.now() - 3600_000);
  for (const b of await store.blobs.list()) await utimes(store.blobs.path(b), old, old);
  const last = await kiln(['rmi', short]);
  assert.equal(last.code, 0, last.stderr);
  assert.match(last.stdout, /Untagged: localhost:5000\/app:v1\nDeleted: 3 blobs\n/);
  assert.deepEqual(await readdir(join(home, 'store', 'blobs', 'sha256')), []);
  assert.equal((await kiln(['images'])).stdout.trimEnd().split('\n').length, 1, 'header only');
});

test('two kiln processes writing and collecting concurrently leave a consistent store', async () => {
  const child = (prefix: string): Promise<unknown> =>
    exec(process.execPath, ['--import', 'tsx', join('testdata', 'oci', 'store-put.ts'), prefix, '4'], {
      env: { ...process.env, KILN_HOME: home },
    });
  await Promise.all([child('alpha'), child('beta')]);
  const store = await LocalStore.open(home);
  const names = (await store.list()).map((e) => e.name);
  assert.deepEqual(names, [
    'docker.io/library/alpha:1',
    'docker.io/library/alpha:3',
    'docker.io/library/beta:1',
    'docker.io/library/beta:3',
  ]);
  // Every ref is complete (all blobs present and verified) and nothing unreferenced is left.
  const layout = await readLayout(store.root);
  const referenced = new Set<string>();
  for (const e of layout.list()) {
    const img = await layout.image(e.name);
    referenced.add(await img.digest());
    referenced.add((await img.manifest()).config.digest);
    for (const l of await img.layers()) {
      referenced.add(await l.digest());
      const s = await l.compressed();
      for await (const _ of s) {
        /* drain: verifies the digest */
      }
    }
  }
  assert.deepEqual(new Set(await store.blobs.list()), referenced);
  assert.ok(!(await readdir(store.root)).includes('index.lock'));
});
