//! Several messages in one answer (opt-in), on both brokers: `max={k}` (1–100,
//! default 1) lets a poll be answered with up to `k` messages that are already
//! waiting, as one JSON array in order, with `X-Longpoll-Count`;
//! `X-Longpoll-Message-Id` names the last, `X-Longpoll-Message-Ids` all of
//! them. The sequence rules apply to the answer as a whole: replayed whole,
//! acked whole by the next sequence, requeued whole. Without `max` (every
//! txlongpoll client) nothing changes.

mod common;

use std::time::{Duration, SystemTime};

use common::{Backend, Poll, TestGateway, eventually, is, unique};
use serde_json::{Value, json};

both_brokers!(
    k_waiting_messages_are_one_array_in_order_with_the_headers,
    more_waiting_than_max_are_answered_max_now_and_the_rest_next_poll,
    a_retry_replays_the_whole_answer_whatever_max_it_asks,
    the_next_sequence_acks_the_whole_answer,
    an_answer_not_followed_within_the_replay_ttl_is_requeued_whole_in_order,
    a_client_gone_before_the_answer_leaves_the_messages_in_order,
    a_restart_without_seen_requeues_the_whole_answer_and_serves_it_again,
    a_next_sequence_that_does_not_show_the_answer_requeues_it_whole,
    without_max_nothing_changes,
    a_malformed_max_is_400_and_consumes_nothing,
    an_error_message_ends_the_array_and_is_answered_alone_next,
    a_message_from_this_client_is_left_out_of_the_array,
    a_body_that_is_not_json_is_answered_alone_as_without_max,
);

async fn poll_max(gw: &TestGateway, key: &str, sequence: u64, max: u32) -> Poll {
    gw.get(&format!("/?uuid={key}&sequence={sequence}&max={max}"))
        .await
}

/// The `n` of each message of an array answer.
fn ns(r: &Poll) -> Vec<Value> {
    match r.json() {
        Value::Array(messages) => messages.iter().map(|m| m["n"].clone()).collect(),
        other => panic!("not an array ({}): {other}", r.status),
    }
}

fn ids_header(r: &Poll) -> Vec<String> {
    r.header("x-longpoll-message-ids")
        .unwrap_or("")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Emits `{"n": n}` for each `n`; their message ids.
async fn emit_all(gw: &TestGateway, event: &str, ns: std::ops::RangeInclusive<u32>) -> Vec<String> {
    let mut ids = Vec::new();
    for n in ns {
        ids.push(gw.emit(event, json!({ "n": n })).await);
    }
    ids
}

async fn k_waiting_messages_are_one_array_in_order_with_the_headers(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let ids = emit_all(&gw, &event, 1..=3).await;
    let r = poll_max(&gw, &key, 1, 5).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!([
            {"n": 1, "event_key": event},
            {"n": 2, "event_key": event},
            {"n": 3, "event_key": event},
        ])
    );
    assert_eq!(r.header("x-longpoll-count"), Some("3"));
    assert_eq!(r.message_id(), ids[2], "the last");
    assert_eq!(ids_header(&r), ids);
    assert_eq!(r.sequence(), Some(1));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(gw.broker_counts(&key).await, (0, 3), "all three unacked");
    // One message waiting is an array of one all the same.
    let id = gw.emit(&event, json!({"n": 4})).await;
    let r = poll_max(&gw, &key, 2, 5).await;
    assert_eq!(
        (ns(&r), r.header("x-longpoll-count")),
        (vec![json!(4)], Some("1"))
    );
    assert_eq!(ids_header(&r), [id]);
}

async fn more_waiting_than_max_are_answered_max_now_and_the_rest_next_poll(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let ids = emit_all(&gw, &event, 1..=5).await;
    let first = poll_max(&gw, &key, 1, 3).await;
    assert_eq!(ns(&first), [1, 2, 3]);
    assert_eq!(ids_header(&first), ids[..3]);
    gw.wait_taken(&key, 5, 3, "three answered").await;
    let next = poll_max(&gw, &key, 2, 3).await;
    assert_eq!(ns(&next), [4, 5], "what waits, without waiting for more");
    assert_eq!(next.header("x-longpoll-count"), Some("2"));
    assert_eq!(next.message_id(), ids[4]);
    eventually(Duration::from_secs(20), "the first three acked", || async {
        is(gw.broker_counts(&key).await, (0, 2))
    })
    .await;
}

