//! What exists on RabbitMQ: the exchange (declared with `--exchange-type` when
//! absent, used as it is when present, declared again if it vanishes) and the
//! subscription queues — probed (passive declare), declared (durable, with
//! `x-expires`), bound and deleted.
//!
//! Probes run on a connection of their own: each unknown queue closes the
//! channel it was probed on, and that churn stays away from consumers and
//! operations. A queue found missing is remembered for a few seconds
//! ([`NegativeCache`]), and probes in flight are bounded, so a flood of unknown
//! keys is paced here and never takes the whole channel pool.
//!
//! The history stream (`history`) is declared and bound with the exchange,
//! and on a direct exchange bound to each event key before any queue is.
//!
//! Must not: consume, publish or settle messages, or decide connectivity (the
//! supervisor does; it tells this module when the exchange must be checked again).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::ExchangeKind;
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::Semaphore;

use super::channels::{self, OpChannel, OpChannelPool, op_channel, probe_channel};
use super::connections::Connections;
use super::errors::{from_lapin_on, is_queue_node_down, short};
use super::history::HistoryStream;
use super::negative_cache::{NEGATIVE_CAPACITY, NEGATIVE_TTL, NegativeCache};
use crate::broker::{BrokerError, BrokerErrorKind, QueueStats};
use crate::config::ExchangeType;
use crate::telemetry::Metrics;

/// The exchange and the subscription queues of one broker.
pub(crate) struct Topology {
    exchange: String,
    exchange_type: ExchangeType,
    subscription_expiry: Duration,
    /// Operation channels (shared with publishing).
    ops: OpChannelPool,
    /// Channels for passive declares, on `probe_connections`.
    probe_ops: OpChannelPool,
    probe_connections: Connections,
    exchange_ready: AtomicBool,
    /// Queues known to be missing (answered 404 without asking the broker).
    missing: NegativeCache,
    /// Probes in flight at most: each unknown queue costs the broker a failed
    /// declare and a channel.
    probes: Semaphore,
    /// The stream that keeps the history of events, when there is one.
    history: Option<HistoryStream>,
    metrics: Arc<Metrics>,
}

impl Topology {
    /// `probe_slots` probe channels on `probe_connections`, and as many probes
    /// in flight at most.
    pub(crate) fn new(
        exchange: String,
        exchange_type: ExchangeType,
        subscription_expiry: Duration,
        ops: OpChannelPool,
        probe_connections: Connections,
        probe_slots: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BrokerError> {
        Ok(Topology {
            exchange,
            exchange_type,
            subscription_expiry,
            ops,
            probe_ops: channels::op_channel_pool(&probe_connections, probe_slots)?,
            probe_connections,
            exchange_ready: AtomicBool::new(false),
            missing: NegativeCache::new(NEGATIVE_TTL, NEGATIVE_CAPACITY),
            probes: Semaphore::new(probe_slots),
            history: None,
            metrics,
        })
    }

    /// With the stream that keeps the history of events.
    pub(crate) fn with_history(mut self, history: Option<HistoryStream>) -> Self {
        self.history = history;
        self
    }

    /// The exchange's name.
    pub(crate) fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The exchange's type, as this gateway binds and routes (an existing
    /// exchange is used as it is).
    pub(crate) fn exchange_type(&self) -> ExchangeType {
        self.exchange_type
    }

    /// The history stream, when there is one.
    pub(crate) fn history(&self) -> Option<&HistoryStream> {
        self.history.as_ref()
    }

    /// An operation channel from the pool (confirm mode).
    pub(crate) async fn op_channel(&self) -> Result<OpChannel, BrokerError> {
        op_channel(&self.ops, &self.metrics).await
    }

    /// Checks the exchange and the history stream now, declaring and binding
    /// what is missing (a resume, which must not read a stream that lost its
    /// binding, asks each time).
    pub(crate) async fn ensure_history(&self) -> Result<(), BrokerError> {
        self.ensure_exchange().await?;
        match &self.history {
            Some(history) => history.ensure(self).await,
            None => Ok(()),
        }
    }

    /// The connection was lost: check (and declare) the exchange again before
    /// the next operation.
    pub(crate) fn forget_exchange(&self) {
        self.exchange_ready.store(false, Ordering::Release);
    }

    /// Declares the exchange if absent (once per connection), and the history
    /// stream with it: an event published before its stream is bound would
    /// be missing from the history without anyone knowing.
    pub(crate) async fn ensure_exchange(&self) -> Result<(), BrokerError> {
        if self.exchange_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let exchange = short(&self.exchange)?;
        match self.passive_exchange_declare().await {
            Ok(()) => {}
            Err(e) if e.kind() == BrokerErrorKind::NotFound => {
                let kind = match self.exchange_type {
                    ExchangeType::Topic => ExchangeKind::Topic,
                    ExchangeType::Direct => ExchangeKind::Direct,
                };
                let ch = op_channel(&self.ops, &self.metrics).await?;
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
                .map_err(|e| from_lapin_on(&e, &[self.exchange.as_str()]))?;
                ch.done();
                tracing::info!(
                    exchange = %self.exchange,
                    kind = self.exchange_type.as_str(),
                    "declared the exchange"
                );
            }
            Err(e) => return Err(e),
        }
        if let Some(history) = &self.history {
            history.ensure(self).await?;
        }
        self.exchange_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs `op` on the exchange, redeclaring it once if it vanished.
    pub(crate) async fn with_exchange<F, Fut>(&self, op: F) -> Result<(), BrokerError>
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
                    self.forget_exchange();
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
        let exchange = short(&self.exchange)?;
        let ch = op_channel(&self.ops, &self.metrics).await?;
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
        .map_err(|e| from_lapin_on(&e, &[self.exchange.as_str()]))?;
        ch.done();
        Ok(())
    }

    async fn exchange_missing(&self) -> bool {
        self.passive_exchange_declare()
            .await
            .is_err_and(|e| e.kind() == BrokerErrorKind::NotFound)
    }

    /// Passive declare: does the queue exist? Runs on a probe channel, so the
    /// 404 that closes the channel touches nothing else; a queue found missing
    /// is remembered for a few seconds.
    pub(crate) async fn probe_queue(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let known_missing = || {
            let hit = self.missing.contains(queue);
            if hit {
                self.metrics.negative_cache_hits.inc();
            }
            hit
        };
        if known_missing() {
            return Err(BrokerError::not_found("queue known to be missing"));
        }
        let _permit =
            self.probes.acquire().await.map_err(|_| {
                BrokerError::new(BrokerErrorKind::Unavailable, "the broker is closing")
            })?;
        // Polls for the same unknown queue queued behind one probe learn its
        // answer instead of probing again.
        if known_missing() {
            return Err(BrokerError::not_found("queue known to be missing"));
        }
        self.metrics.queue_probes.inc();
        let mut result = self.queue_stats(queue).await;
        for _ in 0..2 {
            match &result {
                Err(e) if e.kind() == BrokerErrorKind::ChannelClosed => {
                    result = self.queue_stats(queue).await;
                }
                _ => break,
            }
        }
        // A queue whose node is down is not remembered: the node may come back.
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == BrokerErrorKind::NotFound && !is_queue_node_down(e))
        {
            self.missing.insert(queue);
        }
        result
    }

