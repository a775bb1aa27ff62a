// The browser client against a real gateway on RabbitMQ: delivery, events,
// the LP.cache start, gone, timeouts, duplicates, stop and pause.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before } from 'node:test';
import { launchBrowser, watchRequests } from '../lib/browser.mjs';
import { uniqueKey } from '../lib/gateway.mjs';
import { browserTest, eventsOf, pollsReady, rig, setHidden, startClient } from '../lib/rig.mjs';
import { testPage } from '../lib/site.mjs';
import { waitFor } from '../lib/wait.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

browserTest('events arrive in order and fire their event_key listeners', async (t) => {
  const { gateway, page, uri } = await rig(t, browser);
  const a = uniqueKey('order-a');
  const b = uniqueKey('order-b');
  const { key } = await gateway.subscribe([a, b]);
  await startClient(page, { uri, key }, [a, b]);

  const emitted = [];
  for (let n = 1; n <= 6; n++) {
    emitted.push(await gateway.emit(n % 2 ? a : b, { n, what: 'modified' }));
  }
  const messages = await eventsOf(page, 'message', 6);
  assert.deepEqual(messages.map((m) => m.detail.n), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(messages.map((m) => m.sequence), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(messages.map((m) => m.messageId), emitted.map((e) => e.message_id));
  assert.deepEqual(messages.map((m) => m.detail.event_key), [a, b, a, b, a, b]);

  const onA = await page.evaluate((a) => window.of(a).map((e) => e.detail.n), a);
  const onB = await page.evaluate((b) => window.of(b).map((e) => e.detail.n), b);
  assert.deepEqual(onA, [1, 3, 5]);
  assert.deepEqual(onB, [2, 4, 6]);
  assert.equal(await page.evaluate(() => window.of('error').length), 0);
  assert.equal(await page.evaluate(() => window.lp.sequence), 7);
});

browserTest('with max, the messages waiting come in one answer and fire one by one, in order', async (t) => {
  const { gateway, page, uri } = await rig(t, browser);
  const eventKey = uniqueKey('max');
  const { key } = await gateway.subscribe([eventKey]);
  const emitted = [];
  for (let n = 1; n <= 3; n++) emitted.push(await gateway.emit(eventKey, { n }));
  await startClient(page, { uri, key, max: 5 }, [eventKey]);

  const first = await eventsOf(page, 'message', 3);
  assert.deepEqual(first.map((m) => m.detail.n), [1, 2, 3]);
  assert.deepEqual(first.map((m) => m.sequence), [1, 1, 1], 'one answer, one sequence');
  assert.deepEqual(first.map((m) => m.messageId), emitted.map((e) => e.message_id));
  const onKey = await page.evaluate((k) => window.of(k).map((e) => e.detail.n), eventKey);
  assert.deepEqual(onKey, [1, 2, 3]);
  assert.equal(await page.evaluate(() => window.lp.lastMessageId), emitted[2].message_id);

  const later = await gateway.emit(eventKey, { n: 4 });
  const all = await eventsOf(page, 'message', 4);
  assert.deepEqual([all[3].detail.n, all[3].sequence, all[3].messageId], [4, 2, later.message_id]);
  assert.match(await page.evaluate(() => window.lp.pollUrl(3)), /[?&]max=5(&|$)/);
  assert.equal(await page.evaluate(() => window.of('error').length), 0);
});

browserTest('LongPoll.fromCache() starts from LP.cache.longpoll like Launchpad pages', async (t) => {
  const { gateway, site, page, uri } = await rig(t, browser);
  const eventKey = uniqueKey('cache');
  const { key } = await gateway.subscribe([eventKey]);

  // Without LP.cache.longpoll there is nothing to start (Launchpad stopped there too).
  assert.equal(await page.evaluate(() => LongPoll.fromCache()), null);
  assert.match(await page.evaluate(() => {
    try { new LongPoll(); return 'no error'; } catch (e) { return `${e.name}: ${e.message}`; }
  }), /^TypeError: .*LP\.cache\.longpoll/);

  const cache = JSON.stringify({ cache: { longpoll: { uri, key } } });
  site.pages['/cached.html'] = testPage({ head: `<script>var LP = ${cache};</script>` });
  await page.goto(`${site.url}/cached.html`);
  const fromOptions = await page.evaluate(() => ({ key: new LongPoll().key, uri: new LongPoll().uri }));
  assert.deepEqual(fromOptions, { key, uri });
  await page.evaluate((eventKey) => {
    window.lp = window.track(LongPoll.fromCache({ backoffMin: 100 }), [eventKey]);
    window.lp.start();
  }, eventKey);

  const sent = await gateway.emit(eventKey, { what: 'created' });
  const [fired] = await eventsOf(page, eventKey);
  assert.equal(fired.detail.what, 'created');
  assert.equal(fired.messageId, sent.message_id);
  assert.equal(await page.evaluate(() => window.lp.options.backoffMin), 100);
});

browserTest('a 404 fires gone and stops polling', async (t) => {
  const { site, page, uri } = await rig(t, browser);
  // The prefix is right but no such queue exists on the broker.
  await startClient(page, { uri, key: `longpoll.subscribe.${randomUUID()}` });

  const [gone] = await eventsOf(page, 'gone');
  assert.equal(gone.detail.status, 404);
  const [stop] = await eventsOf(page, 'stop');
  assert.equal(stop.detail.reason, 'gone');
  const client = await page.evaluate(() => ({ state: window.lp.state, running: window.lp.running }));
  assert.deepEqual(client, { state: 'stopped', running: false });
  // The client is stopped with no timer and no request: nothing more can be sent.
  assert.equal(site.polls().length, 1);
  assert.equal(site.polls()[0].status, 404);
  assert.equal(await page.evaluate(() => window.of('error').length), 0);
});

/** Starts `window.lp` with a `resubscribe` that asks the test (the page's backend). */
async function startResubscribing(page, { uri, key }, extraTypes, backend) {
  await page.exposeFunction('backendResubscribe', backend);
  await page.evaluate(({ uri, key, extraTypes }) => {
    window.lp = window.track(new LongPoll({
      uri, key, backoffMin: 100, resubscribe: (last) => window.backendResubscribe(last),
    }), ['gap', 'resubscribed'].concat(extraTypes));
    window.lp.start();
  }, { uri, key, extraTypes });
}

browserTest('with resubscribe, a gone subscription is replaced by the backend\'s and gap fires when it says so', async (t) => {
  const { gateway, page, uri } = await rig(t, browser);
  const eventKey = uniqueKey('resubscribe');
  const first = await gateway.subscribe([eventKey]);
  const calls = [];
  await startResubscribing(page, { uri, key: first.key }, [eventKey], async (lastMessageId) => {
    calls.push(lastMessageId);
    const fresh = await gateway.subscribe([eventKey]);
    return { uri, key: fresh.key, gap: true };
  });
  const sent = await gateway.emit(eventKey, { n: 1 });
  await eventsOf(page, 'message', 1);
  assert.equal(await page.evaluate(() => window.lp.lastMessageId), sent.message_id);

  // The subscription goes away (expired, or lost with a broker node).
  await gateway.api('DELETE', `/api/v1/subscriptions/${first.key}`);
  const [resubscribed] = await eventsOf(page, 'resubscribed');
  assert.deepEqual(calls, [sent.message_id]);
  assert.equal(resubscribed.detail.previousKey, first.key);
  assert.notEqual(resubscribed.detail.key, first.key);
  const [gap] = await eventsOf(page, 'gap');
  assert.equal(gap.detail.lastMessageId, sent.message_id);

  // It carries on with the new key, from sequence 1.
  await pollsReady(gateway, 1);
  const next = await gateway.emit(eventKey, { n: 2 });
  const messages = await eventsOf(page, 'message', 2);
  assert.deepEqual(messages.map((m) => [m.detail.n, m.sequence]), [[1, 1], [2, 1]]);
  assert.equal(messages[1].messageId, next.message_id);
  const state = await page.evaluate(() => ({ key: window.lp.key, running: window.lp.running,
    gone: window.of('gone').length, stop: window.of('stop').length }));
  assert.deepEqual(state, { key: resubscribed.detail.key, running: true, gone: 0, stop: 0 });
});

browserTest('resubscribe failing is retried with the backoff; resolving to nothing fires gone', async (t) => {
  const { gateway, page, uri } = await rig(t, browser);
  const eventKey = uniqueKey('resubscribe-fails');
  const { key } = await gateway.subscribe([eventKey]);
  const calls = [];
  await startResubscribing(page, { uri, key }, [], async (lastMessageId) => {
    calls.push(lastMessageId);
    if (calls.length === 1) throw new Error('backend down');
    return null;
  });
  await pollsReady(gateway, 1);
  await gateway.api('DELETE', `/api/v1/subscriptions/${key}`);
  const [gone] = await eventsOf(page, 'gone');
  assert.deepEqual(calls, [null, null], 'nothing received yet: no id to resume after');
  assert.equal(gone.detail.key, key);
  const errors = await page.evaluate(() => window.of('error').map((e) => [e.detail.reason, e.detail.fatal]));
  assert.deepEqual(errors, [['resubscribe', false]]);
  const [stop] = await eventsOf(page, 'stop');
  assert.equal(stop.detail.reason, 'gone');
});

browserTest('a 408 is followed at once by a poll with the same sequence', async (t) => {
  const { gateway, page, uri } = await rig(t, browser, { gatewayArgs: ['--poll-timeout', '1s'] });
  // The client's own requests, as the page makes them. (Chromium itself resends
  // a request once, unseen by the page, when a reused connection answers 408.)
  const polls = watchRequests(page, /[?&]uuid=/);
  const eventKey = uniqueKey('timeout');
  const { key } = await gateway.subscribe([eventKey]);
  await startClient(page, { uri, key });

  await waitFor(() => polls.all.length >= 2 && polls.all[0].status === 408,
    { timeout: 8_000, what: 'a 408 and the next poll' });
  const gap = polls.all[1].at - polls.all[0].doneAt;
  assert.ok(gap < 250, `the next poll came ${gap} ms after the 408`);
  assert.match(polls.all[1].url, /[?&]sequence=1(&|$)/);

  const sent = await gateway.emit(eventKey, { what: 'late' });
  const [message] = await eventsOf(page, 'message');
  assert.equal(message.sequence, 1);
  assert.equal(message.messageId, sent.message_id);
  const errors = await page.evaluate(() => window.of('error').length);
  assert.equal(errors, 0, '408 is not an error');
  assert.equal(await page.evaluate(() => window.lp.failures), 0);
});

browserTest('a message id seen before is dropped and the sequence moves on', async (t) => {
  const { gateway, site, page, uri } = await rig(t, browser);
  const eventKey = uniqueKey('dup');
  const { key } = await gateway.subscribe([eventKey]);
  // An intermediary replays an earlier request: the client's poll for sequence 2
  // reaches the gateway as a retry of 1, which answers the same message again.
  site.rewrite = (url) => {
    if (!url.includes('sequence=2')) return url;
    site.rewrite = null;
    return url.replace('sequence=2', 'sequence=1');
  };
  await startClient(page, { uri, key });

  const first = await gateway.emit(eventKey, { n: 1 });
  await waitFor(() => page.evaluate(() => window.lp.duplicates === 1 && window.lp.sequence === 3),
    { what: 'the replayed answer dropped as a duplicate' });
  const second = await gateway.emit(eventKey, { n: 2 });
  const messages = await eventsOf(page, 'message', 2);
  assert.deepEqual(messages.map((m) => m.messageId), [first.message_id, second.message_id]);
  assert.deepEqual(messages.map((m) => m.sequence), [1, 3]);
  assert.deepEqual(site.polls().map((p) => p.sequence), [1, 2, 3, 4]);
});

browserTest('stop() aborts the held poll and the message waits for the next client', async (t) => {
  const { gateway, page, uri } = await rig(t, browser);
  const polls = watchRequests(page, /[?&]uuid=/);
  const eventKey = uniqueKey('stop');
  const { key } = await gateway.subscribe([eventKey]);
  await startClient(page, { uri, key });
  await pollsReady(gateway, 1);

  await page.evaluate(() => window.lp.stop());
  const [stop] = await eventsOf(page, 'stop');
  assert.equal(stop.detail.reason, 'stopped');
  await waitFor(() => polls.all.length === 1 && polls.all[0].failure, { what: 'the poll to fail' });
  assert.equal(polls.all[0].failure, 'net::ERR_ABORTED');
  await waitFor(async () => (await gateway.metric('longpoll_polls_held')) === 0,
    { what: 'the gateway to see the abort' });
  assert.equal(await page.evaluate(() => window.lp.state), 'stopped');

  // Nothing was consumed: a new client on the same key gets the message.
  const sent = await gateway.emit(eventKey, { after: 'stop' });
  await startClient(page, { uri, key }, [], 'second');
  const [message] = await eventsOf(page, 'message');
  assert.equal(message.messageId, sent.message_id);
  assert.equal(message.sequence, 1);
  assert.match(polls.all[1].url, /[?&]sequence=1(&|$)/);
});

browserTest('pauseWhenHidden stops polling while the page is hidden and resumes when shown', async (t) => {
  const { gateway, site, page, uri } = await rig(t, browser);
  const eventKey = uniqueKey('hidden');
  const other = uniqueKey('visible');
  const { key } = await gateway.subscribe([eventKey]);
  const { key: otherKey } = await gateway.subscribe([other]);
  await startClient(page, { uri, key, pauseWhenHidden: true });
  // A second client without the option (not tracked) keeps polling.
  await page.evaluate((options) => { window.always = new LongPoll(options).start(); }, { uri, key: otherKey });
  await pollsReady(gateway, 2);

  await setHidden(page, true);
  assert.equal(await page.evaluate(() => window.lp.state), 'paused');
  assert.equal(await page.evaluate(() => window.always.state), 'polling');
  await waitFor(async () => (await gateway.metric('longpoll_polls_held')) === 1,
    { what: 'the paused client to drop its poll' });
  const pollsWhileHidden = site.polls().filter((p) => p.url.includes(key)).length;

  const sent = await gateway.emit(eventKey, { while: 'hidden' });
  assert.equal(await page.evaluate(() => window.of('message').length), 0);
  assert.equal(site.polls().filter((p) => p.url.includes(key)).length, pollsWhileHidden);

  await setHidden(page, false);
  const [message] = await eventsOf(page, 'message');
  assert.equal(message.messageId, sent.message_id);
  assert.equal(message.sequence, 1, 'the same sequence after the pause');
  const states = await page.evaluate(() => window.of('statechange').map((e) => e.detail.state));
  assert.deepEqual(states.slice(0, 3), ['polling', 'paused', 'polling']);
});
