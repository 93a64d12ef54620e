/**
 * Locating (or building) `kiln-restricted`, the static helper of the restricted isolation level, and checking that
 * this environment can run it.
 *
 * The helper is `KILN_RESTRICTED_HELPER` when set (a pre-built binary, e.g. baked into a builder image), else
 * `$KILN_HOME/bin/kiln-restricted-<sha of its source>`, compiled once from `src/sandbox/restricted/kiln-restricted.c`
 * with the host's C compiler (`cc -O2 -static`: the same binary also runs inside the build's root file system as
 * the RUN steps' shim, where no C library can be assumed). `scripts/build-restricted-helper.sh` does the same.
 */
import { createHash, randomBytes } from 'node:crypto';
import { access, chmod, constants, copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { dirname, join } from 'node:path';
import { KilnError } from '../../errors.js';
import { findUp } from '../../util/find-up.js';
import { runTool } from '../mount.js';
import { findTool } from '../userns.js';

export const HELPER_ENV = 'KILN_RESTRICTED_HELPER';

const SOURCE = join('src', 'sandbox', 'restricted', 'kiln-restricted.c');

/** The helper's C source in this checkout (found above src/, dist/ or dist/bundle/; an installed image has none). */
export function helperSource(): string {
  return findUp(SOURCE) ?? SOURCE;
}

async function executable(p: string): Promise<boolean> {
  try {
    await access(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The helper binary: `KILN_RESTRICTED_HELPER`, else the compiled copy in `$KILN_HOME/bin` (built now when missing).
 * Throws ISOLATION_UNAVAILABLE naming what is missing.
 */
export async function ensureHelper(kilnHome: string): Promise<string> {
  const given = process.env[HELPER_ENV];
  if (given) {
    if (await executable(given)) return given;
    throw new KilnError('ISOLATION_UNAVAILABLE', `isolation restricted: ${HELPER_ENV}=${given} is not executable`, {
      hint: 'point it at a kiln-restricted binary (scripts/build-restricted-helper.sh builds one)',
    });
  }
  const src = helperSource();
  let code: Buffer;
  try {
    code = await readFile(src);
  } catch {
    throw new KilnError('ISOLATION_UNAVAILABLE', 'isolation restricted: the kiln-restricted helper is missing', {
      hint: `set ${HELPER_ENV} to a kiln-restricted binary (built by scripts/build-restricted-helper.sh)`,
    });
  }
  const tag = createHash('sha256').update(code).update(process.arch).digest('hex').slice(0, 12);
  const bin = join(kilnHome, 'bin', `kiln-restricted-${tag}`);
  if (await executable(bin)) return bin;
  const cc = (await findTool('cc')) ?? (await findTool('gcc'));
  if (!cc) {
    throw new KilnError(
      'ISOLATION_UNAVAILABLE',
      'isolation restricted: the kiln-restricted helper is not built and no C compiler is available',
      {
        hint: `build it where a compiler is (scripts/build-restricted-helper.sh) and set ${HELPER_ENV}`,
      },
    );
  }
  await mkdir(dirname(bin), { recursive: true, mode: 0o755 });
  const tmp = `${bin}.${randomBytes(4).toString('hex')}.tmp`;
  const r = await runTool(cc, ['-O2', '-static', '-o', tmp, src]);
  if (r.code !== 0) {
    await rm(tmp, { force: true });
    const why = r.stderr.trim().split('\n').slice(-3).join(' ');
    throw new KilnError(
      'ISOLATION_UNAVAILABLE',
      `isolation restricted: building the kiln-restricted helper failed: ${why}`,
      {
        hint: "a static build needs the C library's static archive (Debian: libc6-dev)",
      },
    );
  }
  await rename(tmp, bin);
  return bin;
}

/** `KILN_PROOT`: the proot of the RUN steps, instead of `kiln-proot` (scripts/build-proot.sh) or `proot` on PATH. */
export const PROOT_ENV = 'KILN_PROOT';

/**
 * The proot RUN steps use: `KILN_PROOT`, else kiln's own build (`kiln-proot`, scripts/build-proot.sh: Debian's
 * 5.4 source with its seccomp acceleration and the marker patch, ~4× fewer ptrace stops per file a step writes),
 * else Debian's `proot`.
 */
export async function findProot(): Promise<string | undefined> {
  const given = process.env[PROOT_ENV];
  if (given) return (await executable(given)) ? given : undefined;
  return (await findTool('kiln-proot')) ?? (await findTool('proot'));
}

export interface RestrictedStatus {
  helper: string | undefined;
  proot: string | undefined;
  /** This proot leaves statx (and openat2, faccessat2, fchmodat2) untranslated: the helper maps them (Debian's 5.1). */
  prootBlind: boolean;
  /**
   * This proot marks the calls it has translated (kiln's build, `PROOT_MARK`): the steps run it in its seccomp mode
   * and the step's filter notifies only marked path calls (kiln-restricted.c, MARK).
   */
  prootMarks: boolean;
  /**
   * This proot (kiln's build) also moves the kernel's current directory on `chdir`: the steps' opens for writing
   * then go to the helper directly, proot never stops for them (kiln-restricted.c, DIRECT).
   */
  prootDirect: boolean;
  /** What is missing, one phrase each (empty: restricted works here). */
  problems: string[];
  hints: string[];
}

/**
 * Check the restricted level's requirements: the helper (built when needed), proot, seccomp user notification
 * with memory access to the supervised processes (probed by the helper; remembered per kernel in
 * `$KILN_HOME/restricted/probe-ok`), ptrace (proot runs `true`) and user extended attributes on `$KILN_HOME`.
 */
export async function restrictedStatus(kilnHome: string): Promise<RestrictedStatus> {
  const st: RestrictedStatus = {
    helper: undefined,
    proot: undefined,
    prootBlind: false,
    prootMarks: false,
    prootDirect: false,
    problems: [],
    hints: [],
  };
  if (process.arch !== 'x64' && process.arch !== 'arm64') {
    st.problems.push(`the ${process.arch} architecture is not supported`);
    return st;
  }
  try {
    st.helper = await ensureHelper(kilnHome);
  } catch (e) {
    st.problems.push((e as Error).message.replace(/^isolation restricted: /, ''));
    if (e instanceof KilnError && e.hint) st.hints.push(e.hint);
    return st;
  }
  st.proot = await findProot();
  if (!st.proot) {
    st.problems.push(
      process.env[PROOT_ENV] ? `${PROOT_ENV}=${process.env[PROOT_ENV]} is not executable` : 'proot is not installed',
    );
    st.hints.push('apt-get install proot, or scripts/build-proot.sh for the faster build');
  }
  const marker = join(kilnHome, 'restricted', 'probe-ok');
  // the proot's size and time too: scripts/build-proot.sh replaces kiln-proot in place
  const ps = st.proot ? await stat(st.proot).catch(() => undefined) : undefined;
  const pid = ps ? ` ${ps.size}@${Math.floor(ps.mtimeMs)}` : '';
  const id = `${release()} ${st.helper} ${st.proot ?? ''}${pid} uid=${process.getuid?.() ?? '?'}\n`;
  const known = await readFile(marker, 'utf8').catch(() => '');
  const flags = known.startsWith(id) ? known.slice(id.length).split('\n') : undefined;
  if (flags && flags.every((f) => f === '' || f === 'blind' || f === 'marks' || f === 'direct')) {
    st.prootBlind = flags.includes('blind');
    st.prootMarks = flags.includes('marks');
    st.prootDirect = st.prootMarks && flags.includes('direct');
  } else {
    const p = await runTool(st.helper, ['probe']);
    if (p.code !== 0) {
      st.problems.push(p.stdout.trim().replace(/^missing:? ?/, '') || `the helper's probe failed: ${p.stderr.trim()}`);
      st.hints.push(
        'needs Linux >= 5.14 with seccomp user notification, and process_vm_writev or /proc/PID/mem writes allowed',
      );
    } else {
      const probeDir = join(kilnHome, 'restricted');
      await mkdir(probeDir, { recursive: true });
      const f = join(probeDir, `xattr-probe-${process.pid}`);
      await writeFile(f, '');
      const x = await runTool('setfattr', ['-n', 'user.kiln.probe', '-v', '1', f]);
      await rm(f, { force: true });
      if (x.code !== 0 && /spawn setfattr ENOENT/.test(x.stderr)) {
        st.problems.push('setfattr is not installed (it probes user extended attributes on KILN_HOME)');
        st.hints.push('install the attr package (Debian: apt-get install attr)');
      } else if (x.code !== 0) {
        st.problems.push(`the file system of ${kilnHome} has no user extended attributes (${x.stderr.trim()})`);
        st.hints.push('put KILN_HOME on ext4, xfs, btrfs or tmpfs (Linux >= 6.6)');
      } else if (st.proot) {
        const t = await runTool(st.proot, ['-r', '/', '-w', '/', 'true']);
        if (t.code !== 0) {
          st.problems.push(
            `proot cannot trace processes here (ptrace refused: ${t.stderr.trim().split('\n')[0] ?? ''})`,
          );
          st.hints.push(
            'the seccomp profile must allow ptrace (containerd and Docker RuntimeDefault do on Linux >= 4.8; CRI-O needs CAP_SYS_PTRACE or a Localhost profile)',
          );
        } else {
          const m = await runTool(st.helper, ['markprobe', st.proot]);
          // "marked", or "marked cwd": kiln's proot that also moves the kernel's current directory
          const said = m.stdout.trim().split(' ');
          st.prootMarks = said[0] === 'marked';
          st.prootDirect = st.prootMarks && said.includes('cwd');
          st.prootBlind = !st.prootMarks && (await prootStatxBlind(st.proot, st.helper, kilnHome));
          const line =
            (st.prootBlind ? 'blind\n' : '') + (st.prootMarks ? 'marks\n' : '') + (st.prootDirect ? 'direct\n' : '');
          await writeFile(marker, id + line).catch(() => undefined);
        }
      }
    }
  }
  return st;
}

/**
 * Whether proot leaves statx untranslated (Debian's proot 5.1 predates it): the static helper, run by proot in a
 * root holding only itself and a marker, looks the marker up with statx.
 */
async function prootStatxBlind(proot: string, helper: string, kilnHome: string): Promise<boolean> {
  const dir = join(kilnHome, 'restricted', `statx-probe-${process.pid}`);
  try {
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'kiln-statx-probe'), '');
    await copyFile(helper, join(dir, 'helper'));
    await chmod(join(dir, 'helper'), 0o755);
    const r = await runTool(proot, ['-r', dir, '-w', '/', '/helper', 'statx', '/kiln-statx-probe']);
    return !r.stdout.includes('found');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Set by enterRestricted for the build it supervises (0/1): the probe runs outside the helper's filter. */
export const PROOT_BLIND_ENV = 'KILN_RESTRICTED_PROOT_BLIND';

/** Whether the proot of this build leaves statx and friends untranslated (from enterRestricted). */
export function prootIsBlind(): boolean {
  return process.env[PROOT_BLIND_ENV] === '1';
}

/** Set by enterRestricted: the proot restrictedStatus chose and probed, and whether it marks (0/1). */
export const PROOT_PATH_ENV = 'KILN_RESTRICTED_PROOT';
export const PROOT_MARKS_ENV = 'KILN_RESTRICTED_PROOT_MARKS';
/** Set by enterRestricted: whether that proot moves the kernel's current directory too (0/1, see prootDirect). */
export const PROOT_DIRECT_ENV = 'KILN_RESTRICTED_PROOT_DIRECT';

/** Whether the proot of this build marks the calls it translated (from enterRestricted). */
export function prootMarks(): boolean {
  return process.env[PROOT_MARKS_ENV] === '1';
}

/**
 * Whether the steps' opens for writing go to the helper directly (from enterRestricted: kiln's proot whose `chdir`
 * moves the kernel's current directory, so the helper can resolve relative paths; kiln-restricted.c, DIRECT).
 */
export function prootDirect(): boolean {
  return prootMarks() && process.env[PROOT_DIRECT_ENV] === '1';
}