async fn a_retry_replays_the_whole_answer_whatever_max_it_asks(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    emit_all(&gw, &event, 1..=4).await;
    let first = poll_max(&gw, &key, 1, 3).await;
    assert_eq!(ns(&first), [1, 2, 3]);
    for retry in [
        poll_max(&gw, &key, 1, 3).await,
        poll_max(&gw, &key, 1, 10).await,
        poll_max(&gw, &key, 1, 1).await,
        gw.poll(&key, 1).await,
    ] {
        assert_eq!(retry.status, 200);
        assert_eq!(retry.body, first.body, "the same answer, byte for byte");
        assert_eq!(retry.header("x-longpoll-count"), Some("3"));
        assert_eq!(retry.message_id(), first.message_id());
        assert_eq!(ids_header(&retry), ids_header(&first));
    }
    assert_eq!(gw.metric("longpoll_replays_total").await, 4.0);
    gw.wait_taken(&key, 4, 3, "nothing more answered").await;
}

async fn the_next_sequence_acks_the_whole_answer(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    emit_all(&gw, &event, 1..=3).await;
    assert_eq!(ns(&poll_max(&gw, &key, 1, 3).await), [1, 2, 3]);
    let next = {
        let (client, url) = (
            gw.client.clone(),
            format!("{}/?uuid={key}&sequence=2&max=3", gw.base),
        );
        tokio::spawn(async move { Poll::read(client.get(url).send().await.expect("poll")).await })
    };
    eventually(Duration::from_secs(20), "all three acked", || async {
        is(gw.broker_counts(&key).await, (0, 0))
    })
    .await;
    assert_eq!(gw.metric("longpoll_messages_acked_total").await, 3.0);
    gw.emit(&event, json!({"n": 4})).await;
    let r = next.await.unwrap();
    assert_eq!(ns(&r), [4], "nothing of the first answer comes again");
    assert_eq!(gw.metric("longpoll_messages_redelivered_total").await, 0.0);
}

async fn an_answer_not_followed_within_the_replay_ttl_is_requeued_whole_in_order(backend: Backend) {
    let gw = TestGateway::start_with(backend, |s| s.replay_ttl = Duration::from_millis(800)).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let ids = emit_all(&gw, &event, 1..=4).await;
    let first = poll_max(&gw, &key, 1, 3).await;
    assert_eq!(ids_header(&first), ids[..3]);
    gw.wait_metric("longpoll_messages_requeued_total", 3.0)
        .await;
    assert_eq!(gw.metric("longpoll_replay_entries").await, 0.0);
    // Forgotten: the same sequence takes them from the queue again, in order,
    // with the one behind them.
    let again = poll_max(&gw, &key, 1, 10).await;
    assert_eq!(ns(&again), [1, 2, 3, 4]);
    assert_eq!(ids_header(&again), ids);
    assert_eq!(gw.metric("longpoll_replays_total").await, 0.0);
    // With a prefetch window the fourth went to the consumer, and back.
    let redelivered = if gw.has_window() { 4.0 } else { 3.0 };
    assert_eq!(
        gw.metric("longpoll_messages_redelivered_total").await,
        redelivered
    );
}

async fn a_client_gone_before_the_answer_leaves_the_messages_in_order(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let held = {
        let (client, url) = (
            gw.client.clone(),
            format!("{}/?uuid={key}&sequence=1&max=5", gw.base),
        );
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
    };
    gw.wait_poll_at_broker(&key).await;
    held.abort(); // the browser tab closes
    gw.wait_metric("longpoll_polls_held", 0.0).await;
    gw.wait_metric("longpoll_consumers", 0.0).await;
    let ids = emit_all(&gw, &event, 1..=3).await;
    eventually(Duration::from_secs(20), "all three ready", || async {
        is(gw.broker_counts(&key).await, (3, 0))
    })
    .await;
    let r = poll_max(&gw, &key, 1, 5).await;
    assert_eq!(ns(&r), [1, 2, 3]);
    assert_eq!(ids_header(&r), ids);
}

async fn a_restart_without_seen_requeues_the_whole_answer_and_serves_it_again(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let ids = emit_all(&gw, &event, 1..=3).await;
    assert_eq!(ids_header(&poll_max(&gw, &key, 7, 3).await), ids);
    // The page was reloaded and counts from 1 again: the answer it never
    // showed comes back whole, in order (requeued, not skipped).
    let restarted = poll_max(&gw, &key, 1, 3).await;
    assert_eq!(restarted.status, 200, "never 409: {}", restarted.body);
    assert_eq!(ns(&restarted), [1, 2, 3]);
    assert_eq!(ids_header(&restarted), ids);
    assert_eq!(restarted.sequence(), Some(1));
    assert_eq!(gw.metric("longpoll_sequence_restarts_total").await, 1.0);
    let requeued = gw.metric("longpoll_messages_requeued_total").await;
    if gw.has_window() {
        assert!(requeued >= 3.0, "{requeued}");
    } else {
        assert_eq!(requeued, 3.0);
    }
}

