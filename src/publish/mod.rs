//! The publishing side, shared by the management API, the CLI and Rust
//! applications: create subscriptions, emit events.
//!
//! Mirrors Launchpad's server-side design (`LongPollEvent.emit`, `subscribe`,
//! the Storm life-cycle bridge, `capture_longpoll_emissions`):
//!
//! - [`Publisher`]: subscribe (or resume after a message) / add bindings /
//!   unsubscribe / emit, on any [`Broker`];
//! - [`LongPollEvent`]: an event with an `event_key`, emitted through a publisher;
//! - [`lifecycle`]: `longpoll.event.{table}.{id}` events with `"what"`;
//! - [`capture_emissions`]: records emissions inside a scope instead of publishing.
//!
//! Must not: depend on axum or know about HTTP.

pub mod capture;
pub mod lifecycle;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value};

pub use capture::{EventRecord, capture_emissions};
pub use lifecycle::{LifecycleEvent, ModelChange};

use crate::broker::{
    Broker, BrokerError, BrokerErrorKind, OutgoingMessage, new_message_id, validate_event_key,
};
use crate::telemetry::traces;

/// Most event keys one subscription request may carry.
pub const MAX_EVENT_KEYS: usize = 100;

/// A subscription: the queue a browser polls, and where it polls.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subscription {
    /// `{queue-prefix}{uuid-v4}`: the queue name, a bearer secret.
    pub key: String,
    /// The poll URI handed to the browser (`LP.cache.longpoll.uri`).
    pub uri: String,
}

/// A subscription made with [`Publisher::subscribe_resuming`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resumed {
    /// `{queue-prefix}{uuid-v4}`: the queue name, a bearer secret.
    pub key: String,
    /// Events replayed from the history ahead of the live ones.
    pub resumed: u64,
    /// The history does not reach back to the message: nothing was replayed,
    /// and the page should reload its view.
    pub gap: bool,
}

/// A resumed subscription with the URI the browser polls: what
/// `POST /api/v1/subscriptions` answers when given `resume_after`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumedSubscription {
    pub key: String,
    pub uri: String,
    pub resumed: u64,
    pub gap: bool,
}

/// Longest message id a resume accepts (ours are 36 bytes; a derived one 39).
pub const MAX_RESUME_AFTER_BYTES: usize = 128;

/// Why publishing-side input is refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// An event key no broker would take (or a wildcard where none is allowed).
    #[error("invalid event key: {0}")]
    InvalidEventKey(String),
    /// Wrong number of event keys.
    #[error("{0}")]
    InvalidEventKeys(String),
    /// An event payload that is not a JSON object.
    #[error("an event must be a JSON object")]
    NotAnObject,
    /// An event payload that is not JSON at all.
    #[error("invalid JSON: {0}")]
    MalformedJson(String),
    /// Not a subscription key of this gateway.
    #[error("unknown subscription")]
    UnknownSubscription,
    /// A `resume_after` that cannot be a message id.
    #[error("{0}")]
    InvalidResumeAfter(String),
    /// A resume asked of a gateway that keeps no history.
    #[error("resume_after needs the event history, which is off (--history-max-age 0)")]
    NoHistory,
    /// The broker failed or refused.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Subscribes and emits on a broker.
#[derive(Clone)]
pub struct Publisher {
    broker: Arc<dyn Broker>,
    queue_prefix: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("broker", &self.broker.kind())
            .field("queue_prefix", &self.queue_prefix)
            .finish()
    }
}

