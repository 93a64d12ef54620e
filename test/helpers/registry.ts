/**
 * Real registries for tests: Debian's `/usr/bin/docker-registry serve CONFIG` (distribution 2.8) on a free
 * 127.0.0.1 port with a throwaway config and filesystem storage in a temp dir (deletes enabled). Modes:
 *  - `none`: plain HTTP, no auth;
 *  - `htpasswd`: plain HTTP + Basic auth (bcrypt entries from `htpasswd -Bbn`, package apache2-utils);
 *  - `tls`: HTTPS with a throwaway CA (`caFile`), no auth;
 *  - `token`: plain HTTP + Bearer tokens from an in-process token server (test/helpers/token-server.ts).
 * `stop()` kills the registry (and token server) and removes every temp dir. The registry's log is kept in
 * memory (`log()`) so tests can observe requests (e.g. a cross-repository mount).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { Agent } from 'undici';
import { readFileSync } from 'node:fs';
import { makeServerCerts, type ServerCerts } from './certs.js';
import { startTokenServer, type TokenServer, type TokenServerOptions } from './token-server.js';

export interface StartRegistryOptions {
  auth?: 'none' | 'htpasswd' | 'tls' | 'token';
  /** htpasswd mode: user name/password (default kiln/kiln-secret). */
  username?: string;
  password?: string;
  /** token mode: token server options (default: user `kiln` may push/pull everything, anonymous pull). */
  token?: TokenServerOptions;
}

export interface TestRegistry {
  /** host:port, e.g. 127.0.0.1:41234 */
  host: string;
  /** http(s)://host */
  url: string;
  caFile?: string;
  username?: string;
  password?: string;
  dataDir: string;
  tokenServer?: TokenServer;
  /** The registry's combined stdout/stderr so far. */
  log(): string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<TestRegistry> {
  const mode = opts.auth ?? 'none';
  const dir = mkdtempSync(join(tmpdir(), 'kiln-registry-'));
  const cleanups: (() => Promise<void> | void)[] = [() => rmSync(dir, { recursive: true, force: true })];
  let certs: ServerCerts | undefined;
  let tokenServer: (TokenServer & { stop(): Promise<void> }) | undefined;
  const username = opts.username ?? 'kiln';
  const password = opts.password ?? 'kiln-secret';
  let authYaml = '';
  let tlsYaml = '';
  try {
    if (mode === 'htpasswd') {
      const line = execFileSync('htpasswd', ['-Bbn', username, password], { encoding: 'utf8' }).trim();
      writeFileSync(join(dir, 'htpasswd'), line + '\n');
      authYaml = `auth:\n  htpasswd:\n    realm: kiln-test\n    path: ${join(dir, 'htpasswd')}\n`;
    } else if (mode === 'tls') {
      certs = makeServerCerts();
      const c = certs;
      cleanups.push(() => c.cleanup());
      tlsYaml = `  tls:\n    certificate: ${certs.certFile}\n    key: ${certs.keyFile}\n`;
    } else if (mode === 'token') {
      tokenServer = await startTokenServer(
        opts.token ?? {
          users: { [username]: { password, grants: [{ repository: '*', actions: ['pull', 'push', 'delete'] }] } },
        },
      );
      const ts = tokenServer;
      cleanups.push(() => ts.stop());
      authYaml =
        `auth:\n  token:\n    realm: ${tokenServer.realm}\n    service: ${tokenServer.service}\n` +
        `    issuer: ${tokenServer.issuer}\n    rootcertbundle: ${tokenServer.rootCertBundle}\n`;
    }
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      const host = `127.0.0.1:${port}`;
      const config =
        `version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n` +
        `storage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\n  delete:\n    enabled: true\n` +
        `  maintenance:\n    uploadpurging:\n      enabled: false\n` +
        `http:\n  addr: ${host}\n  secret: kiln-test-secret-${port}\n${tlsYaml}` +
        authYaml;
      writeFileSync(join(dir, 'config.yml'), config);
      let output = '';
      const child: ChildProcess = spawn('/usr/bin/docker-registry', ['serve', join(dir, 'config.yml')], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
      let exited = false;
      child.on('exit', () => (exited = true));
      const url = `${mode === 'tls' ? 'https' : 'http'}://${host}`;
      const dispatcher = certs ? new Agent({ connect: { ca: readFileSync(certs.caFile, 'utf8') } }) : undefined;
      let ready = false;
      for (let i = 0; i < 400 && !exited; i++) {
        try {
          const r = await request(`${url}/v2/`, dispatcher ? { dispatcher } : {});
          await r.body.dump();
          ready = true;
          break;
        } catch {
          await sleep(50);
        }
      }
      await dispatcher?.close();
      if (!ready) {
        child.kill('SIGKILL');
        if (attempt < 2 && /address already in use/.test(output)) continue;
        throw new Error(`docker-registry did not start: ${output.slice(-2000)}`);
      }
      const stop = async (): Promise<void> => {
        if (!exited) {
          const done = new Promise<void>((r) => child.once('exit', () => r()));
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), 3000);
          await done;
          clearTimeout(t);
        }
        for (const c of cleanups.reverse()) await c();
      };
      const reg: TestRegistry = {
        host,
        url,
        dataDir: join(dir, 'data'),
        log: () => output,
        stop,
      };
      if (certs) reg.caFile = certs.caFile;
      if (mode === 'htpasswd' || mode === 'token') {
        reg.username = username;
        reg.password = password;
      }
      if (tokenServer) reg.tokenServer = tokenServer;
      return reg;
    }
  } catch (e) {
    for (const c of cleanups.reverse()) await c();
    throw e;
  }
}
