/**
 * The concrete services of a local `kiln build`: the local store ($KILN_HOME/store, sharing its blob dir with the
 * layer store so built layers are never copied), the layer store ($KILN_HOME/layers), the namespace sandbox
 * (overlay snapshots + RUN executor), the registry client (base images, pushes) and the COPY/ADD copier. Also
 * the interrupt handling of the CLI: SIGINT/SIGTERM abort the build through an AbortSignal.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { basename, join } from 'node:path';
import { KilnError } from '../errors.js';
import { LocalStore } from '../oci/store.js';
import { kilnHome } from '../util/paths.js';
import { writeLayout } from '../oci/layout.js';
import { writeDockerArchive } from '../oci/docker-archive.js';
import { Progress } from '../progress.js';
import { Keychain, embedderFirst } from '../registry/keychain.js';
import { parseReferenceWithDefaultTag } from '../registry/reference.js';
import { closeTransports } from '../registry/transport.js';
import type { PushOptions } from '../registry/push.js';
import type { CredentialSource } from '../registry/transport.js';
import { loadContext, type BuildContext, type LoadContextOptions } from './context.js';
import { isolationServices } from '../sandbox/isolation.js';
import { kilnTempDir } from '../sandbox/paths.js';
import { LocalLayerStore } from './local.js';
import { LocalFileCopier } from './copy.js';
import { BuildProgress } from './progress.js';
import { build, type BuildOutcome, type BuildServices } from './build.js';
import type { BuildOptions, LayerCompression } from './options.js';
import type { BaseResolver } from './ports.js';
import type { Frontend } from './frontend.js';
import { debugMark } from '../util/debug.js';
import { StoreFirstResolver } from './bases.js';

export { StoreFirstResolver };

export interface ServiceOptions {
  home?: string;
  registry: PushOptions;
  progress: BuildProgress;
  signal?: AbortSignal;
  /** The CONTEXT argument (dir, tar, `-`, git URL). */
  context: string;
  /** -f value. */
  dockerfile?: string;
  cacheFrom?: string[];
  cacheTo?: string[];
  /** Layer compression for written layers. */
  compression?: LayerCompression;
  compressionLevel?: number;
  /** How RUN steps are isolated (default userns). */
  isolation?: BuildOptions['isolation'];
}

