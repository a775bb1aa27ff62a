//! Capturing emissions in tests, as Launchpad's `capture_longpoll_emissions`:
//! inside the scope, events are recorded instead of published.

use std::cell::RefCell;
use std::future::Future;

use serde_json::{Map, Value};

/// One recorded emission: the event key and the body that would have been
/// published (the payload with `"event_key"` added), as Launchpad's
/// `LongPollEventRecord`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub event_key: String,
    pub payload: Value,
}

impl EventRecord {
    /// A record as it is expected in a test: `payload` without the key, which is added.
    pub fn new(event_key: &str, payload: Value) -> Self {
        let mut map = match payload {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        map.insert("event_key".into(), Value::String(event_key.to_owned()));
        EventRecord {
            event_key: event_key.to_owned(),
            payload: Value::Object(map),
        }
    }
}

tokio::task_local! {
    static CAPTURED: RefCell<Vec<EventRecord>>;
}

/// Runs `scope`, recording every emission made inside it (by
/// [`super::Publisher::emit`] or [`super::LongPollEvent::emit`]) instead of
/// publishing it. Returns the scope's output and the records, in order.
///
/// ```
/// use longpoll_gateway::publish::{capture_emissions, EventRecord, Publisher};
/// use longpoll_gateway::broker::{MemoryBroker, memory::MemoryOptions};
/// use longpoll_gateway::telemetry::Metrics;
/// use serde_json::json;
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let broker = Arc::new(MemoryBroker::new(MemoryOptions::default(), Arc::new(Metrics::new())));
/// let publisher = Publisher::new(broker, "longpoll.subscribe.");
///
/// let ((), log) = capture_emissions(async {
///     let payload = json!({"something": "somedata"});
///     let serde_json::Value::Object(map) = payload else { unreachable!() };
///     publisher.emit("my-event-key", map).await.unwrap();
/// })
/// .await;
///
/// assert_eq!(log, vec![EventRecord::new("my-event-key", json!({"something": "somedata"}))]);
/// # }
/// ```
pub async fn capture_emissions<F: Future>(scope: F) -> (F::Output, Vec<EventRecord>) {
    CAPTURED
        .scope(RefCell::new(Vec::new()), async {
            let out = scope.await;
            let records = CAPTURED.with(|c| c.take());
            (out, records)
        })
        .await
}

/// Is this task inside [`capture_emissions`]?
pub(crate) fn capturing() -> bool {
    CAPTURED.try_with(|_| ()).is_ok()
}

/// Records an emission if a capture scope is active; returns whether it did.
pub(crate) fn record(event_key: &str, payload: &Map<String, Value>) -> bool {
    CAPTURED
        .try_with(|c| {
            let mut body = payload.clone();
            body.insert("event_key".into(), Value::String(event_key.to_owned()));
            c.borrow_mut().push(EventRecord {
                event_key: event_key.to_owned(),
                payload: Value::Object(body),
            });
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn nothing_is_recorded_outside_a_scope() {
        let map = Map::new();
        assert!(!record("k", &map));
    }

    #[tokio::test]
    async fn records_keep_their_order_and_nested_scopes_are_separate() {
        let ((), outer) = capture_emissions(async {
            record("a", &Map::new());
            let ((), inner) = capture_emissions(async {
                record("b", &Map::new());
            })
            .await;
            assert_eq!(inner, vec![EventRecord::new("b", json!({}))]);
            record("c", &Map::new());
        })
        .await;
        assert_eq!(
            outer,
            vec![
                EventRecord::new("a", json!({})),
                EventRecord::new("c", json!({}))
            ]
        );
    }
}
