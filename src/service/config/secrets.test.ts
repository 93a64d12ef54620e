import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../../errors.js';
import type { Project } from '../model.js';
import { parseProjectDocument } from './parse.js';
import { readSecretRef, redactProject } from './secrets.js';

const VALUE = 's3cr3t-value-never-printed';

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-secrets-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Asserts a SECRET_UNAVAILABLE error whose message matches `want` and never contains the value. */
function unavailable(fn: () => unknown, want: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isKilnError(e, 'SECRET_UNAVAILABLE'), String(e));
    assert.match(e.message, want);
    assert.ok(!e.message.includes(VALUE) && !(e.hint ?? '').includes(VALUE));
    return true;
  });
}

test('readSecretRef: environment variables', () => {
  assert.equal(readSecretRef({ env: 'TOKEN' }, 'project shop: npm secret', { TOKEN: VALUE }), VALUE);
  assert.equal(
    readSecretRef({ passwordEnv: 'P' }, 'git password', { P: `${VALUE}\n` }),
    `${VALUE}\n`,
    'env kept as is',
  );
  unavailable(
    () => readSecretRef({ env: 'MISSING' }, 'project shop: npm secret', {}),
    /^project shop: npm secret: environment variable MISSING is not set$/,
  );
  unavailable(() => readSecretRef({ env: 'EMPTY' }, 'x', { EMPTY: '' }), /environment variable EMPTY is empty/);
});

test('readSecretRef: files, one trailing newline removed; symlinks (Kubernetes secret volumes) followed', () => {
  withDir((dir) => {
    const f = join(dir, 'token');
    writeFileSync(f, `${VALUE}\n`);
    assert.equal(readSecretRef({ file: f }, 'x'), VALUE);
    writeFileSync(f, `${VALUE}\r\n`);
    assert.equal(readSecretRef({ file: f }, 'x'), VALUE);
    writeFileSync(f, `line1\nline2\n\n`);
    assert.equal(readSecretRef({ file: f }, 'x'), 'line1\nline2\n');
    const link = join(dir, 'link');
    symlinkSync(f, link);
    assert.equal(readSecretRef({ tokenFile: link }, 'x'), 'line1\nline2\n');

    unavailable(
      () => readSecretRef({ file: join(dir, 'nope') }, 'webhook secret'),
      /^webhook secret: cannot read .*nope \(ENOENT\)$/,
    );
    unavailable(() => readSecretRef({ file: dir }, 'x'), /is not a regular file/);
    writeFileSync(f, '\n');
    unavailable(() => readSecretRef({ file: f }, 'x'), /token is empty/);
    writeFileSync(f, Buffer.alloc(1024 * 1024 + 1, 'a'));
    unavailable(() => readSecretRef({ file: f }, 'x'), /larger than 1 MiB/);
  });
});

test('readSecretRef: reference shapes of the model', () => {
  const env = { A: 'a', B: 'b' };
  assert.equal(readSecretRef({ secretEnv: 'A' }, 'x', env), 'a');
  assert.equal(readSecretRef({ tokenEnv: 'B' }, 'x', env), 'b');
  // Git credentials: the password; ssh key files are paths, not values.
  const creds = { username: 'u', passwordEnv: 'A', sshKeyFile: '/k', knownHostsFile: '/kh' };
  assert.equal(readSecretRef(creds, 'git password', env), 'a');
  unavailable(() => readSecretRef({ env: 'A', file: '/x' }, 'x', env), /both env and file are given/);
  unavailable(
    () => readSecretRef({ username: 'u', sshKeyFile: '/k' }, 'git password', env),
    /^git password: no secret reference$/,
  );
  unavailable(() => readSecretRef({}, 'x', env), /no secret reference/);
});

function project(): Project {
  return parseProjectDocument(
    {
      name: 'shop',
      repository: 'https://git.example.com/acme/shop.git',
      gitCredentials: { username: 'ci', passwordEnv: 'SHOP_GIT_TOKEN' },
      registry: 'registry.example.com/shop',
      registryCredentials: { username: 'u', passwordFile: '/run/secrets/reg' },
      webhooks: { github: { secretEnv: 'HOOK' }, generic: { secretFile: '/run/secrets/hook' } },
      timeoutSeconds: 60,
      images: [{ name: 'web', target: 'prod', secrets: { npm: { env: 'NPM_TOKEN' } }, timeoutSeconds: 30 }],
    },
    'test',
  );
}

test('redactProject: a parsed project comes back unchanged (it holds references only)', () => {
  const p = project();
  const r = redactProject(p);
  assert.deepEqual(r, p);
  assert.notEqual(r.images[0], p.images[0], 'a copy, not the same objects');
  assert.notEqual(r.images[0]!.secrets, p.images[0]!.secrets);
});

test('redactProject: values attached to a project never come out', () => {
  const p = project();
  // What a careless caller might do: attach resolved values next to the references.
  Object.assign(p, { password: VALUE });
  Object.assign(p.gitCredentials!, { password: VALUE });
  Object.assign(p.registryCredentials!, { passwordEnv: 'R', password: VALUE });
  Object.assign(p.webhooks!.github!, { secret: VALUE });
  Object.assign(p.images[0]!.secrets['npm']!, { value: VALUE });
  Object.assign(p.images[0]!, { resolvedSecrets: { npm: VALUE } });
  Object.assign(p.retention, { note: VALUE });
  const json = JSON.stringify(redactProject(p));
  assert.ok(!json.includes(VALUE), json);
  assert.deepEqual(redactProject(p).registryCredentials, {
    username: 'u',
    passwordEnv: 'R',
    passwordFile: '/run/secrets/reg',
  });
});

test('redactProject: user-info secrets in the repository URL are removed', () => {
  const p = project();
  for (const [url, want] of [
    [`https://ci:${VALUE}@git.example.com/x.git`, 'https://git.example.com/x.git'],
    [`https://${VALUE}@git.example.com/x.git`, 'https://git.example.com/x.git'],
    [`ssh://git:${VALUE}@git.example.com/x.git`, 'ssh://git@git.example.com/x.git'],
    [`git:${VALUE}@git.example.com:x.git`, 'git@git.example.com:x.git'],
    ['git@git.example.com:x.git', 'git@git.example.com:x.git'],
    ['https://git.example.com/a@b', 'https://git.example.com/a@b'],
  ]) {
    assert.equal(redactProject({ ...p, repository: url! }).repository, want, url);
  }
});
