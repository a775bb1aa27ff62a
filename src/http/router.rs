//! The one place where routes and layers are put together.
//!
//! Public listener, outermost first (before it, as hyper hands a request over,
//! `http::server` answers a URI over --max-uri-bytes 414 and a head over
//! --max-header-bytes 431: see `http::head`):
//!
//! ```text
//! request id (x-request-id: set if absent, echoed back)
//! RequestSpanLayer           span per request; the path only, keys redacted
//! PollsOrRoutes              a path under /api, /longpoll. or /demo → the router:
//! ├─ /api/...                management API (token, JSON)      — api::routes
//! ├─ /longpoll[.{hash}].{js,mjs}, /demo[.css|.js]  static assets — http::assets
//! └─ any other path (straight, or as the router's fallback): the long-poll stack
//!      CORS                  --cors-origin (answers preflights before anything counts them)
//!      PollRescueLayer       held/answered metrics; overload and timeout → 503 / 408
//!      LoadShed              refuse at once instead of queueing when full…
//!      GlobalConcurrencyLimit  …at --max-polls, one semaphore for the whole replica
//!      Timeout               --poll-timeout
//!      SequenceDedupLayer    replay, supersede, stale, ack-on-next
//!      poll handler
//! ```
//!
//! The admin listener (`/healthz`, `/readyz`, `/metrics`) is a separate router
//! so that it never shares a port with anything an ingress routes.

use std::borrow::Cow;
use std::convert::Infallible;
use std::task::Poll;

use axum::Router;
use axum::body::Body;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::Request;
use http::header::{HeaderName, HeaderValue};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use super::request_span::{RequestScope, RequestSpanLayer};
use super::rescue::PollRescueLayer;
use super::{AppState, HttpService};
use crate::longpoll::{PollContext, QueueRules, SequenceDedupLayer, handle_poll};
use crate::telemetry::key_hash;
use crate::telemetry::request_fields::{self, RequestFields, RequestLogging};
use crate::telemetry::traces;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The public service: the routes behind the request-id and trace layers.
///
/// The layers wrap the router rather than go in through `Router::layer`: axum
/// would wrap each route in them and box the result, two boxed futures more
/// per request (and per held poll). Out here their futures sit inline in the
/// one hyper keeps per connection.
pub fn app(state: &AppState) -> impl HttpService {
    // One poll stack, shared: its concurrency limit is one semaphore.
    let polls = poll_stack(state);
    let routes = Router::new()
        .merge(crate::api::routes(state.api.clone()))
        .merge(super::assets::routes())
        .fallback_service(polls.clone());
    let routes = PollsOrRoutes {
        polls: std::sync::Arc::new(polls),
        routes,
    };
    ServiceBuilder::new()
        .map_response(axum::response::IntoResponse::into_response)
        .layer(SetRequestIdLayer::new(REQUEST_ID, NewRequestId))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(RequestSpanLayer::new(make_span))
        .service(routes)
}

/// Sends a path no route can match straight to the poll stack, and the rest
/// through the router (whose fallback is the same stack).
///
/// Through the router a poll's future is boxed twice (the fallback is a boxed
/// service inside a boxed route) and the stack is cloned into a box of its own;
/// here the stack is cloned out of an `Arc` and its future sits inline in the
/// one hyper keeps per connection: ~1 KB less heap per held poll (0.3 KB
/// resident). The stack is behind an `Arc` so that the service every
/// connection clones stays small. Every route's path starts with one of
/// [`ROUTED_PREFIXES`], so each request gets the answer the router alone would
/// give it; a route added outside them would never be reached, and its own
/// tests would say so.
#[derive(Clone)]
struct PollsOrRoutes<P> {
    polls: std::sync::Arc<P>,
    routes: Router,
}

/// The prefixes of every path the router has a route for (the API's and the
/// assets'); a test below keeps this in step with the routes.
const ROUTED_PREFIXES: [&str; 3] = ["/api", "/longpoll.", "/demo"];

fn may_be_routed(path: &str) -> bool {
    ROUTED_PREFIXES.iter().any(|p| path.starts_with(p))
}

