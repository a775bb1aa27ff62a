//! RabbitMQ through lapin, with pooled connections (deadpool-lapin).
//!
//! Owns: the connection supervisor (reconnect with backoff, the connectivity
//! that `/readyz` reports), the exchange (declared with `--exchange-type` when
//! absent, used as it is when present), subscription queues (durable, with
//! `x-expires`), publishing with confirms, and the per-queue consumers.
//! Must not: use lapin's own auto-recovery — deadpool's recycle check is the one
//! reconnection strategy here (the two fight each other).

mod channels;
mod connections;
mod consumers;
mod errors;
pub mod negative_cache;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, ExchangeKind};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use self::channels::{ConsumerChannels, OpChannelPool, op_channel, probe_channel};
use self::connections::Connections;
use self::consumers::{ActiveConsumer, ConsumerRegistry, QueueEntry};
use self::errors::{from_lapin, from_lapin_on, short};
use self::negative_cache::{NEGATIVE_CAPACITY, NEGATIVE_TTL, NegativeCache};
use super::{
    Acker, Backoff, Broker, BrokerError, BrokerErrorKind, Connectivity, Delivery, OutgoingMessage,
    QueueStats, Settle, derive_message_id,
};
use crate::config::{BrokerTls, ExchangeType, SecretUrl, Settings};
use crate::telemetry::Metrics;
use crate::telemetry::traces::SettleTrace;

/// How the RabbitMQ broker is used.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    pub url: SecretUrl,
    pub exchange: String,
    pub exchange_type: ExchangeType,
    pub subscription_expiry: Duration,
    /// Operation channels pooled, and as many shared consumer channels.
    pub channel_pool_size: usize,
    /// AMQP connections pooled.
    pub connections: usize,
    /// How long a queue's consumer is kept after a delivery, waiting for the
    /// client's next poll.
    pub consumer_linger: Duration,
    /// TLS material and credential files.
    pub tls: BrokerTls,
}

impl AmqpOptions {
    pub fn from_settings(s: &Settings, url: SecretUrl) -> Self {
        AmqpOptions {
            url,
            exchange: s.exchange.clone(),
            exchange_type: s.exchange_type,
            subscription_expiry: s.subscription_expiry,
            channel_pool_size: s.channel_pool_size,
            connections: connections_for(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            consumer_linger: Duration::from_secs(10),
            tls: s.broker_tls.clone(),
        }
    }
}

/// AMQP connections for consumers and operations on a machine with `cores`
/// cores (the process's CPU quota, as `available_parallelism` reads it): one per
/// two cores, from one to four. Every frame of a connection's consumers crosses
/// its one lapin I/O thread; on two cores a second thread only adds wake-ups
/// between threads (one connection instead of two: +8% deliveries/s and −6% of
/// the gateway's CPU per delivery on RabbitMQ, benches/README.md), while a bigger
/// box needs more than one thread to carry its consumers' frames.
pub fn connections_for(cores: usize) -> usize {
    (cores / 2).clamp(1, 4)
}

/// Header carrying the publish time in milliseconds (AMQP's timestamp is in seconds).
pub const TIMESTAMP_MS_HEADER: &str = "timestamp_in_ms";

struct Inner {
    options: AmqpOptions,
    connections: Connections,
    ops: OpChannelPool,
    /// Channels for passive declares, on a connection of their own.
    probe_ops: OpChannelPool,
    probe_connections: Connections,
    consumer_channels: Arc<ConsumerChannels>,
    consumers: ConsumerRegistry,
    state: watch::Sender<Connectivity>,
    ever_connected: AtomicBool,
    exchange_ready: AtomicBool,
    /// Queues known to be missing (answered 404 without asking the broker).
    missing: NegativeCache,
    /// Probes in flight at most: each unknown queue costs the broker a failed
    /// declare and a channel, so a flood of unknown keys is paced here and
    /// never takes the whole channel pool.
    probes: Semaphore,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

/// How long each step of closing the broker may wait for RabbitMQ's replies.
const CLOSE_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// The RabbitMQ broker. Cheap to clone.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &self.inner.options.url)
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Builds the pools and starts the connection supervisor. Does not wait for
    /// the broker: one that is down is reconnected in the background.
    pub fn start(options: AmqpOptions, metrics: Arc<Metrics>) -> Result<Self, BrokerError> {
        // The process id in the name lets an operator (and a test) tell one
        // replica's connections apart in `rabbitmqctl list_connections`.
        let name = format!("longpoll-gateway pid={}", std::process::id());
        let connections = Connections::new(
            &options.url,
            name.clone(),
            options.connections,
            &options.tls,
        )?;
        let ops = channels::op_channel_pool(&connections, options.channel_pool_size)?;
        // Passive declares (probes) get a connection of their own: each unknown
        // queue closes the channel it was probed on, and that churn stays away
        // from the consumers and the operations.
        let probe_slots = (options.channel_pool_size / 2).clamp(1, 8);
        let probe_connections =
            Connections::new(&options.url, format!("{name} probes"), 1, &options.tls)?;
        let probe_ops = channels::op_channel_pool(&probe_connections, probe_slots)?;
        let (state, _) = watch::channel(Connectivity::Disconnected {
            since: Instant::now(),
        });
        let inner = Arc::new(Inner {
            consumer_channels: ConsumerChannels::new(
                channels::consumer_channel_count(options.channel_pool_size),
                connections.clone(),
            ),
            consumers: ConsumerRegistry::new(options.consumer_linger),
            options,
            connections,
            ops,
            probe_ops,
            probe_connections,
            state,
            ever_connected: AtomicBool::new(false),
            exchange_ready: AtomicBool::new(false),
            missing: NegativeCache::new(NEGATIVE_TTL, NEGATIVE_CAPACITY),
            probes: Semaphore::new(probe_slots),
            metrics,
            stop: CancellationToken::new(),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), inner.stop.clone()));
        tokio::spawn(reap_idle_consumers(
            Arc::downgrade(&inner),
            inner.stop.clone(),
        ));
        Ok(AmqpBroker { inner })
    }

