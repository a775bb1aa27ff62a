// The client where it is deployed: behind a path prefix, on another origin
// (CORS), and how the gateway serves it (types, caching, the module form).
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { launchBrowser } from '../lib/browser.mjs';
import { Gateway, uniqueKey } from '../lib/gateway.mjs';
import { browserTest, cleanup, eventsOf, onFailure, startClient } from '../lib/rig.mjs';
import { Site, testPage } from '../lib/site.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

async function gatewayFor(t, args = []) {
  const gateway = await Gateway.start(args);
  cleanup(t)(() => gateway.kill());
  onFailure(t, () => `--- gateway log ---\n${gateway.logs()}`);
  return gateway;
}

async function openPage(t, url) {
  const page = await browser.newPage();
  cleanup(t)(() => page.close());
  await page.goto(url);
  return page;
}

browserTest('behind a reverse proxy at /longpoll/, the uri handed out works as it is', async (t) => {
  // The ingress: /longpoll/* goes to the gateway with the prefix stripped.
  const site = await Site.start({ pages: { '/app/page.html': testPage({ script: '/longpoll/longpoll.js' }) }, prefix: '/longpoll/' });
  cleanup(t)(() => site.close());
  const publicUrl = `${site.url}/longpoll/?via=ingress`;
  const gateway = await gatewayFor(t, ['--public-url', publicUrl]);
  site.upstream = gateway.url;
  const eventKey = uniqueKey('prefix');
  const { key, uri } = await gateway.subscribe([eventKey]);
  assert.equal(uri, publicUrl);

  const page = await openPage(t, `${site.url}/app/page.html`);
  await startClient(page, { uri, key }, [eventKey]);
  const sent = await gateway.emit(eventKey, { where: 'behind the prefix' });
  const [fired] = await eventsOf(page, eventKey);
  assert.equal(fired.messageId, sent.message_id);
  const polls = site.polls();
  // Each poll carries the ids received lately (`seen`, the proof of receipt).
  assert.equal(polls[0].url, `/longpoll/?via=ingress&uuid=${key}&sequence=1&seen=`);
  assert.equal(polls[1].url,
    `/longpoll/?via=ingress&uuid=${key}&sequence=2&seen=${encodeURIComponent(sent.message_id)}`);

  // pollUrl keeps the prefix and any query, replaces uuid/sequence, drops the
  // fragment, resolves a relative uri against the page, and adds `seen`
  // (empty for a client that has received nothing yet).
  const urls = await page.evaluate(() => [
    'http://gw.example/longpoll/',
    'http://gw.example/longpoll/?a=b',
    'http://gw.example/lp?uuid=old&sequence=9#frag',
    '/longpoll/',
    'poll',
  ].map((uri) => new LongPoll({ uri, key: 'longpoll.subscribe.k' }).pollUrl(3)));
  assert.deepEqual(urls, [
    'http://gw.example/longpoll/?uuid=longpoll.subscribe.k&sequence=3&seen=',
    'http://gw.example/longpoll/?a=b&uuid=longpoll.subscribe.k&sequence=3&seen=',
    'http://gw.example/lp?uuid=longpoll.subscribe.k&sequence=3&seen=',
    `${site.url}/longpoll/?uuid=longpoll.subscribe.k&sequence=3&seen=`,
    `${site.url}/app/poll?uuid=longpoll.subscribe.k&sequence=3&seen=`,
  ]);
});

