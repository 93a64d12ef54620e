/**
 * Outgoing webhooks as CloudEvents 1.0 in the JSON event format, structured content mode: the whole event is the
 * body, sent as `Content-Type: application/cloudevents+json` — so any CloudEvents receiver (Knative, Argo Events,
 * Azure Event Grid, a plain HTTP handler) reads it without a kiln-specific parser.
 *
 * Signature: when the notification has a secret, the request carries
 * `X-Kiln-Signature-256: sha256=<hex>`, the lowercase hex HMAC-SHA256 of the **raw request body** (the exact bytes
 * received, before any JSON parsing) keyed with the secret's UTF-8 bytes — the scheme of GitHub's
 * `X-Hub-Signature-256`, so receivers that check GitHub hooks check kiln's with the same code. Receivers should
 * compare in constant time ({@link verifySignature}) and drop events whose `id` they have seen: a retry sends the
 * same bytes with the same `id`, and delivery is at least once (a crash between sending and recording an attempt
 * sends it again).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Build, Trigger } from '../model.js';

/** The signature header's name. */
export const SIGNATURE_HEADER = 'x-kiln-signature-256';
/** Media type of a structured-mode CloudEvent in the JSON format. */
export const CLOUDEVENTS_JSON = 'application/cloudevents+json';
/** Event type prefix: `dev.kiln.build.succeeded`, `.failed`, `.cancelled`, `.timed-out`. */
export const EVENT_TYPE_PREFIX = 'dev.kiln.build.';

/** The build as an event carries it: the record's public fields, never a secret (the model holds none). */
export interface BuildEventData {
  id: string;
  project: string;
  image: string;
  /** `registry/prefix/image` the tags and digest belong to. */
  repository: string;
  number: number;
  group: string;
  ref: string;
  commit: string | null;
  phase: Build['phase'];
  reason: string | null;
  trigger: Trigger;
  tags: string[];
  digest: string | null;
  /** `repository@digest` when the build pushed: the immutable reference to deploy. */
  reference: string | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  durationMs: number | null;
  /** The build's log on the service (`publicUrl` + `/api/v1/builds/{id}/log`; needs a token), when known. */
  logUrl?: string;
}

/** A CloudEvents 1.0 event (the attributes kiln sets). */
export interface BuildCloudEvent {
  specversion: '1.0';
  id: string;
  source: string;
  type: string;
  subject: string;
  time: string;
  datacontenttype: 'application/json';
  data: BuildEventData;
}

/** The log URL of a build when the service knows its public URL. */
export function logUrlOf(buildId: string, publicUrl: string | undefined): string | undefined {
  return publicUrl === undefined ? undefined : `${publicUrl}/api/v1/builds/${encodeURIComponent(buildId)}/log`;
}

/** The event data of a build; `repository` is where its images are pushed (`<project.registry>/<image>`). */
export function buildEventData(b: Build, repository: string, publicUrl?: string): BuildEventData {
  const started = b.startedAt === null ? NaN : Date.parse(b.startedAt);
  const finished = b.finishedAt === null ? NaN : Date.parse(b.finishedAt);
  const logUrl = logUrlOf(b.id, publicUrl);
  return {
    id: b.id,
    project: b.project,
    image: b.image,
    repository,
    number: b.number,
    group: b.group,
    ref: b.ref,
    commit: b.commit,
    phase: b.phase,
    reason: b.reason,
    trigger: { ...b.trigger },
    tags: [...b.tags],
    digest: b.digest,
    reference: b.digest === null ? null : `${repository}@${b.digest}`,
    createdAt: b.createdAt,
    startedAt: b.startedAt,
    finishedAt: b.finishedAt,
    durationMs: Number.isFinite(started) && Number.isFinite(finished) ? Math.max(0, finished - started) : null,
    ...(logUrl === undefined ? {} : { logUrl }),
  };
}

/**
 * The CloudEvent of a build that reached a final phase. `id` identifies this delivery (a retry keeps it), `source`
 * is `kiln/<project>` (a URI-reference, as the spec allows), `subject` the build id, `time` when the build
 * finished (else `now`).
 */
export function buildCloudEvent(
  b: Build,
  opts: { id: string; repository: string; publicUrl?: string; now?: Date },
): BuildCloudEvent {
  return {
    specversion: '1.0',
    id: opts.id,
    source: `kiln/${b.project}`,
    type: `${EVENT_TYPE_PREFIX}${b.phase}`,
    subject: b.id,
    time: b.finishedAt ?? (opts.now ?? new Date()).toISOString(),
    datacontenttype: 'application/json',
    data: buildEventData(b, opts.repository, opts.publicUrl),
  };
}

/** `sha256=<hex>`: the value of {@link SIGNATURE_HEADER} for `body` signed with `secret`. */
export function signatureOf(secret: string, body: string | Uint8Array): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

/**
 * Whether `header` is the signature of `body` under `secret`, compared in constant time (what a receiver runs;
 * exported for tests and as the reference implementation of the documented scheme).
 */
export function verifySignature(secret: string, body: string | Uint8Array, header: string | undefined): boolean {
  if (header === undefined) return false;
  const want = Buffer.from(signatureOf(secret, body));
  const got = Buffer.from(header.trim());
  return got.length === want.length && timingSafeEqual(got, want);
}
