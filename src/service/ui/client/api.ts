/**
 * The UI's calls to the API (same origin; the session cookie authenticates them). Every mutation sends the
 * session's CSRF value in `X-Kiln-CSRF`. A 401 means the session ended: back to the sign-in page, returning here
 * afterwards. A network error or a 502/503/504 means the service is down or restarting: the banner shows (see
 * `connection`), and loaders retry with backoff (see hooks.ts).
 */

/** Who is signed in (GET /ui/session). */
export interface Session {
  name: string;
  role: 'admin' | 'viewer';
  csrf: string | null;
  expiresAt: string | null;
}

/** An error answer of the API (`{"error": {code, message, hint}}`). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** The service could not be reached (or answered as a proxy does when it is down). */
export class ApiDown extends Error {}

type Listener = (down: boolean) => void;

/** Whether the service is reachable, for the banner: set by every call's outcome. */
export const connection = {
  down: false,
  listeners: new Set<Listener>(),
  set(down: boolean): void {
    if (down === this.down) return;
    this.down = down;
    for (const l of this.listeners) l(down);
  },
};

let session: Session | undefined;

export function currentSession(): Session | undefined {
  return session;
}

/** Back to the sign-in page, then here again. */
export function toSignIn(): never {
  location.assign(`/?next=${encodeURIComponent(location.pathname + location.search)}`);
  throw new ApiDown('signing in again');
}

export async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const method = init.method ?? 'GET';
  const headers: Record<string, string> = { accept: 'application/json' };
  if (method !== 'GET' && session?.csrf) headers['x-kiln-csrf'] = session.csrf;
  let body: string | undefined;
  if (init.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(init.body);
  }
  let res: Response;
  try {
    res = await fetch(path, { method, headers, body: body ?? null, credentials: 'same-origin', cache: 'no-store' });
  } catch {
    connection.set(true);
    throw new ApiDown('the kiln service cannot be reached');
  }
  if (res.status === 502 || res.status === 503 || res.status === 504) {
    connection.set(true);
    throw new ApiDown(`the kiln service answered ${res.status}`);
  }
  connection.set(false);
  if (res.status === 401) toSignIn();
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!res.ok) {
    const e = (parsed as { error?: { code?: string; message?: string; hint?: string } } | undefined)?.error;
    throw new ApiError(res.status, e?.code ?? 'HTTP_' + res.status, e?.message ?? res.statusText, e?.hint);
  }
  return parsed as T;
}

/** Load the session (once at start-up; a 401 goes to the sign-in page). */
export async function loadSession(): Promise<Session> {
  session = await api<Session>('/ui/session');
  return session;
}

export async function signOut(): Promise<void> {
  await fetch('/ui/logout', {
    method: 'POST',
    headers: session?.csrf ? { 'x-kiln-csrf': session.csrf } : {},
    credentials: 'same-origin',
  }).catch(() => undefined);
  location.assign('/');
}
