/**
 * Memoize an async thunk by caching its promise (not its value): concurrent callers share one in-flight
 * computation, and a failure is not cached, so a later call can retry.
 */
export function memo<T>(fn: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined;
  return () => {
    if (!p) {
      p = fn();
      p.catch(() => {
        p = undefined;
      });
    }
    return p;
  };
}
