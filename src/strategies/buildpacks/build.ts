/**
 * The Cloud Native Buildpacks platform of kiln (Platform API 0.12 phases in one process, no lifecycle binary):
 *
 * 1. analyze — the previous image of the tag (manifest and config only, never its layers) gives the
 *    `io.buildpacks.lifecycle.metadata` of its launch layers;
 * 2. restore — `<layer>.toml` metadata of those layers and the cache layers (kiln's cache dir, moved in place) are
 *    planted into the build's upper dir, with the app at /workspace (owned by the CNB user) and /platform/env;
 * 3. detect — each order group's `bin/detect` as the CNB user in kiln's sandbox; exit 0 pass, 100 fail, other =
 *    error; the build plan resolved (src/strategies/buildpacks/spec.ts);
 * 4. build — each buildpack's `bin/build` as the CNB user (never root), with the env of the build layers before it;
 * 5. export — one layer per launch layer (or the previous image's layer, by digest, when the buildpack kept its
 *    metadata and wrote no files: nothing uploaded), the app layer, the launcher/config layer, the SBOM layer, onto
 *    the run image (its layers are never pulled for the push), with the lifecycle's labels; cache layers go back
 *    to kiln's cache. The manifest names the run image as the base and all layers above it as rebasable, so
 *    `kiln rebase` swaps the run image.
 *
 * Layers are written deterministically (mtimes clamped to 1980-01-01 as the lifecycle does), so a layer built
 * again from the same files has the same digest and the push finds it in the registry.
 */
import { createHash } from 'node:crypto';
import { lchown, lstat, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KilnError, errorMessage, isKilnError } from '../../errors.js';
import { LocalLayerStore } from '../../engine/local.js';
import { StoreFirstResolver } from '../../engine/services.js';
import type { BaseResolver, Executor, ProgressSink, ResolvedBase, Snapshot } from '../../engine/ports.js';
import { imageFromParts } from '../../oci/image.js';
import { MediaType } from '../../oci/mediatypes.js';
import { sha256 } from '../../oci/digest.js';
import { LocalStore } from '../../oci/store.js';
import type { History, Image, ImageConfig, Layer, Platform } from '../../oci/types.js';
import { parseReferenceWithDefaultTag } from '../../registry/reference.js';
import { push, type PushOptions } from '../../registry/push.js';
import { BASE_DIGEST, BASE_NAME, REBASABLE_LAYERS } from '../../rebase/verdict.js';
import { CNB_LIFECYCLE_METADATA } from '../../rebase/rebase.js';
import { isolationServices, type IsolationLevel } from '../../sandbox/isolation.js';
import { kilnTempDir } from '../../sandbox/paths.js';
import { kilnHome } from '../../util/paths.js';
import { copyTreeOwned, envFiles, isDir, listDir, readInRoot } from './files.js';
import { launcherScript, resolvedEnv, type LaunchLayerEnv, type LauncherInput } from './launcher.js';
import {
  applyEnv,
  buildpackPlanToml,
  envMap,
  envOps,
  escapeId,
  parseBuildpackToml,
  parseDetectPlan,
  parseLaunchToml,
  parseLayerToml,
  parseOrder,
  parseRunToml,
  resolveGroup,
  restoredLayerToml,
  runImageFromBuilderLabel,
  type BuildpackDescriptor,
  type DetectResult,
  type EnvOp,
  type GroupEntry,
  type LayerToml,
  type ProcessType,
} from './spec.js';

export const LIFECYCLE_METADATA = CNB_LIFECYCLE_METADATA;
export const BUILD_METADATA = 'io.buildpacks.build.metadata';
export const PROJECT_METADATA = 'io.buildpacks.project.metadata';
const BUILDER_METADATA = 'io.buildpacks.builder.metadata';
const BUILDPACKAGE_METADATA = 'io.buildpacks.buildpackage.metadata';
/** The lifecycle's reproducible timestamp (1980-01-01T00:00:01Z). */
const EPOCH = 315532801;
const CREATED = '1980-01-01T00:00:01Z';
const APP_DIR = '/workspace';
const PLATFORM_API = '0.12';

/** The buildpacks settings of one build (CLI flags or the service's image config). */
export interface BuildpacksOptions {
  /** The builder image (its /cnb/order.toml, buildpacks, CNB user). */
  builder: string;
  /** `--buildpack`: a directory, a buildpackage image, or `id[@version]` of the builder; replaces the order. */
  buildpacks?: string[];
  /** `--run-image` (else /cnb/run.toml, else the builder's metadata label). */
  runImage?: string;
  /** Platform env vars (`/platform/env/NAME`). */
  env?: [string, string][];
  /** Do not restore cache layers. */
  clearCache?: boolean;
}

export interface BuildpacksRequest {
  /** The app directory. */
  source: string;
  bp: BuildpacksOptions;
  /** Image names; the first is also where the previous image is looked up. */
  tags: string[];
  /** Push to the registry (else the local store). */
  publish: boolean;
  registry: PushOptions;
  progress: ProgressSink;
  platform: Platform;
  network: 'host' | 'none';
  /** Re-resolve builder and run image from the registry. */
  pull?: boolean;
  isolation?: IsolationLevel;
  home?: string;
  signal?: AbortSignal;
  /** Wraps the resolver of builder, run and buildpack images (the build service records what they resolved to). */
  bases?: (inner: BaseResolver) => BaseResolver;
}

