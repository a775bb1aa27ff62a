//! [`ApiError`] and its one mapping to HTTP answers: `{"error": "..."}` with a
//! 4xx/5xx status. The source error goes to the log; the client gets a short,
//! safe message.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::json;

use crate::broker::{BrokerError, BrokerErrorKind};
use crate::publish::PublishError;

/// Everything the management API can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the management API is disabled (start the gateway with --api-token)")]
    Disabled,
    #[error("no such API route")]
    NoSuchRoute,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("request body over 1 MiB")]
    PayloadTooLarge,
    #[error("invalid JSON: {0}")]
    BadJson(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown subscription")]
    UnknownSubscription,
    #[error(transparent)]
    Broker(BrokerError),
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::InvalidEventKey(why) => ApiError::BadRequest(why),
            PublishError::InvalidEventKeys(why) => ApiError::Unprocessable(why),
            PublishError::NotAnObject => ApiError::Unprocessable(e.to_string()),
            PublishError::MalformedJson(why) => ApiError::BadJson(why),
            PublishError::UnknownSubscription => ApiError::UnknownSubscription,
            PublishError::InvalidResumeAfter(why) => ApiError::BadRequest(why),
            PublishError::NoHistory => ApiError::BadRequest(e.to_string()),
            PublishError::Broker(b) => ApiError::Broker(b),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ApiError::Disabled | ApiError::NoSuchRoute => (StatusCode::NOT_FOUND, self.to_string()),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, self.to_string()),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            ApiError::BadJson(_) | ApiError::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, self.to_string())
            }
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, self.to_string()),
            ApiError::UnknownSubscription => (StatusCode::NOT_FOUND, self.to_string()),
            ApiError::Broker(e) => {
                tracing::warn!(error = %e, "management API call failed on the broker");
                match e.kind() {
                    BrokerErrorKind::NotFound => {
                        (StatusCode::NOT_FOUND, "not found on the broker".to_owned())
                    }
                    BrokerErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, e.to_string()),
                    BrokerErrorKind::PreconditionFailed => (
                        StatusCode::CONFLICT,
                        "the broker refused: it holds a conflicting declaration".to_owned(),
                    ),
                    BrokerErrorKind::LimitReached => {
                        (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    }
                    kind if kind.is_recoverable() => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the broker is unavailable; retry later".to_owned(),
                    ),
                    _ => (
                        StatusCode::BAD_GATEWAY,
                        format!("the broker refused the operation ({})", e.kind()),
                    ),
                }
            }
        };
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
