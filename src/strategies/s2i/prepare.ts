/**
 * S2I's working directory, laid out as s2i lays it for `--as-dockerfile` (its build context): `upload/src` (the
 * source: a directory copied, or a git URL cloned at `#ref`, then `.s2iignore` applied), `upload/scripts` (scripts
 * from `--scripts-url file://…`, else moved out of the source's `.s2i/bin`), plus the parsing rules of the s2i
 * contract: `.s2i/environment`, `--allowed-uids` ranges, `--runtime-artifact` mappings, git source info.
 */
import { execFile } from 'node:child_process';
import {
  appendFile,
  chmod,
  copyFile,
  cp,
  lstat,
  mkdir,
  readdir,
  readFile,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { dirname, join, posix, resolve } from 'node:path';
import { KilnError, errorMessage } from '../../errors.js';
import { cloneGitWithCommit, isGitContext } from '../../engine/context.js';
import type { EnvEntry } from './dockerfile.js';
import { syncTree } from './workdir.js';
import { formatUidRanges, type UidRange } from './flags.js';

export { formatUidRanges, parseEnvFlag, parseRuntimeArtifact, parseUidRanges, type UidRange } from './flags.js';

/** The scripts s2i installs into `upload/scripts` (required, optional and the runtime one). */
export const S2I_SCRIPTS = ['assemble', 'run', 'save-artifacts', 'assemble-runtime'] as const;

export const LABEL = {
  scriptsUrl: 'io.openshift.s2i.scripts-url',
  deprecatedScriptsUrl: 'io.s2i.scripts-url',
  destination: 'io.openshift.s2i.destination',
  assembleUser: 'io.openshift.s2i.assemble-user',
  assembleInputFiles: 'io.openshift.s2i.assemble-input-files',
  assembleRuntimeUser: 'io.openshift.s2i.assemble-runtime-user',
} as const;

export const DEFAULT_SCRIPTS_URL = 'image:///usr/libexec/s2i';
export const DEFAULT_DESTINATION = '/tmp';

/** Git facts of a source, as s2i reads them (`git config/rev-parse/show` in the checkout). */
export interface SourceInfo {
  location: string;
  ref: string;
  commitId: string;
  authorName: string;
  authorEmail: string;
  date: string;
  message: string;
}

function git(cwd: string, args: string[]): Promise<string> {
  return new Promise((res) => {
    execFile('git', args, { cwd, env: { ...process.env, GIT_TERMINAL_PROMPT: '0' } }, (err, stdout) =>
      res(err ? '' : stdout.trim()),
    );
  });
}

/**
 * Whether git could see a repository at `dir`: a `.git` there or in a parent (git's own discovery), or `GIT_DIR`.
 * Why: a plain source dir then costs no `git` process (s2i asks git every time).
 */
async function maybeGitRepo(dir: string): Promise<boolean> {
  if (process.env.GIT_DIR) return true;
  for (let d = resolve(dir); ; d = dirname(d)) {
    if (await lstat(join(d, '.git')).catch(() => undefined)) return true;
    if (dirname(d) === d) return false;
  }
}

/** s2i's GetInfo: empty strings where git has no answer. */
export async function gitSourceInfo(dir: string): Promise<SourceInfo | undefined> {
  if (!(await maybeGitRepo(dir))) return undefined;
  const commitId = await git(dir, ['rev-parse', '--verify', 'HEAD']);
  if (!commitId) return undefined;
  const [location, ref, authorName, authorEmail, date, message] = await Promise.all([
    git(dir, ['config', '--get', 'remote.origin.url']),
    git(dir, ['rev-parse', '--abbrev-ref', 'HEAD']),
    git(dir, ['--no-pager', 'show', '-s', '--format=%an', 'HEAD']),
    git(dir, ['--no-pager', 'show', '-s', '--format=%ae', 'HEAD']),
    git(dir, ['--no-pager', 'show', '-s', '--format=%ad', 'HEAD']),
    git(dir, ['--no-pager', 'show', '-s', '--format=%<(80,trunc)%s', 'HEAD']),
  ]);
  return { location, ref, commitId, authorName, authorEmail, date, message };
}

/** s2i's output labels from the source (GenerateLabelsFromSourceInfo), empty values left out. */
export function sourceLabels(info: SourceInfo | undefined, fallbackLocation: string): Record<string, string> {
  const out: Record<string, string> = {};
  const add = (k: string, v: string): void => {
    if (v) out[`io.openshift.s2i.build.${k}`] = v;
  };
  if (!info) {
    add('source-location', fallbackLocation);
    return out;
  }
  if (info.authorName) add('commit.author', `${info.authorName} <${info.authorEmail}>`);
  add('commit.date', info.date);
  add('commit.id', info.commitId);
  add('commit.ref', info.ref);
  add('commit.message', info.message);
  add('source-location', info.location || fallbackLocation);
  return out;
}

/** Go's filepath.Match for one path (`*`, `?`, `[...]`, `\` escapes; `*` never crosses `/`). */
function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i] as string;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const j = glob.indexOf(']', i + 1);
      if (j < 0) return /$^/;
      let cls = glob.slice(i + 1, j);
      if (cls.startsWith('^')) cls = '^' + cls.slice(1);
      re += '[' + cls.replace(/\\/g, '\\\\') + ']';
      i = j;
    } else if (c === '\\' && i + 1 < glob.length) re += '\\' + glob[++i];
    else re += c.replace(/[.+^${}()|\\/]/g, '\\$&');
  }
  return new RegExp('^' + re + '$');
}

