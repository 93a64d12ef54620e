/**
 * The build service's core (`ServiceCore`): projects, the durable queue, and the life of each build — resolve the
 * commit, check it out, render tags, hand the build to a runner, record phases, stages, digest and reason, apply
 * retention. The store (SQLite) is the single source of truth: every transition is committed before anything
 * acts on it, so a `kill -9` at any moment leaves a consistent database; start-up turns builds that were running
 * into `failed: interrupted` and queues their rerun once.
 *
 * Data flow: trigger (API, webhook, base change) → `enqueue` (filters, coalescing) → store → `schedule` (queue
 * policy: limits, fair share) → `execute` (git → runner) → store. Nothing here knows HTTP or SQL.
 */
import { EventEmitter } from 'node:events';
import { mkdir, rm, readdir, realpath, stat, appendFile } from 'node:fs/promises';
import { join, relative, sep, isAbsolute } from 'node:path';
import { KilnError, errorMessage, isKilnError } from '../errors.js';
import type { ApplyResult, BuildPage, BuildQuery, Principal, ServiceCore, StartRequest } from './core.js';
import type { Build, BuildStage, ImageSpec, Project, ServiceConfig, Trigger } from './model.js';
import { Store, type NewBuild } from './store/store.js';
import { coalesceOnEnqueue, pickNext, timeoutFor } from './queue/policy.js';
import { checkProjectSet, parseProjectDocument, parseProjectsDocument } from './config/parse.js';
import { matchesFilter, pathsConcern } from './config/filters.js';
import { renderTags } from './config/tags.js';
import { readGitCredentials, readSecretRef, redactProject } from './config/secrets.js';
import { GitMirrors, redactUrl } from './git/mirror.js';
import type { BuildRunner, Recovery, RunHooks, RunOutcome } from './runner/local.js';
import { BaseWatcher, baseChangeReason, type Dependent } from './triggers/bases.js';
import { getRemoteImage } from '../registry/remote.js';
import { rebase } from '../rebase/rebase.js';
import { parseReferenceWithDefaultTag } from '../ref/reference.js';
import { Keychain } from '../registry/keychain.js';
import { closeTransports, type RegistryOptions } from '../registry/transport.js';
import { RUNNER_DETACHED, type WorkerJob } from './runner/protocol.js';
import { renderMetrics } from './metrics.js';
import { debugMark } from '../util/debug.js';

export interface BuildServiceOptions {
  /** `--data-dir`: database, logs, git mirrors, checkouts. */
  dataDir: string;
  config: ServiceConfig;
  runner: BuildRunner;
  /** Called with one line for the service's own log (stderr). */
  log?: (line: string) => void;
}

/**
 * What the service announces, for the rooms that act on builds without being the queue: delivery (redeploy,
 * outgoing webhooks, commit statuses), base-image tracking, the web UI's live view. `build` fires after every
 * committed change of a build record (so a listener always sees what the store has).
 */
export interface ServiceEvents {
  build: [Build];
}

interface Running {
  build: Build;
  ac: AbortController;
  done: Promise<void>;
}

const short = (sha: string | null): string => (sha ?? '').slice(0, 7);

/** Whether two image references name the same image (`host/repo:tag`, normalized); false when either is absent. */
function sameImageName(a: string | undefined, b: string | undefined): boolean {
  if (!a || !b) return false;
  try {
    return parseReferenceWithDefaultTag(a).toString() === parseReferenceWithDefaultTag(b).toString();
  } catch {
    return false;
  }
}

/** A path inside `root` (relative, normalised), or undefined when it would leave it. */
function inside(root: string, rel: string): string | undefined {
  if (isAbsolute(rel) || rel.includes('\0')) return undefined;
  const p = join(root, rel);
  const r = relative(root, p);
  if (r === '..' || r.startsWith('..' + sep)) return undefined;
  return p;
}

export class BuildService implements ServiceCore {
  readonly store: Store;
  readonly mirrors: GitMirrors;
  /** `build` after every committed change of a build (see ServiceEvents). Listener errors are logged, never thrown. */
  readonly events = new EventEmitter<ServiceEvents>();
  /** The base-image change trigger (polling and registry notifications). */
  readonly bases: BaseWatcher;
  /** Registry access of the service process itself (base lookups). */
  private readonly registry: RegistryOptions;
  private readonly running = new Map<string, Running>();
  private readonly lastStarted = new Map<string, number>();
  /** Workspaces (`project/image`) a running build uses. */
  private readonly busyWorkspaces = new Set<string>();
  private stopping = false;
  private resolveClosing!: () => void;
  readonly closing: Promise<void> = new Promise((r) => (this.resolveClosing = r));
  private scheduling = false;
  private readonly logsDir: string;
  private readonly workDir: string;
  private readonly say: (line: string) => void;

