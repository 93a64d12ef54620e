/**
 * Base-image change trigger: when an image's base is patched in its registry, every image built on it is rebuilt —
 * at the commit it was last built from, pushing the tags it pushed then — so a security fix in a base reaches the
 * applications without anyone pushing code.
 *
 * What is watched: the FROMs of each (project, image, ref)'s latest successful build, as the worker resolved them
 * (normalized reference + manifest digest for the build platform). One lookup per distinct base per interval, shared
 * by every project that uses it (500 projects on 20 bases → 20 requests), jittered, with backoff per base on errors
 * (a warning on the base's record; no storm when the registry returns: at most one rebuild per dependent per new
 * digest). Registry notifications (`POST /hooks/registry`) are only a hint: the named bases are looked up again, the
 * payload's digest is never trusted.
 *
 * Never loops: a dependent is rebuilt only when its recorded base digest differs from the registry's AND its newest
 * build is not already a base-change build for that digest (queued, running, or even failed — a failed rebuild waits
 * for the next base change or a person's rerun). A notification and a poll of the same change therefore give one
 * rebuild.
 */
import { errorMessage } from '../../errors.js';
import type { Build } from '../model.js';
import type { BaseRecord } from '../runner/protocol.js';

/** The latest successful build of a (project, image, ref), with what its FROMs resolved to. */
export interface Dependent {
  buildId: string;
  project: string;
  image: string;
  ref: string;
  commit: string;
  bases: BaseRecord[];
}

/** What the watcher needs from the service. */
export interface BaseWatchHost {
  dependents(): Dependent[];
  /** The newest build of this (project, image, ref), any phase. */
  newest(project: string, image: string, ref: string): Build | undefined;
  /** Queue a rebuild of `dep` because `base` moved `from` → `to`. */
  enqueueBaseChange(dep: Dependent, base: string, from: string, to: string): Build | undefined;
}

/** What a base looks like to `kiln bases ls` / `GET /api/v1/bases`. */
export interface WatchedBase {
  name: string;
  /** The registry's digest at the last successful check. */
  digest: string | null;
  checkedAt: string | null;
  /** The last check's error (backing off), if it failed. */
  warning: string | null;
  dependents: { project: string; image: string; ref: string; digest: string }[];
}

export interface BaseWatcherOptions {
  /** Poll interval (ms); 0 turns polling off (notifications still work). */
  intervalMs: number;
  /** The registry's current digest of a base (for the build platform). */
  lookup: (name: string) => Promise<string>;
  log?: (line: string) => void;
}

interface BaseState {
  digest: string | null;
  checkedAt: string | null;
  warning: string | null;
  errors: number;
  nextAt: number;
}

const localOnly = (name: string): boolean => name.startsWith('localhost/');

export class BaseWatcher {
  private readonly state = new Map<string, BaseState>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> = Promise.resolve();
  private stopped = false;

  constructor(
    private readonly host: BaseWatchHost,
    private readonly opts: BaseWatcherOptions,
  ) {}

  /** Start polling (first round after one jittered interval). */
  start(): void {
    if (this.opts.intervalMs <= 0) return;
    this.schedule(this.opts.intervalMs);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    const jitter = ms * (0.8 + Math.random() * 0.4);
    this.timer = setTimeout(() => {
      this.running = this.check().finally(() => this.schedule(this.opts.intervalMs));
    }, jitter);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running.catch(() => undefined);
  }

  /** Distinct watched bases → their dependents (local-only bootstrap images are not watched). */
  private watched(): Map<string, Dependent[]> {
    const out = new Map<string, Dependent[]>();
    for (const d of this.host.dependents()) {
      for (const b of d.bases) {
        if (localOnly(b.name)) continue;
        const list = out.get(b.name) ?? [];
        list.push(d);
        out.set(b.name, list);
      }
    }
    return out;
  }

  /**
   * Look up bases (all watched ones that are due, or exactly `names` — a notification) and queue the rebuilds their
   * moves call for. Returns the builds queued.
   */
  async check(names?: string[]): Promise<Build[]> {
    const watched = this.watched();
    const now = Date.now();
    const todo = names
      ? names.filter((n) => watched.has(n))
      : [...watched.keys()].filter((n) => (this.state.get(n)?.nextAt ?? 0) <= now);
    const queued: Build[] = [];
    // lookups run 8 at a time (one request per distinct base); rebuilds are queued as each answer arrives
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < todo.length) {
        const name = todo[next++] as string;
        queued.push(...(await this.checkOne(name, watched.get(name) ?? [])));
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, todo.length) }, worker));
    return queued;
  }

  /** Look one base up; queue the rebuilds of the dependents it moved under. */
  private async checkOne(name: string, deps: Dependent[]): Promise<Build[]> {
    const st = this.state.get(name) ?? { digest: null, checkedAt: null, warning: null, errors: 0, nextAt: 0 };
    this.state.set(name, st);
    let digest: string;
    try {
      digest = await this.opts.lookup(name);
    } catch (e) {
      st.errors++;
      st.warning = errorMessage(e).split('\n')[0] ?? 'lookup failed';
      // back off: 2, 4, 8 … intervals, at most 32
      st.nextAt = Date.now() + this.opts.intervalMs * Math.min(32, 2 ** st.errors);
      this.opts.log?.(
        `kiln serve: base ${name}: ${st.warning} (next check in ${Math.round((st.nextAt - Date.now()) / 1000)}s)`,
      );
      return [];
    }
    st.digest = digest;
    st.checkedAt = new Date().toISOString();
    st.warning = null;
    st.errors = 0;
    st.nextAt = 0;
    const queued: Build[] = [];
    for (const dep of deps) {
      const had = dep.bases.find((b) => b.name === name)?.digest;
      if (!had || had === digest) continue;
      const newest = this.host.newest(dep.project, dep.image, dep.ref);
      if (newest && newest.trigger.type === 'base-change' && newest.trigger.baseDigest === digest) continue;
      const b = this.host.enqueueBaseChange(dep, name, had, digest);
      if (b) queued.push(b);
    }
    return queued;
  }

  /** Watched bases with their state and dependents. */
  list(): WatchedBase[] {
    return [...this.watched()].map(([name, deps]) => {
      const st = this.state.get(name);
      return {
        name,
        digest: st?.digest ?? null,
        checkedAt: st?.checkedAt ?? null,
        warning: st?.warning ?? null,
        dependents: deps.map((d) => ({
          project: d.project,
          image: d.image,
          ref: d.ref,
          digest: d.bases.find((b) => b.name === name)?.digest ?? '',
        })),
      };
    });
  }
}

/** The reason recorded on a base-change build: `base NAME sha256:abcdef012345 → sha256:…`. */
export function baseChangeReason(name: string, from: string, to: string): string {
  const s = (d: string): string => d.slice(0, 'sha256:'.length + 12);
  return `base ${name} ${s(from)} → ${s(to)}`;
}
