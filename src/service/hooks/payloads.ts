/**
 * Webhook payloads of each forge, reduced to what kiln takes from them: which ref moved, from which commit to which,
 * whether the head commit asks to be skipped, and the changed paths when the payload lists them all. Nothing else
 * of a payload is used — in particular no repository or clone URL: the project's configured repository is what
 * gets fetched, so a payload can name a commit but never a place (no SSRF through a forged `clone_url`).
 *
 * Everything read is validated (a signed payload is still input): refs must be branches or tags with a sane name,
 * commits full hex ids. A payload that lists changed paths only partly (GitHub and GitLab cap the commit list at
 * 20, GitHub a commit's files at 3000; a new ref or a forced push lists what is new, not what differs) yields no
 * paths, and the caller diffs `before..commit` in the git mirror instead.
 */
import type { PushEvent as GitHubPush } from '@octokit/webhooks-types';

/** The forges with a receiver, as they appear in `/hooks/{forge}/{project}`. */
export const FORGES = ['github', 'gitlab', 'gitea', 'forgejo', 'bitbucket', 'generic'] as const;
export type Forge = (typeof FORGES)[number];

export function isForge(s: string): s is Forge {
  return (FORGES as readonly string[]).includes(s);
}

/** One ref update of a push (most forges send one per delivery; Bitbucket may send several). */
export interface PushChange {
  /** Full ref: `refs/heads/…` or `refs/tags/…`. */
  ref: string;
  /** The ref's commit before the push; null for a new ref (or when the forge does not say). */
  before: string | null;
  /** The commit to build (a tag's commit, not the tag object); null when the push deleted the ref. */
  commit: string | null;
  /**
   * The head commit's message carries `[skip ci]`, `[ci skip]` or `[kiln skip]`; left out when the trigger knows
   * no message (polling): then the message is read from the mirror once the commit is fetched.
   */
  skip?: boolean;
  /** Every path the push changed, when the payload lists them completely; else left out (diff in git). */
  paths?: string[];
}

/** What a delivery is about, once its signature was checked and its body parsed. */
export type HookEvent =
  | { kind: 'push'; event: string; changes: PushChange[] }
  /** Recorded, answered 200, nothing built (`ping`, `create`, events kiln does not act on). */
  | { kind: 'ignored'; event: string; reason: string }
  /** A body that is JSON but not a usable payload of its event: 400. */
  | { kind: 'invalid'; event: string; reason: string };

const SKIP_MARKER = /\[(?:skip ci|ci skip|kiln skip)\]/i;
const COMMIT = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const ZERO = /^0+$/;
/** GitHub's and GitLab's cap on the commits of one push payload. */
const COMMIT_LIST_CAP = 20;
/** GitHub's cap on the files listed per commit (added + removed + modified). */
const FILES_PER_COMMIT_CAP = 3000;

/** True when a commit message asks CI (and kiln) to skip it. */
export function hasSkipMarker(message: string | undefined | null): boolean {
  return typeof message === 'string' && SKIP_MARKER.test(message);
}

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(o: Json | undefined, k: string): string | undefined {
  const v = o?.[k];
  return typeof v === 'string' ? v : undefined;
}

function obj(o: Json | undefined, k: string): Json | undefined {
  const v = o?.[k];
  return isObj(v) ? v : undefined;
}

function list(o: Json | undefined, k: string): unknown[] | undefined {
  const v = o?.[k];
  return Array.isArray(v) ? v : undefined;
}

/**
 * A branch or tag ref with a name git accepts (the rules of git-check-ref-format that matter here), else undefined.
 * Anything else (`refs/pull/…`, `refs/notes/…`) is not built.
 */
