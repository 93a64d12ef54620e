/**
 * The CLI's client of the build service's REST API (`kiln builds …`, `kiln project …`): where the service is and
 * which token to send, typed calls for each endpoint, and API errors turned back into KilnErrors so the CLI prints
 * them like any other (`kiln: <message>` + hint).
 *
 * Server: `--server URL`, else `$KILN_SERVER`, else `server` of the config file, else http://127.0.0.1:8080.
 * Token: `--token`, else `$KILN_TOKEN`, else `token` of the config file — only when the server is the file's own
 * (a token stored for one service is never sent to another). The config file is `$KILN_CONFIG_DIR/service.json`,
 * else `$XDG_CONFIG_HOME/kiln/service.json` (default `~/.config/kiln/`): `{"server": "…", "token": "…"}`, and
 * must not be readable by other users (mode 0600), like an ssh key.
 */
import { readFileSync, statSync } from 'node:fs';
import { kilnConfigDir } from '../util/paths.js';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { WatchedBase } from './triggers/bases.js';
import { KilnError } from '../errors.js';
import { Agent, request, type Dispatcher } from '../registry/http.js';
import type { ApplyResult, BuildPage, BuildQuery, StartRequest } from './core.js';
import type { Build, Project } from './model.js';
import { LogEventDecoder, type LogEnd } from './api/sse.js';
import type { DeliveryList } from './hooks/api.js';
import type { TriggerBody } from './hooks/pipeline.js';

export const DEFAULT_SERVER = 'http://127.0.0.1:8080';

/** The global flags of the service commands. */
export interface ServiceFlags {
  server?: string;
  token?: string;
}

export interface ClientConfig {
  /** Base URL without a trailing slash. */
  server: string;
  token: string | undefined;
}

/** Path of the client config file for `env`. */
export function configFile(env: NodeJS.ProcessEnv = process.env): string {
  return join(kilnConfigDir(env), 'service.json');
}

function normalizeServer(url: string, from: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    u = new URL('invalid:');
  }
  if ((u.protocol !== 'http:' && u.protocol !== 'https:') || !u.host || u.search || u.hash || u.username) {
    throw new KilnError('INVALID_OPTION', `${from}: invalid service URL "${url}"`, {
      hint: 'use a URL like http://kiln.example.com:8080',
    });
  }
  return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`;
}

interface FileConfig {
  server?: string;
  token?: string;
}

function readConfigFile(file: string): FileConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new KilnError('SERVICE_CONFIG_INVALID', `cannot read ${file}: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    doc = undefined;
  }
  const c = doc as FileConfig | undefined;
  if (
    !c ||
    typeof c !== 'object' ||
    (c.server !== undefined && typeof c.server !== 'string') ||
    (c.token !== undefined && typeof c.token !== 'string')
  ) {
    throw new KilnError('SERVICE_CONFIG_INVALID', `${file}: expected JSON {"server": "…", "token": "…"}`);
  }
  if (c.token !== undefined && (statSync(file).mode & 0o077) !== 0) {
    throw new KilnError('SERVICE_CONFIG_INSECURE', `${file} holds a token and is readable by other users`, {
      hint: `chmod 600 ${file}`,
    });
  }
  return c;
}

/** Server and token for the given flags and environment (see the module comment for the order). */
export function resolveClientConfig(flags: ServiceFlags, env: NodeJS.ProcessEnv = process.env): ClientConfig {
  const file = configFile(env);
  const fc = readConfigFile(file);
  const fileServer = fc.server === undefined ? DEFAULT_SERVER : normalizeServer(fc.server, file);
  let server: string;
  if (flags.server !== undefined) server = normalizeServer(flags.server, '--server');
  else if (env.KILN_SERVER) server = normalizeServer(env.KILN_SERVER, 'KILN_SERVER');
  else server = fileServer;
  const token = flags.token ?? (env.KILN_TOKEN || (server === fileServer ? fc.token : undefined));
  return { server, token: token || undefined };
}

/** Error codes of a connection that never reached an HTTP answer. */
const UNREACHABLE = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNRESET',
  'ETIMEDOUT',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
]);

function errorCode(e: unknown): string | undefined {
  const err = e as { code?: unknown; cause?: { code?: unknown } } | undefined;
  const code = err?.code ?? err?.cause?.code;
  return typeof code === 'string' ? code : undefined;
}

type Response = Dispatcher.ResponseData;

