/**
 * Opening the service's SQLite database: the connection settings every process must agree on (the service and a
 * `kiln serve token create --data-dir D` run against the same file at once) and the numbered schema migrations.
 *
 * Durability: the database runs in WAL mode with `synchronous = NORMAL`. A transaction is committed once its pages
 * are appended to the `-wal` file with `write(2)`; the kernel then owns them, so a crash or `kill -9` of the
 * process never loses a committed transaction nor corrupts the file (SQLite replays or ignores the WAL tail on the
 * next open). Only a power loss or kernel crash can lose the last transactions committed before the next WAL
 * checkpoint's fsync — the file still opens consistent, just slightly older. For builds that is acceptable: a
 * build lost that way looks like one interrupted by the crash. `synchronous = FULL` would fsync every commit
 * (several ms each on slow disks) to close that window too.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { KilnError, errorMessage } from '../../errors.js';
import { FINAL_PHASES, PHASES } from '../model.js';

/** The connection type used by the store (better-sqlite3). */
export type Db = Database.Database;

const phaseList = PHASES.map((p) => `'${p}'`).join(', ');
/** `'succeeded', 'failed', …` — for `phase IN (…)` in SQL written here (constants only, never user input). */
export const FINAL_PHASES_SQL = FINAL_PHASES.map((p) => `'${p}'`).join(', ');

/**
 * Schema migrations: entry `i` brings the database from `user_version` i to i + 1. Append only — a released
 * migration is never edited, because databases in the field have already run it. Each runs in one transaction
 * together with its `user_version` bump, so a crash leaves the schema at a whole version.
 *
 * `builds.seq` is the rowid (AUTOINCREMENT: never reused, even after the newest rows are deleted): the queue order
 * and the listing order (newest first) in one integer that every index carries for free. Timestamps are ISO-8601
 * UTC strings from `Date.toISOString()` (they sort as text). JSON columns hold the model's shapes as they are.
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE projects (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    next_build_number INTEGER NOT NULL DEFAULT 1
  ) STRICT;

  CREATE TABLE builds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    image TEXT NOT NULL,
    number INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    ref TEXT NOT NULL,
    commit_sha TEXT,
    phase TEXT NOT NULL CHECK (phase IN (${phaseList})),
    reason TEXT,
    trigger_json TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    digest TEXT,
    stages TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    changed_paths TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    UNIQUE (project, number)
  ) STRICT;
  CREATE INDEX builds_project ON builds (project, seq);
  CREATE INDEX builds_phase ON builds (phase, seq);
  CREATE INDEX builds_project_phase ON builds (project, phase, seq);
  CREATE INDEX builds_project_image_ref ON builds (project, image, ref, phase);
  CREATE INDEX builds_group ON builds (group_id);

  CREATE TABLE build_stats (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    phase TEXT NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    timed INTEGER NOT NULL DEFAULT 0,
    duration_sum REAL NOT NULL DEFAULT 0,
    buckets TEXT NOT NULL,
    PRIMARY KEY (project, phase)
  ) STRICT;

  CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    expires_at TEXT,
    revoked INTEGER NOT NULL DEFAULT 0
  ) STRICT;

  CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    forge TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event TEXT NOT NULL,
    ref TEXT,
    commit_sha TEXT,
    outcome TEXT NOT NULL,
    received_at TEXT NOT NULL,
    build_group TEXT,
    UNIQUE (forge, delivery_id, project)
  ) STRICT;
  CREATE INDEX deliveries_project ON deliveries (project, id);
  `,
  // 2: triggers (issue 11). `deliveries.detail`: JSON of what a redelivery re-runs (refs, commits, changed paths, the
  // skip flag; never the body) and the builds started. `rejected_deliveries`: deliveries refused before they were
  // authenticated (bad or missing signature, unknown project, body too large) — kept apart so that an unsigned
  // request can never take the (forge, delivery id) slot of the genuine delivery; `project` is the URL's name,
  // sanitised, and may name no project. `poll_refs` / `poll_state`: the polling fallback's last-seen refs
  // (`baseline_at` set once the first poll recorded them) and its error streak.
  `
  ALTER TABLE deliveries ADD COLUMN detail TEXT;

  CREATE TABLE rejected_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    forge TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    received_at TEXT NOT NULL
  ) STRICT;
  CREATE INDEX rejected_deliveries_project ON rejected_deliveries (project, id);

  CREATE TABLE poll_state (
    project TEXT PRIMARY KEY REFERENCES projects(name) ON DELETE CASCADE,
    baseline_at TEXT,
    polled_at TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
  ) STRICT;

  CREATE TABLE poll_refs (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    PRIMARY KEY (project, ref)
  ) STRICT, WITHOUT ROWID;
  `,
  // 3: outgoing delivery (src/service/delivery/store.ts): the durable queue of notifications, commit statuses and
  // redeploys (`request` holds what is sent, secrets only as references), every attempt made (URL redacted), and
  // the builds watched for them. No foreign key to builds: a build that retention removes right after it finished
  // still gets its notifications; finished rows of removed builds are pruned by the delivery room.
  `
  CREATE TABLE notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    build_id TEXT NOT NULL,
    project TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'status', 'redeploy')),
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    dedupe TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'superseded')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  ) STRICT;
  CREATE INDEX notifications_due ON notifications (state, next_at);
  CREATE INDEX notifications_build ON notifications (build_id, seq);
  CREATE INDEX notifications_key ON notifications (key, seq);

  CREATE TABLE notification_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id TEXT NOT NULL REFERENCES notifications(id) ON DELETE CASCADE,
    build_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    detail TEXT,
    at TEXT NOT NULL,
    duration_ms INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX notification_attempts_notification ON notification_attempts (notification_id, attempt);

  CREATE TABLE notification_watch (
    build_id TEXT PRIMARY KEY,
    phase TEXT NOT NULL
  ) STRICT, WITHOUT ROWID;
  `,
  // 4: base images (src/service/triggers/bases.ts): what each FROM of a succeeded build resolved to (JSON
  // BaseRecord[]), so the base watcher knows which bases to look up and which builds depend on them.
  `
  ALTER TABLE builds ADD COLUMN bases TEXT;
  CREATE INDEX builds_succeeded_bases ON builds (project, image, ref, seq) WHERE phase = 'succeeded' AND bases IS NOT NULL;
  `,
  // 5: web UI sign-in sessions (src/service/ui/sessions.ts): the SHA-256 of the session cookie (never the cookie
  // nor the token), the token it stands for (revoking or removing the token ends its sessions), and its expiry.
  `
  CREATE TABLE ui_sessions (
    hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
  `,
  // 6: the rebase verdict of a succeeded build (JSON RebaseRecord): the base-image trigger rebases rebasable images
  // instead of rebuilding them.
  `
  ALTER TABLE builds ADD COLUMN rebase TEXT;
  `,
  // 7: what the runner needs to find a running build again after a restart of the service (opaque to the store;
  // the Kubernetes executor keeps its pod's name and where the pod's log starts in the build log), so a restarted
  // service re-attaches to build pods instead of failing their builds.
  `
  ALTER TABLE builds ADD COLUMN runner_state TEXT;
  `,
];

/** The schema version this kiln writes (the number of migrations). */
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Open (creating when missing, with its directories) the database at `file`, set the connection pragmas and bring
 * the schema up to date. A new file is created mode 0600 (it holds token hashes); SQLite gives its `-wal` and
 * `-shm` files the same mode. Throws `STORE_TOO_NEW` for a database a newer kiln migrated, `STORE_OPEN_FAILED`
 * when the file cannot be opened as a database.
 */
