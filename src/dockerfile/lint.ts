/**
 * Dockerfile lint rules, after BuildKit's frontend/dockerfile/linter (rule names, messages) and the places in
 * instructions/parse.go and dockerfile2llb (convert.go, validations.go) where BuildKit runs them. Honours the
 * `# check=skip=...;error=true;experimental=...` directive and per-instruction `# check=` comments. Output lines
 * look like `docker build --check`: `WARN: RuleName - message (line N)`.
 */
import { DockerfileError } from './errors.js';
import { DirectiveError, DirectiveParser, findDirective, parseCheckOptions, type CheckOptions } from './directives.js';
import { parseDockerfile, type ParsedDockerfile } from './convert.js';
import { suggest } from './suggest.js';
import { goQuote } from './dump.js';
import { processWordWithMatches } from './shell.js';
import { buildStageGraph } from './stages.js';
import { compilePatterns, matchesOrParentMatches, cleanPath } from './dockerignore.js';
import type { Command, FromInstruction, Instruction, SourceRange, Stage } from './instructions.js';

/** A lint rule: BuildKit's name and description. */
export interface LintRule {
  name: string;
  description: string;
  experimental?: boolean;
}

const rule = (name: string, description: string, experimental = false): LintRule => ({
  name,
  description,
  experimental,
});

/** The rules kiln implements, keyed by BuildKit's rule name. */
export const RULES = {
  StageNameCasing: rule('StageNameCasing', 'Stage names should be lowercase'),
  FromAsCasing: rule('FromAsCasing', "The 'as' keyword should match the case of the 'from' keyword"),
  NoEmptyContinuation: rule('NoEmptyContinuation', 'Empty continuation lines will become errors in a future release'),
  ConsistentInstructionCasing: rule(
    'ConsistentInstructionCasing',
    'All commands within the Dockerfile should use the same casing (either upper or lower)',
  ),
  DuplicateStageName: rule('DuplicateStageName', 'Stage names should be unique'),
  ReservedStageName: rule('ReservedStageName', 'Reserved words should not be used as stage names'),
  JSONArgsRecommended: rule(
    'JSONArgsRecommended',
    'JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals',
  ),
  MaintainerDeprecated: rule(
    'MaintainerDeprecated',
    'The MAINTAINER instruction is deprecated, use a label instead to define an image author',
  ),
  UndefinedArgInFrom: rule('UndefinedArgInFrom', 'FROM command must use declared ARGs'),
  WorkdirRelativePath: rule(
    'WorkdirRelativePath',
    'Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes',
  ),
  UndefinedVar: rule('UndefinedVar', 'Variables should be defined before their use'),
  MultipleInstructionsDisallowed: rule(
    'MultipleInstructionsDisallowed',
    'Multiple instructions of the same type should not be used in the same stage',
  ),
  LegacyKeyValueFormat: rule(
    'LegacyKeyValueFormat',
    'Legacy key/value format with whitespace separator should not be used',
  ),
  RedundantTargetPlatform: rule(
    'RedundantTargetPlatform',
    'Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior',
  ),
  SecretsUsedInArgOrEnv: rule('SecretsUsedInArgOrEnv', 'Sensitive data should not be used in the ARG or ENV commands'),
  InvalidDefaultArgInFrom: rule(
    'InvalidDefaultArgInFrom',
    'Default value for global ARG results in an empty or invalid base image name',
  ),
  FromPlatformFlagConstDisallowed: rule(
    'FromPlatformFlagConstDisallowed',
    'FROM --platform flag should not use a constant value',
  ),
  CopyIgnoredFile: rule('CopyIgnoredFile', 'Attempting to Copy file that is excluded by .dockerignore'),
  InvalidDefinitionDescription: rule(
    'InvalidDefinitionDescription',
    'Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.',
    true,
  ),
  ExposeProtoCasing: rule('ExposeProtoCasing', 'Protocol in EXPOSE instruction should be lowercase'),
  ExposeInvalidFormat: rule(
    'ExposeInvalidFormat',
    'IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release',
  ),
} as const satisfies Record<string, LintRule>;

export type RuleName = keyof typeof RULES;

export interface LintWarning {
  rule: RuleName;
  /** The rule's generic description. */
  description: string;
  /** The specific message, e.g. `Stage name 'Build' should be lowercase`. */
  message: string;
  /** First line of the instruction the warning is about (0 when not tied to a line). */
  line: number;
  range: SourceRange;
}

