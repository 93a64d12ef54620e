/**
 * The delivery room's tables in the service database (migration 3 in `store/db.ts`): `notifications` is the
 * durable queue — one row per thing to send (a webhook event, a commit status, a redeploy), with everything needed
 * to send it again after a restart and secrets only as references — `notification_attempts` records every attempt
 * (redacted URL, HTTP status or error, time), and `notification_watch` the builds whose next phase change must
 * still be acted on (so a build that a crash turned `failed: interrupted` while nobody listened still reports).
 *
 * A connection of its own on the same file (the service's Store keeps its connection private): WAL lets both
 * work, and every method here is one short synchronous transaction, so the two never hold a lock across an await.
 */
import { KilnError } from '../../errors.js';
import { openDatabase, type Db } from '../store/db.js';
import type { Statement } from 'better-sqlite3';
import { redactTargetUrl } from './config.js';

export type NotificationKind = 'webhook' | 'status' | 'redeploy';
export type NotificationState = 'pending' | 'delivered' | 'failed' | 'superseded';

/** A row to queue. `dedupe` makes queueing idempotent (the same build event handled twice queues once). */
export interface NewNotification {
  id: string;
  buildId: string;
  project: string;
  kind: NotificationKind;
  /** Which configured target: `notifications[0]`, `github`, `gitlab`, `kubernetes`. */
  target: string;
  /** Rows with one key are sent one after the other, in order (a commit status per build and forge). */
  key: string;
  dedupe: string;
  /** CloudEvent type, forge state, or `redeploy`. */
  event: string;
  /** Where it goes (as configured; shown redacted). */
  url: string;
  /** JSON of what to send (see deliveries.ts); secrets as references only. */
  request: string;
  maxAttempts: number;
  nextAt: number;
}

/** A queued row as read back. */
export interface NotificationRow extends NewNotification {
  seq: number;
  state: NotificationState;
  attempts: number;
  createdAt: string;
}

/** One recorded attempt. */
export interface AttemptView {
  attempt: number;
  /** HTTP status of the answer, when one came. */
  status: number | null;
  /** Why it did not succeed (one line, no secrets). */
  error: string | null;
  /** What it did (redeploy: the workloads patched). */
  detail: string | null;
  at: string;
  durationMs: number;
}

/** A notification as the API shows it. */
export interface NotificationView {
  id: string;
  kind: NotificationKind;
  target: string;
  event: string;
  /** Redacted: no user-info, query values replaced. */
  url: string;
  state: NotificationState;
  maxAttempts: number;
  createdAt: string;
  /** When the next attempt is due (pending only). */
  nextAttemptAt: string | null;
  attempts: AttemptView[];
}

/** The outcome of an attempt, applied together with its record. */
export interface AttemptRecord {
  attempt: number;
  status?: number;
  error?: string;
  detail?: string;
  at: string;
  durationMs: number;
  /** The row's new state; `pending` with `nextAt` schedules another attempt. */
  state: NotificationState;
  nextAt?: number;
}

interface Row {
  seq: number;
  id: string;
  build_id: string;
  project: string;
  kind: NotificationKind;
  target: string;
  key: string;
  dedupe: string;
  event: string;
  url: string;
  request: string;
  state: NotificationState;
  attempts: number;
  max_attempts: number;
  next_at: number;
  created_at: string;
}

interface AttemptRow {
  notification_id: string;
  attempt: number;
  status: number | null;
  error: string | null;
  detail: string | null;
  at: string;
  duration_ms: number;
}

function toRow(r: Row): NotificationRow {
  return {
    seq: r.seq,
    id: r.id,
    buildId: r.build_id,
    project: r.project,
    kind: r.kind,
    target: r.target,
    key: r.key,
    dedupe: r.dedupe,
    event: r.event,
    url: r.url,
    request: r.request,
    state: r.state,
    attempts: r.attempts,
    maxAttempts: r.max_attempts,
    nextAt: r.next_at,
    createdAt: r.created_at,
  };
}

/** The delivery tables. Open with {@link DeliveryStore.open}; all methods are synchronous. */
export class DeliveryStore {
  private readonly stmts = new Map<string, Statement>();

  private constructor(private readonly db: Db) {}

  /** Open the service database `file` (migrating it like the service's Store does). */
  static open(file: string): DeliveryStore {
    return new DeliveryStore(openDatabase(file));
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** Run `fn` in one write transaction (calls inside join it). */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  private stmt(sql: string): Statement {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.stmts.set(sql, s);
    }
    return s;
  }

  /** Queue a row; false when its `dedupe` was queued before (nothing written). */
  insert(n: NewNotification, now: Date = new Date()): boolean {
    const at = now.toISOString();
    const r = this.stmt(
      `INSERT INTO notifications (id, build_id, project, kind, target, key, dedupe, event, url, request, state,
         attempts, max_attempts, next_at, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?) ON CONFLICT (dedupe) DO NOTHING`,
    ).run(
      n.id,
      n.buildId,
      n.project,
      n.kind,
      n.target,
      n.key,
      n.dedupe,
      n.event,
      n.url,
      n.request,
      n.maxAttempts,
      n.nextAt,
      at,
      at,
    );
    return r.changes > 0;
  }

