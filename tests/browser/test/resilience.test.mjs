// What the client does when things go wrong: a gateway killed with a message
// unacked, backoff against a failing server, and every protocol answer.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before } from 'node:test';
import { launchBrowser } from '../lib/browser.mjs';
import { Gateway, REPO, uniqueKey } from '../lib/gateway.mjs';
import { browserTest, cleanup, eventsOf, onFailure, rig, startClient } from '../lib/rig.mjs';
import { Site, testPage } from '../lib/site.mjs';
import { waitFor } from '../lib/wait.mjs';

const CLIENT = readFileSync(path.join(REPO, 'assets/longpoll.js'), 'utf8');

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/**
 * A site whose polls are answered by `steps`, one per poll, in order (then
 * held unanswered); the page loads the client straight from assets/.
 */
async function scriptedSite(t, steps) {
  const defer = cleanup(t);
  let next = 0;
  const site = await Site.start({
    pages: {
      '/test.html': testPage(),
      '/longpoll.js': { type: 'text/javascript; charset=utf-8', body: CLIENT },
    },
    handle: (req, res) => {
      const step = steps[next++];
      if (step) step(res);
    },
  });
  defer(() => site.close());
  const page = await browser.newPage();
  defer(() => page.close());
  await page.goto(`${site.url}/test.html`);
  return { site, page, uri: `${site.url}/poll/` };
}

function answer(status, body = '', headers = {}) {
  return (res) => {
    res.writeHead(status, { 'Content-Type': 'text/plain', ...headers });
    res.end(body);
  };
}

function message(status, id, body) {
  return answer(status, typeof body === 'string' ? body : JSON.stringify(body),
    { 'Content-Type': 'application/json', 'X-Longpoll-Message-Id': id });
}

browserTest('a gateway killed with a message unacked loses nothing and shows nothing twice', async (t) => {
  const { gateway, site, page, defer, uri } = await rig(t, browser);
  const eventKey = uniqueKey('kill');
  const { key } = await gateway.subscribe([eventKey]);
  await startClient(page, { uri, key, backoffMin: 100, backoffMax: 1000 });
  const sent = [await gateway.emit(eventKey, { n: 1 })];
  await eventsOf(page, 'message', 1);

  async function replace(old) {
    await old.kill('SIGKILL');
    const fresh = await Gateway.start();
    defer(() => fresh.kill());
    onFailure(t, () => `--- restarted gateway log ---\n${fresh.logs()}`);
    site.upstream = fresh.url;
    return fresh;
  }

  // 1. The answer carrying message 2 is lost on the way (the proxy keeps it),
  //    the gateway dies, the proxy answers 502: the client retries sequence 2
  //    on the new process, which gets message 2 back from RabbitMQ.
  site.holdResponses = true;
  sent.push(await gateway.emit(eventKey, { n: 2 }));
  await waitFor(() => site.heldResponses.length === 1, { what: 'the answer to be held' });
  const second = await replace(gateway);
  site.failHeldResponses();
  await eventsOf(page, 'message', 2);

  // 2. Message 3 arrives, but the poll that would ack it (sequence 4) has not
  //    reached the gateway when it dies: RabbitMQ redelivers message 3 to the
  //    next process, which sees it in the poll's `seen` list and skips it.
  await waitFor(async () => (await second.metric('longpoll_polls_held')) === 1 &&
    site.polls().at(-1).sequence === 3, { what: 'sequence 3 held by the new gateway' });
  site.holdRequests = true;
  sent.push(await second.emit(eventKey, { n: 3 }));
  await eventsOf(page, 'message', 3);
  await waitFor(() => site.parkedRequests.length === 1, { what: 'the poll for sequence 4 to be parked' });
  const third = await replace(second);
  site.releaseRequests();
  await waitFor(async () => (await third.metric('longpoll_messages_skipped_total')) === 1,
    { what: 'the redelivery to be skipped by the gateway' });
  sent.push(await third.emit(eventKey, { n: 4 }));

  const messages = await eventsOf(page, 'message', 4);
  assert.deepEqual(messages.map((m) => m.messageId), sent.map((s) => s.message_id));
  assert.deepEqual(messages.map((m) => m.detail.n), [1, 2, 3, 4]);
  assert.deepEqual(messages.map((m) => m.sequence), [1, 2, 3, 4]);
  assert.equal(await page.evaluate(() => window.lp.duplicates), 0);
  const errors = await page.evaluate(() => window.of('error').map((e) => `${e.detail.reason} ${e.detail.status}`));
  assert.deepEqual(errors, ['http 502']);
});