browserTest('a page on another origin polls with CORS; an origin not allowed cannot', async (t) => {
  const allowed = await Site.start({ pages: { '/page.html': testPage({ script: null }) } });
  const other = await Site.start({ pages: { '/page.html': testPage({ script: null }) } });
  cleanup(t)(() => allowed.close());
  cleanup(t)(() => other.close());
  // Short polls: the refused page only learns of the refusal when an answer
  // (here a 408) comes back without Access-Control-Allow-Origin.
  const gateway = await gatewayFor(t, ['--cors-origin', allowed.url, '--poll-timeout', '1s']);
  const eventKey = uniqueKey('cors');
  const { key, uri } = await gateway.subscribe([eventKey]);
  assert.equal(uri, `${gateway.url}/`);

  // The module from the gateway's origin, imported cross-origin.
  const page = await openPage(t, `${allowed.url}/page.html`);
  await page.evaluate(async (src) => { window.LongPoll = (await import(src)).LongPoll; }, `${gateway.url}/longpoll.mjs`);
  await startClient(page, { uri, key });
  const sent = await gateway.emit(eventKey, { from: 'elsewhere' });
  const [message] = await eventsOf(page, 'message');
  // The exposed headers are readable: the message id is what dedup relies on.
  assert.equal(message.messageId, sent.message_id);
  assert.equal(message.sequence, 1);

  const refused = await openPage(t, `${other.url}/page.html`);
  await refused.evaluate(async (src) => { window.LongPoll = (await import(src)).LongPoll; }, `${gateway.url}/longpoll.mjs`);
  await startClient(refused, { uri, key: (await gateway.subscribe([eventKey])).key, backoffMin: 5000 });
  const [error] = await eventsOf(refused, 'error');
  assert.equal(error.detail.reason, 'network');
  await refused.evaluate(() => window.lp.stop());

  // The same, as plain HTTP: preflight, then the headers on an answer.
  const preflight = await fetch(`${gateway.url}/?uuid=${key}&sequence=2`, {
    method: 'OPTIONS',
    headers: { Origin: allowed.url, 'Access-Control-Request-Method': 'GET' },
  });
  assert.ok(preflight.ok, `preflight: ${preflight.status}`);
  assert.equal(preflight.headers.get('access-control-allow-origin'), allowed.url);
  assert.match(preflight.headers.get('access-control-allow-methods'), /GET/);
  const probe = await fetch(`${gateway.url}/`, { headers: { Origin: allowed.url } });
  assert.equal(probe.headers.get('access-control-allow-origin'), allowed.url);
  const exposed = probe.headers.get('access-control-expose-headers').toLowerCase();
  for (const name of ['x-longpoll-sequence', 'x-longpoll-message-id', 'retry-after']) {
    assert.ok(exposed.includes(name), `${name} exposed: ${exposed}`);
  }
  const foreign = await fetch(`${gateway.url}/`, { headers: { Origin: other.url } });
  assert.equal(foreign.headers.get('access-control-allow-origin'), null);
});

browserTest('the gateway serves the client with the right type, an ETag, immutable versions and a module', async (t) => {
  const gateway = await gatewayFor(t);
  const js = await fetch(`${gateway.url}/longpoll.js`);
  assert.equal(js.status, 200);
  assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.equal(js.headers.get('cache-control'), 'no-cache');
  const etag = js.headers.get('etag');
  assert.match(etag, /^"[0-9a-f]{16}"$/);
  const body = await js.text();
  assert.match(body, /^var LongPoll = /m);

  const revalidated = await fetch(`${gateway.url}/longpoll.js`, { headers: { 'If-None-Match': etag } });
  assert.equal(revalidated.status, 304);
  assert.equal(revalidated.headers.get('etag'), etag);
  assert.equal(await revalidated.text(), '');

  // The ETag names the immutable version.
  const hash = etag.slice(1, -1);
  const versioned = await fetch(`${gateway.url}/longpoll.${hash}.js`);
  assert.equal(versioned.status, 200);
  assert.equal(versioned.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  assert.equal(versioned.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.equal(await versioned.text(), body);

  const mjs = await fetch(`${gateway.url}/longpoll.mjs`);
  assert.equal(mjs.headers.get('content-type'), 'text/javascript; charset=utf-8');
  const mjsBody = await mjs.text();
  assert.ok(mjsBody.startsWith(body) && /export \{ LongPoll \}/.test(mjsBody.slice(body.length)));
  const mjsHash = mjs.headers.get('etag').slice(1, -1);
  const mjsVersioned = await fetch(`${gateway.url}/longpoll.${mjsHash}.mjs`);
  assert.equal(mjsVersioned.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  assert.equal(await mjsVersioned.text(), mjsBody);

  // In the browser: the module exports LongPoll (and defines no global); the
  // classic script defines the global.
  const page = await openPage(t, `${gateway.url}/`);
  const loaded = await page.evaluate(async (hash) => {
    const mod = await import(`/longpoll.${hash}.mjs`);
    const moduleForm = { named: typeof mod.LongPoll, default: mod.default === mod.LongPoll, global: typeof window.LongPoll };
    const script = document.createElement('script');
    script.src = '/longpoll.js';
    await new Promise((resolve, reject) => { script.onload = resolve; script.onerror = reject; document.head.append(script); });
    const lp = new window.LongPoll({ uri: '/', key: 'longpoll.subscribe.k' });
    return { ...moduleForm, classic: typeof window.LongPoll, isEventTarget: lp instanceof EventTarget };
  }, mjsHash);
  assert.deepEqual(loaded, { named: 'function', default: true, global: 'undefined', classic: 'function', isEventTarget: true });
});
