//! The `Broker` boundary: what the gateway needs from a message broker, and the
//! two implementations — [`AmqpBroker`] (RabbitMQ through lapin) and
//! [`MemoryBroker`] (embedded, one replica).
//!
//! Owns: [`Delivery`] (a message handed to a poll, with its [`Acker`]),
//! [`BrokerError`] and its recoverable-kinds table, [`OutgoingMessage`].
//! Must not: know about HTTP, sequences or subscribers' keys beyond queue names.
//!
//! The semantics both implementations share (and the contract tests check on both):
//! a queue has at most one unacked message per replica (prefetch 1) — but for
//! the messages [`Broker::next_messages`] takes along with it, already
//! waiting, for one answer of several; a message that is neither acked nor
//! kept goes back to its queue at its place; a redelivered message says so and
//! keeps its message id.
//!
//! Both also keep a bounded **history** of published events (a RabbitMQ
//! stream, or memory) from which [`Broker::resume_subscription`] fills a new
//! subscription: every retained event for its keys published after a given
//! message, in order, then the live ones, without a duplicate.

pub mod amqp;
pub mod memory;
mod message_id;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

pub use amqp::AmqpBroker;
pub use memory::{MemoryBroker, binding_matches};
pub use message_id::{derive_message_id, new_message_id, uuid_v7_time};

use crate::config::{BrokerUrl, Settings};
use crate::telemetry::Metrics;
use crate::telemetry::traces::{SettleTrace, SpanParent};

/// What went wrong talking to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerErrorKind {
    /// The queue (or exchange) does not exist (AMQP 404).
    NotFound,
    /// The broker refused access (AMQP 403).
    AccessRefused,
    /// A declaration clashes with what exists (AMQP 406, 405).
    PreconditionFailed,
    /// No usable connection: refused, lost, forced closed (320), internal error (541).
    Unavailable,
    /// The channel the operation ran on was closed under it.
    ChannelClosed,
    /// The broker did not answer in time.
    Timeout,
    /// The publisher confirm came back negative.
    Nacked,
    /// A limit of the embedded broker (queue count) was reached.
    LimitReached,
    /// Bad input that no broker would accept (e.g. a routing key over 255 bytes).
    InvalidInput,
    /// Anything else; not retried.
    Internal,
}

impl BrokerErrorKind {
    /// The recoverable kinds: a held poll waits through them (txlongpoll retried
    /// 320, 541 and transport loss until its timeout).
    pub fn is_recoverable(self) -> bool {
        matches!(
            self,
            BrokerErrorKind::Unavailable
                | BrokerErrorKind::ChannelClosed
                | BrokerErrorKind::Timeout
        )
    }
}

impl fmt::Display for BrokerErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerErrorKind::NotFound => "not found",
            BrokerErrorKind::AccessRefused => "access refused",
            BrokerErrorKind::PreconditionFailed => "precondition failed",
            BrokerErrorKind::Unavailable => "broker unavailable",
            BrokerErrorKind::ChannelClosed => "channel closed",
            BrokerErrorKind::Timeout => "broker timeout",
            BrokerErrorKind::Nacked => "publish not confirmed",
            BrokerErrorKind::LimitReached => "limit reached",
            BrokerErrorKind::InvalidInput => "invalid input",
            BrokerErrorKind::Internal => "broker error",
        })
    }
}

/// A broker error: a kind that drives retries, and a detail for the trace.
/// The detail never holds credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct BrokerError {
    kind: BrokerErrorKind,
    detail: String,
}

impl BrokerError {
    pub fn new(kind: BrokerErrorKind, detail: impl Into<String>) -> Self {
        BrokerError {
            kind,
            detail: detail.into(),
        }
    }
    pub fn kind(&self) -> BrokerErrorKind {
        self.kind
    }
    pub fn is_recoverable(&self) -> bool {
        self.kind.is_recoverable()
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(BrokerErrorKind::NotFound, detail)
    }
}

/// Settling a delivery on the broker it came from.
#[async_trait]
pub trait Settle: Send + Sync {
    /// The client has the message: remove it from the queue.
    async fn ack(&self) -> Result<(), BrokerError>;
    /// Give the message back to its queue, at its place.
    async fn requeue(&self) -> Result<(), BrokerError>;
}

