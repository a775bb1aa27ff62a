//! Abuse: slow headers, connection floods, oversized requests, one key polled a
//! thousand times at once, and floods of unknown keys — each bounded, none
//! able to stop normal polls.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::GatewayProcess;
use common::{Backend, Poll, TestGateway, client, unique};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a connection that sends its request head one byte at a time and
/// returns how long the server took to close it.
async fn slow_header_connection(addr: SocketAddr, dribble: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /?uuid=x&sequence=1 HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        .await
        .ok()?;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {} // an error answer (408) before the close
            },
            _ = tokio::time::sleep(dribble) => {
                if stream.write_all(b"a").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return None;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_header_connections_are_closed_on_time_and_polls_go_on() {
    let gw = TestGateway::start_with(Backend::Memory, |s| {
        // Long enough for all 2,000 to be open at once on a busy machine.
        s.limits.header_read_timeout = Duration::from_secs(8);
    })
    .await;
    let addr = gw.public_addr();
    let slow: Vec<_> = (0..2000)
        .map(|_| tokio::spawn(slow_header_connection(addr, Duration::from_millis(300))))
        .collect();
    gw.wait_metric("longpoll_connections_open", 2000.0).await;

    // Normal traffic is served while they dribble.
    let event = unique("longpoll.event.normal");
    let key = gw.subscribe(&[&event]).await;
    let held = {
        let (c, url) = (
            gw.client.clone(),
            format!("{}/?uuid={key}&sequence=1", gw.base),
        );
        tokio::spawn(async move { Poll::read(c.get(url).send().await.unwrap()).await })
    };
    gw.emit(&event, json!({"n": 1})).await;
    let r = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("a normal poll is answered while 2,000 slow connections are open")
        .unwrap();
    assert_eq!(r.status, 200);

    // Every slow connection is closed by the server, on time.
    for handle in slow {
        let closed_after = handle.await.unwrap().expect("closed by the server");
        assert!(
            closed_after >= Duration::from_millis(7900) && closed_after < Duration::from_secs(25),
            "closed after {closed_after:?}"
        );
    }
    gw.wait_metric("longpoll_connections_open", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let gw = TestGateway::start_with(Backend::Memory, |s| s.limits.max_connections = 20).await;
    let addr = gw.public_addr();
    let mut open = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap(); // keeps the head open
        open.push(s);
    }
    gw.wait_metric("longpoll_connections_open", 20.0).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(gw.metric("longpoll_connections_refused_total").await >= 1.0);
    drop(open);
    gw.wait_metric("longpoll_connections_open", 0.0).await;
    assert_eq!(gw.get("/").await.status, 200, "accepting again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_uri_is_414_and_an_oversized_head_is_431() {
    let gw = TestGateway::start(Backend::Memory).await;
    let long = format!("/?uuid=longpoll.subscribe.{}&sequence=1", "x".repeat(5000));
    assert_eq!(gw.get(&long).await.status, 414);
    let r = gw
        .client
        .get(format!("{}/", gw.base))
        .header("x-padding", "p".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(gw.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_of_more_than_a_hundred_header_fields_is_refused_and_changes_nothing() {
    let gw = TestGateway::start(Backend::Memory).await;
    let with_fields = |n: usize| {
        let mut headers = reqwest::header::HeaderMap::new();
        for i in 0..n {
            let name = reqwest::header::HeaderName::try_from(format!("x-f{i}")).unwrap();
            headers.insert(name, reqwest::header::HeaderValue::from_static("1"));
        }
        gw.client
            .get(format!("{}/", gw.base))
            .headers(headers)
            .send()
    };
    // reqwest adds a few fields of its own (accept, host): 90 + those fit.
    assert_eq!(with_fields(90).await.unwrap().status(), 200);
    let refused = with_fields(101).await.unwrap();
    assert_eq!(refused.status(), 431);
    assert_eq!(gw.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_polls_for_one_key_cost_one_held_poll_and_one_consumer() {
    let gw = TestGateway::start(Backend::Rabbit).await;
    let event = unique("longpoll.event.hot");
    let key = gw.subscribe(&[&event]).await;
    let polls: Vec<_> = (0..1000)
        .map(|_| {
            let (c, url) = (
                gw.client.clone(),
                format!("{}/?uuid={key}&sequence=1", gw.base),
            );
            tokio::spawn(async move { Poll::read(c.get(url).send().await.unwrap()).await })
        })
        .collect();
    gw.wait_metric("longpoll_supersedes_total", 999.0).await;
    // The superseded polls finish within moments of their 409.
    gw.wait_metric("longpoll_polls_held", 1.0).await;
    gw.wait_metric("longpoll_consumers", 1.0).await;
    let conn = common::amqp::connect().await;
    common::eventually(
        Duration::from_secs(10),
        "one consumer on the broker",
        || async { common::is(common::amqp::ready_and_consumers(&conn, &key).await.1, 1) },
    )
    .await;
    gw.emit(&event, json!({"n": 1})).await;
    let mut statuses = std::collections::BTreeMap::new();
    for p in polls {
        *statuses.entry(p.await.unwrap().status).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&200), Some(&1), "{statuses:?}");
    assert_eq!(statuses.get(&409), Some(&999), "{statuses:?}");
}

/// Channels RabbitMQ holds open for the gateway process `pid`.
async fn broker_channels_of(pid: u32) -> Vec<u64> {
    common::amqp::rabbitmqctl_ok(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "client_properties",
        "channels",
    ])
    .await
    .lines()
    .filter(|l| l.contains(&format!("longpoll-gateway pid={pid}")))
    .filter_map(|l| l.split_whitespace().last()?.parse().ok())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_polls_for_random_unknown_keys_cost_bounded_broker_work() {
    let amqp = common::amqp_url();
    let gw = GatewayProcess::start(
        &[
            "--broker",
            &amqp,
            "--api-token",
            common::TOKEN,
            "--exchange",
            "longpoll.test",
            "--channel-pool-size",
            "8",
        ],
        &[],
    )
    .await;
    let http = client();
    let flood = {
        let (http, base) = (http.clone(), gw.base.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(0..10_000usize)
                .map(|_| {
                    let url = format!(
                        "{base}/?uuid=longpoll.subscribe.{}&sequence=1",
                        uuid::Uuid::new_v4()
                    );
                    let http = http.clone();
                    async move {
                        // An error is kept with its text, so that a failure
                        // says what went wrong rather than "0".
                        match http.get(url).send().await {
                            Ok(r) => r.status().as_u16().to_string(),
                            Err(e) => format!("error: {e:?}"),
                        }
                    }
                })
                .buffer_unordered(200)
                .collect::<Vec<String>>()
                .await
        })
    };
    // Meanwhile the broker holds a bounded number of channels for this
    // gateway, and the management API still gets channels from the pool.
    let mut most_channels = 0;
    while !flood.is_finished() {
        let channels: u64 = broker_channels_of(gw.pid()).await.iter().sum();
        most_channels = most_channels.max(channels);
        let r = http
            .post(format!("{}/api/v1/subscriptions", gw.base))
            .bearer_auth(common::TOKEN)
            .json(&json!({"event_keys": [unique("longpoll.event.during")]}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        if status != 201 {
            let body = r.text().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let warnings: Vec<String> = gw
                .logs()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(str::to_owned)
                .collect();
            panic!(
                "the API failed during the flood: {status} {body:?}\n{}",
                warnings.join("\n")
            );
        }
    }
    let mut histogram = std::collections::BTreeMap::new();
    for s in flood.await.unwrap() {
        *histogram.entry(s).or_insert(0) += 1;
    }
    assert_eq!(
        histogram.keys().collect::<Vec<_>>(),
        vec!["404"],
        "{histogram:?}"
    );
    // 8 operation channels, 8 consumer channels and 4 probe channels at most.
    assert!(
        most_channels > 0 && most_channels <= 8 + 8 + 4,
        "channels on the broker: {most_channels}"
    );
    let metrics = gw_metrics(&http, &gw).await;
    // One probe per unknown key, plus the few retried when lapin handed a
    // probe another channel's error or a connection ran out of channel ids.
    let probes = common::metric_value(&metrics, "longpoll_queue_probes_total");
    assert!((10_000.0..=12_000.0).contains(&probes), "probes: {probes}");
    assert_eq!(common::metric_value(&metrics, "longpoll_polls_held"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_repeating_one_unknown_key_are_answered_from_the_negative_cache() {
    let amqp = common::amqp_url();
    let gw = GatewayProcess::start(&["--broker", &amqp, "--exchange", "longpoll.test"], &[]).await;
    let http = client();
    let key = format!("longpoll.subscribe.{}", uuid::Uuid::new_v4());
    let started = Instant::now();
    for _ in 0..1000 {
        let r = http
            .get(format!("{}/?uuid={key}&sequence=1", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let metrics = gw_metrics(&http, &gw).await;
    let probes = common::metric_value(&metrics, "longpoll_queue_probes_total");
    // One probe per 5 s the cache remembers a missing queue.
    let periods = (started.elapsed().as_secs_f64() / 5.0).ceil();
    assert!(probes >= 1.0 && probes <= periods, "probes {probes}");
    assert_eq!(
        common::metric_value(&metrics, "longpoll_negative_cache_hits_total"),
        1000.0 - probes
    );
}

async fn gw_metrics(http: &reqwest::Client, gw: &GatewayProcess) -> String {
    http.get(format!("{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
