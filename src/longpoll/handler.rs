//! The poll handler: the innermost service of the poll stack, from a
//! [`PollContext`] to a [`PollOutcome`] — wait on the broker for the poll's
//! message.
//!
//! Owns: the txlongpoll conventions applied to each message (`error` → 400,
//! `original-uuid` equal to the polling uuid → skipped) and rule 8 of the
//! sequence contract (docs/protocol.md): a redelivery of the message last
//! answered for this uuid is acked and skipped.
//! Must not: speak AMQP, parse the query (the stack's edge did, once), or keep
//! state between polls (the sequence layer does).

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use memchr::memmem::Finder;
use tracing::Instrument;

use super::context::{Asked, PollContext};
use super::outcome::{Answer, DeliveredAnswer, PollOutcome};
use super::request::PollRequest;
use crate::broker::{Broker, BrokerErrorKind, Delivery};
use crate::shutdown::Shutdown;
use crate::telemetry::traces::PollTrace;
use crate::telemetry::{Metrics, key_hash};

/// What the handler needs, shared by every poll (one `Arc` cloned per poll,
/// not each of its parts).
#[derive(Clone)]
pub struct PollHandler {
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

impl PollHandler {
    /// Handles one poll: an answer the query decided is returned as it is; a
    /// poll waits for its queue's next message (or the drain).
    ///
    /// The context is taken apart before the wait: a held poll's future keeps
    /// the request's fields it needs, not the context.
    pub fn handle(
        self: Arc<Self>,
        ctx: PollContext,
    ) -> impl Future<Output = PollOutcome> + Send + 'static {
        use futures_util::future::Either;
        let PollContext {
            asked,
            last_answered,
            trace,
        } = ctx;
        let request = match asked {
            Asked::Poll(request) => request,
            Asked::Answer(outcome) => return Either::Left(std::future::ready(outcome)),
        };
        if self.shutdown.is_draining() {
            return Either::Left(std::future::ready(PollOutcome::Unavailable {
                retry_after_secs: 0,
            }));
        }
        let span = tracing::debug_span!(
            "poll.wait",
            key_hash = %key_hash(&request.uuid),
            sequence = request.sequence
        );
        Either::Right(
            async move {
                tokio::select! {
                    outcome = self.wait_for_message(&request, last_answered, trace.as_ref()) => outcome,
                    _ = self.shutdown.draining() => PollOutcome::Unavailable { retry_after_secs: 0 },
                }
            }
            .instrument(span),
        )
    }
}

/// What the body says about how to treat the message.
#[derive(Debug, Default, PartialEq, Eq)]
struct BodyFlags {
    is_error: bool,
    from_this_client: bool,
}

/// What a body that could hold the `error` or `original-uuid` key contains:
/// either name, or a `\u` escape (which could spell one). The searchers are
/// built once: `memmem::find` builds one per call, which cost more than the
/// search itself (~2% of the CPU of a delivery).
static BODY_MARKERS: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
    [
        Finder::new(b"\"error\""),
        Finder::new(b"\"original-uuid\""),
        Finder::new(b"\\u"),
    ]
});

/// Looks for the `error` and `original-uuid` keys. Parsing every body would cost
/// on the hot path, so only bodies that could hold those keys (including as
/// `\u`-escaped names) are parsed.
fn inspect_body(body: &[u8], uuid: &str) -> BodyFlags {
    let maybe = BODY_MARKERS.iter().any(|m| m.find(body).is_some());
    if !maybe {
        return BodyFlags::default();
    }
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(object) => BodyFlags {
            is_error: object.contains_key("error"),
            from_this_client: object
                .get("original-uuid")
                .and_then(|v| v.as_str())
                .is_some_and(|v| v == uuid),
        },
        Err(_) => BodyFlags::default(),
    }
}

impl PollHandler {
    async fn wait_for_message(
        &self,
        request: &PollRequest,
        last_answered: Option<Arc<str>>,
        trace: Option<&PollTrace>,
    ) -> PollOutcome {
        loop {
            let consume_started = SystemTime::now();
            let result = self.broker.next_message(&request.uuid).await;
            if let Some(t) = trace {
                let error = result.as_ref().err().map(|e| e.to_string());
                t.step("longpoll.consume", consume_started, error.as_deref());
            }
            let delivery: Delivery = match result {
                Ok(d) => d,
                Err(e) if e.kind() == BrokerErrorKind::NotFound => return PollOutcome::NotFound,
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed on the broker");
                    return PollOutcome::Unavailable {
                        retry_after_secs: 1,
                    };
                }
            };
            let client_has_it = request.client_has(
                last_answered.as_deref(),
                &delivery.message_id,
                delivery.redelivered,
            );
            let flags = inspect_body(&delivery.body, &request.uuid);
            if client_has_it || flags.from_this_client {
                tracing::debug!(
                    client_has_it,
                    original_uuid = flags.from_this_client,
                    "skipping a message"
                );
                self.metrics.messages_skipped.inc();
                // Settled on the side: with it awaited here, every held poll's
                // future would be sized for this rare path. A broker that has not
                // seen the ack yet delivers nothing more (prefetch 1), and one that
                // requeues it on a lost channel redelivers it, to be skipped again.
                let acker = delivery.acker;
                tokio::spawn(async move {
                    if let Err(e) = acker.ack().await {
                        tracing::debug!(error = %e, "ack of a skipped message failed");
                    }
                });
                continue;
            }
            if let Some(t) = trace {
                t.delivered(
                    &delivery.message_id,
                    delivery.redelivered,
                    &delivery.trace_headers,
                    delivery.acker.span_parent(),
                );
            }
            self.metrics.messages_delivered.inc();
            if let Some(published) = delivery.published_at
                && let Ok(latency) = SystemTime::now().duration_since(published)
            {
                self.metrics
                    .delivery_latency_seconds
                    .observe(latency.as_secs_f64());
            }
            let answer = Arc::new(Answer {
                sequence: request.sequence,
                body: delivery.body,
                message_id: delivery.message_id,
                is_error: flags.is_error,
            });
            return PollOutcome::Message(DeliveredAnswer::new(answer, delivery.acker));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions_are_read_from_the_body() {
        let uuid = "longpoll.subscribe.x";
        assert_eq!(inspect_body(b"{\"a\":1}", uuid), BodyFlags::default());
        assert!(inspect_body(b"{\"error\":\"boom\"}", uuid).is_error);
        assert!(inspect_body(b"{\"\\u0065rror\":1}", uuid).is_error);
        assert!(
            inspect_body(b"{\"original-uuid\":\"longpoll.subscribe.x\"}", uuid).from_this_client
        );
        assert!(
            !inspect_body(b"{\"original-uuid\":\"longpoll.subscribe.y\"}", uuid).from_this_client
        );
        // A value "error" is not a key.
        assert!(!inspect_body(b"{\"what\":\"error\"}", uuid).is_error);
        assert!(!inspect_body(b"[\"error\"]", uuid).is_error);
        assert!(!inspect_body(b"not json \"error\"", uuid).is_error);
    }
}
