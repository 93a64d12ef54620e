/**
 * Typed Dockerfile instructions, modelled on BuildKit's `frontend/dockerfile/instructions` (commands.go, parse.go).
 *
 * Every instruction is one member of the discriminated union {@link Instruction} (switch on `kind`). Words are kept
 * exactly as written (unexpanded): variable expansion is done later (src/dockerfile/expand.ts) through
 * {@link expandInstruction}, which applies an expander to precisely the fields BuildKit expands
 * ({@link EXPANDABLE_FIELDS}) and returns a new, expanded copy. Instructions are plain data (JSON-serialisable).
 */

/** A 1-based, inclusive source range. Columns are 1-based and present where cheap (the instruction's first line). */
export interface SourceRange {
  startLine: number;
  endLine: number;
  startColumn?: number;
  endColumn?: number;
}

/** A heredoc attached to RUN/COPY/ADD (BuildKit parser.Heredoc). `content` includes the trailing newline(s). */
export interface Heredoc {
  /** Delimiter word with quotes removed, e.g. `EOF`. */
  name: string;
  /** File descriptor before `<<` (e.g. `3<<EOF`), 0 when absent. */
  fileDescriptor: number;
  /** False when any part of the delimiter was quoted (`<<"EOF"`, `<<'EOF'`): content is taken literally. */
  expand: boolean;
  /** `<<-EOF`: leading tabs are stripped from the content lines and the terminator. */
  chomp: boolean;
  content: string;
}

export const INSTRUCTION_KINDS = [
  'FROM',
  'RUN',
  'CMD',
  'LABEL',
  'MAINTAINER',
  'EXPOSE',
  'ENV',
  'ADD',
  'COPY',
  'ENTRYPOINT',
  'VOLUME',
  'USER',
  'WORKDIR',
  'ARG',
  'ONBUILD',
  'STOPSIGNAL',
  'HEALTHCHECK',
  'SHELL',
] as const;

export type InstructionKind = (typeof INSTRUCTION_KINDS)[number];

/** Fields shared by every instruction. */
export interface InstructionBase {
  kind: InstructionKind;
  /** The keyword exactly as written (`run`, `Run`, `RUN`...). BuildKit's `Name()`. */
  keyword: string;
  range: SourceRange;
  /** The logical line (continuations joined), trimmed. BuildKit's `String()`; used in history/created_by. */
  original: string;
  /** Exec (JSON array) form. */
  json: boolean;
  /** Flags as written after the keyword, e.g. `["--from=build", "--link"]`. */
  flags: string[];
  /** Heredocs attached to the instruction (RUN/COPY/ADD, or an ONBUILD of those). */
  heredocs: Heredoc[];
  /** Comment lines directly above the instruction (without `#`), BuildKit's `PrevComment`. */
  comments: string[];
}

/** A key/value pair (ENV, LABEL). `noDelim` is true for the legacy `ENV key value` form. */
export interface KeyValuePair {
  key: string;
  value: string;
  noDelim: boolean;
}

/** An ARG definition: `value` is undefined when no default was given (`ARG name`). */
export interface ArgDefinition {
  key: string;
  value: string | undefined;
  /** `# name description` comment above the ARG, BuildKit's DocComment. */
  docComment: string;
}

/** A heredoc used as a RUN/CMD/ENTRYPOINT inline file. */
export interface ShellInlineFile {
  name: string;
  data: string;
  chomp: boolean;
}

/** A heredoc used as a COPY/ADD source. */
export interface SourceContent {
  path: string;
  data: string;
  expand: boolean;
}

export interface FromInstruction extends InstructionBase {
  kind: 'FROM';
  /** Base image reference or stage name, unexpanded (may contain `$ARG`s, expanded with global args only). */
  image: string;
  /** Stage name, lowercased (BuildKit stage names are case-insensitive), or undefined. */
  stageName: string | undefined;
  /** Stage name as written (for StageNameCasing). */
  stageNameAsWritten: string | undefined;
  /** The `AS` keyword as written (for FromAsCasing), or undefined. */
  asKeyword: string | undefined;
  /** `--platform` value, unexpanded, or undefined. */
  platform: string | undefined;
  /** `# <stage name> description` comment above the FROM (BuildKit Stage.DocComment), '' when none. */
  docComment: string;
}

export type NetworkMode = 'default' | 'none' | 'host';
export type SecurityMode = 'sandbox' | 'insecure';
export type MountType = 'bind' | 'cache' | 'tmpfs' | 'secret' | 'ssh';
export type CacheSharing = 'shared' | 'private' | 'locked';

