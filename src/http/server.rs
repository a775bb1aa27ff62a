//! The accept loop: hyper connections (HTTP/1.1 and HTTP/2) serving a router,
//! with a header read timeout and graceful shutdown.
//!
//! Hand-written instead of `axum::serve` so that hyper's per-connection
//! settings (header timeout, buffer sizes, header count) are in reach.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::shutdown::Shutdown;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Time allowed for a client to send the request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// How long to wait for open connections to finish after draining begins.
    pub drain_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
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
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_headers(100);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
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
