/**
 * The build service's persistent state in one SQLite file: projects, builds (the queue is the builds in phase
 * `queued`), API tokens, webhook deliveries and duration statistics. Synchronous (better-sqlite3): every call is a
 * few index lookups, far cheaper than an event-loop round trip, and a sync call cannot interleave with another
 * request's writes. Several processes may open the same file at once (the service and `kiln serve token create`):
 * WAL mode lets readers run beside the writer and writers wait up to 5 s for each other. Durability: see `db.ts`.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Statement } from 'better-sqlite3';
import { KilnError } from '../../errors.js';
import type { BuildPage, BuildQuery, Principal } from '../core.js';
import {
  ACTIVE_PHASES,
  FINAL_PHASES,
  PHASES,
  type Build,
  type BuildStage,
  type Phase,
  type Project,
  type RetentionPolicy,
  type Role,
  type Trigger,
} from '../model.js';
import type { BaseRecord, RebaseRecord } from '../model.js';
import { FINAL_PHASES_SQL, openDatabase, type Db } from './db.js';
import {
  DURATION_BUCKETS,
  QUEUED_SQL,
  canTransition,
  canonicalJson,
  encodeCursor,
  listBuildsSql,
  newId,
  toBuild,
  toListedBuild,
  type BuildRow,
  type ListedRow,
} from './rows.js';

/** What a trigger asks for: one build of one image. The store assigns everything else. */
export interface NewBuild {
  project: string;
  image: string;
  /** Full ref (`refs/heads/main`), or `` when built by commit. */
  ref: string;
  commit: string | null;
  trigger: Trigger;
  changedPaths?: string[];
  /** 1 for the automatic rerun of a build a crash interrupted (the service reruns once), else 0. */
  attempt?: number;
}

/** The fields a runner changes while a build runs. Timestamps default to now on entering active/final phases. */
export type BuildPatch = Partial<
  Pick<
    Build,
    'phase' | 'reason' | 'commit' | 'tags' | 'digest' | 'stages' | 'startedAt' | 'finishedAt' | 'changedPaths'
  >
>;

/**
 * Given the queued builds (seq order) and one incoming build, the ids of queued builds the incoming one replaces —
 * the queue policy's `coalesceOnEnqueue`, passed in so the store stays free of policy.
 */
export type SupersedeFn = (queued: readonly Build[], incoming: NewBuild) => readonly string[];

/** Per project and final phase: builds finished, and the durations (start to finish) of those that started. */
export interface BuildStats {
  project: string;
  phase: Phase;
  finished: number;
  /** Histogram over {@link DURATION_BUCKETS}: `buckets[i]` counts durations <= bound i (cumulative). */
  durations: { count: number; sumSeconds: number; buckets: number[] };
}

/** A token as listed (never its hash or value). */
export interface TokenInfo {
  id: string;
  name: string;
  role: Role;
  createdAt: string;
  lastUsedAt: string | null;
  expiresAt: string | null;
  revoked: boolean;
}

/** A verified token's identity. */
export interface VerifiedToken extends Principal {
  id: string;
}

export interface NewDelivery {
  project: string;
  /** `github`, `gitlab`, … */
  forge: string;
  /** The forge's delivery id (GitHub `X-GitHub-Delivery`, …). */
  deliveryId: string;
  event: string;
  ref?: string | null;
  commit?: string | null;
  /** What the receiver did with it (`queued`, `ignored: branch filter`, …). */
  outcome: string;
  buildGroup?: string | null;
  receivedAt?: string;
}

export interface Delivery {
  id: number;
  project: string;
  forge: string;
  deliveryId: string;
  event: string;
  ref: string | null;
  commit: string | null;
  outcome: string;
  receivedAt: string;
  buildGroup: string | null;
}

interface TokenRow {
  id: string;
  name: string;
  role: Role;
  hash: string;
  created_at: string;
  last_used_at: string | null;
  expires_at: string | null;
  revoked: number;
}

/** A verification kept by {@link Store.verifyToken}: valid while nothing could have changed the token's row. */
interface CachedToken {
  token: VerifiedToken;
  /** ms since the epoch; Infinity: never. */
  expiresAt: number;
  /** `last_used_at` as last written (ms since the epoch, 0: never). */
  lastUsed: number;
  dataVersion: number;
  generation: number;
}

/** Verified tokens kept at most (a full cache is emptied: only a flood of distinct valid tokens gets there). */
const VERIFIED_MAX = 1000;

interface DeliveryRow {
  id: number;
  project: string;
  forge: string;
  delivery_id: string;
  event: string;
  ref: string | null;
  commit_sha: string | null;
  outcome: string;
  received_at: string;
  build_group: string | null;
}

interface StatsRow {
  project: string;
  phase: Phase;
  finished: number;
  timed: number;
  duration_sum: number;
  buckets: string;
}

const TOKEN_PREFIX = 'kiln_';
/** `last_used_at` is written at most this often per token (it costs a write transaction on a read path). */
const LAST_USED_RESOLUTION_MS = 60_000;
const ACTIVE_SQL = ACTIVE_PHASES.map((p) => `'${p}'`).join(', ');

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function nowIso(): string {
  return new Date().toISOString();
}

