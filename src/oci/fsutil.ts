/**
 * Destination paths for the archive and layout writers: create parent directories without Node 20's
 * `mkdir({recursive: true})` pitfalls (it spins forever when mkdir(2) answers ENOENT for a path whose parent
 * exists, e.g. under /proc, and reports a file in the way as a bare EEXIST), and turn the file system's refusal
 * into one clear KilnError naming the destination.
 */
import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { KilnError } from '../errors.js';

const REASONS: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on device',
  EDQUOT: 'disk quota exceeded',
  ENOTDIR: 'a parent is not a directory',
  EEXIST: 'a parent is not a directory',
  EISDIR: 'it is a directory',
  ENOENT: 'the parent directory cannot be created',
  ENAMETOOLONG: 'name too long',
  ELOOP: 'too many symbolic links',
};

function errno(e: unknown): { code: string; path?: string } | undefined {
  if (e instanceof KilnError || !(e instanceof Error)) return undefined;
  const x = e as NodeJS.ErrnoException;
  return typeof x.code === 'string' ? { code: x.code, ...(x.path ? { path: x.path } : {}) } : undefined;
}

/**
 * `e` as a KilnError('OUTPUT_UNWRITABLE') when it is a file system error about `dest` or a path on its way
 * (parents, or temp files next to it); any other error is returned unchanged.
 */
export function destinationError(e: unknown, dest: string, what: string): unknown {
  const n = errno(e);
  if (!n || !(n.code in REASONS)) return e;
  const abs = resolve(dest);
  const dir = dirname(abs);
  if (n.path !== undefined) {
    const p = resolve(n.path);
    const related = abs.startsWith(p + '/') || p === abs || dirname(p) === dir || p === '/';
    if (!related) return e;
  }
  return new KilnError('OUTPUT_UNWRITABLE', `cannot write ${what} ${dest}: ${REASONS[n.code]}`, {
    hint: 'choose a destination in a writable directory',
    cause: e,
  });
}

/** mkdir -p `dir`; a clear KilnError (naming `dest`, the file being written) when it cannot be done. */
export async function ensureDir(dir: string, dest: string, what: string): Promise<void> {
  const fail = (code: string, path: string): never => {
    const err = Object.assign(new Error(`${code}: ${path}`), { code, path });
    throw destinationError(err, dest, what);
  };
  const make = async (d: string): Promise<void> => {
    try {
      await mkdir(d);
      return;
    } catch (e) {
      const n = errno(e);
      if (!n) throw e;
      if (n.code === 'EEXIST') {
        const st = await stat(d).catch(() => undefined);
        if (st?.isDirectory()) return;
        fail('ENOTDIR', d);
      }
      if (n.code !== 'ENOENT') fail(n.code, d);
    }
    const parent = dirname(d);
    if (parent === d) fail('ENOENT', d);
    await make(parent);
    try {
      await mkdir(d);
    } catch (e) {
      const n = errno(e);
      if (!n) throw e;
      if (n.code === 'EEXIST' && (await stat(d).catch(() => undefined))?.isDirectory()) return;
      fail(n.code, d);
    }
  };
  await make(resolve(dir));
}

/** Before writing a file at `dest`: it must not be a directory, and its parent must exist or be creatable. */
export async function prepareFileDest(dest: string, what: string): Promise<void> {
  const st = await stat(dest).catch(() => undefined);
  if (st?.isDirectory()) {
    throw new KilnError('OUTPUT_UNWRITABLE', `cannot write ${what} ${dest}: it is a directory`, {
      hint: 'give a file path (the directory must exist or be creatable)',
    });
  }
  await ensureDir(dirname(dest), dest, what);
}
