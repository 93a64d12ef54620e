/**
 * The web UI end to end in a real browser: Debian's headless Chromium driven by playwright-core (never a
 * downloaded browser), against `kiln serve` as a process with a real git server (`git http-backend`), Debian's
 * `docker-registry` and real builds. Builds are started by signed GitHub webhooks (`POST /hooks/github/{project}`)
 * and through the API. Screenshots of the main pages go to `.tmp/ui-screenshots/` (git-ignored) to be looked at.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BrowserContext, Page } from 'playwright-core';
import { launchChromium, type Chromium } from '../helpers/chromium.js';
import { request } from 'undici';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startGitServer, type GitServer } from '../helpers/git-server.js';
import { makeBusyboxImage } from '../helpers/images.js';
import { KILN_BIN, cleanup, makeKilnHome, startService, type ServiceProcess } from '../helpers/service.js';
import { push } from '../../src/registry/push.js';
import { closeTransports } from '../../src/registry/transport.js';
import type { Build } from '../../src/service/model.js';

const SHOTS = fileURLToPath(new URL('../../.tmp/ui-screenshots/', import.meta.url));
const HOOK_SECRET = 'ui-hook-secret-4f8Q';
const XSS_BRANCH = 'x<svg/onload=alert(1)>';
const XSS_MESSAGE = '<img src=x onerror=alert(2)> and <script>alert(3)</script>';
const ZERO = '0'.repeat(40);

/** Browser globals for the functions that run in the page (`evaluate`): this file is compiled without the DOM lib. */
interface PageElement {
  getBoundingClientRect(): { top: number; bottom: number };
  closest(selector: string): PageElement | null;
  textContent: string | null;
  getAttribute(name: string): string | null;
}
declare const document: {
  cookie: string;
  activeElement: PageElement | null;
  documentElement: { scrollWidth: number };
  querySelector(selector: string): PageElement | null;
  querySelectorAll(selector: string): { length: number };
};
declare const window: { innerWidth: number; innerHeight: number };

function kiln(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [KILN_BIN, ...args], { env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? 1 : 0, stdout, stderr }),
    );
  });
}

