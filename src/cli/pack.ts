/**
 * Cloud Native Buildpacks on the command line: `kiln build --strategy buildpacks --builder IMAGE …` and the
 * familiar `kiln pack build NAME --builder B --path P [--buildpack …] [--run-image …] [--env K=V] [--publish]`.
 * Both end in `runBuildpacksCommand` (the platform itself is src/strategies/buildpacks/build.ts). Without
 * `--publish`/`--push` the image goes to kiln's local store, as pack puts it into the local daemon.
 */
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import type { BuildOptions } from '../engine/options.js';
import type { BuildpacksOptions } from '../strategies/buildpacks/build.js';
import { parsePlatformEnv } from '../strategies/buildpacks/flags.js';

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

/** The buildpacks flags (`--env` is shared with S2I's and registered there for `kiln build`). */
export interface BuildpacksFlags {
  builder?: string;
  buildpack?: string[];
  runImage?: string;
  env?: string[];
  clearCache?: boolean;
}

/** The options `--strategy buildpacks` adds to `kiln build` (`--runtime-image` stays S2I's: distinct names). */
export function addBuildpacksOptions(cmd: Command): Command {
  return cmd
    .option('--builder <image>', 'buildpacks: the builder image (/cnb/order.toml, /cnb/buildpacks)')
    .option('--buildpack <dir|image|id>', 'buildpacks: use this buildpack instead of the order (repeatable)', collect)
    .option('--run-image <image>', 'buildpacks: the run image (default: the builder’s /cnb/run.toml)')
    .option('--clear-cache', 'buildpacks: do not restore cache layers');
}

/** Buildpacks options from flags (every malformed value is one KilnError). */
export function buildpacksOptionsFrom(flags: BuildpacksFlags): BuildpacksOptions {
  if (!flags.builder) {
    throw new KilnError('OPTION_INVALID', '--strategy buildpacks needs --builder', {
      hint: 'e.g. kiln build --strategy buildpacks --builder registry/builder:1 -t app:1 SOURCE',
    });
  }
  const o: BuildpacksOptions = { builder: flags.builder };
  if (flags.buildpack?.length) o.buildpacks = flags.buildpack;
  if (flags.runImage) o.runImage = flags.runImage;
  if (flags.env?.length) o.env = flags.env.map(parsePlatformEnv);
  if (flags.clearCache) o.clearCache = true;
  return o;
}

/** Run a buildpacks build for the CLI; returns the manifest digest. */
export async function runBuildpacksCommand(
  source: string,
  bp: BuildpacksOptions,
  opts: BuildOptions,
  flags: { registryCa?: string[]; reportFile?: string },
): Promise<string> {
  const { stat } = await import('node:fs/promises');
  const st = await stat(source).catch(() => undefined);
  if (!st?.isDirectory()) {
    throw new KilnError('BP_SOURCE', `${source}: not a directory`, { hint: 'give the app directory (--path DIR)' });
  }
  if (opts.push && opts.tags.length === 0) {
    throw new KilnError('OPTION_INVALID', 'nothing to push: give an image name (-t NAME)');
  }
  const { Keychain } = await import('../registry/keychain.js');
  const { Progress } = await import('../progress.js');
  const { BuildProgress } = await import('../engine/progress.js');
  const { closeTransports } = await import('../registry/transport.js');
  const { runBuildpacksBuild } = await import('../strategies/buildpacks/build.js');
  const mode = opts.progress === 'auto' || opts.progress === 'tty' ? 'plain' : opts.progress;
  const progress = new BuildProgress(mode);
  const ac = new AbortController();
  const onSignal = (): void => ac.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const registry = {
    insecureRegistries: opts.insecureRegistries.map((h) => h.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '')),
    caFiles: flags.registryCa ?? [],
    mirrors: opts.registryMirrors.map((u) => u.replace(/\/+$/, '')),
    credentials: new Keychain().source(),
    progress: new Progress(mode === 'json' ? 'json' : 'quiet'),
    signal: ac.signal,
  };
  try {
    const res = await runBuildpacksBuild({
      source,
      bp: opts.noCache ? { ...bp, clearCache: true } : bp,
      tags: opts.tags,
      publish: opts.push,
      registry,
      progress,
      platform: opts.platform,
      network: opts.network,
      pull: opts.pull,
      signal: ac.signal,
      ...(opts.isolation ? { isolation: opts.isolation } : {}),
    });
    if (flags.reportFile) await writeFile(flags.reportFile, res.report);
    if (opts.progress !== 'quiet') {
      const reused = res.layers.filter((l) => l.reused).length;
      const uploaded = res.uploads ? [...res.uploads.values()].filter((v) => v === 'uploaded').length : 0;
      process.stderr.write(
        `\nbuilt ${res.digest} with ${res.group.join(', ')} on ${res.runImage.name}` +
          ` (${res.layers.length} layers, ${reused} reused${res.uploads ? `, ${uploaded} uploaded` : ''})\n`,
      );
    }
    return res.digest;
  } catch (e) {
    if (ac.signal.aborted) throw new KilnError('INTERRUPTED', 'build interrupted; nothing was pushed', { cause: e });
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await closeTransports(registry);
  }
}