  private constructor(private readonly opts: BuildServiceOptions) {
    this.store = Store.open(join(opts.dataDir, 'kiln.db'));
    this.mirrors = new GitMirrors({ dir: join(opts.dataDir, 'git'), allowFile: opts.config.allowFileRepositories });
    this.logsDir = join(opts.dataDir, 'logs');
    this.workDir = join(opts.dataDir, 'work');
    this.say = opts.log ?? ((l) => process.stderr.write(l + '\n'));
    this.registry = {
      insecureRegistries: this.insecureHosts(),
      credentials: new Keychain().source(),
      maxRetries: 2,
    };
    this.bases = new BaseWatcher(
      {
        dependents: () => this.dependents(),
        newest: (project, image, ref) => this.store.newestOf(project, image, ref),
        enqueueBaseChange: (dep, base, from, to) => this.enqueueBaseChange(dep, base, from, to),
      },
      {
        intervalMs: opts.config.baseWatch.intervalSeconds * 1000,
        lookup: async (name) => {
          this.registry.insecureRegistries = this.insecureHosts(); // projects change through the API
          return (await getRemoteImage(name, { ...this.registry, label: `base ${name}` })).digest();
        },
        log: this.say,
      },
    );
  }

  /** The server config the service runs with. */
  get config(): ServiceConfig {
    return this.opts.config;
  }

  /** Registries reached over plain HTTP: the service's list and the hosts of projects that say so. */
  private insecureHosts(): string[] {
    const hosts = new Set(this.opts.config.insecureRegistries);
    for (const p of this.store.listProjects()) if (p.insecureRegistry) hosts.add(p.registry.split('/')[0] as string);
    return [...hosts];
  }

  private dependents(): Dependent[] {
    const out: Dependent[] = [];
    for (const b of this.store.baseDependents()) {
      if (!b.commit || !b.bases?.length) continue;
      out.push({ buildId: b.id, project: b.project, image: b.image, ref: b.ref, commit: b.commit, bases: b.bases });
    }
    return out;
  }

  /**
   * A base of `dep` moved: rebuild it at the commit it was last built from, pushing the tags that build pushed —
   * or rebase it (swap the base's layers, keep the rest by digest; no step runs) when that build was recorded
   * rebasable on this very base. Queued like any build (fair share); at most `baseWatch.concurrency` such builds
   * run at once.
   */
  enqueueBaseChange(dep: Dependent, base: string, from: string, to: string): Build | undefined {
    if (this.stopping) return undefined;
    const p = this.store.getProject(dep.project);
    if (!p?.images.some((i) => i.name === dep.image)) return undefined;
    const reason = baseChangeReason(base, from, to);
    // rebase (no step runs) when the build it repeats was recorded rebasable on exactly this base
    const orig = this.store.getBuild(dep.buildId);
    const action =
      orig?.digest && orig.rebase?.rebasable && sameImageName(orig.rebase.base, base) ? 'rebase' : 'rebuild';
    const { builds } = this.store.enqueue([
      {
        project: dep.project,
        image: dep.image,
        ref: dep.ref,
        commit: dep.commit,
        trigger: { type: 'base-change', base, baseDigest: to, of: dep.buildId, reason, action },
      },
    ]);
    this.say(`kiln serve: ${dep.project}/${dep.image} (${dep.ref || dep.commit.slice(0, 7)}): ${reason} (${action})`);
    this.announce(...builds);
    this.schedule();
    return builds[0];
  }

  /**
   * Open the data dir and recover: builds a previous process left running are re-attached when the runner can
   * follow them on (a build pod still running: `BuildRunner.recover`), else failed (`interrupted`, or the runner's
   * reason) and queued again once (`retryInterrupted`), leftover checkouts are removed, the config file's projects are applied, and
   * the queue starts.
   */
  static async start(opts: BuildServiceOptions): Promise<BuildService> {
    await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
    const svc = new BuildService(opts);
    await mkdir(svc.logsDir, { recursive: true });
    // per-build checkouts of the previous process go; workspaces (work/ws) stay: they make the next build warm
    for (const e of await readdir(svc.workDir).catch(() => [] as string[])) {
      if (e !== 'ws') await rm(join(svc.workDir, e), { recursive: true, force: true });
    }
    // what workers of a previous process left (it was killed): snapshots, mounts, temp dirs with .owner files
    await opts.runner.cleanupAfter?.();
    await mkdir(svc.workDir, { recursive: true, mode: 0o700 });
    if (opts.config.projects.length) {
      const all = new Map(svc.store.listProjects().map((p) => [p.name, p]));
      for (const p of opts.config.projects) all.set(p.name, p);
      checkProjectSet([...all.values()], 'config');
      for (const p of opts.config.projects) svc.store.upsertProject(p);
    }
    // builds whose runner can follow them on (their build pods still run) stay active; the others fail
    const left = svc.store.active();
    const recovery = opts.runner.recover
      ? await opts.runner.recover(
          left.map((b) => ({ id: b.id, logFile: svc.logPath(b.id), state: svc.store.runnerState(b.id) })),
        )
      : new Map<string, Recovery>();
    const keep = new Set<string>();
    const reasons = new Map<string, string>();
    for (const [id, r] of recovery) {
      if (r.adopt) keep.add(id);
      else if (r.reason) reasons.set(id, r.reason);
    }
    const interrupted = svc.store.failInterrupted('interrupted', { keep, reasons });
    for (const b of interrupted) {
      const why = reasons.get(b.id) ?? 'interrupted (the service stopped while this build ran)';
      await appendFile(svc.logPath(b.id), `\nERROR: ${why}\n`).catch(() => undefined);
      if (!opts.config.retryInterrupted || b.trigger.type === 'retry' || !svc.store.getProject(b.project)) continue;
      svc.store.enqueue([
        {
          project: b.project,
          image: b.image,
          ref: b.ref,
          commit: b.commit,
          trigger: { type: 'retry', of: b.id },
          attempt: 1,
          ...(b.changedPaths ? { changedPaths: b.changedPaths } : {}),
        },
      ]);
    }
    if (interrupted.length) svc.say(`kiln serve: ${interrupted.length} interrupted build(s) marked failed`);
    for (const b of left) if (keep.has(b.id)) svc.resume(b);
    if (keep.size) svc.say(`kiln serve: re-attached to ${keep.size} running build(s)`);
    svc.schedule();
    svc.bases.start();
    return svc;
  }

