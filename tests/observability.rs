//! Traces, metrics and logs: a delivery is one trace from the publisher to the
//! poll (over OTLP/HTTP and OTLP/gRPC, received by an OTLP server in the test),
//! metrics move as a scripted scenario says, log lines carry request and trace
//! ids, and no secret reaches logs or traces.

mod common;

use std::time::Duration;

use common::otlp::{Received, ReceivedSpan, grpc_receiver, http_receiver};
use common::process::{GatewayProcess, run};
use common::{Backend, Poll, TOKEN, TestGateway, client, eventually, saw, unique};
use serde_json::{Value, json};

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand_byte())).collect()
}

fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}

fn otel_env(
    endpoint: &str,
    protocol: &'static str,
    service: &'static str,
) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ("OTEL_SERVICE_NAME".into(), service.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

async fn gateway_with(env: &[(String, String)], extra: &[&str]) -> GatewayProcess {
    let amqp = common::amqp_url();
    let mut args = vec![
        "--broker",
        amqp.as_str(),
        "--api-token",
        TOKEN,
        "--exchange",
        "longpoll.test",
    ];
    args.extend_from_slice(extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    GatewayProcess::start(&args, &env).await
}

async fn subscribe(base: &str, event: &str) -> String {
    let r = client()
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(TOKEN)
        .json(&json!({ "event_keys": [event] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn emit(base: &str, event: &str, payload: Value, traceparent: Option<&str>) {
    let mut req = client()
        .post(format!("{base}/api/v1/events/{event}"))
        .bearer_auth(TOKEN)
        .json(&payload);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    assert_eq!(req.send().await.unwrap().status(), 202);
}

async fn poll(base: &str, key: &str, sequence: u64, traceparent: Option<&str>) -> Poll {
    let mut req = client().get(format!("{base}/?uuid={key}&sequence={sequence}"));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    Poll::read(req.send().await.unwrap()).await
}

fn find<'a>(spans: &'a [ReceivedSpan], name: &str, trace_id: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.name == name && s.trace_id == trace_id)
        .collect()
}

async fn wait_for_span(received: &Received, name: &str, trace_id: &str) {
    eventually(Duration::from_secs(20), name, || async {
        let spans = received.spans();
        saw(
            !find(&spans, name, trace_id).is_empty(),
            format!(
                "spans {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            ),
        )
    })
    .await;
}

async fn a_delivery_is_one_trace_from_publisher_to_poll(protocol: &'static str) {
    let (addr, received) = match protocol {
        "grpc" => grpc_receiver().await,
        _ => http_receiver().await,
    };
    let env = otel_env(&format!("http://{addr}"), protocol, "lp-trace-test");
    let mut gw = gateway_with(&env, &[]).await;
    let event = unique("longpoll.event.traced");
    let key = subscribe(&gw.base, &event).await;

    // The publisher's trace: an API call carrying a traceparent.
    let trace = random_hex(16);
    let publisher = format!("00-{trace}-{}-01", random_hex(8));
    emit(&gw.base, &event, json!({"n": 1}), Some(&publisher)).await;
    let first = poll(&gw.base, &key, 1, None).await;
    assert_eq!(first.status, 200);
    // The next sequence acks the first message (an ack span in its trace).
    let next = {
        let (base, key) = (gw.base.clone(), key.clone());
        tokio::spawn(async move { poll(&base, &key, 2, None).await })
    };
    emit(&gw.base, &event, json!({"n": 2}), None).await;
    assert_eq!(next.await.unwrap().status, 200);

    // An incoming traceparent on a poll request is honoured.
    let caller = random_hex(16);
    let missing = format!("longpoll.subscribe.{}", uuid::Uuid::new_v4());
    let r = poll(
        &gw.base,
        &missing,
        1,
        Some(&format!("00-{caller}-{}-01", random_hex(8))),
    )
    .await;
    assert_eq!(r.status, 404);

    gw.sigterm(); // spans are flushed on shutdown
    assert_eq!(gw.wait(Duration::from_secs(15)).await.code(), Some(0));

    wait_for_span(&received, "longpoll.poll", &trace).await;
    wait_for_span(&received, "longpoll.ack", &trace).await;
    wait_for_span(&received, "longpoll.poll", &caller).await;
    let spans = received.spans();
    let polls = find(&spans, "longpoll.poll", &trace);
    assert_eq!(polls.len(), 1, "{polls:?}");
    let p = polls[0];
    assert_eq!(p.service, "lp-trace-test");
    assert_eq!(p.attr("longpoll.sequence"), Some("1"));
    assert_eq!(p.attr("http.response.status_code"), Some("200"));
    assert_eq!(p.attr("longpoll.replayed"), Some("false"));
    assert_eq!(p.attr("longpoll.redelivered"), Some("false"));
    assert_eq!(p.attr("longpoll.key_hash").map(str::len), Some(12));
    assert_eq!(p.attr("messaging.message.id"), Some(first.message_id()));
    assert!(p.attr("longpoll.wait_ms").is_some());
    assert_eq!(p.links.len(), 1, "linked to the poll's own request span");
    let consume = find(&spans, "longpoll.consume", &trace);
    assert!(
        consume.iter().any(|c| c.parent_span_id == p.span_id),
        "consume is a child of the poll"
    );
    let ack = find(&spans, "longpoll.ack", &trace);
    assert!(
        ack.iter().any(|a| a.parent_span_id == p.span_id),
        "ack is a child of the poll"
    );
    assert!(
        !find(&spans, "request", &caller).is_empty(),
        "the request span continues the caller's trace"
    );
    for s in &spans {
        assert!(
            !s.text().contains(&key),
            "a subscription key in a span: {s:?}"
        );
        assert!(!s.text().contains(TOKEN), "the API token in a span: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_one_trace_from_publisher_to_poll_over_otlp_http() {
    a_delivery_is_one_trace_from_publisher_to_poll("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_one_trace_from_publisher_to_poll_over_otlp_grpc() {
    a_delivery_is_one_trace_from_publisher_to_poll("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publish_and_the_delivering_poll_share_one_trace() {
    let (addr, received) = http_receiver().await;
    let endpoint = format!("http://{addr}");
    let gw = gateway_with(&otel_env(&endpoint, "http/protobuf", "lp-gw"), &[]).await;
    let event = unique("longpoll.event.cli-traced");
    let key = subscribe(&gw.base, &event).await;
    let amqp = common::amqp_url();
    let cli_env = otel_env(&endpoint, "http/protobuf", "lp-cli");
    let cli_env: Vec<(&str, &str)> = cli_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (code, _, err) = run(
        &[
            "emit",
            "--broker",
            &amqp,
            "--exchange",
            "longpoll.test",
            &event,
            r#"{"via":"cli"}"#,
        ],
        &cli_env,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(poll(&gw.base, &key, 1, None).await.status, 200);
    eventually(
        Duration::from_secs(20),
        "publish and poll spans in one trace",
        || async {
            let spans = received.spans();
            let joined = spans
                .iter()
                .filter(|s| s.name == "longpoll.publish" && s.service == "lp-cli")
                .any(|p| {
                    spans.iter().any(|s| {
                        s.name == "longpoll.poll"
                            && s.trace_id == p.trace_id
                            && s.service == "lp-gw"
                    })
                });
            let seen: Vec<_> = spans
                .iter()
                .map(|s| (&s.service, &s.name, &s.trace_id))
                .collect();
            saw(joined, format!("(service, span, trace) {seen:?}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_the_callers_or_a_fresh_uuid() {
    let gw = TestGateway::start(Backend::Memory).await;
    let url = format!(
        "http://{}/?uuid=longpoll.subscribe.none&sequence=1",
        gw.public_addr()
    );
    let mut fresh = Vec::new();
    for _ in 0..2 {
        let r = client().get(&url).send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let uuid = uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        assert_eq!(id, uuid.hyphenated().to_string(), "lower-case, hyphenated");
        fresh.push(id);
    }
    assert_ne!(fresh[0], fresh[1]);
    let r = client()
        .get(&url)
        .header("x-request-id", "caller-chosen-17")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "caller-chosen-17");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_variables_messages_still_carry_a_traceparent() {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions};
    let gw = TestGateway::start(Backend::Rabbit).await;
    let event = unique("longpoll.event.untraced");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({})).await;
    let conn = common::amqp::connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            key.as_str().into(),
            "t".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let d = consumer.next().await.unwrap().unwrap();
    let headers = d.properties.headers().clone().unwrap_or_default();
    let tp = match headers.inner().get("traceparent") {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("no traceparent header: {other:?}"),
    };
    assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");
    d.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_the_scripted_scenario_says() {
    let gw = TestGateway::start_with(Backend::Memory, |s| {
        s.poll_timeout = Duration::from_millis(300);
        s.replay_ttl = Duration::from_millis(600);
    })
    .await;
    let event = unique("longpoll.event.metrics");
    let key = gw.subscribe(&[&event]).await;
    for n in 1..=3 {
        gw.emit(&event, json!({ "n": n })).await;
    }
    for seq in 1..=3 {
        assert_eq!(gw.poll(&key, seq).await.status, 200);
    }
    // K = 1 requeued: the answer to 3 is never followed up within the replay TTL…
    gw.wait_metric("longpoll_messages_requeued_total", 1.0)
        .await;
    // …so the next sequence gets message 3 again (a redelivery, same id).
    let again = gw.poll(&key, 4).await;
    assert_eq!((again.status, again.json()["n"].clone()), (200, json!(3)));
    for _ in 0..2 {
        assert_eq!(gw.poll(&key, 5).await.status, 408); // M = 2 answered 408
    }
    // N = 4 answered 200.
    assert_eq!(
        gw.metric("longpoll_polls_answered_total{status=\"200\"}")
            .await,
        4.0
    );
    assert_eq!(
        gw.metric("longpoll_polls_answered_total{status=\"408\"}")
            .await,
        2.0
    );
    assert_eq!(gw.metric("longpoll_messages_delivered_total").await, 4.0);
    assert_eq!(gw.metric("longpoll_messages_redelivered_total").await, 1.0);
    assert_eq!(gw.metric("longpoll_messages_acked_total").await, 3.0);
    assert_eq!(gw.metric("longpoll_messages_requeued_total").await, 1.0);
    assert_eq!(gw.metric("longpoll_poll_hold_seconds_count").await, 6.0);
    assert_eq!(gw.metric("longpoll_events_published_total").await, 3.0);
    assert_eq!(gw.metric("longpoll_polls_held").await, 0.0);
}

async fn rabbitmqctl(args: &[&str]) -> bool {
    common::amqp::rabbitmqctl(args).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_and_trace_ids_and_no_secret_reaches_logs_or_traces() {
    // A broker user of our own, so that its password is a unique string.
    let password = format!("pw-{}", random_hex(12));
    let user = "lp-secret-test";
    if !rabbitmqctl(&["add_user", user, &password]).await {
        assert!(rabbitmqctl(&["change_password", user, &password]).await);
    }
    assert!(rabbitmqctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"]).await);
    let broker = format!("amqp://{user}:{password}@127.0.0.1:5672/%2f");

    let (addr, received) = http_receiver().await;
    let mut env = otel_env(&format!("http://{addr}"), "http/protobuf", "lp-secrets");
    env.push(("RUST_LOG".into(), "debug".into()));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut gw = GatewayProcess::start(
        &[
            "--broker",
            &broker,
            "--api-token",
            TOKEN,
            "--exchange",
            "longpoll.test",
        ],
        &env_ref,
    )
    .await;

    // A full scenario: subscribe, bind, emit, poll, replay, next, 404, wrong token, delete.
    let event = unique("longpoll.event.secret");
    let key = subscribe(&gw.base, &event).await;
    let http = client();
    let r = http
        .post(format!("{}/api/v1/subscriptions/{key}/bindings", gw.base))
        .bearer_auth(TOKEN)
        .json(&json!({"event_keys": [format!("{event}.more")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    emit(&gw.base, &event, json!({"n": 1}), None).await;
    assert_eq!(poll(&gw.base, &key, 1, None).await.status, 200);
    assert_eq!(poll(&gw.base, &key, 1, None).await.status, 200);
    let next = {
        let (base, key) = (gw.base.clone(), key.clone());
        tokio::spawn(async move { poll(&base, &key, 2, None).await })
    };
    emit(&gw.base, &event, json!({"n": 2}), None).await;
    assert_eq!(next.await.unwrap().status, 200);
    assert_eq!(
        poll(&gw.base, &format!("{key}x"), 1, None).await.status,
        404
    );
    let r = http
        .post(format!("{}/api/v1/subscriptions", gw.base))
        .bearer_auth("wrong-token-0123456789")
        .json(&json!({"event_keys": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .delete(format!("{}/api/v1/subscriptions/{key}", gw.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    gw.sigterm();
    assert_eq!(gw.wait(Duration::from_secs(15)).await.code(), Some(0));
    eventually(Duration::from_secs(20), "spans received", || async {
        let spans = received.spans();
        saw(
            spans.iter().any(|s| s.name == "longpoll.poll"),
            format!(
                "spans {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            ),
        )
    })
    .await;

    let logs = gw.logs();
    let mut request_lines = 0;
    for line in logs.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if let Some(request) = v["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|s| s["name"] == "request"))
        {
            request_lines += 1;
            assert!(
                request["request_id"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{line}"
            );
            assert_eq!(
                request["trace_id"].as_str().map(str::len),
                Some(32),
                "{line}"
            );
        }
    }
    assert!(
        request_lines >= 3,
        "request log lines: {request_lines}\n{logs}"
    );
    let traces: String = received.spans().iter().map(ReceivedSpan::text).collect();
    for (what, secret) in [
        ("subscription key", key.as_str()),
        ("API token", TOKEN),
        ("broker password", password.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the logs:\n{logs}");
        assert!(!traces.contains(secret), "the {what} is in the traces");
    }
    assert!(logs.contains("key_hash"), "keys appear as hashes");
    let _ = rabbitmqctl(&["delete_user", user]).await;
}

/// The JSON lines a gateway on the embedded broker logs while serving a poll
/// (with the caller's request id and traceparent), a publish and a 404.
/// Returns the lines inside requests, and the event key published to.
async fn json_request_lines(rust_log: &str) -> (Vec<Value>, String) {
    let mut gw = GatewayProcess::start(
        &["--broker", "memory://", "--api-token", TOKEN],
        &[("RUST_LOG", rust_log)],
    )
    .await;
    let event = unique("longpoll.event.logs");
    let key = subscribe(&gw.base, &event).await;
    emit(&gw.base, &event, json!({"n": 1}), None).await;
    let r = client()
        .get(format!("{}/?uuid={key}&sequence=1", gw.base))
        .header("x-request-id", "caller-log-7")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        poll(&gw.base, &format!("{key}x"), 1, None).await.status,
        404
    );
    gw.sigterm();
    assert_eq!(gw.wait(Duration::from_secs(15)).await.code(), Some(0));
    let logs = gw.logs();
    assert!(!logs.contains(&key), "a subscription key reached the logs");
    let lines = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v: &Value| v["spans"].is_array())
        .collect();
    (lines, event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_without_an_exporter_carry_each_requests_fields_as_its_span() {
    // No exporter and no span directive: the request's fields are written
    // without a span being made (telemetry::request_fields), in the same shape.
    let (lines, event) = json_request_lines("debug").await;
    let request = |v: &Value| v["spans"][0].clone();
    let finished: Vec<&Value> = lines
        .iter()
        .filter(|v| v["message"] == "finished processing request")
        .collect();
    assert_eq!(finished.len(), 4, "subscribe, emit, poll, 404: {lines:#?}");
    for v in &lines {
        let r = request(v);
        assert_eq!(r["name"], "request", "{v}");
        assert!(
            r["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{v}"
        );
        assert_eq!(r["trace_id"].as_str().map(str::len), Some(32), "{v}");
        assert!(r["method"].is_string() && r["path"].is_string(), "{v}");
    }
    let polled: Vec<&Value> = lines
        .iter()
        .filter(|v| request(v)["request_id"] == "caller-log-7")
        .collect();
    assert_eq!(polled.len(), 2, "started and finished: {lines:#?}");
    for v in polled {
        assert_eq!(request(v)["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(request(v)["method"], "GET");
        assert_eq!(request(v)["path"], "/");
    }
    let published = format!("/api/v1/events/{event}");
    assert!(
        finished
            .iter()
            .any(|v| request(v)["path"] == published.as_str()),
        "the publish's path: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_log_span_directive_still_filters_on_the_request_span() {
    // `[request]=debug` needs a real span to filter on: DEBUG lines inside
    // requests only, each carrying the request span's fields.
    let (lines, _) = json_request_lines("info,[request]=debug").await;
    let finished = lines
        .iter()
        .filter(|v| v["message"] == "finished processing request")
        .count();
    assert_eq!(finished, 4, "{lines:#?}");
    for v in &lines {
        assert_eq!(v["spans"][0]["name"], "request", "{v}");
        assert_eq!(v["spans"][0]["trace_id"].as_str().map(str::len), Some(32));
    }
}
