//! One broker consumer per polled queue, kept between a client's polls: the
//! registry of queue entries, starting a consumer (after the queue's probe),
//! and cancelling it.
//!
//! Consuming per poll (consume → one message → ack → cancel) costs two round
//! trips per message; a client that just got a 200 is back within milliseconds
//! for the next sequence, so the consumer is kept for a short linger after a
//! delivery. With prefetch 1 (the default) and the delivered message still
//! unacked (the sequence layer holds it until the next sequence proves
//! receipt), a lingering consumer cannot take anything else from the queue.
//! With `--consumer-prefetch` above 1 it holds up to that many, the answer
//! included: the messages behind the answer wait in the consumer for the
//! client's next poll, which then takes them without a round trip to RabbitMQ,
//! and go back to the queue at their places when the consumer is retired (no
//! poll within the linger) or when the answer before them goes back
//! ([`PrefetchWindow`]). A poll that ends without a delivery (client gone,
//! timeout, superseded) cancels the consumer at once and requeues whatever
//! reached it, so nothing waits in a consumer nobody reads.
//!
//! Must not: turn deliveries into messages or settle them (`delivery`), or
//! declare anything (`topology` probes the queue before a consumer starts).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicRejectOptions};
use lapin::types::FieldTable;

use super::broker::Inner;
use super::delivery::PrefetchWindow;
use super::errors::{from_lapin_on, short};
use crate::broker::{BrokerError, BrokerErrorKind};
use crate::telemetry::Metrics;

/// A live `basic.consume` on one queue.
pub(crate) struct ActiveConsumer {
    pub(crate) channel: Arc<lapin::Channel>,
    pub(crate) consumer: lapin::Consumer,
    /// With a prefetch above 1: spoiled when an answer of this consumer goes
    /// back to the queue while later deliveries may wait behind it.
    pub(crate) window: Option<Arc<PrefetchWindow>>,
    /// With a window, until its first delivery is taken: how many messages
    /// RabbitMQ is pushing to it at once (those ready when the queue was
    /// probed, up to the prefetch), which an answer of several waits for.
    pub(crate) pushing_at_start: Option<usize>,
    metrics: Arc<Metrics>,
}

impl ActiveConsumer {
    /// A consumer with `prefetch` per consumer, started on a queue in which
    /// `ready` messages waited.
    pub(crate) fn new(
        channel: Arc<lapin::Channel>,
        consumer: lapin::Consumer,
        prefetch: u16,
        ready: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.consumers.inc();
        let window = prefetch > 1;
        let ready = usize::try_from(ready).unwrap_or(usize::MAX);
        ActiveConsumer {
            channel,
            consumer,
            window: window.then(|| Arc::new(PrefetchWindow::default())),
            pushing_at_start: window.then(|| ready.min(usize::from(prefetch))),
            metrics,
        }
    }

    /// An answer it delivered went back to the queue: what it holds must follow
    /// before anything else is taken from it.
    pub(crate) fn is_spoiled(&self) -> bool {
        self.window.as_ref().is_some_and(|w| w.is_spoiled())
    }

    /// Cancels the consumer and requeues the deliveries that reached it after
    /// its last poll (a cancelled consumer's unacked deliveries stay unacked
    /// until someone settles them or the channel closes).
    pub(crate) async fn cancel_and_requeue(mut self) {
        if !self.channel.status().connected() {
            return; // the broker requeued everything when the channel closed
        }
        let tag = self.consumer.tag();
        if self
            .channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .is_err()
        {
            return;
        }
        // Deliveries sent before cancel-ok are buffered ahead of the end of the stream.
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(2), self.consumer.next()).await
        {
            self.metrics.messages_requeued.inc();
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await;
        }
    }
}

impl Drop for ActiveConsumer {
    fn drop(&mut self) {
        self.metrics.consumers.dec();
    }
}

/// The consumer slot of one queue, shared by the polls on it (one at a time:
/// the lock is held for the whole wait, and a superseded poll is dropped at once).
pub(crate) struct QueueEntry {
    users: AtomicUsize,
    pub(crate) active: tokio::sync::Mutex<Option<ActiveConsumer>>,
    last_delivery: Mutex<Option<Instant>>,
}

impl QueueEntry {
    fn last_delivery(&self) -> MutexGuard<'_, Option<Instant>> {
        self.last_delivery.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the consumer out (if any) for cancelling.
    pub(crate) async fn retire(&self) {
        let active = self.active.lock().await.take();
        if let Some(active) = active {
            active.cancel_and_requeue().await;
        }
    }
}

/// All queue entries of one broker.
pub(crate) struct ConsumerRegistry {
    map: Mutex<HashMap<Arc<str>, Arc<QueueEntry>>>,
    linger: Duration,
}

