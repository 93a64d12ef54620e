/**
 * The port between the service's outside (REST API, CLI client through it, web UI, webhook receivers) and its
 * inside (store, queue, git, runner). The API never touches SQLite or the runner directly: it calls this, so the
 * same core serves tests, the HTTP server and later the Kubernetes controller.
 */
import type { Build, Phase, Project, Role, Trigger } from './model.js';

export interface BuildQuery {
  project?: string;
  phase?: Phase;
  image?: string;
  /** Max builds returned (1–500, default 50). */
  limit?: number;
  /** Opaque cursor from a previous page's `next`. */
  cursor?: string;
}

/**
 * A build as listings show it: without `stages` (twenty-odd entries per build, most of a page's bytes; a list page
 * is asked for often — dashboards, the CLI, the UI's polling) nor `changedPaths`, `bases` and `rebase`.
 * `GET /api/v1/builds/{id}` has them all.
 */
export type ListedBuild = Omit<Build, 'stages' | 'changedPaths' | 'bases' | 'rebase'>;

export interface BuildPage {
  builds: ListedBuild[];
  /** Cursor of the next (older) page, or null when this was the last. */
  next: string | null;
}

export interface StartRequest {
  /** Branch, tag or full ref (`main`, `v1.2`, `refs/heads/main`). */
  ref?: string;
  /** A commit (full or abbreviated hex); with `ref` it must be reachable from it. */
  commit?: string;
  /** Image names of the project (default: all). */
  images?: string[];
}

export interface ApplyResult {
  created: string[];
  updated: string[];
  unchanged: string[];
}

/** A token's identity after verification. */
export interface Principal {
  name: string;
  role: Role;
}

export interface ServiceCore {
  /** Projects with credentials as references only (never values). */
  listProjects(): Project[];
  getProject(name: string): Project | undefined;
  /**
   * Validate and store projects (a YAML/JSON document with a `projects:` list, or one project object for PUT).
   * Throws KilnError code `CONFIG_INVALID` whose message lists every error with its path.
   */
  applyProjects(doc: unknown): ApplyResult;
  /** PUT /projects/{name}: the body is one project; its `name` must match (or be absent). */
  putProject(name: string, doc: unknown): ApplyResult;
  /** Removes the project and its queued builds (running ones are cancelled); false when unknown. */
  deleteProject(name: string): Promise<boolean>;

  listBuilds(q: BuildQuery): BuildPage;
  /**
   * Changes whenever `listBuilds` could answer differently (optional): equal values let a caller serve a listing
   * it already made (the API caches serialized pages by query under it). `notBefore` (a `performance.now()` time,
   * when the request came in): state the core read at or after it may be reused (see Store.changeMark).
   */
  listMark?(notBefore?: number): string;
  getBuild(id: string): Build | undefined;
  /**
   * Manual builds: one build per image. A branch or tag the mirror already knows is queued at once with `commit`
   * null (the build's own fetch resolves and records it); a commit the mirror has needs no fetch; anything else is
   * fetched and resolved first (an unknown ref is this call's error).
   */
  startBuilds(project: string, req: StartRequest, trigger: Trigger): Promise<Build[]>;
  /** Throws KilnError `NOT_FOUND`, or `CONFLICT` when the build already ended. */
  cancelBuild(id: string, by: string): Promise<Build>;
  rerunBuild(id: string, by: string): Promise<Build>;
  /** Path of the build's log file (it may not exist yet for a queued build). */
  logPath(id: string): string;

  /** Prometheus text exposition. */
  metrics(): string;
  /** The identity of a valid token; `notBefore` as for `listMark`. */
  verifyToken(token: string, notBefore?: number): Principal | undefined;
  /** Resolves when the service is shutting down (log followers end then). */
  readonly closing: Promise<void>;
}
