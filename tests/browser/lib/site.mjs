// A small local web site for the tests: serves test pages, and passes every
// other path to a handler, by default a reverse proxy to a switchable upstream
// (the gateway). The proxy can strip a path prefix (like an ingress rewrite),
// rewrite requests, hold upstream answers back (a response lost on the way), or
// park requests (a client whose next poll has not reached the gateway yet).
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';

/** The HTML of a test page that loads `script` and records the client's events. */
export function testPage({ script = '/longpoll.js', head = '' } = {}) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>longpoll test page</title>
<link rel="icon" href="data:,">
${head}
${script ? `<script src="${script}"></script>` : ''}
<script>
  // Every event a client fires, in order, with what the tests look at.
  window.events = [];
  window.track = function (lp, extraTypes) {
    var types = ['message', 'error', 'gone', 'start', 'stop', 'statechange'].concat(extraTypes || []);
    types.forEach(function (type) {
      lp.addEventListener(type, function (e) {
        window.events.push({
          type: type, detail: JSON.parse(JSON.stringify(e.detail === undefined ? null : e.detail)),
          sequence: e.sequence, messageId: e.messageId, isError: e.isError, at: performance.now()
        });
      });
    });
    return lp;
  };
  window.of = function (type) {
    return window.events.filter(function (e) { return e.type === type; });
  };
</script>
</head><body><h1>longpoll test page</h1></body></html>`;
}

export class Site {
  /**
   * @param {object} options `pages` (path → HTML, or {type, body}), `upstream` (proxy target),
   *   `prefix` (only paths under it are proxied, with the prefix stripped),
   *   `handle(req, res)` (instead of the proxy).
   */
  static async start(options = {}) {
    const site = new Site(options);
    await new Promise((resolve) => site.server.listen(0, '127.0.0.1', resolve));
    site.url = `http://127.0.0.1:${site.server.address().port}`;
    return site;
  }

  constructor({ pages = {}, upstream = null, prefix = '', handle = null, dirs = {} } = {}) {
    this.pages = pages;
    /** URL prefix (ending in /) → directory whose files are served under it. */
    this.dirs = dirs;
    this.upstream = upstream;
    this.prefix = prefix;
    this.handle = handle;
    /** Every proxied or handled request: {url, at, status}. */
    this.requests = [];
    /** Set to a function (url) → url to rewrite the next proxied requests. */
    this.rewrite = null;
    this.holdResponses = false;
    this.heldResponses = [];
    this.holdRequests = false;
    this.parkedRequests = [];
    this.inFlight = 0;
    this.sockets = new Set();
    this.server = http.createServer((req, res) => this._serve(req, res));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  _serve(req, res) {
    const url = new URL(req.url, 'http://site');
    const dir = Object.keys(this.dirs).find((p) => url.pathname.startsWith(p));
    if (dir !== undefined) return this._file(res, this.dirs[dir], url.pathname.slice(dir.length));
    const page = this.pages[url.pathname];
    if (page !== undefined) {
      // A string is an HTML page; {type, body} any other file.
      const { type, body } = typeof page === 'string' ? { type: 'text/html; charset=utf-8', body: page } : page;
      res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' });
      res.end(body);
      return;
    }
    const record = { url: req.url, at: Date.now(), status: null, doneAt: null };
    this.requests.push(record);
    res.on('finish', () => {
      record.status = res.statusCode;
      record.doneAt = Date.now();
    });
    if (this.handle) return this.handle(req, res, record);
    if (!this.upstream || (this.prefix && !url.pathname.startsWith(this.prefix))) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not here');
      return;
    }
    if (this.holdRequests && url.searchParams.has('uuid')) {
      this.parkedRequests.push({ req, res });
      return;
    }
    this._forward(req, res);
  }

  async _file(res, root, relative) {
    const file = path.resolve(root, decodeURIComponent(relative));
    const types = { '.js': 'text/javascript; charset=utf-8', '.css': 'text/css', '.json': 'application/json' };
    try {
      if (!file.startsWith(path.resolve(root) + path.sep)) throw new Error('outside');
      const body = await readFile(file);
      res.writeHead(200, { 'Content-Type': types[path.extname(file)] || 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('no such file');
    }
  }

  _forward(req, res) {
    let target = req.url;
    if (this.prefix) target = target.slice(this.prefix.length - 1) || '/';
    if (this.rewrite) target = this.rewrite(target);
    const isPoll = new URL(target, 'http://site').searchParams.has('uuid');
    this.inFlight += 1;
    const upstream = http.request(new URL(target, this.upstream), {
      method: req.method,
      headers: { ...req.headers, host: new URL(this.upstream).host },
    }, (answer) => {
      const chunks = [];
      answer.on('data', (c) => chunks.push(c));
      answer.on('end', () => {
        this.inFlight -= 1;
        const held = { res, status: answer.statusCode, headers: answer.headers, body: Buffer.concat(chunks) };
        if (this.holdResponses && isPoll) this.heldResponses.push(held);
        else Site._send(held);
      });
      answer.on('error', () => { this.inFlight -= 1; res.destroy(); });
    });
    upstream.on('error', () => {
      this.inFlight -= 1;
      if (!res.headersSent) {
        res.writeHead(502, { 'Content-Type': 'text/plain' });
        res.end('bad gateway');
      }
    });
    // The browser went away (abort, page closed): so does the upstream request,
    // as a real proxy does, so that the gateway sees the disconnect.
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  }

  static _send({ res, status, headers, body }) {
    if (res.destroyed) return;
    const copy = { ...headers };
    delete copy['transfer-encoding'];
    delete copy.connection;
    copy['content-length'] = String(body.length);
    res.writeHead(status, copy);
    res.end(body);
  }

  /** Forwards the parked requests to the current upstream. */
  releaseRequests() {
    this.holdRequests = false;
    const parked = this.parkedRequests.splice(0);
    for (const { req, res } of parked) this._forward(req, res);
  }

  /** Throws the held answers away and answers 502 instead, as a proxy whose
   *  upstream died mid-answer does. */
  failHeldResponses() {
    this.holdResponses = false;
    for (const { res } of this.heldResponses.splice(0)) {
      Site._send({ res, status: 502, headers: { 'content-type': 'text/plain' }, body: Buffer.from('bad gateway') });
    }
  }

  /** Requests whose URL has `uuid` (the polls), each with its `sequence`. */
  polls() {
    return this.requests
      .map((r) => ({ ...r, sequence: Number(new URL(r.url, 'http://site').searchParams.get('sequence')) }))
      .filter((r) => new URL(r.url, 'http://site').searchParams.has('uuid'));
  }

  async close() {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
