//! The sequence contract, one test per numbered point, on both brokers
//! (points 6 and 8 need a real broker and live in `amqp_resilience.rs`).

mod common;

use std::time::Duration;

use common::{Backend, Poll, TestGateway, eventually, is, unique};
use serde_json::json;

both_brokers!(
    p1_a_delivered_message_stays_unacked_until_a_higher_sequence,
    p2_a_higher_sequence_acks_and_delivers_the_next_in_order,
    p3_retry_with_same_sequence_replays_the_same_message_without_consuming,
    p4_a_newer_poll_supersedes_the_held_one_with_409,
    p4_a_lower_sequence_is_stale_and_names_the_last_answered,
    p4_legacy_restart_below_the_held_answer_is_served_at_once_with_that_answer_requeued,
    p4_legacy_restart_at_the_acked_last_sequence_waits_for_the_next_message,
    p5_a_client_gone_before_the_answer_leaves_its_messages_in_the_queue_in_order,
    p7_an_unacked_answer_is_requeued_after_the_replay_ttl_at_its_place,
);

fn spawn_poll(gw: &TestGateway, key: &str, sequence: u64) -> tokio::task::JoinHandle<Poll> {
    let client = gw.client.clone();
    let url = format!("{}/?uuid={key}&sequence={sequence}", gw.base);
    tokio::spawn(async move { Poll::read(client.get(url).send().await.expect("poll")).await })
}

async fn p1_a_delivered_message_stays_unacked_until_a_higher_sequence(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.p1");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"n": 1})).await;
    assert_eq!(gw.poll(&key, 1).await.status, 200);
    assert_eq!(gw.broker_counts(&key).await, (0, 1), "answered but unacked");
    let next = spawn_poll(&gw, &key, 2);
    eventually(
        Duration::from_secs(20),
        "the first message acked",
        || async { is(gw.broker_counts(&key).await, (0, 0)) },
    )
    .await;
    gw.emit(&event, json!({"n": 2})).await;
    let r = next.await.unwrap();
    assert_eq!((r.status, r.json()["n"].clone()), (200, json!(2)));
}

async fn p2_a_higher_sequence_acks_and_delivers_the_next_in_order(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.p2");
    let key = gw.subscribe(&[&event]).await;
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(gw.emit(&event, json!({ "n": n })).await);
    }
    for (seq, id) in (1..=5).zip(&ids) {
        let r = gw.poll(&key, seq).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["n"], json!(seq));
        assert_eq!(r.message_id(), id);
        assert_eq!(r.sequence(), Some(seq));
    }
    assert_eq!(gw.metric("longpoll_messages_acked_total").await, 4.0);
}

async fn p3_retry_with_same_sequence_replays_the_same_message_without_consuming(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.p3");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"n": 1})).await;
    gw.emit(&event, json!({"n": 2})).await;
    let first = gw.poll(&key, 7).await;
    let again = gw.poll(&key, 7).await;
    assert_eq!(first.status, 200);
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(again.message_id(), first.message_id());
    assert_eq!(again.sequence(), Some(7));
    assert_eq!(gw.metric("longpoll_replays_total").await, 1.0);
    gw.wait_taken(&key, 2, 1, "nothing more answered").await;
    assert_eq!(gw.poll(&key, 8).await.json()["n"], 2);
}

async fn p4_a_newer_poll_supersedes_the_held_one_with_409(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.p4");
    let key = gw.subscribe(&[&event]).await;
    let older = spawn_poll(&gw, &key, 1);
    // Registered in the sequence layer, not only arrived: on a busy machine the
    // newer poll could otherwise overtake it and be the one superseded.
    gw.wait_poll_at_broker(&key).await;
    let newer = spawn_poll(&gw, &key, 1);
    let r = tokio::time::timeout(Duration::from_secs(5), older)
        .await
        .expect("the older poll is answered at once")
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (409, "Superseded"));
    gw.emit(&event, json!({"to": "newer"})).await;
    let r = newer.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["to"], "newer");
    assert_eq!(gw.metric("longpoll_supersedes_total").await, 1.0);
}

/// A poll with the proof of receipt the bundled client sends (`seen`).
async fn poll_seen(gw: &TestGateway, key: &str, sequence: u64, seen: &str) -> Poll {
    gw.get(&format!("/?uuid={key}&sequence={sequence}&seen={seen}"))
        .await
}

async fn p4_a_lower_sequence_is_stale_and_names_the_last_answered(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.stale");
    let key = gw.subscribe(&[&event]).await;
    let first = gw.emit(&event, json!({"n": 1})).await;
    assert_eq!(poll_seen(&gw, &key, 5, "").await.status, 200);
    let r = poll_seen(&gw, &key, 3, "").await;
    assert_eq!((r.status, r.body.as_str()), (409, "Stale sequence"));
    assert_eq!(r.sequence(), Some(5));
    // A client that restarted goes on from the named sequence plus one.
    gw.emit(&event, json!({"n": 2})).await;
    assert_eq!(poll_seen(&gw, &key, 6, &first).await.json()["n"], 2);
    // After the ack, going back to 5 is stale too.
    assert_eq!(poll_seen(&gw, &key, 5, &first).await.status, 409);
    assert_eq!(gw.metric("longpoll_sequence_restarts_total").await, 0.0);
}

