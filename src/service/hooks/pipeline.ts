/**
 * What every automatic trigger does with a ref that moved — a webhook delivery, a redelivery, `kiln project
 * trigger`, and the polling fallback all come through here, so they decide alike and are recorded alike:
 *
 * 1. a deleted ref, a branch or tag the project's filters exclude, or a head commit with a skip marker builds
 *    nothing (decided before any git traffic);
 * 2. the changed paths are the payload's when it listed them all; else the commit is fetched into the project's
 *    mirror — from the project's configured repository, never from a URL of the payload, which also proves that
 *    the commit exists there (else 422) — and they are `git diff before..commit`; for a new ref they are unknown
 *    (every image is concerned). A commit whose paths the payload gave is fetched by its build only;
 * 3. `BuildService.enqueueAutomatic` applies the images' path filters and coalescing and queues the builds.
 *
 * Every trigger is a delivery record (forge, id, event, ref, commit, outcome, builds) with a `detail` that holds
 * what a redelivery needs — refs, commits, paths, the skip flag — and never the request body.
 */
import { randomUUID } from 'node:crypto';
import { KilnError, errorMessage, isKilnError } from '../../errors.js';
import { matchesFilter } from '../config/filters.js';
import type { GitMirrors } from '../git/mirror.js';
import type { Build, Project, Trigger } from '../model.js';
import type { Delivery, Store } from '../store/store.js';
import { hasSkipMarker, type PushChange } from './payloads.js';

/** What the triggers need of the service (BuildService has it all; tests may give less real parts). */
export interface HookHost {
  readonly store: Store;
  readonly mirrors: Pick<GitMirrors, 'resolve' | 'changedPaths' | 'commitMessage' | 'lsRemote'>;
  enqueueAutomatic(
    project: string,
    change: { ref: string; commit: string; changedPaths?: string[] },
    trigger: Trigger,
  ): Build[];
  /** Resolves when the service begins to stop. */
  readonly closing: Promise<void>;
}

/** The JSON kept in `deliveries.detail`. */
export interface DeliveryDetail {
  /** The ref updates a redelivery re-runs (empty: nothing to re-run, e.g. a ping). */
  pushes: PushChange[];
  /** Ids of the builds the delivery queued (of all its ref updates). */
  builds: string[];
  /** For a redelivery: the delivery record it repeats. */
  redeliveryOf?: number;
}

/** The answer to a trigger, as the HTTP layer sends it. */
export interface TriggerResult {
  /** HTTP status: 202 builds queued, 200 nothing to build or a duplicate, 4xx/5xx failures. */
  status: number;
  body: TriggerBody;
}

export interface TriggerBody {
  /** The delivery record (null when none was made). */
  delivery: number | null;
  outcome: string;
  /** Ids of the builds queued. */
  builds: string[];
  /** Why nothing was built (`branch filter`, `skip marker`, `deleted ref`, `no image concerned`, …). */
  reason?: string;
  /** A repeat of a delivery already handled: acknowledged and ignored. */
  duplicate?: true;
  /** Failures: the API's error shape. */
  error?: { code: string; message: string; hint?: string };
}

/** Newest deliveries kept per project (they are diagnostics, not history). */
const KEEP_DELIVERIES = 1000;

const IGNORED = 'ignored: ';

/** What one ref update came to: builds, or the reason for none. */
type PushOutcome = { builds: Build[] } | { reason: string };

/** A delivery id as stored: printable ASCII, at most 200 characters (headers are client input). */
export function cleanId(v: string | undefined): string | undefined {
  if (v === undefined) return undefined;
  const s = v.replace(/[^\x21-\x7e]/g, '').slice(0, 200);
  return s === '' ? undefined : s;
}

/** A new delivery id for triggers that bring none (polls, `project trigger`, GitLab without its headers). */
export function newDeliveryId(prefix: string): string {
  return `${prefix}-${randomUUID()}`;
}

/** The detail of a stored delivery, when it has a readable one. */
export function detailOf(d: { detail: string | null }): DeliveryDetail | undefined {
  if (d.detail === null) return undefined;
  try {
    const v = JSON.parse(d.detail) as Partial<DeliveryDetail>;
    return Array.isArray(v.pushes) ? { pushes: v.pushes, builds: Array.isArray(v.builds) ? v.builds : [] } : undefined;
  } catch {
    return undefined;
  }
}

/** Build ids a delivery queued (from its detail). */
export function deliveryBuilds(d: { detail: string | null }): string[] {
  return detailOf(d)?.builds ?? [];
}

/**
 * One ref update: filters, skip marker, fetch, changed paths, enqueue. Throws git errors (fetch, commit). Once
 * decided (built or not), the ref is saved as seen for the polling fallback, so that a project which also polls
 * neither builds it again nor builds a commit a webhook skipped.
 */
