/**
 * The stage graph of a Dockerfile, as BuildKit's dockerfile2llb builds it (convert.go: buildDispatchStates,
 * resolveTarget, buildStageDependencyGraph, toCommand, detectRunMount, allReachableStages, initOnBuildTriggers;
 * validations.go: validateCircularDependency).
 *
 * - FROM is expanded with the global ARGs (platform args + meta ARGs with `--build-arg` overrides); a base equal to
 *   the (lower-case) name of an *earlier* stage is that stage, `scratch` is empty, anything else an image.
 * - `COPY --from=` names a stage (case-insensitive, any position: forward references are reported as BuildKit does),
 *   a stage index, or else an image; it is never expanded (variables are an error). `RUN --mount=from=` names a
 *   stage or an image (no indices).
 * - ONBUILD instructions of a stage become dependencies of stages built FROM it (their COPY --from / mounts).
 * - `--target` (default: the last stage) selects the stages actually needed; the others are not built.
 * - Cycles and references to later stages are errors with BuildKit's messages.
 * - `levels` groups the needed stages so that each group only depends on earlier groups: the stages of a group
 *   can be built in parallel.
 */
import { KilnError } from '../errors.js';
import type { Platform } from '../oci/types.js';
import type { ArgInstruction, Command, Stage } from './instructions.js';
import { csvFields, instructionFromNode, parseMount } from './convert.js';
import { parseAst } from './parser.js';
import {
  expansionError,
  resolveGlobalArgs,
  unusedBuildArgs as computeUnused,
  type BuildArgs,
  type GlobalArgs,
} from './args.js';
import { processWordWithMatches, type LexOptions } from './shell.js';
import { suggest, withSuggestion } from './suggest.js';

/** What buildStageGraph needs from the parser (ParsedDockerfile fits). */
export interface StageGraphInput {
  stages: readonly Stage[];
  globalArgs: readonly ArgInstruction[];
  escapeToken?: string;
}

export interface StageGraphOptions {
  /** `--target` stage name; default: the last stage. */
  target?: string;
  buildArgs?: BuildArgs;
  /** Target platform (TARGET* args). Default linux/amd64. */
  platform?: Platform;
  /** Build platform (BUILD* args). Default: the target platform. */
  buildPlatform?: Platform;
  /** Escape token; default: the input's `escapeToken` or `\`. */
  escape?: string;
  /** Dockerfile name for messages. */
  file?: string;
  /** Parses an ONBUILD trigger expression into a command; default: the Dockerfile parser. */
  parseTrigger?: (expression: string) => Command;
}

export type StageBase = { kind: 'scratch' } | { kind: 'stage'; index: number } | { kind: 'image'; ref: string };

export type DependencyVia = 'FROM' | 'COPY --from' | 'RUN --mount' | 'ONBUILD COPY --from' | 'ONBUILD RUN --mount';

export interface StageDependency {
  stage: number;
  via: DependencyVia;
  line: number;
}

export interface ImageReference {
  ref: string;
  via: DependencyVia;
  line: number;
}

export interface StageNode {
  index: number;
  /** Lower-case stage name, or undefined. */
  name: string | undefined;
  /** `name`, or `stage-N` for an unnamed stage (BuildKit's stage name in messages). */
  displayName: string;
  stage: Stage;
  /** FROM after expansion with the global ARGs. */
  baseName: string;
  base: StageBase;
  /** FROM --platform after expansion, or undefined. */
  platform: string | undefined;
  /** Stages this stage needs (its base stage first, then in instruction order; no duplicates). */
  deps: StageDependency[];
  /** Images this stage uses besides its base (COPY --from / mount from an image). */
  images: ImageReference[];
  /** Is the stage built for the target? */
  needed: boolean;
  /** Parallelism level among needed stages (0: depends on no stage); -1 when not needed. */
  level: number;
}

export interface GraphWarning {
  rule: string;
  message: string;
  line: number;
}

export interface StageGraph {
  stages: StageNode[];
  /** Index of the target stage. */
  target: number;
  globals: GlobalArgs;
  /** Needed stages in build order (file order, which respects dependencies). */
  order: number[];
  /** Needed stages grouped by level: each group depends only on earlier groups. */
  levels: number[][];
  /** External images the needed stages pull (bases and COPY --from/mount images), in first-use order. */
  images: { ref: string; stages: number[] }[];
  /** Lint findings (UndefinedArgInFrom). */
  warnings: GraphWarning[];
  /** Build args passed but consumed by no ARG of the meta scope or a needed stage (sorted). */
  unusedBuildArgs: string[];
}

const DEFAULT_PLATFORM: Platform = { os: 'linux', architecture: 'amd64' };

function stageError(file: string, line: number, message: string, hint?: string): KilnError {
  return new KilnError('DOCKERFILE_STAGE', `${file}:${line}: ${message}`, hint !== undefined ? { hint } : {});
}

