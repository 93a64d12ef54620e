/**
 * Tag templates of the build service (`images[].tags:`): which tags a build pushes. A template is literal text with
 * placeholders:
 *
 * | placeholder | value |
 * | --- | --- |
 * | `{{branch}}` | the branch built, made tag-safe (`release/1.2` → `release-1.2`) |
 * | `{{tag}}` | the git tag built, made tag-safe |
 * | `{{ref}}` | the full ref, made tag-safe (`refs/heads/main` → `refs-heads-main`) |
 * | `{{sha}}` | the full commit id |
 * | `{{shortSha}}` | its first 7 hex digits |
 * | `{{buildNumber}}` | the project's build number |
 * | `{{date}}` | the build's start date, UTC, `YYYYMMDD` |
 * | `{{timestamp}}` | the build's start time, UTC, `YYYYMMDDhhmmss` |
 * | `{{version}}` / `{{versionMinor}}` / `{{versionMajor}}` | a release tag `v1.2.3` as `1.2.3` / `1.2` / `1` (pre-releases: only `{{version}}`) |
 *
 * Spaces inside the braces are allowed (`{{ branch }}`). A template whose placeholder has no value for this build
 * (`{{branch}}` while building a git tag, `{{tag}}` while building a branch, `{{branch}}`/`{{tag}}`/`{{ref}}` while
 * building a bare commit, a name of which sanitising leaves nothing) is skipped, not an error: one image lists the
 * templates for every kind of trigger. The tag `latest` is only ever produced on the project's default branch (also
 * when a branch named `latest` renders it). Results that are not valid docker tags
 * (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) are skipped; the rest are deduplicated in template order. When nothing is
 * left, the build is tagged with `{{shortSha}}` alone, so that every pushed image is reachable by a tag.
 */

/** Every placeholder a template may use. */
export const TAG_PLACEHOLDERS = [
  'branch',
  'tag',
  'ref',
  'sha',
  'shortSha',
  'buildNumber',
  'date',
  'timestamp',
  'version',
  'versionMinor',
  'versionMajor',
] as const;
export type TagPlaceholder = (typeof TAG_PLACEHOLDERS)[number];

/** Docker's tag grammar (distribution/reference). */
export const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const TAG_MAX = 128;
const PLACEHOLDER_RE = /\{\{\s*([^{}]*?)\s*\}\}/g;

/** What a build knows when its tags are rendered. */
export interface TagVars {
  /** Branch name (`release/1.2`), when building a branch. */
  branch?: string;
  /** Git tag name (`v1.2.0`), when building a git tag. */
  tag?: string;
  /** Full ref (`refs/heads/main`); `` when building a bare commit. */
  ref: string;
  /** Full commit id (hex). */
  sha: string;
  buildNumber: number;
  /** True when `branch` is set and is the project's default branch: only then is `latest` produced. */
  isDefaultBranch: boolean;
  /** Build start; `{{date}}` and `{{timestamp}}` use UTC. */
  now: Date;
}

/** A template split into literal text and placeholder names. */
type Part = { text: string } | { name: string };

function splitTemplate(template: string): Part[] {
  const parts: Part[] = [];
  let last = 0;
  for (const m of template.matchAll(PLACEHOLDER_RE)) {
    if (m.index > last) parts.push({ text: template.slice(last, m.index) });
    parts.push({ name: m[1]! });
    last = m.index + m[0].length;
  }
  if (last < template.length) parts.push({ text: template.slice(last) });
  return parts;
}

function isPlaceholder(name: string): name is TagPlaceholder {
  return (TAG_PLACEHOLDERS as readonly string[]).includes(name);
}

/**
 * Why a tag template is invalid, or undefined when it is fine: an unknown placeholder (named), stray `{{`/`}}`, or
 * literal text that could never form a valid tag (rendered with sample values). The config parser reports this at
 * load time so that a typo does not silently skip a tag on every build.
 */
export function checkTagTemplate(template: string): string | undefined {
  const parts = splitTemplate(template);
  const names = parts.flatMap((p) => ('name' in p ? [p.name] : []));
  const unknown = names.find((n) => !isPlaceholder(n));
  if (unknown !== undefined) {
    return `unknown placeholder {{${unknown}}} (known: ${TAG_PLACEHOLDERS.map((p) => `{{${p}}}`).join(', ')})`;
  }
  const literal = parts.flatMap((p) => ('text' in p ? [p.text] : [])).join('');
  if (literal.includes('{{') || literal.includes('}}')) return 'unbalanced {{ or }}';
  const sample = parts.map((p) => ('text' in p ? p.text : 'x')).join('');
  if (!TAG_RE.test(sample)) {
    return 'cannot render a valid tag: tags are [A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters';
  }
  return undefined;
}

