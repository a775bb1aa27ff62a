//! The long-poll path: query parsing, the [`PollContext`] the poll stack's
//! layers hand each other, the sequence layer, the handler, and the one
//! mapping from [`PollOutcome`] to an HTTP response. The stack itself is
//! composed in `http::router`; docs/architecture.md draws it.
//!
//! Must not: speak AMQP directly — everything broker-side goes through
//! [`crate::broker::Broker`].

pub mod context;
pub mod handler;
pub mod outcome;
pub mod request;
pub mod sequence;

pub use context::{Asked, PollContext};
pub use handler::PollHandler;
pub use outcome::{
    Answer, COUNT_HEADER, DeliveredAnswer, MESSAGE_ID_HEADER, MESSAGE_IDS_HEADER, MessageIds,
    PollOutcome, SEQUENCE_HEADER,
};
pub use request::{
    MAX_MESSAGES, PollQuery, PollRequest, QueryRejection, QueueRules, SeenIds, parse_query,
};
pub use sequence::{SequenceDedupLayer, SequenceStore};
