/**
 * Git sources of the build service: one persistent bare mirror per repository under `<data-dir>/git`, fetched
 * before each resolve (so a second build of a repository transfers only new objects), refs and commits resolved
 * against it, and commits materialised into build contexts.
 *
 * Checkouts are written with `read-tree` into a throwaway index plus `checkout-index` straight from the mirror:
 * no clone, no worktree registration in the mirror to prune, and **no `.git` in the checkout at all** — like
 * BuildKit's git contexts by default, so a Dockerfile can neither `COPY` a pointer to a host path nor the mirror's
 * refs. Submodules are fetched into mirrors of their own (cached across builds like any repository, same URL rules,
 * credentials only for the project's own host) and checked out the same way.
 *
 * Concurrency: calls for one mirror run one after another in this process (a promise chain, which also lets a
 * burst of resolves share one fetch), and every fetch (and the mirror's creation) holds an `flock` on
 * `<mirror>.lock` so two service processes never write one mirror at once — taken by `flock(1)` around the
 * `git fetch` process itself, one process start per fetch rather than a lock holder beside it; an http(s) mirror is
 * fetched in this process (smart-http.ts: two requests, the pack into one git process) with a holder taken while
 * the server lists its refs, and `git fetch` where that client gives up. Reads (refs, commits, checkouts) need no
 * lock: a fetch only adds objects and moves refs.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import {
  access,
  chmod,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { KilnError, isKilnError } from '../../errors.js';
import { debugMark } from '../../util/debug.js';
import type { Project } from '../model.js';
import {
  ASKPASS_SCRIPT,
  baseEnv,
  configArgs,
  gitAuth,
  interrupted,
  lastLine,
  lockFailure,
  lockFile,
  runGit,
  type GitAuth,
  type GitRun,
} from './exec.js';
import { SmartFetchUnsupported, smartFetch, smartFetchUsable } from './smart-http.js';
import { mirrorDirName, parseRepositoryUrl, redactText, refNameOk, resolveSubmoduleUrl, type RepoUrl } from './url.js';

export { redactUrl, parseRepositoryUrl } from './url.js';

/** The parts of a project the git room reads. */
export type GitProject = Pick<Project, 'name' | 'repository' | 'gitCredentials' | 'depth' | 'lfs' | 'submodules'>;

export interface GitMirrorsOptions {
  /** Where mirrors live: `<data-dir>/git`. Created when missing. */
  dir: string;
  /** `file://` URLs and absolute paths as repositories (`allowFileRepositories` of the server config). */
  allowFile: boolean;
  /** Notes worth a line in the service log (e.g. LFS skipped); checkout also returns them. */
  log?: (line: string) => void;
  /**
   * Parent of the private 0700 dir (askpass script, temporary indexes); default `dir` itself (a `.private-*`
   * entry no mirror name can take), so whatever a killed process leaves goes with the data dir.
   */
  tmpDir?: string;
}

/** What to build: a branch, tag or full ref, and/or a commit (full or abbreviated hex). */
export interface RefRequest {
  ref?: string;
  commit?: string;
}

/** How `resolve` treats the mirror. */
export interface ResolveOptions {
  /**
   * `always` (default): fetch first, so a branch or tag resolves to what the server has now. `if-missing`: a request
   * naming only a commit the mirror already has resolves without a fetch (a build whose commit was resolved when it
   * was requested); anything else fetches.
   */
  fetch?: 'always' | 'if-missing';
}

export interface ResolvedRef {
  /** Full commit id. */
  commit: string;
  /** Full ref (`refs/heads/main`, `refs/tags/v1`), `` when only a commit was given. */
  ref: string;
}

export interface CheckoutResult {
  commit: string;
  dir: string;
  /** Things the build log should mention (LFS not installed, …). */
  notes: string[];
}

/** A repository as this room handles it: project settings, parsed URL, mirror path, the host credentials are for. */
interface Source {
  project: GitProject;
  repo: RepoUrl;
  path: string;
  /** The top-level project's host: submodules elsewhere get no credentials. */
  credHost: string;
}

/** One checkout in progress (of the project's repository or one of its submodules). */
interface CheckoutJob {
  commit: string;
  dest: string;
  /** Submodule nesting level (0: the project's repository). */
  level: number;
  notes: string[];
  signal: AbortSignal | undefined;
  /** A persistent index to write (a workspace's), instead of a throwaway one. */
  index?: string;
}

/** Per-mirror state of this process: the promise chain and which fetches finished after which request. */
interface MirrorState {
  chain: Promise<void>;
  seq: number;
  /** Fetches made by this process (every MAINTENANCE_EVERY-th one runs git's automatic maintenance). */
  fetches: number;
  /** Credentials+depth key → sequence number of the latest successful fetch's start. */
  fresh: Map<string, number>;
}

/** What a callback running under a mirror's lock can do. */
interface MirrorCtx {
  path: string;
  git(args: string[], input?: string): Promise<GitRun>;
  /** Fetches one commit by id (for commits no branch or tag reaches; servers with protocol v2 allow it). */
  fetchObject(sha: string): Promise<boolean>;
}

const HEX = /^[0-9a-f]{4,64}$/;
const FULL_HEX = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const REFSPECS = ['+refs/heads/*:refs/heads/*', '+refs/tags/*:refs/tags/*'];
const MAX_SUBMODULE_DEPTH = 8;
/** Fetches of a mirror per run of git's automatic maintenance (see withMirror). */
const MAINTENANCE_EVERY = 16;
const REF_HINT = 'give a branch (main), a tag (v1.2), a full ref (refs/heads/main or refs/tags/v1.2) or a commit';

