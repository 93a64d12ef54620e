/**
 * The polling fallback, for forges that cannot reach the cluster: every project with `poll: {intervalSeconds: N}`
 * has its repository's branches and tags listed (`git ls-remote` through GitMirrors: same URL rules and credentials
 * as fetches, the mirror untouched) every N seconds, and each ref that moved since it was last seen goes through
 * the same pipeline as a webhook push (branch/tag filters, skip markers, path filters from `git diff` between the
 * commit last seen and the new one, coalescing), recorded as a delivery of forge `poll`, with builds triggered
 * `{type: "poll"}`.
 *
 * - The first poll of a project records what is there (a baseline) and builds nothing: turning polling on for a
 *   repository with 200 tags must not start 200 builds. Refs seen are kept in the store, so a restart builds only
 *   what moved while the service was down.
 * - Webhooks and polls of one project agree: a webhook that handled a ref saves it as seen (pipeline.ts).
 * - Timing: each project is polled N seconds after its previous poll ended, ±10% (jitter: projects added together
 *   drift apart instead of polling the git server in bursts); the first poll comes within one interval (at most 5
 *   s) of start. A failing poll (unreachable host, bad credentials) backs off exponentially — 2N, 4N, … up to
 *   10 minutes (or N when larger) — with a warning in the service log and on the project's polling state
 *   (`GET /api/v1/deliveries?project=P` shows it); the next success says so and resets the delay.
 * - A failed build decision (a fetch that failed after ls-remote worked) leaves the ref unsaved: the next poll
 *   tries it again.
 */
import { errorMessage } from '../../errors.js';
import type { Delivery } from '../store/store.js';
import type { Project } from '../model.js';
import { newDeliveryId, runDelivery, type HookHost, type RunOptions } from '../hooks/pipeline.js';
import type { PushChange } from '../hooks/payloads.js';

export interface PollerOptions {
  /** Service log lines (default: stderr). */
  log?: (line: string) => void;
  /** How often the project list is read to find projects due, ms (default 1000). */
  tickMs?: number;
  /** Longest wait after failures, seconds (default 600; never shorter than the project's interval). */
  maxBackoffSeconds?: number;
  /** Source of jitter in [0, 1) (tests). */
  random?: () => number;
}

/** A running poller; `stop` ends it (also called when the service starts closing). */
export interface Poller {
  stop(): Promise<void>;
  /** Poll one project now, whatever its schedule (tests, and `await`able). */
  pollNow(project: string): Promise<void>;
}

interface ProjectState {
  /** Epoch ms of the next poll. */
  nextAt: number;
  failures: number;
  running: Promise<void> | undefined;
}

/** The refs that moved between `seen` and `remote` (new or moved; deletions are only forgotten). */
export function changedRefs(seen: ReadonlyMap<string, string>, remote: ReadonlyMap<string, string>): PushChange[] {
  const out: PushChange[] = [];
  for (const [ref, commit] of [...remote].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const before = seen.get(ref);
    if (before !== commit) out.push({ ref, before: before ?? null, commit });
  }
  return out;
}

/** Seconds until the next poll: the interval, or the backoff after `failures`, ±10%. */
export function nextDelaySeconds(interval: number, failures: number, maxBackoff: number, random: number): number {
  const base = failures === 0 ? interval : Math.min(interval * 2 ** failures, Math.max(maxBackoff, interval));
  return base * (0.9 + 0.2 * random);
}

/**
 * Start polling the projects that ask for it (the project list is re-read each tick: projects added, changed or
 * removed through the API are picked up). Stops by itself when `host.closing` resolves.
 */
