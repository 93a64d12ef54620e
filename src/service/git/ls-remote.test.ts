/**
 * GitMirrors.lsRemote against a real smart-HTTP git server with Basic auth: branches and tags (annotated ones
 * peeled), credentials from the project's reference, nothing written to the mirror, errors that never show the
 * password.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { isKilnError } from '../../errors.js';
import { gitTestProject, startGitServer, type GitServer } from '../../../test/helpers/git-server.js';
import { GitMirrors, type GitProject } from './mirror.js';

const PASSWORD = `pw-${randomBytes(6).toString('hex')}`;
const PASSWORD_ENV = `KILN_TEST_LS_REMOTE_PW_${randomBytes(4).toString('hex')}`;

let server: GitServer;
let tmp: string;
let mirrors: GitMirrors;

before(async () => {
  server = await startGitServer({ username: 'ci', password: PASSWORD });
  tmp = await mkdtemp(join(tmpdir(), 'kiln-ls-remote-'));
  process.env[PASSWORD_ENV] = PASSWORD;
  mirrors = new GitMirrors({ dir: join(tmp, 'git'), allowFile: false });
});

after(async () => {
  await mirrors.close();
  await server.stop();
  await rm(tmp, { recursive: true, force: true });
  delete process.env[PASSWORD_ENV];
});

function project(name: string, over: Partial<GitProject> = {}): GitProject {
  return gitTestProject(name, server.repoUrl(name), { username: 'ci', passwordEnv: PASSWORD_ENV }, over);
}

test('lsRemote: branches and tags with their commits (annotated tags peeled); the mirror is not touched', async () => {
  const main = await server.createRepo('app', { 'a.txt': 'a\n' });
  const dev = await server.commit('app', { 'b.txt': 'b\n' }, 'dev work', 'dev');
  await server.tag('app', 'v1', main);
  await server.tag('app', 'v2', dev, 'annotated release');
  const tagObject = (await server.git('app', ['rev-parse', 'v2'])).trim();
  assert.notEqual(tagObject, dev, 'v2 is an annotated tag object');
  const refs = await mirrors.lsRemote(project('app'));
  assert.deepEqual(Object.fromEntries([...refs].sort()), {
    'refs/heads/dev': dev,
    'refs/heads/main': main,
    'refs/tags/v1': main,
    'refs/tags/v2': dev,
  });
  assert.equal(existsSync(mirrors.mirrorPath(project('app'))), false, 'no mirror was created');
});

test('lsRemote: an empty repository has no refs; bad credentials fail with a hint and without the password', async () => {
  execFileSync('git', ['init', '-q', '--bare', server.repoPath('empty')]);
  assert.equal((await mirrors.lsRemote(project('empty'))).size, 0);
  const wrongEnv = `${PASSWORD_ENV}_WRONG`;
  process.env[wrongEnv] = 'not-the-password';
  try {
    await assert.rejects(
      mirrors.lsRemote(project('empty', { gitCredentials: { username: 'ci', passwordEnv: wrongEnv } })),
      (e) => {
        assert.ok(isKilnError(e, 'GIT_LS_REMOTE_FAILED'), inspect(e));
        assert.match(e.hint ?? '', /gitCredentials/);
        assert.doesNotMatch(inspect(e, { depth: 5 }) + e.message, /not-the-password/);
        return true;
      },
    );
  } finally {
    delete process.env[wrongEnv];
  }
  await assert.rejects(mirrors.lsRemote(project('missing')), (e) => isKilnError(e, 'GIT_LS_REMOTE_FAILED'));
});
