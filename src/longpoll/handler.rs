//! The poll handler: the innermost service of the poll stack, from a
//! [`PollContext`] to a [`PollOutcome`] — wait on the broker for the poll's
//! message.
//!
//! Owns: the txlongpoll conventions applied to each message (`error` → 400,
//! `original-uuid` equal to the polling uuid → skipped) and rule 8 of the
//! sequence contract (docs/protocol.md): a redelivery of a message last
//! answered for this uuid is acked and skipped.
//!
//! With `max` > 1 the answer is every message already waiting, up to `max`,
//! as one JSON array; the conventions apply to each message. An array ends
//! before a message that must be answered alone, exactly as without `max`:
//! an error message (400 with its body) or a body that is not JSON (which
//! cannot be an array's element; 200 with its body). That message and those
//! after it go back to the queue, to come first in the next poll; when it is
//! the first, it is answered alone now.
//! Must not: speak AMQP, parse the query (the stack's edge did, once), or keep
//! state between polls (the sequence layer does).

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use memchr::memmem::Finder;
use tracing::Instrument;

use super::context::{Asked, PollContext};
use super::outcome::{Answer, DeliveredAnswer, MessageIds, PollOutcome};
use super::request::PollRequest;
use crate::broker::{Acker, Broker, BrokerError, BrokerErrorKind, Delivery};
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
                    outcome = self.wait(&request, last_answered, trace.as_ref()) => outcome,
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

/// Records the wait on the broker in the poll's span (when spans are exported).
fn consume_step<T>(
    trace: Option<&PollTrace>,
    started: SystemTime,
    result: &Result<T, BrokerError>,
) {
    if let Some(t) = trace {
        let error = result.as_ref().err().map(|e| e.to_string());
        t.step("longpoll.consume", started, error.as_deref());
    }
}

impl PollHandler {
    /// One message (txlongpoll's poll), or up to `max` (boxed: a held poll's
    /// future stays sized for the one-message wait).
    async fn wait(
        &self,
        request: &PollRequest,
        last_answered: Option<MessageIds>,
        trace: Option<&PollTrace>,
    ) -> PollOutcome {
        if request.max > 1 {
            Box::pin(self.wait_for_messages(request, last_answered, trace)).await
        } else {
            self.wait_for_message(request, last_answered, trace).await
        }
    }

    async fn wait_for_message(
        &self,
        request: &PollRequest,
        last_answered: Option<MessageIds>,
        trace: Option<&PollTrace>,
    ) -> PollOutcome {
        loop {
            let consume_started = SystemTime::now();
            let result = self.broker.next_message(&request.uuid).await;
            consume_step(trace, consume_started, &result);
            let delivery: Delivery = match result {
                Ok(d) => d,
                Err(e) => return broker_failed(e),
            };
            let flags = inspect_body(&delivery.body, &request.uuid);
            if self.skips(request, last_answered.as_ref(), &delivery, &flags) {
                // Settled on the side: with it awaited here, every held poll's
                // future would be sized for this rare path. A broker that has not
                // seen the ack yet delivers nothing more (prefetch 1), and one that
                // requeues it on a lost channel redelivers it, to be skipped again.
                settle_aside(delivery.acker, Settling::Ack);
                continue;
            }
            self.delivered(&delivery, trace);
            let answer = Arc::new(Answer {
                sequence: request.sequence,
                body: delivery.body,
                ids: MessageIds::One(delivery.message_id),
                is_error: flags.is_error,
            });
            return PollOutcome::Message(DeliveredAnswer::new(answer, delivery.acker));
        }
    }

