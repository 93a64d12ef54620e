/**
 * The strategy and backend flags of `kiln build` (`--strategy dockerfile|s2i|node`, node's `--base`, `--backend kiln|buildah|docker`, and
 * S2I's flags) and `kiln s2i build SOURCE BUILDER_IMAGE TAG` with s2i's common flags. Kept apart from
 * src/cli/build.ts, which only registers the options here and hands over when a strategy or backend is chosen.
 */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import type { BuildOptions } from '../engine/options.js';
import type { S2IOptions } from '../strategies/s2i/frontend.js';
import { addBuildpacksOptions, buildpacksOptionsFrom, type BuildpacksFlags } from './pack.js';
import { parseEnvFlag, parseRuntimeArtifact, parseUidRanges } from '../strategies/s2i/flags.js';

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

export const STRATEGIES = ['dockerfile', 's2i', 'buildpacks', 'node'] as const;
export const BACKENDS = ['kiln', 'buildah', 'docker'] as const;

export interface StrategyFlags extends BuildpacksFlags {
  strategy?: string;
  backend?: string;
  builderImage?: string;
  /** --strategy node: the base image (node and npm). */
  base?: string;
  runtimeImage?: string;
  runtimeArtifact?: string[];
  incremental?: boolean;
  env?: string[];
  scriptsUrl?: string;
  assembleUser?: string;
  allowedUids?: string;
  cacheDir?: string[];
  destination?: string;
  asDockerfile?: string;
  registryCa?: string[];
  insecureRegistry?: string[];
  registryMirror?: string[];
}

/** S2I's flags (shared by `kiln build --strategy s2i` and `kiln s2i build`). */
function addS2IOptions(cmd: Command, short: boolean): Command {
  return cmd
    .option(
      short ? '-e, --env <NAME=VALUE>' : '--env <NAME=VALUE>',
      'S2I: environment for assemble and the image (repeatable)',
      collect,
    )
    .option('--incremental', 'S2I: restore the artifacts of the previous build (save-artifacts)')
    .option('--runtime-image <image>', 'S2I: copy the assembled artifacts into this runtime image')
    .option(
      short ? '-a, --runtime-artifact <src[:dest]>' : '--runtime-artifact <src[:dest]>',
      'S2I: a path of the assembled image to copy into the runtime image (repeatable)',
      collect,
    )
    .option(
      short ? '-s, --scripts-url <url>' : '--scripts-url <url>',
      'S2I: scripts from image:///DIR, file:///DIR or http(s)://URL/DIR',
    )
    .option('--assemble-user <user>', 'S2I: run assemble as this user')
    .option(
      short ? '-u, --allowed-uids <ranges>' : '--allowed-uids <ranges>',
      'S2I: refuse assemble users outside these uids (e.g. 1-)',
    )
    .option('--cache-dir <path>', 'S2I: a persistent dependency cache mounted into assemble (repeatable)', collect)
    .option(
      short ? '-d, --destination <dir>' : '--destination <dir>',
      'S2I: where scripts and sources go in the image (default: the builder label, else /tmp)',
    )
    .option('--as-dockerfile <file>', 'S2I: also write the generated Dockerfile to this file');
}

/** The options `kiln build` gains. */
export function addStrategyOptions(cmd: Command): Command {
  cmd
    .option('--strategy <name>', `how the steps are decided: ${STRATEGIES.join(', ')} (default dockerfile)`)
    .option('--backend <name>', `who builds: ${BACKENDS.join(', ')} (default kiln)`)
    .option('--builder-image <image>', 'S2I: the builder image')
    .option('--base <image>', 'node: the base image with node and npm (default node:20-bookworm-slim)');
  return addBuildpacksOptions(addS2IOptions(cmd, false));
}

export function addS2IBuildOptions(cmd: Command): Command {
  return addS2IOptions(cmd, true);
}

