/**
 * `kiln build [options] CONTEXT` — docker-build compatible. Parses the options (see src/engine/options.ts), enters
 * the build user namespace when not root (the whole build runs inside it), and runs src/engine/build.ts. SIGINT /
 * SIGTERM abort the build cleanly: the running step is killed, mounts and temp dirs are removed, nothing is pushed.
 */
import type { Command } from 'commander';
import { accessSync, constants } from 'node:fs';
import { KilnError, errorMessage } from '../errors.js';
import { parseReferenceWithDefaultTag } from '../registry/reference.js';
import {
  addStrategyOptions,
  chosenStrategy,
  runStrategyCommand,
  s2iOptionsFrom,
  type StrategyFlags,
} from './strategy.js';
import {
  parseBuildArgs,
  parseLabels,
  parseNetwork,
  parseOutput,
  parsePlatformOption,
  parseProgress,
  parseSecret,
  parseSourceDateEpoch,
  parseCompression,
  type BuildOptions,
} from '../engine/options.js';
import { parseIsolation } from '../sandbox/isolation.js';

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

export interface BuildFlags {
  file?: string;
  tag?: string[];
  buildArg?: string[];
  target?: string;
  label?: string[];
  platform?: string;
  cache?: boolean;
  pull?: boolean;
  push?: boolean;
  output?: string[];
  network?: string;
  secret?: string[];
  iidfile?: string;
  metadataFile?: string;
  progress?: string;
  quiet?: boolean;
  insecureRegistry?: string[];
  registryCa?: string[];
  registryMirror?: string[];
  cacheFrom?: string[];
  cacheTo?: string[];
  compression?: string;
  compressionLevel?: string;
  isolation?: string;
}

/** Turn parsed commander flags into BuildOptions (every malformed value is one KilnError). */
export function buildOptionsFrom(
  context: string,
  flags: BuildFlags,
  debug: boolean,
  env: NodeJS.ProcessEnv = process.env,
): BuildOptions {
  const buildArgs = parseBuildArgs(flags.buildArg ?? [], env);
  const opts: BuildOptions = {
    context,
    tags: flags.tag ?? [],
    buildArgs,
    labels: parseLabels(flags.label ?? []),
    platform: parsePlatformOption(flags.platform),
    noCache: flags.cache === false,
    pull: flags.pull === true,
    push: flags.push === true,
    outputs: (flags.output ?? []).map(parseOutput),
    network: parseNetwork(flags.network),
    secrets: (flags.secret ?? []).map((s) => parseSecret(s, env)),
    progress: flags.quiet ? 'quiet' : parseProgress(flags.progress),
    insecureRegistries: flags.insecureRegistry ?? [],
    registryMirrors: flags.registryMirror ?? [],
    debug,
  };
  if (flags.file !== undefined) opts.file = flags.file;
  if (flags.target) opts.target = flags.target;
  if (flags.iidfile) opts.iidfile = flags.iidfile;
  if (flags.metadataFile) opts.metadataFile = flags.metadataFile;
  if (flags.cacheFrom?.length) opts.cacheFrom = flags.cacheFrom;
  if (flags.cacheTo?.length) opts.cacheTo = flags.cacheTo;
  const comp = parseCompression(flags.compression, flags.compressionLevel, opts.outputs);
  if (comp.compression) opts.compression = comp.compression;
  if (comp.level !== undefined) opts.compressionLevel = comp.level;
  opts.isolation = parseIsolation(flags.isolation ?? env.KILN_ISOLATION);
  const sde = parseSourceDateEpoch(buildArgs, env);
  if (sde !== undefined) opts.sourceDateEpoch = sde;
  for (const t of opts.tags) {
    if (t.includes('@')) {
      throw new KilnError('OPTION_INVALID', `invalid tag "${t}": a tag cannot contain a digest`, {
        hint: 'use -t NAME[:TAG]',
      });
    }
    // Validate every name before any step runs (a bad -t must not cost a whole build).
    parseReferenceWithDefaultTag(t);
  }
  for (const sec of opts.secrets) {
    // Like buildx: a secret whose source file cannot be read fails up front, naming the file.
    if ('src' in sec && sec.src !== undefined) {
      try {
        accessSync(sec.src, constants.R_OK);
      } catch (e) {
        throw new KilnError('OPTION_INVALID', `--secret id=${sec.id}: cannot read ${sec.src}: ${errorMessage(e)}`, {
          hint: 'check the src= path of the secret',
          cause: e,
        });
      }
    }
  }
  return opts;
}

