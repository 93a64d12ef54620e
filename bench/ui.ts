/**
 * `npm run bench:ui`: the web UI measured in Debian's headless Chromium (playwright-core) against `kiln serve` with
 * real parts (git http-backend, docker-registry, real builds) — the figures of issue 14:
 *
 *   U1 first load — bytes of the page's own assets over the wire (HTML, CSS, JS; compressed, cache empty) and
 *                   time to interactive on loopback: navigation start → the projects page rendered with its data
 *                   (median of BENCH_ROUNDS, cache empty). Targets ≤ 300 KB, ≤ 1 s.
 *   U2 log stream — a RUN printing ~5 MB/s (bursts of 5,000 numbered 100-byte lines every 0.1 s) watched live on
 *                   its build page: lines received vs the log file's (no drops), animation-frame gaps and long
 *                   tasks while it streams, the JS heap at the end (bounded: the view keeps ≤ 300,000 lines).
 *   U3 long log   — the same finished log (> 100,000 lines) opened again: time until all of it is in, a search
 *                   over it, a jump to the middle.
 *
 * Environment: BENCH_ROUNDS (default 5), BENCH_BURSTS (default 80: 400,000 lines, ~40 MB).
 */
import type { Page } from 'playwright-core';
import { launchChromium } from '../test/helpers/chromium.js';
import { startRegistry } from '../test/helpers/registry.js';
import { startGitServer } from '../test/helpers/git-server.js';
import { makeBusyboxImage } from '../test/helpers/images.js';
import { cleanup, makeKilnHome, startService } from '../test/helpers/service.js';
import { push } from '../src/registry/push.js';
import { closeTransports } from '../src/registry/transport.js';
import type { Build } from '../src/service/model.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const BURSTS = Number(process.env.BENCH_BURSTS ?? 80);
const PAD = 'x'.repeat(88);

/** Page-side globals used in `evaluate` (this file is compiled without the DOM lib). */
interface BenchWindow {
  __frames: number[];
  __long: number[];
  __stop: boolean;
}
declare const window: BenchWindow & { requestAnimationFrame(f: (t: number) => void): void };
declare const performance: {
  now(): number;
  getEntriesByType(t: string): { name: string; transferSize: number; initiatorType?: string }[];
  memory?: { usedJSHeapSize: number };
};
declare const document: { querySelector(s: string): { textContent: string | null; scrollTop: number } | null };

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const pct = (xs: number[], p: number): number =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))] ?? 0;
const log = (s: string): void => void process.stderr.write(`bench:ui: ${s}\n`);