  /** Tell listeners about committed build changes; a failing listener never breaks the queue. */
  private announce(...builds: Build[]): void {
    for (const b of builds) {
      try {
        this.events.emit('build', b);
      } catch (e) {
        this.say(`kiln serve: build listener: ${errorMessage(e)}`);
      }
    }
  }

  // ---- projects ----

  listProjects(): Project[] {
    return this.store.listProjects().map(redactProject);
  }

  getProject(name: string): Project | undefined {
    const p = this.store.getProject(name);
    return p && redactProject(p);
  }

  private applyParsed(projects: Project[], source: string): ApplyResult {
    const all = new Map(this.store.listProjects().map((p) => [p.name, p]));
    for (const p of projects) all.set(p.name, p);
    checkProjectSet([...all.values()], source);
    const res: ApplyResult = { created: [], updated: [], unchanged: [] };
    this.store.transaction(() => {
      for (const p of projects) res[this.store.upsertProject(p)].push(p.name);
    });
    return res;
  }

  applyProjects(doc: unknown): ApplyResult {
    const projects = parseProjectsDocument(doc, 'request', { allowFile: this.opts.config.allowFileRepositories });
    return this.applyParsed(projects, 'request');
  }

  putProject(name: string, doc: unknown): ApplyResult {
    const withName = doc && typeof doc === 'object' && !Array.isArray(doc) && !('name' in doc) ? { ...doc, name } : doc;
    const p = parseProjectDocument(withName, 'request', { allowFile: this.opts.config.allowFileRepositories });
    if (p.name !== name) {
      throw new KilnError('CONFIG_INVALID', `name: "${p.name}" does not match the URL's project "${name}"`, {
        hint: 'PUT /api/v1/projects/NAME with the same name in the body (or none)',
      });
    }
    return this.applyParsed([p], 'request');
  }

  async deleteProject(name: string): Promise<boolean> {
    if (!this.store.getProject(name)) return false;
    const mine = [...this.running.values()].filter((r) => r.build.project === name);
    for (const r of mine) r.ac.abort('cancelled');
    await Promise.all(mine.map((r) => r.done));
    const ids = this.store.deleteProject(name) ?? [];
    await Promise.all(ids.map((id) => rm(this.logPath(id), { force: true })));
    await rm(join(this.workDir, 'ws', name), { recursive: true, force: true });
    return true;
  }

  // ---- builds ----

  listBuilds(q: BuildQuery): BuildPage {
    return this.store.listBuilds(q);
  }

  listMark(notBefore?: number): string {
    return this.store.changeMark(notBefore);
  }

  getBuild(id: string): Build | undefined {
    return this.store.getBuild(id);
  }

  logPath(id: string): string {
    if (!/^[A-Za-z0-9_-]+$/.test(id)) throw new KilnError('NOT_FOUND', `build '${id}' not found`);
    return join(this.logsDir, `${id}.log`);
  }

  private projectOrThrow(name: string): Project {
    const p = this.store.getProject(name);
    if (!p) throw new KilnError('NOT_FOUND', `project '${name}' not found`, { hint: 'kiln project ls' });
    return p;
  }

  private imagesOf(p: Project, names: string[] | undefined): ImageSpec[] {
    if (!names?.length) return p.images;
    return names.map((n) => {
      const img = p.images.find((i) => i.name === n);
      if (!img) {
        throw new KilnError('IMAGE_INVALID', `images: project '${p.name}' has no image '${n}'`, {
          hint: `images of ${p.name}: ${p.images.map((i) => i.name).join(', ')}`,
        });
      }
      return img;
    });
  }

  /** Manual builds: any existing ref or commit, whatever the filters say. */
  async startBuilds(project: string, req: StartRequest, trigger: Trigger): Promise<Build[]> {
    if (this.stopping) throw new KilnError('SERVICE_CLOSING', 'the service is shutting down');
    const p = this.projectOrThrow(project);
    const images = this.imagesOf(p, req.images);
    if (!req.ref && !req.commit) {
      throw new KilnError('REQUEST_INVALID', 'ref or commit is required', { hint: '{"ref": "main"}' });
    }
    const spec: { ref?: string; commit?: string } = {};
    if (req.ref) spec.ref = req.ref;
    if (req.commit) spec.commit = req.commit;
    // No round trip to the forge in the request when it can wait for the build's own fetch: a branch or tag the
    // mirror knows is queued at once (its commit is resolved, and recorded, by the build's fetch); a commit the
    // mirror has needs no fetch at all. Anything else (a new ref, a ref with a commit) is fetched and checked here,
    // so a name that does not exist is still a 4xx of this request.
    const known = req.ref && !req.commit ? await this.mirrors.mirroredRef(p, req.ref) : undefined;
    const resolved = known
      ? { ref: known, commit: null }
      : await this.mirrors.resolve(p, spec, undefined, { fetch: 'if-missing' });
    const { builds } = this.store.enqueue(
      images.map((i) => ({ project: p.name, image: i.name, ref: resolved.ref, commit: resolved.commit, trigger })),
    );
    this.announce(...builds);
    this.schedule();
    return builds;
  }

