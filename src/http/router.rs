//! The one place where routes and layers are put together: [`app`] composes
//! the public listener's whole stack in one `ServiceBuilder`, outermost first,
//! with the reason for each layer beside it.
//!
//! ```text
//! hyper connection ── http::server: a head over --max-uri-bytes / --max-header-bytes
//!   │                 is 414 / 431; header values copied out of hyper's read buffer
//!   ▼
//! SetRequestId + PropagateRequestId   x-request-id: the caller's or a fresh v4 UUID, echoed
//! RequestSpanLayer                    span (or log fields) per request; path only, keys redacted
//! PollsOrRoutes ── /api…, /longpoll.…, /demo… ──► Router: api::routes, assets::routes
//!   │  any other path (and the router's fallback)
//!   ▼  ── the poll stack ──
//! CORS                                --cors-origin; a preflight is answered before anything counts it
//! PollRescueLayer                     HTTP ends: query → PollContext (parsed once); held/answered
//!   │                                 metrics; overload → 503, timeout → 408/503; PollOutcome → Response
//!   ▼  PollContext down, PollOutcome up
//! LoadShed                            refuse at once instead of queueing when full…
//! GlobalConcurrencyLimit              …at --max-polls, one semaphore for the whole replica
//! Timeout                             --poll-timeout
//! SequenceDedupLayer                  replay, supersede, stale, ack-on-next
//! PollHandler                         wait on the Broker for the queue's next message
//! ```
//!
//! The admin listener (`/healthz`, `/readyz`, `/metrics`) is a separate router
//! (`http::admin`) so that it never shares a port with anything an ingress
//! routes. docs/architecture.md draws the stack and a message's life.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::Poll;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::Request;
use http::header::{HeaderName, HeaderValue};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use super::request_span::{RequestScope, RequestSpanLayer};
use super::rescue::PollRescueLayer;
use super::{AppState, HttpService};
use crate::longpoll::{PollContext, PollHandler, PollOutcome, QueueRules, SequenceDedupLayer};
use crate::telemetry::key_hash;
use crate::telemetry::request_fields::{self, RequestFields, RequestLogging};
use crate::telemetry::traces;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The public listener's service: every route and the poll stack, composed
/// top to bottom (see the module docs for the picture).
///
/// The layers wrap the router rather than go in through `Router::layer`: axum
/// would wrap each route in them and box the result, two boxed futures more
/// per request (and per held poll), and `Router::layer` would give each route
/// its own concurrency limit. Out here their futures sit inline in the one
/// hyper keeps per connection.
pub fn app(state: &AppState) -> impl HttpService {
    let settings = &state.settings;
    ServiceBuilder::new()
        // axum's `Response` for what tower-http's layers below hand back.
        .map_response(IntoResponse::into_response)
        // Outermost, so that every answer (a 503 of the poll stack too) carries
        // the request id, and the span below can log it.
        .layer(SetRequestIdLayer::new(REQUEST_ID, NewRequestId))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        // Above the routing: the API's and the assets' log lines carry the
        // request's fields as the polls' do.
        .layer(RequestSpanLayer::new(make_span))
        // A path no route can match skips the router: its two boxes per poll
        // cost ~0.9 KB per held poll (see `PollsOrRoutes`).
        .layer(PollsOrRoutesLayer::new(routes(state)))
        // The poll stack from here on. CORS first: a preflight is not a poll.
        .option_layer(cors_layer(&settings.cors_origins))
        // The HTTP edge: the query parsed once into a `PollContext`, polls
        // counted, the errors of the three layers below answered 503 / 408.
        .layer(PollRescueLayer::new(
            state.metrics.clone(),
            state.broker.clone(),
            QueueRules::new(settings.queue_prefix.clone()),
        ))
        // Refuses at once when the limit below is full (a queued poll would
        // hold its connection and memory without counting)…
        .layer(LoadShedLayer::new())
        // …which is --max-polls for the whole replica: one semaphore, shared
        // by every connection's clone of the stack.
        .layer(GlobalConcurrencyLimitLayer::new(settings.max_polls))
        // --poll-timeout → 408; above the sequence layer, so that a poll cut
        // here drops its ticket and frees its uuid's held slot.
        .layer(TimeoutLayer::new(settings.poll_timeout))
        // The sequence contract; directly above the handler, so that a
        // message's ack handle is taken before anything else could drop it.
        .layer(SequenceDedupLayer::new(state.store.clone()))
        .service(poll_handler(state))
}

/// Every route of the public listener: the management API and the static
/// assets. Any path they do not match is a poll.
pub fn routes(state: &AppState) -> Router {
    Router::new()
        .merge(crate::api::routes(state.api.clone()))
        .merge(super::assets::routes())
}

/// The innermost service of the poll stack: one [`PollHandler`] shared by
/// every poll.
fn poll_handler(
    state: &AppState,
) -> impl tower::Service<PollContext, Response = PollOutcome, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let handler = Arc::new(PollHandler {
        broker: state.broker.clone(),
        metrics: state.metrics.clone(),
        shutdown: state.shutdown.clone(),
    });
    tower::service_fn(move |ctx: PollContext| handler.clone().handle(ctx).map(Ok::<_, Infallible>))
}