async fn a_next_sequence_that_does_not_show_the_answer_requeues_it_whole(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let ids = emit_all(&gw, &event, 1..=2).await;
    let seen = |list: &str| format!("/?uuid={key}&sequence=2&max=5&seen={list}");
    assert_eq!(
        ids_header(
            &gw.get(&format!("/?uuid={key}&sequence=1&max=5&seen="))
                .await
        ),
        ids
    );
    // The next sequence's proof of receipt names another message: this
    // answer was lost on its way; it goes back whole and is answered again.
    let r = gw.get(&seen("other")).await;
    assert_eq!(ns(&r), [1, 2]);
    assert_eq!(ids_header(&r), ids);
    // A proof that names the last id acks the whole answer.
    let next = {
        let (client, url) = (
            gw.client.clone(),
            format!("{}/?uuid={key}&sequence=3&max=5&seen={}", gw.base, ids[1]),
        );
        tokio::spawn(async move { Poll::read(client.get(url).send().await.expect("poll")).await })
    };
    eventually(Duration::from_secs(20), "both acked", || async {
        is(gw.broker_counts(&key).await, (0, 0))
    })
    .await;
    gw.emit(&event, json!({"n": 3})).await;
    assert_eq!(ns(&next.await.unwrap()), [3]);
}

async fn without_max_nothing_changes(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let ids = emit_all(&gw, &event, 1..=3).await;
    // A txlongpoll poll: one message, its body as it is, txlongpoll's headers.
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"n": 1, "event_key": event}));
    assert_eq!(r.message_id(), ids[0]);
    assert_eq!(r.header("x-longpoll-count"), None);
    assert_eq!(r.header("x-longpoll-message-ids"), None);
    gw.wait_taken(&key, 3, 1, "one answered").await;
    // max=1 is the same poll.
    let r = poll_max(&gw, &key, 2, 1).await;
    assert_eq!(r.json(), json!({"n": 2, "event_key": event}));
    assert_eq!(r.header("x-longpoll-count"), None);
}

async fn a_malformed_max_is_400_and_consumes_nothing(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let id = gw.emit(&event, json!({"n": 1})).await;
    for bad in ["0", "101", "abc", "", "-1", "2.5"] {
        let r = gw.get(&format!("/?uuid={key}&sequence=1&max={bad}")).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (400, "Invalid max"),
            "max={bad}"
        );
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    }
    assert_eq!(gw.broker_counts(&key).await, (1, 0), "nothing consumed");
    assert_eq!(gw.metric("longpoll_replay_entries").await, 0.0);
    // Nothing answered either: sequence 1 gets the message.
    let r = poll_max(&gw, &key, 1, 100).await;
    assert_eq!(ids_header(&r), [id]);
}

async fn an_error_message_ends_the_array_and_is_answered_alone_next(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let mut ids = emit_all(&gw, &event, 1..=2).await;
    ids.push(gw.emit(&event, json!({"error": "the job failed"})).await);
    ids.extend(emit_all(&gw, &event, 4..=4).await);
    let r = poll_max(&gw, &key, 1, 10).await;
    assert_eq!(ns(&r), [1, 2], "the array stops before the error");
    assert_eq!(ids_header(&r), ids[..2]);
    // The error message, alone, as without max: 400 with its body.
    let r = poll_max(&gw, &key, 2, 10).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "the job failed");
    assert_eq!(r.message_id(), ids[2]);
    assert_eq!(r.header("x-longpoll-count"), None);
    assert_eq!(poll_max(&gw, &key, 2, 10).await.body, r.body, "replayed");
    let r = poll_max(&gw, &key, 3, 10).await;
    assert_eq!(ns(&r), [4]);
    assert_eq!(ids_header(&r), ids[3..]);
}

async fn a_message_from_this_client_is_left_out_of_the_array(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let first = gw.emit(&event, json!({"n": 1})).await;
    gw.emit(&event, json!({"original-uuid": key, "n": "mine"}))
        .await;
    let last = gw.emit(&event, json!({"n": 3})).await;
    let r = poll_max(&gw, &key, 1, 10).await;
    assert_eq!(ns(&r), [json!(1), json!(3)]);
    assert_eq!(ids_header(&r), [first, last]);
    assert_eq!(gw.metric("longpoll_messages_skipped_total").await, 1.0);
}

async fn a_body_that_is_not_json_is_answered_alone_as_without_max(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.max");
    let key = gw.subscribe(&[&event]).await;
    let first = gw.emit(&event, json!({"n": 1})).await;
    gw.running()
        .broker
        .publish(longpoll_gateway::broker::OutgoingMessage {
            routing_key: event.clone(),
            body: "not json".into(),
            message_id: "raw-1".into(),
            published_at: SystemTime::now(),
            headers: vec![],
        })
        .await
        .expect("published");
    let r = poll_max(&gw, &key, 1, 10).await;
    assert_eq!(ids_header(&r), [first]);
    let r = poll_max(&gw, &key, 2, 10).await;
    assert_eq!((r.status, r.body.as_str()), (200, "not json"));
    assert_eq!(r.message_id(), "raw-1");
    assert_eq!(r.header("x-longpoll-count"), None);
}
