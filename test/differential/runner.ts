/**
 * The differential runner: for one case directory under test/differential/cases, prepare the build context, build
 * it with current BuildKit (the reference: buildkitd + buildctl, test/helpers/buildkit.ts), Debian's BuildKit v0.8
 * (dockerd) and buildah (second opinions), and kiln, push every result to the test registry and compare the images
 * (rootfs file by file, config field by field; see test/helpers/compare.ts), check the case's expect.json, and run
 * the images where the case asks for it.
 *
 * Case directory layout (see README.md next to this file):
 *   Dockerfile        the build (placeholders: @REGISTRY@ = test registry host, @BUILDER@ = the builder's name,
 *                     @CASE@ = this case's repository, e.g. `FROM @REGISTRY@/busybox`)
 *   case.json         optional CaseSpec
 *   expect.json       optional Expectations, checked on every image built
 *   prepare.sh        optional, run with `sh` inside the copied context (special files, archives, big/many files),
 *                     then removed from it
 *   secrets/          optional secret files (never part of the context)
 *   http/             optional files served at http://@HTTP@/CASE-ID/… (ADD from a URL; never part of the context)
 *   everything else   the context
 */
import { cp, chmod, lchown, lstat, mkdir, readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CommandError, removeTree, run, tail } from './exec.js';
import { newerBuildKitEquivalent } from './buildkit-versions.js';
import type { Dockerd } from '../helpers/dockerd.js';
import type { BuildKit } from '../helpers/buildkit.js';
import type { Buildah } from '../helpers/buildah.js';
import {
  canonical,
  compareSnapshots,
  formatDifferences,
  snapshotImage,
  type Difference,
  type FileType,
  type ImageSnapshot,
} from '../helpers/compare.js';

const here = dirname(fileURLToPath(import.meta.url));
export const CASES_DIR = join(here, 'cases');
export const REPO_ROOT = join(here, '..', '..');

/** `buildkit`: current BuildKit (the reference); `buildkit08`: Debian's docker.io BuildKit v0.8 (second opinion). */
export type BuilderName = 'buildkit' | 'buildkit08' | 'buildah' | 'kiln';

export interface ExpectedDifference {
  /** Difference key pattern (`*` wildcard), as printed by formatDifferences. */
  key: string;
  reason: string;
}

export interface CaseSpec {
  description?: string;
  /** Dockerfile name inside the case directory (default `Dockerfile`). */
  dockerfile?: string;
  buildArgs?: Record<string, string>;
  target?: string;
  /** Secret id -> file path relative to the case directory (e.g. `secrets/token`). */
  secrets?: Record<string, string>;
  /** Images built first by each builder, pushed as @REGISTRY@/@CASE@-NAME:@BUILDER@ (e.g. ONBUILD bases). */
  preBuild?: Array<{ name: string; dockerfile: string }>;
  /** Reason buildah is not run for this case. */
  skipBuildah?: string;
  /** Reason Debian's BuildKit v0.8 cannot build this case (it is then not asked for a second opinion). */
  buildkit08Unsupported?: string;
  /** `docker run` the images and compare stdout (true: the image's own CMD/ENTRYPOINT). */
  run?: true | { cmd?: string[]; user?: string; entrypoint?: string };
  /** Keys ignored in every comparison of this case (legitimate, documented differences). */
  ignore?: ExpectedDifference[];
  /** Known differences per builder: reported, not failures. */
  expectedDifferences?: Partial<Record<'kiln' | 'buildah', ExpectedDifference[]>>;
  /** Compare file mtimes too (COPY-only cases, where they come from the shared context). */
  compareMtimes?: boolean;
  /** The build must fail for every builder; the string must appear in kiln's error output. */
  expectFailure?: { kilnMessage?: string };
}

export interface FileExpectation {
  type?: FileType;
  /** Octal string, e.g. "4755". */
  mode?: string;
  uid?: number;
  gid?: number;
  content?: string;
  contains?: string;
  target?: string;
  /** The file must not exist. */
  absent?: boolean;
  /** Path of another file it must be hard-linked with. */
  hardlinkTo?: string;
}

