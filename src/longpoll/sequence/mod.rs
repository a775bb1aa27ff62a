//! The sequence contract as a Tower layer: no loss, safe retries.
//!
//! ```text
//! (uuid, n) answered with a message  → the message stays unacked, the answer is kept
//! (uuid, n) again                    → the same answer (replay), nothing consumed
//! (uuid, m > n)                      → ack n (the client has it), wait for the next
//! (uuid, m < last answered), `seen`   → 409 "Stale sequence", X-Longpoll-Sequence: last
//! (uuid, m ≤ last answered), no `seen` → legacy restart: the held answer is requeued,
//!                                        the poll waits, the count goes on from m
//! a second poll while one is held    → the newer waits, the older gets 409 "Superseded"
//! client gone before the answer      → the message goes back to its queue (requeue)
//! no retry within --replay-ttl       → the unacked message is requeued
//! ```
//!
//! An answer of several messages (a poll's `max`) is one answer in every row:
//! replayed whole (whatever `max` the retry asks), acked whole by the next
//! sequence, requeued whole, each message at its place.
//!
//! Where it sits: inside the timeout and concurrency limit, directly around the
//! poll handler (see `http::router`). It must sit inside the timeout so that a
//! poll cut by the timeout releases its held slot (the [`layer`] ticket does that
//! on drop), and directly around the handler so that the ack handle of an answer
//! (carried up in [`PollOutcome::Message`](crate::longpoll::PollOutcome)) is
//! taken before anything else could drop it.
//!
//! It serves a [`PollContext`](crate::longpoll::PollContext), not an HTTP
//! request: it reads the poll the context asks for and writes the message ids
//! last answered for its uuid (`last_answered`) for the handler.
//!
//! ```
//! # use std::{convert::Infallible, sync::Arc, time::Duration};
//! # use longpoll_gateway::longpoll::{PollContext, PollOutcome, QueueRules, SequenceDedupLayer, SequenceStore};
//! # use longpoll_gateway::telemetry::Metrics;
//! # use tower::{ServiceBuilder, ServiceExt};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = Arc::new(SequenceStore::new(Duration::from_secs(300), 10_000, Arc::new(Metrics::new())));
//! let polls = ServiceBuilder::new()
//!     .layer(SequenceDedupLayer::new(store))
//!     .service_fn(|_ctx: PollContext| async { Ok::<_, Infallible>(PollOutcome::Timeout) });
//! let rules = QueueRules::new("longpoll.subscribe.");
//! let ctx = PollContext::new(Some("uuid=longpoll.subscribe.k&sequence=1"), &rules, None);
//! assert!(matches!(polls.oneshot(ctx).await, Ok(PollOutcome::Timeout)));
//! # }
//! ```
//!
//! The store is per replica and in memory. With ingress consistent hashing on
//! `uuid` a client's retries reach the same replica; without it, or after a
//! replica dies, no message is lost (its unacked messages go back to the queue)
//! and the message id lets the client drop a duplicate.

mod layer;
mod store;

pub use layer::{SequenceDedup, SequenceDedupLayer};
pub use store::{Decision, Previous, SequenceStore, Signal};
