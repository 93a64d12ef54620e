/**
 * The build service's REST API (`/api/v1/…`, `/healthz`, `/metrics`) on Fastify, over the ServiceCore port: the
 * API validates, authenticates and translates; every decision about projects and builds is the core's. Routes,
 * bodies and errors are documented in openapi.yaml (a test keeps the two in step).
 *
 * Auth: `Authorization: Bearer <token>` on every route except `/healthz`, `/hooks/…` (webhook receivers check
 * their forge's signature) and the web UI's public parts (`/`, the sign-in page, `/ui/login`, `/ui/assets/…`);
 * viewers may read, admins may also write. Tokens are never echoed or logged. With `sessions` (the web UI, see
 * src/service/ui/sessions.ts) a valid session cookie stands for its token when no Authorization header is sent;
 * a mutation made with the cookie must also send `X-Kiln-CSRF` (SameSite=Strict keeps the cookie off cross-site
 * requests, the header is a second, independent guard). UI pages (route config `uiPage`) answer a missing or
 * expired session with a redirect to the sign-in page instead of 401.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { Ajv, type SchemaObject } from 'ajv';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { parse as parseYaml } from 'yaml';
import { KilnError } from '../../errors.js';
import type { BuildQuery, Principal, ServiceCore, StartRequest } from '../core.js';
import type { Phase } from '../model.js';
import { toApiError } from './errors.js';
import { LogFollowers, type FollowOptions } from './log-follow.js';
import { PageCache } from './page-cache.js';
import { notificationRoutes, type NotificationLog } from './notifications.js';
import { applyBody, buildsQuery, idParams, logQuery, nameParams, projectBody, startBody } from './schemas.js';

export interface ApiOptions {
  /** Log requests (pino, JSON lines on stdout); the Authorization and Cookie headers are redacted. */
  logger?: boolean;
  /** Largest request body, bytes (default 1 MiB). */
  bodyLimit?: number;
  /** Log streaming knobs (tests poll faster). */
  follow?: FollowOptions;
  /** Delivery records for `GET /builds/{id}/notifications` (none: every build has none). */
  notifications?: NotificationLog;
  /** Web UI sessions: a session cookie authenticates like its token (none: only bearer tokens). */
  sessions?: SessionAuth;
}

/** Looks up the web UI's session cookie (src/service/ui/sessions.ts). */
export interface SessionAuth {
  /** The session a `Cookie` header names, if valid now; `csrf` is what cookie mutations must send. */
  fromCookie(cookie: string | undefined): { principal: Principal; csrf: string } | undefined;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A web UI page: without a valid session it redirects to the sign-in page (never under `/api/`). */
    uiPage?: boolean;
  }
}

/** Header of the CSRF value on cookie-authenticated mutations. */
const CSRF_HEADER = 'x-kiln-csrf';

/** Content types read as YAML (project documents); JSON is Fastify's own parser. */
const YAML_TYPES = ['application/yaml', 'text/yaml', 'application/x-yaml'];

/** Methods a viewer token may use. */
const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

const principals = new WeakMap<FastifyRequest, Principal>();
/** When each request came in (performance.now()): the core may reuse state it read since (see ServiceCore). */
const arrivals = new WeakMap<FastifyRequest, number>();

/** The verified identity of an authenticated request (undefined on public routes). */
export function principalOf(req: FastifyRequest): Principal | undefined {
  return principals.get(req);
}

/** Public routes, by their route pattern (never the raw URL, so `/hooks/../api` cannot pass as public). */
function isPublic(route: string): boolean {
  return (
    route === '/healthz' ||
    route.startsWith('/hooks/') ||
    route === '/' ||
    route === '/ui/login' ||
    route === '/ui/logout' ||
    route.startsWith('/ui/assets/')
  );
}

/** Equal strings in constant time (hashed first, so lengths may differ). */
function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}

/** The token of an `Authorization: Bearer …` header, if there is one. */
function bearerToken(header: string | undefined): string | undefined {
  const m = header ? /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header) : null;
  return m?.[1];
}

function notFound(what: string, name: string): KilnError {
  return new KilnError('NOT_FOUND', `${what} "${name}" not found`);
}

function who(req: FastifyRequest): string {
  const p = principalOf(req);
  if (!p) throw new KilnError('UNAUTHENTICATED', 'no token');
  return p.name;
}

function pathOf(req: FastifyRequest): string {
  const q = req.url.indexOf('?');
  return q === -1 ? req.url : req.url.slice(0, q);
}

/**
 * Validators: bodies strictly (no type coercion, unknown fields are errors — Fastify's default Ajv would drop
 * them), query strings and path parameters with coercion ("limit=5" is a number).
 */
