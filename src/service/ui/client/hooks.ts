/**
 * Data hooks of the pages: `useResource` loads with retries while the service is down (1 s, 2 s, 4 s … 15 s),
 * and `useBuildFeed` follows `GET /ui/events` so pages change as builds do, reloading after a reconnect (events
 * missed while disconnected are not replayed; the reload brings the page up to date).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Build } from '../../model.js';
import { ApiDown, ApiError, api, connection } from './api.js';

export interface Resource<T> {
  data?: T;
  error?: ApiError;
  loading: boolean;
  reload(): void;
}

export function useResource<T>(load: () => Promise<T>, deps: unknown[]): Resource<T> {
  const [state, setState] = useState<{ data?: T; error?: ApiError; loading: boolean }>({ loading: true });
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    let attempt = 0;
    const run = (): void => {
      loadRef.current().then(
        (data) => {
          if (live) setState({ data, loading: false });
        },
        (e: unknown) => {
          if (!live) return;
          if (e instanceof ApiDown) {
            timer = window.setTimeout(run, Math.min(15_000, 1000 * 2 ** attempt++));
          } else if (e instanceof ApiError) {
            setState({ error: e, loading: false });
          } else {
            setState({ error: new ApiError(0, 'CLIENT', String(e)), loading: false });
          }
        },
      );
    };
    setState((s) => ({ ...s, loading: true }));
    run();
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, [...deps, tick]);
  return { ...state, reload: () => setTick((t) => t + 1) };
}

/**
 * Build changes from `/ui/events` (filtered by `query`, e.g. `project=shop`), and `onReconnect` after the stream
 * was lost and came back. A stream refused for good (401: the session ended) checks the session, which leads to
 * the sign-in page, or retries later when the service is down.
 */
export function useBuildFeed(query: string, onBuild: (b: Build) => void, onReconnect: () => void): void {
  const handlers = useRef({ onBuild, onReconnect });
  handlers.current = { onBuild, onReconnect };
  useEffect(() => {
    let es: EventSource | undefined;
    let timer: number | undefined;
    let lost = false;
    let stopped = false;
    const open = (): void => {
      es = new EventSource(`/ui/events${query ? '?' + query : ''}`);
      es.addEventListener('open', () => {
        connection.set(false);
        if (lost) handlers.current.onReconnect();
        lost = false;
      });
      es.addEventListener('build', (e) =>
        handlers.current.onBuild(JSON.parse((e as MessageEvent<string>).data) as Build),
      );
      es.addEventListener('error', () => {
        lost = true;
        // Find out why: the service is down (banner), or the session ended (sign-in page).
        api('/ui/session').then(
          () => undefined,
          () => undefined,
        );
        if (es?.readyState !== EventSource.CLOSED) return; // EventSource reconnects by itself
        es.close();
        if (!stopped) timer = window.setTimeout(open, 3000);
      });
    };
    open();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
      es?.close();
    };
  }, [query]);
}

/** Re-render every `ms` (ages like "5 min ago" stay true). */
export function useTicker(ms: number): number {
  const [n, setN] = useState(0);
  useEffect(() => {
    const t = window.setInterval(() => setN((x) => x + 1), ms);
    return () => window.clearInterval(t);
  }, [ms]);
  return n;
}
