/**
 * The webhook receivers: `POST /hooks/{forge}/{project}` for GitHub, GitLab, Gitea, Forgejo, Bitbucket Cloud and a
 * generic Standard Webhooks sender. The route is public (the API's token check skips `/hooks/…`): each delivery
 * proves itself with its forge's signature over the raw body, checked here before anything of the body is read.
 *
 * Order of checks, and what each failure answers and records:
 * 1. unknown forge, unknown project, or a project without a secret for this forge → 404 (one message for all three,
 *    so the answer does not tell which projects exist); recorded as rejected (`rejected_deliveries`, project name
 *    sanitised);
 * 2. missing, malformed or wrong signature, stale Standard Webhooks timestamp → 401, recorded as rejected, never the
 *    body (bodies over the limit: 413, recorded the same way, by the plugin's error handler);
 * 3. a delivery id already recorded → 200 `{"duplicate": true}`, nothing done — unless its first handling failed
 *    (`error: …`), then it runs again (a forge's retry);
 * 4. malformed JSON or a payload without the fields of its event → 400, recorded;
 * 5. events that build nothing (`ping`, `create`, others) → 200, recorded;
 * 6. pushes → the trigger pipeline (pipeline.ts): 202 with the queued build ids, or 200 with the reason none.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { errorMessage } from '../../errors.js';
import { readSecretRef } from '../config/secrets.js';
import type { Project } from '../model.js';
import {
  isForge,
  parseBitbucket,
  parseGeneric,
  parseGitea,
  parseGitHub,
  parseGitLab,
  type Forge,
  type HookEvent,
} from './payloads.js';
import {
  cleanId,
  detailOf,
  duplicateResult,
  newDeliveryId,
  plainResult,
  runDelivery,
  type HookHost,
  type RunOptions,
  type TriggerResult,
} from './pipeline.js';
import {
  verifyGitHub,
  verifyGitLabToken,
  verifyHexHmac,
  verifyStandardWebhook,
  type SignatureCheck,
} from './signatures.js';

/** Largest webhook body accepted (GitHub caps its payloads at 25 MB, but a push payload is a few hundred KB). */
export const DEFAULT_HOOK_BODY_LIMIT = 5 * 1024 * 1024;

type Headers = FastifyRequest['headers'];

