/**
 * Safe operations inside a container root filesystem from the host side: resolving a container path to a host
 * path without ever leaving the root (symlinks are resolved component by component against the root, like
 * filepath-securejoin), creating directories (WORKDIR) and resolving USER names through the image's
 * /etc/passwd and /etc/group.
 */
import { lstat, mkdir, chown, readFile } from 'node:fs/promises';
import { posix } from 'node:path';
import { KilnError } from '../errors.js';
import { resolveInRoot } from '../util/inroot.js';

/**
 * The host path of container path `p` under `root`, with every symlink resolved inside the root (absolute link
 * targets are relative to the root, `..` never climbs above it). Missing components are kept as named.
 */
export async function secureJoin(root: string, p: string): Promise<string> {
  const resolved = await resolveInRoot(root, posix.normalize('/' + p), {
    onLoop: () => {
      throw new KilnError('ROOTFS_SYMLINK_LOOP', `too many symlinks resolving ${p}`);
    },
  });
  return resolved!;
}

/** `mkdir -p` of container path `p` under `root`, chowning created dirs to uid/gid. Returns true if it created any. */
export async function mkdirAllIn(root: string, p: string, uid = 0, gid = 0, mode = 0o755): Promise<boolean> {
  const parts = posix
    .normalize('/' + p)
    .split('/')
    .filter(Boolean);
  let created = false;
  let cur = '/';
  for (const part of parts) {
    cur = posix.join(cur, part);
    const host = await secureJoin(root, cur);
    try {
      const st = await lstat(host);
      if (!st.isDirectory()) {
        throw new KilnError('WORKDIR_NOT_DIR', `${cur} exists and is not a directory`);
      }
    } catch (e) {
      if (e instanceof KilnError) throw e;
      await mkdir(host, { mode });
      await chown(host, uid, gid);
      created = true;
    }
  }
  return created;
}

export interface ResolvedUser {
  uid: number;
  gid: number;
  /** Supplementary groups from /etc/group. */
  groups: number[];
  home: string;
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

async function readInRoot(root: string, p: string): Promise<string | undefined> {
  try {
    return await readFile(await secureJoin(root, p), 'utf8');
  } catch {
    return undefined;
  }
}

function parsePasswd(text: string | undefined): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of (text ?? '').split('\n')) {
    const f = line.split(':');
    if (f.length < 4) continue;
    out.push({ name: f[0] as string, uid: Number(f[2]), gid: Number(f[3]), home: f[5] ?? '/' });
  }
  return out;
}

function parseGroup(text: string | undefined): { name: string; gid: number; members: string[] }[] {
  const out: { name: string; gid: number; members: string[] }[] = [];
  for (const line of (text ?? '').split('\n')) {
    const f = line.split(':');
    if (f.length < 3) continue;
    out.push({ name: f[0] as string, gid: Number(f[2]), members: (f[3] ?? '').split(',').filter(Boolean) });
  }
  return out;
}

const NUM = /^\d+$/;

/**
 * Resolve USER (`name`, `uid`, `name:group`, `uid:gid`) against the root's /etc/passwd and /etc/group, as runc
 * does: numeric ids need no entry; a name without an entry is an error.
 */
export async function resolveUser(root: string, spec: string): Promise<ResolvedUser> {
  const s = spec === '' ? 'root' : spec;
  const [u, g] = s.split(':', 2) as [string, string | undefined];
  const passwd = parsePasswd(await readInRoot(root, '/etc/passwd'));
  let uid: number;
  let gid = 0;
  let home = '/';
  let name: string | undefined;
  const byName = passwd.find((e) => e.name === u);
  if (byName) {
    ({ uid, gid, home, name } = byName);
  } else if (NUM.test(u)) {
    uid = Number(u);
    const byId = passwd.find((e) => e.uid === uid);
    if (byId) ({ gid, home, name } = byId);
  } else if (u === 'root') {
    uid = 0;
  } else {
    throw new KilnError('USER_UNKNOWN', `unable to find user ${u}: no matching entries in passwd file`);
  }
  const groupsFile = parseGroup(await readInRoot(root, '/etc/group'));
  if (g !== undefined && g !== '') {
    const grp = groupsFile.find((e) => e.name === g);
    if (grp) gid = grp.gid;
    else if (NUM.test(g)) gid = Number(g);
    else throw new KilnError('GROUP_UNKNOWN', `unable to find group ${g}: no matching entries in group file`);
  }
  const groups =
    name === undefined ? [] : groupsFile.filter((e) => e.members.includes(name as string)).map((e) => e.gid);
  return { uid, gid, groups, home };
}
