/**
 * Registry authentication: parsing `WWW-Authenticate` challenges (RFC 7235: several challenges, quoted strings
 * with escaped quotes and commas) and the Docker token protocol (docs/spec/auth/token.md): GET the realm with
 * `service` and one `scope` per resource, using Basic credentials when we have them (anonymous otherwise), or a
 * POST with `grant_type=refresh_token` for identity tokens (OAuth2, docs/spec/auth/oauth.md). Tokens are cached per
 * scope set until shortly before they expire.
 */
import { KilnError } from '../errors.js';

/** One authentication challenge: lower-cased scheme and its (lower-cased key) parameters. */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Credentials for one registry. Never logged. */
export interface Credential {
  username?: string;
  password?: string;
  /** An OAuth2 refresh token ("identitytoken" in docker's config.json). */
  identityToken?: string;
  /** A ready-made bearer token ("registrytoken"). */
  registryToken?: string;
}

const TOKEN_CHARS = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;

/**
 * Parse a WWW-Authenticate header value into challenges. Handles `Bearer realm="a",service="b",scope="x,y"`,
 * several challenges in one header (`Basic realm="r", Bearer realm="s"`), token68 values and stray whitespace.
 */
export function parseWWWAuthenticate(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skipWs = (): void => {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
  };
  const readToken = (): string => {
    const start = i;
    while (i < n && TOKEN_CHARS.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  const readQuoted = (): string => {
    // at opening quote
    i++;
    let s = '';
    while (i < n && header[i] !== '"') {
      if (header[i] === '\\' && i + 1 < n) i++;
      s += header[i];
      i++;
    }
    i++; // closing quote
    return s;
  };
  let current: Challenge | undefined;
  while (i < n) {
    skipWs();
    if (header[i] === ',') {
      i++;
      continue;
    }
    const tok = readToken();
    if (tok === '') {
      i++; // skip garbage
      continue;
    }
    skipWs();
    if (header[i] === '=' && current) {
      // auth-param of the current challenge (or a token68 ending in '=')
      i++;
      skipWs();
      let value: string;
      if (header[i] === '"') value = readQuoted();
      else {
        const start = i;
        while (i < n && header[i] !== ',' && header[i] !== ' ' && header[i] !== '\t') i++;
        value = header.slice(start, i);
      }
      current.params[tok.toLowerCase()] = value;
      continue;
    }
    // a new challenge: scheme, optionally followed by a token68
    current = { scheme: tok.toLowerCase(), params: {} };
    out.push(current);
    skipWs();
    // token68 (e.g. `Negotiate abc==`) — only when it is not the start of an auth-param
    const save = i;
    const t68 = /^[A-Za-z0-9\-._~+/]+=*/.exec(header.slice(i));
    if (t68) {
      const after = header.slice(i + t68[0].length).trimStart();
      const isParam = /^[A-Za-z0-9\-._~+/]+\s*=\s*[^=]/.test(header.slice(i)) && !/=$/.test(t68[0]);
      if (!isParam && (after === '' || after.startsWith(','))) {
        current.params['token68'] = t68[0];
        i += t68[0].length;
        continue;
      }
    }
    i = save;
  }
  return out;
}

/** A resource scope string, e.g. `repository:app:pull,push`. */
export function repositoryScope(repository: string, actions: ('pull' | 'push' | 'delete' | '*')[]): string {
  return `repository:${repository}:${actions.join(',')}`;
}

/** Merge scopes that name the same resource (union of actions), keeping a stable order. */
export function mergeScopes(scopes: string[]): string[] {
  const byResource = new Map<string, Set<string>>();
  for (const s of scopes) {
    const idx = s.lastIndexOf(':');
    if (idx < 0) {
      byResource.set(s, byResource.get(s) ?? new Set());
      continue;
    }
    const res = s.slice(0, idx);
    const set = byResource.get(res) ?? new Set<string>();
    for (const a of s.slice(idx + 1).split(',')) if (a) set.add(a);
    byResource.set(res, set);
  }
  const order = ['pull', 'push', 'delete', '*'];
  return [...byResource.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([res, acts]) => {
      if (acts.size === 0) return res;
      const list = [...acts].sort((a, b) => {
        const ia = order.indexOf(a);
        const ib = order.indexOf(b);
        return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : 1);
      });
      return `${res}:${list.join(',')}`;
    });
}

/** Basic authorization header value. */
export function basicAuthorization(cred: Credential): string | undefined {
  if (cred.username === undefined || cred.password === undefined) return undefined;
  return 'Basic ' + Buffer.from(`${cred.username}:${cred.password}`).toString('base64');
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

/** The HTTP GET/POST that token fetching needs; provided by the transport (TLS settings, retries). */
export type TokenFetcher = (
  url: string,
  init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string },
) => Promise<{ status: number; body: Buffer }>;

/** Thrown (as KilnError UNAUTHORIZED) when the token endpoint rejects our credentials. */
function tokenError(status: number, realm: string, hadCreds: boolean, body: Buffer): KilnError {
  let detail = '';
  try {
    const j = JSON.parse(body.toString('utf8')) as { details?: string; errors?: { message?: string }[] };
    detail = j.details ?? j.errors?.[0]?.message ?? '';
  } catch {
    /* not JSON */
  }
  const host = safeHost(realm);
  if (status === 401 || status === 403) {
    return new KilnError(
      'UNAUTHORIZED',
      hadCreds
        ? `token server ${host} rejected the credentials${detail ? `: ${detail}` : ''}`
        : `token server ${host} requires authentication${detail ? `: ${detail}` : ''}`,
      { hint: hadCreds ? 'check the user name and password (kiln login)' : 'log in first with kiln login' },
    );
  }
  return new KilnError('TOKEN_FETCH_FAILED', `token server ${host} answered HTTP ${status}`);
}

function safeHost(u: string): string {
  try {
    return new URL(u).host;
  } catch {
    return '<invalid realm>';
  }
}

/**
 * Bearer token source for one registry: fetches tokens from the challenge's realm and caches them by scope set.
 */
export class TokenAuthenticator {
  private readonly cache = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(
    private readonly challenge: Challenge,
    private readonly credential: Credential | undefined,
    private readonly fetcher: TokenFetcher,
    private readonly clientId = 'kiln',
  ) {}

  /** A bearer token for the given scopes, from the cache unless `refresh`. */
  async token(scopes: string[], refresh = false): Promise<string> {
    if (this.credential?.registryToken) return this.credential.registryToken;
    const merged = mergeScopes(scopes);
    const key = merged.join(' ');
    const hit = this.cache.get(key);
    if (!refresh && hit && hit.expiresAt > Date.now()) return hit.token;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.fetchToken(merged).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  private async fetchToken(scopes: string[]): Promise<string> {
    const realm = this.challenge.params['realm'];
    if (!realm) throw new KilnError('UNAUTHORIZED', 'registry sent a Bearer challenge without a realm');
    const service = this.challenge.params['service'];
    const cred = this.credential;
    let res: { status: number; body: Buffer };
    if (cred?.identityToken) {
      const form = new URLSearchParams();
      form.set('grant_type', 'refresh_token');
      form.set('refresh_token', cred.identityToken);
      if (service) form.set('service', service);
      form.set('client_id', this.clientId);
      if (scopes.length) form.set('scope', scopes.join(' '));
      res = await this.fetcher(realm, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: form.toString(),
      });
    } else {
      const u = new URL(realm);
      if (service) u.searchParams.set('service', service);
      for (const s of scopes) u.searchParams.append('scope', s);
      const headers: Record<string, string> = {};
      const basic = cred ? basicAuthorization(cred) : undefined;
      if (basic) {
        headers['authorization'] = basic;
        u.searchParams.set('account', cred!.username!);
      }
      res = await this.fetcher(u.toString(), { method: 'GET', headers });
    }
    if (res.status !== 200) throw tokenError(res.status, realm, cred !== undefined, res.body);
    let parsed: { token?: string; access_token?: string; expires_in?: number; issued_at?: string };
    try {
      parsed = JSON.parse(res.body.toString('utf8')) as typeof parsed;
    } catch {
      throw new KilnError('TOKEN_FETCH_FAILED', `token server ${safeHost(realm)} sent an invalid response`);
    }
    const token = parsed.access_token || parsed.token;
    if (!token) throw new KilnError('TOKEN_FETCH_FAILED', `token server ${safeHost(realm)} sent no token`);
    // The spec's minimum lifetime is 60 s when expires_in is absent; refresh a little early.
    const lifetime = Math.max(parsed.expires_in ?? 60, 10);
    this.cache.set(scopes.join(' '), { token, expiresAt: Date.now() + (lifetime - 5) * 1000 });
    return token;
  }
}

/** Remove credentials from free text (URLs with user:pass@, Authorization values, token query params). */
export function redact(s: string): string {
  return s
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/)[^/\s@]*@/gi, '$1<redacted>@')
    .replace(/\b(Basic|Bearer)\s+[A-Za-z0-9\-._~+/]+=*/g, '$1 <redacted>')
    .replace(/([?&](?:access_token|token|refresh_token|password)=)[^&\s]*/gi, '$1<redacted>');
}
