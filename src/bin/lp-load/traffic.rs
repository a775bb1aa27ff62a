//! The traffic every target gets: the events (their bodies and keys), the
//! publishers' loop at a rate, and a client's retry backoff. Owns what
//! subscribers and publishers share during a run; must not know any target.

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
    pub interval: Option<Duration>,
    /// When this publisher's first tick is (publishers are staggered over one
    /// interval so that a steady rate is not offered in bursts).
    pub first: Instant,
    pub until: Instant,
}

pub async fn publish_loop<P: Publish>(mut p: P, ctx: Arc<Ctx>, plan: PublishPlan) {
    let mut tick = plan.interval.map(|i| {
        let mut t = tokio::time::interval_at(plan.first.into(), i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    while Instant::now() < plan.until && !ctx.stopped() {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
            if Instant::now() >= plan.until {
                break;
            }
        }
        let n = plan.next.fetch_add(1, Ordering::Relaxed);
        let ok = p.publish((n % plan.keys as u64) as usize, n).await;
        Counters::inc(if ok {
            &ctx.counters.published
        } else {
            &ctx.counters.publish_errors
        });
    }
}
