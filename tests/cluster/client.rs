//! The test's long-poll client: the contract's client rules, written out one by one,
//! with a count of every retry by its kind.
//!
//! 1. The first poll is `sequence=1`.
//! 2. A failed poll is retried with the **same** sequence.
//! 3. The sequence advances only after a 200 (a message) or a 400 (an `error` message).
//! 4. 408 and 504 are normal: poll again at once, same sequence.
//! 5. Other 5xx and network errors: back off exponentially with full jitter (capped), and
//!    when the answer carries `Retry-After`, wait exactly that long instead.
//! 6. 409 `Stale sequence`: resume from `X-Longpoll-Sequence` + 1.
//! 7. 404 (gone) and 409 `Superseded` (another poller owns the key): stop.
//! 8. A message whose `X-Longpoll-Message-Id` was already seen is dropped (a bounded set of
//!    the last ids); the application sees every message id once.
//! 9. Each poll carries `seen` = the ids of the last few messages received (most recent
//!    first, a duplicate counting as received again): the proof of receipt that lets a
//!    replica tell its own answer from another replica's (see docs/scaling.md).
//!
//! A client made with `max` polls with `max={k}`: an answer with `X-Longpoll-Count` is a
//! JSON array whose messages (ids in `X-Longpoll-Message-Ids`) go through rule 8 one by
//! one, in order; the last of them is the most recent id for rule 9.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// How many message ids a client remembers (rule 8). A redelivery comes back within a
/// few messages of the original, so a few hundred is plenty.
pub const SEEN_IDS: usize = 256;

/// Retries and re-polls, by kind (rules 4–6).
#[derive(Debug, Default, Clone)]
pub struct RetryCounts {
    /// Network errors: connection refused/reset, truncated answers, client timeouts.
    pub network: u64,
    /// 502 (nginx: every upstream try failed).
    pub http_502: u64,
    /// 503 (draining replica, broker unavailable, over --max-polls), after Retry-After.
    pub http_503: u64,
    /// Any other 5xx.
    pub other_5xx: u64,
    /// 408 and 504: polled again at once (not errors).
    pub timeouts: u64,
    /// 409 Stale sequence: resumed from the sequence it names + 1.
    pub stale: u64,
}

impl RetryCounts {
    /// Retries of a failed poll (rule 5); re-polls after 408/504 are not failures.
    pub fn retries(&self) -> u64 {
        self.network + self.http_502 + self.http_503 + self.other_5xx + self.stale
    }

    pub fn add(&mut self, o: &RetryCounts) {
        self.network += o.network;
        self.http_502 += o.http_502;
        self.http_503 += o.http_503;
        self.other_5xx += o.other_5xx;
        self.timeouts += o.timeouts;
        self.stale += o.stale;
    }
}

/// One answer the client saw, for the evidence when an assertion fails.
#[derive(Debug, Clone)]
pub struct Trace {
    pub at: Duration,
    pub sequence: u64,
    /// HTTP status, or 0 for a network error.
    pub status: u16,
    pub message_id: String,
    /// The event number in the body (0 when none).
    pub event: u64,
    /// The replica(s) nginx tried (`X-Cluster-Upstream`, test instrumentation).
    pub upstream: String,
    pub note: &'static str,
}

/// What one client ended with.
#[derive(Debug, Clone, Default)]
pub struct ClientOutcome {
    pub index: usize,
    pub key: String,
    /// Event numbers in the order the application saw them (after rule 8).
    pub events: Vec<u64>,
    /// Message ids the application saw, in the same order.
    pub ids: Vec<String>,
    /// Messages dropped by rule 8 (a redelivery or a replay of something already seen).
    pub duplicates_dropped: u64,
    /// Answers of two messages or more (polls with `max`), and the messages they carried.
    pub several: (u64, u64),
    pub retries: RetryCounts,
    /// Why the client stopped early (404, 409 Superseded), if it did.
    pub stopped: Option<String>,
    pub trace: VecDeque<Trace>,
}

/// How many of the latest ids each poll sends as `seen` (rule 9): at least the number
/// of replicas a client's polls may spread over.
pub const PROOF_IDS: usize = 8;

/// The ids seen lately (rule 8), bounded.
struct SeenIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl SeenIds {
    fn new() -> Self {
        SeenIds {
            order: VecDeque::with_capacity(SEEN_IDS),
            set: HashSet::with_capacity(SEEN_IDS),
        }
    }

    /// The `count` most recently received ids, most recent first.
    fn recent(&self, count: usize) -> Vec<String> {
        self.order.iter().rev().take(count).cloned().collect()
    }

    /// True when `id` is new (and remembers it). An id received again becomes the
    /// most recent.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            if let Some(at) = self.order.iter().position(|x| x == id) {
                self.order.remove(at);
            }
            self.order.push_back(id.to_owned());
            return false;
        }
        if self.order.len() == SEEN_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

