import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { existsSync, lstatSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { writeLayer } from './writer.js';

// The worker thread only runs from the compiled CLI (see worker.ts): test that build (scripts/setup.sh and
// `npm run build` make it; CI always has it).
const compiled = fileURLToPath(new URL('../../dist/layer/worker.js', import.meta.url));
assert.ok(existsSync(compiled), `${compiled} is missing: run npm run build first`);
const {
  copyFilesOffThread,
  layerWorkerRunning,
  sha256FilesOffThread,
  sha256OffThread,
  stopLayerWorker,
  warmUpWorker,
  writeLayerOffThread,
} = (await import(compiled)) as typeof import('./worker.js');
const { KilnError } = (await import(
  fileURLToPath(new URL('../../dist/errors.js', import.meta.url))
)) as typeof import('../errors.js');

after(() => stopLayerWorker());

test('writeLayerOffThread: the worker writes the same blob as writeLayer in-process', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-worker-'));
  try {
    await mkdir(join(dir, 'tree', 'a'), { recursive: true });
    for (let i = 0; i < 50; i++) await writeFile(join(dir, 'tree', 'a', `f${i}`), `file ${i}\n`.repeat(i * 100));
    const opts = { tmpDir: dir, sourceDateEpoch: 1700000000 };
    const [a, b] = await Promise.all([
      writeLayerOffThread(join(dir, 'tree'), opts),
      writeLayer(join(dir, 'tree'), opts),
    ]);
    assert.equal(a.diffID, b.diffID);
    assert.equal(a.digest, b.digest);
    assert.equal(a.size, b.size);
    assert.notEqual(a.file, b.file);
    assert.equal(layerWorkerRunning(), true, 'the job ran on the worker thread');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('writeLayerOffThread: a failure comes back as the KilnError it was', async () => {
  await assert.rejects(writeLayerOffThread('/nonexistent/kiln-layer-dir'), (e: unknown) => {
    assert.ok(e instanceof KilnError);
    assert.equal(e.code, 'LAYER_WRITE_FAILED');
    assert.match(e.message, /nonexistent/);
    return true;
  });
});

test('sha256FilesOffThread: digests of small files on the worker, "" for one it cannot read, two batches at most', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-worker-'));
  try {
    const files = [];
    for (let i = 0; i < 5; i++) {
      await writeFile(join(dir, `f${i}`), `small ${i}\n`.repeat(i * 10));
      files.push(join(dir, `f${i}`));
    }
    warmUpWorker();
    const want = files.map((f) => createHash('sha256').update(readFileSync(f)).digest('hex'));
    const first = sha256FilesOffThread([...files, join(dir, 'missing')]);
    const second = sha256FilesOffThread(files);
    assert.ok(first && second, 'the running worker takes two batches');
    assert.equal(sha256FilesOffThread(files), undefined, 'a third waits: the caller hashes it');
    assert.deepEqual(await first, [...want, '']);
    assert.deepEqual(await second, want);
    assert.ok(sha256FilesOffThread(files), 'answered batches free their places');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('sha256OffThread: the digest of a file, streamed on the worker', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-worker-'));
  try {
    const data = Buffer.alloc(3 * 1024 * 1024 + 7, 'kiln');
    await writeFile(join(dir, 'f'), data);
    assert.equal(await sha256OffThread(join(dir, 'f')), createHash('sha256').update(data).digest('hex'));
    await assert.rejects(sha256OffThread(join(dir, 'missing')), /ENOENT|missing/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('copyFilesOffThread: new files with owner, mode and times on the worker; a failure is COPY_FAILED', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-worker-'));
  try {
    await mkdir(join(dir, 'src'));
    await mkdir(join(dir, 'dst'));
    const jobs = [];
    for (let i = 0; i < 20; i++) {
      await writeFile(join(dir, 'src', `f${i}`), `file ${i}\n`.repeat(i));
      const uid = process.getuid?.() ?? 0;
      const gid = process.getgid?.() ?? 0;
      const job = { src: join(dir, 'src', `f${i}`), dst: join(dir, 'dst', `f${i}`), uid, gid, mode: 0o640 + (i % 2) };
      jobs.push({ ...job, atime: 1600000000.123, mtime: 1500000000 + i + 0.5 });
    }
    warmUpWorker();
    const half = jobs.slice(0, 10);
    const away = copyFilesOffThread(half);
    assert.ok(away, 'an idle worker takes the batch');
    const next = copyFilesOffThread(jobs.slice(10));
    assert.ok(next, 'and a second one');
    assert.equal(copyFilesOffThread(half), undefined, 'a third waits: the caller copies it');
    await Promise.all([away, next]);
    for (let i = 0; i < 20; i++) {
      const st = lstatSync(join(dir, 'dst', `f${i}`));
      assert.equal(readFileSync(join(dir, 'dst', `f${i}`), 'utf8'), `file ${i}\n`.repeat(i));
      assert.equal(st.mode & 0o7777, 0o640 + (i % 2));
      assert.equal(st.mtimeMs, (1500000000 + i + 0.5) * 1000);
    }
    const bad = copyFilesOffThread([{ ...(jobs[0] as (typeof jobs)[0]), src: join(dir, 'missing') }]);
    assert.ok(bad);
    await assert.rejects(bad, (e: unknown) => {
      assert.ok(e instanceof KilnError);
      assert.equal(e.code, 'COPY_FAILED');
      assert.match(e.message, /ENOENT/);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('sha256FilesOffThread with the walk sizes: the same digests, also for a file that grew or shrank since', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-worker-'));
  try {
    const files = [join(dir, 'same'), join(dir, 'grew'), join(dir, 'shrank'), join(dir, 'empty'), join(dir, 'big')];
    await writeFile(files[0] as string, 'same\n'.repeat(100));
    await writeFile(files[1] as string, 'x'.repeat(200_000)); // 3 × 64 KiB reads past the size given
    await writeFile(files[2] as string, 'short');
    await writeFile(files[3] as string, '');
    await writeFile(files[4] as string, 'b'.repeat(70_000));
    const sizes = [500, 10, 5000, 0, 70_000];
    warmUpWorker();
    const want = files.map((f) => createHash('sha256').update(readFileSync(f)).digest('hex'));
    assert.deepEqual(await sha256FilesOffThread(files, sizes), want);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