    /// Waits until the supervisor reports a usable connection (or the broker stops).
    async fn wait_connected(&self) {
        let mut rx = self.inner.state.subscribe();
        loop {
            if *rx.borrow_and_update() == Connectivity::Connected {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = self.inner.stop.cancelled() => return,
            }
        }
    }

    /// Declares the exchange if absent (once per connection).
    async fn ensure_exchange(&self) -> Result<(), BrokerError> {
        if self.inner.exchange_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let exchange = short(&self.inner.options.exchange)?;
        let exchange_name = self.inner.options.exchange.as_str();
        match self.passive_exchange_declare().await {
            Ok(()) => {}
            Err(e) if e.kind() == BrokerErrorKind::NotFound => {
                let kind = match self.inner.options.exchange_type {
                    ExchangeType::Topic => ExchangeKind::Topic,
                    ExchangeType::Direct => ExchangeKind::Direct,
                };
                let ch = op_channel(&self.inner.ops, &self.inner.metrics).await?;
                ch.exchange_declare(
                    exchange,
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| from_lapin_on(&e, &[exchange_name]))?;
                ch.done();
                tracing::info!(
                    exchange = %self.inner.options.exchange,
                    kind = self.inner.options.exchange_type.as_str(),
                    "declared the exchange"
                );
            }
            Err(e) => return Err(e),
        }
        self.inner.exchange_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Passive declare: does the queue exist? Runs on an operation channel, so
    /// the 404 that closes the channel touches nothing else; a queue found
    /// missing is remembered for a few seconds.
    async fn probe_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let known_missing = || {
            let hit = self.inner.missing.contains(queue);
            if hit {
                self.inner.metrics.negative_cache_hits.inc();
            }
            hit
        };
        if known_missing() {
            return Err(BrokerError::not_found("queue known to be missing"));
        }
        let _permit =
            self.inner.probes.acquire().await.map_err(|_| {
                BrokerError::new(BrokerErrorKind::Unavailable, "the broker is closing")
            })?;
        // Polls for the same unknown queue queued behind one probe learn its
        // answer instead of probing again.
        if known_missing() {
            return Err(BrokerError::not_found("queue known to be missing"));
        }
        self.inner.metrics.queue_probes.inc();
        let mut result = self.queue_stats(queue).await.map(|_| ());
        for _ in 0..2 {
            match &result {
                Err(e) if e.kind() == BrokerErrorKind::ChannelClosed => {
                    result = self.queue_stats(queue).await.map(|_| ());
                }
                _ => break,
            }
        }
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == BrokerErrorKind::NotFound)
        {
            self.inner.missing.insert(queue);
        }
        result
    }

    async fn start_consumer(&self, queue: &str) -> Result<ActiveConsumer, BrokerError> {
        self.probe_queue(queue).await?;
        let channel = self.inner.consumer_channels.channel().await?;
        let tag = format!("lp-{}", uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                short(queue)?,
                short(&tag)?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin_on(&e, &[queue]))?;
        Ok(ActiveConsumer::new(
            channel,
            consumer,
            self.inner.metrics.clone(),
        ))
    }

    /// Makes sure the queue's entry holds a live consumer. The consumer is
    /// created in a task of its own and stored in the entry by that task: a
    /// poll dropped while `basic.consume` is in flight (a client gone within
    /// milliseconds) must not leave a consumer registered on the broker that
    /// nothing reads or cancels — it would hold a message unacked forever.
    /// Whoever retires the entry waits for the task and cancels what it made.
    async fn ensure_consumer(
        &self,
        entry: &Arc<QueueEntry>,
        queue: &str,
    ) -> Result<(), BrokerError> {
        // The caller found none live; the task checks again under the lock.
        let (broker, entry, queue) = (self.clone(), entry.clone(), queue.to_owned());
        tokio::spawn(async move {
            let mut active = entry.active.lock().await;
            if live_consumer(&active) {
                return Ok(());
            }
            *active = None;
            *active = Some(broker.start_consumer(&queue).await?);
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(BrokerError::new(BrokerErrorKind::Internal, e.to_string())))
    }

    /// Runs `op` on the exchange, redeclaring it once if it vanished.
    async fn with_exchange<F, Fut>(&self, op: F) -> Result<(), BrokerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        self.ensure_exchange().await?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match op().await {
                Err(e)
                    if e.kind() == BrokerErrorKind::NotFound && self.exchange_missing().await =>
                {
                    self.inner.exchange_ready.store(false, Ordering::Release);
                    self.ensure_exchange().await?;
                }
                // A channel lost under the operation: its effects are
                // idempotent (declare, bind, a publish not confirmed), so again.
                Err(e) if e.kind() == BrokerErrorKind::ChannelClosed && attempts < 3 => {}
                other => return other,
            }
            if attempts >= 3 {
                return op().await;
            }
        }
    }

    /// Does the exchange exist? (A passive declare.)
    async fn passive_exchange_declare(&self) -> Result<(), BrokerError> {
        let exchange = short(&self.inner.options.exchange)?;
        let ch = op_channel(&self.inner.ops, &self.inner.metrics).await?;
        ch.exchange_declare(
            exchange,
            ExchangeKind::Direct, // ignored by a passive declare
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| from_lapin_on(&e, &[self.inner.options.exchange.as_str()]))?;
        ch.done();
        Ok(())
    }

    async fn exchange_missing(&self) -> bool {
        self.passive_exchange_declare()
            .await
            .is_err_and(|e| e.kind() == BrokerErrorKind::NotFound)
    }

    async fn bind(&self, queue: &str, event_keys: &[String]) -> Result<(), BrokerError> {
        let ch = op_channel(&self.inner.ops, &self.inner.metrics).await?;
        for key in event_keys {
            ch.queue_bind(
                short(queue)?,
                short(&self.inner.options.exchange)?,
                short(key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin_on(&e, &[queue, self.inner.options.exchange.as_str()]))?;
        }
        ch.done_after_declares(event_keys.len());
        Ok(())
    }

    fn to_delivery(&self, d: lapin::message::Delivery, channel: &Arc<lapin::Channel>) -> Delivery {
        let props = &d.properties;
        let message_id: Arc<str> = match props.message_id() {
            Some(id) => id.as_str().into(),
            None => {
                let ts = props.timestamp().map(|t| t.to_string());
                derive_message_id(
                    &d.data,
                    &[
                        ts.as_deref(),
                        props.correlation_id().as_ref().map(|s| s.as_str()),
                        props.kind().as_ref().map(|s| s.as_str()),
                        props.content_type().as_ref().map(|s| s.as_str()),
                        props.app_id().as_ref().map(|s| s.as_str()),
                    ],
                )
                .into()
            }
        };
        let mut published_at = props
            .timestamp()
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        let mut trace_headers = Vec::new();
        if let Some(headers) = props.headers() {
            for (k, v) in headers.inner() {
                match (k.as_str(), v) {
                    (TIMESTAMP_MS_HEADER, v) => {
                        if let Some(ms) = as_u64(v) {
                            published_at = Some(UNIX_EPOCH + Duration::from_millis(ms));
                        }
                    }
                    ("traceparent" | "tracestate", AMQPValue::LongString(s)) => {
                        trace_headers.push((k.to_string(), s.to_string()));
                    }
                    _ => {}
                }
            }
        }
        if d.redelivered {
            self.inner.metrics.messages_redelivered.inc();
        }
        let acker = Acker::new(
            Box::new(AmqpSettle {
                channel: channel.clone(),
                delivery_tag: d.delivery_tag,
            }),
            self.inner.metrics.clone(),
        )
        .with_trace(SettleTrace::for_message(&message_id, &trace_headers));
        Delivery {
            body: Bytes::from(d.data),
            message_id,
            redelivered: d.redelivered,
            published_at,
            trace_headers,
            acker,
        }
    }
}

