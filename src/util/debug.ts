/**
 * `KILN_DEBUG=1` timeline marks: `kiln: debug: at 123 ms: what`, the milliseconds since the process started (Node's
 * time origin), so one run shows where a build's wall time goes — start-up and imports, source sync, base resolve,
 * each step, layer blobs, push — without a profiler. No-op (one env lookup) otherwise.
 */
export function debugMark(what: string): void {
  if (process.env.KILN_DEBUG === '1')
    process.stderr.write(`kiln: debug: at ${performance.now().toFixed(0)} ms: ${what}\n`);
}