/// Makes [`PollsOrRoutes`] around the poll stack, with `routes` as the router
/// (whose fallback becomes the same poll stack).
#[derive(Clone)]
pub struct PollsOrRoutesLayer {
    routes: Router,
}

impl PollsOrRoutesLayer {
    pub fn new(routes: Router) -> Self {
        PollsOrRoutesLayer { routes }
    }
}

impl<P: HttpService> Layer<P> for PollsOrRoutesLayer {
    type Service = PollsOrRoutes<P>;

    fn layer(&self, polls: P) -> PollsOrRoutes<P> {
        PollsOrRoutes {
            routes: self.routes.clone().fallback_service(polls.clone()),
            polls: Arc::new(polls),
        }
    }
}

/// Sends a path no route can match straight to the poll stack, and the rest
/// through the router (whose fallback is the same stack).
///
/// Through the router a poll's future is boxed twice (the fallback is a boxed
/// service inside a boxed route) and the stack is cloned into a box of its own;
/// here the stack is cloned out of an `Arc` and its future sits inline in the
/// one hyper keeps per connection: 0.8–1.0 KB less resident memory per held
/// poll (10,000 held on the embedded broker, four alternated rounds against
/// the same build routing every path: 8.26–8.41 KB against 9.08–9.36 KB).
/// The stack is behind an `Arc` so that the service every
/// connection clones stays small. Every route's path starts with one of
/// [`ROUTED_PREFIXES`], so each request gets the answer the router alone would
/// give it; the tests below ask the real router to make sure.
#[derive(Clone)]
pub struct PollsOrRoutes<P> {
    polls: Arc<P>,
    routes: Router,
}

