//! Traffic for the broker-failure tests: pages that poll by the contract's client rules and
//! subscribe again when their subscription is gone, a publisher that emits numbered events
//! and records when each was confirmed, and a watch that asks `/readyz` throughout. What
//! they record is what a test asserts on: each subscription's life ([`Life`]), each event's
//! timing ([`Published`]), every answer of `/readyz` that was not 200 ([`ReadyReport`]).
//!
//! Used by tests/broker_nodes.rs (included with `#[path]`, next to `client.rs`, whose
//! [`Client`] it drives). A page subscribes again *without* `resume_after` for now: what its
//! gone subscription missed is counted by the test, not given back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientOutcome, Progress};
use crate::common::{self, TestGateway};

// ---- a page: subscribes, polls by the contract's client rules, subscribes again when gone

/// One subscription of a page, from its 201 to its end (a 404, or the test's end).
#[derive(Debug)]
pub struct Life {
    pub page: usize,
    pub key: String,
    /// Since the test started.
    pub subscribed: Duration,
    pub ended: Duration,
    pub outcome: ClientOutcome,
}

/// A browser page on one event key: its subscriptions one after the other (a new one when
/// the last was answered 404), each polled by [`Client`].
pub struct Page {
    /// The progress of the subscription the page polls now.
    live: Arc<Mutex<Option<Arc<Progress>>>>,
    pub handle: JoinHandle<Vec<Life>>,
}

impl Page {
    /// A page that polls `event` through fresh subscriptions until `stop`. (Without
    /// `resume_after`: what a 404 loses is counted, not given back.)
    pub fn start(
        page: usize,
        gw: Arc<TestGateway>,
        event: String,
        stop: CancellationToken,
        started: Instant,
    ) -> Self {
        let live = Arc::new(Mutex::new(None));
        let shared = live.clone();
        let handle = tokio::spawn(async move {
            let http = common::client();
            let mut lives = Vec::new();
            while !stop.is_cancelled() {
                let Some(key) = subscribe(&http, &gw, &event, &stop).await else {
                    break;
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
                };
                let outcome = client
                    .run(http.clone(), progress, stop.clone(), started)
                    .await;
                *shared.lock().await = None;
                let gone = outcome.stopped.is_some();
                lives.push(Life {
                    page,
                    key,
                    subscribed,
                    ended: started.elapsed(),
                    outcome,
                });
                if !gone {
                    break;
                }
            }
            lives
        });
        Page { live, handle }
    }

    /// The page shows `n` (or has no subscription now).
    pub async fn has_shown(&self, n: u64) -> bool {
        match self.live.lock().await.as_ref() {
            Some(p) => p.last_event.load(Ordering::Relaxed) >= n,
            None => true,
        }
    }
}

/// What a page's backend does: a subscription to `event`, asked again until it is given.
async fn subscribe(
    http: &reqwest::Client,
    gw: &TestGateway,
    event: &str,
    stop: &CancellationToken,
) -> Option<String> {
    while !stop.is_cancelled() {
        let r = http
            .post(format!("{}/api/v1/subscriptions", gw.base))
            .bearer_auth(common::TOKEN)
            .json(&json!({ "event_keys": [event] }))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 201 => {
                let body: serde_json::Value = r.json().await.ok()?;
                return body["key"].as_str().map(str::to_owned);
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
