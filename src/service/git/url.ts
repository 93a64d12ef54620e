/**
 * Repository URLs of the build service: which ones a project may use, how they look in messages, and how a
 * submodule's relative URL is resolved. A repository URL ends up as an argument of `git fetch`, so anything git
 * would treat as a command (`ext::`, a leading `-`) or as a secret (credentials in the userinfo) is refused here,
 * before any process runs.
 */
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { KilnError } from '../../errors.js';

/** A repository URL that passed {@link parseRepositoryUrl}. */
export interface RepoUrl {
  /** How git reaches it: `http` (http and https), `ssh` (ssh:// and scp-like), `file` (file:// and absolute paths). */
  kind: 'http' | 'ssh' | 'file';
  /** The URL as given (what git is called with). */
  url: string;
  /** Lower-cased `host[:port]` (`` for file): credentials are only handed to this host. */
  host: string;
  /** A file-name-safe name derived from the last path component (`repo` when there is none). */
  name: string;
}

const HINT_CREDENTIALS = 'put the user name in gitCredentials.username and the secret in passwordEnv or passwordFile';
const HINT_FILE = 'set allowFileRepositories: true in the server config';
const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$/;
const USER_RE = /^[A-Za-z0-9._~-]+$/;

function invalid(url: string, why: string, hint?: string): KilnError {
  return new KilnError('GIT_URL_INVALID', `repository URL "${redactUrl(url)}": ${why}`, {
    hint: hint ?? 'use https://host/path, http://host/path, ssh://[user@]host[:port]/path or user@host:path',
  });
}

/**
 * Replaces the password (or a lone user name, which forges accept as a token) of every URL in `text` by `***`.
 * For messages and logs: a URL a user typed may still carry credentials even though projects may not use it.
 */
export function redactUrl(text: string): string {
  return text.replace(/\b([A-Za-z][A-Za-z0-9+.-]*:\/\/)([^\s/'"]*)@/g, (_m, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    // scheme://user@ over ssh names an account, not a secret; over http(s) a lone user name is often a token.
    if (colon < 0) return /^(ssh|git\+ssh|ssh\+git):\/\/$/i.test(scheme) ? `${scheme}${userinfo}@` : `${scheme}***@`;
    return `${scheme}${userinfo.slice(0, colon)}:***@`;
  });
}

/** `redactUrl` plus every occurrence of each secret value in `text` replaced by `***`. */
export function redactText(text: string, secrets: readonly string[]): string {
  let out = redactUrl(text);
  for (const s of secrets) if (s !== '') out = out.split(s).join('***');
  return out;
}

function repoName(path: string): string {
  const base = posix.basename(path.replace(/\/+$/, '')).replace(/\.git$/, '');
  const safe = base
    .replace(/[^A-Za-z0-9._-]/g, '_')
    .replace(/^[.-]+/, '')
    .slice(0, 40);
  return safe === '' ? 'repo' : safe;
}

/**
 * Checks a project's repository URL and classifies it. Accepted: `https://`, `http://`, `ssh://` (a user, no
 * password), scp-like `user@host:path`, and — only with `allowFile` — `file://` URLs and absolute paths.
 * Throws `GIT_URL_INVALID` for credentials in the URL, other transports (`ext::`, `git://`, …), relative paths
 * and anything git could read as an option; `GIT_URL_FORBIDDEN` for local repositories without `allowFile`.
 */
export function parseRepositoryUrl(url: string, opts: { allowFile: boolean }): RepoUrl {
  if (url === '' || /[\s\x00-\x1f\x7f\\]/.test(url))
    throw invalid(url, 'contains whitespace, control characters or backslashes');
  if (url.startsWith('-')) throw invalid(url, 'must not start with "-"');
  if (/^[A-Za-z][A-Za-z0-9+.-]*::/.test(url))
    throw invalid(url, `the "${url.slice(0, url.indexOf('::'))}::" transport is not allowed`);
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(url)?.[1]?.toLowerCase();
  if (scheme !== undefined) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw invalid(url, 'not a valid URL');
    }
    if (scheme === 'file') {
      if (!opts.allowFile) throw forbidden(url);
      if (u.host !== '' && u.host !== 'localhost') throw invalid(url, 'file:// URLs must name a local path');
      return { kind: 'file', url, host: '', name: repoName(decodeURIComponent(u.pathname)) };
    }
    if (scheme !== 'https' && scheme !== 'http' && scheme !== 'ssh') {
      throw invalid(url, `the ${scheme}:// scheme is not allowed`);
    }
    if (u.hostname === '' || !HOST_RE.test(u.hostname)) throw invalid(url, 'no valid host name');
    if (u.password !== '') throw invalid(url, 'credentials must not be part of the URL', HINT_CREDENTIALS);
    if (u.username !== '' && scheme !== 'ssh') {
      throw invalid(url, 'credentials must not be part of the URL', HINT_CREDENTIALS);
    }
    if (u.username !== '' && !USER_RE.test(decodeURIComponent(u.username))) throw invalid(url, 'invalid user name');
    if (u.search !== '' || u.hash !== '') throw invalid(url, 'query strings and fragments are not allowed');
    return { kind: scheme === 'ssh' ? 'ssh' : 'http', url, host: u.host.toLowerCase(), name: repoName(u.pathname) };
  }
  if (url.startsWith('/')) {
    if (!opts.allowFile) throw forbidden(url);
    return { kind: 'file', url, host: '', name: repoName(url) };
  }
  // scp-like syntax: a colon before any slash (git's own rule), [user@]host:path.
  const scp = /^(?:([^@/:]+)@)?([^@/:]+|\[[^\]]+\]):(.*)$/.exec(url);
  if (scp !== null) {
    const [, user, host = '', path = ''] = scp;
    if (user !== undefined && !USER_RE.test(user)) throw invalid(url, 'invalid user name');
    if (!HOST_RE.test(host)) throw invalid(url, 'no valid host name');
    if (path === '' || path.startsWith('-')) throw invalid(url, 'no valid repository path');
    return { kind: 'ssh', url, host: host.toLowerCase(), name: repoName(path) };
  }
  throw invalid(url, 'relative paths and bare names are not repository URLs');
}

