/**
 * Differential test suite: every case under test/differential/cases is built by current BuildKit (buildkitd +
 * buildctl at the version pinned in scripts/go-tools.sh, built once per machine: the reference), by Debian's
 * docker.io BuildKit v0.8 and by buildah (second opinions: differences reported, not failures) and by kiln
 * (`node bin/kiln.js build --push`), pushed to one local registry, and compared file by file and config field by
 * field (test/helpers/compare.ts).
 *
 * Environment:
 *   KILN_DIFF_CASES=01,07,onbuild   run a subset (case numbers or name substrings)
 *   KILN_DIFF_MODE=buildkit-only    no kiln; build each case twice with current BuildKit and require the two to
 *                                   compare equal (validates the cases and the comparison), plus the second opinions
 *   KILN_DIFF_AS_USER=kilntest      run kiln as that ordinary user (needs /etc/subuid entries, see
 *                                   scripts/rootless-user.sh)
 *   KILN_DIFF_SKIP_BUILDAH=1        do not run buildah
 *   KILN_DIFF_SKIP_BUILDKIT08=1     do not ask Debian's BuildKit v0.8 (dockerd still runs the `run` cases' images)
 *   KILN_DIFF_REPORT=FILE           write the second opinions' differences from current BuildKit as Markdown
 *   KILN_DIFF_USE_DIST=1            run kiln from dist/ instead of the TypeScript sources
 * Needs root (buildkitd, dockerd); one buildkitd, one dockerd, one registry and one buildah store serve the whole
 * file; cases run in sequence. A missing Go toolchain or module proxy fails the suite with what to install.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { startBuildKit, type BuildKit } from '../helpers/buildkit.js';
import { startBuildah, type Buildah } from '../helpers/buildah.js';
import {
  casesNeedDebian,
  pushBaseImage,
  pushDebianImage,
  startFileServer,
  startTestRegistry,
  type DiffRegistry,
  type FileServer,
} from '../differential/env.js';
import {
  CASES_DIR,
  REPO_ROOT,
  secondOpinionsMarkdown,
  kilnInvoker,
  loadCases,
  runCase,
  type CaseReport,
  type SuiteEnv,
} from '../differential/runner.js';
import { mountsUnder, removeTree, run } from '../differential/exec.js';
import { ROOTLESS_USER, ensureRootlessUser } from '../helpers/rootless.js';

const filter = (process.env.KILN_DIFF_CASES ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const mode = process.env.KILN_DIFF_MODE === 'buildkit-only' ? 'buildkit-only' : 'full';
const asUser = process.env.KILN_DIFF_AS_USER || undefined;
const isRoot = process.getuid?.() === 0;
const kilnBuildExists = existsSync(join(REPO_ROOT, 'src', 'cli', 'build.ts'));
const cases = loadCases(filter);

function loud(msg: string): void {
  const bar = '!'.repeat(100);
  console.log(`\n${bar}\n!!! ${msg}\n${bar}\n`);
}

describe(
  'differential: kiln vs current BuildKit (reference) vs BuildKit v0.8 and buildah',
  { skip: isRoot ? false : 'needs root (buildkitd, dockerd)' },
  () => {
    let registry: DiffRegistry | undefined;
    let dockerd: Dockerd | undefined;
    let buildkit: BuildKit | undefined;
    let files: FileServer | undefined;
    let buildah: Buildah | null = null;
    let work = '';
    let env: SuiteEnv | undefined;
    const reports: CaseReport[] = [];

    before(async () => {
      assert.ok(cases.length > 0, `no differential case matches KILN_DIFF_CASES=${filter.join(',')}`);
      work = await mkdtemp(join(tmpdir(), 'kiln-diff-'));
      await chmod(work, 0o755);
      registry = await startTestRegistry();
      buildkit = await startBuildKit({ insecureRegistries: [registry.host] });
      dockerd = await startDockerd({ insecureRegistries: [registry.host] });
      await pushBaseImage(dockerd, registry.host, await mkdtemp(join(work, 'base-')));
      const dockerfiles = cases.flatMap((c) =>
        [c.spec.dockerfile ?? 'Dockerfile', ...(c.spec.preBuild ?? []).map((p) => p.dockerfile)].map((f) =>
          readFileSync(join(c.dir, f), 'utf8'),
        ),
      );
      if (casesNeedDebian(dockerfiles)) await pushDebianImage(dockerd, registry.host);
      files = await startFileServer(CASES_DIR);
      if (process.env.KILN_DIFF_SKIP_BUILDAH !== '1') buildah = await startBuildah();

      let kiln: SuiteEnv['kiln'] = null;
      let contextOwner: SuiteEnv['contextOwner'];
      let kilnSkipReason: string | undefined;
      if (mode === 'buildkit-only') {
        kilnSkipReason = 'KILN_DIFF_MODE=buildkit-only';
        loud('KILN_DIFF_MODE=buildkit-only: kiln is NOT tested; BuildKit is compared with itself and with buildah');
      } else if (!kilnBuildExists) {
        kilnSkipReason = 'src/cli/build.ts does not exist yet';
        loud('KILN SIDE SKIPPED: src/cli/build.ts does not exist yet — only BuildKit and buildah are exercised');
      } else {
        const home = join(work, 'kiln-home');
        await mkdir(home, { recursive: true });
        if (asUser) {
          if (asUser === ROOTLESS_USER) ensureRootlessUser();
          const uid = Number((await run('id', ['-u', asUser])).stdout.trim());
          const gid = Number((await run('id', ['-g', asUser])).stdout.trim());
          await chown(home, uid, gid);
          contextOwner = { uid, gid };
        }
        kiln = kilnInvoker({ home, insecureRegistry: registry.host, ...(asUser ? { asUser } : {}) });
      }
      env = {
        registry: registry.host,
        http: files.host,
        buildkit,
        dockerd,
        buildkit08: process.env.KILN_DIFF_SKIP_BUILDKIT08 !== '1',
        buildah,
        kiln,
        buildkitTwice: mode === 'buildkit-only',
        ...(kilnSkipReason ? { kilnSkipReason } : {}),
        ...(contextOwner ? { contextOwner } : {}),
        work,
      };
    });

    after(async () => {
      if (process.env.KILN_DIFF_REPORT && reports.length)
        await writeFile(
          process.env.KILN_DIFF_REPORT,
          secondOpinionsMarkdown(reports, buildkit?.version ?? 'current'),
        ).catch(() => undefined);
      await buildah?.stop().catch(() => undefined);
      await dockerd?.stop().catch(() => undefined);
      await buildkit?.stop().catch(() => undefined);
      await registry?.stop().catch(() => undefined);
      await files?.stop().catch(() => undefined);
      if (work) await removeTree(work);
      // nothing may outlive the suite: no dockerd, no mounts, no temp dirs
      if (dockerd) {
        const d = dockerd;
        assert.deepEqual(mountsUnder(d.dir), [], 'dockerd left mounts behind');
        assert.equal(existsSync(d.dir), false, 'dockerd temp dir not removed');
        assert.throws(() => process.kill(d.pid, 0), 'dockerd still running');
      }
      if (buildkit) {
        const b = buildkit;
        assert.deepEqual(mountsUnder(b.dir), [], 'buildkitd left mounts behind');
        assert.equal(existsSync(b.dir), false, 'buildkitd temp dir not removed');
        assert.throws(() => process.kill(b.pid, 0), 'buildkitd still running');
      }
      if (buildah) assert.deepEqual(mountsUnder(buildah.root), [], 'buildah left mounts behind');
    });

    for (const c of cases) {
      test(`${c.id}${c.spec.description ? ` — ${c.spec.description}` : ''}`, async (t) => {
        assert.ok(env, 'suite environment did not start');
        const r = await runCase(env, c);
        reports.push(r);
        for (const block of r.log) for (const line of block.split('\n')) t.diagnostic(line);
        if (r.kilnSkipped) t.diagnostic(`KILN NOT TESTED: ${r.kilnSkipped}`);
        if (r.failures.length) assert.fail(`${c.id}:\n${r.failures.join('\n')}`);
      });
    }
  },
);
