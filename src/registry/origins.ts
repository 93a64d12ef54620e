/**
 * The blob origin index (`$KILN_HOME/origins/<algorithm>/<hex>`): for each blob digest, the registry repositories
 * where kiln last saw that blob exist (pushed, found present, mounted or pulled), most recent first, at most
 * MAX_ORIGINS. A push of a blob whose origin is otherwise unknown (a locally built layer) asks it for candidates in
 * the same registry, so that pushing a cached build to a new repository mounts blobs instead of uploading them.
 *
 * One small JSON file per digest, replaced by rename (temp file + rename), so two kiln processes at once never
 * leave a torn file: the worst case is a lost update. The index is only a hint: anything unreadable or malformed
 * reads as "no origins", and a failed write is ignored. Only `registry` (host[:port]) and `repository` are stored,
 * both checked against strict patterns, so no credential can end up in it.
 *
 * Beside it, per repository, the blobs kiln knows that repository has (`repositories/<sha256 of registry/name>`):
 * every blob of each manifest kiln pushed there and the registry accepted (it checks them all). A push reads that
 * one file instead of one file per blob to tell which blobs it need not even ask about (src/registry/push.ts).
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { kilnHome } from '../util/paths.js';
import type { BlobOrigin } from './remote.js';
import { writeFileAtomic } from '../util/atomic.js';

/** Origins kept per blob. */
export const MAX_ORIGINS = 8;

/** Blobs remembered per repository (the most recently pushed). */
export const MAX_KNOWN_PER_REPOSITORY = 4096;

const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
/** host, IPv4, [IPv6], optional port: no userinfo, no path. */
const REGISTRY = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;
/** distribution's repository name grammar (lower-case path components). */
const REPOSITORY = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;

function validOrigin(o: unknown): o is BlobOrigin {
  if (typeof o !== 'object' || o === null) return false;
  const { registry, repository } = o as Partial<Record<keyof BlobOrigin, unknown>>;
  return (
    typeof registry === 'string' &&
    typeof repository === 'string' &&
    registry.length <= 255 &&
    repository.length <= 255 &&
    REGISTRY.test(registry) &&
    REPOSITORY.test(repository)
  );
}

const same = (a: BlobOrigin, b: BlobOrigin): boolean => a.registry === b.registry && a.repository === b.repository;

export class OriginIndex {
  /** `dir`: the index directory (default: `$KILN_HOME/origins`, resolved when called). */
  constructor(readonly dir: string = join(kilnHome(), 'origins')) {}

  private file(digest: string): string | undefined {
    if (!DIGEST.test(digest)) return undefined;
    const [alg, hex] = digest.split(':') as [string, string];
    return join(this.dir, alg, hex);
  }

  /** Where `digest` is known to exist, most recent first; [] when unknown or the entry is unreadable. */
  async lookup(digest: string): Promise<BlobOrigin[]> {
    const f = this.file(digest);
    if (!f) return [];
    let parsed: unknown;
    try {
      parsed = JSON.parse(await readFile(f, 'utf8'));
    } catch {
      return [];
    }
    if (!Array.isArray(parsed)) return [];
    const out: BlobOrigin[] = [];
    for (const o of parsed) {
      if (!validOrigin(o) || out.some((x) => same(x, o))) continue;
      out.push({ registry: o.registry, repository: o.repository });
      if (out.length >= MAX_ORIGINS) break;
    }
    return out;
  }

  /** Repositories of `registry` other than `except` that have `digest`, most recent first. */
  async candidates(digest: string, registry: string, except: string): Promise<string[]> {
    return (await this.lookup(digest))
      .filter((o) => o.registry === registry && o.repository !== except)
      .map((o) => o.repository);
  }

  /** Note that `digest` exists at `origin` (moved to the front). Never throws. */
  async record(digest: string, origin: BlobOrigin): Promise<void> {
    await this.update(digest, origin, 'record');
  }

