/**
 * `GET /api/v1/builds/{id}/notifications`: what the service sent after a build — webhooks, commit statuses,
 * redeploys — with every attempt (status code or error, time), for any token. A Fastify plugin of its own, over a
 * read-only port, so the API stays free of the delivery room's storage; registered by `createApi`.
 *
 * A build that retention removed still answers while its notification records exist (they are pruned later);
 * a build id that was never seen is 404.
 */
import type { FastifyInstance } from 'fastify';
import { KilnError } from '../../errors.js';
import type { ServiceCore } from '../core.js';
import type { NotificationView } from '../delivery/store.js';
import { idParams } from './schemas.js';

/** What the route reads: Deliveries implements it. */
export interface NotificationLog {
  listNotifications(buildId: string): NotificationView[];
}

/**
 * The plugin for `core` and `log` (without a log — delivery not running — every build has no notifications).
 */
export function notificationRoutes(
  core: Pick<ServiceCore, 'getBuild'>,
  log: NotificationLog | undefined,
): (api: FastifyInstance) => Promise<void> {
  return async (api) => {
    api.get<{ Params: { id: string } }>(
      '/api/v1/builds/:id/notifications',
      { schema: { params: idParams } },
      async (req) => {
        const { id } = req.params;
        const notifications = log?.listNotifications(id) ?? [];
        if (notifications.length === 0 && !core.getBuild(id)) {
          throw new KilnError('NOT_FOUND', `build "${id}" not found`);
        }
        return { notifications };
      },
    );
  };
}
