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
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

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
        let answer = match self.not_ready.take() {
            Some(e) => Err(e),
            None => Ok(self.inner.call(req)),
        };
        let metrics = self.metrics.clone();
        let broker = self.broker.clone();
        Box::pin(async move {
            let result = match answer {
                Ok(answer) => answer.await.map_err(Into::into),
                Err(e) => Err(e),
            };
            let response = match result {
                Ok(response) => response,
                Err(e) => rescue(e, started, broker.as_ref()),
            };
            let status = response.status().as_u16();
            held.answered(status);
            metrics.poll_answered(status, started.elapsed());
            Ok(response)
        })
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
