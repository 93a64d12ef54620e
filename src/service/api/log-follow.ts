/**
 * `GET /api/v1/builds/{id}/log?follow=1`: the build log as Server-Sent Events (framing: sse.ts) — what the file
 * holds, then what the runner appends, then `event: end` once the build reached a final phase.
 *
 * Why one shared Tail per build rather than a reader per client: 50 followers of a log written at 5 MB/s would
 * otherwise read, check and frame the same bytes 50 times on the machine that runs the build. The Tail polls the
 * file (fs.watch is unreliable; a read from the last offset every `pollMs` is cheap), frames each new run of lines
 * once and writes the same Buffer to every live follower. A follower that joins mid-build, or whose socket cannot
 * take more (write() returned false), reads the file itself from its own offset up to the Tail's (a line boundary),
 * then joins the broadcast again — so a slow client never holds bytes in the server's memory beyond its socket
 * buffer, and nobody re-reads from the start except a new client's one catch-up.
 *
 * Contract with the runner: the log file is complete when the build's phase turns final (the phase is read before
 * the last read of the file).
 */
import type { Writable } from 'node:stream';
import { open, type FileHandle } from 'node:fs/promises';
import { FINAL_PHASES, type Build } from '../model.js';
import type { ServiceCore } from '../core.js';
import { LogFramer, endEvent, type LogEnd } from './sse.js';

export interface FollowOptions {
  /** How often the file and the phase are polled (ms). */
  pollMs?: number;
  /** Read size (bytes): big, so a fast log costs few syscalls. */
  chunkSize?: number;
  /** Idle time after which a comment line keeps proxies from closing the connection (ms). */
  keepAliveMs?: number;
  /**
   * Bytes a live follower's socket may hold before it leaves the broadcast and reads the file at its own pace.
   * Followers share the broadcast's Buffers, so this bounds memory per log, not per client. Default 32 MiB (~6 s
   * of a 5 MB/s log): a follower that leaves reads and frames the file itself, which costs the service far more
   * than the shared bytes it holds (the benchmark's fifty followers fell out of an 8 MiB broadcast).
   */
  maxBuffered?: number;
  /** Where a failed read is reported (the client only learns that the log could not be read). */
  log?: (e: unknown) => void;
}

type CoreView = Pick<ServiceCore, 'getBuild' | 'logPath'>;

