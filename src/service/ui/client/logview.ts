/**
 * The build log view: a virtualised list (only the rows on screen, plus a margin, exist in the DOM), so a log of
 * 100,000s of lines scrolls and searches as fast as a short one, and lines arriving at megabytes per second cost
 * one render per animation frame, not one per line.
 *
 * - Text only: each line's ANSI colours become spans whose text is set with text nodes (ansi.ts gives data, never
 *   markup); 256/true colours are set through the CSSOM, which the Content-Security-Policy allows.
 * - Memory is bounded: past {@link MAX_LINES} lines or {@link MAX_CHARS} characters the oldest fifth is dropped
 *   (line numbers stay true; the page links the full log).
 * - Follow mode keeps the end in view while lines arrive and stops as soon as the user scrolls up (wheel, keys,
 *   drag); scrolling back to the end resumes it.
 */
import { parseAnsi, stripAnsi, type Segment } from '../shared/ansi.js';

export const MAX_LINES = 300_000;
export const MAX_CHARS = 48_000_000;

export interface LogViewEvents {
  /** Follow mode changed (the user scrolled up, or back to the end). */
  follow?(on: boolean): void;
  /** Lines or matches changed (counters). */
  change?(): void;
}

export class LogView {
  readonly root: HTMLDivElement;
  private readonly spacer: HTMLDivElement;
  private readonly rows: HTMLDivElement;
  private lines: string[] = [];
  /** Lines dropped from the front (memory bound): line `i` of `lines` is line `dropped + i + 1` of the log. */
  dropped = 0;
  private chars = 0;
  private lineHeight = 18;
  private scheduled = false;
  private programmatic = false;
  following = true;
  private query = '';
  /** The query as a case-insensitive pattern (a RegExp test is far cheaper than lower-casing every line). */
  private pattern: RegExp | undefined;
  /** Absolute line indexes (0-based) that match the query. */
  matches: number[] = [];
  current = -1;
  /** Absolute index of the failing line, the line picked from the URL, or -1. */
  private failing = -1;
  private picked = -1;
  private renderedFrom = -1;
  private renderedTo = -1;
  private dirty = true;

  constructor(
    host: HTMLElement,
    private readonly events: LogViewEvents = {},
  ) {
    this.root = document.createElement('div');
    this.root.className = 'log-scroll';
    this.root.tabIndex = 0;
    this.root.setAttribute('role', 'region');
    this.root.setAttribute('aria-label', 'Build log');
    this.spacer = document.createElement('div');
    this.spacer.className = 'log-spacer';
    this.rows = document.createElement('div');
    this.rows.className = 'log-rows';
    this.spacer.appendChild(this.rows);
    this.root.appendChild(this.spacer);
    host.appendChild(this.root);
    this.measure();
    this.root.addEventListener('scroll', () => this.onScroll(), { passive: true });
    this.root.addEventListener('wheel', (e) => e.deltaY < 0 && this.setFollow(false), { passive: true });
    this.root.addEventListener('keydown', (e) => {
      if (['ArrowUp', 'PageUp', 'Home'].includes(e.key)) this.setFollow(false);
      if (e.key === 'End') this.setFollow(true);
    });
    this.rows.addEventListener('click', (e) => {
      const a = (e.target as Element).closest('a.ln');
      if (!a) return;
      e.preventDefault();
      const n = Number(a.getAttribute('data-n'));
      history.replaceState(history.state, '', `#L${n}`);
      this.pick(n - 1);
    });
  }

  /** The height of one row in this browser's font (rows are fixed-height: the list's geometry is arithmetic). */
  private measure(): void {
    const probe = this.row('x', 0);
    this.rows.appendChild(probe);
    this.lineHeight = probe.getBoundingClientRect().height || 18;
    this.rows.removeChild(probe);
  }

  get total(): number {
    return this.dropped + this.lines.length;
  }

  /** Line `abs` (0-based, absolute) as text, if still held. */
  lineAt(abs: number): string | undefined {
    return this.lines[abs - this.dropped];
  }

  /** The lines held (for finding the failing line). */
  held(): readonly string[] {
    return this.lines;
  }

  append(lines: readonly string[]): void {
    if (lines.length === 0) return;
    const re = this.pattern;
    for (const l of lines) {
      this.lines.push(l);
      this.chars += l.length;
      if (re && re.test(stripAnsi(l))) this.matches.push(this.dropped + this.lines.length - 1);
    }
    if (this.lines.length > MAX_LINES || this.chars > MAX_CHARS) this.trim();
    this.dirty = true;
    this.schedule();
  }

  /** Drop the oldest fifth (memory bound). */
  private trim(): void {
    const n = Math.ceil(this.lines.length / 5);
    for (let i = 0; i < n; i++) this.chars -= (this.lines[i] as string).length;
    this.lines = this.lines.slice(n);
    this.dropped += n;
    const firstHeld = this.dropped;
    const before = this.matches.length;
    this.matches = this.matches.filter((m) => m >= firstHeld);
    if (this.current !== -1) this.current = Math.max(-1, this.current - (before - this.matches.length));
  }