/// The handle that settles one delivery — or, [joined](Acker::join), the
/// deliveries of one answer, settled as one. Dropping it unsettled requeues
/// the message (every message joined in it, in order), so a poll abandoned at
/// any point loses nothing.
pub struct Acker {
    settle: Option<Box<dyn Settle>>,
    metrics: Arc<Metrics>,
    trace: Option<SettleTrace>,
    /// The messages of the same answer after this one, in queue order: acked
    /// and requeued with it, each after the one before. Empty for a single
    /// message (no allocation).
    joined: Vec<Acker>,
}

impl Acker {
    pub fn new(settle: Box<dyn Settle>, metrics: Arc<Metrics>) -> Self {
        Acker {
            settle: Some(settle),
            metrics,
            trace: None,
            joined: Vec::new(),
        }
    }

    /// One handle for the messages of one answer, given in queue order: they
    /// are acked whole, requeued whole (each at its place, first to last), and
    /// requeued whole when the handle is dropped. `None` for no ackers.
    pub fn join(ackers: impl IntoIterator<Item = Acker>) -> Option<Acker> {
        let mut ackers = ackers.into_iter();
        let mut head = ackers.next()?;
        for mut acker in ackers {
            let rest = std::mem::take(&mut acker.joined);
            head.joined.push(acker);
            head.joined.extend(rest);
        }
        Some(head)
    }

    /// How many messages this handle settles.
    pub fn len(&self) -> usize {
        1 + self.joined.len()
    }

    /// Never: a handle settles at least one message.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Records the ack/reject spans of this message (when tracing is enabled).
    pub fn with_trace(mut self, trace: Option<SettleTrace>) -> Self {
        self.trace = trace;
        self
    }

    /// Where this message's ack/reject spans will attach.
    pub fn span_parent(&self) -> Option<SpanParent> {
        self.trace.as_ref().map(|t| t.parent.clone())
    }

    /// Acks every message of the handle, in order; the first error, if any
    /// (the others are acked all the same).
    pub async fn ack(mut self) -> Result<(), BrokerError> {
        let mut result = self.ack_one().await;
        for mut part in std::mem::take(&mut self.joined) {
            result = result.and(part.ack_one().await);
        }
        result
    }

    /// Requeues every message of the handle, first to last; the first error.
    pub async fn requeue(mut self) -> Result<(), BrokerError> {
        let mut result = self.requeue_one().await;
        for mut part in std::mem::take(&mut self.joined) {
            result = result.and(part.requeue_one().await);
        }
        result
    }

    async fn ack_one(&mut self) -> Result<(), BrokerError> {
        match self.settle.take() {
            Some(s) => {
                let start = SystemTime::now();
                let r = s.ack().await;
                if r.is_ok() {
                    self.metrics.messages_acked.inc();
                }
                if let Some(t) = &self.trace {
                    let error = r.as_ref().err().map(|e| e.to_string());
                    t.record("longpoll.ack", start, SystemTime::now(), error.as_deref());
                }
                r
            }
            None => Ok(()),
        }
    }

    async fn requeue_one(&mut self) -> Result<(), BrokerError> {
        match self.settle.take() {
            Some(s) => requeue(s, self.metrics.clone(), self.trace.take()).await,
            None => Ok(()),
        }
    }
}

async fn requeue(
    settle: Box<dyn Settle>,
    metrics: Arc<Metrics>,
    trace: Option<SettleTrace>,
) -> Result<(), BrokerError> {
    metrics.messages_requeued.inc();
    let start = SystemTime::now();
    let r = settle.requeue().await;
    if let Some(t) = &trace {
        let error = r.as_ref().err().map(|e| e.to_string());
        t.record(
            "longpoll.reject",
            start,
            SystemTime::now(),
            error.as_deref(),
        );
    }
    r
}

