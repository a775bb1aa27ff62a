//! longpoll-gateway: browsers long-poll AMQP queues over plain HTTP.
//!
//! A txlongpoll-compatible gateway with a no-loss sequence contract, a
//! management API, a Rust publishing API, and an embedded broker for single
//! replicas. See the README for the tour, `docs/protocol.md` for the HTTP API
//! and the sequence rules, and `docs/architecture.md` for the path of a poll.

pub mod api;
pub mod broker;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod http;
pub mod longpoll;
pub mod publish;
pub mod shutdown;
pub mod telemetry;

/// Installs ring as the process's TLS crypto provider (for the HTTP clients of
/// the CLI and the load generator). Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
