//! HTTP: the public and admin routers, the stack composition (`router::app`),
//! the HTTP edge of the poll stack (`rescue`), static assets and the accept
//! loop (`server`, `head`).
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
use crate::publish::Publisher;
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

impl AppState {
    /// The state of a gateway on `broker`: an empty sequence store and the
    /// management API's state, from the settings.
    pub fn new(
        settings: Arc<Settings>,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Self {
        let store = Arc::new(SequenceStore::new(
            settings.replay_ttl,
            settings.replay_capacity,
            metrics.clone(),
        ));
        let api = ApiState {
            publisher: Publisher::new(broker.clone(), settings.queue_prefix.clone()),
            token: settings.api_token.clone(),
            public_url: settings.public_url.as_ref().map(|u| u.to_string()),
        };
        AppState {
            settings,
            broker,
            metrics,
            shutdown,
            store,
            api,
        }
    }
}
