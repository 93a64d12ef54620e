/**
 * The build queue's scheduling policy as pure functions: which queued builds a new one replaces, which queued
 * build runs next, how long a build may run. No I/O and no clock — the store holds the queue, the runner calls
 * these with what it knows — so every rule is tested with plain objects, and property-tested.
 */
import type { Build, Project, RunPolicy, TriggerType } from '../model.js';
import type { NewBuild } from '../store/store.js';

/**
 * Triggers that come from the outside world rather than a person: a newer one of these makes an older queued one
 * of the same image and ref pointless. (`retry` — the automatic rerun of an interrupted build — may be replaced,
 * but never replaces: it builds an older commit.)
 */
export const AUTOMATIC_TRIGGERS: readonly TriggerType[] = ['webhook', 'poll', 'base-change'];

/** Triggers a person chose (a commit, a rerun): their queued builds are never superseded. */
const PERSONAL_TRIGGERS: readonly TriggerType[] = ['manual', 'rerun'];

/** Builds with the same key run one at a time under Serial and SerialLatestOnly. */
export function serialKey(b: Pick<Build, 'project' | 'image' | 'ref'>): string {
  return `${b.project}\u0000${b.image}\u0000${b.ref}`;
}

/**
 * Under `SerialLatestOnly`, the queued builds an incoming build replaces (they are cancelled with reason
 * `superseded by <new id>`): several pushes to a branch while a build waits give one build, of the newest commit.
 *
 * Only an automatic incoming build (webhook, poll, base change) supersedes, and only queued automatic builds or
 * retries of the same project, image and ref: a build a person asked for (manual, rerun) is neither replaced nor
 * replaces — it may name an older commit on purpose, and cancelling it silently would surprise them. Builds by
 * commit (ref ``) are never coalesced. Running builds are untouched (they finish; the new one waits behind them).
 */
export function coalesceOnEnqueue(
  queued: readonly Build[],
  incoming: NewBuild,
  runPolicy: RunPolicy,
): { supersede: string[] } {
  if (runPolicy !== 'SerialLatestOnly' || incoming.ref === '' || !AUTOMATIC_TRIGGERS.includes(incoming.trigger.type)) {
    return { supersede: [] };
  }
  const key = serialKey(incoming);
  const supersede = queued
    .filter((b) => b.phase === 'queued' && serialKey(b) === key && !PERSONAL_TRIGGERS.includes(b.trigger.type))
    .map((b) => b.id);
  return { supersede };
}

/** What `pickNext` must respect. */
export interface QueueLimits {
  /** Builds running at once in the whole service. */
  global: number;
  /** Builds of this project running at once (the project's `concurrency`). */
  perProject: (project: string) => number;
  runPolicy: (project: string) => RunPolicy;
  /**
   * When a build of the project last started (ms since epoch; undefined: not since the service started). The
   * runner keeps it; without it, the latest `startedAt` among the project's running builds is used.
   */
  lastStartedAt?: (project: string) => number | undefined;
}

/**
 * The queued build to start now, or undefined. A build is runnable when the service and its project are below
 * their limits and — unless the project's run policy is `Parallel` — no build of the same (project, image, ref)
 * runs. Each project's runnable candidate is its oldest runnable build. Among projects, fair share: the one with
 * the fewest running builds, then the one whose last start is longest ago (never started first), then the one
 * whose candidate is oldest in the queue. So a project that enqueued twenty builds gets its share, and a project
 * arriving later with one build runs as soon as a slot frees — ahead of the first project's next one. Builds with
 * `cancelRequested` are skipped (the store cancels queued builds at once; this only covers a stale list).
 *
 * `queued` must be in queue (seq) order; `running` is every active build.
 */
export function pickNext(queued: readonly Build[], running: readonly Build[], limits: QueueLimits): Build | undefined {
  if (running.length >= limits.global) return undefined;
  const runningOf = new Map<string, number>();
  const startedOf = new Map<string, number>();
  const busy = new Set<string>();
  for (const r of running) {
    runningOf.set(r.project, (runningOf.get(r.project) ?? 0) + 1);
    busy.add(serialKey(r));
    const t = r.startedAt === null ? NaN : Date.parse(r.startedAt);
    if (!Number.isNaN(t) && t > (startedOf.get(r.project) ?? -Infinity)) startedOf.set(r.project, t);
  }
  const open = new Map<string, boolean>();
  const isOpen = (project: string): boolean => {
    let v = open.get(project);
    if (v === undefined) {
      v = (runningOf.get(project) ?? 0) < limits.perProject(project);
      open.set(project, v);
    }
    return v;
  };
  const candidates = new Map<string, { build: Build; index: number }>();
  queued.forEach((b, index) => {
    if (candidates.has(b.project) || b.cancelRequested || b.phase !== 'queued' || !isOpen(b.project)) return;
    if (limits.runPolicy(b.project) !== 'Parallel' && busy.has(serialKey(b))) return;
    candidates.set(b.project, { build: b, index });
  });
  const lastStart = (project: string): number =>
    (limits.lastStartedAt ? limits.lastStartedAt(project) : startedOf.get(project)) ?? -Infinity;
  let best: { build: Build; index: number; running: number; last: number } | undefined;
  for (const [project, c] of candidates) {
    const cand = { ...c, running: runningOf.get(project) ?? 0, last: lastStart(project) };
    if (
      !best ||
      cand.running < best.running ||
      (cand.running === best.running && (cand.last < best.last || (cand.last === best.last && cand.index < best.index)))
    ) {
      best = cand;
    }
  }
  return best?.build;
}

/**
 * A build's timeout in seconds: its image's `timeoutSeconds`, else its project's, else the service default.
 * `project` may be undefined (deleted while the build ran): the service default applies.
 */
export function timeoutFor(
  build: Pick<Build, 'image'>,
  project: Pick<Project, 'images' | 'timeoutSeconds'> | undefined,
  serviceDefault: number,
): number {
  return (
    project?.images.find((i) => i.name === build.image)?.timeoutSeconds ?? project?.timeoutSeconds ?? serviceDefault
  );
}
