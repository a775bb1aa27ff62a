//! Telemetry: logs (text or JSON, with request and trace ids), OpenTelemetry
//! traces, and the metrics registry.
//!
//! Owns: the tracing subscriber, the OTLP exporter set-up, metric definitions,
//! and the rule that secrets appear only as [`key_hash`].
//! Must not: be initialised before the configuration is known.

mod json_fields;
mod json_lines;
#[cfg(test)]
mod log_capture;
mod metrics;
pub mod request_fields;
pub mod traces;

pub use metrics::{Metrics, StatusLabel};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
    let rust_log = std::env::var("RUST_LOG").ok();
    let span_directives = rust_log.as_deref().is_some_and(has_span_directives);
    let filter = log_filter(rust_log.as_deref());
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer(traces::TRACER))
    });
    let fmt = format.map(|format| match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(json_fields::JsonSpanFields)
            .event_format(json_lines::JsonLines)
            .with_writer(std::io::stderr)
            .boxed(),
    });
    // Request fields without a span (request_fields.rs) only where nothing
    // needs the span: JSON lines, no exporter, no span directive in RUST_LOG.
    let fields_written = format == Some(LogFormat::Json) && otel.is_none() && !span_directives;
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt)
        .try_init();
    if installed.is_ok() {
        request_fields::set_fields_written(fields_written);
    }
    TelemetryGuard { provider }
}

/// The log filter `RUST_LOG` asks for (default `info,deadpool=warn`).
///
/// Plain `target=level` directives go to [`Targets`]; only a filter that needs
/// [`EnvFilter`] (span or field directives, `[...]`) gets it: `EnvFilter` takes
/// a lock at every span entry and exit to look for span directives, ~1% of the
/// CPU of a delivery (benches/README.md). A `RUST_LOG` neither can parse gives
/// the default, as before. lapin's own logs are always off, whatever `RUST_LOG`
/// says: they name queues (subscription keys are bearer secrets) and log every
/// expected 404 of a probe as an error. The gateway reports broker events itself.
fn log_filter(rust_log: Option<&str>) -> Box<dyn Layer<Registry> + Send + Sync> {
    const DEFAULT: &str = "info,deadpool=warn";
    const SILENCED: [&str; 2] = ["lapin", "amq_protocol"];
    let spec = rust_log.map(str::trim).filter(|s| !s.is_empty());
    let targets = match spec {
        None => DEFAULT.parse::<Targets>().ok(),
        Some(s) if has_span_directives(s) => None,
        Some(s) => s.parse::<Targets>().ok(),
    };
    if let Some(targets) = targets {
        return SILENCED
            .iter()
            .fold(targets, |t, target| {
                t.with_target(*target, LevelFilter::OFF)
            })
            .boxed();
    }
    let filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT));
    SILENCED
        .iter()
        .fold(filter, |f, target| {
            f.add_directive(format!("{target}=off").parse().expect("a valid directive"))
        })
        .boxed()
}

/// Does a `RUST_LOG` value filter on spans (`[request]=debug`)? Such a filter
/// needs [`EnvFilter`], and a real `request` span to filter on.
fn has_span_directives(rust_log: &str) -> bool {
    rust_log.contains('[')
}

/// A short, non-reversible tag for a secret (a subscription key), for logs and
/// traces: the first 12 hex digits of its SHA-256.
pub fn key_hash(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret.as_bytes());
    hex::encode(&digest[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    /// Which of five events pass the filter `rust_log` asks for: INFO, DEBUG,
    /// deadpool at INFO, lapin at ERROR, amq_protocol at ERROR.
    fn passes(rust_log: Option<&str>) -> [bool; 5] {
        let subscriber = Registry::default().with(log_filter(rust_log));
        tracing::subscriber::with_default(subscriber, || {
            [
                tracing::enabled!(Level::INFO),
                tracing::enabled!(Level::DEBUG),
                tracing::enabled!(target: "deadpool::managed", Level::INFO),
                tracing::enabled!(target: "lapin::channel", Level::ERROR),
                tracing::enabled!(target: "amq_protocol::frame", Level::ERROR),
            ]
        })
    }

    #[test]
    fn the_default_log_filter_is_info_with_deadpool_at_warn() {
        assert_eq!(passes(None), [true, false, false, false, false]);
        assert_eq!(passes(Some("  ")), [true, false, false, false, false]);
    }

    #[test]
    fn rust_log_sets_levels_and_lapin_stays_off_whatever_it_says() {
        assert_eq!(passes(Some("debug")), [true, true, true, false, false]);
        assert_eq!(
            passes(Some("warn,lapin=trace,amq_protocol=debug")),
            [false, false, false, false, false]
        );
    }

    #[test]
    fn span_directives_still_work_and_a_bad_rust_log_gives_the_default() {
        let subscriber = Registry::default().with(log_filter(Some("warn,[request]=debug")));
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(Level::DEBUG));
            let span = tracing::error_span!("request");
            span.in_scope(|| assert!(tracing::enabled!(Level::DEBUG)));
        });
        assert_eq!(
            passes(Some("info,=nonsense=level")),
            [true, false, false, false, false]
        );
    }
}
