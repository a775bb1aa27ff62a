//! [`RequestSpanLayer`]: one `request` span per request, entered whenever the
//! request's future runs, so that every log line written while serving it
//! carries the request's fields (its request and trace ids) — or, where the
//! log lines need no span (`telemetry::request_fields`), the same fields made
//! current in the span's stead.
//!
//! Owns: making the span or the fields (through the `make_span` it is given),
//! keeping them current while the request's future runs, and the two DEBUG
//! lines, "started processing request" and "finished processing request"
//! (status, latency).
//! Must not: change requests and responses (it reads only an answer's status,
//! for the DEBUG line).
//!
//! It replaces tower-http's `TraceLayer`, which on top of the span reads the
//! clock at every request, answer and body frame and wraps every response body,
//! for DEBUG lines that are off in production: ~3% of the CPU of a delivery on
//! the embedded broker (benches/README.md). Here the clock is read only when
//! DEBUG is on, and bodies pass untouched (every answer is a whole body).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;

use crate::telemetry::request_fields::{self, RequestFields};

/// What carries a request's log fields: a span, or the fields themselves.
pub enum RequestScope {
    Span(Span),
    Fields(Box<RequestFields>),
}

/// Wraps a service in a span (or fields) per request, made by `make_span`.
#[derive(Clone, Copy)]
pub struct RequestSpanLayer<M> {
    make_span: M,
}

impl<M> RequestSpanLayer<M> {
    pub fn new(make_span: M) -> Self {
        RequestSpanLayer { make_span }
    }
}

impl<S, M: Clone> Layer<S> for RequestSpanLayer<M> {
    type Service = RequestSpan<S, M>;
    fn layer(&self, inner: S) -> RequestSpan<S, M> {
        RequestSpan {
            inner,
            make_span: self.make_span.clone(),
        }
    }
}

#[derive(Clone, Copy)]
pub struct RequestSpan<S, M> {
    inner: S,
    make_span: M,
}

impl<S, M, B, ResB> Service<Request<B>> for RequestSpan<S, M>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    M: Fn(&Request<B>) -> RequestScope,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RequestSpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (span, mut fields) = match (self.make_span)(&req) {
            RequestScope::Span(span) => (span, None),
            RequestScope::Fields(fields) => (Span::none(), Some(fields)),
        };
        let inner = &mut self.inner;
        let (inner, started) = {
            let _entered = span.enter();
            request_fields::in_request(&mut fields, || {
                // `enabled!` is a cached per-callsite check: no clock read at INFO.
                let started = tracing::enabled!(tracing::Level::DEBUG).then(|| {
                    tracing::debug!("started processing request");
                    Instant::now()
                });
                (inner.call(req), started)
            })
        };
        RequestSpanFuture {
            inner,
            span,
            fields,
            started,
        }
    }
}

pin_project! {
    /// The inner future, run inside the request's span (or with its fields current).
    pub struct RequestSpanFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        fields: Option<Box<RequestFields>>,
        started: Option<Instant>,
    }
}

impl<F, ResB, E> Future for RequestSpanFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let (inner, started) = (this.inner, this.started);
        request_fields::in_request(this.fields, || {
            let output = std::task::ready!(inner.poll(cx));
            if let Some(started) = started.take() {
                let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
                match &output {
                    Ok(response) => tracing::debug!(
                        status = response.status().as_u16(),
                        latency_ms,
                        "finished processing request"
                    ),
                    Err(_) => tracing::debug!(latency_ms, "request failed"),
                }
            }
            Poll::Ready(output)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use tower::{ServiceBuilder, ServiceExt};

    /// The names of the spans that were current while the service ran.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<Option<&'static str>>>>);

    #[tokio::test]
    async fn the_inner_service_and_its_future_run_inside_the_request_span() {
        let subscriber = tracing_subscriber::registry();
        let _default = tracing::subscriber::set_default(subscriber);
        let seen = Seen::default();
        let (at_call, at_poll) = (seen.clone(), seen.clone());
        let inner = tower::service_fn(move |_req: Request<()>| {
            at_call
                .0
                .lock()
                .unwrap()
                .push(Span::current().metadata().map(|m| m.name()));
            let at_poll = at_poll.clone();
            async move {
                tokio::task::yield_now().await;
                at_poll
                    .0
                    .lock()
                    .unwrap()
                    .push(Span::current().metadata().map(|m| m.name()));
                Ok::<_, Infallible>(Response::new(()))
            }
        });
        let service = ServiceBuilder::new()
            .layer(RequestSpanLayer::new(|_: &Request<()>| {
                RequestScope::Span(tracing::info_span!("request"))
            }))
            .service(inner);
        let response = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(*seen.0.lock().unwrap(), [Some("request"), Some("request")]);
        assert!(Span::current().is_none(), "left the span afterwards");
    }

    #[tokio::test]
    async fn the_inner_service_and_its_future_run_with_the_request_fields_current() {
        let current = || request_fields::current().map(|f| f.request_id().to_owned());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (at_call, at_poll) = (seen.clone(), seen.clone());
        let inner = tower::service_fn(move |_req: Request<()>| {
            at_call.lock().unwrap().push(current());
            let at_poll = at_poll.clone();
            async move {
                tokio::task::yield_now().await;
                at_poll.lock().unwrap().push(current());
                Ok::<_, Infallible>(Response::new(()))
            }
        });
        let service = ServiceBuilder::new()
            .layer(RequestSpanLayer::new(|_: &Request<()>| {
                RequestScope::Fields(Box::new(RequestFields {
                    method: http::Method::GET,
                    path: "/".into(),
                    request_id: Some(http::HeaderValue::from_static("r-9")),
                    trace_id: [b'0'; 32],
                }))
            }))
            .service(inner);
        let response = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), 200);
        let expected = Some("r-9".to_owned());
        assert_eq!(*seen.lock().unwrap(), [expected.clone(), expected]);
        assert_eq!(current(), None, "not current afterwards");
    }
}