impl Drop for Acker {
    fn drop(&mut self) {
        let head = self.settle.take();
        let joined = std::mem::take(&mut self.joined);
        if head.is_none() && joined.is_empty() {
            return;
        }
        let (metrics, trace) = (self.metrics.clone(), self.trace.take());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // One task for the whole answer: its messages go back in order.
                rt.spawn(async move {
                    let mut result = match head {
                        Some(settle) => requeue(settle, metrics, trace).await,
                        None => Ok(()),
                    };
                    for mut part in joined {
                        result = result.and(part.requeue_one().await);
                    }
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "requeue of an abandoned delivery failed (the broker requeues it when the channel closes)");
                    }
                });
            }
            Err(_) => tracing::debug!(
                "no runtime to requeue an abandoned delivery; the broker requeues it when the channel closes"
            ),
        }
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("settled", &self.settle.is_none())
            .field("joined", &self.joined.len())
            .finish()
    }
}

/// A message taken from a queue for one poll.
#[derive(Debug)]
pub struct Delivery {
    /// The message body, unchanged.
    pub body: Bytes,
    /// The AMQP `message_id`, or one derived from content and properties.
    pub message_id: Arc<str>,
    /// The broker delivered it before (after a requeue or a lost channel).
    pub redelivered: bool,
    /// When the publisher sent it, if it said.
    pub published_at: Option<SystemTime>,
    /// W3C trace context headers carried by the message (`traceparent`, `tracestate`).
    pub trace_headers: Vec<(String, String)>,
    /// Settles the message; dropping it requeues.
    pub acker: Acker,
}

/// An event to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// The event key (routing key).
    pub routing_key: String,
    /// JSON body.
    pub body: Bytes,
    /// Message id (a UUID from the management API and `emit`).
    pub message_id: String,
    /// Publisher timestamp.
    pub published_at: SystemTime,
    /// Extra string headers (trace context).
    pub headers: Vec<(String, String)>,
}

/// A queue as its broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages waiting to be delivered.
    pub ready: u64,
    /// Messages delivered and not yet settled, when the broker reports it
    /// (RabbitMQ's passive declare does not).
    pub unacked: Option<u64>,
    /// Consumers (RabbitMQ) or waiting polls (embedded broker).
    pub consumers: u64,
}

/// The history a resume reads (`--history-*`); `None` in the options of a
/// broker without one (`--history-max-age 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// RabbitMQ: the stream's name.
    pub stream: String,
    /// How far back a resume can reach (RabbitMQ keeps whole segments, so a
    /// stream may reach further).
    pub max_age: Duration,
    /// Size bound: the stream's retention, or the embedded broker's memory for it.
    pub max_bytes: u64,
    /// RabbitMQ: `x-initial-cluster-size` of a stream this gateway declares
    /// (`None`: RabbitMQ's default). An existing stream is used as it is.
    pub initial_cluster_size: Option<u32>,
}

impl HistoryOptions {
    /// The history the settings ask for, or `None` when it is off.
    pub fn from_settings(s: &Settings) -> Option<Self> {
        s.history.enabled().then(|| HistoryOptions {
            stream: s.history.stream.clone(),
            max_age: s.history.max_age,
            max_bytes: s.history.max_bytes,
            initial_cluster_size: None,
        })
    }
}

/// What a resumed subscription got from the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeOutcome {
    /// Events replayed into the new queue ahead of the live ones.
    pub resumed: u64,
    /// The history does not reach back to the message (or never had it, or
    /// holds more than [`MAX_RESUME_EVENTS`] since): nothing was replayed.
    pub gap: bool,
}

impl ResumeOutcome {
    pub(crate) const GAP: ResumeOutcome = ResumeOutcome {
        resumed: 0,
        gap: true,
    };
}

/// Most events one resume replays. More than that since the client's last
/// message is answered as a gap: a page that missed so much reloads its view
/// faster than it polls them one by one, and the gateway never holds more
/// than this many events for one resume.
pub const MAX_RESUME_EVENTS: usize = 10_000;

/// Whether the broker can be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    Connected,
    /// Unusable since this instant.
    Disconnected {
        since: Instant,
    },
}

