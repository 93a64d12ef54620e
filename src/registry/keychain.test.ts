import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  existsSync,
  readdirSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../errors.js';
import { Keychain, configKeyHost } from './keychain.js';

/** A fake `docker-credential-test` helper backed by a JSON file ($FAKE_CRED_STORE), like docker's helpers. */
const HELPER = `#!/bin/sh
set -e
store="$FAKE_CRED_STORE"
[ -f "$store" ] || echo '{}' > "$store"
input=$(cat)
case "$1" in
  get)
    node -e 'const s=require(process.argv[1]);const k=process.argv[2];if(!s[k]){process.stdout.write("credentials not found in native keychain\\n");process.exit(1)}process.stdout.write(JSON.stringify({ServerURL:k,Username:s[k].u,Secret:s[k].p}))' "$store" "$input";;
  store)
    node -e 'const fs=require("fs");const s=JSON.parse(fs.readFileSync(process.argv[1]));const j=JSON.parse(process.argv[2]);s[j.ServerURL]={u:j.Username,p:j.Secret};fs.writeFileSync(process.argv[1],JSON.stringify(s))' "$store" "$input";;
  erase)
    node -e 'const fs=require("fs");const s=JSON.parse(fs.readFileSync(process.argv[1]));const k=process.argv[2];if(!s[k]){process.stdout.write("credentials not found in native keychain\\n");process.exit(1)}delete s[k];fs.writeFileSync(process.argv[1],JSON.stringify(s))' "$store" "$input";;
  *) exit 2;;
esac
`;

