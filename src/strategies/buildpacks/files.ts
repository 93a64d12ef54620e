/**
 * File helpers of the buildpacks platform: copy a tree with new owners (the app dir and buildpack dirs planted into
 * the build's upper dir), read a text file inside a root without following a symlink out of it, and list an env
 * directory. Kept apart from build.ts so the orchestration reads as the spec's phases.
 */
import { chmod, copyFile, lchown, lstat, mkdir, readFile, readdir, readlink, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { secureJoin } from '../../engine/rootfs.js';

/**
 * Copy `src` into `dst` (created) with every entry owned by `uid:gid`, modes kept, symlinks copied as links (never
 * followed). Devices, sockets and fifos are skipped: an app dir has none that matter.
 */
export async function copyTreeOwned(src: string, dst: string, uid: number, gid: number): Promise<void> {
  const st = await lstat(src);
  await mkdir(dst, { recursive: true });
  await chmod(dst, st.mode & 0o7777);
  await lchown(dst, uid, gid);
  for (const e of await readdir(src, { withFileTypes: true })) {
    const s = join(src, e.name);
    const d = join(dst, e.name);
    if (e.isDirectory()) await copyTreeOwned(s, d, uid, gid);
    else if (e.isSymbolicLink()) {
      await symlink(await readlink(s), d);
      await lchown(d, uid, gid);
    } else if (e.isFile()) {
      await copyFile(s, d);
      await chmod(d, (await lstat(s)).mode & 0o7777);
      await lchown(d, uid, gid);
    }
  }
}

/** A file's text inside `root` (symlinks resolved within it), or undefined when it does not exist. */
export async function readInRoot(root: string, p: string): Promise<string | undefined> {
  try {
    return await readFile(await secureJoin(root, p), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') {
      return undefined;
    }
    throw e;
  }
}

/** Names in a dir (undefined when it is not there). */
export async function listDir(dir: string): Promise<string[] | undefined> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return undefined;
  }
}

/** The regular files of an env dir (`env/`, `env.build/`, …) with their contents; subdirs are skipped. */
export async function envFiles(dir: string): Promise<{ name: string; content: string }[]> {
  const out: { name: string; content: string }[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (e.isFile()) out.push({ name: e.name, content: await readFile(join(dir, e.name), 'utf8') });
  }
  return out;
}

/** Whether `p` is a directory (not following a final symlink). */
export async function isDir(p: string): Promise<boolean> {
  try {
    return (await lstat(p)).isDirectory();
  } catch {
    return false;
  }
}
