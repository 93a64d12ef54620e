/**
 * The API side of triggers, behind the API's token check like every `/api/v1` route (openapi.yaml documents them):
 *
 * - `GET /api/v1/deliveries?project=&limit=` (any token): recorded deliveries, newest first — accepted ones with
 *   the builds they queued, and those rejected before authentication (`id: null`: bad signature, unknown project,
 *   body too large). With `project`, also the polling fallback's state of that project (its last error is the
 *   warning to act on).
 * - `POST /api/v1/deliveries/{id}/redeliver` (admin): re-run a recorded delivery's ref updates on purpose.
 * - `POST /api/v1/projects/{name}/trigger` `{"ref": "main"}` (admin): a push notification sent by hand (see
 *   `triggerRef` in pipeline.ts for what it does and does not do).
 */
import type { FastifyInstance } from 'fastify';
import { principalOf } from '../api/server.js';
import { nameParams } from '../api/schemas.js';
import type { Delivery, PollStatus } from '../store/store.js';
import { deliveryBuilds, redeliver, triggerRef, type HookHost, type RunOptions } from './pipeline.js';
import { sanitizeProjectName, sendResult } from './receiver.js';

/** A delivery as listed: the record, the builds it queued; `id` null for one rejected before authentication. */
export interface DeliveryView extends Omit<Delivery, 'id'> {
  id: number | null;
  builds: string[];
}

export interface DeliveryList {
  deliveries: DeliveryView[];
  /** The project's polling state (with `project`, when it polls or polled). */
  polling?: PollStatus;
}

export const deliveriesQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    project: { type: 'string', minLength: 1, maxLength: 253 },
    limit: { type: 'integer', minimum: 1, maximum: 1000 },
  },
} as const;

export const deliveryIdParams = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'integer', minimum: 1 } },
} as const;

export const triggerBody = {
  type: 'object',
  additionalProperties: false,
  required: ['ref'],
  properties: { ref: { type: 'string', minLength: 1, maxLength: 1024 } },
} as const;

/** Recorded deliveries, newest first (accepted and rejected ones merged by arrival). */
export function listDeliveries(host: HookHost, project: string | undefined, limit = 50): DeliveryList {
  const { store } = host;
  const accepted =
    project === undefined
      ? store.listAllDeliveries(limit)
      : store.getProject(project) === undefined
        ? []
        : store.listDeliveries(project, limit);
  const views: DeliveryView[] = accepted.map((d) => ({
    ...d,
    builds: deliveryBuilds(store.getDelivery(d.id) ?? { detail: null }),
  }));
  for (const r of store.listRejectedDeliveries(
    project === undefined ? undefined : sanitizeProjectName(project),
    limit,
  )) {
    views.push({
      id: null,
      project: r.project,
      forge: r.forge,
      deliveryId: r.deliveryId,
      event: r.event,
      ref: null,
      commit: null,
      outcome: r.outcome,
      receivedAt: r.receivedAt,
      buildGroup: null,
      builds: [],
    });
  }
  views.sort((a, b) => (a.receivedAt < b.receivedAt ? 1 : a.receivedAt > b.receivedAt ? -1 : 0));
  const out: DeliveryList = { deliveries: views.slice(0, limit) };
  const polling = project === undefined ? undefined : store.pollStatus(project);
  if (polling !== undefined) out.polling = polling;
  return out;
}

/** The routes above as a Fastify plugin (registered inside the API, so its auth, validation and errors apply). */
export function deliveryRoutes(host: HookHost, o: RunOptions) {
  return async (api: FastifyInstance): Promise<void> => {
    api.get<{ Querystring: { project?: string; limit?: number } }>(
      '/api/v1/deliveries',
      { schema: { querystring: deliveriesQuery } },
      async (req) => listDeliveries(host, req.query.project, req.query.limit),
    );

    api.post<{ Params: { id: number } }>(
      '/api/v1/deliveries/:id/redeliver',
      { schema: { params: deliveryIdParams } },
      async (req, reply) => sendResult(reply, await redeliver(host, req.params.id, principalOf(req)?.name ?? '', o)),
    );

    api.post<{ Params: { name: string }; Body: { ref: string } }>(
      '/api/v1/projects/:name/trigger',
      { schema: { params: nameParams, body: triggerBody } },
      async (req, reply) =>
        sendResult(reply, await triggerRef(host, req.params.name, req.body.ref, principalOf(req)?.name ?? '', o)),
    );
  };
}
