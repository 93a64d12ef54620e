/**
 * Round trip through the real docker (Debian docker.io): `docker load` accepts the archives kiln writes and runs
 * the image; kiln reads the archives `docker save` writes.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeBusyboxImage } from '../helpers/images.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { readDockerArchive, writeDockerArchive } from '../../src/oci/docker-archive.js';
import { digestStream } from '../../src/oci/image.js';
import type { Image } from '../../src/oci/types.js';

let dir: string;
let dockerd: Dockerd;
let busybox: Image;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-oci-docker-load-'));
  dockerd = await startDockerd();
  busybox = await makeBusyboxImage({
    secondLayer: [{ path: 'app/hello.txt', content: 'hello from kiln\n' }],
    config: { User: 'app', WorkingDir: '/app' },
  });
});
after(async () => {
  await dockerd?.stop();
  await rm(dir, { recursive: true, force: true });
});

test('docker load accepts a kiln archive and runs it; kiln reads docker save output', async () => {
  const file = join(dir, 'kiln.tar');
  await writeDockerArchive(file, [{ image: busybox, tags: ['kiln-test/bb:1', 'localhost:5000/app:v1'] }]);
  const load = await dockerd.docker(['load', '-i', file]);
  assert.match(load.stdout, /Loaded image: kiln-test\/bb:1/);
  const id = (await dockerd.docker(['image', 'inspect', '--format', '{{.Id}}', 'localhost:5000/app:v1'])).stdout.trim();
  assert.equal(id, (await busybox.manifest()).config.digest, 'docker image ID is the config digest');
  const out = await dockerd.runImage('kiln-test/bb:1', ['sh', '-c', 'id -u; pwd; cat hello.txt']);
  assert.equal(out, '1000\n/app\nhello from kiln\n');

  const saved = join(dir, 'saved.tar');
  await dockerd.docker(['save', '-o', saved, 'kiln-test/bb:1']);
  const back = await readDockerArchive(saved, 'kiln-test/bb:1');
  assert.deepEqual((await back.config()).rootfs.diff_ids, (await busybox.config()).rootfs.diff_ids);
  for (const l of await back.layers()) {
    assert.equal((await digestStream(await l.uncompressed())).digest, await l.diffID());
  }
  assert.deepEqual((await back.config()).config?.User, 'app');
});
