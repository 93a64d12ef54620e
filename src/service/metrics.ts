/**
 * `GET /metrics` in the Prometheus text exposition format (0.0.4): queue length, builds by phase, build durations
 * per project and final phase as a histogram, running builds. Written by hand — a handful of series does not need
 * a metrics library, and the numbers come straight from the store's counters.
 */
import type { Phase } from './model.js';
import { DURATION_BUCKETS } from './store/rows.js';
import type { BuildStats } from './store/store.js';

export interface MetricsInput {
  phases: Record<Phase, number>;
  stats: BuildStats[];
  running: number;
}

const esc = (v: string): string => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

export function renderMetrics(m: MetricsInput): string {
  const out: string[] = [];
  out.push('# HELP kiln_queue_length Builds waiting to run.', '# TYPE kiln_queue_length gauge');
  out.push(`kiln_queue_length ${m.phases.queued}`);
  out.push('# HELP kiln_builds_running Builds running in this service process.', '# TYPE kiln_builds_running gauge');
  out.push(`kiln_builds_running ${m.running}`);
  out.push('# HELP kiln_builds Builds in the history by phase.', '# TYPE kiln_builds gauge');
  for (const [phase, n] of Object.entries(m.phases)) out.push(`kiln_builds{phase="${phase}"} ${n}`);
  out.push(
    '# HELP kiln_builds_finished_total Builds that reached a final phase.',
    '# TYPE kiln_builds_finished_total counter',
  );
  for (const s of m.stats) {
    out.push(`kiln_builds_finished_total{project="${esc(s.project)}",phase="${s.phase}"} ${s.finished}`);
  }
  out.push(
    '# HELP kiln_build_duration_seconds Build durations, start to final phase.',
    '# TYPE kiln_build_duration_seconds histogram',
  );
  for (const s of m.stats) {
    const l = `project="${esc(s.project)}",phase="${s.phase}"`;
    DURATION_BUCKETS.forEach((le, i) => {
      out.push(`kiln_build_duration_seconds_bucket{${l},le="${le}"} ${s.durations.buckets[i] ?? 0}`);
    });
    out.push(`kiln_build_duration_seconds_bucket{${l},le="+Inf"} ${s.durations.count}`);
    out.push(`kiln_build_duration_seconds_sum{${l}} ${s.durations.sumSeconds}`);
    out.push(`kiln_build_duration_seconds_count{${l}} ${s.durations.count}`);
  }
  return out.join('\n') + '\n';
}
