/**
 * Build arguments: `--build-arg` parsing, BuildKit's predefined (platform, proxy) args, the global (meta) ARG
 * scope before the first FROM, and the "build-args were not consumed" warning.
 *
 * Modelled on moby/buildkit frontend/dockerfile/dockerfile2llb (convert.go: buildMetaArgs, proxyEnvFromBuildArgs;
 * platform.go: defaultArgs), llb.EnvList (ordered environment where re-setting a key moves it to the end), the
 * executor's proxy environment, and docker/buildx's `--build-arg NAME` (value taken from the process environment).
 */
import { KilnError } from '../errors.js';
import type { Platform } from '../oci/types.js';
import type { ArgInstruction } from './instructions.js';
import { processWordWithMatches, type EnvGetter, type LexOptions } from './shell.js';

/** Build-arg values given on the command line (`--build-arg`). */
export type BuildArgs = ReadonlyMap<string, string>;

/**
 * An ordered environment with BuildKit llb.EnvList semantics: the last write of a key wins and moves the key to the
 * end; `toArray()` gives `KEY=value` strings in that order. Usable directly as a shell EnvGetter.
 */
export class EnvList implements EnvGetter {
  private readonly m = new Map<string, string>();

  constructor(init?: Iterable<readonly [string, string]> | readonly string[]) {
    if (init) {
      for (const e of init as Iterable<unknown>) {
        if (typeof e === 'string') {
          const i = e.indexOf('=');
          this.set(i < 0 ? e : e.slice(0, i), i < 0 ? '' : e.slice(i + 1));
        } else {
          const [k, v] = e as readonly [string, string];
          this.set(k, v);
        }
      }
    }
  }

  set(key: string, value: string): this {
    this.m.delete(key);
    this.m.set(key, value);
    return this;
  }
  delete(key: string): this {
    this.m.delete(key);
    return this;
  }
  get(key: string): string | undefined {
    return this.m.get(key);
  }
  has(key: string): boolean {
    return this.m.has(key);
  }
  keys(): string[] {
    return [...this.m.keys()];
  }
  entries(): [string, string][] {
    return [...this.m.entries()];
  }
  toArray(): string[] {
    return this.entries().map(([k, v]) => `${k}=${v}`);
  }
  clone(): EnvList {
    return new EnvList(this.entries());
  }
  get size(): number {
    return this.m.size;
  }
  /** JSON form: `{KEY: value}` in order. */
  toJSON(): Record<string, string> {
    return Object.fromEntries(this.m);
  }
}

/** Predefined proxy args: usable by RUN without an ARG, not recorded in history unless declared. */
export const PROXY_ARGS: readonly string[] = [
  'HTTP_PROXY',
  'http_proxy',
  'HTTPS_PROXY',
  'https_proxy',
  'FTP_PROXY',
  'ftp_proxy',
  'NO_PROXY',
  'no_proxy',
  'ALL_PROXY',
  'all_proxy',
];

/** Automatic platform args (global scope; a stage needs `ARG NAME` to see them). */
export const PLATFORM_ARGS: readonly string[] = [
  'BUILDPLATFORM',
  'BUILDOS',
  'BUILDOSVERSION',
  'BUILDARCH',
  'BUILDVARIANT',
  'TARGETPLATFORM',
  'TARGETOS',
  'TARGETOSVERSION',
  'TARGETARCH',
  'TARGETVARIANT',
  'TARGETSTAGE',
];

/** Args BuildKit reads but never puts into a stage environment. */
export const NON_ENV_ARGS: readonly string[] = ['BUILDKIT_SBOM_SCAN_CONTEXT', 'BUILDKIT_SBOM_SCAN_STAGE'];

/** containerd platforms.Format: `os/arch[/variant]` (`unknown` without an OS). */
export function formatPlatform(p: Platform): string {
  if (!p.os) return 'unknown';
  return [p.os, p.architecture, p.variant].filter((x) => x !== undefined && x !== '').join('/');
}

/** containerd platforms.FormatAll: like formatPlatform, with `os(os.version)` when an OS version is set. */
export function formatPlatformAll(p: Platform): string {
  if (!p.os) return 'unknown';
  const os = p['os.version'] ? `${p.os}(${p['os.version']})` : p.os;
  return [os, p.architecture, p.variant].filter((x) => x !== undefined && x !== '').join('/');
}

/**
 * Parse `--build-arg` values: `NAME=value`, or `NAME` alone taking the value from `env` (skipped when unset there,
 * as docker buildx does). Later values override earlier ones.
 */
export function parseBuildArgs(values: readonly string[], env: NodeJS.ProcessEnv = process.env): Map<string, string> {
  const out = new Map<string, string>();
  for (const v of values) {
    const i = v.indexOf('=');
    if (i === 0) {
      throw new KilnError('BUILD_ARG_INVALID', `invalid --build-arg ${JSON.stringify(v)}: missing name`, {
        hint: 'use --build-arg NAME=value, or --build-arg NAME to take the value from the environment',
      });
    }
    if (i > 0) out.set(v.slice(0, i), v.slice(i + 1));
    else {
      const e = env[v];
      if (e !== undefined) out.set(v, e);
    }
  }
  return out;
}

export interface DefaultArgsOptions {
  targetPlatform: Platform;
  /** Defaults to the target platform. */
  buildPlatform?: Platform;
  /** The `--target` stage name, or the last stage's name; '' or undefined gives `default`. */
  target?: string;
  buildArgs?: BuildArgs;
}

