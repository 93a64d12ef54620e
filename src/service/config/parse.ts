/**
 * Parser of the build service's config file and project documents: YAML (or an already parsed JSON body) in,
 * `ServiceConfig` / `Project` with defaults applied out — or one `ConfigError` that lists **every** problem, each as
 * `projects[1].images[0].dockerfile: what is wrong (FILE:LINE)`, so that a user fixes a file in one round instead of
 * one error per `kiln serve` start.
 *
 * Two layers: the JSON Schema of `schema.ts` (shapes, run by ajv with `allErrors`) and the semantic checks here
 * (paths that must stay inside the repository, repository URL schemes and embedded credentials, credential
 * combinations, image names that must be one path component, tag templates, filter patterns, registry prefixes that
 * two projects share or nest). A project whose shape is wrong skips the semantic checks (they would only repeat the
 * same problem); the other projects are still checked, so the list stays complete for every valid part.
 *
 * Nothing here resolves a credential: the result holds references (`passwordEnv`, `file`, …) only, and error
 * messages never echo a string value (a password pasted into the wrong key must not reach a log).
 */
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import {
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  visit,
  type Document,
  type YAMLError,
} from 'yaml';
import { errorMessage, isKilnError, KilnError } from '../../errors.js';
import { levenshtein } from '../../dockerfile/suggest.js';
import { isValidRegistryHost, isValidRepositoryPath, NAME_TOTAL_LENGTH_MAX } from '../../registry/reference.js';
import type { GitCredentials, ImageSpec, Project, RegistryCredentials, ServiceConfig } from '../model.js';
import { compileFilter } from './filters.js';
import {
  configSchema,
  IMAGE_DEFAULTS,
  PROJECT_DEFAULTS,
  projectSchema,
  projectsDocumentSchema,
  SERVICE_DEFAULTS,
  SERVICE_KEYS,
  type ConfigInput,
  type ImageInput,
  type JsonSchema,
  type ProjectInput,
} from './schema.js';
import { checkTagTemplate } from './tags.js';
import { deliveryDefaults, deliveryIssues, normalizePublicUrl, publicUrlProblem } from '../delivery/config.js';

/** One problem of a config document. */
export interface ConfigIssue {
  /** Where: `projects[0].images[1].dockerfile` (`(document)` for the document itself). */
  path: string;
  /** What is wrong, without the path. */
  message: string;
  /** What to do about it, when there is more to say than the message. */
  hint?: string;
  /** 1-based position in the YAML text, when the document was parsed from text. */
  line?: number;
  column?: number;
}

/**
 * A config document that cannot be used: code `CONFIG_INVALID`, `message` = a summary line and one line per issue
 * (or the single `FILE:LINE:COL: …` line of a YAML syntax error), `errors` = the issues for callers that present
 * them differently (the API answers them as a list).
 */
export class ConfigError extends KilnError {
  readonly errors: readonly ConfigIssue[];

  constructor(message: string, errors: readonly ConfigIssue[], hint: string) {
    super('CONFIG_INVALID', message, { hint });
    this.name = 'ConfigError';
    this.errors = errors;
  }
}

/** Options for parsing project documents outside the server config file. */
export interface ProjectParseOptions {
  /** Allow `file://` repositories (the server config's `allowFileRepositories`); default false. */
  allowFile?: boolean;
}

type Segment = string | number;
interface Position {
  line: number;
  column: number;
}
/** Position of the node at `path` (of its key when `atKey`), or of its nearest existing ancestor. */
type Locate = (path: readonly Segment[], atKey: boolean) => Position | undefined;

const DEFAULT_HINT = 'fix every error listed; unknown keys are errors (keys are case-sensitive)';
const CREDENTIALS_HINT =
  'give credentials as references: gitCredentials: {username: NAME, passwordEnv: VAR} (or passwordFile: /path)';
const SSH_HINT =
  'kiln runs ssh with StrictHostKeyChecking=yes: put the server host keys in a known_hosts file (ssh-keyscan HOST, then verify the fingerprints)';
const FILE_HINT = 'file:// repositories need allowFileRepositories: true in the server config (tests, single machine)';

/** `projects[0].images[1]["odd key"]`. */
function formatPath(path: readonly Segment[]): string {
  let s = '';
  for (const seg of path) {
    if (typeof seg === 'number') s += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) s += s === '' ? seg : `.${seg}`;
    else s += `[${JSON.stringify(seg)}]`;
  }
  return s === '' ? '(document)' : s;
}

/** The issues found so far, with positions when the document came from YAML text. */
class Issues {
  private readonly list: ConfigIssue[] = [];

  constructor(private readonly locate: Locate | undefined) {}

  get count(): number {
    return this.list.length;
  }

  add(path: readonly Segment[], message: string, opts: { hint?: string; atKey?: boolean } = {}): void {
    const pos = this.locate?.(path, opts.atKey ?? false);
    this.list.push({
      path: formatPath(path),
      message,
      ...(opts.hint === undefined ? {} : { hint: opts.hint }),
      ...(pos === undefined ? {} : { line: pos.line, column: pos.column }),
    });
  }