function setup(config?: unknown): { dir: string; kc: Keychain; store: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-keychain-'));
  const bin = join(dir, 'bin');
  require_mkdir(bin);
  writeFileSync(join(bin, 'docker-credential-test'), HELPER);
  chmodSync(join(bin, 'docker-credential-test'), 0o755);
  const store = join(dir, 'helper-store.json');
  const cfgDir = join(dir, 'docker');
  if (config !== undefined) {
    require_mkdir(cfgDir);
    writeFileSync(join(cfgDir, 'config.json'), JSON.stringify(config));
  }
  const env = {
    ...process.env,
    PATH: `${bin}:${process.env.PATH ?? ''}`,
    FAKE_CRED_STORE: store,
    DOCKER_CONFIG: cfgDir,
  };
  return { dir, kc: new Keychain({ env }), store, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

function require_mkdir(p: string): void {
  mkdirSync(p, { recursive: true });
}

const b64 = (s: string): string => Buffer.from(s).toString('base64');

test('auths: base64 auth, docker.io aliases, keys with scheme/path, identity tokens', async () => {
  const t = setup({
    auths: {
      'https://index.docker.io/v1/': { auth: b64('hubuser:hub:pass') },
      'http://127.0.0.1:5000': { auth: b64('local:pw') },
      'reg.example.com/v2/': { identitytoken: 'refresh-me' },
      'plain.example.com': { username: 'u', password: 'p' },
    },
  });
  try {
    assert.deepEqual(await t.kc.get('docker.io'), { username: 'hubuser', password: 'hub:pass' });
    assert.deepEqual(await t.kc.get('index.docker.io'), { username: 'hubuser', password: 'hub:pass' });
    assert.deepEqual(await t.kc.get('127.0.0.1:5000'), { username: 'local', password: 'pw' });
    assert.deepEqual(await t.kc.get('reg.example.com'), { identityToken: 'refresh-me' });
    assert.deepEqual(await t.kc.get('plain.example.com'), { username: 'u', password: 'p' });
    assert.equal(await t.kc.get('unknown.example.com'), undefined);
  } finally {
    t.cleanup();
  }
});

test('no config file means no credentials; invalid JSON is a one-line error', async () => {
  const t = setup();
  try {
    assert.equal(await t.kc.get('docker.io'), undefined);
  } finally {
    t.cleanup();
  }
  const bad = setup({});
  try {
    writeFileSync(bad.kc.configFile, '{not json');
    await assert.rejects(bad.kc.get('x.io'), (e: unknown) => isKilnError(e, 'DOCKER_CONFIG_INVALID'));
  } finally {
    bad.cleanup();
  }
});

test('store/erase in the file: base64 auth, mode 0600, other fields preserved, atomic (no temp files left)', async () => {
  const t = setup({ auths: { 'other.io': { auth: b64('a:b') } }, psFormat: 'table' });
  try {
    assert.equal(await t.kc.store('127.0.0.1:5000', { username: 'kiln', password: 's3cret' }), 'file');
    assert.equal(await t.kc.store('docker.io', { username: 'hub', password: 'x' }), 'file');
    const cfg = JSON.parse(readFileSync(t.kc.configFile, 'utf8')) as {
      auths: Record<string, { auth: string }>;
      psFormat: string;
    };
    assert.equal(cfg.psFormat, 'table');
    assert.equal(cfg.auths['127.0.0.1:5000']?.auth, b64('kiln:s3cret'));
    assert.equal(cfg.auths['https://index.docker.io/v1/']?.auth, b64('hub:x'));
    assert.equal(cfg.auths['other.io']?.auth, b64('a:b'));
    assert.equal(statSync(t.kc.configFile).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(t.kc.configDir), ['config.json']);
    assert.deepEqual(await t.kc.get('127.0.0.1:5000'), { username: 'kiln', password: 's3cret' });
    assert.equal(await t.kc.erase('127.0.0.1:5000'), true);
    assert.equal(await t.kc.erase('127.0.0.1:5000'), false);
    assert.equal(await t.kc.get('127.0.0.1:5000'), undefined);
    assert.ok(await t.kc.get('other.io'));
  } finally {
    t.cleanup();
  }
});

test('credHelpers and credsStore run docker-credential-<name> get/store/erase', async () => {
  const t = setup({
    credsStore: 'test',
    credHelpers: { 'special.io': 'missing-helper' },
    auths: { 'fallback.io': { auth: b64('f:g') } },
  });
  try {
    assert.equal(await t.kc.store('127.0.0.1:5000', { username: 'kiln', password: 'pw' }), 'helper');
    const stored = JSON.parse(readFileSync(t.store, 'utf8')) as Record<string, { u: string; p: string }>;
    assert.deepEqual(stored['127.0.0.1:5000'], { u: 'kiln', p: 'pw' });
    const cfg = JSON.parse(readFileSync(t.kc.configFile, 'utf8')) as { auths: Record<string, unknown> };
    assert.deepEqual(cfg.auths['127.0.0.1:5000'], {}, 'no secret in the file');
    assert.deepEqual(await t.kc.get('127.0.0.1:5000'), { username: 'kiln', password: 'pw' });
    // helper says "not found": fall back to auths
    assert.deepEqual(await t.kc.get('fallback.io'), { username: 'f', password: 'g' });
    assert.equal(await t.kc.get('nothing.io'), undefined);
    // Docker Hub goes to the helper under its legacy server URL
    await t.kc.store('docker.io', { username: 'hub', password: 'h' });
    assert.ok(JSON.parse(readFileSync(t.store, 'utf8'))['https://index.docker.io/v1/']);
    // the per-registry helper wins over credsStore; a missing helper is a clear error
    await assert.rejects(
      t.kc.get('special.io'),
      (e: unknown) => isKilnError(e, 'CREDENTIAL_HELPER_FAILED') && /not found on PATH/.test(e.message),
    );
    assert.equal(await t.kc.erase('127.0.0.1:5000'), true);
    assert.equal(await t.kc.get('127.0.0.1:5000'), undefined);
    assert.ok(existsSync(t.kc.configFile));
  } finally {
    t.cleanup();
  }
});

test('<token> user name from a helper means an identity token', async () => {
  const t = setup({ credsStore: 'test' });
  try {
    writeFileSync(t.store, JSON.stringify({ 'id.io': { u: '<token>', p: 'refresh' } }));
    assert.deepEqual(await t.kc.get('id.io'), { identityToken: 'refresh' });
  } finally {
    t.cleanup();
  }
});

test('config keys normalise to hosts', () => {
  assert.equal(configKeyHost('https://index.docker.io/v1/'), 'docker.io');
  assert.equal(configKeyHost('http://127.0.0.1:5000/v2/'), '127.0.0.1:5000');
  assert.equal(configKeyHost('quay.io'), 'quay.io');
});

test('embedderFirst: one function per embedder (its transports pool), the embedder answers before the keychain', async () => {
  const { embedderFirst } = await import('./keychain.js');
  const dir = mkdtempSync(join(tmpdir(), 'kiln-kc-embed-'));
  const saved = process.env.DOCKER_CONFIG;
  process.env.DOCKER_CONFIG = dir;
  try {
    writeFileSync(
      join(dir, 'config.json'),
      JSON.stringify({ auths: { 'other.example': { auth: Buffer.from('kc:kcpw').toString('base64') } } }),
    );
    const first = async (r: string): Promise<{ username: string; password: string } | undefined> =>
      r === 'proj.example' ? { username: 'svc', password: 'pw' } : undefined;
    const a = embedderFirst(first);
    assert.equal(embedderFirst(first), a, 'the same function for the same embedder');
    assert.notEqual(
      embedderFirst(async () => undefined),
      a,
    );
    assert.deepEqual(await a('proj.example'), { username: 'svc', password: 'pw' });
    assert.deepEqual(await a('other.example'), { username: 'kc', password: 'kcpw' });
  } finally {
    if (saved === undefined) delete process.env.DOCKER_CONFIG;
    else process.env.DOCKER_CONFIG = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});
