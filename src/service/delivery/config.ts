/**
 * The delivery part of the config: what the schema cannot say about `notifications:`, `commitStatus:` and
 * `publicUrl` (URLs without credentials, exactly one secret reference, one GitLab project), their defaults, and
 * the copies the API answers with. Kept here, next to the code that sends, so parse.ts and secrets.ts only call
 * in (one line each) and the rules live where they are used.
 *
 * Why URLs may carry no user-info: the URL is stored in the project, shown to viewers and recorded with every
 * attempt; credentials belong in a secret reference (an HMAC secret for webhooks, a token for forges), which is
 * resolved only when a request is sent.
 */
import type { CommitStatusSpec, NotificationSpec, Phase } from '../model.js';
import { DELIVERY_DEFAULTS, type CommitStatusInput, type NotificationInput } from '../config/schema.js';

/** One problem found here; `path` is relative to the project (`notifications`, 0, `url`). */
export interface DeliveryIssue {
  path: (string | number)[];
  message: string;
  hint?: string;
}

const URL_HINT = 'put credentials in a secret reference (secretEnv / tokenEnv), never in the URL';

/**
 * Why `url` cannot be a delivery or public URL, or undefined when it can: http(s), a host, no user-info, no
 * fragment, no spaces. Messages never echo the URL (it could hold a pasted token).
 */
export function urlProblem(url: string, opts: { query?: boolean } = {}): string | undefined {
  if (/[\s\u0000-\u001f\u007f]/.test(url)) return 'must not contain spaces or control characters';
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return 'is not a valid URL';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return 'must be an http:// or https:// URL';
  if (u.hostname === '') return 'must name a host';
  if (u.username !== '' || u.password !== '') return 'must not contain user-info (user:password@)';
  if (u.hash !== '' || url.includes('#')) return 'must not contain a fragment (#…)';
  if (opts.query === false && u.search !== '') return 'must not contain a query (?…)';
  return undefined;
}

/**
 * A URL as shown and recorded: user-info dropped (the parser refuses it; this is the second line of defence) and
 * query values replaced by `…` (tokens often ride in queries). Unparseable input becomes `(invalid URL)`.
 */
export function redactTargetUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return '(invalid URL)';
  }
  if (u.username === '' && u.password === '' && u.search === '' && !url.includes('#')) return url;
  u.username = '';
  u.password = '';
  u.hash = '';
  if (u.search !== '') {
    const keys = [...new Set([...u.searchParams.keys()])];
    u.search = '';
    return `${u.toString()}?${keys.map((k) => `${encodeURIComponent(k)}=…`).join('&')}`;
  }
  return u.toString();
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(o: Record<string, unknown>, k: string): string | undefined {
  const v = o[k];
  return typeof v === 'string' ? v : undefined;
}

/** At most one (or, with `required`, exactly one) of the two reference keys. */
function refIssue(
  o: Record<string, unknown>,
  envKey: string,
  fileKey: string,
  at: (string | number)[],
  required: boolean,
): DeliveryIssue | undefined {
  const both = str(o, envKey) !== undefined && str(o, fileKey) !== undefined;
  if (both) return { path: at, message: `needs ${envKey} or ${fileKey}, not both` };
  if (required && str(o, envKey) === undefined && str(o, fileKey) === undefined) {
    return {
      path: at,
      message: `needs ${envKey} or ${fileKey}`,
      hint: 'the token is read from the service env or a file',
    };
  }
  return undefined;
}

/**
 * The delivery checks of one project (its parts that passed the schema; anything else is skipped): URLs, secret
 * references, the GitLab project, duplicate events. Returns the issues for parse.ts to report with their paths.
 */
export function deliveryIssues(p: { notifications?: unknown; commitStatus?: unknown }): DeliveryIssue[] {
  const out: DeliveryIssue[] = [];
  const add = (i: DeliveryIssue | undefined): void => {
    if (i) out.push(i);
  };
  if (Array.isArray(p.notifications)) {
    p.notifications.forEach((n: unknown, i) => {
      if (!isObject(n)) return;
      const at = ['notifications', i];
      const url = str(n, 'url');
      const why = url === undefined ? undefined : urlProblem(url);
      if (why !== undefined) out.push({ path: [...at, 'url'], message: why, hint: URL_HINT });
      add(refIssue(n, 'secretEnv', 'secretFile', at, false));
      const events = n['events'];
      if (Array.isArray(events) && new Set(events).size !== events.length) {
        out.push({ path: [...at, 'events'], message: 'lists an event twice' });
      }
    });
  }
  const cs = p.commitStatus;
  if (isObject(cs)) {
    const gh = cs['github'];
    if (isObject(gh)) {
      const api = str(gh, 'apiUrl');
      const why = api === undefined ? undefined : urlProblem(api, { query: false });
      if (why !== undefined) out.push({ path: ['commitStatus', 'github', 'apiUrl'], message: why, hint: URL_HINT });
      add(refIssue(gh, 'tokenEnv', 'tokenFile', ['commitStatus', 'github'], true));
    }
    const gl = cs['gitlab'];
    if (isObject(gl)) {
      const at = ['commitStatus', 'gitlab'];
      const api = str(gl, 'apiUrl');
      const why = api === undefined ? undefined : urlProblem(api, { query: false });
      if (why !== undefined) out.push({ path: [...at, 'apiUrl'], message: why, hint: URL_HINT });
      add(refIssue(gl, 'tokenEnv', 'tokenFile', at, true));
      const hasId = gl['projectId'] !== undefined;
      const hasPath = gl['path'] !== undefined;
      if (hasId === hasPath) {
        out.push({
          path: at,
          message: hasId ? 'needs projectId or path, not both' : 'needs projectId or path',
          hint: 'the GitLab project: its numeric id or its path (group/name)',
        });
      }
    }
  }
  return out;
}

