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

export interface BuildPage {
  builds: Build[];
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
  getBuild(id: string): Build | undefined;
  /** Manual builds: resolves the ref/commit (fetching the mirror), creates one build per image. */
  startBuilds(project: string, req: StartRequest, trigger: Trigger): Promise<Build[]>;
  /** Throws KilnError `NOT_FOUND`, or `CONFLICT` when the build already ended. */
  cancelBuild(id: string, by: string): Promise<Build>;
  rerunBuild(id: string, by: string): Promise<Build>;
  /** Path of the build's log file (it may not exist yet for a queued build). */
  logPath(id: string): string;

  /** Prometheus text exposition. */
  metrics(): string;
  verifyToken(token: string): Principal | undefined;
  /** Resolves when the service is shutting down (log followers end then). */
  readonly closing: Promise<void>;
}
