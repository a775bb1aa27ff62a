//! [`JsonLines`]: the JSON log line, in the shape tracing-subscriber's JSON
//! format gives it (flattened event, span list), written directly, with the
//! current request's [`RequestFields`] as the first entry of `spans` when the
//! request has no span of its own.
//!
//! Owns: the layout of a JSON line.
//! Must not: format a span's fields (the layer's `JsonSpanFields` did, when the
//! span opened) or log anything itself.
//!
//! A line: `{"timestamp":…,"level":…,<event fields>,"target":…,"spans":[…]}`,
//! `spans` from the outermost, each `{"name":…,<its fields>}`, and absent when
//! there is neither a span nor a request.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::json_fields::{JsonSpanFields, ObjectMembers, push_json_string};
use super::request_fields::{self, RequestFields};

/// The JSON line format (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonSpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonSpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut out = String::with_capacity(256);
        out.push_str("{\"timestamp\":\"");
        SystemTime.format_time(&mut Writer::new(&mut out))?;
        out.push_str("\",\"level\":");
        push_json_string(&mut out, meta.level().as_str());
        // Records from the `log` crate name their real target in a field, as
        // tracing-subscriber's own format reads it.
        let mut fields = EventFields {
            members: ObjectMembers::continuing(&mut out),
            log_target: None,
        };
        event.record(&mut fields);
        let target = match (meta.target(), fields.log_target) {
            ("log", Some(t)) => t,
            (t, _) => t.to_owned(),
        };
        out.push_str(",\"target\":");
        push_json_string(&mut out, &target);

        let request = request_fields::current();
        let scope = ctx.event_scope();
        if request.is_some() || scope.is_some() {
            out.push_str(",\"spans\":[");
            let mut first = true;
            if let Some(request) = &request {
                push_request(&mut out, request);
                first = false;
            }
            for span in scope.into_iter().flat_map(|s| s.from_root()) {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str("{\"name\":");
                push_json_string(&mut out, span.name());
                let ext = span.extensions();
                match ext.get::<FormattedFields<JsonSpanFields>>() {
                    // `{…}` → `,…}` after the name.
                    Some(f) if f.fields.len() > 2 && f.fields.starts_with('{') => {
                        out.push(',');
                        out.push_str(&f.fields[1..]);
                    }
                    _ => out.push('}'),
                }
            }
            out.push(']');
        }
        out.push_str("}\n");
        writer.write_str(&out)
    }
}

/// `{"name":"request","method":…,"path":…,"request_id":…,"trace_id":…}`, as
/// the `request` span's entry reads.
fn push_request(out: &mut String, r: &RequestFields) {
    out.push_str("{\"name\":\"request\",\"method\":");
    push_json_string(out, r.method.as_str());
    out.push_str(",\"path\":");
    push_json_string(out, &r.path);
    out.push_str(",\"request_id\":");
    push_json_string(out, r.request_id());
    out.push_str(",\"trace_id\":");
    push_json_string(out, r.trace_id());
    out.push('}');
}

/// An event's fields as members of the line's object; notes `log.target`.
struct EventFields<'a> {
    members: ObjectMembers<'a>,
    log_target: Option<String>,
}

impl Visit for EventFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = Some(value.to_owned());
        }
        self.members.record_str(field, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.members.record_bool(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.members.record_i64(field, value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.members.record_u64(field, value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.members.record_f64(field, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.members.record_debug(field, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::log_capture::{Format, json_lines};
    use std::borrow::Cow;

    fn scenario() {
        tracing::info!(
            n = 3u64,
            neg = -2i64,
            ok = false,
            x = 1.5,
            "plain \"quoted\"\n"
        );
        let outer = tracing::info_span!("request", method = "GET", path = "/", request_id = "r");
        let _o = outer.enter();
        let inner = tracing::info_span!("poll.wait", key_hash = "abc", sequence = 7u64);
        let _i = inner.enter();
        let e = std::io::Error::other("broken pipe");
        tracing::warn!(error = &e as &dyn std::error::Error, debug = ?Some(1), "inside");
        drop(_i);
        let bare = tracing::info_span!("bare");
        let _b = bare.enter();
        tracing::error!(target: "custom::target", "bare");
    }

    #[test]
    fn lines_are_what_tracing_subscribers_json_format_writes() {
        let theirs = json_lines(Format::TracingSubscribers, scenario);
        let ours = json_lines(Format::Ours, scenario);
        assert_eq!(theirs.len(), 3);
        assert_eq!(ours, theirs);
    }

    /// A record of the `log` crate (rustls and other dependencies log through
    /// it), as the bridge `telemetry::init` installs hands it on: an event
    /// whose target is "log" and whose real target is in a `log.target` field.
    fn log_record(target: &str, line: u32) {
        let _ = tracing_log::format_trace(
            &log::Record::builder()
                .args(format_args!("from the log crate \"{line}\""))
                .level(log::Level::Warn)
                .target(target)
                .module_path_static(Some("rustls::conn"))
                .file_static(Some("src/conn.rs"))
                .line(Some(line))
                .build(),
        );
    }

    #[test]
    fn log_crate_records_are_written_as_tracing_subscribers_json_format_writes_them() {
        let run = || {
            log_record("rustls::conn", 42);
            let s = tracing::info_span!("poll.wait", sequence = 3u64);
            let _g = s.enter();
            log_record("h2::proto", 7);
        };
        let theirs = json_lines(Format::TracingSubscribers, run);
        let ours = json_lines(Format::Ours, run);
        assert_eq!(theirs.len(), 2);
        assert_eq!(theirs[0]["target"], "rustls::conn", "{}", theirs[0]);
        assert_eq!(theirs[1]["target"], "h2::proto", "{}", theirs[1]);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_current_requests_fields_are_the_first_span() {
        let mut slot = Some(Box::new(RequestFields {
            method: http::Method::POST,
            path: Cow::Borrowed("/api/v1/events/e"),
            request_id: Some(http::HeaderValue::from_static("req-\"1\"")),
            trace_id: [b'f'; 32],
        }));
        let logged = json_lines(Format::Ours, || {
            request_fields::in_request(&mut slot, || {
                tracing::info!("no span");
                let s = tracing::debug_span!("poll.wait", sequence = 2u64);
                let _g = s.enter();
                tracing::info!("in a span");
            });
            tracing::info!("after the request");
        });
        let request = serde_json::json!({
            "name": "request",
            "method": "POST",
            "path": "/api/v1/events/e",
            "request_id": "req-\"1\"",
            "trace_id": "f".repeat(32),
        });
        assert_eq!(logged[0]["spans"], serde_json::json!([request]));
        assert_eq!(
            logged[1]["spans"],
            serde_json::json!([request, {"name": "poll.wait", "sequence": 2}])
        );
        assert!(logged[2].get("spans").is_none(), "{}", logged[2]);
    }
}
