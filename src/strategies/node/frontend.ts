/**
 * The Node.js builder (`kiln build --strategy node`): a source tree with package.json and package-lock.json becomes
 * an image with one layer per production dependency (ko/Jib/FTL's idea: build incrementality becomes deploy
 * incrementality), no Dockerfile and no RUN written by the user.
 *
 * It is a frontend on the one engine (src/engine/frontend.ts). The plan it hands over has two stages:
 * - an install stage on the base image: `npm ci --omit=dev` as uid 1000 in kiln's sandbox, npm's cache on a kiln
 *   cache mount, then node_modules split into a directory per layer (src/strategies/node/install.ts). Its inputs are
 *   only the dependency part of package.json, the lockfile and the layer plan, so the engine's cache skips the
 *   install whenever those and the base digest are unchanged (an app code change never reinstalls);
 * - the image: the base, then each dependency dir as `COPY --link --chown=0:0` (a link step's layer depends on its
 *   files only; files owned by root, mtimes clamped to SOURCE_DATE_EPOCH, default 0, by the deterministic layer
 *   writer), so the same package at the same place has the same layer digest in every build and every app, and a
 *   push skips every blob the registry has; then the `.bin` links, then the app (`COPY --link` too), WORKDIR /app,
 *   NODE_ENV=production, a numeric non-root USER and the start command as CMD.
 */
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KilnError, errorMessage, isKilnError } from '../../errors.js';
import type { Frontend, FrontendInput, FrontendPlan } from '../../engine/frontend.js';
import type { BuildOptions } from '../../engine/options.js';
import type { BuildOutcome } from '../../engine/build.js';
import type { EmbeddedBuild } from '../../engine/services.js';
import { homeDirs, kilnHome } from '../../util/paths.js';
import {
  APP_DIR,
  EXIT_NO_NPM,
  EXIT_NO_TOOLCHAIN,
  EXIT_OUT_OF_SYNC,
  INSTALL_DIR,
  INSTALL_SCRIPT,
  NPM_CACHE,
} from './install.js';
import { recordNodeImage, tryFastNodeBuild, type NodeFastKey } from './fast.js';
import {
  checkInSync,
  dependencySlots,
  hasDependencies,
  installManifest,
  missingLockfile,
  parseLockfile,
  parsePackageJson,
  planLayers,
  productionPackages,
  startCommand,
  type DependencyLayer,
  type InstalledPackage,
} from './project.js';

/** The Node.js builder's settings (CLI flags or the service's image config). */
export interface NodeOptions {
  /** The base image (it brings node and npm). */
  base?: string;
}

/** The base image when none is given. */
export const DEFAULT_NODE_BASE = 'docker.io/library/node:20-bookworm-slim';

/** The user installs run as, and the image's USER unless the base names a non-root one. */
export const NODE_USER = '1000:1000';

/** What the builder decided (for tests and messages). */
export interface NodeDecision {
  base: string;
  cmd: string[];
  user: string;
  packages: InstalledPackage[];
  layers: DependencyLayer[];
  dockerfile: string;
}

/** The project as read from the source dir, validated. */
export interface NodeProject {
  cmd: string[];
  packages: InstalledPackage[];
  /** false: nothing to install (no dependencies declared). */
  install: boolean;
}

const ROOT_USER = /^(|0|root)(:.*)?$/;

/** Read and check package.json and the lockfile of `dir` (every refusal is one KilnError, before any work). */
export async function readNodeProject(
  dir: string,
): Promise<{ project: NodeProject; pkgText: string; lockText?: string }> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    throw new KilnError('NODE_SOURCE', `${dir}: not a readable directory (${errorMessage(e)})`, {
      hint: 'give the directory holding package.json',
    });
  }
  if (!names.includes('package.json')) {
    throw new KilnError('NODE_PACKAGE_JSON', `${join(dir, 'package.json')}: missing`, {
      hint: '--strategy node builds a directory with package.json and package-lock.json',
    });
  }
  const pkgText = await readFile(join(dir, 'package.json'), 'utf8');
  const pkg = parsePackageJson(pkgText);
  const cmd = startCommand(pkg, names.includes('server.js'));
  const lockName = ['npm-shrinkwrap.json', 'package-lock.json'].find((n) => names.includes(n));
  if (!lockName) {
    if (hasDependencies(pkg)) throw missingLockfile(names);
    return { project: { cmd, packages: [], install: false }, pkgText };
  }
  const lockText = await readFile(join(dir, lockName), 'utf8');
  const lock = parseLockfile(lockText, lockName);
  checkInSync(pkg, lock, lockName);
  const packages = productionPackages(lock, lockName);
  return { project: { cmd, packages, install: packages.length > 0 }, pkgText, lockText };
}

