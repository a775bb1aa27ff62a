// One test's set-up: a gateway on RabbitMQ, a site in front of it (test pages +
// reverse proxy, so pages and polls share an origin), a page; torn down in
// reverse order when the test ends.
import { test } from 'node:test';
import { Gateway } from './gateway.mjs';
import { Site, testPage } from './site.mjs';
import { waitFor } from './wait.mjs';

export const TEST_TIMEOUT = 30_000;

const failureNotes = new WeakMap();

/** Adds `fn` (returning text) to what is printed if test `t` fails. */
export function onFailure(t, fn) {
  failureNotes.get(t)?.push(fn);
}

/** A test bounded in time that prints its gateways' logs when it fails. */
export function browserTest(name, fn, { timeout = TEST_TIMEOUT } = {}) {
  test(name, { timeout }, async (t) => {
    failureNotes.set(t, []);
    try {
      await fn(t);
    } catch (error) {
      for (const note of failureNotes.get(t)) console.error(note());
      throw error;
    }
  });
}

/** Runs `fn`s in reverse order of registration after the test `t`. */
export function cleanup(t) {
  const stack = [];
  t.after(async () => {
    for (const fn of stack.reverse()) await fn().catch((e) => console.error(`cleanup: ${e.message}`));
  });
  return (fn) => stack.push(fn);
}

export async function rig(t, browser, { gatewayArgs = [], page: pageOptions = {} } = {}) {
  const defer = cleanup(t);
  const gateway = await Gateway.start(gatewayArgs);
  defer(() => gateway.kill());
  onFailure(t, () => `--- gateway log ---\n${gateway.logs()}`);
  const site = await Site.start({ pages: { '/test.html': testPage(pageOptions) }, upstream: gateway.url });
  defer(() => site.close());
  const page = await browser.newPage();
  defer(() => page.close());
  await page.goto(`${site.url}/test.html`);
  return { gateway, site, page, defer, uri: `${site.url}/` };
}

/** Creates `window.lp` in the page, tracks its events (plus `extraTypes`), starts it. */
export async function startClient(page, options, extraTypes = [], name = 'lp') {
  await page.evaluate(({ options, extraTypes, name }) => {
    window[name] = window.track(new LongPoll(options), extraTypes);
    window[name].start();
  }, { options, extraTypes, name });
}

/** Waits until the page has recorded `count` events of `type`; returns them. */
export async function eventsOf(page, type, count = 1, timeout = 10_000) {
  await page.waitForFunction(({ type, count }) => window.of(type).length >= count, { type, count }, { timeout });
  return page.evaluate((type) => window.of(type), type);
}

/** Makes the page look hidden or visible to the client (as a tab switch does). */
export function setHidden(page, hidden) {
  return page.evaluate((hidden) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

/** Waits until `gateway` holds `count` polls. */
export function pollsReady(gateway, count) {
  return waitFor(async () => (await gateway.metric('longpoll_polls_held')) === count,
    { what: `${count} held poll(s)` });
}
