/**
 * The Cloud Native Buildpacks files kiln reads and writes as the platform (buildpacks/spec, Buildpack API 0.10,
 * Platform API 0.12): `order.toml`, `run.toml`, `buildpack.toml`, the detect build plan, `<layer>.toml`,
 * `launch.toml`, the layer environment directories, and the build plan resolution of `provides`/`requires`.
 * Pure functions (no I/O): the build (src/strategies/buildpacks/build.ts) feeds them file texts, so every rule here
 * is unit-tested without a sandbox, and every malformed file is one KilnError naming the file and the key.
 */
import { parse as parseTomlText } from 'smol-toml';
import { KilnError, errorMessage } from '../../errors.js';
import { ENV_NAME } from './flags.js';

export { parsePlatformEnv } from './flags.js';

/** The directory name of a buildpack id, as the lifecycle escapes it (`acme/static` → `acme_static`). */
export function escapeId(id: string): string {
  return id.replace(/\//g, '_');
}

type Table = Record<string, unknown>;

function isTable(v: unknown): v is Table {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** Parse TOML text; a syntax error names the file (and smol-toml's line/column). */
export function parseToml(text: string, file: string): Table {
  try {
    // plain objects (smol-toml's tables have no prototype; dates become their ISO strings)
    return JSON.parse(JSON.stringify(parseTomlText(text))) as Table;
  } catch (e) {
    const msg = errorMessage(e).split('\n')[0] ?? 'invalid TOML';
    throw new KilnError('BP_TOML_INVALID', `${file}: ${msg}`, {
      hint: 'fix the TOML syntax (https://toml.io)',
      cause: e,
    });
  }
}

function bad(file: string, key: string, want: string): KilnError {
  return new KilnError('BP_TOML_INVALID', `${file}: key ${key} must be ${want}`, {
    hint: 'see the Cloud Native Buildpacks spec (buildpack.md) for this file',
  });
}

function str(t: Table, key: string, file: string, path: string, required = false): string | undefined {
  const v = t[key];
  if (v === undefined) {
    if (required) throw bad(file, path, 'set (a string)');
    return undefined;
  }
  if (typeof v !== 'string') throw bad(file, path, 'a string');
  return v;
}

function bool(t: Table, key: string, file: string, path: string): boolean {
  const v = t[key];
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw bad(file, path, 'a boolean');
  return v;
}

function tables(t: Table, key: string, file: string): Table[] {
  const v = t[key];
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every(isTable)) throw bad(file, key, 'an array of tables ([[' + key + ']])');
  return v;
}

function strings(v: unknown, file: string, path: string): string[] {
  if (v === undefined) return [];
  if (typeof v === 'string') return [v];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw bad(file, path, 'an array of strings');
  return v as string[];
}

/** One entry of an order group. */
export interface GroupEntry {
  id: string;
  version?: string;
  optional: boolean;
}

/** `/cnb/order.toml`: `[[order]]` groups of `[[order.group]]` entries. */
export function parseOrder(text: string, file: string): GroupEntry[][] {
  const t = parseToml(text, file);
  return tables(t, 'order', file).map((o, i) =>
    tables(o, 'group', file).map((g, j) => {
      const e: GroupEntry = {
        id: str(g, 'id', file, `order[${i}].group[${j}].id`, true) as string,
        optional: bool(g, 'optional', file, `order[${i}].group[${j}].optional`),
      };
      const v = str(g, 'version', file, `order[${i}].group[${j}].version`);
      if (v) e.version = v;
      return e;
    }),
  );
}

/** A run image and its mirrors (`/cnb/run.toml`, or the builder's metadata label). */
export interface RunImageRef {
  image: string;
  mirrors: string[];
}

/** `/cnb/run.toml` (`[[images]]`), or the deprecated `/cnb/stack.toml` (`[run-image]`). */
export function parseRunToml(text: string, file: string): RunImageRef[] {
  const t = parseToml(text, file);
  const out: RunImageRef[] = tables(t, 'images', file).map((im, i) => ({
    image: str(im, 'image', file, `images[${i}].image`, true) as string,
    mirrors: strings(im.mirrors, file, `images[${i}].mirrors`),
  }));
  const legacy = t['run-image'];
  if (out.length === 0 && isTable(legacy)) {
    const image = str(legacy, 'image', file, 'run-image.image');
    if (image) out.push({ image, mirrors: strings(legacy.mirrors, file, 'run-image.mirrors') });
  }
  return out;
}

/** The run image named by `io.buildpacks.builder.metadata` (`stack.runImage` or `runImages[0]`). */
export function runImageFromBuilderLabel(json: string | undefined): RunImageRef | undefined {
  if (!json) return undefined;
  try {
    const m = JSON.parse(json) as {
      runImages?: { image?: string; mirrors?: string[] }[];
      stack?: { runImage?: { image?: string; mirrors?: string[] } };
    };
    const r = m.runImages?.[0] ?? m.stack?.runImage;
    return r?.image ? { image: r.image, mirrors: r.mirrors ?? [] } : undefined;
  } catch {
    return undefined;
  }
}

/** `buildpack.toml`, the parts the platform uses. */
export interface BuildpackDescriptor {
  api: string;
  id: string;
  version: string;
  name?: string;
  /** Do not give the buildpack the user's platform env vars. */
  clearEnv: boolean;
  homepage?: string;
}

/** Parse `buildpack.toml`; order buildpacks (composite, `[[order]]`) are refused with a clear line. */
export function parseBuildpackToml(text: string, file: string): BuildpackDescriptor {
  const t = parseToml(text, file);
  const bp = t.buildpack;
  if (!isTable(bp)) throw bad(file, 'buildpack', 'a table ([buildpack])');
  if (t.order !== undefined) {
    throw new KilnError(
      'BP_UNSUPPORTED',
      `${file}: composite buildpacks ([[order]] in buildpack.toml) are not supported`,
      {
        hint: 'list the component buildpacks in the builder order or with --buildpack instead',
      },
    );
  }
  const d: BuildpackDescriptor = {
    api: str(t, 'api', file, 'api', true) as string,
    id: str(bp, 'id', file, 'buildpack.id', true) as string,
    version: str(bp, 'version', file, 'buildpack.version', true) as string,
    clearEnv: bool(bp, 'clear-env', file, 'buildpack.clear-env'),
  };
  const name = str(bp, 'name', file, 'buildpack.name');
  if (name) d.name = name;
  const home = str(bp, 'homepage', file, 'buildpack.homepage');
  if (home) d.homepage = home;
  const [maj, min] = d.api.split('.').map(Number);
  if (maj !== 0 || min === undefined || Number.isNaN(min) || min < 7) {
    throw new KilnError('BP_UNSUPPORTED', `${file}: buildpack API ${d.api} is not supported`, {
      hint: 'kiln implements Buildpack API 0.7 to 0.11 (set api = "0.10")',
    });
  }
  return d;
}

/** A build plan entry a buildpack provides or requires. */
export interface PlanRequire {
  name: string;
  metadata: Table;
}

/** One alternative of a detect plan. */
export interface PlanAlternative {
  provides: string[];
  requires: PlanRequire[];
}

/** The build plan bin/detect wrote: its primary `provides`/`requires`, then each `[[or]]` alternative. */
export function parseDetectPlan(text: string, file: string): PlanAlternative[] {
  const t = parseToml(text, file);
  const alt = (x: Table, prefix: string): PlanAlternative => ({
    provides: tables(x, 'provides', file).map(
      (p, i) => str(p, 'name', file, `${prefix}provides[${i}].name`, true) as string,
    ),
    requires: tables(x, 'requires', file).map((r, i) => {
      const md = r.metadata;
      if (md !== undefined && !isTable(md)) throw bad(file, `${prefix}requires[${i}].metadata`, 'a table');
      return { name: str(r, 'name', file, `${prefix}requires[${i}].name`, true) as string, metadata: md ?? {} };
    }),
  });
  return [alt(t, ''), ...tables(t, 'or', file).map((o, i) => alt(o, `or[${i}].`))];
}

/** What detect said about one buildpack. */
export interface DetectResult {
  id: string;
  version: string;
  optional: boolean;
  passed: boolean;
  /** The plan alternatives (an empty primary alternative when detect wrote no plan). */
  plan: PlanAlternative[];
}

/** The chosen group: each buildpack with the plan entries it provides. */
export interface ResolvedGroup {
  group: { id: string; version: string; entries: PlanRequire[] }[];
}

/**
 * Resolve a detected group (platform.md "build plan"): drop optional buildpacks that failed, then find a choice of
 * one plan alternative per buildpack (and, failing that, leave out optional buildpacks, later ones first) such that
 * every `requires` is provided by that buildpack or one before it and every `provides` is required by that
 * buildpack or one after it. Returns undefined when no choice works.
 */
export function resolveGroup(results: DetectResult[]): ResolvedGroup | undefined {
  if (results.some((r) => !r.passed && !r.optional)) return undefined;
  const passed = results.filter((r) => r.passed);
  const optionalIdx = passed.flatMap((r, i) => (r.optional ? [i] : []));
  // subsets of the optional buildpacks, most included first
  const subsets: Set<number>[] = [];
  const n = Math.min(optionalIdx.length, 12);
  for (let mask = 0; mask < 1 << n; mask++) {
    const drop = new Set<number>();
    for (let b = 0; b < n; b++) if (mask & (1 << b)) drop.add(optionalIdx[n - 1 - b] as number);
    subsets.push(drop);
  }
  subsets.sort((a, b) => a.size - b.size);
  for (const drop of subsets) {
    const group = passed.filter((_, i) => !drop.has(i));
    const choice = chooseAlternatives(group);
    if (choice) return choice;
  }
  return undefined;
}

function chooseAlternatives(group: DetectResult[]): ResolvedGroup | undefined {
  const picks: PlanAlternative[] = [];
  const tryFrom = (i: number): boolean => {
    if (i === group.length) return planWorks(picks);
    const alts = (group[i] as DetectResult).plan.length
      ? (group[i] as DetectResult).plan
      : [{ provides: [], requires: [] }];
    for (const a of alts) {
      picks.push(a);
      if (tryFrom(i + 1)) return true;
      picks.pop();
    }
    return false;
  };
  if (!tryFrom(0)) return undefined;
  return {
    group: group.map((r, i) => {
      const provides = new Set((picks[i] as PlanAlternative).provides);
      // entries of what this buildpack provides, from every requirer at or after it (merged by name)
      const entries: PlanRequire[] = [];
      for (let j = i; j < group.length; j++) {
        for (const rq of (picks[j] as PlanAlternative).requires) if (provides.has(rq.name)) entries.push(rq);
      }
      return { id: r.id, version: r.version, entries };
    }),
  };
}

function planWorks(picks: PlanAlternative[]): boolean {
  for (let i = 0; i < picks.length; i++) {
    const p = picks[i] as PlanAlternative;
    for (const rq of p.requires) {
      if (!picks.slice(0, i + 1).some((q) => q.provides.includes(rq.name))) return false;
    }
    for (const pv of p.provides) {
      if (!picks.slice(i).some((q) => q.requires.some((r) => r.name === pv))) return false;
    }
  }
  return true;
}

/** The buildpack plan file (`CNB_BP_PLAN_PATH`) of one buildpack. */
export function buildpackPlanToml(entries: PlanRequire[]): string {
  return entries
    .map((e) => `[[entries]]\nname = ${JSON.stringify(e.name)}\n` + metadataToml(e.metadata, 'entries.metadata'))
    .join('\n');
}

function metadataToml(md: Table, prefix: string): string {
  if (Object.keys(md).length === 0) return '';
  // smol-toml's stringify writes a document; nest it under the entry's metadata table
  return (
    `[${prefix}]\n` +
    Object.entries(md)
      .map(([k, v]) => `${JSON.stringify(k)} = ${tomlValue(v)}\n`)
      .join('')
  );
}

function tomlValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  if (isTable(v))
    return `{ ${Object.entries(v)
      .map(([k, x]) => `${JSON.stringify(k)} = ${tomlValue(x)}`)
      .join(', ')} }`;
  return JSON.stringify(String(v));
}

/** `<layer>.toml`. */
export interface LayerToml {
  launch: boolean;
  build: boolean;
  cache: boolean;
  metadata: Table;
}

export function parseLayerToml(text: string, file: string): LayerToml {
  const t = parseToml(text, file);
  const types = t.types ?? {};
  if (!isTable(types)) throw bad(file, 'types', 'a table ([types])');
  for (const k of ['launch', 'build', 'cache']) {
    if (t[k] !== undefined) {
      throw new KilnError('BP_TOML_INVALID', `${file}: key ${k} must be under [types] (Buildpack API 0.6+)`, {
        hint: `write [types]\\n${k} = true`,
      });
    }
  }
  const md = t.metadata ?? {};
  if (!isTable(md)) throw bad(file, 'metadata', 'a table ([metadata])');
  return {
    launch: bool(types, 'launch', file, 'types.launch'),
    build: bool(types, 'build', file, 'types.build'),
    cache: bool(types, 'cache', file, 'types.cache'),
    metadata: md,
  };
}

/** The `<layer>.toml` kiln restores before a build: metadata only (Buildpack API 0.6+: types are not restored). */
export function restoredLayerToml(metadata: Table): string {
  return metadataToml(metadata, 'metadata');
}

/** A process type of `launch.toml` (Buildpack API 0.9+: `command` is an array, `args` the overridable rest). */
export interface ProcessType {
  type: string;
  command: string[];
  args: string[];
  default: boolean;
  workingDir?: string;
  /** The buildpack that declared it. */
  buildpackID: string;
}

export interface LaunchToml {
  processes: ProcessType[];
  labels: { key: string; value: string }[];
  slices: string[][];
}

const PROCESS_TYPE = /^[A-Za-z0-9_.-]+$/;

export function parseLaunchToml(text: string, file: string, buildpackID: string): LaunchToml {
  const t = parseToml(text, file);
  const processes = tables(t, 'processes', file).map((p, i) => {
    const type = str(p, 'type', file, `processes[${i}].type`, true) as string;
    if (!PROCESS_TYPE.test(type)) throw bad(file, `processes[${i}].type`, 'letters, digits, ".", "_" or "-"');
    const command = strings(p.command, file, `processes[${i}].command`);
    if (command.length === 0) throw bad(file, `processes[${i}].command`, 'a non-empty array of strings');
    const pt: ProcessType = {
      type,
      command,
      args: strings(p.args, file, `processes[${i}].args`),
      default: bool(p, 'default', file, `processes[${i}].default`),
      buildpackID,
    };
    const wd = str(p, 'working-dir', file, `processes[${i}].working-dir`);
    if (wd) pt.workingDir = wd;
    return pt;
  });
  const labels = tables(t, 'labels', file).map((l, i) => ({
    key: str(l, 'key', file, `labels[${i}].key`, true) as string,
    value: str(l, 'value', file, `labels[${i}].value`) ?? '',
  }));
  const slices = tables(t, 'slices', file).map((s, i) => strings(s.paths, file, `slices[${i}].paths`));
  return { processes, labels, slices };
}

/** One file of a layer's env directory (`env/`, `env.build/`, `env.launch/`, `env.launch/<process>/`). */
export interface EnvOp {
  name: string;
  op: 'override' | 'default' | 'append' | 'prepend';
  value: string;
  delim: string;
}

/**
 * The operations of one env directory from its files (`NAME`, `NAME.override|default|append|prepend`,
 * `NAME.delim`): a file without suffix overrides (Buildpack API 0.5+); append/prepend without a delim file join
 * without a delimiter. Returned in name order (the lifecycle applies them sorted).
 */
export function envOps(files: { name: string; content: string }[], where: string): EnvOp[] {
  const delims = new Map<string, string>();
  for (const f of files) if (f.name.endsWith('.delim')) delims.set(f.name.slice(0, -'.delim'.length), f.content);
  const out: EnvOp[] = [];
  for (const f of [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (f.name.endsWith('.delim')) continue;
    const m = /^(.*?)(?:\.(override|default|append|prepend))?$/.exec(f.name) as RegExpExecArray;
    const name = m[1] as string;
    if (!ENV_NAME.test(name)) {
      throw new KilnError('BP_ENV_INVALID', `${where}/${f.name}: not an environment variable name`, {
        hint: 'env files are named NAME, NAME.override, NAME.default, NAME.append, NAME.prepend or NAME.delim',
      });
    }
    out.push({
      name,
      op: (m[2] as EnvOp['op'] | undefined) ?? 'override',
      value: f.content,
      delim: delims.get(name) ?? '',
    });
  }
  return out;
}

/** Apply env operations to an environment (a map, changed in place). */
export function applyEnv(env: Map<string, string>, ops: EnvOp[]): void {
  for (const o of ops) {
    const cur = env.get(o.name);
    if (o.op === 'override') env.set(o.name, o.value);
    else if (o.op === 'default') {
      if (cur === undefined) env.set(o.name, o.value);
    } else if (cur === undefined) env.set(o.name, o.value);
    else env.set(o.name, o.op === 'append' ? cur + o.delim + o.value : o.value + o.delim + cur);
  }
}

/** The env of a `KEY=value` list as a map (last wins). */
export function envMap(list: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of list) {
    const i = e.indexOf('=');
    if (i > 0) m.set(e.slice(0, i), e.slice(i + 1));
  }
  return m;
}