function q(s: string): string {
  return JSON.stringify(s);
}

/** Git's ref-name rules (git-check-ref-format), checked before the name reaches git. */
function checkRefName(ref: string): void {
  const bad = ref === '' || ref === '@' || ref.startsWith('-') || ref.startsWith('/') || !refNameOk(ref);
  if (bad) throw new KilnError('GIT_REF_INVALID', `ref ${q(ref)} is not a valid git ref name`, { hint: REF_HINT });
}

function checkHex(commit: string): string {
  const c = commit.toLowerCase();
  if (!HEX.test(c)) {
    throw new KilnError('GIT_COMMIT_INVALID', `commit ${q(commit)} is not a commit id`, {
      hint: 'give 4 to 64 hexadecimal digits of the commit id',
    });
  }
  return c;
}

function fetchHint(stderr: string): string {
  if (/authentication failed|could not read (username|password)|terminal prompts disabled|\b40[13]\b/i.test(stderr)) {
    return "check the project's gitCredentials (username, passwordEnv or passwordFile) and that this account may read the repository";
  }
  if (/host key verification failed/i.test(stderr)) {
    return "add the server's host key to the file named by gitCredentials.knownHostsFile";
  }
  if (/permission denied \(publickey/i.test(stderr)) {
    return 'check gitCredentials.sshKeyFile and that its public key has access to the repository';
  }
  if (/could not resolve host|connection refused|failed to connect|timed out|network is unreachable/i.test(stderr)) {
    return 'check the repository URL and that the service can reach its host';
  }
  if (/not found|does not appear to be a git repository|repository .* does not exist/i.test(stderr)) {
    return 'check the repository URL';
  }
  return 'check the repository URL and gitCredentials; `git ls-remote URL` on the service host shows the same error';
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

function commitNotFound(src: Source, hex: string): KilnError {
  return new KilnError('GIT_COMMIT_NOT_FOUND', `commit ${q(hex)} not found in ${src.repo.url}`, {
    hint:
      src.project.depth > 0
        ? `the mirror keeps only ${src.project.depth} commit(s) per branch (depth): an older commit is not there; raise depth or set it to 0`
        : 'check the commit id; only commits of branches and tags are fetched unless the full 40-digit id is given',
  });
}

const STALE_LOCK = /Unable to create '[^']*\.lock': File exists/;

/** Removes every `*.lock` file in a mirror (only called while holding the mirror's lock). */
async function removeLockFiles(path: string): Promise<void> {
  const names = await readdir(path, { recursive: true });
  for (const n of names) if (n.endsWith('.lock')) await rm(join(path, n), { force: true });
}

/** Private dirs of live instances, removed at process exit when nobody called `close()`. */
const liveDirs = new Set<string>();
let exitHook = false;

function trackDir(dir: string): void {
  liveDirs.add(dir);
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
  });
}

/** Empties `dir` (keeping it): a failed checkout leaves nothing half-written behind. */
async function emptyDir(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const n of names) await rm(join(dir, n), { recursive: true, force: true });
}

/** Persistent bare mirrors of the service's repositories; see the module comment. */
/** The names in a repository's `packed-refs` file (none when it has none). */
async function packedRefs(gitDir: string): Promise<Map<string, string>> {
  const text = await readFile(join(gitDir, 'packed-refs'), 'utf8').catch(() => '');
  const refs = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#') || line.startsWith('^')) continue;
    const space = line.indexOf(' ');
    const name = line.slice(space + 1);
    if (name) refs.set(name, line.slice(0, space));
  }
  return refs;
}

/**
 * The commit a branch (`refs/heads/…`) points to, read from the git dir's files as git stores it (a loose ref, else
 * a line of packed-refs), or undefined. A branch always names a commit (git refuses anything else), so no git
 * process is needed to find or peel it — one process less in every build's fetch.
 */
async function branchCommit(gitDir: string, ref: string): Promise<string | undefined> {
  if (!ref.startsWith('refs/heads/')) return undefined;
  const loose = await readFile(join(gitDir, ref), 'utf8').catch(() => undefined);
  if (loose !== undefined) {
    const oid = loose.trim();
    return FULL_HEX.test(oid) ? oid : undefined;
  }
  const oid = (await packedRefs(gitDir)).get(ref);
  return oid !== undefined && FULL_HEX.test(oid) ? oid : undefined;
}

export class GitMirrors {
  private readonly states = new Map<string, MirrorState>();
  /** Repository URLs the in-process fetch gave up on for good (git fetched them where it could not). */
  private readonly gitOnly = new Set<string>();
  private privateDir: Promise<{ dir: string; askpass: string }> | undefined;
  private lfs: Promise<boolean> | undefined;
  private readonly log: (line: string) => void;

  constructor(private readonly opts: GitMirrorsOptions) {
    this.log = opts.log ?? (() => undefined);
  }

  /** Path of the mirror a project's repository is kept in (for tests and the admin's curiosity). */
  mirrorPath(project: Pick<Project, 'repository' | 'depth'>): string {
    const repo = parseRepositoryUrl(project.repository, { allowFile: this.opts.allowFile });
    return join(this.opts.dir, mirrorDirName(repo, project.depth));
  }

