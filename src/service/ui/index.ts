/**
 * The web UI on the service's own HTTP server (same origin as the API, no second server, no CDN): `kiln serve`
 * registers {@link uiRoutes} on the API server from `createApi` (which must get the same `sessions` so that the
 * session cookie authenticates API calls).
 *
 * Routes:
 * - `GET /` — signed in: to the projects page; else the sign-in form (public).
 * - `POST /ui/login` — form `token=…&next=…`: a valid token gets a session cookie and goes to `next` (a UI page,
 *   default `/projects`); a wrong, expired or revoked one gets the form again with 401 (public).
 * - `POST /ui/logout` — ends the session (public: it acts only on the caller's own cookie, CSRF-checked).
 * - `GET /ui/assets/{file}` — the bundle, content-hashed, compressed, cached for a year (public).
 * - `GET /projects`, `/builds`, `/builds/{id}`, `/deliveries`, `/bases` — the page shell (route config `uiPage`:
 *   without a session the API's auth hook redirects to `/?next=…`); an unknown build answers 404 (the shell shows
 *   its 404 page).
 * - `GET /ui/session` — who is signed in, the role, and the CSRF value for mutations (token or cookie).
 * - `GET /ui/overview` — the newest build per project, image and ref (the projects page).
 * - `GET /ui/events` — build changes as Server-Sent Events (events.ts).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { principalOf } from '../api/server.js';
import type { ListedBuild, ServiceCore } from '../core.js';
import { loadAssets, type UiAssets } from './assets.js';
import { BuildFeed, type BuildEvents } from './events.js';
import { SECURITY_HEADERS, appShell, loginPage } from './pages.js';
import { CSRF_HEADER, SESSION_COOKIE, UiSessions, readCookie, sameValue } from './sessions.js';

export interface UiOptions {
  core: ServiceCore;
  sessions: UiSessions;
  /** Build changes for the live pages (BuildService.events); none: pages only load. */
  events?: BuildEvents;
  /** The service's public URL: `https://…` makes the cookie Secure whatever the request says. */
  publicUrl?: string;
  /** The bundle (default: {@link loadAssets}). */
  assets?: UiAssets;
}

/** The UI's pages (what the client's router knows). */
export const PAGES = ['/projects', '/builds', '/builds/:id', '/deliveries', '/bases'] as const;

/** Builds scanned per project for the overview (newest first). */
const OVERVIEW_SCAN = 500;

/** One row of the projects page. */
export interface OverviewProject {
  name: string;
  repository: string;
  registry: string;
  images: string[];
  /** Newest build of each (image, ref) among the project's latest {@link OVERVIEW_SCAN} builds. */
  latest: ListedBuild[];
}

