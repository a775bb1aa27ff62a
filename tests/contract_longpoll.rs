//! The long-poll table of the contract, one test per row, on both brokers.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestGateway, unique};
use serde_json::json;

both_brokers!(
    probe_without_uuid_and_sequence_names_the_queue_prefix,
    missing_or_empty_uuid_or_sequence_is_invalid_request,
    sequence_that_is_not_a_u64_is_invalid_sequence,
    foreign_prefix_overlong_or_unprintable_uuid_is_404,
    missing_queue_is_404,
    message_is_answered_200_with_its_body_unchanged_and_the_headers,
    a_body_of_many_amqp_frames_is_answered_whole,
    message_with_an_error_key_is_answered_400,
    message_from_this_client_by_original_uuid_is_skipped,
    nothing_within_the_poll_timeout_is_408,
    any_path_that_is_not_a_gateway_route_polls,
    over_max_polls_is_503_with_retry_after,
    shutting_down_answers_held_polls_503_with_retry_after_0,
);

async fn probe_without_uuid_and_sequence_names_the_queue_prefix(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    for path in ["/", "/longpoll/", "/?other=1"] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, "Async frontend for longpoll.subscribe.");
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    }
}

async fn missing_or_empty_uuid_or_sequence_is_invalid_request(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    for q in [
        "?uuid=longpoll.subscribe.x",
        "?sequence=1",
        "?uuid=&sequence=1",
        "?uuid=longpoll.subscribe.x&sequence=",
    ] {
        let r = gw.get(&format!("/{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.body, "Invalid request", "{q}");
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    }
}

async fn sequence_that_is_not_a_u64_is_invalid_sequence(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    for s in ["-1", "abc", "1.5", "18446744073709551616", "%2B1"] {
        let r = gw
            .get(&format!("/?uuid=longpoll.subscribe.x&sequence={s}"))
            .await;
        assert_eq!(r.status, 400, "{s}");
        assert_eq!(r.body, "Invalid sequence", "{s}");
    }
}

async fn foreign_prefix_overlong_or_unprintable_uuid_is_404(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    // A real queue outside the prefix, holding a message: polling it must not touch it.
    let foreign = unique("foreign.queue");
    let conn = match backend {
        Backend::Rabbit => {
            let conn = common::amqp::connect().await;
            common::amqp::declare_queue(&conn, &foreign).await;
            common::amqp::publish_to_queue(&conn, &foreign, b"{\"secret\":1}", Default::default())
                .await;
            Some(conn)
        }
        Backend::Memory => None,
    };
    let long = format!("longpoll.subscribe.{}", "x".repeat(240));
    for uuid in [
        foreign.as_str(),
        long.as_str(),
        "longpoll.subscribe.a b",
        "longpoll.subscribe.\u{e9}",
    ] {
        let started = Instant::now();
        let r = gw.poll(uuid, 1).await;
        assert_eq!(r.status, 404, "{uuid}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    if let Some(conn) = conn {
        let (ready, consumers) = common::amqp::ready_and_consumers(&conn, &foreign).await;
        assert_eq!(
            (ready, consumers),
            (1, 0),
            "the foreign queue was not touched"
        );
        common::amqp::delete_queue(&conn, &foreign).await;
    }
    assert_eq!(gw.metric("longpoll_consumers").await, 0.0);
}

async fn missing_queue_is_404(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let r = gw
        .poll(&format!("longpoll.subscribe.{}", uuid::Uuid::new_v4()), 1)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

async fn message_is_answered_200_with_its_body_unchanged_and_the_headers(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.bug");
    let key = gw.subscribe(&[&event]).await;
    let id = gw.emit(&event, json!({"n": 1, "text": "h\u{e9}llo"})).await;
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-longpoll-sequence"), Some("1"));
    assert_eq!(r.message_id(), id);
    assert_eq!(
        r.json(),
        json!({"n": 1, "text": "h\u{e9}llo", "event_key": event})
    );
}

/// On RabbitMQ the gateway asks for 32 KiB frames: a larger body travels as
/// several body frames and must come out whole and in order.
async fn a_body_of_many_amqp_frames_is_answered_whole(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.big");
    let key = gw.subscribe(&[&event]).await;
    let text: String = (0..60_000u32).map(|i| format!("{i:x};")).collect();
    assert!(text.len() > 8 * 32 * 1024, "{} bytes", text.len());
    let id = gw.emit(&event, json!({"text": text})).await;
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.message_id(), id);
    assert_eq!(r.json(), json!({"text": text, "event_key": event}));
}

async fn message_with_an_error_key_is_answered_400(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.job");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"error": "the job failed"})).await;
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "the job failed");
    assert_eq!(r.header("x-longpoll-sequence"), Some("1"));
    // It is an answer like any other: the retry replays it.
    assert_eq!(gw.poll(&key, 1).await.status, 400);
}

async fn message_from_this_client_by_original_uuid_is_skipped(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.chat");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"original-uuid": key, "text": "mine"}))
        .await;
    gw.emit(
        &event,
        json!({"original-uuid": "longpoll.subscribe.someone-else", "text": "theirs"}),
    )
    .await;
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["text"], "theirs");
    assert_eq!(gw.metric("longpoll_messages_skipped_total").await, 1.0);
}

async fn nothing_within_the_poll_timeout_is_408(backend: Backend) {
    let gw =
        TestGateway::start_with(backend, |s| s.poll_timeout = Duration::from_millis(700)).await;
    let event = unique("longpoll.event.quiet");
    let key = gw.subscribe(&[&event]).await;
    let started = Instant::now();
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 408);
    assert!(started.elapsed() >= Duration::from_millis(650));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // A 408 is not replayed: the retry of the same sequence waits again.
    gw.emit(&event, json!({"at": "last"})).await;
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["at"], "last");
}