/** Write to `dest`, or for `-` to a temp file streamed to stdout (tar outputs to a pipe, like buildx). */
async function viaFile(dest: string, tmpBase: string, write: (file: string) => Promise<void>): Promise<void> {
  if (dest !== '-') return write(dest);
  const dir = await mkdtemp(join(tmpBase, 'out-'));
  try {
    const file = join(dir, 'out.tar');
    await write(file);
    await pipeline(createReadStream(file), process.stdout, { end: false });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The local services for one build. */
export async function localServices(
  o: ServiceOptions,
): Promise<BuildServices & { store: LocalStore; context: BuildContext }> {
  const home = o.home ?? kilnHome();
  await mkdir(home, { recursive: true });
  const store = await LocalStore.open(home);
  const { executor, snapshotter, layersDir } = await isolationServices(o.isolation ?? 'userns', home);
  const tmpBase = join(home, 'tmp');
  await mkdir(tmpBase, { recursive: true, mode: 0o700 });
  const warn = (m: string): void => o.progress.warn(m);
  const lo: LoadContextOptions = {
    kilnHome: home,
    tmpDir: tmpBase,
    onWarning: warn,
  };
  if (o.dockerfile !== undefined) lo.dockerfile = o.dockerfile;
  const context = await loadContext(o.context, lo);
  const dfName = context.dockerfile.path === '-' ? 'Dockerfile' : basename(context.dockerfile.path);
  const svc: BuildServices & { store: LocalStore; context: BuildContext } = {
    store,
    context,
    kilnHome: home,
    contextDir: context.root,
    dockerfile: { text: context.dockerfile.text, file: dfName },
    executor,
    snapshotter,
    layers: new LocalLayerStore({
      layersDir,
      blobs: store.blobs,
      onWarning: warn,
      ...(o.compression ? { compression: o.compression } : {}),
      ...(o.compressionLevel !== undefined ? { level: o.compressionLevel } : {}),
    }),
    bases: new StoreFirstResolver(store, o.registry),
    copier: new LocalFileCopier({
      context,
      tmpDir: tmpBase,
      onWarning: warn,
      ...(o.isolation === 'restricted' ? { offload: false as const } : {}),
    }),
    progress: o.progress,
    registry: o.registry,
    writers: {
      saveLocal: async (image, names) => {
        await store.put(image, names);
      },
      writeOCI: async (image, dest, w) => {
        if (dest === '-' && !w.tar) throw new KilnError('OUTPUT_INVALID', 'type=oci,tar=false needs dest=DIR');
        // like BuildKit's oci exporter: ref.name is the tag, io.containerd.image.name the full name
        const entries = w.names.length
          ? w.names.map((n) => {
              const ref = parseReferenceWithDefaultTag(n);
              return {
                image,
                name: ref.tag ?? 'latest',
                annotations: {
                  ...w.annotations,
                  'io.containerd.image.name': ref.toString(),
                },
              };
            })
          : [{ image, annotations: w.annotations }];
        await viaFile(dest, tmpBase, (file) => writeLayout(file, entries, { tar: w.tar }).then(() => undefined));
      },
      writeDocker: async (image, dest, names) => {
        const tags = names.map((n) => parseReferenceWithDefaultTag(n).toString());
        await viaFile(dest, tmpBase, (file) => writeDockerArchive(file, [{ image, tags }]));
      },
    },
    // with an .owner file: if this process dies (a build worker killed), the next kiln removes the dir
    tempDir: (prefix) => kilnTempDir(home, prefix),
  };
  if (o.signal) svc.signal = o.signal;
  if (o.cacheFrom?.length || o.cacheTo?.length) {
    const { RemoteBuildCache, parseCacheSpec } = await import('../cache/remote.js');
    const remote = new RemoteBuildCache({
      dir: join(home, 'cache'),
      from: (o.cacheFrom ?? []).map((c) => parseCacheSpec(c, '--cache-from')),
      to: (o.cacheTo ?? []).map((c) => parseCacheSpec(c, '--cache-to')),
      registry: o.registry,
      blobs: store.blobs,
      layers: svc.layers,
      warn,
    });
    svc.cache = remote;
    remote.prefetch();
    svc.afterExport = async (engine, exported) => {
      const pushed = exported.pushed.map((n) => parseReferenceWithDefaultTag(n));
      await remote.exportTo(
        engine.layers.map((l) => l.diffID),
        pushed,
      );
    };
  }
  return svc;
}

/**
 * What an embedding front end (the build service's worker) brings to a CLI-shaped build: its own progress sink
 * (the build log), credentials tried before the docker keychain (a project's registry credentials, which never
 * touch disk or argv), and its own abort signal (cancel, timeout).
 */
export interface EmbeddedBuild {
  progress?: BuildProgress;
  credentials?: CredentialSource;
  signal?: AbortSignal;
  /**
   * Wraps the FROM resolver: the build service resolves registry bases from the registry every time (a base that
   * moved must be seen) and records what each FROM resolved to (to rebuild when a base changes).
   */
  bases?: (inner: BaseResolver) => BaseResolver;
  /** How the steps are decided (default: the Dockerfile frontend; S2I passes its own). */
  frontend?: Frontend;
  /**
   * Takes clean-up that may run after the build's outcome is out (temp dirs, registry connections): the build
   * service's worker reports its result first and runs these before it exits, so the user does not wait for them.
   * Without it a build awaits its clean-up itself. (Used by the Node.js builder.)
   */
  after?: (cleanup: () => Promise<void>) => void;
}

/** The CLI's build: services from flags, interrupt handling, progress, cleanup. */
export async function runBuildCommand(
  opts: BuildOptions,
  flags: {
    insecureRegistry?: string[];
    registryCa?: string[];
    registryMirror?: string[];
  },
  embed: EmbeddedBuild = {},
): Promise<BuildOutcome> {
  const progressMode = opts.progress === 'auto' || opts.progress === 'tty' ? 'plain' : opts.progress;
  const progress = embed.progress ?? new BuildProgress(progressMode);
  const first = embed.credentials;
  const registry: PushOptions = {
    insecureRegistries: opts.insecureRegistries.map((h) => h.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '')),
    caFiles: flags.registryCa ?? [],
    mirrors: opts.registryMirrors.map((u) => u.replace(/\/+$/, '')),
    // the same function for the same embedder: a build worker's job reuses the transports its preparation warmed
    credentials: first ? embedderFirst(first) : new Keychain().source(),
    progress: new Progress(progressMode === 'json' ? 'json' : 'quiet'),
  };
  const ac = new AbortController();
  registry.signal = ac.signal;
  let signal: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    signal ??= sig;
    ac.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const onEmbedAbort = (): void => onSignal('SIGTERM');
  embed.signal?.addEventListener('abort', onEmbedAbort);
  if (embed.signal?.aborted) onEmbedAbort(); // cancelled before the build even started
  // progress goes to stderr: if its reader goes away (`kiln build … 2>&1 | head`), keep building and cleaning up
  // instead of dying on EPIPE with a snapshot still mounted
  const onStderrError = (): void => undefined;
  process.stderr.on('error', onStderrError);
  try {
    const so: ServiceOptions = {
      registry,
      progress,
      signal: ac.signal,
      context: opts.context,
    };
    if (opts.file !== undefined) so.dockerfile = opts.file;
    if (opts.cacheFrom) so.cacheFrom = opts.cacheFrom;
    if (opts.cacheTo) so.cacheTo = opts.cacheTo;
    if (opts.compression) so.compression = opts.compression;
    if (opts.compressionLevel !== undefined) so.compressionLevel = opts.compressionLevel;
    if (opts.isolation) so.isolation = opts.isolation;
    debugMark('engine services');
    const svc = await localServices(so);
    debugMark('engine services ready (context loaded)');
    if (embed.bases) svc.bases = embed.bases(svc.bases);
    if (embed.frontend) svc.frontend = embed.frontend;
    let res: BuildOutcome;
    try {
      res = await build(opts, svc);
    } finally {
      await svc.context.cleanup();
    }
    if (opts.progress !== 'quiet' && !embed.progress) {
      const names = res.exported.names.length ? ` (${res.exported.names.join(', ')})` : '';
      process.stderr.write(`\nbuilt ${res.exported.configDigest}${names}\n`);
    }
    return res;
  } catch (e) {
    if (ac.signal.aborted) {
      // 128 + the signal's number, as a shell reports a process killed by it (SIGTERM: a pod being stopped)
      throw new KilnError('INTERRUPTED', 'build interrupted; nothing was pushed', {
        cause: e,
        exitCode: signal === 'SIGTERM' ? 143 : 130,
      });
    }
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    embed.signal?.removeEventListener('abort', onEmbedAbort);
    process.stderr.off('error', onStderrError);
    await closeTransports(registry);
  }
}
