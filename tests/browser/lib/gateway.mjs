// The gateway binary as a child process on free loopback ports, plus its
// management API and metrics. Every process started here is killed on exit.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { within } from './wait.mjs';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = process.env.LONGPOLL_BIN || path.join(REPO, 'target/debug/longpoll-gateway');
export const BROKER = process.env.LONGPOLL_TEST_BROKER || 'amqp://guest:guest@127.0.0.1:5672/%2f';
export const TOKEN = 'browser-test-token';

const children = new Set();
function killAll() {
  for (const child of children) child.kill('SIGKILL');
}
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}

/** A running gateway: `url` (public), `admin`, and helpers. */
export class Gateway {
  /**
   * Starts `longpoll-gateway serve` with `args` added to the test defaults
   * (RabbitMQ broker, API token, 5 s polls, short-lived queues).
   */
  static async start(args = [], { listen = '127.0.0.1:0' } = {}) {
    if (!existsSync(BIN)) throw new Error(`no gateway binary at ${BIN} (set LONGPOLL_BIN)`);
    const defaults = {
      '--listen': listen,
      '--admin-listen': '127.0.0.1:0',
      '--log-format': 'json',
      '--broker': BROKER,
      '--api-token': TOKEN,
      '--poll-timeout': '5s',
      '--subscription-expiry': '120s',
      '--drain-timeout': '1s',
    };
    // A flag given in `args` replaces its default (the CLI refuses repeats).
    const flags = Object.entries(defaults).filter(([flag]) => !args.includes(flag)).flat();
    const child = spawn(BIN, ['serve', ...flags, ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    children.add(child);
    const gateway = new Gateway(child);
    await within(gateway._addresses, 15_000, `gateway start (${BIN})\n${gateway.logs()}`);
    return gateway;
  }

  constructor(child) {
    this.child = child;
    this.lines = [];
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }));
    this._addresses = new Promise((resolve, reject) => {
      let buffer = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk) => {
        buffer += chunk;
        let newline;
        while ((newline = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          this.lines.push(line);
          if (this.lines.length > 200) this.lines.shift();
          try {
            const entry = JSON.parse(line);
            if (entry.public && entry.admin) {
              this.url = `http://${entry.public}`;
              this.admin = `http://${entry.admin}`;
              resolve();
            }
          } catch {
            // not a JSON line
          }
        }
      });
      this.exited.then(({ code, signal }) => reject(new Error(`gateway exited (${code ?? signal})\n${this.logs()}`)));
    });
    this._addresses.catch(() => {});
  }

  logs() {
    return this.lines.join('\n');
  }

  /** Sends `signal` and waits for the process to end. */
  async kill(signal = 'SIGKILL') {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return within(this.exited, 10_000, `gateway exit after ${signal}`);
  }

  async api(method, apiPath, body) {
    const response = await fetch(new URL(apiPath, this.url), {
      method,
      headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${apiPath}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** A fresh subscription: `{key, uri}`. */
  subscribe(eventKeys) {
    return this.api('POST', '/api/v1/subscriptions', { event_keys: eventKeys });
  }

  /** Publishes `payload` under `eventKey`: `{event_key, message_id}`. */
  emit(eventKey, payload) {
    return this.api('POST', `/api/v1/events/${encodeURIComponent(eventKey)}`, payload);
  }

  /** The value of an unlabelled metric from /metrics (NaN when absent). */
  async metric(name) {
    const text = await (await fetch(`${this.admin}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line ? Number(line.split(' ')[1]) : NaN;
  }
}

/** Event keys no other test uses. */
export function uniqueKey(label) {
  return `longpoll.event.browser.${label}.${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}
