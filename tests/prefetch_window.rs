//! `--consumer-prefetch` above 1, on RabbitMQ: the messages behind an answer
//! are pushed to the gateway's consumer while the answer waits for its
//! sequence, and the client's next poll takes them from there. They go back
//! to the queue, at their places, when no poll takes them within the
//! consumer's linger, or when the answer before them goes back. (Every
//! behaviour of the contract is also run with a window by `both_brokers!`.)

mod common;

use std::time::Duration;

use common::{Backend, TestGateway, eventually, is, unique};
use serde_json::json;

async fn gateway_with_window(prefetch: u16) -> TestGateway {
    TestGateway::start_with(Backend::Rabbit, |s| s.consumer_prefetch = prefetch).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_behind_an_answer_wait_in_the_consumer_for_the_next_polls() {
    let gw = gateway_with_window(4).await;
    let event = unique("longpoll.event.window");
    let key = gw.subscribe(&[&event]).await;
    for n in 1..=6 {
        gw.emit(&event, json!({ "n": n })).await;
    }
    assert_eq!(gw.poll(&key, 1).await.json()["n"], 1);
    // The answer and three behind it: the window of four; two left ready.
    // (Read at once: the window goes back 2 s after the answer if no poll
    // comes.)
    eventually(Duration::from_secs(2), "the window filled", || async {
        is(gw.ready_now(&key).await, 2)
    })
    .await;
    for n in 2..=6 {
        let r = gw.poll(&key, n).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["n"], n, "in order, each once");
    }
    assert_eq!(gw.metric("longpoll_messages_redelivered_total").await, 0.0);
    // The last answer alone stays unacked, held for its sequence.
    gw.wait_taken(&key, 1, 1, "the last answer held").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_no_poll_takes_within_the_linger_go_back_to_the_queue_at_their_places() {
    let gw = gateway_with_window(10).await;
    let event = unique("longpoll.event.window");
    let key = gw.subscribe(&[&event]).await;
    for n in 1..=5 {
        gw.emit(&event, json!({ "n": n })).await;
    }
    assert_eq!(gw.poll(&key, 1).await.json()["n"], 1);
    eventually(
        Duration::from_secs(2),
        "the window holds all five",
        || async { is(gw.ready_now(&key).await, 0) },
    )
    .await;
    // The client does not come back within the consumer's linger (2 s with a window):
    // the four behind the answer go back; the answer stays held.
    eventually(
        Duration::from_secs(30),
        "four back in the queue",
        || async { is(gw.broker_counts(&key).await, (4, 1)) },
    )
    .await;
    assert_eq!(gw.metric("longpoll_consumers").await, 0.0);
    for n in 2..=5 {
        assert_eq!(gw.poll(&key, n).await.json()["n"], n, "in order, each once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_several_is_taken_from_the_window_and_the_rest_waits_there() {
    let gw = gateway_with_window(10).await;
    let event = unique("longpoll.event.window");
    let key = gw.subscribe(&[&event]).await;
    for n in 1..=8 {
        gw.emit(&event, json!({ "n": n })).await;
    }
    eventually(Duration::from_secs(10), "eight ready", || async {
        is(gw.broker_counts(&key).await, (8, 0))
    })
    .await;
    let r = gw.get(&format!("/?uuid={key}&sequence=1&max=3")).await;
    let ns: Vec<_> = r
        .json()
        .as_array()
        .map_or_else(Vec::new, |a| a.iter().map(|m| m["n"].clone()).collect());
    assert!(!ns.is_empty() && ns.len() <= 3, "{}", r.body);
    assert_eq!(
        ns,
        (1..=ns.len() as u64).map(|n| json!(n)).collect::<Vec<_>>()
    );
    let mut next = ns.len() as u64 + 1;
    let mut sequence = 2;
    while next <= 8 {
        let r = gw
            .get(&format!("/?uuid={key}&sequence={sequence}&max=3"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        for m in r.json().as_array().expect("an array") {
            assert_eq!(m["n"], next, "in order, each once");
            next += 1;
        }
        sequence += 1;
    }
    assert_eq!(gw.metric("longpoll_messages_redelivered_total").await, 0.0);
}
