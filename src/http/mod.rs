//! HTTP: the public and admin routers, the stack composition, the rescue of
//! layer errors into contract answers, static assets and the accept loop.
//!
//! Must not: contain business rules — those live in `longpoll`, `api`, `publish`.

pub mod admin;
pub mod assets;
pub mod head;
pub mod request_span;
pub mod rescue;
pub mod router;
pub mod server;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;

use crate::api::ApiState;
use crate::broker::Broker;
use crate::config::Settings;
use crate::longpoll::SequenceStore;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

pub use router::app;

/// What a listener serves, and what the router's parts are: a cloneable
/// service that answers every request (errors are answers already), whose
/// future can move between threads.
pub trait HttpService:
    tower::Service<
        http::Request<Body>,
        Response = Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            http::Request<Body>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Everything the routers share, built once by [`crate::gateway`].
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    pub store: Arc<SequenceStore>,
    pub api: ApiState,
}
