import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  symlinkSync,
  writeFileSync,
  type Stats,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { createServer } from 'node:http';
import { test } from 'node:test';
import {
  contextTreeXattrs,
  contextWalkStats,
  hashContextPaths,
  isGitContext,
  knownContextDigest,
  loadContext,
  noteWithoutCopiedXattrs,
  parseGitFragment,
  prefetchContextHashes,
  statCacheStats,
} from './context.js';
import { scratch } from '../../test/layer/scratch.js';

const { root: tmp, fresh } = scratch('context');
let n = 0;

function sampleDir(): string {
  const d = fresh('src');
  writeFileSync(join(d, 'Dockerfile'), 'FROM scratch\nCOPY . /\n');
  writeFileSync(join(d, '.dockerignore'), '*.log\n');
  writeFileSync(join(d, 'app.txt'), 'app');
  writeFileSync(join(d, 'debug.log'), 'log');
  mkdirSync(join(d, 'sub'));
  writeFileSync(join(d, 'sub/Dockerfile.alt'), 'FROM scratch\n');
  return d;
}

test('directory context: Dockerfile, -f relative to cwd, .dockerignore', async () => {
  const d = sampleDir();
  const ctx = await loadContext(d);
  try {
    assert.equal(ctx.kind, 'dir');
    assert.equal(ctx.root, d);
    assert.equal(ctx.dockerfile.text, 'FROM scratch\nCOPY . /\n');
    assert.equal(ctx.ignore.matches('debug.log'), true);
    assert.equal(ctx.ignore.matches('app.txt'), false);
  } finally {
    await ctx.cleanup();
  }
  assert.ok(existsSync(d), 'a directory context is never removed');
  const alt = await loadContext(d, { dockerfile: join(d, 'sub/Dockerfile.alt') });
  assert.equal(alt.dockerfile.text, 'FROM scratch\n');
  await assert.rejects(loadContext(join(tmp, 'nope')), { code: 'CONTEXT_NOT_FOUND' });
  await assert.rejects(loadContext(d, { dockerfile: join(d, 'missing') }), { code: 'DOCKERFILE_NOT_FOUND' });
});

test('tarball contexts (gz, bz2, xz, plain) are unpacked to a temp dir and cleaned up', async () => {
  const d = sampleDir();
  for (const [flag, ext] of [
    ['-z', 'tar.gz'],
    ['-j', 'tar.bz2'],
    ['-J', 'tar.xz'],
    ['', 'tar'],
  ] as const) {
    const file = join(tmp, `ctx${n++}.${ext}`);
    execFileSync('tar', [...(flag ? [flag] : []), '-C', d, '-cf', file, '.']);
    const ctx = await loadContext(file, { dockerfile: 'sub/Dockerfile.alt' });
    assert.equal(ctx.kind, 'tar', ext);
    assert.equal(ctx.dockerfile.text, 'FROM scratch\n', ext);
    assert.equal(readFileSync(join(ctx.root, 'app.txt'), 'utf8'), 'app', ext);
    assert.equal(ctx.ignore.matches('debug.log'), true, ext);
    await ctx.cleanup();
    assert.equal(existsSync(ctx.root), false, `${ext}: temp dir removed`);
  }
  const notTar = join(tmp, 'plain.txt');
  writeFileSync(notTar, 'hello');
  await assert.rejects(loadContext(notTar), { code: 'CONTEXT_INVALID' });
  const file = join(tmp, `esc${n++}.tar`);
  execFileSync('tar', ['-C', d, '-cf', file, '.']);
  const temps = fresh('temps');
  await assert.rejects(
    loadContext(file, { dockerfile: '../../etc/passwd', tmpDir: temps }),
    /within the build context/,
  );
  await assert.rejects(loadContext(file, { dockerfile: 'missing', tmpDir: temps }), { code: 'DOCKERFILE_NOT_FOUND' });
  await assert.rejects(loadContext(notTar, { tmpDir: temps }), { code: 'CONTEXT_INVALID' });
  assert.deepEqual(readdirSync(temps), [], 'a failed load leaves no temp dir behind');
});

test('stdin: a tar context or a Dockerfile alone', async () => {
  const d = sampleDir();
  const tarBuf = execFileSync('tar', ['-C', d, '-czf', '-', '.']);
  const ctx = await loadContext('-', { stdin: Readable.from([tarBuf]) });
  assert.equal(ctx.kind, 'tar');
  assert.equal(readFileSync(join(ctx.root, 'app.txt'), 'utf8'), 'app');
  await ctx.cleanup();
  const only = await loadContext('-', { stdin: Readable.from([Buffer.from('FROM scratch\nLABEL a=b\n')]) });
  assert.equal(only.kind, 'stdin-dockerfile');
  assert.equal(only.dockerfile.text, 'FROM scratch\nLABEL a=b\n');
  assert.deepEqual(readdirSync(only.root), []);
  await only.cleanup();
  const df = await loadContext(d, { dockerfile: '-', stdin: Readable.from([Buffer.from('FROM x\n')]) });
  assert.equal(df.dockerfile.path, '-');
  assert.equal(df.dockerfile.text, 'FROM x\n');
});

