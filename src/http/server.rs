//! The accept loop: hyper connections (HTTP/1.1, and HTTP/2 with prior
//! knowledge as ingresses speak it) serving a router, with the connection
//! limits and graceful shutdown.
//!
//! Hand-written instead of `axum::serve` so that hyper's per-connection
//! settings are in reach:
//! - the header read timeout closes slow-header (slowloris) connections, and,
//!   because hyper re-arms it while waiting for the next request head, it is
//!   also the idle keep-alive limit;
//! - the read buffer cap bounds the request head (hyper answers 431 beyond);
//! - a semaphore caps open connections: beyond it a new connection is closed
//!   at once (the client retries) rather than left in the kernel's backlog;
//! - HTTP/1 or HTTP/2 is told by peeking at the first bytes, not by reading
//!   them, which keeps hyper's read buffer at 8 KB (see `sniff`), and the
//!   request's header values are detached from that buffer as hyper hands it
//!   over.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures_util::future::Either;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower::util::Oneshot;

use super::HttpService;
use super::head::{detach_header_values, over_limits};
use crate::config::{ConnectionLimits, Settings};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Counts an open connection in `longpoll_connections_open`.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.connections_open.inc();
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub limits: ConnectionLimits,
    /// How long to wait for open connections to finish after draining begins.
    pub drain_timeout: Duration,
    /// Where to count connections (the public listener only).
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Settings::default().limits,
            drain_timeout: Duration::from_secs(10),
            metrics: None,
        }
    }
}

/// The router as hyper calls it: the edge between a connection and the stack
/// `http::router::app` composes. In `call`, while hyper waits, and before
/// anything routes the request: a head over the limits is answered 414/431,
/// and the header values are detached from hyper's buffer — not when the
/// router's future is first polled: by then hyper has read on (see
/// [`super::head`]). That is why this is a hyper service and not a Tower layer
/// of the stack: hyper-util's Tower adapter calls the service only when its
/// future is first polled.
#[derive(Clone)]
struct HeadDetachingService<S> {
    router: S,
    limits: ConnectionLimits,
}

/// `B` is hyper's `Incoming` when serving; any body in tests.
impl<S, B> hyper::service::Service<http::Request<B>> for HeadDetachingService<S>
where
    S: HttpService,
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Either<
        std::future::Ready<Result<axum::response::Response, Infallible>>,
        Oneshot<S, http::Request<Body>>,
    >;

    fn call(&self, req: http::Request<B>) -> Self::Future {
        if let Some(status) = over_limits(&req, &self.limits) {
            return Either::Left(std::future::ready(Ok(refusal(status))));
        }
        Either::Right(
            self.router
                .clone()
                .oneshot(detach_header_values(req).map(Body::new)),
        )
    }
}

/// A 414 or 431 answer, worded as it was when a middleware gave it.
fn refusal(status: http::StatusCode) -> axum::response::Response {
    use axum::response::IntoResponse;
    let text = if status == http::StatusCode::URI_TOO_LONG {
        "URI too long"
    } else {
        "Request header fields too large"
    };
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// What a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge: the connection starts with the preface.
    Http2,
}

