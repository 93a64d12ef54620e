/**
 * The blob origin index (src/registry/origins.ts) against a real registry: pushing an image that has no remote
 * origin (a locally made image, a cached build) to a second repository of the same registry mounts every blob
 * instead of uploading it — observed through a request-recording proxy — and the result is a complete image for
 * skopeo. Stale, corrupt or unusable index entries and mounts the credentials may not read from fall back to
 * plain uploads, with no error and no upload session left behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import type { Image } from '../../src/oci/types.js';
import { Progress } from '../../src/progress.js';
import { OriginIndex } from '../../src/registry/origins.js';
import { push, type PushOptions } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import { makeBusyboxImage } from '../helpers/images.js';
import {
  startHttpProxy,
  startRegistry,
  type ProxiedRequest,
  type TestProxy,
  type TestRegistry,
} from '../helpers/registry.js';
import { cachedCount, kiln } from './build-helpers.js';

const run = async (cmd: string, args: string[]): Promise<string> =>
  (await promisify(execFile)(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })).stdout;

/** Requests that carried blob data: PATCH, or a PUT to an upload session (not a manifest PUT). */
const blobUploads = (reqs: ProxiedRequest[]): ProxiedRequest[] =>
  reqs.filter((r) => r.method === 'PATCH' || (r.method === 'PUT' && r.url.includes('/blobs/uploads/')));

const mounts = (reqs: ProxiedRequest[], from: string, status: number): ProxiedRequest[] =>
  reqs
    .filter(
      (r) => r.method === 'POST' && r.url.includes('?mount=') && r.url.endsWith(`&from=${encodeURIComponent(from)}`),
    )
    .filter((r) => r.status === status);

async function blobDigests(img: Image): Promise<string[]> {
  return [(await img.manifest()).config.digest, ...(await Promise.all((await img.layers()).map((l) => l.digest())))];
}

/** A plain-mode progress whose lines are collected. */
function collectingProgress(): { progress: Progress; lines: () => string } {
  let text = '';
  const out = new Writable({
    write(c: Buffer, _e, cb) {
      text += c.toString();
      cb();
    },
  });
  return { progress: new Progress('plain', out), lines: () => text };
}

/**
 * Upload sessions the registry still holds open for a repository: `_uploads/<uuid>` dirs with their `startedat` or
 * `data` file (distribution 2.8 leaves an empty `hashstates` dir behind after a cancelled upload).
 */
async function openUploads(reg: TestRegistry, repo: string): Promise<string[]> {
  const dir = join(reg.dataDir, 'docker', 'registry', 'v2', 'repositories', repo, '_uploads');
  const open: string[] = [];
  for (const u of await readdir(dir).catch(() => [] as string[])) {
    const files = await readdir(join(dir, u)).catch(() => [] as string[]);
    if (files.includes('startedat') || files.includes('data')) open.push(u);
  }
  return open;
}

async function skopeoCopyToOci(ref: string, dir: string): Promise<void> {
  await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${ref}`, `oci:${dir}:x`]);
}

interface Fixture {
  reg: TestRegistry;
  /** A request-recording proxy in front of `reg`: push through `proxy.host` to observe the requests. */
  proxy: TestProxy;
  work: string;
  /** Register push options whose connections are closed at the end. */
  track: (o: PushOptions) => PushOptions;
}

/** A plain registry behind a recording proxy and a temp dir, all torn down afterwards. */
async function withProxiedRegistry(fn: (f: Fixture) => Promise<void>): Promise<void> {
  const reg = await startRegistry();
  const proxy = await startHttpProxy(reg.host);
  const work = await mkdtemp(join(tmpdir(), 'kiln-origins-it-'));
  const tracked: PushOptions[] = [];
  try {
    await fn({ reg, proxy, work, track: (o) => (tracked.push(o), o) });
  } finally {
    for (const o of tracked) await closeTransports(o);
    await proxy.stop();
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
}

test('a local image pushed to a second repository is mounted from the first (origin index), no blob data sent', async () => {
  await withProxiedRegistry(async ({ reg, proxy, work, track }) => {
    const origins = new OriginIndex(join(work, 'origins'));
    const { progress, lines } = collectingProgress();
    const opts = track({ origins, progress, monolithicMax: 64 * 1024, chunkSize: 256 * 1024 });
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/origins-1', content: 'one\n' }] });
    const digests = await blobDigests(img);
    const a = await push(img, `${proxy.host}/team/a:1`, opts);
    assert.deepEqual([...a.blobs.values()], ['uploaded', 'uploaded', 'uploaded']);
    for (const d of digests)
      assert.deepEqual(await origins.lookup(d), [{ registry: proxy.host, repository: 'team/a' }]);

    const seen = proxy.requests.length;
    const b = await push(img, `${proxy.host}/team/b:1`, opts);
    const reqs = proxy.requests.slice(seen);
    assert.equal(b.digest, a.digest);
    assert.deepEqual([...b.blobs.values()], ['mounted', 'mounted', 'mounted']);
    assert.deepEqual(blobUploads(reqs), [], 'no blob bytes were sent for the second repository');
    assert.equal(mounts(reqs, 'team/a', 201).length, 3, JSON.stringify(reqs));
    assert.equal((lines().match(/mounted from team\/a/g) ?? []).length, 3, lines());
    for (const d of digests) {
      assert.deepEqual(
        (await origins.lookup(d)).map((o) => o.repository),
        ['team/b', 'team/a'],
      );
    }
    // what skopeo reads from the new repository is the complete image
    const info = JSON.parse(
      await run('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/team/b:1`]),
    ) as {
      Digest: string;
    };
    assert.equal(info.Digest, a.digest);
    await skopeoCopyToOci(`${reg.host}/team/b:1`, join(work, 'oci-b'));
  });
});

