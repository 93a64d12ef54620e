/**
 * AST -> typed instructions, after BuildKit's frontend/dockerfile/instructions (parse.go, bflag.go and the RUN
 * mount/network/security/device hooks). Error messages match BuildKit's; every error is a DockerfileError with the
 * instruction's location.
 */
import { DockerfileError, type DockerfileErrorCode } from './errors.js';
import { parseGoBool, trimSpace } from './directives.js';
import { goQuote } from './dump.js';
import { chompHeredocContent, mustParseHeredoc } from './heredoc.js';
import { parseAst, sourceLines, type Node, type ParseOptions } from './parser.js';
import { withSuggestion } from './suggest.js';
import type {
  AddInstruction,
  ArgDefinition,
  ArgInstruction,
  CacheSharing,
  CmdInstruction,
  Command,
  CopyInstruction,
  Directive,
  EntrypointInstruction,
  EnvInstruction,
  ExposeInstruction,
  FromInstruction,
  HealthcheckInstruction,
  Heredoc,
  Instruction,
  InstructionBase,
  InstructionKind,
  KeyValuePair,
  LabelInstruction,
  MaintainerInstruction,
  MountType,
  NetworkMode,
  OnbuildInstruction,
  ParseWarning,
  RunInstruction,
  RunMount,
  SecurityMode,
  ShellInlineFile,
  ShellInstruction,
  SourceContent,
  Stage,
  StopSignalInstruction,
  UserInstruction,
  VolumeInstruction,
  WorkdirInstruction,
} from './instructions.js';
import { INSTRUCTION_KINDS, csvFields } from './instructions.js';

export { csvFields };

