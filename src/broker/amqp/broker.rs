//! [`AmqpBroker`]: the [`Broker`] boundary on RabbitMQ. It puts the parts
//! together (connections, channels, topology, consumers, the background tasks)
//! and runs each operation through them; the wait for a message is here, what
//! it waits on lives in `consumers`.
//!
//! The messages of one answer of several (`next_messages`) are the
//! consumer's delivery and the messages already waiting behind it: those the
//! consumer holds (a prefetch above 1), or, with a prefetch of 1, those taken
//! with `basic.get` on the consumer's channel; each is settled by its own tag — a
//! consumer channel is shared by many queues' consumers, so one `basic.ack`
//! with `multiple` would settle other polls' messages too.
//!
//! Must not: speak AMQP beyond publishing, the consumer loop and those gets — declares and
//! probes are `topology`'s, message properties and settling `delivery`'s,
//! reconnecting the supervisor's.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use lapin::Confirmation;
use lapin::options::{BasicGetOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions};
use tokio_util::sync::CancellationToken;

use super::AmqpOptions;
use super::channels::{self, OpChannelPool, SharedChannels, SharedUse};
use super::connections::{Connections, Nodes};
use super::consumers::{
    ActiveConsumer, ConsumerRegistry, consumer_slot, ensure_consumer, live_consumer,
};
use super::delivery::{PrefetchWindow, publish_properties, to_delivery};
use super::errors::{from_lapin_on, short};
use super::history::{self, HistoryStream};
use super::supervisor::{self, Link};
use super::topology::Topology;
use crate::broker::{
    Backoff, Broker, BrokerError, BrokerErrorKind, Connectivity, Delivery, OutgoingMessage,
    QueueStats, ResumeOutcome,
};
use crate::telemetry::Metrics;

/// The parts of one broker, shared by its handles and (weakly) its tasks.
pub(crate) struct Inner {
    pub(crate) options: AmqpOptions,
    /// What `rabbitmqctl list_connections` shows for this broker's connections.
    pub(crate) name: String,
    pub(crate) connections: Connections,
    /// Operation channels: declares, binds, deletes, publishes.
    pub(crate) ops: OpChannelPool,
    pub(crate) topology: Topology,
    pub(crate) consumer_channels: Arc<SharedChannels>,
    /// Publishes, many in flight per channel (their confirms come batched).
    pub(crate) publish_channels: Arc<SharedChannels>,
    pub(crate) consumers: ConsumerRegistry,
    pub(crate) link: Link,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: CancellationToken,
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
            .field("nodes", &self.inner.options.nodes)
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
        let nodes = Nodes::new(&options.nodes, &options.tls, metrics.clone())?;
        let connections = Connections::new(&nodes, name.clone(), options.connections)?;
        let ops = channels::op_channel_pool(&connections, options.channel_pool_size)?;
        // Passive declares (probes) get a connection of their own: each unknown
        // queue closes the channel it was probed on, and that churn stays away
        // from the consumers and the operations.
        let probe_slots = (options.channel_pool_size / 2).clamp(1, 8);
        let probe_connections = Connections::new(&nodes, format!("{name} probes"), 1)?;
        // A new history stream is tried on connections of their own (history.rs).
        let history_connections = Connections::new(&nodes, format!("{name} history"), 1)?;
        let topology = Topology::new(
            options.exchange.clone(),
            options.exchange_type,
            options.subscription_expiry,
            ops.clone(),
            probe_connections,
            probe_slots,
            metrics.clone(),
        )?
        .with_history(
            options
                .history
                .clone()
                .map(|h| HistoryStream::new(h, options.exchange_type, history_connections)),
        );
        let inner = Arc::new(Inner {
            consumer_channels: SharedChannels::new(
                channels::consumer_channel_count(options.channel_pool_size),
                connections.clone(),
                SharedUse::Consumers {
                    prefetch: options.consumer_prefetch,
                },
            ),
            publish_channels: SharedChannels::new(
                options.connections,
                connections.clone(),
                SharedUse::Publishes,
            ),
            consumers: ConsumerRegistry::new(options.consumer_linger),
            name,
            options,
            connections,
            ops,
            topology,
            link: Link::new(),
            metrics,
            stop: CancellationToken::new(),
        });
        tokio::spawn(supervisor::supervise(
            Arc::downgrade(&inner),
            inner.stop.clone(),
        ));
        tokio::spawn(supervisor::reap_idle_consumers(
            Arc::downgrade(&inner),
            inner.stop.clone(),
        ));
        tokio::spawn(declare_at_start(Arc::downgrade(&inner)));
        Ok(AmqpBroker { inner })
    }
}