async fn p4_legacy_restart_below_the_held_answer_is_served_at_once_with_that_answer_requeued(
    backend: Backend,
) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.restart");
    let key = gw.subscribe(&[&event]).await;
    let a = gw.emit(&event, json!({"n": "A"})).await;
    let b = gw.emit(&event, json!({"n": "B"})).await;
    // A txlongpoll client (no `seen`) got A at 7, then its page was reloaded
    // and counts from 1 again: A, never shown on the new page, comes back
    // (requeued at its place, not lost), then B.
    assert_eq!(gw.poll(&key, 7).await.message_id(), a);
    let restarted = gw.poll(&key, 1).await;
    assert_eq!(restarted.status, 200, "never 409: {}", restarted.body);
    assert_eq!(restarted.message_id(), a);
    assert_eq!(restarted.sequence(), Some(1));
    assert_eq!(gw.poll(&key, 2).await.message_id(), b);
    assert_eq!(gw.metric("longpoll_sequence_restarts_total").await, 1.0);
    assert_eq!(gw.metric("longpoll_replays_total").await, 0.0);
    eventually(Duration::from_secs(20), "A acked, B unacked", || async {
        is(gw.broker_counts(&key).await, (0, 1))
    })
    .await;
}

async fn p4_legacy_restart_at_the_acked_last_sequence_waits_for_the_next_message(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.restart");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"n": "A"})).await;
    assert_eq!(gw.poll(&key, 1).await.status, 200);
    // The next poll acks A; the page goes away while it is held.
    let held = spawn_poll(&gw, &key, 2);
    eventually(Duration::from_secs(20), "A acked", || async {
        is(gw.broker_counts(&key).await, (0, 0))
    })
    .await;
    gw.wait_poll_at_broker(&key).await;
    held.abort();
    gw.wait_metric("longpoll_polls_held", 0.0).await;
    // The page, restored from the cache, polls 1 again: held, not 409, and
    // answered with the next message.
    let restored = spawn_poll(&gw, &key, 1);
    gw.wait_metric("longpoll_polls_held", 1.0).await;
    let c = gw.emit(&event, json!({"n": "C"})).await;
    let r = restored.await.unwrap();
    assert_eq!((r.status, r.message_id()), (200, c.as_str()));
    assert_eq!(r.sequence(), Some(1));
    assert_eq!(gw.metric("longpoll_sequence_restarts_total").await, 1.0);
}

async fn p5_a_client_gone_before_the_answer_leaves_its_messages_in_the_queue_in_order(
    backend: Backend,
) {
    let gw = TestGateway::start(backend).await;
    let event = unique("longpoll.event.gone");
    let key = gw.subscribe(&[&event]).await;
    let held = spawn_poll(&gw, &key, 1);
    gw.wait_metric("longpoll_polls_held", 1.0).await;
    held.abort(); // the browser tab closes
    gw.wait_metric("longpoll_polls_held", 0.0).await;
    gw.wait_metric("longpoll_consumers", 0.0).await;
    let a = gw.emit(&event, json!({"n": "A"})).await;
    let b = gw.emit(&event, json!({"n": "B"})).await;
    eventually(Duration::from_secs(20), "both messages ready", || async {
        is(gw.broker_counts(&key).await, (2, 0))
    })
    .await;
    assert_eq!(gw.poll(&key, 1).await.message_id(), a);
    assert_eq!(gw.poll(&key, 2).await.message_id(), b);
}

async fn p7_an_unacked_answer_is_requeued_after_the_replay_ttl_at_its_place(backend: Backend) {
    let gw = TestGateway::start_with(backend, |s| s.replay_ttl = Duration::from_millis(800)).await;
    let event = unique("longpoll.event.ttl");
    let key = gw.subscribe(&[&event]).await;
    let a = gw.emit(&event, json!({"n": "A"})).await;
    let b = gw.emit(&event, json!({"n": "B"})).await;
    assert_eq!(gw.poll(&key, 1).await.message_id(), a);
    gw.wait_metric("longpoll_messages_requeued_total", 1.0)
        .await;
    assert_eq!(gw.metric("longpoll_replay_entries").await, 0.0);
    // The answer is forgotten: the same sequence gets A again from the queue
    // (a redelivery with the same id, not a replay), and B after it.
    let again = gw.poll(&key, 1).await;
    assert_eq!(again.message_id(), a);
    assert_eq!(gw.metric("longpoll_replays_total").await, 0.0);
    assert_eq!(gw.metric("longpoll_messages_redelivered_total").await, 1.0);
    assert_eq!(gw.poll(&key, 2).await.message_id(), b);
}