    /// What a passive declare says of the queue.
    pub(crate) async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let name = short(queue)?;
        let ch = probe_channel(&self.probe_ops).await?;
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

    /// Declares the subscription queue and binds it to each event key.
    pub(crate) async fn declare_subscription(
        &self,
        queue: &str,
        event_keys: &[String],
    ) -> Result<(), BrokerError> {
        self.with_exchange(|| async move {
            self.declare_queue(queue).await?;
            self.bind(queue, event_keys).await
        })
        .await
    }

    /// Declares a subscription queue without binding it (a resume fills it
    /// first).
    pub(crate) async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let name = short(queue)?;
        let expiry_ms = i64::try_from(self.subscription_expiry.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let ch = op_channel(&self.ops, &self.metrics).await?;
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
        self.missing.remove(queue);
        Ok(())
    }

    /// Binds an existing queue to more event keys (`NotFound` if there is none).
    pub(crate) async fn add_bindings(
        &self,
        queue: &str,
        event_keys: &[String],
    ) -> Result<(), BrokerError> {
        self.probe_queue(queue).await?;
        self.with_exchange(|| self.bind(queue, event_keys)).await
    }

    /// Binds the queue to each event key (on a direct exchange, the history
    /// stream first, so that whatever the queue gets, the history has).
    pub(crate) async fn bind(&self, queue: &str, event_keys: &[String]) -> Result<(), BrokerError> {
        if let Some(history) = &self.history {
            history.bind_keys(self, event_keys).await?;
        }
        let ch = op_channel(&self.ops, &self.metrics).await?;
        for key in event_keys {
            ch.queue_bind(
                short(queue)?,
                short(&self.exchange)?,
                short(key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin_on(&e, &[queue, self.exchange.as_str()]))?;
        }
        ch.done_after_declares(event_keys.len());
        Ok(())
    }

    /// Deletes the queue (`NotFound` if there is none).
    pub(crate) async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.probe_queue(queue).await?;
        let ch = op_channel(&self.ops, &self.metrics).await?;
        ch.queue_delete(short(queue)?, QueueDeleteOptions::default())
            .await
            .map_err(|e| from_lapin_on(&e, &[queue]))?;
        ch.done();
        Ok(())
    }

    /// Closes the probe channels and their connection.
    pub(crate) fn close(&self) {
        self.probe_ops.close();
        self.probe_connections.close();
    }
}
