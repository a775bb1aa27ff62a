//! lapin and deadpool errors mapped to [`BrokerError`] kinds — the table that
//! decides what a held poll waits through and what it reports.
//!
//! Must not: retry or reconnect itself; callers act on the kinds.

use lapin::ErrorKind as LapinKind;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

use crate::broker::{BrokerError, BrokerErrorKind};

/// Maps a lapin error. Soft (channel) errors keep their AMQP meaning; hard
/// (connection) errors — 320 CONNECTION_FORCED, 541 INTERNAL_ERROR and the
/// rest — and transport failures mean "the connection is gone, try again".
pub(crate) fn from_lapin(e: &lapin::Error) -> BrokerError {
    if let LapinKind::ProtocolError(amqp) = e.kind()
        && amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
        && amqp.get_message().as_str().contains(HOME_NODE_DOWN)
    {
        return BrokerError::new(BrokerErrorKind::NotFound, format!("{QUEUE_NODE_DOWN}: {e}"));
    }
    let kind = match e.kind() {
        LapinKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => BrokerErrorKind::NotFound,
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => BrokerErrorKind::AccessRefused,
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => {
                BrokerErrorKind::PreconditionFailed
            }
            AMQPErrorKind::Soft(_) => BrokerErrorKind::ChannelClosed,
            AMQPErrorKind::Hard(_) => BrokerErrorKind::Unavailable,
        },
        LapinKind::InvalidChannelState(..) | LapinKind::InvalidChannel(_) => {
            BrokerErrorKind::ChannelClosed
        }
        LapinKind::InvalidConnectionState(_)
        | LapinKind::IOError(_)
        | LapinKind::MissingHeartbeatError
        | LapinKind::ChannelsLimitReached => BrokerErrorKind::Unavailable,
        LapinKind::AuthProviderError(_) => BrokerErrorKind::AccessRefused,
        _ => BrokerErrorKind::Internal,
    };
    BrokerError::new(kind, e.to_string())
}

/// How RabbitMQ ends the NOT_FOUND of a classic queue whose node is down:
/// `home node 'rabbit@n2' of durable queue 'q' in vhost '/' is down or inaccessible`.
const HOME_NODE_DOWN: &str = "is down or inaccessible";

/// How [`from_lapin`] words that NOT_FOUND, for [`is_queue_node_down`].
const QUEUE_NODE_DOWN: &str = "the queue's node is down";

/// The queue exists but lives on a node that is down (a classic queue lives on
/// one node). It is `NotFound` all the same — the subscription is gone for its
/// client, which resumes on a new one — but not *missing*: the node may come
/// back with it, so it must not be remembered as missing.
pub(crate) fn is_queue_node_down(e: &BrokerError) -> bool {
    e.kind() == BrokerErrorKind::NotFound && e.to_string().contains(QUEUE_NODE_DOWN)
}

/// [`from_lapin`] for an operation on the named entities (queue, exchange): a
/// NOT_FOUND that names something else is not about this operation. lapin can
/// hand a closing channel's error to a channel opened in the same moment (seen
/// under heavy channel churn: a `channel.open` failing with another channel's
/// 404), so such an error means "this channel is unusable, try again", never
/// "your queue does not exist".
pub(crate) fn from_lapin_on(e: &lapin::Error, names: &[&str]) -> BrokerError {
    let mapped = from_lapin(e);
    if mapped.kind() != BrokerErrorKind::NotFound {
        return mapped;
    }
    let about_us = match quoted_name(&e.to_string()) {
        Some(name) => names.contains(&name.as_str()),
        None => !names.is_empty(),
    };
    if about_us {
        mapped
    } else {
        BrokerError::new(
            BrokerErrorKind::ChannelClosed,
            format!("a channel error that belongs to another operation: {e}"),
        )
    }
}

/// The name in RabbitMQ's `NOT_FOUND - no queue 'name' in vhost '/'` (or
/// `… of durable queue 'name' …`, or `no exchange 'name'`).
fn quoted_name(message: &str) -> Option<String> {
    let start = message
        .find("queue '")
        .map(|i| i + "queue '".len())
        .or_else(|| {
            message
                .find("no exchange '")
                .map(|i| i + "no exchange '".len())
        })?;
    let end = message[start..].find('\'')?;
    Some(message[start..start + end].to_owned())
}

/// Maps a pool error: a timeout or a failure to connect is "unavailable".
pub(crate) fn from_pool<E: std::fmt::Display>(
    e: deadpool::managed::PoolError<E>,
    what: &str,
) -> BrokerError {
    use deadpool::managed::PoolError;
    match e {
        PoolError::Timeout(t) => BrokerError::new(
            BrokerErrorKind::Unavailable,
            format!("{what}: timed out ({t:?})"),
        ),
        PoolError::Backend(inner) => {
            BrokerError::new(BrokerErrorKind::Unavailable, format!("{what}: {inner}"))
        }
        other => BrokerError::new(BrokerErrorKind::Unavailable, format!("{what}: {other}")),
    }
}

/// A pool whose backend error is already a [`BrokerError`] keeps its kind.
pub(crate) fn from_channel_pool(e: deadpool::managed::PoolError<BrokerError>) -> BrokerError {
    match e {
        deadpool::managed::PoolError::Backend(inner) => inner,
        other => from_pool(other, "channel pool"),
    }
}

/// An AMQP short string (≤ 255 bytes), refused as input otherwise instead of
/// panicking inside lapin.
pub(crate) fn short(s: &str) -> Result<lapin::types::ShortString, BrokerError> {
    lapin::types::ShortString::try_new(s).map_err(|_| {
        BrokerError::new(
            BrokerErrorKind::InvalidInput,
            "a name longer than 255 bytes",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_in_a_not_found_is_read() {
        assert_eq!(
            quoted_name("NOT_FOUND - no queue 'longpoll.subscribe.x' in vhost '/'").as_deref(),
            Some("longpoll.subscribe.x")
        );
        assert_eq!(
            quoted_name("NOT_FOUND - no exchange 'ex' in vhost '/'").as_deref(),
            Some("ex")
        );
        assert_eq!(
            quoted_name(
                "NOT_FOUND - home node 'rabbit@n2' of durable queue 'longpoll.subscribe.y' \
                 in vhost '/' is down or inaccessible"
            )
            .as_deref(),
            Some("longpoll.subscribe.y")
        );
        assert_eq!(quoted_name("something else"), None);
    }

    fn not_found(text: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
            AMQPSoftError::NOTFOUND.into(),
            text.into(),
        ))
        .into()
    }

    #[test]
    fn a_queue_whose_node_is_down_is_not_found_but_not_missing() {
        let down = from_lapin_on(
            &not_found(
                "NOT_FOUND - home node 'rabbit@n2' of durable queue 'q' in vhost '/' is down or inaccessible",
            ),
            &["q"],
        );
        assert_eq!(down.kind(), BrokerErrorKind::NotFound);
        assert!(is_queue_node_down(&down), "{down}");
        let missing = from_lapin_on(&not_found("NOT_FOUND - no queue 'q' in vhost '/'"), &["q"]);
        assert_eq!(missing.kind(), BrokerErrorKind::NotFound);
        assert!(!is_queue_node_down(&missing), "{missing}");
        // Another queue's node, on a channel shared by mistake: not ours.
        let other = from_lapin_on(
            &not_found(
                "NOT_FOUND - home node 'rabbit@n2' of durable queue 'other' in vhost '/' is down or inaccessible",
            ),
            &["q"],
        );
        assert_eq!(other.kind(), BrokerErrorKind::ChannelClosed);
    }
}