function defaultParseTrigger(expression: string): Command {
  const ast = parseAst(expression);
  if (ast.ast.children.length !== 1) throw new Error('onbuild trigger should be a single expression');
  const ins = instructionFromNode(ast.ast.children[0]!);
  if (ins.kind === 'FROM') throw new Error('FROM is not allowed as an ONBUILD trigger');
  return ins;
}

interface RawRef {
  value: string;
  via: DependencyVia;
  line: number;
  /** COPY --from accepts indices; mounts only names. */
  allowIndex: boolean;
  kind: 'copy' | 'mount';
  target?: string;
  /** The stage it resolved to, if any. */
  resolved?: number;
}

/** The `from` references of a command (COPY --from, RUN --mount from=), as BuildKit's toCommand/detectRunMount. */
function commandRefs(cmd: Command, file: string, line: number, onbuild: boolean): RawRef[] {
  const out: RawRef[] = [];
  if (cmd.kind === 'COPY' && cmd.from !== '') {
    // Variables are not supported: the word must be unchanged when expanded with an empty environment.
    let res: string;
    try {
      res = processWordWithMatches(cmd.from, {}).result;
    } catch (e) {
      throw expansionError(file, line, e);
    }
    if (res !== cmd.from) {
      throw stageError(
        file,
        line,
        'variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround',
      );
    }
    out.push({
      value: cmd.from,
      via: onbuild ? 'ONBUILD COPY --from' : 'COPY --from',
      line,
      allowIndex: true,
      kind: 'copy',
    });
  }
  if (cmd.kind === 'RUN') {
    for (const raw of cmd.mounts) {
      let from = '';
      let target = '';
      try {
        parseMount(raw); // BuildKit's parse-time checks (from= must not use variables)
        for (const f of csvFields(raw)) {
          const eq = f.indexOf('=');
          if (eq < 0) continue;
          const key = f.slice(0, eq).toLowerCase();
          if (key === 'from') from = f.slice(eq + 1);
          else if (key === 'target' || key === 'dst' || key === 'destination') target = f.slice(eq + 1);
        }
      } catch (e) {
        throw stageError(file, line, (e as Error).message);
      }
      // No from: BuildKit uses scratch (nothing to build or pull).
      if (from === '') continue;
      out.push({
        value: from,
        via: onbuild ? 'ONBUILD RUN --mount' : 'RUN --mount',
        line,
        allowIndex: false,
        kind: 'mount',
        target,
      });
    }
  }
  return out;
}

