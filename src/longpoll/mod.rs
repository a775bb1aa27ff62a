//! The long-poll path: query parsing, the handler, the sequence layer, and the
//! one mapping from [`PollOutcome`] to an HTTP response.
//!
//! Must not: speak AMQP directly — everything broker-side goes through
//! [`crate::broker::Broker`].

pub mod handler;
pub mod outcome;
pub mod request;
pub mod sequence;

pub use handler::{PollContext, handle_poll};
pub use outcome::{Answer, MESSAGE_ID_HEADER, PollOutcome, SEQUENCE_HEADER};
pub use request::{PollQuery, PollRequest, QueryRejection, QueueRules, SeenIds, parse_query};
pub use sequence::{SequenceDedupLayer, SequenceStore};
