/**
 * The two parts of undici kiln's registry transport uses — the connection-pooling `Agent` and the `request` API —
 * loaded without the rest of the package (fetch, WebSocket, caches, mock agents). Why: `import 'undici'` costs
 * ~65 ms of every kiln start-up on this machine, these modules ~25 ms, and a warm build takes about a second.
 * Same code as the package entry: its `request()` is Dispatcher.prototype.request (the API mixin the entry
 * installs, installed here the same way) called on the given dispatcher with the URL split into origin and path.
 */
import type { Agent as UndiciAgent, Dispatcher } from 'undici';
// CommonJS modules of undici imported by path (types: undici-lib.d.ts); static imports so the bundled CLI
// (scripts/bundle.mjs) carries them instead of loading them from node_modules file by file
import AgentClass from 'undici/lib/dispatcher/agent.js';
import DispatcherClass from 'undici/lib/dispatcher/dispatcher.js';
import api from 'undici/lib/api/index.js';

export type { Dispatcher };

if (!('request' in DispatcherClass.prototype)) Object.assign(DispatcherClass.prototype, api);

export const Agent = AgentClass;
export type Agent = UndiciAgent;

/** undici's `request(url, options)` for a request on `options.dispatcher`. */
export function request(
  url: string,
  opts: Omit<Dispatcher.RequestOptions, 'origin' | 'path'> & { dispatcher: Dispatcher },
): Promise<Dispatcher.ResponseData> {
  const u = new URL(url);
  const { dispatcher, ...rest } = opts;
  return dispatcher.request({ ...rest, origin: u.origin, path: u.search ? `${u.pathname}${u.search}` : u.pathname });
}
