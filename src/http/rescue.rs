//! [`PollRescueLayer`]: the HTTP edge of the poll stack, its outermost layer
//! below CORS. HTTP ends here; everything below it serves a [`PollContext`]
//! and answers a [`PollOutcome`].
//!
//! Owns, for each poll:
//! - the [`PollContext`]: the query parsed (once, here) and the queue rules
//!   applied, and the poll's span recorder when spans are exported; the
//!   request is dropped before anything below is called;
//! - `longpoll_polls_held` (while the poll is under way) and
//!   `longpoll_polls_answered_total` by status, and the end of the poll's span
//!   (status 499 when the client went away first);
//! - the errors of the layers below, turned into the contract's answers:
//!   load shed (over `--max-polls`) → 503 + `Retry-After`; poll timeout → 408,
//!   or 503 + `Retry-After` when the broker was unreachable for the whole wait
//!   (txlongpoll waited through broker loss until its timeout);
//! - the one `PollOutcome` → response conversion of the poll path.
//!
//! Must sit above the load shedder, the concurrency limit and the timeout
//! (their errors are what it rescues) and below CORS (a preflight is not a
//! poll and is not counted).
//!
//! ```
//! # use std::{convert::Infallible, sync::Arc, time::Duration};
//! # use longpoll_gateway::broker::{MemoryBroker, memory::MemoryOptions};
//! # use longpoll_gateway::http::rescue::PollRescueLayer;
//! # use longpoll_gateway::longpoll::{PollContext, PollOutcome, QueueRules};
//! # use longpoll_gateway::telemetry::Metrics;
//! # use tower::{ServiceBuilder, ServiceExt};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # let metrics = Arc::new(Metrics::new());
//! # let broker = Arc::new(MemoryBroker::new(MemoryOptions::default(), metrics.clone()));
//! let polls = ServiceBuilder::new()
//!     .layer(PollRescueLayer::new(metrics, broker, QueueRules::new("longpoll.subscribe.")))
//!     .timeout(Duration::from_secs(270))
//!     .service_fn(|_ctx: PollContext| async { Ok::<_, Infallible>(PollOutcome::Superseded) });
//! let request = http::Request::get("/?uuid=longpoll.subscribe.k&sequence=1").body(()).unwrap();
//! assert_eq!(polls.oneshot(request).await.unwrap().status(), 409);
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use http::Request;
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use crate::broker::{Broker, Connectivity};
use crate::longpoll::{PollContext, PollOutcome, QueueRules};
use crate::telemetry::Metrics;
use crate::telemetry::traces::{self, PollTrace};

/// Seconds a client is asked to wait when the gateway is full or the broker is down.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Makes [`PollRescue`]: the HTTP edge of the poll stack.
#[derive(Clone)]
pub struct PollRescueLayer {
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
    rules: QueueRules,
}

impl PollRescueLayer {
    /// `broker` is asked whether it was reachable when a poll times out;
    /// `rules` decide which queues may be polled.
    pub fn new(metrics: Arc<Metrics>, broker: Arc<dyn Broker>, rules: QueueRules) -> Self {
        PollRescueLayer {
            metrics,
            broker,
            rules,
        }
    }
}

impl<S> Layer<S> for PollRescueLayer {
    type Service = PollRescue<S>;
    fn layer(&self, inner: S) -> PollRescue<S> {
        PollRescue {
            inner,
            metrics: self.metrics.clone(),
            broker: self.broker.clone(),
            rules: self.rules.clone(),
            not_ready: None,
        }
    }
}

/// The service made by [`PollRescueLayer`].
pub struct PollRescue<S> {
    inner: S,
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
    rules: QueueRules,
    /// The error the stack below reported when readied, answered by `call`.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for PollRescue<S> {
    fn clone(&self) -> Self {
        PollRescue {
            inner: self.inner.clone(),
            metrics: self.metrics.clone(),
            broker: self.broker.clone(),
            rules: self.rules.clone(),
            not_ready: None,
        }
    }
}

/// Keeps `longpoll_polls_held` right however the request ends, and ends the
/// poll's span — with status 499 when the client went away first.
struct Held {
    metrics: Arc<Metrics>,
    trace: Option<(PollTrace, opentelemetry::Context)>,
}

impl Held {
    fn new(metrics: &Arc<Metrics>, trace: Option<PollTrace>) -> Self {
        metrics.polls_held.inc();
        Held {
            metrics: metrics.clone(),
            trace: trace.map(|t| (t, traces::current_context())),
        }
    }

