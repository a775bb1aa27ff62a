//! Shared test helpers: a `TestGateway` started on free ports with either broker,
//! direct AMQP helpers for looking at RabbitMQ itself, a chaos TCP proxy, a
//! gateway run as a separate process, and a private three-node RabbitMQ cluster
//! to kill and restart.
//!
//! Every test owns its queues and event keys (named with a fresh UUID) and its
//! ports (bound to port 0).

#![allow(dead_code)]

pub mod amqp;
pub mod chaos;
pub mod otlp;
pub mod process;
pub mod rabbit_cluster;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
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
        ..Settings::default()
    }
}

/// A gateway running in this process.
pub struct TestGateway {
    pub backend: Backend,
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    running: Option<RunningGateway>,
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
            matches!(self.client.get(&url).send().await, Ok(r) if r.status() == 200)
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
        body["key"].as_str().unwrap().to_owned()
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
            self.metric(name).await == value
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

    /// Waits until a poll on `queue` waits at the broker (a consumer on
    /// RabbitMQ, a waiting poll on the embedded broker): past the sequence
    /// layer, unlike `longpoll_polls_held`, which counts a poll from the moment
    /// it arrives.
    pub async fn wait_poll_at_broker(&self, queue: &str) {
        eventually(
            Duration::from_secs(20),
            "a poll waiting at the broker",
            || async {
                self.running()
                    .broker
                    .queue_stats(queue)
                    .await
                    .is_ok_and(|s| s.consumers >= 1)
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

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.begin_shutdown();
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

/// Polls `check` until it is true, or panics after `limit` naming `what`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
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
    };
}

/// The state a few tests share between steps.
pub type Shared<T> = Arc<tokio::sync::Mutex<T>>;
