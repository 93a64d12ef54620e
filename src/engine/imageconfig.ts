/**
 * The image config a Dockerfile build produces, field by field as BuildKit's dockerfile2llb + image exporter make
 * it: the `scratch` config (PATH, WorkingDir "/"), inheritance from a base image (created dropped, OnBuild
 * consumed), history entries (`RUN /bin/sh -c x # buildkit`, `ENV A=b`, `|1 A=b` build-arg prefixes, Go `%q`/`%v`
 * formatting), created-time normalisation (BuildKit's normalizeLayersAndHistory + SOURCE_DATE_EPOCH clamping) and
 * the exact JSON bytes (Go's encoding: sorted top-level keys, struct field order inside `config`, `<>&` escaped).
 */
import { byteOrder } from '../util/order.js';
import type { ContainerConfig, HealthConfig, History, ImageConfig, Platform } from '../oci/types.js';

export const HISTORY_COMMENT = 'buildkit.dockerfile.v0';

/**
 * Which BuildKit's `created_by` strings to reproduce. They differ between versions for COPY/ADD flags, EXPOSE,
 * HEALTHCHECK, ARG and repeated build args in RUN. `buildkit-0.8` is what the reference builder on this platform
 * (Debian's docker.io 20.10, BuildKit v0.8) writes; `buildkit-latest` is current moby/buildkit.
 */
export type HistoryStyle = 'buildkit-0.8' | 'buildkit-latest';
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const DEFAULT_SHELL = ['/bin/sh', '-c'];

/** A config being built: an ImageConfig whose `config` and `history` always exist. */
export interface BuildImage extends ImageConfig {
  config: ContainerConfig;
  history: History[];
}

/** The config of `FROM scratch` (BuildKit's emptyImage). */
export function emptyImage(platform: Platform): BuildImage {
  const img: BuildImage = {
    architecture: platform.architecture,
    os: platform.os,
    config: { Env: ['PATH=' + DEFAULT_PATH], WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: [] },
    history: [],
  };
  if (platform.variant) img.variant = platform.variant;
  if (platform['os.version']) img['os.version'] = platform['os.version'];
  return img;
}

/** Deep clone (configs are plain JSON). */
export function cloneImage(img: BuildImage): BuildImage {
  return structuredClone(img);
}

/**
 * The starting config of a stage built FROM an image: its config without `created`, OnBuild removed (the caller
 * runs the triggers), PATH ensured. Returns the triggers separately.
 */
export function fromBaseConfig(base: ImageConfig): { image: BuildImage; onBuild: string[] } {
  const c = structuredClone(base);
  delete c.created;
  const img: BuildImage = { ...c, config: c.config ?? {}, history: c.history ?? [] };
  if (!img.rootfs) img.rootfs = { type: 'layers', diff_ids: [] };
  const onBuild = img.config.OnBuild ?? [];
  delete img.config.OnBuild;
  ensurePath(img);
  return { image: img, onBuild };
}

/** BuildKit: "make sure that PATH is always set" (non-Windows). */
export function ensurePath(img: BuildImage): void {
  if (img.os === 'windows') return;
  const env = img.config.Env ?? [];
  if (!env.some((e) => envKey(e) === 'PATH')) img.config.Env = [...env, 'PATH=' + DEFAULT_PATH];
}

function envKey(kv: string): string {
  const i = kv.indexOf('=');
  return i < 0 ? kv : kv.slice(0, i);
}

/** The value of `key` in a `K=v` list. */
export function getEnv(env: string[] | undefined, key: string): string | undefined {
  for (const e of env ?? []) {
    const i = e.indexOf('=');
    if ((i < 0 ? e : e.slice(0, i)) === key) return i < 0 ? '' : e.slice(i + 1);
  }
  return undefined;
}

/** BuildKit addEnv: replace in place or append. */
export function addEnv(env: string[] | undefined, key: string, value: string): string[] {
  const out = [...(env ?? [])];
  const i = out.findIndex((e) => envKey(e) === key);
  if (i >= 0) out[i] = key + '=' + value;
  else out.push(key + '=' + value);
  return out;
}

/** Append a history entry as commitToHistory does. `created` is filled later unless given. */
export function commitHistory(
  img: BuildImage,
  msg: string,
  opts: { withLayer: boolean; buildkitSuffix: boolean; created?: string },
): void {
  const h: History = {};
  if (opts.created) h.created = opts.created;
  h.created_by = opts.buildkitSuffix ? msg + ' # buildkit' : msg;
  h.comment = HISTORY_COMMENT;
  if (!opts.withLayer) h.empty_layer = true;
  img.history.push(h);
}

