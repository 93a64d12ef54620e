/**
 * Symlink-safe resolution of a path inside a root directory, with chroot semantics (like filepath-securejoin): the
 * path is walked component by component; a symlink is followed as if `root` were `/` (an absolute target starts
 * again at `root`, `..` never climbs above it), so the result is always `root` joined with components that stay
 * inside it. One walk serves both an async (`resolveInRoot`) and a sync (`resolveInRootSync`) file system.
 *
 * Callers choose what a missing component, a non-directory and a symlink loop mean for them:
 * - rootfs `secureJoin` (the default): missing components are kept as named, a loop is an error;
 * - layer extraction: missing parent directories are created, every component must be a directory;
 * - .dockerignore lookup: anything missing, a non-directory parent or a loop means "not found".
 */
import { chmodSync, lstatSync, mkdirSync, readlinkSync, type Stats } from 'node:fs';
import { chmod, lstat, mkdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';

/** Symlinks followed in one walk before it counts as a loop (by default). */
export const MAX_SYMLINKS = 255;

export interface InRootOptions {
  /** Symlinks followed at most; one more calls onLoop. Default MAX_SYMLINKS. */
  maxLinks?: number;
  /**
   * A component that could not be looked up (lstat failed with `err`; `rel` is its path below the root):
   * 'keep' it as named and go on, 'stop' (the result is undefined), 'create' it as a directory (mode 0755) and go
   * on, or throw. Default: 'keep'.
   */
  onMissing?: (err: NodeJS.ErrnoException, rel: string) => 'keep' | 'stop' | 'create';
  /** An existing non-directory at `rel` (`last`: nothing follows it): 'keep', 'stop', or throw. Default: 'keep'. */
  onNotDir?: (rel: string, last: boolean) => 'keep' | 'stop';
  /** More than maxLinks symlinks (at `rel`): 'stop', or throw. Default: throws an Error. */
  onLoop?: (rel: string) => 'stop';
  /** Told about each directory made by onMissing's 'create'. */
  onCreate?: (rel: string) => void;
}

type Op = { op: 'lstat' | 'readlink' | 'mkdir'; path: string };

function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

/** The walk itself: yields the file system operations it needs and receives their results (or their errors). */
function* walk(root: string, path: string, o: InRootOptions): Generator<Op, string | undefined, unknown> {
  const maxLinks = o.maxLinks ?? MAX_SYMLINKS;
  const todo = components(path);
  const cur: string[] = [];
  let links = 0;
  while (todo.length > 0) {
    const part = todo.shift()!;
    if (part === '..') {
      cur.pop();
      continue;
    }
    const host = join(root, ...cur, part);
    const rel = [...cur, part].join('/');
    let st: Stats;
    try {
      st = (yield { op: 'lstat', path: host }) as Stats;
    } catch (e) {
      const verdict = o.onMissing ? o.onMissing(e as NodeJS.ErrnoException, rel) : 'keep';
      if (verdict === 'stop') return undefined;
      if (verdict === 'create') yield { op: 'mkdir', path: host };
      cur.push(part);
      if (verdict === 'create') o.onCreate?.(rel);
      continue;
    }
    if (st.isSymbolicLink()) {
      if (++links > maxLinks) {
        if (!o.onLoop) throw new Error(`too many levels of symbolic links at "${rel}"`);
        if (o.onLoop(rel) === 'stop') return undefined;
      }
      const target = (yield { op: 'readlink', path: host }) as string;
      if (target.startsWith('/')) cur.length = 0;
      todo.unshift(...components(target));
      continue;
    }
    if (!st.isDirectory() && o.onNotDir?.(rel, todo.length === 0) === 'stop') return undefined;
    cur.push(part);
  }
  return join(root, ...cur);
}

/** The walk's file system operations, asynchronous and synchronous. */
const ASYNC: Record<Op['op'], (p: string) => Promise<unknown>> = {
  lstat: (p) => lstat(p),
  readlink: (p) => readlink(p),
  mkdir: async (p) => {
    await mkdir(p, { mode: 0o755 });
    await chmod(p, 0o755);
  },
};
const SYNC: Record<Op['op'], (p: string) => unknown> = {
  lstat: (p) => lstatSync(p),
  readlink: (p) => readlinkSync(p),
  mkdir: (p) => {
    mkdirSync(p, { mode: 0o755 });
    chmodSync(p, 0o755);
  },
};

/**
 * The host path of `path` (slash-separated, relative to `root` even when absolute) resolved inside `root` (see the
 * file comment), or undefined when a hook said 'stop'.
 */
export async function resolveInRoot(root: string, path: string, opts: InRootOptions = {}): Promise<string | undefined> {
  const w = walk(root, path, opts);
  let step = w.next();
  while (!step.done) {
    const { op, path: p } = step.value;
    step = await ASYNC[op](p).then(
      (result) => w.next(result),
      (e: unknown) => w.throw(e),
    );
  }
  return step.value;
}

/** resolveInRoot with synchronous file system calls. */
export function resolveInRootSync(root: string, path: string, opts: InRootOptions = {}): string | undefined {
  const w = walk(root, path, opts);
  let step = w.next();
  while (!step.done) {
    const { op, path: p } = step.value;
    let result: unknown;
    try {
      result = SYNC[op](p);
    } catch (e) {
      step = w.throw(e);
      continue;
    }
    step = w.next(result);
  }
  return step.value;
}
