/**
 * ANSI SGR colours of a log line → styled segments, for the web UI's log view. Shared by the browser bundle and
 * the unit tests, so it uses neither DOM nor Node APIs. The output is data (text plus class names or a CSS colour),
 * never markup: the view puts `text` into text nodes, so a log line can never become HTML.
 *
 * Each line is parsed on its own (the view renders only the lines on screen, in any order); colours a line leaves
 * open end with it. Other escape sequences (cursor movement, OSC titles, …) are dropped.
 */

export interface Segment {
  text: string;
  /** Class names (`b`, `i`, `u`, `dim`, `fg1`…`fg15`, `bg0`…`bg15`, `inv`), space-separated; '' when plain. */
  cls: string;
  /** A 256-colour or true-colour foreground/background as a CSS colour (`rgb(…)`), set through the CSSOM. */
  fg?: string;
  bg?: string;
}

interface Style {
  bold: boolean;
  dim: boolean;
  italic: boolean;
  underline: boolean;
  inverse: boolean;
  /** 0–15, or a CSS colour string for 256/true colour, or undefined (default). */
  fg: number | string | undefined;
  bg: number | string | undefined;
}

const plainStyle = (): Style => ({
  bold: false,
  dim: false,
  italic: false,
  underline: false,
  inverse: false,
  fg: undefined,
  bg: undefined,
});

/** Any escape sequence: CSI (ESC [ … final), OSC (ESC ] … BEL or ESC \), or a two-byte ESC x. */
const ESCAPE = /\x1b(?:\[([0-9;:?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;

/** The 6×6×6 cube and grey ramp of xterm's 256 colours (16–255) as CSS. */
function xterm256(n: number): string | number {
  if (n < 16) return n;
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v},${v},${v})`;
  }
  const i = n - 16;
  const level = (x: number): number => (x === 0 ? 0 : 55 + x * 40);
  return `rgb(${level(Math.floor(i / 36))},${level(Math.floor(i / 6) % 6)},${level(i % 6)})`;
}

const byte = (s: string | undefined): number => Math.max(0, Math.min(255, Number(s) || 0));

/** Apply one SGR parameter list to `st`. */
function applySgr(st: Style, params: string): void {
  const p = params === '' ? ['0'] : params.split(/[;:]/);
  for (let i = 0; i < p.length; i++) {
    const n = Number(p[i] || '0');
    if (n === 0) Object.assign(st, plainStyle());
    else if (n === 1) st.bold = true;
    else if (n === 2) st.dim = true;
    else if (n === 3) st.italic = true;
    else if (n === 4) st.underline = true;
    else if (n === 7) st.inverse = true;
    else if (n === 22) st.bold = st.dim = false;
    else if (n === 23) st.italic = false;
    else if (n === 24) st.underline = false;
    else if (n === 27) st.inverse = false;
    else if (n >= 30 && n <= 37) st.fg = n - 30;
    else if (n >= 90 && n <= 97) st.fg = n - 90 + 8;
    else if (n === 39) st.fg = undefined;
    else if (n >= 40 && n <= 47) st.bg = n - 40;
    else if (n >= 100 && n <= 107) st.bg = n - 100 + 8;
    else if (n === 49) st.bg = undefined;
    else if (n === 38 || n === 48) {
      let colour: number | string | undefined;
      if (p[i + 1] === '5') {
        colour = xterm256(byte(p[i + 2]));
        i += 2;
      } else if (p[i + 1] === '2') {
        colour = `rgb(${byte(p[i + 2])},${byte(p[i + 3])},${byte(p[i + 4])})`;
        i += 4;
      }
      if (n === 38) st.fg = colour;
      else st.bg = colour;
    }
  }
}

function segmentOf(text: string, st: Style): Segment {
  const cls: string[] = [];
  if (st.bold) cls.push('b');
  if (st.dim) cls.push('dim');
  if (st.italic) cls.push('i');
  if (st.underline) cls.push('u');
  if (st.inverse) cls.push('inv');
  const seg: Segment = { text, cls: '' };
  if (typeof st.fg === 'number') cls.push(`fg${st.fg}`);
  else if (st.fg !== undefined) seg.fg = st.fg;
  if (typeof st.bg === 'number') cls.push(`bg${st.bg}`);
  else if (st.bg !== undefined) seg.bg = st.bg;
  seg.cls = cls.join(' ');
  return seg;
}

/** The styled segments of one line (no escape sequences left in any `text`). */
export function parseAnsi(line: string): Segment[] {
  if (line.indexOf('\x1b') === -1) return line ? [{ text: line, cls: '' }] : [];
  const out: Segment[] = [];
  const st = plainStyle();
  let at = 0;
  ESCAPE.lastIndex = 0;
  for (let m = ESCAPE.exec(line); m; m = ESCAPE.exec(line)) {
    if (m.index > at) out.push(segmentOf(line.slice(at, m.index), st));
    if (m[2] === 'm') applySgr(st, m[1] ?? '');
    at = ESCAPE.lastIndex;
  }
  if (at < line.length) out.push(segmentOf(line.slice(at), st));
  return out;
}

/** The line without escape sequences (what search looks at). */
export function stripAnsi(line: string): string {
  return line.indexOf('\x1b') === -1 ? line : line.replace(ESCAPE, '');
}
