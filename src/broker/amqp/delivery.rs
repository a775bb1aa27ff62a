//! What a message looks like on RabbitMQ, both ways: the properties an event
//! is published with, how a lapin delivery becomes our [`Delivery`] (message id,
//! publish time, trace headers), and how that delivery is settled
//! ([`AmqpSettle`]: ack, or reject with requeue, on the channel it came on).
//!
//! Must not: open channels, consume or declare anything — it only reads and
//! writes messages; which channel carries them is `consumers`' and `broker`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::errors::{from_lapin, short};
use crate::broker::{
    Acker, BrokerError, BrokerErrorKind, Delivery, OutgoingMessage, Settle, derive_message_id,
};
use crate::telemetry::Metrics;
use crate::telemetry::traces::SettleTrace;

/// Header carrying the publish time in milliseconds (AMQP's timestamp is in seconds).
pub const TIMESTAMP_MS_HEADER: &str = "timestamp_in_ms";

/// The AMQP properties `message` is published with: its message id, JSON,
/// non-persistent (as Launchpad published), the publish time in seconds (AMQP's
/// timestamp) and in milliseconds ([`TIMESTAMP_MS_HEADER`]), and its headers.
pub(crate) fn publish_properties(
    message: &OutgoingMessage,
) -> Result<BasicProperties, BrokerError> {
    let since_epoch = message
        .published_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut headers = FieldTable::default();
    headers.insert(
        TIMESTAMP_MS_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)),
    );
    for (k, v) in &message.headers {
        headers.insert(
            short(k)?,
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    Ok(BasicProperties::default()
        .with_message_id(short(&message.message_id)?)
        .with_content_type("application/json".into())
        .with_timestamp(since_epoch.as_secs())
        .with_delivery_mode(1) // non-persistent, as Launchpad published them
        .with_headers(headers))
}

/// A lapin delivery as the poll path sees it, settled on `channel` (the one it
/// came on). `window`: the prefetch window of the consumer it came from, when
/// that consumer may hold deliveries behind it (`consumers::ActiveConsumer`).
pub(crate) fn to_delivery(
    d: lapin::message::Delivery,
    channel: &Arc<lapin::Channel>,
    window: Option<&Arc<PrefetchWindow>>,
    metrics: &Arc<Metrics>,
) -> Delivery {
    let props = &d.properties;
    let message_id = message_id(props, &d.data);
    let mut published_at = props
        .timestamp()
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
    let mut trace_headers = Vec::new();
    if let Some(headers) = props.headers() {
        for (k, v) in headers.inner() {
            match (k.as_str(), v) {
                (TIMESTAMP_MS_HEADER, v) => {
                    if let Some(ms) = as_u64(v) {
                        published_at = Some(UNIX_EPOCH + Duration::from_millis(ms));
                    }
                }
                ("traceparent" | "tracestate", AMQPValue::LongString(s)) => {
                    trace_headers.push((k.to_string(), s.to_string()));
                }
                _ => {}
            }
        }
    }
    if d.redelivered {
        metrics.messages_redelivered.inc();
    }
    let acker = Acker::new(
        Box::new(AmqpSettle {
            channel: channel.clone(),
            delivery_tag: d.delivery_tag,
            window: window.cloned(),
        }),
        metrics.clone(),
    )
    .with_trace(SettleTrace::for_message(&message_id, &trace_headers));
    Delivery {
        body: Bytes::from(d.data),
        message_id,
        redelivered: d.redelivered,
        published_at,
        trace_headers,
        acker,
    }
}

/// A message's id as the poll answers it (`X-Longpoll-Message-Id`): its
/// `message_id`, or one derived from its body and identifying properties.
/// The history finds a resume's message with the same function.
pub(crate) fn message_id(props: &BasicProperties, body: &[u8]) -> Arc<str> {
    match props.message_id() {
        Some(id) => id.as_str().into(),
        None => {
            let ts = props.timestamp().map(|t| t.to_string());
            derive_message_id(
                body,
                &[
                    ts.as_deref(),
                    props.correlation_id().as_ref().map(|s| s.as_str()),
                    props.kind().as_ref().map(|s| s.as_str()),
                    props.content_type().as_ref().map(|s| s.as_str()),
                    props.app_id().as_ref().map(|s| s.as_str()),
                ],
            )
            .into()
        }
    }
}

fn as_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::LongLongInt(i) => u64::try_from(*i).ok(),
        AMQPValue::LongInt(i) => u64::try_from(*i).ok(),
        AMQPValue::LongUInt(i) => Some(u64::from(*i)),
        AMQPValue::Timestamp(t) => Some(*t),
        _ => None,
    }
}

/// Settles a delivery on the channel it came on, straight through the channel:
/// lapin's `Acker` goes through its internal RPC task, which spawns a future
/// per ack that then sends the frame — two more task wake-ups, often across
/// threads, for every message. The channel object is the delivery's own: once
/// closed it refuses, where an id could name a newer channel that never saw
/// this delivery tag.
struct AmqpSettle {
    channel: Arc<lapin::Channel>,
    delivery_tag: u64,
    window: Option<Arc<PrefetchWindow>>,
}

/// The deliveries a consumer with a prefetch above 1 holds behind an answer
/// come later in the queue than the answer. When an answer goes back to the
/// queue, they must go back too before anyone takes them, or the next poll
/// would show them first: the requeue marks the window spoiled, and the
/// consumer's next user cancels it and requeues what it holds (RabbitMQ puts
/// each message back at its place), then consumes afresh.
#[derive(Debug, Default)]
pub(crate) struct PrefetchWindow {
    spoiled: AtomicBool,
}

impl PrefetchWindow {
    pub(crate) fn spoil(&self) {
        self.spoiled.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_spoiled(&self) -> bool {
        self.spoiled.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        if !self.channel.status().connected() {
            return Err(BrokerError::new(
                BrokerErrorKind::ChannelClosed,
                "the delivery's channel closed before the ack; the broker requeued it",
            ));
        }
        self.channel
            .basic_ack(self.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| from_lapin(&e))
    }

    async fn requeue(&self) -> Result<(), BrokerError> {
        // Before the reject: a poll that takes a delivery after it sees the mark.
        if let Some(window) = &self.window {
            window.spoil();
        }
        if !self.channel.status().connected() {
            return Ok(()); // the broker requeued it when the channel closed
        }
        self.channel
            .basic_reject(self.delivery_tag, BasicRejectOptions { requeue: true })
            .await
            .map_err(|e| from_lapin(&e))
    }
}
