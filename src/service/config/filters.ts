/**
 * Branch, tag and path filters of the build service (`branches:`, `tags:`, `images[].paths:` in a project). One
 * pattern language for all three, so a user learns it once:
 *
 * - a glob: `*` matches any run of characters except `/`, `**` any run including `/` (`**` + `/` also matches zero
 *   directories: `**` + `/x.md` matches `x.md`, `services/**` matches `services/a/b`), `?` one character except
 *   `/`, `[abc]` / `[a-z]` / `[!abc]` (or `[^abc]`) one character of a class (never `/`), `\x` a literal `x`;
 * - a regular expression written `/…/`: it must match the **whole** value (it runs as `^(?:…)$`, like Quay's
 *   branch regexes and unlike JS `test`), so `/v\d+/` does not match `v1-rc` — write `/v\d+.*` + `/` for that;
 * - either of them after `!` excludes what it matches. Patterns apply in order and the last one that matches wins,
 *   like `.gitignore`: `["release/*", "!release/old"]`. A list that starts with an exclusion starts from
 *   "everything", so `["!docs/**"]` means every path outside `docs/`.
 *
 * Globs are our own (not `.dockerignore`'s Go `filepath.Match`): `**` semantics follow `.gitignore`/GitHub Actions,
 * which is what users write in CI filters.
 */
import { KilnError } from '../../errors.js';

/** A compiled filter pattern. */
export interface CompiledFilter {
  /** The pattern as written. */
  readonly pattern: string;
  /** `!pattern`: a match excludes. */
  readonly negate: boolean;
  /** Full-match expression of the pattern without its `!`. */
  readonly re: RegExp;
}

function invalidPattern(pattern: string, why: string): KilnError {
  return new KilnError('INVALID_FILTER', `invalid filter pattern "${pattern}": ${why}`, {
    hint: 'globs use * ** ? [abc]; a regular expression is written /…/ and must match the whole value',
  });
}

const REGEX_SPECIAL = /[\\^$.*+?()[\]{}|/]/;

function escapeChar(c: string): string {
  return REGEX_SPECIAL.test(c) ? `\\${c}` : c;
}

/** A literal character inside a regex class (u mode allows escaping only syntax characters there). */
function classChar(c: string): string {
  return c === '-' || c === ']' || c === '[' || c === '^' || c === '\\' ? `\\${c}` : c;
}

/** Translates a `[…]` class starting at `glob[start] === '['`; returns the regex source and the index after `]`. */
function globClass(glob: string, start: number): [string, number] {
  let i = start + 1;
  let negate = false;
  if (glob[i] === '!' || glob[i] === '^') {
    negate = true;
    i++;
  }
  let body = '';
  let first = true;
  for (; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === ']' && !first) break;
    first = false;
    if (c === '\\' && i + 1 < glob.length) {
      body += classChar(glob[++i]!);
    } else if (c === '-' && body !== '' && glob[i + 1] !== ']') {
      body += '-';
    } else {
      body += classChar(c);
    }
  }
  if (i >= glob.length) throw invalidPattern(glob, 'unclosed [');
  if (body === '') throw invalidPattern(glob, 'empty []');
  // A class never matches `/` (like `?` and `*`): a negated one excludes it explicitly.
  return [negate ? `[^/${body}]` : `(?!/)[${body}]`, i + 1];
}

/**
 * Regular expression source (without anchors) of a glob, per the module's rules. Throws KilnError `INVALID_FILTER`
 * for an unclosed or empty `[…]` class or an invalid range in it.
 */
function globSource(glob: string): string {
  let out = '';
  let i = 0;
  while (i < glob.length) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        let j = i;
        while (glob[j] === '*') j++;
        const atSegmentStart = i === 0 || glob[i - 1] === '/';
        if (atSegmentStart && glob[j] === '/') {
          // `**/`: zero or more whole directories.
          out += '(?:.*/)?';
          i = j + 1;
        } else {
          out += '.*';
          i = j;
        }
      } else {
        out += '[^/]*';
        i++;
      }
    } else if (c === '?') {
      out += '[^/]';
      i++;
    } else if (c === '[') {
      const [cls, next] = globClass(glob, i);
      out += cls;
      i = next;
    } else if (c === '\\') {
      if (i + 1 >= glob.length) throw invalidPattern(glob, 'trailing \\');
      out += escapeChar(glob[i + 1]!);
      i += 2;
    } else {
      out += escapeChar(c);
      i++;
    }
  }
  return out;
}

