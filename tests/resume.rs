//! Resume without a silent gap: `POST /api/v1/subscriptions` with
//! `resume_after` replays, in order and without duplicates, every retained
//! event for the subscription's keys published after that message, then goes
//! on live; `gap` when the history does not reach back. On both brokers, and
//! through the library and the CLI.
//!
//! Each test has its own exchange and its own history stream (RabbitMQ), both
//! deleted when the test ends, so that concurrent tests never read each
//! other's history.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, TOKEN, TestGateway, unique};
use longpoll_gateway::broker::BrokerErrorKind;
use longpoll_gateway::config::{ExchangeType, Settings};
use longpoll_gateway::publish::{LongPollEvent, Publisher};
use serde_json::{Value, json};

both_brokers!(
    resume_replays_the_events_after_the_message_for_its_keys_only_in_order_then_live_ones,
    an_unknown_message_id_is_a_gap_and_live_events_still_arrive,
    resume_after_without_history_is_400_and_changes_nothing,
    a_resume_after_that_cannot_be_a_message_id_is_400_and_other_shapes_422,
    a_direct_exchange_keeps_the_history_of_each_subscribed_key,
    a_publisher_emitting_throughout_several_resumes_gets_every_event_exactly_once_in_order,
    the_library_resumes_as_the_api_does,
    the_cli_resumes_through_the_gateway,
);

/// A gateway with its own exchange and history stream.
struct Rig {
    gw: TestGateway,
    /// Dropped after the gateway: deletes the stream and the exchange.
    _leftovers: Leftovers,
    stream: String,
}

async fn rig(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Rig {
    let gw = TestGateway::start_with(backend, |s| {
        s.exchange = unique("longpoll.resume.x");
        s.history.stream = unique("longpoll.resume.history");
        tweak(s);
    })
    .await;
    let stream = gw.settings.history.stream.clone();
    let leftovers = Leftovers {
        backend,
        exchange: gw.settings.exchange.clone(),
        stream: stream.clone(),
    };
    Rig {
        gw,
        _leftovers: leftovers,
        stream,
    }
}

/// Deletes a test's stream and exchange from RabbitMQ when dropped (panic or
/// not; on a thread of its own, as the test's runtime may be unwinding).
struct Leftovers {
    backend: Backend,
    exchange: String,
    stream: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if self.backend != Backend::Rabbit {
            return;
        }
        let (exchange, stream) = (self.exchange.clone(), self.stream.clone());
        let cleaned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let conn = common::amqp::connect().await;
                common::amqp::delete_queue(&conn, &stream).await;
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .exchange_delete(exchange.as_str().into(), Default::default())
                        .await;
                }
                let _ = conn.close(200, "cleaned".into()).await;
            });
        });
        let _ = cleaned.join();
    }
}

