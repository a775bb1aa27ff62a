//! Shared test helpers: a `TestGateway` started on free ports with either broker,
//! direct AMQP helpers for looking at RabbitMQ itself, a chaos TCP proxy, a
//! gateway run as a separate process, and a private three-node RabbitMQ cluster
//! to kill and restart.
//!
//! Every test owns its queues and event keys (named with a fresh UUID) and its
//! ports (bound to port 0). A `TestGateway` deletes the subscriptions it made
//! when it is dropped, after checking that none of their messages was left
//! unacked on its account (see its `Drop`).

#![allow(dead_code)]

pub mod amqp;
pub mod chaos;
pub mod otlp;
pub mod process;
pub mod rabbit_cluster;

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longpoll_gateway::config::{ApiToken, BrokerUrl, Settings};
use longpoll_gateway::gateway::{self, RunningGateway};
use serde_json::{Value, json};

pub const TOKEN: &str = "test-token-0123456789";

/// Which broker a test gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Rabbit,
}

tokio::task_local! {
    /// `--consumer-prefetch` of the gateways a test starts in its own task:
    /// `both_brokers!`'s third run sets it to [`WINDOW_PREFETCH`].
    pub static CONSUMER_PREFETCH: u16;
}

/// The prefetch window `both_brokers!` runs every behaviour with on RabbitMQ,
/// besides the default of 1.
pub const WINDOW_PREFETCH: u16 = 10;

