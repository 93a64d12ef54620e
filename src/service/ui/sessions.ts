/**
 * Sign-in sessions of the web UI: a browser trades an API token for an `HttpOnly; SameSite=Strict` cookie once,
 * and the cookie then stands for that token on every request (the API's auth hook asks {@link UiSessions.fromCookie}).
 *
 * Why server-side sessions (table `ui_sessions`, migration 5) rather than a signed cookie: signing out really ends
 * a session, revoking a token ends every session made with it at once (the lookup joins `tokens`), and nothing a
 * browser holds is worth more than the session itself — the cookie is 32 random bytes, the database keeps only its
 * SHA-256, and the token is never stored nor sent back.
 *
 * CSRF: SameSite=Strict keeps the cookie off cross-site requests; on top of that every mutation made with the
 * cookie must carry `X-Kiln-CSRF` with the session's CSRF value (derived from the cookie with a one-way hash, so it
 * needs no storage and reveals nothing of the cookie). The UI reads it from `GET /ui/session`, which another origin
 * cannot read (no CORS).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Principal } from '../core.js';
import type { Role } from '../model.js';
import { openDatabase, type Db } from '../store/db.js';

/** Cookie name (the `__Host-` prefix would forbid plain-HTTP loopback use, which `kiln serve` defaults to). */
export const SESSION_COOKIE = 'kiln_session';
/** Request header that must carry the session's CSRF value on cookie-authenticated mutations. */
export const CSRF_HEADER = 'x-kiln-csrf';
/** Default session lifetime: a working day; never longer than the token's own expiry. */
export const SESSION_TTL_MS = 12 * 3600_000;

const TOKEN_PREFIX = 'kiln_';

/** A valid session as the API sees it. */
export interface CookieSession {
  principal: Principal;
  /** The value mutations must send in `X-Kiln-CSRF`. */
  csrf: string;
  expiresAt: string;
}

interface TokenRow {
  id: string;
  name: string;
  role: Role;
  revoked: number;
  expires_at: string | null;
}

interface SessionRow extends TokenRow {
  expires: string;
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

/** The CSRF value of a session cookie: one-way, so the page may hold it without holding the cookie. */
export function csrfOf(cookie: string): string {
  return sha256(`kiln-csrf\0${cookie}`).toString('base64url');
}

/** Equal strings, compared in constant time. */
export function sameValue(a: string, b: string): boolean {
  const x = sha256(a);
  const y = sha256(b);
  return timingSafeEqual(x, y);
}

/** The value of cookie `name` in a `Cookie` header (the first one; RFC 6265 syntax, no decoding needed). */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

export interface UiSessionOptions {
  /** Session lifetime (default {@link SESSION_TTL_MS}). */
  ttlMs?: number;
  /** Clock (tests). */
  now?: () => Date;
}

/** Sessions in the service database (its own connection, like the delivery room's). */
export class UiSessions {
  private readonly ttlMs: number;
  private readonly now: () => Date;

  private constructor(
    private readonly db: Db,
    opts: UiSessionOptions,
  ) {
    this.ttlMs = opts.ttlMs ?? SESSION_TTL_MS;
    this.now = opts.now ?? (() => new Date());
  }

  /** Open the service database (`<data dir>/kiln.db`; migrations run as for the store). */
  static open(file: string, opts: UiSessionOptions = {}): UiSessions {
    return new UiSessions(openDatabase(file), opts);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** A token row that is usable now (known, not revoked, not expired). */
  private usable<T extends TokenRow>(row: T | undefined, now: Date): row is T {
    if (!row || row.revoked) return false;
    return row.expires_at === null || Date.parse(row.expires_at) > now.getTime();
  }

  /**
   * Sign in with an API token: a new session, or undefined when the token is not valid now. Returns the cookie
   * value to set (shown to nobody else) and the session. Expired sessions are swept on the way.
   */
  create(token: string): { cookie: string; session: CookieSession } | undefined {
    const now = this.now();
    if (!token.startsWith(TOKEN_PREFIX) || token.length > 200) return undefined;
    const row = this.db
      .prepare('SELECT id, name, role, revoked, expires_at FROM tokens WHERE hash = ?')
      .get(sha256(token).toString('hex')) as TokenRow | undefined;
    if (!this.usable(row, now)) return undefined;
    let expires = now.getTime() + this.ttlMs;
    if (row.expires_at !== null) expires = Math.min(expires, Date.parse(row.expires_at));
    const cookie = randomBytes(32).toString('base64url');
    const expiresAt = new Date(expires).toISOString();
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM ui_sessions WHERE expires_at <= ?').run(now.toISOString());
      this.db
        .prepare('INSERT INTO ui_sessions (hash, token_id, created_at, expires_at) VALUES (?, ?, ?, ?)')
        .run(sha256(cookie).toString('hex'), row.id, now.toISOString(), expiresAt);
    })();
    return { cookie, session: { principal: { name: row.name, role: row.role }, csrf: csrfOf(cookie), expiresAt } };
  }

  /** The session of a `Cookie` header, if it names one that is valid now (its token too). */
  fromCookie(header: string | undefined): CookieSession | undefined {
    const cookie = readCookie(header, SESSION_COOKIE);
    if (!cookie || cookie.length > 100) return undefined;
    const now = this.now();
    const row = this.db
      .prepare(
        `SELECT t.id, t.name, t.role, t.revoked, t.expires_at, s.expires_at AS expires
         FROM ui_sessions s JOIN tokens t ON t.id = s.token_id WHERE s.hash = ?`,
      )
      .get(sha256(cookie).toString('hex')) as SessionRow | undefined;
    if (!this.usable(row, now) || Date.parse(row.expires) <= now.getTime()) return undefined;
    return { principal: { name: row.name, role: row.role }, csrf: csrfOf(cookie), expiresAt: row.expires };
  }

  /** Sign out: the session of this `Cookie` header ends (false when there was none). */
  destroy(header: string | undefined): boolean {
    const cookie = readCookie(header, SESSION_COOKIE);
    if (!cookie) return false;
    return this.db.prepare('DELETE FROM ui_sessions WHERE hash = ?').run(sha256(cookie).toString('hex')).changes > 0;
  }
}
