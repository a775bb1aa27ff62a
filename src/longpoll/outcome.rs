//! [`PollOutcome`] — every way a poll can end — and its one mapping to an HTTP
//! response. The layers of the poll stack below its HTTP edge answer with a
//! `PollOutcome` (the handler, the sequence layer's replays and 409s); the edge
//! (`http::rescue`) adds its own for timeouts and overload and makes the one
//! response.
//!
//! An answer of several messages (a poll's `max` > 1) carries
//! `X-Longpoll-Count` and `X-Longpoll-Message-Ids` besides
//! `X-Longpoll-Message-Id` (the last id), and its body is the JSON array of
//! the messages' bodies; an answer of one message is exactly txlongpoll's.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::request::QueryRejection;
use crate::broker::Acker;

/// Header carrying the sequence an answer belongs to.
pub const SEQUENCE_HEADER: &str = "x-longpoll-sequence";
/// Header carrying the message id (stable across redeliveries); the last one
/// of an answer of several.
pub const MESSAGE_ID_HEADER: &str = "x-longpoll-message-id";
/// Header carrying how many messages an answer to a poll with `max` holds.
pub const COUNT_HEADER: &str = "x-longpoll-count";
/// Header carrying the ids of every message of such an answer, in order,
/// comma-separated.
pub const MESSAGE_IDS_HEADER: &str = "x-longpoll-message-ids";

/// The ids of the messages an answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageIds {
    /// One message, its body as it is: the answer to a poll without `max`
    /// (or `max=1`), and a message that cannot be an array's element (an
    /// error message, a body that is not JSON). The response is txlongpoll's.
    One(Arc<str>),
    /// The messages of an answer to a poll with `max` > 1, in queue order (at
    /// least one): the body is their JSON array, and the response says how
    /// many and which.
    Several(Arc<[Arc<str>]>),
}

impl MessageIds {
    /// The last message's id (the only one's): `X-Longpoll-Message-Id`.
    pub fn last(&self) -> &Arc<str> {
        match self {
            MessageIds::One(id) => id,
            // Never empty; the guard keeps a broken one from panicking.
            MessageIds::Several(ids) => ids.last().unwrap_or_else(|| empty_id()),
        }
    }

    /// Is `id` one of them?
    pub fn contains(&self, id: &str) -> bool {
        match self {
            MessageIds::One(one) => &**one == id,
            MessageIds::Several(ids) => ids.iter().any(|listed| &**listed == id),
        }
    }

    /// How many messages.
    pub fn len(&self) -> usize {
        match self {
            MessageIds::One(_) => 1,
            MessageIds::Several(ids) => ids.len(),
        }
    }

    /// Never true: an answer carries a message at least.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn empty_id() -> &'static Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "".into());
    &EMPTY
}

/// A message answer to `(uuid, sequence)`, kept for identical retries.
#[derive(Debug, Clone)]
pub struct Answer {
    pub sequence: u64,
    /// The message's body as it is, or the JSON array of the bodies of
    /// several ([`MessageIds::Several`]).
    pub body: Bytes,
    pub ids: MessageIds,
    /// The message JSON has an `error` key: answered 400 (txlongpoll
    /// convention), always alone and with its body as it is.
    pub is_error: bool,
}

impl Answer {
    /// The (last) message's id.
    pub fn message_id(&self) -> &Arc<str> {
        self.ids.last()
    }
}

/// A message answer on its way up the poll stack, with the handle that acks
/// it. The sequence layer takes the handle and keeps it until the next sequence
/// proves receipt; a handle nobody took is dropped with the answer when the
/// response is made, and the message is requeued — nothing is lost either way.
#[derive(Debug)]
pub struct DeliveredAnswer {
    pub answer: Arc<Answer>,
    acker: Option<Acker>,
}

impl DeliveredAnswer {
    pub fn new(answer: Arc<Answer>, acker: Acker) -> Self {
        DeliveredAnswer {
            answer,
            acker: Some(acker),
        }
    }

    /// Takes the ack handle (once).
    pub fn take_acker(&mut self) -> Option<Acker> {
        self.acker.take()
    }
}