  /**
   * Automatic builds (webhooks, polling, base changes): the project's branch/tag filters and each image's path
   * filters decide which images build; under SerialLatestOnly a newer build replaces queued ones of the same
   * image and ref (coalescing). Returns the builds created (none when nothing concerns the change).
   */
  enqueueAutomatic(
    project: string,
    change: { ref: string; commit: string; changedPaths?: string[] },
    trigger: Trigger,
  ): Build[] {
    if (this.stopping) return [];
    const p = this.projectOrThrow(project);
    const branch = change.ref.startsWith('refs/heads/') ? change.ref.slice('refs/heads/'.length) : undefined;
    const tag = change.ref.startsWith('refs/tags/') ? change.ref.slice('refs/tags/'.length) : undefined;
    // only branches and tags build automatically (not refs/pull/…, refs/notes/…)
    if (branch === undefined && tag === undefined) return [];
    if (branch !== undefined && !matchesFilter(p.branches, branch)) return [];
    if (tag !== undefined && !matchesFilter(p.tags, tag)) return [];
    const images = p.images.filter((i) => pathsConcern(i.paths, change.changedPaths));
    const items: NewBuild[] = images.map((i) => ({
      project: p.name,
      image: i.name,
      ref: change.ref,
      commit: change.commit,
      trigger,
      ...(change.changedPaths ? { changedPaths: change.changedPaths } : {}),
    }));
    const { builds, superseded } = this.store.enqueue(
      items,
      (queued, incoming) => coalesceOnEnqueue(queued, incoming, p.runPolicy).supersede,
    );
    for (const s of superseded) void appendFile(this.logPath(s.id), `${s.reason ?? 'superseded'}\n`).catch(() => 0);
    this.announce(...superseded, ...builds);
    this.schedule();
    return builds;
  }

  async cancelBuild(id: string, by: string): Promise<Build> {
    const b = this.store.requestCancel(id, `cancelled by ${by}`);
    this.announce(b);
    const r = this.running.get(id);
    if (r) {
      r.ac.abort('cancelled');
      await r.done;
      return this.store.getBuild(id) ?? b;
    }
    return b;
  }

  async rerunBuild(id: string, by: string): Promise<Build> {
    const b = this.store.getBuild(id);
    if (!b) throw new KilnError('NOT_FOUND', `build '${id}' not found`);
    this.projectOrThrow(b.project);
    const { builds } = this.store.enqueue([
      { project: b.project, image: b.image, ref: b.ref, commit: b.commit, trigger: { type: 'rerun', of: id, by } },
    ]);
    this.announce(...builds);
    this.schedule();
    return builds[0] as Build;
  }

  metrics(): string {
    return renderMetrics({
      phases: this.store.countByPhase(),
      stats: this.store.buildStats(),
      running: this.running.size,
    });
  }

  verifyToken(token: string, notBefore?: number): Principal | undefined {
    const t = this.store.verifyToken(token, new Date(), notBefore);
    return t ? { name: t.name, role: t.role } : undefined;
  }

  // ---- the queue ----

  /** Start every build the queue policy allows now. */
  schedule(): void {
    if (this.scheduling || this.stopping) return;
    this.scheduling = true;
    try {
      for (;;) {
        const running = [...this.running.values()].map((r) => r.build);
        // rebuilds for base changes share a cap, so a base used by hundreds of images cannot take every slot
        const baseCap =
          running.filter((b) => b.trigger.type === 'base-change').length >= this.opts.config.baseWatch.concurrency;
        const queued = this.store.queued().filter((b) => !baseCap || b.trigger.type !== 'base-change');
        if (queued.length === 0) return;
        const projects = new Map<string, Project | undefined>();
        const proj = (n: string): Project | undefined => {
          if (!projects.has(n)) projects.set(n, this.store.getProject(n));
          return projects.get(n);
        };
        const next = pickNext(queued, running, {
          global: this.opts.config.concurrency,
          perProject: (n) => proj(n)?.concurrency ?? 1,
          runPolicy: (n) => proj(n)?.runPolicy ?? 'SerialLatestOnly',
          lastStartedAt: (n) => this.lastStarted.get(n),
        });
        if (!next) return;
        const p = proj(next.project);
        if (!p) {
          this.announce(
            this.store.updateBuild(next.id, { phase: 'failed', reason: `project '${next.project}' was deleted` }),
          );
          continue;
        }
        let build: Build;
        try {
          build = this.store.updateBuild(next.id, { phase: 'fetching' });
          this.announce(build);
        } catch (e) {
          if (isKilnError(e, 'BUILD_CONFLICT')) continue; // cancelled meanwhile
          throw e;
        }
        this.lastStarted.set(p.name, Date.now());
        const ac = new AbortController();
        const r: Running = { build, ac, done: Promise.resolve() };
        this.running.set(build.id, r);
        r.done = this.execute(build, p, ac).finally(() => {
          this.running.delete(build.id);
          this.schedule();
        });
      }
    } finally {
      this.scheduling = false;
    }
  }