test('git contexts: file:// and .git paths with #ref:subdir, no .git dir', async () => {
  const repo = fresh('repo');
  const git = (...args: string[]): string =>
    execFileSync('git', ['-C', repo, '-c', 'user.email=t@e', '-c', 'user.name=t', ...args], { encoding: 'utf8' });
  git('init', '-q', '-b', 'main');
  mkdirSync(join(repo, 'svc'));
  writeFileSync(join(repo, 'svc/Dockerfile'), 'FROM scratch\n# v1\n');
  git('add', '.');
  git('commit', '-q', '-m', 'one');
  git('tag', 'v1');
  writeFileSync(join(repo, 'svc/Dockerfile'), 'FROM scratch\n# v2\n');
  git('commit', '-q', '-am', 'two');
  const bare = join(tmp, `bare${n++}.git`);
  execFileSync('git', ['clone', '-q', '--bare', repo, bare]);

  const head = await loadContext(`file://${repo}#main:svc`);
  assert.equal(head.kind, 'git');
  assert.equal(head.dockerfile.text, 'FROM scratch\n# v2\n');
  assert.equal(existsSync(join(head.root, '..', '.git')), false);
  await head.cleanup();
  const tagged = await loadContext(`${bare}#v1:svc`);
  assert.equal(tagged.dockerfile.text, 'FROM scratch\n# v1\n');
  await tagged.cleanup();
  await assert.rejects(loadContext(`${bare}#nosuchref`), { code: 'CONTEXT_GIT' });
  await assert.rejects(loadContext(`${bare}#main:../..`), { code: 'CONTEXT_GIT' });
  assert.equal(isGitContext('https://github.com/org/repo.git#v1'), true);
  assert.equal(isGitContext('git@github.com:org/repo.git'), true);
  assert.equal(isGitContext('https://example.com/ctx.tar.gz'), false);
  assert.deepEqual(parseGitFragment('u.git#ref:dir/x'), { url: 'u.git', ref: 'ref', subdir: 'dir/x' });
});

test('hashContextPaths: content-sensitive, ignore-aware, stat cache persisted', async () => {
  const d = sampleDir();
  const home = fresh('home');
  const ctx = await loadContext(d, { kilnHome: home });
  const h1 = await hashContextPaths(ctx, ['.']);
  const files = readdirSync(join(home, 'statcache'));
  assert.equal(files.length, 1);
  const file = join(tmp, `cached${n++}.tar`);
  execFileSync('tar', ['-C', d, '-cf', file, '.']);
  const tarCtx = await loadContext(file, { kilnHome: home });
  await hashContextPaths(tarCtx, ['.']);
  await tarCtx.cleanup();
  assert.equal(readdirSync(join(home, 'statcache')).length, 1, 'temp-dir contexts are not persisted');
  // the digests behind the key, for the miss explanation: the file's sha256 while it is unchanged
  const appSt = lstatSync(join(d, 'app.txt'));
  assert.equal(
    knownContextDigest(ctx.root, 'app.txt', appSt),
    createHash('sha256')
      .update(readFileSync(join(d, 'app.txt')))
      .digest('hex'),
  );
  assert.equal(knownContextDigest(ctx.root, 'app.txt', { ...appSt, mtimeMs: appSt.mtimeMs + 1 } as Stats), undefined);
  const before = statCacheStats.hits;
  assert.equal(await hashContextPaths(ctx, ['.']), h1);
  assert.ok(statCacheStats.hits > before, 'second hash served from the stat cache');
  writeFileSync(join(d, 'debug.log'), 'ignored change');
  assert.equal(await hashContextPaths(ctx, ['.']), h1, '.dockerignored files do not count');
  writeFileSync(join(d, 'app.txt'), 'APP');
  assert.notEqual(await hashContextPaths(ctx, ['.']), h1);
  // the walk's lstats are kept for the COPY that follows (it copies by the stats its key was computed from)
  const st = contextWalkStats(ctx)?.get(join(resolve(ctx.root), 'app.txt'));
  assert.equal(st?.size, 3);
  assert.equal(st?.ino, lstatSync(join(d, 'app.txt')).ino);
  assert.notEqual(await hashContextPaths(ctx, ['.'], ['app.txt']), await hashContextPaths(ctx, ['.']));
});

