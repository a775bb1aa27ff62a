//! The management API: every endpoint's success and error paths, on both
//! brokers; on RabbitMQ, what it declared is checked on the broker itself.

mod common;

use std::time::Duration;

use common::{Backend, TOKEN, TestGateway, unique};
use serde_json::{Value, json};

both_brokers!(
    a_subscription_gets_a_prefixed_uuid_v4_key_and_the_poll_uri,
    public_url_overrides_the_uri_handed_out,
    bindings_can_be_added_to_a_subscription,
    deleting_a_subscription_removes_its_queue,
    topic_wildcards_route_as_rabbitmq_does,
    wrong_or_missing_token_is_401,
    management_api_is_404_when_disabled,
    bodies_of_the_wrong_shape_are_400_or_422,
    bodies_over_1_mib_are_413,
    unknown_subscriptions_are_404,
    event_keys_that_amqp_refuses_are_400,
);

async fn api(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = gw
        .client
        .request(method, format!("{}{path}", gw.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json");
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    if let Some(key) = body["key"].as_str() {
        // A subscription made: the gateway deletes it at the end.
        gw.owns(key);
    }
    (status, body)
}

fn assert_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{{\"error\": ...}} expected, got {body}"
    );
}

async fn a_subscription_gets_a_prefixed_uuid_v4_key_and_the_poll_uri(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let (status, body) = api(
        &gw,
        reqwest::Method::POST,
        "/api/v1/subscriptions",
        Some(&json!({"event_keys": [unique("longpoll.event.x")]}).to_string()),
    )
    .await;
    assert_eq!(status, 201);
    let key = body["key"].as_str().unwrap();
    let id = key.strip_prefix("longpoll.subscribe.").expect("prefixed");
    let id = uuid::Uuid::parse_str(id).expect("a UUID");
    assert_eq!(id.get_version_num(), 4);
    assert_eq!(body["uri"], format!("http://{}/", gw.public_addr()));
}

async fn public_url_overrides_the_uri_handed_out(backend: Backend) {
    let gw = TestGateway::start_with(backend, |s| {
        s.public_url = Some("https://example.com/longpoll/".parse().unwrap())
    })
    .await;
    let (status, body) = api(
        &gw,
        reqwest::Method::POST,
        "/api/v1/subscriptions",
        Some(r#"{"event_keys": ["longpoll.event.y"]}"#),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["uri"], "https://example.com/longpoll/");
}

async fn bindings_can_be_added_to_a_subscription(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let first = unique("longpoll.event.first");
    let second = unique("longpoll.event.second");
    let key = gw.subscribe(&[&first]).await;
    let (status, _) = api(
        &gw,
        reqwest::Method::POST,
        &format!("/api/v1/subscriptions/{key}/bindings"),
        Some(&json!({ "event_keys": [second] }).to_string()),
    )
    .await;
    assert_eq!(status, 204);
    gw.emit(&second, json!({"via": "second"})).await;
    assert_eq!(gw.poll(&key, 1).await.json()["via"], "second");
}

async fn deleting_a_subscription_removes_its_queue(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let key = gw.subscribe(&[&unique("longpoll.event.del")]).await;
    let path = format!("/api/v1/subscriptions/{key}");
    assert_eq!(api(&gw, reqwest::Method::DELETE, &path, None).await.0, 204);
    assert_eq!(gw.poll(&key, 1).await.status, 404);
    let (status, body) = api(&gw, reqwest::Method::DELETE, &path, None).await;
    assert_error(status, &body, 404);
}

async fn topic_wildcards_route_as_rabbitmq_does(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let base = unique("longpoll.event.bug");
    let key = gw.subscribe(&[&format!("{base}.*")]).await;
    gw.emit(
        &format!("{base}.7.comments"),
        json!({"n": "two words: no match"}),
    )
    .await;
    gw.emit(&format!("{base}.7"), json!({"n": "one word: match"}))
        .await;
    assert_eq!(gw.poll(&key, 1).await.json()["n"], "one word: match");
}

async fn wrong_or_missing_token_is_401(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let url = format!("{}/api/v1/subscriptions", gw.base);
    let body = r#"{"event_keys": ["longpoll.event.z"]}"#;
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Basic dGVzdA=="),
    ] {
        let mut req = gw.client.post(&url).body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_string());
    }
}

async fn management_api_is_404_when_disabled(backend: Backend) {
    let gw = TestGateway::start_with(backend, |s| s.api_token = None).await;
    for path in ["/api/v1/subscriptions", "/api/v1/events/longpoll.event.a"] {
        let (status, body) = api(&gw, reqwest::Method::POST, path, Some("{}")).await;
        assert_error(status, &body, 404);
    }
}

async fn bodies_of_the_wrong_shape_are_400_or_422(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let subs = "/api/v1/subscriptions";
    let cases: [(&str, &str, u16); 7] = [
        (subs, "{not json", 400),
        (subs, "", 400),
        (subs, r#"["longpoll.event.a"]"#, 422),
        (subs, r#"{"event_keys": "longpoll.event.a"}"#, 422),
        (subs, r#"{"event_keys": []}"#, 422),
        (subs, r#"{"event_keys": ["a"], "extra": 1}"#, 422),
        ("/api/v1/events/longpoll.event.a", r#"[1, 2]"#, 422),
    ];
    for (path, body, expected) in cases {
        let (status, v) = api(&gw, reqwest::Method::POST, path, Some(body)).await;
        assert_error(status, &v, expected);
    }
}

async fn bodies_over_1_mib_are_413(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let (status, v) = api(
        &gw,
        reqwest::Method::POST,
        "/api/v1/events/longpoll.event.big",
        Some(&big),
    )
    .await;
    assert_error(status, &v, 413);
}

async fn unknown_subscriptions_are_404(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let missing = format!("longpoll.subscribe.{}", uuid::Uuid::new_v4());
    let body = r#"{"event_keys": ["longpoll.event.a"]}"#;
    for path in [
        format!("/api/v1/subscriptions/{missing}/bindings"),
        "/api/v1/subscriptions/not-a-subscription-key/bindings".to_owned(),
    ] {
        let (status, v) = api(&gw, reqwest::Method::POST, &path, Some(body)).await;
        assert_error(status, &v, 404);
    }
    let (status, v) = api(
        &gw,
        reqwest::Method::DELETE,
        &format!("/api/v1/subscriptions/{missing}"),
        None,
    )
    .await;
    assert_error(status, &v, 404);
    let (status, v) = api(&gw, reqwest::Method::GET, "/api/v2/anything", None).await;
    assert_error(status, &v, 404);
}

async fn event_keys_that_amqp_refuses_are_400(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let too_long = "k".repeat(256);
    for key in ["has%20space", "caf%C3%A9", too_long.as_str(), "wild.%2A"] {
        let (status, v) = api(
            &gw,
            reqwest::Method::POST,
            &format!("/api/v1/events/{key}"),
            Some("{}"),
        )
        .await;
        assert_error(status, &v, 400);
    }
    let (status, v) = api(
        &gw,
        reqwest::Method::POST,
        "/api/v1/subscriptions",
        Some(&json!({ "event_keys": [too_long] }).to_string()),
    )
    .await;
    assert_error(status, &v, 400);
}

// ---- RabbitMQ only: what was declared, seen on the broker ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_subscription_queue_is_durable_with_x_expires_and_bound_to_each_key() {
    let gw = TestGateway::start_with(Backend::Rabbit, |s| {
        s.subscription_expiry = Duration::from_secs(90)
    })
    .await;
    let a = unique("longpoll.event.a");
    let b = unique("longpoll.event.b");
    let key = gw.subscribe(&[&a, &b]).await;
    let queues = common::amqp::rabbitmqctl_ok(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "durable",
        "arguments",
    ])
    .await;
    let line = queues
        .lines()
        .find(|l| l.starts_with(&key))
        .expect("queue listed");
    assert!(line.contains("true"), "durable: {line}");
    assert!(
        line.contains("x-expires") && line.contains("90000"),
        "x-expires: {line}"
    );
    let bindings = common::amqp::rabbitmqctl_ok(&[
        "list_bindings",
        "-q",
        "--no-table-headers",
        "source_name",
        "destination_name",
        "routing_key",
    ])
    .await;
    for event in [&a, &b] {
        assert!(
            bindings.lines().any(|l| l.starts_with("longpoll.test")
                && l.contains(&key)
                && l.contains(event.as_str())),
            "binding to {event}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_events_are_confirmed_non_persistent_json_with_id_and_timestamp() {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions};
    let gw = TestGateway::start(Backend::Rabbit).await;
    let event = unique("longpoll.event.props");
    let key = gw.subscribe(&[&event]).await;
    let id = gw.emit(&event, json!({"x": 1})).await;
    // 202 came after the confirm: the message is in the queue already.
    let conn = common::amqp::connect().await;
    assert_eq!(common::amqp::ready_and_consumers(&conn, &key).await.0, 1);
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
    let p = &d.properties;
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(1), "non-persistent");
    assert!(p.timestamp().is_some());
    let body: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(body, json!({"x": 1, "event_key": event}));
    d.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_an_existing_exchange_is_used_as_it_is_and_a_missing_one_is_declared() {
    use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
    let conn = common::amqp::connect().await;
    let ch = conn.create_channel().await.unwrap();
    // Launchpad's setup: a direct exchange that exists already.
    let existing = unique("launchpad-exchange");
    ch.exchange_declare(
        existing.as_str().into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let gw = TestGateway::start_with(Backend::Rabbit, |s| s.exchange = existing.clone()).await;
    let event = unique("longpoll.event.direct");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"via": "direct"})).await;
    assert_eq!(gw.poll(&key, 1).await.json()["via"], "direct");
    let exchanges = common::amqp::rabbitmqctl_ok(&[
        "list_exchanges",
        "-q",
        "--no-table-headers",
        "name",
        "type",
    ])
    .await;
    assert!(
        exchanges
            .lines()
            .any(|l| l.starts_with(&existing) && l.contains("direct"))
    );

    let missing = unique("longpoll.test.new");
    let gw2 = TestGateway::start_with(Backend::Rabbit, |s| {
        s.exchange = missing.clone();
        s.exchange_type = longpoll_gateway::config::ExchangeType::Direct;
    })
    .await;
    gw2.subscribe(&[&unique("longpoll.event.k")]).await;
    let exchanges = common::amqp::rabbitmqctl_ok(&[
        "list_exchanges",
        "-q",
        "--no-table-headers",
        "name",
        "type",
    ])
    .await;
    assert!(
        exchanges
            .lines()
            .any(|l| l.starts_with(&missing) && l.contains("direct")),
        "{exchanges}"
    );
    for name in [existing, missing] {
        let _ = ch
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

// ---- The embedded broker's bounds ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_full_queue_drops_its_oldest_message_and_counts_it() {
    let gw =
        TestGateway::start_with(Backend::Memory, |s| s.memory.max_messages_per_queue = 2).await;
    let event = unique("longpoll.event.cap");
    let key = gw.subscribe(&[&event]).await;
    for n in 1..=3 {
        gw.emit(&event, json!({ "n": n })).await;
    }
    assert_eq!(
        gw.metric("longpoll_memory_messages_dropped_total").await,
        1.0
    );
    assert_eq!(gw.poll(&key, 1).await.json()["n"], 2);
    assert_eq!(gw.poll(&key, 2).await.json()["n"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_the_queue_cap_refuses_new_subscriptions_with_503() {
    let gw = TestGateway::start_with(Backend::Memory, |s| s.memory.max_queues = 1).await;
    gw.subscribe(&["longpoll.event.one"]).await;
    let (status, v) = api(
        &gw,
        reqwest::Method::POST,
        "/api/v1/subscriptions",
        Some(r#"{"event_keys": ["longpoll.event.two"]}"#),
    )
    .await;
    assert_error(status, &v, 503);
    assert_eq!(gw.metric("longpoll_memory_queues").await, 1.0);
}
