//! AMQP channels: a pool of exclusive operation channels and a set of shared
//! consumer channels, both opened on the pooled connections.
//!
//! Why two kinds: a broker-side channel error (404 on a passive declare of an
//! unknown queue, 403, 406) closes the channel it happened on, and every unacked
//! delivery on it goes back to its queue. Probes, declares, binds and publishes
//! therefore run on exclusive channels checked out of a deadpool pool — an error
//! kills only that channel, and the pool's recycle check drops it. Consumers live
//! on a separate set of long-lived channels (`--consumer-prefetch` per consumer) that never
//! carry an operation that can fail that way.
//!
//! An operation channel is also retired after [`DECLARES_PER_CHANNEL`] queue
//! declares and binds: lapin keeps, per channel and until it closes, a record of
//! every queue and binding declared on it (for a topology recovery this gateway
//! does not use). Subscription queues expire on the broker without lapin hearing
//! of it, so a channel kept for days would keep a record of every subscription
//! it ever declared or probed (~1–2 KB each: a leak that grows with traffic).
//!
//! Must not: decide what runs on a channel (`topology`, `consumers` and the
//! broker's publish do) or open connections (`connections` does).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use deadpool::managed::{self, Metrics as PoolMetrics, RecycleError, RecycleResult};
use lapin::options::{BasicQosOptions, ConfirmSelectOptions};

use super::connections::{Connection, Connections, pool_settings};
use super::errors::from_lapin_on;
use crate::broker::{BrokerError, BrokerErrorKind};
use crate::telemetry::Metrics;

/// A pool of operation channels opened on `connections`.
pub(crate) fn op_channel_pool(
    connections: &Connections,
    size: usize,
) -> Result<OpChannelPool, BrokerError> {
    let manager = OpChannelManager {
        connections: connections.clone(),
    };
    pool_settings(OpChannelPool::builder(manager), size)
        .build()
        .map_err(|e| BrokerError::new(BrokerErrorKind::Internal, e.to_string()))
}

/// Opens a channel on one of `connections`. Opening cannot legitimately fail
/// with NOT_FOUND: one that does carries another channel's error.
///
/// lapin never frees the id of a channel the *broker* closed (every probe of
/// an unknown queue is one), so a connection runs out of channel ids after
/// `channel_max` (2047 on RabbitMQ) such closes. A connection found exhausted
/// is taken out of the pool and closed; the pool opens a fresh one.
pub(crate) async fn open_channel(connections: &Connections) -> Result<lapin::Channel, BrokerError> {
    let (channel, _) = open_channel_on(connections.get().await?).await?;
    Ok(channel)
}

/// A channel on `conn`, and the connection back (to hold on to it); a
/// connection out of channel ids is replaced, as by [`open_channel`].
pub(crate) async fn open_channel_on(
    conn: Connection,
) -> Result<(lapin::Channel, Connection), BrokerError> {
    match conn.create_channel().await {
        Ok(channel) => Ok((channel, conn)),
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ChannelsLimitReached) => {
            let conn = conn.detach();
            tracing::info!("an AMQP connection ran out of channel ids; replacing it");
            let _ = conn.close(200, "channel ids exhausted".into()).await;
            Err(BrokerError::new(
                BrokerErrorKind::ChannelClosed,
                "the connection ran out of channel ids and was replaced",
            ))
        }
        Err(e) => Err(from_lapin_on(&e, &[])),
    }
}

/// Queue declares (passive ones too) and binds an operation channel carries
/// before it is closed and replaced, which bounds what lapin remembers of them
/// (module comment). Reopening costs two round trips per this many declares.
pub(crate) const DECLARES_PER_CHANNEL: u32 = 64;

/// Creates confirm-mode channels for operations.
pub(crate) struct OpChannelManager {
    pub(crate) connections: Connections,
}

/// A pooled operation channel and the declares it has carried.
pub(crate) struct PooledChannel {
    channel: lapin::Channel,
    declares: u32,
}

impl managed::Manager for OpChannelManager {
    type Type = PooledChannel;
    type Error = BrokerError;

    async fn create(&self) -> Result<PooledChannel, BrokerError> {
        let channel = open_channel(&self.connections).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| from_lapin_on(&e, &[]))?;
        Ok(PooledChannel {
            channel,
            declares: 0,
        })
    }

    async fn recycle(
        &self,
        pooled: &mut PooledChannel,
        _: &PoolMetrics,
    ) -> RecycleResult<BrokerError> {
        if !pooled.channel.status().connected() {
            Err(RecycleError::message("channel closed"))
        } else if pooled.declares >= DECLARES_PER_CHANNEL {
            // Dropped by the pool, which closes it; the next checkout opens another.
            Err(RecycleError::message("channel retired after its declares"))
        } else {
            Ok(())
        }
    }
}

pub(crate) type OpChannelPool = managed::Pool<OpChannelManager>;

