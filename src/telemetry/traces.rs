//! OpenTelemetry traces: the OTLP exporter (configured only by the standard
//! `OTEL_*` variables), W3C trace context across HTTP and AMQP, and the spans of
//! a poll.
//!
//! A delivery is one trace: the publisher's span (the management API request,
//! the library call, the CLI) writes `traceparent`/`tracestate` into the AMQP
//! message headers; the gateway parents the span of the poll that handed the
//! message to a browser on that context (with a link to the poll's own HTTP
//! request span), and parents the message's consume, ack and reject spans on
//! that poll span. Polls without a traced message stay in their request's trace.
//!
//! The OpenTelemetry API keeps its tracer provider and propagator in process
//! globals; they are set once here, from the environment, at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Name of the tracer (instrumentation scope).
pub const TRACER: &str = "longpoll-gateway";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Are spans exported (an OTLP endpoint is configured)?
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Is an OTLP trace endpoint configured by the standard variables?
pub fn otlp_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let exporter_off = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none")
        || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true");
    !exporter_off
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Builds the tracer provider from the environment: OTLP over
/// `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`),
/// resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, sampler from
/// `OTEL_TRACES_SAMPLER(_ARG)`. Sets the global provider and marks tracing enabled.
pub(crate) fn build_provider() -> Result<SdkTracerProvider, String> {
    // The exporter's HTTP client needs a TLS provider even for plain http.
    crate::install_tls_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name(TRACER);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    global::set_tracer_provider(provider.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(provider)
}

/// Installs the W3C trace-context propagator (always: trace ids travel in
/// headers and logs even when nothing is exported).
pub(crate) fn install_propagator() {
    global::set_text_map_propagator(TraceContextPropagator::new());
}

struct PairsExtractor<'a>(&'a [(String, String)]);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct PairsInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for PairsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        self.0.push((key.to_owned(), value));
    }
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The remote context carried by `traceparent`/`tracestate` pairs, if valid.
pub fn context_from_pairs(pairs: &[(String, String)]) -> Option<Context> {
    let cx = propagator().extract(&PairsExtractor(pairs));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The remote context of an incoming HTTP request, if it carries a valid one.
pub fn context_from_http(headers: &http::HeaderMap) -> Option<Context> {
    // Most requests carry none: skip the propagator (and its copy of the
    // current context) for them.
    if !headers.contains_key("traceparent") {
        return None;
    }
    let cx = propagator().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The OpenTelemetry context of the current `tracing` span (or of the current
/// OpenTelemetry context when the span has none).
pub fn current_context() -> Context {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        Context::current()
    }
}

/// Writes `cx` as `traceparent`/`tracestate` pairs. A context without a valid
/// span gets fresh random ids, so every published message carries a trace id
/// that logs can be correlated on.
pub fn inject(cx: &Context, pairs: &mut Vec<(String, String)>) {
    if cx.span().span_context().is_valid() {
        propagator().inject_context(cx, &mut PairsInjector(pairs));
        return;
    }
    // Written directly, as the propagator would write a sampled span context
    // without trace state: a `Context` built for each message and the
    // propagator's formatting were a few percent of the gateway's CPU.
    // All-zero ids are invalid, hence the `max(1)`.
    let trace_id = rand::random::<u128>().max(1).to_be_bytes();
    let span_id = rand::random::<u64>().max(1).to_be_bytes();
    let mut text = [0u8; 55];
    text[..3].copy_from_slice(b"00-");
    text[35] = b'-';
    text[52..].copy_from_slice(b"-01");
    // Hex of the right lengths into the right slots cannot fail.
    let _ = hex::encode_to_slice(trace_id, &mut text[3..35]);
    let _ = hex::encode_to_slice(span_id, &mut text[36..52]);
    let text = std::str::from_utf8(&text).unwrap_or_default();
    PairsInjector(pairs).set("traceparent", text.to_owned());
}

/// A trace id as 32 hex digits (empty when invalid).
pub fn trace_id_of(cx: &Context) -> String {
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Runs `f` inside a producer span `longpoll.publish` (when tracing is
/// enabled) and hands it the context to inject into the message.
pub fn publish_context(event_key: &str, message_id: &str) -> PublishSpan {
    if !enabled() {
        // Without an exporter there is no OpenTelemetry layer, so no span of
        // ours has a context to continue: [`inject`] gives the message fresh ids.
        return PublishSpan {
            cx: Context::new(),
            span: None,
        };
    }
    let parent = current_context();
    let tracer = global::tracer(TRACER);
    let span = tracer
        .span_builder("longpoll.publish")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.destination.name", event_key.to_owned()),
            KeyValue::new("messaging.message.id", message_id.to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_remote_span_context(span.span_context().clone());
    PublishSpan {
        cx,
        span: Some(span),
    }
}

/// The span of one publish; ends when dropped or [`PublishSpan::end`]ed.
pub struct PublishSpan {
    pub cx: Context,
    span: Option<global::BoxedSpan>,
}

impl PublishSpan {
    /// Ends the span, marking it failed when `error` is given.
    pub fn end(mut self, error: Option<&str>) {
        if let Some(span) = self.span.as_mut() {
            if let Some(e) = error {
                span.set_status(Status::error(e.to_owned()));
            }
            span.end();
        }
    }
}

/// Where the spans of a message's settlement (ack, reject) attach: the poll
/// span that delivered it, once that span exists.
#[derive(Clone, Default, Debug)]
pub struct SpanParent(Arc<OnceLock<Context>>);

impl SpanParent {
    fn set(&self, cx: Context) {
        let _ = self.0.set(cx);
    }
    fn get(&self) -> Option<&Context> {
        self.0.get()
    }
}

/// Trace data an [`crate::broker::Acker`] keeps when tracing is enabled.
#[derive(Debug, Clone)]
pub struct SettleTrace {
    pub parent: SpanParent,
    pub message_headers: Vec<(String, String)>,
    pub message_id: Arc<str>,
}

impl SettleTrace {
    /// A settle trace for a delivered message (only when tracing is enabled).
    pub fn for_message(message_id: &Arc<str>, headers: &[(String, String)]) -> Option<Self> {
        enabled().then(|| SettleTrace {
            parent: SpanParent::default(),
            message_headers: headers.to_vec(),
            message_id: message_id.clone(),
        })
    }

    /// Emits `longpoll.ack` / `longpoll.reject` under the delivering poll span
    /// (or the message's own context before that span exists).
    pub fn record(
        &self,
        name: &'static str,
        start: SystemTime,
        end: SystemTime,
        error: Option<&str>,
    ) {
        let parent = match self.parent.get() {
            Some(cx) => cx.clone(),
            None => match context_from_pairs(&self.message_headers) {
                Some(cx) => cx,
                None => return,
            },
        };
        let tracer = global::tracer(TRACER);
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes([KeyValue::new(
                "messaging.message.id",
                self.message_id.to_string(),
            )])
            .start_with_context(&tracer, &parent);
        if let Some(e) = error {
            span.set_status(Status::error(e.to_owned()));
        }
        span.end_with_timestamp(end);
    }
}

#[derive(Debug, Clone)]
struct Step {
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct PollTraceData {
    key_hash: Option<String>,
    sequence: Option<u64>,
    replayed: bool,
    redelivered: bool,
    message_id: Option<Arc<str>>,
    message_headers: Vec<(String, String)>,
    settle_parent: Option<SpanParent>,
    steps: Vec<Step>,
    finished: bool,
}

/// Records what happens to one poll, for its span. Created by the poll stack's
/// HTTP edge (`http::rescue`, only when spans are exported), carried down in
/// the poll's `PollContext`, filled by the sequence layer and the handler, and
/// turned into spans by the edge when the poll ends.
#[derive(Debug, Clone)]
pub struct PollTrace {
    started: SystemTime,
    data: Arc<Mutex<PollTraceData>>,
}

impl PollTrace {
    /// A recorder, when spans are exported.
    pub fn begin() -> Option<Self> {
        enabled().then(|| PollTrace {
            started: SystemTime::now(),
            data: Arc::default(),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut PollTraceData) -> R) -> R {
        f(&mut self.data.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The poll's key (kept only as its hash) and sequence.
    pub fn poll(&self, key: &str, sequence: u64) {
        let hash = super::key_hash(key);
        self.with(|d| {
            d.key_hash = Some(hash);
            d.sequence = Some(sequence);
        });
    }

    /// Answered from the replay cache.
    pub fn replayed(&self, message_id: &Arc<str>) {
        self.with(|d| {
            d.replayed = true;
            d.message_id = Some(message_id.clone());
        });
    }

    /// A timed step (consume, ack) to show as a child span.
    pub fn step(&self, name: &'static str, start: SystemTime, error: Option<&str>) {
        let end = SystemTime::now();
        self.with(|d| {
            d.steps.push(Step {
                name,
                start,
                end,
                error: error.map(str::to_owned),
            })
        });
    }

    /// The message handed to this poll.
    pub fn delivered(
        &self,
        message_id: &Arc<str>,
        redelivered: bool,
        headers: &[(String, String)],
        settle: Option<SpanParent>,
    ) {
        self.with(|d| {
            d.message_id = Some(message_id.clone());
            d.redelivered = redelivered;
            d.message_headers = headers.to_vec();
            d.settle_parent = settle;
        });
    }

    /// Emits the poll span (status 499: the client went away first) and its
    /// children. `request` is the context of the poll's HTTP request span.
    pub fn finish(&self, status: u16, request: &Context) {
        let data = self.with(|d| {
            if d.finished {
                return None;
            }
            d.finished = true;
            Some(std::mem::take(d))
        });
        let Some(d) = data else { return };
        let tracer = global::tracer(TRACER);
        let message_cx = context_from_pairs(&d.message_headers);
        let mut links = Vec::new();
        let parent = match &message_cx {
            Some(cx) => {
                let request_sc = request.span().span_context().clone();
                if request_sc.is_valid() {
                    links.push(Link::with_context(request_sc));
                }
                cx.clone()
            }
            None => request.clone(),
        };
        let now = SystemTime::now();
        let wait_ms = now
            .duration_since(self.started)
            .map(|w| w.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let mut attributes = vec![
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("longpoll.wait_ms", wait_ms),
            KeyValue::new("longpoll.replayed", d.replayed),
            KeyValue::new("longpoll.redelivered", d.redelivered),
        ];
        if let Some(h) = d.key_hash {
            attributes.push(KeyValue::new("longpoll.key_hash", h));
        }
        if let Some(s) = d.sequence {
            attributes.push(KeyValue::new("longpoll.sequence", s as i64));
        }
        if let Some(id) = &d.message_id {
            attributes.push(KeyValue::new("messaging.message.id", id.to_string()));
        }
        let mut span = tracer
            .span_builder("longpoll.poll")
            .with_kind(SpanKind::Server)
            .with_start_time(self.started)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&tracer, &parent);
        if status >= 500 || status == 0 {
            span.set_status(Status::error(format!("answered {status}")));
        }
        let poll_cx = parent.with_remote_span_context(span.span_context().clone());
        for step in d.steps {
            let mut child = tracer
                .span_builder(step.name)
                .with_kind(SpanKind::Client)
                .with_start_time(step.start)
                .start_with_context(&tracer, &poll_cx);
            if let Some(e) = step.error {
                child.set_status(Status::error(e));
            }
            child.end_with_timestamp(step.end);
        }
        span.end_with_timestamp(now);
        if let Some(settle) = d.settle_parent {
            settle.set(poll_cx);
        }
    }
}

/// W3C headers of a map (for tests and diagnostics).
pub fn pairs_to_map(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requests_traceparent_is_its_context_and_none_without_one() {
        let mut headers = http::HeaderMap::new();
        assert!(context_from_http(&headers).is_none());
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = context_from_http(&headers).expect("a valid traceparent");
        assert_eq!(trace_id_of(&cx), "4bf92f3577b34da6a3ce929d0e0e4736");
        headers.insert("traceparent", http::HeaderValue::from_static("00-nonsense"));
        assert!(context_from_http(&headers).is_none());
    }

    #[test]
    fn a_traceparent_survives_inject_and_extract() {
        let mut pairs = Vec::new();
        inject(&Context::new(), &mut pairs);
        let map = pairs_to_map(&pairs);
        let tp = map
            .get("traceparent")
            .expect("a traceparent is always written");
        assert_eq!(tp.len(), 55, "{tp}");
        let cx = context_from_pairs(&pairs).expect("valid");
        assert_eq!(trace_id_of(&cx), tp[3..35]);
        let mut again = Vec::new();
        inject(&cx, &mut again);
        assert_eq!(pairs_to_map(&again).get("traceparent"), Some(tp));
    }

    #[test]
    fn invalid_headers_give_no_context() {
        assert!(context_from_pairs(&[("traceparent".into(), "garbage".into())]).is_none());
        assert!(context_from_pairs(&[]).is_none());
    }
}