/// The entry's consumer slot. Waiting for it (rare: a superseded poll still
/// holds it) is boxed, so that a held poll's future is not sized for it.
async fn consumer_slot(entry: &QueueEntry) -> tokio::sync::MutexGuard<'_, Option<ActiveConsumer>> {
    match entry.active.try_lock() {
        Ok(active) => active,
        Err(_) => Box::pin(entry.active.lock()).await,
    }
}

/// A consumer is there and its channel is open.
fn live_consumer(active: &Option<ActiveConsumer>) -> bool {
    active
        .as_ref()
        .is_some_and(|a| a.channel.status().connected())
}

fn as_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::LongLongInt(i) => u64::try_from(*i).ok(),
        AMQPValue::LongInt(i) => u64::try_from(*i).ok(),
        AMQPValue::LongUInt(i) => Some(u64::from(*i)),
        AMQPValue::Timestamp(t) => Some(*t),
        _ => None,
    }
}

/// Settles a delivery on the channel it came on, straight through the channel:
/// lapin's `Acker` goes through its internal RPC task, which spawns a future
/// per ack that then sends the frame — two more task wake-ups, often across
/// threads, for every message. The channel object is the delivery's own: once
/// closed it refuses, where an id could name a newer channel that never saw
/// this delivery tag.
struct AmqpSettle {
    channel: Arc<lapin::Channel>,
    delivery_tag: u64,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        if !self.channel.status().connected() {
            return Err(BrokerError::new(
                BrokerErrorKind::ChannelClosed,
                "the delivery's channel closed before the ack; the broker requeued it",
            ));
        }
        self.channel
            .basic_ack(self.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| from_lapin(&e))
    }

    async fn requeue(&self) -> Result<(), BrokerError> {
        if !self.channel.status().connected() {
            return Ok(()); // the broker requeued it when the channel closed
        }
        self.channel
            .basic_reject(self.delivery_tag, BasicRejectOptions { requeue: true })
            .await
            .map_err(|e| from_lapin(&e))
    }
}

