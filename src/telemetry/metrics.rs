//! The gateway's Prometheus metrics, one registry per gateway instance.
//!
//! Owns: metric names (all prefixed `longpoll_`), help texts and buckets.
//! Must not: take a label whose values are unbounded (keys, queue names, ids).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `status` label: the HTTP status code of an answered poll.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

/// `broker_node` label: a node's position in `--broker`, from 0 (bounded by
/// the nodes given).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerNodeLabel {
    pub broker_node: u32,
}

/// `outcome` label of a resume: `resumed` (the history reached back),
/// `gap` (it did not: nothing replayed), `reordered` (RabbitMQ: events
/// published while the queue was being bound kept racing the bind, and were
/// appended after live ones instead of before them; none was lost).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    broker: &'static str,
}

/// Buckets for things measured in the lifetime of a long-poll: 1 ms to ~9 minutes.
fn long_poll_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0, 270.0, 540.0,
    ]
    .into_iter()
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub polls_held: Gauge,
    pub polls_answered: Family<StatusLabel, Counter>,
    pub poll_hold_seconds: Histogram,
    pub delivery_latency_seconds: Histogram,
    pub messages_delivered: Counter,
    pub messages_acked: Counter,
    pub messages_requeued: Counter,
    pub messages_redelivered: Counter,
    pub messages_skipped: Counter,
    pub replays: Counter,
    pub supersedes: Counter,
    pub sequence_restarts: Counter,
    pub events_published: Counter,
    pub broker_connected: Gauge,
    pub broker_reconnects: Counter,
    pub broker_node_up: Family<BrokerNodeLabel, Gauge>,
    pub channel_pool_size: Gauge,
    pub channel_pool_in_use: Gauge,
    pub channel_pool_wait_seconds: Histogram,
    pub consumers: Gauge,
    pub replay_entries: Gauge,
    pub memory_queues: Gauge,
    pub memory_messages_dropped: Counter,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub queue_probes: Counter,
    pub negative_cache_hits: Counter,
    pub resumes: Family<ResumeLabel, Counter>,
    pub resumed_events: Counter,
    build_info: Family<BuildLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("longpoll");
        let m = Metrics {
            polls_held: Gauge::default(),
            polls_answered: Family::default(),
            poll_hold_seconds: Histogram::new(long_poll_buckets()),
            delivery_latency_seconds: Histogram::new(long_poll_buckets()),
            messages_delivered: Counter::default(),
            messages_acked: Counter::default(),
            messages_requeued: Counter::default(),
            messages_redelivered: Counter::default(),
            messages_skipped: Counter::default(),
            replays: Counter::default(),
            supersedes: Counter::default(),
            sequence_restarts: Counter::default(),
            events_published: Counter::default(),
            broker_connected: Gauge::default(),
            broker_reconnects: Counter::default(),
            broker_node_up: Family::default(),
            channel_pool_size: Gauge::default(),
            channel_pool_in_use: Gauge::default(),
            channel_pool_wait_seconds: Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            consumers: Gauge::default(),
            replay_entries: Gauge::default(),
            memory_queues: Gauge::default(),
            memory_messages_dropped: Counter::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            queue_probes: Counter::default(),
            negative_cache_hits: Counter::default(),
            resumes: Family::default(),
            resumed_events: Counter::default(),
            build_info: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "polls_held",
            "Long-polls held open now",
            m.polls_held.clone(),
        );
        registry.register(
            "polls_answered",
            "Long-polls answered, by HTTP status",
            m.polls_answered.clone(),
        );
        registry.register(
            "poll_hold_seconds",
            "How long a long-poll was held before its answer",
            m.poll_hold_seconds.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From the publisher's timestamp to the response that handed the message to a client",
            m.delivery_latency_seconds.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages handed to a poll (replays not counted)",
            m.messages_delivered.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages acknowledged because the next sequence proved receipt",
            m.messages_acked.clone(),
        );
        registry.register(
            "messages_requeued",
            "Messages given back to their queue (client gone, replay TTL, shutdown)",
            m.messages_requeued.clone(),
        );
        registry.register(
            "messages_redelivered",
            "Messages the broker delivered again after a requeue or a lost channel",
            m.messages_redelivered.clone(),
        );
        registry.register(
            "messages_skipped",
            "Messages acked without being shown (original-uuid, or a redelivery of the last answer)",
            m.messages_skipped.clone(),
        );
        registry.register(
            "replays",
            "Retries of an answered (uuid, sequence) served from the replay cache",
            m.replays.clone(),
        );
        registry.register(
            "supersedes",
            "Held polls answered 409 because a newer poll for the same uuid arrived",
            m.supersedes.clone(),
        );
        registry.register(
            "sequence_restarts",
            "Polls without `seen` at or below their uuid's last answered sequence, served as a restart of the count (txlongpoll clients after a reload)",
            m.sequence_restarts.clone(),
        );
        registry.register(
            "events_published",
            "Events published (API, library, CLI) and confirmed by the broker",
            m.events_published.clone(),
        );
        registry.register(
            "broker_connected",
            "1 when the broker is usable: a connection to at least one of its nodes is up",
            m.broker_connected.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Times the broker became usable again after none of its nodes could be reached",
            m.broker_reconnects.clone(),
        );
        registry.register(
            "broker_node_up",
            "1 when the last connection made to this node of --broker (by position, from 0) succeeded and none has been lost since",
            m.broker_node_up.clone(),
        );
        registry.register(
            "channel_pool_size",
            "AMQP channels pooled for operations (declare, bind, publish)",
            m.channel_pool_size.clone(),
        );
        registry.register(
            "channel_pool_in_use",
            "Pooled AMQP channels checked out now",
            m.channel_pool_in_use.clone(),
        );
        registry.register(
            "channel_pool_wait_seconds",
            "Time spent waiting for a pooled AMQP channel",
            m.channel_pool_wait_seconds.clone(),
        );
        registry.register(
            "consumers",
            "Broker consumers open now (one per polled queue, kept briefly between polls)",
            m.consumers.clone(),
        );
        registry.register(
            "replay_entries",
            "Answered (uuid, sequence) pairs kept for replay, each holding an unacked message",
            m.replay_entries.clone(),
        );
        registry.register(
            "memory_queues",
            "Queues in the embedded broker",
            m.memory_queues.clone(),
        );
        registry.register(
            "memory_messages_dropped",
            "Messages the embedded broker dropped because a queue was full (oldest first)",
            m.memory_messages_dropped.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open on the public listener",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because --max-connections were open",
            m.connections_refused.clone(),
        );
        registry.register(
            "queue_probes",
            "Passive declares sent to the broker to learn whether a polled queue exists",
            m.queue_probes.clone(),
        );
        registry.register(
            "negative_cache_hits",
            "Polls answered 404 from the cache of queues known to be missing",
            m.negative_cache_hits.clone(),
        );
        registry.register(
            "resumes",
            "Subscriptions created with resume_after, by outcome (resumed, gap, reordered)",
            m.resumes.clone(),
        );
        registry.register(
            "resumed_events",
            "Events replayed from the history into resumed subscriptions",
            m.resumed_events.clone(),
        );
        registry.register("build_info", "Build information", m.build_info.clone());
        // Every status a poll can get exists from the start, so that rate()
        // sees the first answer of each.
        for status in [200, 400, 404, 408, 409, 503] {
            let _ = m.polls_answered.get_or_create(&StatusLabel { status });
        }
        for outcome in ["resumed", "gap", "reordered"] {
            let _ = m.resumes.get_or_create(&ResumeLabel { outcome });
        }
        Metrics { registry, ..m }
    }

    /// Counts a resume and the events it replayed.
    pub fn count_resume(&self, outcome: &'static str, replayed: u64) {
        self.resumes.get_or_create(&ResumeLabel { outcome }).inc();
        self.resumed_events.inc_by(replayed);
    }

    /// Records which broker kind this instance runs on (for `longpoll_build_info`).
    pub fn set_build_info(&self, broker: &'static str) {
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                broker,
            })
            .set(1);
    }

    /// Whether node `node` of `--broker` answers.
    pub fn set_broker_node_up(&self, node: usize, up: bool) {
        let broker_node = u32::try_from(node).unwrap_or(u32::MAX);
        self.broker_node_up
            .get_or_create(&BrokerNodeLabel { broker_node })
            .set(i64::from(up));
    }

    /// One answered poll.
    pub fn poll_answered(&self, status: u16, held: Duration) {
        self.polls_answered
            .get_or_create(&StatusLabel { status })
            .inc();
        self.poll_hold_seconds.observe(held.as_secs_f64());
    }

    /// Value of the answered counter for one status (tests and the load report).
    pub fn answered(&self, status: u16) -> u64 {
        self.polls_answered
            .get_or_create(&StatusLabel { status })
            .get()
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_are_prefixed_and_label_only_status() {
        let m = Metrics::new();
        m.set_build_info("memory");
        m.poll_answered(200, Duration::from_millis(5));
        m.polls_held.inc();
        let text = m.encode();
        assert!(
            text.contains("longpoll_polls_answered_total{status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("longpoll_polls_held 1"), "{text}");
        assert!(
            text.contains("longpoll_messages_requeued_total 0"),
            "{text}"
        );
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("longpoll_"), "{line}");
        }
    }
}
