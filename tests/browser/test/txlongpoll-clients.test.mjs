// txlongpoll's own clients, as they are: a YUI 3 page polling the way
// Launchpad's lp.app.longpoll and MAAS's maas.longpoll do (lib/yui-page.mjs),
// same-origin behind a proxy, cross-origin with CORS, and reloaded with the
// same key.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { launchBrowser } from '../lib/browser.mjs';
import { Gateway, uniqueKey } from '../lib/gateway.mjs';
import { browserTest, cleanup, onFailure, pollsReady } from '../lib/rig.mjs';
import { Site } from '../lib/site.mjs';
import { waitFor } from '../lib/wait.mjs';
import { YUI_DIR, YUI_PREFIX, yuiPage, yuiPageUrl } from '../lib/yui-page.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

async function gatewayFor(t, args = []) {
  const gateway = await Gateway.start(args);
  cleanup(t)(() => gateway.kill());
  onFailure(t, () => `--- gateway log ---\n${gateway.logs()}`);
  return gateway;
}

/** A site serving the YUI page and YUI itself (and proxying the rest to `upstream`). */
async function siteFor(t, { upstream = null, page = {} } = {}) {
  const site = await Site.start({ pages: { '/yui.html': yuiPage(page) }, dirs: { [YUI_PREFIX]: YUI_DIR }, upstream });
  cleanup(t)(() => site.close());
  return site;
}

async function openYuiPage(t, url) {
  const page = await browser.newPage();
  cleanup(t)(() => page.close());
  onFailure(t, () => '--- page answers ---\n' + JSON.stringify(page.answersSeen ?? [], null, 1));
  // Every poll's request headers, as the browser sent them.
  page.pollHeaders = [];
  page.on('request', (request) => {
    if (request.url().includes('uuid=')) page.pollHeaders.push(request.headers());
  });
  await page.goto(url);
  await page.waitForFunction(() => window.yuiLoaded === true, null, { timeout: 10_000 });
  return page;
}

/** Emits `count` events one after the other; their message ids, in order. */
async function emitMany(gateway, eventKey, count) {
  const ids = [];
  for (let n = 0; n < count; n += 1) ids.push((await gateway.emit(eventKey, { n })).message_id);
  return ids;
}

async function firedCount(page, count, timeout = 20_000) {
  await page.waitForFunction((count) => window.fired.length >= count, count, { timeout });
  page.answersSeen = await page.evaluate(() => window.answers);
  return page.evaluate(() => window.fired);
}

/** Every answer the page got was a message or a 408: nothing it counts as a failure. */
async function assertNoFailures(page) {
  const statuses = (await page.evaluate(() => window.answers)).map((a) => a.status);
  assert.deepEqual(statuses.filter((s) => s !== 200 && s !== 408), [], `statuses: ${statuses}`);
}

const range = (n) => Array.from({ length: n }, (_, i) => i);

browserTest('a YUI 3 client polling as Launchpad does gets 50 events once and in order, same-origin', async (t) => {
  const gateway = await gatewayFor(t);
  const site = await siteFor(t, { upstream: gateway.url });
  const eventKey = uniqueKey('yui-same-origin');
  const { key } = await gateway.subscribe([eventKey]);
  const page = await openYuiPage(t, yuiPageUrl(site, { key, uri: `${site.url}/+longpoll/` }));
  await pollsReady(gateway, 1);
  await emitMany(gateway, eventKey, 50);
  const fired = await firedCount(page, 50);
  assert.deepEqual(fired.map((f) => f.data.n), range(50));
  assert.ok(fired.every((f) => f.event_key === eventKey));
  await assertNoFailures(page);
  assert.equal(page.pollHeaders[0]['x-requested-with'], 'XMLHttpRequest');
}, { timeout: 60_000 });

browserTest('a YUI 3 client on another origin polls through CORS with X-Requested-With', async (t) => {
  const site = await siteFor(t);
  const gateway = await gatewayFor(t, ['--cors-origin', site.url]);
  const eventKey = uniqueKey('yui-cross-origin');
  const { key, uri } = await gateway.subscribe([eventKey]);
  assert.equal(uri, `${gateway.url}/`);
  const page = await openYuiPage(t, yuiPageUrl(site, { key, uri }));
  await pollsReady(gateway, 1);
  await emitMany(gateway, eventKey, 50);
  const fired = await firedCount(page, 50);
  assert.deepEqual(fired.map((f) => f.data.n), range(50));
  await assertNoFailures(page);
  // YUI's io sent its header cross-origin: the preflight allowed it.
  assert.ok(page.pollHeaders.length >= 50);
  assert.ok(page.pollHeaders.every((h) => h['x-requested-with'] === 'XMLHttpRequest'));
}, { timeout: 60_000 });