export interface LintOptions {
  filename?: string;
  /** `--build-arg` values (change which ARGs count as set). */
  buildArgs?: Readonly<Record<string, string>>;
  /** Build target: only the stages it needs are checked at dispatch level (default: all stages). */
  target?: string;
  /** Build/target platform for the automatic platform ARGs (default: this machine, linux). */
  platform?: { os: string; architecture: string; variant?: string };
  /** `.dockerignore` patterns of the context, for CopyIgnoredFile. */
  ignorePatterns?: readonly string[];
  /**
   * Environment variable names of an external base image (for UndefinedVar). Default: `PATH` only (what every
   * image and `scratch` define); return undefined when unknown.
   */
  baseImageEnv?: (image: string) => readonly string[] | undefined;
  /** Overrides the file's `# check=` directive. */
  check?: CheckOptions;
}

export interface LintResult {
  warnings: LintWarning[];
  /** Lint options in effect (from the `check` directive or options). */
  check: CheckOptions;
  /** True when `error=true` is set and at least one rule fired: the build (and `kiln dockerfile lint`) must fail. */
  failed: boolean;
  parsed: ParsedDockerfile;
}

/** `WARN: RuleName - message (line N)`. */
export function formatLintWarning(w: LintWarning): string {
  return `WARN: ${w.rule} - ${w.message}${w.line > 0 ? ` (line ${w.line})` : ''}`;
}

const NON_ENV_ARGS = new Set(['BUILDKIT_SBOM_SCAN_CONTEXT', 'BUILDKIT_SBOM_SCAN_STAGE']);
const RESERVED_STAGE_NAMES = new Set(['context', 'scratch']);
const SECRET_DENY = /(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)/i;
const SECRET_ALLOW = /(?:_|^)(?:public|file|version)(?:_|$)/i;

// distribution/reference grammar (ParseNormalizedNamed validity only).
const REF_DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const REF_DOMAIN = `(?:${REF_DOMAIN_COMPONENT}(?:\\.${REF_DOMAIN_COMPONENT})*|\\[(?:[a-fA-F0-9:]+)\\])(?::[0-9]+)?`;
const REF_PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*';
const REF_NAME = `(?:${REF_DOMAIN}/)?${REF_PATH_COMPONENT}(?:/${REF_PATH_COMPONENT})*`;
const REF_TAG = '[\\w][\\w.-]{0,127}';
const REF_DIGEST = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';
const REF_RE = new RegExp(`^(${REF_NAME})(?::(${REF_TAG}))?(?:@(${REF_DIGEST}))?$`);

/** Would `reference.ParseNormalizedNamed(s)` accept `s`? */
export function isValidImageReference(s: string): boolean {
  if (s === '' || /^[a-f0-9]{64}$/.test(s)) return false;
  const m = REF_RE.exec(s);
  if (!m) return false;
  const name = m[1]!;
  if (name.length > 255) return false;
  const slash = name.indexOf('/');
  const first = slash < 0 ? '' : name.slice(0, slash);
  const isDomain = first !== '' && (first.includes('.') || first.includes(':') || first === 'localhost');
  // Without a domain the whole name must be a lowercase path (the regex already enforces path components).
  if (!isDomain && name !== name.toLowerCase()) return false;
  return true;
}

const ARCH_ALIASES: Record<string, string> = {
  x86_64: 'amd64',
  'x86-64': 'amd64',
  aarch64: 'arm64',
  armhf: 'arm',
  armel: 'arm',
  i386: '386',
  i686: '386',
};
const KNOWN_OS = new Set([
  'aix',
  'android',
  'darwin',
  'dragonfly',
  'freebsd',
  'hurd',
  'illumos',
  'ios',
  'js',
  'linux',
  'nacl',
  'netbsd',
  'openbsd',
  'plan9',
  'solaris',
  'windows',
  'zos',
  'wasip1',
]);