/** Expand one glob relative to `root` like Go's filepath.Glob (component by component, hidden files included). */
async function glob(root: string, pattern: string): Promise<string[]> {
  const parts = posix
    .normalize(pattern)
    .split('/')
    .filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) return []; // never outside the source dir
  let current = [''];
  for (const part of parts) {
    const next: string[] = [];
    const magic = /[*?[\\]/.test(part);
    for (const rel of current) {
      if (!magic) {
        const cand = rel ? `${rel}/${part}` : part;
        if (await lstat(join(root, cand)).catch(() => undefined)) next.push(cand);
        continue;
      }
      const re = globToRegExp(part);
      const names = await readdir(join(root, rel)).catch(() => [] as string[]);
      for (const n of names.sort()) if (re.test(n)) next.push(rel ? `${rel}/${n}` : n);
    }
    current = next;
  }
  return current.filter((c) => c !== '');
}

/**
 * s2i's `.s2iignore` (pkg/ignore): each line a filepath.Glob relative to the source root (not recursive), `#`
 * comments, `!spec` keeps what an earlier line matched. Returns the paths removed (relative).
 */
export async function applyS2iIgnore(srcDir: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(join(srcDir, '.s2iignore'), 'utf8');
  } catch {
    return [];
  }
  const del = new Set<string>();
  for (const raw of text.split('\n')) {
    const spec = raw.replace(/^ +| +$/g, '');
    if (!spec || spec.startsWith('#')) continue;
    if (spec.startsWith('!')) {
      const re = globToRegExp(posix.normalize(spec.slice(1)));
      for (const d of [...del]) if (re.test(d)) del.delete(d);
      continue;
    }
    for (const m of await glob(srcDir, spec)) del.add(m);
  }
  for (const d of del) {
    await rm(join(srcDir, d), { recursive: true, force: true });
  }
  return [...del].sort();
}

/** s2i's `.s2i/environment`: `NAME=VALUE` lines (trimmed), `#` comments; lines that do not parse are skipped. */
export function parseEnvironmentFile(text: string): EnvEntry[] {
  const out: EnvEntry[] = [];
  for (const line of text.split('\n')) {
    const s = line.replace(/\r$/, '');
    if (s.startsWith('#')) continue;
    const i = s.indexOf('=');
    if (i <= 0) continue;
    out.push({ name: s.slice(0, i).trim(), value: s.slice(i + 1).trim() });
  }
  return out;
}

/**
 * s2i's IsUserAllowed: with no (non-empty) range everything is allowed; otherwise the user must be numeric (the
 * part before `:`) and in a range. Throws the refusal OpenShift gives.
 */
export function checkAllowedUser(user: string, ranges: UidRange[], what: string): void {
  const real = ranges.filter((r) => r.from !== undefined || r.to !== undefined);
  if (real.length === 0) return;
  const uidPart = user.split(':')[0] ?? '';
  const uid = /^\d+$/.test(uidPart) ? Number(uidPart) : undefined;
  const ok =
    uid !== undefined &&
    real.some((r) => (r.from === undefined || uid >= r.from) && (r.to === undefined || uid <= r.to));
  if (ok) return;
  throw new KilnError(
    'S2I_USER_NOT_ALLOWED',
    `${what} "${user || 'root'}" is not allowed: --allowed-uids ${formatUidRanges(real)}` +
      (uid === undefined ? ' (the user must be numeric)' : ''),
    { hint: 'set a numeric non-root USER or io.openshift.s2i.assemble-user in the builder image, or --assemble-user' },
  );
}

/** The prepared working dir. */
export interface PreparedSource {
  /** The build context (holds `upload/`). */
  workDir: string;
  /** Scripts found in `upload/scripts`. */
  provided: Set<string>;
  /** `.s2i/environment` of the source. */
  env: EnvEntry[];
  info: SourceInfo | undefined;
  /** The source location as given — s2i labels a directory source with the path as written. */
  location: string;
}

