import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../../errors.js';
import { mirrorDirName, parseRepositoryUrl, redactText, redactUrl, resolveSubmoduleUrl } from './url.js';
import { ASKPASS_SCRIPT, sshCommand } from './exec.js';

const noFile = { allowFile: false };
const withFile = { allowFile: true };

function code(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    assert.ok(isKilnError(e), `not a KilnError: ${String(e)}`);
    return e.code;
  }
}

test('accepted repository URLs are classified with their host', () => {
  assert.deepEqual(parseRepositoryUrl('https://git.example.com/team/app.git', noFile), {
    kind: 'http',
    url: 'https://git.example.com/team/app.git',
    host: 'git.example.com',
    name: 'app',
  });
  assert.equal(parseRepositoryUrl('http://127.0.0.1:8080/a/b', noFile).host, '127.0.0.1:8080');
  assert.deepEqual(parseRepositoryUrl('ssh://git@Git.Example.com:2222/team/app.git', noFile), {
    kind: 'ssh',
    url: 'ssh://git@Git.Example.com:2222/team/app.git',
    host: 'git.example.com:2222',
    name: 'app',
  });
  assert.deepEqual(parseRepositoryUrl('git@github.com:org/my repo.git'.replace(' ', '-'), noFile), {
    kind: 'ssh',
    url: 'git@github.com:org/my-repo.git',
    host: 'github.com',
    name: 'my-repo',
  });
  assert.equal(parseRepositoryUrl('file:///srv/git/app.git', withFile).kind, 'file');
  assert.equal(parseRepositoryUrl('/srv/git/app.git', withFile).name, 'app');
});

test('local repositories need allowFile', () => {
  assert.equal(
    code(() => parseRepositoryUrl('file:///srv/git/app.git', noFile)),
    'GIT_URL_FORBIDDEN',
  );
  assert.equal(
    code(() => parseRepositoryUrl('/srv/git/app.git', noFile)),
    'GIT_URL_FORBIDDEN',
  );
  assert.throws(
    () => parseRepositoryUrl('/srv/x', noFile),
    (e) => isKilnError(e) && /allowFileRepositories: true/.test(e.hint ?? ''),
  );
  assert.equal(
    code(() => parseRepositoryUrl('file://otherhost/srv/x', withFile)),
    'GIT_URL_INVALID',
  );
});

test('credentials in the URL, other transports and option-like URLs are refused', () => {
  for (const url of [
    'https://user:secret@example.com/a.git',
    'https://token@example.com/a.git',
    'ssh://git:secret@example.com/a.git',
    'ext::sh -c touch% /tmp/pwned',
    'ext::ssh',
    'fd::17',
    'git://example.com/a.git',
    'ftp://example.com/a.git',
    '-uhttps://example.com',
    '-oProxyCommand=touch:x',
    'git@-oProxyCommand=x:path',
    'git@host:-path',
    'relative/path',
    'https://exa mple.com/a',
    'https://example.com/a\nb',
    'https://example.com\\a',
    'https://example.com/a?x=1',
    '',
  ]) {
    assert.equal(
      code(() => parseRepositoryUrl(url, withFile)),
      'GIT_URL_INVALID',
      url,
    );
  }
  assert.throws(
    () => parseRepositoryUrl('https://user:hunter2@example.com/a.git', noFile),
    (e) => isKilnError(e) && !`${e.message} ${e.hint}`.includes('hunter2') && /gitCredentials/.test(e.hint ?? ''),
  );
});

test('redactUrl hides passwords and token-like user names, keeps ssh user names', () => {
  assert.equal(redactUrl('https://u:p4ss@h/x.git'), 'https://u:***@h/x.git');
  assert.equal(redactUrl('fatal: https://ghp_token@github.com/x failed'), 'fatal: https://***@github.com/x failed');
  assert.equal(redactUrl("'http://u:p@ss@h:1/x'"), "'http://u:***@h:1/x'");
  assert.equal(redactUrl('ssh://git@h/x'), 'ssh://git@h/x');
  assert.equal(redactUrl('https://h/x'), 'https://h/x');
  assert.equal(redactText('the secret is s3cr3t, s3cr3t!', ['s3cr3t', '']), 'the secret is ***, ***!');
});