/// A poll's use of a queue entry; on drop it tells the registry, and cancels the
/// consumer when the poll ended without a delivery and nobody else polls.
struct EntryUse<'a> {
    broker: &'a AmqpBroker,
    queue: &'a str,
    entry: Arc<QueueEntry>,
    delivered: bool,
}

impl Drop for EntryUse<'_> {
    fn drop(&mut self) {
        let retire = self
            .broker
            .inner
            .consumers
            .leave(self.queue, &self.entry, self.delivered);
        if retire {
            let entry = self.entry.clone();
            tokio::spawn(async move { entry.retire().await });
        }
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn next_message(&self, queue: &str) -> Result<Delivery, BrokerError> {
        let mut usage = EntryUse {
            broker: self,
            queue,
            entry: self.inner.consumers.enter(queue),
            delivered: false,
        };
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        // The rare paths (broker down, consumer to start, backoff) are boxed, so
        // that the future every held poll keeps is sized for the wait alone.
        loop {
            if self.connectivity() != Connectivity::Connected {
                Box::pin(self.wait_connected()).await;
            }
            if self.inner.stop.is_cancelled() {
                return Err(BrokerError::new(
                    BrokerErrorKind::Unavailable,
                    "the broker is closing",
                ));
            }
            let entry = usage.entry.clone();
            let mut active = consumer_slot(&entry).await;
            if !live_consumer(&active) {
                drop(active);
                match Box::pin(self.ensure_consumer(&entry, queue)).await {
                    Ok(()) => {}
                    Err(e) if e.is_recoverable() => {
                        tracing::debug!(error = %e, "cannot consume yet; retrying");
                        Box::pin(tokio::time::sleep(backoff.next_delay())).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                active = consumer_slot(&entry).await;
            }
            let Some(consumer) = active.as_mut() else {
                continue; // retired in between: start again
            };
            match consumer.consumer.next().await {
                Some(Ok(delivery)) => {
                    usage.delivered = true;
                    return Ok(self.to_delivery(delivery, &consumer.channel));
                }
                Some(Err(e)) => {
                    *active = None;
                    let e = from_lapin_on(&e, &[queue]);
                    if !e.is_recoverable() && e.kind() != BrokerErrorKind::NotFound {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "consumer lost; resuming");
                }
                None => {
                    // Cancelled by the broker (queue deleted) or channel closed:
                    // the next round probes the queue again.
                    *active = None;
                }
            }
            drop(active);
            Box::pin(tokio::time::sleep(backoff.next_delay())).await;
        }
    }

    async fn declare_subscription(
        &self,
        queue: &str,
        event_keys: &[String],
    ) -> Result<(), BrokerError> {
        let name = short(queue)?;
        let expiry_ms = i64::try_from(self.inner.options.subscription_expiry.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        self.with_exchange(|| {
            let name = name.clone();
            async move {
                {
                    let ch = op_channel(&self.inner.ops, &self.inner.metrics).await?;
                    let mut args = FieldTable::default();
                    args.insert("x-expires".into(), AMQPValue::LongLongInt(expiry_ms));
                    // Durable: RabbitMQ 4.3+ refuses non-durable, non-exclusive queues;
                    // x-expires cleans it up, messages are published non-persistent.
                    ch.queue_declare(
                        name,
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        args,
                    )
                    .await
                    .map_err(|e| from_lapin_on(&e, &[]))?;
                    ch.done_after_declares(1);
                }
                self.inner.missing.remove(queue);
                self.bind(queue, event_keys).await
            }
        })
        .await
    }

    async fn add_bindings(&self, queue: &str, event_keys: &[String]) -> Result<(), BrokerError> {
        self.probe_queue(queue).await?;
        self.with_exchange(|| self.bind(queue, event_keys)).await
    }

    async fn delete_subscription(&self, queue: &str) -> Result<(), BrokerError> {
        self.probe_queue(queue).await?;
        let ch = op_channel(&self.inner.ops, &self.inner.metrics).await?;
        ch.queue_delete(short(queue)?, QueueDeleteOptions::default())
            .await
            .map_err(|e| from_lapin_on(&e, &[queue]))?;
        ch.done();
        Ok(())
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<(), BrokerError> {
        let routing_key = short(&message.routing_key)?;
        let message_id = short(&message.message_id)?;
        let exchange = short(&self.inner.options.exchange)?;
        let since_epoch = message
            .published_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut headers = FieldTable::default();
        headers.insert(
            TIMESTAMP_MS_HEADER.into(),
            AMQPValue::LongLongInt(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)),
        );
        for (k, v) in &message.headers {
            headers.insert(
                short(k)?,
                AMQPValue::LongString(LongString::from(v.as_str())),
            );
        }
        let properties = BasicProperties::default()
            .with_message_id(message_id)
            .with_content_type("application/json".into())
            .with_timestamp(since_epoch.as_secs())
            .with_delivery_mode(1) // non-persistent, as Launchpad published them
            .with_headers(headers);
        self.with_exchange(|| {
            let (exchange, routing_key, properties) =
                (exchange.clone(), routing_key.clone(), properties.clone());
            let body = &message.body;
            async move {
                let ch = op_channel(&self.inner.ops, &self.inner.metrics).await?;
                let confirm = ch
                    .basic_publish(
                        exchange,
                        routing_key,
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                    .map_err(|e| from_lapin_on(&e, &[self.inner.options.exchange.as_str()]))?
                    .await
                    .map_err(|e| from_lapin_on(&e, &[self.inner.options.exchange.as_str()]))?;
                ch.done();
                match confirm {
                    Confirmation::Ack(_) | Confirmation::NotRequested => {
                        self.inner.metrics.events_published.inc();
                        Ok(())
                    }
                    Confirmation::Nack(_) => Err(BrokerError::new(
                        BrokerErrorKind::Nacked,
                        "the broker did not accept the message",
                    )),
                }
            }
        })
        .await
    }

    fn connectivity(&self) -> Connectivity {
        *self.inner.state.borrow()
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let name = short(queue)?;
        // Passive declares run on the probe connection: a missing queue closes
        // the channel, and that churn stays away from consumers and operations.
        let ch = probe_channel(&self.inner.probe_ops).await?;
        let q = ch
            .queue_declare(
                name,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin_on(&e, &[queue]))?;
        ch.done_after_declares(1);
        Ok(QueueStats {
            ready: u64::from(q.message_count()),
            unacked: None,
            consumers: u64::from(q.consumer_count()),
        })
    }

    async fn close(&self) {
        self.inner.stop.cancel();
        // Cancelling consumers and closing channels wait on the broker's replies.
        // A reply that never comes (a broker under load, lapin losing one) must
        // not hold the process up: closing the connections below makes the
        // broker requeue whatever is still unacked anyway.
        let orderly = async {
            for entry in self.inner.consumers.take_all() {
                entry.retire().await;
            }
            self.inner.consumer_channels.close_all().await;
        };
        if tokio::time::timeout(CLOSE_STEP_TIMEOUT, orderly)
            .await
            .is_err()
        {
            tracing::warn!("consumers and channels did not close in time; closing the connections");
        }
        self.inner.ops.close();
        self.inner.probe_ops.close();
        self.inner.probe_connections.close();
        let idle = self.inner.connections.available();
        for _ in 0..idle {
            match tokio::time::timeout(Duration::from_secs(1), self.inner.connections.get()).await {
                Ok(Ok(conn)) => {
                    let conn = conn.detach();
                    if conn.status().connected() {
                        let _ = tokio::time::timeout(
                            CLOSE_STEP_TIMEOUT,
                            conn.close(200, "shutdown".into()),
                        )
                        .await;
                    }
                }
                _ => break,
            }
        }
        self.inner.connections.close();
        let _ = self.inner.state.send(Connectivity::Disconnected {
            since: Instant::now(),
        });
        self.inner.metrics.broker_connected.set(0);
    }
}

impl Inner {
    fn mark_connected(&self) {
        let changed = self.state.send_if_modified(|s| {
            if *s == Connectivity::Connected {
                false
            } else {
                *s = Connectivity::Connected;
                true
            }
        });
        if changed {
            if self.ever_connected.swap(true, Ordering::AcqRel) {
                self.metrics.broker_reconnects.inc();
                tracing::info!("broker connection re-established");
            } else {
                tracing::info!("connected to the broker");
            }
        }
        self.metrics.broker_connected.set(1);
    }

    fn mark_disconnected(&self, why: &str) {
        let changed = self.state.send_if_modified(|s| {
            if *s == Connectivity::Connected {
                *s = Connectivity::Disconnected {
                    since: Instant::now(),
                };
                true
            } else {
                false
            }
        });
        if changed {
            tracing::warn!(reason = why, "broker connection lost; reconnecting");
        }
        self.exchange_ready.store(false, Ordering::Release);
        self.metrics.broker_connected.set(0);
    }
}

/// Keeps a connection usable: reconnects with backoff and publishes connectivity.
async fn supervise(inner: Weak<Inner>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut warned = false;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let attempt = strong.connections.get().await;
        let wait = match attempt {
            Ok(conn) if conn.status().connected() => {
                let mut events = conn.events_listener();
                let status = conn.status().clone();
                drop(conn);
                backoff.reset();
                warned = false;
                strong.mark_connected();
                channels::record_pool_status(&strong.ops, &strong.metrics);
                drop(strong);
                // Wake at once when the connection fails (lapin also reports
                // channel errors, such as a probe's 404, as events: those leave
                // the connection up); check again every second anyway.
                let error = async {
                    while let Some(event) = events.next().await {
                        if matches!(event, lapin::Event::Error(_)) && !status.connected() {
                            return;
                        }
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    _ = error => {
                        // Mark the loss now: the pool may replace the connection
                        // within the next get(), and the reconnect must still be seen.
                        if let Some(strong) = inner.upgrade() {
                            strong.mark_disconnected("connection error");
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            Ok(_) => {
                strong.mark_disconnected("connection not usable");
                backoff.next_delay()
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot reach the broker; retrying with backoff");
                    warned = true;
                }
                strong.mark_disconnected("cannot connect");
                backoff.next_delay()
            }
        };
        drop(strong);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Cancels consumers whose client did not come back within the linger.
async fn reap_idle_consumers(inner: Weak<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let idle = strong.consumers.take_idle();
        drop(strong);
        for entry in idle {
            entry.retire().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::connections_for;

    #[test]
    fn one_connection_per_two_cores_from_one_to_four() {
        let sized: Vec<usize> = [1, 2, 3, 4, 8, 16, 64]
            .into_iter()
            .map(connections_for)
            .collect();
        assert_eq!(sized, [1, 1, 1, 2, 4, 4, 4]);
    }
}