export function openDatabase(file: string): Db {
  let db: Db;
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    closeSync(openSync(file, 'a', 0o600));
    db = new Database(file, { timeout: 5000 });
  } catch (e) {
    throw new KilnError('STORE_OPEN_FAILED', `cannot open the service database ${file}: ${errorMessage(e)}`, {
      hint: 'check that the data dir is writable by the service user',
      cause: e,
    });
  }
  try {
    db.pragma('busy_timeout = 5000');
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    migrate(db, file);
    return db;
  } catch (e) {
    db.close();
    if (e instanceof KilnError) throw e;
    throw new KilnError('STORE_OPEN_FAILED', `cannot open the service database ${file}: ${errorMessage(e)}`, {
      hint: 'the file may not be a kiln database; move it away to start with an empty one',
      cause: e,
    });
  }
}

function userVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Apply the pending migrations, one immediate transaction each. The version is read again inside the transaction:
 * two processes opening a fresh file at once both see version 0, the second waits on the write lock and then
 * finds the first one's work done.
 */
function migrate(db: Db, file: string): void {
  const tooNew = (v: number): KilnError =>
    new KilnError(
      'STORE_TOO_NEW',
      `the service database ${file} has schema version ${v}; this kiln knows up to ${SCHEMA_VERSION}`,
      { hint: 'a newer kiln wrote it: run that version, or restore a backup made before the upgrade' },
    );
  const start = userVersion(db);
  if (start > SCHEMA_VERSION) throw tooNew(start);
  for (let v = start; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      const now = userVersion(db);
      if (now > SCHEMA_VERSION) throw tooNew(now);
      if (now > v) return;
      db.exec(MIGRATIONS[v] ?? '');
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}