impl<P: HttpService> tower::Service<Request<Body>> for PollsOrRoutes<P> {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Either<
        tower::util::Oneshot<P, Request<Body>>,
        <Router as tower::Service<Request<Body>>>::Future,
    >;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each request readies its own clone of the stack, as the router does
        // (the router itself is always ready).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if may_be_routed(req.uri().path()) {
            Either::Right(self.routes.call(req))
        } else {
            Either::Left(P::clone(&self.polls).oneshot(req))
        }
    }
}

/// `x-request-id` for a request that comes without one: a v4 UUID, written
/// into a buffer on the stack (tower-http's `MakeRequestUuid` formats it into a
/// `String` first, on every request).
#[derive(Debug, Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut text = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// The long-poll stack, outermost first (see the module docs for why each layer
/// sits where it does). Not boxed here: the router boxes it once (a second box
/// would cost an allocation per poll and a pointer chase per wake-up).
pub fn poll_stack(state: &AppState) -> impl HttpService {
    let settings = &state.settings;
    let rules = QueueRules::new(settings.queue_prefix.clone());
    // One shared context: a request clones one `Arc`, not each of its parts.
    let ctx = std::sync::Arc::new(PollContext {
        broker: state.broker.clone(),
        rules: rules.clone(),
        metrics: state.metrics.clone(),
        shutdown: state.shutdown.clone(),
    });
    let handler = tower::service_fn(move |req: Request<Body>| {
        handle_poll(ctx.clone(), req).map(Ok::<_, Infallible>)
    });
    ServiceBuilder::new()
        .option_layer(cors_layer(&settings.cors_origins))
        .layer(PollRescueLayer::new(
            state.metrics.clone(),
            state.broker.clone(),
        ))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(settings.max_polls))
        .layer(TimeoutLayer::new(settings.poll_timeout))
        .layer(SequenceDedupLayer::new(state.store.clone(), rules))
        .service(handler)
}