const depth = (p: string): number => p.split('/node_modules/').length;

/** `layers.txt`: `<layer id> <package path>`, deepest paths first (a nested package leaves before its parent). */
export function layerList(layers: DependencyLayer[]): string {
  const rows: { id: string; path: string }[] = [];
  for (const l of layers) for (const p of l.packages) rows.push({ id: l.id, path: p.path });
  rows.sort((a, b) => depth(b.path) - depth(a.path) || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return rows.map((r) => `${r.id} ${r.path}\n`).join('');
}

/**
 * The plan as Dockerfile text (parsed by the Dockerfile parser: one engine, one set of semantics). Two phases, two
 * engine runs: `install` is the install stage alone; `image` lays the split dirs out, read from the build context
 * (`layers/<id>/`, hard links to the install step's layer) — a COPY from another stage would mount that stage once
 * per dependency layer, a COPY from the context only hashes the files.
 */
export function nodeDockerfile(o: {
  phase: 'install' | 'image';
  base: string;
  layers: DependencyLayer[];
  cmd: string[];
  user?: string;
  install: boolean;
}): string {
  if (o.phase === 'install') {
    return (
      [
        `FROM ${o.base}`,
        `COPY --chown=${NODE_USER} deps/ ${INSTALL_DIR}/`,
        `COPY --chown=${NODE_USER} <<'KILN_LAYERS' ${INSTALL_DIR}/layers.txt`,
        layerList(o.layers) + 'KILN_LAYERS',
        `USER ${NODE_USER}`,
        `RUN --mount=type=cache,id=kiln-node-npm,target=${NPM_CACHE},uid=1000,gid=1000 ["/bin/sh", "${INSTALL_DIR}/install.sh"]`,
      ].join('\n') + '\n'
    );
  }
  const L: string[] = [`FROM ${o.base}`];
  if (o.install) {
    for (const l of o.layers) L.push(`COPY --link --chown=0:0 layers/${l.id}/ /`);
    L.push('COPY --link --chown=0:0 layers/bin/ /');
  }
  // WORKDIR before the app: its (tiny, always equal) layer stays below, the app layer is the topmost one
  L.push(`WORKDIR ${APP_DIR}`, `COPY --link --chown=0:0 app/ ${APP_DIR}/`, 'ENV NODE_ENV=production');
  if (o.cmd[0] === '/bin/sh') L.push(`ENV PATH=${APP_DIR}/node_modules/.bin:$PATH`);
  if (o.user) L.push(`USER ${o.user}`);
  L.push(`CMD ${JSON.stringify(o.cmd)}`);
  return L.join('\n') + '\n';
}

/** The frontend for one prepared project. */
export function nodeFrontend(
  o: { base: string; project: NodeProject; phase: 'install' | 'image' },
  onDecision?: (d: NodeDecision) => void,
): Frontend {
  return {
    name: 'node',
    async plan(input: FrontendInput): Promise<FrontendPlan> {
      let base;
      try {
        base = await input.bases.resolve(o.base, { pull: input.options.pull, platform: input.options.platform });
      } catch (e) {
        throw new KilnError('NODE_BASE', `base image ${o.base}: ${errorMessage(e)}`, {
          hint: 'give --base IMAGE: an image with node and npm (kiln images, or a registry)',
          cause: e,
        });
      }
      const baseLayers = (await base.image.layers()).length;
      const baseUser = (await base.image.config()).config?.User ?? '';
      const layers = planLayers(o.project.packages, dependencySlots(baseLayers, o.base));
      const user = ROOT_USER.test(baseUser.trim()) ? NODE_USER : undefined;
      const dockerfile = nodeDockerfile({
        phase: o.phase,
        base: o.base,
        layers,
        cmd: o.project.cmd,
        install: o.project.install,
        ...(user ? { user } : {}),
      });
      onDecision?.({
        base: o.base,
        cmd: o.project.cmd,
        user: user ?? baseUser,
        packages: o.project.packages,
        layers,
        dockerfile,
      });
      // loaded here, not at the top: the fast path (most rebuilds) never parses a Dockerfile
      const { parseDockerfile } = await import('../../dockerfile/convert.js');
      const parsed = parseDockerfile(dockerfile, { filename: 'kiln-node' });
      return { stages: parsed.stages, metaArgs: parsed.globalArgs, file: 'kiln-node' };
    },
  };
}

export interface NodeBuildRequest {
  /** The source directory. */
  source: string;
  node: NodeOptions;
  /** The build's options; `context`, `file` and (unless given) `sourceDateEpoch` are set here. */
  build: BuildOptions;
  flags: { insecureRegistry?: string[]; registryCa?: string[]; registryMirror?: string[] };
  embed?: EmbeddedBuild;
  home?: string;
  onDecision?: (d: NodeDecision) => void;
}

/** Left out of the app layer: installed dependencies come from the lockfile, VCS data is no app code. */
const NOT_APP = new Set(['node_modules', '.git']);

/** `cp -al`: the install step's split dirs as hard links in the build context (same file system: KILN_HOME). */
async function hardLinkTree(from: string, to: string): Promise<void> {
  const { spawn } = await import('node:child_process');
  const code = await new Promise<number>((resolve) => {
    const p = spawn('cp', ['-al', from, to], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-500)));
    p.on('error', () => resolve(-1));
    p.on('close', (c) => {
      if (c !== 0) process.stderr.write(err);
      resolve(c ?? -1);
    });
  });
  if (code !== 0) {
    throw new KilnError('NODE_INSTALL', `the install step left no dependency layers at ${from}`, {
      hint: 'build again with --no-cache',
    });
  }
}