impl ConsumerRegistry {
    pub(crate) fn new(linger: Duration) -> Self {
        ConsumerRegistry {
            map: Mutex::new(HashMap::new()),
            linger,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<QueueEntry>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a poll on `queue` and returns the queue's entry.
    pub(crate) fn enter(&self, queue: &str) -> Arc<QueueEntry> {
        let mut map = self.map();
        let entry = map
            .entry(queue.into())
            .or_insert_with(|| {
                Arc::new(QueueEntry {
                    users: AtomicUsize::new(0),
                    active: tokio::sync::Mutex::new(None),
                    last_delivery: Mutex::new(None),
                })
            })
            .clone();
        entry.users.fetch_add(1, Ordering::SeqCst);
        entry
    }

    /// A poll is over. Returns true when the entry was removed and its consumer
    /// must be cancelled now (nobody else polls it and no delivery is pending).
    pub(crate) fn leave(&self, queue: &str, entry: &Arc<QueueEntry>, delivered: bool) -> bool {
        let mut map = self.map();
        if delivered {
            *entry.last_delivery() = Some(Instant::now());
        }
        let remaining = entry.users.fetch_sub(1, Ordering::SeqCst) - 1;
        if remaining > 0 || delivered {
            return false;
        }
        if map.get(queue).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(queue);
        }
        true
    }

    /// Removes entries nobody has polled within the linger after their last delivery.
    pub(crate) fn take_idle(&self) -> Vec<Arc<QueueEntry>> {
        let now = Instant::now();
        let mut map = self.map();
        let idle: Vec<Arc<str>> = map
            .iter()
            .filter(|(_, e)| {
                e.users.load(Ordering::SeqCst) == 0
                    && e.last_delivery()
                        .is_none_or(|t| now.duration_since(t) >= self.linger)
            })
            .map(|(q, _)| q.clone())
            .collect();
        idle.iter().filter_map(|q| map.remove(q)).collect()
    }

    /// Removes every entry (shutdown).
    pub(crate) fn take_all(&self) -> Vec<Arc<QueueEntry>> {
        self.map().drain().map(|(_, e)| e).collect()
    }
}

/// A poll's use of a queue entry; on drop it tells the registry, and cancels the
/// consumer when the poll ended without a delivery and nobody else polls.
pub(crate) struct EntryUse<'a> {
    registry: &'a ConsumerRegistry,
    queue: &'a str,
    pub(crate) entry: Arc<QueueEntry>,
    /// The poll got a message: the consumer lingers for the client's next poll.
    pub(crate) delivered: bool,
}

impl ConsumerRegistry {
    /// Registers a poll on `queue` for as long as the returned use lives.
    pub(crate) fn use_entry<'a>(&'a self, queue: &'a str) -> EntryUse<'a> {
        EntryUse {
            registry: self,
            queue,
            entry: self.enter(queue),
            delivered: false,
        }
    }
}

impl Drop for EntryUse<'_> {
    fn drop(&mut self) {
        let retire = self.registry.leave(self.queue, &self.entry, self.delivered);
        if retire {
            let entry = self.entry.clone();
            tokio::spawn(async move { entry.retire().await });
        }
    }
}

/// The entry's consumer slot. Waiting for it (rare: a superseded poll still
/// holds it) is boxed, so that a held poll's future is not sized for it.
pub(crate) async fn consumer_slot(
    entry: &QueueEntry,
) -> tokio::sync::MutexGuard<'_, Option<ActiveConsumer>> {
    match entry.active.try_lock() {
        Ok(active) => active,
        Err(_) => Box::pin(entry.active.lock()).await,
    }
}

/// A consumer is there and its channel is open.
pub(crate) fn live_consumer(active: &Option<ActiveConsumer>) -> bool {
    active
        .as_ref()
        .is_some_and(|a| a.channel.status().connected())
}

/// Makes sure the queue's entry holds a live consumer. The consumer is
/// created in a task of its own and stored in the entry by that task: a
/// poll dropped while `basic.consume` is in flight (a client gone within
/// milliseconds) must not leave a consumer registered on the broker that
/// nothing reads or cancels — it would hold a message unacked forever.
/// Whoever retires the entry waits for the task and cancels what it made.
///
/// `on`: the channel to consume on, when it is still open — the channel a
/// spoiled consumer was cancelled on, whose requeues RabbitMQ must see before
/// the new consumer (frames of one channel are handled in order; two channels'
/// are not ordered against each other).
pub(crate) async fn ensure_consumer(
    inner: &Arc<Inner>,
    entry: &Arc<QueueEntry>,
    queue: &str,
    on: Option<Arc<lapin::Channel>>,
) -> Result<(), BrokerError> {
    // The caller found none live; the task checks again under the lock.
    let (inner, entry, queue) = (inner.clone(), entry.clone(), queue.to_owned());
    tokio::spawn(async move {
        let mut active = entry.active.lock().await;
        if live_consumer(&active) {
            return Ok(());
        }
        *active = None;
        *active = Some(start_consumer(&inner, &queue, on).await?);
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(BrokerError::new(BrokerErrorKind::Internal, e.to_string())))
}

/// Probes the queue, then consumes it on a shared consumer channel (`on`, if
/// still open).
async fn start_consumer(
    inner: &Inner,
    queue: &str,
    on: Option<Arc<lapin::Channel>>,
) -> Result<ActiveConsumer, BrokerError> {
    let ready = inner.topology.probe_queue(queue).await?.ready;
    let channel = match on.filter(|ch| ch.status().connected()) {
        Some(channel) => channel,
        None => inner.consumer_channels.channel().await?,
    };
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
        inner.options.consumer_prefetch,
        ready,
        inner.metrics.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_without_delivery_is_retired_when_its_last_poll_leaves() {
        let reg = ConsumerRegistry::new(Duration::from_secs(60));
        let a = reg.enter("q");
        let b = reg.enter("q");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!reg.leave("q", &a, false), "another poll still uses it");
        assert!(reg.leave("q", &b, false));
        assert!(reg.take_all().is_empty());
    }

    #[test]
    fn an_entry_with_a_delivery_lingers_until_the_reaper_takes_it() {
        let reg = ConsumerRegistry::new(Duration::ZERO);
        let a = reg.enter("q");
        assert!(!reg.leave("q", &a, true));
        assert_eq!(reg.take_idle().len(), 1);
        assert!(reg.take_idle().is_empty());
    }

    #[test]
    fn a_lingering_entry_is_reused_by_the_next_poll() {
        let reg = ConsumerRegistry::new(Duration::from_secs(60));
        let a = reg.enter("q");
        reg.leave("q", &a, true);
        let b = reg.enter("q");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(reg.take_idle().is_empty(), "in use");
    }
}
