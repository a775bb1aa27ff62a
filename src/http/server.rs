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
//!   at once (the client retries) rather than left in the kernel's backlog.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

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

/// Serves `router` on `listener` until `shutdown` begins draining, then stops
/// accepting and waits up to the drain timeout for open connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    options: ServerOptions,
) {
    let limits = options.limits;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(100)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Pings find dead peers that a held stream would otherwise wait on.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let service = router
        .map_request(|req: http::Request<Incoming>| req.map(Body::new))
        .map_err(|e: Infallible| match e {});
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
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
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
