/**
 * `.dockerignore` semantics, re-implemented after moby/patternmatcher (patternmatcher.go, ignorefile/ignorefile.go),
 * BuildKit's dockerui (which ignore file applies) and tonistiigi/fsutil's filtered walk (how excluded directories
 * with `!` exceptions inside are walked).
 *
 * - Reading (`parseDockerignore`): a UTF-8 BOM is stripped, lines starting with `#` are comments, patterns are
 *   trimmed, cleaned like Go's filepath.Clean and a leading `/` is removed (`/a/b` == `a/b`); `!` marks an exception.
 * - Matching: `*` and `?` never match `/`, `**` matches any number of directories, `[...]` classes, `\` escapes.
 *   The last matching pattern wins; a pattern also matches everything under a directory it matches.
 * - Which file: `<Dockerfile path>.dockerignore` next to the Dockerfile takes precedence over `<context>/.dockerignore`.
 * - The Dockerfile and the ignore file are matched like any other path: if excluded they are not part of the context
 *   (`COPY . .` does not copy them), but the frontend still reads the Dockerfile itself (BuildKit sends it separately).
 *
 * We do not use @balena/dockerignore: it models Docker 19.03's matcher and disagrees with patternmatcher on several
 * cases of patternmatcher's own test table (see dockerignore.test.ts).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { KilnError } from '../errors.js';
import { resolveInRootSync } from '../util/inroot.js';

export const DOCKERIGNORE_ERROR = 'DOCKERIGNORE_PATTERN';

/** Go's path.Clean (slash-separated, lexical). */
export function cleanPath(p: string): string {
  if (p === '') return '.';
  const rooted = p.startsWith('/');
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
      else if (!rooted) out.push('..');
      continue;
    }
    out.push(part);
  }
  const s = out.join('/');
  if (rooted) return '/' + s;
  return s === '' ? '.' : s;
}

/** Go's strings.TrimSpace (Unicode White_Space). */
function trimSpace(s: string): string {
  return s.replace(/^[\p{White_Space}]+|[\p{White_Space}]+$/gu, '');
}