impl Publisher {
    pub fn new(broker: Arc<dyn Broker>, queue_prefix: impl Into<String>) -> Self {
        Publisher {
            broker,
            queue_prefix: queue_prefix.into(),
        }
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    fn check_keys(event_keys: &[String]) -> Result<(), PublishError> {
        if event_keys.is_empty() || event_keys.len() > MAX_EVENT_KEYS {
            return Err(PublishError::InvalidEventKeys(format!(
                "event_keys must hold 1 to {MAX_EVENT_KEYS} keys"
            )));
        }
        for key in event_keys {
            validate_event_key(key, true).map_err(PublishError::InvalidEventKey)?;
        }
        Ok(())
    }

    /// Is this a key this gateway hands out (prefix, length, characters)?
    pub fn is_subscription_key(&self, key: &str) -> bool {
        crate::longpoll::QueueRules::new(self.queue_prefix.clone()).accepts(key)
    }

    /// Creates a subscription queue bound to each event key; returns its key.
    pub async fn subscribe(&self, event_keys: &[String]) -> Result<String, PublishError> {
        Self::check_keys(event_keys)?;
        // uuid v4 draws 122 bits from the OS CSPRNG.
        let key = format!("{}{}", self.queue_prefix, uuid::Uuid::new_v4());
        self.broker.declare_subscription(&key, event_keys).await?;
        Ok(key)
    }

    /// Creates a subscription queue bound to each event key that first gets,
    /// in order and without duplicates, every retained event for those keys
    /// published after the message `after` (the last one the page received),
    /// then the live ones. When the history no longer reaches back to that
    /// message, nothing is replayed and `gap` is true: the page should
    /// reload its view.
    ///
    /// ```
    /// use longpoll_gateway::publish::Publisher;
    /// use longpoll_gateway::broker::{Broker, MemoryBroker, memory::MemoryOptions};
    /// use longpoll_gateway::telemetry::Metrics;
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let broker = Arc::new(MemoryBroker::new(MemoryOptions::default(), Arc::new(Metrics::new())));
    /// let publisher = Publisher::new(broker.clone(), "longpoll.subscribe.");
    /// let keys = ["longpoll.event.bug.1".to_owned()];
    /// let last_seen = publisher.emit("longpoll.event.bug.1", Default::default()).await.unwrap();
    /// let missed = publisher.emit("longpoll.event.bug.1", Default::default()).await.unwrap();
    ///
    /// // The page's subscription was lost; it last received `last_seen`.
    /// let resumed = publisher.subscribe_resuming(&keys, &last_seen).await.unwrap();
    /// assert_eq!((resumed.resumed, resumed.gap), (1, false));
    /// let delivery = broker.next_message(&resumed.key).await.unwrap();
    /// assert_eq!(&*delivery.message_id, missed.as_str());
    ///
    /// // An id the history does not hold: a gap, nothing replayed.
    /// let unknown = publisher.subscribe_resuming(&keys, "no-such-message").await.unwrap();
    /// assert_eq!((unknown.resumed, unknown.gap), (0, true));
    /// # }
    /// ```
    pub async fn subscribe_resuming(
        &self,
        event_keys: &[String],
        after: &str,
    ) -> Result<Resumed, PublishError> {
        Self::check_keys(event_keys)?;
        check_resume_after(after)?;
        if !self.broker.keeps_history() {
            return Err(PublishError::NoHistory);
        }
        let key = format!("{}{}", self.queue_prefix, uuid::Uuid::new_v4());
        let outcome = self
            .broker
            .resume_subscription(&key, event_keys, after)
            .await?;
        Ok(Resumed {
            key,
            resumed: outcome.resumed,
            gap: outcome.gap,
        })
    }

    /// Binds an existing subscription to more event keys.
    pub async fn add_bindings(&self, key: &str, event_keys: &[String]) -> Result<(), PublishError> {
        if !self.is_subscription_key(key) {
            return Err(PublishError::UnknownSubscription);
        }
        Self::check_keys(event_keys)?;
        self.broker
            .add_bindings(key, event_keys)
            .await
            .map_err(not_found_is_unknown)
    }

    /// Deletes a subscription.
    pub async fn unsubscribe(&self, key: &str) -> Result<(), PublishError> {
        if !self.is_subscription_key(key) {
            return Err(PublishError::UnknownSubscription);
        }
        self.broker
            .delete_subscription(key)
            .await
            .map_err(not_found_is_unknown)
    }

    /// Emits an event: publishes `payload` plus `"event_key"` under `event_key`,
    /// with a fresh message id, and returns that id once the broker confirmed.
    /// Inside [`capture_emissions`] the event is recorded instead of published.
    pub async fn emit(
        &self,
        event_key: &str,
        payload: Map<String, Value>,
    ) -> Result<String, PublishError> {
        self.emit_with_headers(event_key, payload, Vec::new()).await
    }

    /// [`Publisher::emit`] with extra message headers (trace context).
    pub async fn emit_with_headers(
        &self,
        event_key: &str,
        payload: Map<String, Value>,
        headers: Vec<(String, String)>,
    ) -> Result<String, PublishError> {
        validate_event_key(event_key, false).map_err(PublishError::InvalidEventKey)?;
        if capture::record(event_key, &payload) {
            return Ok(new_message_id());
        }
        self.publish_body(event_key, event_body(event_key, payload), headers)
            .await
    }

    /// [`Publisher::emit`] for an event given as JSON text (the management
    /// API's request body): the body is checked to be one JSON object and
    /// published as [`event_body_from_json`] builds it.
    pub async fn emit_json(&self, event_key: &str, json: &[u8]) -> Result<String, PublishError> {
        let body = event_body_from_json(event_key, json)?;
        validate_event_key(event_key, false).map_err(PublishError::InvalidEventKey)?;
        if capture::capturing() {
            let Ok(Value::Object(payload)) = serde_json::from_slice(json) else {
                return Err(PublishError::NotAnObject);
            };
            return self.emit(event_key, payload).await;
        }
        self.publish_body(event_key, body, Vec::new()).await
    }

    /// Publishes a finished body with a fresh message id; returns the id once
    /// the broker confirmed.
    async fn publish_body(
        &self,
        event_key: &str,
        body: Bytes,
        mut headers: Vec<(String, String)>,
    ) -> Result<String, PublishError> {
        // Time-ordered (UUIDv7): a resume after this message starts reading
        // the history near its time.
        let message_id = new_message_id();
        // The message carries the publisher's trace context, so the poll that
        // delivers it continues the same trace.
        let span = traces::publish_context(event_key, &message_id);
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        {
            traces::inject(&span.cx, &mut headers);
        }
        let result = self
            .broker
            .publish(OutgoingMessage {
                routing_key: event_key.to_owned(),
                body,
                message_id: message_id.clone(),
                published_at: SystemTime::now(),
                headers,
            })
            .await;
        span.end(result.as_ref().err().map(|e| e.to_string()).as_deref());
        result?;
        Ok(message_id)
    }
}

/// A `resume_after`: 1 to [`MAX_RESUME_AFTER_BYTES`] bytes of printable ASCII.
fn check_resume_after(after: &str) -> Result<(), PublishError> {
    if after.is_empty()
        || after.len() > MAX_RESUME_AFTER_BYTES
        || !crate::config::is_printable_ascii(after)
    {
        return Err(PublishError::InvalidResumeAfter(format!(
            "resume_after must be a message id: 1 to {MAX_RESUME_AFTER_BYTES} bytes of printable ASCII"
        )));
    }
    Ok(())
}

fn not_found_is_unknown(e: BrokerError) -> PublishError {
    if e.kind() == BrokerErrorKind::NotFound {
        PublishError::UnknownSubscription
    } else {
        PublishError::Broker(e)
    }
}

/// The published body: the payload with `"event_key"` set, as Launchpad's
/// `LongPollEvent.emit` built it.
pub fn event_body(event_key: &str, mut payload: Map<String, Value>) -> Bytes {
    payload.insert("event_key".into(), Value::String(event_key.to_owned()));
    // Serialising a map of JSON values cannot fail.
    Bytes::from(serde_json::to_vec(&Value::Object(payload)).unwrap_or_default())
}

/// The published body from an event's JSON text: what [`event_body`] makes of
/// the parsed object, without parsing it into a map and writing it out again.
/// The object's text is kept as it came and `"event_key"` is appended (last, as
/// Launchpad's `emit` added it). An object that has an `"event_key"` member
/// already goes the map way, so that the key set here replaces it.
pub fn event_body_from_json(event_key: &str, json: &[u8]) -> Result<Bytes, PublishError> {
    let scan: ObjectScan = serde_json::from_slice(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => PublishError::NotAnObject,
        _ => PublishError::MalformedJson(e.to_string()),
    })?;
    if scan.has_event_key {
        let Ok(Value::Object(payload)) = serde_json::from_slice(json) else {
            return Err(PublishError::NotAnObject);
        };
        return Ok(event_body(event_key, payload));
    }
    // Valid JSON whose value is an object ends with its closing brace.
    let Some(open) = json.trim_ascii_end().strip_suffix(b"}") else {
        return Err(PublishError::NotAnObject);
    };
    let mut body = Vec::with_capacity(open.len() + event_key.len() + 16);
    body.extend_from_slice(open);
    if scan.members > 0 {
        body.push(b',');
    }
    body.extend_from_slice(b"\"event_key\":");
    // A string always serialises.
    serde_json::to_writer(&mut body, event_key)
        .map_err(|e| PublishError::MalformedJson(e.to_string()))?;
    body.push(b'}');
    Ok(Bytes::from(body))
}

