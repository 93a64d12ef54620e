/**
 * What happens after a build: `Deliveries` listens to the service's build events and sends, for each project that
 * asks for it, CloudEvents webhooks on final phases, commit statuses on every state the forge should show, and
 * Kubernetes redeploys on success — through a durable queue (`notifications` in the service database), with
 * retries and a record of every attempt.
 *
 * Never in the queue's way: the listener only writes rows (one short transaction in the tick the build's change
 * was committed) and returns; sending happens later, asynchronously, at most `concurrency` requests at once, and a
 * failure is logged and recorded, never thrown into the service. Rows with one key (the statuses of one build on
 * one forge) go out one at a time, in order, and a newer status replaces an older one still waiting (the forge
 * only needs the latest), so a retried `pending` can never land after `success`.
 *
 * Durable: the queue survives a restart (pending rows are resumed on start, due at their scheduled time), and the
 * builds still running are watched, so a build that ended while nobody listened — the service was killed, and the
 * next start failed it as `interrupted` — still gets its final status and webhooks. Delivery is at least once: a
 * kill between sending and recording resends the same bytes (same CloudEvent `id`) on the next start.
 *
 * Secrets: requests are stored with references (`secretEnv`, `tokenFile`, …), resolved for each attempt; the
 * HMAC secret and forge tokens exist only in the request being sent — never in a row, an attempt, a log line or an
 * API answer (error texts are masked with them too).
 */
import { randomUUID } from 'node:crypto';
import { errorMessage } from '../../errors.js';
import { Agent } from '../../registry/http.js';
import { readSecretRef } from '../config/secrets.js';
import { FINAL_PHASES, type Build, type Project } from '../model.js';
import type { ServiceEvents } from '../service.js';
import type { EventEmitter } from 'node:events';
import { buildCloudEvent, CLOUDEVENTS_JSON, SIGNATURE_HEADER, signatureOf } from './cloudevents.js';
import { redactTargetUrl } from './config.js';
import { RedeployDelivery, finishedImageOf, type FinishedImage, type Redeployer } from './redeploy.js';
import { DEFAULT_RETRY_BASE_MS, postOnce, retryDelay, type AttemptResult } from './send.js';
import { statusRequests } from './status.js';
import { DeliveryStore, type NotificationRow, type NotificationView } from './store.js';

/** What Deliveries needs of the service (BuildService has it). */
export interface DeliverySource {
  events: EventEmitter<ServiceEvents>;
  /** The project as stored (references, not values, are all it holds). */
  store: { getProject(name: string): Project | undefined };
  getBuild(id: string): Build | undefined;
}

export interface DeliveriesOptions {
  /** The service database (`<data dir>/kiln.db`). */
  database: string;
  /** The service's public URL (no trailing slash): log links in events and statuses. */
  publicUrl?: string;
  /** One line for the service log. */
  log?: (line: string) => void;
  /** The Kubernetes side of redeploy (none: no redeploys). */
  redeployer?: Redeployer;
  /** Only this namespace is searched for opted-in workloads (default: all the client may list). */
  redeployNamespace?: string;
  /** First retry delay (doubling after each attempt); default 1 s. Tests make it short. */
  retryBaseMs?: number;
  /** One attempt's time limit; default 10 s. */
  timeoutMs?: number;
  /** Attempts in flight at once; default 4. */
  concurrency?: number;
  /** Where `…Env` references are read (default process.env). */
  env?: NodeJS.ProcessEnv;
}

/** An HTTP delivery as stored: the request without secrets, and where its secret comes from. */
interface StoredHttp {
  headers: Record<string, string>;
  body: string;
  /** HMAC-SHA256 signature key (webhooks). */
  sign?: { secretEnv?: string; secretFile?: string };
  /** `Authorization: Bearer` token (forges). */
  bearer?: { tokenEnv?: string; tokenFile?: string };
  /** Names the secret in errors: `project shop: notifications[0] secret`. */
  what: string;
}

interface StoredRedeploy {
  image: FinishedImage;
}

const MAX_STATUS_ATTEMPTS = 6;
const MAX_REDEPLOY_ATTEMPTS = 6;
const PRUNE_EVERY_MS = 3600_000;