  /** Mark the pending rows of `key` older than `seq` superseded, except `keep` (attempts in flight). */
  supersedeOlder(key: string, seq: number, keep: ReadonlySet<string>): number {
    const rows = this.stmt(`SELECT id FROM notifications WHERE key = ? AND state = 'pending' AND seq < ?`).all(
      key,
      seq,
    ) as { id: string }[];
    let n = 0;
    for (const { id } of rows) {
      if (keep.has(id)) continue;
      n += this.stmt(
        `UPDATE notifications SET state = 'superseded', updated_at = ? WHERE id = ? AND state = 'pending'`,
      ).run(new Date().toISOString(), id).changes;
    }
    return n;
  }

  /** The row queued under `dedupe`. */
  byDedupe(dedupe: string): NotificationRow | undefined {
    const r = this.stmt('SELECT * FROM notifications WHERE dedupe = ?').get(dedupe) as Row | undefined;
    return r && toRow(r);
  }

  /** Whether a pending row of `key` was queued after `seq` (a newer status makes an older retry pointless). */
  hasNewerPending(key: string, seq: number): boolean {
    return (
      this.stmt(`SELECT 1 FROM notifications WHERE key = ? AND state = 'pending' AND seq > ? LIMIT 1`).get(key, seq) !==
      undefined
    );
  }

  /** Pending rows in `next_at` order (at most `limit`), due or not: the scheduler picks what it may run. */
  pending(limit = 200): NotificationRow[] {
    return (
      this.stmt(`SELECT * FROM notifications WHERE state = 'pending' ORDER BY next_at, seq LIMIT ?`).all(limit) as Row[]
    ).map(toRow);
  }

  /** Record an attempt of row `id` and apply its outcome, in one transaction (a superseded row stays so). */
  recordAttempt(id: string, rec: AttemptRecord): void {
    this.transaction(() => {
      const row = this.stmt('SELECT * FROM notifications WHERE id = ?').get(id) as Row | undefined;
      if (!row) throw new KilnError('NOT_FOUND', `notification ${id} not found`);
      this.stmt(
        `INSERT INTO notification_attempts (notification_id, build_id, kind, url, attempt, status, error, detail, at,
           duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        id,
        row.build_id,
        row.kind,
        redactTargetUrl(row.url),
        rec.attempt,
        rec.status ?? null,
        rec.error ?? null,
        rec.detail ?? null,
        rec.at,
        rec.durationMs,
      );
      const state = row.state === 'pending' ? rec.state : row.state;
      this.stmt(`UPDATE notifications SET attempts = ?, state = ?, next_at = ?, updated_at = ? WHERE id = ?`).run(
        rec.attempt,
        state,
        rec.nextAt ?? row.next_at,
        rec.at,
        id,
      );
    });
  }

  /** The notifications of a build with their attempts, oldest first; empty when there are none. */
  listForBuild(buildId: string): NotificationView[] {
    const rows = this.stmt('SELECT * FROM notifications WHERE build_id = ? ORDER BY seq').all(buildId) as Row[];
    if (rows.length === 0) return [];
    const attempts = this.stmt(
      `SELECT a.* FROM notification_attempts a WHERE a.build_id = ? ORDER BY a.notification_id, a.attempt, a.id`,
    ).all(buildId) as AttemptRow[];
    const byId = new Map<string, AttemptView[]>();
    for (const a of attempts) {
      const list = byId.get(a.notification_id) ?? [];
      list.push({
        attempt: a.attempt,
        status: a.status,
        error: a.error,
        detail: a.detail,
        at: a.at,
        durationMs: a.duration_ms,
      });
      byId.set(a.notification_id, list);
    }
    return rows.map((r) => ({
      id: r.id,
      kind: r.kind,
      target: r.target,
      event: r.event,
      url: redactTargetUrl(r.url),
      state: r.state,
      maxAttempts: r.max_attempts,
      createdAt: r.created_at,
      nextAttemptAt: r.state === 'pending' ? new Date(r.next_at).toISOString() : null,
      attempts: byId.get(r.id) ?? [],
    }));
  }

  /** Remember `buildId` (last seen in `phase`) until it is final. */
  watch(buildId: string, phase: string): void {
    this.stmt(
      `INSERT INTO notification_watch (build_id, phase) VALUES (?, ?) ON CONFLICT (build_id) DO UPDATE SET phase = ?`,
    ).run(buildId, phase, phase);
  }

  unwatch(buildId: string): void {
    this.stmt('DELETE FROM notification_watch WHERE build_id = ?').run(buildId);
  }

  /** Builds watched, with the phase last seen. */
  watched(): { buildId: string; phase: string }[] {
    return (
      this.stmt('SELECT build_id, phase FROM notification_watch').all() as { build_id: string; phase: string }[]
    ).map((r) => ({ buildId: r.build_id, phase: r.phase }));
  }

  /**
   * Forget finished notifications (and their attempts) of builds that no longer exist — retention removed them —
   * and watches of such builds. Pending rows are kept: they are still owed. Returns the rows removed.
   */
  prune(): number {
    return this.transaction(() => {
      this.stmt(
        'DELETE FROM notification_watch WHERE NOT EXISTS (SELECT 1 FROM builds b WHERE b.id = notification_watch.build_id)',
      ).run();
      return this.stmt(
        `DELETE FROM notifications WHERE state != 'pending'
           AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.id = notifications.build_id)`,
      ).run().changes;
    });
  }
}
