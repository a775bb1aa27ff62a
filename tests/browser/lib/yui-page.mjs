// A page that polls the way txlongpoll's own clients do — Launchpad's
// `lp.app.longpoll` and MAAS's fork `maas.longpoll`, both YUI 3 modules — written
// for these tests with YUI 3's real `io` (the npm package `yui`, served from
// node_modules): a GET per poll with `uuid` and `sequence` only (no `seen`), the
// sequence counted up before every request (so the next sequence follows any
// answer), 408 and 504 polled again at once, a message polled again at once
// (MAAS's behaviour), any other answer counted as a failure and retried after
// SHORT_DELAY (LONG_DELAY after MAX_SHORT_DELAY_FAILED_ATTEMPTS in a row). YUI's
// io sends `X-Requested-With: XMLHttpRequest` on every request, cross-origin too.
//
// The key and uri come from the page's own URL (`?key=…&uri=…`), as Launchpad
// puts them in the page (LP.cache.longpoll): a reload keeps them, and the
// restarted client counts from 1 again.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where the site serves YUI from, and the directory it serves. */
export const YUI_PREFIX = '/yui/';
export const YUI_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../node_modules/yui');

/** The page's HTML; `shortDelay`/`longDelay` in ms (Launchpad's: 1 s and 3 min). */
export function yuiPage({ shortDelay = 1000, longDelay = 180_000 } = {}) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>txlongpoll client (YUI 3)</title>
<link rel="icon" href="data:,">
<script src="${YUI_PREFIX}yui/yui-min.js"></script>
<script>
  // What the tests read: every answer (status, sequence sent, body) and every
  // event fired, in order, with the time it came.
  window.answers = [];
  window.fired = [];
  var params = new URLSearchParams(location.search);
  var SHORT_DELAY = ${shortDelay}, LONG_DELAY = ${longDelay}, MAX_SHORT_DELAY_FAILED_ATTEMPTS = 5;
  YUI({ base: '${YUI_PREFIX}', combine: false, fetchCSS: false }).use('io-base', 'json-parse', function (Y) {
    var key = params.get('key'), uri = params.get('uri');
    var sequence = 0, failedAttempts = 0;
    function repoll(failed) {
      if (!failed) {
        failedAttempts = 0;
        poll();
        return;
      }
      failedAttempts += 1;
      setTimeout(poll, failedAttempts >= MAX_SHORT_DELAY_FAILED_ATTEMPTS ? LONG_DELAY : SHORT_DELAY);
    }
    function record(response, sent) {
      window.answers.push({ status: response ? response.status : 0, sequence: sent,
                            body: response ? response.responseText : '', at: performance.now() });
    }
    function poll() {
      sequence += 1;
      var sent = sequence;
      var url = uri + (uri.indexOf('?') === -1 ? '?' : '&') + 'uuid=' + key + '&sequence=' + sent;
      Y.io(url, {
        method: 'GET',
        on: {
          success: function (id, response) {
            record(response, sent);
            try {
              var data = Y.JSON.parse(response.responseText);
              window.fired.push({ event_key: data.event_key, data: data, sequence: sent, at: performance.now() });
              repoll(false);
            } catch (e) {
              repoll(true);
            }
          },
          failure: function (id, response) {
            record(response, sent);
            var status = response && response.status;
            repoll(!(status === 408 || status === 504));
          }
        }
      });
    }
    window.yuiLoaded = true;
    poll();
  });
</script>
</head><body><h1>txlongpoll client (YUI 3)</h1></body></html>`;
}

/** The page's URL on `site` for one subscription. */
export function yuiPageUrl(site, { key, uri }) {
  return `${site.url}/yui.html?key=${encodeURIComponent(key)}&uri=${encodeURIComponent(uri)}`;
}