/** Build the stage graph for a parsed Dockerfile (see the module comment for the rules). */
export function buildStageGraph(parsed: StageGraphInput, opts: StageGraphOptions = {}): StageGraph {
  const file = opts.file ?? 'Dockerfile';
  const stages = parsed.stages;
  if (stages.length === 0) {
    throw new KilnError('DOCKERFILE_EMPTY', `${file}: dockerfile contains no stages to build`, {
      hint: 'add a FROM instruction',
    });
  }
  const buildArgs: BuildArgs = opts.buildArgs ?? new Map();
  const escape = opts.escape ?? parsed.escapeToken ?? '\\';
  const lex: LexOptions = { escape };
  const lastName = stages[stages.length - 1]!.name ?? '';
  const globals = resolveGlobalArgs(parsed.globalArgs, {
    targetPlatform: opts.platform ?? DEFAULT_PLATFORM,
    buildPlatform: opts.buildPlatform ?? opts.platform ?? DEFAULT_PLATFORM,
    target: opts.target ? opts.target : lastName,
    buildArgs,
    escape,
    file,
  });
  const warnings: GraphWarning[] = [];
  const argKeys = new Set<string>([...globals.declared.map((a) => a.key), ...globals.env.keys()]);
  const reportUndeclared = (unmatched: Set<string>, line: number): void => {
    for (const name of unmatched) {
      if (argKeys.has(name)) continue;
      const s = suggest(name, [...argKeys], true);
      warnings.push({
        rule: 'UndefinedArgInFrom',
        message: `FROM argument '${name}' is not declared` + (s !== undefined ? ` (did you mean ${s}?)` : ''),
        line,
      });
    }
  };

  // FROM lines: expand with the global scope; a base names an earlier stage (exact lower-case match).
  const nodes: StageNode[] = [];
  const earlier = new Map<string, number>();
  for (const st of stages) {
    const line = st.from.range.startLine;
    let baseName: string;
    try {
      const r = processWordWithMatches(st.from.image, globals.env, lex);
      reportUndeclared(r.unmatched, line);
      baseName = r.result;
    } catch (e) {
      throw expansionError(file, line, e);
    }
    if (baseName === '') throw stageError(file, line, `base name (${st.from.image}) should not be blank`);
    let platform: string | undefined;
    if (st.from.platform !== undefined) {
      let unmatched: Set<string>;
      try {
        const r = processWordWithMatches(st.from.platform, globals.env, lex);
        reportUndeclared(r.unmatched, line);
        platform = r.result;
        unmatched = r.unmatched;
      } catch (e) {
        throw expansionError(file, line, e);
      }
      if (platform === '') {
        let msg = `empty platform value from expression ${st.from.platform}`;
        for (const u of unmatched) {
          const m = withSuggestion(msg, u, globals.env.keys(), true);
          if (m !== msg) {
            msg = m;
            break;
          }
        }
        throw stageError(file, line, msg);
      }
    }
    const baseStage = earlier.get(baseName);
    const base: StageBase =
      baseStage !== undefined
        ? { kind: 'stage', index: baseStage }
        : baseName === 'scratch'
          ? { kind: 'scratch' }
          : { kind: 'image', ref: baseName };
    nodes.push({
      index: st.index,
      name: st.name,
      displayName: st.name ?? `stage-${st.index}`,
      stage: st,
      baseName,
      base,
      platform,
      deps: base.kind === 'stage' ? [{ stage: base.index, via: 'FROM', line }] : [],
      images: [],
      needed: false,
      level: -1,
    });
    if (st.name !== undefined) earlier.set(st.name, st.index);
  }
  const byName = earlier; // after the loop: every stage name (a later duplicate wins, as BuildKit's map)

  // Target.
  let target = stages.length - 1;
  if (opts.target !== undefined && opts.target !== '') {
    const t = byName.get(opts.target.toLowerCase());
    if (t === undefined) {
      const names = nodes.map((n) => n.displayName);
      throw new KilnError(
        'TARGET_NOT_FOUND',
        withSuggestion(`target stage "${opts.target}" could not be found`, opts.target, names, true),
        {
          hint: nodes.some((n) => n.name !== undefined)
            ? `stages: ${nodes.flatMap((n) => (n.name !== undefined ? [n.name] : [])).join(', ')}`
            : 'the Dockerfile has no named stages',
        },
      );
    }
    target = t;
  }

  // Command references (COPY --from, RUN --mount from=), with ONBUILD triggers of base stages first.
  const parseTrigger = opts.parseTrigger ?? defaultParseTrigger;
  const refsOf = new Map<number, RawRef[]>();
  for (const n of nodes) {
    const refs: RawRef[] = [];
    if (n.base.kind === 'stage') {
      const parent = stages[n.base.index]!;
      for (const c of parent.commands) {
        if (c.kind !== 'ONBUILD') continue;
        let trig: Command;
        try {
          trig = parseTrigger(c.expression);
        } catch (e) {
          throw stageError(
            file,
            n.stage.from.range.startLine,
            `invalid ONBUILD trigger "${c.expression}": ${(e as Error).message}`,
          );
        }
        refs.push(...commandRefs(trig, file, n.stage.from.range.startLine, true));
      }
    }
    for (const c of n.stage.commands) refs.push(...commandRefs(c, file, c.range.startLine, false));
    refsOf.set(n.index, refs);
    for (const r of refs) {
      let dep: number | undefined;
      if (r.allowIndex && /^[+-]?\d+$/.test(r.value)) {
        const idx = Number(r.value);
        if (!Number.isSafeInteger(idx) || idx < 0 || idx >= nodes.length) {
          throw stageError(
            file,
            r.line,
            `invalid stage index ${r.value}`,
            `stages are numbered 0 to ${nodes.length - 1}`,
          );
        }
        dep = idx;
      } else {
        dep = byName.get(r.value.toLowerCase());
      }
      r.resolved = dep;
      if (dep !== undefined) {
        if (!n.deps.some((d) => d.stage === dep && d.via !== 'FROM'))
          n.deps.push({ stage: dep, via: r.via, line: r.line });
      } else if (r.value !== 'scratch' && !n.images.some((i) => i.ref === r.value)) {
        n.images.push({ ref: r.value, via: r.via, line: r.line });
      }
    }
  }

  // Cycles (BuildKit checks all stages, following command dependencies).
  {
    const visited = new Set<number>();
    const path = new Set<number>();
    const visit = (i: number, lines: number[]): number[] | undefined => {
      if (visited.has(i)) return undefined;
      visited.add(i);
      path.add(i);
      for (const d of nodes[i]!.deps) {
        if (d.via === 'FROM') continue;
        const next = [...lines, d.line];
        if (path.has(d.stage)) return next;
        const c = visit(d.stage, next);
        if (c) return c;
      }
      path.delete(i);
      return undefined;
    };
    for (const n of nodes) {
      const lines = visit(n.index, []);
      if (lines) {
        throw stageError(
          file,
          lines[0]!,
          `circular dependency detected on stage: ${n.displayName}`,
          `the stages reference each other at ${file} line${lines.length > 1 ? 's' : ''} ${lines.join(', ')}`,
        );
      }
    }
  }

  // Reachability from the target.
  const needed = new Set<number>();
  const mark = (i: number): void => {
    if (needed.has(i)) return;
    needed.add(i);
    for (const d of nodes[i]!.deps) mark(d.stage);
  };
  mark(target);

  // References to later stages fail when the referencing stage is built (BuildKit dispatches in file order).
  for (const i of [...needed].sort((a, b) => a - b)) {
    const n = nodes[i]!;
    for (const r of refsOf.get(i)!) {
      if (r.resolved === undefined || r.resolved < i) continue;
      const from = r.value;
      if (r.kind === 'copy') {
        throw stageError(
          file,
          r.line,
          `cannot copy from stage "${from}", it needs to be defined before current stage "${n.displayName}"`,
          'move the stage above the one that copies from it',
        );
      }
      throw stageError(
        file,
        r.line,
        `cannot mount from stage "${from}" to "${r.target ?? ''}", stage needs to be defined before current command`,
        'move the stage above the one that mounts from it',
      );
    }
  }

  // Levels and order.
  const order = [...needed].sort((a, b) => a - b);
  for (const i of order) {
    const n = nodes[i]!;
    n.needed = true;
    n.level = n.deps.reduce((m, d) => Math.max(m, nodes[d.stage]!.level + 1), 0);
  }
  const levels: number[][] = [];
  for (const i of order) (levels[nodes[i]!.level] ??= []).push(i);

  // Images to pull.
  const images: { ref: string; stages: number[] }[] = [];
  const addImage = (ref: string, stage: number): void => {
    const e = images.find((x) => x.ref === ref);
    if (!e) images.push({ ref, stages: [stage] });
    else if (!e.stages.includes(stage)) e.stages.push(stage);
  };
  for (const i of order) {
    const n = nodes[i]!;
    if (n.base.kind === 'image') addImage(n.base.ref, i);
    for (const img of n.images) addImage(img.ref, i);
  }

  // Build args consumed by ARGs of needed stages (and their inherited ONBUILD ARGs are rare: ignored).
  const consumed = new Set(globals.consumed);
  for (const i of order) {
    for (const c of nodes[i]!.stage.commands) {
      if (c.kind === 'ARG') for (const a of c.args) if (buildArgs.has(a.key)) consumed.add(a.key);
    }
  }

  return {
    stages: nodes,
    target,
    globals,
    order,
    levels,
    images,
    warnings,
    unusedBuildArgs: computeUnused(buildArgs, consumed),
  };
}

