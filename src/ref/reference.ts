/**
 * Image references (the `name` layer both src/oci and src/registry use), parsed exactly like docker/distribution's `reference.ParseNormalizedNamed`: a familiar name
 * such as `busybox` becomes `docker.io/library/busybox`, `index.docker.io` is an alias of `docker.io`, the first
 * path component is a registry host only when it contains `.` or `:`, is `localhost`, or has upper-case letters,
 * repository paths must be lower case, names are at most 255 characters, tags match `[\w][\w.-]{0,127}` and
 * digests are validated (sha256 needs 64 hex characters). Both a tag and a digest may be given
 * (`name:tag@sha256:…`); the digest then wins for fetching.
 */
import { KilnError } from '../errors.js';

export const DEFAULT_REGISTRY = 'docker.io';
const LEGACY_DEFAULT_REGISTRY = 'index.docker.io';
/** The API host that serves docker.io. */
export const DOCKER_HUB_API_HOST = 'registry-1.docker.io';
const OFFICIAL_REPO = 'library';
export const DEFAULT_TAG = 'latest';
export const NAME_TOTAL_LENGTH_MAX = 255;

const alnum = '[a-z0-9]+';
const separator = '(?:[._]|__|[-]+)';
const pathComponent = `${alnum}(?:${separator}${alnum})*`;
const domainComponent = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const ipv6 = '\\[(?:[a-fA-F0-9:]+)\\]';
const domainName = `${domainComponent}(?:\\.${domainComponent})*`;
const host = `(?:${domainName}|${ipv6})`;
const domain = `${host}(?::[0-9]+)?`;
const tagPat = '[\\w][\\w.-]{0,127}';
const digestPat = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}';
const namePat = `(?:${domain}/)?${pathComponent}(?:/${pathComponent})*`;
const REFERENCE_RE = new RegExp(`^(${namePat})(?::(${tagPat}))?(?:@(${digestPat}))?$`);
const IDENTIFIER_RE = /^[a-f0-9]{64}$/;
const TAG_RE = new RegExp(`^${tagPat}$`);
const DOMAIN_RE = new RegExp(`^${domain}$`);
const PATH_RE = new RegExp(`^${pathComponent}(?:/${pathComponent})*$`);

/** A parsed, normalized image reference. */
export interface Reference {
  /** Registry host as written (normalized: `docker.io` for Docker Hub), may include a port. */
  readonly registry: string;
  /** Repository path inside the registry, e.g. `library/busybox`. */
  readonly repository: string;
  readonly tag: string | undefined;
  readonly digest: string | undefined;
  /** `registry/repository`. */
  name(): string;
  /** Full normalized form: `registry/repository[:tag][@digest]`. */
  toString(): string;
  /** Docker's short form: `busybox:latest` for `docker.io/library/busybox:latest`. */
  familiar(): string;
  /** The tag or digest to fetch: the digest when present, else the tag, else `latest`. */
  identifier(): string;
  /** Host to contact for the API (`registry-1.docker.io` for docker.io). */
  apiHost(): string;
  /** Same repository, another tag (drops any digest). */
  withTag(tag: string): Reference;
  /** Same repository, pinned to a digest (drops any tag). */
  withDigest(digest: string): Reference;
}

function invalid(s: string, why: string, hint?: string): KilnError {
  return new KilnError('INVALID_REFERENCE', `invalid reference "${s}": ${why}`, {
    hint: hint ?? 'references look like [registry[:port]/]repository[:tag][@sha256:<64 hex>]',
  });
}

class Ref implements Reference {
  constructor(
    readonly registry: string,
    readonly repository: string,
    readonly tag: string | undefined,
    readonly digest: string | undefined,
  ) {}

  name(): string {
    return `${this.registry}/${this.repository}`;
  }

  toString(): string {
    let s = this.name();
    if (this.tag !== undefined) s += `:${this.tag}`;
    if (this.digest !== undefined) s += `@${this.digest}`;
    return s;
  }

  familiar(): string {
    let s: string;
    if (this.registry === DEFAULT_REGISTRY) {
      const parts = this.repository.split('/');
      s = parts.length === 2 && parts[0] === OFFICIAL_REPO ? parts[1]! : this.repository;
    } else s = this.name();
    if (this.tag !== undefined) s += `:${this.tag}`;
    if (this.digest !== undefined) s += `@${this.digest}`;
    return s;
  }

  identifier(): string {
    return this.digest ?? this.tag ?? DEFAULT_TAG;
  }

  apiHost(): string {
    return this.registry === DEFAULT_REGISTRY ? DOCKER_HUB_API_HOST : this.registry;
  }

  withTag(tag: string): Reference {
    if (!TAG_RE.test(tag)) throw invalid(`${this.name()}:${tag}`, 'invalid tag format');
    return new Ref(this.registry, this.repository, tag, undefined);
  }

