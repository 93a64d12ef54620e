/**
 * An informer: an in-memory copy of one collection (list, then watch from the list's resourceVersion), so that a
 * controller reads the objects it reconciles from memory instead of asking the API server on every event. Why
 * here and not a library: kiln's client is its own (client.ts), and what a controller of 1,000 runs needs is
 * small — a map kept current, pages for the first list, a relist when a watch expires (410 Gone), backoff on
 * errors, and `put()` for the answers of the controller's own writes (so a reconcile that follows its write sees
 * it even before the watch event arrives).
 *
 * Objects are kept trimmed (`trim`): `managedFields`, the pod spec and whatever else the controller never reads
 * would otherwise make most of the controller's memory.
 */
import { KilnError, errorMessage } from '../errors.js';
import type { KubeClient, KubeObject, ResourceRef, WatchEvent } from './client.js';

export interface InformerOptions<T extends KubeObject> {
  client: KubeClient;
  ref: ResourceRef;
  /** Label/field selectors of the list and watch. */
  query?: Record<string, string>;
  /** What of an object to keep (default: everything but managedFields). */
  trim?: (o: T) => T;
  /** An object was added, changed or deleted (`deleted`: it is gone from the cache). */
  onChange: (o: T, deleted: boolean) => void;
  /** Objects per list page (default 500). */
  pageSize?: number;
  log: (line: string) => void;
}

/** `a` is older than `b` (resourceVersions are etcd revisions in practice; anything else counts as newer). */
function older(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined || !/^\d+$/.test(a) || !/^\d+$/.test(b)) return false;
  return a.length !== b.length ? a.length < b.length : a < b;
}

/** The default trim: the object without `metadata.managedFields`. */
export function withoutManagedFields<T extends KubeObject>(o: T): T {
  if (!('managedFields' in o.metadata)) return o;
  const { managedFields: _drop, ...metadata } = o.metadata as KubeObject['metadata'] & { managedFields?: unknown };
  return { ...o, metadata };
}

export class Informer<T extends KubeObject> {
  private readonly items = new Map<string, T>();
  private readonly trim: (o: T) => T;
  private readyResolve!: () => void;
  /** Resolves once the first full list is in the cache. */
  readonly ready: Promise<void> = new Promise((r) => (this.readyResolve = r));

  constructor(private readonly o: InformerOptions<T>) {
    this.trim = o.trim ?? withoutManagedFields;
  }

  get(name: string): T | undefined {
    return this.items.get(name);
  }

  get size(): number {
    return this.items.size;
  }

  values(): IterableIterator<T> {
    return this.items.values();
  }

  /** Record the answer of a write (ignored when the cache already holds a newer version). */
  put(obj: T): void {
    const name = obj.metadata.name;
    const cur = this.items.get(name);
    if (cur && older(obj.metadata.resourceVersion, cur.metadata.resourceVersion)) return;
    this.items.set(name, this.trim(obj));
  }

  /** Forget an object the controller deleted (the watch's DELETED event does the same later). */
  remove(name: string): void {
    this.items.delete(name);
  }

  private apply(ev: WatchEvent<T>): void {
    if (ev.type === 'ERROR' || ev.type === 'BOOKMARK') return;
    const obj = ev.object;
    const name = obj.metadata.name;
    if (ev.type === 'DELETED') {
      this.items.delete(name);
      this.o.onChange(obj, true);
      return;
    }
    const cur = this.items.get(name);
    if (cur && older(obj.metadata.resourceVersion, cur.metadata.resourceVersion)) return;
    const t = this.trim(obj);
    this.items.set(name, t);
    this.o.onChange(t, false);
  }

  /** A full list in pages; replaces the cache (objects gone meanwhile are reported deleted). */
  private async relist(): Promise<string | undefined> {
    const fresh = new Map<string, T>();
    let cont: string | undefined;
    let rv: string | undefined;
    do {
      const page = await this.o.client.list<T>(this.o.ref, {
        ...this.o.query,
        limit: this.o.pageSize ?? 500,
        ...(cont ? { continue: cont } : {}),
      });
      for (const it of page.items) fresh.set(it.metadata.name, this.trim(it));
      rv = page.metadata.resourceVersion;
      cont = page.metadata.continue || undefined;
    } while (cont);
    const gone = [...this.items.values()].filter((o) => !fresh.has(o.metadata.name));
    this.items.clear();
    for (const [k, v] of fresh) this.items.set(k, v);
    for (const o of gone) this.o.onChange(o, true);
    for (const o of fresh.values()) this.o.onChange(o, false);
    return rv;
  }

  /** List and watch until `signal` aborts; relist on 410 Gone; retry with backoff on errors. */
  async run(signal: AbortSignal): Promise<void> {
    let delay = 500;
    let rv: string | undefined;
    while (!signal.aborted) {
      try {
        if (rv === undefined) {
          rv = await this.relist();
          this.readyResolve();
        }
        rv = await this.o.client.watch<T>(this.o.ref, rv, (ev) => this.apply(ev), signal, this.o.query ?? {});
        delay = 500;
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof KilnError && e.code === 'K8S_GONE') {
          rv = undefined;
          continue;
        }
        this.o.log(`kiln: watching ${this.o.ref.resource}: ${errorMessage(e)} (retrying in ${delay} ms)`);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 30_000);
      }
    }
  }
}
