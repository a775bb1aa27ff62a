//! Traffic for the broker-failure tests: pages that poll by the contract's client rules and
//! subscribe again when their subscription is gone, a publisher that emits numbered events
//! and records when each was confirmed, and a watch that asks `/readyz` throughout. What
//! they record is what a test asserts on: each subscription's life ([`Life`]), each event's
//! timing ([`Published`]), every answer of `/readyz` that was not 200 ([`ReadyReport`]).
//!
//! Used by tests/broker_nodes.rs (included with `#[path]`, next to `client.rs`, whose
//! [`Client`] it drives) and tests/node_loss.rs. A page subscribes again when its
//! subscription is gone: with `resume_after` (the last message it showed) when its
//! [`PageOptions`] say so, the way `longpoll.js`'s `resubscribe` does; without, what the gone
//! subscription missed is counted by the test, not given back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientOutcome, Progress};
use crate::common::{self, TestGateway};

// ---- a page: subscribes, polls by the contract's client rules, subscribes again when gone

/// One subscription of a page, from its 201 to its end (a 404, a sleep, or the test's end).
#[derive(Debug)]
pub struct Life {
    pub page: usize,
    pub key: String,
    /// Since the test started.
    pub subscribed: Duration,
    pub ended: Duration,
    /// The message id the subscription was resumed after, if it was.
    pub resume_after: Option<String>,
    /// The subscription's answer: `resumed` (events replayed) and `gap`.
    pub resumed: Option<u64>,
    pub gap: bool,
    pub outcome: ClientOutcome,
}

/// How a page behaves besides polling.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageOptions {
    /// When its subscription is gone (404), subscribe again with `resume_after` = the last
    /// message the page showed, as `longpoll.js` does with its `resubscribe` option.
    pub resume: bool,
    /// Stop polling `after` its first subscription for `for_`, as a page in a background
    /// tab or a sleeping laptop does, then poll again with the same key.
    pub sleep: Option<(Duration, Duration)>,
}

/// A browser page on one event key: its subscriptions one after the other (a new one when
/// the last was answered 404), each polled by [`Client`].
pub struct Page {
    /// The progress of the subscription the page polls now.
    live: Arc<Mutex<Option<Arc<Progress>>>>,
    /// The highest event number shown by the subscriptions that ended.
    shown_before: Arc<AtomicU64>,
    /// The page is asleep (it polls nothing now).
    asleep: Arc<AtomicBool>,
    pub handle: JoinHandle<Vec<Life>>,
}

impl Page {
    /// A page that polls `event` through fresh subscriptions until `stop`.
    pub fn start_with(
        page: usize,
        gw: Arc<TestGateway>,
        event: String,
        stop: CancellationToken,
        started: Instant,
        options: PageOptions,
    ) -> Self {
        let live = Arc::new(Mutex::new(None));
        let shown_before = Arc::new(AtomicU64::new(0));
        let asleep = Arc::new(AtomicBool::new(false));
        let (shared, shown, sleeping) = (live.clone(), shown_before.clone(), asleep.clone());
        let handle = tokio::spawn(async move {
            let http = common::client();
            let mut lives = Vec::new();
            let mut last_id: Option<String> = None;
            let mut sleep = options.sleep;
            let mut carried_key: Option<String> = None;
            let first = started.elapsed();
            while !stop.is_cancelled() {
                let (key, resume_after, resumed, gap) = match carried_key.take() {
                    Some(key) => (key, None, None, false),
                    None => {
                        let resume_after = if options.resume && !lives.is_empty() {
                            last_id.clone()
                        } else {
                            None
                        };
                        let Some(answer) =
                            subscribe(&http, &gw, &event, resume_after.as_deref(), &stop).await
                        else {
                            break;
                        };
                        (answer.key, resume_after, answer.resumed, answer.gap)
                    }
                };
                let subscribed = started.elapsed();
                let progress = Arc::new(Progress::default());
                *shared.lock().await = Some(progress.clone());
                let client = Client {
                    index: page,
                    key: key.clone(),
                    uri: format!("{}/", gw.base),
                    expected: u64::MAX,
                    request_timeout: Duration::from_secs(40),
                    trace_len: 16,
                    // Every other page takes several messages per answer.
                    max: (page % 2 == 1).then_some(5),
                    rounds: None,
                };
                // A page about to sleep stops polling then (its held poll is aborted, as
                // a frozen tab's is).
                let until = stop.child_token();
                let nap = sleep.take().inspect(|&(after, _)| {
                    let until = until.clone();
                    let at = (first + after).saturating_sub(started.elapsed());
                    tokio::spawn(async move {
                        tokio::time::sleep(at).await;
                        until.cancel();
                    });
                });
                let outcome = client
                    .run(http.clone(), progress.clone(), until.clone(), started)
                    .await;
                *shared.lock().await = None;
                shown.fetch_max(
                    progress.last_event.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                if let Some(id) = outcome.ids.last() {
                    last_id = Some(id.clone());
                }
                let gone = outcome.stopped.is_some();
                let slept = !gone && until.is_cancelled() && !stop.is_cancelled();
                lives.push(Life {
                    page,
                    key: key.clone(),
                    subscribed,
                    ended: started.elapsed(),
                    resume_after,
                    resumed,
                    gap,
                    outcome,
                });
                match nap {
                    Some((_, for_)) if slept => {
                        sleeping.store(true, Ordering::Relaxed);
                        tokio::select! {
                            _ = tokio::time::sleep(for_) => {}
                            _ = stop.cancelled() => {}
                        }
                        sleeping.store(false, Ordering::Relaxed);
                        // Awake: the same key again, which may be gone by now.
                        carried_key = Some(key);
                        continue;
                    }
                    // Gone before its sleep: the next subscription sleeps instead.
                    Some(plan) => sleep = Some(plan),
                    None => {}
                }
                if !gone {
                    break;
                }
            }
            lives
        });
        Page {
            live,
            shown_before,
            asleep,
            handle,
        }
    }

    /// The highest event number the page has shown, whichever subscription showed it.
    pub async fn last_shown(&self) -> u64 {
        let live = match self.live.lock().await.as_ref() {
            Some(p) => p.last_event.load(Ordering::Relaxed),
            None => 0,
        };
        live.max(self.shown_before.load(Ordering::Relaxed))
    }

    /// The page sleeps now.
    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::Relaxed)
    }
}