function notFound(what: string): KilnError {
  return new KilnError('NOT_FOUND', `${what} not found`);
}

/** The service database. Open with {@link Store.open}; all methods are synchronous. */
export class Store {
  private readonly stmts = new Map<string, Statement>();
  /** The last `data_version` read and when (see changeMark). */
  private dv = { value: 0, at: -Infinity };
  /** Bumped by this connection's token writes; with `data_version`, what a cached verification is valid under. */
  private tokenGeneration = 0;
  /** Verified tokens (see verifyToken), by token. */
  private readonly verified = new Map<string, CachedToken>();

  private constructor(private readonly db: Db) {}

  /**
   * Open (or create, with its directories) the database at `file` and migrate it. Throws `STORE_TOO_NEW` when a
   * newer kiln wrote it, `STORE_OPEN_FAILED` when it cannot be opened.
   */
  static open(file: string): Store {
    return new Store(openDatabase(file));
  }

  /** Close the connection (idempotent). The last connection to close checkpoints and removes the WAL. */
  close(): void {
    if (this.db.open) this.db.close();
  }

  /**
   * Run `fn` in one write transaction (BEGIN IMMEDIATE: the write lock is taken up front, so a read-then-write
   * cannot fail half-way on another process's commit). Store calls inside it join it. Throwing rolls back.
   */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  /**
   * A value that differs whenever the database may hold something new: rows this connection changed
   * (`total_changes()`) and commits of other connections (`data_version`). Equal marks mean every read in between
   * would give the same answer — what lets the API serve a build listing again without a query (many clients
   * polling one page). Conservative: any write, to any table, changes it.
   *
   * `notBefore` (a `performance.now()` time, e.g. when a request came in): a `data_version` read at or after it
   * is reused instead of read again. Why: reading it takes WAL read locks (tens of µs, most of what an API request
   * cost the database), and the API's auth already read it for the same request; a value read after the request
   * arrived is as good for answering it as a new one. `total_changes()` (this connection's writes) is always
   * current and costs no lock.
   */
  changeMark(notBefore?: number): string {
    const t = this.get<{ t: number }>('SELECT total_changes() AS t')?.t ?? 0;
    return `${t}.${this.dataVersion(notBefore)}`;
  }

  /** `PRAGMA data_version` (other connections' commits), reused when read at or after `notBefore`. */
  private dataVersion(notBefore: number | undefined): number {
    if (notBefore !== undefined && this.dv.at >= notBefore) return this.dv.value;
    // the time before the read: the value is at least as fresh as that
    const at = performance.now();
    const value = this.get<{ d: number }>('SELECT data_version AS d FROM pragma_data_version')?.d ?? 0;
    this.dv = { value, at };
    return value;
  }

