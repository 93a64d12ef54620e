/**
 * Row shapes of the service database and their conversion to the model's objects, plus the small pure helpers the
 * store needs (ids, cursors, canonical JSON, phase transitions). Kept apart from `store.ts` so the SQL the store
 * runs can be inspected (EXPLAIN QUERY PLAN in tests and benchmarks) without opening a Store.
 */
import { randomBytes } from 'node:crypto';
import { KilnError } from '../../errors.js';
import type { BuildQuery, ListedBuild } from '../core.js';
import type { Build, BuildStage, Phase, Trigger, BaseRecord, RebaseRecord } from '../model.js';

/** A `builds` row as better-sqlite3 returns it. */
export interface BuildRow {
  seq: number;
  id: string;
  project: string;
  image: string;
  number: number;
  group_id: string;
  ref: string;
  commit_sha: string | null;
  phase: Phase;
  reason: string | null;
  trigger_json: string;
  tags: string;
  digest: string | null;
  stages: string;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  /** Absent in listings (see {@link LIST_COLUMNS}). */
  changed_paths?: string | null;
  cancel_requested: number;
  attempt: number;
  /** JSON BaseRecord[] (migration 4); absent in listings. */
  bases?: string | null;
  /** JSON RebaseRecord (migration 6); absent in listings. */
  rebase?: string | null;
  /** The runner's state of an active build (migration 7); absent in listings. */
  runner_state?: string | null;
}

/** The model's Build of a row (JSON columns parsed; `changedPaths` only when recorded). */
export function toBuild(r: BuildRow): Build {
  const b: Build = { ...toListedBuild(r), stages: JSON.parse(r.stages) as BuildStage[] };
  if (typeof r.changed_paths === 'string') b.changedPaths = JSON.parse(r.changed_paths) as string[];
  if (typeof r.bases === 'string') b.bases = JSON.parse(r.bases) as BaseRecord[];
  if (typeof r.rebase === 'string') b.rebase = JSON.parse(r.rebase) as RebaseRecord;
  return b;
}

/**
 * Legal phase changes. A build moves forward only; final phases never change (a rerun is a new build). `building`
 * may end in `succeeded` directly for backends that push as part of their build (kaniko, buildah push).
 */
export const TRANSITIONS: Readonly<Record<Phase, readonly Phase[]>> = {
  queued: ['fetching', 'cancelled', 'failed'],
  fetching: ['building', 'failed', 'cancelled', 'timed-out'],
  building: ['pushing', 'succeeded', 'failed', 'cancelled', 'timed-out'],
  pushing: ['succeeded', 'failed', 'cancelled', 'timed-out'],
  succeeded: [],
  failed: [],
  cancelled: [],
  'timed-out': [],
};

/** Whether a build in phase `from` may move to `to` (staying in a non-final phase is allowed). */
export function canTransition(from: Phase, to: Phase): boolean {
  return (from === to && TRANSITIONS[from].length > 0) || TRANSITIONS[from].includes(to);
}

/**
 * A new record id: `<prefix>-<ms since epoch, base36, 9 digits>-<10 hex random>`. Ids sort by creation time (to the
 * millisecond) as text, stay short in URLs and log file names, and need no coordination between processes.
 */
export function newId(prefix: string, nowMs: number = Date.now()): string {
  return `${prefix}-${nowMs.toString(36).padStart(9, '0')}-${randomBytes(5).toString('hex')}`;
}

/** Build listings are paged by `seq` (unique, never reused, newest = largest): the cursor is its base64url. */
export function encodeCursor(seq: number): string {
  return Buffer.from(`s${seq}`).toString('base64url');
}