  withDigest(digest: string): Reference {
    validateDigest(`${this.name()}@${digest}`, digest);
    return new Ref(this.registry, this.repository, undefined, digest);
  }
}

function validateDigest(s: string, d: string): void {
  const i = d.indexOf(':');
  const alg = d.slice(0, i);
  const hex = d.slice(i + 1);
  if (alg === 'sha256') {
    if (!/^[a-f0-9]+$/.test(hex)) throw invalid(s, 'invalid checksum digest format');
    if (hex.length !== 64) throw invalid(s, 'invalid checksum digest length');
  } else if (alg === 'sha384' || alg === 'sha512') {
    const want = alg === 'sha384' ? 96 : 128;
    if (!/^[a-f0-9]+$/.test(hex)) throw invalid(s, 'invalid checksum digest format');
    if (hex.length !== want) throw invalid(s, 'invalid checksum digest length');
  } else {
    throw invalid(s, `unsupported digest algorithm "${alg}"`);
  }
}

/** Split a name into registry and remainder exactly like distribution's splitDockerDomain. */
function splitDomain(name: string): [string, string] {
  const i = name.indexOf('/');
  let dom: string;
  let rest: string;
  const first = i === -1 ? '' : name.slice(0, i);
  if (i === -1 || (!/[.:]/.test(first) && first !== 'localhost' && first.toLowerCase() === first)) {
    dom = DEFAULT_REGISTRY;
    rest = name;
  } else {
    dom = first;
    rest = name.slice(i + 1);
  }
  if (dom === LEGACY_DEFAULT_REGISTRY) dom = DEFAULT_REGISTRY;
  if (dom === DEFAULT_REGISTRY && !rest.includes('/')) rest = `${OFFICIAL_REPO}/${rest}`;
  return [dom, rest];
}

/** Parse a reference the way `docker pull` does (ParseNormalizedNamed). Throws INVALID_REFERENCE. */
export function parseReference(s: string): Reference {
  if (s === '') throw invalid(s, 'repository name must have at least one component');
  if (IDENTIFIER_RE.test(s)) {
    throw invalid(s, 'cannot specify 64-byte hexadecimal strings', 'use sha256:<hex> with a repository name');
  }
  const [dom, remainder] = splitDomain(s);
  const tagSep = remainder.indexOf(':');
  const remoteName = tagSep > -1 ? remainder.slice(0, tagSep) : remainder;
  if (remoteName.toLowerCase() !== remoteName) {
    throw invalid(s, 'repository name must be lowercase');
  }
  const full = `${dom}/${remainder}`;
  const m = REFERENCE_RE.exec(full);
  if (!m) {
    if (REFERENCE_RE.test(full.toLowerCase())) throw invalid(s, 'repository name must be lowercase');
    throw invalid(s, 'invalid reference format');
  }
  const name = m[1]!;
  if (name.length > NAME_TOTAL_LENGTH_MAX) {
    throw invalid(s, `repository name must not be more than ${NAME_TOTAL_LENGTH_MAX} characters`);
  }
  const digest = m[3];
  if (digest !== undefined) validateDigest(s, digest);
  // The name matched with its domain; split again on the first slash (the domain is always present here).
  const slash = name.indexOf('/');
  return new Ref(name.slice(0, slash), name.slice(slash + 1), m[2], digest);
}

/** Like parseReference, but a reference without tag or digest gets `:latest` (docker's TagNameOnly). */
export function parseReferenceWithDefaultTag(s: string): Reference {
  const r = parseReference(s);
  return r.tag === undefined && r.digest === undefined ? r.withTag(DEFAULT_TAG) : r;
}

/** True when `s` is a syntactically valid registry host[:port]. */
export function isValidRegistryHost(s: string): boolean {
  return DOMAIN_RE.test(s);
}

/** True when `s` is a valid repository path (lowercase components). */
export function isValidRepositoryPath(s: string): boolean {
  return PATH_RE.test(s);
}

/** Normalize a registry given on the command line (`docker.io`, `https://index.docker.io/v1/`, `host:5000`). */
export function normalizeRegistryHost(s: string): string {
  let h = s.trim();
  h = h.replace(/^[a-z]+:\/\//i, '');
  h = h.replace(/\/.*$/, '');
  if (h === LEGACY_DEFAULT_REGISTRY || h === DOCKER_HUB_API_HOST || h === DEFAULT_REGISTRY) return DEFAULT_REGISTRY;
  if (!isValidRegistryHost(h)) {
    throw new KilnError('INVALID_REGISTRY', `invalid registry host "${s}"`, {
      hint: 'use host[:port], e.g. 127.0.0.1:5000',
    });
  }
  return h;
}
