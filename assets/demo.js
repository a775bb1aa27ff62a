// The demo page: subscribes through the gateway's management API (needs the
// --api-token), polls with the browser client, and emits test events.
import { LongPoll } from './longpoll.mjs';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'longpoll-demo-token';
const STATES = {
  idle: 'Not subscribed',
  polling: 'Connected, waiting for events',
  waiting: 'Connection lost, retrying',
  paused: 'Paused',
  stopped: 'Stopped',
};

let lp = null;
let count = 0;

/** The token from ?token= (then dropped from the address bar) or this tab's storage. */
function initialToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    return fromUrl;
  }
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

async function api(path, body) {
  const token = $('token').value.trim();
  const response = await fetch(new URL(path, location.href), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (response.ok) return data;
  if (response.status === 404 && path.includes('subscriptions')) {
    throw new Error('The management API is off: start the gateway with --api-token.');
  }
  if (response.status === 401) throw new Error('The gateway refused the API token.');
  throw new Error(data.error || `HTTP ${response.status}`);
}

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status-text').textContent = text || STATES[state] || state;
}

function showError(element, error) {
  element.textContent = error ? String(error.message || error) : '';
  element.hidden = !error;
}

function eventKeys() {
  return $('event-keys').value.split(/[\s,]+/).filter(Boolean);
}

async function subscribe(event) {
  if (event) event.preventDefault();
  showError($('connect-error'), null);
  const keys = eventKeys();
  if (!$('token').value.trim() || keys.length === 0) return;
  sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
  $('subscribe').disabled = true;
  try {
    const sub = await api('api/v1/subscriptions', { event_keys: keys });
    if (lp) lp.stop();
    listen(sub);
    $('emit-key').value = keys[0];
  } catch (error) {
    showError($('connect-error'), error);
    setStatus('idle');
  } finally {
    $('subscribe').disabled = false;
  }
}

function listen(sub) {
  $('sub-key').textContent = sub.key;
  $('sub-uri').textContent = sub.uri;
  $('subscription').hidden = false;
  lp = new LongPoll({ uri: sub.uri, key: sub.key });
  window.demo = { lp };
  lp.addEventListener('message', (e) => addRow(e));
  lp.addEventListener('statechange', (e) => {
    const { state, retryIn } = e.detail;
    setStatus(state, state === 'waiting' ? `Connection lost, retrying in ${Math.ceil(retryIn / 1000)} s` : null);
    $('sub-sequence').textContent = String(lp.sequence);
  });
  lp.addEventListener('gone', () => setStatus('stopped', 'Subscription gone (expired or deleted): subscribe again'));
  lp.addEventListener('error', (e) => {
    if (e.detail.fatal) setStatus('stopped', `Stopped: ${e.detail.reason}`);
  });
  lp.start();
}

function cell(text, className) {
  const td = document.createElement('td');
  const code = document.createElement('code');
  code.textContent = text;
  if (className) code.className = className;
  td.append(code);
  return td;
}

function addRow(e) {
  const data = e.detail;
  const row = document.createElement('tr');
  row.className = e.isError ? 'fresh is-error' : 'fresh';
  row.dataset.messageId = e.messageId || '';
  row.dataset.sequence = String(e.sequence);
  const payload = data && typeof data === 'object' ? { ...data } : data;
  if (payload && typeof payload === 'object') delete payload.event_key;
  row.append(
    cell(String(e.sequence)),
    cell(new Date().toLocaleTimeString()),
    cell((data && data.event_key) || '', 'key'),
    cell(e.messageId || ''),
    cell(JSON.stringify(payload, null, 1)),
  );
  $('events').prepend(row);
  count += 1;
  $('event-count').textContent = String(count);
  $('events-empty').hidden = true;
  $('sub-sequence').textContent = String(lp.sequence);
}

async function emit(event) {
  event.preventDefault();
  const result = $('emit-result');
  result.className = 'muted';
  let payload;
  try {
    payload = JSON.parse($('emit-payload').value);
    if (!payload || typeof payload !== 'object' || Array.isArray(payload)) throw new Error();
  } catch {
    result.className = 'error';
    result.textContent = 'The payload must be a JSON object.';
    return;
  }
  $('emit').disabled = true;
  try {
    const key = $('emit-key').value.trim();
    const sent = await api(`api/v1/events/${encodeURIComponent(key)}`, payload);
    result.textContent = `Accepted, message id ${sent.message_id}`;
  } catch (error) {
    result.className = 'error';
    result.textContent = String(error.message || error);
  } finally {
    $('emit').disabled = false;
  }
}

$('subscribe-form').addEventListener('submit', subscribe);
$('emit-form').addEventListener('submit', emit);
$('token').value = initialToken();
if ($('token').value) subscribe();