/// The RabbitMQ the tests use (`make test` makes sure it runs).
pub fn amqp_url() -> String {
    std::env::var("LONGPOLL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A unique name fragment for this test's queues and keys.
pub fn unique(tag: &str) -> String {
    format!("{tag}.{}", uuid::Uuid::new_v4().simple())
}

/// Settings for a test gateway: loopback, free ports, API enabled, short expiry.
pub fn test_settings(backend: Backend) -> Settings {
    let broker = match backend {
        Backend::Memory => BrokerUrl::Memory,
        Backend::Rabbit => BrokerUrl::parse(&amqp_url()).expect("test AMQP URL"),
    };
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        broker,
        exchange: "longpoll.test".into(),
        api_token: Some(ApiToken::new(TOKEN)),
        poll_timeout: Duration::from_secs(20),
        subscription_expiry: Duration::from_secs(120),
        drain_timeout: Duration::from_secs(5),
        channel_pool_size: 8,
        consumer_prefetch: CONSUMER_PREFETCH.try_with(|p| *p).unwrap_or(1),
        ..Settings::default()
    }
}

/// A gateway running in this process.
///
/// Dropped, it checks what the test leaves behind (unless the test is already
/// panicking): no message of a subscription it made is left unacked unless
/// the gateway still holds it (a poll held, or an answer kept for a replay);
/// then it deletes those subscriptions and checks that none is left; then it
/// begins the gateway's graceful stop. A test that makes subscriptions other
/// than through [`TestGateway::subscribe`] hands their keys to
/// [`TestGateway::owns`]. The checks run inside `block_in_place`, on the
/// test's runtime (which must then be multi-threaded): the gateway's tasks go
/// on running on its workers meanwhile.
pub struct TestGateway {
    pub backend: Backend,
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    running: Option<RunningGateway>,
    /// The subscriptions this test made through this gateway.
    owned: Mutex<Vec<String>>,
    /// The runtime the gateway runs on, for a drop outside it.
    runtime: tokio::runtime::Handle,
}

impl TestGateway {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings(backend);
        tweak(&mut settings);
        let running = gateway::start(settings.clone())
            .await
            .expect("gateway starts");
        let gw = TestGateway {
            backend,
            base: format!("http://{}", running.public_addr),
            admin: format!("http://{}", running.admin_addr),
            client: client(),
            settings,
            running: Some(running),
            owned: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        };
        if backend == Backend::Rabbit {
            gw.wait_ready().await;
        }
        gw
    }

    pub fn running(&self) -> &RunningGateway {
        self.running.as_ref().expect("running")
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.running().public_addr
    }

    /// Waits for `/readyz` to say 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin);
        eventually(Duration::from_secs(20), "gateway ready", || async {
            match self.client.get(&url).send().await {
                Ok(r) => is(r.status().as_u16(), 200),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }

    /// Creates a subscription bound to `event_keys`; returns its key.
    pub async fn subscribe(&self, event_keys: &[&str]) -> String {
        let r = self
            .client
            .post(format!("{}/api/v1/subscriptions", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({ "event_keys": event_keys }))
            .send()
            .await
            .expect("subscribe request");
        assert_eq!(r.status(), 201, "subscribe: {:?}", r.text().await);
        let body: Value = r.json().await.unwrap();
        let key = body["key"].as_str().unwrap().to_owned();
        self.owns(&key);
        key
    }

    /// Counts a subscription the test made another way as its own: it is
    /// checked and deleted when the gateway is dropped.
    pub fn owns(&self, key: &str) {
        self.owned.lock().unwrap().push(key.to_owned());
    }

    /// Emits an event through the management API; returns its message id.
    pub async fn emit(&self, event_key: &str, payload: Value) -> String {
        let r = self
            .client
            .post(format!("{}/api/v1/events/{event_key}", self.base))
            .bearer_auth(TOKEN)
            .json(&payload)
            .send()
            .await
            .expect("emit request");
        assert_eq!(r.status(), 202, "emit: {:?}", r.text().await);
        let body: Value = r.json().await.unwrap();
        body["message_id"].as_str().unwrap().to_owned()
    }

    /// `GET /?uuid=..&sequence=..`
    pub async fn poll(&self, uuid: &str, sequence: u64) -> Poll {
        self.poll_path("/", uuid, sequence).await
    }

    pub async fn poll_path(&self, path: &str, uuid: &str, sequence: u64) -> Poll {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .query(&[("uuid", uuid), ("sequence", &sequence.to_string())])
            .send()
            .await
            .expect("poll request");
        Poll::read(r).await
    }

    pub async fn get(&self, path_and_query: &str) -> Poll {
        let r = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .expect("request");
        Poll::read(r).await
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One sample of `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    /// Waits until a metric reaches `value`.
    pub async fn wait_metric(&self, name: &str, value: f64) {
        eventually(Duration::from_secs(20), name, || async {
            is(self.metric(name).await, value)
        })
        .await;
    }

    /// (ready, unacked) of a queue, read from the broker itself: RabbitMQ's
    /// own view through `rabbitmqctl`, or the embedded broker's.
    pub async fn broker_counts(&self, queue: &str) -> (u64, u64) {
        match self.backend {
            Backend::Rabbit => amqp::rabbitmqctl_counts(queue).await,
            Backend::Memory => {
                let stats = self
                    .running()
                    .broker
                    .queue_stats(queue)
                    .await
                    .expect("queue");
                (stats.ready, stats.unacked.unwrap_or(0))
            }
        }
    }

    /// The (ready, unacked) the broker shows for a queue of `total` messages
    /// of which this gateway's polls answered `answered` and whose consumer
    /// still lingers: on RabbitMQ with a prefetch window, the consumer holds
    /// the messages behind the answer too, up to the window.
    pub fn counts_after_taking(&self, total: u64, answered: u64) -> (u64, u64) {
        let window = match self.backend {
            Backend::Rabbit => u64::from(self.settings.consumer_prefetch),
            Backend::Memory => 1,
        };
        let unacked = total.min(answered.max(window));
        (total - unacked, unacked)
    }

    /// Waits until the broker shows [`TestGateway::counts_after_taking`]
    /// (RabbitMQ pushes a window's messages a moment after the answer) or,
    /// with a window, the same once the window went back to the queue (its
    /// consumer is kept 2 s without a poll, and `rabbitmqctl` may take longer
    /// than that to answer on a busy machine): either way nothing more was
    /// answered.
    pub async fn wait_taken(&self, queue: &str, total: u64, answered: u64, what: &str) {
        let lingering = self.counts_after_taking(total, answered);
        let returned = (total - answered, answered);
        eventually(Duration::from_secs(10), what, || async {
            let seen = self.broker_counts(queue).await;
            if seen == lingering || (self.has_window() && seen == returned) {
                Ok(())
            } else {
                Err(format!("{seen:?} (waiting for {lingering:?})"))
            }
        })
        .await;
    }

    /// Messages ready in `queue`, by a passive declare through the gateway's
    /// own broker: a moment's round trip, where `rabbitmqctl` takes seconds.
    pub async fn ready_now(&self, queue: &str) -> u64 {
        self.running()
            .broker
            .queue_stats(queue)
            .await
            .expect("queue")
            .ready
    }

    /// A prefetch window is on: the messages behind an answer wait in the
    /// gateway's consumer, and go back to the queue with an answer that does
    /// (more requeues and redeliveries than the answer's own; a requeued
    /// answer may even reach the consumer again before it is cancelled).
    pub fn has_window(&self) -> bool {
        self.backend == Backend::Rabbit && self.settings.consumer_prefetch > 1
    }

    /// Waits until a poll on `queue` waits at the broker (a consumer on
    /// RabbitMQ, a waiting poll on the embedded broker): past the sequence
    /// layer, unlike `longpoll_polls_held`, which counts a poll from the moment
    /// it arrives.
    pub async fn wait_poll_at_broker(&self, queue: &str) {
        eventually(
            Duration::from_secs(20),
            "a poll waiting at the broker",
            || async {
                match self.running().broker.queue_stats(queue).await {
                    Ok(stats) => saw(stats.consumers >= 1, format!("{stats:?}")),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    }

    /// Begins the graceful stop and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn take_running(&mut self) -> RunningGateway {
        self.running.take().expect("running")
    }
}

impl TestGateway {
    /// What the test leaves behind that it should not, or `Ok`: see the type's
    /// docs. Deletes the test's subscriptions, `owned`, on the way.
    async fn leftovers(&self, owned: Vec<String>) -> Result<(), String> {
        let Some(running) = &self.running else {
            // Stopped or taken by the test: the gateway holds nothing any
            // more; its subscriptions go (on RabbitMQ; the embedded broker
            // went with the gateway).
            if self.backend == Backend::Rabbit {
                let conn = amqp::connect().await;
                for queue in &owned {
                    amqp::delete_queue(&conn, queue).await;
                }
                let left = amqp::existing(&conn, &owned).await;
                let _ = conn.close(0, "done".into()).await;
                return nothing_left(&left);
            }
            return Ok(());
        };
        // A RabbitMQ consumer is kept for a while (10 s) after a delivery,
        // waiting for the client's next poll, and takes the queue's next
        // message meanwhile — an answer requeued at its replay TTL too — until
        // it is cancelled and requeues it: wait that out.
        let limit = match self.backend {
            Backend::Memory => Duration::from_secs(5),
            Backend::Rabbit => Duration::from_secs(15),
        };
        eventually(
            limit,
            "no message left unacked but those the gateway holds",
            || async { self.unacked_not_held(&owned).await },
        )
        .await;
        let mut left = Vec::new();
        for queue in &owned {
            // Gone already when the test deleted it.
            let _ = running.broker.delete_subscription(queue).await;
            if running.broker.queue_stats(queue).await.is_ok() {
                left.push(queue.clone());
            }
        }
        nothing_left(&left)
    }

    /// The test's queues with a message unacked that the gateway does not
    /// hold, as the broker counts them.
    async fn unacked_not_held(&self, queues: &[String]) -> Result<(), String> {
        let running = self.running();
        let unacked: Vec<(String, u64, u64)> = match self.backend {
            Backend::Memory => {
                let mut counts = Vec::new();
                for queue in queues {
                    if let Ok(stats) = running.broker.queue_stats(queue).await {
                        counts.push((queue.clone(), stats.unacked.unwrap_or(0), 0));
                    }
                }
                counts
            }
            Backend::Rabbit => {
                let m = &running.metrics;
                let taken = m.messages_delivered.get()
                    + m.messages_skipped.get()
                    + m.messages_requeued.get()
                    + m.messages_redelivered.get();
                if taken == 0 {
                    // No message ever reached this gateway's polls.
                    return Ok(());
                }
                amqp::rabbitmqctl_unacked_and_consumers(&self.settings.queue_prefix)
                    .await
                    .into_iter()
                    .filter(|(name, _, _)| queues.contains(name))
                    .collect()
            }
        };
        let stray: Vec<_> = unacked
            .into_iter()
            .filter(|(queue, n, _)| *n > 0 && !running.store.holds(queue))
            .collect();
        if stray.is_empty() {
            Ok(())
        } else {
            Err(format!("(queue, unacked, consumers) {stray:?}"))
        }
    }
}

fn nothing_left(queues: &[String]) -> Result<(), String> {
    if queues.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the test's queues still exist after their deletion: {queues:?}"
        ))
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let owned = std::mem::take(&mut *self.owned.lock().unwrap());
        // When the test failed already, nothing more is said: only the stop.
        if std::thread::panicking() || owned.is_empty() {
            if let Some(r) = &self.running {
                r.begin_shutdown();
            }
            return;
        }
        use tokio::runtime::{Handle, RuntimeFlavor};
        if self.runtime.runtime_flavor() != RuntimeFlavor::MultiThread {
            if let Some(r) = &self.running {
                r.begin_shutdown();
            }
            panic!(
                "a TestGateway that made subscriptions runs on a multi-thread runtime \
                 (#[tokio::test(flavor = \"multi_thread\")]): its drop checks the broker \
                 while the gateway's tasks go on"
            );
        }
        let leftovers = match Handle::try_current() {
            // On the runtime (the end of a test's body): leave it for the
            // time of the checks; its workers run the gateway meanwhile.
            Ok(handle) => tokio::task::block_in_place(|| handle.block_on(self.leftovers(owned))),
            // Outside it (a test driving its own runtime with `block_on`).
            Err(_) => self.runtime.block_on(self.leftovers(owned)),
        };
        if let Some(r) = &self.running {
            r.begin_shutdown();
        }
        if let Err(what) = leftovers {
            panic!("the test left behind {what}");
        }
    }
}

/// A poll's answer, read whole.
#[derive(Debug, Clone)]
pub struct Poll {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Poll {
    pub async fn read(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap_or_default();
        Poll {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn message_id(&self) -> &str {
        self.header("x-longpoll-message-id").unwrap_or("")
    }

    pub fn sequence(&self) -> Option<u64> {
        self.header("x-longpoll-sequence")
            .and_then(|s| s.parse().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

pub fn client() -> reqwest::Client {
    longpoll_gateway::install_tls_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        // Below the shortest idle limit a test gives the server (a 2 s header
        // read timeout): a pooled connection is never reused just as the
        // server closes it, which fails the request unanswered.
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Reads one sample (`name` or `name{labels}`) from a Prometheus exposition.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// What one look of [`eventually`]'s check saw: done, or what it saw instead.
pub trait Observation {
    /// `None` when the wait is over, else what was seen.
    fn pending(self) -> Option<String>;
}

/// A bare condition: it can only say it is not met yet.
impl Observation for bool {
    fn pending(self) -> Option<String> {
        (!self).then(|| "the condition not met yet (a bare bool says no more)".to_owned())
    }
}

/// `Ok` when done, `Err` with what was seen instead (see [`is`] and [`saw`]).
impl Observation for Result<(), String> {
    fn pending(self) -> Option<String> {
        self.err()
    }
}

/// `Ok` when `seen` is `wanted`, else what was seen.
pub fn is<T: PartialEq + Debug>(seen: T, wanted: T) -> Result<(), String> {
    if seen == wanted {
        Ok(())
    } else {
        Err(format!("{seen:?} (waiting for {wanted:?})"))
    }
}

/// `Ok` when `done`, else what was seen.
pub fn saw(done: bool, seen: impl std::fmt::Display) -> Result<(), String> {
    if done { Ok(()) } else { Err(seen.to_string()) }
}

/// The last `n` lines of a log, for a report.
pub fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Looks with `check` until it is done, or panics after `limit` naming `what`
/// and what the last look saw.
pub async fn eventually<F, Fut, O>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
    O: Observation,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        let Some(seen) = check().await.pending() else {
            return;
        };
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}; last saw: {seen}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Runs a test body against each backend it is written for.
#[macro_export]
macro_rules! both_brokers {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Memory).await
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Rabbit).await
                }
            )*
        }
        /// RabbitMQ with a prefetch window: messages behind an answer wait in
        /// the gateway's consumer, and every behaviour holds the same.
        mod rabbitmq_prefetch_window {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::CONSUMER_PREFETCH
                        .scope(
                            $crate::common::WINDOW_PREFETCH,
                            super::$name($crate::common::Backend::Rabbit),
                        )
                        .await
                }
            )*
        }
    };
}

/// The state a few tests share between steps.
pub type Shared<T> = Arc<tokio::sync::Mutex<T>>;