browserTest('the retry delay grows exponentially with jitter, is capped, honours Retry-After and resets', async (t) => {
  const unavailable = answer(503, 'Service unavailable');
  const steps = [
    ...Array(6).fill(unavailable),
    message(200, 'm1', { event_key: 'k', n: 1 }),
    unavailable,
    answer(503, 'Service unavailable', { 'Retry-After': '1' }),
    answer(404, 'Not found'),
  ];
  const { site, page, uri } = await scriptedSite(t, steps);
  await startClient(page, { uri, key: 'longpoll.subscribe.backoff', backoffMin: 50, backoffMax: 400 });
  await eventsOf(page, 'gone', 1, 15_000);

  const polls = site.polls();
  assert.equal(polls.length, 10);
  assert.deepEqual(polls.map((p) => p.sequence), [1, 1, 1, 1, 1, 1, 1, 2, 2, 2]);
  // Expected delay after each answer (ms): backoff 50·2^(n-1) capped at 400;
  // none after the message; the first failure after it starts again at 50;
  // Retry-After: 1 wins over the 100 the backoff would wait.
  const expected = [50, 100, 200, 400, 400, 400, 0, 50, 1000];
  const gaps = expected.map((_, i) => polls[i + 1].at - polls[i].doneAt);
  t.diagnostic(`delays (ms): ${gaps.join(', ')}`);
  expected.forEach((delay, i) => {
    const low = delay === 1000 ? 1000 : 0.8 * delay; // jitter takes off up to 20 %
    assert.ok(gaps[i] >= low - 5 && gaps[i] <= delay + 150,
      `delay ${i + 1} was ${gaps[i]} ms, expected ${low}..${delay}`);
  });

  const errors = await page.evaluate(() => window.of('error').map((e) => e.detail));
  assert.deepEqual(errors.map((e) => e.attempt), [1, 2, 3, 4, 5, 6, 1, 2]);
  assert.ok(errors.every((e) => e.status === 503 && e.fatal === false));
  assert.ok(errors.slice(0, -1).every((e) => e.retryIn <= 400));
  assert.equal(errors.at(-1).retryIn, 1000);
});

browserTest('every protocol answer is handled: 504, 400 error message, stale, duplicate, bad JSON, superseded', async (t) => {
  const steps = [
    answer(504, 'Gateway Timeout'),
    message(200, 'a', { event_key: 'k', n: 1 }),
    message(400, 'e', { event_key: 'k', error: 'boom' }),
    answer(409, 'Stale sequence', { 'X-Longpoll-Sequence': '7' }),
    message(200, 'a', { event_key: 'k', n: 1 }),
    message(200, 'p', 'not json'),
    answer(409, 'Superseded'),
  ];
  const { site, page, uri } = await scriptedSite(t, steps);
  await startClient(page, { uri: `${uri}?tenant=x`, key: 'longpoll.subscribe.protocol', minHold: 0 }, ['k']);
  await eventsOf(page, 'stop');

  const polls = site.polls();
  assert.deepEqual(polls.map((p) => p.sequence), [1, 1, 2, 3, 8, 9, 10]);
  assert.ok(polls[1].at - polls[0].doneAt < 150, 'a 504 is re-polled at once');
  assert.ok(polls.every((p) => p.url.startsWith('/poll/?tenant=x&uuid=longpoll.subscribe.protocol&sequence=')));

  const messages = await page.evaluate(() => window.of('message'));
  assert.deepEqual(messages.map((m) => [m.messageId, m.sequence, m.isError]), [['a', 1, false], ['e', 2, true]]);
  assert.equal(messages[1].detail.error, 'boom');
  const onKey = await page.evaluate(() => window.of('k').map((e) => e.messageId));
  assert.deepEqual(onKey, ['a'], 'an error message does not fire its event_key listeners');
  const errors = await page.evaluate(() => window.of('error').map((e) => [e.detail.reason, e.detail.fatal]));
  assert.deepEqual(errors, [['message', false], ['parse', false], ['superseded', true]]);
  const client = await page.evaluate(() => ({
    duplicates: window.lp.duplicates, state: window.lp.state, stop: window.of('stop')[0].detail.reason,
  }));
  assert.deepEqual(client, { duplicates: 1, state: 'stopped', stop: 'superseded' });
});