function validators(app: FastifyInstance): void {
  const base = { allErrors: false, removeAdditional: false, strictTypes: false } as const;
  const bodies = new Ajv({ ...base, coerceTypes: false, useDefaults: false });
  const params = new Ajv({ ...base, coerceTypes: true, useDefaults: true });
  app.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === 'body' ? bodies : params).compile(schema as SchemaObject),
  );
}

/** YAML bodies (a `kiln project apply -f` file as it is); a syntax error is one 400 line. */
function yamlParser(app: FastifyInstance): void {
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser(YAML_TYPES, { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseYaml(body as string, { prettyErrors: false }) as unknown);
    } catch (e) {
      const first = (e instanceof Error ? e.message : String(e)).split('\n')[0];
      done(new KilnError('BODY_INVALID', `invalid YAML body: ${first}`), undefined);
    }
  });
}

/** 401/403 before any handler (and before the body is read). */
function authHook(app: FastifyInstance, core: ServiceCore, sessions: SessionAuth | undefined): void {
  app.addHook('onRequest', async (req, reply) => {
    const route = req.routeOptions.url;
    if (route !== undefined && isPublic(route)) return;
    const arrived = performance.now();
    arrivals.set(req, arrived);
    const token = bearerToken(req.headers.authorization);
    let principal = token === undefined ? undefined : core.verifyToken(token, arrived);
    if (token === undefined && sessions) {
      const session = sessions.fromCookie(req.headers.cookie);
      if (session && !READ_METHODS.has(req.method)) {
        const sent = req.headers[CSRF_HEADER];
        if (typeof sent !== 'string' || !sameSecret(sent, session.csrf)) {
          throw new KilnError('FORBIDDEN', `${req.method} ${pathOf(req)}: missing or wrong X-Kiln-CSRF header`, {
            hint: 'cookie-authenticated changes must send the CSRF value of GET /ui/session',
          });
        }
      }
      principal = session?.principal;
      if (!principal && req.routeOptions.config.uiPage === true && route !== undefined && !route.startsWith('/api/')) {
        return reply
          .code(303)
          .header('location', `/?next=${encodeURIComponent(req.url)}`)
          .send();
      }
    }
    if (!principal) {
      throw new KilnError('UNAUTHENTICATED', token === undefined ? 'no token' : 'invalid token', {
        hint: 'send "Authorization: Bearer <token>" (kiln CLI: set KILN_TOKEN)',
      });
    }
    if (!READ_METHODS.has(req.method) && principal.role !== 'admin') {
      throw new KilnError('FORBIDDEN', `${req.method} ${pathOf(req)}: the token of "${principal.name}" may only read`, {
        hint: 'use a token with the admin role',
      });
    }
    principals.set(req, principal);
  });
}