/** containerd platforms.Parse, reduced to os and architecture. Undefined when invalid. */
export function parsePlatform(s: string): { os: string; architecture: string } | undefined {
  if (!/^[A-Za-z0-9_./-]+$/.test(s) || s.includes('*')) return undefined;
  const parts = s.toLowerCase().split('/');
  if (parts.some((p) => p === '')) return undefined;
  const arch = (a: string): string => ARCH_ALIASES[a] ?? a;
  if (parts.length === 1) {
    if (KNOWN_OS.has(parts[0]!)) return { os: parts[0]!, architecture: hostArch() };
    return { os: 'linux', architecture: arch(parts[0]!) };
  }
  if (parts.length > 3) return undefined;
  return { os: parts[0]!, architecture: arch(parts[1]!) };
}

function hostArch(): string {
  const a = process.arch;
  return a === 'x64' ? 'amd64' : a === 'ia32' ? '386' : a;
}

function platformString(p: { os: string; architecture: string; variant?: string }): string {
  return [p.os, p.architecture, p.variant].filter((x) => x !== undefined && x !== '').join('/');
}

interface ExpandResult {
  result: string;
  matched: Set<string>;
  unmatched: Set<string>;
}

function expandWord(word: string, env: ReadonlyMap<string, string>, escape: string): ExpandResult | undefined {
  try {
    const r = processWordWithMatches(word, env, { escape });
    return { result: r.result, matched: r.matched, unmatched: r.unmatched };
  } catch {
    return undefined;
  }
}

/** State of a stage during the lint walk (what BuildKit's dispatchState tracks for the rules). */
interface StageLintState {
  env: Map<string, string>;
  shellSet: boolean;
  workdirSet: boolean;
  /** ARG names declared in the stage or its base stages (BuildKit buildArgs, inherited). */
  declared: Set<string>;
}

interface RawWarning {
  rule: RuleName;
  message: string;
  range: SourceRange;
  /** Comments of the instruction the warning belongs to (for per-instruction `# check=`). */
  comments: readonly string[];
}

/** Lints a Dockerfile. Throws DockerfileError when the file does not parse (or the check directive is invalid). */
export function lintDockerfile(text: string, opts: LintOptions = {}): LintResult {
  const file = opts.filename ?? 'Dockerfile';
  const parsed = parseDockerfile(text, { filename: file });
  let check = opts.check;
  if (!check) {
    const d = findDirective(text, 'check');
    try {
      check = parseCheckOptions(d ? d.value : '');
    } catch (e) {
      throw new DockerfileError('DOCKERFILE_DIRECTIVE', `failed to parse check options: ${(e as Error).message}`, {
        file,
        startLine: d?.line ?? 0,
        cause: e,
      });
    }
  }
  const raw = collectWarnings(parsed, opts);
  const warnings: LintWarning[] = [];
  for (const w of raw) {
    const cfg = mergeComments(check, w.comments);
    const r = RULES[w.rule] as LintRule;
    if (r.experimental) {
      if (!cfg.experimentalAll && !cfg.experimental.includes(w.rule)) continue;
    } else if (cfg.skipAll || cfg.skip.includes(w.rule)) continue;
    warnings.push({
      rule: w.rule,
      description: r.description,
      message: w.message,
      line: w.range.startLine,
      range: w.range,
    });
  }
  warnings.sort((a, b) => a.line - b.line);
  return { warnings, check, failed: check.error && warnings.length > 0, parsed };
}

function mergeComments(base: CheckOptions, comments: readonly string[]): CheckOptions {
  for (const c of comments) {
    // BuildKit: a DirectiveParser with an empty comment prefix over each comment; the first `check` one counts.
    const d = new DirectiveParser('').parseLine(c);
    if (!d || d.name !== 'check') continue;
    let o: CheckOptions;
    try {
      o = parseCheckOptions(d.value.split(' ')[0]!);
    } catch (e) {
      if (e instanceof DirectiveError) return base;
      throw e;
    }
    return {
      skipAll: base.skipAll || o.skipAll,
      skip: [...base.skip, ...o.skip],
      experimentalAll: base.experimentalAll || o.experimentalAll,
      experimental: [...base.experimental, ...o.experimental],
      error: base.error,
    };
  }
  return base;
}

