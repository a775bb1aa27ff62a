//! Model life-cycle events, as Launchpad's Storm bridge sent them: created,
//! modified (with the names of the edited fields) and deleted, under
//! `longpoll.event.{table}.{id}`.

use std::fmt::Display;

use serde_json::{Map, Value, json};

use super::{LongPollEvent, PublishError, Publisher};

/// What happened to a model object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChange {
    Created,
    /// `edited_fields`: the names of the changed fields, when known.
    Modified {
        edited_fields: Option<Vec<String>>,
    },
    Deleted,
}

/// The long-poll event of one model object (a database row).
///
/// ```
/// use longpoll_gateway::publish::{capture_emissions, EventRecord, LifecycleEvent, ModelChange, Publisher};
/// use longpoll_gateway::broker::{MemoryBroker, memory::MemoryOptions};
/// use longpoll_gateway::telemetry::Metrics;
/// use serde_json::json;
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let broker = Arc::new(MemoryBroker::new(MemoryOptions::default(), Arc::new(Metrics::new())));
/// let publisher = Publisher::new(broker, "longpoll.subscribe.");
/// let row = LifecycleEvent::new("FakeTable", 1234);
/// assert_eq!(row.key(), "longpoll.event.faketable.1234");
///
/// let (_, log) = capture_emissions(async {
///     row.notify(&publisher, ModelChange::Deleted).await.unwrap();
///     row.notify(&publisher, ModelChange::Modified {
///         edited_fields: Some(vec!["title".into(), "description".into()]),
///     }).await.unwrap();
/// }).await;
///
/// assert_eq!(log, vec![
///     EventRecord::new("longpoll.event.faketable.1234", json!({"what": "deleted"})),
///     EventRecord::new("longpoll.event.faketable.1234",
///         json!({"what": "modified", "edited_fields": ["description", "title"]})),
/// ]);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    table: String,
    id: String,
}

impl LifecycleEvent {
    /// An object of `table` with a single-column primary key.
    pub fn new(table: &str, primary_key: impl Display) -> Self {
        LifecycleEvent {
            table: table.to_lowercase(),
            id: primary_key.to_string(),
        }
    }

    /// An object with a composite primary key (joined with `-`, as Launchpad did).
    pub fn composite(table: &str, primary_key: &[&dyn Display]) -> Self {
        let id: Vec<String> = primary_key.iter().map(|p| p.to_string()).collect();
        LifecycleEvent {
            table: table.to_lowercase(),
            id: id.join("-"),
        }
    }

    /// `longpoll.event.{table}.{id}`.
    pub fn key(&self) -> String {
        format!("longpoll.event.{}.{}", self.table, self.id)
    }

    /// The payload Launchpad sent for a change (the event key is added on emit).
    pub fn payload(change: &ModelChange) -> Map<String, Value> {
        let value = match change {
            ModelChange::Created => json!({"what": "created"}),
            ModelChange::Deleted => json!({"what": "deleted"}),
            ModelChange::Modified { edited_fields } => {
                let fields = edited_fields.as_ref().map(|f| {
                    let mut f = f.clone();
                    f.sort();
                    f
                });
                json!({"what": "modified", "edited_fields": fields})
            }
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// Emits the change; returns the message id.
    pub async fn notify(
        &self,
        publisher: &Publisher,
        change: ModelChange,
    ) -> Result<String, PublishError> {
        publisher.emit(&self.key(), Self::payload(&change)).await
    }
}

impl LongPollEvent for LifecycleEvent {
    fn event_key(&self) -> String {
        self.key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_lowercased_tables_and_joined_keys() {
        assert_eq!(
            LifecycleEvent::new("BranchMergeProposal", 7).key(),
            "longpoll.event.branchmergeproposal.7"
        );
        assert_eq!(
            LifecycleEvent::composite("Pair", &[&1, &"b"]).key(),
            "longpoll.event.pair.1-b"
        );
    }

    #[test]
    fn payloads_say_what_happened() {
        assert_eq!(
            Value::Object(LifecycleEvent::payload(&ModelChange::Created)),
            json!({"what": "created"})
        );
        assert_eq!(
            Value::Object(LifecycleEvent::payload(&ModelChange::Modified {
                edited_fields: Some(vec!["b".into(), "a".into()])
            })),
            json!({"what": "modified", "edited_fields": ["a", "b"]})
        );
        assert_eq!(
            Value::Object(LifecycleEvent::payload(&ModelChange::Modified {
                edited_fields: None
            })),
            json!({"what": "modified", "edited_fields": null})
        );
    }
}
