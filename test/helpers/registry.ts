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
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { createServer as createHttpServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import type { Transform } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { makeServerCerts, type ServerCerts } from './certs.js';
import { startTokenServer, type TokenServer, type TokenServerOptions } from './token-server.js';

export interface StartRegistryOptions {
  auth?: 'none' | 'htpasswd' | 'tls' | 'token';
  /** htpasswd mode: user name/password (default kiln/kiln-secret). */
  username?: string;
  password?: string;
  /** token mode: token server options (default: user `kiln` may push/pull everything, anonymous pull). */
  token?: TokenServerOptions;
  /** A notifications endpoint (distribution's `notifications:`): events POSTed to `url` with `headers`. */
  notifications?: { url: string; headers?: Record<string, string> };
  /** The address to listen on (default 127.0.0.1; a test node's bridge address lets pods push). */
  address?: string;
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
  /** Wait (bounded, 10 s) until the log matches `re` — the registry logs a request after answering it. */
  waitForLog(re: RegExp): Promise<boolean>;
  stop(): Promise<void>;
}

async function freePort(address = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, address, () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function notificationsYaml(n: StartRegistryOptions['notifications']): string {
  if (!n) return '';
  const headers = Object.entries(n.headers ?? {})
    .map(([k, v]) => `        ${k}: [${JSON.stringify(v)}]\n`)
    .join('');
  return (
    `notifications:\n  endpoints:\n    - name: kiln\n      url: ${n.url}\n      timeout: 2s\n      threshold: 5\n` +
    `      backoff: 1s\n` +
    (headers ? `      headers:\n${headers}` : '')
  );
}

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
      const port = await freePort(opts.address);
      const host = `${opts.address ?? '127.0.0.1'}:${port}`;
      const config =
        `version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n` +
        `storage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\n  delete:\n    enabled: true\n` +
        `  maintenance:\n    uploadpurging:\n      enabled: false\n` +
        `http:\n  addr: ${host}\n  secret: kiln-test-secret-${port}\n${tlsYaml}` +
        authYaml +
        notificationsYaml(opts.notifications);
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
        waitForLog: async (re) => {
          for (let i = 0; i < 200; i++) {
            if (re.test(output)) return true;
            await sleep(50);
          }
          return re.test(output);
        },
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

// ---------------------------------------------------------------------------------------------------------------
// Fault-injecting proxies in front of a test registry (they pass the Host header through, so the registry's
// upload Locations point back at the proxy).

export interface ProxiedRequest {
  method: string;
  url: string;
  status: number;
}

export interface HttpProxyHooks {
  /** Answer a request directly (fault injection); `n` counts requests with the same method+path so far (1-based). */
  intercept?: (
    req: { method: string; url: string; headers: IncomingHttpHeaders },
    n: number,
  ) => { status: number; headers?: Record<string, string>; body?: string } | undefined;
  /** Transform an upstream response body (same length!), e.g. flip a byte. */
  transform?: (req: { method: string; url: string }, status: number) => Transform | undefined;
}

export interface TestProxy {
  host: string;
  requests: ProxiedRequest[];
  /** Number of connections the TCP proxy cut. */
  cuts: number;
  stop(): Promise<void>;
}

/** An HTTP reverse proxy to `target` (host:port, plain HTTP) with fault-injection hooks. */
export async function startHttpProxy(target: string, hooks: HttpProxyHooks = {}): Promise<TestProxy> {
  const [thost, tport] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const counts = new Map<string, number>();
  const requests: ProxiedRequest[] = [];
  const server = createHttpServer((req, res) => {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const key = `${method} ${url.split('?')[0]}`;
    const n = (counts.get(key) ?? 0) + 1;
    counts.set(key, n);
    const fake = hooks.intercept?.({ method, url, headers: req.headers }, n);
    if (fake) {
      requests.push({ method, url, status: fake.status });
      req.resume();
      res.writeHead(fake.status, fake.headers ?? {});
      res.end(fake.body ?? '');
      return;
    }
    const up = httpRequest({ host: thost, port: tport, method, path: url, headers: req.headers }, (ures) => {
      requests.push({ method, url, status: ures.statusCode ?? 0 });
      res.writeHead(ures.statusCode ?? 502, ures.headers);
      const t = hooks.transform?.({ method, url }, ures.statusCode ?? 0);
      if (t) ures.pipe(t).pipe(res);
      else ures.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    requests,
    cuts: 0,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

export interface TcpProxyOptions {
  /** Cut the connection during the `nth` PATCH request (1-based)… */
  cutPatch?: number;
  /** …after forwarding its headers and this many body bytes (0 = headers only). */
  bodyBytes?: number;
  /** Cut the first response to a GET whose request line contains this string… */
  cutGetResponse?: string;
  /** …after this many response bytes (headers included). */
  responseBytes?: number;
}

/** A TCP proxy to `target` that can cut a connection in the middle of a PATCH upload. */
export async function startTcpProxy(target: string, o: TcpProxyOptions = {}): Promise<TestProxy> {
  const [thost, tport] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  let patches = 0;
  let getCut = false;
  const sockets = new Set<Socket>();
  const proxy: TestProxy = { host: '', requests: [], cuts: 0, stop: async () => undefined };
  const server = createServer((client) => {
    const upstream = connect(tport, thost);
    sockets.add(client);
    sockets.add(upstream);
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    let armedResponse: number | undefined;
    upstream.on('data', (chunk: Buffer) => {
      if (armedResponse === undefined) {
        if (!client.write(chunk)) upstream.pause();
        return;
      }
      const n = Math.min(armedResponse, chunk.length);
      client.write(chunk.subarray(0, n));
      armedResponse -= n;
      if (armedResponse <= 0) {
        armedResponse = undefined;
        proxy.cuts++;
        client.destroy();
        upstream.destroy();
      }
    });
    client.on('drain', () => upstream.resume());
    upstream.on('end', () => client.end());
    let cutting: { remaining: number } | undefined;
    let pending = Buffer.alloc(0);
    client.on('data', (chunk: Buffer) => {
      if (cutting) {
        const n = Math.min(cutting.remaining, chunk.length);
        if (n > 0) upstream.write(chunk.subarray(0, n));
        cutting.remaining -= n;
        if (cutting.remaining <= 0) cut();
        return;
      }
      const data = Buffer.concat([pending, chunk]);
      pending = Buffer.alloc(0);
      if (o.cutGetResponse !== undefined && !getCut) {
        const line = data.subarray(0, Math.min(data.length, 2048)).toString('latin1');
        if (line.startsWith('GET ') && line.split('\r\n')[0]!.includes(o.cutGetResponse)) {
          getCut = true;
          armedResponse = o.responseBytes ?? 0;
        }
      }
      const at = data.indexOf('PATCH /v2/');
      if (at < 0 || o.cutPatch === undefined) {
        upstream.write(data);
        return;
      }
      const end = data.indexOf('\r\n\r\n', at);
      if (end < 0) {
        // keep the partial headers until they are complete
        upstream.write(data.subarray(0, at));
        pending = data.subarray(at);
        return;
      }
      patches++;
      if (patches !== o.cutPatch) {
        upstream.write(data);
        return;
      }
      const headersEnd = end + 4;
      const bodyBytes = o.bodyBytes ?? 0;
      const take = Math.min(data.length, headersEnd + bodyBytes);
      upstream.write(data.subarray(0, take));
      cutting = { remaining: headersEnd + bodyBytes - take };
      if (cutting.remaining <= 0) cut();
    });
    const cut = (): void => {
      proxy.cuts++;
      // The client never hears back; the registry gets the bytes forwarded so far, then EOF.
      upstream.unpipe(client);
      client.removeAllListeners('data');
      client.destroy();
      upstream.end(() => setImmediate(() => upstream.destroy()));
    };
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  proxy.host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  proxy.stop = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return proxy;
}

// ---------------------------------------------------------------------------------------------------------------
// Running the kiln CLI (from source) in a child process, for end-to-end registry tests.

const KILN_BIN = fileURLToPath(new URL('../../bin/kiln.js', import.meta.url));

/**
 * `KILN_FROM_SOURCE` for the CLI tests' child processes: '1' (TypeScript sources, no `npm run build` needed)
 * unless `KILN_TEST_COMPILED=1`, which runs the same tests against what bin/kiln.js picks (the bundle).
 */
export const KILN_FROM_SOURCE = process.env.KILN_TEST_COMPILED === '1' ? '0' : '1';

export interface KilnRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run `kiln ARGS` with extra environment and optional stdin; never rejects (inspect `code`). */
export function runKiln(args: string[], env: NodeJS.ProcessEnv = {}, input?: string): Promise<KilnRun> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [KILN_BIN, ...args],
      { env: { ...process.env, KILN_FROM_SOURCE, ...env }, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    child.stdin?.end(input ?? '');
  });
}
