/**
 * The wire format of `GET /api/v1/builds/{id}/log?follow=1`: a build log as Server-Sent Events, encoded by the API
 * (LogFramer) and decoded by the CLI (LogEventDecoder) — one module so both sides cannot drift apart.
 *
 * Framing (documented in openapi.yaml too):
 * - `event: log` — complete log lines, one `data:` field per line (the line without its LF); by the SSE rules the
 *   event's data is the lines joined with LF, so a reader appends one LF. Used for runs of lines that are valid
 *   UTF-8 and hold no CR (SSE treats CR as a line break, and is UTF-8 only). One event per run of lines rather than
 *   per line: 6 bytes of framing a line instead of 18, which is what fifty followers of a fast log cost the service
 *   and the network (every byte is written once per follower).
 * - `event: raw` — `data:` is base64 of exact bytes, appended as they are: a line (with its LF) that holds a CR
 *   or is not valid UTF-8, and the log's last bytes when the build ended without a final LF.
 * - `event: end` — the last event: `data:` is JSON `{"phase": …, "reason": …}` (`"shutdown": true` when the
 *   service stopped before the build ended; `phase` null when the build was deleted).
 * - comment lines (`: …`) keep idle connections alive; readers ignore them.
 * Concatenating what `log` and `raw` events carry gives the log file's bytes exactly.
 */
import { isUtf8 } from 'node:buffer';
import { StringDecoder } from 'node:string_decoder';
import type { Phase } from '../model.js';
import { parseEventBlock } from './sse-block.js';

const LF = 0x0a;
const CR = 0x0d;
const LOG_PREFIX = 'event: log\ndata: ';
const DATA_PREFIX = '\ndata: ';

/** What the `end` event carries. */
export interface LogEnd {
  phase: Phase | null;
  reason: string | null;
  /** The service shut down while the build was still running. */
  shutdown?: boolean;
}

/** The `end` event for `info`. */
export function endEvent(info: LogEnd): string {
  return `event: end\ndata: ${JSON.stringify(info)}\n\n`;
}

function rawEvent(bytes: Uint8Array): string {
  return `event: raw\ndata: ${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')}\n\n`;
}

/** A line is sent as text when SSE can carry it unchanged. */
function plain(bytes: Buffer): boolean {
  return bytes.indexOf(CR) === -1 && isUtf8(bytes);
}

/**
 * Turns log bytes into SSE events, complete lines only; the bytes after the last LF wait for the next chunk (or
 * `flush()`). Per chunk, not per byte: one UTF-8 check and one CR search cover all its lines in the common case.
 */
export class LogFramer {
  private pending: Buffer = Buffer.alloc(0);

  /** Bytes held back: the current line's start, not yet ended by LF. */
  get pendingBytes(): number {
    return this.pending.length;
  }

  /** Events for the complete lines of what came so far. `chunk` may be reused by the caller afterwards. */
  push(chunk: Buffer): string {
    const data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const last = data.lastIndexOf(LF);
    if (last === -1) {
      this.pending = Buffer.from(data);
      return '';
    }
    const lines = data.subarray(0, last + 1);
    this.pending = last + 1 < data.length ? Buffer.from(data.subarray(last + 1)) : Buffer.alloc(0);
    // LF never occurs inside a UTF-8 sequence, so the lines are valid when the whole run is.
    if (plain(lines)) {
      return LOG_PREFIX + lines.toString('utf8', 0, last).replaceAll('\n', DATA_PREFIX) + '\n\n';
    }
    let out = '';
    for (let start = 0; start < lines.length;) {
      const end = lines.indexOf(LF, start);
      const line = lines.subarray(start, end);
      out += plain(line) ? LOG_PREFIX + line.toString('utf8') + '\n\n' : rawEvent(lines.subarray(start, end + 1));
      start = end + 1;
    }
    return out;
  }

  /** The held-back bytes as a `raw` event ('' when none): the log ended without a final LF. */
  flush(): string {
    const rest = this.pending;
    this.pending = Buffer.alloc(0);
    return rest.length ? rawEvent(rest) : '';
  }
}

/** What one chunk of the stream decoded to: log bytes in order, and the end when it came. */
export interface Decoded {
  bytes: Buffer[];
  end?: LogEnd;
}

/**
 * Reads the stream LogFramer wrote (any chunking) back into the log's bytes. Follows the SSE parsing rules the
 * framing relies on (fields `event` and `data`, one optional space after the colon, comments, blank line ends an
 * event); unknown events are skipped.
 */
export class LogEventDecoder {
  private readonly text = new StringDecoder('utf8');
  private buffered = '';

  push(chunk: Buffer): Decoded {
    this.buffered += this.text.write(chunk);
    const out: Decoded = { bytes: [] };
    let lines = '';
    const flushLines = (): void => {
      if (lines) out.bytes.push(Buffer.from(lines));
      lines = '';
    };
    let at = 0;
    for (;;) {
      const stop = this.buffered.indexOf('\n\n', at);
      if (stop === -1) break;
      const block = this.buffered.slice(at, stop);
      at = stop + 2;
      const { event, data } = parseEventBlock(block);
      if (data === null) continue;
      if (event === 'log') {
        lines += data + '\n';
      } else if (event === 'raw') {
        flushLines();
        out.bytes.push(Buffer.from(data, 'base64'));
      } else if (event === 'end') {
        flushLines();
        out.end = JSON.parse(data) as LogEnd;
        this.buffered = '';
        return out;
      }
    }
    flushLines();
    this.buffered = this.buffered.slice(at);
    return out;
  }
}