/** A browser of its own (fresh profile dir), with every dialog recorded: an XSS payload that ran would open one. */
async function browser(all: Chromium[]): Promise<{ ctx: BrowserContext; dialogs: string[] }> {
  const b = await launchChromium();
  all.push(b);
  const { ctx } = b;
  const dialogs: string[] = [];
  const watch = (p: Page): void => {
    p.on('dialog', (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
  };
  ctx.pages().forEach(watch);
  ctx.on('page', watch);
  return { ctx, dialogs };
}

async function page(ctx: BrowserContext): Promise<Page> {
  return ctx.pages()[0] ?? (await ctx.newPage());
}

async function signIn(p: Page, url: string, token: string): Promise<void> {
  await p.goto(url + '/');
  await p.locator('input[type=password][name=token]').fill(token);
  await p.locator('input[name=token]').press('Enter');
  await p.waitForURL(/\/projects$/);
  await p.locator('h1', { hasText: 'Projects' }).waitFor();
}

async function shot(p: Page, name: string): Promise<void> {
  await p.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

/** The line numbers of the log rows in the DOM whose text contains `text`. */
async function logHas(p: Page, text: string): Promise<boolean> {
  return (await p.locator('.log-line', { hasText: text }).count()) > 0;
}

describe('web UI (chromium, kiln serve, git http-backend, docker-registry)', () => {
  let reg: TestRegistry;
  let git: GitServer;
  let home: string;
  let svc: ServiceProcess;
  const browsers: Chromium[] = [];
  let admin: { ctx: BrowserContext; dialogs: string[] };
  let viewer: { ctx: BrowserContext; dialogs: string[] };
  let config = '';
  const registryOpts = { insecureRegistries: [] as string[] };

  const projectYaml = (name: string, extra = ''): string => `  - name: ${name}
    repository: ${git.repoUrl(name)}
    registry: ${reg.host}/${name}
    insecureRegistry: true
    branches: ["**"]
    runPolicy: Parallel
    concurrency: 2
${extra}    images:
      - name: app
        tags: ["{{branch}}"]
`;

  async function hook(project: string, body: string, id: string): Promise<{ status: number; text: string }> {
    const res = await request(`${svc.url}/hooks/github/${project}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-github-event': 'push',
        'x-github-delivery': id,
        'x-hub-signature-256': `sha256=${createHmac('sha256', HOOK_SECRET).update(body).digest('hex')}`,
      },
      body,
    });
    return { status: res.statusCode, text: await res.body.text() };
  }

  before(async () => {
    await mkdir(SHOTS, { recursive: true });
    reg = await startRegistry();
    git = await startGitServer();
    home = await makeKilnHome();
    const base = `${reg.host}/base/busybox:1`;
    registryOpts.insecureRegistries = [reg.host];
    await push(await makeBusyboxImage(), base, registryOpts);
    const from = `FROM ${base}\n`;
    await git.createRepo('live', {
      Dockerfile: from + 'RUN for i in $(seq 1 600); do echo "tick-$i"; sleep 0.05; done\n',
    });
    await git.createRepo('broken', {
      Dockerfile:
        from +
        "RUN echo preparing\nRUN printf '\\033[31mred alert\\033[0m and \\033[1;32mbold green\\033[0m\\n'; exit 3\n",
    });
    await git.createRepo('xss', { Dockerfile: from + 'RUN echo harmless\n' });
    await git.commit('xss', { 'README.md': 'hi\n' }, XSS_MESSAGE, XSS_BRANCH);
    config = `allowFileRepositories: false
concurrency: 3
insecureRegistries: ["${reg.host}"]
baseWatch: {intervalSeconds: 3600, concurrency: 1}
projects:
${projectYaml('live', '    webhooks: {github: {secretEnv: UI_HOOK_SECRET}}\n')}${projectYaml('broken')}${projectYaml('xss')}`;
    svc = await startService({ config, kilnHome: home, env: { UI_HOOK_SECRET: HOOK_SECRET } });
    admin = await browser(browsers);
    viewer = await browser(browsers);
  });

  after(async () => {
    await svc?.stop('SIGTERM');
    await git?.stop();
    await reg?.stop();
    await closeTransports(registryOpts);
    if (svc) await cleanup(svc.dataDir);
    if (home) await cleanup(home);
    for (const b of browsers) await b.close();
  });

  test('sign-in: the token form submits on Enter, sets an HttpOnly SameSite=Strict cookie, lands on projects', async () => {
    const p = await page(admin.ctx);
    const res = await p.goto(svc.url + '/');
    assert.equal(res?.status(), 200);
    assert.match(res?.headers()['content-security-policy'] ?? '', /default-src 'self'/);
    await shot(p, '01-sign-in');
    await signIn(p, svc.url, svc.admin);
    const cookie = (await admin.ctx.cookies(svc.url)).find((c) => c.name === 'kiln_session');
    assert.ok(cookie, 'session cookie set');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    assert.ok(!cookie.value.startsWith('kiln_'), 'the cookie is not the token');
    assert.equal(await p.evaluate(() => document.cookie), '', 'scripts cannot read the session cookie');
    // the cookie authenticates API reads from the page; a mutation without the CSRF header is refused
    const probe = await p.evaluate(async () => {
      const list = await fetch('/api/v1/projects');
      const post = await fetch('/api/v1/projects/live/builds', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ref: 'main' }),
      });
      return { list: list.status, post: post.status, body: await post.text() };
    });
    assert.equal(probe.list, 200);
    assert.equal(probe.post, 403);
    assert.match(probe.body, /X-Kiln-CSRF/);
    for (const name of ['live', 'broken', 'xss']) await p.locator('h2', { hasText: name }).first().waitFor();
  });

  test('a wrong token and an ended session lead to the sign-in page', async () => {
    const { ctx } = await browser(browsers);
    try {
      const p = await page(ctx);
      await p.goto(svc.url + '/builds');
      await p.waitForURL(/\/\?next=%2Fbuilds$/);
      await p.locator('input[name=token]').fill('kiln_not-a-real-token');
      await p.locator('input[name=token]').press('Enter');
      await p.locator('.login-error').waitFor();
      assert.match(await p.locator('.login-error').innerText(), /not valid/);
      assert.equal(await p.locator('input[type=password][name=token]').count(), 1);
      await shot(p, '02-sign-in-wrong-token');
      // a token revoked while its session is open: the next page load goes back to the form
      const made = await kiln(
        ['serve', 'token', 'create', '--role', 'viewer', '--name', 'short-lived', '--data-dir', svc.dataDir],
        {
          KILN_HOME: home,
        },
      );
      const token = made.stdout.trim().split('\n').pop() as string;
      const id = /token (\S+) \(/.exec(made.stderr)?.[1] as string;
      await signIn(p, svc.url, token);
      const revoked = await kiln(['serve', 'token', 'revoke', id, '--data-dir', svc.dataDir], { KILN_HOME: home });
      assert.equal(revoked.code, 0, revoked.stderr);
      await p.goto(svc.url + '/builds');
      await p.waitForURL(/\/\?next=/);
      assert.match(await p.locator('.login-error').innerText(), /session has ended/);
    } finally {
      await ctx.close();
    }
  });

  test('a webhook starts a build: it appears live, its log streams, an admin cancels it', async () => {
    const p = await page(admin.ctx);
    await p.goto(svc.url + '/builds?project=live');
    await p.locator('h1', { hasText: 'Builds' }).waitFor();
    await p.locator('.table-wrap, p.muted').first().waitFor();
    const before = await p.locator('tbody tr').count();
    const head = (await git.git('live', ['rev-parse', 'HEAD'])).trim();
    const body = JSON.stringify({
      ref: 'refs/heads/main',
      before: ZERO,
      after: head,
      created: true,
      deleted: false,
      forced: false,
      commits: [{ id: head, message: 'first', added: ['Dockerfile'], removed: [], modified: [] }],
      head_commit: { id: head, message: 'first', added: ['Dockerfile'], removed: [], modified: [] },
      repository: { full_name: 'acme/live', clone_url: 'http://decoy.invalid/x.git' },
    });
    const r = await hook('live', body, 'delivery-ui-1');
    assert.equal(r.status, 202, r.text);
    const id = (JSON.parse(r.text) as { builds: string[] }).builds[0] as string;
    // the new build shows up on the open page without a reload (Server-Sent Events)
    const row = p.locator('tbody tr', { has: p.locator(`a[href="/builds/${id}"]`) });
    await row.waitFor({ timeout: 30_000 });
    assert.ok((await p.locator('tbody tr').count()) > before);
    await shot(p, '03-builds-live');
    await row.locator('a').first().click();
    await p.waitForURL(new RegExp(`/builds/${id}$`));
    // log lines arrive while we watch
    await p.locator('.log-line', { hasText: 'tick-3' }).first().waitFor({ timeout: 60_000 });
    const firstCount = await p.evaluate(() => document.querySelectorAll('.log-line').length);
    await p.locator('.log-line', { hasText: 'tick-25' }).first().waitFor({ timeout: 30_000 });
    const laterStatus = await p.locator('.log-status').innerText();
    assert.ok((await p.evaluate(() => document.querySelectorAll('.log-line').length)) >= firstCount);
    assert.match(laterStatus, /live/);
    assert.equal(await p.locator('.follow').getAttribute('aria-pressed'), 'true', 'follows the end while live');
    await shot(p, '04-build-running');
    // scrolling up stops auto-scroll
    await p.locator('.log-scroll').hover();
    await p.mouse.wheel(0, -400);
    await p.waitForFunction(() => document.querySelector('.follow')?.getAttribute('aria-pressed') === 'false');
    await p.locator('button', { hasText: 'Cancel build' }).click();
    await p.locator('.build-header .phase-cancelled').waitFor({ timeout: 30_000 });
    const b = await svc.waitBuild(id);
    assert.equal(b.phase, 'cancelled');
    assert.equal(b.trigger.type, 'webhook');
    assert.ok(!(await logHas(p, 'tick-600')), 'the build stopped before its end');
    // the delivery is listed with its verdict and build
    await p.locator('nav a', { hasText: 'Deliveries' }).click();
    await p.locator('h1', { hasText: 'Deliveries' }).waitFor();
    const delivery = p.locator('tbody tr', { has: p.locator(`a[href="/builds/${id}"]`) });
    await delivery.waitFor();
    assert.match(await delivery.innerText(), /github[\s\S]*push[\s\S]*main[\s\S]*verified/);
    await shot(p, '05-deliveries');
  });

  test('a viewer sees no cancel button and the API refuses a cancel made with its cookie', async () => {
    const started = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/live/builds', { ref: 'main' });
    assert.equal(started.status, 201, started.text);
    const id = (started.body.builds[0] as Build).id;
    await svc.waitBuild(id, (b) => b.phase === 'building');
    const p = await page(viewer.ctx);
    await signIn(p, svc.url, svc.viewer);
    await p.goto(`${svc.url}/builds/${id}`);
    await p.locator('.log-line', { hasText: 'tick-2' }).first().waitFor({ timeout: 60_000 });
    assert.equal(await p.locator('button', { hasText: 'Cancel build' }).count(), 0);
    assert.equal(await p.locator('.role').innerText(), 'viewer');
    const refused = await p.evaluate(async (buildId) => {
      const s = (await (await fetch('/ui/session')).json()) as { csrf: string };
      const r = await fetch(`/api/v1/builds/${buildId}/cancel`, { method: 'POST', headers: { 'x-kiln-csrf': s.csrf } });
      return { status: r.status, body: await r.text() };
    }, id);
    assert.equal(refused.status, 403);
    assert.match(refused.body, /may only read/);
    assert.equal((await svc.api<Build>('GET', `/api/v1/builds/${id}`)).body.phase, 'building');
    await shot(p, '06-build-viewer');
    assert.equal((await svc.api('POST', `/api/v1/builds/${id}/cancel`)).status, 200);
  });

  test('a failed build opens on its failing line, linked to Dockerfile:N, with ANSI colours as spans', async () => {
    const started = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/broken/builds', { ref: 'main' });
    const id = (started.body.builds[0] as Build).id;
    const b = await svc.waitBuild(id);
    assert.equal(b.phase, 'failed', JSON.stringify(b));
    const p = await page(admin.ctx);
    const res = await p.goto(`${svc.url}/builds/${id}`);
    assert.equal(res?.status(), 200);
    const fail = p.locator('.log-line.fail');
    await fail.waitFor({ timeout: 30_000 });
    assert.match(await fail.innerText(), /ERROR/);
    assert.ok(await fail.isVisible());
    const inView = await fail.evaluate((el) => {
      const box = el.getBoundingClientRect();
      const scroller = (el.closest('.log-scroll') as PageElement).getBoundingClientRect();
      return box.top >= scroller.top && box.bottom <= scroller.bottom;
    });
    assert.ok(inView, 'the failing line is scrolled into view');
    const onScreen = await fail.evaluate((el) => {
      const box = el.getBoundingClientRect();
      return box.top >= 0 && box.bottom <= window.innerHeight;
    });
    assert.ok(onScreen, 'the page shows the failing line');
    assert.match(await p.locator('.failure .dockerfile-link').innerText(), /^Dockerfile:3$/);
    const red = p.locator('.log-line span.fg1', { hasText: 'red alert' });
    assert.equal(await red.count(), 1, 'ANSI red rendered as a span');
    assert.equal(await p.locator('.log-line span.b.fg2', { hasText: 'bold green' }).count(), 1);
    assert.ok(!(await logHas(p, '\u001b[')), 'no raw escape sequences shown');
    assert.equal(await p.locator('button', { hasText: 'Rerun' }).count(), 1, 'admins may rerun a finished build');
    await shot(p, '07-build-failed');
    // search finds lines and counts them
    await p.locator('input[aria-label="Search the log"]').fill('preparing');
    await p.locator('.match-count', { hasText: /1 of \d+/ }).waitFor();
    assert.ok((await p.locator('.log-line.current mark').count()) >= 1);
  });

  test('an XSS payload in a branch name and a commit message is shown as text', async () => {
    const started = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/xss/builds', { ref: XSS_BRANCH });
    assert.equal(started.status, 201, started.text);
    const id = (started.body.builds[0] as Build).id;
    await svc.waitBuild(id);
    const p = await page(admin.ctx);
    await p.goto(`${svc.url}/builds/${id}`);
    await p.locator('.build-header .ref', { hasText: XSS_BRANCH }).waitFor();
    await p.locator('.log-line', { hasText: 'alert(2)' }).first().waitFor({ timeout: 30_000 });
    assert.ok(await logHas(p, `commit: ${XSS_MESSAGE}`), 'the commit message is in the log as text');
    await p.goto(`${svc.url}/builds?project=xss`);
    await p.locator('td.ref', { hasText: XSS_BRANCH }).first().waitFor();
    await p.goto(`${svc.url}/projects`);
    await p.locator('td.ref', { hasText: XSS_BRANCH }).first().waitFor();
    const injected = await p.evaluate(() => document.querySelectorAll('svg, img, script:not([src])').length);
    assert.equal(injected, 0, 'no element was made from the payloads');
    assert.deepEqual(admin.dialogs, [], 'no payload ran');
    await shot(p, '08-projects');
  });

  test('an unknown build id shows the 404 page', async () => {
    const p = await page(admin.ctx);
    const res = await p.goto(`${svc.url}/builds/b_doesnotexist`);
    assert.equal(res?.status(), 404);
    await p.locator('h1', { hasText: '404' }).waitFor();
    await shot(p, '09-not-found');
  });

  test('the bases page lists the watched base and its dependents', async () => {
    const p = await page(admin.ctx);
    await p.goto(`${svc.url}/bases`);
    await p.locator('h1', { hasText: 'Base images' }).waitFor();
    await p.locator('code', { hasText: `${reg.host}/base/busybox:1` }).waitFor();
    assert.match(await p.locator('tbody').innerText(), /xss\/app/);
    await shot(p, '10-bases');
  });

  test('phone width and dark mode stay usable', async () => {
    const p = await page(admin.ctx);
    await p.setViewportSize({ width: 390, height: 844 });
    await p.emulateMedia({ colorScheme: 'dark' });
    await p.goto(`${svc.url}/builds`);
    await p.locator('tbody tr').first().waitFor();
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the page does not scroll sideways at phone width (${overflow}px)`);
    await shot(p, '11-builds-phone-dark');
    const failed = (await svc.api<{ builds: Build[] }>('GET', '/api/v1/builds?project=broken')).body.builds[0] as Build;
    await p.goto(`${svc.url}/builds/${failed.id}`);
    await p.locator('.log-line.fail').waitFor();
    await shot(p, '12-build-phone-dark');
    // keyboard: Tab reaches the skip link first, then the navigation
    await p.keyboard.press('Tab');
    assert.equal(await p.evaluate(() => document.activeElement?.textContent), 'Skip to content');
    await p.setViewportSize({ width: 1280, height: 900 });
    await p.emulateMedia({ colorScheme: 'light' });
  });

  test('the service going away shows a banner; the page recovers when it is back', async () => {
    const p = await page(admin.ctx);
    await p.goto(`${svc.url}/projects`);
    await p.locator('h2', { hasText: 'live' }).first().waitFor();
    const port = new URL(svc.url).port;
    await svc.stop('SIGTERM');
    await p.locator('.banner', { hasText: 'cannot be reached' }).waitFor({ timeout: 30_000 });
    await shot(p, '13-api-down');
    svc = await startService({
      config,
      kilnHome: home,
      dataDir: svc.dataDir,
      listen: `127.0.0.1:${port}`,
      tokens: { admin: svc.admin, viewer: svc.viewer },
      env: { UI_HOOK_SECRET: HOOK_SECRET },
    });
    await p.locator('.banner').waitFor({ state: 'detached', timeout: 60_000 });
    await p.locator('h2', { hasText: 'live' }).first().waitFor();
  });
});