  /** The ConfigError of every issue, in document order when positions are known. */
  error(source: string): ConfigError {
    const seen = new Set<string>();
    const unique = this.list.filter((i) => {
      const k = `${i.path}\0${i.message}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
    const last = Number.MAX_SAFE_INTEGER;
    unique.sort((a, b) => (a.line ?? last) - (b.line ?? last) || (a.column ?? 0) - (b.column ?? 0));
    const lines = unique.map((i) => `${i.path}: ${i.message}${i.line === undefined ? '' : ` (${source}:${i.line})`}`);
    const n = unique.length;
    const hints = [...new Set(unique.flatMap((i) => (i.hint === undefined ? [] : [i.hint])))];
    return new ConfigError(
      [`${source}: ${n} configuration error${n === 1 ? '' : 's'}`, ...lines].join('\n'),
      unique,
      hints.length > 0 ? hints.join('; ') : DEFAULT_HINT,
    );
  }

  throwIfAny(source: string): void {
    if (this.list.length > 0) throw this.error(source);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// YAML text

function syntaxError(source: string, message: string, pos: Position | undefined): ConfigError {
  const where = pos === undefined ? source : `${source}:${pos.line}:${pos.column}`;
  return new ConfigError(
    `${where}: ${message}`,
    [{ path: '(document)', message, ...(pos === undefined ? {} : { line: pos.line, column: pos.column }) }],
    'YAML syntax: indent with spaces (no tabs), and quote values that contain ": " or start with a special character',
  );
}

function yamlMessage(e: YAMLError): string {
  if (e.code === 'MULTIPLE_DOCS') return 'more than one YAML document (---) in the file; use one document';
  return e.message.split('\n')[0]!;
}

/** Position lookup in a parsed YAML document: walks maps and sequences along the path. */
function yamlLocator(doc: Document.Parsed, lineCounter: LineCounter): Locate {
  const at = (offset: number): Position => {
    const p = lineCounter.linePos(offset);
    return { line: p.line, column: p.col };
  };
  return (path, atKey) => {
    let node: unknown = doc.contents;
    let best: Position | undefined;
    const rangeOf = (n: unknown): void => {
      if (isScalar(n) || isMap(n) || isSeq(n) || isAlias(n)) {
        if (n.range) best = at(n.range[0]);
      }
    };
    rangeOf(node);
    for (let i = 0; i < path.length; i++) {
      const seg = path[i]!;
      if (isAlias(node)) node = node.resolve(doc);
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
        if (pair === undefined) break;
        rangeOf(pair.key);
        if (atKey && i === path.length - 1) break;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
      } else {
        break;
      }
      rangeOf(node);
    }
    return best;
  };
}

/** YAML text → plain data and a position lookup. Throws ConfigError (one line) for a syntax error. */
function loadYaml(text: string, source: string): { data: unknown; locate: Locate } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const first = doc.errors[0];
  if (first !== undefined) {
    const p = lineCounter.linePos(first.pos[0]);
    throw syntaxError(source, yamlMessage(first), { line: p.line, column: p.col });
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    // An unresolved alias (placed at the alias) or an alias bomb (no one place to blame).
    let pos: Position | undefined;
    visit(doc, {
      Alias(_, node) {
        if (node.resolve(doc) !== undefined || !node.range) return undefined;
        const p = lineCounter.linePos(node.range[0]);
        pos = { line: p.line, column: p.col };
        return visit.BREAK;
      },
    });
    throw syntaxError(source, errorMessage(e), pos);
  }
  return { data, locate: yamlLocator(doc, lineCounter) };
}

// ---------------------------------------------------------------------------------------------------------------
// Schema validation

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A root schema whose `projects` are only required to be a list: projects are validated one by one. */
function withProjectList(schema: JsonSchema): JsonSchema {
  return { ...schema, properties: { ...schema.properties, projects: { type: 'array' } } };
}

function compileValidators() {
  const ajv = new Ajv({ allErrors: true, verbose: true, strict: true });
  ajv.addKeyword({ keyword: 'errorMessage', schemaType: 'object' });
  return {
    config: ajv.compile<ConfigInput>(withProjectList(configSchema)),
    projects: ajv.compile<{ projects: unknown[] }>(withProjectList(projectsDocumentSchema)),
    project: ajv.compile<ProjectInput>(projectSchema),
  };
}
let validators: ReturnType<typeof compileValidators> | undefined;
function getValidators(): ReturnType<typeof compileValidators> {
  validators ??= compileValidators();
  return validators;
}

/** ajv's instancePath (`/projects/1/images/0`) as segments; numbers where the data holds a list. */
function pointerSegments(pointer: string, data: unknown): Segment[] {
  if (pointer === '') return [];
  const out: Segment[] = [];
  let cur: unknown = data;
  for (const raw of pointer.slice(1).split('/')) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) {
      const n = Number(seg);
      out.push(n);
      cur = cur[n];
    } else {
      out.push(seg);
      cur = isObject(cur) ? cur[seg] : undefined;
    }
  }
  return out;
}

function schemaOf(e: ErrorObject): JsonSchema | undefined {
  const s: unknown = e.parentSchema;
  return isObject(s) ? (s as JsonSchema) : undefined;
}

const TYPE_NAMES: Record<string, string> = {
  object: 'a mapping',
  array: 'a list',
  string: 'a string',
  integer: 'a whole number',
  number: 'a number',
  boolean: 'a boolean (true or false)',
};

/** What a value is, for "must be X, not Y" — never the text of a string (it could be a pasted secret). */
function describe(v: unknown): string {
  if (v === null || v === undefined) return 'empty';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return 'a string';
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return typeof v;
}

/** The option closest to `word` (case-insensitive, distance < 3), for "did you mean". */
function closest(word: string, options: readonly string[]): string | undefined {
  let best: string | undefined;
  let min = Math.min(3, Math.max(1, Math.ceil(word.length / 3)) + 1);
  for (const o of options) {
    const d = levenshtein(word.toLowerCase(), o.toLowerCase());
    if (d < min) {
      best = o;
      min = d;
    }
  }
  return best;
}

function didYouMean(word: unknown, options: readonly string[]): string {
  const m = typeof word === 'string' ? closest(word, options) : undefined;
  return m === undefined ? '' : ` (did you mean "${m}"?)`;
}

/** A document part whose every field may be missing: what is left of a project after its schema errors were pruned. */
type Loose<T> = T extends (infer U)[]
  ? (Loose<U> | undefined)[]
  : T extends object
    ? { [K in keyof T]?: Loose<T[K]> }
    : T;

/** Removes the node at `path` (a list item becomes `undefined`, keeping the other indexes). */
function removeAt(root: unknown, path: readonly Segment[]): void {
  let cur: unknown = root;
  for (let i = 0; i < path.length - 1; i++) {
    const seg = path[i]!;
    cur = Array.isArray(cur) ? cur[Number(seg)] : isObject(cur) ? cur[String(seg)] : undefined;
  }
  const last = path[path.length - 1]!;
  if (Array.isArray(cur)) cur[Number(last)] = undefined;
  else if (isObject(cur)) delete cur[String(last)];
}

/**
 * A copy of `doc` without the nodes ajv rejected (the unknown keys, the values of a wrong type or form), or undefined
 * when nothing is left. Every node that remains passed its keywords (ajv reports every failing one with
 * `allErrors`), so the copy has the shape of `T` with fields missing — the semantic checks then still find the
 * problems of the valid parts in the same round.
 */
function pruned<T>(doc: unknown, errors: readonly ErrorObject[]): Loose<T> | undefined {
  if (!isObject(doc)) return undefined;
  let copy: Record<string, unknown>;
  try {
    copy = structuredClone(doc);
  } catch {
    return undefined;
  }
  for (const e of errors) {
    if (e.keyword === 'required') continue; // the parent is fine; the field is absent anyway
    const at = pointerSegments(e.instancePath, doc);
    if (e.propertyName !== undefined) at.push(e.propertyName);
    else if (e.keyword === 'additionalProperties') at.push(String(e.params['additionalProperty']));
    if (at.length === 0) return undefined;
    removeAt(copy, at);
  }
  return copy as Loose<T>;
}

/** Adds ajv's errors as issues; `rootKey` may give its own message for an unknown top-level key. */
function addSchemaErrors(
  issues: Issues,
  errors: readonly ErrorObject[],
  data: unknown,
  base: readonly Segment[],
  rootKey?: (key: string) => string | undefined,
): void {
  for (const e of errors) {
    if (e.keyword === 'propertyNames') continue; // reported by the failing keyword, which names the property
    const at = [...base, ...pointerSegments(e.instancePath, data)];
    const schema = schemaOf(e);
    const custom = schema?.errorMessage?.[e.keyword as keyof NonNullable<JsonSchema['errorMessage']>];
    if (e.propertyName !== undefined) {
      issues.add([...at, e.propertyName], `invalid key: ${custom ?? e.message ?? 'invalid'}`, { atKey: true });
      continue;
    }
    const params: Record<string, unknown> = e.params;
    switch (e.keyword) {
      case 'additionalProperties': {
        const key = String(params['additionalProperty']);
        const own = at.length === base.length ? rootKey?.(key) : undefined;
        const known = Object.keys(schema?.properties ?? {});
        issues.add([...at, key], own ?? `unknown key${didYouMean(key, known)}`, { atKey: true });
        break;
      }
      case 'required':
        issues.add([...at, String(params['missingProperty'])], 'required');
        break;
      case 'type':
        issues.add(
          at,
          custom ?? `must be ${TYPE_NAMES[String(params['type'])] ?? String(params['type'])}, not ${describe(e.data)}`,
        );
        break;
      case 'enum': {
        const allowed = Array.isArray(params['allowedValues']) ? params['allowedValues'].map(String) : [];
        issues.add(at, `must be one of ${allowed.join(', ')}${didYouMean(e.data, allowed)}`);
        break;
      }
      case 'minimum':
        issues.add(at, `must be at least ${String(params['limit'])}`);
        break;
      case 'maximum':
        issues.add(at, `must be at most ${String(params['limit'])}`);
        break;
      case 'minItems':
        issues.add(at, `must list at least ${String(params['limit'])} entr${params['limit'] === 1 ? 'y' : 'ies'}`);
        break;
      case 'minLength':
        issues.add(at, 'must not be empty');
        break;
      default:
        issues.add(at, custom ?? e.message ?? `invalid (${e.keyword})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Semantic checks

/** Docker's repository path component: one name, no `/`. */
const IMAGE_NAME_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const SCHEME_RE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;
/** git's `<transport>::<address>` remote-helper syntax (`ext::sh -c …` runs commands). */
const HELPER_RE = /^[A-Za-z][A-Za-z0-9+.-]*::/;
/** git's scp-like syntax: `[user@]host:path`, a colon before any slash. */
const SCP_RE = /^(?:([^@/]+)@)?(\[[^\]/]+\]|[^@/:[\]]+):(.*)$/;
/** A host name or a bracketed IPv6 address. */
const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$/;
/** An ssh login name. */
const USER_RE = /^[A-Za-z0-9._~-]+$/;

type RepoKind = 'http' | 'ssh' | 'file';

/**
 * Checks a repository URL; returns its kind, or undefined after reporting why it cannot be used. The URL ends up as
 * an argument of `git fetch`, so the rules are those of the service's git room (src/service/git/url.ts): https,
 * http, ssh and scp-like URLs without secrets in them; `file://` URLs and absolute paths only with `allowFile`; never
 * remote helpers (`ext::` runs commands), a leading `-` (an option to git), queries or fragments.
 */
function checkRepository(url: string, at: Segment[], issues: Issues, allowFile: boolean): RepoKind | undefined {
  const fail = (message: string, hint?: string): undefined => {
    issues.add(at, message, hint === undefined ? {} : { hint });
    return undefined;
  };
  const usage = 'use https://host/path, http://host/path, ssh://[user@]host[:port]/path or user@host:path';
  if (/[\s\u0000-\u001f\u007f\\]/.test(url)) return fail('must not contain spaces, control characters or backslashes');
  if (url.startsWith('-')) return fail('must not start with "-"');
  if (HELPER_RE.test(url)) return fail('git remote-helper URLs (transport::address) are not allowed', usage);
  const scheme = SCHEME_RE.exec(url)?.[1]?.toLowerCase();
  if (scheme !== undefined) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      return fail('is not a valid URL', usage);
    }
    if (scheme === 'file') {
      if (!allowFile) return fail('file:// repositories are not allowed on this service', FILE_HINT);
      if ((u.host !== '' && u.host !== 'localhost') || u.pathname === '/') return fail('must be file:///absolute/path');
      return 'file';
    }
    if (scheme !== 'https' && scheme !== 'http' && scheme !== 'ssh') {
      return fail(`scheme ${scheme}:// is not allowed`, usage);
    }
    if (u.password !== '' || (u.username !== '' && scheme !== 'ssh')) {
      return fail('must not contain credentials', CREDENTIALS_HINT);
    }
    if (u.hostname === '' || !HOST_RE.test(u.hostname)) return fail('has no valid host name');
    if (u.username !== '' && !USER_RE.test(decodeURIComponent(u.username))) return fail('has an invalid user name');
    if (u.search !== '' || u.hash !== '') return fail('must not have a query or a fragment');
    return scheme === 'ssh' ? 'ssh' : 'http';
  }
  if (url.startsWith('/'))
    return allowFile ? 'file' : fail('local repositories are not allowed on this service', FILE_HINT);
  const scp = SCP_RE.exec(url);
  if (scp !== null) {
    const [, user, host = '', path = ''] = scp;
    if (user?.includes(':')) return fail('must not contain credentials', 'use gitCredentials.sshKeyFile');
    if (user !== undefined && !USER_RE.test(user)) return fail('has an invalid user name');
    if (!HOST_RE.test(host)) return fail('has no valid host name');
    if (path === '' || path.startsWith('-')) return fail('has no valid repository path');
    return 'ssh';
  }
  return fail('is not a repository URL (relative paths and bare names are not)', usage);
}

function checkGitCredentials(
  c: Loose<GitCredentials> | undefined,
  kind: RepoKind | undefined,
  at: Segment[],
  issues: Issues,
) {
  if (c === undefined) return;
  const password = c.passwordEnv !== undefined || c.passwordFile !== undefined;
  if (c.passwordEnv !== undefined && c.passwordFile !== undefined) {
    issues.add([...at, 'passwordFile'], 'passwordEnv and passwordFile are exclusive: give one');
  }
  if (password && c.username === undefined) issues.add([...at, 'username'], 'required with a password');
  if (c.sshKeyFile !== undefined && c.knownHostsFile === undefined) {
    issues.add([...at, 'knownHostsFile'], 'required with sshKeyFile', { hint: SSH_HINT });
  }
  if (password && c.sshKeyFile !== undefined) {
    issues.add(at, 'a password and an ssh key are exclusive: give one');
  } else if (kind === 'http' && c.sshKeyFile !== undefined) {
    issues.add([...at, 'sshKeyFile'], 'an ssh key needs an ssh repository URL (ssh://host/path or user@host:path)');
  } else if (kind === 'ssh' && password) {
    issues.add(
      [...at, c.passwordEnv !== undefined ? 'passwordEnv' : 'passwordFile'],
      'a password needs an https:// repository URL; for ssh give sshKeyFile',
    );
  } else if (kind === 'file') {
    issues.add(at, 'file:// repositories take no credentials');
  }
}

function checkRegistryCredentials(c: Loose<RegistryCredentials> | undefined, at: Segment[], issues: Issues): void {
  if (c === undefined) return;
  if (c.passwordEnv === undefined && c.passwordFile === undefined) {
    issues.add([...at, 'passwordEnv'], 'required (or passwordFile)');
  } else if (c.passwordEnv !== undefined && c.passwordFile !== undefined) {
    issues.add([...at, 'passwordFile'], 'passwordEnv and passwordFile are exclusive: give one');
  }
}

/**
 * The comparable form of a registry prefix (`host/path`, host lower-cased, Docker Hub aliases folded), or an
 * explanation of why it is not a `host[:port]/path` prefix.
 */
function registryPrefix(reg: string): { key: string } | { error: string; hint?: string } {
  if (SCHEME_RE.test(reg)) {
    return { error: 'must not have a scheme', hint: 'write host[:port]/path; insecureRegistry: true for plain HTTP' };
  }
  const slash = reg.indexOf('/');
  if (slash < 0) {
    return { error: 'must be host[:port]/path: a registry host and the repository path the images go under' };
  }
  const host = reg.slice(0, slash);
  const path = reg.slice(slash + 1);
  if (!isValidRegistryHost(host) || !(host.includes('.') || host.includes(':') || host === 'localhost')) {
    return { error: 'must start with a registry host (with a "." or a :port, or localhost): host[:port]/path' };
  }
  if (!isValidRepositoryPath(path)) {
    return {
      error: isValidRepositoryPath(path.toLowerCase())
        ? 'repository path must be lowercase'
        : 'repository path must be components of [a-z0-9] joined by ".", "_", "__" or "-", separated by "/"',
    };
  }
  let h = host.toLowerCase();
  if (h === 'index.docker.io' || h === 'registry-1.docker.io') h = 'docker.io';
  return { key: `${h}/${path}` };
}

/** True when pushing under one prefix can write into the other's repositories. */
function prefixesOverlap(a: string, b: string): boolean {
  return a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`);
}

/** A path inside the repository, normalised (`./a/` → `a`), or why it is not one. */
function repoPath(p: string): { path: string } | { error: string } {
  if (p.includes('\0')) return { error: 'must not contain NUL' };
  if (posix.isAbsolute(p)) return { error: 'path leaves the repository (it must be relative to the repository root)' };
  const n = posix.normalize(p).replace(/\/+$/, '') || '.';
  if (n === '..' || n.startsWith('../')) return { error: 'path leaves the repository' };
  return { path: n };
}

function normalizedRepoPath(p: string): string {
  const r = repoPath(p);
  if ('error' in r) throw new KilnError('INTERNAL', `unchecked repository path: ${r.error}`);
  return r.path;
}

/** git check-ref-format's rules for a branch name (without `refs/heads/`). */
function isValidBranchName(b: string): boolean {
  if (b.startsWith('-') || b.startsWith('/') || b.endsWith('/') || b.endsWith('.') || b === '@') return false;
  if (/[\u0000-\u0020\u007f~^:?*[\\]|\.\.|\/\/|@\{/.test(b)) return false;
  return b.split('/').every((c) => !c.startsWith('.') && !c.endsWith('.lock'));
}

function checkFilters(list: readonly (string | undefined)[] | undefined, at: Segment[], issues: Issues): void {
  list?.forEach((pattern, i) => {
    if (pattern === undefined) return;
    try {
      compileFilter(pattern);
    } catch (e) {
      issues.add([...at, i], isKilnError(e) ? e.message : errorMessage(e));
    }
  });
}

function checkImage(img: Loose<ImageInput>, registry: string, at: Segment[], issues: Issues): void {
  if (img.name === undefined) {
    // required: reported by the schema
  } else if (!IMAGE_NAME_RE.test(img.name)) {
    issues.add(
      [...at, 'name'],
      `must be one path component ([a-z0-9] words joined by ".", "_", "__" or "-"): images are pushed as ${registry}/<name>`,
    );
  } else if (registry.length + 1 + img.name.length > NAME_TOTAL_LENGTH_MAX) {
    issues.add([...at, 'name'], `${registry}/${img.name} is longer than ${NAME_TOTAL_LENGTH_MAX} characters`);
  }
  if (img.context !== undefined) {
    const r = repoPath(img.context);
    if ('error' in r) issues.add([...at, 'context'], r.error);
  }
  if (img.dockerfile !== undefined) {
    const r = repoPath(img.dockerfile);
    if ('error' in r) issues.add([...at, 'dockerfile'], r.error);
    else if (r.path === '.') issues.add([...at, 'dockerfile'], 'must name a file in the repository');
  }
  checkFilters(img.paths, [...at, 'paths'], issues);
  img.tags?.forEach((t, i) => {
    const why = t === undefined ? undefined : checkTagTemplate(t);
    if (why !== undefined) issues.add([...at, 'tags', i], why);
  });
}

/** Every check of one project that needs more than the schema (fields the schema rejected are missing here). */
function checkProject(p: Loose<ProjectInput>, at: Segment[], issues: Issues, allowFile: boolean): void {
  const kind =
    p.repository === undefined ? undefined : checkRepository(p.repository, [...at, 'repository'], issues, allowFile);
  checkGitCredentials(p.gitCredentials, kind, [...at, 'gitCredentials'], issues);
  checkRegistryCredentials(p.registryCredentials, [...at, 'registryCredentials'], issues);
  const prefix = p.registry === undefined ? undefined : registryPrefix(p.registry);
  if (prefix !== undefined && 'error' in prefix) {
    issues.add([...at, 'registry'], prefix.error, prefix.hint === undefined ? {} : { hint: prefix.hint });
  }
  checkFilters(p.branches, [...at, 'branches'], issues);
  checkFilters(p.tags, [...at, 'tags'], issues);
  if (p.defaultBranch !== undefined && !isValidBranchName(p.defaultBranch)) {
    issues.add([...at, 'defaultBranch'], 'must be a branch name (like main; without refs/heads/)');
  }
  const names = new Map<string, number>();
  p.images?.forEach((img, i) => {
    if (img === undefined) return;
    const iat = [...at, 'images', i];
    checkImage(img, p.registry ?? '<registry>', iat, issues);
    if (img.name === undefined) return;
    const prev = names.get(img.name);
    if (prev !== undefined) issues.add([...iat, 'name'], `duplicate image name "${img.name}" (also images[${prev}])`);
    else names.set(img.name, i);
  });
  for (const d of deliveryIssues(p))
    issues.add([...at, ...d.path], d.message, d.hint === undefined ? {} : { hint: d.hint });
}

/** A project of a list with where it is; `project` is only set when the project is valid on its own. */
interface Entry {
  at: Segment[];
  name?: string;
  registry?: string;
  project?: Project;
}

/** Checks across projects: unique names, registry prefixes that neither match nor nest. */
function checkProjectList(entries: readonly Entry[], issues: Issues): void {
  const names = new Map<string, Segment[]>();
  const prefixes: { key: string; name: string; registry: string }[] = [];
  for (const { at, name, registry } of entries) {
    if (name !== undefined) {
      const prev = names.get(name);
      if (prev !== undefined)
        issues.add([...at, 'name'], `duplicate project name "${name}" (also ${formatPath(prev)})`);
      else names.set(name, at);
    }
    const prefix = registry === undefined ? undefined : registryPrefix(registry);
    if (registry === undefined || prefix === undefined || !('key' in prefix)) continue;
    const other = prefixes.find((o) => prefixesOverlap(o.key, prefix.key));
    if (other !== undefined) {
      const who = `project "${other.name}"`;
      issues.add(
        [...at, 'registry'],
        other.key === prefix.key
          ? `${registry} is also the registry of ${who}`
          : `${registry} nests with the registry ${other.registry} of ${who}`,
        { hint: "each project needs a registry prefix of its own: no project may push into another's repositories" },
      );
    }
    prefixes.push({ key: prefix.key, name: name ?? '?', registry });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Defaults

function toImage(img: ImageInput): ImageSpec {
  const context = normalizedRepoPath(img.context ?? IMAGE_DEFAULTS.context);
  return {
    name: img.name,
    context,
    dockerfile: img.dockerfile === undefined ? posix.join(context, 'Dockerfile') : normalizedRepoPath(img.dockerfile),
    ...(img.target === undefined ? {} : { target: img.target }),
    // fromEntries defines own properties: a `__proto__` key stays a key.
    buildArgs: Object.fromEntries(Object.entries(img.buildArgs ?? {})),
    secrets: Object.fromEntries(Object.entries(img.secrets ?? {}).map(([id, ref]) => [id, { ...ref }])),
    strategy: img.strategy ?? IMAGE_DEFAULTS.strategy,
    backend: img.backend ?? IMAGE_DEFAULTS.backend,
    ...(img.s2i === undefined ? {} : { s2i: structuredClone(img.s2i) }),
    ...(img.buildpacks === undefined ? {} : { buildpacks: structuredClone(img.buildpacks) }),
    ...(img.node === undefined ? {} : { node: structuredClone(img.node) }),
    paths: [...(img.paths ?? IMAGE_DEFAULTS.paths)],
    tags: [...(img.tags ?? IMAGE_DEFAULTS.tags)],
    ...(img.timeoutSeconds === undefined ? {} : { timeoutSeconds: img.timeoutSeconds }),
  };
}

function toProject(p: ProjectInput): Project {
  const d = PROJECT_DEFAULTS;
  return {
    name: p.name,
    repository: p.repository,
    ...(p.gitCredentials === undefined ? {} : { gitCredentials: { ...p.gitCredentials } }),
    registry: p.registry,
    ...(p.registryCredentials === undefined ? {} : { registryCredentials: { ...p.registryCredentials } }),
    insecureRegistry: p.insecureRegistry ?? d.insecureRegistry,
    branches: [...(p.branches ?? d.branches)],
    tags: [...(p.tags ?? d.tags)],
    defaultBranch: p.defaultBranch ?? d.defaultBranch,
    ...(p.webhooks === undefined ? {} : { webhooks: structuredClone(p.webhooks) }),
    images: p.images.map(toImage),
    submodules: p.submodules ?? d.submodules,
    depth: p.depth ?? d.depth,
    lfs: p.lfs ?? d.lfs,
    runPolicy: p.runPolicy ?? d.runPolicy,
    concurrency: p.concurrency ?? d.concurrency,
    ...(p.timeoutSeconds === undefined ? {} : { timeoutSeconds: p.timeoutSeconds }),
    retention: { ...d.retention, ...p.retention },
    ...(p.poll === undefined ? {} : { poll: { intervalSeconds: p.poll.intervalSeconds } }),
    ...deliveryDefaults(p),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points

/** Validates one project at `at` and reports its issues; `project` (with defaults) only when it has none. */
function projectAt(doc: unknown, at: Segment[], issues: Issues, allowFile: boolean): Entry {
  const validate = getValidators().project;
  const before = issues.count;
  let loose: Loose<ProjectInput> | undefined;
  if (validate(doc)) {
    loose = doc;
  } else {
    addSchemaErrors(issues, validate.errors ?? [], doc, at);
    loose = pruned<ProjectInput>(doc, validate.errors ?? []);
  }
  if (loose !== undefined) checkProject(loose, at, issues, allowFile);
  return {
    at,
    ...(typeof loose?.name === 'string' ? { name: loose.name } : {}),
    ...(typeof loose?.registry === 'string' ? { registry: loose.registry } : {}),
    ...(issues.count === before && validate(doc) ? { project: toProject(doc) } : {}),
  };
}

/** Validates a `projects:` list, each project and the list as a whole; the valid projects. */
function projectList(list: unknown, issues: Issues, allowFile: boolean): Project[] {
  if (!Array.isArray(list)) return [];
  const entries = list.map((item: unknown, i) => projectAt(item, ['projects', i], issues, allowFile));
  checkProjectList(entries, issues);
  return entries.flatMap((e) => (e.project === undefined ? [] : [e.project]));
}

function configFrom(raw: unknown, source: string, locate: Locate | undefined): ServiceConfig {
  const issues = new Issues(locate);
  const doc = raw ?? {}; // an empty file: every default, no projects
  const validate = getValidators().config;
  const valid = validate(doc);
  if (!valid) addSchemaErrors(issues, validate.errors ?? [], doc, []);
  const settings = isObject(doc) ? doc : {};
  const allowFile = settings['allowFileRepositories'] === true;
  const insecure = settings['insecureRegistries'];
  if (Array.isArray(insecure)) {
    insecure.forEach((host: unknown, i) => {
      if (typeof host === 'string' && host !== '' && !isValidRegistryHost(host)) {
        issues.add(['insecureRegistries', i], 'must be a registry host[:port]');
      }
    });
  }
  const publicUrl = settings['publicUrl'];
  const urlWhy = typeof publicUrl === 'string' ? publicUrlProblem(publicUrl) : undefined;
  if (urlWhy !== undefined) issues.add(['publicUrl'], urlWhy);
  const projects = projectList(settings['projects'], issues, allowFile);
  if (!valid || issues.count > 0) throw issues.error(source);
  const s = SERVICE_DEFAULTS;
  return {
    allowFileRepositories: doc.allowFileRepositories ?? s.allowFileRepositories,
    concurrency: doc.concurrency ?? s.concurrency,
    timeoutSeconds: doc.timeoutSeconds ?? s.timeoutSeconds,
    shutdownGraceSeconds: doc.shutdownGraceSeconds ?? s.shutdownGraceSeconds,
    retryInterrupted: doc.retryInterrupted ?? s.retryInterrupted,
    insecureRegistries: [...(doc.insecureRegistries ?? [])],
    ...(doc.publicUrl === undefined ? {} : { publicUrl: normalizePublicUrl(doc.publicUrl) }),
    baseWatch: {
      intervalSeconds: doc.baseWatch?.intervalSeconds ?? 60,
      concurrency: doc.baseWatch?.concurrency ?? 2,
    },
    ...(doc.registryHook ? { registryHook: { ...doc.registryHook } } : {}),
    ...(doc.kubernetes ? { kubernetes: structuredClone(doc.kubernetes) } : {}),
    projects,
  };
}

function projectsFrom(raw: unknown, source: string, locate: Locate | undefined, opts: ProjectParseOptions): Project[] {
  const issues = new Issues(locate);
  const validate = getValidators().projects;
  if (!validate(raw)) {
    addSchemaErrors(issues, validate.errors ?? [], raw, [], (key) =>
      SERVICE_KEYS.includes(key)
        ? 'a service setting: it belongs in the server config file (kiln serve --config), not in a projects document'
        : undefined,
    );
  }
  const projects = projectList(isObject(raw) ? raw['projects'] : undefined, issues, opts.allowFile === true);
  issues.throwIfAny(source);
  return projects;
}

function oneProjectFrom(raw: unknown, source: string, locate: Locate | undefined, opts: ProjectParseOptions): Project {
  const issues = new Issues(locate);
  const { project } = projectAt(raw, [], issues, opts.allowFile === true);
  if (project === undefined) throw issues.error(source);
  return project;
}

/**
 * Parses the server config file's text (`kiln serve --config FILE`): YAML (JSON is YAML too) with every default
 * applied. `source` names the file in messages. Throws ConfigError (`CONFIG_INVALID`): one `FILE:LINE:COL:` line for
 * a YAML syntax error, else every problem with its path and ` (FILE:LINE)`. An empty file is the default config.
 */
export function parseConfigText(text: string, source: string): ServiceConfig {
  const { data, locate } = loadYaml(text, source);
  return configFrom(data, source, locate);
}

/** Like parseConfigText, for an already parsed document (a JSON body): the same checks, without line numbers. */
export function parseConfigDocument(doc: unknown, source: string): ServiceConfig {
  return configFrom(doc, source, undefined);
}

/**
 * Reads and parses the server config file. Throws KilnError `CONFIG_UNREADABLE` when the file cannot be read, or
 * ConfigError as parseConfigText.
 */
export function loadConfigFile(file: string): ServiceConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new KilnError('CONFIG_UNREADABLE', `cannot read config file ${file}: ${errorMessage(e)}`, {
      hint: 'pass an existing YAML file to kiln serve --config',
      cause: e,
    });
  }
  return parseConfigText(text, file);
}

/**
 * Parses a projects document (`kiln project apply -f FILE`, `POST /projects`): a mapping with a `projects:` list and
 * nothing else — a service setting in it is an error that says it belongs in the server config. Checks every project
 * and the list (unique names, registry prefixes that neither match nor nest); checks against the projects the
 * service already has are the caller's, with checkProjectSet. `file://` repositories need `opts.allowFile`.
 */
export function parseProjectsDocument(doc: unknown, source: string, opts: ProjectParseOptions = {}): Project[] {
  return projectsFrom(doc, source, undefined, opts);
}

/** parseProjectsDocument for YAML text, with line numbers in the messages. */
export function parseProjectsText(text: string, source: string, opts: ProjectParseOptions = {}): Project[] {
  const { data, locate } = loadYaml(text, source);
  return projectsFrom(data, source, locate, opts);
}

/**
 * Parses one project (`PUT /projects/{name}`): paths in messages are relative to the project (`images[0].name`).
 * Whether its name matches the URL and its prefix is free is the caller's check (see checkProjectSet).
 */
export function parseProjectDocument(doc: unknown, source: string, opts: ProjectParseOptions = {}): Project {
  return oneProjectFrom(doc, source, undefined, opts);
}

/** parseProjectDocument for YAML text, with line numbers in the messages. */
export function parseProjectText(text: string, source: string, opts: ProjectParseOptions = {}): Project {
  const { data, locate } = loadYaml(text, source);
  return oneProjectFrom(data, source, locate, opts);
}

/**
 * Checks a set of already parsed projects as a whole — the service's projects with new or replaced ones — so that
 * no two share a name or a registry prefix and no prefix nests in another (`r.io/shop` vs `r.io/shop/web`): a project
 * must never push into another project's repositories. Later projects are reported, naming the earlier one. Throws
 * ConfigError with paths `projects[i]` (indexes into `projects`).
 */
export function checkProjectSet(projects: readonly Project[], source: string): void {
  const issues = new Issues(undefined);
  checkProjectList(
    projects.map(({ name, registry }, i) => ({ at: ['projects', i], name, registry })),
    issues,
  );
  issues.throwIfAny(source);
}