test('mirror dir names: url hash, sanitized name, shallow mirrors apart', () => {
  const a = parseRepositoryUrl('https://h/team/App Name.git'.replace(' ', '%20'), noFile);
  assert.match(mirrorDirName(a, 0), /^[0-9a-f]{16}-App_20Name\.git$/);
  assert.notEqual(mirrorDirName(a, 0), mirrorDirName(a, 1));
  const b = parseRepositoryUrl('https://other/team/App%20Name.git', noFile);
  assert.notEqual(mirrorDirName(a, 0), mirrorDirName(b, 0));
  assert.match(mirrorDirName(parseRepositoryUrl('https://h/', noFile), 0), /-repo\.git$/);
});

test('relative submodule URLs resolve against the superproject URL like git', () => {
  assert.equal(resolveSubmoduleUrl('https://h/a/super.git', '../lib.git'), 'https://h/a/lib.git');
  assert.equal(resolveSubmoduleUrl('https://h/a/super.git/', './lib'), 'https://h/a/super.git/lib');
  assert.equal(resolveSubmoduleUrl('https://h:8/super.git', '../lib.git'), 'https://h:8/lib.git');
  assert.equal(resolveSubmoduleUrl('git@h:org/super.git', '../../other/lib.git'), 'git@h:other/lib.git');
  assert.equal(resolveSubmoduleUrl('/srv/git/super.git', '../lib.git'), '/srv/git/lib.git');
  assert.equal(resolveSubmoduleUrl('https://h/a/super.git', 'https://x/y.git'), 'https://x/y.git');
  assert.throws(() => resolveSubmoduleUrl('https://h/super.git', '../../x.git'), /climbs above/);
});

function sh(script: string, args: string[], env: Record<string, string>): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile('sh', ['-c', script, 'sh', ...args], { env: { PATH: process.env.PATH ?? '', ...env } }, (err, out) =>
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, out }),
    );
  });
}

test('askpass answers only prompts for its own host', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-askpass-test-'));
  try {
    const script = join(dir, 'askpass.sh');
    await writeFile(script, ASKPASS_SCRIPT);
    await chmod(script, 0o700);
    const env = { KILN_GIT_HOST: '127.0.0.1:8080', KILN_GIT_USERNAME: 'kiln', KILN_GIT_PASSWORD: `p$'"\\ x` };
    const ask = (prompt: string) => sh('exec "$0" "$@"'.replace('$0', script), [prompt], env);
    assert.deepEqual(await ask("Username for 'http://127.0.0.1:8080': "), { code: 0, out: 'kiln\n' });
    assert.deepEqual(await ask("Password for 'http://kiln@127.0.0.1:8080': "), { code: 0, out: `p$'"\\ x\n` });
    assert.equal((await ask("Password for 'http://kiln@127.0.0.1:9090': ")).code, 1);
    assert.equal((await ask("Password for 'http://kiln@evil.example': ")).code, 1);
    assert.equal((await ask("Username for 'http://127.0.0.1:8080.evil': ")).code, 1);
    assert.equal((await sh(`exec '${script}' "$@"`, ["Username for 'http://127.0.0.1:8080': "], {})).code, 1);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('GIT_SSH_COMMAND quotes paths for the shell git runs it with', async () => {
  const cmd = sshCommand("/keys/it's key", '/etc/kiln/known hosts');
  assert.match(cmd, /^ssh -F \/dev\/null -o BatchMode=yes -o StrictHostKeyChecking=yes /);
  // Let the shell split it the way git does, printing one argument per line.
  const { out } = await sh(`printf '%s\\n' ${cmd.slice('ssh '.length)}`, [], {});
  assert.deepEqual(out.trimEnd().split('\n'), [
    '-F',
    '/dev/null',
    '-o',
    'BatchMode=yes',
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'UserKnownHostsFile=/etc/kiln/known hosts',
    '-i',
    "/keys/it's key",
    '-o',
    'IdentitiesOnly=yes',
  ]);
  assert.equal(sshCommand(undefined, undefined), 'ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes');
});
