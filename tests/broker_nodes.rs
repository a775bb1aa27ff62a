//! `--broker` with the nodes of one RabbitMQ cluster, end to end: a gateway given the three
//! nodes of a private cluster (`common::rabbit_cluster`) spreads its connections and its
//! subscription queues over them; a node SIGKILLed is left while `/readyz` stays 200, held
//! polls on the other nodes' queues get their messages, polls on the dead node's queues are
//! answered 404 at once, and new subscriptions and publishes work; the node restarted takes
//! connections again. (Pages polling through node losses, with resume: tests/node_loss.rs.)
//!
//! The first two tests need no cluster: a gateway (in this process, then the binary with
//! `LONGPOLL_BROKER`) is given the shared RabbitMQ on 127.0.0.1:5672 and a port where nothing
//! answers, and only uses the shared node. The other starts a cluster and never touch
//! the shared RabbitMQ. The figures each test prints (`figure: …`) show with
//! `cargo nextest run --test broker_nodes --no-capture`.

mod common;

// The contract's client rules, shared with tests/cluster.rs (which uses all of it).
#[allow(dead_code)]
#[path = "cluster/client.rs"]
mod client;
// A /readyz watch, and the gateway's view of the cluster's nodes.
#[path = "cluster/nodes.rs"]
mod nodes;
#[allow(dead_code)]
#[path = "cluster/traffic.rs"]
mod traffic;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::rabbit_cluster::{NODES, RabbitCluster};
use common::{Backend, Poll, TestGateway, eventually, unique};
use longpoll_gateway::config::BrokerUrl;
use nodes::{figure, gateway_on, queue_nodes, wait_connections};
use serde_json::json;
use tokio::task::JoinHandle;
use traffic::ReadyWatch;

/// How long a held poll waits before 408: long enough that a 503 or a 408 cannot pass for
/// the prompt 404 of a queue whose node died.
const POLL_TIMEOUT: Duration = Duration::from_secs(60);

/// What "promptly" means for the answers a node loss should bring (a 404 for a queue that
/// lived there, a message to a poll on another node): far below [`POLL_TIMEOUT`], with room
/// for a loaded 2-core machine.
const PROMPTLY: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_is_left_and_the_others_serve() {
    // A port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let dead_url = format!(
        "amqp://guest:guest@{}/%2f",
        dead.local_addr().expect("its address")
    );
    drop(dead);
    let live_url = common::amqp_url();
    let gw = TestGateway::start_with(Backend::Rabbit, |s| {
        s.broker = BrokerUrl::parse(&format!("{dead_url},{live_url}")).expect("two nodes");
    })
    .await;
    // Ready (start_with waited for it): the node that answers serves.
    assert_eq!(gw.metric("longpoll_broker_connected").await, 1.0);
    assert_eq!(node_up(&gw, 0).await, 0.0, "the dead node");
    assert_eq!(node_up(&gw, 1).await, 1.0, "the live node");

    let event = unique("longpoll.event.nodes.dead");
    let key = gw.subscribe(&[&event]).await;
    let held = spawn_poll(&gw, &key, 1);
    let id = gw.emit(&event, json!({"n": 1})).await;
    let (answer, _) = held.await.expect("the poll");
    assert_eq!((answer.status, answer.message_id()), (200, id.as_str()));
}