/// The client preface of HTTP/2 with prior knowledge (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells the protocol from the first bytes without consuming them (`MSG_PEEK`).
///
/// hyper-util's `auto` builder reads them instead and hands them back first:
/// hyper's first read then returns those 24 bytes alone, and its read buffer
/// grows from 8 KB to 16 KB for the rest of the head — for the life of every
/// connection. Peeking leaves the whole head to hyper's first read.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 || first[..n] != H2_PREFACE[..n] {
            // Not the preface (or EOF, which hyper then sees): HTTP/1.
            return Ok(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // Part of the preface so far. A peek returns at once while any bytes
        // are waiting, so wait a little before looking again; the caller's
        // header read timeout bounds this.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Serves `router` on `listener` until `shutdown` begins draining, then stops
/// accepting and waits up to the drain timeout for open connections.
pub async fn serve(
    listener: TcpListener,
    router: impl HttpService,
    shutdown: Shutdown,
    options: ServerOptions,
) {
    let limits = options.limits;
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // At most 100 header fields: hyper's default. Not set explicitly: a set
        // limit makes hyper fill a buffer of that many slots for every request
        // (~1% of a poll's CPU), where its default uses an array left as it is.
        .max_buf_size(limits.max_header_bytes)
        // A head and its small body copied into one buffer and sent with one
        // plain write: ~5% less CPU per delivery than hyper's default of
        // queueing them and sending both with `writev` (six alternated pairs,
        // benches/README.md).
        .writev(false);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Pings find dead peers that a held stream would otherwise wait on.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builders = Arc::new((http1, http2));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let service = HeadDetachingService { router, limits };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.draining() => break,
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: close at once so the client sees it and retries elsewhere.
            if let Some(m) = &options.metrics {
                m.connections_refused.inc();
            }
            drop(stream);
            continue;
        };
        let open = options.metrics.clone().map(OpenConnection::new);
        let _ = stream.set_nodelay(true);
        let (builders, watcher, service) = (builders.clone(), graceful.watcher(), service.clone());
        let header_read_timeout = limits.header_read_timeout;
        let draining = shutdown.clone();
        tokio::spawn(async move {
            // A connection that sends nothing is closed like one that sends
            // half a head: at the header read timeout; and at once when draining
            // begins, since hyper's graceful shutdown cannot reach it yet.
            let sniffed = tokio::select! {
                sniffed = tokio::time::timeout(header_read_timeout, sniff(&stream)) => sniffed,
                _ = draining.draining() => return drop((slot, open)),
            };
            let protocol = match sniffed {
                Ok(Ok(protocol)) => protocol,
                Ok(Err(_)) | Err(_) => return drop((slot, open)),
            };
            let (http1, http2) = &*builders;
            let io = TokioIo::new(stream);
            let result = match protocol {
                Protocol::Http1 => watcher.watch(http1.serve_connection(io, service)).await,
                // Boxed: an HTTP/2 connection's state is twice an HTTP/1 one's,
                // and every connection's task would otherwise be sized for it.
                Protocol::Http2 => {
                    Box::pin(watcher.watch(http2.serve_connection(io, service))).await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            drop((slot, open));
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!("drain timeout reached with connections still open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::{HeaderValue, Request, Uri};
    use hyper::service::Service as _;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_uri_bytes: 64,
            max_header_bytes: 256,
            ..Settings::default().limits
        }
    }

    /// A router that counts its calls and answers 200 with the request's
    /// `host` header.
    fn counting_router(calls: &Arc<AtomicUsize>) -> impl HttpService {
        let calls = calls.clone();
        tower::service_fn(move |req: http::Request<Body>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let host = req.headers().get("host").cloned();
            async move {
                let mut response = axum::response::Response::new(Body::empty());
                if let Some(host) = host {
                    response.headers_mut().insert("host", host);
                }
                Ok::<_, Infallible>(response)
            }
        })
    }

    #[tokio::test]
    async fn a_head_over_the_limits_is_refused_before_anything_routes_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = HeadDetachingService {
            router: counting_router(&calls),
            limits: limits(),
        };
        let long_uri = format!("/?uuid={}", "k".repeat(80));
        let response = service
            .call(Request::get(long_uri).body(String::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 414);
        let mut big = Request::get("/").body(String::new()).unwrap();
        big.headers_mut().insert(
            "x-padding",
            HeaderValue::from_str(&"p".repeat(300)).unwrap(),
        );
        let response = service.call(big).await.unwrap();
        assert_eq!(response.status(), 431);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the router never saw them");
    }

    #[tokio::test]
    async fn the_router_gets_the_request_with_its_header_values_out_of_the_read_buffer() {
        // The head as hyper hands it over: URI and header values are slices
        // of the connection's read buffer.
        let wire = Bytes::from_static(
            b"GET /?uuid=longpoll.subscribe.k&sequence=1 HTTP/1.1\r\nhost: gw.example\r\n\r\n",
        );
        let text = std::str::from_utf8(&wire).unwrap();
        let slice = |s: &str| {
            let at = text.find(s).unwrap();
            wire.slice(at..at + s.len())
        };
        let mut req = Request::new(String::new());
        *req.uri_mut() =
            Uri::from_maybe_shared(slice("/?uuid=longpoll.subscribe.k&sequence=1")).unwrap();
        req.headers_mut().insert(
            "host",
            HeaderValue::from_maybe_shared(slice("gw.example")).unwrap(),
        );
        let in_wire = |p: *const u8| wire.as_ptr_range().contains(&p);
        assert!(in_wire(req.headers()["host"].as_bytes().as_ptr()));
        let seen = Arc::new(std::sync::Mutex::new(None));
        let saw = seen.clone();
        let service = HeadDetachingService {
            router: tower::service_fn(move |req: http::Request<Body>| {
                *saw.lock().unwrap() = Some(req.headers()["host"].clone());
                async { Ok::<_, Infallible>(axum::response::Response::new(Body::empty())) }
            }),
            limits: limits(),
        };
        let response = service.call(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let host = seen.lock().unwrap().take().expect("routed");
        assert_eq!(host, "gw.example");
        assert!(!in_wire(host.as_bytes().as_ptr()), "a copy of its own");
    }
}
