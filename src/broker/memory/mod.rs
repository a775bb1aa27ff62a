//! The embedded in-process broker (`--broker memory://`): the zero-setup default
//! for a single replica.
//!
//! Owns: queues, bindings and routing for one process, with the semantics the
//! long-poll contract relies on — per-queue FIFO, at most one unacked message per
//! queue (prefetch 1; the messages of one answer of several are taken together,
//! and the next is delivered once all of them are settled), ack, requeue at the
//! message's place, `redelivered`, queue expiry when unused. Bounded: a per-queue message cap (oldest dropped, counted)
//! and a total queue cap. Keeps the history of published events that a
//! resume replays ([`history`]), bounded by age and bytes.
//! Must not: outlive the process — nothing is persisted; that is what RabbitMQ is for.

mod history;
mod routing;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use history::{After, History};
use routing::Bindings;
pub use routing::{binding_matches, topic_matches};

use super::{
    Acker, Broker, BrokerError, BrokerErrorKind, Connectivity, Delivery, HistoryOptions,
    MAX_RESUME_EVENTS, OutgoingMessage, QueueStats, ResumeOutcome, Settle,
};
use crate::config::{ExchangeType, Settings};
use crate::telemetry::Metrics;
use crate::telemetry::traces::SettleTrace;

/// How the embedded broker behaves.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    pub exchange_type: ExchangeType,
    pub subscription_expiry: Duration,
    pub max_messages_per_queue: usize,
    pub max_queues: usize,
    /// The history resumes replay from; `None`: no history.
    pub history: Option<HistoryOptions>,
}

impl MemoryOptions {
    pub fn from_settings(s: &Settings) -> Self {
        MemoryOptions {
            exchange_type: s.exchange_type,
            subscription_expiry: s.subscription_expiry,
            max_messages_per_queue: s.memory.max_messages_per_queue,
            max_queues: s.memory.max_queues,
            history: HistoryOptions::from_settings(s),
        }
    }
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions::from_settings(&Settings::default())
    }
}