export interface Expectations {
  files?: Record<string, FileExpectation>;
  /** Exact values of config.* fields (absent/empty normalized as in compare). `null` means absent. */
  config?: Record<string, unknown>;
  /** created_by of the history entries this Dockerfile added (after the base's), in order. */
  history?: Array<{ created_by: string; empty_layer?: boolean }>;
  /** Number of layers (diff_ids). */
  layers?: number;
  /** Strings that must not appear in any file, the config or the history (e.g. secret values). */
  notContain?: string[];
  /** `docker run` output expectation. */
  run?: { cmd?: string[]; stdout: string };
}

export interface DiffCase {
  id: string;
  num: string;
  dir: string;
  spec: CaseSpec;
  expect?: Expectations;
}

/** All cases, sorted; `filter` holds case numbers or name substrings (KILN_DIFF_CASES=01,07,onbuild). */
export function loadCases(filter: string[] = []): DiffCase[] {
  const ids = readdirSyncSorted(CASES_DIR);
  const cases: DiffCase[] = [];
  for (const id of ids) {
    const m = /^(\d+)-[a-z0-9-]+$/.exec(id);
    if (!m) throw new Error(`bad case directory name ${id} (want NN-lowercase-name)`);
    const dir = join(CASES_DIR, id);
    const spec = readJson<CaseSpec>(join(dir, 'case.json')) ?? {};
    const expect = readJson<Expectations>(join(dir, 'expect.json'));
    cases.push({ id, num: m[1], dir, spec, ...(expect ? { expect } : {}) });
  }
  if (filter.length === 0) return cases;
  // all-digit filters select by case number, anything else by a substring of the name
  return cases.filter((c) => filter.some((f) => (/^\d+$/.test(f) ? Number(c.num) === Number(f) : c.id.includes(f))));
}

function readdirSyncSorted(dir: string): string[] {
  return existsSync(dir)
    ? readdirSync(dir)
        .filter((n) => !n.startsWith('.'))
        .sort()
    : [];
}

function readJson<T>(path: string): T | undefined {
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** One build as the runner asks every builder for it. */
export interface BuildRequest {
  context: string;
  dockerfile: string;
  tag: string;
  buildArgs?: Record<string, string>;
  target?: string;
  /** id -> file path */
  secrets?: Record<string, string>;
}

export interface KilnInvoker {
  /** Build and push; throws CommandError on failure. */
  build(opts: BuildRequest): Promise<string>;
  describe: string;
}

/** `node bin/kiln.js build --push …`, as root or (KILN_DIFF_AS_USER) as an ordinary user via runuser. */
export function kilnInvoker(opts: { home: string; asUser?: string; insecureRegistry: string }): KilnInvoker {
  const bin = join(REPO_ROOT, 'bin', 'kiln.js');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    HOME: opts.home,
    XDG_CACHE_HOME: join(opts.home, '.cache'),
    XDG_CONFIG_HOME: join(opts.home, '.config'),
    XDG_DATA_HOME: join(opts.home, '.local', 'share'),
    XDG_RUNTIME_DIR: join(opts.home, '.run'),
    DOCKER_CONFIG: join(opts.home, '.docker'),
  };
  // test the sources under review unless asked to use the compiled dist/
  if (process.env.KILN_DIFF_USE_DIST !== '1') env.KILN_FROM_SOURCE = '1';
  return {
    describe: opts.asUser ? `kiln as user ${opts.asUser}` : 'kiln as root',
    async build(b) {
      const args = [bin, 'build', '--push', '--insecure-registry', opts.insecureRegistry, '-t', b.tag];
      args.push('-f', b.dockerfile);
      for (const [k, v] of Object.entries(b.buildArgs ?? {})) args.push('--build-arg', `${k}=${v}`);
      if (b.target) args.push('--target', b.target);
      for (const [id, src] of Object.entries(b.secrets ?? {})) args.push('--secret', `id=${id},src=${src}`);
      args.push(b.context);
      if (opts.asUser) {
        const envArgs = Object.entries(env)
          .filter(([k]) => /^(HOME|XDG_\w+|DOCKER_CONFIG|KILN_\w+|PATH|SOURCE_DATE_EPOCH)$/.test(k))
          .map(([k, v]) => `${k}=${v ?? ''}`);
        const r = await run('runuser', ['-u', opts.asUser, '--', 'env', ...envArgs, process.execPath, ...args], {
          cwd: REPO_ROOT,
        });
        return r.stdout + r.stderr;
      }
      const r = await run(process.execPath, args, { cwd: REPO_ROOT, env });
      return r.stdout + r.stderr;
    },
  };
}