  /**
   * Fetches the project's mirror and resolves `req`: a short name is a branch, else a tag; `refs/…` is taken as
   * given (only `refs/heads/*` and `refs/tags/*` are mirrored); a commit must exist after fetching and, with a ref,
   * be reachable from it. A full commit id that no branch or tag reaches (or older than a shallow mirror) is
   * fetched by id. Errors: `GIT_URL_*`, `GIT_FETCH_FAILED`, `GIT_REF_INVALID`, `GIT_REF_NOT_FOUND`,
   * `GIT_COMMIT_INVALID`, `GIT_COMMIT_NOT_FOUND`, `GIT_COMMIT_AMBIGUOUS`, `GIT_COMMIT_NOT_REACHABLE`,
   * `GIT_CREDENTIALS_MISSING`, `GIT_LOCK_FAILED`, `INTERRUPTED`.
   */
  async resolve(
    project: GitProject,
    req: RefRequest,
    signal?: AbortSignal,
    opts: ResolveOptions = {},
  ): Promise<ResolvedRef> {
    const src = this.source(project);
    const ref = req.ref === undefined || req.ref === '' ? undefined : req.ref;
    const hex = req.commit === undefined || req.commit === '' ? undefined : checkHex(req.commit);
    if (ref === undefined && hex === undefined) {
      throw new KilnError('GIT_REF_INVALID', 'neither a ref nor a commit was given', { hint: REF_HINT });
    }
    if (ref !== undefined) checkRefName(ref);
    if (opts.fetch === 'if-missing' && ref === undefined && hex !== undefined) {
      // a commit never changes: when the mirror has it, a fetch would only cost time (a round trip to the forge)
      const commit = await this.findCommit(this.local(src), hex, false).catch(() => undefined);
      if (commit !== undefined) return { commit, ref: '' };
    }
    return this.withMirror(src, signal, async (m) => {
      let full = '';
      let refCommit: string | undefined;
      if (ref !== undefined) {
        [full, refCommit] = await this.findRef(m, src.repo, ref);
        if (hex === undefined) return { commit: refCommit, ref: full };
      }
      const commit = await this.findCommit(m, hex as string, ref === undefined);
      if (commit === undefined) throw commitNotFound(src, hex as string);
      if (refCommit !== undefined && commit !== refCommit) {
        const r = await m.git(['merge-base', '--is-ancestor', commit, refCommit]);
        if (r.code !== 0) {
          throw new KilnError(
            'GIT_COMMIT_NOT_REACHABLE',
            `commit ${commit.slice(0, 12)} is not reachable from ${full} in ${src.repo.url}`,
            {
              hint:
                project.depth > 0
                  ? `the mirror keeps only ${project.depth} commit(s) per branch (depth); raise depth or set it to 0`
                  : 'give the branch or tag that contains the commit, or only the commit',
            },
          );
        }
      }
      return { commit, ref: full };
    });
  }

  /**
   * The full name of the branch or tag `ref` names (short names: branches before tags) if the mirror has it now, else
   * undefined — no fetch, no lock (it never waits for a fetch in progress), no git process. Why: a manual build of a branch the
   * mirror knows can be queued at once and resolve its commit in its own fetch (one fetch per build, none in the
   * request); an unknown name still goes through `resolve`, which fetches and reports it.
   */
  async mirroredRef(project: GitProject, ref: string): Promise<string | undefined> {
    checkRefName(ref);
    const { path } = this.source(project);
    const candidates = ref.startsWith('refs/') ? [ref] : [`refs/heads/${ref}`, `refs/tags/${ref}`];
    if (!candidates.every((c) => c.startsWith('refs/heads/') || c.startsWith('refs/tags/'))) return undefined;
    // read as git stores them (a loose file, else a line of packed-refs): no git process in the request path
    let packed: Map<string, string> | undefined;
    for (const c of candidates) {
      if ((await stat(join(path, c)).catch(() => undefined))?.isFile()) return c;
      packed ??= await packedRefs(path);
      if (packed.has(c)) return c;
    }
    return undefined;
  }

  /** Read-only access to a mirror as it is (no fetch, no lock: a fetch only adds objects and moves refs). */
  private local(src: Source): MirrorCtx {
    const base = [...configArgs(this.opts.allowFile), `--git-dir=${src.path}`];
    return {
      path: src.path,
      git: (args, input) => runGit([...base, ...args], { env: baseEnv(), input }),
      fetchObject: async () => false,
    };
  }

  /**
   * Writes the tree of `commit` (a full id, as `resolve` returned it; the mirror must hold it) into `dest`, an
   * empty or missing directory, with submodules when `project.submodules` and LFS files when `project.lfs` and
   * git-lfs is installed. No `.git` is written. On failure `dest` is left empty.
   */
  async checkout(
    project: GitProject,
    commit: string,
    dest: string,
    signal?: AbortSignal,
    index?: string,
  ): Promise<CheckoutResult> {
    const src = this.source(project);
    const c = checkHex(commit);
    if (!FULL_HEX.test(c)) {
      throw new KilnError('GIT_COMMIT_INVALID', `checkout needs a full commit id, not ${q(commit)}`, {
        hint: 'pass the commit resolve() returned',
      });
    }
    await mkdir(dest, { recursive: true });
    if ((await readdir(dest)).length > 0) {
      throw new KilnError('GIT_CHECKOUT_FAILED', `checkout directory ${dest} is not empty`);
    }
    const notes: string[] = [];
    try {
      await this.materialize(src, { commit: c, dest, level: 0, notes, signal, ...(index ? { index } : {}) });
    } catch (e) {
      await emptyDir(dest);
      throw e;
    }
    return { commit: c, dir: dest, notes };
  }

