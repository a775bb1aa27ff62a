//! The embedded broker's history: the events published lately, in publish
//! order, bounded by `--history-max-age` and `--history-max-bytes` (the oldest
//! go first beyond either), for [`resume_subscription`].
//!
//! Must not: route or queue anything — the broker records each published
//! event here and asks what followed a message; the lock it runs under is the
//! broker's, which is what makes a resume trivially ordered here.
//!
//! [`resume_subscription`]: crate::broker::Broker::resume_subscription

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::StoredMessage;
use crate::broker::HistoryOptions;

/// What an entry costs besides its bytes of body, routing key, id and
/// headers: the entry, the shared message and their allocations (measured
/// from the types' sizes, rounded up).
const ENTRY_OVERHEAD: u64 = 192;

/// One published event.
#[derive(Debug)]
struct Entry {
    routing_key: Arc<str>,
    message: Arc<StoredMessage>,
    at: Instant,
    bytes: u64,
}

/// The recent events, oldest first.
#[derive(Debug)]
pub(super) struct History {
    max_age: Duration,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
}

/// What the history holds after a message.
#[derive(Debug)]
pub(super) enum After {
    /// The matching events published after it, in publish order, each once.
    Found(Vec<Arc<StoredMessage>>),
    /// The message is not (or no longer) in the history.
    NotFound,
    /// More than the limit: too many to replay.
    TooMany,
}

impl History {
    pub(super) fn new(options: &HistoryOptions) -> Self {
        History {
            max_age: options.max_age,
            max_bytes: options.max_bytes,
            entries: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Records a published event (and drops what is now beyond the bounds).
    pub(super) fn record(&mut self, routing_key: &str, message: &Arc<StoredMessage>, now: Instant) {
        let headers: usize = message.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let bytes = (message.body.len() + routing_key.len() + message.message_id.len() + headers)
            as u64
            + ENTRY_OVERHEAD;
        self.entries.push_back(Entry {
            routing_key: routing_key.into(),
            message: message.clone(),
            at: now,
            bytes,
        });
        self.bytes += bytes;
        self.trim(now);
    }

    /// Drops the events older than the age bound, then the oldest beyond the
    /// size bound.
    pub(super) fn trim(&mut self, now: Instant) {
        while let Some(oldest) = self.entries.front() {
            let too_old = now.saturating_duration_since(oldest.at) > self.max_age;
            if !too_old && self.bytes <= self.max_bytes {
                break;
            }
            self.bytes -= oldest.bytes;
            self.entries.pop_front();
        }
    }

    /// The events published after the message `after` whose routing key
    /// `matches`, at most `limit` of them. A message id met twice counts once
    /// (from its first place).
    pub(super) fn after(&self, after: &str, matches: impl Fn(&str) -> bool, limit: usize) -> After {
        let Some(start) = self
            .entries
            .iter()
            .position(|e| &*e.message.message_id == after)
        else {
            return After::NotFound;
        };
        let mut ids: HashSet<&str> = HashSet::from([after]);
        let mut found = Vec::new();
        for e in self.entries.range(start + 1..) {
            if matches(&e.routing_key) && ids.insert(&e.message.message_id) {
                if found.len() == limit {
                    return After::TooMany;
                }
                found.push(e.message.clone());
            }
        }
        After::Found(found)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;

    use super::*;

    fn history(max_age: Duration, max_bytes: u64) -> History {
        History::new(&HistoryOptions {
            stream: "unused".into(),
            max_age,
            max_bytes,
            initial_cluster_size: None,
        })
    }

    fn message(id: &str, body: &str) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            body: Bytes::from(body.to_owned()),
            message_id: id.into(),
            published_at: SystemTime::now(),
            headers: vec![],
        })
    }

    fn ids(after: After) -> Vec<String> {
        match after {
            After::Found(found) => found.iter().map(|m| m.message_id.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_follows_a_message_is_the_matching_events_in_order_each_once() {
        let mut h = history(Duration::from_secs(60), 1 << 20);
        let now = Instant::now();
        for (key, id) in [("a", "1"), ("a", "2"), ("b", "3"), ("a", "4"), ("a", "2")] {
            h.record(key, &message(id, "{}"), now);
        }
        assert_eq!(ids(h.after("1", |k| k == "a", 10)), ["2", "4"]);
        assert_eq!(ids(h.after("3", |_| true, 10)), ["4", "2"]);
        assert_eq!(
            ids(h.after("2", |_| true, 10)),
            ["3", "4"],
            "from its first place"
        );
        assert!(matches!(h.after("9", |_| true, 10), After::NotFound));
        assert!(matches!(h.after("1", |_| true, 2), After::TooMany));
        assert_eq!(ids(h.after("1", |_| true, 3)), ["2", "3", "4"]);
    }

    #[test]
    fn the_oldest_events_go_beyond_the_age_or_the_size_bound() {
        let start = Instant::now();
        let mut h = history(Duration::from_secs(10), 3 * (ENTRY_OVERHEAD + 4));
        h.record("k", &message("1", "{}"), start);
        h.record("k", &message("2", "{}"), start + Duration::from_secs(5));
        h.record("k", &message("3", "{}"), start + Duration::from_secs(6));
        assert_eq!(h.len(), 3);
        h.record("k", &message("4", "{}"), start + Duration::from_secs(7));
        assert_eq!(h.len(), 3, "over the size bound: the oldest went");
        assert!(matches!(h.after("1", |_| true, 10), After::NotFound));
        h.trim(start + Duration::from_secs(16));
        assert_eq!(ids(h.after("3", |_| true, 10)), ["4"]);
        assert!(
            matches!(h.after("2", |_| true, 10), After::NotFound),
            "too old"
        );
        h.trim(start + Duration::from_secs(60));
        assert_eq!(h.len(), 0);
        assert_eq!(h.bytes, 0);
    }
}