/** Resolves when `res` can take more, or is gone. */
function drained(res: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/** One client's stream. */
class Follower {
  /** Log bytes delivered (or being delivered) so far; a line boundary except after the end. */
  offset = 0;
  closed = false;
  catchingUp = false;
  constructor(readonly res: Writable) {}

  /** End the response (idempotent). */
  finish(last: string): void {
    if (this.closed) return;
    this.closed = true;
    this.res.end(last);
  }
}

/** The shared reader of one build's log. */
class Tail {
  private fh: FileHandle | null = null;
  private readonly framer = new LogFramer();
  private readonly buf: Buffer;
  /** Bytes read from the file. */
  private readOffset = 0;
  /** Bytes framed and sent to live followers: `readOffset` minus the framer's held-back line. */
  private framed = 0;
  private readonly live = new Set<Follower>();
  private readonly catching = new Set<Follower>();
  /** Set once the build ended: its log size and the events that close a stream. */
  private ended: { size: number; end: LogEnd } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private ticking = false;
  private lastWrite = Date.now();
  private stopped = false;
  shutdown = false;

  constructor(
    private readonly core: CoreView,
    readonly id: string,
    private readonly opts: Required<FollowOptions>,
    private readonly onIdle: (t: Tail) => void,
  ) {
    this.buf = Buffer.allocUnsafe(opts.chunkSize);
  }

  get followers(): number {
    return this.live.size + this.catching.size;
  }

  add(f: Follower): void {
    f.res.on('close', () => this.remove(f));
    this.catchUp(f);
    this.schedule(0);
  }

  private remove(f: Follower): void {
    f.closed = true;
    this.live.delete(f);
    this.catching.delete(f);
    if (this.followers === 0) this.stop();
  }

  private stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.onIdle(this);
    // FileHandle.close waits for reads in flight.
    void this.fh?.close().catch(() => undefined);
    this.fh = null;
  }

  private schedule(ms: number): void {
    if (this.stopped || this.timer || this.ticking) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.tick();
    }, ms);
  }

  /** Opens the log once it exists (a queued build has none yet). */
  private async handle(): Promise<FileHandle | null> {
    if (this.fh || this.stopped) return this.fh;
    try {
      const fh = await open(this.core.logPath(this.id), 'r');
      if (this.stopped || this.fh) await fh.close();
      else this.fh = fh;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    return this.fh;
  }

  private async tick(): Promise<void> {
    if (this.stopped || this.ended) return;
    this.ticking = true;
    let again = false;
    try {
      // The phase first: a final phase means the log was complete before this read.
      const build = this.core.getBuild(this.id);
      const final = build === undefined || FINAL_PHASES.includes(build.phase) || this.shutdown;
      if (final) {
        await this.end(build);
      } else if (this.live.size > 0) {
        again = await this.readBudget(8);
        if (!again && Date.now() - this.lastWrite >= this.opts.keepAliveMs) this.broadcast(': keep-alive\n\n');
      }
    } catch (e) {
      this.fail(e);
    } finally {
      this.ticking = false;
    }
    if (!this.ended) this.schedule(again ? 0 : this.opts.pollMs);
  }

  /**
   * Reads up to `chunks` chunks and broadcasts their lines in one write per follower (fewer, larger socket
   * writes: with fifty followers the writes are most of the service's work); true when more may be waiting.
   */
  private async readBudget(chunks: number): Promise<boolean> {
    const fh = await this.handle();
    if (!fh) return false;
    const out: string[] = [];
    let more = true;
    for (let i = 0; i < chunks && this.live.size > 0 && !this.stopped; i++) {
      const { bytesRead } = await fh.read(this.buf, 0, this.buf.length, this.readOffset);
      this.readOffset += bytesRead;
      const events = bytesRead > 0 ? this.framer.push(this.buf.subarray(0, bytesRead)) : '';
      if (events) out.push(events);
      if (bytesRead < this.buf.length) {
        more = false;
        break;
      }
    }
    // `framed` moves with the broadcast: a follower that leaves it resumes from the file at this offset
    this.framed = this.readOffset - this.framer.pendingBytes;
    if (out.length) this.broadcast(out.join(''));
    return more && this.live.size > 0;
  }

  /** The same bytes to every live follower; one whose socket is full reads the file itself for a while. */
  private broadcast(text: string): void {
    const data = Buffer.from(text);
    this.lastWrite = Date.now();
    for (const f of this.live) {
      if (f.res.write(data) || f.res.writableLength <= this.opts.maxBuffered) continue;
      this.live.delete(f);
      this.catching.add(f);
      f.offset = this.framed;
      f.res.once('drain', () => {
        if (this.catching.has(f)) this.catchUp(f);
      });
    }
  }

  private async end(build: Build | undefined): Promise<void> {
    const info: LogEnd = build
      ? { phase: build.phase, reason: build.reason }
      : { phase: null, reason: 'the build was deleted' };
    if (this.shutdown && build && !FINAL_PHASES.includes(build.phase)) info.shutdown = true;
    // Live followers get the rest from this reader; then the size is known for the others.
    while (this.live.size > 0 && (await this.readBudget(64)));
    let size = this.readOffset;
    if (this.live.size === 0) {
      const fh = await this.handle();
      size = fh ? (await fh.stat()).size : 0;
    }
    const last = this.framer.flush() + endEvent(info);
    this.ended = { size, end: info };
    for (const f of this.live) {
      if (this.readOffset >= size) {
        f.finish(last);
        continue;
      }
      // It finished catching up (at the broadcast's offset) while the size was looked up: this reader did not read
      // the rest, so it reads it itself.
      f.offset = this.framed;
      this.catching.add(f);
    }
    this.live.clear();
    for (const f of this.catching) this.catchUp(f);
    if (this.followers === 0) this.stop();
  }

  /**
   * Reads the file from the follower's offset to the broadcast's (its own framer, its own buffer), then makes it
   * live — synchronously after the last read, so no broadcast is missed — or ends it when the build has ended.
   */
  private catchUp(f: Follower): void {
    if (f.catchingUp || f.closed) return;
    f.catchingUp = true;
    this.catching.add(f);
    const framer = new LogFramer();
    let buf: Buffer | null = null;
    const step = async (): Promise<void> => {
      for (;;) {
        if (f.closed || this.stopped) return;
        const target = this.ended ? this.ended.size : this.framed;
        if (f.offset >= target) {
          this.catching.delete(f);
          f.catchingUp = false;
          if (this.ended) {
            f.finish(framer.flush() + endEvent(this.ended.end));
            if (this.followers === 0) this.stop();
          } else {
            this.live.add(f);
          }
          return;
        }
        const fh = await this.handle();
        if (!fh || f.closed) return;
        buf ??= Buffer.allocUnsafe(this.opts.chunkSize);
        const want = Math.min(buf.length, target - f.offset);
        const { bytesRead } = await fh.read(buf, 0, want, f.offset);
        if (bytesRead === 0) throw new Error(`log of build ${this.id} shrank below ${f.offset} bytes`);
        f.offset += bytesRead;
        const events = framer.push(buf.subarray(0, bytesRead));
        if (events && !f.res.write(events)) await drained(f.res);
      }
    };
    step().catch((e: unknown) => this.fail(e, f));
  }

  /** A read failed: the affected streams end (the error is the server's, not the client's). */
  private fail(e: unknown, only?: Follower): void {
    this.opts.log(e);
    const info: LogEnd = { phase: null, reason: 'the log could not be read (see the service log)' };
    for (const f of only ? [only] : [...this.live, ...this.catching]) {
      this.live.delete(f);
      this.catching.delete(f);
      f.finish(endEvent(info));
    }
    if (this.followers === 0) this.stop();
  }

  /** Ends every stream now (service shutting down): remaining bytes, then `end`. */
  close(): void {
    this.shutdown = true;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (!this.ticking) void this.tick();
  }
}