/// What the gateway needs from a broker.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Short name for logs and `longpoll_build_info`.
    fn kind(&self) -> &'static str;

    /// Waits for the next message on `queue`. Waits through recoverable failures
    /// (a lost connection is re-established and the wait resumes); returns
    /// `NotFound` when the queue does not exist. Cancel-safe: dropping the
    /// future leaves the queue as it was.
    async fn next_message(&self, queue: &str) -> Result<Delivery, BrokerError>;

    /// The messages of one answer of up to `max` (a poll's `max`): waits for
    /// the next message as [`next_message`](Broker::next_message) does, then
    /// takes up to `max - 1` more that are already waiting, without waiting
    /// for any: at least one, in queue order, each with its own [`Acker`]
    /// ([`Acker::join`] settles them as one). `max` 1 takes exactly what
    /// `next_message` takes, with the same prefetch-1 semantics. Cancel-safe
    /// as `next_message` is.
    async fn next_messages(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, BrokerError>;

    /// Declares a subscription queue (expiring when unused) bound to each event key.
    async fn declare_subscription(
        &self,
        queue: &str,
        event_keys: &[String],
    ) -> Result<(), BrokerError>;

    /// Adds bindings to an existing subscription queue (`NotFound` if there is none).
    async fn add_bindings(&self, queue: &str, event_keys: &[String]) -> Result<(), BrokerError>;

    /// Deletes a subscription queue (`NotFound` if there is none).
    async fn delete_subscription(&self, queue: &str) -> Result<(), BrokerError>;

    /// Whether this broker keeps a history of events to resume from.
    fn keeps_history(&self) -> bool;

    /// Declares a subscription queue bound to each event key, as
    /// [`declare_subscription`](Broker::declare_subscription) does, filled
    /// first, in publish order and without duplicates, with every retained
    /// event for those keys published after the message whose id is `after`;
    /// the live events follow. When the history does not hold `after`, the
    /// queue is declared and bound with nothing replayed, and the outcome says
    /// `gap`. `InvalidInput` when the broker keeps no history.
    async fn resume_subscription(
        &self,
        queue: &str,
        event_keys: &[String],
        after: &str,
    ) -> Result<ResumeOutcome, BrokerError>;

    /// Publishes one event; returns once the broker confirmed it.
    async fn publish(&self, message: OutgoingMessage) -> Result<(), BrokerError>;

    /// Whether the broker is usable now.
    fn connectivity(&self) -> Connectivity;

    /// What the broker says about a queue (`NotFound` if there is none).
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError>;

    /// Gives back everything held and closes the connection.
    async fn close(&self);
}

/// Builds the broker the settings ask for. A RabbitMQ that is down is not an
/// error here: the broker reconnects in the background.
pub fn from_settings(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Broker>, BrokerError> {
    match &settings.broker {
        BrokerUrl::Memory => Ok(Arc::new(MemoryBroker::new(
            memory::MemoryOptions::from_settings(settings),
            metrics,
        ))),
        BrokerUrl::Amqp(nodes) => Ok(Arc::new(AmqpBroker::start(
            amqp::AmqpOptions::from_settings(settings, nodes.clone()),
            metrics,
        )?)),
    }
}

/// The crate's one exponential backoff: each delay doubles from `min` up to
/// `max`, and [`reset`](Backoff::reset) goes back to `min` after a success.
/// [`with_jitter`](Backoff::with_jitter) makes each delay up to 50 % longer at
/// random, so that the replicas (or the polls) that lost one broker together
/// do not come back in step.
///
/// Our own rather than `backon`'s `ExponentialBuilder` (already in the tree
/// through lapin): its jitter adds up to 100 %, which would stretch the
/// reconnect cap from 7.5 s to 10 s, and its backoff is an iterator that has
/// to be rebuilt to reset.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Delays from `min`, doubling up to `max`, without jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
            jitter: false,
        }
    }

    /// Each delay up to 50 % longer, at random.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay: the current step (plus the jitter), then the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter {
            base.mul_f64(1.0 + rand::random::<f64>() * 0.5)
        } else {
            base
        }
    }

    /// Sleeps the next delay, or `at_least` when that is longer (a server's
    /// `Retry-After`).
    pub async fn wait(&mut self, at_least: Option<Duration>) {
        let delay = self.next_delay().max(at_least.unwrap_or_default());
        tokio::time::sleep(delay).await;
    }
}