/// What [`event_body_from_json`] needs to know of an object: how many members
/// it has and whether one is `"event_key"`. Values are skipped, not built.
struct ObjectScan {
    members: usize,
    has_event_key: bool,
}

impl<'de> serde::Deserialize<'de> for ObjectScan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = ObjectScan;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ObjectScan, A::Error> {
                let mut scan = ObjectScan {
                    members: 0,
                    has_event_key: false,
                };
                while let Some(is_event_key) = map.next_key_seed(IsEventKey)? {
                    scan.members += 1;
                    scan.has_event_key |= is_event_key;
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(scan)
            }
        }
        d.deserialize_map(Members)
    }
}

/// A member name, compared with `"event_key"` without being kept.
struct IsEventKey;

impl<'de> serde::de::DeserializeSeed<'de> for IsEventKey {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for IsEventKey {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<bool, E> {
        Ok(name == "event_key")
    }
}

/// An event that can be emitted, as Launchpad's `ILongPollEvent`: a stable,
/// predictable key to which subscription queues are bound.
///
/// ```
/// use longpoll_gateway::publish::{LongPollEvent, Publisher};
/// use longpoll_gateway::broker::{Broker, MemoryBroker, memory::MemoryOptions};
/// use longpoll_gateway::telemetry::Metrics;
/// use std::sync::Arc;
///
/// struct MergeProposalUpdated { id: u64 }
///
/// impl LongPollEvent for MergeProposalUpdated {
///     fn event_key(&self) -> String {
///         format!("longpoll.event.branchmergeproposal.{}", self.id)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let broker = Arc::new(MemoryBroker::new(MemoryOptions::default(), Arc::new(Metrics::new())));
/// let publisher = Publisher::new(broker.clone(), "longpoll.subscribe.");
/// let event = MergeProposalUpdated { id: 1234 };
/// let key = publisher.subscribe(&[event.event_key()]).await.unwrap();
///
/// event.emit(&publisher, serde_json::json!({"diff": "updated"})).await.unwrap();
///
/// let delivery = broker.next_message(&key).await.unwrap();
/// let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
/// assert_eq!(body["event_key"], "longpoll.event.branchmergeproposal.1234");
/// assert_eq!(body["diff"], "updated");
/// # }
/// ```
#[async_trait::async_trait]
pub trait LongPollEvent: Send + Sync {
    /// The key events are emitted with, e.g. `longpoll.event.branchmergeproposal.1234`.
    fn event_key(&self) -> String;

