//! The management API (server-to-server): subscriptions and events.
//!
//! ```text
//! POST   /api/v1/subscriptions                {"event_keys": [...]} → 201 {"key", "uri"}
//!                                              + "resume_after": id → 201 {"key", "uri", "resumed", "gap"}
//! POST   /api/v1/subscriptions/{key}/bindings {"event_keys": [...]} → 204
//! DELETE /api/v1/subscriptions/{key}                                → 204
//! POST   /api/v1/events/{event_key}           {...}                 → 202 {"event_key", "message_id"}
//! ```
//!
//! Owns: bearer-token auth (constant-time), JSON bodies (1 MiB at most), the
//! [`ApiError`] → response mapping. Enabled only with `--api-token`; otherwise
//! every route answers 404.
//! Must not: hold long-polls, or publish other than through [`Publisher`].

mod error;

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

pub use error::ApiError;

use crate::config::ApiToken;
use crate::publish::{Publisher, ResumedSubscription, Subscription};

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub publisher: Publisher,
    pub token: Option<ApiToken>,
    /// `--public-url`; unset = scheme and Host of the request.
    pub public_url: Option<String>,
}

/// The API's routes, under `/api/`.
pub fn routes(state: ApiState) -> Router {
    let Some(token) = state.token.clone() else {
        return Router::new()
            .route("/api", axum::routing::any(disabled))
            .route("/api/{*rest}", axum::routing::any(disabled));
    };
    Router::new()
        .route("/api/v1/subscriptions", post(create_subscription))
        .route("/api/v1/subscriptions/{key}/bindings", post(add_bindings))
        .route("/api/v1/subscriptions/{key}", delete(delete_subscription))
        .route("/api/v1/events/{event_key}", post(emit_event))
        // Every other /api path is the API's own 404 (not a long-poll).
        .route("/api", axum::routing::any(not_found))
        .route("/api/{*rest}", axum::routing::any(not_found))
        .route_layer(ValidateRequestHeaderLayer::custom(RequireToken(token)))
        .with_state(state)
}

async fn disabled() -> ApiError {
    ApiError::Disabled
}

async fn not_found() -> ApiError {
    ApiError::NoSuchRoute
}

/// `Authorization: Bearer {token}`, compared in constant time.
///
/// A tower-http validator rather than an axum `from_fn` middleware: that one
/// boxes two futures and clones the routes it wraps on every request.
#[derive(Clone)]
struct RequireToken(ApiToken);

impl<B> ValidateRequest<B> for RequireToken {
    type ResponseBody = Body;

    fn validate(&mut self, req: &mut http::Request<B>) -> Result<(), Response> {
        if bearer_matches(req.headers(), &self.0) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized.into_response())
        }
    }
}

fn bearer_matches(headers: &HeaderMap, expected: &ApiToken) -> bool {
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(presented) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    // ct_eq on slices of different lengths returns false without comparing
    // contents; the length of the configured token is not a secret worth hiding.
    presented
        .trim()
        .as_bytes()
        .ct_eq(expected.expose().as_bytes())
        .into()
}

/// A request body of at most [`MAX_BODY_BYTES`] (413 over it).
pub struct LimitedBody(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map(LimitedBody)
            .map_err(|_| ApiError::PayloadTooLarge)
    }
}

/// A JSON body of at most [`MAX_BODY_BYTES`], with the API's error answers:
/// 413 over the limit, 400 for invalid JSON, 422 for the wrong shape.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let LimitedBody(bytes) = LimitedBody::from_request(req, state).await?;
        // Parsed as JSON first, so that invalid JSON is a 400 whatever its shape.
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventKeys {
    event_keys: Vec<String>,
}

/// `POST /api/v1/subscriptions`: the keys, and the message to resume after.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    event_keys: Vec<String>,
    /// The id of the last message the page received (`null` = none).
    #[serde(default)]
    resume_after: Option<String>,
}

#[derive(Debug, Serialize)]
struct Emitted {
    event_key: String,
    message_id: String,
}

fn poll_uri(state: &ApiState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return url.clone();
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|s| *s == "https" || *s == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}/")
}

async fn create_subscription(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewSubscription>,
) -> Result<Response, ApiError> {
    if let Some(after) = &body.resume_after {
        let resumed = state
            .publisher
            .subscribe_resuming(&body.event_keys, after)
            .await?;
        tracing::info!(
            key_hash = %crate::telemetry::key_hash(&resumed.key),
            event_keys = body.event_keys.len(),
            resumed = resumed.resumed,
            gap = resumed.gap,
            "subscription resumed"
        );
        let subscription = ResumedSubscription {
            key: resumed.key,
            uri: poll_uri(&state, &headers),
            resumed: resumed.resumed,
            gap: resumed.gap,
        };
        return Ok((StatusCode::CREATED, Json(subscription)).into_response());
    }
    let key = state.publisher.subscribe(&body.event_keys).await?;
    tracing::info!(
        key_hash = %crate::telemetry::key_hash(&key),
        event_keys = body.event_keys.len(),
        "subscription created"
    );
    let subscription = Subscription {
        key,
        uri: poll_uri(&state, &headers),
    };
    Ok((StatusCode::CREATED, Json(subscription)).into_response())
}

async fn add_bindings(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<EventKeys>,
) -> Result<StatusCode, ApiError> {
    state.publisher.add_bindings(&key, &body.event_keys).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_subscription(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.publisher.unsubscribe(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn emit_event(
    State(state): State<ApiState>,
    Path(event_key): Path<String>,
    LimitedBody(json): LimitedBody,
) -> Result<Response, ApiError> {
    // The event's text is published as it came, with "event_key" added: no map
    // of JSON values is built and written out again for each event.
    let message_id = state.publisher.emit_json(&event_key, &json).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Emitted {
            event_key,
            message_id,
        }),
    )
        .into_response())
}

/// Builds a request body from JSON (tests and the CLI's gateway mode).
pub fn json_body(value: &Value) -> Body {
    Body::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let token = ApiToken::new("s3cret-token");
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, &token));
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer s3cret-token".parse().unwrap(),
        );
        assert!(bearer_matches(&h, &token));
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer s3cret-toke".parse().unwrap(),
        );
        assert!(!bearer_matches(&h, &token));
        h.insert(
            http::header::AUTHORIZATION,
            "Basic s3cret-token".parse().unwrap(),
        );
        assert!(!bearer_matches(&h, &token));
    }
}
