/**
 * Dockerfile word expansion: a re-implementation of BuildKit's shell lexer
 * (moby/buildkit frontend/dockerfile/shell/lex.go).
 *
 * It processes quotes (`'…'`, `"…"`), the escape token (`\` or `` ` ``), and variable references
 * (`$v`, `${v}`, `${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`, `${v:?m}`, `${v?m}`, `${v#p}`, `${v##p}`,
 * `${v%p}`, `${v%%p}`, `${v/p/r}`, `${v//p/r}`), optionally splitting the result into words the way
 * BuildKit does for EXPOSE and heredoc names. Behaviour (including BuildKit's quirks) follows the
 * upstream lexer; the conformance tables in `../shared/conformance/buildkit-shell` must all pass.
 *
 * On Unix, variable names are case-sensitive (equal_env_unix.go).
 */
import { KilnError } from '../errors.js';

/** Where variable values come from. `get` returns undefined when the variable is unset. */
export interface EnvGetter {
  get(name: string): string | undefined;
  keys(): string[];
}

/** Anything usable as an environment: an EnvGetter, a Map, a plain object or `NAME=value` strings. */
export type EnvSource = EnvGetter | ReadonlyMap<string, string> | Readonly<Record<string, string>> | readonly string[];

export interface LexOptions {
  /** Escape token: `\` (default) or `` ` `` (from the `# escape=` directive). */
  escape?: string;
  /** Keep quote characters in the output (BuildKit `RawQuotes`). */
  rawQuotes?: boolean;
  /** Keep escape characters in the output (BuildKit `RawEscapes`). */
  rawEscapes?: boolean;
  /** Treat quotes as ordinary characters (BuildKit `SkipProcessQuotes`). */
  skipProcessQuotes?: boolean;
  /** Leave references to unset variables as written (BuildKit `SkipUnsetEnv`). */
  skipUnsetEnv?: boolean;
}

export interface ProcessWordResult {
  /** The expanded word. */
  result: string;
  /** The expansion split into words (quotes and escapes keep whitespace inside a word). */
  words: string[];
  /** Variables that were referenced and set. */
  matched: Set<string>;
  /** Variables that were referenced but unset (for the UndefinedVar lint). */
  unmatched: Set<string>;
}

export const EXPANSION_ERROR = 'DOCKERFILE_EXPANSION';

/** Build an EnvGetter from `NAME=value` strings (the last definition of a name wins; `NAME` alone is ''). */
export function envFromSlice(list: readonly string[]): EnvGetter {
  const m = new Map<string, string>();
  const keys: string[] = [];
  for (const e of list) {
    const i = e.indexOf('=');
    const k = i < 0 ? e : e.slice(0, i);
    keys.push(k);
    m.set(k, i < 0 ? '' : e.slice(i + 1));
  }
  return { get: (k) => m.get(k), keys: () => keys };
}

/** Normalise any EnvSource into an EnvGetter. */
export function toEnvGetter(env: EnvSource): EnvGetter {
  if (Array.isArray(env)) return envFromSlice(env as readonly string[]);
  if (env instanceof Map) {
    const m = env as ReadonlyMap<string, string>;
    return { get: (k) => m.get(k), keys: () => [...m.keys()] };
  }
  const maybe = env as Partial<EnvGetter>;
  if (typeof maybe.get === 'function' && typeof maybe.keys === 'function') return env as EnvGetter;
  const rec = env as Readonly<Record<string, string>>;
  return {
    get: (k) => (Object.prototype.hasOwnProperty.call(rec, k) ? rec[k] : undefined),
    keys: () => Object.keys(rec),
  };
}

const EOF = -1;

/** Internal signal for a lexer error; converted to a KilnError at the top level. */
class LexError extends Error {}