async fn any_path_that_is_not_a_gateway_route_polls(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.path");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"via": "prefix"})).await;
    let r = gw.poll_path("/longpoll/", &key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["via"], "prefix");
    let r = gw.poll_path("/some/deeper/path", &key, 1).await;
    assert_eq!(r.status, 200, "a retry on another path replays");
}

async fn over_max_polls_is_503_with_retry_after(backend: Backend) {
    let gw = TestGateway::start_with(backend, |s| s.max_polls = 2).await;
    let keys = [
        gw.subscribe(&[&unique("longpoll.event.a")]).await,
        gw.subscribe(&[&unique("longpoll.event.b")]).await,
    ];
    let held: Vec<_> = keys
        .iter()
        .map(|k| {
            let client = gw.client.clone();
            let url = format!("{}/?uuid={k}&sequence=1", gw.base);
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    gw.wait_metric("longpoll_polls_held", 2.0).await;
    let third = gw.subscribe(&[&unique("longpoll.event.c")]).await;
    let r = gw.poll(&third, 1).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    for h in held {
        h.abort();
    }
}

async fn shutting_down_answers_held_polls_503_with_retry_after_0(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let key = gw.subscribe(&[&unique("longpoll.event.bye")]).await;
    let held = {
        let client = gw.client.clone();
        let url = format!("{}/?uuid={key}&sequence=1", gw.base);
        tokio::spawn(async move { common::Poll::read(client.get(url).send().await.unwrap()).await })
    };
    gw.wait_metric("longpoll_polls_held", 1.0).await;
    let admin = gw.admin.clone();
    let client = gw.client.clone();
    let mut gw = gw;
    let running = gw.take_running();
    running.begin_shutdown();
    let r = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("answered within the drain window")
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("0"));
    // /readyz says not ready while draining (or the admin port is already closed).
    if let Ok(resp) = client.get(format!("{admin}/readyz")).send().await {
        assert_eq!(resp.status(), 503);
    }
    tokio::time::timeout(Duration::from_secs(15), running.stopped())
        .await
        .expect("stopped within the drain window");
}