/** A whole Node.js build: read and check the project, stage the context, run the engine with the node frontend. */
export async function runNodeBuild(req: NodeBuildRequest): Promise<BuildOutcome & { decision?: NodeDecision }> {
  const { project, pkgText, lockText } = await readNodeProject(req.source);
  const home = req.home ?? kilnHome();
  const tmpBase = homeDirs(home).tmp;
  await mkdir(tmpBase, { recursive: true, mode: 0o700 });
  const workDir = await mkdtemp(join(tmpBase, 'node-'));
  let decision: NodeDecision | undefined;
  const base = req.node.base ?? DEFAULT_NODE_BASE;
  const opts: BuildOptions = {
    ...req.build,
    context: workDir,
    file: join(workDir, 'Dockerfile'),
    sourceDateEpoch: req.build.sourceDateEpoch ?? 0,
  };
  const installText = project.install ? JSON.stringify(installManifest(parsePackageJson(pkgText)), null, 2) + '\n' : '';
  const fastKey: NodeFastKey = { base, installManifest: installText, lockText: lockText ?? '', cmd: project.cmd };
  try {
    if (project.install) {
      // the install is cached and the image recorded: no engine run, only the app layer is written
      const { BuildProgress } = await import('../../engine/progress.js');
      const mode = opts.progress === 'auto' || opts.progress === 'tty' ? 'plain' : opts.progress;
      const progress = req.embed?.progress ?? new BuildProgress(mode);
      const fast = await tryFastNodeBuild({
        home,
        key: fastKey,
        source: req.source,
        skip: NOT_APP,
        opts,
        flags: req.flags,
        embed: req.embed ?? {},
        progress,
      });
      if (fast) {
        if (opts.progress !== 'quiet' && !req.embed?.progress) {
          const names = fast.exported.names.length ? ` (${fast.exported.names.join(', ')})` : '';
          process.stderr.write(`\nbuilt ${fast.exported.configDigest}${names}\n`);
        }
        return fast;
      }
    }
    await cp(req.source, join(workDir, 'app'), {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => {
        const rel = src.slice(req.source.length).replace(/^\/+/, '');
        return !NOT_APP.has(rel.split('/')[0] ?? '');
      },
    });
    if (project.install) {
      await mkdir(join(workDir, 'deps'));
      await writeFile(join(workDir, 'deps', 'package.json'), installText);
      await writeFile(join(workDir, 'deps', 'package-lock.json'), lockText ?? '');
      await writeFile(join(workDir, 'deps', 'install.sh'), INSTALL_SCRIPT, { mode: 0o755 });
    }
    // the context loader wants a Dockerfile; the frontend decides the real steps once it has seen the base
    await writeFile(join(workDir, 'Dockerfile'), '# generated by the Node.js builder\n');
    const { runBuildCommand } = await import('../../engine/services.js');
    if (project.install) {
      // phase 1: the install stage alone, stored nowhere (its layers are the engine's cache)
      const { BuildProgress } = await import('../../engine/progress.js');
      const mode = opts.progress === 'auto' || opts.progress === 'tty' ? 'plain' : opts.progress;
      const installOpts: BuildOptions = { ...opts, tags: [], push: false, outputs: [] };
      delete installOpts.iidfile;
      delete installOpts.metadataFile;
      delete installOpts.cacheTo;
      let installed: BuildOutcome;
      try {
        installed = await runBuildCommand(installOpts, req.flags, {
          ...req.embed,
          progress: req.embed?.progress ?? new BuildProgress(mode),
          frontend: nodeFrontend({ base, project, phase: 'install' }, (d) => (decision = d)),
        });
      } catch (e) {
        throw explainFailure(e, decision);
      }
      const split = join(installed.engine.layers.at(-1)?.dir ?? '', INSTALL_DIR, 'layers');
      await hardLinkTree(split, join(workDir, 'layers'));
    }
    // phase 2: the image
    const frontend = nodeFrontend({ base, project, phase: 'image' }, (d) => (decision = d));
    let res: BuildOutcome;
    try {
      res = await runBuildCommand(opts, req.flags, { ...req.embed, frontend });
    } catch (e) {
      throw explainFailure(e, decision);
    }
    if (project.install && res.engine.base) {
      const baseLayers = res.rebase?.baseLayers ?? res.engine.layers.length - (decision?.layers.length ?? 0) - 3;
      await recordNodeImage(home, fastKey, opts, res, baseLayers).catch(() => undefined);
    }
    if (decision) req.onDecision?.(decision);
    return decision ? { ...res, decision } : res;
  } finally {
    const cleanup = (): Promise<void> => rm(workDir, { recursive: true, force: true });
    if (req.embed?.after) req.embed.after(cleanup);
    else await cleanup();
  }
}