  /** One build from fetch to its final phase. Never throws: every failure ends as the build's phase and reason. */
  private async execute(build: Build, p: Project, ac: AbortController): Promise<void> {
    const log = this.logPath(build.id);
    const line = (s: string): Promise<void> => appendFile(log, s + '\n').catch(() => undefined);
    const stages: BuildStage[] = [];
    const img = p.images.find((i) => i.name === build.image);
    const timeoutS = timeoutFor(build, p, this.opts.config.timeoutSeconds);
    const timer = setTimeout(() => ac.abort('timed-out'), timeoutS * 1000);
    // a persistent workspace per (project, image), updated in place to the commit (kiln's stat cache and
    // incremental COPY then see unchanged files as unchanged); a second concurrent build of it gets its own dir
    const wsKey = `${p.name}/${build.image}`;
    const useWs = !this.busyWorkspaces.has(wsKey);
    if (useWs) this.busyWorkspaces.add(wsKey);
    const wsRoot = join(this.workDir, 'ws', p.name);
    const checkout = useWs ? join(wsRoot, build.image) : join(this.workDir, build.id);
    const { update, current } = this.tracker(build);
    try {
      if (!img) throw new KilnError('IMAGE_INVALID', `project '${p.name}' has no image '${build.image}' any more`);
      if (build.trigger.action === 'rebase' && (await this.rebaseBuild(build, p, stages, line, update, ac.signal)))
        return;
      // fetch
      const fetchStage: BuildStage = {
        name: 'fetch',
        kind: 'fetch',
        status: 'running',
        startedAt: new Date().toISOString(),
      };
      stages.push(fetchStage);
      this.store.setStages(build.id, stages);
      const t0 = performance.now();
      const host = p.registry.split('/')[0] as string;
      const insecureRegistries = [...this.opts.config.insecureRegistries, ...(p.insecureRegistry ? [host] : [])];
      const rc = p.registryCredentials;
      const registryAuth = rc?.username
        ? { registry: host, username: rc.username, password: readSecretRef(rc, 'registry password') }
        : undefined;
      // a Node.js or S2I build's worker pings the registry, resolves the base (the builder image) and opens upload
      // sessions while the commit is fetched (KILN_SERVE_PREPARE=0: not, for measuring)
      if (
        (img.strategy === 'node' || (img.strategy === 's2i' && img.s2i)) &&
        img.backend === 'kiln' &&
        build.trigger.action !== 'rebase' &&
        process.env.KILN_SERVE_PREPARE !== '0'
      ) {
        this.opts.runner.prepare?.({
          buildId: build.id,
          repository: `${p.registry}/${img.name}`,
          insecureRegistries,
          ...(registryAuth ? { registryAuth } : {}),
          strategy: img.strategy,
          backend: img.backend,
          ...(img.node ? { node: img.node } : {}),
          ...(img.strategy === 's2i' && img.s2i ? { s2i: { builderImage: img.s2i.builderImage } } : {}),
        });
      }
      debugMark(`service: build ${build.id}: fetch`);
      const what = build.ref || build.commit || '';
      await line(`#0 [internal] fetch ${redactUrl(p.repository)} ${what}`);
      const spec: { ref?: string } = {};
      if (build.ref) spec.ref = build.ref;
      const wsIndex = join(wsRoot, `.${build.image}.index`);
      // the workspace's extra files go while the mirror fetches (they do not depend on the commit)
      const pruned = useWs ? this.mirrors.pruneWorkspace(p, checkout, wsIndex, ac.signal) : Promise.resolve(false);
      // (a failed prune emptied the workspace: updateWorkspace then checks out afresh)
      const prunedOk = pruned.catch(() => false);
      // by commit too: an automatic build names a commit the mirror may not have fetched yet
      // (a commit resolved when the build was requested is usually mirrored already: then no second fetch)
      let commit: string;
      try {
        commit = (
          await this.mirrors.resolve(p, build.commit ? { commit: build.commit } : spec, ac.signal, {
            fetch: 'if-missing',
          })
        ).commit;
      } finally {
        // nothing of this build may still touch the workspace once it ends
        if (useWs) await prunedOk;
      }
      // The commit's subject, so the log says what is being built (as text: the UI renders log lines as text);
      // read from the mirror while the workspace is written.
      debugMark(`service: build ${build.id}: fetched ${commit.slice(0, 12)}`);
      const message = this.mirrors.commitMessage(p, commit).catch(() => undefined);
      await mkdir(useWs ? wsRoot : checkout, { recursive: true, mode: 0o700 });
      if (useWs)
        await this.mirrors.updateWorkspace(p, commit, checkout, wsIndex, ac.signal, { pruned: await prunedOk });
      else await this.mirrors.checkout(p, commit, checkout, ac.signal);
      stages[0] = { ...fetchStage, status: 'done', durationMs: Math.round(performance.now() - t0) };
      debugMark(`service: build ${build.id}: checked out`);
      await line(`#0 checked out ${commit}`);
      const subject = (await message)?.split('\n')[0]?.trim();
      if (subject) await line(`#0 commit: ${subject.slice(0, 200)}`);
      await line(`#0 DONE ${((performance.now() - t0) / 1000).toFixed(1)}s`);
      this.store.setStages(build.id, stages);
      if (ac.signal.aborted) throw new KilnError('INTERRUPTED', 'build interrupted');

      // the checkout's paths: never outside the repository, also through symlinks
      const root = await realpath(checkout);
      const ctxRel = inside(root, img.context);
      const dfRel = inside(root, img.dockerfile);
      if (!ctxRel || !dfRel) throw new KilnError('PATH_OUTSIDE', `${img.dockerfile}: path leaves the repository`);
      let ctx: string;
      let df: string;
      try {
        ctx = await realpath(ctxRel);
        df =
          img.strategy === 's2i' || img.strategy === 'buildpacks' || img.strategy === 'node'
            ? ctx
            : await realpath(dfRel); // S2I decides its steps itself: no Dockerfile
      } catch {
        throw new KilnError(
          'DOCKERFILE_NOT_FOUND',
          `${img.dockerfile} not found at ${short(commit)} (context ${img.context})`,
          { hint: `check images[].dockerfile of project ${p.name}` },
        );
      }
      for (const [what, path] of [
        ['context', ctx],
        ['dockerfile', df],
      ] as const) {
        const r = relative(root, path);
        if (r === '..' || r.startsWith('..' + sep) || isAbsolute(r)) {
          throw new KilnError('PATH_OUTSIDE', `${what} ${img[what]} leaves the repository (through a symlink)`);
        }
      }
      if (
        img.strategy !== 's2i' &&
        img.strategy !== 'buildpacks' &&
        img.strategy !== 'node' &&
        !(await stat(df)).isFile()
      )
        throw new KilnError('DOCKERFILE_NOT_FOUND', `${img.dockerfile} is not a file`);

      const branch = build.ref.startsWith('refs/heads/') ? build.ref.slice(11) : undefined;
      const tag = build.ref.startsWith('refs/tags/') ? build.ref.slice(10) : undefined;
      const rendered = renderTags(img.tags, {
        ...(branch !== undefined ? { branch } : {}),
        ...(tag !== undefined ? { tag } : {}),
        ref: build.ref,
        sha: commit,
        buildNumber: build.number,
        isDefaultBranch: branch !== undefined && branch === p.defaultBranch,
        now: new Date(),
      });
      const repo = `${p.registry}/${img.name}`;
      let tags = rendered.map((t) => `${repo}:${t}`);
      // a rebuild for a new base pushes exactly the tags the build it repeats pushed (not a new {{buildNumber}})
      const original =
        build.trigger.type === 'base-change' && build.trigger.of ? this.store.getBuild(build.trigger.of) : undefined;
      if (original?.tags.length && original.tags.every((t) => t.startsWith(repo + ':'))) tags = original.tags;
      update({ phase: 'building', commit, tags });

      const job: WorkerJob = {
        buildId: build.id,
        contextDir: ctx,
        dockerfile: df,
        buildArgs: img.buildArgs,
        labels: {
          'org.opencontainers.image.source': redactUrl(p.repository),
          'org.opencontainers.image.revision': commit,
        },
        secrets: Object.fromEntries(
          Object.entries(img.secrets).map(([id, ref]) => [id, readSecretRef(ref, `secret ${id}`)]),
        ),
        tags,
        insecureRegistries,
        logFile: log,
      };
      if (img.target) job.target = img.target;
      job.source = {
        repository: redactUrl(p.repository),
        commit,
        ...(build.ref ? { ref: build.ref } : {}),
        context: img.context,
        dockerfile: img.dockerfile,
        image: img.name,
      };
      job.timeoutSeconds = timeoutS;
      job.triggeredBy = {
        type: build.trigger.type,
        ...('by' in build.trigger && typeof build.trigger.by === 'string' ? { by: build.trigger.by } : {}),
        ...('reason' in build.trigger && typeof build.trigger.reason === 'string'
          ? { reason: build.trigger.reason }
          : {}),
      };
      if (img.strategy !== 'dockerfile' || img.backend !== 'kiln')
        Object.assign(job, { strategy: img.strategy, backend: img.backend });
      if (img.s2i) Object.assign(job, { s2i: img.s2i, project: p.name });
      if (img.buildpacks) Object.assign(job, { buildpacks: img.buildpacks, project: p.name });
      if (img.node) Object.assign(job, { node: img.node });
      if (this.opts.runner.fetchesSource && p.gitCredentials) {
        job.gitAuth = readGitCredentials(p.gitCredentials, `project ${p.name}: gitCredentials`);
      }
      if (registryAuth) job.registryAuth = registryAuth;
      debugMark(`service: build ${build.id}: to the runner`);
      const outcome = await this.opts.runner.run(job, this.hooksFor(build.id, stages, current, update), ac.signal);
      debugMark(`service: build ${build.id}: outcome`);
      await this.conclude(build.id, outcome, update);
      debugMark(`service: build ${build.id}: recorded`);
    } catch (e) {
      await this.failed(build.id, e, ac, timeoutS, line, update);
    } finally {
      clearTimeout(timer);
      this.opts.runner.release?.(build.id);
      if (useWs) this.busyWorkspaces.delete(wsKey);
      else await this.mirrors.removeCheckout(checkout).catch(() => rm(checkout, { recursive: true, force: true }));
      await this.retention(p);
    }
  }