/** What the runner needs of a second-opinion builder (Debian's dockerd, buildah). */
interface SecondOpinion {
  build(opts: BuildRequest): Promise<string>;
  push(ref: string): Promise<void>;
}

export interface SuiteEnv {
  registry: string;
  /** host:port of the plain HTTP file server (`@HTTP@`: each case's http/ folder under /CASE/). */
  http: string;
  /** Current BuildKit: the reference every case is compared against. */
  buildkit: BuildKit;
  /** Debian's dockerd: runs the images (`run` cases) and, with `buildkit08`, builds the v0.8 second opinion. */
  dockerd: Dockerd;
  /** Ask Debian's BuildKit v0.8 for a second opinion (reported, never a failure). */
  buildkit08: boolean;
  buildah: Buildah | null;
  kiln: KilnInvoker | null;
  /** Why kiln is null (printed with every case). */
  kilnSkipReason?: string;
  /** Hand the prepared build context to this owner (kiln as an ordinary user must read every context file). */
  contextOwner?: { uid: number; gid: number };
  /** Build every case twice with current BuildKit and compare the two (validates the cases and compare's strictness). */
  buildkitTwice: boolean;
  work: string;
}

export interface CaseReport {
  id: string;
  /** Lines for the test output. */
  log: string[];
  /** Things that fail the test. */
  failures: string[];
  buildahDifferences: Difference[];
  buildahError?: string;
  /** Debian's BuildKit v0.8 vs current BuildKit (reported). */
  buildkit08Differences: Difference[];
  buildkit08Error?: string;
  kilnDifferences: Difference[];
  kilnSkipped?: string;
}

const PLACEHOLDER_FILES = /(^|\/)(Dockerfile|[^/]*\.Dockerfile|[^/]*\.dockerfile)$/;

