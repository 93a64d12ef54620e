/** Shared by the service benches (node, s2i): a `kiln serve` build's end as an event, not a poll. */
import { request } from 'undici';
import { FINAL_PHASES, type Build } from '../src/service/model.js';
import { parseEventBlock } from '../src/service/api/sse-block.js';

/** The service's build feed, opened before the first round. */
export interface BuildFeed {
  /** The build's final record (succeeded, failed, …), as soon as the service sends it. */
  finalOf(id: string): Promise<Build>;
  close(): void;
}

/**
 * Open `GET /ui/events` of the service at `url` and keep the final records of its builds (`event: build`, the
 * record after each change). Why not poll `GET /api/v1/builds/ID`: a poll interval is in the figure, and the poll
 * traffic competes with the build for the service's CPU (2 cores on the bench machine).
 */
export async function openBuildFeed(url: string, token: string): Promise<BuildFeed> {
  const final = new Map<string, Build>();
  const waiting = new Map<string, (b: Build) => void>();
  const feed = await request(`${url}/ui/events`, { headers: { authorization: `Bearer ${token}` } });
  if (feed.statusCode !== 200) throw new Error(`GET /ui/events: ${feed.statusCode}`);
  void (async () => {
    let buf = '';
    for await (const chunk of feed.body) {
      buf += (chunk as Buffer).toString('utf8');
      for (let end = buf.indexOf('\n\n'); end >= 0; end = buf.indexOf('\n\n')) {
        const block = parseEventBlock(buf.slice(0, end));
        buf = buf.slice(end + 2);
        if (block.event !== 'build' || block.data === null) continue;
        const b = JSON.parse(block.data) as Build;
        if (!FINAL_PHASES.includes(b.phase)) continue;
        final.set(b.id, b);
        const w = waiting.get(b.id);
        waiting.delete(b.id);
        w?.(b);
      }
    }
  })().catch(() => undefined);
  return {
    finalOf: (id) =>
      new Promise((resolve) => {
        const b = final.get(id);
        if (b) resolve(b);
        else waiting.set(id, resolve);
      }),
    close: () => feed.body.destroy(),
  };
}
