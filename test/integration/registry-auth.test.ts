/**
 * Authentication against real registries: the Bearer token flow (anonymous pull, denied and unauthorized pushes,
 * cross-repository mount scopes) with distribution's token access controller, Basic auth with htpasswd, and the
 * login/logout CLI with a throwaway docker config. Credentials must never appear in output.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKilnError } from '../../src/errors.js';
import { copy, push, type PushOptions } from '../../src/registry/push.js';
import { getRemoteImage } from '../../src/registry/remote.js';
import { closeTransports } from '../../src/registry/transport.js';
import { verifyLogin } from '../../src/registry/keychain.js';
import { writeLayout } from '../../src/oci/layout.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { startRegistry, runKiln } from '../helpers/registry.js';

const kiln = runKiln;

test('token auth: anonymous pull, unauthorized and denied pushes, mount scopes, bad password', async () => {
  const reg = await startRegistry({
    auth: 'token',
    token: {
      users: {
        pusher: { password: 'push-pw', grants: [{ repository: '*', actions: ['pull', 'push'] }] },
        reader: { password: 'read-pw', grants: [{ repository: '*', actions: ['pull'] }] },
      },
    },
  });
  const ts = reg.tokenServer!;
  const as = (username: string, password: string): PushOptions => ({
    credentials: async () => ({ username, password }),
  });
  const all: PushOptions[] = [];
  const o = (x: PushOptions): PushOptions => (all.push(x), x);
  try {
    const img = await makeBusyboxImage();
    const pushed = await push(img, `${reg.host}/team/app:v1`, o(as('pusher', 'push-pw')));
    const pushReqs = ts.requests.filter((r) => r.account === 'pusher');
    assert.deepEqual(
      pushReqs.map((r) => r.granted),
      [['repository:team/app:pull,push']],
      'one token, with push and pull, for the whole push',
    );

    // Anonymous pull works, with an anonymous pull-only token.
    const anon = await getRemoteImage(`${reg.host}/team/app:v1`, o({}));
    assert.equal(await anon.digest(), pushed.digest);
    assert.ok(ts.requests.some((r) => r.account === undefined && r.granted.includes('repository:team/app:pull')));

    // Anonymous push: the registry wants credentials.
    await assert.rejects(push(img, `${reg.host}/team/anon:v1`, o({})), (e: unknown) => {
      assert.ok(isKilnError(e, 'UNAUTHORIZED'), String(e));
      assert.equal(e.message, `push ${reg.host}/team/anon:v1: authentication required (UNAUTHORIZED)`);
      return true;
    });
    // A user without push permission is denied.
    await assert.rejects(push(img, `${reg.host}/team/reader:v1`, o(as('reader', 'read-pw'))), (e: unknown) => {
      assert.ok(isKilnError(e, 'DENIED'), String(e));
      assert.equal(e.message, `push ${reg.host}/team/reader:v1: requested access to the resource is denied (DENIED)`);
      return true;
    });
    // A wrong password is rejected by the token server, without echoing it.
    await assert.rejects(getRemoteImage(`${reg.host}/team/app:v1`, o(as('pusher', 'WRONG-pw'))), (e: unknown) => {
      assert.ok(isKilnError(e, 'UNAUTHORIZED'), String(e));
      assert.ok(!e.message.includes('WRONG-pw'));
      assert.ok(!e.message.includes('\n'));
      return true;
    });

    // login verifies against the token server before anything is stored.
    await verifyLogin(reg.host, { username: 'reader', password: 'read-pw' });
    await assert.rejects(verifyLogin(reg.host, { username: 'reader', password: 'nope' }), (e: unknown) => {
      assert.ok(isKilnError(e, 'UNAUTHORIZED'));
      assert.equal(e.message, `login ${reg.host}: invalid username or password (UNAUTHORIZED)`);
      return true;
    });

    // Cross-repository mount: the token asks for pull on the source repository too.
    const c = await copy(`${reg.host}/team/app:v1`, `${reg.host}/other/app:v1`, o(as('pusher', 'push-pw')));
    assert.deepEqual([...c.blobs.values()], ['mounted', 'mounted']);
    assert.ok(
      ts.requests.some(
        (r) =>
          r.account === 'pusher' &&
          r.scopes.includes('repository:other/app:pull,push') &&
          r.scopes.includes('repository:team/app:pull') &&
          r.granted.includes('repository:team/app:pull'),
      ),
      JSON.stringify(ts.requests.map((r) => r.scopes)),
    );
  } finally {
    for (const x of all) await closeTransports(x);
    await reg.stop();
  }
});

test('token auth with a libtrust kid and RS256 keys is accepted too', async () => {
  const reg = await startRegistry({
    auth: 'token',
    token: {
      keyType: 'rsa',
      keyHeader: 'kid',
      users: { u: { password: 'p', grants: [{ repository: 'app', actions: ['pull', 'push'] }] } },
    },
  });
  const opts: PushOptions = { credentials: async () => ({ username: 'u', password: 'p' }) };
  try {
    const img = await makeBusyboxImage();
    const r = await push(img, `${reg.host}/app:v1`, opts);
    assert.equal(r.digest, await img.digest());
  } finally {
    await closeTransports(opts);
    await reg.stop();
  }
});

test('htpasswd: no or wrong credentials are UNAUTHORIZED; CLI login stores 0600 config, push uses it, logout forgets', async () => {
  const reg = await startRegistry({ auth: 'htpasswd' });
  const home = mkdtempSync(join(tmpdir(), 'kiln-login-'));
  const env = { DOCKER_CONFIG: join(home, 'docker') };
  const all: PushOptions[] = [];
  const o = (x: PushOptions): PushOptions => (all.push(x), x);
  try {
    const img = await makeBusyboxImage();
    await assert.rejects(push(img, `${reg.host}/app:v1`, o({})), (e: unknown) => {
      assert.ok(isKilnError(e, 'UNAUTHORIZED'));
      assert.equal(e.message, `push ${reg.host}/app:v1: authentication required (UNAUTHORIZED)`);
      return true;
    });
    await assert.rejects(
      push(img, `${reg.host}/app:v1`, o({ credentials: async () => ({ username: 'kiln', password: 'nope' }) })),
      (e: unknown) => isKilnError(e, 'UNAUTHORIZED'),
    );

    // Wrong password: one line, non-zero, nothing stored, password not echoed.
    const bad = await kiln(['login', '-u', 'kiln', '--password-stdin', reg.host], env, 'bad-password\n');
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr.split('\n')[0], `kiln: login ${reg.host}: invalid username or password (UNAUTHORIZED)`);
    assert.ok(!bad.stderr.includes('bad-password'));
    assert.ok(!existsSync(join(home, 'docker', 'config.json')));

    const ok = await kiln(['login', '-u', 'kiln', '--password-stdin', reg.host], env, `${reg.password}\n`);
    assert.equal(ok.code, 0, ok.stderr);
    const cfgFile = join(home, 'docker', 'config.json');
    assert.equal(statSync(cfgFile).mode & 0o777, 0o600);
    const cfg = JSON.parse(readFileSync(cfgFile, 'utf8')) as { auths: Record<string, { auth: string }> };
    assert.equal(cfg.auths[reg.host]?.auth, Buffer.from(`kiln:${reg.password}`).toString('base64'));

    // push via the CLI from an OCI layout, with the stored credentials
    const layout = join(home, 'layout');
    await writeLayout(layout, [{ image: img, name: 'v1' }]);
    const p = await kiln(['push', `oci:${layout}:v1`, `${reg.host}/app:v1`, '--progress', 'plain'], env);
    assert.equal(p.code, 0, p.stderr);
    assert.equal(p.stdout.trim(), `${reg.host}/app@${await img.digest()}`);
    assert.ok(!p.stderr.includes(reg.password!));
    const insp = await kiln(['inspect', `${reg.host}/app:v1`], { ...env, KILN_DEBUG: '1' });
    assert.match(insp.stderr, /kiln: debug: GET http:\/\/127\.0\.0\.1:\d+\/v2\/app\/manifests\/v1 -> 200/);
    for (const secret of [reg.password!, Buffer.from(`kiln:${reg.password}`).toString('base64')]) {
      assert.ok(!insp.stderr.includes(secret), 'debug output never shows credentials');
    }
    assert.equal(insp.code, 0, insp.stderr);
    const j = JSON.parse(insp.stdout) as { digest: string; config: { rootfs: { diff_ids: string[] } } };
    assert.equal(j.digest, await img.digest());
    assert.equal(j.config.rootfs.diff_ids.length, 1);

    const out = await kiln(['logout', reg.host], env);
    assert.equal(out.code, 0, out.stderr);
    const after = JSON.parse(readFileSync(cfgFile, 'utf8')) as { auths: Record<string, unknown> };
    assert.equal(after.auths[reg.host], undefined);
    const again = await kiln(['logout', reg.host], env);
    assert.equal(again.code, 1);
    assert.equal(again.stderr.split('\n')[0], `kiln: logout ${reg.host}: not logged in`);
    const denied = await kiln(['inspect', `${reg.host}/app:v1`], env);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr.split('\n')[0]!, /authentication required \(UNAUTHORIZED\)$/);
  } finally {
    for (const x of all) await closeTransports(x);
    rmSync(home, { recursive: true, force: true });
    await reg.stop();
  }
});