    fn answered(mut self, status: u16) {
        if let Some((trace, request)) = self.trace.take() {
            trace.finish(status, &request);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.polls_held.dec();
        if let Some((trace, request)) = self.trace.take() {
            trace.finish(CLIENT_CLOSED_REQUEST, &request);
        }
    }
}

/// nginx's code for "the client closed the connection before the answer".
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl<S, B> Service<Request<B>> for PollRescue<S>
where
    S: Service<PollContext, Response = PollOutcome> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The load shedder below is always ready (it refuses in its `call`
        // instead of making the caller wait); an error is answered by `call`.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.not_ready = Some(e.into());
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let trace = PollTrace::begin();
        let held = Held::new(&self.metrics, trace.clone());
        let ctx = PollContext::new(req.uri().query(), &self.rules, trace);
        // Nothing below needs the request: a held poll keeps neither it nor
        // its head (whose URI may point into hyper's read buffer).
        drop(req);
        // Called here, not in the future: a held poll's future then holds the
        // stack's future only, not the context and a readied copy of the stack.
        let (inner, not_ready) = match self.not_ready.take() {
            Some(e) => (None, Some(e)),
            None => (Some(self.inner.call(ctx)), None),
        };
        RescueFuture {
            inner,
            not_ready,
            started,
            held: Some(held),
            metrics: self.metrics.clone(),
            broker: self.broker.clone(),
        }
    }
}

pin_project! {
    /// The future of [`PollRescue`]: the stack's future, held inline (an
    /// `async` block awaiting it would keep it twice, and boxing it costs an
    /// allocation per poll).
    pub struct RescueFuture<F> {
        #[pin]
        inner: Option<F>,
        not_ready: Option<BoxError>,
        started: Instant,
        held: Option<Held>,
        metrics: Arc<Metrics>,
        broker: Arc<dyn Broker>,
    }
}

impl<F, E> Future for RescueFuture<F>
where
    F: Future<Output = Result<PollOutcome, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = match this.inner.as_mut().as_pin_mut() {
            Some(answer) => std::task::ready!(answer.poll(cx)).map_err(Into::into),
            None => Err(this
                .not_ready
                .take()
                .unwrap_or_else(|| "poll future polled after completion".into())),
        };
        this.inner.set(None);
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => rescue(e, *this.started, this.broker.as_ref()),
        };
        let response = outcome.into_response();
        let status = response.status().as_u16();
        if let Some(held) = this.held.take() {
            held.answered(status);
        }
        this.metrics.poll_answered(status, this.started.elapsed());
        Poll::Ready(Ok(response))
    }
}