/** Shell form → argv: SHELL (or /bin/sh -c) + the joined command. */
export function withShell(img: BuildImage, args: string[]): string[] {
  const shell = img.config.Shell && img.config.Shell.length > 0 ? img.config.Shell : DEFAULT_SHELL;
  return [...shell, args.join(' ')];
}

/** A build arg in scope for RUN: key and value (undefined when declared without value and not given). */
export interface ScopedArg {
  key: string;
  value: string | undefined;
}

/**
 * The `created_by` of a RUN: `|N K=v ... argv...` when build args are in scope (BuildKit runCommandString).
 * `envValue` looks a key up in the step's environment (ENV/ARG as BuildKit's state env).
 */
export function runCommandString(
  args: string[],
  buildArgs: ScopedArg[],
  envValue: (k: string) => string | undefined,
  style: HistoryStyle = 'buildkit-0.8',
): string {
  const vals: string[] = [];
  const idx = new Map<string, number>();
  for (const a of buildArgs) {
    const v = envValue(a.key) ?? a.value ?? '';
    const entry = a.key + '=' + v;
    const at = style === 'buildkit-latest' ? idx.get(a.key) : undefined;
    if (at !== undefined) vals[at] = entry;
    else {
      idx.set(a.key, vals.length);
      vals.push(entry);
    }
  }
  const prefix = vals.length > 0 ? ['|' + vals.length, ...vals] : [];
  return [...prefix, ...args].join(' ');
}

/** Go's strconv.Quote. */
export function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0) ?? 0;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (cp === 7) out += '\\a';
    else if (cp === 8) out += '\\b';
    else if (cp === 12) out += '\\f';
    else if (cp === 10) out += '\\n';
    else if (cp === 13) out += '\\r';
    else if (cp === 9) out += '\\t';
    else if (cp === 11) out += '\\v';
    else if (cp < 0x20 || cp === 0x7f) out += '\\x' + cp.toString(16).padStart(2, '0');
    else if (cp >= 0x80 && cp < 0xa0) out += '\\u' + cp.toString(16).padStart(4, '0');
    else if (cp === 0xfffd && ch !== '\ufffd') out += '\\ufffd';
    else out += ch;
  }
  return out + '"';
}

/** Go's fmt `%q` of a []string: `["a" "b"]`. */
export function goQuoteList(args: string[]): string {
  return '[' + args.map(goQuote).join(' ') + ']';
}

/** Go's fmt `%v` of a []string: `[a b]`. */
export function goList(args: string[]): string {
  return '[' + args.join(' ') + ']';
}

/** Go's time.Duration.String() for a nanosecond count. */
export function goDuration(ns: number): string {
  if (ns === 0) return '0s';
  const neg = ns < 0;
  let u = Math.abs(ns);
  let out: string;
  if (u < 1e9) {
    // sub-second: ns, µs or ms with a fraction
    let unit: string;
    let div: number;
    if (u < 1e3) return (neg ? '-' : '') + u + 'ns';
    else if (u < 1e6) {
      unit = 'µs';
      div = 1e3;
    } else {
      unit = 'ms';
      div = 1e6;
    }
    out = fmtFrac(u, div) + unit;
  } else {
    const h = Math.floor(u / 3600e9);
    u -= h * 3600e9;
    const m = Math.floor(u / 60e9);
    u -= m * 60e9;
    out = fmtFrac(u, 1e9) + 's';
    if (h > 0) out = h + 'h' + m + 'm' + out;
    else if (m > 0) out = m + 'm' + out;
  }
  return (neg ? '-' : '') + out;
}

function fmtFrac(v: number, div: number): string {
  const whole = Math.floor(v / div);
  const frac = v - whole * div;
  if (frac === 0) return String(whole);
  const digits = String(div).length - 1;
  return whole + '.' + String(frac).padStart(digits, '0').replace(/0+$/, '');
}