/** Where a source's own scripts are looked up (in this order). */
const SCRIPT_DIRS: readonly string[] = ['.s2i/bin', '.sti/bin'];
/** The scripts a build moved out of the kept source copy (`NAME<TAB>DIR` lines), put back by the next one. */
const MOVED_SCRIPTS = '.moved-scripts';

/** `root/rel` when each component of `rel` is a directory there, not a symlink (to anywhere); else undefined. */
async function realDir(root: string, rel: string): Promise<string | undefined> {
  let p = root;
  for (const c of rel.split('/')) {
    p = join(p, c);
    if (!(await lstat(p).catch(() => undefined))?.isDirectory()) return undefined;
  }
  return p;
}

/** Copy a directory tree as it is (modes, times, symlinks as links): coreutils `cp -a`, else Node's copy. */
async function copyTree(from: string, to: string): Promise<void> {
  const ok = await new Promise<boolean>((res) =>
    execFile('cp', ['-a', '--reflink=auto', '--no-target-directory', from, to], (err) => res(!err)),
  );
  if (ok) return;
  await rm(to, { recursive: true, force: true });
  await cp(from, to, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
}

async function exists(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined)) !== undefined;
}

/** s2i's `file://` script download (and a plain path), into upload/scripts. */
async function installFromUrl(url: string, dest: string, found: Set<string>, names: readonly string[]): Promise<void> {
  const base = url.startsWith('file://') ? url.slice('file://'.length) : url;
  for (const n of names) {
    const src = join(base, n);
    if (!(await exists(src))) continue;
    await copyFile(src, join(dest, n));
    await chmod(join(dest, n), 0o755);
    found.add(n);
  }
}

/** Largest script `--scripts-url http(s)://` takes (s2i scripts are small shell scripts or one binary). */
export const MAX_SCRIPT_BYTES = 8 * 1024 * 1024;
const SCRIPT_TIMEOUT_MS = 60_000;

/**
 * s2i's http(s) script download: `URL/assemble`, `URL/run`, … each fetched with TLS verified, redirects followed,
 * a time limit and a size limit; a 404 means "not provided here" (s2i's rule: the next place is looked at), any
 * other failure is an error naming the script's URL. A URL with credentials is refused: it would be written
 * into the image's `io.openshift.s2i.scripts-url` label and the build log.
 */
async function downloadScripts(url: string, dest: string, found: Set<string>, names: readonly string[]): Promise<void> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new KilnError('OPTION_INVALID', `--scripts-url ${url}: not a valid URL`);
  }
  if (u.username || u.password) {
    throw new KilnError('OPTION_INVALID', '--scripts-url: credentials in the URL are not accepted', {
      hint: 'the URL is recorded in the image label io.openshift.s2i.scripts-url; serve the scripts without credentials',
    });
  }
  const base = url.replace(/\/+$/, '');
  const fail = (n: string, why: string): KilnError =>
    new KilnError('S2I_SCRIPTS', `--scripts-url: ${base}/${n}: ${why}`, {
      hint: 'the URL should name a directory holding assemble, run and optionally save-artifacts',
    });
  for (const n of names) {
    let res: Response;
    try {
      res = await fetch(`${base}/${n}`, { redirect: 'follow', signal: AbortSignal.timeout(SCRIPT_TIMEOUT_MS) });
    } catch (e) {
      const c = (e as { cause?: unknown }).cause;
      throw fail(n, errorMessage(c ?? e));
    }
    if (res.status === 404) {
      await res.body?.cancel();
      continue;
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw fail(n, `HTTP ${res.status} ${res.statusText}`.trim());
    }
    const announced = Number(res.headers.get('content-length') ?? NaN);
    if (announced > MAX_SCRIPT_BYTES) {
      await res.body.cancel();
      throw fail(n, `${announced} bytes, over the ${MAX_SCRIPT_BYTES} byte limit`);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of res.body as AsyncIterable<Uint8Array>) {
      size += c.length;
      if (size > MAX_SCRIPT_BYTES) throw fail(n, `over the ${MAX_SCRIPT_BYTES} byte limit`);
      chunks.push(Buffer.from(c));
    }
    if (size === 0) throw fail(n, 'empty response');
    await writeFile(join(dest, n), Buffer.concat(chunks), { mode: 0o755 });
    await chmod(join(dest, n), 0o755);
    found.add(n);
  }
}

/**
 * Lay out `workDir` for `source` (a directory, or a git URL with `#ref`): the source in `upload/src`, scripts from
 * `scriptsUrl` (`file://`; `image://` means they are in the image) and then the source's `.s2i/bin` (moved, as
 * s2i moves them) in `upload/scripts`, `.s2iignore` applied.
 */