export class ServiceClient {
  private readonly agent = new Agent({ keepAliveTimeout: 4000 });

  constructor(readonly config: ClientConfig) {}

  private unreachable(e: unknown): KilnError {
    const code = errorCode(e);
    if (code && UNREACHABLE.has(code)) {
      return new KilnError('SERVICE_UNREACHABLE', `cannot reach the kiln service at ${this.config.server}`, {
        hint: `is \`kiln serve\` running there? (${code}; set --server or KILN_SERVER)`,
        cause: e,
      });
    }
    return new KilnError('SERVICE_UNREACHABLE', `request to the kiln service failed: ${(e as Error).message}`, {
      cause: e,
    });
  }

  /** The API's error body as a KilnError (code, message and hint as the server sent them). */
  private async apiError(res: Response, what: string): Promise<KilnError> {
    let body: unknown;
    try {
      body = await res.body.json();
    } catch {
      body = undefined;
    }
    const e = (body as { error?: { code?: unknown; message?: unknown; hint?: unknown } } | undefined)?.error;
    if (e && typeof e.code === 'string' && typeof e.message === 'string') {
      let hint = typeof e.hint === 'string' ? e.hint : undefined;
      if (res.statusCode === 401) {
        hint = this.config.token
          ? 'the token was refused: check KILN_TOKEN (or --token)'
          : `no token: set KILN_TOKEN or put it in ${configFile()}`;
      }
      return new KilnError(e.code, e.message, hint ? { hint } : {});
    }
    return new KilnError('SERVICE_ERROR', `${what}: HTTP ${res.statusCode} from ${this.config.server}`, {
      hint: 'is --server / KILN_SERVER the kiln service?',
    });
  }

  private async send(
    method: Dispatcher.HttpMethod,
    path: string,
    o: { body?: string; contentType?: string; accept?: string; bodyTimeout?: number } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { accept: o.accept ?? 'application/json' };
    if (this.config.token) headers.authorization = `Bearer ${this.config.token}`;
    if (o.body !== undefined) headers['content-type'] = o.contentType ?? 'application/json';
    let res: Response;
    try {
      res = await request(this.config.server + path, {
        dispatcher: this.agent,
        method,
        headers,
        body: o.body,
        headersTimeout: 120_000,
        bodyTimeout: o.bodyTimeout ?? 120_000,
      });
    } catch (e) {
      throw this.unreachable(e);
    }
    if (res.statusCode >= 400) throw await this.apiError(res, `${method} ${path.split('?')[0]}`);
    return res;
  }

  private async json<T>(
    method: Dispatcher.HttpMethod,
    path: string,
    o: { body?: string; contentType?: string } = {},
  ): Promise<T> {
    const res = await this.send(method, path, o);
    try {
      return (await res.body.json()) as T;
    } catch (e) {
      throw new KilnError('SERVICE_ERROR', `${method} ${path}: the answer is not JSON`, { cause: e });
    }
  }

  /** Watched base images, their digests and dependents (`GET /api/v1/bases`). */
  listBases(): Promise<WatchedBase[]> {
    return this.json<{ bases: WatchedBase[] }>('GET', '/api/v1/bases').then((r) => r.bases);
  }

  listProjects(): Promise<Project[]> {
    return this.json<{ projects: Project[] }>('GET', '/api/v1/projects').then((r) => r.projects);
  }

  getProject(name: string): Promise<Project> {
    return this.json('GET', `/api/v1/projects/${encodeURIComponent(name)}`);
  }

  /** PUT one project (YAML or JSON text); `created` tells a new project from a replaced one. */
  async putProject(name: string, text: string): Promise<{ project: Project; created: boolean }> {
    const res = await this.send('PUT', `/api/v1/projects/${encodeURIComponent(name)}`, {
      body: text,
      contentType: 'application/yaml',
    });
    return { project: (await res.body.json()) as Project, created: res.statusCode === 201 };
  }

  async deleteProject(name: string): Promise<void> {
    const res = await this.send('DELETE', `/api/v1/projects/${encodeURIComponent(name)}`);
    await res.body.dump();
  }

  /** Apply a `projects:` document as it is (YAML, or JSON — YAML's subset). */
  applyProjects(text: string): Promise<ApplyResult> {
    return this.json('POST', '/api/v1/projects:apply', { body: text, contentType: 'application/yaml' });
  }