/**
 * Full-match RegExp of a glob (`*` stays within a path component, `**` crosses them; see the module comment). Throws
 * KilnError `INVALID_FILTER` for a malformed glob (unclosed `[`, trailing `\`).
 */
export function globToRegExp(glob: string): RegExp {
  const source = globSource(glob);
  try {
    return new RegExp(`^${source}$`, 'u');
  } catch (e) {
    // Only a class such as `[z-a]` gets here.
    throw invalidPattern(glob, e instanceof Error ? e.message : String(e));
  }
}

/** True when the pattern (after an optional `!`) is a `/…/` regular expression rather than a glob. */
export function isRegexPattern(pattern: string): boolean {
  const p = pattern.startsWith('!') ? pattern.slice(1) : pattern;
  return p.length >= 2 && p.startsWith('/') && p.endsWith('/');
}

const cache = new Map<string, CompiledFilter>();
const CACHE_MAX = 1024;

/**
 * Compiles one filter pattern (glob, `/regex/`, optionally after `!`). Compiled patterns are cached: the queue
 * matches the same few patterns against every push. Throws KilnError `INVALID_FILTER` for an empty pattern, a lone
 * `!`, a malformed glob or a regular expression that does not compile.
 */
export function compileFilter(pattern: string): CompiledFilter {
  const hit = cache.get(pattern);
  if (hit) return hit;
  const negate = pattern.startsWith('!');
  const body = negate ? pattern.slice(1) : pattern;
  if (body === '') throw invalidPattern(pattern, negate ? 'nothing after !' : 'empty pattern');
  let re: RegExp;
  if (isRegexPattern(pattern)) {
    const src = body.slice(1, -1);
    if (src === '') throw invalidPattern(pattern, 'empty regular expression');
    try {
      re = new RegExp(`^(?:${src})$`);
    } catch (e) {
      // V8 says `Invalid regular expression: /^(?:…)$/: why`; the wrapped source would only confuse.
      const why =
        e instanceof Error ? e.message.replace(/^Invalid regular expression: \/.*\/[a-z]*: /s, '') : String(e);
      throw invalidPattern(pattern, `not a valid regular expression: ${why}`);
    }
  } else {
    re = globToRegExp(body);
  }
  const compiled: CompiledFilter = { pattern, negate, re };
  if (cache.size >= CACHE_MAX) cache.clear();
  cache.set(pattern, compiled);
  return compiled;
}

/**
 * True when `value` (a branch, a tag or a repository path) passes the filter list: the last pattern that matches
 * decides (a `!` pattern excludes); nothing matching means excluded, except that a list starting with a `!` pattern
 * starts from included. An empty list matches nothing (`branches: []` turns automatic triggers off). Throws KilnError
 * `INVALID_FILTER` for an invalid pattern (the config parser rejects those before they get here).
 */
export function matchesFilter(patterns: readonly string[], value: string): boolean {
  if (patterns.length === 0) return false;
  const compiled = patterns.map(compileFilter);
  let included = compiled[0]!.negate;
  for (const f of compiled) {
    if (f.re.test(value)) included = !f.negate;
  }
  return included;
}

/**
 * Does a change concern an image with these path filters? True when the image has no path filters, when the changed
 * paths are unknown (`undefined`: a manual build, a force push, a new branch) or when any changed path passes the
 * filters. A known empty change list (`[]`) concerns nothing.
 */
export function pathsConcern(paths: readonly string[], changed: readonly string[] | undefined): boolean {
  if (paths.length === 0 || changed === undefined) return true;
  return changed.some((p) => matchesFilter(paths, p));
}