    /// Emits `payload` (a JSON object, or `null` for none) with this event's
    /// key and returns the message id. Inside [`capture_emissions`] the
    /// emission is recorded instead of published.
    async fn emit(&self, publisher: &Publisher, payload: Value) -> Result<String, PublishError> {
        let payload = match payload {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => return Err(PublishError::NotAnObject),
        };
        publisher.emit(&self.event_key(), payload).await
    }
}

impl Publisher {
    /// Subscribes to events, as Launchpad's `subscribe(event)`: one queue bound
    /// to every event's key, returned with the URI the browser polls.
    pub async fn subscribe_events(
        &self,
        events: &[&dyn LongPollEvent],
        uri: &str,
    ) -> Result<Subscription, PublishError> {
        let keys: Vec<String> = events.iter().map(|e| e.event_key()).collect();
        let key = self.subscribe(&keys).await?;
        Ok(Subscription {
            key,
            uri: uri.to_owned(),
        })
    }
}

impl Publisher {
    /// [`Publisher::subscribe_events`] resuming after the message `after`, as
    /// [`Publisher::subscribe_resuming`] does.
    ///
    /// ```
    /// use longpoll_gateway::publish::{LongPollEvent, Publisher};
    /// use longpoll_gateway::broker::{MemoryBroker, memory::MemoryOptions};
    /// use longpoll_gateway::telemetry::Metrics;
    /// use std::sync::Arc;
    ///
    /// struct BugChanged(u64);
    /// impl LongPollEvent for BugChanged {
    ///     fn event_key(&self) -> String { format!("longpoll.event.bug.{}", self.0) }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let broker = Arc::new(MemoryBroker::new(MemoryOptions::default(), Arc::new(Metrics::new())));
    /// let publisher = Publisher::new(broker, "longpoll.subscribe.");
    /// let last_seen = BugChanged(7).emit(&publisher, serde_json::json!({"n": 1})).await.unwrap();
    /// BugChanged(7).emit(&publisher, serde_json::json!({"n": 2})).await.unwrap();
    /// BugChanged(8).emit(&publisher, serde_json::json!({"n": 3})).await.unwrap();
    ///
    /// let sub = publisher
    ///     .subscribe_events_resuming(&[&BugChanged(7)], "https://example.com/longpoll/", &last_seen)
    ///     .await
    ///     .unwrap();
    /// assert_eq!((sub.resumed, sub.gap), (1, false), "bug 8 is not subscribed to");
    /// assert_eq!(sub.uri, "https://example.com/longpoll/");
    /// # }
    /// ```
    pub async fn subscribe_events_resuming(
        &self,
        events: &[&dyn LongPollEvent],
        uri: &str,
        after: &str,
    ) -> Result<ResumedSubscription, PublishError> {
        let keys: Vec<String> = events.iter().map(|e| e.event_key()).collect();
        let resumed = self.subscribe_resuming(&keys, after).await?;
        Ok(ResumedSubscription {
            key: resumed.key,
            uri: uri.to_owned(),
            resumed: resumed.resumed,
            gap: resumed.gap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resume_after_must_look_like_a_message_id() {
        assert!(check_resume_after("0190c1f2-7a3b-7c4d-8e5f-0123456789ab").is_ok());
        assert!(check_resume_after("sha256-00112233445566778899aabbccddeeff").is_ok());
        assert!(check_resume_after(&"x".repeat(MAX_RESUME_AFTER_BYTES)).is_ok());
        for bad in [
            "",
            "has space",
            "é",
            &"x".repeat(MAX_RESUME_AFTER_BYTES + 1),
        ] {
            assert!(
                matches!(
                    check_resume_after(bad),
                    Err(PublishError::InvalidResumeAfter(_))
                ),
                "{bad:?}"
            );
        }
    }

    fn from_text(text: &str) -> Result<Value, PublishError> {
        let body = event_body_from_json("longpoll.event.k", text.as_bytes())?;
        Ok(serde_json::from_slice(&body).expect("the published body is JSON"))
    }

    #[test]
    fn an_event_text_is_kept_as_it_came_with_event_key_appended() {
        let body = event_body_from_json("longpoll.event.k", br#"{"b": 1, "a": [1, {"c": null}]}"#)
            .unwrap();
        assert_eq!(
            &body[..],
            br#"{"b": 1, "a": [1, {"c": null}],"event_key":"longpoll.event.k"}"#
        );
    }

    #[test]
    fn an_event_text_gives_the_same_object_as_the_map_way() {
        for text in [
            r#"{"b": 1, "a": "x\"y", "n": {"event_key": "inner"}}"#,
            "{}",
            " \n{ \t}\r\n ",
            r#"{"event_key": "set by the caller", "x": 1}"#,
            r#"{"event\u005fkey": "escaped name", "x": 1}"#,
        ] {
            let Value::Object(map) = serde_json::from_str::<Value>(text).unwrap() else {
                panic!("{text}")
            };
            let by_map: Value =
                serde_json::from_slice(&event_body("longpoll.event.k", map)).unwrap();
            assert_eq!(from_text(text).unwrap(), by_map, "{text}");
        }
        assert_eq!(
            from_text(r#"{"event_key": "other"}"#).unwrap(),
            json!({"event_key": "longpoll.event.k"})
        );
    }

    #[test]
    fn an_event_text_that_is_not_one_json_object_is_refused() {
        for text in ["[1, 2]", "\"s\"", "3", "null"] {
            assert!(
                matches!(from_text(text), Err(PublishError::NotAnObject)),
                "{text}"
            );
        }
        for text in ["", "{\"a\":", "{} x", "{\"a\" 1}", "{'a': 1}"] {
            assert!(
                matches!(from_text(text), Err(PublishError::MalformedJson(_))),
                "{text}"
            );
        }
    }
}
