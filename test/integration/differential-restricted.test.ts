/**
 * The differential suite again, with kiln at the `restricted` isolation level inside the emulated Pod Security
 * Standards restricted container (scripts/restricted-run.sh: the ordinary user kilntest, no capabilities,
 * no_new_privs, containerd's RuntimeDefault seccomp profile): the selected cases must produce the same image as
 * current BuildKit (no case uses `RUN --network=none` or `--mount=type=ssh`, which the level refuses; the full set
 * under this level was not run when this file was written — KILN_DIFF_CASES=all does). The suite runs kiln as `runuser -u kilntest -- env … node bin/kiln.js build …`; a `runuser` placed first
 * on PATH turns that into the emulated container, and KILN_ISOLATION selects the level (both pass through to kiln).
 * The second opinions (buildah, BuildKit v0.8) are skipped (differential.test.ts asks them).
 *
 * CI time: by default a representative subset runs (RESTRICTED_CASES: RUN, chown/chmod, whiteouts, opaque dirs,
 * hard links, setuid/sticky, USER and supplementary groups, cache/bind/tmpfs mounts, xattrs and fifos, an
 * unclean WORKDIR, and the debootstrap Debian base with a real `apt-get install` and `useradd`, compared with current
 * BuildKit owner by owner; secret mounts are compared with the userns level in build-restricted.test.ts). These 14
 * took about 14 min on a 2-core machine at load 25 (kiln and BuildKit each building every case); KILN_DIFF_CASES=all runs
 * every case, KILN_DIFF_CASES=… any other selection.
 */
import { rmSync } from 'node:fs';
import { chmod, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RESTRICTED_RUN } from '../helpers/restricted.js';

const shim = await mkdtemp(join(tmpdir(), 'kiln-diff-restricted-'));
process.on('exit', () => rmSync(shim, { recursive: true, force: true }));
await chmod(shim, 0o755);
// runuser -u USER -- CMD…  →  restricted-run.sh --user USER --env-keep -- CMD…
await writeFile(
  join(shim, 'runuser'),
  `#!/bin/sh\n[ "$1" = -u ] && [ "$3" = -- ] || exec /usr/sbin/runuser "$@"\nuser=$2\nshift 3\n` +
    `exec ${RESTRICTED_RUN} --user "$user" --env-keep -- "$@"\n`,
  { mode: 0o755 },
);
process.env.PATH = `${shim}:${process.env.PATH ?? ''}`;
const RESTRICTED_CASES = '04,05,06,07,09,10,17,23,25,43,63,87,92,93';
process.env.KILN_DIFF_CASES ??= RESTRICTED_CASES;
if (process.env.KILN_DIFF_CASES === 'all') process.env.KILN_DIFF_CASES = '';
process.env.KILN_ISOLATION = 'restricted';
process.env.KILN_DIFF_AS_USER ??= 'kilntest';
process.env.KILN_DIFF_SKIP_BUILDAH ??= '1';
process.env.KILN_DIFF_SKIP_BUILDKIT08 ??= '1';
await import('./differential.test.js');