/// Attempts of an operation that failed because its connection went away.
const NODE_LOSS_ATTEMPTS: usize = 4;

impl AmqpBroker {
    /// Runs `op`, and again when it failed because its connection went away
    /// while the broker is still usable (another connection, or another node,
    /// serves), or because RabbitMQ nacked a publish (a queue it was routed to
    /// went down with its node before confirming it): a node lost under a
    /// declare or a publish costs its caller a short wait here, not an error.
    /// Each operation is safe to repeat: a declare or a bind again changes
    /// nothing, a delete finds the queue gone, and a publish goes again with
    /// its message id, by which clients drop the copy that queues which did
    /// take the first one now hold twice.
    async fn through_node_loss<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BrokerError>>,
    {
        let mut backoff =
            Backoff::new(Duration::from_millis(50), Duration::from_millis(500)).with_jitter();
        let mut attempts = 1;
        loop {
            match op().await {
                Err(e)
                    if matches!(
                        e.kind(),
                        BrokerErrorKind::Unavailable | BrokerErrorKind::Nacked
                    ) && attempts < NODE_LOSS_ATTEMPTS
                        && self.inner.link.connectivity() == Connectivity::Connected
                        && !self.inner.stop.is_cancelled() =>
                {
                    tracing::debug!(error = %e, "connection lost under an operation; again");
                    attempts += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => return other,
            }
        }
    }

    async fn publish_once(&self, message: &OutgoingMessage) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let topology = &inner.topology;
        let routing_key = short(&message.routing_key)?;
        let exchange = short(topology.exchange())?;
        let properties = publish_properties(message)?;
        topology
            .with_exchange(|| {
                let (exchange, routing_key, properties) =
                    (exchange.clone(), routing_key.clone(), properties.clone());
                let body = &message.body;
                async move {
                    let ch = inner.publish_channels.channel().await?;
                    let confirm = ch
                        .basic_publish(
                            exchange,
                            routing_key,
                            BasicPublishOptions::default(),
                            body,
                            properties,
                        )
                        .await
                        .map_err(|e| from_lapin_on(&e, &[topology.exchange()]))?
                        .await
                        .map_err(|e| from_lapin_on(&e, &[topology.exchange()]))?;
                    match confirm {
                        Confirmation::Ack(_) | Confirmation::NotRequested => {
                            inner.metrics.events_published.inc();
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
}

/// Declares the exchange and the history stream once the broker is first
/// reached, so that events other publishers send before this gateway's first
/// operation are in the history too. (Each operation checks them again after
/// a lost connection.)
async fn declare_at_start(inner: std::sync::Weak<Inner>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let stop = strong.stop.clone();
    tokio::select! {
        _ = strong.link.wait_connected(&stop) => {}
        _ = stop.cancelled() => return,
    }
    if stop.is_cancelled() {
        return;
    }
    if let Err(e) = strong.topology.ensure_exchange().await {
        tracing::warn!(error = %e, "cannot declare the exchange or the history stream yet; the next operation tries again");
    }
}

#[cfg(test)]
impl AmqpBroker {
    /// The parts, for white-box tests of the modules that use them.
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl AmqpBroker {
    /// Waits for the queue's next message on its consumer and, for `max` > 1,
    /// takes up to `max - 1` more already waiting: those the consumer holds
    /// behind it (a prefetch above 1), else those in the queue
    /// ([`waiting_behind`]).
    async fn take(
        &self,
        queue: &str,
        max: usize,
    ) -> Result<(Delivery, Vec<Delivery>), BrokerError> {
        let inner = &self.inner;
        let mut usage = inner.consumers.use_entry(queue);
        let mut backoff =
            Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).with_jitter();
        // The channel of a spoiled consumer just cancelled: its successor
        // consumes there, after the requeues (`ensure_consumer`).
        let mut consume_on: Option<Arc<lapin::Channel>> = None;
        // The rare paths (broker down, consumer to start, backoff) are boxed, so
        // that the future every held poll keeps is sized for the wait alone.
        loop {
            if inner.link.connectivity() != Connectivity::Connected {
                Box::pin(inner.link.wait_connected(&inner.stop)).await;
            }
            if inner.stop.is_cancelled() {
                return Err(BrokerError::new(
                    BrokerErrorKind::Unavailable,
                    "the broker is closing",
                ));
            }
            let entry = usage.entry.clone();
            let mut active = consumer_slot(&entry).await;
            if !live_consumer(&active) {
                drop(active);
                match Box::pin(ensure_consumer(inner, &entry, queue, consume_on.take())).await {
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
            if consumer.is_spoiled() {
                consume_on = Box::pin(respawn(&mut active, inner.options.consumer_prefetch)).await;
                continue;
            }
            match consumer.consumer.next().await {
                Some(Ok(delivery)) => {
                    if consumer.is_spoiled() {
                        // An answer went back while this poll waited: this
                        // delivery may come after it in the queue.
                        let _ = consumer
                            .channel
                            .basic_reject(
                                delivery.delivery_tag,
                                BasicRejectOptions { requeue: true },
                            )
                            .await;
                        inner.metrics.messages_requeued.inc();
                        consume_on =
                            Box::pin(respawn(&mut active, inner.options.consumer_prefetch)).await;
                        continue;
                    }
                    usage.delivered = true;
                    let window = consumer.window.clone();
                    // The first delivery of a fresh consumer: the others ready
                    // then are on their way.
                    let on_their_way = consumer.pushing_at_start.take().unwrap_or(0);
                    let first =
                        to_delivery(delivery, &consumer.channel, window.as_ref(), &inner.metrics);
                    let more = match (max > 1, window) {
                        (false, _) => Vec::new(),
                        (true, Some(window)) => {
                            let coming = on_their_way.saturating_sub(1);
                            Box::pin(held_behind(inner, &mut active, &window, max - 1, coming))
                                .await
                        }
                        (true, None) => {
                            let channel = consumer.channel.clone();
                            Box::pin(waiting_behind(inner, &channel, queue, max - 1)).await
                        }
                    };
                    return Ok((first, more));
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
}

/// Cancels a spoiled consumer and requeues what it holds (each message at its
/// place); returns its channel, for its successor. A `basic.qos` round trip on
/// that channel (the same prefetch: a no-op) returns once RabbitMQ has handled
/// the requeues before it, so that the successor's probe, on another
/// connection, counts the requeued messages as ready.
async fn respawn(
    active: &mut Option<ActiveConsumer>,
    prefetch: u16,
) -> Option<Arc<lapin::Channel>> {
    let old = active.take()?;
    let channel = old.channel.clone();
    old.cancel_and_requeue().await;
    if channel.status().connected() {
        let _ = channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await;
    }
    Some(channel)
}

/// How long an answer of several waits for a message RabbitMQ is known to be
/// pushing (it sends a fresh consumer's window back to back: normally well
/// under a millisecond).
const PUSH_WAIT: Duration = Duration::from_secs(1);

/// Up to `up_to` deliveries the consumer holds behind the one just taken (a
/// prefetch above 1): RabbitMQ pushed them in queue order, so they are the
/// next messages. The first `coming` are waited for (a fresh consumer's
/// window, which the probe counted), the rest taken only if already there. A
/// consumer whose stream ended or failed is dropped after them (its channel
/// closed: the broker requeued whatever it held, and what was taken settles
/// as such).
async fn held_behind(
    inner: &Inner,
    active: &mut Option<ActiveConsumer>,
    window: &Arc<PrefetchWindow>,
    up_to: usize,
    coming: usize,
) -> Vec<Delivery> {
    let mut more = Vec::new();
    let Some(consumer) = active.as_mut() else {
        return more;
    };
    let mut lost = false;
    while more.len() < up_to {
        let next = if more.len() < coming {
            tokio::time::timeout(PUSH_WAIT, consumer.consumer.next())
                .await
                .ok()
        } else {
            consumer.consumer.next().now_or_never()
        };
        match next {
            Some(Some(Ok(d))) => more.push(to_delivery(
                d,
                &consumer.channel,
                Some(window),
                &inner.metrics,
            )),
            None => break,
            Some(Some(Err(_)) | None) => {
                lost = true;
                break;
            }
        }
    }
    if lost {
        *active = None;
    }
    more
}

/// Up to `up_to` messages already waiting in `queue`, taken with `basic.get`
/// (unacked) on the channel of the consumer that delivered the one before
/// them, so that they are settled where it is; stops at the first empty get,
/// or when the last get says nothing more waits. Only with a prefetch of one:
/// the consumer takes nothing more while the first message is unacked (a
/// `basic.get` does not count against it), so nothing is pushed ahead of what
/// the gets take. A get that fails (the channel closed: the broker requeued
/// everything on it) ends the list.
async fn waiting_behind(
    inner: &Inner,
    channel: &Arc<lapin::Channel>,
    queue: &str,
    up_to: usize,
) -> Vec<Delivery> {
    let mut more = Vec::new();
    let Ok(name) = short(queue) else {
        return more;
    };
    while more.len() < up_to {
        match channel
            .basic_get(name.clone(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(Some(got)) => {
                more.push(to_delivery(got.delivery, channel, None, &inner.metrics));
                if got.message_count == 0 {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let e = from_lapin_on(&e, &[queue]);
                tracing::debug!(error = %e, "basic.get failed; answering what was taken");
                break;
            }
        }
    }
    more
}

#[async_trait]
impl Broker for AmqpBroker {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn next_message(&self, queue: &str) -> Result<Delivery, BrokerError> {
        self.take(queue, 1).await.map(|(first, _)| first)
    }

    async fn next_messages(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let (first, more) = self.take(queue, max).await?;
        let mut all = Vec::with_capacity(1 + more.len());
        all.push(first);
        all.extend(more);
        Ok(all)
    }

    async fn declare_subscription(
        &self,
        queue: &str,
        event_keys: &[String],
    ) -> Result<(), BrokerError> {
        let topology = &self.inner.topology;
        self.through_node_loss(|| topology.declare_subscription(queue, event_keys))
            .await
    }

    async fn add_bindings(&self, queue: &str, event_keys: &[String]) -> Result<(), BrokerError> {
        let topology = &self.inner.topology;
        self.through_node_loss(|| topology.add_bindings(queue, event_keys))
            .await
    }

    fn keeps_history(&self) -> bool {
        self.inner.topology.history().is_some()
    }

    async fn resume_subscription(
        &self,
        queue: &str,
        event_keys: &[String],
        after: &str,
    ) -> Result<ResumeOutcome, BrokerError> {
        history::resume(&self.inner, queue, event_keys, after).await
    }

    async fn delete_subscription(&self, queue: &str) -> Result<(), BrokerError> {
        let topology = &self.inner.topology;
        self.through_node_loss(|| topology.delete_queue(queue))
            .await
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<(), BrokerError> {
        self.through_node_loss(|| self.publish_once(&message)).await
    }

    fn connectivity(&self) -> Connectivity {
        self.inner.link.connectivity()
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let topology = &self.inner.topology;
        self.through_node_loss(|| topology.queue_stats(queue)).await
    }

    async fn close(&self) {
        let inner = &self.inner;
        inner.stop.cancel();
        // Cancelling consumers and closing channels wait on the broker's replies.
        // A reply that never comes (a broker under load, lapin losing one) must
        // not hold the process up: closing the connections below makes the
        // broker requeue whatever is still unacked anyway.
        let orderly = async {
            for entry in inner.consumers.take_all() {
                entry.retire().await;
            }
            inner.consumer_channels.close_all().await;
            inner.publish_channels.close_all().await;
        };
        if tokio::time::timeout(CLOSE_STEP_TIMEOUT, orderly)
            .await
            .is_err()
        {
            tracing::warn!("consumers and channels did not close in time; closing the connections");
        }
        inner.ops.close();
        inner.topology.close();
        inner.connections.close_idle(CLOSE_STEP_TIMEOUT).await;
        inner.link.mark_closed(&inner.metrics);
    }
}
