/**
 * The fetch side of `kiln pod-build`: git credentials read from the mounted git Secret (files, mode 0440 as the
 * kubelet writes them with defaultMode 0440), against a real `git http-backend` behind Basic auth; ssh through a
 * stand-in `ssh` on PATH that records how git called it (no sshd here).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGitServer, type GitServer } from '../../test/helpers/git-server.js';
import { fetchSource, podGitCredentials } from './pod-build.js';
import { gitSecretProblem } from './pod.js';
import { isKilnError } from '../errors.js';

const USER = 'ci-bot';
const TOKEN = 'ghp-Tok3n-Zx81QQ';
let git: GitServer;
let tmp: string;
let head: string;

/** A dir laid out as the kubelet mounts a Secret: one file per key, mode 0440. */
async function secretDir(name: string, data: Record<string, string>): Promise<string> {
  const dir = join(tmp, name);
  await mkdir(dir);
  for (const [k, v] of Object.entries(data)) {
    await writeFile(join(dir, k), v);
    await chmod(join(dir, k), 0o440);
  }
  return dir;
}

before(async () => {
  git = await startGitServer({ username: USER, password: TOKEN });
  tmp = await mkdtemp(join(tmpdir(), 'kiln-pod-build-'));
  head = await git.createRepo('shop', { 'web/Dockerfile': 'FROM scratch\n' });
});

after(async () => {
  await git?.stop();
  await rm(tmp, { recursive: true, force: true });
});

test('https: username and password files of the git Secret fetch the commit; the token is never in an error', async () => {
  const auth = await secretDir('basic', { username: `${USER}\n`, password: `${TOKEN}\n` });
  assert.deepEqual(await podGitCredentials(auth), { passwordFile: join(auth, 'password'), username: USER });
  const checkout = join(tmp, 'co1');
  const commit = await fetchSource({ repository: git.repoUrl('shop'), commit: head }, checkout, { authDir: auth });
  assert.equal(commit, head);
  assert.equal(await readFile(join(checkout, 'web/Dockerfile'), 'utf8'), 'FROM scratch\n');

  // a wrong token: one line naming the repository and commit, no credential in it
  const bad = await secretDir('bad', { username: USER, password: 'wrong-Pw-77' });
  await assert.rejects(
    fetchSource({ repository: git.repoUrl('shop'), commit: head }, join(tmp, 'co2'), { authDir: bad }),
    (e: unknown) => {
      assert.ok(isKilnError(e, 'GIT_FAILED'), String(e));
      assert.match(e.message, /^git fetch of http:\/\/127\.0\.0\.1:\d+\/shop\.git [0-9a-f]{40} failed: /);
      assert.ok(!e.message.includes('wrong-Pw-77') && !e.message.includes(TOKEN));
      assert.ok(!e.message.includes('\n'));
      return true;
    },
  );
  // no Secret mounted: the server's 401 is the answer (git never prompts)
  await assert.rejects(
    fetchSource({ repository: git.repoUrl('shop'), commit: head }, join(tmp, 'co3'), {
      authDir: join(tmp, 'nothing-mounted'),
    }),
    (e: unknown) => isKilnError(e, 'GIT_FAILED'),
  );
});

test('ssh: the key is handed to ssh as a private 0600 copy with strict host keys from known_hosts', async () => {
  const key = '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n';
  const auth = await secretDir('ssh', { 'ssh-privatekey': key, known_hosts: 'git.example.com ssh-ed25519 AAAAC3Nz\n' });
  assert.deepEqual(await podGitCredentials(auth), {
    sshKeyFile: join(auth, 'ssh-privatekey'),
    knownHostsFile: join(auth, 'known_hosts'),
  });
  // a stand-in ssh: records its arguments and the mode and content of the key it was given, then fails
  const bin = join(tmp, 'bin');
  const record = join(tmp, 'ssh-call');
  await mkdir(bin);
  await writeFile(
    join(bin, 'ssh'),
    `#!/bin/sh\nprintf '%s\\n' "$@" > ${record}\nwhile [ $# -gt 0 ]; do if [ "$1" = -i ]; then stat -c %a "$2" >> ${record}; cat "$2" >> ${record}; fi; shift; done\necho 'fatal: stand-in ssh' >&2\nexit 255\n`,
    { mode: 0o755 },
  );
  const path = process.env.PATH;
  process.env.PATH = `${bin}:${path ?? ''}`;
  try {
    await assert.rejects(
      fetchSource({ repository: 'ssh://git@git.example.com/shop.git', commit: head }, join(tmp, 'co4'), {
        authDir: auth,
      }),
      (e: unknown) => isKilnError(e, 'GIT_FAILED'),
    );
  } finally {
    process.env.PATH = path;
  }
  const call = await readFile(record, 'utf8');
  assert.match(call, /^StrictHostKeyChecking=yes$/m);
  assert.match(call, new RegExp(`^UserKnownHostsFile=${join(auth, 'known_hosts')}$`, 'm'));
  assert.match(call, /^IdentitiesOnly=yes$/m);
  assert.match(call, /^600\n-----BEGIN OPENSSH PRIVATE KEY-----/m, 'ssh got a 0600 copy of the key');
  assert.ok(!call.includes(`-i\n${join(auth, 'ssh-privatekey')}`), 'not the group-readable mounted file');
  assert.match(call, /^git@git\.example\.com$/m);

  // a key without known_hosts is refused before any ssh runs
  const noHosts = await secretDir('ssh-no-hosts', { 'ssh-privatekey': key });
  await assert.rejects(podGitCredentials(noHosts), (e: unknown) => {
    assert.ok(isKilnError(e, 'GIT_CREDENTIALS_MISSING'));
    assert.match(e.message, /has ssh-privatekey but no known_hosts$/);
    return true;
  });
});

test('gitSecretProblem: which Secrets serve as git credentials', () => {
  assert.equal(gitSecretProblem({ data: { username: 'x', password: 'y' } }), undefined);
  assert.equal(gitSecretProblem({ data: { password: 'y' } }), undefined);
  assert.equal(gitSecretProblem({ data: { 'ssh-privatekey': 'k', known_hosts: 'h' } }), undefined);
  assert.match(gitSecretProblem({ data: { 'ssh-privatekey': 'k' } }) ?? '', /no known_hosts/);
  assert.match(gitSecretProblem({ data: { token: 'x' } }) ?? '', /neither password/);
  assert.match(gitSecretProblem({}) ?? '', /neither password/);
});