function describeBase(g: StageGraph, n: StageNode): string {
  switch (n.base.kind) {
    case 'scratch':
      return 'scratch';
    case 'stage':
      return `stage ${g.stages[n.base.index]!.displayName}`;
    default:
      return `image ${n.base.ref}`;
  }
}

/**
 * One line per stage for `kiln dockerfile stages`: index, name, base (image or stage), the stages it depends on
 * (and images it copies/mounts from), and whether it is needed for the target, under a header.
 */
export function formatStageGraph(g: StageGraph): string {
  const rows: string[][] = [['#', 'NAME', 'BASE', 'DEPENDS ON', 'STATUS']];
  for (const n of g.stages) {
    const deps = [
      ...n.deps.map((d) => `${g.stages[d.stage]!.displayName}${d.via === 'FROM' ? '' : ` (${d.via})`}`),
      ...n.images.map((i) => `image ${i.ref} (${i.via})`),
    ];
    const status = n.index === g.target ? 'target' : n.needed ? `needed (level ${n.level})` : 'skipped';
    rows.push([
      String(n.index),
      n.displayName,
      describeBase(g, n) + (n.platform !== undefined ? ` [${n.platform}]` : ''),
      deps.length > 0 ? deps.join(', ') : '-',
      n.index === g.target ? `${status} (level ${n.level})` : status,
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return (
    rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')).join('\n') +
    '\n'
  );
}

/** A JSON-friendly summary of a stage graph (for `kiln dockerfile stages --format json`). */
export function stageGraphJSON(g: StageGraph): object {
  return {
    target: g.target,
    order: g.order,
    levels: g.levels,
    images: g.images,
    warnings: g.warnings,
    unusedBuildArgs: g.unusedBuildArgs,
    globalArgs: g.globals.env.toJSON(),
    stages: g.stages.map((n) => ({
      index: n.index,
      name: n.name ?? null,
      displayName: n.displayName,
      line: n.stage.from.range.startLine,
      baseName: n.baseName,
      base: n.base,
      platform: n.platform ?? null,
      deps: n.deps,
      images: n.images,
      needed: n.needed,
      level: n.level,
    })),
  };
}