/** Parse the text of an ignore file into patterns (moby/patternmatcher ignorefile.ReadAll). */
export function parseDockerignore(text: string): string[] {
  const out: string[] = [];
  let lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines = lines.slice(0, -1);
  lines.forEach((raw, i) => {
    let line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (i === 0 && line.startsWith('\ufeff')) line = line.slice(1);
    if (line.startsWith('#')) return;
    let pattern = trimSpace(line);
    if (pattern === '') return;
    const invert = pattern.startsWith('!');
    if (invert) pattern = trimSpace(pattern.slice(1));
    if (pattern.length > 0) {
      pattern = cleanPath(pattern);
      if (pattern.length > 1 && pattern.startsWith('/')) pattern = pattern.slice(1);
    }
    out.push(invert ? '!' + pattern : pattern);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Go filepath.Match syntax validation (patternmatcher.New rejects patterns filepath.Match reports as malformed).

class BadPattern extends Error {}

function scanChunk(p: string[]): { chunk: string[]; rest: string[] } {
  let i0 = 0;
  while (i0 < p.length && p[i0] === '*') i0++;
  const pat = p.slice(i0);
  let inrange = false;
  let i = 0;
  for (; i < pat.length; i++) {
    const c = pat[i];
    if (c === '\\') {
      if (i + 1 < pat.length) i++;
    } else if (c === '[') inrange = true;
    else if (c === ']') inrange = false;
    else if (c === '*' && !inrange) break;
  }
  return { chunk: pat.slice(0, i), rest: pat.slice(i) };
}

function getEsc(chunk: string[], i: number): number {
  if (i >= chunk.length || chunk[i] === '-' || chunk[i] === ']') throw new BadPattern();
  if (chunk[i] === '\\') {
    i++;
    if (i >= chunk.length) throw new BadPattern();
  }
  i++;
  if (i >= chunk.length) throw new BadPattern();
  return i;
}

function checkChunk(chunk: string[]): void {
  let i = 0;
  while (i < chunk.length) {
    const c = chunk[i];
    if (c === '[') {
      i++;
      if (i < chunk.length && chunk[i] === '^') i++;
      let nrange = 0;
      for (;;) {
        if (i < chunk.length && chunk[i] === ']' && nrange > 0) {
          i++;
          break;
        }
        i = getEsc(chunk, i);
        if (chunk[i] === '-') i = getEsc(chunk, i + 1);
        nrange++;
      }
    } else if (c === '\\') {
      i++;
      if (i >= chunk.length) throw new BadPattern();
      i++;
    } else {
      i++;
    }
  }
}

/** Does Go's filepath.Match consider `pattern` malformed? */
export function isMalformedGlob(pattern: string): boolean {
  let p = Array.from(pattern);
  try {
    while (p.length > 0) {
      const { chunk, rest } = scanChunk(p);
      checkChunk(chunk);
      p = rest;
    }
  } catch (e) {
    if (e instanceof BadPattern) return true;
    throw e;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
// Pattern compilation (patternmatcher Pattern.compile).

type MatchType = 'exact' | 'prefix' | 'suffix' | 'regexp';

export interface CompiledPattern {
  /** The cleaned pattern without the leading `!`. */
  readonly pattern: string;
  readonly exclusion: boolean;
  readonly matchType: MatchType;
  /** JS regular expression source, for `regexp` patterns. */
  readonly regexpSource: string | undefined;
  match(path: string): boolean;
}

const SHOULD_ESCAPE = new Set(['.', '+', '(', ')', '|', '{', '}', '$']);
const JS_SYNTAX = new Set(['^', '$', '\\', '.', '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '/', '-']);

/** Translate Go regexp escape `\c` (c from the pattern) to JS (u-mode) source; undefined if Go rejects it. */
function goEscape(c: string, inClass: boolean): string | undefined {
  if (/^[A-Za-z0-9]$/.test(c)) {
    switch (c) {
      case 'a':
        return '\\x07';
      case 'f':
      case 't':
      case 'n':
      case 'r':
      case 'v':
      case 'd':
      case 'D':
      case 'w':
      case 'W':
        return '\\' + c;
      case 'b':
      case 'B':
        return inClass ? undefined : '\\' + c;
      case 's':
        return inClass ? '\\t\\n\\f\\r ' : '[\\t\\n\\f\\r ]';
      case 'S':
        return inClass ? undefined : '[^\\t\\n\\f\\r ]';
      default:
        return undefined;
    }
  }
  const cp = c.codePointAt(0) ?? 0;
  if (cp < 0x80) {
    if (JS_SYNTAX.has(c) && (inClass || c !== '-')) return '\\' + c;
    return c;
  }
  // RE2 only allows escaping ASCII punctuation: `\é` is an invalid escape sequence.
  return undefined;
}

function compilePatternInternal(cleaned: string, exclusion: boolean): CompiledPattern {
  const cps = Array.from(cleaned);
  let re = '^';
  let type: MatchType = 'exact';
  let inClass = false;
  let bad = false;
  for (let pos = 0, i = 0; pos < cps.length; i++) {
    const ch = cps[pos++];
    if (ch === '*') {
      if (cps[pos] === '*') {
        pos++;
        if (cps[pos] === '/') pos++;
        if (pos >= cps.length) {
          if (type === 'exact') type = 'prefix';
          else {
            re += '.*';
            type = 'regexp';
          }
        } else {
          re += '(.*/)?';
          type = 'regexp';
        }
        if (i === 0) type = 'suffix';
      } else {
        re += '[^/]*';
        type = 'regexp';
      }
    } else if (ch === '?') {
      re += '[^/]';
      type = 'regexp';
    } else if (SHOULD_ESCAPE.has(ch)) {
      re += '\\' + ch;
    } else if (ch === '\\') {
      if (pos < cps.length) {
        const e = goEscape(cps[pos++], inClass);
        if (e === undefined) bad = true;
        else re += e;
        type = 'regexp';
      } else {
        re += '\\\\';
      }
    } else if (ch === '[' || ch === ']') {
      if (ch === '[') inClass = true;
      else inClass = false;
      re += ch;
      type = 'regexp';
    } else {
      re += ch;
    }
  }
  let regexp: RegExp | undefined;
  if (type === 'regexp') {
    re += '$';
    try {
      if (bad) throw new Error('invalid escape');
      regexp = new RegExp(re, 'u');
    } catch (e) {
      throw new KilnError(
        DOCKERIGNORE_ERROR,
        `invalid .dockerignore pattern ${JSON.stringify(cleaned)}: syntax error in pattern`,
        {
          hint: 'check [...] character classes and \\ escapes',
          cause: e,
        },
      );
    }
  }
  const matchType = type as MatchType;
  const compiled: CompiledPattern = {
    pattern: cleaned,
    exclusion,
    matchType,
    regexpSource: regexp?.source,
    match(path: string): boolean {
      switch (matchType) {
        case 'exact':
          return path === cleaned;
        case 'prefix':
          return path.startsWith(cleaned.slice(0, -2));
        case 'suffix': {
          const suffix = cleaned.slice(2);
          if (path.endsWith(suffix)) return true;
          // `**/foo` also matches `foo`.
          return suffix.startsWith('/') && path === suffix.slice(1);
        }
        default:
          return regexp!.test(path);
      }
    },
  };
  return compiled;
}

/**
 * Compile patterns like patternmatcher.New: trims, skips empty patterns, filepath.Clean, `!` exceptions,
 * rejects a lone `!` and malformed globs.
 */
export function compilePatterns(patterns: readonly string[]): CompiledPattern[] {
  const out: CompiledPattern[] = [];
  for (const raw of patterns) {
    let p = trimSpace(raw);
    if (p === '') continue;
    p = cleanPath(p);
    let exclusion = false;
    if (p.startsWith('!')) {
      if (p.length === 1) {
        throw new KilnError(DOCKERIGNORE_ERROR, 'illegal exclusion pattern: "!"', {
          hint: 'an exception needs a path after the "!"',
        });
      }
      exclusion = true;
      p = p.slice(1);
    }
    if (isMalformedGlob(p)) {
      throw new KilnError(
        DOCKERIGNORE_ERROR,
        `invalid .dockerignore pattern ${JSON.stringify(p)}: syntax error in pattern`,
        {
          hint: 'check [...] character classes and \\ escapes',
        },
      );
    }
    out.push(compilePatternInternal(p, exclusion));
  }
  return out;
}

function parentDirsOf(file: string): string[] {
  const i = file.lastIndexOf('/');
  if (i <= 0) return [];
  const parts = file.slice(0, i).split('/');
  return parts.map((_, k) => parts.slice(0, k + 1).join('/'));
}

/** patternmatcher MatchesOrParentMatches: does `file` or any of its parents match (last pattern wins)? */
export function matchesOrParentMatches(patterns: readonly CompiledPattern[], file: string): boolean {
  const parents = parentDirsOf(file);
  let matched = false;
  for (const p of patterns) {
    if (p.exclusion !== matched) continue;
    let m = p.match(file);
    if (!m) m = parents.some((d) => p.match(d));
    if (m) matched = !p.exclusion;
  }
  return matched;
}

/**
 * patternmatcher MatchesUsingParentResults: `parentInfo` holds, per pattern, whether the parent directory matched
 * it (empty: unknown, parents are checked directly). Returns the result and the info to pass to children.
 */
export function matchesUsingParentResults(
  patterns: readonly CompiledPattern[],
  file: string,
  parentInfo: readonly boolean[],
): { matched: boolean; info: boolean[] } {
  const info = new Array<boolean>(patterns.length).fill(false);
  let matched = false;
  patterns.forEach((p, i) => {
    let m = parentInfo.length !== 0 ? parentInfo[i] : false;
    if (!m) {
      if (p.exclusion !== matched) return;
      m = p.match(file);
      if (!m && parentInfo.length === 0) m = parentDirsOf(file).some((d) => p.match(d));
    }
    info[i] = m;
    if (m) matched = !p.exclusion;
  });
  return { matched, info };
}

/** Which context paths a `.dockerignore` excludes. Paths are slash-separated and relative to the context root. */
export interface Matcher {
  /** Patterns as read from the ignore file (after ReadAll's cleaning). */
  readonly patterns: readonly string[];
  /** Absolute path of the ignore file used, or undefined when there is none. */
  readonly file: string | undefined;
  /** True when the patterns contain `!` exceptions. */
  readonly hasExceptions: boolean;
  /**
   * Is `relPath` excluded from the context? Evaluated like BuildKit's context walk (parent results carried down),
   * so a path inside an excluded directory is excluded unless a later `!` pattern matches it. `isDir` does not
   * change the result (patterns are cleaned, `dir/` == `dir`); it is accepted for symmetry with walkers.
   */
  matches(relPath: string, isDir?: boolean): boolean;
  /**
   * May the (excluded or not) directory `dirRelPath` contain included paths? False only when walking it can be
   * skipped entirely (fsutil's SkipDir rule); when true for an excluded directory, walk it, include only the
   * children that are not excluded, and emit the directory itself only if some descendant is included.
   */
  mayContainIncluded(dirRelPath: string): boolean;
}

function normalizeRel(p: string): string {
  let s = cleanPath(p.replace(/\\/g, '/'));
  while (s.startsWith('/')) s = s.slice(1);
  return s === '' ? '.' : s;
}

class PatternSetMatcher implements Matcher {
  readonly hasExceptions: boolean;
  private readonly compiled: CompiledPattern[];
  private readonly onlyPrefixExceptions: boolean;
  private readonly cache = new Map<string, { matched: boolean; info: boolean[] }>();

  constructor(
    readonly patterns: readonly string[],
    readonly file: string | undefined,
  ) {
    this.compiled = compilePatterns(patterns);
    this.hasExceptions = this.compiled.some((p) => p.exclusion);
    this.onlyPrefixExceptions = !this.compiled.some(
      (p) => p.exclusion && /[*[\]?^\\]/.test(withoutTrailingGlob(p.pattern)),
    );
  }

  private eval(path: string): { matched: boolean; info: boolean[] } {
    const hit = this.cache.get(path);
    if (hit) return hit;
    const i = path.lastIndexOf('/');
    const parentInfo = i > 0 ? this.eval(path.slice(0, i)).info : [];
    const r = matchesUsingParentResults(this.compiled, path, parentInfo);
    if (this.cache.size > 100_000) this.cache.clear();
    this.cache.set(path, r);
    return r;
  }

  matches(relPath: string, _isDir?: boolean): boolean {
    if (this.compiled.length === 0) return false; // no .dockerignore: the common case, on every file of a walk
    const p = normalizeRel(relPath);
    if (p === '.') return false;
    return this.eval(p).matched;
  }

  mayContainIncluded(dirRelPath: string): boolean {
    const p = normalizeRel(dirRelPath);
    if (p === '.' || !this.matches(p)) return true;
    if (!this.onlyPrefixExceptions) return true;
    if (!this.hasExceptions) return false;
    const dirSlash = p + '/';
    return this.compiled.some((pat) => pat.exclusion && (withoutTrailingGlob(pat.pattern) + '/').startsWith(dirSlash));
  }
}

function withoutTrailingGlob(p: string): string {
  let s = p;
  if (s.endsWith('/**')) s = s.slice(0, -3);
  if (s.endsWith('/*')) s = s.slice(0, -2);
  return s;
}

/** A matcher for a list of patterns (as from parseDockerignore). */
export function newMatcher(patterns: readonly string[], file?: string): Matcher {
  return new PatternSetMatcher(patterns, file);
}

/**
 * Resolve `name` inside `root` the way a rooted filesystem would (BuildKit reads the ignore file from a transferred
 * snapshot): symlinks are followed but their targets are interpreted inside `root` (absolute targets from `root`,
 * `..` never climbs above it), so an ignore file can never be read from outside the root. Returns undefined when
 * the path does not resolve to an existing regular file.
 */
export function resolveInRoot(root: string, name: string): string | undefined {
  const full = resolveInRootSync(resolve(root), name, {
    maxLinks: 40,
    onMissing: (e) => {
      if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return 'stop';
      throw e;
    },
    onNotDir: (_rel, last) => (last ? 'keep' : 'stop'),
    onLoop: () => 'stop',
  });
  if (full === undefined) return undefined;
  try {
    return statSync(full).isFile() ? full : undefined;
  } catch {
    return undefined;
  }
}

function readInRoot(root: string, name: string): { path: string; text: string } | undefined {
  const path = resolveInRoot(root, name);
  if (path === undefined) return undefined;
  try {
    return { path, text: readFileSync(path, 'utf8') };
  } catch (e) {
    throw new KilnError('DOCKERIGNORE_READ', `cannot read ${join(root, name)}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Load the ignore rules for a build: `<dockerfilePath>.dockerignore` (next to the Dockerfile, any file name) when it
 * exists, else `<contextDir>/.dockerignore`, else nothing is excluded. `dockerfilePath` may be absolute or relative
 * to the current directory; pass undefined when the Dockerfile comes from stdin.
 */
export function loadDockerignore(contextDir: string, dockerfilePath?: string): Matcher {
  const candidates: [string, string][] = [];
  if (dockerfilePath !== undefined && dockerfilePath !== '-' && dockerfilePath !== '') {
    candidates.push([dirname(dockerfilePath), basename(dockerfilePath) + '.dockerignore']);
  }
  candidates.push([contextDir, '.dockerignore']);
  for (const [root, name] of candidates) {
    const found = readInRoot(root, name);
    if (found === undefined) continue;
    const file = join(root, name);
    const text = found.text;
    try {
      return newMatcher(parseDockerignore(text), file);
    } catch (e) {
      if (e instanceof KilnError) {
        throw new KilnError(e.code, `failed parsing ${file}: ${e.message}`, { hint: e.hint, cause: e });
      }
      throw e;
    }
  }
  return newMatcher([], undefined);
}

/**
 * List the paths of `contextDir` that are part of the build context under `matcher`, in walk order (sorted by
 * name, parents before children), the way BuildKit's filtered walk sends them: excluded directories are skipped
 * when no exception can match inside, otherwise walked; an excluded directory is listed only when something
 * inside it is included. Symlinks are listed, never followed. Directories are returned with a trailing `/`.
 */
export function listContextPaths(contextDir: string, matcher: Matcher): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    const names = readdirSync(rel === '' ? contextDir : join(contextDir, rel), { withFileTypes: true });
    names.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const d of names) {
      const p = rel === '' ? d.name : `${rel}/${d.name}`;
      const isDir = d.isDirectory();
      const excluded = matcher.matches(p, isDir);
      if (!isDir) {
        if (!excluded) out.push(p);
        continue;
      }
      if (!excluded) {
        out.push(p + '/');
        walk(p);
      } else if (matcher.mayContainIncluded(p)) {
        const mark = out.length;
        walk(p);
        if (out.length > mark) out.splice(mark, 0, p + '/');
      }
    }
  };
  walk('');
  return out;
}