function isFinal(b: Build): boolean {
  return FINAL_PHASES.includes(b.phase);
}

/** The listener and sender of a service's deliveries. Start with {@link Deliveries.start}. */
export class Deliveries {
  private readonly db: DeliveryStore;
  private readonly say: (line: string) => void;
  private readonly agent = new Agent({ connect: { timeout: 10_000 } });
  private readonly abort = new AbortController();
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly busyKeys = new Set<string>();
  private readonly redeploy: RedeployDelivery | undefined;
  private readonly listener = (b: Build): void => this.onBuild(b);
  private timer: NodeJS.Timeout | undefined;
  private pruneTimer: NodeJS.Timeout | undefined;
  private kicked = false;
  private stopped = false;

  private constructor(
    private readonly src: DeliverySource,
    private readonly opts: DeliveriesOptions,
  ) {
    this.db = DeliveryStore.open(opts.database);
    this.say = opts.log ?? ((l) => process.stderr.write(l + '\n'));
    this.redeploy = opts.redeployer
      ? new RedeployDelivery(opts.redeployer, opts.redeployNamespace ? { namespace: opts.redeployNamespace } : {})
      : undefined;
  }

  /**
   * Open the queue, catch up with builds that changed while nobody listened, subscribe to `src.events`, and resume
   * pending deliveries.
   */
  static start(src: DeliverySource, opts: DeliveriesOptions): Deliveries {
    const d = new Deliveries(src, opts);
    d.safely('prune', () => d.db.prune());
    for (const w of d.db.watched()) {
      const b = src.getBuild(w.buildId);
      if (!b) d.db.unwatch(w.buildId);
      else if (b.phase !== w.phase) d.onBuild(b);
    }
    src.events.on('build', d.listener);
    d.pruneTimer = setInterval(() => d.safely('prune', () => d.db.prune()), PRUNE_EVERY_MS);
    d.pruneTimer.unref();
    d.kick();
    return d;
  }

  private safely(what: string, fn: () => unknown): void {
    try {
      fn();
    } catch (e) {
      this.say(`kiln serve: delivery ${what}: ${errorMessage(e)}`);
    }
  }

  /** The notifications of a build with their attempts (the API's `GET /builds/{id}/notifications`). */
  listNotifications(buildId: string): NotificationView[] {
    return this.db.listForBuild(buildId);
  }

  /** The build event listener: queue what the change asks for. Never throws. */
  onBuild(b: Build): void {
    if (this.stopped) return;
    this.safely(`for build ${b.id}`, () => {
      const p = this.src.store.getProject(b.project);
      const concerned = p !== undefined && (p.notifications?.length || p.commitStatus || this.redeploy);
      this.db.transaction(() => {
        if (p && concerned) this.enqueue(b, p);
        if (isFinal(b) || !concerned) this.db.unwatch(b.id);
        else this.db.watch(b.id, b.phase);
      });
    });
    this.kick();
  }

  private repository(b: Build, p: Project): string {
    return `${p.registry}/${b.image}`;
  }

