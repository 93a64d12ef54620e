import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../../errors.js';
import {
  applyS2iIgnore,
  checkAllowedUser,
  parseEnvFlag,
  parseEnvironmentFile,
  parseRuntimeArtifact,
  parseUidRanges,
  prepareSource,
} from './prepare.js';

test('.s2i/environment: NAME=VALUE trimmed, comments and bad lines skipped, = in values kept', () => {
  assert.deepEqual(parseEnvironmentFile('# c\nA=1\n B = two words \nnot a line\n=x\nC=a=b\r\n'), [
    { name: 'A', value: '1' },
    { name: 'B', value: 'two words' },
    { name: 'C', value: 'a=b' },
  ]);
  assert.deepEqual(parseEnvFlag('K= v '), { name: 'K', value: 'v' });
  assert.throws(
    () => parseEnvFlag('novalue'),
    (e) => isKilnError(e, 'OPTION_INVALID'),
  );
});

test('--allowed-uids: ranges as s2i parses them; refusals name the user and the range', () => {
  assert.deepEqual(parseUidRanges('1-,-999,1000,5-7'), [
    { from: 1 },
    { to: 999 },
    { from: 1000, to: 1000 },
    { from: 5, to: 7 },
  ]);
  assert.throws(
    () => parseUidRanges('7-5'),
    (e) => isKilnError(e, 'OPTION_INVALID'),
  );
  assert.throws(
    () => parseUidRanges('a-b'),
    (e) => isKilnError(e, 'OPTION_INVALID'),
  );
  checkAllowedUser('1001', parseUidRanges('1-'), 'assemble user');
  checkAllowedUser('0', [], 'assemble user'); // no ranges: anything goes
  checkAllowedUser('1001:0', parseUidRanges('1000-2000'), 'assemble user');
  assert.throws(
    () => checkAllowedUser('0', parseUidRanges('1-'), 'assemble user'),
    (e) =>
      isKilnError(e, 'S2I_USER_NOT_ALLOWED') && e.message === 'assemble user "0" is not allowed: --allowed-uids 1-',
  );
  assert.throws(
    () => checkAllowedUser('app', parseUidRanges('1-'), 'assemble user'),
    (e) => isKilnError(e) && /must be numeric/.test(e.message),
  );
});

test('runtime artifacts: absolute source, relative destination, no wildcards', () => {
  assert.deepEqual(parseRuntimeArtifact('/tmp/app.war'), { source: '/tmp/app.war', destination: '.' });
  assert.deepEqual(parseRuntimeArtifact('/opt/data/:app/dist'), { source: '/opt/data', destination: 'app/dist' });
  for (const bad of ['tmp/x', '/opt/*.jar', '/x:/abs', '/x:../up']) {
    assert.throws(
      () => parseRuntimeArtifact(bad),
      (e) => isKilnError(e, 'OPTION_INVALID'),
      bad,
    );
  }
});