/** Add the isolation level to the --metadata-file the build wrote (`kiln.isolation`). */
async function recordIsolation(file: string, level: string): Promise<void> {
  if (file === '-') return;
  const { readFile } = await import('node:fs/promises');
  const { writeFileAtomic } = await import('../util/atomic.js');
  let md: Record<string, unknown>;
  try {
    md = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  } catch {
    return; // not written (or not JSON): nothing to add to
  }
  md['kiln.isolation'] = level;
  await writeFileAtomic(file, JSON.stringify(md, null, 2) + '\n');
}

export function register(program: Command): void {
  const build = program
    .command('build')
    .description('build an image from a Dockerfile (docker build compatible)')
    .argument('<context>', 'build context directory')
    .option('-f, --file <path>', 'Dockerfile (default CONTEXT/Dockerfile; - reads stdin)')
    .option('-t, --tag <name>', 'image name, e.g. 127.0.0.1:5000/app:v1 (repeatable)', collect)
    .option('--build-arg <key[=value]>', 'set a build-time variable (repeatable)', collect)
    .option('--target <stage>', 'build this stage')
    .option('--label <key=value>', 'set an image label (repeatable)', collect)
    .option('--platform <os/arch>', 'target platform (only the host platform is supported)')
    .option('--no-cache', 'do not use the build cache')
    .option('--pull', 'always re-resolve base images from their registry')
    .option('--push', 'push the image to its registry (shorthand for --output type=registry)')
    .option(
      '-o, --output <spec>',
      'type=registry|image|oci|docker|local|tar[,dest=PATH][,name=NAME][,push=true] (repeatable)',
      collect,
    )
    .option('--network <mode>', 'network for RUN steps: host (default) or none')
    .option(
      '--secret <spec>',
      'id=ID,src=FILE or id=ID,env=VAR: secret for RUN --mount=type=secret (repeatable)',
      collect,
    )
    .option(
      '--cache-from <spec>',
      'import build cache: type=registry,ref=REPO[:TAG] or REPO[:TAG] (repeatable)',
      collect,
    )
    .option(
      '--cache-to <spec>',
      'export build cache: type=registry,ref=REPO[:TAG][,mode=min|max] (repeatable)',
      collect,
    )
    .option('--compression <type>', 'layer compression: gzip (default), zstd or uncompressed')
    .option('--compression-level <n>', 'compression level (gzip 0-9, default 1; zstd 1-22, default 3)')
    .option(
      '--isolation <level>',
      'how RUN steps are isolated: userns (default; user namespace), restricted (no privileges: PSS restricted pods) or vm',
    )
    .option('--iidfile <file>', 'write the image ID (config digest) to this file')
    .option('--metadata-file <file>', 'write build result metadata (JSON) to this file')
    .option('--progress <mode>', 'progress output: auto, tty, plain, json or quiet', 'auto')
    .option('-q, --quiet', 'no progress output; print the image ID')
    .option('--insecure-registry <host>', 'allow plain HTTP / unverified TLS for this registry (repeatable)', collect)
    .option('--registry-ca <file>', 'trust this extra CA certificate (PEM) for registries (repeatable)', collect)
    .option('--registry-mirror <url>', 'pull docker.io images through this mirror first (repeatable)', collect);
  addStrategyOptions(build) // --strategy, --backend, S2I's flags (src/cli/strategy.ts)
    .action(async (context: string, flags: BuildFlags & StrategyFlags, cmd: Command) => {
      const debug = (cmd.parent?.opts() as { debug?: boolean } | undefined)?.debug === true;
      const opts = buildOptionsFrom(context, flags, debug);
      const choice = chosenStrategy(flags);
      if (choice) {
        if (choice.strategy === 's2i') s2iOptionsFrom(flags, flags.builderImage); // bad flags fail before any work
        if (choice.backend === 'kiln') {
          const { enterBuildNamespace } = await import('../sandbox/userns.js');
          const code = await enterBuildNamespace();
          if (code !== null) {
            process.exitCode = code;
            return;
          }
        }
        const id = await runStrategyCommand(context, choice, flags, opts);
        if (flags.quiet) process.stdout.write(id + '\n');
        return;
      }
      // Re-run this very command inside what the isolation level needs for the whole build: the build user
      // namespace (userns, vm; a no-op as root or when inside) or the restricted helper.
      const { enterIsolation } = await import('../sandbox/isolation.js');
      const { kilnHome } = await import('../oci/store.js');
      const code = await enterIsolation(opts.isolation ?? 'userns', kilnHome());
      if (code !== null) {
        process.exitCode = code;
        return;
      }
      const { runBuildCommand } = await import('../engine/services.js');
      const res = await runBuildCommand(opts, flags);
      if (opts.metadataFile) await recordIsolation(opts.metadataFile, opts.isolation ?? 'userns');
      const toStdout = opts.outputs.some((o) => o.dest === '-');
      if (flags.quiet && !toStdout) process.stdout.write(res.exported.configDigest + '\n');
    });
}
