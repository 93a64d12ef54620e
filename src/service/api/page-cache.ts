/**
 * Serialized answers of `GET /api/v1/builds`, reused while the database has not changed. Why: a build list is the
 * page everybody polls (dashboards, `kiln builds ls` in a loop, the UI); with a hundred clients the service would
 * query, parse and serialize the same fifty rows a hundred times between two writes. The core's `listMark()`
 * (SQLite's change counters) says when a stored answer may be stale; entries are per query (filters, limit,
 * cursor), the oldest dropped beyond `max`. Answers do not depend on who asks (viewers and admins see the same
 * list), so one entry serves every client. The server stores the answer as bytes (`T` = Buffer): a hit is then
 * written as is, without encoding 25 KiB of JSON to UTF-8 again for every client.
 */
export class PageCache<T = string> {
  private readonly pages = new Map<string, { mark: string; body: T }>();

  constructor(private readonly max = 64) {}

  /** The answer made for `key` under `mark`, or `make()`'s (stored for the next caller with the same mark). */
  get(key: string, mark: string | undefined, make: () => T): T {
    if (mark === undefined) return make();
    const hit = this.pages.get(key);
    if (hit?.mark === mark) return hit.body;
    const body = make();
    this.pages.delete(key);
    this.pages.set(key, { mark, body });
    if (this.pages.size > this.max) {
      const oldest = this.pages.keys().next().value;
      if (oldest !== undefined) this.pages.delete(oldest);
    }
    return body;
  }

  /** Entries held (tests). */
  get size(): number {
    return this.pages.size;
  }
}
