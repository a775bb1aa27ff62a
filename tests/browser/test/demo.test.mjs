// The demo page at /demo: what a new user sees first.
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before } from 'node:test';
import { launchBrowser } from '../lib/browser.mjs';
import { Gateway, REPO, TOKEN } from '../lib/gateway.mjs';
import { browserTest, cleanup, onFailure } from '../lib/rig.mjs';

const SCREENSHOT = path.join(REPO, 'test-artifacts/browser/demo.png');

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

browserTest('the demo page subscribes, emits from its form and shows the events', async (t) => {
  const defer = cleanup(t);
  const gateway = await Gateway.start();
  defer(() => gateway.kill());
  onFailure(t, () => `--- gateway log ---\n${gateway.logs()}`);
  const page = await browser.newPage();
  defer(() => page.close());

  // A wrong token is explained, not silently ignored.
  await page.goto(`${gateway.url}/demo`);
  assert.equal(await page.textContent('#status-text'), 'Not subscribed');
  await page.fill('#token', 'not-the-token');
  await page.click('#subscribe');
  await page.waitForSelector('#connect-error:not([hidden])');
  assert.match(await page.textContent('#connect-error'), /refused the API token/);

  // The link `make run` prints: ?token= subscribes at once, then leaves the address bar.
  await page.goto(`${gateway.url}/demo?token=${TOKEN}`);
  await page.waitForSelector('#status[data-state="polling"]');
  assert.equal(new URL(page.url()).search, '');
  assert.match(await page.textContent('#sub-key'), /^longpoll\.subscribe\./);

  async function emitFromForm(payload) {
    await page.fill('#emit-payload', JSON.stringify(payload));
    await page.click('#emit');
    await page.waitForFunction(() => /message id \S+/.test(document.querySelector('#emit-result').textContent));
    const id = (await page.textContent('#emit-result')).match(/message id (\S+)/)[1];
    await page.waitForSelector(`#events tr[data-message-id="${id}"]`);
    await page.evaluate(() => { document.querySelector('#emit-result').textContent = ''; });
    return id;
  }
  const first = await emitFromForm({ what: 'modified', note: 'hello from the demo' });
  const second = await emitFromForm({ what: 'created', branch: 'lp:~demo/project/feature' });
  const failed = await emitFromForm({ error: 'the diff could not be generated', what: 'failed' });

  const rows = await page.$$eval('#events tr', (trs) => trs.map((tr) => ({
    id: tr.dataset.messageId,
    sequence: tr.dataset.sequence,
    error: tr.classList.contains('is-error'),
    key: tr.querySelector('.key').textContent,
  })));
  assert.deepEqual(rows.map((r) => [r.id, r.sequence, r.error]),
    [[failed, '3', true], [second, '2', false], [first, '1', false]]);
  assert.ok(rows.every((r) => r.key === 'longpoll.event.demo'));
  assert.equal(await page.textContent('#event-count'), '3');
  assert.equal(await page.isHidden('#events-empty'), true);

  await mkdir(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  t.diagnostic(`screenshot: ${SCREENSHOT}`);
  console.log(`demo screenshot saved to ${path.relative(process.cwd(), SCREENSHOT)} (${SCREENSHOT})`);
});