export function branchOrTagRef(ref: unknown): string | undefined {
  if (typeof ref !== 'string' || ref.length > 255) return undefined;
  const m = /^refs\/(?:heads|tags)\/(.+)$/.exec(ref);
  const name = m?.[1];
  if (name === undefined || /[\x00-\x20\x7f~^:?*[\\]/.test(name) || name.includes('..') || name.includes('@{')) {
    return undefined;
  }
  if (name.endsWith('/') || name.endsWith('.') || name.split('/').some((c) => c === '' || c.startsWith('.'))) {
    return undefined;
  }
  return ref;
}

/** A full commit id (lowercased), null for the all-zero id of a created or deleted ref, undefined when invalid. */
export function commitId(v: unknown): string | null | undefined {
  if (v === null || v === undefined) return null;
  if (typeof v !== 'string') return undefined;
  const c = v.toLowerCase();
  if (ZERO.test(c)) return null;
  return COMMIT.test(c) ? c : undefined;
}

/**
 * The union of a commit list's added/removed/modified paths; undefined when a commit lacks the lists or lists as
 * many files as the forge's cap (then some may be missing).
 */
function commitPaths(commits: unknown[]): string[] | undefined {
  const out = new Set<string>();
  for (const c of commits) {
    if (!isObj(c)) return undefined;
    let n = 0;
    for (const k of ['added', 'removed', 'modified']) {
      const l = list(c, k);
      if (l === undefined) return undefined;
      for (const p of l) {
        if (typeof p !== 'string' || p === '' || p.includes('\0')) return undefined;
        out.add(p);
        n++;
      }
    }
    if (n >= FILES_PER_COMMIT_CAP) return undefined;
  }
  return [...out].sort();
}

/** Shared shape of GitHub's, Gitea's and Forgejo's push payloads (and GitLab's, apart from the head commit). */
function githubLikePush(
  body: Json,
  head: { id: unknown; message: unknown },
  complete: (commits: unknown[]) => boolean,
): PushChange | { ignored: string } | { invalid: string } {
  const ref = branchOrTagRef(body.ref);
  if (ref === undefined) return { ignored: 'not a branch or tag' };
  const before = commitId(body.before);
  const after = commitId(body.after);
  const headId = head.id === undefined || head.id === null ? after : commitId(head.id);
  if (before === undefined || after === undefined || headId === undefined) {
    return { invalid: 'before/after is not a full commit id' };
  }
  const deleted = after === null || body.deleted === true;
  const commits = list(body, 'commits') ?? [];
  const change: PushChange = {
    ref,
    before,
    commit: deleted ? null : headId,
    skip: !deleted && hasSkipMarker(typeof head.message === 'string' ? head.message : undefined),
  };
  if (!deleted && before !== null && body.forced !== true && body.created !== true && complete(commits)) {
    const paths = commitPaths(commits);
    if (paths !== undefined) change.paths = paths;
  }
  return change;
}

function pushOrInvalid(event: string, c: ReturnType<typeof githubLikePush>): HookEvent {
  if ('ignored' in c) return { kind: 'ignored', event, reason: c.ignored };
  if ('invalid' in c) return { kind: 'invalid', event, reason: c.invalid };
  if (c.commit === null && c.before === null) return { kind: 'invalid', event, reason: 'no commit' };
  return { kind: 'push', event, changes: [c] };
}

/** GitHub (`X-GitHub-Event`): `push` builds; `ping` and `create` are acknowledged; other events are ignored. */
export function parseGitHub(event: string, body: Json): HookEvent {
  if (event !== 'push') {
    return { kind: 'ignored', event, reason: event === 'ping' || event === 'create' ? event : `event ${event}` };
  }
  const p = body as Partial<GitHubPush> & Json;
  const head = obj(p, 'head_commit');
  const c = githubLikePush(p, { id: head?.id, message: head?.message }, (commits) => {
    return commits.length > 0 && commits.length < COMMIT_LIST_CAP;
  });
  return pushOrInvalid(event, c);
}

/** Gitea and Forgejo (`X-Gitea-Event` / `X-Forgejo-Event`): `push`, with `total_commits` telling truncation. */
export function parseGitea(event: string, body: Json): HookEvent {
  if (event !== 'push') return { kind: 'ignored', event, reason: event === 'create' ? event : `event ${event}` };
  const head = obj(body, 'head_commit');
  const total = body.total_commits;
  const c = githubLikePush(body, { id: head?.id, message: head?.message }, (commits) => {
    if (commits.length === 0) return false;
    return typeof total === 'number' ? total === commits.length : commits.length < COMMIT_LIST_CAP;
  });
  return pushOrInvalid(event, c);
}

/**
 * GitLab (`X-Gitlab-Event`): `Push Hook` and `Tag Push Hook`. The commit is `checkout_sha` (a tag's commit); the
 * head message is that commit's in the list (GitLab lists at most 20, with `total_commits_count` of all).
 */
export function parseGitLab(event: string, body: Json): HookEvent {
  if (event !== 'Push Hook' && event !== 'Tag Push Hook') return { kind: 'ignored', event, reason: `event ${event}` };
  const commits = list(body, 'commits') ?? [];
  const headId = body.checkout_sha ?? undefined;
  const wanted = commitId(headId) ?? commitId(body.after);
  const headCommit = commits.find((c) => isObj(c) && typeof c.id === 'string' && c.id.toLowerCase() === wanted);
  const total = body.total_commits_count;
  const c = githubLikePush(
    body,
    { id: headId, message: isObj(headCommit) ? headCommit.message : undefined },
    (list) => list.length > 0 && typeof total === 'number' && total === list.length,
  );
  return pushOrInvalid(event, c);
}

/**
 * Bitbucket Cloud (`X-Event-Key`): `repo:push`, one entry per ref in `push.changes` (`new` null: deleted; `old`
 * null: created). Bitbucket lists no changed files, so paths always come from the git mirror.
 */
export function parseBitbucket(event: string, body: Json): HookEvent {
  if (event !== 'repo:push') return { kind: 'ignored', event, reason: `event ${event}` };
  const changes = list(obj(body, 'push'), 'changes');
  if (changes === undefined || changes.length === 0) return { kind: 'invalid', event, reason: 'no push.changes' };
  const out: PushChange[] = [];
  for (const ch of changes) {
    if (!isObj(ch)) return { kind: 'invalid', event, reason: 'push.changes entry is not an object' };
    const side = obj(ch, 'new') ?? obj(ch, 'old');
    const type = str(side, 'type');
    const name = str(side, 'name');
    if (side === undefined || name === undefined) return { kind: 'invalid', event, reason: 'change without a ref' };
    const ref = branchOrTagRef(type === 'tag' ? `refs/tags/${name}` : `refs/heads/${name}`);
    if (ref === undefined) continue;
    const target = obj(obj(ch, 'new'), 'target');
    const commit = obj(ch, 'new') === undefined ? null : commitId(str(target, 'hash'));
    const before = commitId(str(obj(obj(ch, 'old'), 'target'), 'hash'));
    if (commit === undefined || before === undefined)
      return { kind: 'invalid', event, reason: 'hash is not a commit id' };
    out.push({ ref, before, commit, skip: commit !== null && hasSkipMarker(str(target, 'message')) });
  }
  if (out.length === 0) return { kind: 'ignored', event, reason: 'not a branch or tag' };
  return { kind: 'push', event, changes: out };
}

/**
 * The generic hook (Standard Webhooks envelope): `{"type": "push", "timestamp": "…", "data": {"ref":
 * "refs/heads/main", "before": "<sha>", "after": "<sha>", "message": "…", "paths": ["…"]}}`. `after` all zeros or
 * null: the ref was deleted. `paths`, when given, are taken as the complete list of changed paths; `message` is
 * the head commit's (for skip markers). Other `type`s are recorded and ignored.
 */
export function parseGeneric(body: Json): HookEvent {
  const type = str(body, 'type');
  if (type === undefined) return { kind: 'invalid', event: '', reason: 'no "type"' };
  if (type !== 'push') return { kind: 'ignored', event: type, reason: `event ${type}` };
  const data = obj(body, 'data');
  if (data === undefined) return { kind: 'invalid', event: type, reason: 'no "data" object' };
  const paths = list(data, 'paths');
  const validPaths = paths?.every((p) => typeof p === 'string' && p !== '' && !p.includes('\0'));
  if (paths !== undefined && !validPaths) return { kind: 'invalid', event: type, reason: 'paths must be strings' };
  const c = githubLikePush(data, { id: undefined, message: data.message }, () => false);
  if ('ref' in c && c.commit !== null && paths !== undefined) {
    c.paths = [...new Set(paths as string[])].sort();
  }
  return pushOrInvalid(type, c);
}
