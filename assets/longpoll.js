/*
 * longpoll-gateway browser client.
 *
 * One source, two forms: served as-is at /longpoll.js it is a classic script
 * that defines the global `LongPoll`; served at /longpoll.mjs the gateway appends
 * `export { LongPoll }` and it is an ES module (the `var` below then stays
 * module-local). No build step, no dependencies. See docs/browser.md.
 *
 *   const lp = new LongPoll({ uri, key });      // or LongPoll.fromCache()
 *   lp.addEventListener('message', (e) => console.log(e.detail, e.sequence, e.messageId));
 *   lp.addEventListener('longpoll.event.thing.1', (e) => refresh(e.detail));
 *   lp.start();
 *
 * The protocol (see the gateway's contract): GET {uri}?uuid={key}&sequence={n},
 * n starting at 1. A retry sends the same n; n moves on only after a message
 * (200, or 400 for a message carrying an `error` key), which also tells the
 * gateway that the previous message arrived. 408 and 504 are normal: poll again
 * at once. Network errors, 5xx and anything unexpected: retry later with capped
 * exponential backoff and jitter, forever. 404: the subscription is gone, stop.
 * 409 "Superseded": another poller owns the key, stop. 409 "Stale sequence":
 * go on from the sequence the answer names, plus one.
 *
 * With the `max` option (2–100) a poll sends max={k}, and an answer that says
 * X-Longpoll-Count is a JSON array of that many messages (their ids in
 * X-Longpoll-Message-Ids): the client fires them one by one, in order, as it
 * fires a single message. The answer is one sequence.
 *
 * A subscription can go away (expired while the page slept, or its queue lost
 * with a RabbitMQ node). With the `resubscribe` option the client asks the
 * page's backend for a new one that resumes after `lastMessageId` (the backend
 * calls the gateway's API with `resume_after`), carries on with it, and fires
 * `gap` when the history did not reach back that far.
 */