/** A parsed `RUN --mount=...` (BuildKit instructions.Mount). Produced by `parseMount` in convert.ts. */
export interface RunMount {
  type: MountType;
  from: string;
  source: string;
  target: string;
  readOnly: boolean;
  /** tmpfs size in bytes, 0 when unset. */
  sizeLimit: number;
  /** `id=` (cache id, secret id, ssh id). */
  cacheId: string;
  /** `sharing=`, '' when unset. */
  cacheSharing: CacheSharing | '';
  required: boolean;
  /** Secret `env=` name; undefined when unset. */
  env: string | undefined;
  mode: number | undefined;
  uid: number | undefined;
  gid: number | undefined;
}

interface ShellDependent {
  /** Exec form: the array; shell form: one element, the words joined by a space (BuildKit handleJSONArgs). */
  command: string[];
  /** True in shell form: the stage's SHELL is prepended. */
  prependShell: boolean;
  /** Heredoc inline files. */
  files: ShellInlineFile[];
}

export interface RunInstruction extends InstructionBase, ShellDependent {
  kind: 'RUN';
  /** Raw `--mount` values, unexpanded, in order. Parse after expansion with `parseMount` (convert.ts). */
  mounts: string[];
  network: NetworkMode;
  security: SecurityMode;
  /** Raw `--device` values. */
  devices: string[];
  /** Names of the flags that were given (BuildKit FlagsUsed), e.g. ['mount', 'network']. */
  flagsUsed: string[];
}

export interface CmdInstruction extends InstructionBase, ShellDependent {
  kind: 'CMD';
}

export interface EntrypointInstruction extends InstructionBase, ShellDependent {
  kind: 'ENTRYPOINT';
}

export interface ShellInstruction extends InstructionBase {
  kind: 'SHELL';
  shell: string[];
}

export interface LabelInstruction extends InstructionBase {
  kind: 'LABEL';
  labels: KeyValuePair[];
}

export interface MaintainerInstruction extends InstructionBase {
  kind: 'MAINTAINER';
  maintainer: string;
}

export interface ExposeInstruction extends InstructionBase {
  kind: 'EXPOSE';
  /** Port specs, unexpanded, sorted like BuildKit (`8080/tcp`). */
  ports: string[];
}

export interface EnvInstruction extends InstructionBase {
  kind: 'ENV';
  env: KeyValuePair[];
}

interface SourcesAndDest {
  /** File/URL/git sources, unexpanded (heredoc sources are in `sourceContents`). */
  sources: string[];
  sourceContents: SourceContent[];
  dest: string;
}

export interface AddInstruction extends InstructionBase, SourcesAndDest {
  kind: 'ADD';
  chown: string;
  chmod: string;
  checksum: string;
  link: boolean;
  /** `--keep-git-dir`; undefined when not given. */
  keepGitDir: boolean | undefined;
  /** `--unpack`; undefined when not given. */
  unpack: boolean | undefined;
  exclude: string[];
}

export interface CopyInstruction extends InstructionBase, SourcesAndDest {
  kind: 'COPY';
  /** `--from` stage name/index/image, '' when absent. */
  from: string;
  chown: string;
  chmod: string;
  link: boolean;
  parents: boolean;
  exclude: string[];
  /**
   * Never parsed from Dockerfile text: a frontend sets it (S2I) to put this COPY's files into the layer of the next
   * RUN of the stage instead of a layer of their own — copied into that RUN's root before it runs, one diff, one
   * blob, as `s2i build` commits the sources and assemble's changes as one layer. The COPY keeps its history entry
   * (`empty_layer`, like `docker build --squash`'s merged entries) and its cache identity (part of the RUN's key).
   */
  foldIntoRun?: boolean;
}

export interface VolumeInstruction extends InstructionBase {
  kind: 'VOLUME';
  volumes: string[];
}

export interface UserInstruction extends InstructionBase {
  kind: 'USER';
  user: string;
}

export interface WorkdirInstruction extends InstructionBase {
  kind: 'WORKDIR';
  path: string;
}

export interface ArgInstruction extends InstructionBase {
  kind: 'ARG';
  args: ArgDefinition[];
}

export interface OnbuildInstruction extends InstructionBase {
  kind: 'ONBUILD';
  /** The trigger as stored in the image config (`ONBUILD ` removed, heredocs re-attached). */
  expression: string;
  /** Upper-case keyword of the trigger, e.g. `RUN`. */
  triggerKeyword: string;
}

export interface StopSignalInstruction extends InstructionBase {
  kind: 'STOPSIGNAL';
  signal: string;
}