/// The binary itself, its nodes from the environment variable, comma-separated: it serves
/// through the one that answers, says which one it left, and prints no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longpoll_broker_lists_the_nodes_comma_separated_and_no_password_is_printed() {
    let nodes = format!(
        "amqp://guest:s3cret-node-password@127.0.0.1:1/%2f,{}",
        common::amqp_url()
    );
    let gw = common::process::GatewayProcess::start(&[], &[("LONGPOLL_BROKER", &nodes)]).await;
    let http = common::client();
    eventually(Duration::from_secs(20), "ready through the node that answers", || async {
        matches!(http.get(format!("{}/readyz", gw.admin)).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the dead node named as left",
        || async {
            let logs = gw.logs();
            logs.contains("leaving it") && logs.contains("127.0.0.1:1")
        },
    )
    .await;
    let logs = gw.logs();
    assert!(logs.contains("amqp://guest:***@127.0.0.1:1/%2f,"), "{logs}");
    assert!(!logs.contains("s3cret-node-password"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_left_with_readyz_200_its_queues_404_the_others_served_and_it_is_used_again_once_back()
 {
    let cluster = RabbitCluster::start().await;
    let gw = gateway_on(&cluster, Duration::from_secs(POLL_TIMEOUT.as_secs())).await;

    // Spread: one pooled connection per node (plus the probes' own connection).
    let spread = wait_connections(&cluster, "a connection on every node", |per_node| {
        per_node.iter().all(|&c| c >= 1)
    })
    .await;
    eprintln!("observed: the gateway's connections per node: {spread:?}");

    // Subscriptions, each with its own event; their queues spread with the connections.
    let mut subs = Vec::new();
    for _ in 0..12 {
        let event = unique("longpoll.event.nodes.kill");
        let key = gw.subscribe(&[&event]).await;
        subs.push((key, event));
    }
    let homes = queue_nodes(&cluster, subs.iter().map(|(k, _)| k.as_str())).await;
    let mut per_node = [0usize; NODES];
    for node in homes.values() {
        per_node[*node] += 1;
    }
    eprintln!("observed: subscription queues per node: {per_node:?}");
    assert!(
        per_node.iter().filter(|&&q| q > 0).count() >= 2,
        "the queues spread over the nodes: {per_node:?}"
    );
    // The node to kill: the one the gateway's connections use most, among those that hold
    // some of the queues (so that both what dies and what survives is seen).
    let victim = (0..NODES)
        .filter(|&n| per_node[n] > 0)
        .max_by_key(|&n| (spread[n], per_node[n]))
        .expect("a node with queues");
    assert!(
        (0..NODES).any(|n| n != victim && per_node[n] > 0),
        "queues on other nodes too: {per_node:?}"
    );

    // Every subscription has a poll waiting at the broker.
    let held: Vec<_> = subs
        .iter()
        .map(|(key, _)| (key.clone(), spawn_poll(&gw, key, 1)))
        .collect();
    gw.wait_metric("longpoll_consumers", subs.len() as f64)
        .await;
    let ready = ReadyWatch::start(&gw);

    let killed = Instant::now();
    cluster.kill(victim);
    eprintln!("observed: SIGKILLed node {}", victim + 1);

    // Events for the subscriptions that live elsewhere, published after the kill.
    let mut expected = BTreeMap::new();
    for (key, event) in &subs {
        if homes[key] != victim {
            let id = gw.emit(event, json!({"after": "kill"})).await;
            expected.insert(key.clone(), id);
        }
    }
    figure(
        "SIGKILL -> the events for the other nodes' queues published",
        killed,
    );
    let mut slowest_404 = Duration::ZERO;
    let mut slowest_message = Duration::ZERO;
    for (key, poll) in held {
        let (answer, at) = tokio::time::timeout(PROMPTLY + Duration::from_secs(10), poll)
            .await
            .unwrap_or_else(|_| panic!("the poll on {key} still waits"))
            .expect("the poll");
        let took = at.duration_since(killed);
        match expected.get(&key) {
            Some(id) => {
                assert_eq!(
                    (answer.status, answer.message_id()),
                    (200, id.as_str()),
                    "a poll on a queue of node {}: {answer:?}",
                    homes[&key] + 1
                );
                slowest_message = slowest_message.max(took);
            }
            None => {
                assert_eq!(
                    answer.status, 404,
                    "a poll on the dead node's queue: {answer:?}"
                );
                slowest_404 = slowest_404.max(took);
            }
        }
        assert!(
            took < PROMPTLY,
            "answered {took:?} after the kill: {answer:?}"
        );
    }
    eprintln!(
        "figure: SIGKILL -> last held poll on a surviving queue answered with its event: {:.2} s",
        slowest_message.as_secs_f64()
    );
    eprintln!(
        "figure: SIGKILL -> last held poll on the dead node's queues answered 404: {:.2} s",
        slowest_404.as_secs_f64()
    );

    // New subscriptions and publishes work, with the node still down.
    let event = unique("longpoll.event.nodes.new");
    let key = gw.subscribe(&[&event]).await;
    let poll = spawn_poll(&gw, &key, 1);
    let id = gw.emit(&event, json!({"n": "new"})).await;
    let (answer, _) = poll.await.expect("the poll");
    assert_eq!((answer.status, answer.message_id()), (200, id.as_str()));
    assert_eq!(gw.metric("longpoll_broker_connected").await, 1.0);
    assert_eq!(node_up(&gw, victim).await, 0.0, "the dead node is left");
    let left = wait_connections(&cluster, "no connection on the dead node", |per_node| {
        per_node[victim] == 0 && per_node.iter().sum::<usize>() >= 3
    })
    .await;
    eprintln!(
        "observed: the gateway's connections per node with node {} dead: {left:?}",
        victim + 1
    );

    // The node comes back: it is found answering and takes a connection again.
    let restarted = Instant::now();
    cluster.start_node(victim).await;
    figure(
        "start of the killed node -> running and clustered",
        restarted,
    );
    let back = Instant::now();
    let again = wait_connections(&cluster, "a connection on the restarted node", |per_node| {
        per_node[victim] >= 1
    })
    .await;
    eprintln!(
        "figure: restarted node clustered -> the gateway's connections back on it: {:.1} s ({again:?})",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(node_up(&gw, victim).await, 1.0);

    let ready = ready.stop().await;
    assert!(
        ready.probes > 20,
        "readyz asked throughout: {}",
        ready.probes
    );
    assert!(
        ready.not_ready.is_empty(),
        "readyz said otherwise: {:?}",
        ready.not_ready
    );
}

// ---- helpers

/// `longpoll_broker_node_up{broker_node="…"}`.
async fn node_up(gw: &TestGateway, node: usize) -> f64 {
    gw.metric(&format!(
        "longpoll_broker_node_up{{broker_node=\"{node}\"}}"
    ))
    .await
}

/// A poll in the background, with the instant its answer came.
fn spawn_poll(gw: &TestGateway, key: &str, sequence: u64) -> JoinHandle<(Poll, Instant)> {
    let (client, base, key) = (gw.client.clone(), gw.base.clone(), key.to_owned());
    tokio::spawn(async move {
        let r = client
            .get(format!("{base}/"))
            .query(&[("uuid", key.as_str()), ("sequence", &sequence.to_string())])
            .timeout(POLL_TIMEOUT + Duration::from_secs(10))
            .send()
            .await
            .expect("poll request");
        let poll = Poll::read(r).await;
        (poll, Instant::now())
    })
}