async function runPush(host: HookHost, p: Project, change: PushChange, trigger: Trigger): Promise<PushOutcome> {
  const r = await decidePush(host, p, change, trigger);
  host.store.savePollRefs(p.name, [[change.ref, r.commit ?? change.commit]]);
  return r;
}

async function decidePush(
  host: HookHost,
  p: Project,
  change: PushChange,
  trigger: Trigger,
): Promise<PushOutcome & { commit?: string }> {
  if (change.commit === null) return { reason: 'deleted ref' };
  const branch = /^refs\/heads\/(.+)$/.exec(change.ref)?.[1];
  const tag = /^refs\/tags\/(.+)$/.exec(change.ref)?.[1];
  if (branch !== undefined && !matchesFilter(p.branches, branch)) return { reason: 'branch filter' };
  if (tag !== undefined && !matchesFilter(p.tags, tag)) return { reason: 'tag filter' };
  if (branch === undefined && tag === undefined) return { reason: 'not a branch or tag' };
  if (change.skip === true) return { reason: 'skip marker' };
  let commit = change.commit;
  let paths = change.paths;
  // Git is asked only when the payload leaves something open (the changed paths, the head message); else the
  // build's own fetch (by commit, from the configured repository) is the only git traffic, and the build starts
  // within milliseconds of the delivery.
  const diff = paths === undefined && change.before !== null;
  if (diff || change.skip === undefined) {
    commit = (await host.mirrors.resolve(p, { commit })).commit;
    // A poll has no commit message from a forge: read it from the mirror.
    if (change.skip === undefined && hasSkipMarker(await host.mirrors.commitMessage(p, commit))) {
      return { reason: 'skip marker', commit };
    }
    if (diff && change.before !== null) paths = await host.mirrors.changedPaths(p, change.before, commit);
  }
  const builds = host.enqueueAutomatic(
    p.name,
    { ref: change.ref, commit, ...(paths === undefined ? {} : { changedPaths: paths }) },
    trigger,
  );
  return builds.length > 0 ? { builds, commit } : { reason: 'no image concerned', commit };
}

/** The HTTP status of a failed trigger. */
function failureStatus(e: unknown): number {
  if (!isKilnError(e)) return 500;
  if (e.code === 'SERVICE_CLOSING') return 503;
  if (e.code.startsWith('GIT_COMMIT') || e.code === 'GIT_REF_NOT_FOUND') return 422;
  if (e.code.startsWith('GIT_')) return 502;
  return 500;
}

function errorBody(e: unknown): { code: string; message: string; hint?: string } {
  if (isKilnError(e))
    return { code: e.code, message: e.message.split('\n')[0] ?? '', ...(e.hint ? { hint: e.hint } : {}) };
  return { code: 'INTERNAL', message: 'internal error (see the service log)' };
}

/** The options of {@link runDelivery}. */
export interface RunOptions {
  /** The service is stopping: nothing may be queued (checked before each ref). */
  isClosing: () => boolean;
  log: (line: string) => void;
}

/**
 * Handle a recorded delivery's ref updates and store the result on it: outcome (`queued`, `ignored: <reasons>`,
 * `error: <message>`), the builds' group and ids. The answer: 202 with the build ids when builds were queued, 200
 * with the reason when none, the error status (502 fetch failed, 422 unknown commit, …) when handling failed.
 * A failed delivery (`error: …`) may be retried by the forge with the same delivery id.
 */
export async function runDelivery(
  host: HookHost,
  p: Project,
  rec: Delivery,
  pushes: PushChange[],
  trigger: Trigger,
  o: RunOptions,
  extra: Partial<DeliveryDetail> = {},
): Promise<TriggerResult> {
  const builds: Build[] = [];
  const reasons = new Set<string>();
  let failure: unknown;
  for (const change of pushes) {
    try {
      if (o.isClosing()) throw new KilnError('SERVICE_CLOSING', 'the service is shutting down');
      const r = await runPush(host, p, change, trigger);
      if ('builds' in r) builds.push(...r.builds);
      else reasons.add(r.reason);
    } catch (e) {
      failure = e;
      break;
    }
  }
  const ids = builds.map((b) => b.id);
  const reason = [...reasons].join(', ');
  const outcome =
    failure !== undefined
      ? `error: ${errorMessage(failure).split('\n')[0] ?? ''}`.slice(0, 500)
      : ids.length > 0
        ? 'queued'
        : IGNORED + reason;
  const detail: DeliveryDetail = { pushes, builds: ids, ...extra };
  try {
    host.store.transaction(() => {
      host.store.setDeliveryOutcome(rec.id, outcome, builds[0]?.group ?? null);
      host.store.setDeliveryDetail(rec.id, JSON.stringify(detail));
    });
    host.store.pruneDeliveries(p.name, KEEP_DELIVERIES);
  } catch (e) {
    // The project was deleted meanwhile (its deliveries went with it), or the store closed on shutdown.
    o.log(`kiln serve: delivery ${rec.id} of ${p.name}: cannot record the outcome: ${errorMessage(e)}`);
  }
  const what = `${rec.forge} delivery ${rec.deliveryId} (${rec.event}) for ${p.name}`;
  if (failure !== undefined) {
    o.log(`kiln serve: ${what}: ${outcome}`);
    return {
      status: failureStatus(failure),
      body: { delivery: rec.id, outcome, builds: ids, error: errorBody(failure) },
    };
  }
  o.log(`kiln serve: ${what}: ${ids.length > 0 ? `queued ${ids.join(', ')}` : outcome}`);
  return ids.length > 0
    ? { status: 202, body: { delivery: rec.id, outcome, builds: ids } }
    : { status: 200, body: { delivery: rec.id, outcome, builds: [], reason } };
}