  /**
   * Bring a persistent workspace `dest` to exactly the tree of `commit`, touching only what differs from the last
   * commit checked out there (`index` is the workspace's own git index, kept outside it: no `.git` in the build
   * context). Why: kiln's stat cache and incremental COPY key files by path, inode and mtime — a fresh checkout per
   * build would make every build re-read and re-copy every file. Tracked files are reset to the commit (local
   * changes discarded), files the commit does not have are removed. A workspace without its index, or a project
   * with submodules or LFS, gets a fresh checkout. On failure the workspace is emptied (the next build starts over).
   */
  async updateWorkspace(
    project: GitProject,
    commit: string,
    dest: string,
    index: string,
    signal?: AbortSignal,
    opts: { pruned?: boolean } = {},
  ): Promise<CheckoutResult> {
    const c = checkHex(commit);
    if (!FULL_HEX.test(c)) {
      throw new KilnError('GIT_COMMIT_INVALID', `checkout needs a full commit id, not ${q(commit)}`);
    }
    await mkdir(dest, { recursive: true });
    if (this.freshWorkspace(project) || !(await exists(index))) {
      await emptyDir(dest);
      await rm(index, { force: true });
      return this.checkout(project, c, dest, signal, project.submodules || project.lfs ? undefined : index);
    }
    const { repo } = this.source(project);
    const git = this.workspaceGit(project, dest, index, signal);
    try {
      const r = await git(['read-tree', '--reset', '-u', c]);
      if (r.code !== 0)
        throw new KilnError(
          'GIT_CHECKOUT_FAILED',
          `cannot update to ${c.slice(0, 12)} of ${repo.url}: ${lastLine(r.stderr)}`,
        );
      debugMark('git: workspace read-tree done');
      if (opts.pruned !== true) await this.removeExtras(repo, dest, git);
    } catch (e) {
      await emptyDir(dest);
      await rm(index, { force: true });
      throw e;
    }
    return { commit: c, dir: dest, notes: [] };
  }

  /**
   * Removes what a workspace holds beyond the files of its index (what no checkout wrote); true when done, false
   * when there is nothing to prune against (no index yet, or a project whose workspace is checked out afresh).
   * Why separate: it needs neither the mirror nor the new commit, so the service runs it while the mirror fetches
   * and then calls `updateWorkspace(…, { pruned: true })` — removing extras before `read-tree` leaves the same tree
   * as after it (read-tree writes only the commit's files), one git process less after the fetch. Throws like
   * `updateWorkspace`; the workspace is then emptied.
   */
  async pruneWorkspace(project: GitProject, dest: string, index: string, signal?: AbortSignal): Promise<boolean> {
    if (this.freshWorkspace(project) || !(await exists(index)) || !(await exists(dest))) return false;
    try {
      await this.removeExtras(this.source(project).repo, dest, this.workspaceGit(project, dest, index, signal));
    } catch (e) {
      await emptyDir(dest);
      await rm(index, { force: true });
      throw e;
    }
    return true;
  }

  /** Projects whose workspace is checked out afresh for every build (submodules, LFS). */
  private freshWorkspace(project: GitProject): boolean {
    return project.submodules || project.lfs;
  }

  /** git on a workspace: the mirror's objects, the workspace's own index (kept outside it). */
  private workspaceGit(
    project: GitProject,
    dest: string,
    index: string,
    signal: AbortSignal | undefined,
  ): (args: string[]) => Promise<GitRun> {
    const { path } = this.source(project);
    const env = { ...baseEnv(), GIT_INDEX_FILE: index };
    const wt = [...configArgs(this.opts.allowFile), `--git-dir=${path}`, `--work-tree=${dest}`];
    return (args) => runGit([...wt, ...args], { env, signal, cwd: dest });
  }

  /** Removes the workspace's files and directories its index does not track. */
  private async removeExtras(repo: RepoUrl, dest: string, git: (args: string[]) => Promise<GitRun>): Promise<void> {
    const r = await git(['ls-files', '--others', '-z', '--directory']);
    if (r.code !== 0)
      throw new KilnError('GIT_CHECKOUT_FAILED', `cannot list files of ${repo.url}: ${lastLine(r.stderr)}`);
    for (const extra of r.stdout
      .toString('utf8')
      .split('\0')
      .filter((x) => x !== '')) {
      const target = join(dest, extra);
      if (!target.startsWith(dest + '/')) continue;
      await rm(target, { recursive: true, force: true });
    }
  }

  /** Removes a checkout (there is no worktree registration to prune: checkouts never touch the mirror). */
  async removeCheckout(dir: string): Promise<void> {
    await rm(dir, { recursive: true, force: true });
  }

  /**
   * Paths that differ between commits `from` and `to` (renames as a deletion plus an addition, so path filters see
   * both names), from the mirror as it is (no fetch). `undefined` when either commit is unknown to the mirror —
   * e.g. the all-zero `before` of a new branch, or history older than a shallow mirror — meaning "unknown".
   */
  async changedPaths(project: GitProject, from: string, to: string): Promise<string[] | undefined> {
    const { path } = this.source(project);
    const a = from.toLowerCase();
    const b = to.toLowerCase();
    if (!HEX.test(a) || !HEX.test(b) || /^0+$/.test(a) || !(await exists(join(path, 'HEAD')))) return undefined;
    const env = baseEnv();
    const git = (args: string[], input?: string): Promise<GitRun> =>
      runGit([`--git-dir=${path}`, ...args], { env, input });
    const m: MirrorCtx = { path, git, fetchObject: async () => false };
    const ca = await this.findCommit(m, a, false);
    const cb = await this.findCommit(m, b, false);
    if (ca === undefined || cb === undefined) return undefined;
    const r = await git(['diff', '--name-only', '--no-renames', '--no-ext-diff', '-z', ca, cb]);
    if (r.code !== 0) return undefined;
    return r.stdout
      .toString('utf8')
      .split('\0')
      .filter((p) => p !== '');
  }

