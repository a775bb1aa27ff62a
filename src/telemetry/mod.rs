//! Telemetry: the tracing subscriber (text or JSON logs) and the metrics registry.
//!
//! Owns: log format, the `RUST_LOG` filter, metric definitions.
//! Must not: be initialised before the configuration is known.

mod metrics;

pub use metrics::{Metrics, StatusLabel};

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Safe to call more than once (later
/// calls are ignored), so tests can start several gateways in one process.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        // lapin logs every broker-side channel close (an expected 404 on a
        // probe) as an error; the gateway reports what matters itself.
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=off,deadpool=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// A short, non-reversible tag for a secret (a subscription key), for logs and
/// traces: the first 12 hex digits of its SHA-256.
pub fn key_hash(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret.as_bytes());
    hex::encode(&digest[..6])
}
