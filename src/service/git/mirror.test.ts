/**
 * GitMirrors against a real smart-HTTP git server (`git http-backend` behind Basic auth, test/helpers/git-server.ts).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { isKilnError, type KilnError } from '../../errors.js';
import { gitTestProject, startGitServer, type GitServer } from '../../../test/helpers/git-server.js';
import { GitMirrors, type GitProject } from './mirror.js';

const USER = 'kiln';
const PASSWORD = `pw-${randomBytes(6).toString('hex')}@x`;
const PASSWORD_ENV = `KILN_TEST_GIT_PASSWORD_${randomBytes(4).toString('hex')}`;

let server: GitServer;
let tmp: string;
let mirrors: GitMirrors;
const logs: string[] = [];

before(async () => {
  server = await startGitServer({ username: USER, password: PASSWORD });
  tmp = await mkdtemp(join(tmpdir(), 'kiln-mirror-test-'));
  await mkdir(join(tmp, 'private'));
  process.env[PASSWORD_ENV] = PASSWORD;
  mirrors = new GitMirrors({
    dir: join(tmp, 'git'),
    allowFile: false,
    tmpDir: join(tmp, 'private'),
    log: (l) => logs.push(l),
  });
});

after(async () => {
  await mirrors.close();
  await server.stop();
  await rm(tmp, { recursive: true, force: true });
  delete process.env[PASSWORD_ENV];
});

function project(name: string, over: Partial<GitProject> = {}): GitProject {
  return gitTestProject(name, server.repoUrl(name), { username: USER, passwordEnv: PASSWORD_ENV }, over);
}

/** Everything an error shows: message, hint, code, the whole cause chain and its inspection. */
function allText(e: unknown): string {
  const parts: string[] = [inspect(e, { depth: 10 })];
  let cur: unknown = e;
  while (cur instanceof Error) {
    parts.push(cur.message, String((cur as Partial<KilnError>).hint ?? ''), cur.stack ?? '');
    cur = cur.cause;
  }
  return parts.join('\n');
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<KilnError> {
  try {
    await p;
  } catch (e) {
    assert.ok(isKilnError(e), `expected KilnError ${code}, got ${inspect(e)}`);
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail(`expected KilnError ${code}, but it resolved`);
}

let dirs = 0;
const newDir = (): string => join(tmp, `co-${++dirs}`);

test('resolves branches, tags, full refs and commits over http with basic auth', async () => {
  const c1 = await server.createRepo('app', { 'README.md': 'one\n' });
  const c2 = await server.commit('app', { 'README.md': 'two\n' }, 'two');
  const c3 = await server.commit('app', { 'feature.txt': 'f\n' }, 'feature', 'feature/x');
  await server.tag('app', 'v1', c1);
  await server.tag('app', 'v2', c2, 'annotated release');
  const p = project('app');

  assert.deepEqual(await mirrors.resolve(p, { ref: 'main' }), { commit: c2, ref: 'refs/heads/main' });
  assert.deepEqual(await mirrors.resolve(p, { ref: 'feature/x' }), { commit: c3, ref: 'refs/heads/feature/x' });
  assert.deepEqual(await mirrors.resolve(p, { ref: 'v1' }), { commit: c1, ref: 'refs/tags/v1' });
  // An annotated tag resolves to the commit it tags, not to the tag object.
  assert.deepEqual(await mirrors.resolve(p, { ref: 'v2' }), { commit: c2, ref: 'refs/tags/v2' });
  assert.deepEqual(await mirrors.resolve(p, { ref: 'refs/tags/v2' }), { commit: c2, ref: 'refs/tags/v2' });
  assert.deepEqual(await mirrors.resolve(p, { ref: 'refs/heads/main' }), { commit: c2, ref: 'refs/heads/main' });
  assert.deepEqual(await mirrors.resolve(p, { commit: c1.slice(0, 7).toUpperCase() }), { commit: c1, ref: '' });
  assert.deepEqual(await mirrors.resolve(p, { commit: c1 }), { commit: c1, ref: '' });
  assert.deepEqual(await mirrors.resolve(p, { ref: 'main', commit: c1.slice(0, 10) }), {
    commit: c1,
    ref: 'refs/heads/main',
  });
  // A branch wins over a tag of the same name.
  await server.tag('app', 'feature/x', c1);
  assert.equal((await mirrors.resolve(p, { ref: 'feature/x' })).commit, c3);
  assert.ok(server.stats.unauthorized > 0, 'the server challenged');
});

test('the password may come from a file (trailing newline trimmed)', async () => {
  const file = join(tmp, 'git-password');
  await writeFile(file, `${PASSWORD}\n`, { mode: 0o600 });
  const p = project('app', { gitCredentials: { username: USER, passwordFile: file } });
  assert.equal((await mirrors.resolve(p, { ref: 'v1' })).ref, 'refs/tags/v1');
  const gone = project('app', { gitCredentials: { username: USER, passwordFile: join(tmp, 'missing') } });
  await rejectsWith(mirrors.resolve(gone, { ref: 'v1' }), 'GIT_CREDENTIALS_MISSING');
});

test('a wrong password fails with GIT_FETCH_FAILED and the password appears nowhere', async () => {
  const wrongEnv = `${PASSWORD_ENV}_WRONG`;
  const wrong = `wrong-${randomBytes(6).toString('hex')}`;
  process.env[wrongEnv] = wrong;
  try {
    const p = project('app', { gitCredentials: { username: USER, passwordEnv: wrongEnv } });
    const e = await rejectsWith(mirrors.resolve(p, { ref: 'main' }), 'GIT_FETCH_FAILED');
    assert.equal(e.message.split('\n').length, 1, 'one line');
    assert.match(e.message, /Authentication failed|401/);
    assert.match(e.message, new RegExp(server.repoUrl('app').replace(/[.]/g, '\\.')));
    assert.match(e.hint ?? '', /gitCredentials/);
    const text = allText(e);
    assert.ok(!text.includes(wrong), 'the wrong password leaked');
    assert.ok(!text.includes(PASSWORD), 'the right password leaked');
    // No credentials at all: the same code, and git never prompted.
    const anon = project('app', { gitCredentials: undefined });
    await rejectsWith(mirrors.resolve(anon, { ref: 'main' }), 'GIT_FETCH_FAILED');
    const unset = project('app', { gitCredentials: { username: USER, passwordEnv: `${PASSWORD_ENV}_UNSET` } });
    await rejectsWith(mirrors.resolve(unset, { ref: 'main' }), 'GIT_CREDENTIALS_MISSING');
  } finally {
    delete process.env[wrongEnv];
  }
});

test('an unreachable host fails with GIT_FETCH_FAILED in one line', async () => {
  const p = project('app', { repository: 'http://127.0.0.1:1/app.git' });
  const e = await rejectsWith(mirrors.resolve(p, { ref: 'main' }), 'GIT_FETCH_FAILED');
  assert.equal(e.message.split('\n').length, 1);
  assert.match(e.hint ?? '', /reach/);
  const missing = project('does-not-exist');
  await rejectsWith(mirrors.resolve(missing, { ref: 'main' }), 'GIT_FETCH_FAILED');
});

test('missing refs and commits are named in the error', async () => {
  const p = project('app');
  const e = await rejectsWith(mirrors.resolve(p, { ref: 'nope' }), 'GIT_REF_NOT_FOUND');
  assert.equal(e.message, `ref "nope" not found in ${server.repoUrl('app')}`);
  assert.ok(e.hint);
  const full = await rejectsWith(mirrors.resolve(p, { ref: 'refs/heads/nope' }), 'GIT_REF_NOT_FOUND');
  assert.match(full.message, /"refs\/heads\/nope"/);
  await rejectsWith(mirrors.resolve(p, { ref: 'bad..name' }), 'GIT_REF_INVALID');
  await rejectsWith(mirrors.resolve(p, { ref: '--upload-pack=touch' }), 'GIT_REF_INVALID');
  await rejectsWith(mirrors.resolve(p, {}), 'GIT_REF_INVALID');
  await rejectsWith(mirrors.resolve(p, { commit: 'zzzz' }), 'GIT_COMMIT_INVALID');
  const c = await rejectsWith(mirrors.resolve(p, { commit: 'deadbeef' }), 'GIT_COMMIT_NOT_FOUND');
  assert.match(c.message, /"deadbeef"/);
  await rejectsWith(mirrors.resolve(p, { commit: 'deadbeef'.repeat(5) }), 'GIT_COMMIT_NOT_FOUND');
});

test('a commit given with a ref must be reachable from it', async () => {
  const p = project('app');
  const feature = (await mirrors.resolve(p, { ref: 'feature/x' })).commit;
  const e = await rejectsWith(mirrors.resolve(p, { ref: 'main', commit: feature }), 'GIT_COMMIT_NOT_REACHABLE');
  assert.match(e.message, /refs\/heads\/main/);
  assert.deepEqual(await mirrors.resolve(p, { ref: 'feature/x', commit: feature }), {
    commit: feature,
    ref: 'refs/heads/feature/x',
  });
});

test('a second resolve after one new commit transfers only the new objects', async () => {
  await server.createRepo('big', { 'blob.bin': randomBytes(1 << 20), 'small.txt': 'a\n' });
  const p = project('big');
  server.resetStats();
  const first = await mirrors.resolve(p, { ref: 'main' });
  const firstBytes = server.stats.bytesSent;
  assert.ok(firstBytes > 1 << 20, `first fetch sent ${firstBytes} bytes`);
  const next = await server.commit('big', { 'small.txt': 'b\n' }, 'small change');
  server.resetStats();
  const second = await mirrors.resolve(p, { ref: 'main' });
  assert.notEqual(second.commit, first.commit);
  assert.equal(second.commit, next);
  assert.ok(server.stats.bytesSent < firstBytes / 50, `second fetch sent ${server.stats.bytesSent} bytes`);
});

test('no fetch when none is needed: mirroredRef reads the mirror (loose and packed refs); a mirrored commit resolves locally', async () => {
  const c1 = await server.createRepo('quick', { 'a.txt': 'a\n' });
  await server.tag('quick', 'v1', c1);
  const p = project('quick');
  assert.equal(await mirrors.mirroredRef(p, 'main'), undefined, 'no mirror yet');
  await mirrors.resolve(p, { ref: 'main' });
  const c2 = await server.commit('quick', { 'a.txt': 'b\n' }, 'two');
  let requests = 0;
  server.onRequest = () => requests++;
  try {
    assert.equal(await mirrors.mirroredRef(p, 'main'), 'refs/heads/main');
    assert.equal(await mirrors.mirroredRef(p, 'refs/heads/main'), 'refs/heads/main');
    assert.equal(await mirrors.mirroredRef(p, 'v1'), 'refs/tags/v1');
    assert.equal(await mirrors.mirroredRef(p, 'nope'), undefined);
    assert.equal(await mirrors.mirroredRef(p, 'refs/notes/x'), undefined, 'only branches and tags are mirrored');
    await rejectsWith(mirrors.mirroredRef(p, 'a..b'), 'GIT_REF_INVALID');
    // refs git packed (gc, pack-refs) are found too
    const packed = spawnSync('git', [`--git-dir=${mirrors.mirrorPath(p)}`, 'pack-refs', '--all', '--prune']);
    assert.equal(packed.status, 0, String(packed.stderr));
    assert.ok(!existsSync(join(mirrors.mirrorPath(p), 'refs/heads/main')), 'main is only in packed-refs now');
    assert.equal(await mirrors.mirroredRef(p, 'main'), 'refs/heads/main');
    assert.equal(await mirrors.mirroredRef(p, 'refs/tags/v1'), 'refs/tags/v1');
    assert.equal(await mirrors.mirroredRef(p, 'mai'), undefined);
    const local = await mirrors.resolve(p, { commit: c1.slice(0, 8) }, undefined, { fetch: 'if-missing' });
    assert.deepEqual(local, { commit: c1, ref: '' });
    assert.equal(requests, 0, 'nothing asked the git server');
    // a commit the mirror lacks is fetched; a ref always is (it may have moved)
    assert.deepEqual(await mirrors.resolve(p, { commit: c2 }, undefined, { fetch: 'if-missing' }), {
      commit: c2,
      ref: '',
    });
    assert.ok(requests > 0, 'the missing commit was fetched');
    requests = 0;
    const c3 = await server.commit('quick', { 'a.txt': 'c\n' }, 'three');
    const byRef = await mirrors.resolve(p, { ref: 'main' }, undefined, { fetch: 'if-missing' });
    assert.deepEqual(byRef, { commit: c3, ref: 'refs/heads/main' });
    assert.ok(requests > 0, 'a ref is fetched whatever the option says');
  } finally {
    server.onRequest = undefined;
  }
});

test('a workspace updated to a new commit rewrites only the changed files, already on its first update', async () => {
  const c1 = await server.createRepo('ws', { 'same.txt': 'same\n', 'sub/kept.txt': 'kept\n', 'changed.txt': '1\n' });
  const p = project('ws');
  await mirrors.resolve(p, { ref: 'main' });
  const ws = join(tmp, 'ws-work', 'app');
  const index = join(tmp, 'ws-work', '.app.index');
  await mkdir(join(tmp, 'ws-work'), { recursive: true });
  await mirrors.updateWorkspace(p, c1, ws, index);
  const before = await stat(join(ws, 'sub/kept.txt'));
  const c2 = await server.commit('ws', { 'changed.txt': '2\n', 'new.txt': 'n\n' }, 'two');
  await mirrors.resolve(p, { ref: 'main' });
  await writeFile(join(ws, 'stray.txt'), 'not in the commit\n');
  await mirrors.updateWorkspace(p, c2, ws, index);
  const after = await stat(join(ws, 'sub/kept.txt'));
  assert.deepEqual([after.ino, after.mtimeMs], [before.ino, before.mtimeMs], 'an unchanged file is left alone');
  assert.equal(await readFile(join(ws, 'changed.txt'), 'utf8'), '2\n');
  assert.equal(await readFile(join(ws, 'new.txt'), 'utf8'), 'n\n');
  assert.ok(!existsSync(join(ws, 'stray.txt')), 'files the commit lacks are removed');
  assert.ok(!existsSync(join(ws, '.git')), 'no .git in a workspace');
});

test('a workspace pruned before the update (while the mirror fetches) ends with the same tree', async () => {
  const c1 = await server.createRepo('ws-prune', { 'kept.txt': 'kept\n', 'gone.txt': 'g\n' });
  const p = project('ws-prune');
  await mirrors.resolve(p, { ref: 'main' });
  const ws = join(tmp, 'ws-prune-work', 'app');
  const index = join(tmp, 'ws-prune-work', '.app.index');
  await mkdir(join(tmp, 'ws-prune-work'), { recursive: true });
  assert.equal(await mirrors.pruneWorkspace(p, ws, index), false, 'nothing to prune against before a first checkout');
  await mirrors.updateWorkspace(p, c1, ws, index);
  const before = await stat(join(ws, 'kept.txt'));
  // strays: one the next commit also has (its content must be the commit's), one it lacks, a stray directory
  await writeFile(join(ws, 'new.txt'), 'stray\n');
  await writeFile(join(ws, 'stray.txt'), 'stray\n');
  await mkdir(join(ws, 'stray-dir'));
  await writeFile(join(ws, 'stray-dir', 'x'), 'x\n');
  const c2 = await server.commit('ws-prune', { 'new.txt': 'n\n', 'gone.txt': null }, 'two');
  const [pruned, byRef] = await Promise.all([
    mirrors.pruneWorkspace(p, ws, index),
    mirrors.resolve(p, { ref: 'main' }),
  ]);
  assert.equal(pruned, true);
  assert.deepEqual(byRef, { commit: c2, ref: 'refs/heads/main' }, 'a branch read from its loose ref');
  // and from packed-refs (the fetch finds nothing new, so main stays packed)
  const packed = spawnSync('git', [`--git-dir=${mirrors.mirrorPath(p)}`, 'pack-refs', '--all', '--prune']);
  assert.equal(packed.status, 0, String(packed.stderr));
  assert.deepEqual(await mirrors.resolve(p, { ref: 'main' }), { commit: c2, ref: 'refs/heads/main' });
  assert.ok(!existsSync(join(mirrors.mirrorPath(p), 'refs/heads/main')), 'main was read from packed-refs');
  await mirrors.updateWorkspace(p, c2, ws, index, undefined, { pruned: true });
  assert.deepEqual((await readdir(ws)).sort(), ['kept.txt', 'new.txt']);
  assert.equal(await readFile(join(ws, 'new.txt'), 'utf8'), 'n\n');
  const after = await stat(join(ws, 'kept.txt'));
  assert.deepEqual([after.ino, after.mtimeMs], [before.ino, before.mtimeMs], 'an unchanged file is left alone');
});

test('many refs: the gzip-encoded negotiation reaches http-backend and every branch is mirrored', async () => {
  await server.createRepo('refs', { a: 'a' });
  for (let i = 0; i < 40; i++) await server.git('refs', ['commit', '-q', '--allow-empty', '-m', `c${i}`]);
  const branches = Array.from({ length: 40 }, (_, i) => `HEAD~${i}:refs/heads/b${i}`);
  await server.git('refs', ['push', '-q', 'origin', ...branches]);
  const sha = async (rev: string): Promise<string> => (await server.git('refs', ['rev-parse', rev])).trim();
  const p = project('refs');
  server.resetStats();
  // git's own fetch (the in-process one sends its requests as they are)
  process.env.KILN_GIT_HTTP_FETCH = '0';
  try {
    assert.deepEqual(await mirrors.resolve(p, { ref: 'b39' }), { commit: await sha('HEAD~39'), ref: 'refs/heads/b39' });
  } finally {
    delete process.env.KILN_GIT_HTTP_FETCH;
  }
  assert.ok(server.stats.gzipRequests > 0, 'git sent a gzip-encoded request body');
  await server.git('refs', ['commit', '-q', '--allow-empty', '-m', 'c40']);
  await server.git('refs', ['push', '-q', 'origin', 'HEAD:refs/heads/b0']);
  assert.equal((await mirrors.resolve(p, { ref: 'b0' })).commit, await sha('HEAD'));
  assert.equal((await mirrors.resolve(p, { ref: 'b17' })).commit, await sha('HEAD~18')); // (c40 on top)
  // A deleted branch is pruned from the mirror.
  await server.git('refs', ['push', '-q', 'origin', ':refs/heads/b0']);
  await rejectsWith(mirrors.resolve(p, { ref: 'b0' }), 'GIT_REF_NOT_FOUND');
});

test('checkout writes the exact tree of the commit and no .git', async () => {
  const c1 = await server.createRepo('tree', {
    'a.txt': 'alpha\n',
    'dir/b.txt': 'beta\n',
    'dir/gone.txt': 'to be deleted\n',
    'bin/run.sh': { content: '#!/bin/sh\necho hi\n', executable: true },
    '.dockerignore': 'x\n',
  });
  const c2 = await server.commit(
    'tree',
    { 'dir/gone.txt': null, 'a.txt': 'alpha 2\n', link: { symlink: 'dir/b.txt' }, 'e/m/p/t/y.txt': '' },
    'second',
  );
  const p = project('tree');
  assert.equal((await mirrors.resolve(p, { ref: 'main' })).commit, c2);

  const dest = newDir();
  const out = await mirrors.checkout(p, c2, dest);
  assert.deepEqual(out, { commit: c2, dir: dest, notes: [] });
  assert.deepEqual((await readdir(dest)).sort(), ['.dockerignore', 'a.txt', 'bin', 'dir', 'e', 'link']);
  assert.equal(await readFile(join(dest, 'a.txt'), 'utf8'), 'alpha 2\n');
  assert.equal(await readFile(join(dest, 'dir/b.txt'), 'utf8'), 'beta\n');
  assert.equal(await readFile(join(dest, 'e/m/p/t/y.txt'), 'utf8'), '');
  assert.deepEqual(await readdir(join(dest, 'dir')), ['b.txt'], 'the deleted file is absent');
  assert.equal(existsSync(join(dest, '.git')), false, 'no .git');
  assert.ok((await lstat(join(dest, 'link'))).isSymbolicLink());
  assert.equal(await readlink(join(dest, 'link')), 'dir/b.txt');
  assert.ok(((await stat(join(dest, 'bin/run.sh'))).mode & 0o100) !== 0, 'executable bit kept');
  assert.equal((await stat(join(dest, 'a.txt'))).mode & 0o111, 0);

  const old = newDir();
  await mirrors.checkout(p, c1, old);
  assert.equal(await readFile(join(old, 'dir/gone.txt'), 'utf8'), 'to be deleted\n');
  assert.equal(await readFile(join(old, 'a.txt'), 'utf8'), 'alpha\n');
  assert.equal(existsSync(join(old, 'link')), false);

  await mirrors.removeCheckout(dest);
  await mirrors.removeCheckout(old);
  assert.equal(existsSync(dest), false);
  assert.equal(existsSync(old), false);
  // Nothing registered in the mirror: no worktrees, no index.
  const mirror = mirrors.mirrorPath(p);
  assert.equal(existsSync(join(mirror, 'worktrees')), false);
  assert.equal(existsSync(join(mirror, 'index')), false);
});

test('checkout refuses a non-empty dest, unknown or abbreviated commits, and leaves dest empty on failure', async () => {
  const p = project('tree');
  const dest = newDir();
  await rejectsWith(mirrors.checkout(p, 'deadbeef'.repeat(5), dest), 'GIT_COMMIT_NOT_FOUND');
  assert.deepEqual(await readdir(dest), []);
  const head = (await mirrors.resolve(p, { ref: 'main' })).commit;
  await rejectsWith(mirrors.checkout(p, head.slice(0, 8), dest), 'GIT_COMMIT_INVALID');
  await writeFile(join(dest, 'x'), '');
  await rejectsWith(mirrors.checkout(p, head, dest), 'GIT_CHECKOUT_FAILED');
  await mirrors.removeCheckout(dest);
});

test('local repositories only with allowFile; credentials in URLs never', async () => {
  const path = server.repoPath('app');
  await rejectsWith(
    mirrors.resolve(project('app', { repository: `file://${path}` }), { ref: 'main' }),
    'GIT_URL_FORBIDDEN',
  );
  const e = await rejectsWith(
    mirrors.resolve(project('app', { repository: path }), { ref: 'main' }),
    'GIT_URL_FORBIDDEN',
  );
  assert.match(e.hint ?? '', /allowFileRepositories: true/);
  const withCreds = server.repoUrl('app').replace('http://', `http://${USER}:${PASSWORD}@`);
  const bad = await rejectsWith(
    mirrors.resolve(project('app', { repository: withCreds }), { ref: 'main' }),
    'GIT_URL_INVALID',
  );
  assert.ok(!allText(bad).includes(PASSWORD));
  await rejectsWith(
    mirrors.resolve(project('app', { repository: 'ext::sh -c id' }), { ref: 'main' }),
    'GIT_URL_INVALID',
  );

  const local = new GitMirrors({ dir: join(tmp, 'git-local'), allowFile: true, tmpDir: join(tmp, 'private') });
  try {
    const main = (await mirrors.resolve(project('app'), { ref: 'main' })).commit;
    const p = project('app', { repository: `file://${path}`, gitCredentials: undefined });
    assert.deepEqual(await local.resolve(p, { ref: 'main' }), { commit: main, ref: 'refs/heads/main' });
    assert.equal((await local.resolve({ ...p, repository: path }, { ref: 'main' })).commit, main);
    const dest = newDir();
    await local.checkout(p, main, dest);
    assert.equal(await readFile(join(dest, 'README.md'), 'utf8'), 'two\n');
    await local.removeCheckout(dest);
  } finally {
    await local.close();
  }
});

test('concurrent resolves of one repository all succeed and share one fetch', async () => {
  const head = await server.commit('app', { 'concurrent.txt': 'c\n' }, 'concurrent');
  const p = project('app');
  await mirrors.resolve(p, { ref: 'main' });
  server.resetStats();
  await mirrors.resolve(p, { ref: 'main' });
  const one = server.stats.requests;
  assert.ok(one > 0);
  server.resetStats();
  const all = await Promise.all([
    mirrors.resolve(p, { ref: 'main' }),
    mirrors.resolve(p, { ref: 'v1' }),
    mirrors.resolve(p, { ref: 'main' }),
    mirrors.resolve(p, { commit: head.slice(0, 9) }),
  ]);
  assert.deepEqual(
    all.map((r) => r.commit),
    [head, (await mirrors.resolve(p, { ref: 'v1' })).commit, head, head],
  );
  // Four concurrent calls + the check above: one fetch for the four, one for the check.
  assert.equal(server.stats.requests, 2 * one);
  // Calls made after a fetch ended fetch again (a new commit is seen).
  const later = await server.commit('app', { 'later.txt': 'l\n' }, 'later');
  assert.equal((await mirrors.resolve(p, { ref: 'main' })).commit, later);
});

test('lock files a killed git left in the mirror do not block later fetches', async () => {
  const p = project('app');
  const mirror = mirrors.mirrorPath(p);
  await mirrors.resolve(p, { ref: 'main' });
  await writeFile(join(mirror, 'refs/heads/main.lock'), '');
  await writeFile(join(mirror, 'packed-refs.lock'), '');
  const head = await server.commit('app', { 'after-crash.txt': 'x' }, 'after crash');
  assert.deepEqual(await mirrors.resolve(p, { ref: 'main' }), { commit: head, ref: 'refs/heads/main' });
  assert.equal(existsSync(join(mirror, 'packed-refs.lock')), false);
});

test('another process holding the mirror lock makes resolve wait', async () => {
  const p = project('app');
  const lock = `${mirrors.mirrorPath(p)}.lock`;
  const holder = spawn('flock', ['--exclusive', lock, 'sh', '-c', 'echo held; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
  let settled = false;
  const pending = mirrors.resolve(p, { ref: 'main' }).finally(() => (settled = true));
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(settled, false, 'resolve ran while another process held the lock');
  holder.stdin.end();
  assert.equal((await pending).ref, 'refs/heads/main');
});

test('a resolve aborted while another process holds the mirror lock ends its waiting flock and git', async () => {
  const p = project('app');
  await mirrors.resolve(p, { ref: 'main' });
  const lock = `${mirrors.mirrorPath(p)}.lock`;
  const holder = spawn('flock', ['--exclusive', lock, 'sh', '-c', 'echo held; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
  // waiting for the lock: processes of this test's own name the lock file (flock running git, or the in-process
  // fetch's holder, flock running cat)
  const waiting = async (): Promise<number[]> => {
    const pids: number[] = [];
    for (const pid of await readdir('/proc')) {
      if (!/^\d+$/.test(pid) || Number(pid) === holder.pid) continue;
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmd.includes(lock) && /\0(git|cat)\0/.test(cmd)) pids.push(Number(pid));
    }
    return pids;
  };
  const ac = new AbortController();
  const pending = mirrors.resolve(p, { ref: 'main' }, ac.signal);
  pending.catch(() => undefined);
  for (let i = 0; i < 500 && (await waiting()).length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.notDeepEqual(await waiting(), [], 'no flock waits for the lock');
  ac.abort();
  await rejectsWith(pending, 'INTERRUPTED');
  for (let i = 0; i < 100 && (await waiting()).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(await waiting(), [], 'the waiting flock (and its git) outlived the abort');
  holder.stdin.end();
  assert.equal((await mirrors.resolve(p, { ref: 'main' })).ref, 'refs/heads/main');
});

test('changedPaths lists added, modified, deleted and renamed paths', async () => {
  const c1 = await server.createRepo('paths', { a: '1', 'b/c': 'c\n'.repeat(50), d: 'd', 'same.txt': 's' });
  await server.git('paths', ['mv', 'b/c', 'b/c2']);
  const c2 = await server.commit('paths', { a: '2', d: null, 'e/f': 'new', 'b/c2': 'c\n'.repeat(50) }, 'change');
  const p = project('paths');
  assert.equal(await mirrors.changedPaths(p, c1, c2), undefined, 'no mirror yet');
  await mirrors.resolve(p, { ref: 'main' });
  assert.deepEqual((await mirrors.changedPaths(p, c1, c2))?.sort(), ['a', 'b/c', 'b/c2', 'd', 'e/f']);
  assert.deepEqual(await mirrors.changedPaths(p, c2.slice(0, 8), c2), []);
  assert.equal(await mirrors.changedPaths(p, '0'.repeat(40), c2), undefined);
  assert.equal(await mirrors.changedPaths(p, 'deadbeef'.repeat(5), c2), undefined);
  assert.equal(await mirrors.changedPaths(p, '--output=/tmp/x', c2), undefined);
});

test('submodules are checked out from their own mirrors, credentials only for the same host', async () => {
  const deep = await server.createRepo('deep', { 'deep.txt': 'deep\n' });
  await server.createRepo('lib', { 'lib.txt': 'lib v1\n' });
  const libOld = await server.submodule('lib', 'vendor/deep', '../deep.git', deep);
  const lib = await server.commit('lib', { 'lib.txt': 'lib v2\n' }, 'v2');
  await server.createRepo('super', { 'main.txt': 'super\n' });
  await server.submodule('super', 'modules/lib', '../lib.git', libOld);
  const sup = await server.submodule('super', 'modules/lib', '../lib.git', lib);

  const p = project('super', { submodules: true });
  assert.equal((await mirrors.resolve(p, { ref: 'main' })).commit, sup);
  const dest = newDir();
  await mirrors.checkout(p, sup, dest);
  assert.equal(await readFile(join(dest, 'main.txt'), 'utf8'), 'super\n');
  assert.equal(await readFile(join(dest, 'modules/lib/lib.txt'), 'utf8'), 'lib v2\n');
  assert.equal(await readFile(join(dest, 'modules/lib/vendor/deep/deep.txt'), 'utf8'), 'deep\n');
  const names = await readdir(dest, { recursive: true });
  assert.deepEqual(
    names.filter((n) => n.split('/').includes('.git')),
    [],
    'no .git anywhere in the checkout',
  );
  await mirrors.removeCheckout(dest);

  const plain = newDir();
  await mirrors.checkout(project('super'), sup, plain);
  assert.deepEqual(await readdir(join(plain, 'modules/lib')), [], 'submodules: false leaves the dir empty');
  await mirrors.removeCheckout(plain);

  // A submodule on another host ("localhost" is not 127.0.0.1 for credentials) gets no password.
  await server.createRepo('other', { 'o.txt': 'o\n' });
  const other = await server.submodule('other', 'ext', server.repoUrl('lib', 'localhost'), lib);
  const po = project('other', { submodules: true });
  await mirrors.resolve(po, { ref: 'main' });
  const failed = newDir();
  const e = await rejectsWith(mirrors.checkout(po, other, failed), 'GIT_FETCH_FAILED');
  assert.match(e.message, /localhost/);
  assert.ok(!allText(e).includes(PASSWORD));
  assert.deepEqual(await readdir(failed), [], 'a failed checkout leaves dest empty');

  // A submodule URL the server config forbids.
  const forbidden = await server.submodule('other', 'ext', `file://${server.repoPath('lib')}`, lib);
  await mirrors.resolve(po, { ref: 'main' });
  await rejectsWith(mirrors.checkout(po, forbidden, failed), 'GIT_URL_FORBIDDEN');
  await mirrors.removeCheckout(failed);
});

test('depth: shallow mirrors, old commits by full id only, clear error otherwise', async () => {
  const c1 = await server.createRepo('shallow', { f: '1' });
  await server.commit('shallow', { f: '2' }, 'two');
  const c3 = await server.commit('shallow', { f: '3' }, 'three');
  const p = project('shallow', { depth: 1 });
  assert.deepEqual(await mirrors.resolve(p, { ref: 'main' }), { commit: c3, ref: 'refs/heads/main' });
  const mirror = mirrors.mirrorPath(p);
  assert.match(mirror, /\.shallow\.git$/);
  assert.equal((await readFile(join(mirror, 'shallow'), 'utf8')).trim(), c3);
  const e = await rejectsWith(mirrors.resolve(p, { commit: c1.slice(0, 8) }), 'GIT_COMMIT_NOT_FOUND');
  assert.match(e.hint ?? '', /depth/);
  await rejectsWith(mirrors.resolve(p, { ref: 'main', commit: c1 }), 'GIT_COMMIT_NOT_FOUND');
  // A full id is fetched by id (protocol v2 allows it), so building an old commit still works.
  assert.deepEqual(await mirrors.resolve(p, { commit: c1 }), { commit: c1, ref: '' });
  const dest = newDir();
  await mirrors.checkout(p, c1, dest);
  assert.equal(await readFile(join(dest, 'f'), 'utf8'), '1');
  await mirrors.removeCheckout(dest);
  assert.notEqual(mirrors.mirrorPath(project('shallow')), mirror, 'full and shallow mirrors are apart');
});

test('an aborted resolve stops git and leaves a usable mirror', async () => {
  const p = project('big');
  const fresh = new GitMirrors({ dir: join(tmp, 'git-abort'), allowFile: false, tmpDir: join(tmp, 'private') });
  try {
    const before = new AbortController();
    before.abort();
    await rejectsWith(fresh.resolve(p, { ref: 'main' }, before.signal), 'INTERRUPTED');
    // Aborted while git waits for the server's first answer: git is killed mid-fetch.
    const during = new AbortController();
    server.onRequest = () => during.abort();
    try {
      await rejectsWith(fresh.resolve(p, { ref: 'main' }, during.signal), 'INTERRUPTED');
    } finally {
      server.onRequest = undefined;
    }
    const r = await fresh.resolve(p, { ref: 'main' });
    assert.equal(r.ref, 'refs/heads/main');
    assert.deepEqual(
      (await readdir(join(tmp, 'git-abort'))).filter((n) => n.endsWith('.init')),
      [],
      'no half-made mirror left',
    );
  } finally {
    await fresh.close();
  }
});

test('no temp files outlive a checkout; close removes the private dir', async () => {
  const priv = join(tmp, 'private');
  const [dir] = await readdir(priv);
  assert.ok(dir !== undefined);
  assert.deepEqual(await readdir(join(priv, dir)), ['askpass.sh'], 'only the askpass script is left');
  assert.equal((await stat(join(priv, dir))).mode & 0o777, 0o700);
  assert.deepEqual(logs, []);
  await mirrors.close();
  assert.deepEqual(await readdir(priv), []);
  // The default private dir lives in the data dir, and goes at exit even without close().
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '--input-type=module',
      '-e',
      `import { GitMirrors } from ${JSON.stringify(new URL('./mirror.ts', import.meta.url).href)};
       const m = new GitMirrors({ dir: process.argv[1], allowFile: true });
       await m.checkout({ name: 'x', repository: process.argv[2], depth: 0, lfs: false, submodules: false },
         '0'.repeat(40), process.argv[1] + '/co').catch((e) => console.log(e.code));`,
      join(tmp, 'git-exit'),
      server.repoPath('app'),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let childOut = '';
  child.stdout.on('data', (c: Buffer) => (childOut += c.toString()));
  await new Promise((r) => child.on('close', r));
  assert.equal(childOut.trim(), 'GIT_COMMIT_NOT_FOUND', 'the child made its private dir and failed as expected');
  assert.deepEqual(await readdir(join(tmp, 'git-exit')), ['co'], 'no .private-* dir left after exit');
  // The instance still works after close (it makes a new private dir) — and LFS without git-lfs is a note.
  const p = project('app', { lfs: true });
  const head = (await mirrors.resolve(p, { ref: 'main' })).commit;
  const dest = newDir();
  const out = await mirrors.checkout(p, head, dest);
  await mirrors.removeCheckout(dest);
  const lfsInstalled = await new Promise<boolean>((resolve) =>
    spawn('git', ['lfs', 'version'], { stdio: 'ignore' })
      .on('close', (code) => resolve(code === 0))
      .on('error', () => resolve(false)),
  );
  if (lfsInstalled) assert.deepEqual(out.notes, []);
  else {
    assert.equal(out.notes.length, 1);
    assert.match(out.notes[0] ?? '', /git-lfs is not installed/);
    assert.deepEqual(logs, out.notes);
  }
});