  /** Search (case-insensitive); returns the number of matching lines and goes to the first after the view. */
  search(query: string): number {
    this.query = query.toLowerCase();
    this.pattern = query ? new RegExp(query.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'i') : undefined;
    this.matches = [];
    this.current = -1;
    const re = this.pattern;
    if (re) {
      const lines = this.lines;
      for (let i = 0; i < lines.length; i++)
        if (re.test(stripAnsi(lines[i] as string))) this.matches.push(this.dropped + i);
      if (this.matches.length) this.step(1);
    }
    this.dirty = true;
    this.schedule();
    return this.matches.length;
  }

  /** Next (1) or previous (-1) match, wrapping around. */
  step(dir: 1 | -1): void {
    if (!this.matches.length) return;
    this.current = (this.current + dir + this.matches.length) % this.matches.length;
    this.scrollToLine(this.matches[this.current] as number);
    this.events.change?.();
  }

  /** Mark the failing line and bring it into view. */
  setFailing(abs: number): void {
    this.failing = abs;
    this.dirty = true;
    if (abs < 0) {
      this.schedule();
      return;
    }
    this.root.scrollIntoView({ block: 'nearest' });
    this.scrollToLine(abs);
  }

  /** Highlight one line (a `#L…` link) and bring it into view. */
  pick(abs: number): void {
    this.picked = abs;
    this.dirty = true;
    this.scrollToLine(abs);
  }

  /** Center line `abs` (follow mode ends). */
  scrollToLine(abs: number): void {
    this.setFollow(false);
    const i = abs - this.dropped;
    this.flushGeometry();
    const top = Math.max(0, i * this.lineHeight - (this.root.clientHeight - this.lineHeight) / 2);
    this.programmatic = true;
    this.root.scrollTop = top;
    this.dirty = true;
    this.render();
  }

  setFollow(on: boolean): void {
    if (this.following === on) return;
    this.following = on;
    this.events.follow?.(on);
    if (on) this.schedule();
  }

  /** Go to the end and follow again. */
  toEnd(): void {
    this.setFollow(true);
    this.dirty = true;
    this.render();
  }

  private onScroll(): void {
    if (this.programmatic) {
      this.programmatic = false;
    } else {
      const atEnd = this.root.scrollTop + this.root.clientHeight >= this.root.scrollHeight - this.lineHeight * 1.5;
      this.setFollow(atEnd);
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  private flushGeometry(): void {
    this.spacer.style.height = `${this.lines.length * this.lineHeight}px`;
  }

  /** Render the rows in view (and a margin); nothing when the same rows are already there. */
  render(): void {
    this.flushGeometry();
    if (this.following) {
      const end = Math.max(0, this.lines.length * this.lineHeight - this.root.clientHeight);
      if (Math.abs(this.root.scrollTop - end) > 1) {
        this.programmatic = true;
        this.root.scrollTop = end;
      }
    }
    const h = this.lineHeight;
    const margin = 40;
    const from = Math.max(0, Math.floor(this.root.scrollTop / h) - margin);
    const to = Math.min(this.lines.length, Math.ceil((this.root.scrollTop + this.root.clientHeight) / h) + margin);
    if (!this.dirty && from === this.renderedFrom && to === this.renderedTo) return;
    this.dirty = false;
    this.renderedFrom = from;
    this.renderedTo = to;
    const frag = document.createDocumentFragment();
    for (let i = from; i < to; i++) frag.appendChild(this.row(this.lines[i] as string, this.dropped + i));
    this.rows.style.transform = `translateY(${from * h}px)`;
    this.rows.replaceChildren(frag);
    this.events.change?.();
  }

  private row(line: string, abs: number): HTMLDivElement {
    const div = document.createElement('div');
    let cls = 'log-line';
    if (abs === this.failing) cls += ' fail';
    if (abs === this.picked) cls += ' picked';
    const isMatch = this.pattern !== undefined && this.pattern.test(stripAnsi(line));
    if (isMatch) cls += abs === this.matches[this.current] ? ' match current' : ' match';
    div.className = cls;
    div.id = `L${abs + 1}`;
    const a = document.createElement('a');
    a.className = 'ln';
    a.href = `#L${abs + 1}`;
    a.setAttribute('data-n', String(abs + 1));
    a.tabIndex = -1;
    a.textContent = String(abs + 1);
    div.appendChild(a);
    const text = document.createElement('span');
    text.className = 'lt';
    for (const seg of parseAnsi(line)) text.appendChild(this.segment(seg, isMatch ? this.query : ''));
    div.appendChild(text);
    return div;
  }

  private segment(seg: Segment, query: string): Node {
    const plain = !seg.cls && !seg.fg && !seg.bg;
    const el = plain ? document.createDocumentFragment() : document.createElement('span');
    if (el instanceof HTMLSpanElement) {
      if (seg.cls) el.className = seg.cls;
      if (seg.fg) el.style.color = seg.fg;
      if (seg.bg) el.style.backgroundColor = seg.bg;
    }
    if (!query) {
      el.appendChild(document.createTextNode(seg.text));
      return el;
    }
    const lower = seg.text.toLowerCase();
    let at = 0;
    for (let i = lower.indexOf(query); i !== -1; i = lower.indexOf(query, at)) {
      if (i > at) el.appendChild(document.createTextNode(seg.text.slice(at, i)));
      const mark = document.createElement('mark');
      mark.textContent = seg.text.slice(i, i + query.length);
      el.appendChild(mark);
      at = i + query.length;
    }
    if (at < seg.text.length) el.appendChild(document.createTextNode(seg.text.slice(at)));
    return el;
  }
}
