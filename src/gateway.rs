//! Assembling and running a gateway from [`Settings`]: the broker, the routers,
//! both listeners, and the ordered graceful stop.
//!
//! Used by `longpoll-gateway serve` and by the integration tests, which start
//! gateways on free ports with either broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::{self, Broker, BrokerError};
use crate::config::Settings;
use crate::http::server::{self, ServerOptions};
use crate::http::{self as gw_http, AppState};
use crate::longpoll::SequenceStore;
use crate::shutdown::{self, Shutdown};
use crate::telemetry::Metrics;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

/// A started gateway.
pub struct RunningGateway {
    /// Where the public listener is bound.
    pub public_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    /// The sequence store: the answers kept for replay, with their unacked
    /// messages (tests check that nothing else is left unacked).
    pub store: Arc<SequenceStore>,
    shutdown: Shutdown,
    stopped: JoinHandle<()>,
}

impl RunningGateway {
    /// Begins the graceful stop (what SIGTERM does).
    pub fn begin_shutdown(&self) {
        self.shutdown.begin_drain();
    }

    /// Waits for the stop to complete.
    pub async fn stopped(self) {
        let _ = self.stopped.await;
    }

    /// Begins the stop and waits for it.
    pub async fn shutdown(self) {
        self.begin_shutdown();
        self.stopped().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Starts a gateway: binds both listeners and serves until shut down.
/// A broker that is down is not an error (the gateway reconnects; `/readyz` is 503).
pub async fn start(settings: Settings) -> Result<RunningGateway, StartError> {
    let settings = Arc::new(settings);
    let metrics = Arc::new(Metrics::new());
    let public = bind(settings.listen).await?;
    let admin = bind(settings.admin_listen).await?;
    let public_addr = public.local_addr().map_err(|source| StartError::Bind {
        addr: settings.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        addr: settings.admin_listen,
        source,
    })?;

    let broker = broker::from_settings(&settings, metrics.clone())?;
    metrics.set_build_info(broker.kind());
    if broker.kind() == "memory" {
        // The embedded broker is always usable: say so, as /readyz does.
        metrics.broker_connected.set(1);
    }
    let shutdown = Shutdown::new();
    let state = AppState::new(
        settings.clone(),
        broker.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let store = state.store.clone();
    let state_store = store.clone();
    let options = ServerOptions {
        limits: settings.limits,
        drain_timeout: settings.drain_timeout,
        metrics: Some(metrics.clone()),
    };
    let public_task = tokio::spawn(server::serve(
        public,
        gw_http::app(&state),
        shutdown.clone(),
        options.clone(),
    ));
    // The admin listener outlives the public one so that /readyz answers 503
    // while the replica drains.
    let admin_shutdown = Shutdown::new();
    let admin_task = tokio::spawn(server::serve(
        admin,
        gw_http::admin::admin_app(state),
        admin_shutdown.clone(),
        ServerOptions {
            drain_timeout: Duration::from_secs(1),
            metrics: None,
            ..options
        },
    ));
    tracing::info!(
        public = %public_addr,
        admin = %admin_addr,
        broker = %settings.broker,
        "longpoll-gateway listening"
    );

    let stopping = shutdown.clone();
    let stop_broker = broker.clone();
    let stopped = tokio::spawn(async move {
        stopping.draining().await;
        tracing::info!("draining: held polls are answered 503 with Retry-After: 0");
        // Held polls see the drain and answer at once; the listener stops and
        // waits (bounded by the drain window) for their responses to go out.
        let _ = public_task.await;
        let unacked = store.drain_all();
        let count = unacked.len();
        for acker in unacked {
            let _ = acker.requeue().await;
        }
        tracing::info!(
            requeued = count,
            "unacked answers requeued; closing the broker"
        );
        stop_broker.close().await;
        admin_shutdown.begin_drain();
        let _ = admin_task.await;
        tracing::info!("stopped");
    });

    Ok(RunningGateway {
        public_addr,
        admin_addr,
        broker,
        metrics,
        store: state_store,
        shutdown,
        stopped,
    })
}

/// `longpoll-gateway serve`: runs until SIGTERM/SIGINT, then stops gracefully.
pub async fn serve(settings: Settings) -> Result<(), StartError> {
    let drain = settings.drain_timeout;
    let terminated = shutdown::terminate_signal();
    let gateway = start(settings).await?;
    terminated.await;
    gateway.begin_shutdown();
    // The stop is bounded: the drain window plus a little for the broker.
    if tokio::time::timeout(drain + Duration::from_secs(5), gateway.stopped())
        .await
        .is_err()
    {
        tracing::warn!("shutdown took longer than the drain window; exiting anyway");
    }
    Ok(())
}