/// How a poll ended.
#[derive(Debug)]
pub enum PollOutcome {
    /// No `uuid`/`sequence`: the monitoring probe.
    Probe { prefix: String },
    /// 400 with the contract's text.
    Rejected(QueryRejection),
    /// 404: foreign prefix, bad name, or no such queue.
    NotFound,
    /// A message (200, or 400 when it carries `error`).
    Message(DeliveredAnswer),
    /// The same answer again, for a retry of an answered sequence.
    Replay(Arc<Answer>),
    /// 408: nothing within the poll timeout.
    Timeout,
    /// 409: a newer poll for the same uuid took over.
    Superseded,
    /// 409: the sequence is below the last answered one.
    Stale { last_answered: u64 },
    /// 503 + Retry-After: broker unreachable for the whole wait, draining, or full.
    Unavailable { retry_after_secs: u64 },
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A header value for a message id; bytes a header cannot carry become `_`.
fn message_id_value(id: &str) -> HeaderValue {
    HeaderValue::from_str(id).unwrap_or_else(|_| {
        let cleaned: String = id
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        HeaderValue::from_str(&cleaned).unwrap_or(HeaderValue::from_static("invalid"))
    })
}

fn answer_response(answer: &Answer) -> Response {
    let status = if answer.is_error {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut r = Response::new(Body::from(answer.body.clone()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(SEQUENCE_HEADER, HeaderValue::from(answer.sequence));
    h.insert(MESSAGE_ID_HEADER, message_id_value(answer.message_id()));
    if let MessageIds::Several(ids) = &answer.ids {
        h.insert(COUNT_HEADER, HeaderValue::from(ids.len()));
        let joined = ids.iter().map(|id| &**id).collect::<Vec<_>>().join(",");
        h.insert(MESSAGE_IDS_HEADER, message_id_value(&joined));
    }
    r
}

impl IntoResponse for PollOutcome {
    fn into_response(self) -> Response {
        let mut response = match self {
            PollOutcome::Probe { prefix } => {
                let mut r = format!("Async frontend for {prefix}").into_response();
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
            PollOutcome::Rejected(QueryRejection::InvalidRequest) => {
                text(StatusCode::BAD_REQUEST, "Invalid request")
            }
            PollOutcome::Rejected(QueryRejection::InvalidSequence) => {
                text(StatusCode::BAD_REQUEST, "Invalid sequence")
            }
            PollOutcome::Rejected(QueryRejection::InvalidMax) => {
                text(StatusCode::BAD_REQUEST, "Invalid max")
            }
            PollOutcome::NotFound => text(StatusCode::NOT_FOUND, "Not found"),
            // A handle still here (no sequence layer took it) requeues as it drops.
            PollOutcome::Message(delivered) => answer_response(&delivered.answer),
            PollOutcome::Replay(answer) => answer_response(&answer),
            PollOutcome::Timeout => text(StatusCode::REQUEST_TIMEOUT, "Request timeout"),
            PollOutcome::Superseded => text(StatusCode::CONFLICT, "Superseded"),
            PollOutcome::Stale { last_answered } => {
                let mut r = text(StatusCode::CONFLICT, "Stale sequence");
                r.headers_mut()
                    .insert(SEQUENCE_HEADER, HeaderValue::from(last_answered));
                r
            }
            PollOutcome::Unavailable { retry_after_secs } => {
                let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable");
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                r
            }
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_poll_answer_is_no_store() {
        for outcome in [
            PollOutcome::NotFound,
            PollOutcome::Timeout,
            PollOutcome::Superseded,
            PollOutcome::Unavailable {
                retry_after_secs: 0,
            },
        ] {
            let r = outcome.into_response();
            assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        }
    }

    #[test]
    fn a_replay_carries_the_answers_headers() {
        let answer = Arc::new(Answer {
            sequence: 7,
            body: Bytes::from_static(b"{\"error\":\"x\"}"),
            ids: MessageIds::One("m-1".into()),
            is_error: true,
        });
        let r = PollOutcome::Replay(answer).into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[SEQUENCE_HEADER], "7");
        assert_eq!(r.headers()[MESSAGE_ID_HEADER], "m-1");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert!(
            r.headers().get(COUNT_HEADER).is_none(),
            "txlongpoll's headers only"
        );
        assert!(r.headers().get(MESSAGE_IDS_HEADER).is_none());
    }

    #[test]
    fn an_answer_of_several_names_them_all_and_the_last() {
        let ids: Arc<[Arc<str>]> = ["m-1".into(), "m-2".into(), "m-3".into()].into();
        let answer = Arc::new(Answer {
            sequence: 2,
            body: Bytes::from_static(b"[{},{},{}]"),
            ids: MessageIds::Several(ids),
            is_error: false,
        });
        assert!(answer.ids.contains("m-2") && !answer.ids.contains("m"));
        let r = PollOutcome::Replay(answer).into_response();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[COUNT_HEADER], "3");
        assert_eq!(r.headers()[MESSAGE_ID_HEADER], "m-3");
        assert_eq!(r.headers()[MESSAGE_IDS_HEADER], "m-1,m-2,m-3");
    }

    #[test]
    fn message_ids_that_are_not_header_safe_are_cleaned() {
        assert_eq!(message_id_value("a\nb"), "a_b");
    }
}
