/**
 * Parser directives (`# syntax=`, `# escape=`, `# check=`), after BuildKit's parser/directives.go, plus the Go
 * text predicates the parser needs to match BuildKit byte for byte (Go's unicode.IsSpace differs from JS `\s`).
 */
import type { Directive } from './instructions.js';

/** Go's unicode.IsSpace for one code point (string of one character). */
export function isGoSpace(ch: string): boolean {
  switch (ch) {
    case '\t':
    case '\n':
    case '\v':
    case '\f':
    case '\r':
    case ' ':
    case '\u0085':
    case '\u00a0':
    case '\u1680':
    case '\u2028':
    case '\u2029':
    case '\u202f':
    case '\u205f':
    case '\u3000':
      return true;
    default: {
      const c = ch.charCodeAt(0);
      return c >= 0x2000 && c <= 0x200a && ch.length === 1;
    }
  }
}

/** Go's unicode.IsSpace for a UTF-16 code unit (all Go spaces are in the BMP). */
export function isGoSpaceCode(c: number): boolean {
  if (c <= 0x20) return c === 0x20 || (c >= 0x09 && c <= 0x0d);
  if (c < 0x85) return false;
  return (
    c === 0x85 ||
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000
  );
}

/** strings.TrimLeftFunc(s, unicode.IsSpace). */
export function trimLeftSpace(s: string): string {
  let i = 0;
  while (i < s.length && isGoSpaceCode(s.charCodeAt(i))) i++;
  return i === 0 ? s : s.slice(i);
}

/** strings.TrimSpace. */
export function trimSpace(s: string): string {
  let j = s.length;
  while (j > 0 && isGoSpaceCode(s.charCodeAt(j - 1))) j--;
  return trimLeftSpace(j === s.length ? s : s.slice(0, j));
}

export const DIRECTIVE_NAMES = ['syntax', 'escape', 'check'] as const;

// Go: ^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$ with Go's ASCII \s and `.` = anything but \n.
const DIRECTIVE_RE = /^([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*([^\n]+?)[\t\n\f\r ]*$/;

/** Raised for a repeated directive or an invalid escape token. */
export class DirectiveError extends Error {}

/**
 * BuildKit's DirectiveParser: feed it lines from the top; it recognises directives until the first line that is
 * not one (then it is done for good). A repeated directive is an error.
 */
export class DirectiveParser {
  private line = 0;
  private done = false;
  private readonly seen = new Set<string>();
  readonly directives: Directive[] = [];

  constructor(private readonly comment = '#') {}

  /** Returns the directive on this line, if any. `line` has no line terminator. */
  parseLine(line: string): Directive | undefined {
    this.line++;
    if (this.done) return undefined;
    if (!line.startsWith(this.comment)) {
      this.done = true;
      return undefined;
    }
    const m = DIRECTIVE_RE.exec(trimLeftSpace(line.slice(this.comment.length)));
    if (!m) {
      this.done = true;
      return undefined;
    }
    const k = m[1]!.toLowerCase();
    if (!(DIRECTIVE_NAMES as readonly string[]).includes(k)) {
      this.done = true;
      return undefined;
    }
    if (this.seen.has(k)) throw new DirectiveError(`only one ${k} parser directive can be used`);
    this.seen.add(k);
    const d: Directive = { name: k as Directive['name'], value: m[2]!, line: this.line };
    this.directives.push(d);
    return d;
  }

  get isDone(): boolean {
    return this.done;
  }
}

/** Validates an escape directive value: only `\` and backtick are allowed. */
export function checkEscapeToken(v: string): string {
  if (v !== '`' && v !== '\\') throw new DirectiveError(`invalid escape token '${v}' does not match \` or \\`);
  return v;
}

/** Lint options from a `# check=` directive value (BuildKit linter.ParseLintOptions). */
export interface CheckOptions {
  skipAll: boolean;
  skip: string[];
  experimentalAll: boolean;
  experimental: string[];
  error: boolean;
}

/** Parses `skip=A,B;error=true;experimental=all`. Throws DirectiveError on an invalid option. */
export function parseCheckOptions(value: string): CheckOptions {
  const out: CheckOptions = { skipAll: false, skip: [], experimentalAll: false, experimental: [], error: false };
  const s = trimSpace(value);
  if (s === '') return out;
  // strings.SplitN(s, ";", 3)
  const parts: string[] = [];
  let rest = s;
  while (parts.length < 2) {
    const i = rest.indexOf(';');
    if (i < 0) break;
    parts.push(rest.slice(0, i));
    rest = rest.slice(i + 1);
  }
  parts.push(rest);
  for (const p of parts) {
    const eq = p.indexOf('=');
    if (eq < 0) throw new DirectiveError(`invalid check option "${p}"`);
    const k = trimSpace(p.slice(0, eq));
    const v = trimSpace(p.slice(eq + 1));
    switch (k) {
      case 'skip':
        if (v === 'all') out.skipAll = true;
        else out.skip = v.split(',').map((r) => trimSpace(r));
        break;
      case 'experimental':
        if (v === 'all') out.experimentalAll = true;
        else out.experimental = v.split(',').map((r) => trimSpace(r));
        break;
      case 'error': {
        const b = parseGoBool(v);
        if (b === undefined) throw new DirectiveError(`failed to parse check option "${p}": invalid syntax`);
        out.error = b;
        break;
      }
      default:
        throw new DirectiveError(`invalid check option "${k}"`);
    }
  }
  return out;
}

/** Go's strconv.ParseBool. */
export function parseGoBool(v: string): boolean | undefined {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(v)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(v)) return false;
  return undefined;
}

/** A directive found by {@link findDirective}: `value` is its first word, `full` the whole value. */
export interface FoundDirective {
  value: string;
  full: string;
  line: number;
}

/**
 * Finds directive `key` the way BuildKit's ParseDirective/DetectSyntax do (independently of the main parse): a BOM
 * and a leading `#!` shebang line are skipped; `#` directives are searched, and with `anyFormat` also `//`
 * directives and a JSON object `{"key": "..."}`.
 */
export function findDirective(text: string, key: string, anyFormat = false): FoundDirective | undefined {
  let dt = text.startsWith('\ufeff') ? text.slice(1) : text;
  let offset = 0;
  const nl = dt.indexOf('\n');
  const first = nl < 0 ? dt : dt.slice(0, nl);
  if (first.startsWith('#!')) {
    dt = nl < 0 ? '' : dt.slice(nl + 1);
    offset = 1;
  }
  for (const prefix of anyFormat ? ['#', '//'] : ['#']) {
    const p = new DirectiveParser(prefix);
    try {
      for (const l of dt.split('\n')) {
        if (p.isDone) break;
        p.parseLine(l.replace(/\r$/, ''));
      }
    } catch {
      // a duplicate directive stops the scan; what was found so far counts
    }
    const d = p.directives.find((x) => x.name === key);
    if (d) return { value: d.value.split(' ')[0]!, full: d.value, line: d.line + offset };
  }
  if (!anyFormat) return undefined;
  try {
    const j: unknown = JSON.parse(dt);
    if (j !== null && typeof j === 'object' && !Array.isArray(j)) {
      const v = (j as Record<string, unknown>)[key];
      if (typeof v === 'string') return { value: v, full: v, line: offset };
    }
  } catch {
    // not JSON
  }
  return undefined;
}

/** The `syntax` directive (BuildKit DetectSyntax): `#`, `//` or JSON forms, after an optional shebang. */
export function detectSyntax(text: string): FoundDirective | undefined {
  return findDirective(text, 'syntax', true);
}
