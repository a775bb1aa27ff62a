//! A real RabbitMQ restart (`rabbitmqctl stop_app` / `start_app`) under a held
//! poll. It disturbs every user of the broker, so `make test` runs this file on
//! its own, after the others.

mod common;

use std::time::Duration;

use common::{Backend, Poll, TestGateway, eventually, unique};
use serde_json::json;

/// Starts the app again even if the test fails half-way.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_poll_survives_a_broker_restart_and_gets_the_message_published_after_it() {
    let gw = TestGateway::start_with(Backend::Rabbit, |s| {
        s.poll_timeout = Duration::from_secs(120);
    })
    .await;
    let event = unique("longpoll.event.restart");
    let key = gw.subscribe(&[&event]).await;
    let held = {
        let client = gw.client.clone();
        let url = format!("{}/?uuid={key}&sequence=1", gw.base);
        tokio::spawn(async move { Poll::read(client.get(url).send().await.unwrap()).await })
    };
    gw.wait_metric("longpoll_consumers", 1.0).await;

    let _guard = RestartGuard;
    common::amqp::rabbitmqctl_ok(&["stop_app"]).await;
    eventually(Duration::from_secs(30), "readyz 503", || async {
        match gw.client.get(format!("{}/readyz", gw.admin)).send().await {
            Ok(r) => common::is(r.status().as_u16(), 503),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert!(
        !held.is_finished(),
        "the poll keeps waiting while the broker is down"
    );
    common::amqp::rabbitmqctl_ok(&["start_app"]).await;
    gw.wait_ready().await;

    let id = gw.emit(&event, json!({"after": "restart"})).await;
    let r = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("answered after the restart")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.message_id(), id);
    assert_eq!(r.json()["after"], "restart");
}
