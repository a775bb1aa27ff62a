//! RabbitMQ through lapin: the [`AmqpBroker`] and how it is configured.
//!
//! Owns, one concern per module:
//!
//! | module | owns |
//! |---|---|
//! | `broker` | [`AmqpBroker`]: the `Broker` impl, putting the parts below together |
//! | `connections` | the pooled AMQP connections (one deadpool manager, plain and TLS) |
//! | `channels` | exclusive operation channels (pooled) and shared consumer channels |
//! | `topology` | the exchange and the subscription queues: probe, declare, bind, delete |
//! | `history` | the history stream (declare, bind, read) and resuming a subscription from it |
//! | `consumers` | one consumer per polled queue, its start, linger and cancel |
//! | `delivery` | message properties both ways, lapin delivery → [`Delivery`], ack/requeue |
//! | `supervisor` | reconnecting with backoff, connectivity, the idle-consumer reaper |
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
use crate::config::{BrokerTls, ExchangeType, SecretUrl, Settings};

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
    /// The history stream; `None`: no history.
    pub history: Option<HistoryOptions>,
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
            history: HistoryOptions::from_settings(s),
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