/** An instruction-level error without location; converted to DockerfileError by the caller. */
export class InstructionError extends Error {
  constructor(
    message: string,
    readonly code: DockerfileErrorCode = 'DOCKERFILE_INSTRUCTION',
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// BFlags (bflag.go)

type FlagType = 'bool' | 'string' | 'strings';
interface Flag {
  type: FlagType;
  value: string;
  values: string[];
}

class BFlags {
  private readonly defs = new Map<string, Flag>();
  readonly used = new Set<string>();
  constructor(private readonly args: string[]) {}

  addBool(name: string, def = false): Flag {
    return this.add(name, 'bool', def ? 'true' : 'false');
  }
  addString(name: string, def = ''): Flag {
    return this.add(name, 'string', def);
  }
  addStrings(name: string): Flag {
    return this.add(name, 'strings', '');
  }
  private add(name: string, type: FlagType, value: string): Flag {
    const f: Flag = { type, value, values: [] };
    this.defs.set(name, f);
    return f;
  }

  parse(): void {
    for (const a of this.args) {
      if (a === '--') return;
      if (!a.startsWith('--')) throw new InstructionError(`arg should start with -- : ${a}`);
      const eq = a.indexOf('=');
      const flagName = eq < 0 ? a : a.slice(0, eq);
      const hasValue = eq >= 0;
      const value = eq < 0 ? '' : a.slice(eq + 1);
      const arg = flagName.slice(2);
      const flag = this.defs.get(arg);
      if (!flag) {
        throw new InstructionError(
          withSuggestion(`unknown flag: ${flagName}`, arg, [...this.defs.keys()], true),
          'DOCKERFILE_UNKNOWN_FLAG',
        );
      }
      if (this.used.has(arg) && flag.type !== 'strings') {
        throw new InstructionError(`duplicate flag specified: ${flagName}`);
      }
      this.used.add(arg);
      switch (flag.type) {
        case 'bool': {
          if (hasValue && value === '') throw new InstructionError(`missing a value on flag: ${flagName}`);
          const v = value.toLowerCase();
          if (v === 'true' || v === '') flag.value = 'true';
          else if (v === 'false') flag.value = 'false';
          else throw new InstructionError(`expecting boolean value for flag ${flagName}, not: ${value}`);
          break;
        }
        case 'string':
          if (!hasValue) throw new InstructionError(`missing a value on flag: ${flagName}`);
          flag.value = value;
          break;
        case 'strings':
          if (!hasValue) throw new InstructionError(`missing a value on flag: ${flagName}`);
          flag.values.push(value);
          break;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Go value parsers

const DURATION_UNITS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  µs: 1e3,
  μs: 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

/** Go's time.ParseDuration, in nanoseconds. Throws InstructionError with Go's message. */
export function parseGoDuration(s: string): number {
  const orig = s;
  const bad = (): never => {
    throw new InstructionError(`time: invalid duration ${goQuote(orig)}`);
  };
  let neg = false;
  if (s.startsWith('-') || s.startsWith('+')) {
    neg = s[0] === '-';
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (s === '') bad();
  let total = 0;
  while (s !== '') {
    const m = /^([0-9]*)(\.([0-9]*))?/.exec(s)!;
    const intPart = m[1]!;
    const frac = m[3];
    if (intPart === '' && (frac === undefined || frac === '')) bad();
    s = s.slice(m[0].length);
    let i = 0;
    while (i < s.length && s[i] !== '.' && !(s[i]! >= '0' && s[i]! <= '9')) i++;
    const unit = s.slice(0, i);
    if (unit === '') throw new InstructionError(`time: missing unit in duration ${goQuote(orig)}`);
    s = s.slice(i);
    const mult = DURATION_UNITS[unit];
    if (mult === undefined) {
      throw new InstructionError(`time: unknown unit ${goQuote(unit)} in duration ${goQuote(orig)}`);
    }
    const v = Number(intPart === '' ? '0' : intPart) * mult + (frac ? Number('0.' + frac) * mult : 0);
    total += v;
    if (total > 2 ** 63 - 1) bad();
  }
  return neg ? -Math.floor(total) : Math.floor(total);
}

/** Go strconv.ParseFloat (decimal and hex forms, inf/nan); undefined when Go would reject the syntax. */
function parseGoFloat(s: string): number | undefined {
  if (/^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$/.test(s)) return Number(s);
  if (/^[+-]?(?:inf|infinity)$/i.test(s)) return s.startsWith('-') ? -Infinity : Infinity;
  if (/^[+-]?nan$/i.test(s)) return NaN;
  const m = /^([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?[pP]([+-]?\d+)$/.exec(s);
  if (m && (m[2] !== '' || (m[3] ?? '') !== '')) {
    const frac = m[3] ?? '';
    const mant = parseInt((m[2] || '0') + frac, 16) / 16 ** frac.length;
    const v = mant * 2 ** Number(m[4]);
    return m[1] === '-' ? -v : v;
  }
  return undefined;
}

/** docker/go-units v0.5.0 RAMInBytes: `64m`, `1g`, `512k`, `1.5GiB`, `100 MB` (binary multiples). */
export function ramInBytes(sizeStr: string): number {
  let sep = -1;
  for (let i = sizeStr.length - 1; i >= 0; i--) {
    if ('01234567890. '.includes(sizeStr[i]!)) {
      sep = i;
      break;
    }
  }
  if (sep < 0) throw new InstructionError(`invalid size: '${sizeStr}'`);
  const num = sizeStr[sep] !== ' ' ? sizeStr.slice(0, sep + 1) : sizeStr.slice(0, sep);
  let sfx = sizeStr.slice(sep + 1);
  const size = parseGoFloat(num);
  if (size === undefined) throw new InstructionError(`strconv.ParseFloat: parsing ${goQuote(num)}: invalid syntax`);
  if (size < 0) throw new InstructionError(`invalid size: '${sizeStr}'`);
  if (sfx.length === 0) return goInt64(size);
  const bad = (): never => {
    throw new InstructionError(`invalid suffix: '${sfx}'`);
  };
  if (sfx.length > 3) bad();
  sfx = sfx.toLowerCase();
  if (sfx[0] === 'b') {
    if (sfx.length > 1) bad();
    return goInt64(size);
  }
  const mul = ({ k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 } as Record<string, number>)[sfx[0]!];
  if (mul === undefined) bad();
  if ((sfx.length === 2 && sfx[1] !== 'b') || (sfx.length === 3 && sfx.slice(1) !== 'ib')) bad();
  return goInt64(size * mul!);
}

/** Go's int64(float64) on amd64: truncation, and the minimum int64 for NaN/out-of-range values. */
function goInt64(v: number): number {
  return Number.isFinite(v) && Math.abs(v) < 2 ** 63 ? Math.trunc(v) : -(2 ** 63);
}

/** strconv.ParseUint(v, base, 32). */
function parseUint32(v: string, base: 8 | 10): number | undefined {
  const re = base === 8 ? /^[0-7]+$/ : /^[0-9]+$/;
  if (!re.test(v)) return undefined;
  const n = parseInt(v, base);
  return n <= 0xffffffff ? n : undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// RUN --mount / --device

const MOUNT_TYPES: readonly MountType[] = ['bind', 'cache', 'tmpfs', 'secret', 'ssh'];
const SHARING_MODES: readonly CacheSharing[] = ['shared', 'private', 'locked'];
const MOUNT_KEYS = [
  'type',
  'from',
  'source',
  'target',
  'readonly',
  'id',
  'sharing',
  'required',
  'size',
  'mode',
  'uid',
  'gid',
  'src',
  'dst',
  'destination',
  'ro',
  'rw',
  'readwrite',
  'env',
];

/**
 * Parses a `--mount` value (BuildKit parseMount). With an expander, every value is expanded first (that is how the
 * builder calls it, with the stage environment). Without one, only the checks BuildKit does at parse time run
 * (`from` must not use variables) and the returned mount is the default bind mount: callers that want the values
 * without expansion pass the identity function.
 */
export function parseMount(val: string, expand?: (word: string) => string): RunMount {
  let fields: string[];
  try {
    fields = csvFields(val);
  } catch (e) {
    throw new InstructionError(`failed to parse csv mounts: ${(e as Error).message}`);
  }
  const m: RunMount = {
    type: 'bind',
    from: '',
    source: '',
    target: '',
    readOnly: false,
    sizeLimit: 0,
    cacheId: '',
    cacheSharing: '',
    required: false,
    env: undefined,
    mode: undefined,
    uid: undefined,
    gid: undefined,
  };
  let roAuto = true;
  for (const field of fields) {
    const eq = field.indexOf('=');
    const key = (eq < 0 ? field : field.slice(0, eq)).toLowerCase();
    let value = eq < 0 ? '' : field.slice(eq + 1);
    if (eq < 0) {
      if (expand === undefined) continue;
      switch (key) {
        case 'readonly':
        case 'ro':
          m.readOnly = true;
          roAuto = false;
          continue;
        case 'readwrite':
        case 'rw':
          m.readOnly = false;
          roAuto = false;
          continue;
        case 'required':
          if (m.type === 'secret' || m.type === 'ssh') {
            m.required = true;
            continue;
          }
          throw new InstructionError(`unexpected key '${key}' for mount type '${m.type}'`);
        default:
          throw new InstructionError(`invalid field '${field}' must be a key=value pair`);
      }
    }
    if (expand !== undefined) value = expand(value);
    else if (key === 'from') {
      const idx = value.indexOf('$');
      if (idx !== -1 && idx !== value.length - 1) {
        throw new InstructionError(`'${key}' doesn't support variable expansion, define alias stage instead`);
      }
      continue;
    } else continue;
    const bool = (): boolean => {
      const b = parseGoBool(value);
      if (b === undefined) throw new InstructionError(`invalid value for ${key}: ${value}`);
      return b;
    };
    switch (key) {
      case 'type': {
        const v = value.toLowerCase() as MountType;
        if (!MOUNT_TYPES.includes(v)) {
          throw new InstructionError(
            withSuggestion(`unsupported mount type ${goQuote(value)}`, value, MOUNT_TYPES, true),
          );
        }
        m.type = v;
        break;
      }
      case 'from':
        m.from = value;
        break;
      case 'source':
      case 'src':
        m.source = value;
        break;
      case 'target':
      case 'dst':
      case 'destination':
        m.target = value;
        break;
      case 'readonly':
      case 'ro':
        m.readOnly = bool();
        roAuto = false;
        break;
      case 'readwrite':
      case 'rw':
        m.readOnly = !bool();
        roAuto = false;
        break;
      case 'required':
        if (m.type !== 'secret' && m.type !== 'ssh') {
          throw new InstructionError(`unexpected key '${key}' for mount type '${m.type}'`);
        }
        m.required = bool();
        break;
      case 'size':
        if (m.type !== 'tmpfs') throw new InstructionError(`unexpected key '${key}' for mount type '${m.type}'`);
        try {
          m.sizeLimit = ramInBytes(value);
        } catch {
          throw new InstructionError(`invalid value for ${key}: ${value}`);
        }
        break;
      case 'id':
        m.cacheId = value;
        break;
      case 'sharing': {
        const v = value.toLowerCase() as CacheSharing;
        if (!SHARING_MODES.includes(v)) {
          throw new InstructionError(
            withSuggestion(`unsupported sharing value ${goQuote(value)}`, value, SHARING_MODES, true),
          );
        }
        m.cacheSharing = v;
        break;
      }
      case 'mode': {
        const n = parseUint32(value, 8);
        if (n === undefined) throw new InstructionError(`invalid value ${value} for mode`);
        m.mode = n;
        break;
      }
      case 'uid':
      case 'gid': {
        const n = parseUint32(value, 10);
        if (n === undefined) throw new InstructionError(`invalid value ${value} for ${key}`);
        m[key] = n;
        break;
      }
      case 'env':
        m.env = value;
        break;
      default:
        throw new InstructionError(
          withSuggestion(`unexpected key '${key}' in '${field}'`, key, MOUNT_KEYS, true),
          'DOCKERFILE_UNKNOWN_FLAG',
        );
    }
  }
  const fileInfoAllowed = m.type === 'secret' || m.type === 'ssh' || m.type === 'cache';
  if (!fileInfoAllowed) {
    for (const k of ['mode', 'uid', 'gid'] as const) {
      if (m[k] !== undefined) throw new InstructionError(`${k} not allowed for ${goQuote(m.type)} type mounts`);
    }
  }
  if (roAuto) m.readOnly = !(m.type === 'cache' || m.type === 'tmpfs');
  if (m.type === 'secret') {
    if (m.from !== '') throw new InstructionError('secret mount should not have a from');
    if (m.cacheSharing !== '') throw new InstructionError('secret mount should not define sharing');
    if (m.source === '' && m.target === '' && m.cacheId === '') {
      throw new InstructionError('invalid secret mount. one of source, target required');
    }
    if (m.source !== '' && m.cacheId !== '') throw new InstructionError("both source and id can't be set");
  }
  if (m.cacheSharing !== '' && m.type !== 'cache') {
    throw new InstructionError(`invalid cache sharing set for ${m.type} mount`);
  }
  return m;
}

/** A parsed `RUN --device=...` (BuildKit ParseDevice). */
export interface RunDevice {
  name: string;
  required: boolean;
}

export function parseDevice(val: string): RunDevice {
  let fields: string[];
  try {
    fields = csvFields(val);
  } catch (e) {
    throw new InstructionError(`failed to parse csv devices: ${(e as Error).message}`);
  }
  const d: RunDevice = { name: '', required: false };
  for (const field of fields) {
    const eq = field.indexOf('=');
    const key = (eq < 0 ? field : field.slice(0, eq)).toLowerCase();
    const value = eq < 0 ? '' : field.slice(eq + 1);
    if (eq < 0) {
      if (key === 'required') {
        d.required = true;
        continue;
      }
      if (d.name === '') {
        d.name = field;
        continue;
      }
      throw new InstructionError(`invalid field '${field}' must be a key=value pair`);
    }
    switch (key) {
      case 'name':
        if (d.name !== '') throw new InstructionError(`device name already set to ${d.name}`);
        d.name = value;
        break;
      case 'required': {
        const b = parseGoBool(value);
        if (b === undefined) throw new InstructionError(`invalid value for ${key}: ${value}`);
        d.required = b;
        break;
      }
      default:
        if (d.name === '') {
          d.name = field;
          continue;
        }
        throw new InstructionError(
          withSuggestion(`unexpected key '${key}' in '${field}'`, key, ['name', 'required'], true),
        );
    }
  }
  return d;
}

// ---------------------------------------------------------------------------------------------------------------
// instructions (parse.go)

interface Req {
  node: Node;
  command: string;
  args: string[];
  flags: BFlags;
  json: boolean;
  base: InstructionBase;
}

/** BuildKit nodeArgs: the argument words, with an ONBUILD trigger flattened in (iteratively). */
function nodeArgs(node: Node): string[] {
  const result: string[] = [];
  const stack: (Node | undefined)[] = [node.next];
  while (stack.length > 0) {
    const arg = stack.pop();
    if (arg === undefined) continue;
    stack.push(arg.next);
    if (arg.children.length === 0) result.push(arg.value);
    else if (arg.children.length === 1) {
      result.push(arg.children[0]!.value);
      stack.push(arg.children[0]!.next);
    }
  }
  return result;
}

const errAtLeastOne = (c: string): InstructionError => new InstructionError(`${c} requires at least one argument`);
const errExactlyOne = (c: string): InstructionError => new InstructionError(`${c} requires exactly one argument`);
const errNoDest = (c: string): InstructionError =>
  new InstructionError(
    `${c} requires at least two arguments, but only one was provided. Destination could not be determined`,
  );

function handleJSONArgs(args: string[], json: boolean): string[] {
  if (args.length === 0) return [];
  if (json) return args;
  return [args.join(' ')];
}

function parseKvps(args: string[], cmd: string): KeyValuePair[] {
  if (args.length === 0) throw errAtLeastOne(cmd);
  if (args.length % 3 !== 0) throw new InstructionError(`Bad input to ${cmd}, too many arguments`);
  const res: KeyValuePair[] = [];
  for (let j = 0; j < args.length; j += 3) {
    if (args[j]!.length === 0) throw new InstructionError(`${cmd} names can not be blank`);
    res.push({ key: args[j]!, value: args[j + 1]!, noDelim: args[j + 2] === '' });
  }
  return res;
}

function docComment(comments: string[], name: string): string {
  if (name === '') return '';
  for (const line of comments) if (line.startsWith(name + ' ')) return line.slice(name.length + 1);
  return '';
}

function sourcesAndDest(req: Req, cmd: string): { sources: string[]; sourceContents: SourceContent[]; dest: string } {
  const srcs = req.args.slice(0, -1);
  const dest = req.args[req.args.length - 1]!;
  if (mustParseHeredoc(dest)) throw new InstructionError(`${cmd} cannot accept a heredoc as a destination`);
  const lookup = new Map<string, Heredoc>();
  for (const h of req.base.heredocs) lookup.set(h.name, h);
  const sources: string[] = [];
  const sourceContents: SourceContent[] = [];
  for (const src of srcs) {
    const h = mustParseHeredoc(src);
    if (h) {
      let data = lookup.get(h.name)?.content ?? '';
      if (h.chomp) data = chompHeredocContent(data);
      sourceContents.push({ path: h.name, data, expand: h.expand });
    } else sources.push(src);
  }
  return { sources, sourceContents, dest };
}

function shellDependent(
  req: Req,
  emptyAsNil: boolean,
): { command: string[]; prependShell: boolean; files: ShellInlineFile[] } {
  const files = req.base.heredocs.map((h) => ({ name: h.name, data: h.content, chomp: h.chomp }));
  const args = handleJSONArgs(req.args, req.json);
  return { command: emptyAsNil && args.length === 0 ? [] : args, prependShell: !req.json, files };
}

function parseOptInterval(name: string, f: Flag): number {
  if (f.value === '') return 0;
  const d = parseGoDuration(f.value);
  if (d === 0) return 0;
  if (d < 1e6) throw new InstructionError(`Interval ${goQuote(name)} cannot be less than 1ms`);
  return d;
}

const STAGE_NAME_RE = /^[a-z][a-z0-9-_.]*$/;
const ONBUILD_PREFIX_RE = /^[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*/i;

function parseFrom(req: Req): FromInstruction {
  const a = req.args;
  let stageName: string | undefined;
  if (a.length === 3 && a[1]!.toLowerCase() === 'as') {
    stageName = a[2]!.toLowerCase();
    if (!STAGE_NAME_RE.test(stageName)) {
      throw new InstructionError(
        `invalid name for build stage: ${goQuote(a[2]!)}, name can't start with a number or contain symbols`,
      );
    }
  } else if (a.length !== 1) {
    throw new InstructionError('FROM requires either one or three arguments');
  }
  const platform = req.flags.addString('platform');
  req.flags.parse();
  return {
    ...req.base,
    kind: 'FROM',
    image: a[0]!,
    stageName,
    stageNameAsWritten: stageName === undefined ? undefined : a[2],
    asKeyword: stageName === undefined ? undefined : a[1],
    platform: req.flags.used.has('platform') ? platform.value : undefined,
    docComment: stageName === undefined ? '' : docComment(req.base.comments, stageName),
  };
}

function parseRun(req: Req): RunInstruction {
  const fl = req.flags;
  const device = fl.addStrings('device');
  const mount = fl.addStrings('mount');
  const network = fl.addString('network', 'default');
  const security = fl.addString('security', 'sandbox');
  fl.parse();
  const sd = shellDependent(req, false);
  for (const dv of device.values) parseDevice(dv);
  for (const m of mount.values) parseMount(m);
  if (!['default', 'none', 'host'].includes(network.value)) {
    throw new InstructionError(`invalid network mode ${goQuote(network.value)}`);
  }
  if (!['insecure', 'sandbox'].includes(security.value)) {
    throw new InstructionError(`security ${goQuote(security.value)} is not valid`);
  }
  return {
    ...req.base,
    kind: 'RUN',
    ...sd,
    mounts: [...mount.values],
    network: network.value as NetworkMode,
    security: security.value as SecurityMode,
    devices: [...device.values],
    flagsUsed: [...fl.used],
  };
}

function parseHealthcheck(req: Req): HealthcheckInstruction {
  if (req.args.length === 0) throw errAtLeastOne('HEALTHCHECK');
  let typ = req.args[0]!.toUpperCase();
  const args = req.args.slice(1);
  const health = { test: [] as string[], interval: 0, timeout: 0, startPeriod: 0, startInterval: 0, retries: 0 };
  if (typ === 'NONE') {
    if (args.length !== 0) throw new InstructionError('HEALTHCHECK NONE takes no arguments');
    health.test = [typ];
    return { ...req.base, kind: 'HEALTHCHECK', health };
  }
  const fl = req.flags;
  const interval = fl.addString('interval');
  const timeout = fl.addString('timeout');
  const startPeriod = fl.addString('start-period');
  const startInterval = fl.addString('start-interval');
  const retries = fl.addString('retries');
  fl.parse();
  if (typ !== 'CMD') throw new InstructionError(`Unknown type ${goQuote(typ)} in HEALTHCHECK (try CMD)`);
  const cmdSlice = handleJSONArgs(args, req.json);
  if (cmdSlice.length === 0) throw new InstructionError('Missing command after HEALTHCHECK CMD');
  if (!req.json) typ = 'CMD-SHELL';
  health.test = [typ, ...cmdSlice];
  health.interval = parseOptInterval('interval', interval);
  health.timeout = parseOptInterval('timeout', timeout);
  health.startPeriod = parseOptInterval('start-period', startPeriod);
  health.startInterval = parseOptInterval('start-interval', startInterval);
  if (retries.value !== '') {
    if (!/^[+-]?[0-9]+$/.test(retries.value)) {
      throw new InstructionError(`strconv.ParseInt: parsing ${goQuote(retries.value)}: invalid syntax`);
    }
    const n = Number(retries.value);
    if (n > 2147483647 || n < -2147483648) {
      throw new InstructionError(`strconv.ParseInt: parsing ${goQuote(retries.value)}: value out of range`);
    }
    if (n < 0) throw new InstructionError(`--retries cannot be negative (${n})`);
    health.retries = n;
  }
  return { ...req.base, kind: 'HEALTHCHECK', health };
}

function parseInstructionReq(req: Req): Instruction {
  const { args, flags } = req;
  switch (req.command.toLowerCase()) {
    case 'env': {
      flags.parse();
      return { ...req.base, kind: 'ENV', env: parseKvps(args, 'ENV') } satisfies EnvInstruction;
    }
    case 'maintainer':
      if (args.length !== 1) throw errExactlyOne('MAINTAINER');
      flags.parse();
      return { ...req.base, kind: 'MAINTAINER', maintainer: args[0]! } satisfies MaintainerInstruction;
    case 'label':
      flags.parse();
      return { ...req.base, kind: 'LABEL', labels: parseKvps(args, 'LABEL') } satisfies LabelInstruction;
    case 'add': {
      if (args.length < 2) throw errNoDest('ADD');
      const chown = flags.addString('chown');
      const chmod = flags.addString('chmod');
      const link = flags.addBool('link');
      const keepGitDir = flags.addBool('keep-git-dir');
      const checksum = flags.addString('checksum');
      const unpack = flags.addBool('unpack');
      const exclude = flags.addStrings('exclude');
      flags.parse();
      const sd = sourcesAndDest(req, 'ADD');
      return {
        ...req.base,
        kind: 'ADD',
        ...sd,
        chown: chown.value,
        chmod: chmod.value,
        checksum: checksum.value,
        link: link.value === 'true',
        keepGitDir: flags.used.has('keep-git-dir') ? keepGitDir.value === 'true' : undefined,
        unpack: flags.used.has('unpack') ? unpack.value === 'true' : undefined,
        exclude: [...exclude.values],
      } satisfies AddInstruction;
    }
    case 'copy': {
      if (args.length < 2) throw errNoDest('COPY');
      const chown = flags.addString('chown');
      const from = flags.addString('from');
      const chmod = flags.addString('chmod');
      const link = flags.addBool('link');
      const exclude = flags.addStrings('exclude');
      const parents = flags.addBool('parents');
      flags.parse();
      const sd = sourcesAndDest(req, 'COPY');
      return {
        ...req.base,
        kind: 'COPY',
        ...sd,
        from: from.value,
        chown: chown.value,
        chmod: chmod.value,
        link: link.value === 'true',
        parents: parents.value === 'true',
        exclude: [...exclude.values],
      } satisfies CopyInstruction;
    }
    case 'from':
      return parseFrom(req);
    case 'onbuild': {
      if (args.length === 0) throw errAtLeastOne('ONBUILD');
      flags.parse();
      const trigger = trimSpace(args[0]!).toUpperCase();
      if (trigger === 'ONBUILD') throw new InstructionError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
      if (trigger === 'MAINTAINER' || trigger === 'FROM') {
        throw new InstructionError(`${trigger} isn't allowed as an ONBUILD trigger`);
      }
      let expression = req.node.original.replace(ONBUILD_PREFIX_RE, '');
      for (const h of req.base.heredocs) expression += '\n' + h.content + h.name;
      return { ...req.base, kind: 'ONBUILD', expression, triggerKeyword: trigger } satisfies OnbuildInstruction;
    }
    case 'workdir':
      if (args.length !== 1) throw errExactlyOne('WORKDIR');
      flags.parse();
      return { ...req.base, kind: 'WORKDIR', path: args[0]! } satisfies WorkdirInstruction;
    case 'run':
      return parseRun(req);
    case 'cmd':
      flags.parse();
      return { ...req.base, kind: 'CMD', ...shellDependent(req, false) } satisfies CmdInstruction;
    case 'healthcheck':
      return parseHealthcheck(req);
    case 'entrypoint':
      flags.parse();
      return { ...req.base, kind: 'ENTRYPOINT', ...shellDependent(req, true) } satisfies EntrypointInstruction;
    case 'expose':
      if (args.length === 0) throw errAtLeastOne('EXPOSE');
      flags.parse();
      return { ...req.base, kind: 'EXPOSE', ports: goSortStrings(args) } satisfies ExposeInstruction;
    case 'user':
      if (args.length !== 1) throw errExactlyOne('USER');
      flags.parse();
      return { ...req.base, kind: 'USER', user: args[0]! } satisfies UserInstruction;
    case 'volume': {
      if (args.length === 0) throw errAtLeastOne('VOLUME');
      flags.parse();
      const volumes = args.map((v) => {
        const t = trimSpace(v);
        if (t === '') throw new InstructionError('VOLUME specified can not be an empty string');
        return t;
      });
      return { ...req.base, kind: 'VOLUME', volumes } satisfies VolumeInstruction;
    }
    case 'stopsignal':
      if (args.length !== 1) throw errExactlyOne('STOPSIGNAL');
      return { ...req.base, kind: 'STOPSIGNAL', signal: args[0]! } satisfies StopSignalInstruction;
    case 'arg': {
      if (args.length < 1) throw errAtLeastOne('ARG');
      const defs: ArgDefinition[] = args.map((arg) => {
        const eq = arg.indexOf('=');
        const key = eq < 0 ? arg : arg.slice(0, eq);
        if (eq === 0) throw new InstructionError('ARG names can not be blank');
        return { key, value: eq < 0 ? undefined : arg.slice(eq + 1), docComment: docComment(req.base.comments, key) };
      });
      return { ...req.base, kind: 'ARG', args: defs } satisfies ArgInstruction;
    }
    case 'shell': {
      flags.parse();
      const shell = handleJSONArgs(args, req.json);
      if (shell.length === 0) throw errAtLeastOne('SHELL');
      if (!req.json) throw new InstructionError('SHELL requires the arguments to be in JSON form');
      return { ...req.base, kind: 'SHELL', shell } satisfies ShellInstruction;
    }
  }
  throw new InstructionError(
    withSuggestion(
      `unknown instruction: ${req.command}`,
      req.command,
      INSTRUCTION_KINDS.map((k) => k),
      false,
    ),
    'DOCKERFILE_UNKNOWN_INSTRUCTION',
  );
}

/** Go sort.Strings order (byte-wise UTF-8 comparison). */
function goSortStrings(list: string[]): string[] {
  return [...list].sort((a, b) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
}

/** Converts one AST instruction node into a typed instruction. Throws DockerfileError. */
export function instructionFromNode(node: Node, opts: { filename?: string; text?: string } = {}): Instruction {
  const base: InstructionBase = {
    kind: 'RUN' as InstructionKind,
    keyword: node.value,
    range: {
      startLine: node.startLine,
      endLine: node.endLine,
      startColumn: node.startColumn,
      endColumn: node.endColumn,
    },
    original: trimSpace(node.original),
    json: node.attributes.json === true,
    flags: [...node.flags],
    heredocs: node.heredocs.map((h) => ({ ...h })),
    comments: [...node.prevComment],
  };
  const req: Req = {
    node,
    command: node.value,
    args: nodeArgs(node),
    flags: new BFlags(node.flags),
    json: node.attributes.json === true,
    base,
  };
  try {
    return parseInstructionReq(req);
  } catch (e) {
    throw toDockerfileError(e, node, opts);
  }
}

function toDockerfileError(e: unknown, node: Node, opts: { filename?: string; text?: string }): DockerfileError {
  if (e instanceof DockerfileError) return e;
  const code: DockerfileErrorCode = e instanceof InstructionError ? e.code : 'DOCKERFILE_INSTRUCTION';
  return new DockerfileError(code, e instanceof Error ? e.message : String(e), {
    file: opts.filename ?? 'Dockerfile',
    startLine: node.startLine,
    endLine: node.endLine,
    source: opts.text !== undefined ? sourceLines(opts.text, node.startLine, node.endLine) : node.original,
    cause: e,
  });
}

/** The result of {@link parseDockerfile}. */
export interface ParsedDockerfile {
  /** Parser directives found at the top (`syntax`, `escape`, `check`). */
  directives: Directive[];
  escapeToken: string;
  /** Build stages in order, each with its FROM and commands. */
  stages: Stage[];
  /** ARG instructions before the first FROM (meta args). */
  globalArgs: ArgInstruction[];
  /** Parser warnings (empty continuation lines). Lint rules are in lint.ts. */
  warnings: ParseWarning[];
  /** The BuildKit-shaped parse tree. */
  ast: Node;
  /** All instructions in source order (global ARGs, FROMs and commands). */
  instructions: Instruction[];
}

/**
 * Parses a Dockerfile into typed stages (BuildKit instructions.Parse). Throws DockerfileError (only) for invalid
 * input: parse errors, invalid instructions or flags, and commands before the first FROM.
 */
export function parseDockerfile(text: string, opts: ParseOptions = {}): ParsedDockerfile {
  const ast = parseAst(text, opts);
  const stages: Stage[] = [];
  const globalArgs: ArgInstruction[] = [];
  const instructions: Instruction[] = [];
  for (const node of ast.ast.children) {
    const ins = instructionFromNode(node, { filename: opts.filename ?? 'Dockerfile', text });
    instructions.push(ins);
    if (stages.length === 0 && ins.kind === 'ARG') {
      globalArgs.push(ins);
      continue;
    }
    if (ins.kind === 'FROM') {
      stages.push({ index: stages.length, name: ins.stageName, from: ins, commands: [] });
      continue;
    }
    const cur = stages[stages.length - 1];
    if (!cur)
      throw toDockerfileError(new InstructionError('no build stage in current context'), node, { ...opts, text });
    cur.commands.push(ins as Command);
  }
  return {
    directives: ast.directives,
    escapeToken: ast.escapeToken,
    stages,
    globalArgs,
    warnings: ast.warnings,
    ast: ast.ast,
    instructions,
  };
}