/** Healthcheck config in the image-config shape; durations are nanoseconds, 0 = inherit/default. */
export interface HealthConfig {
  /** `['NONE']`, `['CMD', ...exec]` or `['CMD-SHELL', cmd]`. */
  test: string[];
  interval: number;
  timeout: number;
  startPeriod: number;
  startInterval: number;
  retries: number;
}

export interface HealthcheckInstruction extends InstructionBase {
  kind: 'HEALTHCHECK';
  health: HealthConfig;
}

export type Instruction =
  | FromInstruction
  | RunInstruction
  | CmdInstruction
  | LabelInstruction
  | MaintainerInstruction
  | ExposeInstruction
  | EnvInstruction
  | AddInstruction
  | CopyInstruction
  | EntrypointInstruction
  | VolumeInstruction
  | UserInstruction
  | WorkdirInstruction
  | ArgInstruction
  | OnbuildInstruction
  | StopSignalInstruction
  | HealthcheckInstruction
  | ShellInstruction;

/** Instructions other than FROM (the commands of a stage). */
export type Command = Exclude<Instruction, FromInstruction>;

/** Instruction type for a given kind, e.g. `InstructionOf<'RUN'>`. */
export type InstructionOf<K extends InstructionKind> = Extract<Instruction, { kind: K }>;

/** A build stage: its FROM and the commands up to the next FROM. */
export interface Stage {
  /** 0-based position in the Dockerfile. */
  index: number;
  /** Lowercased stage name, or undefined for an unnamed stage. */
  name: string | undefined;
  from: FromInstruction;
  commands: Command[];
}

/** A parser directive (`# syntax=`, `# escape=`, `# check=`). */
export interface Directive {
  name: 'syntax' | 'escape' | 'check';
  value: string;
  line: number;
}

/** A warning found while parsing (BuildKit rule name + message + line). */
export interface ParseWarning {
  rule: string;
  message: string;
  range: SourceRange;
}

/**
 * Which words of each instruction BuildKit expands with the stage environment (instructions.Expand / dispatch):
 * field names of the instruction type. RUN mounts are expanded value by value (see parseMount). FROM's image and
 * platform are expanded with the global (meta) ARGs only. Heredoc sources (when `expand`) use the stage environment
 * too. EXPOSE ports are expanded with word splitting in BuildKit (shell processWords: one entry may become several);
 * expandInstruction passes each entry to the expander whole, so callers that need the split use processWords. COPY --from is never expanded (a variable there is an error, see stages.ts), and
 * CMD/ENTRYPOINT/SHELL/RUN command lines, HEALTHCHECK, MAINTAINER and ONBUILD are never expanded by the builder.
 */
export const EXPANDABLE_FIELDS: { readonly [K in InstructionKind]: readonly string[] } = {
  FROM: ['image', 'platform'],
  RUN: ['mounts'],
  CMD: [],
  LABEL: ['labels'],
  MAINTAINER: [],
  EXPOSE: ['ports'],
  ENV: ['env'],
  ADD: ['sources', 'dest', 'chown', 'chmod', 'checksum', 'sourceContents'],
  COPY: ['sources', 'dest', 'chown', 'chmod', 'sourceContents'],
  ENTRYPOINT: [],
  VOLUME: ['volumes'],
  USER: ['user'],
  WORKDIR: ['path'],
  ARG: ['args'],
  ONBUILD: [],
  STOPSIGNAL: ['signal'],
  HEALTHCHECK: [],
  SHELL: [],
};

/** Expands one word; `field` tells which field it belongs to (e.g. to use a raw/heredoc lexer for sourceContents). */
export type WordExpander = (word: string, field: string) => string;

/**
 * Returns a copy of `instr` with every expandable word (see {@link EXPANDABLE_FIELDS}) passed through `expand`.
 * Heredoc `sourceContents` are only expanded when their `expand` flag is set. The input is not modified.
 * Errors thrown by `expand` propagate unchanged.
 */
