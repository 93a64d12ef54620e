/**
 * Small formatting rules of the web UI (ages, durations, refs, digests, pull references, links to a Dockerfile
 * line on the forge, the failing line of a log). Pure functions shared by the browser bundle and the unit tests.
 */
import { stripAnsi } from './ansi.js';

/** `3s`, `4m 05s`, `1h 02m`. */
export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms < 0) return '–';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

/** `just now`, `5 min ago`, `3 h ago`, `2 d ago`. */
export function age(iso: string | null | undefined, now: number = Date.now()): string {
  if (!iso) return '–';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (!Number.isFinite(s)) return '–';
  if (s < 10) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** `refs/heads/main` → `main`, `refs/tags/v1` → `v1`; '' (built by commit) → ''. */
export function refName(ref: string): string {
  return ref.replace(/^refs\/(heads|tags)\//, '');
}

/** `sha256:0123456789ab` (12 hex digits). */
export function shortDigest(d: string | null | undefined): string {
  if (!d) return '–';
  const i = d.indexOf(':');
  return i < 0 ? d.slice(0, 12) : d.slice(0, i + 13);
}

/** The repository of a full image reference (`host:5000/p/web:main` → `host:5000/p/web`). */
export function repositoryOf(ref: string): string {
  const at = ref.indexOf('@');
  const noDigest = at === -1 ? ref : ref.slice(0, at);
  const slash = noDigest.lastIndexOf('/');
  const colon = noDigest.lastIndexOf(':');
  return colon > slash ? noDigest.slice(0, colon) : noDigest;
}

/** Pull references of a build: by digest first (immutable), then each tag. */
export function pullRefs(b: { tags: string[]; digest: string | null }, fallbackRepo?: string): string[] {
  const repo = b.tags[0] ? repositoryOf(b.tags[0]) : fallbackRepo;
  const out: string[] = [];
  if (b.digest && repo) out.push(`${repo}@${b.digest}`);
  out.push(...b.tags);
  return out;
}

/** Where the build failed: the log line to land on and the Dockerfile position, when the log or reason say. */
export interface Failure {
  /** Index into the lines given (or -1 when no line stands out). */
  line: number;
  file?: string;
  lineNo?: number;
}

const DOCKERFILE_POS = /((?:[\w.@+-]+\/)*[\w.@+-]*(?:Dockerfile|Containerfile)[\w.@+-]*):(\d+)/;

/** The `path/Dockerfile:N` a message names, if any. */
export function dockerfilePosition(text: string | null | undefined): { file: string; lineNo: number } | undefined {
  const m = text ? DOCKERFILE_POS.exec(text) : null;
  return m ? { file: m[1] as string, lineNo: Number(m[2]) } : undefined;
}

/**
 * The failing line of a failed build's log: the last `ERROR` line (what the worker writes when a build fails),
 * else the last line holding the reason; `Dockerfile:N` from that line or from the reason.
 */
export function findFailure(lines: readonly string[], reason: string | null): Failure {
  let at = -1;
  for (let i = lines.length - 1, seen = 0; i >= 0 && seen < 5000; i--, seen++) {
    if (/^(?:\x1b\[[0-9;]*m)*ERROR\b/.test(lines[i] as string)) {
      at = i;
      break;
    }
  }
  if (at === -1 && reason) {
    for (let i = lines.length - 1, seen = 0; i >= 0 && seen < 5000; i--, seen++) {
      if (stripAnsi(lines[i] as string).includes(reason)) {
        at = i;
        break;
      }
    }
  }
  const pos = dockerfilePosition(at === -1 ? undefined : stripAnsi(lines[at] as string)) ?? dockerfilePosition(reason);
  return { line: at, ...(pos ? { file: pos.file, lineNo: pos.lineNo } : {}) };
}

/**
 * A web link to line `lineNo` of `file` at `commit` in the repository, for forges whose URL layout is known
 * (GitHub and GitHub Enterprise, GitLab, Gitea/Forgejo, Bitbucket); undefined for other URLs (ssh, file, …).
 * Only http(s) URLs are turned into links, so a repository URL can never become a `javascript:` link.
 */
export function forgeLineUrl(
  repository: string,
  commit: string | null,
  file: string,
  lineNo: number,
): string | undefined {
  if (!commit || !/^[0-9a-f]{7,64}$/.test(commit)) return undefined;
  let u: URL;
  try {
    u = new URL(repository);
  } catch {
    return undefined;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return undefined;
  const base = `${u.protocol}//${u.host}${u.pathname.replace(/\.git$/, '').replace(/\/$/, '')}`;
  const path = file.split('/').map(encodeURIComponent).join('/');
  if (u.host === 'bitbucket.org') return `${base}/src/${commit}/${path}#lines-${lineNo}`;
  if (u.host.includes('gitlab')) return `${base}/-/blob/${commit}/${path}#L${lineNo}`;
  if (u.host.includes('gitea') || u.host.includes('forgejo') || u.host === 'codeberg.org') {
    return `${base}/src/commit/${commit}/${path}#L${lineNo}`;
  }
  if (u.host === 'github.com' || u.host.includes('github')) return `${base}/blob/${commit}/${path}#L${lineNo}`;
  return undefined;
}