/** Go's unicode.IsSpace. */
function isSpace(ch: number): boolean {
  if (ch === EOF) return false;
  if (ch <= 0xff) return ch === 0x20 || (ch >= 0x09 && ch <= 0x0d) || ch === 0x85 || ch === 0xa0;
  return /\p{White_Space}/u.test(String.fromCodePoint(ch));
}
function isDigit(ch: number): boolean {
  if (ch === EOF) return false;
  if (ch < 0x80) return ch >= 0x30 && ch <= 0x39;
  return /\p{Nd}/u.test(String.fromCodePoint(ch));
}
function isLetter(ch: number): boolean {
  if (ch === EOF) return false;
  if (ch < 0x80) return (ch >= 0x41 && ch <= 0x5a) || (ch >= 0x61 && ch <= 0x7a);
  return /\p{L}/u.test(String.fromCodePoint(ch));
}
/** POSIX special parameters ($@, $*, $#, $?, $-, $$, $!, $0): never set in a Dockerfile. */
function isSpecialParam(ch: number): boolean {
  return ch >= 0 && '@*#?-$!0'.includes(String.fromCodePoint(ch));
}
function isHeredocSpace(ch: number): boolean {
  return ch === 0x09 || ch === 0x0d || ch === 0x20;
}
const chr = (ch: number): string => (ch === EOF ? '\ufffd' : String.fromCodePoint(ch));

/** Code-point scanner (Go text/scanner's Next/Peek, including ignoring a leading BOM). */
class Scanner {
  private readonly cps: number[];
  private pos = 0;
  constructor(src: string) {
    this.cps = Array.from(src, (c) => c.codePointAt(0) ?? 0);
    if (this.cps[0] === 0xfeff) this.pos = 1;
  }
  peek(): number {
    return this.pos < this.cps.length ? this.cps[this.pos] : EOF;
  }
  next(): number {
    return this.pos < this.cps.length ? this.cps[this.pos++] : EOF;
  }
}

/** A mutable string buffer shared between nested word collectors (as BuildKit's shellWord.wordsBuffer). */
interface Buf {
  s: string;
}

/** Word splitter (BuildKit's wordsStruct). */
class Words {
  words: string[] = [];
  inWord = false;
  constructor(private readonly buf: Buf) {}
  addChar(ch: number): void {
    if (isSpace(ch) && this.inWord) {
      if (this.buf.s.length !== 0) {
        this.words.push(this.buf.s);
        this.buf.s = '';
        this.inWord = false;
      }
    } else if (!isSpace(ch)) {
      this.addRawChar(ch);
    }
  }
  addRawChar(ch: number): void {
    this.buf.s += String.fromCodePoint(ch);
    this.inWord = true;
  }
  addString(s: string): void {
    for (const c of s) this.addChar(c.codePointAt(0) ?? 0);
  }
  addRawString(s: string): void {
    this.buf.s += s;
    this.inWord = true;
  }
  getWords(): string[] {
    if (this.buf.s.length > 0) {
      this.words.push(this.buf.s);
      this.buf.s = '';
      this.inWord = false;
    }
    return this.words;
  }
}

class ShellWord {
  private readonly sc: Scanner;
  private readonly escape: number;
  private rawEscapes: boolean;
  /**
   * BuildKit shares one words buffer between the outer word and nested `${…}` words, so a nested
   * modifier word resets the partial word collected so far (visible only in word-splitting mode).
   * Kept for exact compatibility.
   */
  private readonly wordsBuffer: Buf = { s: '' };
  readonly matched = new Set<string>();
  readonly unmatched = new Set<string>();

  constructor(
    src: string,
    private readonly env: EnvGetter,
    private readonly opts: LexOptions,
  ) {
    this.sc = new Scanner(src);
    const esc = opts.escape ?? '\\';
    this.escape = esc.codePointAt(0) ?? 0x5c;
    this.rawEscapes = opts.rawEscapes ?? false;
  }

  process(): { result: string; words: string[] } {
    return this.processStopOn(EOF, this.rawEscapes);
  }

  private processStopOn(stopChar: number, rawEscapes: boolean): { result: string; words: string[] } {
    let result = '';
    this.wordsBuffer.s = '';
    const words = new Words(this.wordsBuffer);
    const saved = this.rawEscapes;
    this.rawEscapes = rawEscapes;
    try {
      while (this.sc.peek() !== EOF) {
        let ch = this.sc.peek();
        if (stopChar !== EOF && ch === stopChar) {
          this.sc.next();
          return { result, words: words.getWords() };
        }
        const special =
          ch === 0x24 /* $ */ ||
          ch === 0x3c /* < */ ||
          (!this.opts.skipProcessQuotes && (ch === 0x27 /* ' */ || ch === 0x22)); /* " */
        if (special) {
          let tmp: string;
          if (ch === 0x24) tmp = this.processDollar();
          else if (ch === 0x3c) tmp = this.processPossibleHeredoc();
          else if (ch === 0x27) tmp = this.processSingleQuote();
          else tmp = this.processDoubleQuote();
          result += tmp;
          if (ch === 0x24) words.addString(tmp);
          else words.addRawString(tmp);
          continue;
        }
        ch = this.sc.next();
        if (ch === this.escape) {
          if (this.rawEscapes) {
            words.addRawChar(ch);
            result += chr(ch);
          }
          // The escape token escapes the next character; a trailing escape is dropped.
          ch = this.sc.next();
          if (ch === EOF) break;
          words.addRawChar(ch);
        } else {
          words.addChar(ch);
        }
        result += chr(ch);
      }
      if (stopChar !== EOF) {
        throw new LexError(`unexpected end of statement while looking for matching ${chr(stopChar)}`);
      }
      return { result, words: words.getWords() };
    } finally {
      this.rawEscapes = saved;
    }
  }