function collectWarnings(parsed: ParsedDockerfile, opts: LintOptions): RawWarning[] {
  const out: RawWarning[] = [];
  // Rules BuildKit runs with the file-level linter only (no per-instruction `# check=` comments).
  const fileLevel = new Set<RuleName>([
    'NoEmptyContinuation',
    'ConsistentInstructionCasing',
    'DuplicateStageName',
    'ReservedStageName',
    'InvalidDefaultArgInFrom',
  ]);
  const add = (r: RuleName, message: string, at: Instruction | { range: SourceRange; comments: string[] }): void => {
    out.push({ rule: r, message, range: at.range, comments: fileLevel.has(r) ? [] : at.comments });
  };
  const esc = parsed.escapeToken;

  for (const w of parsed.warnings) {
    if (w.rule === 'NoEmptyContinuation')
      out.push({ rule: 'NoEmptyContinuation', message: w.message, range: w.range, comments: [] });
  }

  // Per instruction, at parse time (instructions/parse.go).
  for (const ins of parsed.instructions) {
    if (ins.kind === 'MAINTAINER')
      add('MaintainerDeprecated', 'Maintainer instruction is deprecated in favor of using label', ins);
    if (ins.kind === 'FROM') {
      if (ins.stageNameAsWritten !== undefined && ins.stageNameAsWritten !== ins.stageNameAsWritten.toLowerCase()) {
        add('StageNameCasing', `Stage name '${ins.stageNameAsWritten}' should be lowercase`, ins);
      }
      if (ins.asKeyword !== undefined) {
        const kw = ins.keyword;
        const lower = kw === kw.toLowerCase();
        const upper = kw === kw.toUpperCase();
        if (
          (lower && ins.asKeyword !== ins.asKeyword.toLowerCase()) ||
          (!lower && upper && ins.asKeyword !== ins.asKeyword.toUpperCase())
        ) {
          add('FromAsCasing', `'${ins.asKeyword}' and '${kw}' keywords' casing do not match`, ins);
        }
      }
      if (ins.stageName !== undefined) definitionDescription('FROM', [ins.stageName], ins, add);
    }
    if (ins.kind === 'ARG')
      definitionDescription(
        'ARG',
        ins.args.map((a) => a.key),
        ins,
        add,
      );
  }

  // Stage names and casing (validations.go).
  const seen = new Set<string>();
  for (const st of parsed.stages) {
    if (st.name === undefined) continue;
    if (RESERVED_STAGE_NAMES.has(st.name)) {
      add('ReservedStageName', `Stage name should not use the same name as reserved stage "${st.name}"`, st.from);
    }
    if (seen.has(st.name))
      add('DuplicateStageName', `Duplicate stage name "${st.name}", stage names should be unique`, st.from);
    seen.add(st.name);
  }
  commandCasing(parsed.stages, add);

  // Global (meta) args and FROM checks.
  const hostPlatform = opts.platform ?? { os: 'linux', architecture: hostArch() };
  const target = opts.target || parsed.stages[parsed.stages.length - 1]?.name || 'default';
  const platformArgs = new Map<string, string>([
    ['BUILDPLATFORM', platformString(hostPlatform)],
    ['BUILDOS', hostPlatform.os],
    ['BUILDOSVERSION', ''],
    ['BUILDARCH', hostPlatform.architecture],
    ['BUILDVARIANT', hostPlatform.variant ?? ''],
    ['TARGETPLATFORM', platformString(hostPlatform)],
    ['TARGETOS', hostPlatform.os],
    ['TARGETOSVERSION', ''],
    ['TARGETARCH', hostPlatform.architecture],
    ['TARGETVARIANT', hostPlatform.variant ?? ''],
    ['TARGETSTAGE', target],
  ]);
  for (const [k, v] of Object.entries(opts.buildArgs ?? {})) if (platformArgs.has(k)) platformArgs.set(k, v);
  const metaArgs = (
    buildArgs: Readonly<Record<string, string>>,
  ): { env: Map<string, string>; keys: Set<string> } | undefined => {
    const env = new Map(platformArgs);
    const keys = new Set<string>();
    for (const a of parsed.globalArgs) {
      for (const kv of a.args) {
        keys.add(kv.key);
        let value: string | undefined;
        if (Object.prototype.hasOwnProperty.call(buildArgs, kv.key)) value = buildArgs[kv.key];
        else if (kv.value !== undefined) {
          const r = expandWord(kv.value, env, esc);
          if (!r) return undefined;
          value = r.result;
        }
        if (value !== undefined) env.set(kv.key, value);
      }
    }
    return { env, keys };
  };
  const defaults = metaArgs({});
  if (defaults) {
    for (const st of parsed.stages) {
      const r = expandWord(st.from.image, defaults.env, esc);
      if (!r) break;
      if (!isValidImageReference(r.result)) {
        add(
          'InvalidDefaultArgInFrom',
          `Default value for ARG ${st.from.image} results in empty or invalid base image name`,
          st.from,
        );
      }
    }
  }
  const global = metaArgs(opts.buildArgs ?? {}) ?? { env: new Map(platformArgs), keys: new Set<string>() };
  const argKeys = new Set<string>([...global.keys, ...global.env.keys()]);
  for (const st of parsed.stages) fromChecks(st.from, global.env, argKeys, esc, add);

  // Dispatch-time rules, stage by stage: all stages without a target (as BuildKit's lint), else those it needs.
  let needed: ((i: number) => boolean) | undefined;
  if (opts.target) {
    const g = buildStageGraph(parsed, {
      target: opts.target,
      buildArgs: new Map(Object.entries(opts.buildArgs ?? {})),
      escape: esc,
    });
    needed = (i) => g.stages[i]?.needed === true;
  }
  const states: StageLintState[] = [];
  for (const st of parsed.stages) {
    const base = baseStage(parsed.stages, st);
    const state: StageLintState = base
      ? {
          env: new Map(states[base.index]!.env),
          shellSet: states[base.index]!.shellSet,
          workdirSet: states[base.index]!.workdirSet,
          declared: new Set(states[base.index]!.declared),
        }
      : {
          env: new Map(
            ((st.from.image === 'scratch' ? ['PATH'] : opts.baseImageEnv?.(st.from.image)) ?? ['PATH']).map((k) => [
              k,
              '',
            ]),
          ),
          shellSet: false,
          workdirSet: false,
          declared: new Set<string>(),
        };
    states[st.index] = state;
    if (needed && !needed(st.index)) continue;
    dispatchChecks(st, state, global.env, opts, esc, add);
  }
  return out;
}

