//! RabbitMQ-side resilience: channel errors stay on their channel, held polls
//! wait through a lost connection, a dead replica's messages come back, a
//! redelivery of the last answer is skipped — and a thousand polls at once.
//!
//! Connection loss is made with a chaos proxy between the gateway and RabbitMQ,
//! so these tests can run in parallel with others (the real broker restart is
//! in `broker_restart.rs`, run on its own).

mod common;

use std::time::{Duration, Instant};

use common::chaos::{ChaosProxy, rabbit_addr};
use common::process::GatewayProcess;
use common::{Backend, Poll, TestGateway, eventually, is, saw, unique};
use futures_util::StreamExt;
use longpoll_gateway::config::BrokerUrl;
use serde_json::json;

fn spawn_poll(gw: &TestGateway, key: &str, sequence: u64) -> tokio::task::JoinHandle<Poll> {
    let client = gw.client.clone();
    let url = format!("{}/?uuid={key}&sequence={sequence}", gw.base);
    tokio::spawn(async move { Poll::read(client.get(url).send().await.expect("poll")).await })
}

async fn readyz(gw: &TestGateway) -> u16 {
    match gw.client.get(format!("{}/readyz", gw.admin)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// `n` subscriptions, each bound to an event key of its own: (keys, events).
async fn subscriptions_with_own_events(
    gw: &TestGateway,
    n: usize,
    prefix: &str,
) -> (Vec<String>, Vec<String>) {
    let (mut keys, mut events) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let event = unique(prefix);
        keys.push(gw.subscribe(&[&event]).await);
        events.push(event);
    }
    (keys, events)
}

/// Emits each poll's event; each held poll is answered 200 with its own message.
async fn emit_and_expect_each_answered(
    gw: &TestGateway,
    held: Vec<tokio::task::JoinHandle<Poll>>,
    events: &[String],
) {
    for event in events {
        gw.emit(event, json!({ "for": event })).await;
    }
    for (h, event) in held.into_iter().zip(events) {
        let r = tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["for"], json!(event));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_one_queue_does_not_disturb_100_held_polls() {
    let gw = TestGateway::start_with(Backend::Rabbit, |s| s.channel_pool_size = 4).await;
    let (keys, events) = subscriptions_with_own_events(&gw, 100, "longpoll.event.iso").await;
    let held: Vec<_> = keys.iter().map(|k| spawn_poll(&gw, k, 1)).collect();
    gw.wait_metric("longpoll_polls_held", 100.0).await;
    gw.wait_metric("longpoll_consumers", 100.0).await;

    // Channel errors: 404s on missing queues, and a 406 from a clashing declaration.
    for _ in 0..20 {
        let r = gw
            .poll(&format!("longpoll.subscribe.{}", uuid::Uuid::new_v4()), 1)
            .await;
        assert_eq!(r.status, 404);
    }
    for _ in 0..5 {
        let missing = format!("longpoll.subscribe.{}", uuid::Uuid::new_v4());
        let r = gw
            .client
            .post(format!(
                "{}/api/v1/subscriptions/{missing}/bindings",
                gw.base
            ))
            .bearer_auth(common::TOKEN)
            .json(&json!({"event_keys": ["longpoll.event.x"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "binding a missing subscription");
    }

    assert_eq!(gw.metric("longpoll_polls_held").await, 100.0);
    assert_eq!(
        gw.metric("longpoll_consumers").await,
        100.0,
        "no consumer was restarted"
    );
    emit_and_expect_each_answered(&gw, held, &events).await;
    assert_eq!(gw.metric("longpoll_broker_reconnects_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_share_one_amqp_channel_per_eight_pooled_channels() {
    // lapin does work per channel for every frame it writes, so 32 pooled
    // channels carry their consumers on 4 channels, not 32.
    const HELD: usize = 40;
    let gw = TestGateway::start_with(Backend::Rabbit, |s| s.channel_pool_size = 32).await;
    let (keys, events) = subscriptions_with_own_events(&gw, HELD, "longpoll.event.chan").await;
    let held: Vec<_> = keys.iter().map(|k| spawn_poll(&gw, k, 1)).collect();
    gw.wait_metric("longpoll_consumers", HELD as f64).await;

    let listed = common::amqp::rabbitmqctl_consumer_channels("longpoll.subscribe.").await;
    let ours: Vec<_> = listed.iter().filter(|(q, _)| keys.contains(q)).collect();
    assert_eq!(ours.len(), HELD, "one consumer per held poll: {listed:?}");
    let channels: std::collections::BTreeSet<_> = ours.iter().map(|(_, c)| c).collect();
    assert_eq!(channels.len(), 4, "consumer channels: {channels:?}");

    // Each consumer on a shared channel still gets its own message.
    emit_and_expect_each_answered(&gw, held, &events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_poll_waits_through_a_lost_broker_connection_and_resumes() {
    let proxy = ChaosProxy::start(rabbit_addr()).await;
    let url = proxy.amqp_url();
    let gw = TestGateway::start_with(Backend::Rabbit, |s| {
        s.broker = BrokerUrl::parse(&url).unwrap();
        s.poll_timeout = Duration::from_secs(60);
    })
    .await;
    let event = unique("longpoll.event.cut");
    let key = gw.subscribe(&[&event]).await;
    let held = spawn_poll(&gw, &key, 1);
    gw.wait_metric("longpoll_consumers", 1.0).await;

    proxy.cut();
    eventually(Duration::from_secs(20), "readyz 503", || async {
        is(readyz(&gw).await, 503)
    })
    .await;
    assert!(!held.is_finished(), "the poll keeps waiting");
    proxy.restore();
    gw.wait_ready().await;
    gw.emit(&event, json!({"after": "reconnect"})).await;
    let r = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["after"], "reconnect");
    assert!(gw.metric("longpoll_broker_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_unreachable_for_the_whole_wait_is_503_with_retry_after() {
    let proxy = ChaosProxy::start(rabbit_addr()).await;
    proxy.cut();
    let url = proxy.amqp_url();
    let gw = TestGateway::start_with(Backend::Memory, |s| {
        s.broker = BrokerUrl::parse(&url).unwrap();
        s.poll_timeout = Duration::from_secs(1);
    })
    .await;
    assert_eq!(
        readyz(&gw).await,
        503,
        "down at start is not an error: not ready"
    );
    let started = Instant::now();
    let r = gw.poll("longpoll.subscribe.whatever", 1).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited the whole timeout"
    );
    // It connects once the broker is there.
    proxy.restore();
    gw.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p6_a_replica_that_dies_returns_its_unacked_message_with_the_same_id() {
    let amqp = common::amqp_url();
    let args = [
        "--broker",
        amqp.as_str(),
        "--api-token",
        common::TOKEN,
        "--exchange",
        "longpoll.test",
    ];
    let mut first = GatewayProcess::start(&args, &[]).await;
    let gw = TestGateway::start(Backend::Rabbit).await; // the other replica
    let event = unique("longpoll.event.crash");
    let key = gw.subscribe(&[&event]).await;
    let id = gw.emit(&event, json!({"n": 1})).await;

    let client = common::client();
    let r = Poll::read(
        client
            .get(format!("{}/?uuid={key}&sequence=1", first.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.message_id()), (200, id.as_str()));
    first.sigkill().await; // the response is "lost"; the replica dies

    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.message_id(), id, "the same message, with the same id");
    assert_eq!(gw.metric("longpoll_messages_redelivered_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p8_a_redelivery_of_the_last_answered_message_is_acked_and_skipped() {
    let proxy = ChaosProxy::start(rabbit_addr()).await;
    let url = proxy.amqp_url();
    let gw = TestGateway::start_with(Backend::Rabbit, |s| {
        s.broker = BrokerUrl::parse(&url).unwrap();
    })
    .await;
    let event = unique("longpoll.event.redeliver");
    let key = gw.subscribe(&[&event]).await;
    let a = gw.emit(&event, json!({"n": "A"})).await;
    assert_eq!(gw.poll(&key, 1).await.message_id(), a);

    // The channel holding A closes before the ack: RabbitMQ requeues A.
    proxy.cut();
    eventually(Duration::from_secs(20), "readyz 503", || async {
        is(readyz(&gw).await, 503)
    })
    .await;
    proxy.restore();
    gw.wait_ready().await;

    let next = spawn_poll(&gw, &key, 2);
    gw.wait_metric("longpoll_messages_skipped_total", 1.0).await;
    let b = gw.emit(&event, json!({"n": "B"})).await;
    let r = next.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.message_id(), b, "A is not shown twice");
}

both_brokers!(a_thousand_held_polls_each_get_their_own_message_and_disconnects_lose_nothing);

async fn a_thousand_held_polls_each_get_their_own_message_and_disconnects_lose_nothing(
    backend: Backend,
) {
    const N: usize = 1000;
    let gw = TestGateway::start_with(backend, |s| s.poll_timeout = Duration::from_secs(120)).await;
    let tag = unique("longpoll.event.k");
    let events: Vec<String> = (0..N).map(|i| format!("{tag}.{i}")).collect();
    let keys: Vec<String> = futures_util::stream::iter(&events)
        .map(|e| async { gw.subscribe(&[e.as_str()]).await })
        .buffered(16)
        .collect()
        .await;

    // 1,000 held polls, each answered with its own message.
    let held: Vec<_> = keys.iter().map(|k| spawn_poll(&gw, k, 1)).collect();
    gw.wait_metric("longpoll_polls_held", N as f64).await;
    futures_util::stream::iter(&events)
        .map(|e| gw.emit(e, json!({ "for": e })))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for (h, e) in held.into_iter().zip(&events) {
        let r = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["for"], json!(e));
    }

    // 1,000 clients hold the next poll, then go away mid-poll.
    let held: Vec<_> = keys.iter().map(|k| spawn_poll(&gw, k, 2)).collect();
    gw.wait_metric("longpoll_polls_held", N as f64).await;
    for h in &held {
        h.abort();
    }
    gw.wait_metric("longpoll_polls_held", 0.0).await;
    gw.wait_metric("longpoll_consumers", 0.0).await;
    futures_util::stream::iter(&events)
        .map(|e| gw.emit(e, json!({ "second": e })))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

    // Every message is in its queue, ready, on the broker itself.
    match backend {
        Backend::Rabbit => {
            eventually(Duration::from_secs(30), "all messages ready", || async {
                let listed = common::amqp::rabbitmqctl_list("longpoll.subscribe.").await;
                let not_ready: Vec<_> = listed
                    .iter()
                    .filter(|(n, r, u)| keys.contains(n) && (*r, *u) != (1, 0))
                    .collect();
                let missing = keys
                    .iter()
                    .filter(|k| !listed.iter().any(|(n, _, _)| n == *k));
                saw(
                    not_ready.is_empty() && missing.clone().count() == 0,
                    format!(
                        "(queue, ready, unacked) {not_ready:?}, not listed: {:?}",
                        missing.collect::<Vec<_>>()
                    ),
                )
            })
            .await;
        }
        Backend::Memory => {
            for k in &keys {
                assert_eq!(gw.broker_counts(k).await, (1, 0));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_a_client_gone_while_its_consumer_starts_leaves_no_consumer_behind() {
    // Found by the browser tests: a poll dropped while basic.consume was in
    // flight left a consumer on the broker that nothing read or cancelled.
    let gw = TestGateway::start(Backend::Rabbit).await;
    let event = unique("longpoll.event.orphan");
    let key = gw.subscribe(&[&event]).await;
    let conn = common::amqp::connect().await;
    for i in 0..100u64 {
        let held = spawn_poll(&gw, &key, 1);
        // Gone within milliseconds: some before, some during, some after the
        // consumer starts.
        tokio::time::sleep(Duration::from_micros(100 * (i % 40))).await;
        held.abort();
        gw.wait_metric("longpoll_polls_held", 0.0).await;
        eventually(
            Duration::from_secs(10),
            "no consumer left on the broker",
            || async { is(common::amqp::ready_and_consumers(&conn, &key).await.1, 0) },
        )
        .await;
    }
    let id = gw.emit(&event, json!({"n": 1})).await;
    let r = gw.poll(&key, 1).await;
    assert_eq!((r.status, r.message_id()), (200, id.as_str()));
}

/// A poll that carries the client's `seen` list (the proof of receipt).
async fn poll_seen(gw: &TestGateway, key: &str, sequence: u64, seen: &[&str]) -> Poll {
    let r = gw
        .client
        .get(format!("{}/", gw.base))
        .query(&[
            ("uuid", key),
            ("sequence", &sequence.to_string()),
            ("seen", &seen.join(",")),
        ])
        .send()
        .await
        .unwrap();
    Poll::read(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_and_retried_on_another_live_replica_is_not_lost() {
    // Found by the cluster test: without a proof of receipt, the first replica
    // acked its answer when the client's next sequence came, although the
    // client had got another replica's answer to its retry instead.
    let first = TestGateway::start(Backend::Rabbit).await;
    let second =
        TestGateway::start_with(Backend::Rabbit, |s| s.replay_ttl = Duration::from_secs(1)).await;
    let event = unique("longpoll.event.lost-answer");
    let key = first.subscribe(&[&event]).await;
    let a = first.emit(&event, json!({"n": "A"})).await;
    let b = first.emit(&event, json!({"n": "B"})).await;

    // The first replica answers sequence 1 with A; the answer is lost.
    assert_eq!(poll_seen(&first, &key, 1, &[]).await.message_id(), a);
    // The retry reaches the second replica, which answers with B.
    assert_eq!(poll_seen(&second, &key, 1, &[]).await.message_id(), b);
    // Back on the first: the client shows B, not A, so A goes back to the
    // queue and comes to the client now.
    let r = poll_seen(&first, &key, 2, &[&b]).await;
    assert_eq!(r.message_id(), a, "A is not lost");
    // The second replica's B comes back after its replay TTL: the client lists
    // it, so it is acked and skipped, not shown twice.
    let next = {
        let (c, url) = (first.client.clone(), format!("{}/", first.base));
        let (key, seen) = (key.clone(), format!("{a},{b}"));
        tokio::spawn(async move {
            Poll::read(
                c.get(url)
                    .query(&[
                        ("uuid", key.as_str()),
                        ("sequence", "3"),
                        ("seen", seen.as_str()),
                    ])
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        })
    };
    first
        .wait_metric("longpoll_messages_skipped_total", 1.0)
        .await;
    let c = first.emit(&event, json!({"n": "C"})).await;
    assert_eq!(next.await.unwrap().message_id(), c);
}
