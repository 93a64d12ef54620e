/**
 * `kiln build` options in their parsed form, and the parsers for the docker/buildx option syntaxes
 * (`--build-arg K[=v]`, `--label k=v`, `--output type=...,dest=...`, `--secret id=..,src=..`, `--platform`).
 * Every malformed value is one KilnError naming the option and the value.
 */
import { KilnError, errorMessage } from '../errors.js';
import type { Platform } from '../oci/types.js';
import { hostPlatform as ociHostPlatform, normalizePlatform, parsePlatform } from '../oci/platform.js';

export type OutputType = 'registry' | 'image' | 'oci' | 'docker' | 'local' | 'tar';

export interface OutputSpec {
  type: OutputType;
  /** File or dir; `-` means stdout (tar/oci/docker only). */
  dest?: string;
  /** Image names for `image`/`registry` (default: the -t tags). */
  names: string[];
  /** `type=image,push=true` / `type=registry`. */
  push: boolean;
  /** `type=oci|docker,tar=false` writes a layout dir instead of a tar. */
  tar: boolean;
  attrs: Record<string, string>;
}

export interface SecretSpec {
  id: string;
  /** File holding the secret. */
  src?: string;
  /** Environment variable holding the secret. */
  env?: string;
}

export type ProgressMode = 'auto' | 'tty' | 'plain' | 'json' | 'quiet';

export interface BuildOptions {
  /** The context directory. */
  context: string;
  /** Dockerfile path (default CONTEXT/Dockerfile); `-` reads stdin. */
  file?: string;
  tags: string[];
  /** --build-arg values (insertion ordered). */
  buildArgs: Map<string, string>;
  target?: string;
  labels: Record<string, string>;
  platform: Platform;
  noCache: boolean;
  pull: boolean;
  push: boolean;
  outputs: OutputSpec[];
  network: 'host' | 'none';
  secrets: SecretSpec[];
  iidfile?: string;
  metadataFile?: string;
  progress: ProgressMode;
  insecureRegistries: string[];
  registryMirrors: string[];
  debug: boolean;
  /** SOURCE_DATE_EPOCH in seconds (env or --build-arg). */
  sourceDateEpoch?: number;
  /** --cache-from / --cache-to values (parsed by src/cache/remote.ts). */
  cacheFrom?: string[];
  cacheTo?: string[];
  /** Compression of the layers this build writes (--compression / output compression=); default gzip. */
  compression?: LayerCompression;
  /** --compression-level / output compression-level= (gzip 0–9, zstd 1–22). */
  compressionLevel?: number;
  /** --isolation: how RUN steps are isolated (src/sandbox/isolation.ts); default userns. */
  isolation?: 'userns' | 'restricted' | 'vm';
}

export type LayerCompression = 'gzip' | 'zstd' | 'uncompressed';

/**
 * The layer compression of a build: `--compression`/`--compression-level`, or BuildKit's output attributes
 * `compression=` and `compression-level=` (which must agree across outputs: layers are written once).
 */
export function parseCompression(
  flag: string | undefined,
  levelFlag: string | undefined,
  outputs: OutputSpec[],
): { compression?: LayerCompression; level?: number } {
  const fail = (msg: string, hint: string): KilnError => new KilnError('OPTION_INVALID', msg, { hint });
  const seen = new Set<string>();
  const levels = new Set<string>();
  if (flag !== undefined) seen.add(flag);
  if (levelFlag !== undefined) levels.add(levelFlag);
  for (const o of outputs) {
    if (o.attrs.compression !== undefined) seen.add(o.attrs.compression);
    if (o.attrs['compression-level'] !== undefined) levels.add(o.attrs['compression-level']);
  }
  if (seen.size > 1 || levels.size > 1) {
    throw fail(
      `conflicting layer compression settings: ${[...seen, ...levels].join(', ')}`,
      'give one --compression (and --compression-level) for the whole build',
    );
  }
  const out: { compression?: LayerCompression; level?: number } = {};
  const c = [...seen][0];
  if (c !== undefined) {
    if (c !== 'gzip' && c !== 'zstd' && c !== 'uncompressed') {
      throw fail(`unknown compression "${c}"`, 'use gzip, zstd or uncompressed');
    }
    out.compression = c;
  }
  const l = [...levels][0];
  if (l !== undefined) {
    const n = Number(l);
    const max = out.compression === 'zstd' ? 22 : 9;
    if (!/^-?\d+$/.test(l) || n < (out.compression === 'zstd' ? 1 : 0) || n > max) {
      throw fail(
        `invalid compression level "${l}"`,
        out.compression === 'zstd' ? 'zstd levels are 1–22' : 'gzip levels are 0–9',
      );
    }
    out.level = n;
  }
  return out;
}

