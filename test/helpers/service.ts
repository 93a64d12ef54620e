/**
 * `kiln serve` as a real process for end-to-end tests: a temp data dir, a config file, tokens made with
 * `kiln serve token create`, a small JSON client, and helpers to wait for a build's phase, to SIGKILL and
 * restart the service on the same data dir. The build workers, git and the registry are all real.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import type { Build, Phase } from '../../src/service/model.js';

export const KILN_BIN = fileURLToPath(new URL('../../bin/kiln.js', import.meta.url));

export interface ServiceProcess {
  url: string;
  dataDir: string;
  kilnHome: string;
  proc: ChildProcess;
  /** Everything the service wrote to stderr so far. */
  stderr(): string;
  admin: string;
  viewer: string;
  /** JSON request; `token` defaults to the admin token (`null`: none). */
  api<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    token?: string | null,
    contentType?: string,
  ): Promise<{ status: number; body: T; text: string }>;
  /** Poll a build until `pred` holds (default: a final phase); throws after `ms`. */
  waitBuild(id: string, pred?: (b: Build) => boolean, ms?: number): Promise<Build>;
  /** SIGTERM (graceful) or SIGKILL; resolves when the process is gone. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export const FINAL: readonly Phase[] = ['succeeded', 'failed', 'cancelled', 'timed-out'];

function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [KILN_BIN, ...args], { env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

/** `kiln bootstrap busybox` into a fresh KILN_HOME (the base image `localhost/busybox:latest`). */
export async function makeKilnHome(): Promise<string> {
  const home = await mkdtemp(join(tmpdir(), 'kiln-svc-home-'));
  const r = await run(['bootstrap', 'busybox'], { KILN_HOME: home });
  if (r.code !== 0) throw new Error(`kiln bootstrap busybox: ${r.stderr}`);
  return home;
}

export async function createToken(dataDir: string, kilnHome: string, role: 'admin' | 'viewer'): Promise<string> {
  const r = await run(['serve', 'token', 'create', '--role', role, '--name', `test-${role}`, '--data-dir', dataDir], {
    KILN_HOME: kilnHome,
  });
  if (r.code !== 0) throw new Error(`token create: ${r.stderr}`);
  return r.stdout.trim().split('\n').pop() as string;
}

export interface StartServiceOptions {
  /** Server config YAML. */
  config: string;
  kilnHome: string;
  /** Reuse a data dir (restart after a crash). */
  dataDir?: string;
  env?: NodeJS.ProcessEnv;
  /** `--listen` (default 127.0.0.1:0). */
  listen?: string;
  /** Reuse tokens of an earlier start on the same data dir. */
  tokens?: { admin: string; viewer: string };
  /** More `kiln serve` arguments (e.g. `--executor kubernetes`). */
  args?: string[];
}

export async function startService(o: StartServiceOptions): Promise<ServiceProcess> {
  const dataDir = o.dataDir ?? (await mkdtemp(join(tmpdir(), 'kiln-svc-data-')));
  const cfg = join(dataDir, '..', `${dataDir.split('/').pop()}.yaml`);
  await writeFile(cfg, o.config);
  const env: NodeJS.ProcessEnv = { ...process.env, KILN_HOME: o.kilnHome, ...o.env };
  delete env.KILN_FROM_SOURCE;
  const tokens = o.tokens ?? {
    admin: await createToken(dataDir, o.kilnHome, 'admin'),
    viewer: await createToken(dataDir, o.kilnHome, 'viewer'),
  };
  const proc = spawn(
    process.execPath,
    [
      KILN_BIN,
      'serve',
      '--listen',
      o.listen ?? '127.0.0.1:0',
      '--data-dir',
      dataDir,
      '--config',
      cfg,
      ...(o.args ?? []),
    ],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let err = '';
  proc.stdout?.on('data', () => undefined);
  const exited = new Promise<number | null>((r) => proc.on('close', (code, sig) => r(code ?? (sig ? -1 : null))));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`kiln serve did not start: ${err}`)), 60_000);
    proc.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening on (http:\/\/[^\s]+)/.exec(err);
      if (m) {
        clearTimeout(t);
        resolve(m[1] as string);
      }
    });
    void exited.then((code) => {
      clearTimeout(t);
      reject(new Error(`kiln serve exited with ${code}: ${err}`));
    });
  });
  const api: ServiceProcess['api'] = async (method, path, body, token, contentType) => {
    const headers: Record<string, string> = {};
    const tok = token === undefined ? tokens.admin : token;
    if (tok !== null) headers.authorization = `Bearer ${tok}`;
    let payload: string | undefined;
    if (body !== undefined) {
      headers['content-type'] = contentType ?? 'application/json';
      payload = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const res = await request(url + path, { method: method as 'GET', headers, body: payload ?? null });
    const text = await res.body.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON (logs, metrics)
    }
    return { status: res.statusCode, body: parsed as never, text };
  };
  const svc: ServiceProcess = {
    url,
    dataDir,
    kilnHome: o.kilnHome,
    proc,
    stderr: () => err,
    admin: tokens.admin,
    viewer: tokens.viewer,
    api,
    async waitBuild(id, pred = (b) => FINAL.includes(b.phase), ms = 120_000) {
      const until = Date.now() + ms;
      let last: Build | undefined;
      while (Date.now() < until) {
        const r = await api<Build>('GET', `/api/v1/builds/${id}`);
        if (r.status === 200) {
          last = r.body;
          if (pred(last)) return last;
        }
        await new Promise((res) => setTimeout(res, 100));
      }
      throw new Error(`build ${id} did not reach the expected state in ${ms} ms: ${JSON.stringify(last)}`);
    },
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
  return svc;
}

/** Remove temp dirs of a test (data dir, its config file, KILN_HOME). */
export async function cleanup(...dirs: string[]): Promise<void> {
  for (const d of dirs) {
    await rm(d, { recursive: true, force: true });
    await rm(`${d}.yaml`, { force: true });
  }
}