  private stmt(sql: string): Statement {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.stmts.set(sql, s);
    }
    return s;
  }

  private get<T>(sql: string, ...params: unknown[]): T | undefined {
    return this.stmt(sql).get(...params) as T | undefined;
  }

  private all<T>(sql: string, ...params: unknown[]): T[] {
    return this.stmt(sql).all(...params) as T[];
  }

  private run(sql: string, ...params: unknown[]): number {
    return this.stmt(sql).run(...params).changes;
  }

  // ---- projects ----

  /** Insert or replace a project's spec. Compared as canonical JSON, so key order alone is `unchanged`. */
  upsertProject(p: Project): 'created' | 'updated' | 'unchanged' {
    const spec = canonicalJson(p);
    return this.transaction(() => {
      const row = this.get<{ spec: string }>('SELECT spec FROM projects WHERE name = ?', p.name);
      const now = nowIso();
      if (!row) {
        this.run(
          'INSERT INTO projects (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?)',
          p.name,
          spec,
          now,
          now,
        );
        return 'created';
      }
      if (row.spec === spec) return 'unchanged';
      this.run('UPDATE projects SET spec = ?, updated_at = ? WHERE name = ?', spec, now, p.name);
      return 'updated';
    });
  }

  getProject(name: string): Project | undefined {
    const row = this.get<{ spec: string }>('SELECT spec FROM projects WHERE name = ?', name);
    return row ? (JSON.parse(row.spec) as Project) : undefined;
  }

  /** All projects, by name. */
  listProjects(): Project[] {
    return this.all<{ spec: string }>('SELECT spec FROM projects ORDER BY name').map(
      (r) => JSON.parse(r.spec) as Project,
    );
  }

  /**
   * Delete a project with all its builds (queued, running and history), deliveries and statistics, in one
   * transaction. Returns the deleted builds' ids (the caller removes their log files and stops running ones first),
   * or undefined when the project is unknown. A runner still holding one of these builds gets `NOT_FOUND` on its
   * next update. History is not kept for a deleted project: a re-created project starts again at build number 1.
   */
  deleteProject(name: string): string[] | undefined {
    return this.transaction(() => {
      if (!this.get('SELECT 1 FROM projects WHERE name = ?', name)) return undefined;
      const ids = this.all<{ id: string }>('SELECT id FROM builds WHERE project = ? ORDER BY seq', name).map(
        (r) => r.id,
      );
      this.run('DELETE FROM projects WHERE name = ?', name);
      return ids;
    });
  }

  /** Reserve the project's next build number (atomic; inside {@link createBuilds}' transaction when called there). */
  nextBuildNumber(project: string): number {
    const row = this.get<{ n: number }>(
      'UPDATE projects SET next_build_number = next_build_number + 1 WHERE name = ? RETURNING next_build_number - 1 AS n',
      project,
    );
    if (!row) throw notFound(`project '${project}'`);
    return row.n;
  }

  // ---- builds ----

  /** Create queued builds, one group for all, in one transaction. See {@link enqueue}. */
  createBuilds(items: NewBuild[]): Build[] {
    return this.enqueue(items).builds;
  }

  /**
   * Create queued builds in one transaction: each gets an id, its project's next number, the call's group id, the
   * next queue position (`seq`) and `createdAt`. With `supersede`, each incoming build first asks which queued
   * builds it replaces; those become `cancelled` with reason `superseded by <new id>` in the same transaction (the
   * builds created earlier in this call count as queued for the later ones). Throws `NOT_FOUND` for an unknown
   * project (nothing is created then).
   */
  enqueue(items: NewBuild[], supersede?: SupersedeFn): { builds: Build[]; superseded: Build[] } {
    if (items.length === 0) return { builds: [], superseded: [] };
    return this.transaction(() => {
      const nowMs = Date.now();
      const now = new Date(nowMs).toISOString();
      const group = newId('g', nowMs);
      let queued = supersede ? this.queued() : [];
      const builds: Build[] = [];
      const superseded: Build[] = [];
      for (const item of items) {
        const replaces = supersede ? supersede(queued, item) : [];
        const id = newId('b', nowMs);
        const number = this.nextBuildNumber(item.project);
        const row = this.get<BuildRow>(
          `INSERT INTO builds (id, project, image, number, group_id, ref, commit_sha, phase, trigger_json,
             created_at, changed_paths, attempt)
           VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?) RETURNING *`,
          id,
          item.project,
          item.image,
          number,
          group,
          item.ref,
          item.commit,
          JSON.stringify(item.trigger),
          now,
          item.changedPaths ? JSON.stringify(item.changedPaths) : null,
          item.attempt ?? 0,
        ) as BuildRow;
        const build = toBuild(row);
        builds.push(build);
        if (replaces.length) {
          const gone = this.coalesce(replaces, id);
          superseded.push(...gone);
          const goneIds = new Set(gone.map((b) => b.id));
          queued = queued.filter((b) => !goneIds.has(b.id));
        }
        if (supersede) queued.push(build);
      }
      return { builds, superseded };
    });
  }

  /**
   * Cancel the given builds that are still queued, with reason `superseded by <byId>` (SerialLatestOnly: a newer
   * build of the same image and ref replaces them). Builds no longer queued are left alone. Returns the cancelled.
   */
  coalesce(ids: readonly string[], byId: string): Build[] {
    return this.transaction(() => {
      const out: Build[] = [];
      for (const id of ids) {
        const row = this.row(id);
        if (row?.phase !== 'queued') continue;
        out.push(this.write(row, { phase: 'cancelled', reason: `superseded by ${byId}` }));
      }
      return out;
    });
  }

  private row(id: string): BuildRow | undefined {
    return this.get<BuildRow>('SELECT * FROM builds WHERE id = ?', id);
  }

  getBuild(id: string): Build | undefined {
    const row = this.row(id);
    return row ? toBuild(row) : undefined;
  }

  /**
   * A page of builds, newest first, filtered by project / phase / image. `next` is an opaque cursor for the older
   * page: builds created after the first page was read never shift later pages. `limit` is clamped to 1–500
   * (default 50); a malformed cursor throws `CURSOR_INVALID`. Listed builds leave out `stages`, `changedPaths`,
   * `bases` and `rebase` (see LIST_COLUMNS); `getBuild` has them. The cost is an index walk of `limit` rows whatever the history.
   */
  listBuilds(q: BuildQuery = {}): BuildPage {
    const { sql, params, limit } = listBuildsSql(q);
    const rows = this.all<ListedRow>(sql, ...params);
    const more = rows.length > limit;
    if (more) rows.length = limit;
    const last = rows[rows.length - 1];
    return { builds: rows.map(toListedBuild), next: more && last ? encodeCursor(last.seq) : null };
  }

  /**
   * Apply a runner's change to a build. A phase change must be legal (see `TRANSITIONS` in `rows.ts`); a final
   * build takes no change at all. Entering an active phase sets `startedAt`, entering a final one `finishedAt`
   * (unless the patch gives them). Throws `NOT_FOUND`, or `BUILD_CONFLICT` (e.g. the build was cancelled meanwhile).
   */
  updateBuild(id: string, patch: BuildPatch): Build {
    return this.transaction(() => {
      const row = this.row(id);
      if (!row) throw notFound(`build '${id}'`);
      return this.write(row, patch);
    });
  }

  /** Validate and write a patch of a row read in the current transaction. */
  private write(row: BuildRow, patch: BuildPatch, cancelRequested = row.cancel_requested !== 0): Build {
    const b = toBuild(row);
    const to = patch.phase ?? b.phase;
    if (!canTransition(b.phase, to)) {
      throw new KilnError(
        'BUILD_CONFLICT',
        to === b.phase
          ? `build ${b.id} already ended (${b.phase})`
          : `build ${b.id} cannot go from ${b.phase} to ${to}`,
      );
    }
    const now = nowIso();
    const next: Build = { ...b, phase: to };
    for (const [k, v] of Object.entries(patch)) if (v !== undefined) Object.assign(next, { [k]: v });
    if (next.startedAt === null && ACTIVE_PHASES.includes(to)) next.startedAt = now;
    if (next.finishedAt === null && FINAL_PHASES.includes(to)) next.finishedAt = now;
    this.run(
      `UPDATE builds SET phase = ?, reason = ?, commit_sha = ?, tags = ?, digest = ?, stages = ?, started_at = ?,
         finished_at = ?, changed_paths = ?, cancel_requested = ? WHERE seq = ?`,
      next.phase,
      next.reason,
      next.commit,
      JSON.stringify(next.tags),
      next.digest,
      JSON.stringify(next.stages),
      next.startedAt,
      next.finishedAt,
      next.changedPaths ? JSON.stringify(next.changedPaths) : null,
      cancelRequested ? 1 : 0,
      row.seq,
    );
    next.cancelRequested = cancelRequested;
    if (FINAL_PHASES.includes(to)) {
      this.count(next);
      if (row.runner_state != null) this.run('UPDATE builds SET runner_state = NULL WHERE seq = ?', row.seq);
    }
    return next;
  }

  /** Record a build's stages (allowed in any phase: a runner may flush the last stage after the final phase). */
  setStages(id: string, stages: BuildStage[]): void {
    if (this.run('UPDATE builds SET stages = ? WHERE id = ?', JSON.stringify(stages), id) === 0) {
      throw notFound(`build '${id}'`);
    }
  }

  /**
   * A user cancels a build. A queued build becomes `cancelled` at once (nothing runs yet; a runner picking it
   * meanwhile gets `BUILD_CONFLICT` on its first transition). An active build gets `cancelRequested` and `reason`:
   * its runner stops it and moves it to `cancelled`. Asking twice is harmless. Throws `NOT_FOUND`, or
   * `BUILD_CONFLICT` when the build already ended.
   */
  requestCancel(id: string, reason = 'cancelled'): Build {
    return this.transaction(() => {
      const row = this.row(id);
      if (!row) throw notFound(`build '${id}'`);
      if (row.phase === 'queued') return this.write(row, { phase: 'cancelled', reason }, true);
      return this.write(row, row.cancel_requested ? {} : { reason }, true);
    });
  }

  /**
   * Record what the FROMs of a build resolved to and whether its image may be rebased (the base-image trigger
   * watches succeeded builds' bases and rebases the rebasable ones).
   */
  setBases(id: string, bases: readonly BaseRecord[], rebase?: RebaseRecord): void {
    const r = rebase ? JSON.stringify(rebase) : null;
    if (this.run('UPDATE builds SET bases = ?, rebase = ? WHERE id = ?', JSON.stringify(bases), r, id) === 0) {
      throw notFound(`build '${id}'`);
    }
  }

  /**
   * The latest succeeded build of every (project, image, ref) that has recorded bases: the images a base change
   * concerns, and the commit each was last built from.
   */
  baseDependents(): Build[] {
    return this.all<BuildRow>(
      `SELECT * FROM builds WHERE seq IN (
         SELECT max(seq) FROM builds WHERE phase = 'succeeded' AND bases IS NOT NULL GROUP BY project, image, ref)
       ORDER BY seq`,
    ).map(toBuild);
  }

  /** The newest build of a (project, image, ref), whatever its phase. */
  newestOf(project: string, image: string, ref: string): Build | undefined {
    const row = this.get<BuildRow>(
      'SELECT * FROM builds WHERE project = ? AND image = ? AND ref = ? ORDER BY seq DESC LIMIT 1',
      project,
      image,
      ref,
    );
    return row && toBuild(row);
  }

  /** Builds waiting to run, in queue order. */
  queued(): Build[] {
    return this.all<BuildRow>(QUEUED_SQL).map(toBuild);
  }

  /** Builds running (fetching, building, pushing), in queue order. */
  active(): Build[] {
    return this.all<BuildRow>(`SELECT * FROM builds WHERE phase IN (${ACTIVE_SQL}) ORDER BY seq`).map(toBuild);
  }

  /** Number of builds in each phase (every phase present). */
  countByPhase(): Record<Phase, number> {
    const out = Object.fromEntries(PHASES.map((p) => [p, 0])) as Record<Phase, number>;
    for (const r of this.all<{ phase: Phase; n: number }>('SELECT phase, count(*) AS n FROM builds GROUP BY phase')) {
      out[r.phase] = r.n;
    }
    return out;
  }

  /**
   * On start-up: every build still active was interrupted by the previous process's end. They become `failed`
   * with `reason` (or their own in `reasons`) and `finishedAt` now; returned so the caller can enqueue reruns
   * (once: a build whose trigger is `retry` was already one). Builds in `keep` stay active: their runner
   * re-attached to them (a build pod still running).
   */
  failInterrupted(
    reason = 'interrupted',
    o: { keep?: ReadonlySet<string>; reasons?: ReadonlyMap<string, string> } = {},
  ): Build[] {
    return this.transaction(() =>
      this.all<BuildRow>(`SELECT * FROM builds WHERE phase IN (${ACTIVE_SQL}) ORDER BY seq`)
        .filter((row) => !o.keep?.has(row.id))
        .map((row) => {
          this.run('UPDATE builds SET runner_state = NULL WHERE seq = ?', row.seq);
          return this.write(row, { phase: 'failed', reason: o.reasons?.get(row.id) ?? reason });
        }),
    );
  }

  /**
   * Record what the runner needs to find an active build again after a restart (opaque text: the Kubernetes
   * executor's pod and log offset). Cleared when the build ends.
   */
  setRunnerState(id: string, state: string | null): void {
    if (this.run('UPDATE builds SET runner_state = ? WHERE id = ?', state, id) === 0) throw notFound(`build '${id}'`);
  }

  /** The runner state of a build (null when none was recorded). */
  runnerState(id: string): string | null {
    return this.get<{ s: string | null }>('SELECT runner_state AS s FROM builds WHERE id = ?', id)?.s ?? null;
  }

  /**
   * Delete the project's final builds beyond the policy: successful ones beyond the newest `successfulCount`,
   * failed ones (failed, timed-out and cancelled together — all are "did not produce an image") beyond the newest
   * `failedCount`, and with `maxAgeDays > 0` every final build that finished longer ago than that, whatever the
   * counts. Queued and running builds are never deleted. Returns the deleted ids, oldest first (the caller
   * removes their log files).
   */
  applyRetention(project: string, policy: RetentionPolicy, now: Date = new Date()): string[] {
    return this.transaction(() => {
      const ids = new Map<number, string>();
      const beyond = (phases: string, keep: number): void => {
        const rows = this.all<{ seq: number; id: string }>(
          `SELECT seq, id FROM builds WHERE project = ? AND phase IN (${phases}) ORDER BY seq DESC LIMIT -1 OFFSET ?`,
          project,
          Math.max(0, keep),
        );
        for (const r of rows) ids.set(r.seq, r.id);
      };
      beyond("'succeeded'", policy.successfulCount);
      beyond("'failed', 'cancelled', 'timed-out'", policy.failedCount);
      if (policy.maxAgeDays > 0) {
        const cutoff = new Date(now.getTime() - policy.maxAgeDays * 86_400_000).toISOString();
        const old = this.all<{ seq: number; id: string }>(
          `SELECT seq, id FROM builds WHERE project = ? AND phase IN (${FINAL_PHASES_SQL})
             AND coalesce(finished_at, created_at) < ?`,
          project,
          cutoff,
        );
        for (const r of old) ids.set(r.seq, r.id);
      }
      const seqs = [...ids.keys()].sort((a, b) => a - b);
      for (const seq of seqs) this.run('DELETE FROM builds WHERE seq = ?', seq);
      return seqs.map((s) => ids.get(s) ?? '');
    });
  }

  /** Count a build that just became final into its project's statistics (inside the write's transaction). */
  private count(b: Build): void {
    const row = this.get<StatsRow>('SELECT * FROM build_stats WHERE project = ? AND phase = ?', b.project, b.phase);
    const buckets = row ? (JSON.parse(row.buckets) as number[]) : DURATION_BUCKETS.map(() => 0);
    let timed = row?.timed ?? 0;
    let sum = row?.duration_sum ?? 0;
    if (b.startedAt && b.finishedAt) {
      const seconds = Math.max(0, (Date.parse(b.finishedAt) - Date.parse(b.startedAt)) / 1000);
      timed++;
      sum += seconds;
      const i = DURATION_BUCKETS.findIndex((bound) => seconds <= bound);
      if (i >= 0) buckets[i] = (buckets[i] ?? 0) + 1;
    }
    this.run(
      `INSERT INTO build_stats (project, phase, finished, timed, duration_sum, buckets) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (project, phase) DO UPDATE SET finished = excluded.finished, timed = excluded.timed,
         duration_sum = excluded.duration_sum, buckets = excluded.buckets`,
      b.project,
      b.phase,
      (row?.finished ?? 0) + 1,
      timed,
      sum,
      JSON.stringify(buckets),
    );
  }

  /**
   * Finished-build counters and duration histograms per project and final phase, since the project was created
   * (kept apart from the builds, so retention never makes a counter go down). Input for Prometheus metrics.
   */
  buildStats(): BuildStats[] {
    return this.all<StatsRow>('SELECT * FROM build_stats ORDER BY project, phase').map((r) => {
      let acc = 0;
      const buckets = (JSON.parse(r.buckets) as number[]).map((n) => (acc += n));
      return {
        project: r.project,
        phase: r.phase,
        finished: r.finished,
        durations: { count: r.timed, sumSeconds: r.duration_sum, buckets },
      };
    });
  }

  // ---- tokens ----

  /**
   * Create an API token: `kiln_` + 32 random bytes (base64url). Only its SHA-256 is stored — the token is shown
   * once, to its creator. Throws `OPTION_INVALID` for an empty name, an unknown role or an expiry not in the future.
   */
  createToken(name: string, role: Role, expiresAt?: string | Date): { id: string; token: string } {
    if (name.trim() === '') throw new KilnError('OPTION_INVALID', 'a token needs a name');
    if (role !== 'admin' && role !== 'viewer') {
      throw new KilnError('OPTION_INVALID', `unknown token role '${String(role)}'`, { hint: 'use admin or viewer' });
    }
    let expires: string | null = null;
    if (expiresAt !== undefined) {
      const t = new Date(expiresAt).getTime();
      if (Number.isNaN(t) || t <= Date.now()) {
        throw new KilnError('OPTION_INVALID', `token expiry '${String(expiresAt)}' is not a future date`, {
          hint: 'give an ISO date such as 2030-01-31 or 2030-01-31T12:00:00Z',
        });
      }
      expires = new Date(t).toISOString();
    }
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const id = newId('t');
    this.run(
      'INSERT INTO tokens (id, name, role, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)',
      id,
      name,
      role,
      sha256(token),
      nowIso(),
      expires,
    );
    return { id, token };
  }

  /**
   * The identity of a valid token (known, not revoked, not expired), else undefined. Looked up by its SHA-256
   * (an indexed equality on a hash leaks nothing useful through timing). Records `lastUsedAt`, at most once a
   * minute per token, best effort (a busy database never fails a request over it).
   *
   * A verified token is kept (in memory only, keyed by the token: the process holds each request's token anyway)
   * and served again while `data_version` shows no other connection's commit and this connection wrote no token —
   * so a revocation, from here or from `kiln serve token revoke`, counts at once, while the hundred requests a
   * second of polling clients cost no token query and no hashing each. `notBefore`: see {@link changeMark}.
   * Unknown or refused tokens are never kept (a token created a moment ago is looked up).
   */
  verifyToken(token: string, now: Date = new Date(), notBefore?: number): VerifiedToken | undefined {
    if (!token.startsWith(TOKEN_PREFIX) || token.length > 200) return undefined;
    const dataVersion = this.dataVersion(notBefore);
    let hit = this.verified.get(token);
    if (hit && (hit.dataVersion !== dataVersion || hit.generation !== this.tokenGeneration)) {
      this.verified.delete(token);
      hit = undefined;
    }
    if (!hit) {
      const row = this.get<TokenRow>('SELECT * FROM tokens WHERE hash = ?', sha256(token));
      if (!row || row.revoked) return undefined;
      hit = {
        token: { id: row.id, name: row.name, role: row.role },
        expiresAt: row.expires_at === null ? Infinity : Date.parse(row.expires_at),
        lastUsed: row.last_used_at === null ? 0 : Date.parse(row.last_used_at),
        dataVersion,
        generation: this.tokenGeneration,
      };
      if (this.verified.size >= VERIFIED_MAX) this.verified.clear();
      this.verified.set(token, hit);
    }
    if (hit.expiresAt <= now.getTime()) return undefined;
    if (now.getTime() - hit.lastUsed >= LAST_USED_RESOLUTION_MS) {
      hit.lastUsed = now.getTime();
      try {
        this.run('UPDATE tokens SET last_used_at = ? WHERE id = ?', now.toISOString(), hit.token.id);
      } catch {
        // SQLITE_BUSY after busy_timeout: the next request records it.
      }
    }
    return { ...hit.token };
  }

  /** Every token, oldest first, revoked and expired ones included. */
  listTokens(): TokenInfo[] {
    return this.all<TokenRow>('SELECT * FROM tokens ORDER BY created_at, id').map((r) => ({
      id: r.id,
      name: r.name,
      role: r.role,
      createdAt: r.created_at,
      lastUsedAt: r.last_used_at,
      expiresAt: r.expires_at,
      revoked: r.revoked !== 0,
    }));
  }

  /** Revoke a token (kept for the audit trail); false when the id is unknown. */
  revokeToken(id: string): boolean {
    this.tokenGeneration++;
    return this.run('UPDATE tokens SET revoked = 1 WHERE id = ?', id) > 0;
  }

  // ---- webhook deliveries ----

  /**
   * Record a webhook delivery for a project. Returns undefined when (forge, delivery id, project) was recorded
   * before — the insert is the duplicate check, so two copies of one delivery racing each other yield one build
   * group. Throws `NOT_FOUND` for an unknown project.
   */
  recordDelivery(d: NewDelivery): Delivery | undefined {
    return this.transaction(() => {
      if (!this.get('SELECT 1 FROM projects WHERE name = ?', d.project)) throw notFound(`project '${d.project}'`);
      const row = this.get<DeliveryRow>(
        `INSERT INTO deliveries (project, forge, delivery_id, event, ref, commit_sha, outcome, received_at, build_group)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (forge, delivery_id, project) DO NOTHING RETURNING *`,
        d.project,
        d.forge,
        d.deliveryId,
        d.event,
        d.ref ?? null,
        d.commit ?? null,
        d.outcome,
        d.receivedAt === undefined ? nowIso() : new Date(d.receivedAt).toISOString(),
        d.buildGroup ?? null,
      );
      return row ? toDelivery(row) : undefined;
    });
  }

  /** Set a recorded delivery's outcome (and the group of builds it made) once it was handled. */
  setDeliveryOutcome(id: number, outcome: string, buildGroup: string | null = null): void {
    if (this.run('UPDATE deliveries SET outcome = ?, build_group = ? WHERE id = ?', outcome, buildGroup, id) === 0) {
      throw notFound(`delivery ${id}`);
    }
  }

  hasDelivery(forge: string, deliveryId: string, project: string): boolean {
    return (
      this.get(
        'SELECT 1 FROM deliveries WHERE forge = ? AND delivery_id = ? AND project = ?',
        forge,
        deliveryId,
        project,
      ) !== undefined
    );
  }

  /** The project's most recent deliveries, newest first. */
  listDeliveries(project: string, limit = 50): Delivery[] {
    const n = Math.min(MAX_DELIVERIES_PAGE, Math.max(1, Math.floor(limit) || 50));
    return this.all<DeliveryRow>('SELECT * FROM deliveries WHERE project = ? ORDER BY id DESC LIMIT ?', project, n).map(
      toDelivery,
    );
  }

  /** Keep the newest `keep` deliveries of a project (they are diagnostics, not history); returns how many went. */
  pruneDeliveries(project: string, keep = 1000): number {
    return this.run(
      `DELETE FROM deliveries WHERE project = ? AND id <= coalesce(
         (SELECT id FROM deliveries WHERE project = ? ORDER BY id DESC LIMIT 1 OFFSET ?), -1)`,
      project,
      project,
      Math.max(0, keep),
    );
  }

  // ---- triggers: delivery details, rejected deliveries, polling state ----

  /** A recorded delivery with its detail (the JSON a redelivery re-runs), or undefined. */
  getDelivery(id: number): StoredDelivery | undefined {
    const row = this.get<DeliveryRow & { detail: string | null }>('SELECT * FROM deliveries WHERE id = ?', id);
    return row && { ...toDelivery(row), detail: row.detail };
  }

  /** The delivery recorded for (forge, delivery id, project), or undefined. */
  findDelivery(forge: string, deliveryId: string, project: string): StoredDelivery | undefined {
    const row = this.get<{ id: number }>(
      'SELECT id FROM deliveries WHERE forge = ? AND delivery_id = ? AND project = ?',
      forge,
      deliveryId,
      project,
    );
    return row && this.getDelivery(row.id);
  }

  /** Store what a redelivery of `id` needs (JSON; never the request body). */
  setDeliveryDetail(id: number, detail: string | null): void {
    if (this.run('UPDATE deliveries SET detail = ? WHERE id = ?', detail, id) === 0) throw notFound(`delivery ${id}`);
  }

  /**
   * Take a delivery whose handling failed (`error: …`) for another attempt: sets its outcome to `received` and
   * returns true, atomically, so of two copies arriving at once only one retries. False for any other outcome.
   */
  claimFailedDelivery(id: number): boolean {
    return this.run(`UPDATE deliveries SET outcome = 'received' WHERE id = ? AND outcome LIKE 'error:%'`, id) > 0;
  }

  /** The most recent deliveries of all projects, newest first. */
  listAllDeliveries(limit = 50): Delivery[] {
    const n = Math.min(MAX_DELIVERIES_PAGE, Math.max(1, Math.floor(limit) || 50));
    return this.all<DeliveryRow>('SELECT * FROM deliveries ORDER BY id DESC LIMIT ?', n).map(toDelivery);
  }

  /**
   * Record a delivery refused before it was authenticated (bad signature, unknown project, …). Only the newest
   * {@link MAX_REJECTED} are kept, whatever project name they give (an unsigned flood cannot grow the file).
   */
  recordRejectedDelivery(d: NewRejectedDelivery): RejectedDelivery {
    return this.transaction(() => {
      const row = this.get<RejectedRow>(
        `INSERT INTO rejected_deliveries (project, forge, delivery_id, event, status, outcome, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *`,
        d.project,
        d.forge,
        d.deliveryId,
        d.event,
        d.status,
        d.outcome,
        nowIso(),
      ) as RejectedRow;
      this.run('DELETE FROM rejected_deliveries WHERE id <= ?', row.id - MAX_REJECTED);
      return toRejected(row);
    });
  }

  /** Rejected deliveries, newest first: those naming `project`, or all. */
  listRejectedDeliveries(project: string | undefined, limit = 50): RejectedDelivery[] {
    const n = Math.min(MAX_DELIVERIES_PAGE, Math.max(1, Math.floor(limit) || 50));
    const rows =
      project === undefined
        ? this.all<RejectedRow>('SELECT * FROM rejected_deliveries ORDER BY id DESC LIMIT ?', n)
        : this.all<RejectedRow>(
            'SELECT * FROM rejected_deliveries WHERE project = ? ORDER BY id DESC LIMIT ?',
            project,
            n,
          );
    return rows.map(toRejected);
  }

  /** The polling fallback's last-seen refs of a project (ref → commit); undefined until a baseline was saved. */
  pollRefs(project: string): Map<string, string> | undefined {
    const st = this.get<{ baseline_at: string | null }>(
      'SELECT baseline_at FROM poll_state WHERE project = ?',
      project,
    );
    if (!st?.baseline_at) return undefined;
    const rows = this.all<{ ref: string; commit_sha: string }>(
      'SELECT ref, commit_sha FROM poll_refs WHERE project = ? ORDER BY ref',
      project,
    );
    return new Map(rows.map((r) => [r.ref, r.commit_sha]));
  }

  /**
   * Save refs as seen (a null commit forgets the ref). With `baseline`, the given refs replace all and mark the
   * baseline taken; without, nothing is saved before a baseline exists (a webhook of a project that polls must not
   * make one ref look like the whole repository). A project deleted meanwhile is ignored.
   */
  savePollRefs(project: string, refs: Iterable<readonly [string, string | null]>, baseline = false): void {
    this.transaction(() => {
      if (!this.get('SELECT 1 FROM projects WHERE name = ?', project)) return;
      if (baseline) {
        this.run('DELETE FROM poll_refs WHERE project = ?', project);
        this.run(
          `INSERT INTO poll_state (project, baseline_at) VALUES (?, ?)
           ON CONFLICT (project) DO UPDATE SET baseline_at = excluded.baseline_at`,
          project,
          nowIso(),
        );
      } else if (!this.get('SELECT 1 FROM poll_state WHERE project = ? AND baseline_at IS NOT NULL', project)) {
        return;
      }
      for (const [ref, commit] of refs) {
        if (commit === null) {
          this.run('DELETE FROM poll_refs WHERE project = ? AND ref = ?', project, ref);
        } else {
          this.run(
            `INSERT INTO poll_refs (project, ref, commit_sha) VALUES (?, ?, ?)
             ON CONFLICT (project, ref) DO UPDATE SET commit_sha = excluded.commit_sha`,
            project,
            ref,
            commit,
          );
        }
      }
    });
  }

  /**
   * Record the outcome of one poll of a project: `error` null resets the error streak, else counts one more failure
   * and keeps the message. Returns the streak (0 after a success). A project deleted meanwhile counts nothing.
   */
  recordPoll(project: string, error: string | null): number {
    return this.transaction(() => {
      if (!this.get('SELECT 1 FROM projects WHERE name = ?', project)) return 0;
      const row = this.get<{ failures: number }>(
        `INSERT INTO poll_state (project, polled_at, failures, last_error) VALUES (?, ?, ?, ?)
         ON CONFLICT (project) DO UPDATE SET polled_at = excluded.polled_at,
           failures = CASE WHEN excluded.last_error IS NULL THEN 0 ELSE poll_state.failures + 1 END,
           last_error = excluded.last_error
         RETURNING failures`,
        project,
        nowIso(),
        error === null ? 0 : 1,
        error,
      );
      return row?.failures ?? 0;
    });
  }

  /** The polling state of a project (undefined when it was never polled). */
  pollStatus(project: string): PollStatus | undefined {
    const row = this.get<{
      baseline_at: string | null;
      polled_at: string | null;
      failures: number;
      last_error: string | null;
    }>('SELECT * FROM poll_state WHERE project = ?', project);
    return (
      row && {
        baselineAt: row.baseline_at,
        polledAt: row.polled_at,
        failures: row.failures,
        lastError: row.last_error,
      }
    );
  }
}

