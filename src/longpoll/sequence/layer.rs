//! [`SequenceDedupLayer`] / [`SequenceDedup`]: the Tower layer that applies the
//! sequence contract around the poll handler.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower::{Layer, Service};

use super::store::{Decision, Previous, SequenceStore, Signal, Waiting};
use crate::broker::Acker;
use crate::longpoll::handler::KnownToClient;
use crate::longpoll::outcome::{DeliveredAnswer, PollOutcome};
use crate::longpoll::request::{PollQuery, PollRequest, QueueRules, parse_query};
use crate::telemetry::traces::PollTrace;

/// Applies the sequence contract: replay, stale, supersede, ack-on-next.
#[derive(Clone, Debug)]
pub struct SequenceDedupLayer {
    store: Arc<SequenceStore>,
    rules: QueueRules,
}

impl SequenceDedupLayer {
    /// Wraps a store; starts the sweeper that requeues answers past their TTL.
    pub fn new(store: Arc<SequenceStore>, rules: QueueRules) -> Self {
        tokio::spawn(sweep(Arc::downgrade(&store)));
        SequenceDedupLayer { store, rules }
    }
}

impl<S> Layer<S> for SequenceDedupLayer {
    type Service = SequenceDedup<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SequenceDedup {
            inner,
            store: self.store.clone(),
            rules: self.rules.clone(),
        }
    }
}

/// The service made by [`SequenceDedupLayer`].
#[derive(Clone, Debug)]
pub struct SequenceDedup<S> {
    inner: S,
    store: Arc<SequenceStore>,
    rules: QueueRules,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for SequenceDedup<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = SequenceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The readied service goes with the call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let poll = match parse_query(req.uri().query()) {
            Ok(PollQuery::Poll(p)) if self.rules.accepts(&p.uuid) => p,
            // Probes, 400s and 404s carry no sequence state.
            _ => {
                return SequenceFuture::Passthrough {
                    inner: inner.call(req),
                };
            }
        };
        // Everything that needs the request happens here, before the future:
        // a held poll's future then holds the handler's future, the ticket and
        // the signals, not the request (smaller futures, less memory per poll).
        let waiting = match self
            .store
            .begin(&poll.uuid, poll.sequence, poll.seen.as_ref())
        {
            Decision::Replay(answer) => {
                tracing::debug!(sequence = poll.sequence, "replaying an answered sequence");
                if let Some(t) = req.extensions().get::<PollTrace>() {
                    t.poll(&poll.uuid, poll.sequence);
                    t.replayed(&answer.message_id);
                }
                return SequenceFuture::answered(PollOutcome::Replay(answer));
            }
            Decision::Stale { last_answered } => {
                return SequenceFuture::answered(PollOutcome::Stale { last_answered });
            }
            Decision::Wait(w) => w,
        };
        let Waiting {
            ticket,
            signals,
            previous,
            last_message_id,
        } = waiting;
        let sequence = poll.sequence;
        req.extensions_mut().insert(KnownToClient {
            seen: poll.seen,
            last_answered: last_message_id,
        });
        // Handed to the handler, which then does not parse the query again.
        req.extensions_mut().insert(PollRequest {
            uuid: poll.uuid.clone(),
            sequence,
            seen: None,
        });
        let ticket = Ticket {
            store: self.store.clone(),
            uuid: poll.uuid,
            ticket,
            done: false,
        };
        let trace = req.extensions().get::<PollTrace>().cloned();
        // The handler does its checks now but waits on the broker only when
        // polled, after the previous answer is settled. The settling is boxed:
        // it is over within the first polls, and a held poll's future need
        // not be sized for it.
        SequenceFuture::Waiting {
            settle: previous.map(|p| -> BoxFuture<()> { Box::pin(settle_previous(p, sequence)) }),
            response: inner.call(req),
            signals,
            ticket,
            trace,
        }
    }
}

