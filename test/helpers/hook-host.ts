/**
 * A HookHost for the receivers' unit tests: a real Store (SQLite in a temp dir) with in-memory git — `resolve`,
 * `changedPaths`, `commitMessage` and `lsRemote` answer from maps the test fills (or fail as it says) — and an
 * `enqueueAutomatic` that applies the images' path filters and records each call. The real service, git and
 * registry are tested end to end in test/integration/service-hooks.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KilnError } from '../../src/errors.js';
import { pathsConcern } from '../../src/service/config/filters.js';
import type { HookHost } from '../../src/service/hooks/pipeline.js';
import type { Build, Trigger } from '../../src/service/model.js';
import { Store } from '../../src/service/store/store.js';

export interface FakeHookHost extends HookHost {
  /** Commits the fake git knows (resolve fails with GIT_COMMIT_NOT_FOUND for others). */
  commits: Set<string>;
  /** Branch/tag name → commit, for resolve by ref and lsRemote. */
  refs: Map<string, string>;
  /** `from..to` → changed paths. */
  diffs: Map<string, string[]>;
  messages: Map<string, string>;
  /** When set, resolve and lsRemote throw it. */
  gitError: KilnError | undefined;
  enqueued: { project: string; change: { ref: string; commit: string; changedPaths?: string[] }; trigger: Trigger }[];
  resolved: { commit?: string; ref?: string }[];
  /** Resolve `closing`. */
  close(): void;
  /** Close the store and remove the temp dir. */
  dispose(): void;
}

export function fakeHookHost(): FakeHookHost {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-hook-host-'));
  const store = Store.open(join(dir, 'kiln.db'));
  let close!: () => void;
  const closing = new Promise<void>((r) => (close = r));
  const host: FakeHookHost = {
    store,
    closing,
    commits: new Set(),
    refs: new Map(),
    diffs: new Map(),
    messages: new Map(),
    gitError: undefined,
    enqueued: [],
    resolved: [],
    close,
    mirrors: {
      async resolve(_p, req) {
        host.resolved.push({ ...req });
        if (host.gitError) throw host.gitError;
        if (req.ref !== undefined) {
          const full = req.ref.startsWith('refs/') ? req.ref : `refs/heads/${req.ref}`;
          const c = host.refs.get(full);
          if (c === undefined) throw new KilnError('GIT_REF_NOT_FOUND', `ref "${req.ref}" not found`);
          return { ref: full, commit: c };
        }
        if (req.commit === undefined || !host.commits.has(req.commit)) {
          throw new KilnError('GIT_COMMIT_NOT_FOUND', `commit "${req.commit ?? ''}" not found`);
        }
        return { ref: '', commit: req.commit };
      },
      async changedPaths(_p, from, to) {
        return host.diffs.get(`${from}..${to}`);
      },
      async commitMessage(_p, commit) {
        return host.messages.get(commit);
      },
      async lsRemote() {
        if (host.gitError) throw host.gitError;
        return new Map(host.refs);
      },
    },
    enqueueAutomatic(project, change, trigger): Build[] {
      host.enqueued.push({ project, change, trigger });
      const p = store.getProject(project);
      if (p === undefined) throw new KilnError('NOT_FOUND', `project '${project}' not found`);
      const images = p.images.filter((i) => pathsConcern(i.paths, change.changedPaths));
      return store.enqueue(
        images.map((i) => ({
          project,
          image: i.name,
          ref: change.ref,
          commit: change.commit,
          trigger,
          ...(change.changedPaths ? { changedPaths: change.changedPaths } : {}),
        })),
      ).builds;
    },
    dispose() {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return host;
}