/** All log followers of an API server. */
export class LogFollowers {
  private readonly tails = new Map<string, Tail>();
  private readonly opts: Required<FollowOptions>;
  private closing = false;

  constructor(
    private readonly core: CoreView,
    opts: FollowOptions = {},
  ) {
    this.opts = {
      pollMs: 200,
      chunkSize: 256 * 1024,
      keepAliveMs: 15_000,
      maxBuffered: 32 * 1024 * 1024,
      log: () => undefined,
      ...opts,
    };
  }

  /** Streams build `id`'s log to `res` (headers already sent) until the build ends, the client leaves or shutdown. */
  follow(id: string, res: Writable): void {
    let tail = this.tails.get(id);
    if (!tail) {
      tail = new Tail(this.core, id, this.opts, (t) => {
        if (this.tails.get(t.id) === t) this.tails.delete(t.id);
      });
      tail.shutdown = this.closing;
      this.tails.set(id, tail);
    }
    tail.add(new Follower(res));
  }

  /** Streams open now (tests: nothing may linger after clients left). */
  get size(): number {
    let n = 0;
    for (const t of this.tails.values()) n += t.followers;
    return n;
  }

  /** Ends every stream (the service or the server is closing); later followers get what is there and the end. */
  closeAll(): void {
    this.closing = true;
    for (const t of this.tails.values()) t.close();
  }
}