/** Why `publicUrl` cannot be used, or undefined (no query either: paths are appended to it). */
export function publicUrlProblem(url: string): string | undefined {
  return urlProblem(url, { query: false });
}

/** `publicUrl` without trailing slashes, so `${publicUrl}/api/v1/…` has one. */
export function normalizePublicUrl(url: string): string {
  return url.replace(/\/+$/, '');
}

/** A notification with its defaults (a copy; the API root of a forge keeps no trailing slash). */
export function toNotification(n: NotificationInput): NotificationSpec {
  return {
    url: n.url,
    ...(n.secretEnv === undefined ? {} : { secretEnv: n.secretEnv }),
    ...(n.secretFile === undefined ? {} : { secretFile: n.secretFile }),
    events: [...new Set<Phase>(n.events ?? DELIVERY_DEFAULTS.events)],
    maxAttempts: n.maxAttempts ?? DELIVERY_DEFAULTS.maxAttempts,
  };
}

/** Commit status settings with their defaults. */
export function toCommitStatus(c: CommitStatusInput): CommitStatusSpec {
  const out: CommitStatusSpec = {};
  if (c.github) {
    out.github = {
      repo: c.github.repo,
      apiUrl: normalizePublicUrl(c.github.apiUrl ?? DELIVERY_DEFAULTS.githubApiUrl),
      ...(c.github.tokenEnv === undefined ? {} : { tokenEnv: c.github.tokenEnv }),
      ...(c.github.tokenFile === undefined ? {} : { tokenFile: c.github.tokenFile }),
    };
  }
  if (c.gitlab) {
    out.gitlab = {
      apiUrl: normalizePublicUrl(c.gitlab.apiUrl ?? DELIVERY_DEFAULTS.gitlabApiUrl),
      ...(c.gitlab.projectId === undefined ? {} : { projectId: c.gitlab.projectId }),
      ...(c.gitlab.path === undefined ? {} : { path: c.gitlab.path }),
      ...(c.gitlab.tokenEnv === undefined ? {} : { tokenEnv: c.gitlab.tokenEnv }),
      ...(c.gitlab.tokenFile === undefined ? {} : { tokenFile: c.gitlab.tokenFile }),
    };
  }
  return out;
}

/** The delivery fields of a project with defaults, to spread into the parsed project. */
export function deliveryDefaults(p: { notifications?: NotificationInput[]; commitStatus?: CommitStatusInput }): {
  notifications?: NotificationSpec[];
  commitStatus?: CommitStatusSpec;
} {
  return {
    ...(p.notifications === undefined ? {} : { notifications: p.notifications.map(toNotification) }),
    ...(p.commitStatus === undefined ? {} : { commitStatus: toCommitStatus(p.commitStatus) }),
  };
}

/**
 * The delivery fields for API answers: copied field by field (nothing a caller attached rides along), references
 * only, URLs through {@link redactTargetUrl}.
 */
export function redactDelivery(p: { notifications?: NotificationSpec[]; commitStatus?: CommitStatusSpec }): {
  notifications?: NotificationSpec[];
  commitStatus?: CommitStatusSpec;
} {
  const out: { notifications?: NotificationSpec[]; commitStatus?: CommitStatusSpec } = {};
  if (p.notifications) {
    out.notifications = p.notifications.map((n) => ({
      url: redactTargetUrl(n.url),
      ...(typeof n.secretEnv === 'string' ? { secretEnv: n.secretEnv } : {}),
      ...(typeof n.secretFile === 'string' ? { secretFile: n.secretFile } : {}),
      events: [...n.events],
      maxAttempts: n.maxAttempts,
    }));
  }
  if (p.commitStatus) out.commitStatus = toCommitStatus(p.commitStatus);
  return out;
}