/** One header's value (the first, when repeated). */
function header(h: Headers, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Where each forge puts its delivery id and event name. */
function deliveryHeaders(forge: Forge, h: Headers): { id: string | undefined; event: string } {
  const get = (...names: string[]): string | undefined =>
    names.map((n) => cleanId(header(h, n))).find((v) => v !== undefined);
  switch (forge) {
    case 'github':
      return { id: get('x-github-delivery'), event: get('x-github-event') ?? '' };
    case 'gitlab':
      return {
        id: get('idempotency-key', 'x-gitlab-event-uuid'),
        event: header(h, 'x-gitlab-event')?.slice(0, 100) ?? '',
      };
    case 'gitea':
      return { id: get('x-gitea-delivery'), event: get('x-gitea-event') ?? '' };
    case 'forgejo':
      return {
        id: get('x-forgejo-delivery', 'x-gitea-delivery'),
        event: get('x-forgejo-event', 'x-gitea-event') ?? '',
      };
    case 'bitbucket':
      return { id: get('x-request-uuid'), event: get('x-event-key') ?? '' };
    case 'generic':
      return { id: get('webhook-id'), event: '' };
  }
}

/** The project's secret reference for `forge`, if it accepts that forge's webhooks. */
function secretRefOf(
  p: Project,
  forge: Forge,
): { secretEnv?: string; secretFile?: string } | { tokenEnv?: string; tokenFile?: string } | undefined {
  return p.webhooks?.[forge];
}

async function verify(forge: Forge, secret: string, body: Buffer, h: Headers): Promise<SignatureCheck> {
  switch (forge) {
    case 'github':
      return verifyGitHub(secret, body, header(h, 'x-hub-signature-256'));
    case 'gitlab':
      return verifyGitLabToken(secret, header(h, 'x-gitlab-token'));
    case 'gitea':
      return verifyHexHmac(secret, body, header(h, 'x-gitea-signature'), '');
    case 'forgejo':
      return verifyHexHmac(secret, body, header(h, 'x-forgejo-signature'), '');
    case 'bitbucket':
      return verifyHexHmac(secret, body, header(h, 'x-hub-signature'), 'sha256=');
    case 'generic':
      return verifyStandardWebhook(secret, body, {
        id: header(h, 'webhook-id'),
        timestamp: header(h, 'webhook-timestamp'),
        signature: header(h, 'webhook-signature'),
      });
  }
}

function parseEvent(forge: Forge, event: string, body: Record<string, unknown>): HookEvent {
  switch (forge) {
    case 'github':
      return parseGitHub(event, body);
    case 'gitlab':
      return parseGitLab(event, body);
    case 'gitea':
    case 'forgejo':
      return parseGitea(event, body);
    case 'bitbucket':
      return parseBitbucket(event, body);
    case 'generic':
      return parseGeneric(body);
  }
}

/**
 * The JSON object of a body: `application/x-www-form-urlencoded` bodies (GitHub's and Gitea's "form" content type)
 * carry it in their `payload` field. Undefined when it is not a JSON object.
 */
function jsonBody(body: Buffer, contentType: string | undefined): Record<string, unknown> | undefined {
  let text = body.toString('utf8');
  if (/^application\/x-www-form-urlencoded\b/i.test(contentType ?? '')) {
    text = new URLSearchParams(text).get('payload') ?? '';
  }
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** A project name from a URL as it may be stored: the name rules' characters only, at most 63. */
export function sanitizeProjectName(name: string): string {
  const s = name
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '_')
    .slice(0, 63);
  return s === '' ? '_' : s;
}

const PROJECT_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** What the receiver is given of a request (Fastify-free, so it can be driven directly). */
export interface HookRequest {
  forge: string;
  project: string;
  headers: Headers;
  /** The raw body (empty when there was none). */
  body: Buffer;
  contentType: string | undefined;
}

/** Record a delivery refused before it was authenticated and build the answer. */
export function reject(
  host: HookHost,
  req: Pick<HookRequest, 'forge' | 'project' | 'headers'>,
  status: number,
  outcome: string,
  error: { code: string; message: string; hint?: string },
  log: (line: string) => void,
): TriggerResult {
  const forge = isForge(req.forge) ? req.forge : sanitizeProjectName(req.forge).slice(0, 20);
  const ids = isForge(req.forge) ? deliveryHeaders(req.forge, req.headers) : { id: undefined, event: '' };
  try {
    host.store.recordRejectedDelivery({
      project: sanitizeProjectName(req.project),
      forge,
      deliveryId: ids.id ?? '-',
      event: ids.event,
      status,
      outcome,
    });
  } catch (e) {
    log(`kiln serve: cannot record a rejected delivery: ${errorMessage(e)}`);
  }
  log(`kiln serve: ${forge} delivery ${ids.id ?? '-'} for ${sanitizeProjectName(req.project)}: ${outcome}`);
  return plainResult(status, null, outcome, error);
}

/** Handle one webhook request (see the module comment for the order of checks). */
export async function receive(host: HookHost, req: HookRequest, o: RunOptions): Promise<TriggerResult> {
  const { forge: forgeName, project: name, headers: h, body } = req;
  const p = PROJECT_NAME.test(name) ? host.store.getProject(name) : undefined;
  const ref = isForge(forgeName) && p !== undefined ? secretRefOf(p, forgeName) : undefined;
  if (!isForge(forgeName) || p === undefined || ref === undefined) {
    const why = !isForge(forgeName) ? 'unknown forge' : p === undefined ? 'unknown project' : `no ${forgeName} webhook`;
    return reject(
      host,
      req,
      404,
      `rejected: ${why}`,
      {
        code: 'NOT_FOUND',
        message: `no ${isForge(forgeName) ? forgeName : 'such'} webhook for project "${sanitizeProjectName(name)}"`,
        hint: `POST /hooks/{github|gitlab|gitea|forgejo|bitbucket|generic}/{project}; the project needs webhooks.<forge>`,
      },
      o.log,
    );
  }
  const forge: Forge = forgeName;
  let secret: string;
  try {
    secret = readSecretRef(ref, `project ${p.name}: ${forge} webhook secret`);
  } catch (e) {
    o.log(`kiln serve: ${errorMessage(e)}`);
    return reject(
      host,
      req,
      500,
      'rejected: secret unavailable',
      {
        code: 'SECRET_UNAVAILABLE',
        message: `the ${forge} webhook secret of project "${p.name}" is not available (see the service log)`,
      },
      o.log,
    );
  }
  const check = await verify(forge, secret, body, h);
  if (!check.ok) {
    return reject(
      host,
      req,
      401,
      `rejected: ${check.reason}`,
      {
        code: check.reason === 'missing signature' ? 'SIGNATURE_MISSING' : 'SIGNATURE_INVALID',
        message: `${forge} webhook for project "${p.name}": ${check.reason}`,
        hint: `configure the same secret in the forge and in webhooks.${forge} of the project`,
      },
      o.log,
    );
  }

  const ids = deliveryHeaders(forge, h);
  const deliveryId = ids.id ?? newDeliveryId(forge);
  const json = jsonBody(body, req.contentType);
  const ev: HookEvent =
    json === undefined
      ? { kind: 'invalid', event: ids.event, reason: 'malformed JSON' }
      : parseEvent(forge, ids.event, json);
  const event = (ev.event || ids.event).slice(0, 100);
  const push = ev.kind === 'push' ? ev.changes[0] : undefined;
  const outcome =
    ev.kind === 'push' ? 'received' : ev.kind === 'ignored' ? `ignored: ${ev.reason}` : `rejected: ${ev.reason}`;
  const rec = host.store.transaction(() => {
    const r = host.store.recordDelivery({
      project: p.name,
      forge,
      deliveryId,
      event,
      ref: push?.ref ?? null,
      commit: push?.commit ?? null,
      outcome,
    });
    if (r !== undefined) {
      host.store.setDeliveryDetail(r.id, JSON.stringify({ pushes: ev.kind === 'push' ? ev.changes : [], builds: [] }));
    }
    return r;
  });
  if (rec === undefined) {
    const first = host.store.findDelivery(forge, deliveryId, p.name);
    if (first === undefined || !host.store.claimFailedDelivery(first.id)) {
      o.log(`kiln serve: ${forge} delivery ${deliveryId} for ${p.name}: duplicate, ignored`);
      return duplicateResult(first ?? { id: 0, outcome: 'unknown', detail: null });
    }
    // The first arrival failed (e.g. the fetch): this retry runs it again, from the stored ref updates.
    return runDelivery(
      host,
      p,
      first,
      detailOf(first)?.pushes ?? [],
      { type: 'webhook', forge, delivery: deliveryId },
      o,
    );
  }
  if (ev.kind === 'invalid') {
    o.log(`kiln serve: ${forge} delivery ${deliveryId} for ${p.name}: ${outcome}`);
    return plainResult(400, rec.id, outcome, {
      code: 'BODY_INVALID',
      message: `${forge} ${event || 'webhook'}: ${ev.reason}`,
    });
  }
  if (ev.kind === 'ignored') {
    o.log(`kiln serve: ${forge} delivery ${deliveryId} for ${p.name}: ${outcome}`);
    return plainResult(200, rec.id, outcome);
  }
  return runDelivery(host, p, rec, ev.changes, { type: 'webhook', forge, delivery: deliveryId }, o);
}

/** Send a trigger's answer. */
export function sendResult(reply: FastifyReply, r: TriggerResult): FastifyReply {
  const { error, ...rest } = r.body;
  const body = error === undefined ? rest : { error, ...rest };
  return reply.code(r.status).type('application/json; charset=utf-8').send(body);
}

/**
 * The receivers as an encapsulated Fastify plugin: its own content-type parser takes every body as raw bytes (the
 * signatures are over them), leaving the API's JSON and YAML parsers untouched, and its error handler records
 * bodies over the limit before the API's handler answers 413.
 */
export function hookRoutes(host: HookHost, o: RunOptions & { bodyLimit: number }) {
  return async (app: FastifyInstance): Promise<void> => {
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: o.bodyLimit }, (_req, body, done) => {
      done(null, body);
    });
    app.setErrorHandler(async (err: { code?: string; statusCode?: number }, req) => {
      if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
        const params = (req.params ?? {}) as { forge?: string; project?: string };
        reject(
          host,
          { forge: params.forge ?? '', project: params.project ?? '', headers: req.headers },
          413,
          'rejected: body too large',
          {
            code: 'BODY_TOO_LARGE',
            message: 'request body is too large',
          },
          o.log,
        );
      }
      throw err;
    });
    app.post<{ Params: { forge: string; project: string } }>(
      '/hooks/:forge/:project',
      { bodyLimit: o.bodyLimit },
      async (req, reply) => {
        if (o.isClosing()) {
          return sendResult(
            reply,
            plainResult(503, null, 'rejected: shutting down', {
              code: 'SERVICE_CLOSING',
              message: 'the service is shutting down',
            }),
          );
        }
        const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
        const { forge, project } = req.params;
        const r = await receive(
          host,
          { forge, project, headers: req.headers, body, contentType: req.headers['content-type'] },
          o,
        );
        return sendResult(reply, r);
      },
    );
  };
}
