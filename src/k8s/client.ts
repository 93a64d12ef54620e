/**
 * A small typed Kubernetes REST client on Node's http/https. Why not `@kubernetes/client-node`:
 * kiln needs a dozen calls (get/list/create/patch/delete, status writes, watch, pod logs); the official client
 * brings a generated API surface of thousands of types and its own HTTP stack for that, and its watch and log
 * helpers hide the resourceVersion handling the controller must control itself (re-attach after a restart).
 *
 * Errors: every refusal becomes one KilnError line that names the object and, for 403, the identity and the
 * missing permission exactly as the API server words it (`pods is forbidden: User "x" cannot create resource
 * "pods" in API group "" in the namespace "builds"`), with a hint. An unreachable server is `K8S_UNREACHABLE`.
 * The bearer token never appears in an error or a log.
 *
 * Configuration: in a pod, the service-account token and CA the kubelet mounts; elsewhere a kubeconfig
 * (`--kubeconfig`, $KUBECONFIG, ~/.kube/config) with token or client-certificate users.
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { createRequire } from 'node:module';
// Node's own http/https, not undici (kiln's registry transport): loading undici's Agent and request costs the
// controller ~12 MB of RSS, node:https ~4 MB (bench/k8s.ts: the controller's ≤ 100 MB target)
import * as http from 'node:http';
import * as https from 'node:https';
import { KilnError, errorMessage } from '../errors.js';

export interface KubeConfig {
  /** `https://host:port` */
  server: string;
  token?: string;
  /** PEM CA bundle for the server's certificate. */
  ca?: string;
  /** Client certificate auth (PEM). */
  cert?: string;
  key?: string;
  /** The namespace of the kubeconfig context or of the pod's service account. */
  namespace?: string;
  insecureSkipTlsVerify?: boolean;
}

/** The metadata fields kiln reads and writes. */
export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  ownerReferences?: OwnerReference[];
  deletionTimestamp?: string;
  creationTimestamp?: string;
  generateName?: string;
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

/** Any Kubernetes object (fields beyond metadata are the caller's to type). */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [field: string]: unknown;
}

export interface KubeList<T extends KubeObject = KubeObject> {
  metadata: { resourceVersion?: string; continue?: string };
  items: T[];
}