function forbidden(url: string): KilnError {
  return new KilnError(
    'GIT_URL_FORBIDDEN',
    `repository "${redactUrl(url)}" is a local path, which this server does not allow`,
    {
      hint: HINT_FILE,
    },
  );
}

/**
 * Directory name of a repository's mirror: 16 hex digits of the URL's sha256 (distinct URLs never share a mirror,
 * whatever their names) plus the sanitized repository name (for people looking at the data dir). Shallow mirrors
 * (`depth > 0`) get their own dir: deepening and re-shallowing one mirror back and forth would waste fetches.
 */
export function mirrorDirName(repo: RepoUrl, depth: number): string {
  const hex = createHash('sha256').update(repo.url).digest('hex').slice(0, 16);
  return `${hex}-${repo.name}${depth > 0 ? '.shallow' : ''}.git`;
}

/**
 * A submodule URL from `.gitmodules`, made absolute the way git does: `./x` and `../x` are relative to the
 * superproject's URL (`https://h/a/super.git` + `../lib.git` → `https://h/a/lib.git`); anything else is taken as
 * is. Throws `GIT_URL_INVALID` when the relative URL climbs above the superproject URL's root.
 */
export function resolveSubmoduleUrl(superUrl: string, subUrl: string): string {
  if (!subUrl.startsWith('./') && !subUrl.startsWith('../')) return subUrl;
  const base = superUrl.replace(/\/+$/, '');
  let prefix: string;
  let path: string;
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/]*/.exec(base);
  if (scheme !== null) {
    prefix = scheme[0];
    path = base.slice(prefix.length) || '/';
  } else if (base.startsWith('/')) {
    prefix = '';
    path = base;
  } else {
    const colon = base.indexOf(':');
    prefix = base.slice(0, colon + 1);
    path = base.slice(colon + 1);
  }
  const parts = path.split('/').filter((p) => p !== '');
  for (const part of subUrl.split('/')) {
    if (part === '' || part === '.') continue;
    if (part !== '..') parts.push(part);
    else if (parts.pop() === undefined) {
      throw invalid(subUrl, `climbs above the superproject URL ${redactUrl(superUrl)}`);
    }
  }
  return prefix + (path.startsWith('/') ? '/' : '') + parts.join('/');
}

/**
 * Git's ref-name rules (git-check-ref-format) for a full or short name: no control characters, spaces or `~^:?*[\\`,
 * no `..`, `//`, `@{`, no component starting with `.` or ending with `.lock`, no trailing `/` or `.`. Why here: a
 * name checked before it reaches git (a build request's ref) and a name a server lists before it becomes a file of
 * the mirror (smart-http.ts) follow the same rules.
 */
export function refNameOk(ref: string): boolean {
  return !(
    ref.length > 255 ||
    /[\x00-\x20\x7f~^:?*[\\]/.test(ref) ||
    ref.endsWith('/') ||
    ref.endsWith('.') ||
    ref.includes('..') ||
    ref.includes('//') ||
    ref.includes('@{') ||
    ref.split('/').some((c) => c.startsWith('.') || c.endsWith('.lock'))
  );
}
