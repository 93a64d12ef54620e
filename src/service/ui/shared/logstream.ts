/**
 * The browser's reader of `GET /api/v1/builds/{id}/log?follow=1` (framing: src/service/api/sse.ts): SSE text in
 * any chunking → complete log lines, and the end event. The UI reads the stream with fetch rather than EventSource
 * so that a log written at megabytes per second is handled a chunk at a time (one callback per network read, not
 * per line), and so that a reconnect can skip the lines it already has.
 *
 * Lines are text for display: `raw` events (a line holding a CR or bytes that are not UTF-8) are decoded with
 * replacement characters, and a CR keeps only what was written after it, like a terminal's progress line.
 */
import { parseEventBlock } from '../../api/sse-block.js';

/** What `event: end` says. */
export interface LogStreamEnd {
  phase: string | null;
  reason: string | null;
  shutdown?: boolean;
}

export interface LogChunk {
  lines: string[];
  end?: LogStreamEnd;
}

/** Text of a `raw` event (base64 of the bytes of one line with its LF, or the log's unterminated tail). */
export function rawLine(base64: string): string {
  const bin = atob(base64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  let text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  if (text.endsWith('\n')) text = text.slice(0, -1);
  if (text.endsWith('\r')) text = text.slice(0, -1);
  const cr = text.lastIndexOf('\r');
  return cr === -1 ? text : text.slice(cr + 1);
}

export class LogStreamDecoder {
  private buffered = '';
  private ended = false;

  /** Lines completed by `text` (a decoded piece of the stream), and the end once it came. */
  push(text: string): LogChunk {
    const out: LogChunk = { lines: [] };
    if (this.ended) return out;
    const buf = this.buffered ? this.buffered + text : text;
    let at = 0;
    for (;;) {
      const stop = buf.indexOf('\n\n', at);
      if (stop === -1) break;
      // Fast path: the framer writes `event: log` with a `data: <line>` field per line for almost every line.
      if (buf.startsWith('event: log\ndata: ', at) && this.dataLines(buf, at + 11, stop, out.lines)) {
        // taken
      } else {
        this.block(buf.slice(at, stop), out);
        if (out.end) {
          this.ended = true;
          this.buffered = '';
          return out;
        }
      }
      at = stop + 2;
    }
    this.buffered = buf.slice(at);
    return out;
  }

  /**
   * The lines of `data: ` fields from `from` to `stop` (an event's block after its `event:` line), appended to
   * `lines`; false, with nothing appended, when the block holds any other kind of line (the general rules decide).
   */
  private dataLines(buf: string, from: number, stop: number, lines: string[]): boolean {
    const found: string[] = [];
    for (let at = from; at < stop;) {
      if (!buf.startsWith('data: ', at)) return false;
      const end = buf.indexOf('\n', at);
      const to = end === -1 || end > stop ? stop : end;
      found.push(buf.slice(at + 6, to));
      at = to + 1;
    }
    for (const l of found) lines.push(l);
    return found.length > 0;
  }

  /** One event block by the general SSE rules (sse-block.ts). */
  private block(block: string, out: LogChunk): void {
    const { event, data } = parseEventBlock(block);
    if (data === null) return;
    // an event of several lines: its data is them joined with LF
    if (event === 'log') out.lines.push(...data.split('\n'));
    else if (event === 'raw') out.lines.push(rawLine(data));
    else if (event === 'end') out.end = JSON.parse(data) as LogStreamEnd;
  }
}