/// The request headers a poll from another origin may carry: what real clients
/// send besides the simple ones. YUI 3's io (Launchpad's and MAAS's clients) and
/// jQuery add `X-Requested-With` to every request; pages and frameworks add cache
/// headers, conditional-request headers, `Content-Type`, an EventSource-style
/// `Last-Event-ID`, and W3C trace context. A preflight naming any header outside
/// this list is answered without it, and the browser refuses the poll.
pub const CORS_REQUEST_HEADERS: [HeaderName; 9] = [
    HeaderName::from_static("x-requested-with"),
    http::header::CACHE_CONTROL,
    http::header::PRAGMA,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::CONTENT_TYPE,
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// CORS for pages on other origins that poll (none configured: no CORS headers).
pub fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([http::Method::GET])
            .allow_headers(CORS_REQUEST_HEADERS)
            .expose_headers([
                HeaderName::from_static(crate::longpoll::SEQUENCE_HEADER),
                HeaderName::from_static(crate::longpoll::MESSAGE_ID_HEADER),
                http::header::RETRY_AFTER,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The request span: method, path (subscription keys in API paths redacted to
/// a short hash), request id. Never the query: it holds the key. Where the log
/// lines need no span, the same fields without one (`telemetry::request_fields`).
fn make_span(req: &Request<Body>) -> RequestScope {
    let request_id = req.headers().get(&REQUEST_ID);
    let path = redact_path(req.uri().path());
    // An incoming traceparent is honoured: the request continues that trace.
    let incoming = traces::context_from_http(req.headers());
    // A fresh id is written on the stack: no string of its own per request.
    let mut fresh = [0u8; 32];
    if !traces::enabled() && request_fields::request_logging() == RequestLogging::Fields {
        let mut trace_id = [0u8; 32];
        let caller = caller_or_fresh(incoming.as_ref(), &mut fresh);
        if caller.len() == trace_id.len() {
            trace_id.copy_from_slice(caller.as_bytes());
        } else {
            let _ = fresh_trace_id(&mut trace_id);
        }
        return RequestScope::Fields(Box::new(RequestFields {
            method: req.method().clone(),
            // A poll's path, the common case, needs no string of its own.
            path: match path {
                Cow::Borrowed("/") => Cow::Borrowed("/"),
                path => Cow::Owned(path.into_owned()),
            },
            request_id: request_id.cloned(),
            trace_id,
        }));
    }
    let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    // Fields as `&str`, not `%display`: the JSON log layer copies a string as it
    // is, where a Display value goes through the formatting machinery.
    macro_rules! request_span {
        ($trace_id:expr) => {
            tracing::info_span!(
                "request",
                method = req.method().as_str(),
                path = &*path,
                request_id = request_id,
                trace_id = $trace_id,
            )
        };
    }
    if !traces::enabled() {
        // No span exporter: the trace id every log line of the request carries
        // is the caller's, else a fresh one, known before the span is made.
        // (Recording it afterwards makes the JSON log layer parse and rewrite
        // the span's fields: a tenth of the CPU of a poll.)
        let trace_id = caller_or_fresh(incoming.as_ref(), &mut fresh);
        return RequestScope::Span(request_span!(&*trace_id));
    }
    let span = request_span!(tracing::field::Empty);
    if let Some(cx) = &incoming {
        let _ = span.set_parent(cx.clone());
    }
    // Spans exported: the span's own trace id (its caller's when it has one).
    let mut trace_id: Cow<'_, str> = Cow::Owned(traces::trace_id_of(&span.context()));
    if trace_id.is_empty() {
        trace_id = caller_or_fresh(incoming.as_ref(), &mut fresh);
    }
    span.record("trace_id", &*trace_id);
    RequestScope::Span(span)
}

/// The caller's trace id, else a fresh one written into `fresh`.
fn caller_or_fresh<'a>(
    incoming: Option<&opentelemetry::Context>,
    fresh: &'a mut [u8; 32],
) -> Cow<'a, str> {
    match incoming {
        Some(cx) => Cow::Owned(traces::trace_id_of(cx)),
        None => Cow::Borrowed(fresh_trace_id(fresh)),
    }
}

/// A random 128-bit trace id in lowercase hex, written into `buf`.
fn fresh_trace_id(buf: &mut [u8; 32]) -> &str {
    let _ = hex::encode_to_slice(rand::random::<[u8; 16]>(), buf);
    std::str::from_utf8(buf).unwrap_or_default()
}

/// `/api/v1/subscriptions/{key}/...` → `/api/v1/subscriptions/key:{hash}/...`.
pub fn redact_path(path: &str) -> Cow<'_, str> {
    const PREFIX: &str = "/api/v1/subscriptions/";
    match path.strip_prefix(PREFIX) {
        Some(rest) => {
            let (key, tail) = rest.split_once('/').map_or((rest, ""), |(k, t)| (k, t));
            let sep = if tail.is_empty() && !rest.contains('/') {
                ""
            } else {
                "/"
            };
            Cow::Owned(format!("{PREFIX}key:{}{sep}{tail}", key_hash(key)))
        }
        None => Cow::Borrowed(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_routed_path_goes_to_the_router() {
        let (js, mjs) = crate::http::assets::versioned_paths();
        let routed = [
            "/api",
            "/api/v1/subscriptions",
            "/api/v1/subscriptions/k/bindings",
            "/api/v1/events/e",
            "/api/unknown",
            "/longpoll.js",
            "/longpoll.mjs",
            &js,
            &mjs,
            "/demo",
            "/demo.css",
            "/demo.js",
        ];
        for path in routed {
            assert!(may_be_routed(path), "{path}");
        }
        for path in ["/", "/longpoll/", "/longpoll", "/poll", "/API/v1/events/e"] {
            assert!(!may_be_routed(path), "{path}");
        }
    }

    #[test]
    fn fresh_trace_ids_are_32_hex_digits_and_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let (a, b) = (fresh_trace_id(&mut a), fresh_trace_id(&mut b));
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn api_paths_lose_their_keys() {
        let p = redact_path("/api/v1/subscriptions/longpoll.subscribe.abc/bindings");
        assert!(!p.contains("longpoll.subscribe.abc"));
        assert!(p.starts_with("/api/v1/subscriptions/key:"));
        assert!(p.ends_with("/bindings"));
        let d = redact_path("/api/v1/subscriptions/longpoll.subscribe.abc");
        assert!(!d.contains("abc") && !d.ends_with('/'));
        assert_eq!(redact_path("/longpoll/"), "/longpoll/");
    }
}
