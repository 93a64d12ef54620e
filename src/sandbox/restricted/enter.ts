/**
 * Entering the restricted isolation level: like `enterBuildNamespace` for userns, the CLI re-executes itself once,
 * for the whole build, this time under `kiln-restricted supervise` (the helper's seccomp filter answers the
 * process's file-ownership and identity system calls; see kiln-restricted.c). Inside, kiln sees itself as root
 * (getuid() = 0), so layer extraction, COPY --chown and the layer writer run unchanged; RUN steps go through
 * RestrictedExecutor and snapshots through RestrictedSnapshotter.
 */
import { spawn } from 'node:child_process';
import { KilnError } from '../../errors.js';
import { captureRestrictedFd } from './client.js';
import { PROOT_BLIND_ENV, PROOT_DIRECT_ENV, PROOT_MARKS_ENV, PROOT_PATH_ENV, restrictedStatus } from './helper.js';

const RELAYED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** Throw one clear ISOLATION_UNAVAILABLE line when the restricted level cannot work here; else what it found. */
export async function assertRestrictedAvailable(kilnHome: string): Promise<{
  helper: string;
  proot: string | undefined;
  prootBlind: boolean;
  prootMarks: boolean;
  prootDirect: boolean;
}> {
  const st = await restrictedStatus(kilnHome);
  if (st.problems.length > 0 || !st.helper) {
    throw new KilnError(
      'ISOLATION_UNAVAILABLE',
      `isolation restricted is not available here: ${st.problems.join('; ')}`,
      {
        hint: [...new Set(st.hints)].join('; ') || 'see src/sandbox/restricted/README.md',
      },
    );
  }
  return {
    helper: st.helper,
    proot: st.proot,
    prootBlind: st.prootBlind,
    prootMarks: st.prootMarks,
    prootDirect: st.prootDirect,
  };
}

/**
 * Re-execute `node <argv>` under the helper. Resolves to null when already inside (carry on in-process), else to
 * the child's exit code.
 */
export async function enterRestricted(
  kilnHome: string,
  argv: string[] = [...process.execArgv, ...process.argv.slice(1)],
): Promise<number | null> {
  if (captureRestrictedFd() !== undefined) return null;
  const { helper, proot, prootBlind, prootMarks, prootDirect } = await assertRestrictedAvailable(kilnHome);
  // --pdeathsig: if this parent dies, the helper goes too (and with it, by PR_SET_PDEATHSIG, the build)
  const child = spawn(
    'setpriv',
    ['--pdeathsig', 'SIGTERM', '--', helper, 'supervise', '--', process.execPath, ...argv],
    {
      stdio: 'inherit',
      env: {
        ...process.env,
        [PROOT_BLIND_ENV]: prootBlind ? '1' : '0',
        [PROOT_MARKS_ENV]: prootMarks ? '1' : '0',
        [PROOT_DIRECT_ENV]: prootDirect ? '1' : '0',
        ...(proot ? { [PROOT_PATH_ENV]: proot } : {}),
      },
    },
  );
  const relay = (sig: NodeJS.Signals) => () => {
    child.kill(sig);
  };
  const handlers = RELAYED.map((s) => [s, relay(s)] as const);
  for (const [s, h] of handlers) process.on(s, h);
  return new Promise<number>((resolve, reject) => {
    child.on('error', (e) =>
      reject(new KilnError('ISOLATION_UNAVAILABLE', `isolation restricted: cannot start the helper: ${e.message}`)),
    );
    child.on('close', (code, signal) => {
      for (const [s, h] of handlers) process.off(s, h);
      resolve(code ?? 128 + (signal ? (SIGNALS[signal] ?? 1) : 1));
    });
  });
}