  private processSingleQuote(): string {
    // Everything up to the next ' is literal; a single quote cannot be escaped inside.
    let result = '';
    let ch = this.sc.next();
    if (this.opts.rawQuotes) result += chr(ch);
    for (;;) {
      ch = this.sc.next();
      if (ch === EOF) throw new LexError('unexpected end of statement while looking for matching single-quote');
      if (ch === 0x27) {
        if (this.opts.rawQuotes) result += chr(ch);
        return result;
      }
      result += chr(ch);
    }
  }

  private processDoubleQuote(): string {
    // Literal except `$` expansions; the escape token escapes only `"`, `$` and itself.
    let result = '';
    let ch = this.sc.next();
    if (this.opts.rawQuotes) result += chr(ch);
    for (;;) {
      const p = this.sc.peek();
      if (p === EOF) throw new LexError('unexpected end of statement while looking for matching double-quote');
      if (p === 0x22) {
        ch = this.sc.next();
        if (this.opts.rawQuotes) result += chr(ch);
        return result;
      }
      if (p === 0x24) {
        result += this.processDollar();
        continue;
      }
      ch = this.sc.next();
      if (ch === this.escape) {
        if (this.rawEscapes) result += chr(ch);
        const n = this.sc.peek();
        if (n === EOF) continue;
        if (n === 0x22 || n === 0x24 || n === this.escape) ch = this.sc.next();
      }
      result += chr(ch);
    }
  }

  private getEnv(name: string): string | undefined {
    const v = this.env.get(name);
    if (v !== undefined) this.matched.add(name);
    else this.unmatched.add(name);
    return v;
  }

  private processName(): string {
    // A name is letters, digits and _; a leading digit reads all digits; a special parameter is one char.
    let name = '';
    while (this.sc.peek() !== EOF) {
      const ch = this.sc.peek();
      if (name.length === 0 && isDigit(ch)) {
        while (this.sc.peek() !== EOF && isDigit(this.sc.peek())) name += chr(this.sc.next());
        return name;
      }
      if (name.length === 0 && isSpecialParam(ch)) return chr(this.sc.next());
      if (!isLetter(ch) && !isDigit(ch) && ch !== 0x5f) break;
      name += chr(this.sc.next());
    }
    return name;
  }