/** Where to go after signing in: a page of this UI, never another origin (no `//host`, no backslashes). */
export function safeNext(next: unknown): string {
  if (typeof next !== 'string' || next.length > 2000 || /[\\\s]/.test(next)) return '/projects';
  const path = next.split(/[?#]/)[0] as string;
  const ok = PAGES.some((p) => (p.includes(':') ? /^\/builds\/[A-Za-z0-9_-]{1,100}$/.test(path) : path === p));
  return ok ? next : '/projects';
}

/** A request reached over TLS (directly, via a proxy that says so, or by configuration). */
function secure(req: FastifyRequest, publicUrl: string | undefined): boolean {
  return (
    req.protocol === 'https' ||
    req.headers['x-forwarded-proto'] === 'https' ||
    (publicUrl !== undefined && publicUrl.startsWith('https:'))
  );
}

function sessionCookie(value: string, maxAgeS: number, isSecure: boolean): string {
  return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAgeS}${isSecure ? '; Secure' : ''}`;
}

/** A cross-site form post (login CSRF): refused when the browser says so or the Origin is another host. */
function crossSite(req: FastifyRequest): boolean {
  if (req.headers['sec-fetch-site'] === 'cross-site') return true;
  const origin = req.headers.origin;
  if (origin === undefined || origin === 'null') return origin === 'null';
  try {
    return new URL(origin).host !== req.headers.host;
  } catch {
    return true;
  }
}

function html(reply: FastifyReply, status: number, body: string): FastifyReply {
  return reply.code(status).header('cache-control', 'no-store').type('text/html; charset=utf-8').send(body);
}

/** Newest build per (image, ref) of each project. */
export function overview(core: Pick<ServiceCore, 'listProjects' | 'listBuilds'>): OverviewProject[] {
  return core.listProjects().map((p) => {
    const seen = new Set<string>();
    const latest: ListedBuild[] = [];
    for (const b of core.listBuilds({ project: p.name, limit: OVERVIEW_SCAN }).builds) {
      const key = `${b.image}\0${b.ref}`;
      if (seen.has(key)) continue;
      seen.add(key);
      latest.push(b);
    }
    return {
      name: p.name,
      repository: p.repository,
      registry: p.registry,
      images: p.images.map((i) => i.name),
      latest,
    };
  });
}

/** The UI as a Fastify plugin (its form parser and headers stay inside it). */
export function uiRoutes(o: UiOptions) {
  return async (app: FastifyInstance): Promise<void> => {
    const assets = o.assets ?? (await loadAssets());
    const feed = new BuildFeed(o.events);
    const endFeeds = (): void => feed.closeAll();
    o.core.closing.then(endFeeds, endFeeds);
    app.addHook('preClose', (done) => {
      feed.closeAll();
      done();
    });
    app.addHook('onSend', async (_req, reply, payload) => {
      reply.headers(SECURITY_HEADERS);
      return payload;
    });
    app.addContentTypeParser(
      'application/x-www-form-urlencoded',
      { parseAs: 'string', bodyLimit: 8192 },
      (_req, body, done) => done(null, Object.fromEntries(new URLSearchParams(body as string))),
    );

    app.get<{ Querystring: { next?: string } }>('/', async (req, reply) => {
      const next = safeNext(req.query.next);
      if (o.sessions.fromCookie(req.headers.cookie)) return reply.code(303).header('location', next).send();
      const stale = readCookie(req.headers.cookie, SESSION_COOKIE) !== undefined;
      if (stale) reply.header('set-cookie', sessionCookie('', 0, secure(req, o.publicUrl)));
      const message = stale ? 'Your session has ended. Sign in again.' : undefined;
      return html(reply, 200, loginPage(assets, { next, ...(message ? { message } : {}) }));
    });

    app.post<{ Body: { token?: unknown; next?: unknown } }>('/ui/login', async (req, reply) => {
      const next = safeNext(req.body?.next);
      if (crossSite(req)) return html(reply, 403, loginPage(assets, { next, message: 'Sign-in from another site.' }));
      const token = typeof req.body?.token === 'string' ? req.body.token.trim() : '';
      const made = token ? o.sessions.create(token) : undefined;
      if (!made) {
        const message = 'That token is not valid (wrong, expired or revoked).';
        return html(reply, 401, loginPage(assets, { next, message }));
      }
      const maxAge = Math.max(0, Math.floor((Date.parse(made.session.expiresAt) - Date.now()) / 1000));
      reply.header('set-cookie', sessionCookie(made.cookie, maxAge, secure(req, o.publicUrl)));
      return reply.code(303).header('location', next).send();
    });

    app.post('/ui/logout', async (req, reply) => {
      const session = o.sessions.fromCookie(req.headers.cookie);
      const sent = req.headers[CSRF_HEADER];
      if (session && (typeof sent !== 'string' || !sameValue(sent, session.csrf))) {
        return reply.code(403).send({ error: { code: 'FORBIDDEN', message: 'missing or wrong X-Kiln-CSRF header' } });
      }
      o.sessions.destroy(req.headers.cookie);
      reply.header('set-cookie', sessionCookie('', 0, secure(req, o.publicUrl)));
      return reply.code(204).send();
    });

    app.get<{ Params: { name: string } }>('/ui/assets/:name', async (req, reply) => {
      const a = assets.files.get(req.params.name);
      if (!a) return reply.code(404).send({ error: { code: 'NOT_FOUND', message: 'no such asset' } });
      reply
        .header('cache-control', 'public, max-age=31536000, immutable')
        .header('etag', a.etag)
        .header('vary', 'accept-encoding')
        .type(a.type);
      if (req.headers['if-none-match'] === a.etag) return reply.code(304).send();
      const accept = String(req.headers['accept-encoding'] ?? '');
      if (/\bbr\b/.test(accept)) return reply.header('content-encoding', 'br').send(a.br);
      if (/\bgzip\b/.test(accept)) return reply.header('content-encoding', 'gzip').send(a.gzip);
      return reply.send(a.body);
    });

    const shell = appShell(assets);
    for (const page of PAGES) {
      app.get<{ Params: { id?: string } }>(page, { config: { uiPage: true } }, async (req, reply) => {
        const id = req.params.id;
        return html(reply, id !== undefined && !o.core.getBuild(id) ? 404 : 200, shell);
      });
    }

    app.get('/ui/session', async (req) => {
      const p = principalOf(req);
      const session = o.sessions.fromCookie(req.headers.cookie);
      return {
        name: p?.name ?? '',
        role: p?.role ?? 'viewer',
        csrf: session?.csrf ?? null,
        expiresAt: session?.expiresAt ?? null,
      };
    });

    app.get('/ui/overview', async () => ({ projects: overview(o.core) }));

    app.get<{ Querystring: { project?: string; build?: string } }>(
      '/ui/events',
      {
        schema: {
          querystring: {
            type: 'object',
            additionalProperties: false,
            properties: { project: { type: 'string', maxLength: 253 }, build: { type: 'string', maxLength: 100 } },
          },
        },
      },
      async (req, reply) => {
        reply.hijack();
        feed.follow(reply.raw, {
          ...(req.query.project ? { project: req.query.project } : {}),
          ...(req.query.build ? { build: req.query.build } : {}),
        });
        return reply;
      },
    );
  };
}