/// An operation channel checked out of the pool. It goes back to the pool only
/// when the operation succeeded ([`OpChannel::done`]); after an error, or when
/// the operation's future was dropped half-way, it is discarded. A channel
/// whose operation failed may still be closing (lapin wakes the caller before
/// it marks the channel closed), and one dropped mid-operation still has a
/// reply on its way: handed to the next user, either would fail that user's
/// operation with an error that belongs to someone else.
pub(crate) struct OpChannel(Option<managed::Object<OpChannelManager>>);

impl OpChannel {
    /// The operation succeeded: the channel may serve the next one.
    pub(crate) fn done(mut self) {
        drop(self.0.take());
    }

    /// The operation succeeded after `declares` queue declares or binds, which
    /// lapin records on the channel: it may serve the next one until it has
    /// carried [`DECLARES_PER_CHANNEL`] of them.
    pub(crate) fn done_after_declares(mut self, declares: usize) {
        if let Some(pooled) = self.0.as_mut() {
            let declares = u32::try_from(declares).unwrap_or(u32::MAX);
            pooled.declares = pooled.declares.saturating_add(declares);
        }
        self.done();
    }
}

impl std::ops::Deref for OpChannel {
    type Target = lapin::Channel;
    fn deref(&self) -> &lapin::Channel {
        // Present until done() or drop.
        &self
            .0
            .as_deref()
            .unwrap_or_else(|| unreachable!("an OpChannel is used before done()"))
            .channel
    }
}

impl Drop for OpChannel {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            // Out of the pool; dropping the channel closes it.
            drop(managed::Object::take(object));
        }
    }
}

/// Checks out an operation channel, recording wait time and pool use. A
/// channel that fails to open for a reason of another channel's is retried.
pub(crate) async fn op_channel(
    pool: &OpChannelPool,
    metrics: &Metrics,
) -> Result<OpChannel, BrokerError> {
    let channel = checkout(pool).await;
    metrics
        .channel_pool_wait_seconds
        .observe(channel.1.as_secs_f64());
    record_pool_status(pool, metrics);
    channel.0
}

/// Checks out a probe channel (its own small pool; not in the pool metrics).
pub(crate) async fn probe_channel(pool: &OpChannelPool) -> Result<OpChannel, BrokerError> {
    checkout(pool).await.0
}

async fn checkout(pool: &OpChannelPool) -> (Result<OpChannel, BrokerError>, std::time::Duration) {
    let started = Instant::now();
    let mut attempts = 0;
    let got = loop {
        attempts += 1;
        match pool.get().await.map_err(super::errors::from_channel_pool) {
            Err(e) if e.kind() == BrokerErrorKind::ChannelClosed && attempts < 3 => continue,
            other => break other,
        }
    };
    (got.map(|object| OpChannel(Some(object))), started.elapsed())
}

/// Opens what is missing of the pool (replacing closed channels) and hands
/// every channel back, in the order opened. The pool hands its channels out
/// first in, first out, so operations then take turns over channels opened in
/// turn on each connection — on each node, when the connections are spread
/// over several: RabbitMQ places a queue on the node of the connection that
/// declares it, and a pool left to grow on demand would declare nearly every
/// queue through its first channel.
///
/// Takes only what is free at once: a channel in use is not waited for
/// (operations would queue behind the fill), and the supervisor comes back
/// next round for what it could not reach.
pub(crate) async fn fill(pool: &OpChannelPool) {
    let size = pool.status().max_size;
    let at_once = managed::Timeouts {
        wait: Some(std::time::Duration::ZERO),
        ..pool.timeouts()
    };
    let mut held = Vec::with_capacity(size);
    while held.len() < size {
        match pool.timeout_get(&at_once).await {
            Ok(channel) => held.push(channel),
            Err(_) => break,
        }
    }
}

pub(crate) fn record_pool_status(pool: &OpChannelPool, metrics: &Metrics) {
    let status = pool.status();
    metrics.channel_pool_size.set(status.size as i64);
    metrics
        .channel_pool_in_use
        .set(status.size.saturating_sub(status.available) as i64);
}

/// How many pooled operation channels go with one consumer channel.
const OP_CHANNELS_PER_CONSUMER_CHANNEL: usize = 8;

/// Consumer channels for a pool of `pool_size` operation channels: one per
/// eight, at least one (4 at the default 32).
///
/// Few, because every channel costs the gateway and RabbitMQ something per
/// frame (lapin checks each channel's flow state for every frame it sends):
/// at full speed on 2 cores, 4 consumer channels instead of 32 took ~12% off
/// the gateway's CPU per delivery and ~5% off RabbitMQ's, for ~7% more
/// deliveries/s; 1 or 2 saved a little more (benches/README.md). Not one:
/// a channel error on a consumer channel (a queue deleted between its probe
/// and its `basic.consume`) ends the consumers on it, whose polls start
/// again on a fresh channel and whose unacked messages are redelivered.
pub(crate) fn consumer_channel_count(pool_size: usize) -> usize {
    pool_size.div_ceil(OP_CHANNELS_PER_CONSUMER_CHANNEL).max(1)
}

