/**
 * HTTP transport to one registry endpoint: scheme selection (HTTPS; plain HTTP allowed for loopback hosts and
 * `--insecure-registry` hosts, tried after HTTPS fails the way docker does), TLS with extra CAs, the `/v2/` ping and
 * its challenge, Basic and Bearer authorization (token per scope set, refreshed on 401), bounded retries with
 * exponential backoff on 408/429/5xx and dropped connections (honouring Retry-After), manual redirects (no
 * Authorization header sent to another host), and registry error bodies mapped to typed KilnErrors. Credentials are
 * never put into an error or a debug log.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext, rootCertificates, type SecureContext } from 'node:tls';
import type { Readable } from 'node:stream';
import { Agent, request, type Dispatcher } from './http.js';
import { KilnError } from '../errors.js';
import {
  basicAuthorization,
  mergeScopes,
  parseWWWAuthenticate,
  redact,
  TokenAuthenticator,
  type Challenge,
  type Credential,
} from './auth.js';
import type { OriginIndex } from './origins.js';
import type { BlobDir } from '../oci/blobs.js';
import { rememberHttp, rememberedHttp } from './schemes.js';
import { debugNow } from '../util/debug.js';

/** Resolves the credentials for a registry host (e.g. the docker config keychain). */
export type CredentialSource = (registry: string) => Promise<Credential | undefined>;

/** Options shared by every registry operation (mostly from CLI flags). */
export interface RegistryOptions {
  /** Hosts (host or host:port) that may be reached over plain HTTP / unverified TLS. */
  insecureRegistries?: string[];
  /** PEM files with extra CA certificates to trust. */
  caFiles?: string[];
  /** Pull-through mirrors for docker.io (URLs, e.g. https://mirror.example.com). */
  mirrors?: string[];
  /** Where credentials come from; default: none (anonymous). */
  credentials?: CredentialSource;
  /** Retries after the first attempt for retryable failures (default 5). */
  maxRetries?: number;
  /** First backoff delay in ms (default 200), doubled per attempt. */
  retryBaseMs?: number;
  /** Upper bound for one backoff / Retry-After wait in ms (default 20000). */
  maxRetryDelayMs?: number;
  userAgent?: string;
  /** Shared connections/tokens (see transportPool); created on first use. */
  pool?: TransportPool;
  /** Where blobs were seen, for cross-repository mounts (src/registry/origins.ts); null: none; default $KILN_HOME. */
  origins?: OriginIndex | null;
  /**
   * A content-addressed store for image configs read from registries (e.g. the local store's blob dir): a config
   * found there (digest-verified) is not fetched again. Why: a warm build resolves its base every time (a moved tag
   * must be seen), and the config of an unchanged base is one round trip saved.
   */
  configCache?: Pick<BlobDir, 'has' | 'open' | 'write' | 'remove' | 'where'>;
}

/** What a request is for, to build one-line errors: `pull 127.0.0.1:5000/app:v1: manifest unknown (MANIFEST_UNKNOWN)`. */
export interface ErrorContext {
  /** e.g. `pull 127.0.0.1:5000/app:v1` */
  label: string;
  /** What a bare 404 means. */
  kind?: 'manifest' | 'blob' | 'upload' | 'tags' | 'other';
}

export interface RequestOptions {
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** Path below the endpoint (e.g. `/v2/app/manifests/v1`) or an absolute URL (upload locations). */
  path: string;
  headers?: Record<string, string>;
  /** Buffers/strings are replayable (retried); streams are sent once. */
  body?: Buffer | string | Readable;
  /** Token scopes this request needs. */
  scopes: string[];
  /** Statuses that count as success; anything else becomes a KilnError. */
  expect: number[];
  ctx: ErrorContext;
  /** Disable retries (uploads handle their own recovery). */
  noRetry?: boolean;
}

export interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
  /** The final URL (after redirects). */
  url: string;
}

const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);
const NET_RETRY_CODES = new Set([
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ECONNABORTED',
]);
const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);

