//! The history of events on RabbitMQ, and resuming a subscription from it.
//!
//! **The stream.** `--history-stream` is a RabbitMQ stream (`x-queue-type:
//! stream`, `x-max-age`, `x-max-length-bytes`): replicated across a cluster,
//! it outlives the loss of the node that held a subscription's queue. It is
//! declared when absent (an existing one is used as it is) and bound to the
//! exchange for every event key: with `#` on a topic exchange; on a direct
//! exchange, to each event key as subscriptions are bound to it (before the
//! queue, so that whatever a queue gets, the history has).
//!
//! Not bound before it is ready: RabbitMQ 3.10 answers a second declare (or a
//! passive one) of a stream still being created at once, and a message
//! routed to it then crashes the publishing channel and closes its whole
//! connection (541 INTERNAL_ERROR or 506 RESOURCE_ERROR, seen here in 3 of 8
//! tries). So the first time a process finds or declares the stream, a fence
//! is published into it on a connection of its own until one is confirmed.
//!
//! **A resume** ([`resume`]) makes queue Q for keys K replay every event
//! after message A, then the live ones. AMQP cannot put messages in front of
//! a queue, and a bound queue receives live events while older ones would
//! still have to go in before them, so the only safe order is: fill, then
//! bind, then check what was published while binding.
//!
//! 1. Publish a *fence* (a message with the `x-longpoll-fence` header)
//!    straight into the stream and read the stream up to it: find A (by
//!    message id, computed as the poll computes it); none → a gap: Q is
//!    declared and bound as usual and nothing is replayed. The events after A
//!    that K routes are R, each once, in stream order.
//! 2. Declare Q, unbound, and publish R into it (default exchange; the
//!    events' own properties, so their message ids, timestamps and trace
//!    context are kept), confirmed. Catch up: another fence, the matching
//!    events published meanwhile into Q too, until a round finds none (three
//!    rounds at most) — the window left for step 3 to race is one round
//!    instead of the whole read.
//! 3. Bind Q to K. A last fence; W = the matching events between the two.
//! 4. W empty: done. Otherwise each of W reached Q through the binding, or was
//!    routed just before it and is missing: peek at Q (consume without
//!    acking on a scratch channel, then close it: RabbitMQ requeues every
//!    message at its place). All there: done. One missing: delete Q and go
//!    back to 2 with W added to R (the attempts are bounded; when they run
//!    out, the missing events are appended after the live ones — nothing is
//!    lost, their order changes — with a warning and a count).
//!
//! Fences of other gateways' resumes are skipped; the poll path is untouched:
//! a resumed queue is an ordinary subscription queue.
//!
//! Must not: declare or bind anything but the stream (the queue's declare,
//! bind and delete are `topology`'s), or touch a queue other than the one
//! being resumed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};

use super::broker::Inner;
use super::channels::{open_channel, open_channel_on};
use super::connections::Connections;
use super::delivery::message_id;
use super::errors::{from_lapin_on, short};
use super::topology::Topology;
use crate::broker::{
    BrokerError, BrokerErrorKind, HistoryOptions, MAX_RESUME_EVENTS, ResumeOutcome,
    binding_matches, uuid_v7_time,
};
use crate::config::ExchangeType;

/// The header that makes a message a fence (its value: the fence's own id).
const FENCE_HEADER: &str = "x-longpoll-fence";

/// How long before the time of a UUIDv7 id a resume starts reading: stream
/// chunks carry the broker's clock, ids the publishing gateway's, and a
/// timestamp offset counts whole seconds. A publishing gateway whose clock is
/// ahead of RabbitMQ's by more than this makes a false gap (never a loss);
/// each second more is read on every resume (RabbitMQ 3.10 delivers ~13,000
/// stream messages/s on one core here: at 2,000 events/s, 10 s is ~1.5 s).
const CLOCK_MARGIN: Duration = Duration::from_secs(10);

/// Stream messages in flight to a resume's reader (a stream consumer needs a
/// prefetch), acked every [`ACK_EVERY`] for more credit.
const READ_PREFETCH: u16 = 1000;
const ACK_EVERY: u64 = 250;

/// How long a reader waits for the stream's next message before it gives up:
/// the fence it waits for is confirmed, so it is there to be read.
const READ_IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Fill–bind–check attempts before the events that keep racing the bind are
/// appended instead.
const BIND_ATTEMPTS: u32 = 5;

/// Catch-up rounds before the bind, each one fence.
const CATCH_UP_ROUNDS: u32 = 3;

/// How long a peek waits for a message still on its way to the queue.
const PEEK_SETTLE: Duration = Duration::from_millis(200);

/// Most event keys whose direct-exchange binding of the stream is remembered
/// (the set starts over beyond it; a binding again is harmless).
const BOUND_KEYS_CAP: usize = 100_000;