/** The answer to a delivery id seen before (acknowledged, nothing done). */
export function duplicateResult(d: { id: number; outcome: string; detail: string | null }): TriggerResult {
  return { status: 200, body: { delivery: d.id, outcome: d.outcome, builds: deliveryBuilds(d), duplicate: true } };
}

/** An answer for a delivery recorded as ignored or rejected without running anything. */
export function plainResult(
  status: number,
  id: number | null,
  outcome: string,
  err?: TriggerBody['error'],
): TriggerResult {
  const body: TriggerBody = { delivery: id, outcome, builds: [] };
  if (outcome.startsWith(IGNORED)) body.reason = outcome.slice(IGNORED.length);
  if (err !== undefined) body.error = err;
  return { status, body };
}

/**
 * `POST /deliveries/{id}/redeliver`: run a recorded delivery's ref updates again, under the project's current
 * filters, as a new delivery record (`<forge id>/redelivery-<n>`). Throws `NOT_FOUND`, or `CONFLICT` when the
 * delivery has nothing to re-run (a ping, a rejected body).
 */
export async function redeliver(host: HookHost, id: number, by: string, o: RunOptions): Promise<TriggerResult> {
  const d = host.store.getDelivery(id);
  if (d === undefined) throw new KilnError('NOT_FOUND', `delivery ${id} not found`, { hint: 'kiln deliveries ls' });
  const detail = detailOf(d);
  if (detail === undefined || detail.pushes.length === 0) {
    throw new KilnError('CONFLICT', `delivery ${id} (${d.event}, ${d.outcome}) has no ref update to re-run`, {
      hint: 'only pushes that were authenticated and parsed can be redelivered',
    });
  }
  const p = host.store.getProject(d.project);
  if (p === undefined) throw new KilnError('NOT_FOUND', `project '${d.project}' not found`);
  const deliveryId = `${d.deliveryId.slice(0, 160)}/redelivery-${randomUUID().slice(0, 8)}`;
  const rec = host.store.recordDelivery({
    project: p.name,
    forge: d.forge,
    deliveryId,
    event: d.event,
    ref: d.ref,
    commit: d.commit,
    outcome: 'received',
  });
  if (rec === undefined) throw new KilnError('CONFLICT', `delivery ${deliveryId} exists already`);
  const trigger: Trigger = { type: 'webhook', forge: d.forge, delivery: deliveryId, by };
  return runDelivery(host, p, rec, detail.pushes, trigger, o, { redeliveryOf: d.id });
}

/**
 * `kiln project trigger PROJECT --ref R` (`POST /projects/{name}/trigger`): a push notification sent by hand. The
 * ref is fetched and resolved now, then handled exactly like a webhook push of it — recorded as a delivery of
 * forge `kiln`, branch/tag filters and coalescing apply, builds get `trigger: {type: "webhook", forge: "kiln",
 * delivery, by}` — except that the changed paths are unknown (every image whose filters pass builds) and a skip
 * marker in the head commit does not stop it (the user asked). For "build this whatever the filters say", start
 * a manual build instead (`POST /projects/{name}/builds`).
 */
export async function triggerRef(
  host: HookHost,
  projectName: string,
  ref: string,
  by: string,
  o: RunOptions,
): Promise<TriggerResult> {
  const p = host.store.getProject(projectName);
  if (p === undefined)
    throw new KilnError('NOT_FOUND', `project '${projectName}' not found`, { hint: 'kiln project ls' });
  if (o.isClosing()) throw new KilnError('SERVICE_CLOSING', 'the service is shutting down');
  const resolved = await host.mirrors.resolve(p, { ref });
  const deliveryId = newDeliveryId('trigger');
  const rec = host.store.recordDelivery({
    project: p.name,
    forge: 'kiln',
    deliveryId,
    event: 'trigger',
    ref: resolved.ref,
    commit: resolved.commit,
    outcome: 'received',
  }) as Delivery;
  const change: PushChange = { ref: resolved.ref, before: null, commit: resolved.commit, skip: false };
  return runDelivery(host, p, rec, [change], { type: 'webhook', forge: 'kiln', delivery: deliveryId, by }, o);
}