  private processDollar(): string {
    this.sc.next();
    if (this.sc.peek() !== 0x7b /* { */) {
      const name = this.processName();
      if (name === '') return '$';
      const v = this.getEnv(name);
      if (v === undefined && this.opts.skipUnsetEnv) return '$' + name;
      return v ?? '';
    }
    this.sc.next();
    const first = this.sc.peek();
    if (first === EOF) throw new LexError("syntax error: missing '}'");
    if (first === 0x7b || first === 0x7d || first === 0x3a) throw new LexError('syntax error: bad substitution');
    const name = this.processName();
    let ch = this.sc.next();
    if (ch === EOF) throw new LexError("syntax error: missing '}'");
    let chs = chr(ch);
    if (ch === 0x7d /* } */) {
      const v = this.getEnv(name);
      if (v === undefined && this.opts.skipUnsetEnv) return `\${${name}}`;
      return v ?? '';
    }
    if (ch === 0x2f /* / */) return this.processReplace(name);
    let nullIsUnset = false;
    if (ch === 0x3a /* : */) {
      nullIsUnset = true;
      ch = this.sc.next();
      chs += chr(ch);
    } else if (!'+-?#%'.includes(chr(ch))) {
      throw new LexError(`unsupported modifier (${chs}) in substitution`);
    }
    const rawEscapes = ch === 0x23 || ch === 0x25;
    if (nullIsUnset && rawEscapes) throw new LexError(`unsupported modifier (${chs}) in substitution`);
    const word = this.stopOnOrMissing(0x7d, rawEscapes, "syntax error: missing '}'");
    const value = this.getEnv(name);
    const set = value !== undefined;
    if (this.opts.skipUnsetEnv && !set) return `\${${name}${chs}${word}}`;
    const val = value ?? '';
    switch (ch) {
      case 0x2d /* - */:
        return !set || (nullIsUnset && val === '') ? word : val;
      case 0x2b /* + */:
        return !set || (nullIsUnset && val === '') ? '' : word;
      case 0x3f /* ? */:
        if (!set) throw new LexError(`${name}: ${word !== '' ? word : 'is not allowed to be unset'}`);
        if (nullIsUnset && val === '')
          throw new LexError(`${name}: ${word !== '' ? word : 'is not allowed to be empty'}`);
        return val;
      case 0x25 /* % */:
      case 0x23 /* # */: {
        // %/# remove the shortest match, %%/## the longest.
        let pat = word;
        let greedy = false;
        if (pat.length > 0 && pat.codePointAt(0) === ch) {
          greedy = true;
          pat = pat.slice(1);
        }
        return ch === 0x25 ? trimSuffix(pat, val, greedy) : trimPrefix(pat, val, greedy);
      }
      default:
        throw new LexError(`unsupported modifier (${chs}) in substitution`);
    }
  }

  private processReplace(name: string): string {
    const replaceAll = this.sc.peek() === 0x2f;
    if (replaceAll) this.sc.next();
    const pattern = this.stopOnOrMissing(0x2f, true, "syntax error: missing '/' in ${}");
    const replacement = this.stopOnOrMissing(0x7d, true, "syntax error: missing '}'");
    const value = this.getEnv(name);
    if (this.opts.skipUnsetEnv && value === undefined) return `\${${name}/${pattern}/${replacement}}`;
    const re = patternToRegex(pattern, true, false);
    const val = value ?? '';
    if (replaceAll) return goReplaceAll(re, val, replacement);
    re.lastIndex = 0;
    const m = re.exec(val);
    if (!m) return val;
    return val.slice(0, m.index) + replacement + val.slice(m.index + m[0].length);
  }

  private stopOnOrMissing(stop: number, rawEscapes: boolean, missing: string): string {
    try {
      return this.processStopOn(stop, rawEscapes).result;
    } catch (e) {
      if (e instanceof LexError && this.sc.peek() === EOF) throw new LexError(missing);
      throw e;
    }
  }

  private processPossibleHeredoc(): string {
    this.sc.next();
    if (this.sc.peek() !== 0x3c) return '<';
    this.sc.next();
    let space = '';
    while (isHeredocSpace(this.sc.peek())) space += chr(this.sc.next());
    return '<<' + space;
  }
}

/**
 * Convert a shell wildcard pattern (`?` one character, `*` any string, `\` escaping `*`, `?` or `\`;
 * no bracket expressions) into a RegExp, as BuildKit's convertShellPatternToRegex.
 */
export function patternToRegex(pattern: string, greedy: boolean, anchored: boolean): RegExp {
  const cps = Array.from(pattern);
  let out = anchored ? '^' : '';
  const star = greedy ? '.*' : '.*?';
  for (let i = 0; i < cps.length; i++) {
    const tok = cps[i];
    if (tok === '*') {
      out += star;
      continue;
    }
    if (tok === '?') {
      out += '.';
      continue;
    }
    if (tok === '\\') {
      const n = cps[i + 1];
      // `}` and `/` are escaped inside ${}; the escape is not part of the pattern.
      if (n === '}' || n === '/') continue;
      i++;
      if (n !== '*' && n !== '?' && n !== '\\') {
        throw new LexError(`invalid pattern (${pattern}) in substitution: invalid escape '\\${n ?? ''}'`);
      }
      out += '\\' + n;
      continue;
    }
    if ('[]{}.+()|^$'.includes(tok)) out += '\\';
    out += tok;
  }
  return new RegExp(out, 'gu');
}

function cpWidthAt(s: string, i: number): number {
  const c = s.codePointAt(i);
  if (c === undefined) return 0;
  return c > 0xffff ? 2 : 1;
}

