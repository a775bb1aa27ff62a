//! Shutdown: the draining signal shared by the listeners, the held polls and
//! `/readyz`, and the OS signals that start it.
//!
//! Owns: the order of a graceful stop — readiness flips at once, held polls are
//! answered 503 with `Retry-After: 0`, new polls get the same, the listeners
//! stop, unacked messages are requeued, the broker connection is closed.
//! The order itself is carried out by [`crate::gateway`].

use tokio_util::sync::CancellationToken;

/// Cloneable handle on the draining state.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining (idempotent).
    pub fn begin_drain(&self) {
        self.token.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once draining has begun.
    pub async fn draining(&self) {
        self.token.cancelled().await
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this
/// is called, not when the future is first polled: call it before announcing the
/// listeners, so that a signal sent as soon as they are up drains instead of
/// killing the process.
pub fn terminate_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received; draining"),
                    _ = int.recv() => tracing::info!("SIGINT received; draining"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