test('hashContextPaths: a copied xattr counts, and only while the file has one (keys without xattrs unchanged)', async () => {
  const d = sampleDir();
  const ctx = await loadContext(d, { kilnHome: fresh('home') });
  const h1 = await hashContextPaths(ctx, ['.']);
  const app = join(d, 'app.txt');
  execFileSync('setfattr', ['-n', 'user.k', '-v', '1', app]);
  const h2 = await hashContextPaths(ctx, ['.']);
  assert.notEqual(h2, h1, 'an xattr-only change (ctime) is re-read and changes the digest');
  execFileSync('setfattr', ['-n', 'trusted.other', '-v', '1', app]);
  assert.equal(await hashContextPaths(ctx, ['.']), h2, 'xattrs a COPY does not carry do not count');
  const hits = statCacheStats.hits;
  assert.equal(await hashContextPaths(ctx, ['.']), h2);
  assert.ok(statCacheStats.hits > hits, 'the xattr digest is kept in the stat cache');
  const cold = await loadContext(d, { kilnHome: fresh('home') });
  assert.equal(await hashContextPaths(cold, ['.']), h2, 'a cold walk gives the same digest');
  execFileSync('setfattr', ['-x', 'user.k', app]);
  execFileSync('setfattr', ['-x', 'trusted.other', app]);
  assert.equal(await hashContextPaths(ctx, ['.']), h1, 'without xattrs, the digest is what it was');
});

test('hashContextPaths: a tree read whole takes its xattrs from one recursive read, with the digest of the per-file reads', async () => {
  const tree = (): string => {
    const d = fresh('tree');
    mkdirSync(join(d, 'src/a'), { recursive: true });
    for (let i = 0; i < 20; i++) writeFileSync(join(d, 'src/a', `f${i}`), `file ${i}`);
    writeFileSync(join(d, 'src/top.txt'), 'top');
    writeFileSync(join(d, 'Dockerfile'), 'FROM scratch\nCOPY src /src\n');
    execFileSync('setfattr', ['-n', 'user.k', '-v', '1', join(d, 'src/a/f7')]);
    execFileSync('setfattr', ['-n', 'trusted.other', '-v', '1', join(d, 'src/top.txt')]);
    return d;
  };
  // per-file reads: part of the tree is in the stat cache already, the rest is read file by file
  const d1 = tree();
  const c1 = await loadContext(d1);
  await hashContextPaths(c1, ['src/a/f1']);
  const want = await hashContextPaths(c1, ['src']);
  assert.equal(contextTreeXattrs(c1, join(resolve(d1), 'src')), undefined, 'not every file was read: no tree read');
  // a cold tree: one recursive read, the same digest, kept for the COPY of the same tree
  const d2 = tree();
  const c2 = await loadContext(d2);
  assert.equal(await hashContextPaths(c2, ['src']), want);
  const read = await contextTreeXattrs(c2, join(resolve(d2), 'src'));
  assert.equal(
    read
      ?.get(join(resolve(d2), 'src/a/f7'))
      ?.get('user.k')
      ?.toString(),
    '1',
  );
  assert.equal(read?.has(join(resolve(d2), 'src/top.txt')), false, 'only the xattrs a COPY carries');
  // a file changed after that read: the next walk of the tree (a stat-cache miss for it) drops the stale read
  execFileSync('setfattr', ['-n', 'user.k', '-v', '2', join(d2, 'src/a/f7')]);
  await hashContextPaths(c2, ['src']);
  assert.equal(contextTreeXattrs(c2, join(resolve(d2), 'src')), undefined, 'the old whole-tree read is dropped');
  // without the xattr, the digest differs (the recursive read counts)
  const d3 = tree();
  execFileSync('setfattr', ['-x', 'user.k', join(d3, 'src/a/f7')]);
  assert.notEqual(await hashContextPaths(await loadContext(d3), ['src']), want);
});

test('prefetchContextHashes: in an ephemeral home the step takes the prefetch digest instead of walking again', async () => {
  const saved = process.env.KILN_EPHEMERAL_HOME;
  process.env.KILN_EPHEMERAL_HOME = '1';
  try {
    const d = sampleDir();
    for (let i = 0; i < 50; i++) writeFileSync(join(d, 'sub', `f${i}`), `file ${i}`);
    // (the prefetch reads the tree's xattrs while it reads the files: the digest is the same)
    execFileSync('setfattr', ['-n', 'user.k', '-v', '1', join(d, 'sub', 'f3')]);
    const want = await hashContextPaths(await loadContext(d), ['sub']);
    const ctx = await loadContext(d);
    const stop = prefetchContextHashes(ctx, ['sub/']);
    const seen = statCacheStats.hits + statCacheStats.misses + statCacheStats.shared;
    // racing the prefetch: the step waits for its digest (no file of its own looked at)
    assert.equal(await hashContextPaths(ctx, [join(d, 'sub')]), want);
    assert.equal(
      statCacheStats.hits + statCacheStats.misses + statCacheStats.shared - seen,
      51,
      'one walk of 51 files',
    );
    await stop();
    // another walk (an exclude) is walked
    assert.notEqual(await hashContextPaths(ctx, [join(d, 'sub')], ['f1']), want);
  } finally {
    if (saved === undefined) delete process.env.KILN_EPHEMERAL_HOME;
    else process.env.KILN_EPHEMERAL_HOME = saved;
  }
});