/** Go's regexp.Expand for ReplaceAllString templates (our regexps have no capture groups). */
function goExpand(template: string, match: string): string {
  let out = '';
  let i = 0;
  while (i < template.length) {
    const d = template.indexOf('$', i);
    if (d < 0) {
      out += template.slice(i);
      break;
    }
    out += template.slice(i, d);
    const rest = template.slice(d + 1);
    if (rest.startsWith('$')) {
      out += '$';
      i = d + 2;
      continue;
    }
    let name: string | undefined;
    let len = 0;
    if (rest.startsWith('{')) {
      const m = /^\{([\p{L}\p{Nd}_]+)\}/u.exec(rest);
      if (m) {
        name = m[1];
        len = m[0].length;
      }
    } else {
      const m = /^[\p{L}\p{Nd}_]+/u.exec(rest);
      if (m) {
        name = m[0];
        len = m[0].length;
      }
    }
    if (name === undefined) {
      out += '$';
      i = d + 1;
      continue;
    }
    if (/^[0-9]+$/.test(name) && Number(name) === 0) out += match;
    i = d + 1 + len;
  }
  return out;
}

/** Go's Regexp.ReplaceAllString semantics (empty matches right after a match are not replaced). */
function goReplaceAll(re: RegExp, src: string, repl: string): string {
  let out = '';
  let lastMatchEnd = 0;
  let searchPos = 0;
  while (searchPos <= src.length) {
    re.lastIndex = searchPos;
    const m = re.exec(src);
    if (!m) break;
    const start = m.index;
    const end = start + m[0].length;
    out += src.slice(lastMatchEnd, start);
    if (end > lastMatchEnd || start === 0) out += goExpand(repl, m[0]);
    lastMatchEnd = end;
    const width = cpWidthAt(src, searchPos);
    if (searchPos + width > end) searchPos += width;
    else if (searchPos + 1 > end) searchPos++;
    else searchPos = end;
  }
  return out + src.slice(lastMatchEnd);
}

function trimPrefix(pattern: string, value: string, greedy: boolean): string {
  const re = patternToRegex(pattern, greedy, true);
  re.lastIndex = 0;
  const m = re.exec(value);
  return m ? value.slice(m.index + m[0].length) : value;
}

/** Reverse a pattern keeping escapes in front of the character they escape (a\*c -> c\*a). */
export function reversePattern(pattern: string): string {
  const cps = Array.from(pattern);
  const out: string[] = new Array<string>(cps.length);
  const last = cps.length - 1;
  for (let i = 0; i <= last;) {
    const tok = cps[i];
    const o = last - i;
    if (tok === '\\' && i !== last) {
      out[o - 1] = tok;
      out[o] = cps[i + 1];
      i += 2;
    } else {
      out[o] = tok;
      i++;
    }
  }
  return out.join('');
}

const reverseString = (s: string): string => Array.from(s).reverse().join('');

function trimSuffix(pattern: string, value: string, greedy: boolean): string {
  // Regexps find leftmost matches, so reverse both pattern and value to find the rightmost one.
  return reverseString(trimPrefix(reversePattern(pattern), reverseString(value), greedy));
}

/** Expand `word`, returning the result, its word split and the variables referenced. */
export function processWordWithMatches(word: string, env: EnvSource, opts: LexOptions = {}): ProcessWordResult {
  const sw = new ShellWord(word, toEnvGetter(env), opts);
  try {
    const { result, words } = sw.process();
    return { result, words, matched: sw.matched, unmatched: sw.unmatched };
  } catch (e) {
    if (e instanceof LexError) {
      throw new KilnError(EXPANSION_ERROR, `failed to process ${JSON.stringify(word)}: ${e.message}`, {
        hint: "check quotes and ${...} syntax; write a literal '$' as '\\$'",
      });
    }
    throw e;
  }
}

/** Expand variables and process quotes/escapes in `word` (BuildKit ProcessWord). */
export function processWord(word: string, env: EnvSource, opts: LexOptions = {}): string {
  return processWordWithMatches(word, env, opts).result;
}

/** Expand `word` and split it into words on unquoted whitespace (BuildKit ProcessWords). */
export function processWords(word: string, env: EnvSource, opts: LexOptions = {}): string[] {
  return processWordWithMatches(word, env, opts).words;
}