  /** Rows for one build change (inside the caller's transaction). */
  private enqueue(b: Build, p: Project): void {
    const now = Date.now();
    if (p.commitStatus) {
      for (const r of statusRequests(p.commitStatus, b, this.opts.publicUrl)) {
        const key = `status:${r.forge}:${b.id}`;
        const stored: StoredHttp = {
          headers: r.headers,
          body: r.body,
          bearer: r.token,
          what: `project ${p.name}: commitStatus.${r.forge} token`,
        };
        const dedupe = `${key}:${r.identity}`;
        const inserted = this.db.insert({
          id: randomUUID(),
          buildId: b.id,
          project: p.name,
          kind: 'status',
          target: r.forge,
          key,
          dedupe,
          event: r.state,
          url: r.url,
          request: JSON.stringify(stored),
          maxAttempts: MAX_STATUS_ATTEMPTS,
          nextAt: now,
        });
        const row = inserted ? this.db.byDedupe(dedupe) : undefined;
        if (row) this.db.supersedeOlder(key, row.seq, new Set(this.inflight.keys()));
      }
    }
    if (isFinal(b)) {
      p.notifications?.forEach((n, i) => {
        if (!n.events.includes(b.phase)) return;
        const id = randomUUID();
        const event = buildCloudEvent(b, { id, repository: this.repository(b, p), publicUrl: this.opts.publicUrl });
        const sign = n.secretEnv ? { secretEnv: n.secretEnv } : n.secretFile ? { secretFile: n.secretFile } : undefined;
        const stored: StoredHttp = {
          headers: {
            'content-type': `${CLOUDEVENTS_JSON}; charset=utf-8`,
            'x-kiln-event': event.type,
            'x-kiln-delivery': id,
          },
          body: JSON.stringify(event),
          ...(sign ? { sign } : {}),
          what: `project ${p.name}: notifications[${i}] secret`,
        };
        this.db.insert({
          id,
          buildId: b.id,
          project: p.name,
          kind: 'webhook',
          target: `notifications[${i}]`,
          key: `webhook:${id}`,
          dedupe: `webhook:${b.id}:${i}:${b.phase}`,
          event: event.type,
          url: n.url,
          request: JSON.stringify(stored),
          maxAttempts: n.maxAttempts,
          nextAt: now,
        });
      });
    }
    const image = this.redeploy ? finishedImageOf(b, p) : undefined;
    if (image) {
      const stored: StoredRedeploy = { image };
      this.db.insert({
        id: randomUUID(),
        buildId: b.id,
        project: p.name,
        kind: 'redeploy',
        target: 'kubernetes',
        key: `redeploy:${b.id}`,
        dedupe: `redeploy:${b.id}`,
        event: 'redeploy',
        url: `kubernetes:${this.opts.redeployNamespace ?? '*'}`,
        request: JSON.stringify(stored),
        maxAttempts: MAX_REDEPLOY_ATTEMPTS,
        nextAt: now,
      });
    }
  }

  /** Run the scheduler soon (once per tick: changes of one tick are queued before anything is sent). */
  private kick(): void {
    if (this.kicked || this.stopped) return;
    this.kicked = true;
    setImmediate(() => {
      this.kicked = false;
      this.safely('scheduler', () => this.pump());
    });
  }