export function startPolling(host: HookHost, opts: PollerOptions = {}): Poller {
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const tickMs = opts.tickMs ?? 1000;
  const maxBackoff = opts.maxBackoffSeconds ?? 600;
  const random = opts.random ?? Math.random;
  const states = new Map<string, ProjectState>();
  const ac = new AbortController();
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const run: RunOptions = { isClosing: () => stopped, log };

  const record = (p: Project, change: PushChange): Delivery | undefined =>
    host.store.recordDelivery({
      project: p.name,
      forge: 'poll',
      deliveryId: newDeliveryId('poll'),
      event: 'push',
      ref: change.ref,
      commit: change.commit,
      outcome: 'received',
    });

  async function pollOnce(p: Project): Promise<void> {
    const remote = await host.mirrors.lsRemote(p, ac.signal);
    if (stopped) return;
    const seen = host.store.pollRefs(p.name);
    if (seen === undefined) {
      host.store.savePollRefs(p.name, remote, true);
      log(`kiln serve: poll ${p.name}: watching ${remote.size} ref(s) every ${p.poll?.intervalSeconds ?? '?'}s`);
      return;
    }
    const gone = [...seen.keys()].filter((r) => !remote.has(r));
    if (gone.length > 0)
      host.store.savePollRefs(
        p.name,
        gone.map((r) => [r, null] as const),
      );
    for (const change of changedRefs(seen, remote)) {
      if (stopped) return;
      const rec = record(p, change);
      if (rec === undefined) continue;
      const r = await runDelivery(host, p, rec, [change], { type: 'poll' }, run);
      // Decided (built, filtered, skipped): seen. A failure stays unseen and is tried at the next poll.
      if (r.status < 500 && r.status !== 422) host.store.savePollRefs(p.name, [[change.ref, change.commit]]);
      else throw new Error(r.body.error?.message ?? r.body.outcome);
    }
  }

  /** Poll `p` now; afterwards schedule its next poll (interval, or backoff after failures). */
  function due(p: Project, st: ProjectState): void {
    const interval = p.poll?.intervalSeconds ?? 1;
    st.running = (async () => {
      let error: string | null = null;
      try {
        await pollOnce(p);
      } catch (e) {
        error = errorMessage(e).split('\n')[0] ?? 'failed';
      }
      if (stopped) return;
      const recovered = error === null && st.failures > 0;
      st.failures = error === null ? 0 : st.failures + 1;
      const wait = nextDelaySeconds(interval, st.failures, maxBackoff, random());
      st.nextAt = Date.now() + wait * 1000;
      try {
        host.store.recordPoll(p.name, error);
      } catch (e) {
        log(`kiln serve: poll ${p.name}: cannot record the poll: ${errorMessage(e)}`);
      }
      if (recovered) log(`kiln serve: poll ${p.name}: works again`);
      if (error !== null) {
        log(
          `kiln serve: warning: poll ${p.name}: ${error} (${st.failures} failure(s) in a row; next try in ${Math.round(wait)}s)`,
        );
      }
    })().finally(() => {
      st.running = undefined;
    });
  }

  function tick(): void {
    if (stopped) return;
    const now = Date.now();
    const live = new Set<string>();
    try {
      for (const p of host.store.listProjects()) {
        const interval = p.poll?.intervalSeconds;
        if (interval === undefined || interval <= 0) continue;
        live.add(p.name);
        let st = states.get(p.name);
        if (st === undefined) {
          st = { nextAt: now + random() * Math.min(interval, 5) * 1000, failures: 0, running: undefined };
          states.set(p.name, st);
        }
        if (st.running === undefined && now >= st.nextAt) due(p, st);
      }
    } catch (e) {
      log(`kiln serve: poll: ${errorMessage(e)}`);
    }
    for (const [name, st] of states) if (!live.has(name) && st.running === undefined) states.delete(name);
    timer = setTimeout(tick, tickMs);
    timer.unref();
  }

  const poller: Poller = {
    async stop() {
      if (stopped) return;
      stopped = true;
      clearTimeout(timer);
      ac.abort('stopping');
      await Promise.all([...states.values()].map((s) => s.running));
    },
    async pollNow(name) {
      const p = host.store.getProject(name);
      if (p === undefined) return;
      const st = states.get(name) ?? { nextAt: 0, failures: 0, running: undefined };
      states.set(name, st);
      await st.running;
      due(p, st);
      await st.running;
    },
  };
  void host.closing.then(() => poller.stop());
  timer = setTimeout(tick, 0);
  timer.unref();
  return poller;
}
