/**
 * A real HTTP receiver for delivery tests: a node:http server on 127.0.0.1 that records every request (method,
 * path, headers, raw body) and answers from a per-path script (`[500, 500, 200]`: the first two requests get 500,
 * then 200 for ever), so a test can check exactly what the service sent and how it retried.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ReceivedRequest {
  method: string;
  /** Path with query. */
  url: string;
  headers: IncomingHttpHeaders;
  /** The raw body as received. */
  body: Buffer;
  /** Arrival, ms since epoch. */
  at: number;
}

/** One scripted answer: a status, or a status with headers and a delay before answering. */
export type Answer = number | { status: number; headers?: Record<string, string>; delayMs?: number };

export interface HttpReceiver {
  /** `http://127.0.0.1:PORT` */
  url: string;
  requests: ReceivedRequest[];
  /** The requests to `path` (without query). */
  to(path: string): ReceivedRequest[];
  /** Answers for `path`, in order; the last one repeats. Unscripted paths answer 200. */
  script(path: string, answers: Answer[]): void;
  /** Resolves once `path` got `n` requests (rejects after `ms`). */
  waitFor(path: string, n: number, ms?: number): Promise<ReceivedRequest[]>;
  close(): Promise<void>;
}

export async function startReceiver(): Promise<HttpReceiver> {
  const requests: ReceivedRequest[] = [];
  const scripts = new Map<string, Answer[]>();
  const counts = new Map<string, number>();
  const pathOf = (url: string): string => url.split('?')[0] ?? url;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = req.url ?? '/';
      const path = pathOf(url);
      requests.push({
        method: req.method ?? '',
        url,
        headers: req.headers,
        body: Buffer.concat(chunks),
        at: Date.now(),
      });
      const n = counts.get(path) ?? 0;
      counts.set(path, n + 1);
      const list = scripts.get(path) ?? [200];
      const a = list[Math.min(n, list.length - 1)] ?? 200;
      const answer = typeof a === 'number' ? { status: a } : a;
      const send = (): void => {
        res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers });
        res.end(JSON.stringify({ status: answer.status }));
      };
      if (answer.delayMs) setTimeout(send, answer.delayMs);
      else send();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const to = (path: string): ReceivedRequest[] => requests.filter((r) => pathOf(r.url) === path);
  return {
    url,
    requests,
    to,
    script(path, answers) {
      scripts.set(path, answers);
      counts.set(path, 0);
    },
    async waitFor(path, n, ms = 30_000) {
      const until = Date.now() + ms;
      while (to(path).length < n) {
        if (Date.now() > until) throw new Error(`${path}: ${to(path).length} of ${n} requests after ${ms} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return to(path);
    },
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}