/// Checks an event key (a routing key): 1–255 bytes of printable ASCII.
/// `allow_wildcards` permits topic patterns (`*`, `#`) in bindings.
pub fn validate_event_key(key: &str, allow_wildcards: bool) -> Result<(), String> {
    if key.is_empty() || key.len() > 255 {
        return Err("an event key must be 1 to 255 bytes".into());
    }
    if !crate::config::is_printable_ascii(key) {
        return Err("an event key must be printable ASCII without spaces".into());
    }
    if !allow_wildcards && key.contains(['*', '#']) {
        return Err("an event's key must not contain the wildcards * or #".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recoverable_kinds_are_the_transient_ones() {
        assert!(BrokerErrorKind::Unavailable.is_recoverable());
        assert!(BrokerErrorKind::ChannelClosed.is_recoverable());
        assert!(!BrokerErrorKind::NotFound.is_recoverable());
        assert!(!BrokerErrorKind::AccessRefused.is_recoverable());
        assert!(!BrokerErrorKind::PreconditionFailed.is_recoverable());
    }

    /// Settles that write down what became of each message: "ack 1", "requeue 2".
    fn recording(log: &Arc<std::sync::Mutex<Vec<String>>>, ids: &[&str]) -> Vec<Acker> {
        struct Record(Arc<std::sync::Mutex<Vec<String>>>, String);
        #[async_trait]
        impl Settle for Record {
            async fn ack(&self) -> Result<(), BrokerError> {
                self.0.lock().unwrap().push(format!("ack {}", self.1));
                Ok(())
            }
            async fn requeue(&self) -> Result<(), BrokerError> {
                self.0.lock().unwrap().push(format!("requeue {}", self.1));
                Ok(())
            }
        }
        let metrics = Arc::new(Metrics::new());
        ids.iter()
            .map(|id| Acker::new(Box::new(Record(log.clone(), (*id).into())), metrics.clone()))
            .collect()
    }

    #[tokio::test]
    async fn a_joined_acker_settles_its_messages_as_one_in_order() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        assert!(Acker::join(Vec::new()).is_none());
        let mut parts = recording(&log, &["1", "2", "3", "4"]);
        let last = parts.pop().unwrap();
        // Joining a joined handle keeps the order flat.
        let joined = Acker::join([Acker::join(parts).unwrap(), last]).unwrap();
        assert_eq!(joined.len(), 4);
        joined.ack().await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["ack 1", "ack 2", "ack 3", "ack 4"]);
        log.lock().unwrap().clear();
        Acker::join(recording(&log, &["1", "2"]))
            .unwrap()
            .requeue()
            .await
            .unwrap();
        assert_eq!(*log.lock().unwrap(), ["requeue 1", "requeue 2"]);
    }

    #[tokio::test]
    async fn a_joined_acker_dropped_unsettled_requeues_every_message_in_order() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        drop(Acker::join(recording(&log, &["1", "2", "3"])).unwrap());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *log.lock().unwrap(),
            ["requeue 1", "requeue 2", "requeue 3"]
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_waits_at_least_what_the_server_asks() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        b.wait(Some(Duration::from_secs(2))).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        b.wait(None).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(2100),
            "the step doubled"
        );
    }

    #[test]
    fn backoff_with_jitter_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_jitter();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(150));
        for _ in 0..10 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped >= Duration::from_secs(1) && capped <= Duration::from_millis(1500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }

    #[test]
    fn event_keys_are_checked() {
        assert!(validate_event_key("longpoll.event.bug.1", false).is_ok());
        assert!(validate_event_key("longpoll.event.bug.*", true).is_ok());
        assert!(validate_event_key("longpoll.event.bug.*", false).is_err());
        assert!(validate_event_key("", true).is_err());
        assert!(validate_event_key("has space", true).is_err());
        assert!(validate_event_key("é", true).is_err());
        assert!(validate_event_key(&"k".repeat(256), true).is_err());
    }
}