export type WatchEvent<T extends KubeObject = KubeObject> =
  | { type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK'; object: T }
  | { type: 'ERROR'; object: { code?: number; message?: string; reason?: string } };

/** What a path names, for error messages: `pods "x" in namespace "y"`. */
export interface ResourceRef {
  /** API path prefix: `/api/v1` or `/apis/group/version`. */
  api: string;
  /** Plural resource: `pods`, `imagebuildruns`. */
  resource: string;
  namespace?: string;
  name?: string;
  /** Subresource: `status`, `log`. */
  sub?: string;
}

export const CORE: Pick<ResourceRef, 'api'> = { api: '/api/v1' };

/** An answer: status code and the body as a stream. */
interface Response {
  statusCode: number;
  body: http.IncomingMessage;
}

/** The whole body of an answer as text. */
async function textOf(body: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export function pathOf(r: ResourceRef): string {
  let p = r.api;
  if (r.namespace !== undefined) p += `/namespaces/${encodeURIComponent(r.namespace)}`;
  p += `/${r.resource}`;
  if (r.name !== undefined) p += `/${encodeURIComponent(r.name)}`;
  if (r.sub) p += `/${r.sub}`;
  return p;
}

function describe(r: ResourceRef): string {
  const what = r.name !== undefined ? `${r.resource} "${r.name}"` : r.resource;
  return r.namespace !== undefined ? `${what} in namespace "${r.namespace}"` : what;
}

interface KubeStatus {
  kind?: string;
  message?: string;
  reason?: string;
  code?: number;
}

/** Read the kubeconfig's current context (token, CA, client certificate) or the in-cluster service account. */
export function loadKubeConfig(opts: { kubeconfig?: string; env?: NodeJS.ProcessEnv } = {}): KubeConfig {
  const env = opts.env ?? process.env;
  const saDir = '/var/run/secrets/kubernetes.io/serviceaccount';
  if (!opts.kubeconfig && !env.KUBECONFIG && env.KUBERNETES_SERVICE_HOST && existsSync(join(saDir, 'token'))) {
    const host = env.KUBERNETES_SERVICE_HOST;
    const port = env.KUBERNETES_SERVICE_PORT ?? '443';
    return {
      server: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
      token: readFileSync(join(saDir, 'token'), 'utf8').trim(),
      ca: readFileSync(join(saDir, 'ca.crt'), 'utf8'),
      namespace: readFileSync(join(saDir, 'namespace'), 'utf8').trim(),
    };
  }
  const file = opts.kubeconfig ?? env.KUBECONFIG?.split(':')[0] ?? join(homedir(), '.kube', 'config');
  let doc: unknown;
  try {
    // loaded only for a kubeconfig: in a pod (the service account above) the controller never pays for the parser
    const { parse } = createRequire(import.meta.url)('yaml') as typeof import('yaml');
    doc = parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new KilnError('K8S_CONFIG', `cannot read kubeconfig ${file}: ${errorMessage(e).split('\n')[0]}`, {
      hint: 'pass --kubeconfig FILE or set KUBECONFIG (inside a pod, kiln uses its service account)',
    });
  }
  type Named<T> = { name: string } & T;
  const kc = doc as {
    'current-context'?: string;
    contexts?: Named<{ context: { cluster: string; user: string; namespace?: string } }>[];
    clusters?: Named<{
      cluster: {
        server: string;
        'certificate-authority-data'?: string;
        'certificate-authority'?: string;
        'insecure-skip-tls-verify'?: boolean;
      };
    }>[];
    users?: Named<{
      user: {
        token?: string;
        tokenFile?: string;
        'client-certificate-data'?: string;
        'client-key-data'?: string;
        'client-certificate'?: string;
        'client-key'?: string;
      };
    }>[];
  } | null;
  const bad = (why: string): KilnError =>
    new KilnError('K8S_CONFIG', `kubeconfig ${file}: ${why}`, { hint: 'check it with kubectl config view' });
  const ctx = kc?.contexts?.find((c) => c.name === kc['current-context'])?.context;
  if (!ctx) throw bad(`no current context`);
  const cluster = kc?.clusters?.find((c) => c.name === ctx.cluster)?.cluster;
  if (!cluster?.server) throw bad(`context names cluster "${ctx.cluster}", which has no server`);
  const user = kc?.users?.find((u) => u.name === ctx.user)?.user ?? {};
  const rel = (p: string): string => (isAbsolute(p) ? p : join(dirname(file), p));
  const b64 = (s: string): string => Buffer.from(s, 'base64').toString('utf8');
  const cfg: KubeConfig = { server: cluster.server.replace(/\/+$/, '') };
  if (ctx.namespace) cfg.namespace = ctx.namespace;
  if (cluster['certificate-authority-data']) cfg.ca = b64(cluster['certificate-authority-data']);
  else if (cluster['certificate-authority']) cfg.ca = readFileSync(rel(cluster['certificate-authority']), 'utf8');
  if (cluster['insecure-skip-tls-verify']) cfg.insecureSkipTlsVerify = true;
  if (user.token) cfg.token = user.token;
  else if (user.tokenFile) cfg.token = readFileSync(rel(user.tokenFile), 'utf8').trim();
  if (user['client-certificate-data']) cfg.cert = b64(user['client-certificate-data']);
  else if (user['client-certificate']) cfg.cert = readFileSync(rel(user['client-certificate']), 'utf8');
  if (user['client-key-data']) cfg.key = b64(user['client-key-data']);
  else if (user['client-key']) cfg.key = readFileSync(rel(user['client-key']), 'utf8');
  return cfg;
}

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
}

/** A Kubernetes API client: JSON in, JSON out, one clear KilnError per refusal. */
export class KubeClient {
  private readonly agent: http.Agent;
  private readonly tls: boolean;
  /** Requests sent (watches and log streams included), for `kiln controller`'s exit line and the benchmark. */
  requests = 0;

  constructor(readonly config: KubeConfig) {
    const connect: https.AgentOptions = {};
    if (config.ca) connect.ca = config.ca;
    if (config.cert) connect.cert = config.cert;
    if (config.key) connect.key = config.key;
    if (config.insecureSkipTlsVerify) connect.rejectUnauthorized = false;
    this.tls = config.server.startsWith('https:');
    // 32 keep-alive connections: the controller's 24 concurrent writes (its WriteQueue), two watches and reads;
    // an idle one is closed after 30 s
    const o = { ...connect, keepAlive: true, maxSockets: 32, timeout: 30_000 };
    this.agent = this.tls ? new https.Agent(o) : new http.Agent(o);
  }

  /**
   * One HTTP request; resolves at the answer's headers. `timeoutMs`: no byte for that long (headers or body)
   * fails the request; `streaming`: once the headers are in, the body may wait forever (watches, log follows).
   */
  private send(
    method: string,
    url: string,
    o: {
      headers: Record<string, string>;
      body?: string;
      signal?: AbortSignal;
      timeoutMs: number;
      streaming?: boolean;
    },
  ): Promise<Response> {
    return new Promise((resolve, reject) => {
      const headers = { ...o.headers };
      if (o.body !== undefined) headers['content-length'] = String(Buffer.byteLength(o.body));
      const req = (this.tls ? https : http).request(url, {
        method,
        headers,
        agent: this.agent,
        timeout: o.timeoutMs,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      req.once('timeout', () =>
        req.destroy(Object.assign(new Error(`no answer for ${o.timeoutMs} ms`), { code: 'ETIMEDOUT' })),
      );
      req.once('error', reject);
      req.once('response', (res) => {
        if (o.streaming) req.setTimeout(0);
        resolve({ statusCode: res.statusCode ?? 0, body: res });
      });
      req.end(o.body);
    });
  }

  /** The namespace of the kubeconfig context or service account, else `default`. */
  get namespace(): string {
    return this.config.namespace ?? 'default';
  }

  private url(path: string, query?: RequestOptions['query']): string {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) q.set(k, String(v));
    const s = q.toString();
    return `${this.config.server}${path}${s ? `?${s}` : ''}`;
  }

  private headers(contentType?: string): Record<string, string> {
    const h: Record<string, string> = { accept: 'application/json' };
    if (this.config.token) h.authorization = `Bearer ${this.config.token}`;
    if (contentType) h['content-type'] = contentType;
    return h;
  }

  private unreachable(e: unknown): KilnError {
    const cause = e as { code?: string; cause?: { code?: string; message?: string } };
    const why = cause.cause?.code ?? cause.code ?? errorMessage(e).split('\n')[0];
    return new KilnError('K8S_UNREACHABLE', `cannot reach the Kubernetes API server at ${this.config.server}: ${why}`, {
      hint: 'check the kubeconfig (server, CA) or, in a pod, the network policy towards the API server',
      cause: e,
    });
  }

  /** A refusal as one line naming the object; 403 keeps the server's own words (identity and permission). */
  private refusal(verb: string, ref: ResourceRef, status: number, body: string): KilnError {
    let st: KubeStatus;
    try {
      st = JSON.parse(body) as KubeStatus;
    } catch {
      st = { message: body.slice(0, 300) };
    }
    const msg = (st.message ?? `HTTP ${status}`).split('\n')[0] ?? '';
    const what = describe(ref);
    switch (status) {
      case 401:
        return new KilnError(
          'K8S_UNAUTHORIZED',
          `Kubernetes API server refused the credentials (401) for ${verb} ${what}`,
          {
            hint: 'the token or client certificate is invalid or expired',
          },
        );
      case 403:
        return new KilnError('K8S_FORBIDDEN', `cannot ${verb} ${what}: ${msg}`, {
          hint: `grant the permission in a Role bound to the identity (kubectl auth can-i ${verb} ${ref.resource}${ref.sub ? `/${ref.sub}` : ''}${ref.namespace ? ` -n ${ref.namespace}` : ''})`,
        });
      case 404: {
        // a missing namespace is the usual reason a namespaced create fails with 404
        const nsMissing = /namespaces? "[^"]+" not found/.test(msg);
        return new KilnError(
          nsMissing ? 'K8S_NAMESPACE_NOT_FOUND' : 'K8S_NOT_FOUND',
          `cannot ${verb} ${what}: ${msg}`,
          {
            hint: nsMissing ? `create the namespace "${ref.namespace}" or configure another one` : 'check the name',
          },
        );
      }
      case 409:
        return new KilnError(
          st.reason === 'AlreadyExists' ? 'K8S_EXISTS' : 'K8S_CONFLICT',
          `cannot ${verb} ${what}: ${msg}`,
        );
      case 410:
        return new KilnError('K8S_GONE', `cannot ${verb} ${what}: ${msg}`);
      case 422:
      case 400:
        return new KilnError('K8S_INVALID', `cannot ${verb} ${what}: ${msg}`, {
          hint: 'the API server validated the object and refused it',
        });
      default:
        return new KilnError('K8S_FAILED', `cannot ${verb} ${what}: HTTP ${status}: ${msg}`);
    }
  }

  /** One request; resolves to the parsed JSON answer. */
  async call<T>(method: string, ref: ResourceRef, o: RequestOptions = {}): Promise<T> {
    const verb =
      (
        { GET: ref.name ? 'get' : 'list', POST: 'create', PUT: 'update', PATCH: 'patch', DELETE: 'delete' } as Record<
          string,
          string
        >
      )[method] ?? method.toLowerCase();
    let r: Response;
    let text: string;
    this.requests++;
    try {
      r = await this.send(method, this.url(pathOf(ref), o.query), {
        headers: this.headers(o.body !== undefined ? (o.contentType ?? 'application/json') : undefined),
        ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}),
        ...(o.signal ? { signal: o.signal } : {}),
        timeoutMs: 60_000,
      });
      text = await textOf(r.body);
    } catch (e) {
      if (o.signal?.aborted) throw e;
      throw this.unreachable(e);
    }
    if (r.statusCode >= 300) throw this.refusal(verb, ref, r.statusCode, text);
    return (text ? JSON.parse(text) : {}) as T;
  }

  get<T extends KubeObject>(ref: ResourceRef): Promise<T> {
    return this.call<T>('GET', ref);
  }

  /** The object, or undefined when it does not exist (other refusals throw). */
  async getOrUndefined<T extends KubeObject>(ref: ResourceRef): Promise<T | undefined> {
    try {
      return await this.get<T>(ref);
    } catch (e) {
      if (e instanceof KilnError && e.code === 'K8S_NOT_FOUND') return undefined;
      throw e;
    }
  }

  list<T extends KubeObject>(ref: ResourceRef, query?: RequestOptions['query']): Promise<KubeList<T>> {
    return this.call<KubeList<T>>('GET', ref, query ? { query } : {});
  }

  create<T extends KubeObject>(ref: ResourceRef, body: KubeObject): Promise<T> {
    return this.call<T>('POST', ref, { body });
  }

  replace<T extends KubeObject>(ref: ResourceRef, body: KubeObject): Promise<T> {
    return this.call<T>('PUT', ref, { body });
  }

  /** `merge` (RFC 7386, the default), `json` (RFC 6902) or `strategic` patch. */
  patch<T extends KubeObject>(
    ref: ResourceRef,
    body: unknown,
    type: 'merge' | 'json' | 'strategic' = 'merge',
  ): Promise<T> {
    const contentType = {
      merge: 'application/merge-patch+json',
      json: 'application/json-patch+json',
      strategic: 'application/strategic-merge-patch+json',
    }[type];
    return this.call<T>('PATCH', ref, { body, contentType });
  }

  /** Delete; a missing object is not an error (resolves false). */
  async delete(
    ref: ResourceRef,
    o: { gracePeriodSeconds?: number; propagation?: 'Background' | 'Foreground' } = {},
  ): Promise<boolean> {
    try {
      const body: Record<string, unknown> = { kind: 'DeleteOptions', apiVersion: 'v1' };
      if (o.gracePeriodSeconds !== undefined) body.gracePeriodSeconds = o.gracePeriodSeconds;
      if (o.propagation) body.propagationPolicy = o.propagation;
      await this.call('DELETE', ref, { body });
      return true;
    } catch (e) {
      if (e instanceof KilnError && e.code === 'K8S_NOT_FOUND') return false;
      throw e;
    }
  }

  /**
   * Watch a collection from `resourceVersion` until `signal` aborts or the server ends the stream (then it
   * resolves with the last resourceVersion seen, for the caller to watch again). A 410 Gone (too old a version)
   * throws K8S_GONE: list again.
   */
  async watch<T extends KubeObject>(
    ref: ResourceRef,
    resourceVersion: string | undefined,
    onEvent: (e: WatchEvent<T>) => void,
    signal: AbortSignal,
    query: Record<string, string | undefined> = {},
  ): Promise<string | undefined> {
    let r: Response;
    this.requests++;
    try {
      r = await this.send(
        'GET',
        this.url(pathOf(ref), {
          ...query,
          watch: 'true',
          allowWatchBookmarks: 'true',
          resourceVersion,
          timeoutSeconds: 300,
        }),
        { headers: this.headers(), signal, timeoutMs: 30_000, streaming: true },
      );
    } catch (e) {
      if (signal.aborted) return resourceVersion;
      throw this.unreachable(e);
    }
    if (r.statusCode >= 300) throw this.refusal('watch', ref, r.statusCode, await textOf(r.body));
    let rv = resourceVersion;
    let buf = '';
    try {
      for await (const chunk of r.body) {
        buf += (chunk as Buffer).toString('utf8');
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.trim()) continue;
          const ev = JSON.parse(line) as WatchEvent<T>;
          if (ev.type === 'ERROR') {
            if (ev.object.code === 410)
              throw new KilnError('K8S_GONE', `watch ${describe(ref)}: ${ev.object.message ?? 'gone'}`);
            throw new KilnError('K8S_FAILED', `watch ${describe(ref)}: ${ev.object.message ?? 'error'}`);
          }
          rv = ev.object.metadata.resourceVersion ?? rv;
          if (ev.type !== 'BOOKMARK') onEvent(ev);
        }
      }
    } catch (e) {
      if (signal.aborted) return rv;
      if (e instanceof KilnError) throw e;
      throw this.unreachable(e);
    }
    return rv;
  }

  /**
   * A pod's log as a stream of chunks (`follow` keeps it open until the container ends). The API server proxies
   * it from the node's kubelet.
   */
  async logs(
    namespace: string,
    pod: string,
    o: { follow?: boolean; container?: string; sinceTime?: string; signal?: AbortSignal } = {},
  ): Promise<AsyncIterable<Buffer>> {
    const ref: ResourceRef = { ...CORE, resource: 'pods', namespace, name: pod, sub: 'log' };
    let r: Response;
    try {
      r = await this.send(
        'GET',
        this.url(pathOf(ref), {
          follow: o.follow ? 'true' : undefined,
          container: o.container,
          sinceTime: o.sinceTime,
        }),
        {
          headers: { ...this.headers(), accept: '*/*' },
          timeoutMs: 300_000,
          streaming: true,
          ...(o.signal ? { signal: o.signal } : {}),
        },
      );
    } catch (e) {
      if (o.signal?.aborted) throw e;
      throw this.unreachable(e);
    }
    if (r.statusCode >= 300) throw this.refusal('get', ref, r.statusCode, await textOf(r.body));
    return r.body as AsyncIterable<Buffer>;
  }

  /** Ask the server what this identity may do (SelfSubjectAccessReview), as `kubectl auth can-i` does. */
  async canI(
    verb: string,
    resource: string,
    o: { namespace?: string; group?: string; subresource?: string } = {},
  ): Promise<boolean> {
    const r = await this.call<{ status?: { allowed?: boolean } }>(
      'POST',
      { api: '/apis/authorization.k8s.io/v1', resource: 'selfsubjectaccessreviews' },
      {
        body: {
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SelfSubjectAccessReview',
          spec: {
            resourceAttributes: {
              verb,
              resource,
              ...(o.group !== undefined ? { group: o.group } : {}),
              ...(o.namespace !== undefined ? { namespace: o.namespace } : {}),
              ...(o.subresource !== undefined ? { subresource: o.subresource } : {}),
            },
          },
        },
      },
    );
    return r.status?.allowed === true;
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }
}
