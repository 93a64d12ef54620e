/**
 * Per-stage variable scoping and instruction expansion, as BuildKit's dockerfile2llb dispatch does it
 * (convert.go: dispatch, dispatchArg, dispatchEnv, dispatchRun/runCommandString, convert_expose.go).
 *
 * A {@link StageScope} follows one stage: it starts from the base image's config Env (plus the default PATH), or
 * from the scope of the base stage (`FROM <stage>` inherits its environment *and* its declared ARGs), and is fed the
 * stage's commands in order (ONBUILD triggers first). For each command {@link StageScope.expand} returns the
 * expanded instruction and what the build engine needs at that step:
 *
 * - which words expand (BuildKit instructions' `Expand`): ENV and LABEL keys and values, ADD/COPY sources, dest,
 *   `--chown`, `--chmod` (ADD also `--checksum`), WORKDIR, USER, VOLUME, STOPSIGNAL, EXPOSE (expanded *and* split
 *   into words), RUN `--mount` values (field by field), heredoc COPY/ADD sources with `expand` set (raw lexer:
 *   quotes kept). RUN/CMD/ENTRYPOINT/SHELL/HEALTHCHECK/MAINTAINER/ONBUILD are not expanded (the shell does that).
 *   `COPY --from` is never expanded (see stages.ts).
 * - ARG: a `--build-arg` wins over the default; `ARG NAME` without default inherits the global (meta) value; the
 *   default is expanded with the stage environment; the value enters the environment (so later steps and RUN see it).
 * - ENV shadows ARG (same environment, later write wins).
 * - RUN: process env = stage env + proxy env from proxy build args (which need no ARG and are not in history);
 *   history `created_by` gets BuildKit's `|N K=v ...` prefix for the ARGs in scope ({@link StageScope.runCommandString}).
 * - UndefinedVar lint candidates: variables referenced but unset, minus declared ARGs.
 *
 * Typical use by a build engine (with the graph from stages.ts):
 *
 *     const g = buildStageGraph(parsed, { target, buildArgs, platform });
 *     const opts = { globals: g.globals, buildArgs, escape: parsed.escapeToken, file };
 *     for (const i of g.order) {            // or level by level (g.levels) in parallel
 *       const n = g.stages[i];
 *       const scope = n.base.kind === 'stage'
 *         ? StageScope.forStage(opts, scopes[n.base.index])
 *         : StageScope.forImage(opts, baseImageConfig.Env ?? []);   // [] for scratch
 *       for (const cmd of [...onbuildTriggers, ...n.stage.commands]) {
 *         const step = scope.expand(cmd);     // step.instruction, step.runEnv, step.mounts, step.createdBy ...
 *         // RUN history: 'RUN ' + scope.runCommandString(argv)   (argv after SHELL/prepend)
 *       }
 *       scopes[i] = scope;
 *     }
 *     warn(unusedBuildArgsWarning(g.unusedBuildArgs));
 */
import { KilnError } from '../errors.js';
import type {
  ArgInstruction,
  Command,
  ExposeInstruction,
  RunInstruction,
  RunMount,
  SourceContent,
} from './instructions.js';
import { csvFields, parseMount } from './convert.js';
import { DockerfileError } from './errors.js';
import { expandInstruction } from './instructions.js';
import { EnvList, NON_ENV_ARGS, expansionError, proxyEnv, type BuildArgs, type GlobalArgs } from './args.js';
import { processWordWithMatches, processWords, type LexOptions } from './shell.js';
import { suggest } from './suggest.js';

