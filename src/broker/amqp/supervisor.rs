//! The broker's two background tasks and the connectivity they publish.
//!
//! - [`supervise`] keeps a connection usable: it checks one out of the pool
//!   (deadpool's recycle check drops a dead one and opens another: the one
//!   reconnection strategy here, lapin's auto-recovery stays off because the
//!   two fight each other), retries with [`Backoff`] while the broker is
//!   unreachable, and publishes the result as [`Connectivity`] (`/readyz`, and
//!   what held polls wait on).
//! - [`reap_idle_consumers`] cancels the consumers whose client did not come
//!   back within the linger after a delivery.
//!
//! Must not: open channels or touch queues itself; both tasks hold the broker
//! weakly and end with it.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::broker::Inner;
use super::channels;
use crate::broker::{Backoff, Connectivity};
use crate::telemetry::Metrics;

/// Whether the broker is usable, as the supervisor last found it.
pub(crate) struct Link {
    state: watch::Sender<Connectivity>,
    ever_connected: AtomicBool,
}

impl Link {
    pub(crate) fn new() -> Self {
        let (state, _) = watch::channel(Connectivity::Disconnected {
            since: Instant::now(),
        });
        Link {
            state,
            ever_connected: AtomicBool::new(false),
        }
    }

    pub(crate) fn connectivity(&self) -> Connectivity {
        *self.state.borrow()
    }

    /// Waits until the supervisor reports a usable connection (or `stop`).
    pub(crate) async fn wait_connected(&self, stop: &CancellationToken) {
        let mut rx = self.state.subscribe();
        loop {
            if *rx.borrow_and_update() == Connectivity::Connected {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    }

    fn mark_connected(&self, metrics: &Metrics) {
        let changed = self.state.send_if_modified(|s| {
            if *s == Connectivity::Connected {
                false
            } else {
                *s = Connectivity::Connected;
                true
            }
        });
        if changed {
            if self.ever_connected.swap(true, Ordering::AcqRel) {
                metrics.broker_reconnects.inc();
                tracing::info!("broker connection re-established");
            } else {
                tracing::info!("connected to the broker");
            }
        }
        metrics.broker_connected.set(1);
    }

    fn mark_disconnected(&self, why: &str, metrics: &Metrics) {
        let changed = self.state.send_if_modified(|s| {
            if *s == Connectivity::Connected {
                *s = Connectivity::Disconnected {
                    since: Instant::now(),
                };
                true
            } else {
                false
            }
        });
        if changed {
            tracing::warn!(reason = why, "broker connection lost; reconnecting");
        }
        metrics.broker_connected.set(0);
    }

    /// The broker is closed: disconnected for good.
    pub(crate) fn mark_closed(&self, metrics: &Metrics) {
        let _ = self.state.send(Connectivity::Disconnected {
            since: Instant::now(),
        });
        metrics.broker_connected.set(0);
    }
}

/// The connection is gone: held polls wait, and the exchange is checked again
/// on the next connection.
fn mark_lost(inner: &Inner, why: &str) {
    inner.link.mark_disconnected(why, &inner.metrics);
    inner.topology.forget_exchange();
}

/// Keeps a connection usable: reconnects with backoff and publishes connectivity.
pub(crate) async fn supervise(inner: Weak<Inner>, stop: CancellationToken) {
    let mut backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).with_jitter();
    let mut warned = false;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let attempt = strong.connections.get().await;
        let wait = match attempt {
            Ok(conn) if conn.status().connected() => {
                let mut events = conn.events_listener();
                let status = conn.status().clone();
                drop(conn);
                backoff.reset();
                warned = false;
                strong.link.mark_connected(&strong.metrics);
                channels::record_pool_status(&strong.ops, &strong.metrics);
                drop(strong);
                // Wake at once when the connection fails (lapin also reports
                // channel errors, such as a probe's 404, as events: those leave
                // the connection up); check again every second anyway.
                let error = async {
                    while let Some(event) = events.next().await {
                        if matches!(event, lapin::Event::Error(_)) && !status.connected() {
                            return;
                        }
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    _ = error => {
                        // Mark the loss now: the pool may replace the connection
                        // within the next get(), and the reconnect must still be seen.
                        if let Some(strong) = inner.upgrade() {
                            mark_lost(&strong, "connection error");
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            Ok(_) => {
                mark_lost(&strong, "connection not usable");
                backoff.next_delay()
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot reach the broker; retrying with backoff");
                    warned = true;
                }
                mark_lost(&strong, "cannot connect");
                backoff.next_delay()
            }
        };
        drop(strong);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Cancels consumers whose client did not come back within the linger.
pub(crate) async fn reap_idle_consumers(inner: Weak<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let idle = strong.consumers.take_idle();
        drop(strong);
        for entry in idle {
            entry.retire().await;
        }
    }
}