/** Run one case end to end. Never throws for build/compare problems: they become report.failures. */
export async function runCase(env: SuiteEnv, c: DiffCase): Promise<CaseReport> {
  const report: CaseReport = {
    id: c.id,
    log: [],
    failures: [],
    buildahDifferences: [],
    buildkit08Differences: [],
    kilnDifferences: [],
  };
  const log = (s: string): void => {
    report.log.push(s);
  };
  const work = join(env.work, c.id);
  await removeTree(work);
  await mkdir(work, { recursive: true });
  try {
    const ctx = join(work, 'context');
    await prepareContext(c, ctx);
    if (env.contextOwner) await giveTree(ctx, env.contextOwner.uid, env.contextOwner.gid);
    const templates = await readTemplates(ctx);
    const repo = `${env.registry}/diff/${c.id}`;
    const secrets = Object.fromEntries(
      Object.entries(c.spec.secrets ?? {}).map(([id, p]) => [id, join(c.dir, p)] as const),
    );
    const dockerfile = join(ctx, c.spec.dockerfile ?? 'Dockerfile');
    const common = {
      context: ctx,
      dockerfile,
      ...(c.spec.buildArgs ? { buildArgs: c.spec.buildArgs } : {}),
      ...(c.spec.target ? { target: c.spec.target } : {}),
      secrets,
    };
    const setFamily = (family: BuilderName): Promise<void> =>
      writeTemplates(templates, { REGISTRY: env.registry, BUILDER: family, CASE: `diff/${c.id}`, HTTP: env.http });

    const expectFailure = c.spec.expectFailure;
    const snapshots: Partial<Record<string, ImageSnapshot>> = {};
    const snap = async (name: string, ref: string): Promise<ImageSnapshot> => {
      const s = await snapshotImage(ref, { workDir: join(work, `snap-${name}`) });
      snapshots[name] = s;
      return s;
    };
    const ignore = (c.spec.ignore ?? []).map((x) => x.key);

    // ---------------- current BuildKit (reference)
    let reference: ImageSnapshot | undefined;
    {
      await setFamily('buildkit');
      for (const pb of c.spec.preBuild ?? []) {
        await env.buildkit.build({
          ...common,
          dockerfile: join(ctx, pb.dockerfile),
          tag: `${repo}-${pb.name}:buildkit`,
        });
      }
      const ref = `${repo}:buildkit`;
      const t0 = Date.now();
      const built = await env.buildkit
        .build({ ...common, dockerfile, tag: ref })
        .then(() => undefined)
        .catch((e: Error) => e);
      if (expectFailure) {
        if (!built) report.failures.push('buildkit: build succeeded but the case expects a failure');
        else log(`buildkit ${env.buildkit.version}: failed as expected: ${lastErrorLine(built)}`);
      } else {
        if (built)
          throw new Error(
            `BuildKit ${env.buildkit.version} build failed (the reference must build):\n${built.message}`,
            {
              cause: built,
            },
          );
        reference = await snap('buildkit', ref);
        log(`buildkit ${env.buildkit.version}: built and pushed ${ref} (${Date.now() - t0} ms)`);
        report.failures.push(...checkExpectations(reference, c.expect).map((m) => `expect.json vs BuildKit: ${m}`));
      }

      if (env.buildkitTwice && reference) {
        const ref2 = `${repo}:buildkit2`;
        await env.buildkit.build({ ...common, dockerfile, tag: ref2, noCache: true });
        const again = await snap('buildkit2', ref2);
        const d = compareSnapshots(reference, again, { ignore, compareMtimes: c.spec.compareMtimes }).filter(
          (x) => x.severity === 'error',
        );
        if (d.length) {
          report.failures.push(
            `BuildKit is not reproducible against itself for this case:\n${formatDifferences(d, ['build1', 'build2'])}`,
          );
        } else log('buildkit: a second --no-cache build compares equal (case is deterministic)');
      }
    }

    // ---------------- second opinions: Debian's BuildKit v0.8 and buildah (reported, not failures — except crashes)
    const opinions: Array<{ family: 'buildkit08' | 'buildah'; who: string; builder: SecondOpinion; skip?: string }> =
      [];
    if (env.buildkit08)
      opinions.push({
        family: 'buildkit08',
        who: 'buildkit v0.8',
        builder: env.dockerd,
        ...(c.spec.buildkit08Unsupported ? { skip: c.spec.buildkit08Unsupported } : {}),
      });
    if (env.buildah)
      opinions.push({
        family: 'buildah',
        who: 'buildah',
        builder: env.buildah,
        ...(c.spec.skipBuildah ? { skip: c.spec.skipBuildah } : {}),
      });
    for (const o of opinions) {
      if (o.skip) {
        log(`${o.who}: not built (${o.skip})`);
        continue;
      }
      await setFamily(o.family);
      const ref = `${repo}:${o.family}`;
      try {
        for (const pb of c.spec.preBuild ?? []) {
          const pref = `${repo}-${pb.name}:${o.family}`;
          await o.builder.build({ ...common, dockerfile: join(ctx, pb.dockerfile), tag: pref });
          await o.builder.push(pref);
        }
        const built = await o.builder
          .build({ ...common, dockerfile, tag: ref })
          .then(() => undefined)
          .catch((e: Error) => e);
        if (expectFailure) {
          log(built ? `${o.who}: failed as expected` : `${o.who}: build SUCCEEDED where current BuildKit fails`);
        } else if (built) {
          const line = lastErrorLine(built);
          if (o.family === 'buildah') report.buildahError = line;
          else report.buildkit08Error = line;
          log(`${o.who}: build failed: ${line}`);
          if (!(built instanceof CommandError)) throw built;
        } else {
          await o.builder.push(ref);
          const s = await snap(o.family, ref);
          if (reference) {
            const diffs = compareSnapshots(reference, s, { ignore, compareMtimes: c.spec.compareMtimes });
            if (o.family === 'buildah') {
              report.buildahDifferences = diffs;
              log(
                `buildah vs buildkit (reported, not failures):\n${formatDifferences(diffs, ['buildkit', 'buildah'])}`,
              );
            } else {
              report.buildkit08Differences = diffs;
              log(describeV08(diffs));
            }
          }
          const ex = checkExpectations(s, c.expect);
          if (ex.length) log(`${o.who} vs expect.json (reported):\n  ${ex.join('\n  ')}`);
        }
      } catch (e) {
        report.failures.push(`${o.who} crashed: ${(e as Error).message}`);
      }
    }

    // ---------------- kiln
    if (!env.kiln) {
      report.kilnSkipped = env.kilnSkipReason ?? 'kiln is not configured';
    } else {
      await setFamily('kiln');
      const ref = `${repo}:kiln`;
      for (const pb of c.spec.preBuild ?? []) {
        await env.kiln.build({ ...common, dockerfile: join(ctx, pb.dockerfile), tag: `${repo}-${pb.name}:kiln` });
      }
      const t0 = Date.now();
      const built = await env.kiln
        .build({ ...common, dockerfile, tag: ref })
        .then(() => undefined)
        .catch((e: Error) => e);
      if (expectFailure) {
        if (!built) report.failures.push('kiln: build succeeded but every reference builder fails on this case');
        else {
          const out = built instanceof CommandError ? built.result.stderr + built.result.stdout : built.message;
          log(`kiln: failed as expected: ${lastErrorLine(built)}`);
          if (expectFailure.kilnMessage && !out.includes(expectFailure.kilnMessage))
            report.failures.push(
              `kiln: error output lacks ${JSON.stringify(expectFailure.kilnMessage)}:\n${tail(out, 10)}`,
            );
          if (/\n\s+at .+\(.+:\d+:\d+\)/.test(out)) report.failures.push('kiln: printed a stack trace without --debug');
          const pushed = await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${ref}`], {
            allowFail: true,
          });
          if (pushed.code === 0) report.failures.push(`kiln: the failed build still pushed ${ref}`);
        }
      } else if (built) {
        report.failures.push(`kiln build failed (${env.kiln.describe}):\n${built.message}`);
      } else {
        const s = await snap('kiln', ref);
        log(`kiln: built and pushed ${ref} (${Date.now() - t0} ms, ${env.kiln.describe})`);
        if (reference) {
          const all = compareSnapshots(reference, s, { ignore, compareMtimes: c.spec.compareMtimes });
          report.kilnDifferences = all;
          const allowed = (c.spec.expectedDifferences?.kiln ?? []).map((x) => ({ ...x, re: wildcard(x.key) }));
          const unexpected = all.filter((d) => d.severity === 'error' && !allowed.some((a) => a.re.test(d.key)));
          const known = all.filter((d) => d.severity === 'error' && allowed.some((a) => a.re.test(d.key)));
          const info = all.filter((d) => d.severity === 'info');
          if (unexpected.length)
            report.failures.push(
              `kiln differs from BuildKit ${env.buildkit.version}:\n${formatDifferences(unexpected, ['buildkit', 'kiln'])}`,
            );
          if (known.length)
            log(
              `kiln: known differences (case.json expectedDifferences):\n${formatDifferences(known, ['buildkit', 'kiln'])}`,
            );
          if (info.length) log(`kiln: informational:\n${formatDifferences(info, ['buildkit', 'kiln'])}`);
          if (!unexpected.length) log('kiln: matches BuildKit');
        }
        report.failures.push(...checkExpectations(s, c.expect).map((m) => `expect.json vs kiln: ${m}`));
      }
    }

    // ---------------- run the images
    await runImages(env, c, repo, snapshots, report);
  } catch (e) {
    report.failures.push(`case error: ${(e as Error).message}`);
  } finally {
    await removeTree(work);
    // free dockerd's overlay space: this case's images (built, pulled by docker run, pre-built bases)
    const repo = `${env.registry}/diff/${c.id}`;
    const tags = ['buildkit', 'buildkit2', 'buildkit08', 'buildah', 'kiln'];
    const refs = [
      ...tags.map((t) => `${repo}:${t}`),
      ...(c.spec.preBuild ?? []).flatMap((pb) => tags.map((t) => `${repo}-${pb.name}:${t}`)),
    ];
    await env.dockerd.removeImages(refs).catch(() => undefined);
  }
  return report;
}

async function runImages(
  env: SuiteEnv,
  c: DiffCase,
  repo: string,
  snapshots: Partial<Record<string, ImageSnapshot>>,
  report: CaseReport,
): Promise<void> {
  const spec = c.spec.run === true ? {} : c.spec.run;
  const expectRun = c.expect?.run;
  if (!spec && !expectRun) return;
  const outputs: Partial<Record<string, string>> = {};
  for (const name of ['buildkit', 'kiln', 'buildkit08', 'buildah'] as const) {
    if (!snapshots[name]) continue;
    const ref = `${repo}:${name}`;
    const cmd = expectRun?.cmd ?? spec?.cmd ?? [];
    try {
      outputs[name] = await env.dockerd.runImage(ref, cmd, {
        ...(spec?.user ? { user: spec.user } : {}),
        ...(spec?.entrypoint !== undefined ? { entrypoint: spec.entrypoint } : {}),
      });
    } catch (e) {
      const msg = `docker run ${ref} failed: ${lastErrorLine(e as Error)}`;
      if (name === 'buildah' || name === 'buildkit08') report.log.push(msg);
      else report.failures.push(msg);
      continue;
    }
    if (expectRun && outputs[name] !== expectRun.stdout) {
      const msg = `docker run ${name}: stdout ${JSON.stringify(outputs[name])}, expect.json wants ${JSON.stringify(expectRun.stdout)}`;
      if (name === 'buildah' || name === 'buildkit08') report.log.push(msg);
      else report.failures.push(msg);
    }
  }
  const ref = outputs.buildkit;
  if (ref !== undefined) {
    report.log.push(`docker run buildkit: ${JSON.stringify(ref)}`);
    if (outputs.kiln !== undefined && outputs.kiln !== ref)
      report.failures.push(`docker run: kiln printed ${JSON.stringify(outputs.kiln)}, BuildKit ${JSON.stringify(ref)}`);
    for (const other of ['buildkit08', 'buildah'] as const)
      if (outputs[other] !== undefined && outputs[other] !== ref)
        report.log.push(`docker run: ${other} printed ${JSON.stringify(outputs[other])} (reported)`);
  }
}

/**
 * The log block for Debian's BuildKit v0.8 vs current BuildKit: history strings that are exactly v0.8's rendering of
 * the same instruction (buildkit-versions.ts) are listed apart from real differences.
 */
export function describeV08(all: Difference[]): string {
  const errors = all.filter((d) => d.severity === 'error');
  const rendering = errors.filter((d) => isV08Rendering(d));
  const other = errors.filter((d) => !rendering.includes(d));
  const names: [string, string] = ['buildkit', 'buildkit-v0.8'];
  if (!errors.length) return 'buildkit v0.8 vs current BuildKit: no differences';
  const parts: string[] = [];
  if (other.length)
    parts.push(`buildkit v0.8 vs current BuildKit (reported, not failures):\n${formatDifferences(other, names)}`);
  if (rendering.length)
    parts.push(
      `buildkit v0.8: older history renderings of the same instructions:\n${formatDifferences(rendering, names)}`,
    );
  return parts.join('\n');
}

/** A history difference where v0.8 (candidate) wrote the older rendering of what current BuildKit (reference) wrote. */
export function isV08Rendering(d: Difference): boolean {
  return (
    /^history\[\d+\]\.created_by$/.test(d.key) &&
    typeof d.expected === 'string' &&
    typeof d.actual === 'string' &&
    newerBuildKitEquivalent(d.actual, d.expected)
  );
}

function wildcard(p: string): RegExp {
  return new RegExp(
    '^' +
      p
        .split('*')
        .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
        .join('.*') +
      '$',
  );
}

function lastErrorLine(e: Error): string {
  const text = e instanceof CommandError ? e.result.stderr + '\n' + e.result.stdout : e.message;
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const err = [...lines].reverse().find((l) => /error|failed|kiln:/i.test(l));
  return err ?? lines[lines.length - 1] ?? '(no output)';
}

/**
 * lchown a tree to uid:gid keeping every mode bit (chown clears setuid/setgid, which cases compare) and making it
 * readable by its new owner.
 */
async function giveTree(path: string, uid: number, gid: number): Promise<void> {
  const st = await lstat(path);
  await lchown(path, uid, gid);
  if (st.isSymbolicLink()) return;
  await chmod(path, (st.mode & 0o7777) | (st.isDirectory() ? 0o700 : 0o600));
  if (st.isDirectory()) for (const n of await readdir(path)) await giveTree(join(path, n), uid, gid);
}

/** Copy the case directory (minus case metadata and secrets) to `ctx` and run prepare.sh in it. */
async function prepareContext(c: DiffCase, ctx: string): Promise<void> {
  const skip = new Set(['case.json', 'expect.json', 'prepare.sh', 'secrets', 'http']);
  await cp(c.dir, ctx, {
    recursive: true,
    preserveTimestamps: true,
    filter: (src) => {
      const rel = relative(c.dir, src);
      return rel === '' || !skip.has(rel.split('/')[0]);
    },
  });
  await chmod(ctx, 0o755);
  const prep = join(c.dir, 'prepare.sh');
  if (existsSync(prep)) {
    const r = await run('sh', ['-eu', prep], { cwd: ctx, allowFail: true });
    if (r.code !== 0) throw new Error(`prepare.sh failed (exit ${r.code}):\n${tail(r.stderr + r.stdout, 20)}`);
  }
}

interface Template {
  text: string;
  mtime: Date;
}

async function readTemplates(ctx: string): Promise<Map<string, Template>> {
  const out = new Map<string, Template>();
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile() && PLACEHOLDER_FILES.test(p))
        out.set(p, { text: await readFile(p, 'utf8'), mtime: (await stat(p)).mtime });
    }
  };
  await walk(ctx);
  return out;
}

/** Write each Dockerfile with its placeholders filled in, keeping its original mtime (COPY . compares mtimes). */
async function writeTemplates(templates: Map<string, Template>, vars: Record<string, string>): Promise<void> {
  for (const [p, t] of templates) {
    await writeFile(
      p,
      t.text.replace(/@(REGISTRY|BUILDER|CASE|HTTP)@/g, (_, k: string) => vars[k] ?? ''),
    );
    await utimes(p, t.mtime, t.mtime);
  }
}

/** expect.json checks against one image; returns failure messages. */
export function checkExpectations(s: ImageSnapshot, ex: Expectations | undefined): string[] {
  if (!ex) return [];
  const bad: string[] = [];
  for (const [path, want] of Object.entries(ex.files ?? {})) {
    const f = s.files.get(path);
    if (want.absent) {
      if (f) bad.push(`${path}: should not exist, is a ${f.type}`);
      continue;
    }
    if (!f) {
      bad.push(`${path}: missing`);
      continue;
    }
    if (want.type && f.type !== want.type) bad.push(`${path}: type ${f.type}, want ${want.type}`);
    if (want.mode && f.mode !== parseInt(want.mode, 8))
      bad.push(`${path}: mode ${f.mode.toString(8).padStart(4, '0')}, want ${want.mode}`);
    if (want.uid !== undefined && f.uid !== want.uid) bad.push(`${path}: uid ${f.uid}, want ${want.uid}`);
    if (want.gid !== undefined && f.gid !== want.gid) bad.push(`${path}: gid ${f.gid}, want ${want.gid}`);
    if (want.target !== undefined && f.target !== want.target)
      bad.push(`${path}: symlink target ${JSON.stringify(f.target)}, want ${JSON.stringify(want.target)}`);
    if (want.content !== undefined || want.contains !== undefined) {
      const text = f.type === 'file' ? readFileSync(join(s.bundle, 'rootfs', path), 'utf8') : '';
      if (want.content !== undefined && text !== want.content)
        bad.push(`${path}: content ${JSON.stringify(text.slice(0, 300))}, want ${JSON.stringify(want.content)}`);
      if (want.contains !== undefined && !text.includes(want.contains))
        bad.push(`${path}: content ${JSON.stringify(text.slice(0, 300))} lacks ${JSON.stringify(want.contains)}`);
    }
    if (want.hardlinkTo && !(f.hardlinks ?? []).includes(want.hardlinkTo))
      bad.push(`${path}: not hard-linked to ${want.hardlinkTo} (links: ${JSON.stringify(f.hardlinks ?? [])})`);
  }
  const cfg = s.config.config ?? {};
  for (const [k, v] of Object.entries(ex.config ?? {})) {
    const have = norm(cfg[k]);
    if (canonical(have) !== canonical(norm(v)))
      bad.push(`config.${k}: ${JSON.stringify(have) ?? '(absent)'}, want ${JSON.stringify(norm(v)) ?? '(absent)'}`);
  }
  if (ex.layers !== undefined && (s.config.rootfs?.diff_ids?.length ?? 0) !== ex.layers)
    bad.push(`layers: ${s.config.rootfs?.diff_ids?.length ?? 0}, want ${ex.layers}`);
  if (ex.history) {
    const h = s.config.history ?? [];
    const added = h.slice(Math.max(0, h.length - ex.history.length));
    const have = added.map((x) => ({ created_by: x.created_by ?? '', empty_layer: Boolean(x.empty_layer) }));
    const want = ex.history.map((x) => ({ created_by: x.created_by, empty_layer: Boolean(x.empty_layer) }));
    if (canonical(have) !== canonical(want)) bad.push(`history: ${JSON.stringify(have)}, want ${JSON.stringify(want)}`);
  }
  for (const needle of ex.notContain ?? []) {
    const where: string[] = [];
    if (JSON.stringify(s.config).includes(needle)) where.push('image config/history');
    for (const f of s.files.values()) {
      if (f.type !== 'file' || (f.size ?? 0) > 16 * 1024 * 1024) continue;
      if (readFileSync(join(s.bundle, 'rootfs', f.path)).includes(needle)) where.push(f.path);
      if (f.path.includes(needle)) where.push(`file name ${f.path}`);
    }
    if (where.length) bad.push(`${JSON.stringify(needle)} found in ${where.join(', ')}`);
  }
  return bad;
}

function norm(v: unknown): unknown {
  if (v === null || v === undefined || v === '' || v === false) return undefined;
  if (Array.isArray(v) && v.length === 0) return undefined;
  if (typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0) return undefined;
  return v;
}

/**
 * Markdown summary of the second opinions' differences from current BuildKit across cases (KILN_DIFF_REPORT):
 * Debian's BuildKit v0.8 (older history renderings listed apart) and buildah.
 */
export function secondOpinionsMarkdown(reports: CaseReport[], buildkitVersion: string): string {
  const lines = [`# Second opinions vs BuildKit ${buildkitVersion} — observed differences (generated)`, ''];
  const section = (who: string, error: string | undefined, diffs: Difference[]): void => {
    if (error) lines.push(`${who} failed: \`${error}\``, '');
    const errs = diffs.filter((d) => d.severity === 'error');
    if (!errs.length && !error) lines.push(`${who}: no differences`, '');
    for (const d of errs) {
      const note = who === 'BuildKit v0.8' && isV08Rendering(d) ? ' (older rendering)' : '';
      lines.push(
        `- ${who} \`${d.key}\`: BuildKit \`${JSON.stringify(d.expected)}\`, ${who} \`${JSON.stringify(d.actual)}\`${note}`,
      );
    }
    if (errs.length) lines.push('');
  };
  for (const r of reports) {
    lines.push(`## ${r.id}`, '');
    section('BuildKit v0.8', r.buildkit08Error, r.buildkit08Differences);
    section('buildah', r.buildahError, r.buildahDifferences);
  }
  return lines.join('\n');
}