/** The `seq` of a cursor from {@link encodeCursor}; KilnError `CURSOR_INVALID` for anything else. */
export function decodeCursor(cursor: string): number {
  const text = Buffer.from(cursor, 'base64url').toString();
  const m = /^s([1-9][0-9]{0,15})$/.exec(text);
  if (!m?.[1] || encodeCursor(Number(m[1])) !== cursor) {
    throw new KilnError('CURSOR_INVALID', `invalid page cursor '${cursor}'`, {
      hint: "pass the 'next' value of the previous page unchanged",
    });
  }
  return Number(m[1]);
}

export const DEFAULT_PAGE = 50;
export const MAX_PAGE = 500;

/**
 * The columns a listing reads: not `changed_paths` (thousands of paths for one push), `stages` (~20 per build:
 * most of a page's bytes and JSON work), `bases` and `rebase`; they matter only to whoever looks at one build
 * (`getBuild`). See {@link toListedBuild}.
 */
export const LIST_COLUMNS =
  'seq, id, project, image, number, group_id, ref, commit_sha, phase, reason, trigger_json, tags, digest, ' +
  'created_at, started_at, finished_at, cancel_requested';

/** A listing's row (the {@link LIST_COLUMNS}). */
export type ListedRow = Omit<BuildRow, 'stages' | 'changed_paths' | 'attempt' | 'bases' | 'rebase'>;

/** The listing's view of a row read with {@link LIST_COLUMNS}: a Build without stages (see core.ts ListedBuild). */
export function toListedBuild(r: ListedRow): ListedBuild {
  return {
    id: r.id,
    project: r.project,
    image: r.image,
    number: r.number,
    group: r.group_id,
    ref: r.ref,
    commit: r.commit_sha,
    phase: r.phase,
    reason: r.reason,
    trigger: JSON.parse(r.trigger_json) as Trigger,
    tags: JSON.parse(r.tags) as string[],
    digest: r.digest,
    createdAt: r.created_at,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    cancelRequested: r.cancel_requested !== 0,
  };
}

/**
 * The SELECT behind `Store.listBuilds` (newest first, keyset-paged by `seq`, one row more than the page to know
 * whether a next page exists). Each filter combination has an index whose last column is `seq`, so SQLite walks
 * the index backwards from the cursor and stops after `limit + 1` rows — no sort, no scan of older history.
 * Image without project walks the table itself (rowid = seq) backwards.
 */
export function listBuildsSql(q: BuildQuery): { sql: string; params: (string | number)[]; limit: number } {
  const where: string[] = [];
  const params: (string | number)[] = [];
  if (q.project !== undefined) {
    where.push('project = ?');
    params.push(q.project);
  }
  if (q.phase !== undefined) {
    where.push('phase = ?');
    params.push(q.phase);
  }
  if (q.image !== undefined) {
    where.push('image = ?');
    params.push(q.image);
  }
  if (q.cursor !== undefined) {
    where.push('seq < ?');
    params.push(decodeCursor(q.cursor));
  }
  const limit = Math.min(MAX_PAGE, Math.max(1, Math.floor(q.limit ?? DEFAULT_PAGE) || DEFAULT_PAGE));
  const sql =
    `SELECT ${LIST_COLUMNS} FROM builds${where.length ? ` WHERE ${where.join(' AND ')}` : ''}` +
    ` ORDER BY seq DESC LIMIT ?`;
  params.push(limit + 1);
  return { sql, params, limit };
}

/** The queue in order (`Store.queued`): served by the `builds_phase (phase, seq)` index. */
export const QUEUED_SQL = "SELECT * FROM builds WHERE phase = 'queued' ORDER BY seq";

/**
 * JSON with object keys sorted and `undefined` members dropped: equal values give equal text whatever the key
 * order, so a project re-applied from YAML is recognised as unchanged.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v === null || typeof v !== 'object') return v;
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(v).sort()) {
    const x = (v as Record<string, unknown>)[k];
    if (x !== undefined) out[k] = sortKeys(x);
  }
  return out;
}

/** Upper bounds (seconds) of the build duration histogram buckets kept per project and final phase. */
export const DURATION_BUCKETS: readonly number[] = [10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];