#[derive(Debug)]
struct StoredMessage {
    body: Bytes,
    message_id: Arc<str>,
    published_at: SystemTime,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Queued {
    /// Place in the queue: publish order, kept across requeues.
    pos: u64,
    deliveries: u32,
    message: Arc<StoredMessage>,
}

#[derive(Debug)]
struct MemQueue {
    name: Arc<str>,
    ready: VecDeque<Queued>,
    /// The delivered-but-unsettled messages, with their delivery tags: one,
    /// or the messages of one answer of several, in queue order.
    unacked: Vec<(u64, Queued)>,
    /// Its binding keys (shared with the exchange's table); a handful at most.
    bindings: Vec<Arc<str>>,
    notify: Arc<Notify>,
    last_used: Instant,
    pollers: usize,
}

impl MemQueue {
    fn requeue(&mut self, q: Queued) {
        // Back at its place: the ready list is ordered by position.
        let at = self.ready.partition_point(|m| m.pos < q.pos);
        self.ready.insert(at, q);
    }
}

#[derive(Debug)]
struct State {
    queues: HashMap<Arc<str>, MemQueue>,
    bindings: Bindings,
    history: Option<History>,
    next_pos: u64,
    next_tag: u64,
}

struct Shared {
    state: Mutex<State>,
    options: MemoryOptions,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (no partial
        // updates span an unwind point), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The embedded broker. Cheap to clone.
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// Creates the broker and, when a Tokio runtime is running, its expiry sweeper.
    pub fn new(options: MemoryOptions, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queues: HashMap::new(),
                bindings: Bindings::new(options.exchange_type),
                history: options.history.as_ref().map(History::new),
                next_pos: 0,
                next_tag: 0,
            }),
            options,
            metrics,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep_expired(Arc::downgrade(&shared)));
        }
        MemoryBroker { shared }
    }

    /// Declares `queue` unless it exists (`LimitReached` at the queue cap).
    fn declare_queue(&self, st: &mut State, queue: &str) -> Result<(), BrokerError> {
        if st.queues.contains_key(queue) {
            return Ok(());
        }
        if st.queues.len() >= self.shared.options.max_queues {
            return Err(BrokerError::new(
                BrokerErrorKind::LimitReached,
                format!(
                    "the embedded broker holds its maximum of {} queues",
                    self.shared.options.max_queues
                ),
            ));
        }
        let name: Arc<str> = queue.into();
        st.queues.insert(
            name.clone(),
            MemQueue {
                name,
                ready: VecDeque::new(),
                unacked: Vec::new(),
                bindings: Vec::new(),
                notify: Arc::new(Notify::new()),
                last_used: Instant::now(),
                pollers: 0,
            },
        );
        self.shared
            .metrics
            .memory_queues
            .set(st.queues.len() as i64);
        Ok(())
    }

    /// Deletes queues unused for longer than their expiry; returns how many.
    fn expire_unused(&self) -> usize {
        let expiry = self.shared.options.subscription_expiry;
        let now = Instant::now();
        let mut st = self.shared.lock();
        let expired: Vec<Arc<str>> = st
            .queues
            .iter()
            .filter(|(_, q)| q.pollers == 0 && now.duration_since(q.last_used) >= expiry)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            remove_queue(&mut st, name);
        }
        // The history's age bound holds while nothing is published too.
        if let Some(history) = st.history.as_mut() {
            history.trim(now);
        }
        self.shared
            .metrics
            .memory_queues
            .set(st.queues.len() as i64);
        expired.len()
    }

    /// Takes the next message, and up to `max - 1` more behind it, if one may
    /// be delivered now. `waiting_on` is the wake-up the caller registered
    /// with: a queue deleted and declared again meanwhile has another, handed
    /// back to wait on instead.
    fn try_take(
        &self,
        queue: &str,
        waiting_on: &Arc<Notify>,
        max: usize,
    ) -> Result<Take, BrokerError> {
        let mut st = self.shared.lock();
        let st = &mut *st;
        let Some(q) = st.queues.get_mut(queue) else {
            return Err(BrokerError::not_found(format!("no queue {queue:?}")));
        };
        if !Arc::ptr_eq(&q.notify, waiting_on) {
            return Ok(Take::Redeclared(q.notify.clone()));
        }
        q.last_used = Instant::now();
        if !q.unacked.is_empty() || q.ready.is_empty() {
            return Ok(Take::Empty);
        }
        let mut taken = Vec::with_capacity(max.clamp(1, q.ready.len()));
        while taken.len() < max.max(1) {
            let Some(mut item) = q.ready.pop_front() else {
                break;
            };
            st.next_tag += 1;
            let tag = st.next_tag;
            let redelivered = item.deliveries > 0;
            item.deliveries += 1;
            let message = item.message.clone();
            q.unacked.push((tag, item));
            let settle = MemorySettle {
                shared: Arc::downgrade(&self.shared),
                queue: q.name.clone(),
                tag,
            };
            if redelivered {
                self.shared.metrics.messages_redelivered.inc();
            }
            taken.push(Delivery {
                body: message.body.clone(),
                message_id: message.message_id.clone(),
                redelivered,
                published_at: Some(message.published_at),
                trace_headers: message.headers.clone(),
                acker: Acker::new(Box::new(settle), self.shared.metrics.clone()).with_trace(
                    SettleTrace::for_message(&message.message_id, &message.headers),
                ),
            });
        }
        Ok(Take::Ready(taken))
    }

    /// Waits for the next message and takes up to `max - 1` more behind it.
    async fn take(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let Some((_poller, mut notify)) = PollerGuard::enter(self, queue) else {
            return Err(BrokerError::not_found(format!("no queue {queue:?}")));
        };
        loop {
            // Made before the look: a `Notified` receives every `notify_waiters`
            // from its creation on, so a publish between the look and the
            // wait is not missed.
            let notified = notify.notified();
            match self.try_take(queue, &notify, max)? {
                Take::Ready(deliveries) => return Ok(deliveries),
                Take::Empty => notified.await,
                Take::Redeclared(current) => {
                    drop(notified);
                    notify = current;
                }
            }
        }
    }
}

