/**
 * Commit statuses: what a build's phase means to GitHub's and GitLab's commit status APIs, as pure functions from a
 * build to the request to send (the token is added when it is sent, from its reference).
 *
 * - GitHub `POST {apiUrl}/repos/{owner}/{repo}/statuses/{sha}` with `{state, context, description, target_url}`:
 *   `queued` → `pending` "queued"; fetching/building/pushing → `pending` "building"; `succeeded` → `success`;
 *   `failed` → `failure`; `cancelled` and `timed-out` → `error`. Why `error` for those two: GitHub's `failure`
 *   says the commit is bad, `error` that the check could not decide — a cancelled or timed-out build says nothing
 *   about the commit (a rerun may well pass), so it must not read as a red verdict.
 * - GitLab `POST {apiUrl}/projects/{id}/statuses/{sha}` with `{state, name, description, target_url, ref}`:
 *   `queued` → `pending`; active phases → `running`; `succeeded` → `success`; `failed` and `timed-out` → `failed`
 *   (GitLab has no error state; GitLab CI marks its own timed-out jobs failed); `cancelled` → `canceled`.
 *   GitLab refuses a repeated state (`Cannot transition status via :run from :running`), so a state is sent once.
 *
 * The context (GitHub) / name (GitLab) is `kiln/<image>`: one line per image on the commit, updated in place by
 * each later status. `description` is one line of at most 140 characters (GitHub's limit): the build's reason when
 * it has one. `target_url` is the build's log when the service knows its public URL.
 */
import type { Build, CommitStatusSpec, Phase } from '../model.js';
import { logUrlOf } from './cloudevents.js';

export type StatusForge = 'github' | 'gitlab';

/** One status to post: the request without its token. */
export interface StatusRequest {
  forge: StatusForge;
  /** The forge's state name. */
  state: string;
  /** What makes two statuses the same (GitHub: state and description; GitLab: state). */
  identity: string;
  url: string;
  headers: Record<string, string>;
  body: string;
  /** Which token reference authenticates it. */
  token: { tokenEnv?: string; tokenFile?: string };
}

const MAX_DESCRIPTION = 140;

function isActive(p: Phase): boolean {
  return p === 'fetching' || p === 'building' || p === 'pushing';
}

/** One line, at most 140 characters. */
export function oneLine(s: string): string {
  const line = s.replace(/\s+/g, ' ').trim();
  return line.length <= MAX_DESCRIPTION ? line : `${line.slice(0, MAX_DESCRIPTION - 1)}…`;
}

function describe(b: Build): string {
  if (b.phase === 'queued') return 'queued';
  if (isActive(b.phase)) return 'building';
  if (b.phase === 'succeeded') return oneLine(`succeeded${b.digest ? ` ${b.digest.slice(0, 19)}` : ''}`);
  return oneLine(b.reason ?? b.phase);
}

/** GitHub's state for a phase. */
export function githubState(p: Phase): 'pending' | 'success' | 'failure' | 'error' {
  if (p === 'succeeded') return 'success';
  if (p === 'failed') return 'failure';
  if (p === 'cancelled' || p === 'timed-out') return 'error';
  return 'pending';
}

/** GitLab's state for a phase. */
export function gitlabState(p: Phase): 'pending' | 'running' | 'success' | 'failed' | 'canceled' {
  if (p === 'queued') return 'pending';
  if (isActive(p)) return 'running';
  if (p === 'succeeded') return 'success';
  if (p === 'cancelled') return 'canceled';
  return 'failed';
}

/** The branch or tag name of a full ref (GitLab's `ref`), if it is one. */
function shortRef(ref: string): string | undefined {
  for (const prefix of ['refs/heads/', 'refs/tags/']) if (ref.startsWith(prefix)) return ref.slice(prefix.length);
  return undefined;
}

/**
 * The statuses a build's current record asks for, one per configured forge; none while its commit is unknown.
 * `publicUrl` (no trailing slash) gives the link to the log.
 */
export function statusRequests(spec: CommitStatusSpec, b: Build, publicUrl?: string): StatusRequest[] {
  if (b.commit === null || !/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(b.commit)) return [];
  const out: StatusRequest[] = [];
  const description = describe(b);
  const target = logUrlOf(b.id, publicUrl);
  const context = `kiln/${b.image}`;
  if (spec.github) {
    const [owner = '', repo = ''] = spec.github.repo.split('/');
    const state = githubState(b.phase);
    out.push({
      forge: 'github',
      state,
      identity: `${state} ${description}`,
      url: `${spec.github.apiUrl}/repos/${encodeURIComponent(owner)}/${encodeURIComponent(repo)}/statuses/${b.commit}`,
      headers: {
        accept: 'application/vnd.github+json',
        'x-github-api-version': '2022-11-28',
        'content-type': 'application/json',
      },
      body: JSON.stringify({ state, context, description, ...(target === undefined ? {} : { target_url: target }) }),
      token: refOf(spec.github),
    });
  }
  if (spec.gitlab) {
    const id = spec.gitlab.projectId !== undefined ? String(spec.gitlab.projectId) : (spec.gitlab.path ?? '');
    const state = gitlabState(b.phase);
    const ref = shortRef(b.ref);
    out.push({
      forge: 'gitlab',
      state,
      identity: state,
      url: `${spec.gitlab.apiUrl}/projects/${encodeURIComponent(id)}/statuses/${b.commit}`,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        state,
        name: context,
        description,
        ...(target === undefined ? {} : { target_url: target }),
        ...(ref === undefined ? {} : { ref }),
      }),
      token: refOf(spec.gitlab),
    });
  }
  return out;
}

function refOf(o: { tokenEnv?: string; tokenFile?: string }): { tokenEnv?: string; tokenFile?: string } {
  return {
    ...(o.tokenEnv === undefined ? {} : { tokenEnv: o.tokenEnv }),
    ...(o.tokenFile === undefined ? {} : { tokenFile: o.tokenFile }),
  };
}