/// The prefixes of every path the router has a route for (the API's and the
/// assets').
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
                HeaderName::from_static(crate::longpoll::COUNT_HEADER),
                HeaderName::from_static(crate::longpoll::MESSAGE_IDS_HEADER),
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

    use std::sync::Arc;

    use axum::response::Response;
    use proptest::strategy::{Strategy, ValueTree};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::broker::memory::{MemoryBroker, MemoryOptions};
    use crate::config::{ApiToken, Settings};
    use crate::shutdown::Shutdown;
    use crate::telemetry::Metrics;

    const TOKEN: &str = "router-test-token";

    /// The state of a gateway on the embedded broker, with the API enabled.
    fn state(tweak: impl FnOnce(&mut Settings)) -> AppState {
        let mut settings = Settings {
            api_token: Some(ApiToken::new(TOKEN)),
            ..Settings::default()
        };
        tweak(&mut settings);
        let metrics = Arc::new(Metrics::new());
        let broker = Arc::new(MemoryBroker::new(
            MemoryOptions::from_settings(&settings),
            metrics.clone(),
        ));
        AppState::new(Arc::new(settings), broker, metrics, Shutdown::new())
    }

    /// An answer as a comparable whole: status, headers, body.
    async fn whole(response: Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let status = response.status().as_u16();
        let mut headers: Vec<_> = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        headers.sort();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, body.to_vec())
    }

    /// Stands in for the poll stack: says it was reached.
    fn poll_stack_marker() -> impl HttpService {
        tower::service_fn(|_: Request<Body>| async {
            let mut r = Response::new(Body::from("the poll stack"));
            *r.status_mut() = http::StatusCode::IM_A_TEAPOT;
            Ok::<_, Infallible>(r)
        })
    }

    /// `(method, path)`: with the bypass and through the router alone (its
    /// fallback the same poll stack), the same answer.
    async fn assert_same_answer(routes: &Router, method: &http::Method, path: &str) {
        let request = || {
            Request::builder()
                .method(method.clone())
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap()
        };
        let bypass = PollsOrRoutesLayer::new(routes.clone()).layer(poll_stack_marker());
        let router_alone = routes.clone().fallback_service(poll_stack_marker());
        let with_bypass = whole(bypass.oneshot(request()).await.unwrap()).await;
        let without = whole(router_alone.oneshot(request()).await.unwrap()).await;
        assert_eq!(with_bypass, without, "{method} {path}");
    }

    const METHODS: [http::Method; 4] = [
        http::Method::GET,
        http::Method::POST,
        http::Method::DELETE,
        http::Method::OPTIONS,
    ];

    #[tokio::test]
    async fn every_route_answers_the_same_with_the_bypass_as_through_the_router_alone() {
        for api_token in [Some(ApiToken::new(TOKEN)), None] {
            let routes = routes(&state(|s| s.api_token = api_token));
            let (js, mjs) = crate::http::assets::versioned_paths();
            let paths = [
                "/",
                "/api",
                "/api/",
                "/api/v1/subscriptions",
                "/api/v1/subscriptions/longpoll.subscribe.k",
                "/api/v1/subscriptions/longpoll.subscribe.k/bindings",
                "/api/v1/events/longpoll.event.e",
                "/api/unknown",
                "/longpoll.js",
                "/longpoll.mjs",
                &js,
                &mjs,
                "/demo",
                "/demo.css",
                "/demo.js",
                "/longpoll/",
                "/longpoll",
                "/+longpoll/",
                "/poll",
                "/API/v1/events/e",
                "/healthz",
                "/metrics",
            ];
            for path in paths {
                for method in &METHODS {
                    assert_same_answer(&routes, method, path).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn any_path_answers_the_same_with_the_bypass_as_through_the_router_alone() {
        let routes = routes(&state(|_| {}));
        let (js, mjs) = crate::http::assets::versioned_paths();
        let pieces: Vec<String> = [
            "",
            "api",
            "API",
            "v1",
            "subscriptions",
            "events",
            "bindings",
            "longpoll",
            "longpoll.js",
            "longpoll.mjs",
            "demo",
            "demo.css",
            "demo.js",
            "healthz",
            "readyz",
            "metrics",
            "longpoll.subscribe.k",
            "x.js",
            "index.html",
            ".",
            "..",
            "%2F",
        ]
        .iter()
        .map(|p| p.to_string())
        .chain([js[1..].to_owned(), mjs[1..].to_owned()])
        .collect();
        let paths = proptest::collection::vec(proptest::sample::select(pieces), 1..5)
            .prop_map(|segments| format!("/{}", segments.join("/")));
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for _ in 0..300 {
            let path = paths.new_tree(&mut runner).unwrap().current();
            let method = &METHODS[path.len() % METHODS.len()];
            assert_same_answer(&routes, method, &path).await;
        }
    }

    async fn send(app: &impl HttpService, request: Request<Body>) -> (u16, http::HeaderMap, Value) {
        let response = app.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        (status, headers, body)
    }

    fn api_post(path: &str, body: Value) -> Request<Body> {
        Request::post(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn app_answers_a_poll_with_the_event_the_api_emitted_then_replays_it() {
        let app = app(&state(|_| {}));
        let (status, _, created) = send(
            &app,
            api_post(
                "/api/v1/subscriptions",
                json!({"event_keys": ["longpoll.event.a"]}),
            ),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let key = created["key"].as_str().unwrap().to_owned();
        let (status, _, emitted) = send(
            &app,
            api_post("/api/v1/events/longpoll.event.a", json!({"n": 1})),
        )
        .await;
        assert_eq!(status, 202, "{emitted}");
        let poll = format!("/longpoll/?uuid={key}&sequence=1");
        let (status, headers, body) = send(&app, get(&poll)).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"n": 1, "event_key": "longpoll.event.a"}));
        assert_eq!(headers["x-longpoll-sequence"], "1");
        assert_eq!(
            headers["x-longpoll-message-id"],
            emitted["message_id"].as_str().unwrap()
        );
        assert_eq!(headers["cache-control"], "no-store");
        assert!(headers.contains_key("x-request-id"));
        let (status, again, body_again) = send(&app, get(&poll)).await;
        assert_eq!((status, body_again), (200, body), "the same answer again");
        assert_eq!(
            again["x-longpoll-message-id"],
            headers["x-longpoll-message-id"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn app_holds_a_poll_until_the_poll_timeout_then_answers_408() {
        let app = app(&state(|s| {
            s.poll_timeout = std::time::Duration::from_secs(270)
        }));
        let (_, _, created) = send(
            &app,
            api_post(
                "/api/v1/subscriptions",
                json!({"event_keys": ["longpoll.event.b"]}),
            ),
        )
        .await;
        let key = created["key"].as_str().unwrap();
        let started = tokio::time::Instant::now();
        let (status, _, _) = send(&app, get(&format!("/?uuid={key}&sequence=1"))).await;
        assert_eq!(status, 408);
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(270));
    }

    #[tokio::test]
    async fn app_keeps_its_routes_and_sends_every_other_path_to_the_poll_stack() {
        let app = app(&state(|_| {}));
        let (status, headers, _) = send(&app, get("/longpoll.js")).await;
        assert_eq!(status, 200);
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .contains("javascript")
        );
        assert_eq!(send(&app, get("/demo")).await.0, 200);
        let unauthenticated = Request::post("/api/v1/subscriptions")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, unauthenticated).await.0, 401);
        for probe in ["/", "/longpoll/", "/any/path"] {
            let (status, headers, body) = send(&app, get(probe)).await;
            assert_eq!(
                (status, body),
                (200, Value::from("Async frontend for longpoll.subscribe.")),
                "{probe}"
            );
            assert!(headers.contains_key("x-request-id"), "{probe}");
        }
        let (status, _, _) = send(&app, get("/?uuid=foreign.queue&sequence=1")).await;
        assert_eq!(status, 404);
        let with_id = Request::get("/?uuid=x")
            .header("x-request-id", "caller-7")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = send(&app, with_id).await;
        assert_eq!((status, body), (400, Value::from("Invalid request")));
        assert_eq!(headers["x-request-id"], "caller-7");
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