function errorHandlers(app: FastifyInstance, logging: boolean): void {
  app.setErrorHandler((err, req, reply) => {
    const { status, body, internal } = toApiError(err);
    if (internal) {
      if (logging) req.log.error({ err }, 'request failed');
      else process.stderr.write(`kiln serve: ${req.method} ${pathOf(req)} failed: ${String(err)}\n`);
    }
    if (status === 401) reply.header('www-authenticate', 'Bearer realm="kiln"');
    return reply.code(status).type('application/json; charset=utf-8').send(body);
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no endpoint ${req.method} ${pathOf(req)}` } }),
  );
}

async function sendLog(core: ServiceCore, id: string, reply: FastifyReply): Promise<FastifyReply> {
  reply.type('text/plain; charset=utf-8');
  let fh: FileHandle;
  try {
    fh = await open(core.logPath(id), 'r');
  } catch (e) {
    // A queued build has no log yet.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return reply.send('');
    throw e;
  }
  const { size } = await fh.stat();
  if (size === 0) {
    await fh.close();
    return reply.send('');
  }
  // What the file holds now: a log still being written is cut at a consistent length.
  return reply.header('content-length', size).send(fh.createReadStream({ start: 0, end: size - 1 }));
}

/** The `/api/v1` routes, `/healthz` and `/metrics`. */
function routes(api: FastifyInstance, core: ServiceCore, followers: LogFollowers, pages: PageCache<Buffer>): void {
  api.get('/healthz', async () => ({ status: 'ok' }));

  api.get('/metrics', async (_req, reply) =>
    reply.type('text/plain; version=0.0.4; charset=utf-8').send(core.metrics()),
  );

  api.get('/api/v1/projects', async () => ({ projects: core.listProjects() }));

  api.get<{ Params: { name: string } }>('/api/v1/projects/:name', { schema: { params: nameParams } }, async (req) => {
    const p = core.getProject(req.params.name);
    if (!p) throw notFound('project', req.params.name);
    return p;
  });

  api.put<{ Params: { name: string }; Body: unknown }>(
    '/api/v1/projects/:name',
    { schema: { params: nameParams, body: projectBody } },
    async (req, reply) => {
      const { name } = req.params;
      const result = core.putProject(name, req.body);
      const project = core.getProject(name);
      if (!project) throw new Error(`project ${name} missing right after it was stored`);
      const created = result.created.includes(name);
      if (created) reply.header('location', `/api/v1/projects/${encodeURIComponent(name)}`);
      return reply.code(created ? 201 : 200).send(project);
    },
  );

  api.delete<{ Params: { name: string } }>(
    '/api/v1/projects/:name',
    { schema: { params: nameParams } },
    async (req, reply) => {
      if (!(await core.deleteProject(req.params.name))) throw notFound('project', req.params.name);
      return reply.code(204).send();
    },
  );

  // `projects:apply` (Google AIP custom-method style; `::` is a literal colon in Fastify) and a plain path alias.
  for (const url of ['/api/v1/projects::apply', '/api/v1/projects/apply']) {
    api.post<{ Body: unknown }>(url, { schema: { body: applyBody } }, async (req) => core.applyProjects(req.body));
  }

  api.get<{ Querystring: { project?: string; phase?: Phase; image?: string; limit?: number; cursor?: string } }>(
    '/api/v1/builds',
    { schema: { querystring: buildsQuery } },
    async (req, reply) => {
      const q: BuildQuery = {};
      for (const k of ['project', 'phase', 'image', 'limit', 'cursor'] as const) {
        if (req.query[k] !== undefined) Object.assign(q, { [k]: req.query[k] });
      }
      // the mark first: a write after it makes the next request's mark differ, so nothing stale is ever reused
      const body = pages.get(JSON.stringify(q), core.listMark?.(arrivals.get(req)), () => {
        const page = core.listBuilds(q);
        return Buffer.from(JSON.stringify({ builds: page.builds, next: page.next }));
      });
      return reply.type('application/json; charset=utf-8').send(body);
    },
  );

  api.get<{ Params: { id: string } }>('/api/v1/builds/:id', { schema: { params: idParams } }, async (req) => {
    const b = core.getBuild(req.params.id);
    if (!b) throw notFound('build', req.params.id);
    return b;
  });

  api.get<{ Params: { id: string }; Querystring: { follow?: '0' | '1' | 'false' | 'true' } }>(
    '/api/v1/builds/:id/log',
    { schema: { params: idParams, querystring: logQuery } },
    async (req, reply) => {
      const { id } = req.params;
      if (!core.getBuild(id)) throw notFound('build', id);
      const follow = req.query.follow === '1' || req.query.follow === 'true';
      if (!follow || req.method !== 'GET') return sendLog(core, id, reply);
      reply.hijack();
      reply.raw.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache',
        'x-accel-buffering': 'no',
        // The socket goes with the stream: a kept-alive idle socket would hold up the server's close.
        connection: 'close',
      });
      reply.raw.flushHeaders();
      followers.follow(id, reply.raw);
      return reply;
    },
  );

  api.post<{ Params: { name: string }; Body: StartRequest }>(
    '/api/v1/projects/:name/builds',
    { schema: { params: nameParams, body: startBody } },
    async (req, reply) => {
      const builds = await core.startBuilds(req.params.name, req.body, { type: 'manual', by: who(req) });
      return reply.code(201).send({ builds });
    },
  );

  api.post<{ Params: { id: string } }>('/api/v1/builds/:id/cancel', { schema: { params: idParams } }, async (req) =>
    core.cancelBuild(req.params.id, who(req)),
  );

  api.post<{ Params: { id: string } }>(
    '/api/v1/builds/:id/rerun',
    { schema: { params: idParams } },
    async (req, reply) => reply.code(201).send(await core.rerunBuild(req.params.id, who(req))),
  );
}

/**
 * The API server for `core` (not listening yet: the caller adds its own routes, e.g. webhooks and the UI, then
 * listens). Log followers end when `core.closing` resolves or the server closes.
 */
export function createApi(core: ServiceCore, opts: ApiOptions = {}): FastifyInstance {
  const app = Fastify({
    bodyLimit: opts.bodyLimit ?? 1024 * 1024,
    logger: opts.logger
      ? { level: 'info', redact: { paths: ['req.headers.authorization', 'req.headers.cookie'], censor: '[redacted]' } }
      : false,
  });
  validators(app);
  yamlParser(app);
  errorHandlers(app, opts.logger === true);
  authHook(app, core, opts.sessions);
  const followers = new LogFollowers(core, {
    log: (e) => app.log.error({ err: e }, 'log stream failed'),
    ...opts.follow,
  });
  const endStreams = (): void => followers.closeAll();
  core.closing.then(endStreams, endStreams);
  app.addHook('preClose', (done) => {
    followers.closeAll();
    done();
  });
  // A plugin, so routes register at ready(): hooks added before then (an onRoute collector in tests) see them.
  const pages = new PageCache<Buffer>();
  void app.register(async (api) => routes(api, core, followers, pages));
  void app.register(notificationRoutes(core, opts.notifications));
  return app;
}
