//! `longpoll-gateway subscribe` and `emit`, run as processes, against RabbitMQ
//! directly and against a running gateway.

mod common;

use common::process::run;
use common::{Backend, TOKEN, TestGateway, unique};
use serde_json::Value;

fn parse(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_emit_through_the_broker_reach_a_poll() {
    let amqp = common::amqp_url();
    let event = unique("longpoll.event.cli");
    let (code, out, err) = run(
        &[
            "subscribe",
            "--broker",
            &amqp,
            "--exchange",
            "longpoll.test",
            "--public-url",
            "https://example.com/longpoll/",
            &event,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let sub = parse(&out);
    let key = sub["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("longpoll.subscribe."));
    assert_eq!(sub["uri"], "https://example.com/longpoll/");

    let (code, out, err) = run(
        &[
            "emit",
            "--broker",
            &amqp,
            "--exchange",
            "longpoll.test",
            &event,
            r#"{"from": "cli"}"#,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let emitted = parse(&out);
    assert_eq!(emitted["event_key"], event.as_str());

    let gw = TestGateway::start(Backend::Rabbit).await;
    gw.owns(&key);
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["from"], "cli");
    assert_eq!(r.message_id(), emitted["message_id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_emit_through_a_gateway() {
    for backend in [Backend::Memory, Backend::Rabbit] {
        let gw = TestGateway::start(backend).await;
        let event = unique("longpoll.event.cligw");
        let env = [("LONGPOLL_API_TOKEN", TOKEN)];
        let (code, out, err) = run(&["subscribe", "--gateway", &gw.base, &event], &env).await;
        assert_eq!(code, 0, "{err}");
        let sub = parse(&out);
        let key = sub["key"].as_str().unwrap().to_owned();
        gw.owns(&key);
        assert_eq!(sub["uri"], format!("{}/", gw.base));
        let (code, _, err) = run(
            &[
                "emit",
                "--gateway",
                &gw.base,
                "--api-token",
                TOKEN,
                &event,
                r#"{"n": 1}"#,
            ],
            &[],
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(gw.poll(&key, 1).await.json()["n"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_non_zero_with_one_clear_line() {
    let gw = TestGateway::start(Backend::Memory).await;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "emit".into(),
                "--gateway".into(),
                gw.base.clone(),
                "--api-token".into(),
                "wrong-token-123".into(),
                "longpoll.event.a".into(),
                "{}".into(),
            ],
            "401",
        ),
        (
            vec![
                "emit".into(),
                "--gateway".into(),
                "http://127.0.0.1:1".into(),
                "--api-token".into(),
                TOKEN.into(),
                "longpoll.event.a".into(),
                "{}".into(),
            ],
            "cannot reach the gateway",
        ),
        (
            vec![
                "emit".into(),
                "--gateway".into(),
                gw.base.clone(),
                "--api-token".into(),
                TOKEN.into(),
                "longpoll.event.a".into(),
                "[1]".into(),
            ],
            "JSON object",
        ),
        (
            vec![
                "emit".into(),
                "--gateway".into(),
                gw.base.clone(),
                "--api-token".into(),
                TOKEN.into(),
                "longpoll.event.a".into(),
                "{nope".into(),
            ],
            "not valid JSON",
        ),
        (
            vec![
                "subscribe".into(),
                "--broker".into(),
                "memory://".into(),
                "longpoll.event.a".into(),
            ],
            "--gateway",
        ),
        (
            vec!["subscribe".into(), "longpoll.event.a".into()],
            "--broker",
        ),
        (
            vec![
                "subscribe".into(),
                "--broker".into(),
                "amqp://guest:hunter2-secret@127.0.0.1:1/%2f".into(),
                "longpoll.event.a".into(),
            ],
            "unavailable",
        ),
        (
            vec![
                "emit".into(),
                "--gateway".into(),
                gw.base.clone(),
                "--api-token".into(),
                TOKEN.into(),
                "bad key".into(),
                "{}".into(),
            ],
            "event key",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&args, &[]).await;
        assert_ne!(code, 0, "{args:?} succeeded: {out}");
        assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("hunter2-secret"), "password shown: {err}");
    }
}