/**
 * Makes any string a valid docker tag, or `` when nothing is left: characters outside `[A-Za-z0-9_.-]` become `-`
 * (one per code point), leading `.` and `-` are dropped (a tag cannot start with them), and the result is cut to 128
 * characters. `release/1.2` → `release-1.2`.
 */
export function sanitizeTag(s: string): string {
  return s
    .replace(/[^A-Za-z0-9_.-]/gu, '-')
    .replace(/^[.-]+/, '')
    .slice(0, TAG_MAX);
}

function pad(n: number, width = 2): string {
  return String(n).padStart(width, '0');
}

/** A name made tag-safe; undefined when there is none or nothing of it is left. */
function safe(name: string | undefined): string | undefined {
  const s = name === undefined ? '' : sanitizeTag(name);
  return s === '' ? undefined : s;
}

function placeholderValue(name: TagPlaceholder, vars: TagVars): string | undefined {
  const d = vars.now;
  const date = `${pad(d.getUTCFullYear(), 4)}${pad(d.getUTCMonth() + 1)}${pad(d.getUTCDate())}`;
  switch (name) {
    case 'branch':
      return safe(vars.branch);
    case 'tag':
      return safe(vars.tag);
    case 'ref':
      return safe(vars.ref);
    case 'sha':
      return vars.sha === '' ? undefined : vars.sha;
    case 'shortSha':
      return vars.sha === '' ? undefined : vars.sha.slice(0, 7);
    case 'buildNumber':
      return String(vars.buildNumber);
    case 'date':
      return date;
    case 'timestamp':
      return `${date}${pad(d.getUTCHours())}${pad(d.getUTCMinutes())}${pad(d.getUTCSeconds())}`;
    case 'version':
    case 'versionMinor':
    case 'versionMajor': {
      const v = semver(vars.tag);
      if (!v) return undefined;
      if (name === 'versionMajor') return v.major || undefined;
      if (name === 'versionMinor') return v.major ? `${v.major}.${v.minor}` : undefined;
      return v.full;
    }
  }
}

/**
 * A git tag that is a release version (`v1.2.3`, `1.2.3`, `v1.2.3-rc.1`): `{{version}}` is it without the `v`,
 * `{{versionMinor}}` `1.2`, `{{versionMajor}}` `1` — the `:1.2`/`:1` tags image users expect from a release. A
 * pre-release (`-rc.1`) has only `{{version}}`: a release candidate must not move `:1.2`.
 */
function semver(tag: string | undefined): { full: string; major: string; minor: string } | undefined {
  const m = tag === undefined ? null : /^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$/.exec(tag);
  if (!m) return undefined;
  const full = `${m[1]}.${m[2]}.${m[3]}${m[4] ?? ''}`;
  if (m[4]) return { full, major: '', minor: '' };
  return { full, major: m[1] as string, minor: m[2] as string };
}

/** One template rendered, or undefined when it is skipped (no value for a placeholder, unknown placeholder). */
function renderOne(template: string, vars: TagVars): string | undefined {
  let out = '';
  for (const p of splitTemplate(template)) {
    if ('text' in p) {
      out += p.text;
      continue;
    }
    if (!isPlaceholder(p.name)) return undefined;
    const v = placeholderValue(p.name, vars);
    if (v === undefined) return undefined;
    out += v;
  }
  return out;
}

/**
 * The tags a build pushes, in template order, deduplicated (see the module comment for the rules: skipped templates,
 * `latest` only on the default branch, invalid results skipped, `{{shortSha}}` as the fallback). Empty only when
 * nothing renders and `vars.sha` is empty.
 */
export function renderTags(templates: readonly string[], vars: TagVars): string[] {
  const out: string[] = [];
  for (const t of templates) {
    const tag = renderOne(t, vars);
    if (tag === undefined || !TAG_RE.test(tag)) continue;
    if (tag === 'latest' && !(vars.isDefaultBranch && vars.branch !== undefined)) continue;
    if (!out.includes(tag)) out.push(tag);
  }
  if (out.length === 0) {
    const short = vars.sha.slice(0, 7);
    if (TAG_RE.test(short)) out.push(short);
  }
  return out;
}
