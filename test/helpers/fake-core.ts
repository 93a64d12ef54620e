/**
 * An in-memory ServiceCore for the API and CLI-client tests: projects in a Map, builds in an array, logs as files
 * under a temp dir the test writes to. Only the API's side of the port is real here; the service itself (store,
 * queue, runner) is tested end to end elsewhere. Every call is recorded so tests can assert what the API passed.
 */
import { join } from 'node:path';
import { KilnError } from '../../src/errors.js';
import type {
  ApplyResult,
  BuildPage,
  BuildQuery,
  Principal,
  ServiceCore,
  StartRequest,
} from '../../src/service/core.js';
import { FINAL_PHASES, type Build, type Project, type Trigger } from '../../src/service/model.js';

export const TOKENS: Record<string, Principal> = {
  'admin-token': { name: 'alice', role: 'admin' },
  'viewer-token': { name: 'victor', role: 'viewer' },
};

/** A project with every default filled in. */
export function project(name: string, over: Partial<Project> = {}): Project {
  return {
    name,
    repository: `https://git.example.com/${name}.git`,
    registry: `registry.example.com/${name}`,
    insecureRegistry: false,
    branches: ['**'],
    tags: ['**'],
    defaultBranch: 'main',
    images: [
      {
        name: 'app',
        context: '.',
        dockerfile: 'Dockerfile',
        buildArgs: {},
        secrets: {},
        strategy: 'dockerfile',
        backend: 'kiln',
        paths: [],
        tags: ['latest'],
      },
    ],
    submodules: false,
    depth: 0,
    lfs: false,
    runPolicy: 'SerialLatestOnly',
    concurrency: 1,
    retention: { successfulCount: 50, failedCount: 50, maxAgeDays: 0 },
    ...over,
  };
}

/** A build record. */
export function build(id: string, over: Partial<Build> = {}): Build {
  return {
    id,
    project: 'web',
    image: 'app',
    number: 1,
    group: `g-${id}`,
    ref: 'refs/heads/main',
    commit: '0123456789abcdef0123456789abcdef01234567',
    phase: 'queued',
    reason: null,
    trigger: { type: 'manual', by: 'alice' },
    tags: [],
    digest: null,
    stages: [],
    createdAt: '2024-01-01T00:00:00.000Z',
    startedAt: null,
    finishedAt: null,
    ...over,
  };
}

export class FakeCore implements ServiceCore {
  readonly projects = new Map<string, Project>();
  builds: Build[] = [];
  readonly calls: { method: string; args: unknown[] }[] = [];
  getBuildCalls = 0;
  private closeNow: () => void = () => undefined;
  readonly closing: Promise<void>;

  constructor(readonly logDir: string) {
    this.closing = new Promise((resolve) => (this.closeNow = resolve));
  }

  /** Resolve `closing` (the service shutting down). */
  close(): void {
    this.closeNow();
  }

  private record(method: string, ...args: unknown[]): void {
    this.calls.push({ method, args });
  }

  listProjects(): Project[] {
    return [...this.projects.values()];
  }
  getProject(name: string): Project | undefined {
    return this.projects.get(name);
  }

  private store(doc: unknown, result: ApplyResult): void {
    const d = doc as Partial<Project>;
    if (typeof d.repository !== 'string') {
      throw new KilnError('CONFIG_INVALID', `projects[${d.name ?? '?'}].repository: required\nsecond: error`, {
        hint: 'see docs',
      });
    }
    const p = project(String(d.name), d as Partial<Project>);
    const old = this.projects.get(p.name);
    if (!old) result.created.push(p.name);
    else if (JSON.stringify(old) === JSON.stringify(p)) result.unchanged.push(p.name);
    else result.updated.push(p.name);
    this.projects.set(p.name, p);
  }

  applyProjects(doc: unknown): ApplyResult {
    this.record('applyProjects', doc);
    const result: ApplyResult = { created: [], updated: [], unchanged: [] };
    for (const p of (doc as { projects: unknown[] }).projects) this.store(p, result);
    return result;
  }
  putProject(name: string, doc: unknown): ApplyResult {
    this.record('putProject', name, doc);
    const result: ApplyResult = { created: [], updated: [], unchanged: [] };
    this.store({ ...(doc as object), name }, result);
    return result;
  }
  async deleteProject(name: string): Promise<boolean> {
    this.record('deleteProject', name);
    return this.projects.delete(name);
  }

  listBuilds(q: BuildQuery): BuildPage {
    this.record('listBuilds', q);
    let list = this.builds.filter(
      (b) =>
        (!q.project || b.project === q.project) &&
        (!q.phase || b.phase === q.phase) &&
        (!q.image || b.image === q.image),
    );
    list = [...list].reverse();
    const start = q.cursor ? Number(q.cursor) : 0;
    const limit = q.limit ?? 50;
    // as the store lists them: without stages and changedPaths (core.ts ListedBuild)
    const page = list.slice(start, start + limit).map(({ stages: _s, changedPaths: _c, ...b }) => b);
    return { builds: page, next: start + limit < list.length ? String(start + limit) : null };
  }
  getBuild(id: string): Build | undefined {
    this.getBuildCalls++;
    return this.builds.find((b) => b.id === id);
  }
  async startBuilds(projectName: string, req: StartRequest, trigger: Trigger): Promise<Build[]> {
    this.record('startBuilds', projectName, req, trigger);
    const p = this.projects.get(projectName);
    if (!p) throw new KilnError('NOT_FOUND', `project "${projectName}" not found`);
    if (req.ref === 'nope') throw new KilnError('GIT_REF_NOT_FOUND', `ref "nope" not found in ${p.repository}`);
    const images = req.images ?? p.images.map((i) => i.name);
    const made = images.map((image, i) =>
      build(`b${this.builds.length + i + 1}`, {
        project: projectName,
        image,
        ref: req.ref ?? '',
        commit: req.commit ?? null,
        trigger,
      }),
    );
    this.builds.push(...made);
    return made;
  }
  async cancelBuild(id: string, by: string): Promise<Build> {
    this.record('cancelBuild', id, by);
    const b = this.builds.find((x) => x.id === id);
    if (!b) throw new KilnError('NOT_FOUND', `build "${id}" not found`);
    if (FINAL_PHASES.includes(b.phase)) throw new KilnError('CONFLICT', `build ${id} already ${b.phase}`);
    b.phase = 'cancelled';
    b.reason = `cancelled by ${by}`;
    return b;
  }
  async rerunBuild(id: string, by: string): Promise<Build> {
    this.record('rerunBuild', id, by);
    const b = this.builds.find((x) => x.id === id);
    if (!b) throw new KilnError('NOT_FOUND', `build "${id}" not found`);
    const again = build(`b${this.builds.length + 1}`, { ...b, trigger: { type: 'rerun', by, of: id } });
    again.id = `b${this.builds.length + 1}`;
    again.phase = 'queued';
    this.builds.push(again);
    return again;
  }
  logPath(id: string): string {
    return join(this.logDir, `${id}.log`);
  }
  metrics(): string {
    return '# TYPE kiln_builds_total counter\nkiln_builds_total 3\n';
  }
  verifyToken(token: string): Principal | undefined {
    return TOKENS[token];
  }
}
