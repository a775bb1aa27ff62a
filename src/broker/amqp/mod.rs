//! RabbitMQ through lapin: the [`AmqpBroker`] and how it is configured.
//!
//! Owns, one concern per module:
//!
//! | module | owns |
//! |---|---|
//! | `broker` | [`AmqpBroker`]: the `Broker` impl, putting the parts below together |
//! | `connections` | the broker's nodes and the pooled AMQP connections spread over them (one deadpool manager, plain and TLS) |
//! | `channels` | exclusive operation channels (pooled) and shared consumer channels |
//! | `topology` | the exchange and the subscription queues: probe, declare, bind, delete |
//! | `history` | the history stream (declare, bind, read) and resuming a subscription from it |
//! | `consumers` | one consumer per polled queue, its start, linger and cancel |
//! | `delivery` | message properties both ways, lapin delivery → [`Delivery`], ack/requeue |
//! | `supervisor` | reconnecting with backoff, nodes left and tried again, connectivity, the idle-consumer reaper |
//! | `errors` | lapin and pool errors → `BrokerError` kinds |
//! | `negative_cache` | queues known to be missing |
//!
//! Must not: use lapin's own auto-recovery — deadpool's recycle check is the one
//! reconnection strategy here (the two fight each other).
//!
//! [`Delivery`]: crate::broker::Delivery

mod broker;
mod channels;
mod connections;
mod consumers;
mod delivery;
mod errors;
mod history;
pub mod negative_cache;
mod supervisor;
mod topology;

use std::time::Duration;

pub use self::broker::AmqpBroker;
pub use self::delivery::TIMESTAMP_MS_HEADER;
use crate::broker::HistoryOptions;
use crate::config::{BrokerNodes, BrokerTls, ExchangeType, Settings};

/// How the RabbitMQ broker is used.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// The nodes of the RabbitMQ cluster (one URL is one node). How many there
    /// are is what a replicated queue's `x-initial-cluster-size` is taken from:
    /// [`AmqpOptions::initial_cluster_size`].
    pub nodes: BrokerNodes,
    pub exchange: String,
    pub exchange_type: ExchangeType,
    pub subscription_expiry: Duration,
    /// Operation channels pooled, and as many shared consumer channels.
    pub channel_pool_size: usize,
    /// AMQP connections pooled.
    pub connections: usize,
    /// Unacked deliveries per consumer (`basic.qos`, per consumer): 1 holds
    /// the answer alone; more lets RabbitMQ push the next messages while the
    /// answer waits for its sequence, kept in the consumer for the next poll.
    pub consumer_prefetch: u16,
    /// How long a queue's consumer is kept after a delivery, waiting for the
    /// client's next poll: 10 s, or [`WINDOW_LINGER`] with a prefetch window.
    pub consumer_linger: Duration,
    /// TLS material and credential files.
    pub tls: BrokerTls,
    /// The history stream; `None`: no history.
    pub history: Option<HistoryOptions>,
}

impl AmqpOptions {
    pub fn from_settings(s: &Settings, nodes: BrokerNodes) -> Self {
        let mut options = AmqpOptions {
            connections: connections_for(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                nodes.len(),
            ),
            nodes,
            exchange: s.exchange.clone(),
            exchange_type: s.exchange_type,
            subscription_expiry: s.subscription_expiry,
            channel_pool_size: s.channel_pool_size,
            consumer_prefetch: s.consumer_prefetch,
            consumer_linger: if s.consumer_prefetch > 1 {
                WINDOW_LINGER
            } else {
                Duration::from_secs(10)
            },
            tls: s.broker_tls.clone(),
            history: HistoryOptions::from_settings(s),
        };
        // The history stream is replicated over the nodes given.
        let replicas = options.initial_cluster_size();
        if let Some(history) = &mut options.history {
            history.initial_cluster_size = replicas.and_then(|n| u32::try_from(n).ok());
        }
        options
    }

    /// `x-initial-cluster-size` for a queue RabbitMQ replicates across its
    /// nodes (the events history stream): one replica per node given, three
    /// at most — three survive the loss of a node; more only cost writes.
    /// `None` for a single URL, which says nothing of the cluster behind it (a
    /// Service in front of three nodes): leave the argument out, and RabbitMQ
    /// picks its own default.
    pub fn initial_cluster_size(&self) -> Option<usize> {
        (self.nodes.len() > 1).then(|| self.nodes.len().min(3))
    }
}

/// How long a consumer with a prefetch window is kept after a delivery. A
/// client that got an answer is back within milliseconds; one that is not
/// (a page gone, or its polls moved to another replica) must not keep the
/// messages in the window from the queue, where another replica's consumer
/// would take them, for the 10 s a consumer of one message lingers.
pub const WINDOW_LINGER: Duration = Duration::from_secs(2);

/// AMQP connections for consumers and operations on a machine with `cores`
/// cores (the process's CPU quota, as `available_parallelism` reads it) and a
/// broker of `nodes` nodes: one per two cores, from one to four. Every frame of a
/// connection's consumers crosses its one lapin I/O thread; on two cores a second
/// thread only adds wake-ups between threads (one connection instead of two: +8%
/// deliveries/s and −6% of the gateway's CPU per delivery on RabbitMQ,
/// benches/README.md), while a bigger box needs more than one thread to carry its
/// consumers' frames. With several nodes, at least one per node (up to four), so
/// that the connections — and the queues declared through them, which RabbitMQ
/// places on the node of the declaring connection — spread over the cluster,
/// and a node lost takes a share of them, not all.
pub fn connections_for(cores: usize, nodes: usize) -> usize {
    (cores / 2).clamp(1, 4).max(nodes.min(4))
}

#[cfg(test)]
mod tests {
    use super::{AmqpOptions, connections_for};
    use crate::config::{BrokerUrl, Settings};

    fn options(broker: &str) -> AmqpOptions {
        let Ok(BrokerUrl::Amqp(nodes)) = BrokerUrl::parse(broker) else {
            panic!("{broker}");
        };
        AmqpOptions::from_settings(&Settings::default(), nodes)
    }

    #[test]
    fn a_replicated_queue_gets_one_replica_per_node_up_to_three() {
        assert_eq!(options("amqp://a/").initial_cluster_size(), None);
        assert_eq!(
            options("amqp://a/,amqp://b/").initial_cluster_size(),
            Some(2)
        );
        let five = "amqp://a/,amqp://b/,amqp://c/,amqp://d/,amqp://e/";
        assert_eq!(options(five).initial_cluster_size(), Some(3));
        assert_eq!(options(five).connections, 4);
        // The history stream is declared with it.
        let stream = |broker| options(broker).history.and_then(|h| h.initial_cluster_size);
        assert_eq!(stream("amqp://a/"), None);
        assert_eq!(stream(five), Some(3));
    }

    #[test]
    fn one_connection_per_two_cores_from_one_to_four() {
        let sized: Vec<usize> = [1, 2, 3, 4, 8, 16, 64]
            .into_iter()
            .map(|cores| connections_for(cores, 1))
            .collect();
        assert_eq!(sized, [1, 1, 1, 2, 4, 4, 4]);
    }

    #[test]
    fn at_least_one_connection_per_node_up_to_four() {
        assert_eq!(connections_for(2, 3), 3);
        assert_eq!(connections_for(2, 7), 4);
        assert_eq!(connections_for(16, 3), 4);
        assert_eq!(connections_for(6, 2), 3);
    }
}
