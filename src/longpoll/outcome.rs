//! [`PollOutcome`] — every way a poll can end — and its one mapping to an HTTP
//! response. The layers of the poll stack below its HTTP edge answer with a
//! `PollOutcome` (the handler, the sequence layer's replays and 409s); the edge
//! (`http::rescue`) adds its own for timeouts and overload and makes the one
//! response.

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
/// Header carrying the message id (stable across redeliveries).
pub const MESSAGE_ID_HEADER: &str = "x-longpoll-message-id";

/// A message answer to `(uuid, sequence)`, kept for identical retries.
#[derive(Debug, Clone)]
pub struct Answer {
    pub sequence: u64,
    pub body: Bytes,
    pub message_id: Arc<str>,
    /// The message JSON has an `error` key: answered 400 (txlongpoll convention).
    pub is_error: bool,
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
    h.insert(MESSAGE_ID_HEADER, message_id_value(&answer.message_id));
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
            message_id: "m-1".into(),
            is_error: true,
        });
        let r = PollOutcome::Replay(answer).into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[SEQUENCE_HEADER], "7");
        assert_eq!(r.headers()[MESSAGE_ID_HEADER], "m-1");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn message_ids_that_are_not_header_safe_are_cleaned() {
        assert_eq!(message_id_value("a\nb"), "a_b");
    }
}