/** S2I options from flags (every malformed value is one KilnError). */
export function s2iOptionsFrom(flags: StrategyFlags, builder: string | undefined): S2IOptions {
  if (!builder) {
    throw new KilnError('OPTION_INVALID', '--strategy s2i needs --builder-image', {
      hint: 'e.g. kiln build --strategy s2i --builder-image registry/builder:1 -t app:1 SOURCE',
    });
  }
  const o: S2IOptions = { builderImage: builder };
  if (flags.runtimeImage) o.runtimeImage = flags.runtimeImage;
  if (flags.runtimeArtifact?.length) o.runtimeArtifacts = flags.runtimeArtifact.map(parseRuntimeArtifact);
  if (flags.incremental) o.incremental = true;
  if (flags.env?.length) o.env = flags.env.map(parseEnvFlag);
  if (flags.scriptsUrl) o.scriptsUrl = flags.scriptsUrl;
  if (flags.assembleUser) o.assembleUser = flags.assembleUser;
  if (flags.allowedUids !== undefined) o.allowedUids = parseUidRanges(flags.allowedUids);
  if (flags.cacheDir?.length) {
    for (const d of flags.cacheDir) {
      if (!d.startsWith('/')) {
        throw new KilnError('OPTION_INVALID', `--cache-dir ${d}: must be an absolute path in the image`, {
          hint: 'e.g. --cache-dir /opt/app-root/src/.m2',
        });
      }
    }
    o.cacheDirs = flags.cacheDir;
  }
  if (flags.destination) o.destination = flags.destination;
  if (flags.asDockerfile) o.asDockerfile = flags.asDockerfile;
  if (o.incremental && o.runtimeImage) {
    throw new KilnError('OPTION_INVALID', '--incremental cannot be used together with --runtime-image', {
      hint: 'drop one of them (s2i refuses the combination too)',
    });
  }
  return o;
}

/** Validate --strategy/--backend; undefined means the plain Dockerfile build on kiln's engine. */
export function chosenStrategy(flags: StrategyFlags): { strategy: string; backend: string } | undefined {
  const strategy = flags.strategy ?? 'dockerfile';
  const backend = flags.backend ?? 'kiln';
  if (!(STRATEGIES as readonly string[]).includes(strategy)) {
    throw new KilnError('OPTION_INVALID', `--strategy ${strategy}: unknown strategy`, {
      hint: `use one of ${STRATEGIES.join(', ')}`,
    });
  }
  if (!(BACKENDS as readonly string[]).includes(backend)) {
    throw new KilnError('OPTION_INVALID', `--backend ${backend}: unknown backend`, {
      hint: `use one of ${BACKENDS.join(', ')}`,
    });
  }
  if (strategy !== 'dockerfile' && backend !== 'kiln') {
    throw new KilnError(
      'OPTION_INVALID',
      `--strategy ${strategy} runs on kiln's engine only, not --backend ${backend}`,
      {
        hint: 'drop --backend',
      },
    );
  }
  if ((flags.builder || flags.buildpack?.length || flags.runImage || flags.clearCache) && strategy !== 'buildpacks') {
    throw new KilnError(
      'OPTION_INVALID',
      '--builder, --buildpack, --run-image and --clear-cache need --strategy buildpacks',
    );
  }
  if (strategy === 'buildpacks') buildpacksOptionsFrom(flags); // bad flags fail before any work
  if (flags.builderImage && strategy !== 's2i') {
    throw new KilnError('OPTION_INVALID', '--builder-image needs --strategy s2i');
  }
  if (flags.base && strategy !== 'node') {
    throw new KilnError('OPTION_INVALID', '--base needs --strategy node');
  }
  return strategy === 'dockerfile' && backend === 'kiln' ? undefined : { strategy, backend };
}

