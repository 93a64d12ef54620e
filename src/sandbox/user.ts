/**
 * USER resolution for RUN as BuildKit does it — verified against the project's reference builder (current BuildKit
 * with runc; differential cases 17 and 87):
 * - empty (no USER) → 0:0 without supplementary groups from /etc/group;
 * - "uid:gid" with both numeric (or "root") is taken as is, without reading /etc files, no supplementary groups
 *   from /etc/group;
 * - otherwise the user is looked up in the root's /etc/passwd (moby/sys/user GetExecUser: a numeric user is
 *   always matched as a UID; a numeric user without an entry is allowed, a name without one is an error), and
 *   the group in /etc/group (numeric → GID; a numeric group without entry is allowed). Supplementary groups are
 *   the groups that list the user by name — only when no group was given explicitly;
 * - the process's groups are those supplementary groups plus the primary gid when they lack it (containerd's
 *   WithUIDGID → ensureAdditionalGids, which current BuildKit uses; BuildKit v0.8 passed the list alone), in
 *   ascending order as the kernel leaves them under runc, so `id` in a RUN step lists them as `docker build` does.
 * HOME is the passwd home of the user (runc sets it when the env has none), "/" when there is no entry.
 */
import { open } from 'node:fs/promises';
import { secureJoin } from '../engine/rootfs.js';
import { KilnError } from '../errors.js';

export interface ExecUser {
  uid: number;
  gid: number;
  /** setgroups() list, ascending: the supplementary groups from /etc/group and the primary gid. */
  additionalGids: number[];
  home: string;
}

const MAX_USER_FILE = 10 << 20;

async function readUserFile(root: string, p: string): Promise<string | undefined> {
  let fh;
  try {
    fh = await open(await secureJoin(root, p), 'r');
  } catch {
    return undefined;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return undefined;
    if (st.size > MAX_USER_FILE) {
      throw new KilnError('USER_FILE_TOO_LARGE', `${p} exceeds ${MAX_USER_FILE} bytes`);
    }
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

function parseId(s: string): number | undefined {
  if (s === 'root') return 0;
  if (!/^\d+$/.test(s)) return undefined;
  const n = Number(s);
  return n <= 0xffffffff ? n : undefined;
}

/** Numeric as Go's strconv.Atoi: optional sign, digits. Negative values are rejected like moby/sys/user. */
function parseNumeric(s: string): { n: number; numeric: boolean } {
  if (s === '' || !/^[+-]?\d+$/.test(s)) return { n: 0, numeric: false };
  const n = Number(s);
  if (n < 0) throw new KilnError('USER_INVALID', `negative id ${s} is not allowed`);
  return { n, numeric: true };
}

interface PasswdLine {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

interface GroupLine {
  name: string;
  gid: number;
  list: string[];
}

function lines(text: string): string[][] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => l.split(':'));
}

function parsePasswd(text: string): PasswdLine[] {
  return lines(text).map((f) => ({
    name: f[0] ?? '',
    uid: Number.parseInt(f[2] ?? '', 10) || 0,
    gid: Number.parseInt(f[3] ?? '', 10) || 0,
    home: f[5] ?? '',
  }));
}

function parseGroup(text: string): GroupLine[] {
  return lines(text).map((f) => ({
    name: f[0] ?? '',
    gid: Number.parseInt(f[2] ?? '', 10) || 0,
    list: (f[3] ?? '').split(',').filter(Boolean),
  }));
}

/** Resolve `spec` (`name|uid[:group|gid]`, empty = root) against `root`'s /etc/passwd and /etc/group. */
export async function resolveExecUser(root: string, spec: string): Promise<ExecUser> {
  const passwdText = await readUserFile(root, '/etc/passwd');
  const homeOf = (uid: number) => (passwdText ? parsePasswd(passwdText).find((u) => u.uid === uid)?.home : undefined);
  if (spec === '') return withPrimary({ uid: 0, gid: 0, additionalGids: [], home: homeOf(0) || '/' });
  // Fast path: both ids numeric.
  const colon = spec.indexOf(':');
  if (colon >= 0) {
    const uid = parseId(spec.slice(0, colon));
    const gid = parseId(spec.slice(colon + 1));
    if (uid !== undefined && gid !== undefined) {
      return withPrimary({ uid, gid, additionalGids: [], home: homeOf(uid) || '/' });
    }
  }
  return withPrimary(await lookup(root, spec, passwdText));
}

/**
 * The primary gid added to the supplementary groups unless already there (containerd's ensureAdditionalGids), in
 * ascending order: under runc the kernel's setgroups() sorts the list by kernel gid, which is the gid itself for a
 * root BuildKit, so `id` in a RUN lists them ascending; kiln's rootless executor must show the same order whatever
 * its id mapping does.
 */
function withPrimary(u: ExecUser): ExecUser {
  const all = u.additionalGids.includes(u.gid) ? u.additionalGids : [u.gid, ...u.additionalGids];
  u.additionalGids = [...new Set(all)].sort((a, b) => a - b);
  return u;
}

async function lookup(root: string, userSpec: string, passwdText: string | undefined): Promise<ExecUser> {
  const colon = userSpec.indexOf(':');
  const userArg = colon >= 0 ? userSpec.slice(0, colon) : userSpec;
  const groupArg = colon >= 0 ? userSpec.slice(colon + 1) : '';
  const u = parseNumeric(userArg);
  const g = parseNumeric(groupArg);
  let uid = 0;
  let gid = 0;
  let home = '/';
  let matched: string | undefined;
  const users = passwdText === undefined ? [] : parsePasswd(passwdText);
  const hit = users.find((e) => (u.numeric ? e.uid === u.n : e.name === userArg));
  if (hit) {
    matched = hit.name;
    uid = hit.uid;
    gid = hit.gid;
    home = hit.home || '/';
  } else if (userArg !== '') {
    if (!u.numeric) {
      throw new KilnError('USER_UNKNOWN', `unable to find user ${userArg}: no matching entries in passwd file`);
    }
    uid = u.n;
  }
  let sgids: number[] = [];
  if (groupArg !== '' || matched !== undefined) {
    const groupText = await readUserFile(root, '/etc/group');
    const groups = groupText === undefined ? [] : parseGroup(groupText);
    const found = groups.filter((e) => {
      if (groupArg === '') return matched !== undefined && e.list.includes(matched);
      return g.numeric ? e.gid === g.n : e.name === groupArg;
    });
    if (groupArg !== '') {
      if (found.length > 0) gid = (found[0] as GroupLine).gid;
      else if (g.numeric) gid = g.n;
      else throw new KilnError('GROUP_UNKNOWN', `unable to find group ${groupArg}: no matching entries in group file`);
    } else {
      sgids = found.map((e) => e.gid);
    }
  }
  return { uid, gid, additionalGids: sgids, home };
}
