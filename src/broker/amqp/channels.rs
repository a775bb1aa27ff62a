//! AMQP channels: a pool of exclusive operation channels and a set of shared
//! consumer channels, both opened on deadpool-lapin's pooled connections.
//!
//! Why two kinds: a broker-side channel error (404 on a passive declare of an
//! unknown queue, 403, 406) closes the channel it happened on, and every unacked
//! delivery on it goes back to its queue. Probes, declares, binds and publishes
//! therefore run on exclusive channels checked out of a deadpool pool — an error
//! kills only that channel, and the pool's recycle check drops it. Consumers live
//! on a separate set of long-lived channels (prefetch 1 per consumer) that never
//! carry an operation that can fail that way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use deadpool::managed::{self, Metrics as PoolMetrics, RecycleError, RecycleResult};
use lapin::options::{BasicQosOptions, ConfirmSelectOptions};

use super::errors::{from_lapin, from_pool};
use crate::broker::BrokerError;
use crate::telemetry::Metrics;

/// Creates confirm-mode channels for operations.
pub(crate) struct OpChannelManager {
    pub(crate) connections: deadpool_lapin::Pool,
}

impl managed::Manager for OpChannelManager {
    type Type = lapin::Channel;
    type Error = BrokerError;

    async fn create(&self) -> Result<lapin::Channel, BrokerError> {
        let conn = self
            .connections
            .get()
            .await
            .map_err(|e| from_pool(e, "connection"))?;
        let channel = conn.create_channel().await.map_err(|e| from_lapin(&e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| from_lapin(&e))?;
        Ok(channel)
    }

    async fn recycle(
        &self,
        channel: &mut lapin::Channel,
        _: &PoolMetrics,
    ) -> RecycleResult<BrokerError> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

pub(crate) type OpChannelPool = managed::Pool<OpChannelManager>;

/// Checks out an operation channel, recording wait time and pool use.
pub(crate) async fn op_channel(
    pool: &OpChannelPool,
    metrics: &Metrics,
) -> Result<managed::Object<OpChannelManager>, BrokerError> {
    let started = Instant::now();
    let got = pool.get().await;
    metrics
        .channel_pool_wait_seconds
        .observe(started.elapsed().as_secs_f64());
    record_pool_status(pool, metrics);
    got.map_err(super::errors::from_channel_pool)
}

pub(crate) fn record_pool_status(pool: &OpChannelPool, metrics: &Metrics) {
    let status = pool.status();
    metrics.channel_pool_size.set(status.size as i64);
    metrics
        .channel_pool_in_use
        .set(status.size.saturating_sub(status.available) as i64);
}

/// Long-lived channels that carry consumers, handed out round-robin and
/// reopened when found closed.
pub(crate) struct ConsumerChannels {
    slots: Vec<tokio::sync::Mutex<Option<lapin::Channel>>>,
    next: AtomicUsize,
    connections: deadpool_lapin::Pool,
}

impl ConsumerChannels {
    pub(crate) fn new(size: usize, connections: deadpool_lapin::Pool) -> Arc<Self> {
        Arc::new(ConsumerChannels {
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            connections,
        })
    }

    /// A connected consumer channel with prefetch 1 per consumer.
    pub(crate) async fn channel(&self) -> Result<lapin::Channel, BrokerError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(ch) = slot.as_ref().filter(|ch| ch.status().connected()) {
            return Ok(ch.clone());
        }
        *slot = None;
        let conn = self
            .connections
            .get()
            .await
            .map_err(|e| from_pool(e, "connection"))?;
        let channel = conn.create_channel().await.map_err(|e| from_lapin(&e))?;
        // global = false: the limit applies to each consumer on the channel.
        channel
            .basic_qos(1, BasicQosOptions { global: false })
            .await
            .map_err(|e| from_lapin(&e))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Closes every consumer channel (their unacked deliveries return to their queues).
    pub(crate) async fn close_all(&self) {
        for slot in &self.slots {
            let taken = slot.lock().await.take();
            if let Some(ch) = taken.filter(|ch| ch.status().connected()) {
                let _ = ch.close(200, "shutdown".into()).await;
            }
        }
    }
}