  /**
   * The message of `commit` (a full id) in the project's mirror as it is (no fetch), or undefined when the mirror
   * lacks it. For skip markers (`[skip ci]`) of commits found by polling, whose forge sent no message.
   */
  async commitMessage(project: GitProject, commit: string): Promise<string | undefined> {
    const { path } = this.source(project);
    const c = commit.toLowerCase();
    if (!FULL_HEX.test(c) || !(await exists(join(path, 'HEAD')))) return undefined;
    const r = await runGit([`--git-dir=${path}`, 'show', '-s', '--format=%B', `${c}^{commit}`, '--'], {
      env: baseEnv(),
    });
    return r.code === 0 ? r.stdout.toString('utf8') : undefined;
  }

  /**
   * The branches and tags of the project's repository as its server has them now (`git ls-remote`), without
   * touching the mirror: full ref → commit, annotated tags peeled to their commit. Same URL rules and credentials
   * as a fetch. For the polling fallback, which asks often and fetches only when something moved. Errors:
   * `GIT_URL_*`, `GIT_CREDENTIALS_MISSING`, `GIT_LS_REMOTE_FAILED`, `INTERRUPTED`.
   */
  async lsRemote(project: GitProject, signal?: AbortSignal): Promise<Map<string, string>> {
    const src = this.source(project);
    const auth = await this.auth(src);
    try {
      const r = await runGit(
        [...configArgs(this.opts.allowFile), 'ls-remote', '--heads', '--tags', '--', src.repo.url],
        { env: { ...baseEnv(), ...auth.env }, signal },
      );
      if (r.code !== 0) {
        throw new KilnError(
          'GIT_LS_REMOTE_FAILED',
          `cannot list the refs of ${src.repo.url}: ${redactText(lastLine(r.stderr), auth.secrets)}`,
          { hint: fetchHint(r.stderr) },
        );
      }
      const refs = new Map<string, string>();
      const peeled = new Map<string, string>();
      for (const line of r.stdout.toString('utf8').split('\n')) {
        const m = /^([0-9a-f]{40}|[0-9a-f]{64})\t(refs\/(?:heads|tags)\/[^\t]+?)(\^\{\})?$/.exec(line);
        if (m === null) continue;
        (m[3] === undefined ? refs : peeled).set(m[2] as string, m[1] as string);
      }
      for (const [ref, commit] of peeled) refs.set(ref, commit);
      return refs;
    } finally {
      await auth.cleanup();
    }
  }

  /** Removes this instance's private temp dir (askpass script, temporary indexes). */
  async close(): Promise<void> {
    const p = this.privateDir;
    this.privateDir = undefined;
    if (p === undefined) return;
    const { dir } = await p;
    await rm(dir, { recursive: true, force: true });
    liveDirs.delete(dir);
  }

  private source(project: GitProject, credHost?: string): Source {
    const repo = parseRepositoryUrl(project.repository, { allowFile: this.opts.allowFile });
    const path = join(this.opts.dir, mirrorDirName(repo, project.depth));
    return { project, repo, path, credHost: credHost ?? repo.host };
  }

  /** A 0700 temp dir for the askpass script and temporary index files, made once per instance. */
  private private(): Promise<{ dir: string; askpass: string }> {
    this.privateDir ??= (async () => {
      const parent = this.opts.tmpDir ?? this.opts.dir;
      await mkdir(parent, { recursive: true });
      const dir = await mkdtemp(join(parent, '.private-'));
      trackDir(dir);
      await chmod(dir, 0o700);
      const askpass = join(dir, 'askpass.sh');
      await writeFile(askpass, ASKPASS_SCRIPT, { mode: 0o700 });
      return { dir, askpass };
    })();
    return this.privateDir;
  }

  /** Credentials (askpass or ssh environment) for fetching `src`. */
  private async auth(src: Source): Promise<GitAuth> {
    const priv = await this.private();
    return gitAuth(src.repo, src.project.gitCredentials, {
      project: src.project.name,
      sameHost: src.repo.host === src.credHost,
      privateDir: priv.dir,
      askpass: priv.askpass,
    });
  }

  private state(path: string): MirrorState {
    let st = this.states.get(path);
    if (st === undefined) {
      st = { chain: Promise.resolve(), seq: 0, fetches: 0, fresh: new Map() };
      this.states.set(path, st);
    }
    return st;
  }

