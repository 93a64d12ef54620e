/**
 * Debian's Chromium (`/usr/bin/chromium`, installed by scripts/setup.sh) driven by playwright-core — never a
 * browser that Playwright downloads. Each call starts its own browser on a fresh profile dir (removed by `close`).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

/** The flags of every run: headless, no GPU, nothing fetched in the background, no first-run or sync. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--headless',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
];

export interface Chromium {
  ctx: BrowserContext;
  /** Close the browser and remove its profile dir. */
  close(): Promise<void>;
}

export async function launchChromium(extraArgs: string[] = []): Promise<Chromium> {
  const profile = await mkdtemp(join(tmpdir(), 'kiln-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
    viewport: { width: 1280, height: 900 },
  });
  return {
    ctx,
    async close() {
      await ctx.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}