function definitionDescription(
  instruction: string,
  keys: string[],
  ins: Instruction,
  add: (r: RuleName, m: string, at: Instruction) => void,
): void {
  if (ins.comments.length === 0 || keys.length === 0) return;
  const first = ins.comments[ins.comments.length - 1]!.split(' ')[0]!;
  if (keys.includes(first)) return;
  const example = keys.length > 1 ? '<arg_key>' : keys[0]!;
  add(
    'InvalidDefinitionDescription',
    `Comment for ${instruction} should follow the format: \`# ${example} <description>\``,
    ins,
  );
}

function commandCasing(stages: Stage[], add: (r: RuleName, m: string, at: Instruction) => void): void {
  const consistent = (s: string): boolean => s === s.toLowerCase() || s === s.toUpperCase();
  let lower = 0;
  let upper = 0;
  const count = (name: string): void => {
    if (!consistent(name)) return;
    if (name === name.toLowerCase()) lower++;
    else upper++;
  };
  for (const st of stages) {
    count(st.from.keyword);
    for (const c of st.commands) count(c.keyword);
  }
  const majorityLower = lower > upper;
  const check = (ins: Instruction): void => {
    const name = ins.keyword;
    let correct = '';
    if (majorityLower && name.toLowerCase() !== name) correct = 'lowercase';
    else if (!majorityLower && name.toUpperCase() !== name) correct = 'uppercase';
    if (correct !== '') {
      add(
        'ConsistentInstructionCasing',
        `Command '${name}' should match the case of the command majority (${correct})`,
        ins,
      );
    }
  };
  for (const st of stages) {
    check(st.from);
    for (const c of st.commands) check(c);
  }
}