/** A delivery with the JSON a redelivery re-runs (`null`: nothing to re-run, e.g. a ping). */
export interface StoredDelivery extends Delivery {
  detail: string | null;
}

export interface NewRejectedDelivery {
  /** The project name the URL gave, sanitised (it may name no project). */
  project: string;
  forge: string;
  deliveryId: string;
  event: string;
  /** The HTTP status answered. */
  status: number;
  /** `rejected: bad signature`, `rejected: unknown project`, … */
  outcome: string;
}

export interface RejectedDelivery extends NewRejectedDelivery {
  id: number;
  receivedAt: string;
}

/** Polling fallback state of one project. */
export interface PollStatus {
  /** When the first poll recorded the refs (nothing is built for refs seen then). */
  baselineAt: string | null;
  polledAt: string | null;
  /** Polls failed in a row (0: the last one worked). */
  failures: number;
  lastError: string | null;
}

interface RejectedRow {
  id: number;
  project: string;
  forge: string;
  delivery_id: string;
  event: string;
  status: number;
  outcome: string;
  received_at: string;
}

/** Rejected deliveries kept (all projects together). */
const MAX_REJECTED = 5000;

function toRejected(r: RejectedRow): RejectedDelivery {
  const { delivery_id: deliveryId, received_at: receivedAt, ...same } = r;
  return { ...same, deliveryId, receivedAt };
}

const MAX_DELIVERIES_PAGE = 1000;

function toDelivery(r: DeliveryRow): Delivery {
  return {
    id: r.id,
    project: r.project,
    forge: r.forge,
    deliveryId: r.delivery_id,
    event: r.event,
    ref: r.ref,
    commit: r.commit_sha,
    outcome: r.outcome,
    receivedAt: r.received_at,
    buildGroup: r.build_group,
  };
}