/** Go's strconv.QuoteRune (what `%q` prints for an integer). */
export function goQuoteRune(n: number): string {
  const special: Record<number, string> = { 7: '\\a', 8: '\\b', 9: '\\t', 10: '\\n', 11: '\\v', 12: '\\f', 13: '\\r' };
  if (special[n] !== undefined) return `'${special[n]}'`;
  if (n === 0x27) return "'\\''";
  if (n === 0x5c) return "'\\\\'";
  if (n < 0x20 || n === 0x7f) return `'\\x${n.toString(16).padStart(2, '0')}'`;
  if (n < 0x7f) return `'${String.fromCodePoint(n)}'`;
  if (n < 0xa0) return `'\\u${n.toString(16).padStart(4, '0')}'`;
  if (n > 0x10ffff) return "'\\ufffd'";
  return `'${String.fromCodePoint(n)}'`;
}

/**
 * The HEALTHCHECK history entry: BuildKit v0.8 writes `%q` of the config pointer
 * (`&{["CMD" "x"] "30s" "0s" "0s" '\x03'}`), current BuildKit `%+v` of the struct (`{Test:[CMD x] Interval:30s …}`).
 */
export function healthcheckHistory(h: HealthConfig, style: HistoryStyle = 'buildkit-latest'): string {
  if (style === 'buildkit-0.8') {
    const d = (ns: number | undefined): string => goQuote(goDuration(ns ?? 0));
    return `HEALTHCHECK &{${goQuoteList(h.Test ?? [])} ${d(h.Interval)} ${d(h.Timeout)} ${d(h.StartPeriod)} ${goQuoteRune(h.Retries ?? 0)}}`;
  }
  return (
    'HEALTHCHECK {Test:' +
    goList(h.Test ?? []) +
    ' Interval:' +
    goDuration(h.Interval ?? 0) +
    ' Timeout:' +
    goDuration(h.Timeout ?? 0) +
    ' StartPeriod:' +
    goDuration(h.StartPeriod ?? 0) +
    ' StartInterval:' +
    goDuration(h.StartInterval ?? 0) +
    ' Retries:' +
    (h.Retries ?? 0) +
    '}'
  );
}

/**
 * The EXPOSE history entry: v0.8 prints the port set (a Go map, sorted keys), current BuildKit (v0.35) the ports
 * joined by spaces (`EXPOSE 80/tcp 53/udp`; releases in between printed the Go list `EXPOSE [80/tcp 53/udp]`).
 */
export function exposeHistory(ports: string[], style: HistoryStyle): string {
  if (style === 'buildkit-0.8') {
    const keys = [...new Set(ports)].sort(byteOrder);
    return `EXPOSE map[${keys.map((k) => `${k}:{}`).join(' ')}]`;
  }
  return `EXPOSE ${ports.join(' ')}`;
}

/** EXPOSE port specs normalised as BuildKit/nat.ParsePortSpecs: `80` → `80/tcp`, ranges expanded. */
export function normalizePorts(ports: string[]): string[] {
  const out: string[] = [];
  for (const p of ports) {
    let spec = p;
    // ip:hostPort:containerPort forms: keep only the container part
    const colon = spec.lastIndexOf(':');
    if (colon >= 0) spec = spec.slice(colon + 1);
    const [portPart, proto0] = spec.split('/', 2) as [string, string | undefined];
    const proto = (proto0 ?? 'tcp').toLowerCase() || 'tcp';
    const m = /^(\d+)(?:-(\d+))?$/.exec(portPart);
    if (!m) throw new Error(`invalid containerPort: ${portPart}`);
    const start = Number(m[1]);
    const end = m[2] === undefined ? start : Number(m[2]);
    if (end < start || end > 65535) throw new Error(`invalid port range: ${portPart}`);
    for (let i = start; i <= end; i++) out.push(`${i}/${proto}`);
  }
  return out;
}

/**
 * Fill history `created` times as BuildKit's exporter does (normalizeLayersAndHistory), then clamp entries after
 * the base image's history to SOURCE_DATE_EPOCH (patchImageConfig). `layerTimes` are the creation times of the
 * layer entries that lack one, in order.
 */