  /** A running build's record: `update` commits a patch, announces it and keeps the running entry current. */
  private tracker(build: Build): {
    update: (patch: Parameters<Store['updateBuild']>[1]) => void;
    current: () => Build;
  } {
    let current = build;
    return {
      current: () => current,
      update: (patch) => {
        current = this.store.updateBuild(build.id, patch);
        this.announce(current);
        const r = this.running.get(build.id);
        if (r) r.build = current;
      },
    };
  }

  /** The runner's hooks of a build: phases, stages and the runner's state into the store. */
  private hooksFor(
    id: string,
    stages: BuildStage[],
    current: () => Build,
    update: (patch: Parameters<Store['updateBuild']>[1]) => void,
  ): RunHooks {
    return {
      onPhase: (ph) => {
        if (ph === 'pushing' && current().phase === 'building') update({ phase: 'pushing' });
      },
      onStage: (s, i) => {
        stages[i + 1] = s;
        this.store.setStages(id, stages);
      },
      onRunnerState: (state) => {
        try {
          this.store.setRunnerState(id, state);
        } catch (e) {
          this.say(`kiln serve: build ${id}: ${errorMessage(e)}`);
        }
      },
    };
  }

  /**
   * Record a runner's outcome: succeeded with its digest; a detached build (the service stops, the runner keeps
   * it running: a build pod) stays active for the next process; anything else throws for `failed`.
   */
  private async conclude(
    id: string,
    outcome: RunOutcome,
    update: (patch: Parameters<Store['updateBuild']>[1]) => void,
  ): Promise<void> {
    if (outcome.ok) {
      this.store.setBases(id, outcome.bases, outcome.rebase);
      update({ phase: 'succeeded', digest: outcome.digest, reason: null });
      return;
    }
    if (outcome.code === RUNNER_DETACHED) {
      this.say(`kiln serve: build ${id}: ${outcome.message}`);
      return;
    }
    throw new KilnError(outcome.code, outcome.message, { cause: outcome.reason });
  }

