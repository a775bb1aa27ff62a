//! The admin listener: `/healthz`, `/readyz`, `/metrics`. Never behind the ingress.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{CONTENT_TYPE, HeaderValue};

use super::AppState;
use crate::broker::Connectivity;

/// The admin router.
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// 200 while the process runs.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the broker is usable and the replica is not draining.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match state.broker.connectivity() {
        Connectivity::Connected => (StatusCode::OK, "ready\n").into_response(),
        Connectivity::Disconnected { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "broker unavailable\n").into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut r = state.metrics.encode().into_response();
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
