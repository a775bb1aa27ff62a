//! The traffic every target gets: the events (their bodies and keys), the
//! publishers' loop (at a rate, or in `--burst` rounds), and a client's retry
//! backoff. Owns what subscribers and publishers share during a run; must not
//! know any target.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::sync::Semaphore;

use crate::cli::ClientKind;
use crate::http1::{self, Endpoint, Headers};
use crate::stats::{self, Counters, Latencies};

/// What the subscribers and publishers share.
pub struct Ctx {
    pub counters: Counters,
    pub latencies: Latencies,
    pub stop: AtomicBool,
    /// A fragment naming this run's keys, queues and channels.
    pub run: String,
    pub gate: Arc<Semaphore>,
    pub client: ClientKind,
    pad: String,
}

impl Ctx {
    /// A run's shared state; events are padded so that every target delivers
    /// bodies of about `payload_bytes`.
    pub fn new(payload_bytes: usize, connect_concurrency: usize, client: ClientKind) -> Ctx {
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        // Sized so that the delivered body is ~payload_bytes on every target (the
        // gateway adds "event_key" to what is published; the others get it from us).
        let overhead = format!(
            r#"{{"sent_at_us":1764270657000000,"n":100000,"pad":"","event_key":"lpload.{run}.100"}}"#
        )
        .len();
        Ctx {
            counters: Counters::default(),
            latencies: Latencies::default(),
            stop: AtomicBool::new(false),
            run,
            gate: Arc::new(Semaphore::new(connect_concurrency.max(1))),
            client,
            pad: "x".repeat(payload_bytes.saturating_sub(overhead)),
        }
    }

    pub fn event_key(&self, i: usize) -> String {
        format!("lpload.{}.{i}", self.run)
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A connection to `ep` with this run's client, opened when first used.
    pub fn conn(&self, ep: Arc<Endpoint>) -> http1::Conn {
        http1::Conn::new(ep, self.gate.clone(), self.client)
    }

    /// An event body. The gateway adds `"event_key"` itself (the management
    /// API does); the other targets get it from the publisher, so that every
    /// target delivers the same bytes.
    pub fn body(&self, n: u64, key_index: usize, with_event_key: bool) -> Vec<u8> {
        let mut b = format!(
            r#"{{"sent_at_us":{},"n":{n},"pad":"{}""#,
            stats::now_us(),
            self.pad
        );
        if with_event_key {
            b.push_str(&format!(r#","event_key":"{}""#, self.event_key(key_index)));
        }
        b.push('}');
        b.into_bytes()
    }
}

/// A client's retry delay: the gateway's own, without jitter (doubles after
/// each wait up to a cap, back to the start after a success; `wait` takes a
/// server's longer `Retry-After`).
pub use longpoll_gateway::broker::Backoff;

/// One publisher: publishes event `n` to subscriber `key_index`'s key/channel/queue.
pub trait Publish: Send + 'static {
    fn publish(&mut self, key_index: usize, n: u64) -> impl Future<Output = bool> + Send;
}

/// A publisher that POSTs each event to `{path}{event key}` on one keep-alive
/// connection (the gateway's management API, nchan's publisher location).
pub struct HttpPublisher {
    pub conn: http1::Conn,
    pub headers: Headers,
    pub path: String,
    /// Whether the body carries `"event_key"` (the gateway adds it itself).
    pub with_event_key: bool,
    pub ctx: Arc<Ctx>,
}

impl Publish for HttpPublisher {
    async fn publish(&mut self, key_index: usize, n: u64) -> bool {
        let target = format!("{}{}", self.path, self.ctx.event_key(key_index));
        let body = Bytes::from(self.ctx.body(n, key_index, self.with_event_key));
        matches!(
            self.conn.send(Method::POST, &target, &self.headers, body).await,
            Ok(r) if (200..300).contains(&r.status)
        )
    }
}

pub struct PublishPlan {
    pub next: Arc<AtomicU64>,
    pub keys: usize,
    pub pace: Pace,
}

/// When a publisher sends its next event.
pub enum Pace {
    /// One event per `interval` (none: as fast as it goes) until `until`.
    Rate {
        interval: Option<Duration>,
        /// When this publisher's first tick is (publishers are staggered over
        /// one interval so that a steady rate is not offered in bursts).
        first: Instant,
        until: Instant,
    },
    /// `--burst`: one event per permit, as fast as it goes; the run hands out
    /// a round's permits (S × N) at once and closes the semaphore at the end.
    /// A round's events go `per_key` at a time to the same key (its N events
    /// are published together by the concurrent publishers, so they wait for
    /// the subscriber together, a backlog that a poll's `max` can take at
    /// once), key after key: every key gets exactly N per round.
    Rounds {
        permits: Arc<Semaphore>,
        per_key: u32,
    },
}

pub async fn publish_loop<P: Publish>(mut p: P, ctx: Arc<Ctx>, plan: PublishPlan) {
    let keys = plan.keys.max(1) as u64;
    match plan.pace {
        Pace::Rate {
            interval,
            first,
            until,
        } => {
            let mut tick = interval.map(|i| {
                let mut t = tokio::time::interval_at(first.into(), i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while Instant::now() < until && !ctx.stopped() {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                    if Instant::now() >= until {
                        break;
                    }
                }
                let n = plan.next.fetch_add(1, Ordering::Relaxed);
                publish_one(&mut p, &ctx, n, (n % keys) as usize).await;
            }
        }
        Pace::Rounds { permits, per_key } => {
            let per_key = u64::from(per_key.max(1));
            // Closed: the run is over.
            while let Ok(permit) = permits.acquire().await {
                permit.forget();
                if ctx.stopped() {
                    break;
                }
                let n = plan.next.fetch_add(1, Ordering::Relaxed);
                publish_one(&mut p, &ctx, n, (n / per_key % keys) as usize).await;
            }
        }
    }
}

/// Publishes event `n` to key `key_index` and counts it.
async fn publish_one<P: Publish>(p: &mut P, ctx: &Ctx, n: u64, key_index: usize) {
    let ok = p.publish(key_index, n).await;
    Counters::inc(if ok {
        &ctx.counters.published
    } else {
        &ctx.counters.publish_errors
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the keys it was asked to publish to.
    struct Recorder(Arc<Mutex<Vec<usize>>>);

    impl Publish for Recorder {
        async fn publish(&mut self, key_index: usize, _n: u64) -> bool {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(key_index);
            true
        }
    }

    #[tokio::test]
    async fn a_burst_round_gives_every_key_its_events_together() {
        let ctx = Arc::new(Ctx::new(250, 1, ClientKind::Handwritten));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let permits = Arc::new(Semaphore::new(0));
        let plan = PublishPlan {
            next: Arc::new(AtomicU64::new(0)),
            keys: 3,
            pace: Pace::Rounds {
                permits: permits.clone(),
                per_key: 2,
            },
        };
        let publisher = tokio::spawn(publish_loop(Recorder(keys.clone()), ctx.clone(), plan));
        // Two rounds of 3 keys × 2 events, then the end of the run.
        permits.add_permits(6);
        permits.add_permits(6);
        while Counters::get(&ctx.counters.published) < 12 {
            tokio::task::yield_now().await;
        }
        permits.close();
        publisher
            .await
            .expect("the publisher ends when the permits close");
        let keys = keys.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(keys, [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
    }
}