    /// A poll with `max` > 1: the messages waiting, up to `max`, as one
    /// JSON array (module docs: which messages end it).
    async fn wait_for_messages(
        &self,
        request: &PollRequest,
        last_answered: Option<MessageIds>,
        trace: Option<&PollTrace>,
    ) -> PollOutcome {
        loop {
            let consume_started = SystemTime::now();
            let result = self
                .broker
                .next_messages(&request.uuid, usize::from(request.max))
                .await;
            consume_step(trace, consume_started, &result);
            let deliveries = match result {
                Ok(d) => d,
                Err(e) => return broker_failed(e),
            };
            let mut kept: Vec<Delivery> = Vec::with_capacity(deliveries.len());
            let mut alone: Option<(Delivery, bool)> = None;
            let mut back: Vec<Acker> = Vec::new();
            let mut rest = deliveries.into_iter();
            for delivery in rest.by_ref() {
                let flags = inspect_body(&delivery.body, &request.uuid);
                if self.skips(request, last_answered.as_ref(), &delivery, &flags) {
                    settle_aside(delivery.acker, Settling::Ack);
                    continue;
                }
                if flags.is_error || !is_json(&delivery.body) {
                    if kept.is_empty() {
                        alone = Some((delivery, flags.is_error));
                    } else {
                        // Back to its place, to come first in the next poll.
                        back.push(delivery.acker);
                    }
                    break;
                }
                kept.push(delivery);
            }
            // What came after it goes back too: one requeue, in queue order, so
            // that a consumer free to take the queue's head gets them in order.
            back.extend(rest.map(|d| d.acker));
            if let Some(back) = Acker::join(back) {
                settle_aside(back, Settling::Requeue);
            }
            if let Some((delivery, is_error)) = alone {
                // As without `max`: one message, its body as it is.
                self.delivered(&delivery, trace);
                let answer = Arc::new(Answer {
                    sequence: request.sequence,
                    body: delivery.body,
                    ids: MessageIds::One(delivery.message_id),
                    is_error,
                });
                return PollOutcome::Message(DeliveredAnswer::new(answer, delivery.acker));
            }
            let Some(first) = kept.first() else {
                continue; // every one skipped: wait for the next
            };
            self.delivered(first, trace);
            for more in &kept[1..] {
                self.count_delivered(more);
            }
            let mut body =
                Vec::with_capacity(2 + kept.iter().map(|d| d.body.len() + 1).sum::<usize>());
            let mut ids = Vec::with_capacity(kept.len());
            let mut ackers = Vec::with_capacity(kept.len());
            body.push(b'[');
            for (i, delivery) in kept.into_iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&delivery.body);
                ids.push(delivery.message_id);
                ackers.push(delivery.acker);
            }
            body.push(b']');
            let Some(acker) = Acker::join(ackers) else {
                continue;
            };
            let answer = Arc::new(Answer {
                sequence: request.sequence,
                body: body.into(),
                ids: MessageIds::Several(ids.into()),
                is_error: false,
            });
            return PollOutcome::Message(DeliveredAnswer::new(answer, acker));
        }
    }

    /// Should this delivery be acked and skipped (contract point 8, `seen`,
    /// `original-uuid`)? Counts it when so.
    fn skips(
        &self,
        request: &PollRequest,
        last_answered: Option<&MessageIds>,
        delivery: &Delivery,
        flags: &BodyFlags,
    ) -> bool {
        let client_has_it =
            request.client_has(last_answered, &delivery.message_id, delivery.redelivered);
        if client_has_it || flags.from_this_client {
            tracing::debug!(
                client_has_it,
                original_uuid = flags.from_this_client,
                "skipping a message"
            );
            self.metrics.messages_skipped.inc();
            return true;
        }
        false
    }

    /// A message goes into the answer: the poll's trace and the metrics.
    fn delivered(&self, delivery: &Delivery, trace: Option<&PollTrace>) {
        if let Some(t) = trace {
            t.delivered(
                &delivery.message_id,
                delivery.redelivered,
                &delivery.trace_headers,
                delivery.acker.span_parent(),
            );
        }
        self.count_delivered(delivery);
    }

    fn count_delivered(&self, delivery: &Delivery) {
        self.metrics.messages_delivered.inc();
        if let Some(published) = delivery.published_at
            && let Ok(latency) = SystemTime::now().duration_since(published)
        {
            self.metrics
                .delivery_latency_seconds
                .observe(latency.as_secs_f64());
        }
    }
}

/// The poll's answer when the broker failed it: 404 for a queue that is not
/// there, 503 for anything else.
fn broker_failed(e: BrokerError) -> PollOutcome {
    if e.kind() == BrokerErrorKind::NotFound {
        return PollOutcome::NotFound;
    }
    tracing::warn!(error = %e, "poll failed on the broker");
    PollOutcome::Unavailable {
        retry_after_secs: 1,
    }
}

#[derive(Clone, Copy, Debug)]
enum Settling {
    Ack,
    Requeue,
}

/// Settles messages no answer carries, on the side.
fn settle_aside(acker: Acker, how: Settling) {
    tokio::spawn(async move {
        let result = match how {
            Settling::Ack => acker.ack().await,
            Settling::Requeue => acker.requeue().await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, ?how, "settling a message the answer leaves out failed");
        }
    });
}