test('stale, corrupt or unusable origin entries fall back to uploads: no error, no upload session left', async () => {
  await withProxiedRegistry(async ({ reg, proxy, work, track }) => {
    const origins = new OriginIndex(join(work, 'origins'));
    const opts = track({ origins });
    const at = (repository: string): { registry: string; repository: string } => ({ registry: proxy.host, repository });
    // stale entries first: each declined mount's session is cancelled, then the real origin mounts
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/origins-2', content: 'two\n' }] });
    const digests = await blobDigests(img);
    await push(img, `${proxy.host}/team/src:1`, opts);
    for (const d of digests) {
      await origins.record(d, at('team/gone'));
      await origins.record(d, at('team/missing'));
    }
    let seen = proxy.requests.length;
    const r1 = await push(img, `${proxy.host}/team/dst:1`, opts);
    let reqs = proxy.requests.slice(seen);
    assert.deepEqual([...r1.blobs.values()], ['mounted', 'mounted', 'mounted']);
    assert.deepEqual(blobUploads(reqs), []);
    assert.equal(mounts(reqs, 'team/missing', 202).length, 3);
    assert.equal(mounts(reqs, 'team/gone', 202).length, 3);
    assert.equal(mounts(reqs, 'team/src', 201).length, 3);
    assert.equal(reqs.filter((r) => r.method === 'DELETE' && r.url.includes('/blobs/uploads/')).length, 6);
    assert.deepEqual(await openUploads(reg, 'team/dst'), [], 'declined mounts left no upload session');
    for (const d of digests) {
      assert.deepEqual(
        (await origins.lookup(d)).map((o) => o.repository),
        ['team/dst', 'team/src'],
        'entries that turned out stale are forgotten',
      );
    }

    // only a stale entry: the upload goes into the session the declined mount opened
    const img2 = await makeBusyboxImage({
      extraFiles: [{ path: 'etc/base-3', content: 'three\n' }], // a base layer of its own
      secondLayer: [{ path: 'etc/origins-3', content: 'three\n' }],
    });
    for (const d of await blobDigests(img2)) await origins.record(d, at('team/gone'));
    seen = proxy.requests.length;
    const r2 = await push(img2, `${proxy.host}/team/fresh:1`, opts);
    reqs = proxy.requests.slice(seen);
    assert.deepEqual([...r2.blobs.values()], ['uploaded', 'uploaded', 'uploaded']);
    assert.equal(mounts(reqs, 'team/gone', 202).length, 3);
    assert.equal(reqs.filter((r) => r.method === 'POST').length, 3, 'no second POST: the mount session is reused');
    assert.equal(reqs.filter((r) => r.method === 'DELETE').length, 0);
    assert.deepEqual(await openUploads(reg, 'team/fresh'), []);

    // corrupt entries read as empty: plain uploads, and the entries are rewritten
    const img3 = await makeBusyboxImage({
      extraFiles: [{ path: 'etc/base-4', content: 'four\n' }], // a base layer of its own
      secondLayer: [{ path: 'etc/origins-4', content: 'four\n' }],
    });
    for (const d of await blobDigests(img3)) {
      await origins.record(d, at('team/whatever'));
      await writeFile(join(origins.dir, 'sha256', d.slice('sha256:'.length)), '{"torn": [');
    }
    const r3 = await push(img3, `${proxy.host}/team/corrupt:1`, opts);
    assert.deepEqual([...r3.blobs.values()], ['uploaded', 'uploaded', 'uploaded']);
    for (const d of await blobDigests(img3)) {
      assert.deepEqual(await origins.lookup(d), [at('team/corrupt')]);
    }

    // an index that cannot be read or written at all (its directory is a file): the push still works
    const blockedFile = join(work, 'not-a-dir');
    await writeFile(blockedFile, 'x');
    const blocked = track({ origins: new OriginIndex(join(blockedFile, 'origins')) });
    const r4 = await push(img3, `${proxy.host}/team/blocked:1`, blocked);
    assert.deepEqual([...r4.blobs.values()], ['uploaded', 'uploaded', 'uploaded']);
    await skopeoCopyToOci(`${reg.host}/team/blocked:1`, join(work, 'oci-blocked'));
    await skopeoCopyToOci(`${reg.host}/team/dst:1`, join(work, 'oci-dst'));
  });
});