  /** A build's failure path: timed out, cancelled, the service stopping, or failed with its reason. */
  private async failed(
    id: string,
    e: unknown,
    ac: AbortController,
    timeoutS: number,
    line: (s: string) => Promise<void>,
    update: (patch: Parameters<Store['updateBuild']>[1]) => void,
  ): Promise<void> {
    const why = ac.signal.aborted ? String(ac.signal.reason) : undefined;
    const msg = errorMessage(e);
    if (why === 'timed-out') {
      await line(`\nERROR: timed out after ${timeoutS}s`);
      update({ phase: 'timed-out', reason: `timed out after ${timeoutS}s` });
    } else if (why === 'cancelled') {
      await line(`\nCANCELLED`);
      const stored = this.store.getBuild(id);
      update({ phase: 'cancelled', reason: stored?.reason ?? 'cancelled' });
    } else if (why === 'stopping') {
      await line(`\nERROR: the service stopped`);
      update({ phase: 'failed', reason: 'interrupted: the service stopped' });
    } else {
      const reason =
        isKilnError(e) && typeof (e as Error).cause === 'string' ? String((e as Error).cause) : msg.split('\n')[0];
      if (!(isKilnError(e) && typeof (e as Error).cause === 'string')) await line(`\nERROR: ${msg}`);
      try {
        update({ phase: 'failed', reason: reason ?? 'failed' });
      } catch (e2) {
        this.say(`kiln serve: build ${id}: ${errorMessage(e2)}`);
      }
    }
  }

  /** Apply the project's retention (its removed builds' logs go too); never throws. */
  private async retention(p: Project): Promise<void> {
    try {
      const gone = this.store.applyRetention(p.name, p.retention);
      await Promise.all(gone.map((id) => rm(this.logPath(id), { force: true })));
    } catch (e) {
      this.say(`kiln serve: retention for ${p.name}: ${errorMessage(e)}`);
    }
  }

  /**
   * Follow a build a previous process left running, which the runner adopted at start-up (its build pod still
   * runs): from where its log ends to its end, recorded as `execute` records a build; its timeout counts from
   * when it started.
   */
  private resume(build: Build): void {
    const ac = new AbortController();
    const r: Running = { build, ac, done: Promise.resolve() };
    this.running.set(build.id, r);
    r.done = this.resumeBuild(build, ac).finally(() => {
      this.running.delete(build.id);
      this.schedule();
    });
  }

  private async resumeBuild(build: Build, ac: AbortController): Promise<void> {
    const logFile = this.logPath(build.id);
    const line = (s: string): Promise<void> => appendFile(logFile, s + '\n').catch(() => undefined);
    const p = this.store.getProject(build.project);
    const timeoutS = p ? timeoutFor(build, p, this.opts.config.timeoutSeconds) : this.opts.config.timeoutSeconds;
    const elapsed = build.startedAt ? (Date.now() - Date.parse(build.startedAt)) / 1000 : 0;
    const timer = setTimeout(() => ac.abort('timed-out'), Math.max(1, timeoutS - elapsed) * 1000);
    const { update, current } = this.tracker(build);
    if (build.cancelRequested) ac.abort('cancelled');
    try {
      const resume = this.opts.runner.resume?.bind(this.opts.runner);
      if (!resume) throw new KilnError('INTERNAL', 'the runner adopted a build it cannot follow');
      const left = { id: build.id, logFile, state: this.store.runnerState(build.id) };
      const outcome = await resume(left, this.hooksFor(build.id, [...build.stages], current, update), ac.signal);
      await this.conclude(build.id, outcome, update);
    } catch (e) {
      await this.failed(build.id, e, ac, timeoutS, line, update);
    } finally {
      clearTimeout(timer);
      if (p) await this.retention(p);
    }
  }