/// The answer for an error of the layers below.
fn rescue(error: BoxError, started: Instant, broker: &dyn Broker) -> PollOutcome {
    if error.is::<tower::load_shed::error::Overloaded>() {
        tracing::debug!("poll refused: --max-polls reached");
        return PollOutcome::Unavailable {
            retry_after_secs: RETRY_AFTER_SECS,
        };
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return match broker.connectivity() {
            Connectivity::Disconnected { since } if since <= started => PollOutcome::Unavailable {
                retry_after_secs: RETRY_AFTER_SECS,
            },
            _ => PollOutcome::Timeout,
        };
    }
    tracing::error!(error = %error, "poll failed");
    PollOutcome::Unavailable {
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    use tower::limit::GlobalConcurrencyLimitLayer;
    use tower::{ServiceBuilder, ServiceExt};

    use crate::broker::memory::{MemoryBroker, MemoryOptions};
    use crate::config::{BrokerUrl, Settings};
    use crate::longpoll::Asked;

    fn rescue_layer(broker: Arc<dyn Broker>) -> (PollRescueLayer, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let layer = PollRescueLayer::new(
            metrics.clone(),
            broker,
            QueueRules::new("longpoll.subscribe."),
        );
        (layer, metrics)
    }

    fn embedded() -> Arc<dyn Broker> {
        Arc::new(MemoryBroker::new(
            MemoryOptions::default(),
            Arc::new(Metrics::new()),
        ))
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    async fn text(response: Response) -> (u16, String) {
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The stack below answers what the query decided, and 409 for a poll.
    async fn answer_as_asked(ctx: PollContext) -> Result<PollOutcome, Infallible> {
        Ok(match ctx.asked {
            Asked::Answer(outcome) => outcome,
            Asked::Poll(_) => PollOutcome::Superseded,
        })
    }

    #[tokio::test]
    async fn the_query_is_parsed_once_into_the_context_the_stack_below_gets() {
        let (layer, _) = rescue_layer(embedded());
        let got = Arc::new(Mutex::new(None));
        let seen = got.clone();
        let polls = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |ctx: PollContext| {
                let poll = ctx.poll().expect("a poll");
                *seen.lock().unwrap() = Some((poll.uuid.clone(), poll.sequence, poll.seen.clone()));
                async { Ok::<_, Infallible>(PollOutcome::Timeout) }
            });
        let response = polls
            .oneshot(get(
                "/longpoll/?uuid=longpoll.subscribe.k&sequence=7&seen=m1",
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), 408);
        let (uuid, sequence, seen) = got.lock().unwrap().take().expect("called");
        assert_eq!((uuid.as_str(), sequence), ("longpoll.subscribe.k", 7));
        assert!(seen.is_some_and(|s| s.contains("m1")));
    }

    #[tokio::test]
    async fn a_probe_a_bad_query_and_a_foreign_queue_get_the_contracts_answers() {
        let (layer, metrics) = rescue_layer(embedded());
        let polls = ServiceBuilder::new()
            .layer(layer)
            .service_fn(answer_as_asked);
        for (uri, want) in [
            ("/", (200, "Async frontend for longpoll.subscribe.")),
            ("/?uuid=longpoll.subscribe.k", (400, "Invalid request")),
            (
                "/?uuid=longpoll.subscribe.k&sequence=x",
                (400, "Invalid sequence"),
            ),
            (
                "/?uuid=longpoll.subscribe.k&sequence=1&max=0",
                (400, "Invalid max"),
            ),
            ("/?uuid=other.k&sequence=1", (404, "Not found")),
        ] {
            let response = polls.clone().oneshot(get(uri)).await.unwrap();
            assert_eq!(response.headers()["cache-control"], "no-store", "{uri}");
            let (status, body) = text(response).await;
            assert_eq!((status, body.as_str()), want, "{uri}");
        }
        assert_eq!((metrics.answered(200), metrics.answered(400)), (1, 3));
        assert_eq!(metrics.answered(404), 1);
    }

    #[tokio::test]
    async fn a_poll_is_counted_held_while_under_way_and_not_after_its_client_left() {
        let (layer, metrics) = rescue_layer(embedded());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(Mutex::new(Some(released)));
        let polls = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |_: PollContext| {
                let released = released.lock().unwrap().take();
                async move {
                    match released {
                        Some(r) => {
                            let _ = r.await;
                            Ok::<_, Infallible>(PollOutcome::Superseded)
                        }
                        None => std::future::pending().await,
                    }
                }
            });
        let poll = get("/?uuid=longpoll.subscribe.k&sequence=1");
        let answered = tokio::spawn(polls.clone().oneshot(poll));
        let gone = tokio::spawn(polls.oneshot(get("/?uuid=longpoll.subscribe.j&sequence=1")));
        while metrics.polls_held.get() < 2 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(metrics.polls_held.get(), 1, "the poll whose client left");
        release.send(()).unwrap();
        assert_eq!(answered.await.unwrap().unwrap().status(), 409);
        assert_eq!(metrics.polls_held.get(), 0);
        assert_eq!(metrics.answered(409), 1);
    }

    #[tokio::test]
    async fn a_poll_over_the_limit_is_refused_at_once_with_503_and_retry_after() {
        let (layer, metrics) = rescue_layer(embedded());
        let polls = ServiceBuilder::new()
            .layer(layer)
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(1))
            .service_fn(|_: PollContext| std::future::pending::<Result<PollOutcome, Infallible>>());
        let held = tokio::spawn(
            polls
                .clone()
                .oneshot(get("/?uuid=longpoll.subscribe.a&sequence=1")),
        );
        while metrics.polls_held.get() < 1 {
            tokio::task::yield_now().await;
        }
        let response = polls
            .oneshot(get("/?uuid=longpoll.subscribe.b&sequence=1"))
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        held.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_within_the_poll_timeout_is_408() {
        let (layer, metrics) = rescue_layer(embedded());
        let polls = ServiceBuilder::new()
            .layer(layer)
            .timeout(Duration::from_secs(270))
            .service_fn(|_: PollContext| std::future::pending::<Result<PollOutcome, Infallible>>());
        let started = tokio::time::Instant::now();
        let response = polls
            .oneshot(get("/?uuid=longpoll.subscribe.k&sequence=1"))
            .await
            .unwrap();
        assert_eq!(response.status(), 408);
        assert_eq!(started.elapsed(), Duration::from_secs(270));
        assert_eq!(metrics.answered(408), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_unreachable_for_the_whole_wait_turns_the_timeout_into_503() {
        // A RabbitMQ broker pointed at a port nobody listens on: disconnected
        // from its start, before the poll began.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = Settings {
            broker: BrokerUrl::parse(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).unwrap(),
            ..Settings::default()
        };
        let broker = crate::broker::from_settings(&settings, Arc::new(Metrics::new())).unwrap();
        let (layer, _) = rescue_layer(broker.clone());
        let polls = ServiceBuilder::new()
            .layer(layer)
            .timeout(Duration::from_secs(270))
            .service_fn(|_: PollContext| std::future::pending::<Result<PollOutcome, Infallible>>());
        let response = polls
            .oneshot(get("/?uuid=longpoll.subscribe.k&sequence=1"))
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        broker.close().await;
    }
}
