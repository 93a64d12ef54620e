/**
 * An in-process Docker token server (distribution docs/spec/auth/token.md, oauth.md) for tests: GET /token with
 * Basic credentials (or none, for anonymous), `service` and `scope` parameters; POST /token with
 * grant_type=password|refresh_token. It issues JWTs that distribution 2.8's token access controller accepts:
 * ES256 or RS256 signatures made with Node's crypto, identified by an `x5c` chain or a libtrust `kid`
 * (base32 of the first 240 bits of the SHA-256 of the DER public key, in colon-separated groups of four), with
 * `iss`, `aud` (= service), `sub`, `exp`, `nbf`, `iat`, `jti` and an `access` list holding only what the
 * requester was granted. Anonymous requesters get pull only (configurable).
 */
import { createHash, createPrivateKey, createPublicKey, randomBytes, sign, type KeyObject } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { makeSigningCert, type SigningCert } from './certs.js';

export interface Grant {
  /** Repository name, or a prefix ending in `*` (`*` alone = everything). */
  repository: string;
  actions: string[];
}

export interface TokenUser {
  password: string;
  grants: Grant[];
}

export interface TokenServerOptions {
  users?: Record<string, TokenUser>;
  /** What anonymous requests may do (default: pull on everything). */
  anonymous?: Grant[];
  keyType?: 'ec' | 'rsa';
  /** How the signing key is identified in the JWT header (default x5c). */
  keyHeader?: 'x5c' | 'kid';
  issuer?: string;
  service?: string;
  /** Token lifetime in seconds (default 300). */
  expiresIn?: number;
  /** Refresh tokens (identity tokens) accepted by POST, mapped to a user name. */
  refreshTokens?: Record<string, string>;
}

export interface TokenRequestLog {
  method: string;
  account: string | undefined;
  scopes: string[];
  granted: string[];
  status: number;
}

export interface TokenServer {
  /** The realm URL for the registry config. */
  realm: string;
  issuer: string;
  service: string;
  /** PEM bundle for the registry's `rootcertbundle`. */
  rootCertBundle: string;
  requests: TokenRequestLog[];
  stop(): Promise<void>;
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url');
}

/** libtrust key ID of a public key (what distribution 2.8 looks up `kid` by). */
export function libtrustKeyID(pub: KeyObject): string {
  const der = pub.export({ type: 'spki', format: 'der' });
  const sum = createHash('sha256').update(der).digest().subarray(0, 30);
  const s = base32(sum);
  const groups: string[] = [];
  for (let i = 0; i < s.length; i += 4) groups.push(s.slice(i, i + 4));
  return groups.join(':');
}

function base32(b: Buffer): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of b) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

function matches(g: Grant, name: string): boolean {
  if (g.repository === '*') return true;
  if (g.repository.endsWith('*')) return name.startsWith(g.repository.slice(0, -1));
  return g.repository === name;
}

/** Parse `repository:name:pull,push` (names may not contain ':' but types like `repository(plugin)` may). */
function parseScope(s: string): { type: string; name: string; actions: string[] } | undefined {
  const first = s.indexOf(':');
  const last = s.lastIndexOf(':');
  if (first < 0 || last === first) return undefined;
  return {
    type: s.slice(0, first),
    name: s.slice(first + 1, last),
    actions: s
      .slice(last + 1)
      .split(',')
      .filter(Boolean),
  };
}