  /**
   * A base-change build of a rebasable image: the image the original build pushed is rebased onto the base's
   * current digest (kiln rebase: base layers swapped, layers above kept by digest — mounted or found, never
   * uploaded again) and pushed to the original's tags. No checkout, no worker, no step runs. Returns false (after a
   * log line, nothing pushed) when the image itself refuses (its annotations name another base, or a layer that
   * depends on it): the caller then rebuilds it in the same build record. Registry failures fail the build.
   */
  private async rebaseBuild(
    build: Build,
    p: Project,
    stages: BuildStage[],
    line: (s: string) => Promise<void>,
    update: (patch: Parameters<Store['updateBuild']>[1]) => void,
    signal: AbortSignal,
  ): Promise<boolean> {
    const orig = build.trigger.of ? this.store.getBuild(build.trigger.of) : undefined;
    const base = build.trigger.base;
    const repo = `${p.registry}/${build.image}`;
    if (!orig?.digest || !base || !orig.tags.length || !orig.tags.every((t) => t.startsWith(repo + ':'))) {
      await line('#0 the build to rebase pushed no tags of this image: rebuilding instead');
      return false;
    }
    update({ phase: 'building', commit: orig.commit, tags: orig.tags });
    const stage: BuildStage = {
      name: `rebase ${repo}@${orig.digest.slice(0, 19)} onto ${base}`,
      kind: 'rebase',
      status: 'running',
      startedAt: new Date().toISOString(),
    };
    stages.push(stage);
    this.store.setStages(build.id, stages);
    const t0 = performance.now();
    await line(`#1 [rebase] ${repo}@${orig.digest} onto ${base} (${build.trigger.reason ?? 'base changed'})`);
    const host = p.registry.split('/')[0] as string;
    const rc = p.registryCredentials;
    const own = rc?.username ? { username: rc.username, password: readSecretRef(rc, 'registry password') } : undefined;
    const keychain = this.registry.credentials;
    const registry: RegistryOptions & { signal: AbortSignal } = {
      insecureRegistries: [...this.insecureHosts(), ...(p.insecureRegistry ? [host] : [])],
      credentials: async (h) => (own && h === host ? own : keychain?.(h)),
      maxRetries: 2,
      signal,
    };
    try {
      let res;
      try {
        res = await rebase(`${repo}@${orig.digest}`, { base, registry, targets: orig.tags });
      } catch (e) {
        // the image itself says no (refused before anything is pushed): rebuild in this same build record
        if (!isKilnError(e) || !/^REBASE_(UNSAFE|NOT_PREFIX|NO_BASE)$/.test(e.code)) throw e;
        await line(`#1 ${errorMessage(e).split('\n')[0]}: rebuilding instead`);
        stages.length = 0;
        this.store.setStages(build.id, stages);
        return false;
      }
      const first = res.images[0];
      for (const r of res.images) {
        await line(
          `#1 ${r.replaced.from} base layer(s) → ${r.replaced.to} of ${r.newBase.name}@${r.newBase.digest}, ${r.kept} layer(s) kept`,
        );
      }
      for (const t of orig.tags) await line(`#1 pushing ${t} done`);
      stages[stages.length - 1] = { ...stage, status: 'done', durationMs: Math.round(performance.now() - t0) };
      this.store.setStages(build.id, stages);
      await line(`#1 DONE ${((performance.now() - t0) / 1000).toFixed(1)}s`);
      await line(`\nrebased ${res.digest} (${orig.tags.join(', ')})`);
      const baseName = (n: string): boolean => sameImageName(n, base);
      const bases = (orig.bases ?? []).map((b) =>
        baseName(b.name) && first ? { name: b.name, digest: first.newBase.digest } : b,
      );
      const verdict = orig.rebase && first ? { ...orig.rebase, baseLayers: first.replaced.to } : orig.rebase;
      this.store.setBases(build.id, bases, verdict);
      update({ phase: 'pushing' });
      update({ phase: 'succeeded', digest: res.digest, reason: null });
      return true;
    } finally {
      await closeTransports(registry);
    }
  }

  /**
   * Graceful stop: take no new builds, let running ones finish up to `graceMs`, then cancel them cleanly (each
   * becomes `failed: interrupted: the service stopped`; queued builds stay queued for the next start).
   */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    this.resolveClosing();
    await this.bases.stop();
    const all = [...this.running.values()];
    const finished = Promise.all(all.map((r) => r.done));
    let t: NodeJS.Timeout | undefined;
    const expired = new Promise<'expired'>((r) => (t = setTimeout(() => r('expired'), graceMs)));
    if ((await Promise.race([finished, expired])) === 'expired') {
      for (const r of this.running.values()) r.ac.abort('stopping');
      await finished;
    }
    clearTimeout(t);
    await this.opts.runner.close();
    await this.mirrors.close();
    await closeTransports(this.registry);
    this.store.close();
  }

  /** Ids of the builds running now (tests, metrics). */
  runningIds(): string[] {
    return [...this.running.keys()];
  }

  /** Log files of builds that no longer exist (a crash between delete and unlink): removed at start. */
  async pruneOrphanLogs(): Promise<void> {
    for (const f of await readdir(this.logsDir).catch(() => [] as string[])) {
      const id = f.replace(/\.log$/, '');
      if (!this.store.getBuild(id)) await rm(join(this.logsDir, f), { force: true });
    }
  }
}
