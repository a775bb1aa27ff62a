//! [`PollRescueLayer`]: the outermost layer of the poll stack. It counts held
//! polls and answers by status, and turns the errors of the layers below into
//! the contract's answers:
//!
//! - load shed (over `--max-polls`) → 503 + `Retry-After`;
//! - poll timeout → 408, or 503 + `Retry-After` when the broker was unreachable
//!   for the whole wait (txlongpoll waited through broker loss until its timeout).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use crate::broker::{Broker, Connectivity};
use crate::longpoll::PollOutcome;
use crate::telemetry::Metrics;
use crate::telemetry::traces::{self, PollTrace};

/// Seconds a client is asked to wait when the gateway is full or the broker is down.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Clone)]
pub struct PollRescueLayer {
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
}

impl PollRescueLayer {
    pub fn new(metrics: Arc<Metrics>, broker: Arc<dyn Broker>) -> Self {
        PollRescueLayer { metrics, broker }
    }
}

impl<S> Layer<S> for PollRescueLayer {
    type Service = PollRescue<S>;
    fn layer(&self, inner: S) -> PollRescue<S> {
        PollRescue {
            inner,
            metrics: self.metrics.clone(),
            broker: self.broker.clone(),
            not_ready: None,
        }
    }
}

pub struct PollRescue<S> {
    inner: S,
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
    /// The error the stack below reported when readied, answered by `call`.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for PollRescue<S> {
    fn clone(&self) -> Self {
        PollRescue {
            inner: self.inner.clone(),
            metrics: self.metrics.clone(),
            broker: self.broker.clone(),
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

impl<S> Service<Request<Body>> for PollRescue<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let trace = PollTrace::begin();
        if let Some(t) = &trace {
            req.extensions_mut().insert(t.clone());
        }
        let held = Held::new(&self.metrics, trace);
        // Called here, not in the future: a held poll's future then holds the
        // stack's future only, not the request and a readied copy of the stack.
        let (inner, not_ready) = match self.not_ready.take() {
            Some(e) => (None, Some(e)),
            None => (Some(self.inner.call(req)), None),
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
    F: Future<Output = Result<Response, E>>,
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
        let response = match result {
            Ok(response) => response,
            Err(e) => rescue(e, *this.started, this.broker.as_ref()),
        };
        let status = response.status().as_u16();
        if let Some(held) = this.held.take() {
            held.answered(status);
        }
        this.metrics.poll_answered(status, this.started.elapsed());
        Poll::Ready(Ok(response))
    }
}

fn rescue(error: BoxError, started: Instant, broker: &dyn Broker) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        tracing::debug!("poll refused: --max-polls reached");
        return PollOutcome::Unavailable {
            retry_after_secs: RETRY_AFTER_SECS,
        }
        .into_response();
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return match broker.connectivity() {
            Connectivity::Disconnected { since } if since <= started => PollOutcome::Unavailable {
                retry_after_secs: RETRY_AFTER_SECS,
            },
            _ => PollOutcome::Timeout,
        }
        .into_response();
    }
    tracing::error!(error = %error, "poll failed");
    PollOutcome::Unavailable {
        retry_after_secs: RETRY_AFTER_SECS,
    }
    .into_response()
}