/// `POST /api/v1/subscriptions` with `body`: (status, answer).
async fn create(gw: &TestGateway, body: &str) -> (u16, Value) {
    let r = gw
        .client
        .post(format!("{}/api/v1/subscriptions", gw.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("subscribe request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A subscription to `keys` resuming after `after`: the 201 answer.
async fn resume(gw: &TestGateway, keys: &[&str], after: &str) -> Value {
    let body = json!({"event_keys": keys, "resume_after": after}).to_string();
    let (status, answer) = create(gw, &body).await;
    assert_eq!(status, 201, "{answer}");
    let mut fields: Vec<&str> = answer
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["gap", "key", "resumed", "uri"], "{answer}");
    answer
}

fn key_of(answer: &Value) -> String {
    answer["key"].as_str().expect("a key").to_owned()
}

/// Polls sequences `first..first + count` of `key`: the message ids, in order.
async fn take(gw: &TestGateway, key: &str, first: u64, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for sequence in first..first + count as u64 {
        let poll = gw.poll(key, sequence).await;
        assert_eq!(poll.status, 200, "poll {sequence}: {}", poll.body);
        ids.push(poll.message_id().to_owned());
    }
    ids
}

/// Messages waiting in the queue (the last one taken stays unacked, not ready).
async fn ready(gw: &TestGateway, key: &str) -> u64 {
    gw.running()
        .broker
        .queue_stats(key)
        .await
        .expect("the queue exists")
        .ready
}

async fn resume_replays_the_events_after_the_message_for_its_keys_only_in_order_then_live_ones(
    backend: Backend,
) {
    let rig = rig(backend, |_| {}).await;
    let gw = &rig.gw;
    let base = unique("longpoll.event.resume");
    let (a, wildcard) = (format!("{base}.a"), format!("{base}.w.*"));
    let old = gw.subscribe(&[&a, &wildcard]).await;
    let before = gw.emit(&a, json!({"n": 0})).await;
    let last_seen = gw.emit(&a, json!({"n": 1})).await;
    let mut expected = vec![gw.emit(&format!("{base}.w.1"), json!({"n": 2})).await];
    gw.emit(&format!("{base}.b"), json!({"n": 3, "not": "a key"}))
        .await;
    gw.emit(
        &format!("{base}.w.1.deep"),
        json!({"n": 4, "not": "* is one word"}),
    )
    .await;
    expected.push(gw.emit(&a, json!({"n": 5})).await);
    expected.push(gw.emit(&format!("{base}.w.2"), json!({"n": 6})).await);
    // The page got n = 0 and 1, then lost its subscription.
    assert_eq!(take(gw, &old, 1, 2).await, [before, last_seen.clone()]);
    gw.running().broker.delete_subscription(&old).await.unwrap();

    let answer = resume(gw, &[&a, &wildcard], &last_seen).await;
    assert_eq!(answer["resumed"], 3, "{answer}");
    assert_eq!(answer["gap"], false);
    assert_eq!(answer["uri"], format!("{}/", gw.base));
    let key = key_of(&answer);
    assert_eq!(take(gw, &key, 1, 3).await, expected);
    let live = gw.emit(&a, json!({"n": 7})).await;
    let poll = gw.poll(&key, 4).await;
    assert_eq!((poll.status, poll.message_id()), (200, live.as_str()));
    assert_eq!(poll.json()["n"], 7);
    assert_eq!(ready(gw, &key).await, 0, "nothing twice");
}

async fn an_unknown_message_id_is_a_gap_and_live_events_still_arrive(backend: Backend) {
    let rig = rig(backend, |_| {}).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.gap");
    gw.emit(&event, json!({"n": 1})).await;
    // A foreign id, and an id of ours never published (a UUIDv7 of now).
    let never_published = uuid::Uuid::now_v7().to_string();
    for unknown in ["no-such-message", never_published.as_str()] {
        let answer = resume(gw, &[&event], unknown).await;
        assert_eq!(
            (&answer["resumed"], &answer["gap"]),
            (&json!(0), &json!(true))
        );
        let key = key_of(&answer);
        assert_eq!(ready(gw, &key).await, 0, "nothing replayed");
        let live = gw.emit(&event, json!({"n": 2})).await;
        assert_eq!(take(gw, &key, 1, 1).await, [live]);
    }
}

async fn resume_after_without_history_is_400_and_changes_nothing(backend: Backend) {
    let rig = rig(backend, |s| s.history.max_age = Duration::ZERO).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.nohistory");
    let id = gw.emit(&event, json!({})).await;
    let queues = gw.metric("longpoll_memory_queues").await;
    let body = json!({"event_keys": [event], "resume_after": id}).to_string();
    let (status, answer) = create(gw, &body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["error"],
        "resume_after needs the event history, which is off (--history-max-age 0)"
    );
    assert_eq!(gw.metric("longpoll_memory_queues").await, queues);
    if backend == Backend::Rabbit {
        let err = gw
            .running()
            .broker
            .queue_stats(&rig.stream)
            .await
            .expect_err("no stream without history");
        assert_eq!(err.kind(), BrokerErrorKind::NotFound);
    }
    // Without resume_after, subscriptions work as ever.
    let (status, answer) = create(gw, &json!({"event_keys": [event]}).to_string()).await;
    assert_eq!(status, 201, "{answer}");
}

async fn a_resume_after_that_cannot_be_a_message_id_is_400_and_other_shapes_422(backend: Backend) {
    let rig = rig(backend, |_| {}).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.badresume");
    let too_long = "x".repeat(129);
    for bad in ["", "has space", "é", too_long.as_str()] {
        let body = json!({"event_keys": [event], "resume_after": bad}).to_string();
        let (status, answer) = create(gw, &body).await;
        assert_eq!(status, 400, "{bad:?}: {answer}");
        assert_eq!(
            answer["error"],
            "resume_after must be a message id: 1 to 128 bytes of printable ASCII"
        );
    }
    for body in [
        json!({"event_keys": [event], "resume_after": 12}),
        json!({"event_keys": [event], "resume_after": ["x"]}),
        json!({"event_keys": [event], "resume_after": "x", "resume_from": "y"}),
        json!({"resume_after": "x"}),
    ] {
        let (status, answer) = create(gw, &body.to_string()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Without resume_after (or with null) the answer is the one it always was.
    for body in [
        json!({"event_keys": [event]}),
        json!({"event_keys": [event], "resume_after": null}),
    ] {
        let (status, answer) = create(gw, &body.to_string()).await;
        assert_eq!(status, 201, "{answer}");
        let fields: Vec<&String> = answer.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["key", "uri"]);
    }
}

async fn a_direct_exchange_keeps_the_history_of_each_subscribed_key(backend: Backend) {
    let rig = rig(backend, |s| s.exchange_type = ExchangeType::Direct).await;
    let gw = &rig.gw;
    let (event, other) = (
        unique("longpoll.event.direct"),
        unique("longpoll.event.unsubscribed"),
    );
    let unrouted = gw.emit(&other, json!({"n": 0})).await;
    gw.subscribe(&[&event]).await;
    let last_seen = gw.emit(&event, json!({"n": 1})).await;
    gw.emit(&other, json!({"n": 2})).await;
    let missed = gw.emit(&event, json!({"n": 3})).await;

    let answer = resume(gw, &[&event], &last_seen).await;
    assert_eq!(
        (&answer["resumed"], &answer["gap"]),
        (&json!(1), &json!(false))
    );
    assert_eq!(take(gw, &key_of(&answer), 1, 1).await, [missed]);
    if backend == Backend::Rabbit {
        // The stream is bound to the subscribed key only: on a direct
        // exchange, an event nobody subscribed to is not kept.
        let bindings = common::amqp::rabbitmqctl_ok(&[
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "destination_name",
            "routing_key",
        ])
        .await;
        let bound: Vec<&str> = bindings
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() == 3 && cols[1] == rig.stream).then(|| cols[2])
            })
            .collect();
        assert_eq!(bound, [event.as_str()]);
        let answer = resume(gw, &[&other], &unrouted).await;
        assert_eq!(answer["gap"], true, "{answer}");
    }
}

async fn a_publisher_emitting_throughout_several_resumes_gets_every_event_exactly_once_in_order(
    backend: Backend,
) {
    let rig = rig(backend, |_| {}).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.steady");
    let emitted: common::Shared<Vec<String>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (client, base) = (gw.client.clone(), gw.base.clone());
        let (event, emitted, stop) = (event.clone(), emitted.clone(), stop.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let r = client
                    .post(format!("{base}/api/v1/events/{event}"))
                    .bearer_auth(TOKEN)
                    .json(&json!({ "n": n }))
                    .send()
                    .await
                    .expect("emit");
                assert_eq!(r.status(), 202);
                let answer: Value = r.json().await.unwrap();
                let id = answer["message_id"].as_str().unwrap().to_owned();
                emitted.lock().await.push(id);
                n += 1;
                // Steady, not flat out: each resume sees events before,
                // during and after its bind.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    common::eventually(Duration::from_secs(20), "10 events", || async {
        emitted.lock().await.len() >= 10
    })
    .await;
    let mut resumes = Vec::new();
    for i in 0..8 {
        let so_far = emitted.lock().await.clone();
        let after = so_far.len() - 1 - (i % 4) * 2;
        let t = Instant::now();
        let answer = resume(gw, &[&event], &so_far[after]).await;
        eprintln!(
            "resume {i}: {:?} at {:?} {answer}",
            t.elapsed(),
            std::time::SystemTime::now()
        );
        assert_eq!(answer["gap"], false, "{answer}");
        let resumed = answer["resumed"].as_u64().unwrap();
        assert!(resumed as usize >= so_far.len() - 1 - after, "{answer}");
        resumes.push((key_of(&answer), after, resumed));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Release);
    publisher.await.expect("the publisher");
    let all = emitted.lock().await.clone();
    for (key, after, resumed) in resumes {
        let expected = &all[after + 1..];
        assert!(resumed as usize <= expected.len());
        assert_eq!(take(gw, &key, 1, expected.len()).await, expected);
        assert_eq!(ready(gw, &key).await, 0, "nothing twice");
    }
}