function fromChecks(
  from: FromInstruction,
  globalEnv: Map<string, string>,
  argKeys: Set<string>,
  esc: string,
  add: (r: RuleName, m: string, at: Instruction) => void,
): void {
  const keys = [...argKeys];
  const undefinedArgs = (r: ExpandResult): void => {
    for (const arg of r.unmatched) {
      if (argKeys.has(arg)) continue;
      const s = suggest(arg, keys, true);
      add('UndefinedArgInFrom', `FROM argument '${arg}' is not declared${s ? ` (did you mean ${s}?)` : ''}`, from);
    }
  };
  const name = expandWord(from.image, globalEnv, esc);
  if (name) undefinedArgs(name);
  if (from.platform === undefined || from.platform === '') return;
  const plat = expandWord(from.platform, globalEnv, esc);
  if (!plat) return;
  undefinedArgs(plat);
  if (plat.matched.size === 1 && plat.unmatched.size === 0 && plat.matched.has('TARGETPLATFORM')) {
    if (plat.result === globalEnv.get('TARGETPLATFORM')) {
      add(
        'RedundantTargetPlatform',
        `Setting platform to predefined ${from.platform} in FROM is redundant as this is the default behavior`,
        from,
      );
    }
  }
  if (plat.matched.size === 0 && plat.unmatched.size === 0) {
    const p = parsePlatform(plat.result);
    const stageName = from.stageName ?? '';
    if (p && !stageName.includes(p.os) && !stageName.includes(p.architecture)) {
      add(
        'FromPlatformFlagConstDisallowed',
        `FROM --platform flag should not use constant value "${plat.result}"`,
        from,
      );
    }
  }
}

function baseStage(stages: Stage[], st: Stage): Stage | undefined {
  const name = st.from.image.toLowerCase();
  for (let i = st.index - 1; i >= 0; i--) if (stages[i]!.name === name) return stages[i];
  return undefined;
}

/** The words of a command BuildKit expands with the stage environment (and reports unmatched variables for). */
function expandedWords(c: Command): string[] {
  switch (c.kind) {
    case 'ENV':
      return c.env.flatMap((kv) => [kv.key, kv.value]);
    case 'LABEL':
      return c.labels.flatMap((kv) => [kv.key, kv.value]);
    case 'ADD':
      return [
        c.chown,
        c.chmod,
        c.checksum,
        ...c.sources,
        c.dest,
        ...c.sourceContents.filter((s) => s.expand).map((s) => s.data),
      ];
    case 'COPY':
      return [c.chown, c.chmod, ...c.sources, c.dest, ...c.sourceContents.filter((s) => s.expand).map((s) => s.data)];
    case 'WORKDIR':
      return [c.path];
    case 'USER':
      return [c.user];
    case 'VOLUME':
      return c.volumes;
    case 'STOPSIGNAL':
      return [c.signal];
    case 'RUN':
      return c.mounts.flatMap((m) => m.split(',').map((f) => (f.includes('=') ? f.slice(f.indexOf('=') + 1) : '')));
    default:
      return [];
  }
}

