/**
 * The plain-HTTP memo of insecure registries (src/registry/schemes.ts): the first contact probes HTTPS then HTTP
 * and remembers HTTP; later contacts go straight to HTTP; a remembered registry that now speaks TLS is found by
 * the full probe again (and forgotten). Real registries, a fresh $KILN_HOME.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  closeTransports,
  forgetSchemeProbes,
  transportFor,
  type RegistryOptions,
} from '../../src/registry/transport.js';
import { startRegistry } from '../helpers/registry.js';

/** Ping `host` with fresh transports (a new pool: like a new kiln process) and return the debug lines it logged. */
async function ping(host: string, o: RegistryOptions): Promise<string[]> {
  const opts: RegistryOptions = { ...o, pool: new Map() };
  forgetSchemeProbes();
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.env.KILN_DEBUG = '1';
  process.stderr.write = ((s: string | Uint8Array): boolean => {
    lines.push(String(s));
    return true;
  }) as typeof process.stderr.write;
  try {
    await transportFor(host, host, opts).ping({ label: 'test', kind: 'other' });
  } finally {
    process.stderr.write = write;
    delete process.env.KILN_DEBUG;
    await closeTransports(opts);
  }
  return lines;
}

test('insecure registries answering plain HTTP are remembered; a registry that moved to TLS is probed again', async () => {
  const home = await mkdtemp(join(tmpdir(), 'kiln-schemes-'));
  const saved = process.env.KILN_HOME;
  process.env.KILN_HOME = home;
  const plain = await startRegistry();
  const tls = await startRegistry({ auth: 'tls' });
  try {
    const memo = join(home, 'registry-schemes.json');
    const first = await ping(plain.host, { insecureRegistries: [plain.host] });
    assert.ok(
      first.some((l) => l.includes(`https://${plain.host}/v2/`)),
      'first contact tries HTTPS',
    );
    assert.deepEqual(JSON.parse(await readFile(memo, 'utf8')), { [plain.host]: 'http' });
    const second = await ping(plain.host, { insecureRegistries: [plain.host] });
    assert.ok(!second.some((l) => l.includes('https://')), `then straight to HTTP: ${second.join('')}`);
    assert.ok(second.some((l) => l.includes(`ping http://${plain.host}/v2/: 200`)));

    // a host remembered as plain HTTP that now serves TLS: the full probe finds HTTPS, the memo forgets it
    await writeFile(memo, JSON.stringify({ [plain.host]: 'http', [tls.host]: 'http' }));
    const moved = await ping(tls.host, { insecureRegistries: [tls.host], caFiles: [tls.caFile as string] });
    assert.ok(
      moved.some((l) => l.includes(`ping https://${tls.host}/v2/: 200`)),
      moved.join(''),
    );
    assert.deepEqual(JSON.parse(await readFile(memo, 'utf8')), { [plain.host]: 'http' });
  } finally {
    if (saved === undefined) delete process.env.KILN_HOME;
    else process.env.KILN_HOME = saved;
    await plain.stop();
    await tls.stop();
    await rm(home, { recursive: true, force: true });
  }
});

test('two transports to one insecure host in a process: one HTTPS probe, one ping, the challenge shared', async () => {
  const home = await mkdtemp(join(tmpdir(), 'kiln-schemes-'));
  const saved = process.env.KILN_HOME;
  process.env.KILN_HOME = home;
  forgetSchemeProbes();
  const reg = await startRegistry({ auth: 'htpasswd' });
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  const credentials = async (): Promise<{ username: string; password: string }> => ({
    username: reg.username as string,
    password: reg.password as string,
  });
  const a: RegistryOptions = { insecureRegistries: [reg.host], pool: new Map(), credentials };
  const b: RegistryOptions = { insecureRegistries: [reg.host], pool: new Map(), credentials, userAgent: 'other' };
  let status: number | undefined;
  try {
    process.env.KILN_DEBUG = '1';
    process.stderr.write = ((s: string | Uint8Array): boolean => {
      lines.push(String(s));
      return true;
    }) as typeof process.stderr.write;
    const ctx = { label: 'test', kind: 'other' as const };
    // at once, as a build resolves its base image and its cache manifest (before any memo is written on disk)
    await Promise.all([transportFor(reg.host, reg.host, a).ping(ctx), transportFor(reg.host, reg.host, b).ping(ctx)]);
    // the second transport authenticates with the challenge the first one read
    const res = await transportFor(reg.host, reg.host, b).request({
      method: 'GET',
      path: '/v2/_catalog',
      scopes: [],
      expect: [200],
      ctx,
    });
    status = res.status;
    await res.body.text();
  } finally {
    process.stderr.write = write;
    delete process.env.KILN_DEBUG;
    if (saved === undefined) delete process.env.KILN_HOME;
    else process.env.KILN_HOME = saved;
    await closeTransports(a);
    await closeTransports(b);
    await reg.stop();
    await rm(home, { recursive: true, force: true });
  }
  assert.equal(status, 200);
  const log = lines.join('');
  assert.equal(lines.filter((l) => l.includes(`GET https://${reg.host}/v2/ `)).length, 1, log);
  assert.equal(lines.filter((l) => l.includes(`GET http://${reg.host}/v2/ `)).length, 1, log);
  assert.ok(log.includes(`ping http://${reg.host}/v2/: shared (basic)`), log);
});
