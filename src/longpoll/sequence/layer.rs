//! [`SequenceDedupLayer`] / [`SequenceDedup`]: the Tower layer that applies the
//! sequence contract around the poll handler.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower::{Layer, Service};

use super::store::{Decision, Previous, SequenceStore, Signal, Waiting};
use crate::broker::Acker;
use crate::longpoll::context::PollContext;
use crate::longpoll::outcome::{Answer, PollOutcome};
use crate::telemetry::traces::PollTrace;

/// Applies the sequence contract: replay, stale, supersede, ack-on-next.
#[derive(Clone, Debug)]
pub struct SequenceDedupLayer {
    store: Arc<SequenceStore>,
}

impl SequenceDedupLayer {
    /// Wraps a store; starts the sweeper that requeues answers past their TTL.
    pub fn new(store: Arc<SequenceStore>) -> Self {
        tokio::spawn(sweep(Arc::downgrade(&store)));
        SequenceDedupLayer { store }
    }
}

impl<S> Layer<S> for SequenceDedupLayer {
    type Service = SequenceDedup<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SequenceDedup {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The service made by [`SequenceDedupLayer`].
#[derive(Clone, Debug)]
pub struct SequenceDedup<S> {
    inner: S,
    store: Arc<SequenceStore>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<PollContext> for SequenceDedup<S>
where
    S: Service<PollContext, Response = PollOutcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = PollOutcome;
    type Error = Infallible;
    type Future = SequenceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ctx: PollContext) -> Self::Future {
        // The readied service goes with the call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Probes, 400s and 404s carry no sequence state.
        let Some(poll) = ctx.poll() else {
            return SequenceFuture::Passthrough {
                inner: inner.call(ctx),
            };
        };
        // Everything that needs the context happens here, before the future:
        // a held poll's future then holds the handler's future, the ticket and
        // the signals (smaller futures, less memory per poll).
        let (uuid, sequence) = (poll.uuid.as_str(), poll.sequence);
        let waiting = match self.store.begin(uuid, sequence, poll.seen.as_ref()) {
            Decision::Replay(answer) => {
                tracing::debug!(sequence, "replaying an answered sequence");
                if let Some(t) = &ctx.trace {
                    t.replayed(answer.message_id());
                }
                return SequenceFuture::answered(PollOutcome::Replay(answer));
            }
            Decision::Stale { last_answered } => {
                return SequenceFuture::answered(PollOutcome::Stale { last_answered });
            }
            Decision::Wait(w) => w,
        };
        let ticket = Ticket {
            store: self.store.clone(),
            uuid: uuid.to_owned(),
            ticket: waiting.ticket,
            done: false,
        };
        let Waiting {
            signals,
            previous,
            last_message_ids,
            ..
        } = waiting;
        ctx.last_answered = last_message_ids;
        let trace = ctx.trace.clone();
        // The handler does its checks now but waits on the broker only when
        // polled, after the previous answer is settled. The settling is boxed:
        // it is over within the first polls, and a held poll's future need
        // not be sized for it.
        SequenceFuture::Waiting {
            settle: previous.map(|p| -> BoxFuture<()> { Box::pin(settle_previous(p, sequence)) }),
            response: inner.call(ctx),
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
        Answered { outcome: Option<PollOutcome> },
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
            outcome: Some(outcome),
        }
    }
}

impl<F> Future for SequenceFuture<F>
where
    F: Future<Output = Result<PollOutcome, Infallible>>,
{
    type Output = Result<PollOutcome, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SequenceProj::Passthrough { inner } => inner.poll(cx),
            SequenceProj::Answered { outcome } => match outcome.take() {
                Some(outcome) => Poll::Ready(Ok(outcome)),
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
                if let Poll::Ready(Ok(mut outcome)) = response.poll(cx) {
                    // A message's ack handle stays here, with its answer,
                    // until the next sequence proves receipt.
                    let kept = match &mut outcome {
                        PollOutcome::Message(delivered) => {
                            Some((delivered.answer.clone(), delivered.take_acker()))
                        }
                        _ => None,
                    };
                    requeue(ticket.finish(kept));
                    return Poll::Ready(Ok(outcome));
                }
                let signal = std::task::ready!(Pin::new(signals).poll(cx));
                let outcome = match signal {
                    Ok(Signal::Replay(answer)) => {
                        if let Some(t) = trace.as_ref() {
                            t.replayed(answer.message_id());
                        }
                        PollOutcome::Replay(answer)
                    }
                    // A dropped sender means the slot was reset: treat as superseded.
                    Ok(Signal::Superseded) | Err(_) => PollOutcome::Superseded,
                };
                requeue(ticket.finish(None));
                Poll::Ready(Ok(outcome))
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
    fn finish(&mut self, answer: Option<(Arc<Answer>, Option<Acker>)>) -> Vec<Acker> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use tower::{ServiceBuilder, ServiceExt};

    use crate::broker::{BrokerError, Settle};
    use crate::longpoll::{DeliveredAnswer, MessageIds, QueueRules, SeenIds};
    use crate::telemetry::Metrics;

    const KEY: &str = "longpoll.subscribe.k";

    /// What became of each message: "ack m1", "requeue m1".
    #[derive(Clone, Default)]
    struct Settled(Arc<Mutex<Vec<String>>>);

    impl Settled {
        fn acker(&self, id: &str, metrics: &Arc<Metrics>) -> Acker {
            struct Record(Settled, String);
            #[async_trait::async_trait]
            impl Settle for Record {
                async fn ack(&self) -> Result<(), BrokerError> {
                    self.0.push(format!("ack {}", self.1));
                    Ok(())
                }
                async fn requeue(&self) -> Result<(), BrokerError> {
                    self.0.push(format!("requeue {}", self.1));
                    Ok(())
                }
            }
            Acker::new(Box::new(Record(self.clone(), id.into())), metrics.clone())
        }

        fn push(&self, what: String) {
            self.0.lock().unwrap().push(what);
        }

        fn seen(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }

        /// Waits (a few scheduler turns) for the spawned settle tasks.
        async fn after_settling(&self) -> Vec<String> {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            self.seen()
        }
    }

    fn store(ttl: Duration) -> (Arc<SequenceStore>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(SequenceStore::new(ttl, 100, metrics.clone()));
        (store, metrics)
    }

    fn ctx(query: &str) -> PollContext {
        PollContext::new(Some(query), &QueueRules::new("longpoll.subscribe."), None)
    }

    fn poll(sequence: u64) -> PollContext {
        ctx(&format!("uuid={KEY}&sequence={sequence}"))
    }

    fn message(sequence: u64, id: &str, acker: Acker) -> PollOutcome {
        PollOutcome::Message(DeliveredAnswer::new(
            Arc::new(Answer {
                sequence,
                body: Bytes::from_static(b"{}"),
                ids: MessageIds::One(id.into()),
                is_error: false,
            }),
            acker,
        ))
    }

    fn message_id(outcome: &PollOutcome) -> Option<&str> {
        match outcome {
            PollOutcome::Message(d) => Some(d.answer.message_id()),
            PollOutcome::Replay(a) => Some(a.message_id()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_answered_message_stays_unacked_and_a_retry_is_replayed_without_the_handler() {
        let (store, metrics) = store(Duration::from_secs(60));
        let settled = Settled::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (s, m, c) = (settled.clone(), metrics.clone(), calls.clone());
        let polls = ServiceBuilder::new()
            .layer(SequenceDedupLayer::new(store.clone()))
            .service_fn(move |ctx: PollContext| {
                c.fetch_add(1, Ordering::SeqCst);
                let sequence = ctx.poll().expect("a poll").sequence;
                let outcome = message(sequence, "m1", s.acker("m1", &m));
                async move { Ok::<_, Infallible>(outcome) }
            });
        let first = polls.clone().oneshot(poll(1)).await.unwrap();
        assert_eq!(message_id(&first), Some("m1"));
        let again = polls.clone().oneshot(poll(1)).await.unwrap();
        assert!(matches!(&again, PollOutcome::Replay(a) if &**a.message_id() == "m1"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the retry never reached the handler"
        );
        drop((first, again));
        assert_eq!(
            settled.after_settling().await,
            Vec::<String>::new(),
            "still unacked"
        );
        assert_eq!(store.answered(), 1);
    }

    #[tokio::test]
    async fn the_next_sequence_acks_the_previous_answer_and_tells_the_handler_its_id() {
        let (store, metrics) = store(Duration::from_secs(60));
        let settled = Settled::default();
        let last_answered = Arc::new(Mutex::new(Vec::new()));
        let (s, m, seen) = (settled.clone(), metrics.clone(), last_answered.clone());
        let polls = ServiceBuilder::new()
            .layer(SequenceDedupLayer::new(store.clone()))
            .service_fn(move |ctx: PollContext| {
                seen.lock().unwrap().push(ctx.last_answered.clone());
                let sequence = ctx.poll().expect("a poll").sequence;
                let id = format!("m{sequence}");
                let outcome = message(sequence, &id, s.acker(&id, &m));
                async move { Ok::<_, Infallible>(outcome) }
            });
        polls.clone().oneshot(poll(1)).await.unwrap();
        let second = polls.clone().oneshot(poll(2)).await.unwrap();
        assert_eq!(message_id(&second), Some("m2"));
        assert_eq!(settled.after_settling().await, ["ack m1"]);
        assert_eq!(
            *last_answered.lock().unwrap(),
            [None, Some(MessageIds::One("m1".into()))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_of_several_is_replayed_acked_and_requeued_whole() {
        let (store, metrics) = store(Duration::from_secs(5));
        let settled = Settled::default();
        let (s, m) = (settled.clone(), metrics.clone());
        let polls = ServiceBuilder::new()
            .layer(SequenceDedupLayer::new(store.clone()))
            .service_fn(move |ctx: PollContext| {
                let sequence = ctx.poll().expect("a poll").sequence;
                let names: Vec<String> = (1..=3).map(|i| format!("s{sequence}m{i}")).collect();
                let acker = Acker::join(names.iter().map(|id| s.acker(id, &m))).unwrap();
                let ids: Arc<[Arc<str>]> = names.iter().map(|id| Arc::from(id.as_str())).collect();
                let outcome = PollOutcome::Message(DeliveredAnswer::new(
                    Arc::new(Answer {
                        sequence,
                        body: Bytes::from_static(b"[{},{},{}]"),
                        ids: MessageIds::Several(ids),
                        is_error: false,
                    }),
                    acker,
                ));
                async move { Ok::<_, Infallible>(outcome) }
            });
        polls.clone().oneshot(poll(1)).await.unwrap();
        // A retry asking another max gets the same answer.
        let again = polls
            .clone()
            .oneshot(ctx(&format!("uuid={KEY}&sequence=1&max=1")))
            .await
            .unwrap();
        assert!(matches!(&again, PollOutcome::Replay(a) if a.ids.len() == 3));
        // The next sequence acks all three, and its own answer expires whole.
        polls.oneshot(poll(2)).await.unwrap();
        assert_eq!(
            settled.after_settling().await,
            ["ack s1m1", "ack s1m2", "ack s1m3"]
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            settled.after_settling().await[3..],
            ["requeue s2m1", "requeue s2m2", "requeue s2m3"]
        );
    }

    #[tokio::test]
    async fn a_lower_sequence_from_a_client_that_sends_seen_is_stale() {
        let (store, metrics) = store(Duration::from_secs(60));
        let settled = Settled::default();
        let polls = ServiceBuilder::new()
            .layer(SequenceDedupLayer::new(store))
            .service_fn(move |_: PollContext| {
                let outcome = message(5, "m5", settled.acker("m5", &metrics));
                async move { Ok::<_, Infallible>(outcome) }
            });
        polls.clone().oneshot(poll(5)).await.unwrap();
        let stale = ctx(&format!("uuid={KEY}&sequence=4&seen=m5"));
        assert!(matches!(
            polls.oneshot(stale).await.unwrap(),
            PollOutcome::Stale { last_answered: 5 }
        ));
    }

    #[tokio::test]
    async fn a_newer_poll_supersedes_the_held_one() {
        let (store, metrics) = store(Duration::from_secs(60));
        let polls = ServiceBuilder::new()
            .layer(SequenceDedupLayer::new(store))
            .service_fn(|_: PollContext| std::future::pending::<Result<PollOutcome, Infallible>>());
        let mut older = by_hand(polls.clone().oneshot(poll(1)));
        assert!(older.poll_once().is_none(), "held");
        let mut newer = by_hand(polls.oneshot(poll(1)));
        assert!(newer.poll_once().is_none(), "the newer one waits");
        let answer = older.poll_once().expect("answered at once");
        assert!(matches!(answer, Ok(PollOutcome::Superseded)));
        assert_eq!(metrics.supersedes.get(), 1);
    }

    #[tokio::test]
    async fn probes_and_refusals_pass_through_without_sequence_state() {
        let (store, _) = store(Duration::from_secs(60));
        let polls = ServiceBuilder::new()
            .layer(SequenceDedupLayer::new(store.clone()))
            .service_fn(|ctx: PollContext| async move {
                Ok::<_, Infallible>(match ctx.asked {
                    crate::longpoll::Asked::Answer(outcome) => outcome,
                    crate::longpoll::Asked::Poll(_) => panic!("not a poll"),
                })
            });
        for query in ["", "uuid=x", "uuid=other.queue&sequence=1"] {
            let outcome = polls.clone().oneshot(ctx(query)).await.unwrap();
            assert!(
                matches!(
                    outcome,
                    PollOutcome::Probe { .. } | PollOutcome::Rejected(_) | PollOutcome::NotFound
                ),
                "{query}: {outcome:?}"
            );
        }
        // Nothing was admitted: a poll of any sequence now waits.
        assert!(matches!(
            store.begin(KEY, 1, Some(&SeenIds::default())),
            Decision::Wait(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_cut_by_the_timeout_frees_its_uuid_and_its_message_goes_back() {
        let (store, metrics) = store(Duration::from_secs(60));
        let settled = Settled::default();
        let (s, m) = (settled.clone(), metrics.clone());
        // The handler got a message but the timeout cuts the poll before the
        // answer is taken up: the message must go back, the slot be free.
        let polls = ServiceBuilder::new()
            .timeout(Duration::from_secs(270))
            .layer(SequenceDedupLayer::new(store.clone()))
            .service_fn(move |_: PollContext| {
                let acker = s.acker("m1", &m);
                async move {
                    let _holds = acker;
                    std::future::pending::<Result<PollOutcome, Infallible>>().await
                }
            });
        let err = polls.clone().oneshot(poll(1)).await.unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>());
        assert_eq!(settled.after_settling().await, ["requeue m1"]);
        // A new poll of the uuid supersedes nothing: the cut one left the store.
        let mut next = by_hand(polls.oneshot(poll(1)));
        assert!(next.poll_once().is_none());
        assert_eq!(metrics.supersedes.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_not_followed_within_the_replay_ttl_is_requeued() {
        let (store, metrics) = store(Duration::from_secs(5));
        let settled = Settled::default();
        let (s, m) = (settled.clone(), metrics.clone());
        let polls = ServiceBuilder::new()
            .layer(SequenceDedupLayer::new(store.clone()))
            .service_fn(move |_: PollContext| {
                let outcome = message(1, "m1", s.acker("m1", &m));
                async move { Ok::<_, Infallible>(outcome) }
            });
        polls.oneshot(poll(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(settled.after_settling().await, Vec::<String>::new());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(settled.after_settling().await, ["requeue m1"]);
        assert_eq!(store.answered(), 0);
    }

    /// A future polled by hand, once at a time (tokio-test's `task::spawn`).
    struct Task<F>(Pin<Box<F>>);

    fn by_hand<F: Future>(f: F) -> Task<F> {
        Task(Box::pin(f))
    }

    impl<F: Future> Task<F> {
        fn poll_once(&mut self) -> Option<F::Output> {
            let waker = std::task::Waker::noop();
            match self.0.as_mut().poll(&mut Context::from_waker(waker)) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            }
        }
    }
}