  /**
   * Runs `fn` under the mirror's in-process chain (its fetches under the file lock), after making sure the mirror exists and was
   * fetched after this call began (a fetch that another caller started later, with the same credentials and depth,
   * counts — a burst of webhooks for one repository costs one fetch per wave, not one each).
   */
  private async withMirror<T>(
    src: Source,
    signal: AbortSignal | undefined,
    fn: (m: MirrorCtx) => Promise<T>,
  ): Promise<T> {
    const { project, repo, path } = src;
    const st = this.state(path);
    const ticket = ++st.seq;
    const freshKey = JSON.stringify([project.depth, project.gitCredentials ?? null, src.credHost]);
    const run = st.chain.then(async () => {
      if (signal?.aborted) throw interrupted(signal);
      await mkdir(this.opts.dir, { recursive: true });
      const lock = `${path}.lock`;
      const auth = await this.auth(src);
      try {
        const env = { ...baseEnv(), ...auth.env };
        const base = [...configArgs(this.opts.allowFile), `--git-dir=${path}`];
        const git = (args: string[], input?: string): Promise<GitRun> =>
          runGit([...base, ...args], { env, signal, input });
        const depth = project.depth > 0 ? [`--depth=${project.depth}`] : [];
        // git's automatic maintenance (`maintenance run --auto`: one more process after every fetch, which nearly
        // always finds nothing to do — its thresholds are thousands of loose objects or dozens of packs, and a build's
        // fetch adds a few objects or one pack) runs on this process's first fetch of the mirror and every
        // MAINTENANCE_EVERY-th after it, not on the critical path of every build
        const maintain = st.fetches++ % MAINTENANCE_EVERY === 0 ? [] : ['--no-auto-maintenance'];
        // the fetch runs under the mirror's file lock, taken by flock(1) around git itself (runGit's `lock`)
        const fetch = async (what: string[], locked = true): Promise<GitRun> => {
          const r = await runGit(
            [
              ...base,
              'fetch',
              '--quiet',
              '--no-tags',
              '--no-write-fetch-head',
              '--no-recurse-submodules',
              ...maintain,
              ...depth,
              ...what,
            ],
            { env, signal, ...(locked ? { lock } : {}) },
          );
          const failed = locked ? lockFailure(r, lock) : undefined;
          if (failed) throw failed;
          return r;
        };
        // the rare steps that need the lock around more than one git process take it with a holder (lockFile)
        const underLock = async <R>(fn: () => Promise<R>): Promise<R> => {
          const release = await lockFile(lock, signal);
          try {
            return await fn();
          } finally {
            await release();
          }
        };
        if (!(await exists(join(path, 'HEAD')))) await underLock(() => this.ensureMirror(path, signal));
        if ((st.fresh.get(freshKey) ?? 0) <= ticket) {
          const started = ++st.seq;
          // an http(s) mirror (not shallow) is fetched in this process (smart-http.ts); `git fetch` does what that
          // does not handle, and the fetch where it gave up (then it makes the error message)
          let gaveUp: SmartFetchUnsupported | undefined;
          let inProcess = false;
          if (
            repo.kind === 'http' &&
            project.depth === 0 &&
            !this.gitOnly.has(repo.url) &&
            process.env.KILN_GIT_HTTP_FETCH !== '0' &&
            smartFetchUsable(repo.url)
          ) {
            try {
              await smartFetch({
                url: repo.url,
                gitDir: path,
                lock,
                // (its git processes — unpacker, rev-list — talk to no server: no credentials in their environment)
                env: baseEnv(),
                gitArgs: base,
                credentials: auth.basic,
                signal,
              });
              if (maintain.length === 0) {
                // git's automatic maintenance, as `git fetch` would have run it (see `maintain`), under the lock
                const m = await runGit([...base, 'maintenance', 'run', '--auto', '--quiet'], { env, signal, lock });
                const failed = lockFailure(m, lock);
                if (failed) throw failed;
              }
              inProcess = true;
            } catch (e) {
              if (!(e instanceof SmartFetchUnsupported)) throw e;
              gaveUp = e;
              debugMark(`git: in-process fetch gave up: ${redactText(e.message, auth.secrets)}`);
            }
          }
          let r: GitRun = inProcess
            ? { code: 0, stdout: Buffer.alloc(0), stderr: '' }
            : await fetch(['--prune', '--', repo.url, ...REFSPECS]);
          if (r.code !== 0 && STALE_LOCK.test(r.stderr)) {
            // A git killed mid-fetch (service crash) left its lock files; we hold the mirror's lock, so any is stale.
            r = await underLock(async () => {
              await removeLockFiles(path);
              return fetch(['--prune', '--', repo.url, ...REFSPECS], false);
            });
          }
          if (r.code !== 0) {
            throw new KilnError(
              'GIT_FETCH_FAILED',
              `cannot fetch ${repo.url}: ${redactText(lastLine(r.stderr), auth.secrets)}`,
              {
                hint: fetchHint(r.stderr),
                cause: new Error(redactText(r.stderr, auth.secrets).slice(-4000)),
              },
            );
          }
          // git did what this process's client gave up on for a reason of the server's: git from now on
          if (gaveUp?.sticky === true) this.gitOnly.add(repo.url);
          st.fresh.set(freshKey, Math.max(st.fresh.get(freshKey) ?? 0, started));
          debugMark('git: fetched');
        }
        const fetchObject = async (sha: string): Promise<boolean> => (await fetch(['--', repo.url, sha])).code === 0;
        return await fn({ path, git, fetchObject });
      } finally {
        await auth.cleanup();
      }
    });
    st.chain = run.then(
      () => undefined,
      () => undefined,
    );
    if (signal === undefined) return run;
    // A caller that gives up while waiting for its turn hears so at once; its turn then passes without work.
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => reject(interrupted(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      run.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  /** Creates the bare mirror when missing (in a side dir renamed into place, so a crash leaves no half repo). */
  private async ensureMirror(path: string, signal: AbortSignal | undefined): Promise<void> {
    if (await exists(join(path, 'HEAD'))) return;
    const tmp = `${path}.init`;
    await rm(tmp, { recursive: true, force: true });
    await rm(path, { recursive: true, force: true });
    const r = await runGit(['init', '--quiet', '--bare', '--template=', tmp], { env: baseEnv(), signal });
    if (r.code !== 0) {
      await rm(tmp, { recursive: true, force: true });
      throw new KilnError('GIT_MIRROR_FAILED', `cannot create git mirror ${path}: ${lastLine(r.stderr)}`, {
        hint: 'check that the data dir is writable',
      });
    }
    await rename(tmp, path);
  }

  /** A ref name → [full ref, commit]; branches before tags for short names. */
  private async findRef(m: MirrorCtx, repo: RepoUrl, ref: string): Promise<[string, string]> {
    const candidates = ref.startsWith('refs/') ? [ref] : [`refs/heads/${ref}`, `refs/tags/${ref}`];
    // a branch first (short names: branches before tags), from the mirror's files
    const first = candidates[0] as string;
    const branch = await branchCommit(m.path, first);
    if (branch !== undefined) return [first, branch];
    // with the object's type: a branch (a commit) needs no second git process to peel it (one per build's fetch)
    const r = await m.git(['for-each-ref', '--format=%(refname)%00%(objectname)%00%(objecttype)', ...candidates]);
    const found = new Map<string, { oid: string; type: string | undefined }>();
    for (const line of r.stdout.toString('utf8').split('\n')) {
      const [name, oid, type] = line.split('\0');
      if (name !== undefined && oid !== undefined) found.set(name, { oid, type });
    }
    for (const c of candidates) {
      const { oid, type } = found.get(c) ?? {};
      if (oid === undefined) continue;
      if (type === 'commit' && FULL_HEX.test(oid)) return [c, oid];
      const peeled = await m.git(['rev-parse', '--verify', '--quiet', `${oid}^{commit}`]);
      if (peeled.code !== 0) {
        throw new KilnError('GIT_REF_NOT_FOUND', `ref ${q(ref)} in ${repo.url} does not point to a commit`, {
          hint: REF_HINT,
        });
      }
      return [c, peeled.stdout.toString('utf8').trim()];
    }
    throw new KilnError('GIT_REF_NOT_FOUND', `ref ${q(ref)} not found in ${repo.url}`, {
      hint: ref.startsWith('refs/')
        ? 'only branches (refs/heads/*) and tags (refs/tags/*) are fetched; check the name'
        : `no branch or tag of that name; check the name (git ls-remote ${repo.url})`,
    });
  }

  /**
   * A commit by full or abbreviated id, or undefined. Abbreviations are looked up as object ids only (never as a
   * ref that happens to look like hex); a full id the mirror lacks is fetched by id when `fetchMissing`.
   */
  private async findCommit(m: MirrorCtx, hex: string, fetchMissing: boolean): Promise<string | undefined> {
    if (FULL_HEX.test(hex)) {
      const ok = async (): Promise<boolean> => (await m.git(['cat-file', '-e', `${hex}^{commit}`])).code === 0;
      if (await ok()) return hex;
      if (fetchMissing && (await m.fetchObject(hex)) && (await ok())) return hex;
      return undefined;
    }
    const cands = await m.git(['rev-parse', `--disambiguate=${hex}`]);
    const ids = cands.stdout
      .toString('utf8')
      .split('\n')
      .filter((l) => l !== '');
    if (ids.length === 0) return undefined;
    const types = await m.git(['cat-file', '--batch-check=%(objectname) %(objecttype)'], `${ids.join('\n')}\n`);
    const commits = types.stdout
      .toString('utf8')
      .split('\n')
      .map((l) => l.split(' '))
      .filter(([id, type]) => type === 'commit' && id !== undefined)
      .map(([id]) => id as string);
    if (commits.length > 1) {
      throw new KilnError(
        'GIT_COMMIT_AMBIGUOUS',
        `commit ${q(hex)} is ambiguous (${commits.length} commits start with it)`,
        {
          hint: 'give more digits of the commit id',
        },
      );
    }
    return commits[0];
  }

  /** Checks out one repository's commit into `job.dest`, then its submodules (recursively). */
  private async materialize(src: Source, job: CheckoutJob): Promise<void> {
    const { project, repo, path } = src;
    const { commit, dest } = job;
    const priv = await this.private();
    const index = job.index ?? join(priv.dir, `index-${randomBytes(8).toString('hex')}`);
    const env = { ...baseEnv(), GIT_INDEX_FILE: index };
    const wt = [...configArgs(this.opts.allowFile), `--git-dir=${path}`, `--work-tree=${dest}`];
    const git = (args: string[], extraEnv: Record<string, string> = {}): Promise<GitRun> =>
      runGit([...wt, ...args], { env: { ...env, ...extraEnv }, signal: job.signal, cwd: dest });
    const fail = (what: string, r: GitRun): KilnError =>
      new KilnError('GIT_CHECKOUT_FAILED', `${what} ${commit.slice(0, 12)} of ${repo.url}: ${lastLine(r.stderr)}`, {
        hint: 'check free space in the build directory',
      });
    try {
      if (!(await exists(join(path, 'HEAD'))) || (await git(['cat-file', '-e', `${commit}^{commit}`])).code !== 0) {
        throw new KilnError(
          'GIT_COMMIT_NOT_FOUND',
          `commit ${commit.slice(0, 12)} is not in the mirror of ${repo.url}`,
          {
            hint: 'resolve the ref first (resolve() fetches the mirror)',
          },
        );
      }
      let r = await git(['read-tree', commit]);
      if (r.code !== 0) throw fail('cannot read the tree of', r);
      // a workspace's index keeps the files' stat data (-u): the next update then rewrites only what changed —
      // without it every entry looks modified and the first update rewrites the whole tree (new inodes and
      // mtimes, so kiln's stat cache misses and the build re-reads everything)
      r = await git(['checkout-index', '--all', '--force', ...(job.index ? ['-u'] : [])]);
      if (r.code !== 0) throw fail('cannot check out', r);
      if (project.lfs) await this.lfsCheckout(src, job, git);
    } finally {
      if (!job.index) await rm(index, { force: true });
      await rm(`${index}.lock`, { force: true });
    }
    if (project.submodules) await this.submodules(src, job);
  }

  /** Replaces LFS pointer files by their content (objects cached in the mirror's lfs/ dir), when git-lfs exists. */
  private async lfsCheckout(
    src: Source,
    job: CheckoutJob,
    git: (args: string[], extraEnv?: Record<string, string>) => Promise<GitRun>,
  ): Promise<void> {
    const { repo } = src;
    this.lfs ??= runGit(['lfs', 'version'], { env: baseEnv() }).then(
      (r) => r.code === 0,
      () => false,
    );
    if (!(await this.lfs)) {
      const note = `git-lfs is not installed: LFS files of ${repo.url} are left as pointer files`;
      job.notes.push(note);
      this.log(note);
      return;
    }
    const auth = await this.auth(src);
    try {
      // git-lfs reads the `-c` options (GIT_CONFIG_PARAMETERS), the temporary index and the askpass environment.
      for (const args of [
        ['lfs', 'fetch', 'origin', job.commit],
        ['lfs', 'checkout'],
      ]) {
        const r = await git(['-c', `remote.origin.url=${repo.url}`, ...args], auth.env);
        if (r.code !== 0) {
          throw new KilnError(
            'GIT_LFS_FAILED',
            `git lfs of ${repo.url}: ${redactText(lastLine(r.stderr), auth.secrets)}`,
            {
              hint: fetchHint(r.stderr),
            },
          );
        }
      }
    } finally {
      await auth.cleanup();
    }
  }

  /** Gitlinks of the job's commit with their `.gitmodules` URLs, each fetched into its own mirror and checked out. */
  private async submodules(src: Source, job: CheckoutJob): Promise<void> {
    const { repo, path } = src;
    const { commit, dest, level, signal } = job;
    const env = baseEnv();
    const git = (args: string[]): Promise<GitRun> => runGit([`--git-dir=${path}`, ...args], { env, signal });
    if ((await git(['cat-file', '-e', `${commit}:.gitmodules`])).code !== 0) return;
    const cfg = await git([
      'config',
      '-z',
      `--blob=${commit}:.gitmodules`,
      '--get-regexp',
      '^submodule\\..*\\.(path|url)$',
    ]);
    const byName = new Map<string, { path?: string; url?: string }>();
    for (const entry of cfg.stdout.toString('utf8').split('\0')) {
      const nl = entry.indexOf('\n');
      const m = /^submodule\.(.+)\.(path|url)$/.exec(nl < 0 ? entry : entry.slice(0, nl));
      if (m === null || nl < 0) continue;
      const [, name = '', key] = m;
      const rec = byName.get(name) ?? {};
      if (key === 'path') rec.path = entry.slice(nl + 1);
      else rec.url = entry.slice(nl + 1);
      byName.set(name, rec);
    }
    const tree = await git(['ls-tree', '-r', '-z', '--full-tree', commit]);
    const links: [string, string][] = [];
    for (const entry of tree.stdout.toString('utf8').split('\0')) {
      const m = /^160000 commit ([0-9a-f]+)\t(.+)$/s.exec(entry);
      if (m !== null) links.push([m[2] as string, m[1] as string]);
    }
    if (links.length === 0) return;
    if (level >= MAX_SUBMODULE_DEPTH) {
      throw new KilnError(
        'GIT_SUBMODULE_FAILED',
        `submodules of ${repo.url} nest deeper than ${MAX_SUBMODULE_DEPTH} levels`,
      );
    }
    const realDest = await realpath(dest);
    for (const [subPath, sha] of links) {
      const mod = [...byName.values()].find((r) => r.path === subPath);
      if (mod?.url === undefined) {
        throw new KilnError(
          'GIT_SUBMODULE_FAILED',
          `submodule ${q(subPath)} of ${repo.url} has no URL in .gitmodules`,
          {
            hint: 'fix .gitmodules in the repository, or set submodules: false',
          },
        );
      }
      const target = join(dest, subPath);
      await mkdir(target, { recursive: true });
      const rel = relative(realDest, await realpath(target));
      if (rel === '' || rel === '..' || rel.startsWith(`..${sep}`)) {
        throw new KilnError('GIT_SUBMODULE_FAILED', `submodule path ${q(subPath)} leaves the checkout`);
      }
      let sub: Source;
      try {
        sub = this.source({ ...src.project, repository: resolveSubmoduleUrl(repo.url, mod.url) }, src.credHost);
      } catch (e) {
        if (!isKilnError(e)) throw e;
        throw new KilnError(e.code, `submodule ${q(subPath)}: ${e.message}`, { hint: e.hint, cause: e });
      }
      await this.withMirror(sub, signal, async (m) => {
        if ((await this.findCommit(m, sha, true)) === undefined) {
          throw new KilnError(
            'GIT_SUBMODULE_FAILED',
            `submodule ${q(subPath)}: commit ${sha.slice(0, 12)} not found in ${sub.repo.url}`,
            { hint: 'push the submodule commit to a branch or tag of the submodule repository' },
          );
        }
      });
      await this.materialize(sub, { ...job, commit: sha, dest: target, level: level + 1 });
    }
  }
}
