//! [`PollContext`]: one poll on its way down the poll stack — the one value the
//! stack's layers hand each other.
//!
//! ```text
//! field          set by                                   read by
//! asked          PollRescue: the query, parsed once        SequenceDedup, the handler
//! last_answered  SequenceDedup, from its store             the handler (contract point 8)
//! trace          PollRescue, only when spans are exported  SequenceDedup, the handler;
//!                                                          PollRescue ends the span
//! ```
//!
//! It is made by the stack's outermost poll layer (`http::rescue`), after
//! which the HTTP request is dropped: no layer below sees HTTP, and nothing is
//! handed on through request or response extensions. It goes down by value —
//! every layer's `call` hands it to the next before anything waits, so no held
//! poll's future keeps it — and the answer comes back up as a [`PollOutcome`]:
//! a message's ack handle rides in [`PollOutcome::Message`] until the sequence
//! layer takes it (the acker slot of [`DeliveredAnswer`](super::DeliveredAnswer)).
//!
//! Must not: hold the subscription key anywhere a log or trace could print it
//! (`Debug` is not derived; the trace keeps the key's hash only).

use super::outcome::{MessageIds, PollOutcome};
use super::request::{PollQuery, PollRequest, QueueRules, parse_query};
use crate::telemetry::traces::PollTrace;

/// One poll, as the layers below the HTTP edge of the poll stack see it.
pub struct PollContext {
    /// What the query asks for, decided once from the query and the queue rules.
    pub asked: Asked,
    /// The message ids last answered for this uuid on this replica (every one
    /// of an answer of several): filled by the sequence layer when it admits
    /// the poll to wait.
    pub last_answered: Option<MessageIds>,
    /// The poll's span recorder (only when spans are exported).
    pub trace: Option<PollTrace>,
}

/// What a poll's query asks for.
pub enum Asked {
    /// A long-poll of a queue the rules allow.
    Poll(PollRequest),
    /// An answer the query alone decides, with no sequence state and no
    /// broker: the monitoring probe (200), a bad query (400), a queue name the
    /// rules refuse (404). It still goes down the stack, so that the limits
    /// apply to it as to any poll (over `--max-polls` even a probe is 503).
    Answer(PollOutcome),
}

impl PollContext {
    /// Parses a poll's raw query string — the only place it is parsed — and
    /// applies the queue rules. The trace learns the key (as its hash) and the
    /// sequence of a poll the rules allow.
    pub fn new(query: Option<&str>, rules: &QueueRules, trace: Option<PollTrace>) -> Self {
        let asked = match parse_query(query) {
            Ok(PollQuery::Poll(request)) if rules.accepts(&request.uuid) => {
                if let Some(t) = &trace {
                    t.poll(&request.uuid, request.sequence);
                }
                Asked::Poll(request)
            }
            Ok(PollQuery::Poll(_)) => Asked::Answer(PollOutcome::NotFound),
            Ok(PollQuery::Probe) => Asked::Answer(PollOutcome::Probe {
                prefix: rules.prefix().to_owned(),
            }),
            Err(rejection) => Asked::Answer(PollOutcome::Rejected(rejection)),
        };
        PollContext {
            asked,
            last_answered: None,
            trace,
        }
    }

    /// The poll this context asks for, if it is one.
    pub fn poll(&self) -> Option<&PollRequest> {
        match &self.asked {
            Asked::Poll(request) => Some(request),
            Asked::Answer(_) => None,
        }
    }
}

impl PollRequest {
    /// Should a delivery be acked and skipped rather than shown, because the
    /// client has it already? A client that sends `seen` has what it lists; a
    /// client that does not has the messages last answered for its uuid, when
    /// one of them comes again as a redelivery (contract point 8).
    pub fn client_has(
        &self,
        last_answered: Option<&MessageIds>,
        message_id: &str,
        redelivered: bool,
    ) -> bool {
        match &self.seen {
            Some(ids) => ids.contains(message_id),
            None => redelivered && last_answered.is_some_and(|ids| ids.contains(message_id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::longpoll::{QueryRejection, SeenIds};

    fn rules() -> QueueRules {
        QueueRules::new("longpoll.subscribe.")
    }

    #[test]
    fn a_poll_of_an_allowed_queue_is_asked_for_as_a_poll() {
        let ctx = PollContext::new(
            Some("uuid=longpoll.subscribe.k&sequence=3&seen=a,b"),
            &rules(),
            None,
        );
        let poll = ctx.poll().expect("a poll");
        assert_eq!(
            (poll.uuid.as_str(), poll.sequence),
            ("longpoll.subscribe.k", 3)
        );
        assert_eq!(poll.seen, Some(SeenIds::parse("a,b")));
        assert_eq!(poll.max, 1);
        assert_eq!(ctx.last_answered, None);
    }

    #[test]
    fn probes_bad_queries_and_foreign_queues_are_answered_from_the_query_alone() {
        let answer = |query| match PollContext::new(query, &rules(), None).asked {
            Asked::Answer(outcome) => outcome,
            Asked::Poll(_) => panic!("{query:?} asked for a poll"),
        };
        assert!(
            matches!(answer(None), PollOutcome::Probe { prefix } if prefix == "longpoll.subscribe.")
        );
        assert!(matches!(
            answer(Some("uuid=longpoll.subscribe.k")),
            PollOutcome::Rejected(QueryRejection::InvalidRequest)
        ));
        assert!(matches!(
            answer(Some("uuid=longpoll.subscribe.k&sequence=-1")),
            PollOutcome::Rejected(QueryRejection::InvalidSequence)
        ));
        assert!(matches!(
            answer(Some("uuid=other.queue&sequence=1")),
            PollOutcome::NotFound
        ));
    }

    #[test]
    fn a_client_has_what_its_seen_list_names_or_else_a_redelivery_of_the_last_answer() {
        let one = |id: &str| MessageIds::One(id.into());
        let with_seen = PollRequest {
            uuid: "q".into(),
            sequence: 2,
            seen: Some(SeenIds::parse("m1")),
            max: 1,
        };
        assert!(with_seen.client_has(None, "m1", false));
        assert!(
            !with_seen.client_has(Some(&one("m2")), "m2", true),
            "the list decides"
        );
        let without = PollRequest {
            seen: None,
            ..with_seen
        };
        assert!(without.client_has(Some(&one("m1")), "m1", true));
        assert!(
            !without.client_has(Some(&one("m1")), "m1", false),
            "not a redelivery"
        );
        assert!(!without.client_has(Some(&one("m1")), "m2", true));
        assert!(!without.client_has(None, "m1", true));
        // Every message of an answer of several.
        let several = MessageIds::Several(["m1".into(), "m2".into()].into());
        assert!(without.client_has(Some(&several), "m1", true));
        assert!(without.client_has(Some(&several), "m2", true));
        assert!(!without.client_has(Some(&several), "m3", true));
    }
}
