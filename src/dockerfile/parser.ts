/**
 * The Dockerfile parser: text -> BuildKit-shaped AST (frontend/dockerfile/parser: parser.go, line_parsers.go,
 * split_command.go), reimplemented to give identical trees. Handles parser directives, line continuations with the
 * escape token, comments and empty lines inside continuations, JSON vs shell forms (invalid JSON falls back to the
 * shell form), builder flags, heredocs and ONBUILD. It runs in linear time and throws only DockerfileError.
 */
import { DockerfileError, type DockerfileErrorCode } from './errors.js';
import {
  DirectiveError,
  DirectiveParser,
  checkEscapeToken,
  isGoSpace,
  isGoSpaceCode,
  trimLeftSpace,
  trimSpace,
} from './directives.js';
import { HeredocError, heredocsFromLine } from './heredoc.js';
import type { Directive, Heredoc, ParseWarning } from './instructions.js';
import { goQuote } from './dump.js';

/**
 * A node of BuildKit's parse tree. The root's `children` are the instructions; an instruction's `value` is its
 * keyword as written and `next` the chain of its arguments; ONBUILD's argument node has the trigger as its child.
 */
export interface Node {
  value: string;
  next: Node | undefined;
  children: Node[];
  heredocs: Heredoc[];
  /** `json: true` when the arguments were a JSON array. */
  attributes: { json?: boolean };
  /** The logical line (continuations joined, comments removed), as BuildKit's Original. */
  original: string;
  flags: string[];
  /** 1-based lines (0 for nested nodes). */
  startLine: number;
  endLine: number;
  /** 1-based column of the keyword on the start line, and the column just past the end on the end line. */
  startColumn: number;
  endColumn: number;
  /** Comment lines immediately above the instruction. */
  prevComment: string[];
}

export interface ParseOptions {
  /** File name used in error messages (default `Dockerfile`). */
  filename?: string;
}

export interface AstResult {
  ast: Node;
  escapeToken: string;
  directives: Directive[];
  warnings: ParseWarning[];
}

/** Longest line BuildKit's bufio.Scanner accepts, in bytes including the newline. */
const MAX_LINE_BYTES = 64 * 1024;

function newNode(value = ''): Node {
  return {
    value,
    next: undefined,
    children: [],
    heredocs: [],
    attributes: {},
    original: '',
    flags: [],
    startLine: 0,
    endLine: 0,
    startColumn: 0,
    endColumn: 0,
    prevComment: [],
  };
}

/** Error raised inside line parsers; the parse loop attaches the location. */
class LineError extends Error {
  constructor(
    message: string,
    readonly code: DockerfileErrorCode = 'DOCKERFILE_PARSE',
  ) {
    super(message);
  }
}