  listBuilds(q: BuildQuery = {}): Promise<BuildPage> {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v));
    const qs = params.toString();
    return this.json('GET', `/api/v1/builds${qs ? `?${qs}` : ''}`);
  }

  getBuild(id: string): Promise<Build> {
    return this.json('GET', `/api/v1/builds/${encodeURIComponent(id)}`);
  }

  startBuilds(project: string, req: StartRequest): Promise<Build[]> {
    return this.json<{ builds: Build[] }>('POST', `/api/v1/projects/${encodeURIComponent(project)}/builds`, {
      body: JSON.stringify(req),
    }).then((r) => r.builds);
  }

  cancelBuild(id: string): Promise<Build> {
    return this.json('POST', `/api/v1/builds/${encodeURIComponent(id)}/cancel`);
  }

  rerunBuild(id: string): Promise<Build> {
    return this.json('POST', `/api/v1/builds/${encodeURIComponent(id)}/rerun`);
  }

  /** The log as it is now, chunk by chunk to `write`. */
  async log(id: string, write: (b: Buffer) => void | Promise<void>): Promise<void> {
    const res = await this.send('GET', `/api/v1/builds/${encodeURIComponent(id)}/log`, { accept: 'text/plain' });
    for await (const chunk of res.body) await write(chunk as Buffer);
  }

  /**
   * Follows the log (SSE, see api/sse.ts): its exact bytes to `write` until the build ended; resolves to the end
   * event. A stream cut before its end event is an error (the service went away).
   */
  async followLog(id: string, write: (b: Buffer) => void | Promise<void>): Promise<LogEnd> {
    // The server sends a comment every 15 s on an idle stream: a minute of silence means it is gone.
    const res = await this.send('GET', `/api/v1/builds/${encodeURIComponent(id)}/log?follow=1`, {
      accept: 'text/event-stream',
      bodyTimeout: 60_000,
    });
    const decoder = new LogEventDecoder();
    try {
      for await (const chunk of res.body) {
        const d = decoder.push(chunk as Buffer);
        for (const b of d.bytes) await write(b);
        if (d.end) return d.end;
      }
    } catch (e) {
      if (e instanceof KilnError) throw e;
      throw new KilnError('LOG_STREAM_BROKEN', `the log stream of build ${id} broke: ${(e as Error).message}`, {
        hint: `follow it again: kiln builds logs -f ${id}`,
        cause: e,
      });
    } finally {
      res.body.destroy();
    }
    throw new KilnError('LOG_STREAM_BROKEN', `the log stream of build ${id} ended before the build did`, {
      hint: `follow it again: kiln builds logs -f ${id}`,
    });
  }

  /** Recorded deliveries, newest first (`GET /api/v1/deliveries`). */
  listDeliveries(q: { project?: string; limit?: number } = {}): Promise<DeliveryList> {
    const params = new URLSearchParams();
    if (q.project !== undefined) params.set('project', q.project);
    if (q.limit !== undefined) params.set('limit', String(q.limit));
    const qs = params.toString();
    return this.json('GET', `/api/v1/deliveries${qs ? `?${qs}` : ''}`);
  }

  /** Run a recorded delivery again (`POST /api/v1/deliveries/{id}/redeliver`). */
  redeliver(id: number): Promise<TriggerBody> {
    return this.json('POST', `/api/v1/deliveries/${id}/redeliver`);
  }

  /** Act as if `ref` had just been pushed (`POST /api/v1/projects/{name}/trigger`). */
  triggerProject(project: string, ref: string): Promise<TriggerBody> {
    return this.json('POST', `/api/v1/projects/${encodeURIComponent(project)}/trigger`, {
      body: JSON.stringify({ ref }),
    });
  }

  /** Close the connections (the CLI exits right after). */
  async close(): Promise<void> {
    await this.agent.close();
  }
}

/** Adds `--server` and `--token` to a command group (its subcommands see them through optsWithGlobals). */
export function addServiceOptions(cmd: Command): Command {
  return cmd
    .option('--server <url>', `kiln service URL (default: $KILN_SERVER, else ${DEFAULT_SERVER})`)
    .option('--token <token>', 'API token (prefer $KILN_TOKEN: a flag shows in the process list)');
}

/** Runs `fn` with a client for the command's flags, closing it afterwards. */
export async function withClient<T>(cmd: Command, fn: (c: ServiceClient) => Promise<T>): Promise<T> {
  const client = new ServiceClient(resolveClientConfig(cmd.optsWithGlobals<ServiceFlags>()));
  try {
    return await fn(client);
  } finally {
    await client.close();
  }
}