/// What a set of [`SharedChannels`] carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SharedUse {
    /// Consumers, with a `basic.qos` prefetch per consumer.
    Consumers { prefetch: u16 },
    /// Publishes in confirm mode, many in flight on each channel: RabbitMQ
    /// then confirms several with one `basic.ack` (`multiple`), where a
    /// publish on an exclusive channel waits for its own confirm alone. A
    /// channel error (an exchange deleted under the publish) closes it for
    /// every publish in flight on it; those go again (`Topology::with_exchange`).
    Publishes,
}

/// Long-lived channels shared by many users (consumers, or publishes), handed
/// out round-robin and reopened when found closed.
pub(crate) struct SharedChannels {
    // Shared as an `Arc`: every consumer and delivery keeps its channel, and a
    // `lapin::Channel` is 128 bytes of reference counts to clone.
    slots: Vec<tokio::sync::Mutex<Option<Arc<lapin::Channel>>>>,
    next: AtomicUsize,
    connections: Connections,
    uses: SharedUse,
}

impl SharedChannels {
    pub(crate) fn new(size: usize, connections: Connections, uses: SharedUse) -> Arc<Self> {
        Arc::new(SharedChannels {
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            connections,
            uses,
        })
    }

    /// A connected channel, set up for its use.
    pub(crate) async fn channel(&self) -> Result<Arc<lapin::Channel>, BrokerError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(ch) = slot.as_ref().filter(|ch| ch.status().connected()) {
            return Ok(ch.clone());
        }
        *slot = None;
        // Boxed: a channel is opened rarely, and lapin's futures for it would
        // otherwise size every consumer start's future (~8 KB against ~0.7 KB).
        let channel = Box::pin(self.open()).await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Opens a channel: a consumer channel with its prefetch per consumer, or a
    /// publish channel in confirm mode.
    async fn open(&self) -> Result<Arc<lapin::Channel>, BrokerError> {
        let channel = open_channel(&self.connections).await?;
        match self.uses {
            // global = false: the limit applies to each consumer on the channel.
            SharedUse::Consumers { prefetch } => channel
                .basic_qos(prefetch.max(1), BasicQosOptions { global: false })
                .await
                .map_err(|e| from_lapin_on(&e, &[]))?,
            SharedUse::Publishes => channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| from_lapin_on(&e, &[]))?,
        }
        Ok(Arc::new(channel))
    }

    /// Closes every channel (a consumer channel's unacked deliveries return to their queues).
    pub(crate) async fn close_all(&self) {
        for slot in &self.slots {
            let taken = slot.lock().await.take();
            if let Some(ch) = taken.filter(|ch| ch.status().connected()) {
                let _ = ch.close(200, "shutdown".into()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;

    use super::*;
    use crate::broker::amqp::connections::Nodes;
    use crate::config::{BrokerTls, BrokerUrl};

    fn rabbitmq() -> Connections {
        let url = std::env::var("LONGPOLL_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let Ok(BrokerUrl::Amqp(urls)) = BrokerUrl::parse(&url) else {
            panic!("LONGPOLL_TEST_AMQP_URL is not an AMQP URL");
        };
        let nodes =
            Nodes::new(&urls, &BrokerTls::default(), Arc::new(Metrics::new())).expect("nodes");
        Connections::new(&nodes, "channels test".into(), 1).expect("a connection pool")
    }

    #[test]
    fn there_is_one_consumer_channel_per_eight_operation_channels() {
        assert_eq!(consumer_channel_count(32), 4);
        assert_eq!(consumer_channel_count(64), 8);
        assert_eq!(consumer_channel_count(9), 2);
        assert_eq!(consumer_channel_count(2), 1);
        assert_eq!(consumer_channel_count(0), 1);
    }

    /// Against the real RabbitMQ: the channel that carried its share of
    /// declares is closed and the next operation gets a fresh one.
    #[tokio::test]
    async fn an_operation_channel_is_replaced_after_its_declares() {
        let pool = op_channel_pool(&rabbitmq(), 1).expect("a channel pool");
        let metrics = Metrics::new();
        let first = op_channel(&pool, &metrics).await.expect("a channel");
        let first_id = first.id();
        let queue = first
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("a server-named queue")
            .name()
            .clone();
        first.done_after_declares(1);
        for declared in 1..DECLARES_PER_CHANNEL {
            let ch = op_channel(&pool, &metrics).await.expect("a channel");
            assert_eq!(ch.id(), first_id, "replaced after {declared} declares");
            ch.queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("a passive declare of our queue");
            ch.done_after_declares(1);
        }
        let next = op_channel(&pool, &metrics).await.expect("a channel");
        assert_ne!(next.id(), first_id, "still the same channel");
        assert!(next.status().connected());
        let next_id = next.id();
        next.done();
        // Operations that declare nothing (publishes, deletes) never retire one.
        for _ in 0..=DECLARES_PER_CHANNEL {
            let ch = op_channel(&pool, &metrics).await.expect("a channel");
            assert_eq!(ch.id(), next_id);
            ch.done();
        }
    }
}