interface Directives {
  escapeToken: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Go-compatible helpers

/** reWhitespace = [\t\v\f\r ]+ */
function isReWs(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0b || c === 0x0c || c === 0x0d;
}

/** reWhitespace.Split(s, n) (n = -1 for all). */
function splitReWs(s: string, n: number): string[] {
  if (s.length === 0) return [''];
  const out: string[] = [];
  let beg = 0;
  let i = 0;
  while (i < s.length) {
    if (!isReWs(s.charCodeAt(i))) {
      i++;
      continue;
    }
    let j = i;
    while (j < s.length && isReWs(s.charCodeAt(j))) j++;
    if (n > 0 && out.length === n - 1) break;
    out.push(s.slice(beg, i));
    beg = j;
    i = j;
  }
  out.push(s.slice(beg));
  return out;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

/** The UTF-8 bytes of `s` as a "binary" string (one char per byte), for BuildKit's byte-wise scanners. */
function toBytes(s: string): string {
  return isAscii(s) ? s : Buffer.from(s, 'utf8').toString('latin1');
}

function fromBytes(b: string): string {
  return isAscii(b) ? b : Buffer.from(b, 'latin1').toString('utf8');
}

/** Replace lone surrogates (Go strings cannot hold them; json decoding yields U+FFFD). */
function wellFormed(s: string): string {
  return s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

// ---------------------------------------------------------------------------------------------------------------
// split_command.go

function splitCommand(line: string, d: Directives): { cmd: string; flags: string[]; args: string } {
  const cmdline = splitReWs(trimSpace(line), 2);
  let args = '';
  let flags: string[] = [];
  if (cmdline.length === 2) {
    const r = extractBuilderFlags(cmdline[1]!, d);
    args = r.rest;
    flags = r.flags;
  }
  return { cmd: cmdline[0]!, flags, args: trimSpace(args) };
}

/**
 * BuildKit's extractBuilderFlags works on bytes and writes each byte as a rune; we do the same on the UTF-8 bytes
 * (so non-ASCII flag values come out exactly as BuildKit's do).
 */
function extractBuilderFlags(lineIn: string, d: Directives): { rest: string; flags: string[] } {
  // Fast path: only the flag words are scanned, so a non-ASCII character there is what needs the byte view.
  const ascii = scanBuilderFlags(lineIn, d);
  if (ascii) return ascii;
  return scanBuilderFlags(toBytes(lineIn), d, true)!;
}

/**
 * The flag scanner over `line`. Without `bytes`, gives up (undefined) at the first non-ASCII character it would
 * consume; with `bytes`, `line` holds one char per UTF-8 byte and the rest is converted back.
 */
function scanBuilderFlags(line: string, d: Directives, bytes = false): { rest: string; flags: string[] } | undefined {
  const rest = (pos: number): string => (bytes ? fromBytes(line.slice(pos)) : line.slice(pos));
  const esc = d.escapeToken;
  const IN_SPACES = 0;
  const IN_WORD = 1;
  const IN_QUOTE = 2;
  const words: string[] = [];
  let phase = IN_SPACES;
  let word = '';
  let quote = '';
  let blankOK = false;
  const n = line.length;
  for (let pos = 0; pos <= n; pos++) {
    let ch = pos !== n ? line[pos]! : '';
    const nonAscii = !bytes && ch.charCodeAt(0) > 0x7f;
    if (phase === IN_SPACES) {
      if (pos === n) break;
      // A UTF-8 lead byte is neither a space nor '-': the flags end here in both views.
      if (nonAscii) return { rest: rest(pos), flags: words };
      if (isGoSpaceCode(ch.charCodeAt(0))) continue;
      if (ch !== '-' || pos + 1 === n || line[pos + 1] !== '-') return { rest: rest(pos), flags: words };
      phase = IN_WORD;
    }
    if (nonAscii || (!bytes && pos + 1 < n && line.charCodeAt(pos + 1) > 0x7f && ch === esc)) return undefined;
    if ((phase === IN_WORD || phase === IN_QUOTE) && pos === n) {
      if (word !== '--' && (blankOK || word.length > 0)) words.push(word);
      break;
    }
    if (phase === IN_WORD) {
      if (isGoSpaceCode(ch.charCodeAt(0))) {
        phase = IN_SPACES;
        if (word === '--') return { rest: rest(pos), flags: words };
        if (blankOK || word.length > 0) words.push(word);
        word = '';
        blankOK = false;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOK = true;
        phase = IN_QUOTE;
        continue;
      }
      if (ch === esc) {
        if (pos + 1 === n) continue;
        pos++;
        ch = line[pos]!;
      }
      word += ch;
      continue;
    }
    // IN_QUOTE
    if (ch === quote) {
      phase = IN_WORD;
      continue;
    }
    if (ch === esc) {
      if (pos + 1 === n) {
        phase = IN_WORD;
        continue;
      }
      pos++;
      ch = line[pos]!;
    }
    word += ch;
  }
  // Each byte was written as a rune (Latin-1 code point): that is already what `word` holds.
  return { rest: '', flags: words };
}

// ---------------------------------------------------------------------------------------------------------------
// line_parsers.go

type LineParser = (rest: string, d: Directives) => { node: Node | undefined; json: boolean };

const NOT_STRING_ARRAY = 'when using JSON array syntax, arrays must be comprised of strings only';

/** parseWords: space-delimited words keeping quotes (stripped later by the shell lexer). */
export function parseWords(rest: string, escapeToken: string): string[] {
  const words: string[] = [];
  const IN_SPACES = 0;
  const IN_WORD = 1;
  const IN_QUOTE = 2;
  let phase = IN_SPACES;
  let quote = '';
  let blankOK = false;
  let sb = '';
  const n = rest.length;
  let pos = 0;
  while (pos <= n) {
    let ch = '';
    let w = 0;
    if (pos !== n) {
      const cp = rest.codePointAt(pos)!;
      w = cp > 0xffff ? 2 : 1;
      ch = rest.slice(pos, pos + w);
    }
    if (phase === IN_SPACES) {
      if (pos === n) break;
      if (isGoSpace(ch)) {
        pos += w;
        continue;
      }
      phase = IN_WORD;
    }
    if ((phase === IN_WORD || phase === IN_QUOTE) && pos === n) {
      if (blankOK || sb.length > 0) words.push(sb);
      break;
    }
    const wordBranch = phase === IN_WORD;
    if (wordBranch) {
      if (isGoSpace(ch)) {
        phase = IN_SPACES;
        if (blankOK || sb.length > 0) words.push(sb);
        sb = '';
        blankOK = false;
        pos += w;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOK = true;
        phase = IN_QUOTE;
      }
    } else if (ch === quote) phase = IN_WORD;
    // The escape token escapes the next character, except inside single quotes.
    if (ch === escapeToken && (wordBranch || quote !== "'")) {
      if (pos + w === n) {
        if (!wordBranch) phase = IN_WORD;
        pos += w;
        continue;
      }
      sb += ch;
      pos += w;
      const cp = rest.codePointAt(pos)!;
      w = cp > 0xffff ? 2 : 1;
      ch = rest.slice(pos, pos + w);
    }
    sb += ch;
    pos += w;
  }
  return words;
}

function chain(values: string[]): Node | undefined {
  let root: Node | undefined;
  let prev: Node | undefined;
  for (const v of values) {
    const node = newNode(v);
    if (prev) prev.next = node;
    else root = node;
    prev = node;
  }
  return root;
}

function keyValueNode(key: string, value: string, sep: string): Node {
  const n = newNode(key);
  n.next = newNode(value);
  n.next.next = newNode(sep);
  return n;
}

function parseNameVal(rest: string, key: string, d: Directives): Node | undefined {
  const words = parseWords(rest, d.escapeToken);
  if (words.length === 0) return undefined;
  if (!words[0]!.includes('=')) {
    const parts = splitReWs(rest, 2);
    if (parts.length < 2) throw new LineError(`${key} must have two arguments`, 'DOCKERFILE_INSTRUCTION');
    return keyValueNode(parts[0]!, parts[1]!, '');
  }
  let root: Node | undefined;
  let last: Node | undefined;
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq < 0) {
      throw new LineError(
        `Syntax error - can't find = in ${goQuote(word)}. Must be of the form: name=value`,
        'DOCKERFILE_INSTRUCTION',
      );
    }
    const node = keyValueNode(word.slice(0, eq), word.slice(eq + 1), '=');
    if (last) last.next = node;
    else root = node;
    last = node.next!.next!;
  }
  return root;
}

const parseIgnore: LineParser = () => ({ node: newNode(), json: false });

const parseEnv: LineParser = (rest, d) => ({ node: parseNameVal(rest, 'ENV', d), json: false });
const parseLabel: LineParser = (rest, d) => ({ node: parseNameVal(rest, 'LABEL', d), json: false });

const parseNameOrNameVal: LineParser = (rest, d) => {
  const words = parseWords(rest, d.escapeToken);
  return { node: words.length === 0 ? undefined : chain(words), json: false };
};

const parseStringsWhitespaceDelimited: LineParser = (rest) => {
  if (rest === '') return { node: undefined, json: false };
  return { node: chain(splitReWs(rest, -1)), json: false };
};

const parseString: LineParser = (rest) => ({ node: rest === '' ? undefined : newNode(rest), json: false });

class NotJsonArray extends Error {}

function parseJSON(restIn: string): Node | undefined {
  const rest = trimLeftSpace(restIn);
  if (!rest.startsWith('[')) throw new NotJsonArray('not a JSON array');
  let parsed: unknown;
  try {
    parsed = JSON.parse(rest);
  } catch {
    throw new NotJsonArray('invalid JSON');
  }
  if (!Array.isArray(parsed)) throw new NotJsonArray('not a JSON array');
  // Go's decoder fails the whole document on a number that overflows float64 (so BuildKit falls back to the
  // shell form) before the strings-only check could reject it.
  if ((parsed as unknown[]).some((v) => typeof v === 'number' && !Number.isFinite(v))) {
    throw new NotJsonArray('number out of range');
  }
  const values: string[] = [];
  for (const v of parsed as unknown[]) {
    if (typeof v !== 'string') throw new LineError(NOT_STRING_ARRAY, 'DOCKERFILE_INSTRUCTION');
    values.push(wellFormed(v));
  }
  return chain(values);
}

const parseMaybeJSON: LineParser = (rest) => {
  if (rest === '') return { node: undefined, json: false };
  try {
    return { node: parseJSON(rest), json: true };
  } catch (e) {
    if (!(e instanceof NotJsonArray)) throw e;
  }
  return { node: newNode(rest), json: false };
};

const parseMaybeJSONToList: LineParser = (rest, d) => {
  try {
    return { node: parseJSON(rest), json: true };
  } catch (e) {
    if (!(e instanceof NotJsonArray)) throw e;
  }
  return parseStringsWhitespaceDelimited(rest, d);
};

/** HEALTHCHECK: type word, then parseMaybeJSON. BuildKit scans bytes with unicode.IsSpace(rune(byte)). */
const parseHealthConfig: LineParser = (restIn, d) => {
  const rest = toBytes(restIn);
  let sep = 0;
  while (sep < rest.length && !isGoSpaceCode(rest.charCodeAt(sep))) sep++;
  let next = sep;
  while (next < rest.length && isGoSpaceCode(rest.charCodeAt(next))) next++;
  if (sep === 0) return { node: undefined, json: false };
  const typ = fromBytes(rest.slice(0, sep));
  const r = parseMaybeJSON(fromBytes(rest.slice(next)), d);
  const node = newNode(typ);
  node.next = r.node;
  return { node, json: r.json };
};

const DISPATCH: Record<string, LineParser> = {
  add: parseMaybeJSONToList,
  arg: parseNameOrNameVal,
  cmd: parseMaybeJSON,
  copy: parseMaybeJSONToList,
  entrypoint: parseMaybeJSON,
  env: parseEnv,
  expose: parseStringsWhitespaceDelimited,
  from: parseStringsWhitespaceDelimited,
  healthcheck: parseHealthConfig,
  label: parseLabel,
  maintainer: parseString,
  run: parseMaybeJSON,
  shell: parseMaybeJSON,
  stopsignal: parseString,
  user: parseString,
  volume: parseMaybeJSONToList,
  workdir: parseString,
};

/**
 * One instruction line -> node. ONBUILD's argument is parsed as a nested instruction (BuildKit parseSubCommand:
 * `(onbuild (run ...))`); the chain is built in a loop so that `ONBUILD ONBUILD ...` cannot overflow the stack.
 */
function newNodeFromLine(line: string, d: Directives, comments: string[]): Node {
  let root: Node | undefined;
  let holder: Node | undefined;
  let cur = line;
  let prevComment = comments;
  for (;;) {
    const { cmd, flags, args } = splitCommand(cur, d);
    const lower = cmd.toLowerCase();
    const node = newNode(cmd);
    node.original = cur;
    node.flags = flags;
    node.prevComment = prevComment;
    if (holder) holder.children = [node];
    else root = node;
    if (lower === 'onbuild') {
      if (args === '') break;
      holder = newNode();
      node.next = holder;
      cur = args;
      prevComment = [];
      continue;
    }
    const fn = Object.prototype.hasOwnProperty.call(DISPATCH, lower) ? DISPATCH[lower]! : parseIgnore;
    const r = fn(args, d);
    node.next = r.node;
    if (r.json) node.attributes = { json: true };
    break;
  }
  return root!;
}

const HEREDOC_DIRECTIVES = new Set(['add', 'copy', 'run']);

function canContainHeredoc(nodeIn: Node): boolean {
  let node = nodeIn;
  if (node.value.toLowerCase() === 'onbuild' && node.next && node.next.children.length > 0) {
    node = node.next.children[0]!;
  }
  if (!HEREDOC_DIRECTIVES.has(node.value.toLowerCase())) return false;
  return node.attributes.json !== true;
}

// ---------------------------------------------------------------------------------------------------------------
// parser.go

/** strip trailing \r and \n characters (bytes.TrimRight(src, "\r\n")). */
function trimNewline(s: string): string {
  let j = s.length;
  while (j > 0) {
    const c = s.charCodeAt(j - 1);
    if (c !== 0x0a && c !== 0x0d) break;
    j--;
  }
  return j === s.length ? s : s.slice(0, j);
}

function isComment(line: string): boolean {
  let i = 0;
  while (i < line.length && isGoSpaceCode(line.charCodeAt(i))) i++;
  return i < line.length && line.charCodeAt(i) === 0x23;
}

function isEmptyContinuationLine(line: string): boolean {
  return trimLeftSpace(trimNewline(line)).length === 0;
}

/**
 * BuildKit's lineContinuationRegex `([^E])E[ \t]*$|^E[ \t]*$`: the escape token as the last non-blank (space/tab)
 * character, not itself escaped, is a line continuation and is removed together with the trailing blanks.
 */
function trimContinuation(line: string, esc: string): { line: string; end: boolean } {
  let j = line.length;
  while (j > 0) {
    const c = line.charCodeAt(j - 1);
    if (c !== 0x20 && c !== 0x09) break;
    j--;
  }
  if (j === 0 || line[j - 1] !== esc) return { line, end: true };
  if (j === 1) return { line: '', end: false };
  if (line[j - 2] === esc) return { line, end: true };
  return { line: line.slice(0, j - 1), end: false };
}

/** Iterates physical lines, each with its terminator (BuildKit's scanLines). */
class LineScanner {
  private pos = 0;
  constructor(private readonly text: string) {}
  scan(): string | undefined {
    const t = this.text;
    if (this.pos >= t.length) return undefined;
    const i = t.indexOf('\n', this.pos);
    const end = i < 0 ? t.length : i + 1;
    const line = t.slice(this.pos, end);
    this.pos = end;
    if (line.length * 3 >= MAX_LINE_BYTES && Buffer.byteLength(line, 'utf8') > MAX_LINE_BYTES - (i < 0 ? 1 : 0)) {
      throw new LineError(`dockerfile line greater than max allowed size of ${MAX_LINE_BYTES - 1}`);
    }
    return line;
  }
}

/** Lines `start..end` (1-based, inclusive) of `text`, for error context. */
export function sourceLines(text: string, start: number, end: number): string {
  if (start <= 0) return '';
  let pos = 0;
  for (let l = 1; l < start; l++) {
    const i = text.indexOf('\n', pos);
    if (i < 0) return '';
    pos = i + 1;
  }
  let stop = pos;
  for (let l = start; l <= Math.max(start, end); l++) {
    const i = text.indexOf('\n', stop);
    if (i < 0) {
      stop = text.length;
      break;
    }
    stop = i + 1;
  }
  return trimNewline(text.slice(pos, stop)).replace(/\r\n/g, '\n');
}

/**
 * Parses Dockerfile text into BuildKit's AST. Throws DockerfileError (and nothing else) for invalid input:
 * a bad directive, invalid JSON array contents, an unterminated heredoc, a file with no instructions.
 */
export function parseAst(textIn: string, opts: ParseOptions = {}): AstResult {
  const file = opts.filename ?? 'Dockerfile';
  const text = textIn.startsWith('\ufeff') ? textIn.slice(1) : textIn;
  const fail = (e: unknown, start: number, end: number): never => {
    if (e instanceof DockerfileError) throw e;
    let code: DockerfileErrorCode = 'DOCKERFILE_PARSE';
    if (e instanceof LineError) code = e.code;
    else if (e instanceof DirectiveError) code = 'DOCKERFILE_DIRECTIVE';
    else if (e instanceof HeredocError) code = 'DOCKERFILE_HEREDOC';
    const msg = e instanceof Error ? e.message : String(e);
    throw new DockerfileError(code, msg, {
      file,
      startLine: start,
      endLine: end,
      source: sourceLines(text, start, end),
      cause: e,
    });
  };

  const dirParser = new DirectiveParser();
  const d: Directives = { escapeToken: '\\' };
  const processLine = (token: string, stripLeft: boolean): { line: string; directive: boolean } => {
    let t = trimNewline(token);
    if (stripLeft) t = trimLeftSpace(t);
    const dir = dirParser.parseLine(t);
    if (dir && dir.name === 'escape') d.escapeToken = checkEscapeToken(dir.value);
    return { line: isComment(t) ? '' : t, directive: dir !== undefined };
  };

  const root = newNode();
  root.startLine = -1;
  const warnings: ParseWarning[] = [];
  let comments: string[] = [];
  let currentLine = 0;
  const scanner = new LineScanner(text);

  for (;;) {
    let raw: string | undefined;
    try {
      raw = scanner.scan();
    } catch (e) {
      fail(e, currentLine + 1, currentLine + 1);
    }
    if (raw === undefined) break;
    if (isComment(raw)) {
      const c = trimSpace(raw.slice(1));
      if (c === '') comments = [];
      else comments.push(c);
    }
    let first: { line: string; directive: boolean };
    try {
      first = processLine(raw, true);
    } catch (e) {
      fail(e, currentLine + 1, currentLine + 1);
    }
    if (first!.directive) comments.pop();
    currentLine++;
    const startLine = currentLine;
    const startColumn = 1 + (raw.length - trimLeftSpace(raw).length);
    let lastRaw = raw;
    let t = trimContinuation(first!.line, d.escapeToken);
    if (t.end && t.line.length === 0) continue;
    const parts: string[] = [t.line];
    let hasEmptyContinuation = false;
    while (!t.end) {
      let next: string | undefined;
      try {
        next = scanner.scan();
      } catch (e) {
        fail(e, startLine, currentLine + 1);
      }
      if (next === undefined) break;
      let p: { line: string; directive: boolean };
      try {
        p = processLine(next, false);
      } catch (e) {
        fail(e, currentLine + 1, currentLine + 1);
      }
      currentLine++;
      lastRaw = next;
      if (isComment(next)) continue;
      if (isEmptyContinuationLine(p!.line)) {
        hasEmptyContinuation = true;
        continue;
      }
      t = trimContinuation(p!.line, d.escapeToken);
      parts.push(t.line);
    }
    const line = parts.length === 1 ? parts[0]! : parts.join('');

    if (hasEmptyContinuation) {
      warnings.push({
        rule: 'NoEmptyContinuation',
        message: 'Empty continuation line',
        range: { startLine: currentLine, endLine: currentLine },
      });
    }

    let child: Node;
    try {
      child = newNodeFromLine(line, d, comments);
    } catch (e) {
      fail(e, startLine, currentLine);
    }
    child = child!;
    if (canContainHeredoc(child) && line.includes('<<')) {
      let heredocs: Heredoc[] = [];
      try {
        heredocs = heredocsFromLine(line);
      } catch (e) {
        fail(e, startLine, currentLine);
      }
      for (const h of heredocs) {
        let terminated = false;
        const content: string[] = [];
        for (;;) {
          let l: string | undefined;
          try {
            l = scanner.scan();
          } catch (e) {
            fail(e, startLine, currentLine + 1);
          }
          if (l === undefined) break;
          currentLine++;
          lastRaw = l;
          let term = trimNewline(l);
          if (h.chomp) term = term.replace(/^\t+/, '');
          if (term === h.name) {
            terminated = true;
            break;
          }
          content.push(l);
        }
        if (!terminated) fail(new HeredocError('unterminated heredoc'), startLine, currentLine);
        child.heredocs.push({ ...h, content: content.join('') });
      }
    }
    child.startLine = startLine;
    child.endLine = currentLine;
    child.startColumn = startColumn;
    child.endColumn = trimNewline(lastRaw).length + 1;
    if (root.startLine < 0) root.startLine = startLine;
    root.endLine = currentLine;
    root.children.push(child);
    comments = [];
  }

  if (root.startLine < 0) {
    throw new DockerfileError('DOCKERFILE_EMPTY', 'file with no instructions', {
      file,
      startLine: currentLine,
      hint: 'a Dockerfile needs at least one instruction, e.g. FROM <image>',
    });
  }
  return { ast: root, escapeToken: d.escapeToken, directives: dirParser.directives, warnings };
}
