/**
 * `POST /hooks/registry` — the Distribution registry's notifications (`notifications.endpoints[].url` in its
 * config), and `GET /api/v1/bases` — the watched bases. A notification is only a hint: the bases it may concern
 * (same registry and repository as a pushed manifest) are looked up again with the registry itself; the event's
 * digest is never trusted. Without `registryHook.tokenEnv|tokenFile` in the server config the endpoint needs no
 * token (like the registry's own default); with it, the `Authorization` header the endpoint's `headers:` sets must
 * match, compared in constant time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { parseReferenceWithDefaultTag } from '../../registry/reference.js';
import { readSecretRef } from '../config/secrets.js';
import type { BuildService } from '../service.js';

/** The registry's notification envelope (only what is read). */
interface RegistryEvent {
  action?: unknown;
  target?: { repository?: unknown; tag?: unknown; mediaType?: unknown; url?: unknown };
  request?: { host?: unknown };
}

const sameSecret = (a: string, b: string): boolean =>
  timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());

/** `host/repository` of a normalized reference name (`127.0.0.1:5000/base:1` → `127.0.0.1:5000/base`). */
function repositoryOf(name: string): string {
  const r = parseReferenceWithDefaultTag(name);
  return `${r.registry}/${r.repository}`;
}

/** The watched bases a batch of push events may concern. */
export function basesConcerned(events: RegistryEvent[], watched: string[]): string[] {
  const repos = new Set<string>();
  for (const e of events) {
    if (e.action !== 'push' || typeof e.target?.repository !== 'string') continue;
    const hosts = new Set<string>();
    if (typeof e.request?.host === 'string') hosts.add(e.request.host);
    if (typeof e.target.url === 'string') {
      try {
        hosts.add(new URL(e.target.url).host);
      } catch {
        // not a URL: ignore
      }
    }
    for (const h of hosts) repos.add(`${h}/${e.target.repository}`.toLowerCase());
  }
  return watched.filter((n) => {
    try {
      return repos.has(repositoryOf(n).toLowerCase());
    } catch {
      return false;
    }
  });
}

export function registryHookRoutes(app: FastifyInstance, svc: BuildService): void {
  const cfg = svc.config.registryHook;
  void app.register(async (scope) => {
    scope.addContentTypeParser(
      'application/vnd.docker.distribution.events.v1+json',
      { parseAs: 'string', bodyLimit: 1 << 20 },
      (_req, body, done) => {
        try {
          done(null, JSON.parse(body as string));
        } catch {
          done(Object.assign(new Error('body is not JSON'), { statusCode: 400, code: 'HOOK_INVALID' }), undefined);
        }
      },
    );
    scope.post('/hooks/registry', async (req, reply) => {
      if (cfg && (cfg.tokenEnv || cfg.tokenFile)) {
        const want = readSecretRef(cfg, 'registryHook token');
        const got = req.headers.authorization ?? '';
        if (!sameSecret(got, want)) {
          return reply
            .code(401)
            .send({ error: { code: 'HOOK_UNAUTHORIZED', message: 'bad or missing Authorization' } });
        }
      }
      const body = req.body as { events?: unknown } | undefined;
      if (!body || !Array.isArray(body.events)) {
        return reply.code(400).send({ error: { code: 'HOOK_INVALID', message: 'expected {"events": [...]}' } });
      }
      const names = basesConcerned(
        body.events as RegistryEvent[],
        svc.bases.list().map((b) => b.name),
      );
      // answer at once (the registry retries slow endpoints); the lookups run in the background
      void svc.bases.check(names).catch(() => undefined);
      return reply.code(202).send({ checking: names });
    });
  });
  app.get('/api/v1/bases', async () => ({ bases: svc.bases.list() }));
}