/// What the page's backend got from `POST /api/v1/subscriptions`.
struct Subscribed {
    key: String,
    resumed: Option<u64>,
    gap: bool,
}

/// What a page's backend does: a subscription to `event` (resumed after `resume_after`
/// when given), asked again until it is given.
async fn subscribe(
    http: &reqwest::Client,
    gw: &TestGateway,
    event: &str,
    resume_after: Option<&str>,
    stop: &CancellationToken,
) -> Option<Subscribed> {
    let mut body = json!({ "event_keys": [event] });
    if let Some(after) = resume_after {
        body["resume_after"] = json!(after);
    }
    while !stop.is_cancelled() {
        let r = http
            .post(format!("{}/api/v1/subscriptions", gw.base))
            .bearer_auth(common::TOKEN)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 201 => {
                let body: serde_json::Value = r.json().await.ok()?;
                return Some(Subscribed {
                    key: body["key"].as_str()?.to_owned(),
                    resumed: body["resumed"].as_u64(),
                    gap: body["gap"].as_bool().unwrap_or(false),
                });
            }
            // Only the broker's state may refuse for now (503, or no answer): a 4xx is a
            // defect, whatever the cluster is going through.
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                panic!(
                    "a subscription answered {status}: {}",
                    r.text().await.unwrap_or_default()
                );
            }
            other => {
                eprintln!("observed: a subscription refused: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    None
}

// ---- the publisher: one event a tenth of a second, numbered, retried until confirmed

#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub n: u64,
    /// Since the test started: the first request, and the 202.
    pub requested: Duration,
    pub confirmed: Duration,
    /// Requests until one was answered 202.
    pub attempts: u32,
}

/// Emits events `{"n": 1}`, `{"n": 2}`… to one key through the management API, one every
/// 100 ms, each asked again until answered 202.
pub struct Publisher {
    done: Arc<Mutex<Vec<Published>>>,
    handle: JoinHandle<()>,
    stop: CancellationToken,
}

impl Publisher {
    pub fn start(
        gw: Arc<TestGateway>,
        event: String,
        outer: CancellationToken,
        started: Instant,
    ) -> Self {
        let done = Arc::new(Mutex::new(Vec::new()));
        let stop = outer.child_token();
        let (list, token) = (done.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            let http = common::client();
            let url = format!("{}/api/v1/events/{event}", gw.base);
            let mut n = 0;
            while !token.is_cancelled() {
                n += 1;
                let requested = started.elapsed();
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let r = http
                        .post(&url)
                        .bearer_auth(common::TOKEN)
                        .json(&json!({ "n": n }))
                        .send()
                        .await;
                    let failure = match r {
                        Ok(r) if r.status() == 202 => break,
                        Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                        Err(e) => e.to_string(),
                    };
                    // Not confirmed: the same event again (with a new message id, so a page
                    // that had the first would show it twice: the test allows that only here).
                    eprintln!("observed: emit of event {n} failed (attempt {attempts}): {failure}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                list.lock().await.push(Published {
                    n,
                    requested,
                    confirmed: started.elapsed(),
                    attempts,
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Publisher { done, handle, stop }
    }

    pub async fn confirmed(&self) -> usize {
        self.done.lock().await.len()
    }

    pub async fn stop(self) -> Vec<Published> {
        self.stop.cancel();
        let _ = self.handle.await;
        self.done.lock().await.clone()
    }
}

// ---- /readyz, asked throughout

/// What [`ReadyWatch`] saw.
pub struct ReadyReport {
    pub probes: usize,
    /// (since the watch started, status or 0 for no answer)
    pub not_ready: Vec<(Duration, u16)>,
}

pub struct ReadyWatch {
    stop: CancellationToken,
    handle: JoinHandle<ReadyReport>,
}

impl ReadyWatch {
    /// Asks `/readyz` every 50 ms until stopped.
    pub fn start(gw: &TestGateway) -> Self {
        let url = format!("{}/readyz", gw.admin);
        let http = common::client();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut report = ReadyReport {
                probes: 0,
                not_ready: Vec::new(),
            };
            while !token.is_cancelled() {
                let status = match http.get(&url).timeout(Duration::from_secs(5)).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                report.probes += 1;
                if status != 200 {
                    report.not_ready.push((started.elapsed(), status));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            report
        });
        ReadyWatch { stop, handle }
    }

    pub async fn stop(self) -> ReadyReport {
        self.stop.cancel();
        self.handle.await.expect("the readyz watch")
    }
}
