/**
 * `KILN_DEBUG=1` timeline marks: `kiln: debug: at 123 ms: what`, the milliseconds since the process started (Node's
 * time origin), so one run shows where a build's wall time goes — start-up and imports, source sync, base resolve,
 * each step, layer blobs, push — without a profiler. No-op (one env lookup) otherwise. `KILN_DEBUG_CLOCK=epoch`
 * prints milliseconds since the Unix epoch instead, so the marks of `kiln serve` and its build workers (separate
 * processes, one stderr) make one timeline.
 */
export function debugMark(what: string): void {
  if (process.env.KILN_DEBUG === '1') process.stderr.write(`kiln: debug: at ${debugNow()} ms: ${what}\n`);
}

/** The timeline's clock as debug lines print it (ms since the process started, or the epoch: see debugMark). */
export function debugNow(): string {
  const now = performance.now();
  return (process.env.KILN_DEBUG_CLOCK === 'epoch' ? Date.now() : now).toFixed(0);
}