test('token auth: a mount from a repository the credentials cannot read falls back to an upload', async () => {
  const reg = await startRegistry({
    auth: 'token',
    token: {
      users: {
        owner: { password: 'owner-pw', grants: [{ repository: '*', actions: ['pull', 'push'] }] },
        limited: { password: 'limited-pw', grants: [{ repository: 'team/b', actions: ['pull', 'push'] }] },
      },
      anonymous: [],
    },
  });
  const work = await mkdtemp(join(tmpdir(), 'kiln-origins-it-'));
  const origins = new OriginIndex(join(work, 'origins'));
  const as = (username: string, password: string): PushOptions => ({
    origins,
    credentials: async () => ({ username, password }),
  });
  const owner = as('owner', 'owner-pw');
  const limited = as('limited', 'limited-pw');
  try {
    const img = await makeBusyboxImage({ secondLayer: [{ path: 'etc/origins-5', content: 'five\n' }] });
    await push(img, `${reg.host}/team/a:1`, owner);
    // the owner may read team/a: its pushes to other repositories mount, with pull on team/a in the token
    const c = await push(img, `${reg.host}/team/c:1`, owner);
    assert.deepEqual([...c.blobs.values()], ['mounted', 'mounted', 'mounted']);
    const b = await push(img, `${reg.host}/team/b:1`, limited);
    assert.deepEqual([...b.blobs.values()], ['uploaded', 'uploaded', 'uploaded']);
    const tokens = reg.tokenServer!.requests.filter((r) => r.account === 'limited');
    assert.ok(
      tokens.some((r) => r.scopes.includes('repository:team/a:pull') && !r.granted.includes('repository:team/a:pull')),
      'the mount source was asked for and not granted',
    );
    const info = JSON.parse(
      await run('skopeo', [
        'inspect',
        '--tls-verify=false',
        '--creds',
        'limited:limited-pw',
        `docker://${reg.host}/team/b:1`,
      ]),
    ) as { Layers: string[] };
    assert.equal(info.Layers.length, 2);
  } finally {
    await closeTransports(owner);
    await closeTransports(limited);
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
});

test('kiln build --push of a cached build to a new repository mounts every blob; a corrupt index does not fail it', async () => {
  await withProxiedRegistry(async ({ reg, proxy, work, track }) => {
    const home = join(work, 'home');
    const ctx = join(work, 'ctx');
    const base = await makeBusyboxImage({ kind: 'docker' });
    await push(base, `${proxy.host}/base/busybox:1`, track({ origins: null }));
    await run('mkdir', ['-p', ctx]);
    await writeFile(join(ctx, 'hello.txt'), 'hello\n');
    await writeFile(join(ctx, 'data.bin'), Buffer.alloc(3 * 1024 * 1024, 7));
    await writeFile(
      join(ctx, 'Dockerfile'),
      `FROM ${proxy.host}/base/busybox:1\nCOPY hello.txt /hello.txt\nCOPY data.bin /data.bin\n`,
    );
    const build = (repo: string): Promise<Awaited<ReturnType<typeof kiln>>> =>
      kiln(
        [
          'build',
          '--progress',
          'plain',
          '--insecure-registry',
          proxy.host,
          '-t',
          `${proxy.host}/${repo}`,
          '--push',
          ctx,
        ],
        { home },
      );
    const first = await build('app/a:1');
    assert.equal(first.code, 0, first.stderr);

    const seen = proxy.requests.length;
    const second = await build('app/b:1');
    const reqs = proxy.requests.slice(seen);
    assert.equal(second.code, 0, second.stderr);
    assert.ok(cachedCount(second.stderr) >= 2, second.stderr);
    assert.deepEqual(blobUploads(reqs), [], `no blob bytes sent: ${JSON.stringify(reqs)}`);
    const mounted = reqs.filter((r) => r.method === 'POST' && r.url.includes('?mount=') && r.status === 201);
    assert.equal(mounted.length, 4, 'config + base layer + two COPY layers, all mounted');
    await skopeoCopyToOci(`${reg.host}/app/b:1`, join(work, 'oci-b'));

    // garbage in every index entry: the next push uploads instead, and succeeds
    const dir = join(home, 'origins', 'sha256');
    const files = await readdir(dir);
    assert.ok(files.length >= 4, files.join(' '));
    for (const f of files) await writeFile(join(dir, f), '\u0000garbage');
    const third = await build('app/c:1');
    assert.equal(third.code, 0, third.stderr);
    await skopeoCopyToOci(`${reg.host}/app/c:1`, join(work, 'oci-c'));
  });
});

test('optimistic push: a second push to the same repository asks nothing about known blobs; a garbage-collected blob is pushed again', async () => {
  await withProxiedRegistry(async ({ reg, proxy, work, track }) => {
    const origins = new OriginIndex(join(work, 'origins'));
    const opts = track({ origins });
    const base = await makeBusyboxImage({ secondLayer: [{ path: 'etc/optimistic', content: 'v1\n' }] });
    const first = await push(base, `${proxy.host}/team/app:1`, opts);
    assert.deepEqual([...first.blobs.values()], ['uploaded', 'uploaded', 'uploaded']);

    // the same image again: every blob is known, no HEAD, only the manifest PUT
    let seen = proxy.requests.length;
    const again = await push(base, `${proxy.host}/team/app:1`, opts);
    let reqs = proxy.requests.slice(seen);
    assert.deepEqual([...again.blobs.values()], ['known', 'known', 'known']);
    assert.deepEqual(
      reqs.filter((r) => r.url.includes('/blobs/')),
      [],
      `no blob request: ${JSON.stringify(reqs)}`,
    );
    assert.equal(reqs.filter((r) => r.method === 'PUT' && r.url.includes('/manifests/')).length, 1);

    // switched off: the checked push HEADs every blob
    seen = proxy.requests.length;
    const checked = await push(base, `${proxy.host}/team/app:1`, track({ origins, trustKnownBlobs: false }));
    reqs = proxy.requests.slice(seen);
    assert.deepEqual([...checked.blobs.values()], ['exists', 'exists', 'exists']);
    assert.equal(reqs.filter((r) => r.method === 'HEAD' && r.url.includes('/blobs/')).length, 3);

    // the registry loses a layer (garbage collection removes the blob's directory); an image sharing it is pushed
    const [baseLayer, topLayer] = await base.layers();
    const lost = await topLayer!.digest();
    await rm(join(reg.dataDir, 'docker/registry/v2/blobs/sha256', lost.slice(7, 9), lost.slice(7)), {
      recursive: true,
    });
    seen = proxy.requests.length;
    const res = await push(base, `${proxy.host}/team/app:2`, opts);
    reqs = proxy.requests.slice(seen);
    const manifestPuts = reqs.filter((r) => r.method === 'PUT' && r.url.includes('/manifests/'));
    assert.deepEqual(
      manifestPuts.map((r) => r.status),
      [400, 201],
      'refused (MANIFEST_BLOB_UNKNOWN), then stored after the checked push',
    );
    assert.equal(res.blobs.get(lost), 'uploaded', 'the lost layer was uploaded again');
    assert.equal(res.blobs.get(await baseLayer!.digest()), 'exists', 'the others were checked');
    assert.equal(blobUploads(reqs).length, 1, JSON.stringify(reqs));
    assert.deepEqual(await origins.lookup(lost), [{ registry: proxy.host, repository: 'team/app' }]);
    // the image is complete: skopeo reads every blob, by tag, from the registry itself
    await skopeoCopyToOci(`${reg.host}/team/app:2`, join(work, 'oci-gc'));
    const info = JSON.parse(
      await run('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/team/app:2`]),
    ) as {
      Digest: string;
      Layers: string[];
    };
    assert.equal(info.Digest, res.digest);
    assert.ok(info.Layers.includes(lost));
  });
});