export function normalizeHistory(history: History[], baseHistory: History[], epoch: string | undefined): History[] {
  const out = history.map((h) => ({ ...h }));
  let created: string | undefined;
  let noCreated = false;
  for (const h of out) {
    if (h.created !== undefined) {
      created = h.created;
      if (noCreated) break;
    } else noCreated = true;
  }
  noCreated = false;
  for (const h of out) {
    if (h.created !== undefined) {
      if (noCreated) created = h.created;
    } else {
      noCreated = true;
      if (created !== undefined) h.created = created;
    }
  }
  if (epoch !== undefined) {
    const ep = Date.parse(epoch);
    let diverged = false;
    for (let i = 0; i < out.length; i++) {
      const h = out[i] as History;
      if (!diverged && i < baseHistory.length && sameHistory(history[i] as History, baseHistory[i] as History))
        continue;
      diverged = true;
      if (h.created === undefined || Date.parse(h.created) > ep) h.created = epoch;
    }
  }
  // keep Go's field order: created, created_by, author, comment, empty_layer
  return out.map((h) => {
    const o: History = {};
    if (h.created !== undefined) o.created = h.created;
    if (h.created_by !== undefined) o.created_by = h.created_by;
    if (h.author !== undefined) o.author = h.author;
    if (h.comment !== undefined) o.comment = h.comment;
    if (h.empty_layer) o.empty_layer = true;
    return o;
  });
}

function sameHistory(a: History, b: History): boolean {
  return (
    a.created === b.created &&
    a.created_by === b.created_by &&
    a.author === b.author &&
    a.comment === b.comment &&
    !!a.empty_layer === !!b.empty_layer
  );
}

/** RFC 3339 time as Go marshals it (UTC, fractional seconds without trailing zeros). */
export function goTime(d: Date): string {
  return d
    .toISOString()
    .replace(/\.000Z$/, 'Z')
    .replace(/(\.\d*?)0+Z$/, '$1Z');
}

/** SOURCE_DATE_EPOCH (seconds) → the time string BuildKit uses. */
export function epochTime(sec: number): string {
  return goTime(new Date(sec * 1000));
}

const CONFIG_ORDER: (keyof ContainerConfig)[] = [
  'User',
  'ExposedPorts',
  'Env',
  'Entrypoint',
  'Cmd',
  'Volumes',
  'WorkingDir',
  'Labels',
  'StopSignal',
  'ArgsEscaped',
  'Healthcheck',
  'OnBuild',
  'Shell',
];
const HEALTH_ORDER: (keyof HealthConfig)[] = ['Test', 'Interval', 'Timeout', 'StartPeriod', 'StartInterval', 'Retries'];

function sortedObject<T>(o: Record<string, T>): Record<string, T> {
  const out: Record<string, T> = {};
  for (const k of Object.keys(o).sort()) out[k] = o[k] as T;
  return out;
}

function isEmptyValue(v: unknown): boolean {
  if (v === undefined || v === null || v === '' || v === false || v === 0) return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === 'object') return Object.keys(v).length === 0;
  return false;
}

/** `config` in Go struct order with omitempty semantics and sorted map keys. */
export function orderedContainerConfig(c: ContainerConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of CONFIG_ORDER) {
    const v = c[k];
    if (isEmptyValue(v)) continue;
    if (k === 'ExposedPorts' || k === 'Volumes' || k === 'Labels') {
      out[k] = sortedObject(v as Record<string, unknown>);
    } else if (k === 'Healthcheck') {
      const h = v as HealthConfig;
      const ho: Record<string, unknown> = {};
      for (const hk of HEALTH_ORDER) if (!isEmptyValue(h[hk])) ho[hk] = h[hk];
      out[k] = ho;
    } else out[k] = v;
  }
  return out;
}

/** Go's json.Marshal escaping of a JSON text (`<`, `>`, `&`, U+2028, U+2029). */
export function goJSONEscape(json: string): string {
  return json
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

/** The final config bytes, as BuildKit's exporter writes them (top-level keys sorted: it patches via a Go map). */
export function serializeConfig(img: ImageConfig): Buffer {
  const top: Record<string, unknown> = {};
  const entries: [string, unknown][] = [
    ['architecture', img.architecture],
    ['author', img.author],
    ['config', orderedContainerConfig(img.config ?? {})],
    ['created', img.created],
    ['history', img.history],
    ['os', img.os],
    ['os.features', img['os.features']],
    ['os.version', img['os.version']],
    ['rootfs', { type: 'layers', diff_ids: img.rootfs.diff_ids }],
    ['variant', img.variant],
  ];
  for (const [k, v] of entries) {
    if (v === undefined || v === '') continue;
    if (k === 'os.features' && Array.isArray(v) && v.length === 0) continue;
    top[k] = v;
  }
  return Buffer.from(goJSONEscape(JSON.stringify(top)));
}