  /** Start every due row that may run now; arm the timer for the next one. */
  private pump(): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    const max = this.opts.concurrency ?? 4;
    const now = Date.now();
    let next: number | undefined;
    for (const row of this.db.pending()) {
      if (this.inflight.has(row.id) || this.busyKeys.has(row.key)) continue;
      if (row.nextAt > now) {
        next = Math.min(next ?? Infinity, row.nextAt);
        continue;
      }
      if (this.inflight.size >= max) continue; // the end of an attempt runs the scheduler again
      this.start(row);
    }
    if (next !== undefined) {
      this.timer = setTimeout(() => this.safely('scheduler', () => this.pump()), Math.max(0, next - Date.now()));
      this.timer.unref();
    }
  }

  private start(row: NotificationRow): void {
    this.busyKeys.add(row.key);
    const p = this.attempt(row)
      .catch((e: unknown) => this.say(`kiln serve: delivery ${row.id}: ${errorMessage(e)}`))
      .finally(() => {
        this.inflight.delete(row.id);
        this.busyKeys.delete(row.key);
        this.kick();
      });
    this.inflight.set(row.id, p);
  }

  /** One attempt of a row, recorded with its outcome (unless the service is stopping: then it stays pending). */
  private async attempt(row: NotificationRow): Promise<void> {
    const n = row.attempts + 1;
    const at = new Date().toISOString();
    const r: AttemptResult & { detail?: string } =
      row.kind === 'redeploy' ? await this.redeployAttempt(row) : await this.httpAttempt(row);
    if (this.abort.signal.aborted && !r.ok) return;
    let state: 'pending' | 'delivered' | 'failed' | 'superseded';
    let nextAt: number | undefined;
    if (r.ok) state = 'delivered';
    else if (!r.retryable || n >= row.maxAttempts) state = 'failed';
    else if (this.db.hasNewerPending(row.key, row.seq)) state = 'superseded';
    else {
      state = 'pending';
      nextAt = Date.now() + retryDelay(n + 1, this.opts.retryBaseMs ?? DEFAULT_RETRY_BASE_MS, r.retryAfterMs);
    }
    this.db.recordAttempt(row.id, {
      attempt: n,
      ...(r.status === undefined ? {} : { status: r.status }),
      ...(r.error === undefined ? {} : { error: r.error }),
      ...(r.detail === undefined ? {} : { detail: r.detail }),
      at,
      durationMs: r.durationMs,
      state,
      ...(nextAt === undefined ? {} : { nextAt }),
    });
    if (!r.ok) {
      const what = `${row.kind} ${row.event} of build ${row.buildId} to ${redactTargetUrl(row.url)}`;
      const then =
        state === 'pending'
          ? `; attempt ${n + 1} in ${Math.round(((nextAt ?? 0) - Date.now()) / 100) / 10}s`
          : state === 'failed'
            ? `; gave up after ${n} attempt${n === 1 ? '' : 's'}`
            : '; a newer one replaces it';
      this.say(`kiln serve: ${what}: attempt ${n}/${row.maxAttempts} failed: ${r.error ?? 'error'}${then}`);
    }
  }

  private async httpAttempt(row: NotificationRow): Promise<AttemptResult> {
    const req = JSON.parse(row.request) as StoredHttp;
    const headers: Record<string, string> = { ...req.headers, 'user-agent': 'kiln' };
    const mask: string[] = [];
    try {
      const env = this.opts.env ?? process.env;
      if (req.sign) {
        const secret = readSecretRef(req.sign, req.what, env);
        mask.push(secret);
        headers[SIGNATURE_HEADER] = signatureOf(secret, req.body);
      }
      if (req.bearer) {
        const token = readSecretRef(req.bearer, req.what, env);
        mask.push(token);
        headers['authorization'] = `Bearer ${token}`;
      }
    } catch (e) {
      // The reference names a variable or file that is not there: no attempt can succeed until the operator
      // fixes it (and restarts, for an environment variable).
      return { ok: false, error: errorMessage(e), retryable: false, durationMs: 0 };
    }
    return postOnce(
      { url: row.url, headers, body: req.body },
      { dispatcher: this.agent, timeoutMs: this.opts.timeoutMs ?? 10_000, signal: this.abort.signal, mask },
    );
  }

  private async redeployAttempt(row: NotificationRow): Promise<AttemptResult & { detail?: string }> {
    const t0 = performance.now();
    const took = (): number => Math.round(performance.now() - t0);
    if (!this.redeploy) return { ok: false, error: 'no Kubernetes client configured', retryable: false, durationMs: 0 };
    const { image } = JSON.parse(row.request) as StoredRedeploy;
    try {
      const res = await this.redeploy.deliver(image);
      for (const w of res.warnings) this.say(`kiln serve: redeploy of ${image.name}: ${w}`);
      const patched = res.outcomes.filter((o) => o.result === 'patched').map((o) => o.workload);
      const failed = res.outcomes.filter((o) => o.result === 'failed');
      const detail = patched.length ? `patched ${patched.join(', ')}` : 'no workload to patch';
      if (failed.length === 0) return { ok: true, detail, retryable: false, durationMs: took() };
      return {
        ok: false,
        detail,
        error: failed.map((o) => `${o.workload}: ${o.error ?? 'failed'}`).join('; '),
        retryable: true,
        durationMs: took(),
      };
    } catch (e) {
      return { ok: false, error: errorMessage(e).split('\n')[0] ?? 'error', retryable: true, durationMs: took() };
    }
  }

  /** Resolves once nothing is in flight (tests; shutdown). */
  async settled(): Promise<void> {
    while (this.inflight.size) await Promise.allSettled([...this.inflight.values()]);
  }

  /**
   * Stop: no new rows, no new attempts; attempts in flight may finish for `graceMs`, then are aborted (they stay
   * pending and run again on the next start). Closes the database connection.
   */
  async stop(graceMs = 5000): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.src.events.off('build', this.listener);
    clearTimeout(this.timer);
    clearInterval(this.pruneTimer);
    let t: NodeJS.Timeout | undefined;
    const expired = new Promise<'expired'>((r) => (t = setTimeout(() => r('expired'), graceMs)));
    if ((await Promise.race([this.settled(), expired])) === 'expired') {
      this.abort.abort();
      await this.settled();
    }
    clearTimeout(t);
    await this.agent.close().catch(() => undefined);
    this.db.close();
  }
}
