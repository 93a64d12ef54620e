/**
 * Triggers on the service's HTTP server: the webhook receivers (`POST /hooks/{forge}/{project}`, public, each
 * delivery signed) and the trigger API (`/api/v1/deliveries…`, `/api/v1/projects/{name}/trigger`, behind the
 * API's tokens). `kiln serve` calls {@link registerHooks} right after `createApi`, before listening.
 */
import type { FastifyInstance } from 'fastify';
import { deliveryRoutes } from './api.js';
import type { HookHost, RunOptions } from './pipeline.js';
import { DEFAULT_HOOK_BODY_LIMIT, hookRoutes } from './receiver.js';

export type { HookHost } from './pipeline.js';

export interface HookOptions {
  /** Largest webhook body, bytes (default 5 MiB; larger ones are answered 413 and recorded). */
  bodyLimit?: number;
  /** One line per delivery for the service log (default: stderr). */
  log?: (line: string) => void;
}

/**
 * Register the receivers and the trigger API on `app` (an API server from `createApi`, not listening yet). Each
 * is its own plugin: the receivers read raw bodies with a parser of their own, so the API's parsers stay as they
 * are. Once `host.closing` resolves, receivers answer 503 and nothing more is queued.
 */
export function registerHooks(app: FastifyInstance, host: HookHost, opts: HookOptions = {}): void {
  let closing = false;
  void host.closing.then(() => (closing = true));
  const run: RunOptions = {
    isClosing: () => closing,
    log: opts.log ?? ((line) => process.stderr.write(line + '\n')),
  };
  void app.register(hookRoutes(host, { ...run, bodyLimit: opts.bodyLimit ?? DEFAULT_HOOK_BODY_LIMIT }));
  void app.register(deliveryRoutes(host, run));
}