/// Can the body be an element of a JSON array? Bodies are JSON by the
/// txlongpoll convention, but a publisher on the broker could send anything.
fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{MemoryBroker, OutgoingMessage, memory::MemoryOptions};
    use crate::longpoll::QueueRules;

    const KEY: &str = "longpoll.subscribe.k";

    async fn handler_with(bodies: &[&str]) -> (Arc<PollHandler>, MemoryBroker) {
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        let broker = MemoryBroker::new(MemoryOptions::default(), metrics.clone());
        broker
            .declare_subscription(KEY, &["e".into()])
            .await
            .unwrap();
        for (i, body) in bodies.iter().enumerate() {
            broker
                .publish(OutgoingMessage {
                    routing_key: "e".into(),
                    body: bytes::Bytes::from((*body).to_owned()),
                    message_id: format!("m{}", i + 1),
                    published_at: SystemTime::now(),
                    headers: vec![],
                })
                .await
                .unwrap();
        }
        let handler = Arc::new(PollHandler {
            broker: Arc::new(broker.clone()),
            metrics,
            shutdown: Shutdown::new(),
        });
        (handler, broker)
    }

    fn ctx(query: &str, last_answered: Option<MessageIds>) -> PollContext {
        let mut ctx = PollContext::new(Some(query), &QueueRules::new("longpoll.subscribe."), None);
        ctx.last_answered = last_answered;
        ctx
    }

    fn answered(outcome: PollOutcome) -> (Arc<Answer>, Acker) {
        match outcome {
            PollOutcome::Message(mut d) => {
                let acker = d.take_acker().expect("an acker");
                (d.answer.clone(), acker)
            }
            other => panic!("not a message: {other:?}"),
        }
    }

    #[tokio::test]
    async fn rule_8_skips_a_redelivery_of_any_message_of_the_last_answer() {
        let (handler, broker) = handler_with(&["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]).await;
        let query = format!("uuid={KEY}&sequence=2&max=10");
        // The last answer held m1 and m2; they come again as redeliveries.
        drop(broker.next_messages(KEY, 2).await.unwrap());
        let last = MessageIds::Several(["m1".into(), "m2".into()].into());
        let (answer, acker) = answered(handler.clone().handle(ctx(&query, Some(last))).await);
        assert_eq!(answer.ids, MessageIds::Several(["m3".into()].into()));
        assert_eq!(&answer.body[..], b"[{\"n\":3}]");
        assert_eq!(handler.metrics.messages_skipped.get(), 2);
        acker.ack().await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await; // the skipped ones are acked on the side
        }
        let stats = broker.queue_stats(KEY).await.unwrap();
        assert_eq!(
            (stats.ready, stats.unacked),
            (0, Some(0)),
            "the skipped ones acked"
        );
    }

    #[tokio::test]
    async fn a_seen_list_leaves_its_messages_out_of_the_array() {
        let (handler, _broker) = handler_with(&["{}", "{}", "{}"]).await;
        let query = format!("uuid={KEY}&sequence=1&max=3&seen=m2");
        let (answer, _acker) = answered(handler.handle(ctx(&query, None)).await);
        assert_eq!(
            answer.ids,
            MessageIds::Several(["m1".into(), "m3".into()].into())
        );
    }

    #[tokio::test]
    async fn messages_after_one_answered_alone_go_back_in_order() {
        let (handler, broker) = handler_with(&["{\"error\":1}", "{\"n\":2}", "{\"n\":3}"]).await;
        let query = format!("uuid={KEY}&sequence=1&max=3");
        let (answer, acker) = answered(handler.clone().handle(ctx(&query, None)).await);
        assert!(answer.is_error);
        assert_eq!(answer.ids, MessageIds::One("m1".into()));
        assert_eq!(&answer.body[..], b"{\"error\":1}", "its body as it is");
        acker.ack().await.unwrap();
        let query = format!("uuid={KEY}&sequence=2&max=3");
        let (answer, _acker) = answered(handler.handle(ctx(&query, None)).await);
        assert_eq!(
            answer.ids,
            MessageIds::Several(["m2".into(), "m3".into()].into())
        );
        assert_eq!(broker.queue_stats(KEY).await.unwrap().unacked, Some(2));
    }

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