export async function prepareSource(
  source: string,
  workDir: string,
  opts: { scriptsUrl?: string; keepGitDir?: boolean } = {},
): Promise<PreparedSource> {
  const src = join(workDir, 'upload', 'src');
  const scripts = join(workDir, 'upload', 'scripts');
  // a kept working dir (workdir.ts) holds the previous build's layout: scripts are laid out afresh, the source
  // is synced in place (unchanged files keep their inode and times: the stat cache knows them). The scripts the
  // last build moved out of the copy go back first: unchanged, the sync keeps them (no copy, no getfattr); they are
  // only moved, never trusted — the sync compares them with the source like any file
  const moved = join(workDir, MOVED_SCRIPTS);
  for (const line of (await readFile(moved, 'utf8').catch(() => '')).split('\n')) {
    const [n, dir] = line.split('\t');
    if (!n || !dir || !(S2I_SCRIPTS as readonly string[]).includes(n) || !SCRIPT_DIRS.includes(dir)) continue;
    const to = await realDir(src, dir);
    if (to) await rename(join(scripts, n), join(to, n)).catch(() => undefined);
  }
  await rm(moved, { force: true });
  await rm(scripts, { recursive: true, force: true });
  await rm(join(workDir, 'upload', 'tmp'), { recursive: true, force: true });
  await mkdir(scripts, { recursive: true });
  let info: SourceInfo | undefined;
  const location = source;
  const isGit = isGitContext(source) || /^https?:\/\//.test(source);
  if (isGit) {
    const tmp = join(workDir, 'upload', 'tmp');
    const { dir } = await cloneGitWithCommit(source, tmp, true);
    info = await gitSourceInfo(dir);
    if (info && !info.location) info.location = source.split('#')[0] as string;
    await rm(src, { recursive: true, force: true });
    await rename(dir, src);
    if (!opts.keepGitDir) await rm(join(src, '.git'), { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  } else {
    // the directory itself, not a link to it: cp -a would copy a link as a link (upload/src pointing out of the
    // context) and the sync would give upload/src the link's mode; s2i copies what the source path names
    const abs = await realpath(resolve(source)).catch(() => resolve(source));
    const st = await stat(abs).catch(() => undefined);
    if (!st?.isDirectory()) {
      throw new KilnError('S2I_SOURCE', `source "${source}" is not a directory or a git URL`, {
        hint: 'give a directory or a git URL (https://…/repo.git#ref)',
      });
    }
    if (resolve(workDir).startsWith(abs + '/')) {
      throw new KilnError('S2I_SOURCE', `recursive copy requested: source "${source}" contains the working dir`);
    }
    // git's answers (a process) while the tree is copied
    const gitInfo = gitSourceInfo(abs);
    if (await exists(src)) await syncTree(abs, src);
    else await copyTree(abs, src);
    info = await gitInfo;
  }
  const provided = new Set<string>();
  if (opts.scriptsUrl && !opts.scriptsUrl.startsWith('image://')) {
    if (/^https?:\/\//i.test(opts.scriptsUrl)) await downloadScripts(opts.scriptsUrl, scripts, provided, S2I_SCRIPTS);
    else if (!/^(file:\/\/)?\//.test(opts.scriptsUrl)) {
      throw new KilnError(
        'OPTION_INVALID',
        `--scripts-url ${opts.scriptsUrl}: only image://, file://, http:// and https:// are supported`,
        { hint: 'use image:///path/in/builder, file:///host/dir or https://host/dir' },
      );
    } else await installFromUrl(opts.scriptsUrl, scripts, provided, S2I_SCRIPTS);
    if (provided.size === 0) {
      throw new KilnError('S2I_SCRIPTS', `could not download any scripts from URL ${opts.scriptsUrl}`, {
        hint: 'the directory should hold assemble, run and optionally save-artifacts',
      });
    }
  }
  for (const n of S2I_SCRIPTS) {
    if (provided.has(n)) continue;
    for (const dir of SCRIPT_DIRS) {
      // never through a link out of the copy: a `.s2i` linked to a host dir would move a host file
      const from = await realDir(src, dir);
      const p = from && join(from, n);
      const st = p && (await lstat(p).catch(() => undefined));
      if (p && st && (await exists(p))) {
        await rename(p, join(scripts, n));
        if (!st.isSymbolicLink()) await chmod(join(scripts, n), 0o755);
        if (!isGit) await appendFile(moved, `${n}\t${dir}\n`);
        provided.add(n);
        break;
      }
    }
  }
  await applyS2iIgnore(src);
  let env: EnvEntry[] = [];
  try {
    env = parseEnvironmentFile(await readFile(join(src, '.s2i', 'environment'), 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new KilnError('S2I_SOURCE', `cannot read .s2i/environment: ${errorMessage(e)}`, { cause: e });
    }
  }
  return { workDir, provided, env, info, location };
}