/** Registry error codes from the distribution spec that become KilnError codes one to one. */
const SPEC_CODES = new Set([
  'BLOB_UNKNOWN',
  'BLOB_UPLOAD_INVALID',
  'BLOB_UPLOAD_UNKNOWN',
  'DIGEST_INVALID',
  'MANIFEST_BLOB_UNKNOWN',
  'MANIFEST_INVALID',
  'MANIFEST_UNKNOWN',
  'MANIFEST_UNVERIFIED',
  'NAME_INVALID',
  'NAME_UNKNOWN',
  'SIZE_INVALID',
  'TAG_INVALID',
  'UNAUTHORIZED',
  'DENIED',
  'UNSUPPORTED',
  'TOOMANYREQUESTS',
  'UNAVAILABLE',
  'RANGE_INVALID',
  'PAGINATION_NUMBER_INVALID',
]);

/** Network error code of an undici/node error (looks through `cause`). */
export function netErrorCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let i = 0; i < 4 && cur && typeof cur === 'object'; i++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string' && code !== 'UND_ERR') return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

function isTlsVerifyError(e: unknown): boolean {
  const c = netErrorCode(e);
  return c !== undefined && TLS_VERIFY_CODES.has(c);
}

/** True for 127.0.0.0/8, ::1 and localhost (with or without a port). */
export function isLoopbackHost(hostport: string): boolean {
  const h = hostOnly(hostport).toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

function hostOnly(hostport: string): string {
  if (hostport.startsWith('[')) return hostport.slice(1, hostport.indexOf(']'));
  const i = hostport.lastIndexOf(':');
  return i > 0 && hostport.indexOf(':') === i ? hostport.slice(0, i) : hostport;
}

export function debugLog(msg: string): void {
  if (process.env.KILN_DEBUG === '1') {
    process.stderr.write(`kiln: debug: ${redact(msg)} (at ${debugNow()} ms)\n`);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Parse Retry-After (seconds or an HTTP date) into milliseconds. */
export function retryAfterMs(v: string | string[] | undefined, now = Date.now()): number | undefined {
  const s = Array.isArray(v) ? v[0] : v;
  if (!s) return undefined;
  if (/^\s*\d+\s*$/.test(s)) return parseInt(s, 10) * 1000;
  const t = Date.parse(s);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

function header(h: Response['headers'], name: string): string | undefined {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

export { header as getHeader };

/** Build the KilnError for a failed response (reads the error body, bounded). */
export async function responseError(res: Response, ctx: ErrorContext): Promise<KilnError> {
  let text = '';
  try {
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of res.body as AsyncIterable<Buffer>) {
      if (n < 65536) chunks.push(c);
      n += c.length;
    }
    text = Buffer.concat(chunks).toString('utf8');
  } catch {
    /* ignore */
  }
  return statusError(res.status, text, ctx, res.headers);
}

export function statusError(
  status: number,
  text: string,
  ctx: ErrorContext,
  headers: Response['headers'] = {},
): KilnError {
  let code: string | undefined;
  let message: string | undefined;
  try {
    const j = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
    const first = j.errors?.[0];
    if (first?.code) {
      code = first.code;
      message = first.message;
    }
  } catch {
    /* not JSON */
  }
  if (!code) {
    if (status === 401) code = 'UNAUTHORIZED';
    else if (status === 403) code = 'DENIED';
    else if (status === 404) {
      code =
        ctx.kind === 'manifest'
          ? 'MANIFEST_UNKNOWN'
          : ctx.kind === 'blob'
            ? 'BLOB_UNKNOWN'
            : ctx.kind === 'upload'
              ? 'BLOB_UPLOAD_UNKNOWN'
              : 'NAME_UNKNOWN';
    } else if (status === 429) code = 'TOOMANYREQUESTS';
    else if (status === 416) code = 'RANGE_INVALID';
    else if (status >= 500) code = 'UNAVAILABLE';
    else code = 'UNKNOWN';
  }
  if (!message) message = defaultMessage(code, status);
  const kcode = SPEC_CODES.has(code) ? code : 'REGISTRY_ERROR';
  let hint: string | undefined;
  if (kcode === 'UNAUTHORIZED') hint = 'log in with `kiln login REGISTRY` or check the credentials';
  else if (kcode === 'DENIED') hint = 'the credentials lack permission for this repository';
  else if (kcode === 'TOOMANYREQUESTS') {
    const ra = retryAfterMs(headers['retry-after']);
    hint = ra !== undefined ? `rate limited; retry after ${Math.ceil(ra / 1000)}s` : 'rate limited; retry later';
  }
  const shown = `${message.toLowerCase().replace(/\s+/g, ' ').trim()} (${code})`;
  return new KilnError(kcode, `${ctx.label}: ${redact(shown)}`, hint === undefined ? {} : { hint });
}

function defaultMessage(code: string, status: number): string {
  switch (code) {
    case 'UNAUTHORIZED':
      return 'authentication required';
    case 'DENIED':
      return 'requested access to the resource is denied';
    case 'MANIFEST_UNKNOWN':
      return 'manifest unknown';
    case 'BLOB_UNKNOWN':
      return 'blob unknown to registry';
    case 'BLOB_UPLOAD_UNKNOWN':
      return 'blob upload unknown to registry';
    case 'NAME_UNKNOWN':
      return 'repository name not known to registry';
    case 'TOOMANYREQUESTS':
      return 'too many requests';
    case 'UNAVAILABLE':
      return `service unavailable (HTTP ${status})`;
    default:
      return `unexpected HTTP status ${status}`;
  }
}

/** What a transport's ping of an insecure host found: plain HTTP (and its `/v2/` challenge, when), or not. */
interface ProbeOutcome {
  http: boolean;
  challenge?: Challenge | undefined;
  /** When (Date.now()). */
  at: number;
}

/**
 * Scheme probes of this process by host (see ProbeOutcome and rememberedHttp). Why: a build's base image and its
 * registry cache are usually on one host, each with its own transport; the second one used to repeat the failing
 * HTTPS attempt and then ping again — two round trips before the cache import's first request.
 */
const probesInProcess = new Map<string, Promise<ProbeOutcome>>();

/** Forget this process's scheme probes (tests: what a new process knows). */
export function forgetSchemeProbes(): void {
  probesInProcess.clear();
}

/** How long another transport's plain-HTTP ping stands for this one's (ms). */
const SHARED_PING_MS = 60_000;

/** An HTTP endpoint of a registry (a host, or a mirror URL). Shared by all repositories on it. */
export class Transport {
  /** `https://host` or `http://host` once decided. */
  private base: string | undefined;
  private pinged: Promise<void> | undefined;
  private challenge: Challenge | undefined;
  private tokens: TokenAuthenticator | undefined;
  private credential: Credential | undefined;
  private connectedOnce = false;
  private dispatcher: Agent | undefined;
  private insecureDispatcher: Agent | undefined;
  private readonly caFiles: string[];
  private secure: SecureContext | undefined;
  private readonly insecure: boolean;
  private readonly allowInsecure: boolean;
  private useInsecureTls = false;
  private readonly explicitScheme: string | undefined;

  /**
   * @param registry the registry name credentials are looked up under (e.g. `docker.io`)
   * @param endpoint host[:port] or a URL with scheme (mirrors)
   */
  constructor(
    readonly registry: string,
    readonly endpoint: string,
    private readonly opts: RegistryOptions = {},
  ) {
    const m = /^(https?):\/\/([^/]+)/i.exec(endpoint);
    this.explicitScheme = m ? m[1]!.toLowerCase() : undefined;
    this.host = m ? m[2]! : endpoint;
    const insecure = (opts.insecureRegistries ?? []).some(
      (h) => h === this.host || h === hostOnly(this.host) || h === registry,
    );
    this.allowInsecure = insecure || isLoopbackHost(this.host);
    this.insecure = insecure;
    this.caFiles = (opts.caFiles ?? []).map((f) => readCa(f));
  }

  readonly host: string;

  /**
   * Close the connections (in-flight requests finish first). Safe at any time: a later request opens new
   * connections, and the challenge and tokens are kept.
   */
  async close(): Promise<void> {
    const d = [this.dispatcher, this.insecureDispatcher];
    this.dispatcher = undefined;
    this.insecureDispatcher = undefined;
    await Promise.all(d.map((a) => a?.close()));
  }

  private agent(): Agent {
    if (this.useInsecureTls && this.insecure) {
      this.insecureDispatcher ??= new Agent({ connect: { rejectUnauthorized: false }, keepAliveTimeout: 4000 });
      return this.insecureDispatcher;
    }
    // One TLS context per transport: given `ca`, tls.connect parses every root certificate again for each connection
    // (~30 ms each, 170 ms in a loaded build pod's first ping). Without --registry-ca Node's default store is shared.
    this.secure ??= createSecureContext(this.caFiles.length ? { ca: [...rootCertificates, ...this.caFiles] } : {});
    this.dispatcher ??= new Agent({
      connect: { secureContext: this.secure },
      keepAliveTimeout: 4000,
      pipelining: 1,
    });
    return this.dispatcher;
  }

  private unreachable(ctx: ErrorContext, e: unknown): KilnError {
    const code = netErrorCode(e) ?? (e instanceof Error ? e.message : 'error');
    return new KilnError('REGISTRY_UNREACHABLE', `${ctx.label}: registry ${this.host} is unreachable (${code})`, {
      hint: 'check the registry address and that it is running',
      cause: e,
    });
  }

  /** Decide the scheme and read the `/v2/` challenge (once). */
  ping(ctx: ErrorContext): Promise<void> {
    if (!this.pinged) {
      this.pinged = this.doPing(ctx);
      this.pinged.catch(() => {
        this.pinged = undefined;
      });
    }
    return this.pinged;
  }

  private async doPing(ctx: ErrorContext): Promise<void> {
    const schemes = this.explicitScheme ? [this.explicitScheme] : this.allowInsecure ? ['https', 'http'] : ['https'];
    const probing = schemes.length > 1;
    // another transport of this process to the same host (the base image's and the cache's) probing now or before:
    // its outcome, not a second failing HTTPS attempt (in an ephemeral KILN_HOME nothing is remembered on disk)
    if (!probing) return this.probeSchemes(ctx, schemes, false, false, () => undefined);
    const earlier = probesInProcess.get(this.host);
    let settle!: (o: ProbeOutcome) => void;
    // the newest probe is what the next transport waits for (an outcome that changed replaces the older one)
    probesInProcess.set(this.host, new Promise<ProbeOutcome>((r) => (settle = r)));
    const decided = (http: boolean): void => settle({ http, challenge: this.challenge, at: Date.now() });
    try {
      const prior = earlier ? await earlier : undefined;
      if (prior?.http && Date.now() - prior.at < SHARED_PING_MS) {
        // the same host answered plain HTTP just now: its answer (scheme and challenge) stands for this transport's
        this.base = `http://${this.host}`;
        this.challenge = prior.challenge;
        this.connectedOnce = true;
        debugLog(`ping http://${this.host}/v2/: shared (${this.challenge?.scheme ?? 'no auth'})`);
        settle(prior);
        return;
      }
      await this.probeSchemes(ctx, schemes, true, prior ? prior.http : rememberedHttp(this.host), decided);
    } finally {
      settle({ http: false, at: Date.now() }); // failed: the next transport probes in full
    }
  }

  /** doPing's probe: `httpFirst` tries plain HTTP first; `decided` hears whether plain HTTP was the answer. */
  private async probeSchemes(
    ctx: ErrorContext,
    schemes: string[],
    probing: boolean,
    httpFirst: boolean,
    decided: (http: boolean) => void,
  ): Promise<void> {
    if (probing && httpFirst) {
      // plain HTTP last time (src/registry/schemes.ts): try that first, else probe as usual
      try {
        await this.pingAt('http', ctx, true);
        decided(true);
        return;
      } catch (e) {
        debugLog(`ping http://${this.host}/v2/ (remembered) failed: ${netErrorCode(e) ?? String(e)}`);
        this.base = undefined;
        this.challenge = undefined;
        await rememberHttp(this.host, false);
      }
    }
    let lastErr: unknown;
    // the HTTPS probe hit a server speaking plain HTTP on that port (not a timeout or a reset)
    let plainOnPort = false;
    for (const [i, scheme] of schemes.entries()) {
      const url = `${scheme}://${this.host}/v2/`;
      // An HTTPS probe that has a plain-HTTP fallback is not retried: failing fast is the point.
      const probe = i < schemes.length - 1 && schemes[i + 1] !== scheme;
      try {
        await this.pingAt(scheme, ctx, probe);
        decided(scheme === 'http' && plainOnPort);
        if (probing) await rememberHttp(this.host, scheme === 'http' && plainOnPort);
        return;
      } catch (e) {
        if (scheme === 'https' && netErrorCode(e) === 'ERR_SSL_WRONG_VERSION_NUMBER') plainOnPort = true;
        if (e instanceof KilnError) throw e;
        if (isTlsVerifyError(e)) {
          if (this.insecure && !this.useInsecureTls) {
            this.useInsecureTls = true;
            schemes.splice(schemes.indexOf(scheme) + 1, 0, scheme);
            continue;
          }
          throw new KilnError(
            'TLS_VERIFY_FAILED',
            `${ctx.label}: TLS certificate of ${this.host} not trusted (${netErrorCode(e)})`,
            { hint: `pass --registry-ca FILE, or --insecure-registry ${this.host} to skip verification`, cause: e },
          );
        }
        lastErr = e;
        debugLog(`ping ${url} failed: ${netErrorCode(e) ?? String(e)}`);
      }
    }
    throw this.unreachable(ctx, lastErr);
  }

  /** GET `/v2/` over `scheme`: on an answer (200, or 401 with its challenge) that scheme is the registry's. */
  private async pingAt(scheme: string, ctx: ErrorContext, probe: boolean): Promise<void> {
    const url = `${scheme}://${this.host}/v2/`;
    const res = await this.rawWithRetry('GET', url, {}, undefined, ctx, !probe);
    this.base = `${scheme}://${this.host}`;
    this.connectedOnce = true;
    const body = await res.body.text().catch(() => '');
    if (res.status === 401) {
      const hdr = res.headers['www-authenticate'];
      const all = (Array.isArray(hdr) ? hdr : hdr ? [hdr] : []).flatMap((h) => parseWWWAuthenticate(h));
      this.challenge = all.find((c) => c.scheme === 'bearer') ?? all.find((c) => c.scheme === 'basic');
    } else if (res.status !== 200) {
      throw statusError(res.status, body, { ...ctx, kind: 'other' });
    }
    debugLog(`ping ${url}: ${res.status} ${this.challenge?.scheme ?? 'no auth'}`);
  }

  private async credentials(): Promise<Credential | undefined> {
    if (this.credential === undefined && this.opts.credentials) {
      this.credential = (await this.opts.credentials(this.registry)) ?? {};
    }
    return this.credential && Object.keys(this.credential).length ? this.credential : undefined;
  }

  /** True when the registry asked for credentials and we had some to give. */
  async hasCredentials(): Promise<boolean> {
    return (await this.credentials()) !== undefined;
  }

  private async authorization(scopes: string[], refresh: boolean): Promise<string | undefined> {
    const ch = this.challenge;
    if (!ch) return undefined;
    const cred = await this.credentials();
    if (ch.scheme === 'basic') return cred ? basicAuthorization(cred) : undefined;
    if (ch.scheme === 'bearer') {
      if (!this.tokens) {
        this.tokens = new TokenAuthenticator(ch, cred, (url, init) => this.tokenFetch(url, init));
      }
      return 'Bearer ' + (await this.tokens.token(scopes, refresh));
    }
    return undefined;
  }

  private async tokenFetch(
    url: string,
    init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string },
  ): Promise<{ status: number; body: Buffer }> {
    const ctx = { label: `token ${safeUrlHost(url)}`, kind: 'other' as const };
    const res = await this.rawWithRetry(init.method, url, init.headers, init.body, ctx, false);
    const body = Buffer.from(await res.body.arrayBuffer());
    return { status: res.status, body };
  }

  /** One registry request with auth, retries and error mapping. The caller consumes `body`. */
  async request(o: RequestOptions): Promise<Response> {
    await this.ping(o.ctx);
    const base = this.base!;
    let url = /^https?:\/\//i.test(o.path) ? o.path : base + o.path;
    // Relative upload locations are resolved against the endpoint.
    if (url.startsWith('/')) url = base + url;
    let refreshed = false;
    let adopted = false;
    let scopes = o.scopes;
    let refreshNow = false;
    for (;;) {
      const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'kiln/0.1', ...o.headers };
      const auth = await this.authorization(scopes, refreshed && refreshNow);
      if (auth) headers['authorization'] = auth;
      const replayable = !(o.body && typeof o.body === 'object' && !Buffer.isBuffer(o.body));
      let res = await this.rawWithRetry(
        o.method,
        url,
        headers,
        o.body,
        o.ctx,
        o.noRetry === true || !replayable ? false : true,
      );
      // Follow redirects for reads (blob storage backends); drop Authorization on another host.
      let hops = 0;
      while ([301, 302, 303, 307, 308].includes(res.status) && (o.method === 'GET' || o.method === 'HEAD')) {
        const loc = header(res.headers, 'location');
        await res.body.dump().catch(() => undefined);
        if (!loc || ++hops > 5) throw new KilnError('REGISTRY_ERROR', `${o.ctx.label}: too many redirects`);
        const next = new URL(loc, res.url).toString();
        const h = { ...headers };
        if (new URL(next).host !== new URL(res.url).host) delete h['authorization'];
        res = await this.rawWithRetry(o.method, next, h, undefined, o.ctx, true);
      }
      if (res.status === 401 && !this.challenge && !adopted && replayable) {
        // /v2/ was open but this repository wants authentication: adopt its challenge and try again.
        const hdr = res.headers['www-authenticate'];
        const all = (Array.isArray(hdr) ? hdr : hdr ? [hdr] : []).flatMap((x) => parseWWWAuthenticate(x));
        const ch = all.find((c) => c.scheme === 'bearer') ?? all.find((c) => c.scheme === 'basic');
        if (ch) {
          await res.body.dump().catch(() => undefined);
          adopted = true;
          this.challenge = ch;
          continue;
        }
      }
      if (res.status === 401 && !refreshed && this.challenge?.scheme === 'bearer') {
        // Token expired or lacks scope: merge the challenge's scope and fetch a fresh token once.
        const hdr = res.headers['www-authenticate'];
        const ch = (Array.isArray(hdr) ? hdr : hdr ? [hdr] : [])
          .flatMap((x) => parseWWWAuthenticate(x))
          .find((c) => c.scheme === 'bearer');
        await res.body.dump().catch(() => undefined);
        refreshed = true;
        const extra = ch?.params['scope'] ? ch.params['scope'].split(' ') : [];
        if (!replayable) throw statusError(401, '', o.ctx);
        scopes = mergeScopes([...o.scopes, ...extra]);
        refreshNow = true;
        continue;
      }
      if (o.expect.includes(res.status)) return res;
      if (res.status === 401 && this.challenge && (await this.credentials())) {
        // Authenticated but still refused: the token lacks the scope (e.g. push without permission).
        const err = await responseError(res, o.ctx);
        if (this.challenge.scheme === 'bearer') {
          return Promise.reject(
            new KilnError('DENIED', `${o.ctx.label}: requested access to the resource is denied (DENIED)`, {
              hint: 'the credentials lack permission for this repository',
              cause: err,
            }),
          );
        }
        throw err;
      }
      throw await responseError(res, o.ctx);
    }
  }

  /** Raw request with retries on retryable statuses and network errors. */
  private async rawWithRetry(
    method: string,
    url: string,
    headers: Record<string, string>,
    body: Buffer | string | Readable | undefined,
    ctx: ErrorContext,
    retry: boolean,
  ): Promise<Response> {
    const max = retry ? (this.opts.maxRetries ?? 5) : 0;
    const baseMs = this.opts.retryBaseMs ?? 200;
    const cap = this.opts.maxRetryDelayMs ?? 20000;
    for (let attempt = 0; ; attempt++) {
      let res: Response | undefined;
      let err: unknown;
      try {
        const r = await request(url, {
          method: method as Dispatcher.HttpMethod,
          headers,
          body: body as Dispatcher.DispatchOptions['body'],
          dispatcher: this.agent(),
          headersTimeout: 120_000,
          bodyTimeout: 300_000,
        });
        res = { status: r.statusCode, headers: r.headers, body: r.body, url };
        this.connectedOnce = true;
      } catch (e) {
        err = e;
      }
      debugLog(`${method} ${url} -> ${res ? res.status : (netErrorCode(err) ?? String(err))}`);
      const code = err ? netErrorCode(err) : undefined;
      const retryableNet =
        err !== undefined &&
        code !== undefined &&
        (NET_RETRY_CODES.has(code) || (code === 'ECONNREFUSED' && this.connectedOnce));
      const retryableStatus = res !== undefined && RETRY_STATUS.has(res.status);
      if (attempt < max && (retryableNet || retryableStatus)) {
        let delay = Math.min(cap, baseMs * 2 ** attempt);
        if (res) {
          const ra = retryAfterMs(res.headers['retry-after']);
          if (ra !== undefined) delay = Math.min(cap, ra);
          await res.body.dump().catch(() => undefined);
        }
        debugLog(`retrying ${method} ${url} in ${delay}ms (attempt ${attempt + 1}/${max})`);
        await sleep(delay);
        continue;
      }
      if (res) return res;
      if (err instanceof KilnError) throw err;
      if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH' || code === 'EAI_AGAIN') {
        throw this.unreachable(ctx, err);
      }
      if (isTlsVerifyError(err)) throw err;
      if (!this.base) throw err; // during ping: let the scheme fallback decide
      throw new KilnError(
        'REGISTRY_UNREACHABLE',
        `${ctx.label}: connection to ${this.host} failed (${code ?? (err instanceof Error ? redact(err.message) : 'error')})`,
        { cause: err },
      );
    }
  }
}

function safeUrlHost(u: string): string {
  try {
    return new URL(u).host;
  } catch {
    return '?';
  }
}

function readCa(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new KilnError('REGISTRY_CA_UNREADABLE', `--registry-ca ${file}: cannot read file`, { cause: e });
  }
}

