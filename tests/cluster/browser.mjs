// The real longpoll.js in headless Chromium as clients of a cluster scenario (run by
// tests/cluster/browser.rs, one argument: a JSON object {uri, keys, events, limitMs,
// chromium}). Each client gets its own browser context (Chromium allows 6 connections
// per host and profile: one held poll each keeps them from queueing behind each other),
// a page on the ingress's origin that loads /longpoll.js through nginx, and one
// `LongPoll` on its subscription. Prints one JSON line: what each client received.
//
// playwright-core comes from tests/browser/node_modules (the browser tests' install).
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'browser', 'package.json'));
const { chromium } = require('playwright-core');

const input = JSON.parse(process.argv[2]);
const origin = new URL(input.uri).origin;
const started = Date.now();

const browser = await chromium.launch({
  executablePath: input.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking'],
  timeout: 60_000,
});

try {
  const pages = [];
  for (const key of input.keys) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
    // The page itself is served by the test (same origin as the ingress); the client
    // script comes through nginx from a replica, as the chart's Ingress routes it.
    await page.route(`${origin}/cluster-client.html`, (route) =>
      route.fulfill({
        contentType: 'text/html',
        body: '<!doctype html><title>cluster client</title><script src="/longpoll.js"></script>',
      }),
    );
    await page.goto(`${origin}/cluster-client.html`);
    await page.waitForFunction(() => typeof window.LongPoll === 'function', null, { timeout: 30_000 });
    await page.evaluate(
      ({ uri, key }) => {
        window.received = { events: [], ids: [], errors: [], duplicates: 0 };
        // Short backoff for the test (the default starts at 1 s and caps at 5 min).
        const lp = new LongPoll({ uri, key, backoffMin: 100, backoffMax: 2000 });
        lp.addEventListener('message', (e) => {
          window.received.events.push(e.detail.n);
          window.received.ids.push(e.messageId);
        });
        lp.addEventListener('error', (e) => {
          const d = e.detail || {};
          window.received.errors.push(`${d.reason || '?'} ${d.status || ''}`.trim());
        });
        lp.addEventListener('gone', () => window.received.errors.push('gone'));
        window.lp = lp;
        lp.start();
      },
      { uri: input.uri, key },
    );
    pages.push({ key, page });
  }

  const results = async () =>
    Promise.all(
      pages.map(async ({ key, page }) => {
        const r = await page.evaluate(() => ({
          ...window.received,
          duplicates: window.lp.duplicates,
        }));
        return { key, ...r };
      }),
    );
  let clients = await results();
  while (
    clients.some((c) => new Set(c.events).size < input.events) &&
    Date.now() - started < input.limitMs
  ) {
    await new Promise((r) => setTimeout(r, 200));
    clients = await results();
  }
  for (const { page } of pages) {
    await page.evaluate(() => window.lp.stop()).catch(() => {});
  }
  // Errors are the client's retries (network, 5xx), reported, not failures by themselves.
  process.stdout.write(`${JSON.stringify({ clients, ms: Date.now() - started })}\n`);
} finally {
  await browser.close();
}
