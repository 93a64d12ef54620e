/**
 * Heredoc detection, after BuildKit's parser (heredocsFromLine, ParseHeredoc) and the word splitting of its shell
 * lexer (frontend/dockerfile/shell/lex.go) in the one configuration the parser uses: an empty environment with
 * unset variables left as written. Full word expansion lives in shell.ts/expand.ts; this is the parser's private
 * copy so that parsing does not depend on it.
 */
import type { Heredoc } from './instructions.js';
import { isGoSpace } from './directives.js';

const EOF = '';

class HeredocLexError extends Error {}

/** BuildKit's shell word lexer, reduced to an empty environment with SkipUnsetEnv (variables kept verbatim). */
class WordLexer {
  private readonly chars: string[];
  private pos = 0;
  /** Shared words buffer: BuildKit's nested processStopOn calls reset it too (kept for identical results). */
  private wordsBuf = { s: '' };
  private rawEscapes: boolean;

  constructor(
    input: string,
    private readonly rawQuotes: boolean,
    rawEscapes: boolean,
    private readonly escapeToken = '\\',
  ) {
    this.chars = Array.from(input);
    this.rawEscapes = rawEscapes;
  }

  private peek(): string {
    return this.pos < this.chars.length ? this.chars[this.pos]! : EOF;
  }

  private next(): string {
    return this.pos < this.chars.length ? this.chars[this.pos++]! : EOF;
  }

  words(): string[] {
    return this.processStopOn(EOF, this.rawEscapes).words;
  }

  private processStopOn(stop: string, rawEscapes: boolean): { result: string; words: string[] } {
    let result = '';
    const buf = this.wordsBuf;
    buf.s = '';
    const words: string[] = [];
    let inWord = false;
    const addRawChar = (ch: string): void => {
      buf.s += ch;
      inWord = true;
    };
    const addChar = (ch: string): void => {
      if (isGoSpace(ch)) {
        if (inWord && buf.s.length !== 0) {
          words.push(buf.s);
          buf.s = '';
          inWord = false;
        }
      } else addRawChar(ch);
    };
    const getWords = (): string[] => {
      if (buf.s.length > 0) {
        words.push(buf.s);
        buf.s = '';
        inWord = false;
      }
      return words;
    };
    const saved = this.rawEscapes;
    this.rawEscapes = rawEscapes;
    try {
      while (this.peek() !== EOF) {
        let ch = this.peek();
        if (stop !== EOF && ch === stop) {
          this.next();
          return { result, words: getWords() };
        }
        if (ch === '$' || ch === '<' || ch === "'" || ch === '"') {
          let tmp: string;
          if (ch === '$') tmp = this.processDollar();
          else if (ch === '<') tmp = this.processPossibleHeredoc();
          else if (ch === "'") tmp = this.processSingleQuote();
          else tmp = this.processDoubleQuote();
          result += tmp;
          if (ch === '$') for (const c of tmp) addChar(c);
          else {
            buf.s += tmp;
            inWord = true;
          }
          continue;
        }
        ch = this.next();
        if (ch === this.escapeToken) {
          if (this.rawEscapes) {
            addRawChar(ch);
            result += ch;
          }
          ch = this.next();
          if (ch === EOF) break;
          addRawChar(ch);
        } else addChar(ch);
        result += ch;
      }
      if (stop !== EOF) throw new HeredocLexError(`unexpected end of statement while looking for matching ${stop}`);
      return { result, words: getWords() };
    } finally {
      this.rawEscapes = saved;
    }
  }

  private processSingleQuote(): string {
    let r = '';
    const q = this.next();
    if (this.rawQuotes) r += q;
    for (;;) {
      const ch = this.next();
      if (ch === EOF) throw new HeredocLexError('unexpected end of statement while looking for matching single-quote');
      if (ch === "'") {
        if (this.rawQuotes) r += ch;
        return r;
      }
      r += ch;
    }
  }

  private processDoubleQuote(): string {
    let r = '';
    const q = this.next();
    if (this.rawQuotes) r += q;
    for (;;) {
      const p = this.peek();
      if (p === EOF) throw new HeredocLexError('unexpected end of statement while looking for matching double-quote');
      if (p === '"') {
        const ch = this.next();
        if (this.rawQuotes) r += ch;
        return r;
      }
      if (p === '$') {
        r += this.processDollar();
        continue;
      }
      let ch = this.next();
      if (ch === this.escapeToken) {
        if (this.rawEscapes) r += ch;
        const n = this.peek();
        if (n === EOF) continue;
        if (n === '"' || n === '$' || n === this.escapeToken) ch = this.next();
      }
      r += ch;
    }
  }