/** Run a build whose strategy or backend is not the default (called by `kiln build` and `kiln s2i build`). */
export async function runStrategyCommand(
  source: string,
  choice: { strategy: string; backend: string },
  flags: StrategyFlags,
  opts: BuildOptions,
): Promise<string> {
  const reg = {
    insecureRegistry: flags.insecureRegistry ?? [],
    registryCa: flags.registryCa ?? [],
    registryMirror: flags.registryMirror ?? [],
  };
  if (choice.strategy === 's2i') {
    const { runS2IBuild } = await import('../strategies/s2i/frontend.js');
    const res = await runS2IBuild({ source, s2i: s2iOptionsFrom(flags, flags.builderImage), build: opts, flags: reg });
    return res.exported.configDigest;
  }
  if (choice.strategy === 'node') {
    const { runNodeBuild } = await import('../strategies/node/frontend.js');
    const node = flags.base ? { base: flags.base } : {};
    const res = await runNodeBuild({ source, node, build: opts, flags: reg });
    return res.exported.configDigest;
  }
  if (choice.strategy === 'buildpacks') {
    const { runBuildpacksCommand } = await import('./pack.js');
    return runBuildpacksCommand(source, buildpacksOptionsFrom(flags), opts, reg);
  }
  const { builderFor } = await import('../backends/index.js');
  const { Keychain } = await import('../registry/keychain.js');
  const builder = builderFor(choice.backend);
  const res = await builder.build({
    options: opts,
    registry: reg,
    // docker config.json and credential helpers, handed to the tool in a private file (never argv)
    credentials: new Keychain().source(),
    log: (s) => {
      if (opts.progress !== 'quiet') process.stderr.write(s);
    },
  });
  if (opts.progress !== 'quiet') {
    for (const st of res.steps) process.stderr.write(`${(st.durationMs / 1000).toFixed(1)}s ${st.name}\n`);
    if (res.digest) process.stderr.write(`pushed ${res.pushed.join(', ')} ${res.digest}\n`);
  }
  return res.digest ?? res.imageId ?? '';
}

export function register(program: Command): void {
  const s2i = program.command('s2i').description('Source-to-Image builds (the s2i CLI, daemonless)');
  const b = s2i
    .command('build')
    .description('build SOURCE (a directory or git URL#ref) with BUILDER_IMAGE into TAG')
    .argument('<source>', 'a directory or a git URL (#ref)')
    .argument('<builder-image>', 'the S2I builder image')
    .argument('[tag]', 'the image name (pushed with --push)')
    .option('--ref <ref>', 'git ref of a git SOURCE')
    .option('--push', 'push the image to its registry')
    .option('--no-cache', 'do not use the build cache')
    .option('--pull', 'always re-resolve images from their registry')
    .option('--progress <mode>', 'progress output: auto, tty, plain, json or quiet', 'auto')
    .option('--insecure-registry <host>', 'allow plain HTTP / unverified TLS for this registry (repeatable)', collect)
    .option('--registry-ca <file>', 'trust this extra CA certificate (PEM) for registries (repeatable)', collect)
    .option('--registry-mirror <url>', 'pull docker.io images through this mirror first (repeatable)', collect);
  addS2IBuildOptions(b).action(
    async (
      source: string,
      builder: string,
      tag: string | undefined,
      flags: StrategyFlags & { ref?: string; push?: boolean; cache?: boolean; pull?: boolean; progress?: string },
      cmd: Command,
    ) => {
      const debug = (cmd.parent?.parent?.opts() as { debug?: boolean } | undefined)?.debug === true;
      const { buildOptionsFrom } = await import('./build.js');
      const bf: Parameters<typeof buildOptionsFrom>[1] = { tag: tag ? [tag] : [] };
      if (flags.push) bf.push = true;
      if (flags.cache === false) bf.cache = false;
      if (flags.pull) bf.pull = true;
      if (flags.progress) bf.progress = flags.progress;
      if (flags.insecureRegistry) bf.insecureRegistry = flags.insecureRegistry;
      if (flags.registryMirror) bf.registryMirror = flags.registryMirror;
      const opts = buildOptionsFrom(source, bf, debug);
      const s2iFlags: StrategyFlags = { ...flags, builderImage: builder };
      s2iOptionsFrom(s2iFlags, builder); // validate before entering the namespace
      const { enterBuildNamespace } = await import('../sandbox/userns.js');
      const code = await enterBuildNamespace();
      if (code !== null) {
        process.exitCode = code;
        return;
      }
      const src = flags.ref ? `${source.split('#')[0]}#${flags.ref}` : source;
      const id = await runStrategyCommand(src, { strategy: 's2i', backend: 'kiln' }, s2iFlags, opts);
      if (opts.progress === 'quiet') process.stdout.write(id + '\n');
    },
  );
}
