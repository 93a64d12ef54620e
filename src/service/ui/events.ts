/**
 * `GET /ui/events`: every committed change of a build as a Server-Sent Event (`event: build`, `data:` the build
 * record), so the projects, builds and build pages update without reloading. Optional filters `?project=` and
 * `?build=` keep a page's stream to what it shows.
 *
 * Bounded: a client whose socket holds more than {@link MAX_BUFFERED} unsent bytes is disconnected rather than
 * buffered for (EventSource reconnects on its own, and the page loads the current state again). A comment every
 * {@link KEEPALIVE_MS} keeps proxies from closing idle streams.
 */
import type { ServerResponse } from 'node:http';
import type { Build } from '../model.js';

/** What the feed listens to (BuildService.events). */
export interface BuildEvents {
  on(event: 'build', listener: (b: Build) => void): unknown;
  off(event: 'build', listener: (b: Build) => void): unknown;
}

export const MAX_BUFFERED = 1 << 20;
export const KEEPALIVE_MS = 20_000;

export interface FeedFilter {
  project?: string;
  build?: string;
}

/** The open streams of the feed, ended together on shutdown. */
export class BuildFeed {
  private readonly open = new Set<() => void>();

  constructor(private readonly events: BuildEvents | undefined) {}

  /** Stream build changes to `res` (headers are written here) until the client leaves or {@link closeAll}. */
  follow(res: ServerResponse, filter: FeedFilter): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
      connection: 'close',
    });
    res.write('retry: 2000\n: kiln build feed\n\n');
    const send = (b: Build): void => {
      if (filter.project !== undefined && b.project !== filter.project) return;
      if (filter.build !== undefined && b.id !== filter.build) return;
      if (res.writableLength > MAX_BUFFERED) {
        end();
        return;
      }
      res.write(`event: build\ndata: ${JSON.stringify(b)}\n\n`);
    };
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), KEEPALIVE_MS);
    keepAlive.unref();
    const end = (): void => {
      if (!this.open.delete(end)) return;
      clearInterval(keepAlive);
      this.events?.off('build', send);
      res.end();
    };
    this.open.add(end);
    this.events?.on('build', send);
    res.on('close', end);
  }

  closeAll(): void {
    for (const end of [...this.open]) end();
  }
}