  private processDollar(): string {
    this.next();
    if (this.peek() !== '{') {
      const name = this.processName();
      return name === '' ? '$' : '$' + name;
    }
    this.next();
    const p = this.peek();
    if (p === EOF) throw new HeredocLexError("syntax error: missing '}'");
    if (p === '{' || p === '}' || p === ':') throw new HeredocLexError('syntax error: bad substitution');
    const name = this.processName();
    let ch = this.next();
    let chs = ch === EOF ? '\uFFFD' : ch;
    switch (ch) {
      case '}':
        return `\${${name}}`;
      case ':':
      case '+':
      case '-':
      case '?':
      case '#':
      case '%': {
        const nullIsUnset = ch === ':';
        if (nullIsUnset) {
          ch = this.next();
          chs += ch === EOF ? '\uFFFD' : ch;
        }
        const raw = ch === '#' || ch === '%';
        if (nullIsUnset && raw) throw new HeredocLexError(`unsupported modifier (${chs}) in substitution`);
        let word: string;
        try {
          word = this.processStopOn('}', raw).result;
        } catch (e) {
          if (this.peek() === EOF) throw new HeredocLexError("syntax error: missing '}'");
          throw e;
        }
        return `\${${name}${chs}${word}}`;
      }
      case '/': {
        if (this.peek() === '/') this.next();
        let pattern: string;
        try {
          pattern = this.processStopOn('/', true).result;
        } catch (e) {
          if (this.peek() === EOF) throw new HeredocLexError("syntax error: missing '/' in ${}");
          throw e;
        }
        let replacement: string;
        try {
          replacement = this.processStopOn('}', true).result;
        } catch (e) {
          if (this.peek() === EOF) throw new HeredocLexError("syntax error: missing '}'");
          throw e;
        }
        return `\${${name}/${pattern}/${replacement}}`;
      }
      default:
        throw new HeredocLexError(`unsupported modifier (${chs}) in substitution`);
    }
  }

  private processName(): string {
    let name = '';
    for (;;) {
      const ch = this.peek();
      if (ch === EOF) break;
      if (name.length === 0 && /^\p{Nd}$/u.test(ch)) {
        while (this.peek() !== EOF && /^\p{Nd}$/u.test(this.peek())) name += this.next();
        return name;
      }
      if (name.length === 0 && '@*#?-$!0'.includes(ch)) return this.next();
      if (!/^[\p{L}\p{Nd}_]$/u.test(ch)) break;
      name += this.next();
    }
    return name;
  }

  private processPossibleHeredoc(): string {
    this.next();
    if (this.peek() !== '<') return '<';
    this.next();
    let space = '';
    for (let c = this.peek(); c === '\t' || c === '\r' || c === ' '; c = this.peek()) space += this.next();
    return '<<' + space;
  }
}

/** Splits `line` into words the way BuildKit's lexer does for heredoc detection. Throws on lexing errors. */
export function lexWords(line: string, rawQuotes: boolean, rawEscapes: boolean): string[] {
  return new WordLexer(line, rawQuotes, rawEscapes).words();
}

const RE_HEREDOC = /^(\d*)<<(-?)[\t\n\f\r ]*([^<]*)$/;

/** A heredoc description (content empty) if `word` is a heredoc introducer like `<<EOF` or `3<<-"EOF"`. */
export function parseHeredoc(word: string): Heredoc | undefined {
  const m = RE_HEREDOC.exec(word);
  if (!m) return undefined;
  const rest = m[3]!;
  if (rest.length === 0) return undefined;
  let words: string[];
  let raw: string[];
  try {
    words = lexWords(rest, false, false);
    if (words.length !== 1) return undefined;
    raw = lexWords(rest, true, false);
  } catch (e) {
    throw new HeredocError(e instanceof Error ? e.message : String(e));
  }
  if (raw.length !== words.length) {
    throw new HeredocError(`internal lexing of heredoc produced inconsistent results: ${rest}`);
  }
  const count = (s: string): number => {
    let n = 0;
    for (const c of s) if (c === '"' || c === "'") n++;
    return n;
  };
  const fd = m[1] === '' ? 0 : Number(m[1]);
  return {
    name: words[0]!,
    fileDescriptor: Number.isSafeInteger(fd) ? fd : 0,
    expand: count(words[0]!) === count(raw[0]!),
    chomp: m[2] === '-',
    content: '',
  };
}

/** Like parseHeredoc but returns undefined instead of throwing (BuildKit MustParseHeredoc). */
export function mustParseHeredoc(word: string): Heredoc | undefined {
  try {
    return parseHeredoc(word);
  } catch {
    return undefined;
  }
}

/** An error in a heredoc introducer (reported by the parser with its line). */
export class HeredocError extends Error {}

/** All heredoc introducers on an instruction line, in order. Lexing errors mean "no heredocs" (as BuildKit). */
export function heredocsFromLine(line: string): Heredoc[] {
  let words: string[];
  try {
    words = lexWords(line, true, true);
  } catch {
    words = [];
  }
  const docs: Heredoc[] = [];
  for (const w of words) {
    const h = parseHeredoc(w);
    if (h) docs.push(h);
  }
  return docs;
}

/** Removes leading tabs from every line (for `<<-`). */
export function chompHeredocContent(src: string): string {
  return src.replace(/(^|\n)\t+/g, '$1');
}