/** Transports are shared per (endpoint) within one options "session" so connections, challenges and tokens are reused. */
export type TransportPool = Map<string, Transport>;

/**
 * The transport pool of an options object, created on first use. It lives on the object itself (`pool`) so copies
 * made with `{ ...opts, label }` share it — call this before copying, or use `withLabel`.
 */
export function transportPool(opts: RegistryOptions): TransportPool {
  if (opts.pool) return opts.pool;
  // Copies made before a pool existed still share the credentials function: pool by it (or globally).
  const key: object = opts.credentials ?? GLOBAL_POOL_KEY;
  let p = poolsByKey.get(key);
  if (!p) {
    p = new Map();
    poolsByKey.set(key, p);
  }
  opts.pool = p;
  return p;
}

const GLOBAL_POOL_KEY = {};
const poolsByKey = new WeakMap<object, TransportPool>();

/** A copy of `opts` with another error label, sharing its transport pool. */
export function withLabel<T extends RegistryOptions>(opts: T, label: string): T & { label: string } {
  transportPool(opts);
  return { ...opts, label };
}

export function transportFor(registry: string, endpoint: string, opts: RegistryOptions): Transport {
  const m = transportPool(opts);
  // Pools may be shared by option sets that differ in transport settings: those are part of the key.
  const settings = [
    opts.insecureRegistries ?? [],
    opts.caFiles ?? [],
    opts.maxRetries,
    opts.retryBaseMs,
    opts.maxRetryDelayMs,
    opts.userAgent,
  ];
  const key = `${registry} ${endpoint} ${JSON.stringify(settings)}`;
  let t = m.get(key);
  if (!t) {
    t = new Transport(registry, endpoint, opts);
    m.set(key, t);
  }
  return t;
}

/** Close every transport created for these options (and their copies); lets the process exit promptly. */
export async function closeTransports(opts: RegistryOptions): Promise<void> {
  const all = [...transportPool(opts).values()];
  await Promise.all(all.map((t) => t.close()));
}