export function expandInstruction<T extends Instruction>(instr: T, expand: WordExpander): T {
  const i = instr as Instruction;
  const kvs = (list: KeyValuePair[], f: string): KeyValuePair[] =>
    list.map((kv) => ({ key: expand(kv.key, f), value: expand(kv.value, f), noDelim: kv.noDelim }));
  const contents = (list: SourceContent[]): SourceContent[] =>
    list.map((c) => (c.expand ? { ...c, data: expand(c.data, 'sourceContents') } : { ...c }));
  let out: Instruction;
  switch (i.kind) {
    case 'FROM':
      out = {
        ...i,
        image: expand(i.image, 'image'),
        platform: i.platform === undefined ? undefined : expand(i.platform, 'platform'),
      };
      break;
    case 'RUN':
      // each `key=value` field's value is expanded separately (BuildKit parseMount with an expander)
      out = { ...i, mounts: i.mounts.map((m) => expandMountSpec(m, expand)) };
      break;
    case 'LABEL':
      out = { ...i, labels: kvs(i.labels, 'labels') };
      break;
    case 'ENV':
      out = { ...i, env: kvs(i.env, 'env') };
      break;
    case 'EXPOSE':
      out = { ...i, ports: i.ports.map((p) => expand(p, 'ports')) };
      break;
    case 'ADD':
      out = {
        ...i,
        chown: expand(i.chown, 'chown'),
        chmod: expand(i.chmod, 'chmod'),
        checksum: expand(i.checksum, 'checksum'),
        sources: i.sources.map((s) => expand(s, 'sources')),
        dest: expand(i.dest, 'dest'),
        sourceContents: contents(i.sourceContents),
      };
      break;
    case 'COPY':
      out = {
        ...i,
        chown: expand(i.chown, 'chown'),
        chmod: expand(i.chmod, 'chmod'),
        sources: i.sources.map((s) => expand(s, 'sources')),
        dest: expand(i.dest, 'dest'),
        sourceContents: contents(i.sourceContents),
      };
      break;
    case 'VOLUME':
      out = { ...i, volumes: i.volumes.map((v) => expand(v, 'volumes')) };
      break;
    case 'USER':
      out = { ...i, user: expand(i.user, 'user') };
      break;
    case 'WORKDIR':
      out = { ...i, path: expand(i.path, 'path') };
      break;
    case 'STOPSIGNAL':
      out = { ...i, signal: expand(i.signal, 'signal') };
      break;
    case 'ARG':
      out = {
        ...i,
        args: i.args.map((a) => ({
          key: expand(a.key, 'args'),
          value: a.value === undefined ? undefined : expand(a.value, 'args'),
          docComment: a.docComment,
        })),
      };
      break;
    default:
      out = { ...i };
  }
  return out as T;
}

/**
 * One CSV record, exactly as tonistiigi/go-csvvalue's Fields (what BuildKit uses for `--mount`/`--device`): an empty
 * value is an error (`EOF`), a trailing newline is allowed, and errors are encoding/csv ParseErrors with a byte
 * column, e.g. `parse error on line 1, column 4: bare " in non-quoted-field`.
 */
export function csvFields(input: string): string[] {
  let line = input;
  if (line.endsWith('\r\n')) line = line.slice(0, -2);
  else if (line.endsWith('\n')) line = line.slice(0, -1);
  if (line === '') throw new Error('EOF');
  const fail = (idx: number, what: string): never => {
    const col = Buffer.byteLength(line.slice(0, idx), 'utf8') + 1;
    throw new Error(`parse error on line 1, column ${col}: ${what}`);
  };
  const BARE = 'bare " in non-quoted-field';
  const QUOTE = 'extraneous or missing " in quoted-field';
  const out: string[] = [];
  let i = 0;
  for (;;) {
    if (i >= line.length || line[i] !== '"') {
      const j = line.indexOf(',', i);
      const field = j < 0 ? line.slice(i) : line.slice(i, j);
      const q = field.indexOf('"');
      if (q >= 0) fail(i + q, BARE);
      out.push(field);
      if (j < 0) break;
      i = j + 1;
      continue;
    }
    // quoted field
    i++;
    let field = '';
    for (;;) {
      const k = line.indexOf('"', i);
      if (k < 0) fail(i, QUOTE);
      field += line.slice(i, k);
      i = k + 1;
      if (line[i] === '"') {
        field += '"';
        i++;
        continue;
      }
      if (line[i] === ',') {
        out.push(field);
        i++;
        break;
      }
      if (i >= line.length) {
        out.push(field);
        return out;
      }
      fail(i - 1, QUOTE);
    }
  }
  return out;
}

/** One field for a CSV record: quoted when encoding/csv would quote it. */
function csvQuote(f: string): string {
  return /[",\r\n]/.test(f) || f.startsWith(' ') ? '"' + f.replace(/"/g, '""') + '"' : f;
}

/**
 * Expands a `--mount` value the way BuildKit does: the CSV record is split first and only the value of each
 * `key=value` field is expanded (so a value containing a comma stays one field); the result is re-joined.
 * An unparsable record is returned unchanged (parseMount reports the error later).
 */
function expandMountSpec(spec: string, expand: WordExpander): string {
  let fields: string[];
  try {
    fields = csvFields(spec);
  } catch {
    return spec;
  }
  return fields
    .map((f) => {
      const eq = f.indexOf('=');
      return csvQuote(eq < 0 ? f : f.slice(0, eq + 1) + expand(f.slice(eq + 1), 'mounts'));
    })
    .join(',');
}
