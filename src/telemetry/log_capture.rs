//! Test support: the JSON log lines some code writes, captured and parsed.
//!
//! Owns: a writer that keeps what the log layer wrote, and the layer built as
//! `telemetry::init` builds it for JSON (or with tracing-subscriber's own JSON
//! format, to compare against).

use std::sync::{Arc, Mutex};

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use super::json_fields::JsonSpanFields;
use super::json_lines::JsonLines;

/// A writer that keeps what the log layer wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::ErrorKind::Other)?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which format writes the events: the gateway's, or tracing-subscriber's
/// own JSON format set up as the gateway used to set it up.
#[derive(Debug, Clone, Copy)]
pub(super) enum Format {
    Ours,
    TracingSubscribers,
}

/// The lines `run` logs, each without its timestamp (checked to be RFC 3339
/// with microseconds).
pub(super) fn json_lines(format: Format, run: impl FnOnce()) -> Vec<serde_json::Value> {
    let captured = Captured::default();
    let writer = captured.clone();
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .fmt_fields(JsonSpanFields)
        .with_writer(move || writer.clone());
    let layer = match format {
        Format::Ours => layer.event_format(JsonLines).boxed(),
        Format::TracingSubscribers => layer.boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, run);
    let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let ts = v["timestamp"].as_str().map(str::len);
            assert_eq!(ts, Some(27), "RFC 3339 with microseconds: {l}");
            v.as_object_mut().map(|o| o.remove("timestamp"));
            v
        })
        .collect()
}