struct BugChanged(String);

impl LongPollEvent for BugChanged {
    fn event_key(&self) -> String {
        self.0.clone()
    }
}

async fn the_library_resumes_as_the_api_does(backend: Backend) {
    let rig = rig(backend, |_| {}).await;
    let gw = &rig.gw;
    let publisher = Publisher::new(gw.running().broker.clone(), "longpoll.subscribe.");
    let bug = BugChanged(unique("longpoll.event.lib"));
    let last_seen = bug.emit(&publisher, json!({"n": 1})).await.unwrap();
    let missed = bug.emit(&publisher, json!({"n": 2})).await.unwrap();
    let version = uuid::Uuid::parse_str(&missed).unwrap().get_version_num();
    assert_eq!(version, 7, "message ids are UUIDv7");

    let resumed = publisher
        .subscribe_resuming(&[bug.event_key()], &last_seen)
        .await
        .unwrap();
    assert_eq!((resumed.resumed, resumed.gap), (1, false));
    assert_eq!(
        take(gw, &resumed.key, 1, 1).await,
        std::slice::from_ref(&missed)
    );

    let sub = publisher
        .subscribe_events_resuming(&[&bug], "https://example.com/longpoll/", &last_seen)
        .await
        .unwrap();
    assert_eq!((sub.resumed, sub.gap), (1, false));
    assert_eq!(sub.uri, "https://example.com/longpoll/");
    assert_eq!(take(gw, &sub.key, 1, 1).await, [missed]);
    let unknown = publisher
        .subscribe_resuming(&[bug.event_key()], "no-such-message")
        .await
        .unwrap();
    assert_eq!((unknown.resumed, unknown.gap), (0, true));
}

