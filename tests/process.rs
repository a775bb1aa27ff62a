//! The binary as a process: configuration errors, precedence, signals and exit codes.

mod common;

use std::time::Duration;

use common::process::{GatewayProcess, run};
use common::{Poll, client, eventually, unique};
use serde_json::json;

async fn status(url: &str) -> u16 {
    match client().get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn bad_configuration_exits_non_zero_with_one_line_naming_the_problem() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 7] = [
        (&["serve", "--poll-timeout", "0"], &[], "--poll-timeout"),
        (&["serve", "--broker", "amqp//nohost"], &[], "--broker"),
        (
            &["serve", "--broker", "http://example.com"],
            &[],
            "--broker",
        ),
        (&["serve", "--no-such-flag"], &[], "--no-such-flag"),
        (&["serve"], &[("LONGPOLL_MAX_POLLS", "lots")], "--max-polls"),
        (&["serve", "--log-format", "yaml"], &[], "--log-format"),
        (
            &["serve"],
            &[("LONGPOLL_CONSUMER_PREFETCH", "101")],
            "--consumer-prefetch",
        ),
    ];
    for (args, env, names) in cases {
        let (code, _out, err) = run(args, env).await;
        assert_ne!(code, 0, "{args:?} {env:?} succeeded");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {args:?}: {err}");
        assert!(lines[0].contains(names), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn a_missing_config_file_and_an_unknown_key_are_named() {
    let (code, _, err) = run(&["serve", "--config", "/nonexistent/gw.toml"], &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/gw.toml"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, "poll-timeout = \"30s\"\nqueue-prefx = \"x.\"\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", path.to_str().unwrap()], &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("queue-prefx"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[tokio::test]
async fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "queue-prefix = \"from.file.\"\nexchange = \"from-file\"\n",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let probe = |gw: &GatewayProcess| {
        let url = format!("{}/", gw.base);
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };

    let gw = GatewayProcess::start(&["--config", config], &[]).await;
    assert_eq!(probe(&gw).await, "Async frontend for from.file.");
    let gw = GatewayProcess::start(
        &["--config", config],
        &[("LONGPOLL_QUEUE_PREFIX", "from.env.")],
    )
    .await;
    assert_eq!(probe(&gw).await, "Async frontend for from.env.");
    let gw = GatewayProcess::start(
        &["--config", config, "--queue-prefix", "from.flag."],
        &[("LONGPOLL_QUEUE_PREFIX", "from.env.")],
    )
    .await;
    assert_eq!(probe(&gw).await, "Async frontend for from.flag.");
    let gw = GatewayProcess::start(&[], &[]).await;
    assert_eq!(probe(&gw).await, "Async frontend for longpoll.subscribe.");
}

/// A txlongpoll deployment's YAML file, as its etc/txlongpoll.yaml is laid out,
/// pointing at the tests' RabbitMQ.
fn txlongpoll_yaml(prefix: &str) -> String {
    let amqp = url::Url::parse(&common::amqp_url()).unwrap();
    format!(
        "## txlongpoll configuration.\n\
         frontend:\n  port: 56100\n  prefix: {prefix}\n\
         oops:\n  directory: \"/var/tmp/oops\"\n  reporter: \"LONGPOLL\"\n\
         broker:\n  host: \"{host}\"\n  port: {port}\n  username: {user}\n  password: \"{password}\"\n  vhost: \"/\"\n\
         logfile: \"txlongpoll.log\"\n",
        host = amqp.host_str().unwrap(),
        port = amqp.port().unwrap_or(5672),
        user = amqp.username(),
        password = amqp.password().unwrap_or(""),
    )
}

#[tokio::test]
async fn a_txlongpoll_config_file_is_read_as_a_drop_in_below_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("txlongpoll.yaml");
    std::fs::write(&path, txlongpoll_yaml("lp.txlongpoll.")).unwrap();
    let file = path.to_str().unwrap();
    // The harness's --listen flag beats the file's frontend.port.
    let gw = GatewayProcess::start(
        &[
            "--txlongpoll-config",
            file,
            "--api-token",
            common::TOKEN,
            "--exchange",
            "longpoll.test",
        ],
        &[],
    )
    .await;
    let http = client();
    let probe = http.get(format!("{}/", gw.base)).send().await.unwrap();
    assert_eq!(
        probe.text().await.unwrap(),
        "Async frontend for lp.txlongpoll."
    );
    // The broker is the file's: RabbitMQ, ready, and a poll goes through it.
    eventually(Duration::from_secs(20), "ready on RabbitMQ", || async {
        status(&format!("{}/readyz", gw.admin)).await == 200
    })
    .await;
    let event = unique("longpoll.event.txlongpoll");
    let r = http
        .post(format!("{}/api/v1/subscriptions", gw.base))
        .bearer_auth(common::TOKEN)
        .json(&json!({ "event_keys": [event] }))
        .send()
        .await
        .unwrap();
    let key = r.json::<serde_json::Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(key.starts_with("lp.txlongpoll."), "{key}");
    assert_eq!(common::amqp::rabbitmqctl_counts(&key).await, (0, 0));
    http.post(format!("{}/api/v1/events/{event}", gw.base))
        .bearer_auth(common::TOKEN)
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    let r = Poll::read(
        http.get(format!("{}/?uuid={key}&sequence=1", gw.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.json()["n"].clone()), (200, json!(1)));
    // What the gateway does not use is said once per key, and no secret is.
    let logs = gw.logs();
    for key in ["oops.directory", "oops.reporter", "logfile"] {
        let lines = logs
            .lines()
            .filter(|l| l.contains(&format!("txlongpoll config: {key} ignored")))
            .count();
        assert_eq!(lines, 1, "{key}: {logs}");
    }
    let password = url::Url::parse(&common::amqp_url())
        .unwrap()
        .password()
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(!logs.contains(&format!(":{password}@")), "{logs}");

    // A flag still wins over the file.
    let gw = GatewayProcess::start(
        &["--txlongpoll-config", file, "--queue-prefix", "from.flag."],
        &[],
    )
    .await;
    let probe = http.get(format!("{}/", gw.base)).send().await.unwrap();
    assert_eq!(probe.text().await.unwrap(), "Async frontend for from.flag.");
}

#[tokio::test]
async fn a_bad_txlongpoll_config_file_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("txlongpoll.yaml");
    std::fs::write(&path, "frontend:\n  port: lots\n").unwrap();
    let (code, _, err) = run(
        &["serve", "--txlongpoll-config", path.to_str().unwrap()],
        &[],
    )
    .await;
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("frontend.port"), "{err}");
    assert!(err.contains("txlongpoll.yaml"), "{err}");
}

#[tokio::test]
async fn a_broker_down_at_start_is_not_an_error_and_readyz_says_503() {
    // Port 1 on loopback: nothing listens there.
    let gw = GatewayProcess::start(
        &["--broker", "amqp://guest:secret-password@127.0.0.1:1/%2f"],
        &[],
    )
    .await;
    assert_eq!(status(&format!("{}/healthz", gw.admin)).await, 200);
    assert_eq!(status(&format!("{}/readyz", gw.admin)).await, 503);
    // It keeps trying, and never prints the password.
    eventually(Duration::from_secs(10), "a reconnect warning", || async {
        gw.logs().contains("cannot reach the broker")
    })
    .await;
    assert!(!gw.logs().contains("secret-password"), "{}", gw.logs());
}

#[tokio::test]
async fn sigterm_answers_held_polls_503_requeues_unacked_messages_and_exits_0() {
    let amqp = common::amqp_url();
    let mut gw = GatewayProcess::start(
        &[
            "--broker",
            &amqp,
            "--api-token",
            common::TOKEN,
            "--exchange",
            "longpoll.test",
            "--drain-timeout",
            "5s",
        ],
        &[],
    )
    .await;
    let http = client();
    let subscribe = |event: String| {
        let (http, base) = (http.clone(), gw.base.clone());
        async move {
            let r = http
                .post(format!("{base}/api/v1/subscriptions"))
                .bearer_auth(common::TOKEN)
                .json(&json!({ "event_keys": [event] }))
                .send()
                .await
                .unwrap();
            r.json::<serde_json::Value>().await.unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let answered_event = unique("longpoll.event.term");
    let answered = subscribe(answered_event.clone()).await;
    let waiting = subscribe(unique("longpoll.event.term")).await;
    http.post(format!("{}/api/v1/events/{answered_event}", gw.base))
        .bearer_auth(common::TOKEN)
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    let r = Poll::read(
        http.get(format!("{}/?uuid={answered}&sequence=1", gw.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(common::amqp::rabbitmqctl_counts(&answered).await, (0, 1));

    let held = {
        let url = format!("{}/?uuid={waiting}&sequence=1", gw.base);
        let http = http.clone();
        tokio::spawn(async move { Poll::read(http.get(url).send().await.unwrap()).await })
    };
    eventually(Duration::from_secs(10), "the poll is held", || async {
        let m = http
            .get(format!("{}/metrics", gw.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        common::metric_value(&m, "longpoll_polls_held") == 1.0
    })
    .await;

    gw.sigterm();
    let r = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held poll is answered at once")
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("0"));
    let exit = gw.wait(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "{}", gw.logs());
    assert_eq!(
        common::amqp::rabbitmqctl_counts(&answered).await,
        (1, 0),
        "the unacked answer went back to its queue"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_does_not_hold_up_shutdown() {
    // The header read timeout (10 s by default) is longer than this test waits.
    let mut gw = GatewayProcess::start(&[], &[]).await;
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The gateway has the connection once an answer on another one proves the
    // listener is past its accept.
    let r = client().get(format!("{}/", gw.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.sigterm();
    let exit = gw.wait(Duration::from_secs(5)).await;
    assert_eq!(exit.code(), Some(0));
    let mut buf = [0u8; 8];
    let read = tokio::io::AsyncReadExt::read(&mut silent, &mut buf).await;
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
}

#[tokio::test]
async fn sigint_stops_the_gateway_with_exit_0() {
    let mut gw = GatewayProcess::start(&[], &[]).await;
    let status = std::process::Command::new("kill")
        .args(["-INT", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = gw.wait(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0));
}

/// Names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|name| name.trim_end().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(feature = "jemalloc")]
#[tokio::test]
async fn freed_memory_is_returned_by_one_jemalloc_background_thread() {
    let gw = GatewayProcess::start(&[], &[]).await;
    assert_eq!(status(&format!("{}/healthz", gw.admin)).await, 200);
    let pid = gw.pid();
    eventually(
        Duration::from_secs(10),
        "jemalloc's purging thread",
        || async { thread_names(pid).iter().any(|n| n == "jemalloc_bg_thd") },
    )
    .await;
    let purgers = thread_names(pid)
        .into_iter()
        .filter(|n| n == "jemalloc_bg_thd")
        .count();
    assert_eq!(purgers, 1, "max_background_threads:1");
}
