//! [`JsonSpanFields`]: how the JSON log layer stores a span's fields.
//!
//! The JSON layer keeps each span's fields as a JSON object in text, made when
//! the span opens. tracing-subscriber's own `JsonFields` builds a map of
//! `serde_json::Value`s first and grows its string field by field, and a field
//! recorded later has it parse the whole object again. For the request span,
//! opened on every poll, that was a tenth of the gateway's CPU. This writes the
//! object straight out, and a later field is appended to it. The log lines it
//! feeds are the same.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// Span fields as a JSON object, written directly (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // Built in a string sized for the request span, then written at once:
        // the span's own text starts empty and would grow several times.
        let mut out = String::with_capacity(192);
        out.push('{');
        fields.record(&mut ObjectMembers {
            out: &mut out,
            first: true,
        });
        out.push('}');
        writer.write_str(&out)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // `{...}` → `{...,"added":...}` (a field recorded twice appears twice;
        // JSON readers keep the last).
        let mut members = String::new();
        let first = current.fields == "{}";
        fields.record(&mut ObjectMembers {
            out: &mut members,
            first,
        });
        if !members.is_empty() && current.fields.ends_with('}') {
            current.fields.pop();
            current.fields.push_str(&members);
            current.fields.push('}');
        }
        Ok(())
    }
}

/// Writes `"name":value` pairs, comma-separated.
pub(super) struct ObjectMembers<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> ObjectMembers<'a> {
    /// Members that follow others already written (each starts with a comma).
    pub(super) fn continuing(out: &'a mut String) -> Self {
        ObjectMembers { out, first: false }
    }

    fn key(&mut self, field: &Field) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        let name = field.name();
        push_json_string(self.out, name.strip_prefix("r#").unwrap_or(name));
        self.out.push(':');
    }
}

impl Visit for ObjectMembers<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_string(self.out, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null"); // JSON has no NaN or infinity
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        // `%value` fields arrive here too, as Debug of a Display wrapper; the
        // text is escaped as it is written, with no string of its own.
        self.out.push('"');
        let _ = write!(JsonEscaped(self.out), "{value:?}");
        self.out.push('"');
    }
}

/// Appends `s` as a JSON string literal.
pub(super) fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// Appends `s` with JSON's escapes. Every byte that needs one is ASCII, so the
/// scan goes by bytes and copies the runs between them whole.
fn push_escaped(out: &mut String, s: &str) {
    let mut plain_from = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on char boundaries.
        out.push_str(&s[plain_from..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        plain_from = i + 1;
    }
    out.push_str(&s[plain_from..]);
}

/// A text sink that escapes what goes through it for a JSON string.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // Through the gateway's own line format: what `telemetry::init` installs.
    use crate::telemetry::log_capture::{Format, json_lines};

    #[test]
    fn span_fields_reach_log_lines_as_json_with_strings_escaped() {
        let lines = json_lines(Format::Ours, || {
            let span = tracing::info_span!(
                "request",
                path = %"/a\"b\\c\nd\u{1}é",
                n = 7u64,
                neg = -3i64,
                ok = true,
                r#type = "t",
            );
            let _g = span.enter();
            tracing::info!("inside");
        });
        let span = &lines[0]["spans"][0];
        assert_eq!(span["name"], "request");
        assert_eq!(span["path"], "/a\"b\\c\nd\u{1}é");
        assert_eq!(span["n"], 7);
        assert_eq!(span["neg"], -3);
        assert_eq!(span["ok"], true);
        assert_eq!(span["type"], "t");
    }

    #[test]
    fn a_field_recorded_later_is_added_to_the_span() {
        let lines = json_lines(Format::Ours, || {
            let span = tracing::info_span!(
                "request",
                request_id = "r-1",
                trace_id = tracing::field::Empty
            );
            span.record("trace_id", "abc");
            let _g = span.enter();
            tracing::info!("inside");
        });
        let span = &lines[0]["spans"][0];
        assert_eq!(span["request_id"], "r-1");
        assert_eq!(span["trace_id"], "abc");
    }

    #[test]
    fn a_span_without_fields_and_one_recorded_later_stay_valid_json() {
        let lines = json_lines(Format::Ours, || {
            let span = tracing::info_span!("bare", late = tracing::field::Empty);
            let _g = span.enter();
            tracing::info!("before");
            span.record("late", 5u64);
            tracing::info!("after");
        });
        assert_eq!(lines[0]["spans"][0]["name"], "bare");
        assert_eq!(lines[1]["spans"][0]["late"], 5);
    }
}