/// What a look at a queue found.
enum Take {
    /// At least one message, in queue order.
    Ready(Vec<Delivery>),
    /// Nothing deliverable now: wait for the queue's wake-up.
    Empty,
    /// The queue was deleted and declared again: its new wake-up.
    Redeclared(Arc<Notify>),
}

fn remove_queue(st: &mut State, name: &str) {
    if let Some(q) = st.queues.remove(name) {
        for b in &q.bindings {
            st.bindings.unbind(name, b);
        }
        // Pollers wake up and find the queue gone.
        q.notify.notify_waiters();
    }
}

async fn sweep_expired(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        MemoryBroker { shared }.expire_unused();
    }
}

/// Counts a poller on a queue for as long as it waits (a queue being polled
/// does not expire, as a RabbitMQ queue with a consumer does not).
struct PollerGuard<'a> {
    broker: &'a MemoryBroker,
    queue: &'a str,
}

impl<'a> PollerGuard<'a> {
    /// Counts the poller in and hands back the queue's wake-up, under one lock;
    /// `None` when there is no such queue.
    fn enter(broker: &'a MemoryBroker, queue: &'a str) -> Option<(Self, Arc<Notify>)> {
        let mut st = broker.shared.lock();
        let q = st.queues.get_mut(queue)?;
        q.pollers += 1;
        Some((PollerGuard { broker, queue }, q.notify.clone()))
    }
}

impl Drop for PollerGuard<'_> {
    fn drop(&mut self) {
        if let Some(q) = self.broker.shared.lock().queues.get_mut(self.queue) {
            q.pollers = q.pollers.saturating_sub(1);
            q.last_used = Instant::now();
        }
    }
}

struct MemorySettle {
    shared: Weak<Shared>,
    queue: Arc<str>,
    tag: u64,
}