/** One layer of the exported image above the run image. */
export interface ExportedLayer {
  /** `acme/static:web`, `app`, `launcher`, `sbom`. */
  name: string;
  digest: string;
  diffID: string;
  /** Taken from the previous image without being written again. */
  reused: boolean;
}

export interface BuildpacksResult {
  digest: string;
  configDigest: string;
  /** The group that passed detection (`id@version`). */
  group: string[];
  layers: ExportedLayer[];
  runImage: { name: string; digest: string };
  /** Layers of the run image (the rebasable part starts above them). */
  baseLayers: number;
  /** Blobs the push uploaded (digest → 'uploaded' | 'exists' | 'mounted'), when published. */
  uploads?: Map<string, string>;
  /** The lifecycle's report.toml. */
  report: string;
}

interface Buildpack extends BuildpackDescriptor {
  /** Its dir in the build root. */
  dir: string;
  optional: boolean;
}

/** What the launcher needs of a launch layer, kept in the image metadata for when the layer is reused unread. */
interface StoredLaunchEnv {
  bin: boolean;
  lib: boolean;
  ops: EnvOp[];
  processOps: Record<string, EnvOp[]>;
  profile: string[];
  processProfile: Record<string, string[]>;
}

interface PreviousLayer {
  sha: string;
  data: Record<string, unknown>;
  /** kiln's addition (the lifecycle ignores unknown keys). */
  kilnLaunchEnv?: StoredLaunchEnv;
  launch: boolean;
  build: boolean;
  cache: boolean;
}

interface LifecycleMetadata {
  app?: { sha: string }[];
  config?: { sha: string };
  launcher?: { sha: string };
  sbom?: { sha: string };
  buildpacks?: { key: string; version: string; layers?: Record<string, PreviousLayer> }[];
  runImage?: { topLayer: string; reference: string; image?: string };
}

const tail = (s: string, n = 1500): string => (s.length > n ? '…' + s.slice(-n) : s).trim();