/// Exponential backoff with full jitter (rule 5).
struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            attempt: 0,
            base: Duration::from_millis(50),
            // longpoll.js caps at minutes; the test keeps it short so a scenario stays short.
            cap: Duration::from_secs(2),
        }
    }

    fn next(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(self.cap);
        self.attempt += 1;
        let ms = rand::rng().random_range(0..=ceiling.as_millis() as u64);
        Duration::from_millis(ms)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Shared live counters: how many events all clients have, for the scenario to wait on.
#[derive(Debug, Default)]
pub struct Progress {
    pub delivered: AtomicU64,
    pub complete: AtomicU64,
    /// The event number shown last (meaningful for a `Progress` given to one client).
    pub last_event: AtomicU64,
}

/// One subscription's poller.
pub struct Client {
    pub index: usize,
    pub key: String,
    /// `{nginx}/longpoll/` — the subscription's `uri`.
    pub uri: String,
    /// Stop after this many distinct events.
    pub expected: u64,
    /// Per-request limit: above nginx's read timeout, so nginx (then the gateway) answers first.
    pub request_timeout: Duration,
    pub trace_len: usize,
    /// Poll with `max={k}` (several messages per answer); `None` = one per answer.
    pub max: Option<u8>,
    /// The rounds the publisher has published: when given, after showing event `e` the
    /// client polls again only once round `e + 2` (or the last) is out (at most 2 s later), as a page
    /// busy showing a message would — with `max`, the two waiting come in one answer.
    pub rounds: Option<Arc<AtomicU64>>,
}

impl Client {
    pub async fn run(
        self,
        http: reqwest::Client,
        progress: Arc<Progress>,
        stop: CancellationToken,
        started: Instant,
    ) -> ClientOutcome {
        let mut out = ClientOutcome {
            index: self.index,
            key: self.key.clone(),
            ..Default::default()
        };
        let mut seen = SeenIds::new();
        let mut backoff = Backoff::new();
        let mut sequence: u64 = 1; // rule 1
        let trace = |out: &mut ClientOutcome, t: Trace| {
            if out.trace.len() == self.trace_len {
                out.trace.pop_front();
            }
            out.trace.push_back(t);
        };
        while (out.events.len() as u64) < self.expected {
            let mut request = http.get(&self.uri).query(&[
                ("uuid", self.key.as_str()),
                ("sequence", &sequence.to_string()),
            ]);
            request = request.query(&[("seen", seen.recent(PROOF_IDS).join(","))]);
            if let Some(max) = self.max {
                request = request.query(&[("max", max)]);
            }
            let request = request.timeout(self.request_timeout).send();
            let answer = tokio::select! {
                _ = stop.cancelled() => break,
                r = read(request) => r,
            };
            let at = started.elapsed();
            let (status, headers, body) = match answer {
                Ok(a) => a,
                Err(_) => {
                    // Rules 2 and 5: same sequence, after a jittered backoff.
                    out.retries.network += 1;
                    trace(
                        &mut out,
                        Trace {
                            at,
                            sequence,
                            status: 0,
                            message_id: String::new(),
                            event: 0,
                            upstream: String::new(),
                            note: "network error",
                        },
                    );
                    let delay = backoff.next();
                    if sleep_or_stop(delay, &stop).await {
                        break;
                    }
                    continue;
                }
            };
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let message_id = header("x-longpoll-message-id");
            let upstream = header("x-cluster-upstream");
            let mut t = Trace {
                at,
                sequence,
                status,
                message_id: message_id.clone(),
                event: 0,
                upstream,
                note: "",
            };
            match status {
                // Rule 3: a message (400 = a message with an `error` key) moves us on.
                200 | 400 if !message_id.is_empty() => {
                    backoff.reset();
                    let messages = match messages_of(
                        &header("x-longpoll-count"),
                        &header("x-longpoll-message-ids"),
                        &message_id,
                        &body,
                    ) {
                        Ok(m) => m,
                        Err(e) => {
                            t.note = "bad answer";
                            trace(&mut out, t);
                            out.stopped = Some(e);
                            break;
                        }
                    };
                    if messages.len() > 1 {
                        out.several.0 += 1;
                        out.several.1 += messages.len() as u64;
                    }
                    for (id, event) in messages {
                        t.event = event;
                        if seen.insert(&id) {
                            out.events.push(event);
                            out.ids.push(id);
                            progress.delivered.fetch_add(1, Ordering::Relaxed);
                            progress.last_event.store(event, Ordering::Relaxed);
                            t.note = "delivered";
                        } else {
                            // Rule 8.
                            out.duplicates_dropped += 1;
                            t.note = "duplicate id dropped";
                        }
                    }
                    trace(&mut out, t);
                    sequence += 1;
                    if let Some(rounds) = &self.rounds {
                        let shown = out.events.last().copied().unwrap_or(0);
                        let until = Instant::now() + Duration::from_secs(2);
                        let wanted = (shown + 2).min(self.expected);
                        while rounds.load(Ordering::Relaxed) < wanted && Instant::now() < until {
                            if sleep_or_stop(Duration::from_millis(10), &stop).await {
                                break;
                            }
                        }
                    }
                }
                // Rule 4: normal; poll again at once.
                408 | 504 => {
                    backoff.reset();
                    out.retries.timeouts += 1;
                }
                // Rule 6.
                409 if body.starts_with(b"Stale") => {
                    out.retries.stale += 1;
                    t.note = "stale";
                    let answered: Option<u64> = header("x-longpoll-sequence").parse().ok();
                    trace(&mut out, t);
                    match answered {
                        Some(answered) => sequence = answered + 1,
                        None => {
                            out.stopped = Some("409 Stale sequence without a sequence".into());
                            break;
                        }
                    }
                }
                // Rule 7.
                404 | 409 => {
                    t.note = "stopped";
                    trace(&mut out, t);
                    out.stopped = Some(format!(
                        "{status} {} at sequence {sequence}",
                        String::from_utf8_lossy(&body).trim()
                    ));
                    break;
                }
                // Rule 5.
                s if s >= 500 => {
                    match s {
                        502 => out.retries.http_502 += 1,
                        503 => out.retries.http_503 += 1,
                        _ => out.retries.other_5xx += 1,
                    }
                    t.note = "5xx";
                    trace(&mut out, t);
                    let delay = match header("retry-after").parse::<u64>() {
                        // Obey Retry-After (0 = at once), plus a little jitter so that a
                        // draining replica's polls do not all come back in the same instant.
                        Ok(secs) => {
                            Duration::from_secs(secs)
                                + Duration::from_millis(rand::rng().random_range(0..=50))
                        }
                        Err(_) => backoff.next(),
                    };
                    if sleep_or_stop(delay, &stop).await {
                        break;
                    }
                }
                other => {
                    t.note = "unexpected";
                    trace(&mut out, t);
                    out.stopped = Some(format!(
                        "unexpected {other} {}",
                        String::from_utf8_lossy(&body).trim()
                    ));
                    break;
                }
            }
        }
        if (out.events.len() as u64) >= self.expected {
            progress.complete.fetch_add(1, Ordering::Relaxed);
            // One more poll proves the last message received (the gateway acks it),
            // then the client goes away — as a page that is closed would.
            let _ = http
                .get(&self.uri)
                .query(&[
                    ("uuid", self.key.as_str()),
                    ("sequence", &sequence.to_string()),
                    ("seen", seen.recent(PROOF_IDS).join(",").as_str()),
                ])
                .timeout(Duration::from_millis(300))
                .send()
                .await;
        }
        out
    }
}

type Answer = (u16, reqwest::header::HeaderMap, bytes::Bytes);

/// The messages of an answer, in order: `(message id, event number)`. Without
/// `X-Longpoll-Count` the body is one message; with it, a JSON array of that many, their
/// ids in `X-Longpoll-Message-Ids`, the last of them `X-Longpoll-Message-Id`. An answer
/// that breaks those rules is an error (the test fails on it).
fn messages_of(
    count: &str,
    ids: &str,
    last_id: &str,
    body: &[u8],
) -> Result<Vec<(String, u64)>, String> {
    let event_of = |v: &serde_json::Value| v["n"].as_u64().unwrap_or(0);
    if count.is_empty() {
        let event = serde_json::from_slice::<serde_json::Value>(body)
            .map(|v| event_of(&v))
            .unwrap_or(0);
        return Ok(vec![(last_id.to_owned(), event)]);
    }
    let items: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| format!("an answer with X-Longpoll-Count {count} is not an array: {e}"))?;
    let ids: Vec<&str> = ids.split(',').collect();
    if count.parse::<usize>().ok() != Some(items.len())
        || ids.len() != items.len()
        || ids.last() != Some(&last_id)
    {
        return Err(format!(
            "X-Longpoll-Count {count}, {} ids ({ids:?}, last {last_id}) for {} messages",
            ids.len(),
            items.len()
        ));
    }
    Ok(ids
        .into_iter()
        .zip(&items)
        .map(|(id, v)| (id.to_owned(), event_of(v)))
        .collect())
}

/// The whole answer, or an error if the connection failed at any point (a truncated
/// body is a network error: the client never saw the message).
async fn read(
    request: impl Future<Output = reqwest::Result<reqwest::Response>>,
) -> reqwest::Result<Answer> {
    let r = request.await?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await?;
    Ok((status, headers, body))
}

/// Sleeps; true when the scenario was stopped meanwhile.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}