browserTest('a YUI 3 page reloaded with the same key is held again at once, never 409, and loses nothing', async (t) => {
  const gateway = await gatewayFor(t);
  // A failure would cost this page 3 s before it polls again: a 409 shows.
  const site = await siteFor(t, { upstream: gateway.url, page: { shortDelay: 3000 } });
  const eventKey = uniqueKey('yui-reload');
  const { key } = await gateway.subscribe([eventKey]);
  const page = await openYuiPage(t, yuiPageUrl(site, { key, uri: `${site.url}/` }));
  await pollsReady(gateway, 1);
  await emitMany(gateway, eventKey, 7);
  const before = await firedCount(page, 7);
  assert.deepEqual(before.map((f) => f.sequence), [1, 2, 3, 4, 5, 6, 7]);
  await pollsReady(gateway, 1);

  // The reload: the page counts from 1 again with the same key, below the 7
  // the gateway answered last. Its first poll is held, as on a new page.
  const requestsBefore = site.polls().length;
  await page.reload();
  await page.waitForFunction(() => window.yuiLoaded === true, null, { timeout: 10_000 });
  const held = await waitFor(async () => {
    const polls = site.polls().slice(requestsBefore);
    return polls.length >= 1 && polls[polls.length - 1].status === null
      && (await gateway.metric('longpoll_sequence_restarts_total')) === 1
      && (await gateway.metric('longpoll_polls_held')) === 1 ? Date.now() : null;
  }, { what: 'the reloaded page holding a poll' });
  const polls = site.polls().slice(requestsBefore);
  assert.deepEqual(polls.map((p) => p.sequence), [1], 'one poll, held: no 409 and retry');
  assert.ok(held - polls[0].at < 1000, `held ${held - polls[0].at} ms after it was sent`);
  await assertNoFailures(page);

  // The next event reaches the reloaded page at sequence 1, and the count goes on.
  await emitMany(gateway, eventKey, 2);
  const after = await firedCount(page, 2);
  assert.deepEqual(after.map((f) => [f.data.n, f.sequence]), [[0, 1], [1, 2]]);
  await assertNoFailures(page);
}, { timeout: 60_000 });

browserTest('a YUI 3 page reloaded before it polled again gets the unacknowledged event again, at once', async (t) => {
  const gateway = await gatewayFor(t);
  const site = await siteFor(t, { upstream: gateway.url, page: { shortDelay: 3000 } });
  const eventKey = uniqueKey('yui-reload-unacked');
  const { key } = await gateway.subscribe([eventKey]);
  const page = await openYuiPage(t, yuiPageUrl(site, { key, uri: `${site.url}/` }));
  await pollsReady(gateway, 1);
  await emitMany(gateway, eventKey, 3);
  await firedCount(page, 3);
  // The answer to 4 comes; the page is closed before its poll for 5 reaches
  // the gateway (the proxy keeps it, and any retry of it, to itself): the
  // answer to 4 stays unacked, held for a retry of 4.
  await pollsReady(gateway, 1);
  site.holdRequests = true;
  const sent = await gateway.emit(eventKey, { n: 3 });
  await waitFor(() => site.parkedRequests.length >= 1, { what: 'the poll for 5 parked' });
  await page.close();

  // Opened again with the same key (through a second proxy: the first never
  // forwards anything again), it counts from 1: the held answer goes back to
  // the queue and is answered to this poll at once.
  const again = await siteFor(t, { upstream: gateway.url, page: { shortDelay: 3000 } });
  const reopened = await openYuiPage(t, yuiPageUrl(again, { key, uri: `${again.url}/` }));
  onFailure(t, () => `--- polls ---\n${JSON.stringify([site.polls(), again.polls()], null, 1)}`);
  const [first] = await firedCount(reopened, 1, 5000);
  assert.equal(first.data.n, 3);
  assert.equal(first.sequence, 1);
  await assertNoFailures(reopened);
  assert.equal(await gateway.metric('longpoll_sequence_restarts_total'), 1);
  assert.equal(await gateway.metric('longpoll_messages_requeued_total'), 1);
  await pollsReady(gateway, 1);
  assert.ok(sent.message_id);
}, { timeout: 60_000 });