/// How long a stream may take to become writable after it was declared.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// The history stream of one broker.
pub(crate) struct HistoryStream {
    options: HistoryOptions,
    exchange_type: ExchangeType,
    /// Where a stream's readiness is tried: a crash closes only that connection.
    readiness: Connections,
    /// One check (and declare) at a time in this process.
    ensuring: tokio::sync::Mutex<()>,
    /// A fence was confirmed since the stream was found or declared.
    ready: AtomicBool,
    /// Direct exchange: event keys the stream is bound to (since it was found
    /// or declared by this process).
    bound_keys: Mutex<HashSet<String>>,
}

impl HistoryStream {
    /// `readiness`: connections used only to try a new stream (one at a time,
    /// each closed after its try).
    pub(crate) fn new(
        options: HistoryOptions,
        exchange_type: ExchangeType,
        readiness: Connections,
    ) -> Self {
        HistoryStream {
            options,
            exchange_type,
            readiness,
            ensuring: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            bound_keys: Mutex::new(HashSet::new()),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.options.stream
    }

    fn bound_keys(&self) -> MutexGuard<'_, HashSet<String>> {
        self.bound_keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The arguments a stream is declared with: RabbitMQ's retention syntax
    /// (`x-max-age` in seconds, rounded up).
    fn arguments(&self) -> FieldTable {
        let secs =
            self.options.max_age.as_secs() + u64::from(self.options.max_age.subsec_nanos() > 0);
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{secs}s").as_str().into()),
        );
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.options.max_bytes).unwrap_or(i64::MAX)),
        );
        if let Some(size) = self.options.initial_cluster_size {
            args.insert(
                "x-initial-cluster-size".into(),
                AMQPValue::LongLongInt(i64::from(size)),
            );
        }
        args
    }

    /// Declares the stream if it is absent (an existing one is used as it
    /// is), waits until it is writable, and on a topic exchange binds it with `#`.
    pub(crate) async fn ensure(&self, topology: &Topology) -> Result<(), BrokerError> {
        let _one_at_a_time = self.ensuring.lock().await;
        let stream = self.name();
        match topology.queue_stats(stream).await {
            Ok(_) => {}
            Err(e) if e.kind() == BrokerErrorKind::NotFound => {
                let ch = topology.op_channel().await?;
                ch.queue_declare(
                    short(stream)?,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    self.arguments(),
                )
                .await
                .map_err(|e| from_lapin_on(&e, &[stream]))?;
                ch.done_after_declares(1);
                // A stream declared anew has none of the old one's bindings.
                self.bound_keys().clear();
                self.ready.store(false, Ordering::Release);
                tracing::info!(
                    stream,
                    max_age_secs = self.options.max_age.as_secs(),
                    max_bytes = self.options.max_bytes,
                    "declared the history stream"
                );
            }
            Err(e) => return Err(e),
        }
        if !self.ready.load(Ordering::Acquire) {
            self.wait_writable().await?;
            self.ready.store(true, Ordering::Release);
        }
        if self.exchange_type == ExchangeType::Topic {
            self.bind(topology, &["#".to_owned()]).await?;
        }
        Ok(())
    }

    /// Publishes fences into the stream, each on a fresh connection closed
    /// after it, until one is confirmed (module docs: why not on a shared one).
    async fn wait_writable(&self) -> Result<(), BrokerError> {
        let started = Instant::now();
        loop {
            let conn = self.readiness.get().await?.detach();
            let tried = async {
                let ch = conn
                    .create_channel()
                    .await
                    .map_err(|e| from_lapin_on(&e, &[]))?;
                ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| from_lapin_on(&e, &[]))?;
                ch.basic_publish(
                    short("")?,
                    short(self.name())?,
                    BasicPublishOptions::default(),
                    &[],
                    fence_properties(&uuid::Uuid::new_v4().to_string()),
                )
                .await
                .map_err(|e| from_lapin_on(&e, &[]))?
                .await
                .map_err(|e| from_lapin_on(&e, &[]))
            }
            .await;
            if conn.status().connected() {
                let _ = conn.close(200, "history stream ready".into()).await;
            }
            match tried {
                Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => return Ok(()),
                Ok(Confirmation::Nack(_)) => {}
                Err(e) if started.elapsed() > READY_LIMIT => return Err(e),
                Err(e) => tracing::debug!(error = %e, "the history stream is not writable yet"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Direct exchange: binds the stream to each event key it is not known
    /// to be bound to. (A topic exchange's `#` binding covers every key.)
    pub(crate) async fn bind_keys(
        &self,
        topology: &Topology,
        event_keys: &[String],
    ) -> Result<(), BrokerError> {
        if self.exchange_type != ExchangeType::Direct {
            return Ok(());
        }
        let missing: Vec<String> = {
            let bound = self.bound_keys();
            event_keys
                .iter()
                .filter(|k| !bound.contains(*k))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        self.bind(topology, &missing).await?;
        let mut bound = self.bound_keys();
        if bound.len() + missing.len() > BOUND_KEYS_CAP {
            bound.clear();
        }
        bound.extend(missing);
        Ok(())
    }

    async fn bind(&self, topology: &Topology, keys: &[String]) -> Result<(), BrokerError> {
        let (stream, exchange) = (self.name(), topology.exchange());
        let ch = topology.op_channel().await?;
        for key in keys {
            ch.queue_bind(
                short(stream)?,
                short(exchange)?,
                short(key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin_on(&e, &[stream, exchange]))?;
        }
        ch.done_after_declares(keys.len());
        Ok(())
    }
}

/// Declares `queue` bound to `event_keys`, filled first with the history's
/// events after the message `after` (module docs).
pub(crate) async fn resume(
    inner: &Inner,
    queue: &str,
    event_keys: &[String],
    after: &str,
) -> Result<ResumeOutcome, BrokerError> {
    resume_with(inner, queue, event_keys, after, Hooks::default()).await
}

/// What a test runs around the bind, to put an event where a race would.
#[cfg(test)]
#[derive(Default)]
struct Hooks {
    /// Run just before the queue is bound, with the attempt's number.
    before_bind:
        Option<Box<dyn Fn(u32) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>>,
}

#[cfg(not(test))]
#[derive(Default)]
struct Hooks {}

async fn resume_with(
    inner: &Inner,
    queue: &str,
    event_keys: &[String],
    after: &str,
    hooks: Hooks,
) -> Result<ResumeOutcome, BrokerError> {
    let topology = &inner.topology;
    let Some(history) = topology.history() else {
        return Err(BrokerError::new(
            BrokerErrorKind::InvalidInput,
            "this broker keeps no history (--history-max-age 0)",
        ));
    };
    topology.ensure_history().await?;
    // From here on every event for these keys goes to the stream too.
    history.bind_keys(topology, event_keys).await?;
    let mut reader =
        StreamReader::open(&inner.connections, history.name(), start_offset(after)).await?;
    let mut resumption = Resumption {
        topology,
        connections: &inner.connections,
        stream: history.name(),
        queue,
        event_keys,
        ids: HashSet::from([Arc::from(after)]),
        replay: Vec::new(),
        hooks,
    };
    let outcome = resumption.run(&mut reader, after).await;
    reader.close().await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            // The key was never handed out: its queue goes (or expires).
            let _ = topology.delete_queue(queue).await;
            return Err(e);
        }
    };
    let label = match outcome {
        Outcome::Gap => "gap",
        Outcome::Resumed => "resumed",
        Outcome::Reordered => "reordered",
    };
    let resumed = if outcome == Outcome::Gap {
        0
    } else {
        resumption.replay.len() as u64
    };
    inner.metrics.count_resume(label, resumed);
    Ok(ResumeOutcome {
        resumed,
        gap: outcome == Outcome::Gap,
    })
}

/// Where a resume starts reading: a little before the time of a UUIDv7 id,
/// or the stream's first message for any other id.
fn start_offset(after: &str) -> AMQPValue {
    match uuid_v7_time(after) {
        Some(made) => {
            let secs = made
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_sub(CLOCK_MARGIN)
                .as_secs();
            AMQPValue::Timestamp(secs)
        }
        None => AMQPValue::LongString("first".into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Resumed,
    Gap,
    /// Events kept racing the bind and were appended after live ones.
    Reordered,
}

/// An event read from the stream.
#[derive(Clone)]
struct StreamEvent {
    id: Arc<str>,
    routing_key: ShortString,
    properties: BasicProperties,
    body: Vec<u8>,
}

/// One resume in progress.
struct Resumption<'a> {
    topology: &'a Topology,
    /// Where the scratch channel of a peek is opened.
    connections: &'a Connections,
    stream: &'a str,
    queue: &'a str,
    event_keys: &'a [String],
    /// Ids of `after` and of every event replayed: each goes in once.
    ids: HashSet<Arc<str>>,
    /// The events after `after` for the keys, in stream order.
    replay: Vec<StreamEvent>,
    #[cfg_attr(not(test), allow(dead_code))]
    hooks: Hooks,
}

impl Resumption<'_> {
    async fn run(
        &mut self,
        reader: &mut StreamReader,
        after: &str,
    ) -> Result<Outcome, BrokerError> {
        let fence = publish_fence(self.topology, self.stream).await?;
        let mut found = false;
        let mut fresh = Vec::new();
        let reached = reader
            .read_to(&fence, |event| {
                if found {
                    self.keep(event, &mut fresh)
                } else {
                    found = *event.id == *after;
                    true
                }
            })
            .await?;
        self.replay = fresh;
        if !found || !reached {
            // Not in the history (or more since than a resume replays): the
            // page must reload its view. The queue is an ordinary one.
            self.topology
                .declare_subscription(self.queue, self.event_keys)
                .await?;
            return Ok(Outcome::Gap);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.topology.declare_queue(self.queue).await?;
            publish_to_queue(self.topology, self.queue, &self.replay).await?;
            for _ in 0..CATCH_UP_ROUNDS {
                let fresh = self.read_matching(reader).await?;
                let Some(fresh) = fresh else {
                    return self.too_many().await;
                };
                publish_to_queue(self.topology, self.queue, &fresh).await?;
                let caught_up = fresh.is_empty();
                self.replay.extend(fresh);
                if caught_up {
                    break;
                }
            }
            #[cfg(test)]
            if let Some(hook) = &self.hooks.before_bind {
                hook(attempt).await;
            }
            self.topology.bind(self.queue, self.event_keys).await?;
            let Some(window) = self.read_matching(reader).await? else {
                return self.too_many().await;
            };
            if window.is_empty() {
                return Ok(Outcome::Resumed);
            }
            let wanted: HashSet<Arc<str>> = window.iter().map(|e| e.id.clone()).collect();
            let present = peek_ids(self.topology, self.connections, self.queue, &wanted).await?;
            let missing: Vec<&StreamEvent> =
                window.iter().filter(|e| !present.contains(&e.id)).collect();
            if missing.is_empty() {
                self.replay.extend(window);
                return Ok(Outcome::Resumed);
            }
            if attempt >= BIND_ATTEMPTS {
                let missing: Vec<StreamEvent> = missing.into_iter().cloned().collect();
                publish_to_queue(self.topology, self.queue, &missing).await?;
                tracing::warn!(
                    appended = missing.len(),
                    attempts = attempt,
                    "events published during a resume kept racing the bind; appended after live ones"
                );
                self.replay.extend(window);
                return Ok(Outcome::Reordered);
            }
            tracing::debug!(
                missing = missing.len(),
                attempt,
                "an event raced the bind of a resumed queue; filling it again"
            );
            self.replay.extend(window);
            self.topology.delete_queue(self.queue).await?;
        }
    }

    /// Keeps `event` in `into` when the keys route it and it is new; false
    /// (stop reading) beyond what a resume replays.
    fn keep(&mut self, event: StreamEvent, into: &mut Vec<StreamEvent>) -> bool {
        let routed = self
            .event_keys
            .iter()
            .any(|k| binding_matches(self.topology.exchange_type(), k, event.routing_key.as_str()));
        if routed && self.ids.insert(event.id.clone()) {
            into.push(event);
        }
        self.replay.len() + into.len() <= MAX_RESUME_EVENTS
    }

    /// A fence, and the new matching events before it; `None` beyond what a
    /// resume replays.
    async fn read_matching(
        &mut self,
        reader: &mut StreamReader,
    ) -> Result<Option<Vec<StreamEvent>>, BrokerError> {
        let fence = publish_fence(self.topology, self.stream).await?;
        let mut fresh = Vec::new();
        let reached = reader
            .read_to(&fence, |event| self.keep(event, &mut fresh))
            .await?;
        Ok(reached.then_some(fresh))
    }

    /// More events than a resume replays: a gap after all.
    async fn too_many(&self) -> Result<Outcome, BrokerError> {
        self.topology.delete_queue(self.queue).await?;
        self.topology
            .declare_subscription(self.queue, self.event_keys)
            .await?;
        Ok(Outcome::Gap)
    }
}

/// A consumer of the history stream, on a channel of its own.
struct StreamReader {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    stream: String,
    since_ack: u64,
}

impl StreamReader {
    /// A consumer of the stream from `offset`. RabbitMQ serves a stream
    /// consumer only on a node that holds a replica of the stream, and a
    /// node restarted moments ago may not have its replica back yet (406
    /// "does not have a replica on the local node"): another connection of
    /// the pool is tried then (the refused ones are held meanwhile, so that
    /// the next is another, often on another node). When none will do, the
    /// broker is unavailable for now (503 with Retry-After), not in conflict.
    async fn open(
        connections: &Connections,
        stream: &str,
        offset: AMQPValue,
    ) -> Result<Self, BrokerError> {
        let mut refused = Vec::new();
        loop {
            let (channel, conn) = open_channel_on(connections.get().await?).await?;
            // A stream consumer needs a prefetch, and acks for credit.
            channel
                .basic_qos(READ_PREFETCH, BasicQosOptions::default())
                .await
                .map_err(|e| from_lapin_on(&e, &[]))?;
            let mut args = FieldTable::default();
            args.insert("x-stream-offset".into(), offset.clone());
            let consumed = channel
                .basic_consume(
                    short(stream)?,
                    short("")?,
                    BasicConsumeOptions::default(),
                    args,
                )
                .await
                .map_err(|e| from_lapin_on(&e, &[stream]));
            match consumed {
                Ok(consumer) => {
                    return Ok(StreamReader {
                        channel,
                        consumer,
                        stream: stream.to_owned(),
                        since_ack: 0,
                    });
                }
                Err(e) if no_local_replica(&e) => {
                    tracing::debug!(error = %e, "no replica of the history stream on this connection's node");
                    refused.push(conn);
                    if refused.len() >= connections.max_size() {
                        return Err(BrokerError::new(
                            BrokerErrorKind::Unavailable,
                            "no broker node in reach holds a replica of the history stream now",
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads up to the fence `fence`, handing each event before it to `each`
    /// (fences skipped). True once the fence is read; false when `each`
    /// returned false (stop).
    async fn read_to(
        &mut self,
        fence: &str,
        mut each: impl FnMut(StreamEvent) -> bool,
    ) -> Result<bool, BrokerError> {
        loop {
            let next = tokio::time::timeout(READ_IDLE_LIMIT, self.consumer.next())
                .await
                .map_err(|_| {
                    BrokerError::new(
                        BrokerErrorKind::Timeout,
                        "the history stream stopped delivering before a confirmed fence",
                    )
                })?;
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(from_lapin_on(&e, &[self.stream.as_str()])),
                None => {
                    return Err(BrokerError::new(
                        BrokerErrorKind::ChannelClosed,
                        "the history stream's consumer ended",
                    ));
                }
            };
            self.since_ack += 1;
            if self.since_ack >= ACK_EVERY {
                self.since_ack = 0;
                self.channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                    .await
                    .map_err(|e| from_lapin_on(&e, &[]))?;
            }
            if let Some(seen) = fence_of(&delivery.properties) {
                if seen == fence {
                    return Ok(true);
                }
                continue; // another resume's
            }
            let event = StreamEvent {
                id: message_id(&delivery.properties, &delivery.data),
                routing_key: delivery.routing_key,
                properties: without_stream_offset(delivery.properties),
                body: delivery.data,
            };
            if !each(event) {
                return Ok(false);
            }
        }
    }

    /// Closes the channel (the consumer with it).
    async fn close(self) {
        if self.channel.status().connected() {
            let _ = self.channel.close(200, "resume done".into()).await;
        }
    }
}

/// RabbitMQ's refusal of a stream consumer on a node without a replica of
/// the stream (a node restarted moments ago): a state that passes.
fn no_local_replica(e: &BrokerError) -> bool {
    e.kind() == BrokerErrorKind::PreconditionFailed
        && e.to_string()
            .contains("does not have a replica on the local node")
}

/// The fence id a message carries, if it is a fence.
fn fence_of(properties: &BasicProperties) -> Option<&str> {
    match properties.headers().as_ref()?.inner().get(FENCE_HEADER)? {
        AMQPValue::LongString(id) => std::str::from_utf8(id.as_bytes()).ok(),
        _ => None,
    }
}

/// The properties an event is published with again: as it was, without the
/// offset the stream added.
fn without_stream_offset(properties: BasicProperties) -> BasicProperties {
    let Some(headers) = properties.headers().as_ref() else {
        return properties;
    };
    if !headers.contains_key("x-stream-offset") {
        return properties;
    }
    let kept: std::collections::BTreeMap<ShortString, AMQPValue> = headers
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-stream-offset")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    properties.with_headers(FieldTable::from(kept))
}

/// Publishes a fence straight into the stream (default exchange), confirmed;
/// returns its id.
async fn publish_fence(topology: &Topology, stream: &str) -> Result<String, BrokerError> {
    let fence = uuid::Uuid::new_v4().to_string();
    publish_confirmed(topology, stream, vec![(&[][..], fence_properties(&fence))]).await?;
    Ok(fence)
}

/// The properties of the fence `id`: an empty message with only the header.
fn fence_properties(id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        FENCE_HEADER.into(),
        AMQPValue::LongString(LongString::from(id)),
    );
    BasicProperties::default().with_headers(headers)
}

/// Publishes events into `queue` (default exchange), in order, confirmed.
async fn publish_to_queue(
    topology: &Topology,
    queue: &str,
    events: &[StreamEvent],
) -> Result<(), BrokerError> {
    if events.is_empty() {
        return Ok(());
    }
    let messages = events
        .iter()
        .map(|e| (&e.body[..], e.properties.clone()))
        .collect();
    publish_confirmed(topology, queue, messages).await
}

/// Publishes each message to `queue` through the default exchange on one
/// confirm-mode channel, then waits for every confirm.
async fn publish_confirmed(
    topology: &Topology,
    queue: &str,
    messages: Vec<(&[u8], BasicProperties)>,
) -> Result<(), BrokerError> {
    let ch = topology.op_channel().await?;
    let mut confirms = Vec::new();
    for (body, properties) in messages {
        let confirm = ch
            .basic_publish(
                short("")?,
                short(queue)?,
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(|e| from_lapin_on(&e, &[queue]))?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        match confirm.await.map_err(|e| from_lapin_on(&e, &[queue]))? {
            Confirmation::Ack(_) | Confirmation::NotRequested => {}
            Confirmation::Nack(_) => {
                return Err(BrokerError::new(
                    BrokerErrorKind::Nacked,
                    "the broker did not accept a message of a resume",
                ));
            }
        }
    }
    ch.done();
    Ok(())
}

/// Which of `wanted` are in `queue` now: consumes it on a scratch channel
/// without acking, and closes the channel — RabbitMQ puts every message back
/// at its place (marked redelivered, which the poll path only acts on for a
/// message its client is known to have).
async fn peek_ids(
    topology: &Topology,
    connections: &Connections,
    queue: &str,
    wanted: &HashSet<Arc<str>>,
) -> Result<HashSet<Arc<str>>, BrokerError> {
    let ready = topology.queue_stats(queue).await?.ready;
    let channel = open_channel(connections).await?;
    let peeked = async {
        let mut consumer = channel
            .basic_consume(
                short(queue)?,
                short("")?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin_on(&e, &[queue]))?;
        let mut present = HashSet::new();
        let mut read = 0u64;
        // Everything that was there, then whatever arrives within the settle
        // time: the queue is bound and live events keep coming, so a
        // deadline, not an idle time.
        let mut settled_by = None;
        while present.len() < wanted.len() {
            if read >= ready && settled_by.is_none() {
                settled_by = Some(tokio::time::Instant::now() + PEEK_SETTLE);
            }
            let next = match settled_by {
                None => tokio::time::timeout(READ_IDLE_LIMIT, consumer.next()).await,
                Some(deadline) => tokio::time::timeout_at(deadline, consumer.next()).await,
            };
            let Ok(next) = next else {
                break;
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(from_lapin_on(&e, &[queue])),
                None => break,
            };
            read += 1;
            let id = message_id(&delivery.properties, &delivery.data);
            if wanted.contains(&id) {
                present.insert(id);
            }
        }
        Ok(present)
    }
    .await;
    // Closing the channel gives every unacked message back to the queue.
    let _ = channel.close(200, "peek done".into()).await;
    peeked
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

    use super::*;
    use crate::broker::amqp::{AmqpBroker, AmqpOptions};
    use crate::broker::{Broker, OutgoingMessage, new_message_id};
    use crate::config::{BrokerUrl, Settings};
    use crate::telemetry::Metrics;

    fn amqp_url() -> String {
        std::env::var("LONGPOLL_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    fn unique(tag: &str) -> String {
        format!("{tag}.{}", uuid::Uuid::new_v4().simple())
    }

    /// A broker on the real RabbitMQ with its own exchange and stream; they
    /// are deleted by [`Own::clean`].
    struct Own {
        broker: AmqpBroker,
        metrics: Arc<Metrics>,
        exchange: String,
        stream: String,
        queues: Vec<String>,
    }

    impl Own {
        async fn start() -> Own {
            let (exchange, stream) = (unique("longpoll.hist.x"), unique("longpoll.hist.s"));
            let mut settings = Settings {
                exchange: exchange.clone(),
                ..Settings::default()
            };
            settings.history.stream = stream.clone();
            let Ok(BrokerUrl::Amqp(url)) = BrokerUrl::parse(&amqp_url()) else {
                panic!("LONGPOLL_TEST_AMQP_URL is not an AMQP URL");
            };
            let metrics = Arc::new(Metrics::new());
            let options = AmqpOptions {
                channel_pool_size: 4,
                ..AmqpOptions::from_settings(&settings, url)
            };
            let broker = AmqpBroker::start(options, metrics.clone()).expect("a broker");
            let inner = broker.inner().clone();
            tokio::time::timeout(
                Duration::from_secs(20),
                inner.link.wait_connected(&inner.stop),
            )
            .await
            .expect("connected to RabbitMQ");
            Own {
                broker,
                metrics,
                exchange,
                stream,
                queues: Vec::new(),
            }
        }

        fn publisher(&self) -> AmqpBroker {
            self.broker.clone()
        }
    }

    impl Drop for Own {
        fn drop(&mut self) {
            let queues: Vec<String> = self.queues.iter().chain([&self.stream]).cloned().collect();
            let exchange = self.exchange.clone();
            // On a thread of its own: a test's runtime may be unwinding.
            let cleaned = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async {
                    let Ok(conn) =
                        lapin::Connection::connect(&amqp_url(), Default::default()).await
                    else {
                        return;
                    };
                    let Ok(ch) = conn.create_channel().await else {
                        return;
                    };
                    for queue in &queues {
                        let _ = ch
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    let _ = ch
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                    let _ = conn.close(200, "cleaned".into()).await;
                });
            });
            let _ = cleaned.join();
        }
    }

    async fn emit(broker: &AmqpBroker, key: &str, n: u32) -> String {
        let id = new_message_id();
        broker
            .publish(OutgoingMessage {
                routing_key: key.to_owned(),
                body: format!("{{\"n\":{n}}}").into(),
                message_id: id.clone(),
                published_at: SystemTime::now(),
                headers: vec![],
            })
            .await
            .expect("published");
        id
    }

    /// The next `count` messages of `queue`, each acked: (id, redelivered).
    async fn take(broker: &AmqpBroker, queue: &str, count: usize) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for _ in 0..count {
            let d = tokio::time::timeout(Duration::from_secs(10), broker.next_message(queue))
                .await
                .expect("a message within 10 s")
                .expect("a delivery");
            out.push((d.message_id.to_string(), d.redelivered));
            d.acker.ack().await.expect("acked");
        }
        out
    }

    fn ids(taken: &[(String, bool)]) -> Vec<&str> {
        taken.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peek_leaves_every_message_at_its_place_marked_redelivered() {
        let mut own = Own::start().await;
        let inner = own.broker.inner().clone();
        let (key, queue) = (
            unique("longpoll.event.peek"),
            unique("longpoll.subscribe.peek"),
        );
        own.queues.push(queue.clone());
        inner
            .topology
            .declare_subscription(&queue, std::slice::from_ref(&key))
            .await
            .unwrap();
        let mut sent = Vec::new();
        for n in 0..5 {
            sent.push(emit(&own.broker, &key, n).await);
        }
        let wanted: HashSet<Arc<str>> = [sent[1].as_str(), sent[3].as_str(), "not-there"]
            .into_iter()
            .map(Arc::from)
            .collect();
        let present = peek_ids(&inner.topology, &inner.connections, &queue, &wanted)
            .await
            .unwrap();
        let mut present: Vec<&str> = present.iter().map(|id| &**id).collect();
        present.sort_unstable();
        let mut expected = vec![sent[1].as_str(), sent[3].as_str()];
        expected.sort_unstable();
        assert_eq!(present, expected);
        let taken = take(&own.broker, &queue, 5).await;
        assert_eq!(
            ids(&taken),
            sent.iter().map(String::as_str).collect::<Vec<_>>(),
            "in place"
        );
        assert!(
            taken.iter().all(|(_, redelivered)| *redelivered),
            "{taken:?}"
        );
        own.broker.close().await;
    }

    /// Publishes the next event on `key` from the hook: routed before the
    /// bind, so missing from the queue, and after the last fence read.
    fn racing_publisher(
        broker: AmqpBroker,
        key: String,
        attempts: u32,
        sent: Arc<std::sync::Mutex<Vec<String>>>,
    ) -> Hooks {
        Hooks {
            before_bind: Some(Box::new(move |attempt| {
                let (broker, key, sent) = (broker.clone(), key.clone(), sent.clone());
                Box::pin(async move {
                    if attempt <= attempts {
                        let n = sent.lock().unwrap().len() as u32;
                        let id = emit(&broker, &key, n).await;
                        sent.lock().unwrap().push(id);
                    }
                })
            })),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_routed_just_before_the_bind_is_replayed_in_its_place() {
        let mut own = Own::start().await;
        let inner = own.broker.inner().clone();
        let (key, queue) = (
            unique("longpoll.event.race"),
            unique("longpoll.subscribe.race"),
        );
        own.queues.push(queue.clone());
        let keys = [key.clone()];
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        for n in 0..3 {
            let id = emit(&own.broker, &key, n).await;
            sent.lock().unwrap().push(id);
        }
        let after = sent.lock().unwrap()[0].clone();
        let hooks = racing_publisher(own.publisher(), key.clone(), 1, sent.clone());
        let outcome = resume_with(&inner, &queue, &keys, &after, hooks)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            ResumeOutcome {
                resumed: 3,
                gap: false
            }
        );
        let live = emit(&own.broker, &key, 99).await;
        let taken = take(&own.broker, &queue, 4).await;
        let sent = sent.lock().unwrap().clone();
        assert_eq!(ids(&taken), [&sent[1], &sent[2], &sent[3], &live]);
        let resumed = metric(&own.metrics, "longpoll_resumes_total{outcome=\"resumed\"}");
        assert_eq!(resumed, 1.0);
        own.broker.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_that_keep_racing_the_bind_are_appended_and_none_is_lost() {
        let mut own = Own::start().await;
        let inner = own.broker.inner().clone();
        let (key, queue) = (
            unique("longpoll.event.race"),
            unique("longpoll.subscribe.race"),
        );
        own.queues.push(queue.clone());
        let keys = [key.clone()];
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let first = emit(&own.broker, &key, 0).await;
        sent.lock().unwrap().push(first.clone());
        let hooks = racing_publisher(own.publisher(), key.clone(), u32::MAX, sent.clone());
        let outcome = resume_with(&inner, &queue, &keys, &first, hooks)
            .await
            .unwrap();
        let sent = sent.lock().unwrap().clone();
        assert_eq!(
            sent.len() as u32,
            1 + BIND_ATTEMPTS,
            "one racing event per attempt"
        );
        assert_eq!(
            outcome,
            ResumeOutcome {
                resumed: u64::from(BIND_ATTEMPTS),
                gap: false
            }
        );
        let taken = take(&own.broker, &queue, BIND_ATTEMPTS as usize).await;
        // Nothing live came between: the appended one is even in its place.
        let expected: Vec<&str> = sent[1..].iter().map(String::as_str).collect();
        assert_eq!(ids(&taken), expected);
        let reordered = metric(
            &own.metrics,
            "longpoll_resumes_total{outcome=\"reordered\"}",
        );
        assert_eq!(reordered, 1.0);
        own.broker.close().await;
    }

    fn metric(metrics: &Metrics, sample: &str) -> f64 {
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn a_uuid_v7_id_starts_the_read_a_little_before_its_time() {
        let id = new_message_id();
        let AMQPValue::Timestamp(secs) = start_offset(&id) else {
            panic!("a timestamp offset")
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(secs <= now - CLOCK_MARGIN.as_secs() && secs + 2 >= now - CLOCK_MARGIN.as_secs());
        for other in [uuid::Uuid::new_v4().to_string(), "sha256-0011".to_owned()] {
            assert_eq!(
                start_offset(&other),
                AMQPValue::LongString("first".into()),
                "{other}"
            );
        }
    }

    #[test]
    fn the_stream_is_declared_with_rabbitmq_retention_arguments() {
        let Ok(BrokerUrl::Amqp(url)) = BrokerUrl::parse("amqp://unused.example/") else {
            unreachable!()
        };
        let nodes = super::super::connections::Nodes::new(
            &url,
            &Default::default(),
            Arc::new(crate::telemetry::Metrics::new()),
        )
        .unwrap();
        let readiness = Connections::new(&nodes, "test".into(), 1).unwrap();
        let stream = HistoryStream::new(
            HistoryOptions {
                stream: "s".into(),
                max_age: Duration::from_millis(3_600_500),
                max_bytes: 1_000_000_000,
                initial_cluster_size: Some(3),
            },
            ExchangeType::Topic,
            readiness,
        );
        let args = stream.arguments();
        let args = args.inner();
        assert_eq!(
            args.get("x-queue-type"),
            Some(&AMQPValue::LongString("stream".into()))
        );
        assert_eq!(
            args.get("x-max-age"),
            Some(&AMQPValue::LongString("3601s".into()))
        );
        assert_eq!(
            args.get("x-max-length-bytes"),
            Some(&AMQPValue::LongLongInt(1_000_000_000))
        );
        assert_eq!(
            args.get("x-initial-cluster-size"),
            Some(&AMQPValue::LongLongInt(3))
        );
    }

    #[test]
    fn the_offset_header_is_dropped_and_the_rest_kept() {
        let mut headers = FieldTable::default();
        headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(7));
        headers.insert("traceparent".into(), AMQPValue::LongString("tp".into()));
        let props = BasicProperties::default()
            .with_message_id("m".into())
            .with_headers(headers);
        let kept = without_stream_offset(props);
        let headers = kept.headers().as_ref().unwrap();
        assert!(!headers.contains_key("x-stream-offset"));
        assert!(headers.contains_key("traceparent"));
        assert_eq!(kept.message_id().as_ref().unwrap().as_str(), "m");
    }

    #[test]
    fn a_fence_is_known_by_its_header() {
        let mut headers = FieldTable::default();
        headers.insert(FENCE_HEADER.into(), AMQPValue::LongString("f1".into()));
        let fence = BasicProperties::default().with_headers(headers);
        assert_eq!(fence_of(&fence), Some("f1"));
        assert_eq!(fence_of(&BasicProperties::default()), None);
    }
}