/** BuildKit's automatic platform args (with `--build-arg` overrides), in BuildKit's order. */
export function defaultArgs(o: DefaultArgsOptions): EnvList {
  const bp = o.buildPlatform ?? o.targetPlatform;
  const tp = o.targetPlatform;
  const pairs: [string, string][] = [
    ['BUILDPLATFORM', formatPlatform(bp)],
    ['BUILDOS', bp.os],
    ['BUILDOSVERSION', bp['os.version'] ?? ''],
    ['BUILDARCH', bp.architecture],
    ['BUILDVARIANT', bp.variant ?? ''],
    ['TARGETPLATFORM', formatPlatformAll(tp)],
    ['TARGETOS', tp.os],
    ['TARGETOSVERSION', tp['os.version'] ?? ''],
    ['TARGETARCH', tp.architecture],
    ['TARGETVARIANT', tp.variant ?? ''],
    ['TARGETSTAGE', o.target ? o.target : 'default'],
  ];
  const env = new EnvList();
  for (const [k, v] of pairs) env.set(k, o.buildArgs?.get(k) ?? v);
  return env;
}

/**
 * The proxy environment BuildKit adds to every RUN from proxy build args (case-insensitive names; with both
 * spellings given, the lower-case one wins as keys are applied in sorted order). Each set value is exported in
 * both spellings, e.g. `HTTP_PROXY=v`, `http_proxy=v`; empty values are not exported.
 */
export function proxyEnv(buildArgs: BuildArgs): string[] {
  const vals: Record<string, string> = {};
  for (const k of [...buildArgs.keys()].sort()) {
    const lk = k.toLowerCase();
    if (['http_proxy', 'https_proxy', 'ftp_proxy', 'no_proxy', 'all_proxy'].includes(lk)) vals[lk] = buildArgs.get(k)!;
  }
  const out: string[] = [];
  for (const lk of ['http_proxy', 'https_proxy', 'ftp_proxy', 'no_proxy', 'all_proxy']) {
    const v = vals[lk];
    if (v) out.push(`${lk.toUpperCase()}=${v}`, `${lk}=${v}`);
  }
  return out;
}

/** A declared ARG and the value it resolved to. */
export interface ArgValue {
  key: string;
  /** Undefined when declared without default and not set by a build arg (or global). */
  value: string | undefined;
  line: number;
}

/** The global (meta) ARG scope: FROM lines are expanded with `env`; stages may re-declare these ARGs. */
export interface GlobalArgs {
  /** Platform args + meta ARGs with values (build args applied). */
  env: EnvList;
  /** Meta ARGs in declaration order. */
  declared: ArgValue[];
  /** Build args consumed by the meta scope (declared there). */
  consumed: Set<string>;
}

export interface GlobalArgsOptions extends DefaultArgsOptions {
  escape?: string;
  /** Dockerfile name for error messages. */
  file?: string;
}

/** `Dockerfile:LINE: message` KilnError for expansion problems. */
export function expansionError(file: string | undefined, line: number, e: unknown): KilnError {
  const msg = e instanceof Error ? e.message : String(e);
  const hint = e instanceof KilnError ? e.hint : undefined;
  return new KilnError('DOCKERFILE_EXPANSION', `${file ?? 'Dockerfile'}:${line}: ${msg}`, {
    ...(hint !== undefined ? { hint } : {}),
    cause: e,
  });
}

/**
 * Resolve the ARGs before the first FROM (BuildKit buildMetaArgs): each default is expanded with the args defined
 * so far (platform args included); a `--build-arg` replaces the default (and is then consumed).
 */
export function resolveGlobalArgs(metaArgs: readonly ArgInstruction[], o: GlobalArgsOptions): GlobalArgs {
  const env = defaultArgs(o);
  const declared: ArgValue[] = [];
  const consumed = new Set<string>();
  const lex: LexOptions = o.escape ? { escape: o.escape } : {};
  for (const cmd of metaArgs) {
    for (const a of cmd.args) {
      let value: string | undefined;
      const given = o.buildArgs?.get(a.key);
      if (given !== undefined) {
        value = given;
        consumed.add(a.key);
      } else if (a.value !== undefined) {
        try {
          value = processWordWithMatches(a.value, env, lex).result;
        } catch (e) {
          throw expansionError(o.file, cmd.range.startLine, e);
        }
      }
      if (value !== undefined) env.set(a.key, value);
      declared.push({ key: a.key, value, line: cmd.range.startLine });
    }
  }
  return { env, declared, consumed };
}

/** Is `name` a build arg BuildKit/Docker use without an ARG (so it never counts as unused)? */
export function isBuiltinBuildArg(name: string): boolean {
  return (
    // BuildKit takes proxy args case-insensitively (proxyEnvFromBuildArgs uses EqualFold)
    PROXY_ARGS.includes(name.toLowerCase()) ||
    PLATFORM_ARGS.includes(name) ||
    name === 'SOURCE_DATE_EPOCH' ||
    name.startsWith('BUILDKIT_')
  );
}

/** Build args that were passed but never declared by an ARG in the meta scope or a built stage (sorted). */
export function unusedBuildArgs(buildArgs: BuildArgs, consumed: ReadonlySet<string>): string[] {
  return [...buildArgs.keys()].filter((k) => !consumed.has(k) && !isBuiltinBuildArg(k)).sort();
}

/** Docker's warning text for unused build args, or undefined when all were consumed. */
export function unusedBuildArgsWarning(unused: readonly string[]): string | undefined {
  if (unused.length === 0) return undefined;
  return `[Warning] One or more build-args [${unused.join(' ')}] were not consumed`;
}