pin_project! {
    /// The future of [`SequenceDedup`]. Written out rather than an `async`
    /// block: a block that awaits the handler's future it captured keeps two
    /// places for it, and a boxed one costs an allocation per poll. This one
    /// holds the handler's future once, inline, for the whole wait.
    #[project = SequenceProj]
    pub enum SequenceFuture<F> {
        /// Probes, 400s and 404s: the handler's answer as it is.
        Passthrough { #[pin] inner: F },
        /// A replay or a 409 decided before the handler was called.
        Answered { response: Option<Response> },
        /// A poll waiting for its message, for a newer poll, or for a replay.
        Waiting {
            settle: Option<BoxFuture<()>>,
            #[pin]
            response: F,
            signals: oneshot::Receiver<Signal>,
            ticket: Ticket,
            trace: Option<PollTrace>,
        },
    }
}

impl<F> SequenceFuture<F> {
    fn answered(outcome: PollOutcome) -> Self {
        SequenceFuture::Answered {
            response: Some(outcome.into_response()),
        }
    }
}

impl<F> Future for SequenceFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SequenceProj::Passthrough { inner } => inner.poll(cx),
            SequenceProj::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("SequenceFuture polled after completion"),
            },
            SequenceProj::Waiting {
                settle,
                response,
                signals,
                ticket,
                trace,
            } => {
                if let Some(settling) = settle {
                    std::task::ready!(settling.as_mut().poll(cx));
                    *settle = None;
                }
                // The handler's answer first: when both are ready, the
                // message it holds is answered rather than requeued.
                if let Poll::Ready(Ok(mut response)) = response.poll(cx) {
                    let delivered = response.extensions_mut().remove::<DeliveredAnswer>();
                    let answer = delivered.map(|d| {
                        let acker = d.take_acker();
                        (d.answer, acker)
                    });
                    requeue(ticket.finish(answer));
                    return Poll::Ready(Ok(response));
                }
                let signal = std::task::ready!(Pin::new(signals).poll(cx));
                let outcome = match signal {
                    Ok(Signal::Replay(answer)) => {
                        if let Some(t) = trace.as_ref() {
                            t.replayed(&answer.message_id);
                        }
                        PollOutcome::Replay(answer)
                    }
                    // A dropped sender means the slot was reset: treat as superseded.
                    Ok(Signal::Superseded) | Err(_) => PollOutcome::Superseded,
                };
                requeue(ticket.finish(None));
                Poll::Ready(Ok(outcome.into_response()))
            }
        }
    }
}

/// Ack-on-next: the client's next sequence proves it got the previous answer
/// (ack); a retry of that sequence that the store could not replay means it
/// did not (requeue).
async fn settle_previous(previous: Previous, sequence: u64) {
    match previous {
        Previous::Ack(acker) => {
            if let Err(e) = acker.ack().await {
                // Its channel is gone, so the broker requeued it; the
                // handler will skip its redelivery (same message id).
                tracing::debug!(error = %e, "ack of the previous answer failed");
            }
        }
        Previous::Requeue(acker) => {
            tracing::debug!(
                sequence,
                "the client did not get the previous answer; requeueing it"
            );
            if let Err(e) = acker.requeue().await {
                tracing::debug!(error = %e, "requeue of the previous answer failed");
            }
        }
    }
}

/// Ends a waiting poll in the store, also when its future is dropped (client
/// gone, timeout): the held slot must not outlive the request.
struct Ticket {
    store: Arc<SequenceStore>,
    uuid: String,
    ticket: u64,
    done: bool,
}

impl Ticket {
    fn finish(
        &mut self,
        answer: Option<(Arc<crate::longpoll::outcome::Answer>, Option<Acker>)>,
    ) -> Vec<Acker> {
        self.done = true;
        self.store.finish(&self.uuid, self.ticket, answer)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            requeue(self.store.finish(&self.uuid, self.ticket, None));
        }
    }
}

fn requeue(ackers: Vec<Acker>) {
    if ackers.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for acker in ackers {
            if let Err(e) = acker.requeue().await {
                tracing::debug!(error = %e, "requeue failed (the broker requeues on channel close)");
            }
        }
    });
}

/// Requeues answers whose client did not come back within the replay TTL.
async fn sweep(store: std::sync::Weak<SequenceStore>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let expired = store.expire(tokio::time::Instant::now());
        if !expired.is_empty() {
            tracing::debug!(
                count = expired.len(),
                "requeueing answers past the replay TTL"
            );
        }
        requeue(expired);
    }
}