/** Run one buildpacks build end to end. */
export async function runBuildpacksBuild(req: BuildpacksRequest): Promise<BuildpacksResult> {
  const home = req.home ?? kilnHome();
  await mkdir(home, { recursive: true });
  const store = await LocalStore.open(home);
  const { executor, snapshotter, layersDir } = await isolationServices(req.isolation ?? 'userns', home);
  const warn = (m: string): void => req.progress.warn(m);
  const unpacker = new LocalLayerStore({ layersDir, blobs: store.blobs, onWarning: warn });
  const own = new StoreFirstResolver(store, req.registry);
  // the previous image of the tag is looked up by `own`: it is no base to watch
  const bases = req.bases ? req.bases(own) : own;
  let step = 0;
  const phase = async <T>(name: string, fn: (id: number) => Promise<T>): Promise<T> => {
    const id = ++step;
    req.progress.start(id, name);
    try {
      const r = await fn(id);
      req.progress.done(id);
      return r;
    } catch (e) {
      req.progress.error(id, errorMessage(e));
      throw e;
    }
  };
  const resolve = async (ref: string, what: string): Promise<ResolvedBase> => {
    try {
      return await bases.resolve(ref, { pull: req.pull ?? false, platform: req.platform });
    } catch (e) {
      throw new KilnError('BP_IMAGE', `${what} ${ref}: ${errorMessage(e)}`, {
        hint: `check the ${what} name (kiln images, or the registry)`,
        cause: e,
      });
    }
  };
  if (!req.bp.builder) {
    throw new KilnError('OPTION_INVALID', 'the buildpacks strategy needs a builder image', {
      hint: 'give --builder IMAGE (an image with /cnb/order.toml and /cnb/buildpacks)',
    });
  }
  const tag = req.tags[0];
  const work = await kilnTempDir(home, 'bp-');
  let snap: Snapshot | undefined;
  try {
    // the builder, its CNB user and its layers
    const builder = await phase(`[analyze] builder ${req.bp.builder}`, () => resolve(req.bp.builder, 'builder'));
    const bcfg = await builder.image.config();
    const benv = envMap(bcfg.config?.Env ?? []);
    const uid = Number(benv.get('CNB_USER_ID'));
    const gid = Number(benv.get('CNB_GROUP_ID'));
    if (!Number.isInteger(uid) || !Number.isInteger(gid) || !benv.has('CNB_USER_ID') || !benv.has('CNB_GROUP_ID')) {
      throw new KilnError('BP_BUILDER', `builder ${req.bp.builder}: no CNB_USER_ID/CNB_GROUP_ID in its env`, {
        hint: 'a builder image sets ENV CNB_USER_ID and CNB_GROUP_ID (the non-root user buildpacks run as)',
      });
    }
    if (uid === 0) {
      throw new KilnError('BP_BUILDER', `builder ${req.bp.builder}: CNB_USER_ID is 0; buildpacks never run as root`, {
        hint: 'set CNB_USER_ID to a non-root uid in the builder image',
      });
    }
    const lowers = await phase('[analyze] unpack builder', async () => {
      const out: string[] = [];
      for (const l of await builder.image.layers()) out.push(await unpacker.unpack(l));
      return out;
    });
    // buildpacks given with --buildpack: directories planted, buildpackage images unpacked on top
    const dirBuildpacks: { dir: string; desc: BuildpackDescriptor }[] = [];
    const explicit: GroupEntry[] = [];
    for (const b of req.bp.buildpacks ?? []) {
      if (await isDir(b)) {
        const file = join(b, 'buildpack.toml');
        const text = await readFile(file, 'utf8').catch(() => {
          throw new KilnError('BP_BUILDPACK', `--buildpack ${b}: no buildpack.toml`, {
            hint: 'a buildpack directory has buildpack.toml, bin/detect and bin/build',
          });
        });
        const desc = parseBuildpackToml(text, file);
        dirBuildpacks.push({ dir: b, desc });
        explicit.push({ id: desc.id, version: desc.version, optional: false });
      } else if (/^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)?(@[^/:]+)?$/i.test(b) && !b.includes(':')) {
        const [id, version] = b.split('@') as [string, string | undefined];
        explicit.push(version ? { id, version, optional: false } : { id, optional: false });
      } else {
        const img = await resolve(b, 'buildpack image');
        const md = (await img.image.config()).config?.Labels?.[BUILDPACKAGE_METADATA];
        let id: string | undefined;
        let version: string | undefined;
        try {
          ({ id, version } = JSON.parse(md ?? '{}') as { id?: string; version?: string });
        } catch {
          id = undefined;
        }
        if (!id) {
          throw new KilnError(
            'BP_BUILDPACK',
            `--buildpack ${b}: not a buildpackage (no ${BUILDPACKAGE_METADATA} label)`,
            {
              hint: 'give a buildpack directory, a buildpackage image, or id@version of a builder buildpack',
            },
          );
        }
        for (const l of await img.image.layers()) lowers.push(await unpacker.unpack(l));
        explicit.push(version ? { id, version, optional: false } : { id, optional: false });
      }
    }
    // analyze: the previous image's metadata (manifest + config only)
    const previous = tag ? await previousImage(tag, req, own) : undefined;
    const prevMeta = previous?.meta;
    // restore: kiln's cache dir of this image name
    const scope = tag ? parseReferenceWithDefaultTag(tag).repository : 'default';
    const cacheDir = join(home, 'cache', 'buildpacks', createHash('sha256').update(scope).digest('hex').slice(0, 32));
    if (req.bp.clearCache) await rm(cacheDir, { recursive: true, force: true });
    await mkdir(cacheDir, { recursive: true, mode: 0o700 });
    const restoredCache: string[] = [];
    snap = await phase('[restore] app, platform, layer metadata and cache', () =>
      snapshotter.prepare(lowers, {
        plant: async (upper) => {
          await copyTreeOwned(req.source, join(upper, APP_DIR), uid, gid).catch((e: unknown) => {
            throw new KilnError('BP_SOURCE', `${req.source}: cannot read the app directory: ${errorMessage(e)}`, {
              cause: e,
            });
          });
          await mkdir(join(upper, 'layers'), { recursive: true });
          await lchown(join(upper, 'layers'), uid, gid);
          await mkdir(join(upper, 'platform', 'env'), { recursive: true });
          for (const [k, v] of req.bp.env ?? []) await writeFile(join(upper, 'platform', 'env', k), v);
          for (const { dir, desc } of dirBuildpacks) {
            await copyTreeOwned(dir, join(upper, 'cnb', 'buildpacks', escapeId(desc.id), desc.version), 0, 0);
          }
          for (const bp of prevMeta?.buildpacks ?? []) {
            const d = join(upper, 'layers', escapeId(bp.key));
            for (const [name, l] of Object.entries(bp.layers ?? {})) {
              if (!l.launch || l.cache) continue;
              await mkdir(d, { recursive: true });
              await lchown(d, uid, gid);
              await writeFile(join(d, `${name}.toml`), restoredLayerToml(l.data ?? {}));
              await lchown(join(d, `${name}.toml`), uid, gid);
            }
          }
          for (const bpDir of (await listDir(cacheDir)) ?? []) {
            const d = join(upper, 'layers', bpDir);
            await mkdir(d, { recursive: true });
            await lchown(d, uid, gid);
            for (const f of (await listDir(join(cacheDir, bpDir))) ?? []) {
              if (f.endsWith('.toml')) {
                const t = parseLayerToml(await readFile(join(cacheDir, bpDir, f), 'utf8'), join(cacheDir, bpDir, f));
                await writeFile(join(d, f), restoredLayerToml(t.metadata));
                await lchown(join(d, f), uid, gid);
              } else {
                await rename(join(cacheDir, bpDir, f), join(d, f));
                restoredCache.push(`${bpDir}/${f}`);
              }
            }
          }
          return true;
        },
      }),
    );
    const root = snap.root;
    const user = `${uid}:${gid}`;
    // the order: --buildpack's group, else /cnb/order.toml
    let order: GroupEntry[][];
    if (explicit.length) order = [explicit];
    else {
      const text = await readInRoot(root, '/cnb/order.toml');
      if (text === undefined) {
        throw new KilnError('BP_BUILDER', `builder ${req.bp.builder}: no /cnb/order.toml`, {
          hint: 'a builder image has /cnb/order.toml; or give the buildpacks with --buildpack',
        });
      }
      order = parseOrder(text, '/cnb/order.toml');
    }
    const platformEnv = new Map(req.bp.env ?? []);
    const baseEnv = (bp: Buildpack): Map<string, string> => {
      const e = new Map(benv);
      if (!bp.clearEnv) for (const [k, v] of platformEnv) e.set(k, v);
      e.set('CNB_PLATFORM_DIR', '/platform');
      e.set('CNB_BUILDPACK_DIR', bp.dir);
      e.set('CNB_TARGET_OS', req.platform.os);
      e.set('CNB_TARGET_ARCH', req.platform.architecture);
      e.set('CNB_PLATFORM_API', PLATFORM_API);
      return e;
    };
    const run = async (
      id: number,
      bp: Buildpack,
      exe: string,
      env: Map<string, string>,
    ): Promise<{ code: number; output: string }> => {
      let output = '';
      const res = await (executor as Executor).run({
        rootfs: root,
        argv: [`${bp.dir}/bin/${exe}`],
        env: [...env].map(([k, v]) => `${k}=${v}`),
        cwd: APP_DIR,
        user,
        network: req.network,
        mounts: [],
        onStdout: (b) => {
          output = (output + b.toString()).slice(-8000);
          req.progress.log(id, 'stdout', b);
        },
        onStderr: (b) => {
          output = (output + b.toString()).slice(-8000);
          req.progress.log(id, 'stderr', b);
        },
        ...(req.signal ? { signal: req.signal } : {}),
      });
      return { code: res.exitCode, output };
    };
    // detect
    const group = await phase('[detect]', async (id) => {
      const said: string[] = [];
      // as the lifecycle: a buildpack met again in a later group answers from its first run
      type Detected = { bp: Buildpack; code: number; plan: DetectResult['plan'] };
      const memo = new Map<string, Promise<Detected>>();
      const runDetect = async (bp: Buildpack): Promise<Detected> => {
        const planRel = `/layers/.kiln-detect/${escapeId(bp.id)}/${escapeId(bp.version)}/plan.toml`;
        const planHost = join(root, planRel);
        await mkdir(join(planHost, '..'), { recursive: true });
        await writeFile(planHost, '');
        await lchown(planHost, uid, gid);
        const env = baseEnv(bp);
        env.set('CNB_BUILD_PLAN_PATH', planRel);
        const { code, output } = await run(id, bp, 'detect', env);
        if (code !== 0 && code !== 100) {
          throw new KilnError(
            'BP_DETECT_ERROR',
            `buildpack ${bp.id}@${bp.version}: bin/detect exited ${code}: ${tail(output, 600)}`,
            { hint: 'exit 0 passes, 100 fails; any other code is an error of the buildpack' },
          );
        }
        const plan = code === 0 ? parseDetectPlan(await readFile(planHost, 'utf8'), `${bp.id}: build plan`) : [];
        return { bp, code, plan };
      };
      const detect = async (e: GroupEntry): Promise<Detected> => {
        const bp = await findBuildpack(root, e);
        const key = `${bp.id}@${bp.version}`;
        let p = memo.get(key);
        if (!p) {
          p = runDetect(bp);
          memo.set(key, p);
        }
        return { ...(await p), bp };
      };
      for (const [gi, g] of order.entries()) {
        // one at a time: the sandbox prepares its mount points in the shared build root
        const outs: Detected[] = [];
        for (const e of g) outs.push(await detect(e));
        const bps = outs.map((o) => o.bp);
        const results: DetectResult[] = outs.map((o, i) => ({
          id: o.bp.id,
          version: o.bp.version,
          optional: (g[i] as GroupEntry).optional,
          passed: o.code === 0,
          plan: o.plan,
        }));
        for (const r of results) {
          said.push(
            `group ${gi + 1}: ${r.id}@${r.version} ${r.passed ? 'passed' : 'failed'}${r.optional ? ' (optional)' : ''}`,
          );
        }
        const resolved = resolveGroup(results);
        if (resolved) {
          await rm(join(root, 'layers', '.kiln-detect'), { recursive: true, force: true });
          return resolved.group.map((r) => ({
            bp: bps.find((b) => b.id === r.id) as Buildpack,
            entries: r.entries,
          }));
        }
        if (results.every((r) => r.passed || r.optional)) said.push(`group ${gi + 1}: no build plan resolves`);
      }
      throw new KilnError('BP_DETECT_FAILED', `no buildpack group passed detection: ${said.join('; ')}`, {
        hint: 'check that the app has what one of the buildpacks looks for',
      });
    });
    // build
    const buildEnvOps: EnvOp[] = [];
    const layerTomls = new Map<string, Map<string, LayerToml>>();
    const processes = new Map<string, ProcessType>();
    const labels = new Map<string, string>();
    for (const { bp, entries } of group) {
      await phase(`[build] ${bp.id}@${bp.version}`, async (id) => {
        const esc = escapeId(bp.id);
        const bpLayers = join(root, 'layers', esc);
        await mkdir(bpLayers, { recursive: true });
        await lchown(bpLayers, uid, gid);
        const planRel = `/layers/.kiln-plan/${esc}.toml`;
        await mkdir(join(root, 'layers', '.kiln-plan'), { recursive: true });
        await writeFile(join(root, planRel), buildpackPlanToml(entries));
        await lchown(join(root, planRel), uid, gid);
        const env = baseEnv(bp);
        applyEnv(env, buildEnvOps);
        env.set('CNB_LAYERS_DIR', `/layers/${esc}`);
        env.set('CNB_BP_PLAN_PATH', planRel);
        const { code, output } = await run(id, bp, 'build', env);
        if (code !== 0) {
          throw new KilnError(
            'BP_BUILD_FAILED',
            `buildpack ${bp.id}@${bp.version}: bin/build exited ${code}: ${tail(output, 800)}`,
            {
              hint: 'the buildpack failed; its output is above',
            },
          );
        }
        const mine = new Map<string, LayerToml>();
        for (const f of (await listDir(bpLayers)) ?? []) {
          if (!f.endsWith('.toml') || ['launch.toml', 'build.toml', 'store.toml'].includes(f)) continue;
          const name = f.slice(0, -'.toml'.length);
          const t = parseLayerToml(await readFile(join(bpLayers, f), 'utf8'), `/layers/${esc}/${f}`);
          if (!t.launch && !t.build && !t.cache) continue; // not kept (API 0.6+: types must be set again)
          mine.set(name, t);
          if (t.build && (await isDir(join(bpLayers, name)))) {
            const p = `/layers/${esc}/${name}`;
            const ld = join(bpLayers, name);
            if (await isDir(join(ld, 'bin')))
              buildEnvOps.push({ name: 'PATH', op: 'prepend', value: `${p}/bin`, delim: ':' });
            if (await isDir(join(ld, 'lib'))) {
              buildEnvOps.push({ name: 'LD_LIBRARY_PATH', op: 'prepend', value: `${p}/lib`, delim: ':' });
              buildEnvOps.push({ name: 'LIBRARY_PATH', op: 'prepend', value: `${p}/lib`, delim: ':' });
            }
            buildEnvOps.push(...envOps(await envFiles(join(ld, 'env')), `${p}/env`));
            buildEnvOps.push(...envOps(await envFiles(join(ld, 'env.build')), `${p}/env.build`));
          }
        }
        layerTomls.set(bp.id, mine);
        const launch = await readFile(join(bpLayers, 'launch.toml'), 'utf8').catch(() => undefined);
        if (launch !== undefined) {
          const lt = parseLaunchToml(launch, `/layers/${esc}/launch.toml`, bp.id);
          for (const p of lt.processes) processes.set(p.type, p); // later buildpacks override a type
          for (const l of lt.labels) labels.set(l.key, l.value);
        }
      });
    }
    // export
    return await phase('[export]', async () =>
      exportImage({
        req,
        root,
        snap: snap as Snapshot,
        work,
        group: group.map((g) => g.bp),
        layerTomls,
        processes,
        labels,
        prev: previous,
        uid,
        gid,
        store,
        layersDir,
        cacheDir,
        runImageRef: req.bp.runImage ?? (await runImageOf(root, bcfg, req.bp.builder)),
        resolve,
        unpacker,
      }),
    );
  } finally {
    if (snap) await snap.release().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

/** The run image: /cnb/run.toml, /cnb/stack.toml, else the builder's metadata label. */
async function runImageOf(root: string, bcfg: ImageConfig, builder: string): Promise<string> {
  for (const f of ['/cnb/run.toml', '/cnb/stack.toml']) {
    const text = await readInRoot(root, f);
    if (text !== undefined) {
      const r = parseRunToml(text, f)[0];
      if (r) return r.image;
    }
  }
  const r = runImageFromBuilderLabel(bcfg.config?.Labels?.[BUILDER_METADATA]);
  if (r) return r.image;
  throw new KilnError(
    'BP_BUILDER',
    `builder ${builder}: no run image (no /cnb/run.toml, no ${BUILDER_METADATA} label)`,
    {
      hint: 'give --run-image IMAGE',
    },
  );
}

/** The buildpack of an order entry in the build root (the only version present when none is given). */
async function findBuildpack(root: string, e: GroupEntry): Promise<Buildpack> {
  const base = `/cnb/buildpacks/${escapeId(e.id)}`;
  let version = e.version;
  if (!version) {
    const vs = ((await listDir(join(root, base))) ?? []).filter((v) => !v.startsWith('.'));
    if (vs.length === 0) {
      throw new KilnError('BP_BUILDPACK', `buildpack ${e.id}: not in the builder (${base})`, {
        hint: 'check the id, or give the buildpack as a directory with --buildpack DIR',
      });
    }
    version = vs[vs.length - 1] as string;
  }
  const dir = `${base}/${version}`;
  const text = await readInRoot(root, `${dir}/buildpack.toml`);
  if (text === undefined) {
    throw new KilnError('BP_BUILDPACK', `buildpack ${e.id}@${version}: no ${dir}/buildpack.toml in the builder`, {
      hint: 'check the id and version (the builder lists /cnb/buildpacks/<id>/<version>)',
    });
  }
  const d = parseBuildpackToml(text, `${dir}/buildpack.toml`);
  return { ...d, dir, optional: e.optional };
}

interface Previous {
  image: Image;
  config: ImageConfig;
  meta: LifecycleMetadata;
}

async function previousImage(
  tag: string,
  req: BuildpacksRequest,
  bases: StoreFirstResolver,
): Promise<Previous | undefined> {
  try {
    const r = await bases.resolve(tag, { pull: req.publish, platform: req.platform });
    const config = await r.image.config();
    const label = config.config?.Labels?.[LIFECYCLE_METADATA];
    if (!label) return undefined;
    return { image: r.image, config, meta: JSON.parse(label) as LifecycleMetadata };
  } catch (e) {
    if (isKilnError(e) && !/not found|unknown|MANIFEST_UNKNOWN|NAME_UNKNOWN|404/i.test(`${e.code} ${e.message}`)) {
      req.progress.warn(`previous image ${tag}: ${e.message}; building without layer reuse`);
    }
    return undefined;
  }
}

interface ExportInput {
  req: BuildpacksRequest;
  root: string;
  snap: Snapshot;
  work: string;
  group: Buildpack[];
  layerTomls: Map<string, Map<string, LayerToml>>;
  processes: Map<string, ProcessType>;
  labels: Map<string, string>;
  prev: Previous | undefined;
  uid: number;
  gid: number;
  store: LocalStore;
  layersDir: string;
  cacheDir: string;
  runImageRef: string;
  resolve: (ref: string, what: string) => Promise<ResolvedBase>;
  unpacker: LocalLayerStore;
}

async function exportImage(x: ExportInput): Promise<BuildpacksResult> {
  const { req, root, work, uid, gid } = x;
  const run = await x.resolve(x.runImageRef, 'run image');
  const runCfg = await run.image.config();
  const runMt = await run.image.mediaType();
  const docker = runMt === MediaType.DockerManifest;
  const writer = new LocalLayerStore({
    layersDir: x.layersDir,
    blobs: x.store.blobs,
    mediaTypes: docker ? 'docker' : 'oci',
  });
  // a shell in the run image decides the launcher (its layers are unpacked once, then kept by diffID)
  const runDirs: string[] = [];
  for (const l of await run.image.layers()) runDirs.push(await x.unpacker.unpack(l));
  let hasShell = false;
  for (const d of runDirs.reverse()) {
    const st = await lstat(join(d, 'bin', 'sh')).catch(() => undefined);
    if (st) {
      hasShell = !st.isCharacterDevice();
      break;
    }
  }
  // launch layer env and profile scripts, read while the snapshot is still mounted
  const launchEnv: LaunchLayerEnv[] = [];
  for (const bp of x.group) {
    const esc = escapeId(bp.id);
    for (const [name, t] of [...(x.layerTomls.get(bp.id) ?? new Map<string, LayerToml>())].sort()) {
      if (!t.launch) continue;
      const ld = join(root, 'layers', esc, name);
      const p = `/layers/${esc}/${name}`;
      if (!(await isDir(ld))) {
        // reused from the previous image without reading it: its env as recorded then
        const st = x.prev?.meta.buildpacks?.find((b) => b.key === bp.id)?.layers?.[name]?.kilnLaunchEnv;
        launchEnv.push({
          path: p,
          hasBin: st?.bin ?? false,
          hasLib: st?.lib ?? false,
          ops: st?.ops ?? [],
          processOps: new Map(Object.entries(st?.processOps ?? {})),
          profile: st?.profile ?? [],
          processProfile: new Map(Object.entries(st?.processProfile ?? {})),
        });
        continue;
      }
      const processOps = new Map<string, EnvOp[]>();
      for (const pt of (await listDir(join(ld, 'env.launch'))) ?? []) {
        if (await isDir(join(ld, 'env.launch', pt))) {
          processOps.set(pt, envOps(await envFiles(join(ld, 'env.launch', pt)), `${p}/env.launch/${pt}`));
        }
      }
      const profile: string[] = [];
      const processProfile = new Map<string, string[]>();
      for (const f of (await listDir(join(ld, 'profile.d'))) ?? []) {
        if (await isDir(join(ld, 'profile.d', f))) {
          processProfile.set(
            f,
            ((await listDir(join(ld, 'profile.d', f))) ?? []).map((g) => `${p}/profile.d/${f}/${g}`),
          );
        } else profile.push(`${p}/profile.d/${f}`);
      }
      launchEnv.push({
        path: p,
        hasBin: await isDir(join(ld, 'bin')),
        hasLib: await isDir(join(ld, 'lib')),
        ops: [
          ...envOps(await envFiles(join(ld, 'env')), `${p}/env`),
          ...envOps(await envFiles(join(ld, 'env.launch')), `${p}/env.launch`),
        ],
        processOps,
        profile,
        processProfile,
      });
    }
  }
  const procs = [...x.processes.values()];
  const defaults = procs.filter((p) => p.default);
  const defaultProcess = defaults[defaults.length - 1]?.type ?? (x.processes.has('web') ? 'web' : undefined);
  const appProfile = (await readInRoot(root, `${APP_DIR}/.profile`)) !== undefined;
  const li: LauncherInput = { layers: launchEnv, processes: procs, appDir: APP_DIR, appProfile };
  if (defaultProcess) li.defaultProcess = defaultProcess;
  // the upper dir now holds /workspace and /layers as plain dirs
  await x.snap.unmount?.();
  const upper = x.snap.upper;
  const added: { layer: Layer; name: string; reused: boolean; diffID: string }[] = [];
  const prevLayers = x.prev ? await x.prev.image.layers() : [];
  const prevIds = x.prev?.config.rootfs.diff_ids ?? [];
  let n = 0;
  const stageDir = async (): Promise<string> => {
    const d = join(work, `export-${++n}`);
    await mkdir(d, { mode: 0o755 });
    return d;
  };
  const mkOwned = async (d: string): Promise<void> => {
    await mkdir(d, { recursive: true, mode: 0o755 });
    await lchown(d, uid, gid);
  };
  const write = async (dir: string, name: string): Promise<void> => {
    const w = await writer.writeBlob(dir, { sourceDateEpoch: EPOCH, inProcess: true });
    added.push({
      layer: await writer.layer(w.digest, w.diffID, w.size, w.mediaType),
      name,
      reused: false,
      diffID: w.diffID,
    });
  };
  const metaBuildpacks: NonNullable<LifecycleMetadata['buildpacks']> = [];
  const toCache: { from: string; esc: string; name: string; toml: LayerToml }[] = [];
  const sbom: { from: string; to: string }[] = [];
  for (const bp of x.group) {
    const esc = escapeId(bp.id);
    const layersMeta: Record<string, PreviousLayer> = {};
    const prevBp = x.prev?.meta.buildpacks?.find((b) => b.key === bp.id);
    for (const [name, t] of [...(x.layerTomls.get(bp.id) ?? new Map<string, LayerToml>())].sort()) {
      const src = join(upper, 'layers', esc, name);
      const present = await isDir(src);
      for (const ext of ['cdx', 'spdx', 'syft']) {
        const f = join(upper, 'layers', esc, `${name}.sbom.${ext}.json`);
        if (t.launch && (await lstat(f).catch(() => undefined))) {
          sbom.push({ from: f, to: join('layers', 'sbom', 'launch', esc, name, `sbom.${ext}.json`) });
        }
      }
      if (t.launch) {
        let diffID: string;
        if (present) {
          const s = await stageDir();
          await mkOwned(join(s, 'layers', esc));
          await lchown(join(s, 'layers'), uid, gid);
          await rename(src, join(s, 'layers', esc, name));
          await write(s, `${bp.id}:${name}`);
          diffID = (added[added.length - 1] as { diffID: string }).diffID;
          if (t.cache) toCache.push({ from: join(s, 'layers', esc, name), esc, name, toml: t });
        } else {
          const old = prevBp?.layers?.[name];
          const i = old ? prevIds.indexOf(old.sha) : -1;
          if (!old || i < 0 || !prevLayers[i]) {
            throw new KilnError(
              'BP_LAYER',
              `buildpack ${bp.id}: launch layer ${name} has no files and no previous layer to reuse`,
              {
                hint: `the buildpack wrote /layers/${esc}/${name}.toml with launch = true but no /layers/${esc}/${name}/ directory`,
              },
            );
          }
          added.push({ layer: prevLayers[i] as Layer, name: `${bp.id}:${name}`, reused: true, diffID: old.sha });
          diffID = old.sha;
        }
        const le = launchEnv.find((l) => l.path === `/layers/${esc}/${name}`);
        layersMeta[name] = { sha: diffID, data: t.metadata, launch: true, build: t.build, cache: t.cache };
        if (le) {
          layersMeta[name].kilnLaunchEnv = {
            bin: le.hasBin,
            lib: le.hasLib,
            ops: le.ops,
            processOps: Object.fromEntries(le.processOps),
            profile: le.profile,
            processProfile: Object.fromEntries(le.processProfile),
          };
        }
      } else if (t.cache && present) {
        toCache.push({ from: src, esc, name, toml: t });
      }
    }
    metaBuildpacks.push({ key: bp.id, version: bp.version, layers: layersMeta });
  }
  // the app layer
  {
    const s = await stageDir();
    await rename(join(upper, APP_DIR.slice(1)), join(s, APP_DIR.slice(1)));
    await write(s, 'app');
  }
  // the launcher and config layer
  const env = envMap(runCfg.config?.Env ?? []);
  const buildMeta = {
    buildpacks: x.group.map((b) => ({ id: b.id, version: b.version, ...(b.homepage ? { homepage: b.homepage } : {}) })),
    processes: procs.map((p) => ({
      type: p.type,
      command: p.command,
      args: p.args,
      direct: true,
      buildpackID: p.buildpackID,
      ...(p.workingDir ? { 'working-dir': p.workingDir } : {}),
    })),
    launcher: { version: 'kiln', source: { git: { repository: 'kiln', commit: '' } } },
    bom: [],
  };
  {
    const s = await stageDir();
    const cfgDir = join(s, 'layers', 'config');
    await mkOwned(cfgDir);
    await lchown(join(s, 'layers'), uid, gid);
    await writeFile(join(cfgDir, 'metadata.toml'), metadataToml(x.group, procs));
    if (hasShell) {
      await mkdir(join(s, 'cnb', 'lifecycle'), { recursive: true, mode: 0o755 });
      await mkdir(join(s, 'cnb', 'process'), { recursive: true, mode: 0o755 });
      await writeFile(join(s, 'cnb', 'lifecycle', 'launcher'), launcherScript(li), { mode: 0o755 });
      const { symlink } = await import('node:fs/promises');
      for (const p of procs) await symlink('/cnb/lifecycle/launcher', join(s, 'cnb', 'process', p.type));
    }
    await write(s, 'launcher');
  }
  if (sbom.length) {
    const s = await stageDir();
    for (const f of sbom) {
      await mkOwned(join(s, f.to, '..'));
      await rename(f.from, join(s, f.to));
    }
    await lchown(join(s, 'layers'), uid, gid);
    await write(s, 'sbom');
  }
  // config
  const runIds = runCfg.rootfs.diff_ids;
  const cfg: ImageConfig = structuredClone(runCfg);
  cfg.created = CREATED;
  const c = cfg.config ?? {};
  let imgEnv: Map<string, string>;
  if (hasShell) {
    imgEnv = new Map(env);
    imgEnv.set('CNB_LAYERS_DIR', '/layers');
    imgEnv.set('CNB_APP_DIR', APP_DIR);
    imgEnv.set('PATH', [env.get('PATH') ?? '/usr/local/bin:/usr/bin:/bin', '/cnb/process', '/cnb/lifecycle'].join(':'));
    c.Entrypoint = [defaultProcess ? `/cnb/process/${defaultProcess}` : '/cnb/lifecycle/launcher'];
    delete c.Cmd;
  } else {
    imgEnv = resolvedEnv(env, li);
    const d = defaultProcess ? x.processes.get(defaultProcess) : undefined;
    if (d) {
      c.Entrypoint = d.command;
      c.Cmd = d.args;
    } else {
      delete c.Entrypoint;
      delete c.Cmd;
    }
  }
  c.Env = [...imgEnv].map(([k, v]) => `${k}=${v}`);
  c.WorkingDir = APP_DIR;
  if (!c.User) c.User = `${uid}:${gid}`;
  const byName = new Map(added.map((a) => [a.name, a.diffID]));
  const lifecycle: LifecycleMetadata = {
    app: [{ sha: byName.get('app') as string }],
    config: { sha: byName.get('launcher') as string },
    launcher: { sha: byName.get('launcher') as string },
    buildpacks: metaBuildpacks,
    runImage: { topLayer: runIds[runIds.length - 1] ?? '', reference: run.digest, image: run.name },
  };
  if (byName.has('sbom')) lifecycle.sbom = { sha: byName.get('sbom') as string };
  c.Labels = {
    ...(c.Labels ?? {}),
    ...Object.fromEntries(x.labels),
    [LIFECYCLE_METADATA]: JSON.stringify(lifecycle),
    [BUILD_METADATA]: JSON.stringify(buildMeta),
    [PROJECT_METADATA]: '{}',
  };
  cfg.config = c;
  cfg.rootfs = { type: 'layers', diff_ids: [...runIds, ...added.map((a) => a.diffID)] };
  const history: History[] = [...(runCfg.history ?? [])];
  for (const a of added) history.push({ created: CREATED, created_by: `buildpacks: ${a.name}` });
  cfg.history = history;
  const rawConfig = Buffer.from(JSON.stringify(cfg));
  const runLayers = await run.image.layers();
  const layers = [...runLayers, ...added.map((a) => a.layer)];
  const annotations = {
    [BASE_NAME]: run.name,
    [BASE_DIGEST]: run.digest,
    [REBASABLE_LAYERS]: added.map((_, i) => String(runLayers.length + i)).join(','),
  };
  const image = imageFromParts({
    mediaType: async () => (docker ? MediaType.DockerManifest : MediaType.OCIManifest),
    rawConfig: async () => rawConfig,
    layers: async () => layers,
    annotations: async () => annotations,
  });
  const digest = sha256(await image.rawManifest());
  const result: BuildpacksResult = {
    digest,
    configDigest: sha256(rawConfig),
    group: x.group.map((b) => `${b.id}@${b.version}`),
    layers: added.map((a) => ({ name: a.name, digest: '', diffID: a.diffID, reused: a.reused })),
    runImage: { name: run.name, digest: run.digest },
    baseLayers: runIds.length,
    report: '',
  };
  for (const [i, a] of added.entries()) (result.layers[i] as ExportedLayer).digest = await a.layer.digest();
  if (req.publish) {
    const uploads = new Map<string, string>();
    for (const t of req.tags) {
      const ref = parseReferenceWithDefaultTag(t);
      const r = await push(image, ref, { ...req.registry, label: `push ${ref.toString()}` });
      for (const [k, v] of r.blobs) if (!uploads.has(k) || v === 'uploaded') uploads.set(k, v);
    }
    result.uploads = uploads;
  } else {
    await x.store.put(
      image,
      req.tags.map((t) => parseReferenceWithDefaultTag(t).toString()),
    );
  }
  // cache layers back to kiln's cache (only after a successful export)
  for (const cl of toCache) {
    const d = join(x.cacheDir, cl.esc);
    await mkdir(d, { recursive: true });
    await rm(join(d, cl.name), { recursive: true, force: true });
    await rename(cl.from, join(d, cl.name));
    await writeFile(join(d, `${cl.name}.toml`), `[types]\ncache = true\n${restoredLayerToml(cl.toml.metadata)}`);
  }
  const manifestSize = (await image.rawManifest()).length;
  result.report =
    `[image]\ntags = [${req.tags.map((t) => JSON.stringify(parseReferenceWithDefaultTag(t).toString())).join(', ')}]\n` +
    `digest = ${JSON.stringify(digest)}\nimage-id = ${JSON.stringify(result.configDigest)}\nmanifest-size = ${manifestSize}\n\n[build]\n`;
  return result;
}

/** `/layers/config/metadata.toml`: the processes and buildpacks, as the lifecycle's launcher reads them. */
function metadataToml(group: Buildpack[], procs: ProcessType[]): string {
  const q = (s: string): string => JSON.stringify(s);
  const arr = (a: string[]): string => `[${a.map(q).join(', ')}]`;
  let out = '';
  for (const b of group)
    out += `[[buildpacks]]\n  id = ${q(b.id)}\n  version = ${q(b.version)}\n  api = ${q(b.api)}\n\n`;
  for (const p of procs) {
    out += `[[processes]]\n  type = ${q(p.type)}\n  command = ${arr(p.command)}\n  args = ${arr(p.args)}\n  direct = true\n  buildpack-id = ${q(p.buildpackID)}\n`;
    if (p.workingDir) out += `  working-dir = ${q(p.workingDir)}\n`;
    out += '\n';
  }
  return out;
}