test('.s2iignore: globs per line (not recursive), ! keeps an earlier match, never leaves the dir', async () => {
  const d = await mkdtemp(join(tmpdir(), 'kiln-s2iignore-'));
  try {
    await mkdir(join(d, 'sub'));
    for (const f of ['a.log', 'b.log', 'keep.log', 'sub/c.log', 'x.txt']) await writeFile(join(d, f), f);
    await writeFile(join(d, '.s2iignore'), '# comment\n*.log\n!keep.log\n../*\n');
    const removed = await applyS2iIgnore(d);
    assert.deepEqual(removed, ['a.log', 'b.log']);
    assert.deepEqual((await readdir(d)).sort(), ['.s2iignore', 'keep.log', 'sub', 'x.txt']);
    assert.deepEqual(await readdir(join(d, 'sub')), ['c.log']);
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test('prepareSource: source copied, .s2i/bin scripts moved to upload/scripts, environment read', async () => {
  const d = await mkdtemp(join(tmpdir(), 'kiln-s2iprep-'));
  try {
    const src = join(d, 'src');
    await mkdir(join(src, '.s2i', 'bin'), { recursive: true });
    await writeFile(join(src, '.s2i', 'bin', 'assemble'), '#!/bin/sh\n');
    await writeFile(join(src, '.s2i', 'environment'), 'X=1\n');
    await writeFile(join(src, 'app.txt'), 'app');
    const p = await prepareSource(src, join(d, 'work'));
    assert.deepEqual([...p.provided], ['assemble']);
    assert.deepEqual(p.env, [{ name: 'X', value: '1' }]);
    assert.deepEqual(await readdir(join(d, 'work', 'upload', 'scripts')), ['assemble']);
    assert.deepEqual((await readdir(join(d, 'work', 'upload', 'src', '.s2i', 'bin'))).length, 0);
    await assert.rejects(prepareSource(join(d, 'missing'), join(d, 'w2')), (e) => isKilnError(e, 'S2I_SOURCE'));
    // --scripts-url file://DIR: its scripts win over .s2i/bin (lookup order), and a URL with none is an error
    const url = join(d, 'url');
    await mkdir(url);
    await writeFile(join(url, 'run'), '#!/bin/sh\n');
    const q = await prepareSource(src, join(d, 'w4'), { scriptsUrl: `file://${url}` });
    assert.deepEqual([...q.provided].sort(), ['assemble', 'run']);
    await assert.rejects(prepareSource(src, join(d, 'w5'), { scriptsUrl: `file://${join(d, 'none')}` }), (e) =>
      isKilnError(e, 'S2I_SCRIPTS'),
    );
    await assert.rejects(prepareSource(src, join(d, 'w3'), { scriptsUrl: 'ftp://example.com/s2i' }), (e) =>
      isKilnError(e, 'OPTION_INVALID'),
    );
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test('prepareSource again in the same dir: the moved scripts go back first and stay the same files', async () => {
  const d = await mkdtemp(join(tmpdir(), 'kiln-s2iprep-'));
  try {
    const src = join(d, 'src');
    await mkdir(join(src, '.s2i', 'bin'), { recursive: true });
    await writeFile(join(src, '.s2i', 'bin', 'assemble'), '#!/bin/sh\n');
    await chmod(join(src, '.s2i', 'bin', 'assemble'), 0o755);
    const work = join(d, 'work');
    await prepareSource(src, work);
    // a mark on the file itself (an inode number may be reused by a new copy)
    const script = join(work, 'upload', 'scripts', 'assemble');
    execFileSync('setfattr', ['-n', 'user.kiln-test', '-v', 'same', script]);
    await prepareSource(src, work);
    assert.match(
      execFileSync('getfattr', ['-d', script], { encoding: 'utf8' }),
      /user\.kiln-test="same"/,
      'not copied',
    );
    await writeFile(join(src, '.s2i', 'bin', 'assemble'), '#!/bin/sh\necho 2\n');
    await prepareSource(src, work);
    assert.equal(await readFile(join(work, 'upload', 'scripts', 'assemble'), 'utf8'), '#!/bin/sh\necho 2\n');
    assert.deepEqual(await readdir(join(work, 'upload', 'src', '.s2i', 'bin')), []);
    // a .s2i that links out of the source: nothing is moved from (or back to) where it points
    const host = join(d, 'host');
    await mkdir(join(host, 'bin'), { recursive: true });
    await writeFile(join(host, 'bin', 'assemble'), 'host file\n');
    const linked = join(d, 'linked');
    await mkdir(linked);
    await symlink(host, join(linked, '.s2i'));
    const p = await prepareSource(linked, join(d, 'w-linked'));
    assert.deepEqual([...p.provided], []);
    assert.equal(await readFile(join(host, 'bin', 'assemble'), 'utf8'), 'host file\n');
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test('a source given as a symlink to a directory: its tree is copied (cold and warm), never the link', async () => {
  const d = await mkdtemp(join(tmpdir(), 'kiln-s2i-link-'));
  try {
    await mkdir(join(d, 'real'));
    await writeFile(join(d, 'real', 'app.txt'), 'v1\n');
    await symlink('real', join(d, 'app'));
    const work = join(d, 'work');
    for (const v of ['v1', 'v2']) {
      await writeFile(join(d, 'real', 'app.txt'), `${v}\n`);
      await prepareSource(join(d, 'app'), work);
      const src = join(work, 'upload', 'src');
      assert.ok((await lstat(src)).isDirectory(), `${v}: upload/src is a directory, not a link out of the context`);
      assert.equal((await lstat(src)).mode & 0o777, (await lstat(join(d, 'real'))).mode & 0o777);
      assert.equal(await readFile(join(src, 'app.txt'), 'utf8'), `${v}\n`);
    }
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test('--scripts-url http://: each script fetched (404 = not provided), size limit, errors and credentials refused', async () => {
  const { createServer } = await import('node:http');
  const served: string[] = [];
  const server = createServer((req, res) => {
    served.push(req.url ?? '');
    if (req.url === '/s/assemble') res.end('#!/bin/sh\necho assembled\n');
    else if (req.url === '/s/run') res.end('#!/bin/sh\necho running\n');
    else if (req.url?.startsWith('/big/')) {
      res.writeHead(200, { 'content-length': String(64 * 1024 * 1024) });
      res.end();
    } else if (req.url?.startsWith('/broken/')) {
      res.writeHead(500);
      res.end('no');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const dir = await mkdtemp(join(tmpdir(), 'kiln-s2i-http-'));
  try {
    const src = join(dir, 'src');
    await mkdir(join(src, '.s2i', 'bin'), { recursive: true });
    await writeFile(join(src, '.s2i', 'bin', 'save-artifacts'), '#!/bin/sh\n');
    await writeFile(join(src, '.s2i', 'bin', 'run'), '#!/bin/sh\necho from source\n');
    const p = await prepareSource(src, join(dir, 'w1'), { scriptsUrl: `${base}/s/` });
    // the URL's scripts first; what it lacks (save-artifacts) still comes from .s2i/bin
    assert.deepEqual([...p.provided].sort(), ['assemble', 'run', 'save-artifacts']);
    const { readFile, stat } = await import('node:fs/promises');
    assert.equal(await readFile(join(dir, 'w1', 'upload', 'scripts', 'run'), 'utf8'), '#!/bin/sh\necho running\n');
    assert.equal((await stat(join(dir, 'w1', 'upload', 'scripts', 'assemble'))).mode & 0o777, 0o755);
    assert.ok(served.includes('/s/save-artifacts'), 'each script name asked for');
    const fails = async (url: string, re: RegExp, code = 'S2I_SCRIPTS'): Promise<void> => {
      await assert.rejects(prepareSource(src, join(dir, `w-${served.length}`), { scriptsUrl: url }), (e) => {
        assert.ok(isKilnError(e, code), String(e));
        assert.match((e as Error).message, re);
        return true;
      });
    };
    await fails(`${base}/big`, /big\/assemble: 67108864 bytes, over the 8388608 byte limit/);
    await fails(`${base}/broken`, /broken\/assemble: HTTP 500/);
    await fails(`${base}/none`, /could not download any scripts from URL/);
    const closed = await new Promise<number>((r) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const port = (s.address() as { port: number }).port;
        s.close(() => r(port));
      });
    });
    await fails(`http://127.0.0.1:${closed}/s`, /\/s\/assemble: .*ECONNREFUSED/);
    await fails(`http://user:secret@127.0.0.1:1/s`, /credentials in the URL are not accepted/, 'OPTION_INVALID');
  } finally {
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