function dispatchChecks(
  st: Stage,
  state: StageLintState,
  globalEnv: Map<string, string>,
  opts: LintOptions,
  esc: string,
  add: (r: RuleName, m: string, at: Instruction) => void,
): void {
  const declared = state.declared;
  const used: Partial<Record<'CMD' | 'ENTRYPOINT' | 'HEALTHCHECK', Command>> = {};
  const ignore = opts.ignorePatterns && opts.ignorePatterns.length > 0 ? opts.ignorePatterns : undefined;
  const compiled = ignore ? compilePatterns(ignore) : undefined;
  const hasExclusions = compiled ? compiled.some((p) => p.exclusion) : true;
  const undefinedVars = (c: Command, unmatched: Iterable<string>): void => {
    const keys = [...state.env.keys()];
    for (const v of unmatched) {
      if (declared.has(v) || NON_ENV_ARGS.has(v)) continue;
      const s = suggest(v, keys, true);
      add('UndefinedVar', `Usage of undefined variable '$${v}'${s ? ` (did you mean $${s}?)` : ''}`, c);
    }
  };
  for (const c of st.commands) {
    if (c.kind !== 'ARG') {
      const unmatched = new Set<string>();
      for (const w of expandedWords(c)) {
        if (w === '' || !w.includes('$')) continue;
        const r = expandWord(w, state.env, esc);
        if (r) for (const u of r.unmatched) unmatched.add(u);
      }
      undefinedVars(c, unmatched);
    }
    switch (c.kind) {
      case 'ENV':
        for (const kv of c.env) {
          if (kv.noDelim) add('LegacyKeyValueFormat', legacyMessage(c.keyword), c);
          secretKey('ENV', kv.key, c, add);
        }
        for (const kv of c.env) state.env.set(kv.key, expandWord(kv.value, state.env, esc)?.result ?? kv.value);
        break;
      case 'LABEL':
        for (const kv of c.labels) if (kv.noDelim) add('LegacyKeyValueFormat', legacyMessage(c.keyword), c);
        break;
      case 'ARG':
        for (const a of c.args) {
          secretKey('ARG', a.key, c, add);
          let value: string | undefined;
          if (opts.buildArgs && Object.prototype.hasOwnProperty.call(opts.buildArgs, a.key))
            value = opts.buildArgs[a.key];
          else if (a.value !== undefined) {
            const r = expandWord(a.value, state.env, esc);
            if (r) undefinedVars(c, r.unmatched);
            value = r?.result ?? a.value;
          } else if (globalEnv.has(a.key)) value = globalEnv.get(a.key);
          if (value !== undefined && !NON_ENV_ARGS.has(a.key)) state.env.set(a.key, value);
          declared.add(a.key);
        }
        break;
      case 'SHELL':
        state.shellSet = true;
        break;
      case 'CMD':
      case 'ENTRYPOINT':
      case 'HEALTHCHECK': {
        const prev = used[c.kind];
        if (prev) {
          add(
            'MultipleInstructionsDisallowed',
            `Multiple ${c.keyword} instructions should not be used in the same stage because only the last one will be used`,
            prev,
          );
        }
        used[c.kind] = c;
        if (c.kind !== 'HEALTHCHECK' && c.prependShell && !state.shellSet) {
          add(
            'JSONArgsRecommended',
            `JSON arguments recommended for ${c.keyword} to prevent unintended behavior related to OS signals`,
            c,
          );
        }
        break;
      }
      case 'WORKDIR': {
        const p = expandWord(c.path, state.env, esc)?.result ?? c.path;
        if (!state.workdirSet && !p.startsWith('/')) {
          add(
            'WorkdirRelativePath',
            `Relative workdir ${goQuote(p)} can have unexpected results if the base image changes`,
            c,
          );
        }
        state.workdirSet = true;
        break;
      }
      case 'EXPOSE':
        for (const port of c.ports) exposeChecks(port, c, add);
        break;
      case 'COPY':
      case 'ADD': {
        if (!compiled || hasExclusions || (c.kind === 'COPY' && c.from !== '')) break;
        for (const srcRaw of c.sources) {
          if (c.kind === 'ADD' && /^[a-z][a-z0-9+.-]*:\/\/|^git@/i.test(srcRaw)) continue;
          const expanded = expandWord(srcRaw, state.env, esc)?.result ?? srcRaw;
          let src = cleanPath(expanded);
          if (src === '.' || src === '/') {
            if (!ignore!.some((p) => p === '*' || p === '**' || p === '**/*')) continue;
          }
          src = src.replace(/^\/+/, '');
          if (src !== '' && matchesOrParentMatches(compiled, src === '' ? '.' : src)) {
            add(
              'CopyIgnoredFile',
              `Attempting to ${c.kind === 'ADD' ? 'Add' : 'Copy'} file ${goQuote(cleanPath(expanded))} that is excluded by .dockerignore`,
              c,
            );
          }
        }
        break;
      }
      default:
        break;
    }
  }
}

function exposeChecks(rawPort: string, c: Command, add: (r: RuleName, m: string, at: Instruction) => void): void {
  const slash = rawPort.lastIndexOf('/');
  const proto = slash < 0 ? '' : rawPort.slice(slash + 1);
  if (proto !== '' && proto !== proto.toLowerCase()) {
    add('ExposeProtoCasing', `Defined protocol '${rawPort}' in EXPOSE instruction should be lowercase`, c);
  }
  const portPart = slash < 0 ? rawPort : rawPort.slice(0, slash);
  if (portPart.includes(':')) {
    add(
      'ExposeInvalidFormat',
      `EXPOSE instruction should not define an IP address or host-port mapping, found '${rawPort}'`,
      c,
    );
  }
}

function legacyMessage(name: string): string {
  return `"${name} key=value" should be used instead of legacy "${name} key value" format`;
}

function secretKey(
  instruction: string,
  key: string,
  c: Instruction,
  add: (r: RuleName, m: string, at: Instruction) => void,
): void {
  if (SECRET_DENY.test(key) && !SECRET_ALLOW.test(key)) {
    add(
      'SecretsUsedInArgOrEnv',
      `Do not use ARG or ENV instructions for sensitive data (${instruction} ${goQuote(key)})`,
      c,
    );
  }
}