impl MemorySettle {
    fn settle(&self, requeue: bool) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut st = shared.lock();
        let Some(q) = st.queues.get_mut(&self.queue) else {
            return;
        };
        if let Some(at) = q.unacked.iter().position(|(tag, _)| *tag == self.tag) {
            let (_, item) = q.unacked.remove(at);
            if requeue {
                q.requeue(item);
            }
            if q.unacked.is_empty() {
                q.notify.notify_waiters();
            }
        }
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.settle(false);
        Ok(())
    }
    async fn requeue(&self) -> Result<(), BrokerError> {
        self.settle(true);
        Ok(())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn next_message(&self, queue: &str) -> Result<Delivery, BrokerError> {
        let mut taken = self.take(queue, 1).await?;
        taken
            .pop()
            .ok_or_else(|| BrokerError::new(BrokerErrorKind::Internal, "a take of nothing"))
    }

    async fn next_messages(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        self.take(queue, max).await
    }

    async fn declare_subscription(
        &self,
        queue: &str,
        event_keys: &[String],
    ) -> Result<(), BrokerError> {
        let mut st = self.shared.lock();
        self.declare_queue(&mut st, queue)?;
        bind_all(&mut st, queue, event_keys);
        Ok(())
    }

    fn keeps_history(&self) -> bool {
        self.shared.options.history.is_some()
    }

    async fn resume_subscription(
        &self,
        queue: &str,
        event_keys: &[String],
        after: &str,
    ) -> Result<ResumeOutcome, BrokerError> {
        let options = &self.shared.options;
        // A replay must fit in the queue whole: dropping its oldest would be
        // the silent gap a resume is there to prevent.
        let limit = MAX_RESUME_EVENTS.min(options.max_messages_per_queue);
        // Under the broker's lock, filling the queue and binding it are one
        // step: no event can come between the history's end and the live ones.
        let mut st = self.shared.lock();
        let Some(history) = st.history.as_mut() else {
            return Err(BrokerError::new(
                BrokerErrorKind::InvalidInput,
                "this broker keeps no history (--history-max-age 0)",
            ));
        };
        history.trim(Instant::now());
        let matches = |routing_key: &str| {
            event_keys
                .iter()
                .any(|k| binding_matches(options.exchange_type, k, routing_key))
        };
        let replay = match history.after(after, matches, limit) {
            After::Found(replay) => replay,
            After::NotFound | After::TooMany => {
                self.declare_queue(&mut st, queue)?;
                bind_all(&mut st, queue, event_keys);
                self.shared.metrics.count_resume("gap", 0);
                return Ok(ResumeOutcome::GAP);
            }
        };
        self.declare_queue(&mut st, queue)?;
        let resumed = replay.len() as u64;
        let State {
            queues, next_pos, ..
        } = &mut *st;
        if let Some(q) = queues.get_mut(queue) {
            for message in replay {
                *next_pos += 1;
                q.ready.push_back(Queued {
                    pos: *next_pos,
                    deliveries: 0,
                    message,
                });
            }
            q.notify.notify_waiters();
        }
        bind_all(&mut st, queue, event_keys);
        self.shared.metrics.count_resume("resumed", resumed);
        Ok(ResumeOutcome {
            resumed,
            gap: false,
        })
    }

    async fn add_bindings(&self, queue: &str, event_keys: &[String]) -> Result<(), BrokerError> {
        let mut st = self.shared.lock();
        if !st.queues.contains_key(queue) {
            return Err(BrokerError::not_found(format!("no queue {queue:?}")));
        }
        bind_all(&mut st, queue, event_keys);
        Ok(())
    }

    async fn delete_subscription(&self, queue: &str) -> Result<(), BrokerError> {
        let mut st = self.shared.lock();
        if !st.queues.contains_key(queue) {
            return Err(BrokerError::not_found(format!("no queue {queue:?}")));
        }
        remove_queue(&mut st, queue);
        self.shared
            .metrics
            .memory_queues
            .set(st.queues.len() as i64);
        Ok(())
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<(), BrokerError> {
        let stored = Arc::new(StoredMessage {
            body: message.body,
            message_id: message.message_id.into(),
            published_at: message.published_at,
            headers: message.headers,
        });
        let cap = self.shared.options.max_messages_per_queue;
        let mut st = self.shared.lock();
        if let Some(history) = st.history.as_mut() {
            history.record(&message.routing_key, &stored, Instant::now());
        }
        let targets = st.bindings.route(&message.routing_key);
        for name in targets {
            st.next_pos += 1;
            let pos = st.next_pos;
            let Some(q) = st.queues.get_mut(&name) else {
                continue;
            };
            if q.ready.len() >= cap {
                q.ready.pop_front();
                self.shared.metrics.memory_messages_dropped.inc();
            }
            q.ready.push_back(Queued {
                pos,
                deliveries: 0,
                message: stored.clone(),
            });
            q.notify.notify_waiters();
        }
        self.shared.metrics.events_published.inc();
        Ok(())
    }

    fn connectivity(&self) -> Connectivity {
        Connectivity::Connected
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let st = self.shared.lock();
        let q = st
            .queues
            .get(queue)
            .ok_or_else(|| BrokerError::not_found(format!("no queue {queue:?}")))?;
        Ok(QueueStats {
            ready: q.ready.len() as u64,
            unacked: Some(q.unacked.len() as u64),
            consumers: q.pollers as u64,
        })
    }

    async fn close(&self) {
        // Unsettled messages go back to their queues (the process is ending,
        // but a library user may keep the broker).
        let mut st = self.shared.lock();
        for q in st.queues.values_mut() {
            for (_, item) in std::mem::take(&mut q.unacked) {
                q.requeue(item);
            }
        }
    }
}

fn bind_all(st: &mut State, queue: &str, event_keys: &[String]) {
    let State {
        queues, bindings, ..
    } = st;
    let Some(q) = queues.get_mut(queue) else {
        return;
    };
    q.last_used = Instant::now();
    for key in event_keys {
        if !q.bindings.iter().any(|b| **b == **key) {
            q.bindings.push(bindings.bind(&q.name, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(max_per_queue: usize) -> MemoryBroker {
        MemoryBroker::new(
            MemoryOptions {
                max_messages_per_queue: max_per_queue,
                ..MemoryOptions::default()
            },
            Arc::new(Metrics::new()),
        )
    }

    fn msg(key: &str, body: &str) -> OutgoingMessage {
        OutgoingMessage {
            routing_key: key.into(),
            body: Bytes::from(body.to_owned()),
            message_id: uuid::Uuid::new_v4().to_string(),
            published_at: SystemTime::now(),
            headers: vec![],
        }
    }

    #[tokio::test]
    async fn fifo_with_one_unacked_at_a_time() {
        let b = broker(100);
        b.declare_subscription("q", &["k".into()]).await.unwrap();
        b.publish(msg("k", "1")).await.unwrap();
        b.publish(msg("k", "2")).await.unwrap();
        let first = b.next_message("q").await.unwrap();
        assert_eq!(&first.body[..], b"1");
        // The second waits for the first to be settled.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.next_message("q"))
                .await
                .is_err()
        );
        first.acker.ack().await.unwrap();
        let second = b.next_message("q").await.unwrap();
        assert_eq!(&second.body[..], b"2");
        assert!(!second.redelivered);
    }

    #[tokio::test]
    async fn requeue_puts_the_message_back_at_its_place_marked_redelivered() {
        let b = broker(100);
        b.declare_subscription("q", &["k".into()]).await.unwrap();
        b.publish(msg("k", "1")).await.unwrap();
        b.publish(msg("k", "2")).await.unwrap();
        let first = b.next_message("q").await.unwrap();
        let id = first.message_id.clone();
        drop(first); // abandoned: requeued
        let again = tokio::time::timeout(Duration::from_secs(1), b.next_message("q"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&again.body[..], b"1");
        assert!(again.redelivered);
        assert_eq!(again.message_id, id);
    }

    #[tokio::test]
    async fn several_messages_are_taken_at_once_in_order_and_settled_as_one() {
        let b = broker(100);
        b.declare_subscription("q", &["k".into()]).await.unwrap();
        for n in 1..=5 {
            b.publish(msg("k", &n.to_string())).await.unwrap();
        }
        let first = b.next_messages("q", 3).await.unwrap();
        let bodies = |d: &[Delivery]| d.iter().map(|d| d.body.clone()).collect::<Vec<_>>();
        assert_eq!(bodies(&first), ["1", "2", "3"]);
        assert_eq!(b.queue_stats("q").await.unwrap().unacked, Some(3));
        // Nothing more until the answer is settled, as for one message.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.next_messages("q", 3))
                .await
                .is_err()
        );
        let ids: Vec<_> = first.iter().map(|d| d.message_id.clone()).collect();
        let acker = Acker::join(first.into_iter().map(|d| d.acker)).unwrap();
        assert_eq!(acker.len(), 3);
        drop(acker); // abandoned: all three requeued at their places
        let again = tokio::time::timeout(Duration::from_secs(1), b.next_messages("q", 10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bodies(&again), ["1", "2", "3", "4", "5"]);
        assert!(again[..3].iter().all(|d| d.redelivered) && !again[3].redelivered);
        assert_eq!(
            again[..3]
                .iter()
                .map(|d| d.message_id.clone())
                .collect::<Vec<_>>(),
            ids
        );
        Acker::join(again.into_iter().map(|d| d.acker))
            .unwrap()
            .ack()
            .await
            .unwrap();
        let stats = b.queue_stats("q").await.unwrap();
        assert_eq!((stats.ready, stats.unacked), (0, Some(0)));
        // Fewer waiting than asked: what there is, without waiting for more.
        b.publish(msg("k", "6")).await.unwrap();
        let one = b.next_messages("q", 10).await.unwrap();
        assert_eq!(bodies(&one), ["6"]);
    }

    /// A queue `q` bound to `key`, and a poll of it waiting (counted as a
    /// poller, yielded to until it is).
    async fn waiting_poll(
        b: &MemoryBroker,
        key: &str,
    ) -> tokio::task::JoinHandle<Result<Delivery, BrokerError>> {
        b.declare_subscription("q", &[key.into()]).await.unwrap();
        let poll = tokio::spawn({
            let b = b.clone();
            async move { b.next_message("q").await }
        });
        while b.queue_stats("q").await.map(|s| s.consumers).ok() != Some(1) {
            tokio::task::yield_now().await;
        }
        poll
    }

    #[tokio::test]
    async fn a_waiting_poll_gets_what_is_published_after_it_began_waiting() {
        let b = broker(100);
        let poll = waiting_poll(&b, "k").await;
        b.publish(msg("k", "late")).await.unwrap();
        let d = poll.await.unwrap().unwrap();
        assert_eq!(&d.body[..], b"late");
    }

    #[tokio::test]
    async fn a_poll_waiting_on_a_queue_deleted_and_declared_again_waits_on_the_new_one() {
        let b = broker(100);
        let poll = waiting_poll(&b, "k").await;
        // No await point between the two: the poll wakes to the new queue.
        b.delete_subscription("q").await.unwrap();
        b.declare_subscription("q", &["k2".into()]).await.unwrap();
        tokio::task::yield_now().await;
        b.publish(msg("k2", "new")).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .expect("the poll is answered")
            .unwrap()
            .unwrap();
        assert_eq!(&d.body[..], b"new");
    }

    #[tokio::test]
    async fn full_queue_drops_the_oldest_and_counts_it() {
        let b = broker(2);
        b.declare_subscription("q", &["k".into()]).await.unwrap();
        for i in 1..=3 {
            b.publish(msg("k", &i.to_string())).await.unwrap();
        }
        assert_eq!(b.shared.metrics.memory_messages_dropped.get(), 1);
        let d = b.next_message("q").await.unwrap();
        assert_eq!(&d.body[..], b"2");
    }

    #[tokio::test]
    async fn queue_cap_refuses_new_subscriptions() {
        let b = MemoryBroker::new(
            MemoryOptions {
                max_queues: 1,
                ..MemoryOptions::default()
            },
            Arc::new(Metrics::new()),
        );
        b.declare_subscription("a", &[]).await.unwrap();
        let err = b.declare_subscription("b", &[]).await.unwrap_err();
        assert_eq!(err.kind(), BrokerErrorKind::LimitReached);
        // Redeclaring an existing one is fine.
        b.declare_subscription("a", &["k".into()]).await.unwrap();
    }

    #[tokio::test]
    async fn unused_queues_expire_but_polled_ones_do_not() {
        let b = MemoryBroker::new(
            MemoryOptions {
                subscription_expiry: Duration::from_millis(1),
                ..MemoryOptions::default()
            },
            Arc::new(Metrics::new()),
        );
        b.declare_subscription("idle", &[]).await.unwrap();
        b.declare_subscription("polled", &[]).await.unwrap();
        let poller = {
            let b = b.clone();
            tokio::spawn(async move { b.next_message("polled").await })
        };
        while b.shared.lock().queues["polled"].pollers == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // (the background sweeper may have run already; either way the result is the same)
        b.expire_unused();
        assert!(b.queue_stats("idle").await.is_err());
        assert!(b.queue_stats("polled").await.is_ok());
        poller.abort();
    }

    #[tokio::test]
    async fn deleting_a_queue_wakes_its_poller_with_not_found() {
        let b = broker(10);
        b.declare_subscription("q", &[]).await.unwrap();
        let poller = {
            let b = b.clone();
            tokio::spawn(async move { b.next_message("q").await })
        };
        while b.shared.lock().queues["q"].pollers == 0 {
            tokio::task::yield_now().await;
        }
        b.delete_subscription("q").await.unwrap();
        let err = poller.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), BrokerErrorKind::NotFound);
    }
}