async function main(): Promise<void> {
  const reg = await startRegistry();
  const git = await startGitServer();
  const home = await makeKilnHome();
  const registryOpts = { insecureRegistries: [reg.host] };
  const base = `${reg.host}/base/busybox:1`;
  await push(await makeBusyboxImage(), base, registryOpts);
  const run =
    `RUN i=0; while [ $i -lt ${BURSTS} ]; do ` +
    `awk -v s=$((i*5000)) 'BEGIN{for(j=1;j<=5000;j++) printf "L%d ${PAD}\\n", s+j}'; sleep 0.1; i=$((i+1)); done\n`;
  await git.createRepo('stream', { Dockerfile: `FROM ${base}\n${run}` });
  await git.createRepo('small', { Dockerfile: `FROM ${base}\nRUN echo small\n` });
  const project = (name: string): string => `  - name: ${name}
    repository: ${git.repoUrl(name)}
    registry: ${reg.host}/${name}
    insecureRegistry: true
    images: [{name: app, tags: ["{{branch}}"]}]
`;
  const svc = await startService({
    config: `insecureRegistries: ["${reg.host}"]\nprojects:\n${project('stream')}${project('small')}`,
    kilnHome: home,
  });
  const browser = await launchChromium(['--enable-precise-memory-info']);
  const ctx = browser.ctx;
  const out: string[] = [];
  try {
    const small = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/small/builds', { ref: 'main' });
    await svc.waitBuild((small.body.builds[0] as Build).id);
    const p: Page = ctx.pages()[0] ?? (await ctx.newPage());
    await p.goto(svc.url + '/');
    await p.locator('input[name=token]').fill(svc.admin);
    await p.locator('input[name=token]').press('Enter');
    await p.waitForURL(/\/projects$/);
    const cdp = await ctx.newCDPSession(p);
    await cdp.send('Network.enable');

    // U1
    const bytes: number[] = [];
    const tti: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      await cdp.send('Network.clearBrowserCache');
      await p.goto(svc.url + '/projects');
      await p.locator('article.project table').first().waitFor();
      tti.push(
        await p.evaluate(() => new Promise<number>((r) => window.requestAnimationFrame(() => r(performance.now())))),
      );
      bytes.push(
        await p.evaluate(() =>
          [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
            .filter((e) => e.initiatorType !== 'fetch' && !e.name.includes('/ui/events'))
            .reduce((n, e) => n + e.transferSize, 0),
        ),
      );
    }
    out.push(
      `U1 first load: ${(median(bytes) / 1024).toFixed(1)} KB over the wire (HTML+CSS+JS, compressed, headers included)`,
    );
    out.push(
      `U1 time to interactive (projects page with data, cache empty, loopback): median ${median(tti).toFixed(0)} ms, max ${Math.max(...tti).toFixed(0)} ms`,
    );

    // U2
    const started = await svc.api<{ builds: Build[] }>('POST', '/api/v1/projects/stream/builds', { ref: 'main' });
    const id = (started.body.builds[0] as Build).id;
    await p.goto(`${svc.url}/builds/${id}`);
    // A string, not a function: tsx would wrap the named inner function in a helper the page does not have.
    await p.evaluate(`(() => {
      window.__frames = [];
      window.__long = [];
      window.__stop = false;
      let last = performance.now();
      const tick = (t) => {
        window.__frames.push(t - last);
        last = t;
        if (!window.__stop) requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
      new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__long.push(e.duration))).observe({ type: 'longtask' });
    })()`);
    const t0 = Date.now();
    await p.locator('.log-status', { hasText: 'ended' }).waitFor({ timeout: 300_000 });
    const secs = (Date.now() - t0) / 1000;
    const stats = await p.evaluate(() => {
      window.__stop = true;
      return {
        frames: window.__frames,
        long: window.__long,
        heap: performance.memory?.usedJSHeapSize ?? 0,
        status: document.querySelector('.log-status')?.textContent ?? '',
      };
    });
    const raw = await svc.api<string>('GET', `/api/v1/builds/${id}/log`);
    const fileLines = raw.text.split('\n').length - (raw.text.endsWith('\n') ? 1 : 0);
    const shown = Number(/([\d,]+) lines/.exec(stats.status)?.[1]?.replaceAll(',', '') ?? 'NaN');
    const mbps = raw.text.length / 1e6 / secs;
    out.push(
      `U2 5 MB/s log: ${(raw.text.length / 1e6).toFixed(1)} MB, ${fileLines.toLocaleString()} lines in ${secs.toFixed(1)} s (${mbps.toFixed(1)} MB/s incl. build start); page counted ${shown.toLocaleString()} lines — ${shown === fileLines ? 'none dropped' : 'MISMATCH'}`,
    );
    out.push(
      `U2 frames while streaming: ${stats.frames.length} frames, gap median ${median(stats.frames).toFixed(1)} ms, p99 ${pct(stats.frames, 0.99).toFixed(1)} ms, max ${Math.max(...stats.frames).toFixed(0)} ms; long tasks ${stats.long.length} (total ${stats.long.reduce((a, b) => a + b, 0).toFixed(0)} ms)`,
    );
    out.push(`U2 JS heap at the end: ${(stats.heap / 1e6).toFixed(1)} MB (${stats.status.trim()})`);

    // U3
    const t1 = Date.now();
    await p.goto(`${svc.url}/builds/${id}`);
    await p.locator('.log-status', { hasText: 'ended' }).waitFor({ timeout: 300_000 });
    const loadS = (Date.now() - t1) / 1000;
    const search = await p.evaluate(async () => {
      const input = document.querySelector('input[aria-label="Search the log"]') as unknown as {
        value: string;
        dispatchEvent(e: unknown): void;
      };
      const t = performance.now();
      input.value = 'L123456 ';
      input.dispatchEvent(
        new (globalThis as unknown as { Event: new (n: string, o: object) => unknown }).Event('input', {
          bubbles: true,
        }),
      );
      await new Promise((r) => window.requestAnimationFrame(() => window.requestAnimationFrame(r)));
      return performance.now() - t;
    });
    const jump = await p.evaluate(async () => {
      const el = document.querySelector('.log-scroll') as { scrollTop: number; scrollHeight?: number };
      const t = performance.now();
      el.scrollTop = (el.scrollHeight ?? 0) / 2;
      await new Promise((r) => window.requestAnimationFrame(() => window.requestAnimationFrame(r)));
      return performance.now() - t;
    });
    out.push(
      `U3 finished log reopened: all lines in after ${loadS.toFixed(1)} s; search over the kept lines ${search.toFixed(0)} ms to the first match shown; jump to the middle ${jump.toFixed(0)} ms to paint`,
    );
  } finally {
    await browser.close();
    await svc.stop('SIGTERM');
    await git.stop();
    await reg.stop();
    await closeTransports(registryOpts);
    await cleanup(svc.dataDir, home);
  }
  process.stdout.write(out.join('\n') + '\n');
}

await main().catch((e: unknown) => {
  log(String(e instanceof Error ? e.stack : e));
  process.exitCode = 1;
});