/** BuildKit's default PATH for Linux images without one (system.DefaultPathEnv). */
export const DEFAULT_PATH_ENV = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** An ARG in scope (BuildKit's d.buildArgs entry). `value` undefined: declared without any value. */
export interface ScopedArg {
  key: string;
  value: string | undefined;
}

/** A `RUN --mount` field after expansion: `key=value` (value expanded) or a bare flag like `ro`. */
export interface MountField {
  key: string;
  value: string | undefined;
}

/** A lint finding (UndefinedVar), in BuildKit's wording. */
export interface ExpansionWarning {
  rule: 'UndefinedVar';
  name: string;
  suggestion: string | undefined;
  message: string;
  line: number;
}

export interface ExpandedStep<T extends Command = Command> {
  /** The instruction with its expandable words expanded (ARG: values resolved). */
  instruction: T;
  /** Stage environment after this step (`KEY=value`, BuildKit state-env order): what later steps expand with. */
  env: string[];
  /** Image config Env after this step (only ENV changes it). */
  configEnv: string[];
  /** ARGs in scope after this step, in declaration order (duplicates kept, as BuildKit). */
  buildArgs: ScopedArg[];
  /** RUN only: the process environment (stage env + proxy env). */
  runEnv?: string[];
  /** RUN only: each `--mount` parsed with its values expanded (BuildKit parseMount with the stage expander). */
  mounts?: RunMount[];
  /** ARG/ENV: history `created_by` of this empty-layer step (e.g. `ARG a=1 b`, `ENV k=v`). */
  createdBy?: string;
  /** Variables referenced but unset (excluding declared ARGs). */
  warnings: ExpansionWarning[];
}

export interface StageScopeOptions {
  globals: GlobalArgs;
  buildArgs: BuildArgs;
  escape?: string;
  /** Dockerfile name for error messages. */
  file?: string;
}

/** `configEnv` with BuildKit's default PATH appended when it has none. */
export function withDefaultPath(configEnv: readonly string[]): string[] {
  const has = configEnv.some((e) => e === 'PATH' || e.startsWith('PATH='));
  return has ? [...configEnv] : [...configEnv, `PATH=${DEFAULT_PATH_ENV}`];
}

/** BuildKit addEnv for image config Env: replace in place, else append. */
function addConfigEnv(env: string[], k: string, v: string): string[] {
  const out = [...env];
  const i = out.findIndex((e) => (e.includes('=') ? e.slice(0, e.indexOf('=')) : e) === k);
  if (i >= 0) out[i] = `${k}=${v}`;
  else out.push(`${k}=${v}`);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// `--mount` values: CSV records (convert.ts csvFields), values expanded field by field.

/** Join fields back into one CSV record (quoting where needed), so csvFields(joinCsv(f)) equals f. */
export function joinCsv(fields: readonly string[]): string {
  return fields.map((f) => (/[",\r\n]/.test(f) || /^[ \t]/.test(f) ? `"${f.replace(/"/g, '""')}"` : f)).join(',');
}

// ---------------------------------------------------------------------------------------------------------------

/** The variable scope of one stage while its instructions are dispatched. */
export class StageScope {
  private envList: EnvList;
  private config: string[];
  private args: ScopedArg[];
  private readonly lex: LexOptions;
  /** Build args consumed by ARGs of this stage (and its base stages). */
  readonly consumed: Set<string>;

  private constructor(
    private readonly opts: StageScopeOptions,
    env: EnvList,
    config: string[],
    args: ScopedArg[],
    consumed: Set<string>,
  ) {
    this.envList = env;
    this.config = config;
    this.args = args;
    this.consumed = consumed;
    this.lex = opts.escape ? { escape: opts.escape } : {};
  }

  /** Scope of a stage `FROM <image>` (or scratch: `[]`), given the image's config Env. PATH is defaulted. */
  static forImage(opts: StageScopeOptions, imageConfigEnv: readonly string[]): StageScope {
    const config = withDefaultPath(imageConfigEnv);
    return new StageScope(opts, new EnvList(config), config, [], new Set());
  }

  /** Scope of a stage `FROM <stage>`: inherits the parent's environment, config Env and declared ARGs. */
  static forStage(opts: StageScopeOptions, parent: StageScope): StageScope {
    return new StageScope(opts, parent.envList.clone(), [...parent.config], [...parent.args], new Set(parent.consumed));
  }

  /** Current stage environment (`KEY=value`). */
  get env(): string[] {
    return this.envList.toArray();
  }
  /** Current image config Env. */
  get configEnv(): string[] {
    return [...this.config];
  }
  /** ARGs in scope. */
  get buildArgs(): ScopedArg[] {
    return this.args.map((a) => ({ ...a }));
  }
  /** Look a variable up in the stage environment. */
  lookup(key: string): string | undefined {
    return this.envList.get(key);
  }

  /** The RUN process environment: stage env followed by the proxy env (BuildKit appends it). */
  runEnv(): string[] {
    return [...this.envList.toArray(), ...proxyEnv(this.opts.buildArgs)];
  }

  /**
   * BuildKit runCommandString: `|N K=v ... ` before the command for the ARGs in scope (value from the stage env,
   * else the declared value, else empty; a re-declared ARG keeps its first position), then `args` joined by spaces.
   * Prefix with `RUN ` for history `created_by`.
   */
  runCommandString(args: readonly string[]): string {
    const vals: string[] = [];
    const idx = new Map<string, number>();
    for (const a of this.args) {
      const v = this.envList.get(a.key) ?? a.value ?? '';
      const at = idx.get(a.key);
      if (at !== undefined) vals[at] = `${a.key}=${v}`;
      else {
        idx.set(a.key, vals.length);
        vals.push(`${a.key}=${v}`);
      }
    }
    const head = vals.length > 0 ? [`|${vals.length}`, ...vals] : [];
    return [...head, ...args].join(' ');
  }

  private fail(line: number, e: unknown): KilnError {
    return expansionError(this.opts.file, line, e);
  }

  private warnings(unmatched: Iterable<string>, line: number, declared: ReadonlySet<string>): ExpansionWarning[] {
    const out: ExpansionWarning[] = [];
    const keys = this.envList.keys();
    for (const name of unmatched) {
      if (declared.has(name) || NON_ENV_ARGS.includes(name)) continue;
      const s = suggest(name, keys, true);
      out.push({
        rule: 'UndefinedVar',
        name,
        suggestion: s,
        message: `Usage of undefined variable '$${name}'` + (s !== undefined ? ` (did you mean $${s}?)` : ''),
        line,
      });
    }
    return out;
  }

  /** Expand one word with the stage environment (BuildKit's dispatch expander). */
  expandWord(word: string, line: number, raw = false): { value: string; unmatched: Set<string> } {
    try {
      const r = processWordWithMatches(word, this.envList, raw ? { escape: '\\', skipProcessQuotes: true } : this.lex);
      return { value: r.result, unmatched: r.unmatched };
    } catch (e) {
      throw this.fail(line, e);
    }
  }

  /** Expand `cmd` in this scope and apply its effect on the scope (ARG, ENV). */
  expand<T extends Command>(cmd: T): ExpandedStep<T> {
    const line = cmd.range.startLine;
    const unmatched = new Set<string>();
    // BuildKit reports with the ARGs declared before this instruction.
    const declaredBefore = new Set(this.args.map((a) => a.key));
    const word = (w: string, raw = false): string => {
      const r = this.expandWord(w, line, raw);
      for (const u of r.unmatched) unmatched.add(u);
      return r.value;
    };
    let instruction: Command;
    const extra: Partial<ExpandedStep<T>> = {};
    const c = cmd as Command;
    switch (c.kind) {
      case 'ARG': {
        const r = this.dispatchArg(c, unmatched);
        instruction = r.instruction;
        extra.createdBy = r.createdBy;
        break;
      }
      case 'ENV': {
        const x = expandInstruction(c, (w) => word(w));
        for (const kv of x.env) {
          this.envList.set(kv.key, kv.value);
          this.config = addConfigEnv(this.config, kv.key, kv.value);
        }
        extra.createdBy = 'ENV ' + x.env.map((kv) => `${kv.key}=${kv.value}`).join(' ');
        instruction = x;
        break;
      }
      case 'EXPOSE': {
        // BuildKit's dispatchExpose: ProcessWords (expand, then split); no UndefinedVar reporting.
        const ports: string[] = [];
        for (const p of c.ports) {
          try {
            ports.push(...processWords(p, this.envList, this.lex));
          } catch (e) {
            throw this.fail(line, e);
          }
        }
        instruction = { ...c, ports } satisfies ExposeInstruction;
        break;
      }
      case 'RUN': {
        const fields = c.mounts.map((m) => this.expandMountFields(m, line, word));
        instruction = {
          ...c,
          mounts: fields.map((f) => joinCsv(f.map((x) => (x.value === undefined ? x.key : `${x.key}=${x.value}`)))),
        } satisfies RunInstruction;
        extra.mounts = c.mounts.map((m) => this.parseMountAt(m, line, word));
        extra.runEnv = this.runEnv();
        break;
      }
      case 'COPY':
      case 'ADD': {
        // COPY --from is not expanded (checked against an empty environment in stages.ts).
        const x = expandInstruction(c, (w, field) => (field === 'from' ? w : word(w, field === 'sourceContents')));
        instruction = x;
        break;
      }
      case 'LABEL':
      case 'WORKDIR':
      case 'USER':
      case 'VOLUME':
      case 'STOPSIGNAL':
        instruction = expandInstruction(c, (w) => word(w));
        break;
      default:
        instruction = { ...c };
    }
    return {
      instruction: instruction as T,
      env: this.env,
      configEnv: this.configEnv,
      buildArgs: this.buildArgs,
      warnings: this.warnings(unmatched, line, declaredBefore),
      ...extra,
    } as ExpandedStep<T>;
  }

  private parseMountAt(raw: string, line: number, word: (w: string) => string): RunMount {
    try {
      return parseMount(raw, word);
    } catch (e) {
      if (e instanceof KilnError) throw e;
      throw new DockerfileError('DOCKERFILE_INSTRUCTION', (e as Error).message, {
        file: this.opts.file ?? 'Dockerfile',
        startLine: line,
        cause: e,
      });
    }
  }

  private expandMountFields(raw: string, line: number, word: (w: string) => string): MountField[] {
    let fields: string[];
    try {
      fields = csvFields(raw);
    } catch (e) {
      throw new DockerfileError('DOCKERFILE_INSTRUCTION', (e as Error).message, {
        file: this.opts.file ?? 'Dockerfile',
        startLine: line,
        hint: 'quote --mount values containing commas or quotes: --mount="type=bind,source=a,b"',
        cause: e,
      });
    }
    return fields.map((f) => {
      const i = f.indexOf('=');
      if (i < 0) return { key: f, value: undefined };
      return { key: f.slice(0, i), value: word(f.slice(i + 1)) };
    });
  }

  /** BuildKit dispatchArg. */
  private dispatchArg(c: ArgInstruction, unmatched: Set<string>): { instruction: ArgInstruction; createdBy: string } {
    const line = c.range.startLine;
    const out: ArgInstruction['args'] = [];
    const commit: string[] = [];
    for (const a of c.args) {
      const given = this.opts.buildArgs.get(a.key);
      let value: string | undefined = a.value;
      if (value === undefined && given === undefined) {
        // `ARG NAME` inherits the global (meta) value, including platform args.
        value = this.opts.globals.env.get(a.key);
      }
      if (given !== undefined) {
        value = given;
        this.consumed.add(a.key);
      } else if (a.value !== undefined) {
        const r = this.expandWord(a.value, line);
        for (const u of r.unmatched) unmatched.add(u);
        value = r.value;
      }
      if (value !== undefined && !NON_ENV_ARGS.includes(a.key)) this.envList.set(a.key, value);
      this.args.push({ key: a.key, value });
      out.push({ key: a.key, value, docComment: a.docComment });
      commit.push(value === undefined ? a.key : `${a.key}=${value}`);
    }
    return { instruction: { ...c, args: out }, createdBy: 'ARG ' + commit.join(' ') };
  }
}

/** Heredoc sources that need expansion are expanded with the raw lexer (quotes kept); exported for the engine. */
export function expandSourceContents(scope: StageScope, list: readonly SourceContent[], line: number): SourceContent[] {
  return list.map((c) => (c.expand ? { ...c, data: scope.expandWord(c.data, line, true).value } : { ...c }));
}

export interface ExpandStageContext extends StageScopeOptions {
  /** Config Env of the base image (FROM image; `[]` for scratch). Ignored when `parent` is given. */
  baseEnv?: readonly string[];
  /** Scope of the base stage after its last instruction (FROM <stage>). */
  parent?: StageScope;
  /** ONBUILD triggers inherited from the base, already parsed: they run first. */
  triggers?: readonly Command[];
}

/**
 * Expand a whole stage in one go (when the base image's Env is already known): the triggers, then the stage's
 * commands, each with the scope as it is at that step. Returns the steps and the final scope (for stages built
 * FROM this one).
 */
export function expandStage(
  stage: { commands: readonly Command[] },
  ctx: ExpandStageContext,
): { steps: ExpandedStep[]; scope: StageScope } {
  const opts: StageScopeOptions = { globals: ctx.globals, buildArgs: ctx.buildArgs };
  if (ctx.escape !== undefined) opts.escape = ctx.escape;
  if (ctx.file !== undefined) opts.file = ctx.file;
  const scope = ctx.parent ? StageScope.forStage(opts, ctx.parent) : StageScope.forImage(opts, ctx.baseEnv ?? []);
  const steps = [...(ctx.triggers ?? []), ...stage.commands].map((c) => scope.expand(c));
  return { steps, scope };
}
