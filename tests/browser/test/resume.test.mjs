// Resume without a silent gap, end to end: the client's `resubscribe` asks the
// page's backend (the test, through page.exposeFunction), which calls the real
// management API with `resume_after`. Each test has its own history stream,
// deleted when it ends.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { after, before } from 'node:test';
import { launchBrowser } from '../lib/browser.mjs';
import { uniqueKey } from '../lib/gateway.mjs';
import { browserTest, eventsOf, pollsReady, rig } from '../lib/rig.mjs';
import { waitFor } from '../lib/wait.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** A gateway with a history stream of its own, deleted after the test. */
async function resumeRig(t) {
  const stream = `longpoll.browser.history.${randomUUID()}`;
  const setup = await rig(t, browser, { gatewayArgs: ['--history-stream', stream] });
  setup.defer(() => new Promise((resolve) => {
    execFile('rabbitmqctl', ['delete_queue', '-q', stream], () => resolve());
  }));
  return setup;
}

/**
 * The page's backend: makes a subscription to `eventKeys` resuming after the
 * id the client hands over, as an application's server would, after `gate`.
 */
async function exposeBackend(page, gateway, uri, eventKeys, { calls, gate = Promise.resolve() }) {
  await page.exposeFunction('backendResubscribe', async (lastMessageId) => {
    calls.push(lastMessageId);
    await gate;
    const fresh = await gateway.api('POST', '/api/v1/subscriptions', {
      event_keys: eventKeys, resume_after: lastMessageId,
    });
    calls.push(fresh);
    return { uri, key: fresh.key, gap: fresh.gap };
  });
}

async function startResubscribing(page, options, extraTypes) {
  await page.evaluate(({ options, extraTypes }) => {
    window.lp = window.track(new LongPoll({
      ...options, backoffMin: 100, resubscribe: (last) => window.backendResubscribe(last),
    }), ['gap', 'resubscribed'].concat(extraTypes));
    window.lp.start();
  }, { options, extraTypes });
}

browserTest('a lost subscription is resumed through the API: every event published meanwhile is shown once, in order', async (t) => {
  const { gateway, page, uri } = await resumeRig(t);
  const eventKey = uniqueKey('resume');
  const first = await gateway.subscribe([eventKey]);
  const calls = [];
  let release;
  const meanwhile = new Promise((resolve) => { release = resolve; });
  await exposeBackend(page, gateway, uri, [eventKey], { calls, gate: meanwhile });
  await startResubscribing(page, { uri, key: first.key }, [eventKey]);

  const sent = [];
  for (const n of [1, 2]) sent.push(await gateway.emit(eventKey, { n }));
  await eventsOf(page, 'message', 2);

  // The subscription is lost (as with its RabbitMQ node, or an expiry: 404).
  await gateway.api('DELETE', `/api/v1/subscriptions/${first.key}`);
  await waitFor(() => calls.length === 1, { what: 'the client asking its backend' });
  // Published while the page has no subscription at all.
  for (const n of [3, 4, 5]) sent.push(await gateway.emit(eventKey, { n }));
  release();

  const [resubscribed] = await eventsOf(page, 'resubscribed');
  assert.equal(calls[0], sent[1].message_id, 'resumes after the last message shown');
  assert.deepEqual({ resumed: calls[1].resumed, gap: calls[1].gap }, { resumed: 3, gap: false });
  assert.equal(resubscribed.detail.gap, false);
  assert.equal(resubscribed.detail.previousKey, first.key);
  await eventsOf(page, 'message', 5);
  sent.push(await gateway.emit(eventKey, { n: 6 }));
  const messages = await eventsOf(page, 'message', 6);
  assert.deepEqual(messages.map((m) => m.detail.n), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(messages.map((m) => m.messageId), sent.map((s) => s.message_id));
  assert.deepEqual(messages.map((m) => m.sequence), [1, 2, 1, 2, 3, 4], 'the new key counts from 1');

  // Nothing more comes: the client waits on its next poll, nothing was dropped as a duplicate.
  await pollsReady(gateway, 1);
  const state = await page.evaluate(() => ({
    messages: window.of('message').length, gap: window.of('gap').length,
    gone: window.of('gone').length, duplicates: window.lp.duplicates,
  }));
  assert.deepEqual(state, { messages: 6, gap: 0, gone: 0, duplicates: 0 });
});

browserTest('gap fires when the history does not hold the last message id, and live events still arrive', async (t) => {
  const { gateway, page, uri } = await resumeRig(t);
  const eventKey = uniqueKey('resume-gap');
  const calls = [];
  await exposeBackend(page, gateway, uri, [eventKey], { calls });
  // A page restored with an id the history never had, on a key that is gone.
  const unknown = `no-such-message-${randomUUID()}`;
  await startResubscribing(page, {
    uri, key: `longpoll.subscribe.${randomUUID()}`, lastMessageId: unknown,
  }, [eventKey]);

  const [gap] = await eventsOf(page, 'gap');
  assert.equal(gap.detail.lastMessageId, unknown);
  assert.equal(calls[0], unknown);
  assert.deepEqual({ resumed: calls[1].resumed, gap: calls[1].gap }, { resumed: 0, gap: true });

  await pollsReady(gateway, 1);
  const live = await gateway.emit(eventKey, { n: 1 });
  const [message] = await eventsOf(page, 'message');
  assert.equal(message.messageId, live.message_id);
  assert.equal(await page.evaluate(() => window.lp.lastMessageId), live.message_id);
});