var LongPoll = (function () {
  'use strict';

  var SEQUENCE_HEADER = 'X-Longpoll-Sequence';
  var MESSAGE_ID_HEADER = 'X-Longpoll-Message-Id';
  var COUNT_HEADER = 'X-Longpoll-Count';
  var MESSAGE_IDS_HEADER = 'X-Longpoll-Message-Ids';

  // Names the client fires itself; a message whose event_key is one of these
  // only fires `message`, so that it cannot pass for a lifecycle event.
  var OWN_EVENTS = ['message', 'error', 'gone', 'gap', 'resubscribed', 'start', 'stop', 'statechange'];

  var DEFAULTS = {
    uri: undefined,
    key: undefined,
    /** First sequence to send (a client resuming a known stream may set it). */
    sequence: 1,
    /** Delay before the first retry after a failure, in ms. */
    backoffMin: 1000,
    /** Longest delay between retries, in ms. */
    backoffMax: 5 * 60 * 1000,
    /** Each further failure multiplies the delay by this. */
    backoffFactor: 2,
    /** Up to this fraction of each delay is taken off at random (0 = none). */
    backoffJitter: 0.2,
    /** Longest wait a Retry-After header (503, 429) can ask for, in ms. */
    retryAfterMax: 5 * 60 * 1000,
    /** A 408/504 answered sooner than this (ms) counts as a failure, so that a
     *  misbehaving proxy cannot make the client spin. */
    minHold: 250,
    /** How many message ids are remembered to drop duplicates. */
    seenIds: 1000,
    /** How many of the latest message ids each poll sends as `seen`: the proof
     *  of receipt that lets a replica tell its own answer from another
     *  replica's (0 = do not send). At least the number of replicas a client's
     *  polls may spread over. */
    proofIds: 8,
    /** Stop polling while the page is hidden; resume (same sequence) when shown. */
    pauseWhenHidden: false,
    /** Passed to fetch(); 'include' sends cookies to a gateway on another origin. */
    credentials: 'same-origin',
    /** fetch implementation (tests, or a wrapped fetch). */
    fetch: undefined,
    /** The id of the last message the page showed before this client (a page
     *  that keeps it across reloads); `lastMessageId` starts from it. */
    lastMessageId: null,
    /** `async (lastMessageId) => ({uri, key, gap})`: called when the
     *  subscription is gone (404). The page's backend makes a new subscription
     *  with `resume_after: lastMessageId`; the client carries on with it from
     *  sequence 1 and fires `gap` when `gap` is true. Resolving to null stops
     *  the client (`gone`); a rejection is retried with the backoff. */
    resubscribe: undefined,
    /** Most messages one answer may carry (1–100): above 1, each poll sends
     *  `max` and the messages already waiting come in one answer, fired one
     *  by one, in order. 1 polls as txlongpoll's clients do. */
    max: 1,
  };

  function ownEvent(type, detail) {
    return new CustomEvent(type, { detail: detail });
  }

  /** The page's `LP.cache.longpoll`, as Launchpad puts it in the page. */
  function cachedLongpoll() {
    var lp = typeof globalThis !== 'undefined' ? globalThis.LP : undefined;
    var cache = lp && lp.cache && lp.cache.longpoll;
    return cache && cache.uri && cache.key ? cache : null;
  }

  /** Seconds or an HTTP date → milliseconds from now; null when absent or bad. */
  function parseRetryAfter(value) {
    if (value == null || value === '') return null;
    var text = String(value).trim();
    if (/^\d+$/.test(text)) return Number(text) * 1000;
    var when = Date.parse(text);
    return isNaN(when) ? null : Math.max(0, when - Date.now());
  }

  /** Ids seen lately: a Set for lookups and a queue for forgetting the oldest. */
  function SeenIds(capacity) {
    this.capacity = Math.max(0, capacity | 0);
    this.set = new Set();
    this.queue = [];
  }
  SeenIds.prototype.has = function (id) {
    return this.set.has(id);
  };
  SeenIds.prototype.add = function (id) {
    if (this.capacity === 0) return;
    if (this.set.has(id)) {
      // Received again: it becomes the most recent (a replica holding it waits
      // for this client to show it before it acks).
      this.queue.splice(this.queue.indexOf(id), 1);
    }
    this.set.add(id);
    this.queue.push(id);
    while (this.queue.length > this.capacity) this.set.delete(this.queue.shift());
  };
  /** The `count` most recently received ids, most recent first. */
  SeenIds.prototype.recent = function (count) {
    return this.queue.slice(Math.max(0, this.queue.length - count)).reverse();
  };

  class LongPoll extends EventTarget {
    /**
     * @param {object} [options] `uri` and `key` (default: `LP.cache.longpoll`),
     *   plus the settings listed in DEFAULTS above.
     */
    constructor(options) {
      super();
      var opts = Object.assign({}, DEFAULTS, options || {});
      if (!opts.uri || !opts.key) {
        var cache = cachedLongpoll();
        if (cache) {
          opts.uri = opts.uri || cache.uri;
          opts.key = opts.key || cache.key;
        }
      }
      if (!opts.uri || !opts.key) {
        throw new TypeError('LongPoll needs {uri, key} (or LP.cache.longpoll)');
      }
      this.options = opts;
      this.uri = String(opts.uri);
      this.key = String(opts.key);
      /** The sequence the next poll sends. */
      this.sequence = Number(opts.sequence) || 1;
      /** 'idle' | 'polling' | 'waiting' | 'paused' | 'resubscribing' | 'stopped' */
      this.state = 'idle';
      /** Failures since the last success (drives the backoff). */
      this.failures = 0;
      /** Messages dropped because their id had been seen. */
      this.duplicates = 0;
      /** The id of the last message shown (what a resumed subscription goes on after). */
      this.lastMessageId = opts.lastMessageId == null ? null : String(opts.lastMessageId);
      this._seen = new SeenIds(opts.seenIds);
      this._running = false;
      this._controller = null;
      this._timer = null;
      this._onVisibility = this._onVisibility.bind(this);
      this._onOnline = this._onOnline.bind(this);
    }

    /** A client for the page's `LP.cache.longpoll` (null when the page has none). */
    static fromCache(options) {
      var cache = cachedLongpoll();
      if (!cache) return null;
      return new LongPoll(Object.assign({}, options || {}, { uri: cache.uri, key: cache.key }));
    }

    /** True between start() and stop() (or gone / superseded). */
    get running() {
      return this._running;
    }

    /** The URL of the poll for `sequence`: `uri` with `uuid` and `sequence` set,
     *  whatever path prefix or query `uri` already has. */
    pollUrl(sequence) {
      var base = typeof document !== 'undefined' && document.baseURI
        ? document.baseURI
        : (typeof location !== 'undefined' ? location.href : undefined);
      var url = new URL(this.uri, base);
      url.hash = '';
      url.searchParams.set('uuid', this.key);
      url.searchParams.set('sequence', String(sequence));
      if (this.options.proofIds > 0 && this._seen.capacity > 0) {
        url.searchParams.set('seen', this._seen.recent(this.options.proofIds).join(','));
      }
      var max = Math.min(100, Math.floor(Number(this.options.max)) || 1);
      if (max > 1) url.searchParams.set('max', String(max));
      return url.href;
    }

    /** Starts polling (again); a no-op while running. Returns this. */
    start() {
      if (this._running) return this;
      this._running = true;
      this.failures = 0;
      if (this.options.pauseWhenHidden && typeof document !== 'undefined') {
        document.addEventListener('visibilitychange', this._onVisibility);
      }
      if (typeof window !== 'undefined' && window.addEventListener) {
        window.addEventListener('online', this._onOnline);
      }
      this.dispatchEvent(ownEvent('start', { sequence: this.sequence }));
      if (this._hidden()) this._setState('paused');
      else this._poll();
      return this;
    }

    /** Stops polling and aborts the held request. Returns this. */
    stop() {
      this._halt('stopped');
      return this;
    }

    // ---- the loop -------------------------------------------------------

    _poll() {
      this._clearTimer();
      this._abort(); // one request at a time, even if a listener restarted us
      if (!this._running || this._hidden()) return;
      var controller = new AbortController();
      var sequence = this.sequence;
      var started = Date.now();
      var fetchImpl = this.options.fetch || globalThis.fetch.bind(globalThis);
      var self = this;
      this._controller = controller;
      this._setState('polling');
      fetchImpl(this.pollUrl(sequence), {
        method: 'GET',
        cache: 'no-store',
        credentials: this.options.credentials,
        signal: controller.signal,
      })
        .then(function (response) {
          return response.text().then(function (body) {
            return { response: response, body: body };
          });
        })
        .then(
          function (answer) {
            if (self._controller !== controller) return; // stopped or paused meanwhile
            self._controller = null;
            self._answer(answer.response, answer.body, sequence, Date.now() - started);
          },
          function (error) {
            if (self._controller !== controller) return;
            self._controller = null;
            self._failed({ reason: 'network', error: error });
          }
        );
    }

    _answer(response, body, sequence, elapsed) {
      var status = response.status;
      if (status === 200) {
        if (response.headers.get(COUNT_HEADER) !== null) return this._messages(response, body, sequence);
        return this._message(response, body, sequence, false);
      }
      if (status === 400) {
        // A message with an `error` key is answered 400 (txlongpoll). It is a
        // message: move on, or the gateway would replay it forever. Anything
        // else (Invalid request / Invalid sequence) cannot get better by retrying.
        var data = parseJson(body);
        if (isObject(data) && 'error' in data) return this._message(response, body, sequence, true);
        return this._fatal({ reason: 'invalid', status: status, body: body });
      }
      if (status === 404) return this._gone(status);
      if (status === 408 || status === 504) {
        if (elapsed < this.options.minHold) return this._failed({ reason: 'http', status: status });
        this.failures = 0; // the gateway is there; nothing came in time
        return this._poll();
      }
      if (status === 409) return this._conflict(response, body);
      var retryAfter = status === 503 || status === 429
        ? parseRetryAfter(response.headers.get('Retry-After'))
        : null;
      return this._failed({ reason: 'http', status: status, body: body }, retryAfter);
    }

    _message(response, body, sequence, isError) {
      var id = response.headers.get(MESSAGE_ID_HEADER);
      // Moving to the next sequence is what acks this message on the gateway:
      // do it even for a duplicate or a body that does not parse.
      this.sequence = sequence + 1;
      this.failures = 0;
      if (id !== null && this._seen.has(id)) {
        this.duplicates += 1;
        this._seen.add(id);
      } else {
        if (id !== null) {
          this._seen.add(id);
          this.lastMessageId = id;
        }
        this._deliver(body, sequence, id, isError);
      }
      this._poll();
    }

    /** An answer of several messages (`max`): one sequence, its messages
     *  fired in order, each checked for a duplicate as a single one is. */
    _messages(response, body, sequence) {
      var last = response.headers.get(MESSAGE_ID_HEADER);
      var listed = response.headers.get(MESSAGE_IDS_HEADER);
      var ids = listed === null || listed === '' ? [] : listed.split(',');
      this.sequence = sequence + 1;
      this.failures = 0;
      var data = parseJson(body);
      if (!Array.isArray(data)) {
        this._emitError({ reason: 'parse', body: body, sequence: sequence, messageId: last, fatal: false });
        if (last !== null) this._seen.add(last);
        this._poll();
        return;
      }
      for (var i = 0; i < data.length; i++) {
        // The ids header names every message; without it (a proxy dropped
        // it), only the last one's id is known.
        var id = ids.length === data.length ? ids[i] : (i === data.length - 1 ? last : null);
        if (id !== null && this._seen.has(id)) {
          this.duplicates += 1;
          this._seen.add(id);
          continue;
        }
        if (id !== null) {
          this._seen.add(id);
          this.lastMessageId = id;
        }
        this._fire(data[i], sequence, id, false);
      }
      this._poll();
    }

    _deliver(body, sequence, id, isError) {
      var data = parseJson(body);
      if (data === undefined) {
        this._emitError({ reason: 'parse', body: body, sequence: sequence, messageId: id, fatal: false });
        return;
      }
      this._fire(data, sequence, id, isError);
    }

    /** Fires `message` (and the message's event_key, or `error` for an error
     *  message) for one parsed message. */
    _fire(data, sequence, id, isError) {
      var self = this;
      function fire(type) {
        var event = ownEvent(type, data);
        event.sequence = sequence;
        event.messageId = id;
        event.isError = isError;
        self.dispatchEvent(event);
      }
      fire('message');
      if (isError) {
        this._emitError({ reason: 'message', message: data, sequence: sequence, messageId: id, fatal: false });
      } else if (isObject(data) && typeof data.event_key === 'string' &&
                 data.event_key !== '' && OWN_EVENTS.indexOf(data.event_key) < 0) {
        fire(data.event_key);
      }
    }

    _conflict(response, body) {
      var last = response.headers.get(SEQUENCE_HEADER);
      if (last !== null && /^\d+$/.test(last.trim())) {
        // Stale sequence: the gateway already answered up to `last`.
        this.sequence = Number(last) + 1;
        this.failures = 0;
        return this._poll();
      }
      if (/superseded/i.test(body)) {
        return this._fatal({ reason: 'superseded', status: 409 });
      }
      if (/stale/i.test(body)) {
        // Without the header there is nowhere to go on from: on another origin
        // the gateway must expose X-Longpoll-Sequence (it does with --cors-origin).
        return this._fatal({ reason: 'stale', status: 409, body: body });
      }
      return this._failed({ reason: 'http', status: 409, body: body });
    }

    _gone(status) {
      if (typeof this.options.resubscribe === 'function') return this._resubscribe(status);
      this._halt('gone', ownEvent('gone', { status: status, key: this.key, lastMessageId: this.lastMessageId }));
    }

    /** The subscription is gone: ask for one that resumes after lastMessageId. */
    _resubscribe(status) {
      var self = this;
      var oldKey = this.key;
      this._clearTimer();
      this._setState('resubscribing');
      var attempt;
      try {
        attempt = Promise.resolve(this.options.resubscribe(this.lastMessageId));
      } catch (error) {
        attempt = Promise.reject(error);
      }
      attempt.then(
        function (fresh) {
          if (!self._running || self.key !== oldKey) return;
          if (!fresh || !fresh.uri || !fresh.key) {
            self._halt('gone', ownEvent('gone', { status: status, key: oldKey, lastMessageId: self.lastMessageId }));
            return;
          }
          self.uri = String(fresh.uri);
          self.key = String(fresh.key);
          // A new subscription counts from 1; the ids seen stay, so a message
          // both replayed and already shown is still dropped.
          self.sequence = 1;
          self.failures = 0;
          var detail = { key: self.key, previousKey: oldKey, gap: !!fresh.gap, lastMessageId: self.lastMessageId };
          self.dispatchEvent(ownEvent('resubscribed', detail));
          if (fresh.gap) self.dispatchEvent(ownEvent('gap', detail));
          self._poll();
        },
        function (error) {
          if (!self._running || self.key !== oldKey) return;
          // The backend could not answer: try again later, as after a failed poll.
          self.failures += 1;
          var delay = self.backoffDelay(self.failures);
          self._timer = setTimeout(function () { self._timer = null; self._gone(status); }, delay);
          self._setState('waiting', { retryIn: delay });
          self._emitError({ reason: 'resubscribe', error: error, attempt: self.failures, retryIn: delay, fatal: false });
        }
      );
    }

    _fatal(detail) {
      detail.fatal = true;
      this._halt(detail.reason, ownEvent('error', detail));
    }

    /** A failed poll: retry the same sequence after the backoff delay. */
    _failed(detail, retryAfter) {
      this.failures += 1;
      var delay = this.backoffDelay(this.failures);
      if (retryAfter != null) delay = Math.max(delay, Math.min(retryAfter, this.options.retryAfterMax));
      detail.fatal = false;
      detail.attempt = this.failures;
      detail.retryIn = delay;
      detail.sequence = this.sequence;
      // Schedule first: a listener that calls stop() then clears the timer.
      this._clearTimer();
      this._timer = setTimeout(this._poll.bind(this), delay);
      this._setState('waiting', { retryIn: delay });
      this._emitError(detail);
    }

    /** The delay (ms) before retry number `attempt` (1, 2, ...). */
    backoffDelay(attempt) {
      var o = this.options;
      var exp = Math.min(o.backoffMax, o.backoffMin * Math.pow(o.backoffFactor, Math.max(0, attempt - 1)));
      var jitter = Math.min(1, Math.max(0, o.backoffJitter));
      return Math.round(exp * (1 - jitter * Math.random()));
    }

    _emitError(detail) {
      this.dispatchEvent(ownEvent('error', detail));
    }

    /** Stops for `reason`; `event` (gone, a fatal error) is fired before `stop`. */
    _halt(reason, event) {
      var wasRunning = this._running;
      this._running = false;
      this._abort();
      this._clearTimer();
      if (typeof document !== 'undefined') {
        document.removeEventListener('visibilitychange', this._onVisibility);
      }
      if (typeof window !== 'undefined' && window.removeEventListener) {
        window.removeEventListener('online', this._onOnline);
      }
      this._setState('stopped', { reason: reason });
      if (event) this.dispatchEvent(event);
      if (wasRunning) this.dispatchEvent(ownEvent('stop', { reason: reason }));
    }

    _abort() {
      var controller = this._controller;
      this._controller = null;
      if (controller) controller.abort();
    }

    _clearTimer() {
      if (this._timer !== null) clearTimeout(this._timer);
      this._timer = null;
    }

    _hidden() {
      return !!(this.options.pauseWhenHidden && typeof document !== 'undefined' &&
                document.visibilityState === 'hidden');
    }

    _onVisibility() {
      if (!this._running) return;
      if (this._hidden()) {
        // The gateway requeues a message whose poll goes away unanswered, and
        // replays one that was answered: resuming with the same sequence loses nothing.
        this._abort();
        this._clearTimer();
        this._setState('paused');
      } else if (this.state === 'paused') {
        this._poll();
      }
    }

    _onOnline() {
      // Back online: no reason to sit out the rest of the backoff.
      if (this._running && this.state === 'waiting') this._poll();
    }

    _setState(state, extra) {
      if (this.state === state) return;
      var previous = this.state;
      this.state = state;
      this.dispatchEvent(ownEvent('statechange', Object.assign({ state: state, previous: previous }, extra || {})));
    }
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return undefined;
    }
  }

  function isObject(value) {
    return value !== null && typeof value === 'object' && !Array.isArray(value);
  }

  LongPoll.DEFAULTS = DEFAULTS;
  LongPoll.parseRetryAfter = parseRetryAfter;
  return LongPoll;
})();