/** The install step's exit codes (src/strategies/node/install.ts) as one clear line each. */
function explainFailure(e: unknown, d: NodeDecision | undefined): unknown {
  if (!d || !isKilnError(e, 'RUN_FAILED')) return e;
  const m = /exit code: (\d+)/.exec(e.message);
  const code = m ? Number(m[1]) : -1;
  if (code === EXIT_NO_NPM || code === 127) {
    return new KilnError('NODE_BASE', `base image ${d.base} has no npm on PATH`, {
      hint: 'use a base image with node and npm (e.g. node:20-bookworm-slim)',
      cause: e,
    });
  }
  if (code === EXIT_NO_TOOLCHAIN) {
    const native = d.packages.filter((p) => p.hasInstallScript).map((p) => `${p.name}@${p.version}`);
    return new KilnError(
      'NODE_NATIVE_TOOLCHAIN',
      `a native addon (node-gyp) failed to build: base image ${d.base} has no C/C++ toolchain (make, g++, python3)` +
        (native.length ? `; packages with install scripts: ${native.join(', ')}` : ''),
      { hint: 'use a base image with build-essential and python3, or a dependency with prebuilt binaries', cause: e },
    );
  }
  if (code === EXIT_OUT_OF_SYNC) {
    return new KilnError('NODE_LOCKFILE_SYNC', 'npm ci: package-lock.json is out of sync with package.json', {
      hint: 'run `npm install` and commit both package.json and package-lock.json',
      cause: e,
    });
  }
  return new KilnError(
    'NODE_INSTALL',
    `npm ci failed in base image ${d.base} (${m ? `exit code ${code}` : e.message})`,
    {
      hint: "npm's output is above; check the lockfile and the registry (npm config in the base image)",
      cause: e,
    },
  );
}