export async function startTokenServer(o: TokenServerOptions = {}): Promise<TokenServer & { signing: SigningCert }> {
  const signing = makeSigningCert(o.keyType ?? 'ec');
  const key = createPrivateKey(signing.keyPem);
  const pub = createPublicKey(key);
  const alg = (o.keyType ?? 'ec') === 'ec' ? 'ES256' : 'RS256';
  const issuer = o.issuer ?? 'kiln-test-issuer';
  const service = o.service ?? 'kiln-test-registry';
  const users = o.users ?? {};
  const anonymous = o.anonymous ?? [{ repository: '*', actions: ['pull'] }];
  const requests: TokenRequestLog[] = [];

  const makeToken = (sub: string, access: { type: string; name: string; actions: string[] }[]): string => {
    const header: Record<string, unknown> = { typ: 'JWT', alg };
    if ((o.keyHeader ?? 'x5c') === 'x5c') header.x5c = [signing.certDerBase64];
    else header.kid = libtrustKeyID(pub);
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: issuer,
      sub,
      aud: service,
      exp: now + (o.expiresIn ?? 300),
      nbf: now - 10,
      iat: now,
      jti: randomBytes(12).toString('hex'),
      access,
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig =
      alg === 'ES256'
        ? sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
        : sign('sha256', Buffer.from(input), key);
    return `${input}.${b64url(sig)}`;
  };

  const grantFor = (grants: Grant[], scopes: string[]): { type: string; name: string; actions: string[] }[] => {
    const out: { type: string; name: string; actions: string[] }[] = [];
    for (const s of scopes) {
      const p = parseScope(s);
      if (!p || p.type !== 'repository') continue;
      const allowed = new Set<string>();
      for (const g of grants) if (matches(g, p.name)) for (const a of g.actions) allowed.add(a);
      const actions = p.actions.filter((a) => allowed.has(a) || allowed.has('*'));
      out.push({ type: p.type, name: p.name, actions });
    }
    return out;
  };

  const reply = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname !== '/token') return reply(res, 404, { details: 'not found' });
    let user: string | undefined;
    let password: string | undefined;
    let scopes: string[];
    let refresh: string | undefined;
    if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const form = new URLSearchParams(Buffer.concat(chunks).toString());
      scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
      const grant = form.get('grant_type');
      if (grant === 'password') {
        user = form.get('username') ?? undefined;
        password = form.get('password') ?? undefined;
      } else if (grant === 'refresh_token') {
        refresh = form.get('refresh_token') ?? undefined;
      } else return reply(res, 400, { details: 'unsupported grant_type' });
    } else {
      scopes = url.searchParams
        .getAll('scope')
        .flatMap((s) => s.split(' '))
        .filter(Boolean);
      const auth = req.headers.authorization;
      if (auth?.startsWith('Basic ')) {
        const dec = Buffer.from(auth.slice(6), 'base64').toString();
        const i = dec.indexOf(':');
        user = dec.slice(0, i);
        password = dec.slice(i + 1);
      }
    }
    if (url.searchParams.get('service') && url.searchParams.get('service') !== service && req.method === 'GET') {
      return reply(res, 400, { details: 'unknown service' });
    }
    let grants = anonymous;
    let sub = '';
    if (refresh !== undefined) {
      const u = o.refreshTokens?.[refresh];
      if (!u || !users[u]) {
        requests.push({ method: req.method ?? '', account: undefined, scopes, granted: [], status: 401 });
        return reply(res, 401, { details: 'invalid refresh token' });
      }
      grants = users[u].grants;
      sub = u;
    } else if (user !== undefined) {
      const u = users[user];
      if (!u || u.password !== password) {
        requests.push({ method: req.method ?? '', account: user, scopes, granted: [], status: 401 });
        res.setHeader('www-authenticate', 'Basic realm="kiln-token"');
        return reply(res, 401, { details: 'invalid username or password' });
      }
      grants = u.grants;
      sub = user;
    }
    const access = grantFor(grants, scopes);
    const granted = access.map((a) => `${a.type}:${a.name}:${a.actions.join(',')}`);
    requests.push({ method: req.method ?? '', account: sub || undefined, scopes, granted, status: 200 });
    const token = makeToken(sub, access);
    const body: Record<string, unknown> = {
      token,
      access_token: token,
      expires_in: o.expiresIn ?? 300,
      issued_at: new Date().toISOString(),
    };
    if (req.method === 'POST' && sub) body.refresh_token = refresh ?? `refresh-${sub}`;
    return reply(res, 200, body);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => reply(res, 500, { details: String(e) }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    issuer,
    service,
    rootCertBundle: signing.certFile,
    requests,
    signing,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      signing.cleanup();
    },
  };
}