async fn the_cli_resumes_through_the_gateway(backend: Backend) {
    let rig = rig(backend, |_| {}).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.cligw");
    let last_seen = gw.emit(&event, json!({"n": 1})).await;
    let missed = gw.emit(&event, json!({"n": 2})).await;
    let env = [("LONGPOLL_API_TOKEN", TOKEN)];
    let args = [
        "subscribe",
        "--gateway",
        &gw.base,
        "--resume-after",
        &last_seen,
        &event,
    ];
    let (code, out, err) = common::process::run(&args, &env).await;
    assert_eq!(code, 0, "{err}");
    let printed: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        printed,
        json!({"key": printed["key"], "uri": format!("{}/", gw.base), "resumed": 1, "gap": false})
    );
    let key = printed["key"].as_str().unwrap();
    assert_eq!(take(gw, key, 1, 1).await, [missed]);
    let args = [
        "subscribe",
        "--gateway",
        &gw.base,
        "--resume-after",
        "has space",
        &event,
    ];
    let (code, _, err) = common::process::run(&args, &env).await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "error: the gateway answered 400: resume_after must be a message id: 1 to 128 bytes of printable ASCII"
    );
}

// ---- the embedded broker's bounds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_an_event_older_than_the_history_max_age_is_a_gap() {
    let rig = rig(Backend::Memory, |s| {
        s.history.max_age = Duration::from_secs(1)
    })
    .await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.old");
    let old = gw.emit(&event, json!({"n": 1})).await;
    let emitted_at = Instant::now();
    let recent = gw.emit(&event, json!({"n": 2})).await;
    let answer = resume(gw, &[&event], &old).await;
    assert_eq!(
        (&answer["resumed"], &answer["gap"]),
        (&json!(1), &json!(false))
    );
    assert_eq!(take(gw, &key_of(&answer), 1, 1).await, [recent]);
    // The history's bound is a time: wait until `old` is past it.
    tokio::time::sleep_until((emitted_at + Duration::from_millis(1200)).into()).await;
    let answer = resume(gw, &[&event], &old).await;
    assert_eq!(
        (&answer["resumed"], &answer["gap"]),
        (&json!(0), &json!(true))
    );
    let newer = gw.emit(&event, json!({"n": 3})).await;
    let answer = resume(gw, &[&event], &newer).await;
    assert_eq!(
        answer["gap"], false,
        "a recent one is still there: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_an_event_pushed_out_by_the_history_max_bytes_is_a_gap() {
    let rig = rig(Backend::Memory, |s| s.history.max_bytes = 8_000).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.big");
    let pad = "x".repeat(500);
    let first = gw.emit(&event, json!({"pad": pad})).await;
    let mut ids = vec![first.clone()];
    for n in 0..20 {
        ids.push(gw.emit(&event, json!({"n": n, "pad": pad})).await);
    }
    let answer = resume(gw, &[&event], &first).await;
    assert_eq!(
        answer["gap"], true,
        "pushed out by the newer ones: {answer}"
    );
    let recent = &ids[ids.len() - 4];
    let answer = resume(gw, &[&event], recent).await;
    assert_eq!(
        (&answer["resumed"], &answer["gap"]),
        (&json!(3), &json!(false))
    );
    assert_eq!(take(gw, &key_of(&answer), 1, 3).await, ids[ids.len() - 3..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_more_events_since_than_a_queue_holds_is_a_gap() {
    let rig = rig(Backend::Memory, |s| s.memory.max_messages_per_queue = 5).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.many");
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(gw.emit(&event, json!({"n": n})).await);
    }
    let answer = resume(gw, &[&event], &ids[0]).await;
    assert_eq!(answer["gap"], true, "6 do not fit in 5: {answer}");
    let answer = resume(gw, &[&event], &ids[1]).await;
    assert_eq!(
        (&answer["resumed"], &answer["gap"]),
        (&json!(5), &json!(false))
    );
}

// ---- RabbitMQ: the stream itself

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_the_stream_is_declared_with_the_retention_settings_and_bound_with_hash() {
    let rig = rig(Backend::Rabbit, |s| {
        s.history.max_age = Duration::from_secs(7200);
        s.history.max_bytes = 5_000_000;
    })
    .await;
    // Declared once the broker is reached, before any operation.
    let listed = || async {
        common::amqp::rabbitmqctl_ok(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "type",
            "arguments",
        ])
        .await
        .lines()
        .find(|l| l.split_whitespace().next() == Some(rig.stream.as_str()))
        .map(str::to_owned)
    };
    common::eventually(Duration::from_secs(20), "the stream", || async {
        listed().await.is_some()
    })
    .await;
    let line = listed().await.unwrap();
    assert!(line.contains("\tstream\t"), "{line}");
    assert!(
        line.contains("x-max-age") && line.contains("7200s"),
        "{line}"
    );
    assert!(
        line.contains("x-max-length-bytes") && line.contains("5000000"),
        "{line}"
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
    let expected = format!("{}\t{}\t#", rig.gw.settings.exchange, rig.stream);
    assert!(bindings.lines().any(|l| l == expected), "{bindings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_an_existing_stream_is_used_as_it_is() {
    let stream = unique("longpoll.resume.history");
    let conn = common::amqp::connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        lapin::types::AMQPValue::LongString("7D".into()),
    );
    ch.queue_declare(
        stream.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("a stream declared by someone else");
    let rig = rig(Backend::Rabbit, |s| s.history.stream = stream.clone()).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.existing");
    let last_seen = gw.emit(&event, json!({"n": 1})).await;
    let missed = gw.emit(&event, json!({"n": 2})).await;
    let answer = resume(gw, &[&event], &last_seen).await;
    assert_eq!(answer["resumed"], 1, "{answer}");
    assert_eq!(take(gw, &key_of(&answer), 1, 1).await, [missed]);
    let listed = common::amqp::rabbitmqctl_ok(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "arguments",
    ])
    .await;
    let line = listed
        .lines()
        .find(|l| l.starts_with(&stream))
        .expect("listed");
    assert!(
        line.contains("7D") && !line.contains("x-max-length-bytes"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_another_publishers_message_without_id_is_found_by_its_derived_id() {
    let rig = rig(Backend::Rabbit, |_| {}).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.foreign");
    let old = gw.subscribe(&[&event]).await;
    let conn = common::amqp::connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for n in 1..=3 {
        // No message_id, as txlongpoll-era publishers sent them: the gateway
        // derives one from the content, and a resume reads from the first.
        ch.basic_publish(
            gw.settings.exchange.as_str().into(),
            event.as_str().into(),
            Default::default(),
            format!("{{\"n\":{n}}}").as_bytes(),
            lapin::BasicProperties::default().with_timestamp(1_700_000_000 + n),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let seen = take(gw, &old, 1, 3).await;
    assert!(seen[0].starts_with("sha256-"), "{seen:?}");
    let answer = resume(gw, &[&event], &seen[0]).await;
    assert_eq!(
        (&answer["resumed"], &answer["gap"]),
        (&json!(2), &json!(false))
    );
    assert_eq!(take(gw, &key_of(&answer), 1, 2).await, seen[1..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_the_cli_resumes_through_the_broker() {
    let rig = rig(Backend::Rabbit, |_| {}).await;
    let gw = &rig.gw;
    let event = unique("longpoll.event.clibroker");
    let last_seen = gw.emit(&event, json!({"n": 1})).await;
    let missed = gw.emit(&event, json!({"n": 2})).await;
    let amqp = common::amqp_url();
    let args = [
        "subscribe",
        "--broker",
        &amqp,
        "--exchange",
        &gw.settings.exchange,
        "--history-stream",
        &rig.stream,
        "--resume-after",
        &last_seen,
        &event,
    ];
    let (code, out, err) = common::process::run(&args, &[]).await;
    assert_eq!(code, 0, "{err}");
    let printed: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        printed,
        json!({"key": printed["key"], "uri": "/", "resumed": 1, "gap": false})
    );
    assert_eq!(
        take(gw, printed["key"].as_str().unwrap(), 1, 1).await,
        [missed]
    );
    // With the history off, the CLI says so in one line.
    let mut off = args.to_vec();
    off.splice(1..1, ["--history-max-age", "0"]);
    let (code, _, err) = common::process::run(&off, &[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "error: resume_after needs the event history, which is off (--history-max-age 0)"
    );
}
