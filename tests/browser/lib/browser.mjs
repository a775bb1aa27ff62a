// Debian's Chromium, headless, driven by playwright-core, with a fresh profile
// in a temporary directory that is removed on close.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** A browser context on a fresh profile; `close()` ends Chromium and removes the profile. */
export async function launchBrowser() {
  const profile = await mkdtemp(path.join(os.tmpdir(), 'longpoll-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1200, height: 900 },
    timeout: 30_000,
  });
  return {
    context,
    async newPage() {
      const page = await context.newPage();
      // Browser-side errors end up in the test output.
      page.on('pageerror', (error) => console.error(`[page error] ${error.message}`));
      return page;
    },
    async close() {
      await context.close().catch(() => {});
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Follows the requests a page makes to URLs matching `pattern`:
 * `all` ({url, at, doneAt, status, failure}) and `pending()`.
 */
export function watchRequests(page, pattern) {
  const all = [];
  const byRequest = new Map();
  page.on('request', (request) => {
    if (!pattern.test(request.url())) return;
    const entry = { url: request.url(), at: Date.now(), status: null, failure: null, done: false, doneAt: null };
    all.push(entry);
    byRequest.set(request, entry);
  });
  page.on('requestfinished', async (request) => {
    const entry = byRequest.get(request);
    if (!entry) return;
    entry.doneAt = Date.now();
    const response = await request.response().catch(() => null);
    entry.status = response ? response.status() : null;
    entry.done = true;
  });
  page.on('requestfailed', (request) => {
    const entry = byRequest.get(request);
    if (!entry) return;
    entry.failure = request.failure()?.errorText ?? 'failed';
    entry.doneAt = Date.now();
    entry.done = true;
  });
  return { all, pending: () => all.filter((e) => !e.done) };
}