/** The host platform in OCI terms (normalised like containerd: arm64 has no v8 variant). */
export function hostPlatform(): Platform {
  return ociHostPlatform();
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** Parse `--platform` (only the host platform can be built: RUN executes natively). */
export function parsePlatformOption(v: string | undefined): Platform {
  const host = hostPlatform();
  if (v === undefined || v === '') return host;
  if (v.includes(',')) {
    throw new KilnError('PLATFORM_UNSUPPORTED', `--platform ${v}: multi-platform builds are not supported`, {
      hint: `build one platform at a time; this host builds ${formatPlatform(host)}`,
    });
  }
  let want: Platform;
  try {
    want = normalizePlatform(parsePlatform(v));
  } catch (e) {
    throw new KilnError('PLATFORM_INVALID', `--platform ${v}: ${errorMessage(e)}`, { hint: 'use os/arch[/variant]' });
  }
  const have = normalizePlatform(host);
  if (want.os !== have.os || want.architecture !== have.architecture || (want.variant ?? '') !== (have.variant ?? '')) {
    throw new KilnError('PLATFORM_UNSUPPORTED', `--platform ${v}: cannot build for a foreign platform`, {
      hint: `kiln runs RUN steps natively; this host builds ${formatPlatform(host)}`,
    });
  }
  return host;
}

/** Split a buildx CSV option value (`a=b,c="d,e"`) into fields, honouring double quotes. */
export function splitCSV(v: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const ch of v) {
    if (ch === '"') quoted = !quoted;
    else if (ch === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (quoted) throw new KilnError('OPTION_INVALID', `unterminated quote in "${v}"`);
  out.push(cur);
  return out.map((s) => s.trim()).filter((s) => s !== '');
}

function keyValues(option: string, v: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of splitCSV(v)) {
    const i = f.indexOf('=');
    if (i <= 0) throw new KilnError('OPTION_INVALID', `${option} ${v}: expected key=value, got "${f}"`);
    out[f.slice(0, i).toLowerCase()] = f.slice(i + 1);
  }
  return out;
}

function boolAttr(option: string, attrs: Record<string, string>, key: string, def: boolean): boolean {
  const v = attrs[key];
  if (v === undefined) return def;
  if (v === '' || v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  throw new KilnError('OPTION_INVALID', `${option}: ${key}=${v} is not a boolean`);
}

/** Parse one `--output` value (buildx syntax, including the `-o DIR` and `-o -` shorthands). */
export function parseOutput(v: string): OutputSpec {
  const opt = '--output';
  if (!v.includes('=')) {
    if (v === '-') return { type: 'tar', dest: '-', names: [], push: false, tar: true, attrs: {} };
    return { type: 'local', dest: v, names: [], push: false, tar: false, attrs: {} };
  }
  const attrs = keyValues(opt, v);
  const type = attrs.type;
  if (type === undefined) throw new KilnError('OPTION_INVALID', `${opt} ${v}: missing type=`);
  const known: OutputType[] = ['registry', 'image', 'oci', 'docker', 'local', 'tar'];
  if (!known.includes(type as OutputType)) {
    throw new KilnError('OPTION_INVALID', `${opt} ${v}: unknown output type "${type}"`, {
      hint: 'use one of ' + known.join(', '),
    });
  }
  const t = type as OutputType;
  const names = (attrs.name ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const spec: OutputSpec = {
    type: t,
    names,
    push: t === 'registry' || boolAttr(opt, attrs, 'push', false),
    tar: t === 'oci' || t === 'docker' ? boolAttr(opt, attrs, 'tar', true) : t === 'tar',
    attrs,
  };
  if (attrs.dest !== undefined) spec.dest = attrs.dest;
  if ((t === 'local' || t === 'tar' || t === 'oci' || t === 'docker') && !spec.dest) {
    if (t === 'local') throw new KilnError('OPTION_INVALID', `${opt} ${v}: type=local needs dest=DIR`);
    throw new KilnError('OPTION_INVALID', `${opt} ${v}: type=${t} needs dest=FILE (or dest=- for stdout)`);
  }
  if (spec.dest === '-' && (t === 'local' || !spec.tar)) {
    throw new KilnError('OPTION_INVALID', `${opt} ${v}: dest=- needs a tar output`);
  }
  return spec;
}

/** Parse `--build-arg K=v` / `--build-arg K` (value from the environment; skipped when unset, like docker). */
export function parseBuildArgs(values: string[], env: NodeJS.ProcessEnv = process.env): Map<string, string> {
  const out = new Map<string, string>();
  for (const v of values) {
    const i = v.indexOf('=');
    if (i === 0) throw new KilnError('OPTION_INVALID', `--build-arg ${v}: missing name`);
    if (i < 0) {
      const e = env[v];
      if (e !== undefined) out.set(v, e);
    } else out.set(v.slice(0, i), v.slice(i + 1));
  }
  return out;
}

/** Parse `--label k=v` (a bare `k` is an empty label, like docker). */
export function parseLabels(values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const i = v.indexOf('=');
    if (i === 0) throw new KilnError('OPTION_INVALID', `--label ${v}: missing name`);
    if (i < 0) out[v] = '';
    else out[v.slice(0, i)] = v.slice(i + 1);
  }
  return out;
}

/** Parse `--secret id=x,src=path|env=VAR` (`type=file|env`, `source=`/`required` accepted like buildx). */
export function parseSecret(v: string, env: NodeJS.ProcessEnv = process.env): SecretSpec {
  const attrs = keyValues('--secret', v);
  const id = attrs.id;
  if (!id) throw new KilnError('OPTION_INVALID', `--secret ${v}: missing id=`);
  const src = attrs.src ?? attrs.source;
  const type = attrs.type;
  if (type !== undefined && type !== 'file' && type !== 'env') {
    throw new KilnError('OPTION_INVALID', `--secret ${v}: unknown type "${type}"`, {
      hint: 'use type=file or type=env',
    });
  }
  if (attrs.env !== undefined) return { id, env: attrs.env };
  if (type === 'env') return { id, env: src ?? id };
  if (src !== undefined) return { id, src };
  // buildx: no source → an environment variable named like the id, else a file named like the id
  if (env[id] !== undefined) return { id, env: id };
  return { id, src: id };
}

/** SOURCE_DATE_EPOCH from --build-arg (wins, as buildx) or the environment. */
export function parseSourceDateEpoch(buildArgs: Map<string, string>, env: NodeJS.ProcessEnv): number | undefined {
  const v = buildArgs.get('SOURCE_DATE_EPOCH') ?? env.SOURCE_DATE_EPOCH;
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v)) {
    throw new KilnError('OPTION_INVALID', `SOURCE_DATE_EPOCH=${v}: not a number of seconds`, {
      hint: 'e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)',
    });
  }
  return Number(v);
}

export function parseNetwork(v: string | undefined): 'host' | 'none' {
  if (v === undefined || v === '' || v === 'host' || v === 'default') return 'host';
  if (v === 'none') return 'none';
  throw new KilnError('OPTION_INVALID', `--network ${v}: unsupported`, { hint: 'use --network host or none' });
}

export function parseProgress(v: string | undefined): ProgressMode {
  const mode = v ?? 'auto';
  if (['auto', 'tty', 'plain', 'json', 'quiet'].includes(mode)) return mode as ProgressMode;
  throw new KilnError('OPTION_INVALID', `--progress ${mode}: unknown mode`, { hint: 'use auto, tty, plain or json' });
}