export function register(program: Command): void {
  const pack = program.command('pack').description('Cloud Native Buildpacks builds (the pack CLI, daemonless)');
  const b = pack
    .command('build')
    .description('build the app at --path into image NAME with a builder')
    .argument('<name>', 'the image name')
    .option('-p, --path <dir>', 'the app directory', '.')
    .option('-B, --builder <image>', 'the builder image')
    .option('-b, --buildpack <dir|image|id>', 'use this buildpack instead of the order (repeatable)', collect)
    .option('--run-image <image>', 'the run image (default: the builder’s)')
    .option('-e, --env <NAME=VALUE>', 'a platform env var for the buildpacks (repeatable)', collect)
    .option('--publish', 'push the image to its registry (else kiln’s local store)')
    .option('--clear-cache', 'do not restore cache layers')
    .option('--pull-policy <policy>', 'always or if-not-present (default)', 'if-not-present')
    .option('--network <mode>', 'network of detect and build: host (default) or none', 'host')
    .option('--report <file>', 'write report.toml here')
    .option('--progress <mode>', 'progress output: auto, tty, plain, json or quiet', 'auto')
    .option('--insecure-registry <host>', 'allow plain HTTP / unverified TLS for this registry (repeatable)', collect)
    .option('--registry-ca <file>', 'trust this extra CA certificate (PEM) for registries (repeatable)', collect);
  b.action(
    async (
      name: string,
      flags: BuildpacksFlags & {
        path: string;
        publish?: boolean;
        pullPolicy: string;
        network: string;
        report?: string;
        progress?: string;
        insecureRegistry?: string[];
        registryCa?: string[];
      },
      cmd: Command,
    ) => {
      const debug = (cmd.parent?.parent?.opts() as { debug?: boolean } | undefined)?.debug === true;
      if (!['always', 'if-not-present'].includes(flags.pullPolicy)) {
        throw new KilnError('OPTION_INVALID', `--pull-policy ${flags.pullPolicy}: unknown policy`, {
          hint: 'use always or if-not-present (never is not supported: kiln looks in its store, then the registry)',
        });
      }
      const bp = buildpacksOptionsFrom(flags);
      const { buildOptionsFrom } = await import('./build.js');
      const bf: Parameters<typeof buildOptionsFrom>[1] = { tag: [name], network: flags.network };
      if (flags.publish) bf.push = true;
      if (flags.pullPolicy === 'always') bf.pull = true;
      if (flags.progress) bf.progress = flags.progress;
      if (flags.insecureRegistry) bf.insecureRegistry = flags.insecureRegistry;
      const opts = buildOptionsFrom(flags.path, bf, debug);
      const { enterBuildNamespace } = await import('../sandbox/userns.js');
      const code = await enterBuildNamespace();
      if (code !== null) {
        process.exitCode = code;
        return;
      }
      const f: { registryCa?: string[]; reportFile?: string } = {};
      if (flags.registryCa) f.registryCa = flags.registryCa;
      if (flags.report) f.reportFile = flags.report;
      const digest = await runBuildpacksCommand(flags.path, bp, opts, f);
      if (opts.progress === 'quiet') process.stdout.write(digest + '\n');
    },
  );
}
