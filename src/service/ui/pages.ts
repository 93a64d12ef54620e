/**
 * The two HTML documents the server renders: the sign-in page (works without JavaScript: a plain form POST) and
 * the shell every UI page loads (the script renders the page). Both carry no inline script or style — the
 * Content-Security-Policy forbids them — and every value put into them is escaped.
 */
import type { UiAssets } from './assets.js';

/** Security headers of every UI document and JSON answer of the UI routes. */
export const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; '),
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'same-origin',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
};

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text or attribute value made safe for HTML. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESCAPES[c] as string);
}

function head(assets: UiAssets, title: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>${escapeHtml(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/assets/${escapeHtml(assets.css)}">`;
}

/** The sign-in page: one password field (Enter submits), the page to return to, an optional message. */
export function loginPage(assets: UiAssets, o: { next?: string; message?: string }): string {
  const next = o.next ? `\n<input type="hidden" name="next" value="${escapeHtml(o.next)}">` : '';
  const message = o.message ? `\n<p class="login-error" role="alert">${escapeHtml(o.message)}</p>` : '';
  return `${head(assets, 'Sign in · kiln')}
</head>
<body>
<main class="login">
<form method="post" action="/ui/login" class="login-form">
<h1 class="brand">kiln</h1>
<p>Sign in with an API token (<code>kiln serve token create --role viewer</code>).</p>${message}
<label for="token">Token</label>
<input id="token" type="password" name="token" autocomplete="current-password" required autofocus spellcheck="false">${next}
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
`;
}

/** The page shell: the script renders the page for the URL it finds. */
export function appShell(assets: UiAssets): string {
  return `${head(assets, 'kiln')}
<script type="module" src="/ui/assets/${escapeHtml(assets.js)}"></script>
</head>
<body>
<div id="app"><noscript>The kiln web UI needs JavaScript. The REST API and <code>kiln builds</code> work without it.</noscript></div>
</body>
</html>
`;
}
