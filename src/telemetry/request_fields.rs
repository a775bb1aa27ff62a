//! [`RequestFields`]: a request's log fields (method, path, request id, trace
//! id) carried beside its future instead of in a `request` span, when the JSON
//! log lines are written by [`super::json_lines::JsonLines`].
//!
//! Owns: the fields, the thread-local slot they sit in while the request's
//! future runs, and the choice of when a span is still needed
//! ([`RequestLogging`]).
//! Must not: hold a subscription key (the path is redacted before it gets here)
//! or be read by anything but the log line formatter.
//!
//! A span per request costs the registry a slot, the JSON layer a formatted
//! copy of its fields, and both a lookup at every entry and exit: ~9% of the
//! gateway's CPU per delivery on the embedded broker (benches/README.md), for
//! log lines that are rare at INFO. The fields here are made once, moved into
//! the thread-local slot while the future is polled and moved out after, and
//! only written out when a line is logged. A span is still made when
//! something needs one: an exporter (the span is exported), a `RUST_LOG` span
//! directive (it filters on spans), or the text format (its own formatter
//! prints spans).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Method};

/// A request's log fields, as the `request` span would carry them.
#[derive(Debug, Clone)]
pub struct RequestFields {
    pub method: Method,
    /// Already redacted (`/api/v1/subscriptions/key:{hash}/…`).
    pub path: Cow<'static, str>,
    pub request_id: Option<HeaderValue>,
    /// 32 lowercase hex digits.
    pub trace_id: [u8; 32],
}

impl RequestFields {
    /// The request id as text ("" when the request has none or it is not text).
    pub fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or("")
    }
}

/// How a request's log fields reach the lines logged while serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLogging {
    /// A `request` span per request.
    Span,
    /// [`RequestFields`] beside the request's future, written by `JsonLines`.
    Fields,
}

static FIELDS_WRITTEN: AtomicBool = AtomicBool::new(false);

/// How the installed subscriber wants request fields (a span unless
/// `telemetry::init` installed the JSON lines that read [`RequestFields`]).
pub fn request_logging() -> RequestLogging {
    if FIELDS_WRITTEN.load(Ordering::Relaxed) {
        RequestLogging::Fields
    } else {
        RequestLogging::Span
    }
}

/// Called by `telemetry::init` once its subscriber is the global one.
pub(super) fn set_fields_written(yes: bool) {
    FIELDS_WRITTEN.store(yes, Ordering::Relaxed);
}

thread_local! {
    static CURRENT: RefCell<Option<Box<RequestFields>>> = const { RefCell::new(None) };
}

/// Runs `f` with `slot`'s fields as the current request's, and puts them back
/// into `slot` afterwards (also when `f` panics). A request polled inside
/// another's poll gets its own and gives the outer one back.
pub fn in_request<R>(slot: &mut Option<Box<RequestFields>>, f: impl FnOnce() -> R) -> R {
    if slot.is_none() {
        return f();
    }
    struct Restore<'a>(&'a mut Option<Box<RequestFields>>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = CURRENT.try_with(|c| {
                if let Ok(mut current) = c.try_borrow_mut() {
                    std::mem::swap(&mut *current, self.0);
                }
            });
        }
    }
    let swapped = CURRENT.try_with(|c| {
        c.try_borrow_mut()
            .map(|mut current| std::mem::swap(&mut *current, slot))
            .is_ok()
    });
    if swapped != Ok(true) {
        return f();
    }
    let _restore = Restore(slot);
    f()
}

/// A copy of the current request's fields, if a request is being served on
/// this thread (read only when a line is logged).
pub fn current() -> Option<RequestFields> {
    CURRENT
        .try_with(|c| c.try_borrow().ok().and_then(|f| f.as_deref().cloned()))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(id: &'static str) -> Option<Box<RequestFields>> {
        Some(Box::new(RequestFields {
            method: Method::GET,
            path: Cow::Borrowed("/"),
            request_id: Some(HeaderValue::from_static(id)),
            trace_id: [b'a'; 32],
        }))
    }

    fn current_id() -> Option<String> {
        current().map(|f| f.request_id().to_owned())
    }

    #[test]
    fn fields_are_current_only_inside_and_go_back_to_their_slot() {
        let mut slot = fields("r-1");
        assert_eq!(current_id(), None);
        let inside = in_request(&mut slot, current_id);
        assert_eq!(inside.as_deref(), Some("r-1"));
        assert_eq!(current_id(), None, "not current after");
        assert!(slot.is_some(), "back in their slot");
    }

    #[test]
    fn a_request_polled_inside_another_gives_the_outer_one_back() {
        let (mut outer, mut inner) = (fields("outer"), fields("inner"));
        let seen = in_request(&mut outer, || {
            let nested = in_request(&mut inner, current_id);
            (nested, current_id())
        });
        assert_eq!(seen.0.as_deref(), Some("inner"));
        assert_eq!(seen.1.as_deref(), Some("outer"));
        assert!(outer.is_some() && inner.is_some());
    }

    #[test]
    fn fields_go_back_to_their_slot_when_the_future_panics() {
        let mut slot = fields("r-2");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            in_request(&mut slot, || panic!("in the handler"))
        }));
        assert!(caught.is_err());
        assert!(slot.is_some());
        assert_eq!(current_id(), None);
    }
}
