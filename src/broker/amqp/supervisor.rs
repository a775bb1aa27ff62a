//! The broker's two background tasks and the connectivity they publish.
//!
//! - [`supervise`] keeps the connections usable: once a second, and at once
//!   when a connection is lost, it fills the pool (deadpool's recycle check
//!   drops a dead connection and a fresh one is opened on a node that answers:
//!   the one reconnection strategy here, lapin's auto-recovery stays off because
//!   the two fight each other), checks in the background the nodes that were
//!   left, moves a connection to a node that came back, retries with
//!   [`Backoff`] while no node can be reached, and publishes the result as
//!   [`Connectivity`] (`/readyz`, `longpoll_broker_connected`, and what held
//!   polls wait on). The broker is usable while a connection to any one of its
//!   nodes is: losing a node of several is not losing the broker.
//! - [`reap_idle_consumers`] cancels the consumers whose client did not come
//!   back within the linger after a delivery.
//!
//! Must not: open channels or touch queues itself; both tasks hold the broker
//! weakly and end with it.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
            tracing::warn!(reason = why, "no broker node can be reached; reconnecting");
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

/// No node can be reached: held polls wait, and the exchange is checked again
/// on the next connection.
fn mark_lost(inner: &Inner, why: &str) {
    inner.link.mark_disconnected(why, &inner.metrics);
    inner.topology.forget_exchange();
}

/// How long the connections lost all at once may take to come back before
/// the broker is said to be unreachable (`/readyz` 503).
const RECONNECT_AT_ONCE: Duration = Duration::from_secs(1);

/// Every connection was lost at once, yet a node may still answer: RabbitMQ
/// closes every connection whose channel published to a stream whose leader
/// just died (541 INTERNAL_ERROR), on nodes that stay up. Quick attempts for
/// a second tell that from a broker gone.
async fn reconnects_at_once(inner: &Inner) -> bool {
    // A node that has just closed its connections may refuse the first attempt
    // too: try again within the window, not once.
    let attempts = async {
        while inner.connections.fill().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(RECONNECT_AT_ONCE, attempts)
        .await
        .is_ok()
}

/// How often a connection may be moved to a node that holds fewer: each move
/// ends the consumers on the connection moved (their polls carry on).
const REBALANCE_EVERY: Duration = Duration::from_secs(5);

/// Keeps the connections usable: reconnects with backoff, tries the nodes
/// that were left again, spreads the connections, and publishes connectivity.
pub(crate) async fn supervise(inner: Weak<Inner>, stop: CancellationToken) {
    let mut backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).with_jitter();
    let mut warned = false;
    let mut last_move = Instant::now();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let wait = match strong.connections.fill().await {
            Ok(_) => {
                backoff.reset();
                warned = false;
                strong.link.mark_connected(&strong.metrics);
                let nodes = strong.connections.nodes().clone();
                if nodes.len() > 1 {
                    channels::fill(&strong.ops).await;
                }
                channels::record_pool_status(&strong.ops, &strong.metrics);
                nodes.check_due(&strong.name);
                if last_move.elapsed() >= REBALANCE_EVERY
                    && strong.connections.rebalance().is_some()
                {
                    last_move = Instant::now();
                }
                drop(strong);
                tokio::select! {
                    _ = nodes.connection_lost() => {
                        if let Some(strong) = inner.upgrade() {
                            if nodes.up().is_empty() && !reconnects_at_once(&strong).await {
                                // The last node that served is gone: say so now,
                                // before the reconnect below (which may take a while).
                                mark_lost(&strong, "connection lost");
                            } else {
                                // Its node may come back reset: check the
                                // exchange before the next operation.
                                strong.topology.forget_exchange();
                            }
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
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