test('hashContextPaths: a file noted without copied xattrs needs no getfattr while its state is the one noted', async () => {
  const d = sampleDir();
  const ctx = await loadContext(d, { kilnHome: fresh('home') });
  const h1 = await hashContextPaths(ctx, ['.']);
  const app = join(resolve(ctx.root), 'app.txt');
  execFileSync('setfattr', ['-n', 'user.k', '-v', '1', app]);
  // a (false) note for the file as it is now: taken instead of reading its xattrs
  noteWithoutCopiedXattrs(app, lstatSync(app));
  assert.equal(await hashContextPaths(ctx, ['.']), h1, 'the note stands for a getfattr of the file');
  // any change of the file (here its xattrs: ctime) ends the note
  execFileSync('setfattr', ['-n', 'user.k', '-v', '2', app]);
  assert.notEqual(await hashContextPaths(ctx, ['.']), h1, 'a changed file is read again');
});

test('remote contexts: a tarball URL or a Dockerfile URL', async () => {
  const d = sampleDir();
  const tarBuf = execFileSync('tar', ['-C', d, '-cjf', '-', '.']);
  const server = createServer((rq, rs) => {
    if (rq.url === '/ctx.tar.bz2') rs.end(tarBuf);
    else if (rq.url === '/Dockerfile') rs.end('FROM scratch\nLABEL remote=1\n');
    else rs.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const a = server.address();
    const base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
    const t = await loadContext(`${base}/ctx.tar.bz2`);
    assert.equal(t.kind, 'tar');
    assert.equal(readFileSync(join(t.root, 'app.txt'), 'utf8'), 'app');
    await t.cleanup();
    const f = await loadContext(`${base}/Dockerfile`);
    assert.equal(f.dockerfile.text, 'FROM scratch\nLABEL remote=1\n');
    assert.deepEqual(readdirSync(f.root), []);
    await f.cleanup();
    await assert.rejects(loadContext(`${base}/missing`), { code: 'CONTEXT_DOWNLOAD' });
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
});

test('prefetchContextHashes: same digests as a cold walk, files read once, never through a symlink', async () => {
  const tree = (): string => {
    const d = sampleDir();
    mkdirSync(join(d, 'big'));
    writeFileSync(join(d, 'big/blob.bin'), Buffer.alloc(3 << 20, 7)); // hashed on the worker path
    for (let i = 0; i < 300; i++) writeFileSync(join(d, 'big', `f${i}`), `file ${i}`);
    symlinkSync('/etc', join(d, 'outside'));
    return d;
  };
  // reference digests from an identical tree elsewhere (the in-memory stat cache is per context root)
  const r = tree();
  const ref = await loadContext(r);
  const want = await hashContextPaths(ref, [join(r, 'big')]);
  const wantEx = await hashContextPaths(ref, [join(r, 'big')], ['f1']);
  const wantApp = await hashContextPaths(ref, [join(r, 'app.txt')]);

  const d = tree();
  const ctx = await loadContext(d, { kilnHome: fresh('home') });
  const misses = statCacheStats.misses;
  const stop = prefetchContextHashes(ctx, ['big/', 'app.txt', 'outside/passwd', '../escape', 'missing']);
  // the step's own walks, racing the prefetch: they wait for the digests in flight instead of reading again
  assert.equal(await hashContextPaths(ctx, [join(d, 'big')], ['f1']), wantEx);
  assert.equal(await hashContextPaths(ctx, [join(d, 'big')]), want);
  assert.equal(await hashContextPaths(ctx, [join(d, 'app.txt')]), wantApp);
  await stop();
  // 301 files under big/ and app.txt: each read once; nothing under outside/ (a symlink to /etc) was read
  assert.equal(statCacheStats.misses - misses, 302);
  // a context already in the stat cache is not walked ahead of the steps (they stat it anyway)
  const before = statCacheStats.hits + statCacheStats.misses;
  const stop2 = prefetchContextHashes(ctx, ['big/']);
  await new Promise((r) => setTimeout(r, 50));
  await stop2();
  assert.equal(statCacheStats.hits + statCacheStats.misses, before);
  // a change after the build's prefetch is seen by the next build
  writeFileSync(join(d, 'big/f7'), 'changed');
  assert.notEqual(await hashContextPaths(ctx, [join(d, 'big')]), want);
});