  /** Note that `digest` is not (or no longer) at `origin`. Never throws. */
  async forget(digest: string, origin: BlobOrigin): Promise<void> {
    await this.update(digest, origin, 'forget');
  }

  /** Record several blobs at one origin (e.g. everything a pulled manifest names). Never throws. */
  async recordAll(digests: Iterable<string | undefined>, origin: BlobOrigin): Promise<void> {
    const valid = [...new Set(digests)].filter((d): d is string => typeof d === 'string');
    await Promise.all(valid.map((d) => this.record(d, origin)));
  }

  private repositoryFile(at: BlobOrigin): string {
    const id = createHash('sha256').update(`${at.registry}/${at.repository}`).digest('hex');
    return join(this.dir, 'repositories', id);
  }

  /** The blobs `at` is known to have (the manifests kiln pushed there); empty when unknown or unreadable. */
  async known(at: BlobOrigin): Promise<Set<string>> {
    if (!validOrigin(at)) return new Set();
    try {
      const j = JSON.parse(await readFile(this.repositoryFile(at), 'utf8')) as Partial<BlobOrigin & { blobs: unknown }>;
      if (j.registry !== at.registry || j.repository !== at.repository || !Array.isArray(j.blobs)) return new Set();
      return new Set(j.blobs.filter((d): d is string => typeof d === 'string' && DIGEST.test(d)));
    } catch {
      return new Set();
    }
  }

  /**
   * Note that `at` has `add` (a manifest referencing them was accepted) and no longer has `remove`. Never throws;
   * two processes at once may lose one's update (a later push then asks the registry).
   */
  async updateKnown(at: BlobOrigin, add: Iterable<string>, remove: Iterable<string> = []): Promise<void> {
    if (!validOrigin(at)) return;
    try {
      const blobs = await this.known(at);
      for (const d of remove) blobs.delete(d);
      for (const d of add) {
        if (!DIGEST.test(d)) continue;
        blobs.delete(d); // most recent last
        blobs.add(d);
      }
      const list = [...blobs].slice(-MAX_KNOWN_PER_REPOSITORY);
      const f = this.repositoryFile(at);
      await mkdir(dirname(f), { recursive: true });
      const doc = { registry: at.registry, repository: at.repository, blobs: list };
      await writeFileAtomic(f, JSON.stringify(doc) + '\n', { mode: 0o644 });
    } catch {
      /* only a hint */
    }
  }

  /** Updates of one digest's entry in this process, chained: each reads what the previous one wrote. */
  private readonly queues = new Map<string, Promise<void>>();

  private update(digest: string, origin: BlobOrigin, how: 'record' | 'forget'): Promise<void> {
    const next = (this.queues.get(digest) ?? Promise.resolve()).then(() => this.apply(digest, origin, how));
    this.queues.set(digest, next);
    void next.then(() => {
      if (this.queues.get(digest) === next) this.queues.delete(digest);
    });
    return next;
  }

  private async apply(digest: string, origin: BlobOrigin, how: 'record' | 'forget'): Promise<void> {
    const f = this.file(digest);
    if (!f || !validOrigin(origin)) return;
    try {
      const old = await this.lookup(digest);
      if (how === 'record' ? old[0] && same(old[0], origin) : !old.some((o) => same(o, origin))) return;
      const rest = old.filter((o) => !same(o, origin));
      const list = how === 'record' ? [{ registry: origin.registry, repository: origin.repository }, ...rest] : rest;
      await mkdir(dirname(f), { recursive: true });
      await writeFileAtomic(f, JSON.stringify(list.slice(0, MAX_ORIGINS)) + '\n', { mode: 0o644 });
    } catch {
      /* only a hint: a failed write loses one update */
    }
  }
}

/** The index a registry operation should use: `opts.origins`, none when it is null, else `$KILN_HOME/origins`. */
export function originIndexFor(opts: { origins?: OriginIndex | null }): OriginIndex | undefined {
  if (opts.origins === null) return undefined;
  return opts.origins ?? new OriginIndex();
}
