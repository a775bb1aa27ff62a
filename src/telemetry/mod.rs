//! Telemetry: logs (text or JSON, with request and trace ids), OpenTelemetry
//! traces, and the metrics registry.
//!
//! Owns: the tracing subscriber, the OTLP exporter set-up, metric definitions,
//! and the rule that secrets appear only as [`key_hash`].
//! Must not: be initialised before the configuration is known.

mod json_fields;
mod metrics;
pub mod traces;

pub use metrics::{Metrics, StatusLabel};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps the trace exporter alive; [`TelemetryGuard::shutdown`] flushes it.
#[must_use = "dropping the guard does not flush spans; call shutdown()"]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops the span exporter (at shutdown).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
    }
}

/// Installs logging (`None`: no log output, for the CLI subcommands whose
/// stderr is one line on failure) and, when an OTLP endpoint is configured by
/// the standard `OTEL_*` variables, the span exporter. Without one: no
/// exporter, no error. Safe to call more than once (the first subscriber stays).
pub fn init(format: Option<LogFormat>) -> TelemetryGuard {
    traces::install_propagator();
    let provider = if traces::otlp_configured() {
        match traces::build_provider() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("warning: traces are not exported: {e}");
                None
            }
        }
    } else {
        None
    };
    // lapin's own logs are always off, whatever RUST_LOG says: they name
    // queues (subscription keys are bearer secrets) and log every expected
    // 404 of a probe as an error. The gateway reports broker events itself.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,deadpool=warn"))
        .add_directive("lapin=off".parse().expect("a valid directive"))
        .add_directive("amq_protocol=off".parse().expect("a valid directive"));
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer(traces::TRACER))
    });
    let fmt = format.map(|format| match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .fmt_fields(json_fields::JsonSpanFields)
            .with_writer(std::io::stderr)
            .boxed(),
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt)
        .try_init();
    TelemetryGuard { provider }
}

/// A short, non-reversible tag for a secret (a subscription key), for logs and
/// traces: the first 12 hex digits of its SHA-256.
pub fn key_hash(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret.as_bytes());
    hex::encode(&digest[..6])
}
