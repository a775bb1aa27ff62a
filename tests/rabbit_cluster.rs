//! The private three-node RabbitMQ cluster the broker-failure scenarios run on
//! (`common::rabbit_cluster`), proven with lapin alone, no gateway: the nodes form one
//! cluster; a classic queue lives on one node and is NOT_FOUND elsewhere while that node
//! is down; a stream outlives a SIGKILL of its leader's node and is read back from another
//! node over AMQP 0-9-1; a rolling restart keeps the stream readable and the cluster whole.
//!
//! Each test starts its own cluster (11–21 s on this machine, see the module docs) and
//! never touches the shared RabbitMQ on 127.0.0.1:5672. The figures each test prints
//! (`figure: …`) show with `cargo nextest run --test rabbit_cluster --no-capture`.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::rabbit_cluster::{NODES, RabbitCluster};
use common::unique;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};

/// How long a read or a wait on the broker may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_cluster_that_guest_reaches_through_each_node() {
    let started = Instant::now();
    let cluster = RabbitCluster::start().await;
    figure("cluster start (3 nodes booted and clustered)", started);

    let all: Vec<usize> = (0..NODES).collect();
    for via in 0..NODES {
        let asked = Instant::now();
        let view = cluster.view(via).await.expect("cluster_status");
        figure("one rabbitmqctl cluster_status", asked);
        assert_eq!(
            view.running,
            all,
            "running nodes seen through node {}",
            via + 1
        );
        assert_eq!(
            view.disk_nodes,
            all,
            "members seen through node {}",
            via + 1
        );
    }
    // The nodes are linked to each other and to nothing else: not to the system node.
    let peers = cluster
        .ctl(0, &["eval", "lists:sort(nodes())."])
        .await
        .expect("eval nodes()");
    let expected = format!("[{},{}]", cluster.node_name(1), cluster.node_name(2));
    assert_eq!(peers.trim(), expected, "node 1's Erlang peers");

    // guest/guest from loopback, through every node; what one node declares, all see.
    let queue = unique("rmqc.a");
    let first = connect(&cluster.amqp_url(0)).await;
    declare_classic(&first, &queue).await.expect("declare");
    for node in 0..NODES {
        let conn = connect(&cluster.amqp_url(node)).await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(queue.as_str().into(), passive(), FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("node {} sees the queue: {e}", node + 1));
    }
    assert_eq!(cluster.node_of_queue(&queue).await, Some(0));
}

/// What two test processes starting clusters at the same moment do (a slot is an `flock`,
/// which two opens in one process contend for just as two processes do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_started_at_once_get_their_own_nodes_and_ports_and_stay_apart() {
    let (a, b) = tokio::join!(RabbitCluster::start(), RabbitCluster::start());
    for n in 0..NODES {
        for m in 0..NODES {
            assert_ne!(a.node_name(n), b.node_name(m));
            assert_ne!(a.amqp_addr(n), b.amqp_addr(m));
        }
    }
    for cluster in [&a, &b] {
        let peers = cluster
            .ctl(0, &["eval", "lists:sort(nodes())."])
            .await
            .expect("eval nodes()");
        let expected = format!("[{},{}]", cluster.node_name(1), cluster.node_name(2));
        assert_eq!(peers.trim(), expected, "node 1's Erlang peers");
    }
    // A queue declared in one is not in the other.
    let queue = unique("rmqc.apart");
    declare_classic(&connect(&a.amqp_url(0)).await, &queue)
        .await
        .expect("declare");
    let ch = connect(&b.amqp_url(0))
        .await
        .create_channel()
        .await
        .unwrap();
    let passive_declare = ch
        .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
        .await;
    let e = passive_declare.expect_err("the other cluster has no such queue");
    assert!(
        matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
            if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)),
        "404 from the other cluster: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_is_not_found_through_other_nodes_while_its_node_is_down_and_back_after() {
    let cluster = RabbitCluster::start().await;
    let queue = unique("rmqc.b");
    let home = connect(&cluster.amqp_url(1)).await;
    declare_classic(&home, &queue).await.expect("declare");
    publish_to_queue(&home, &queue, "kept", b"{\"n\":1}").await;
    assert_eq!(
        cluster.node_of_queue(&queue).await,
        Some(1),
        "declared through node 2, the queue lives there"
    );

    let killed = Instant::now();
    cluster.kill(1);
    cluster.wait_noticed_down(1).await;
    figure("SIGKILL of a node -> the others count it down", killed);

    let other = connect(&cluster.amqp_url(0)).await;
    let home_name = cluster.node_name(1).to_owned();
    let expected = format!(
        "NOT_FOUND - home node '{home_name}' of durable queue '{queue}' in vhost '/' is down or inaccessible"
    );
    let ch = other.create_channel().await.unwrap();
    let passive_declare = ch
        .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
        .await;
    assert_not_found(passive_declare.map(|_| ()), &expected, "a passive declare");
    let declare = declare_classic(&other, &queue).await;
    assert_not_found(declare, &expected, "a declare");
    let ch = other.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let consume = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_not_found(consume.map(|_| ()), &expected, "a consume");
    let listed = cluster.queue(&queue).await.expect("still listed");
    assert_eq!(listed.pid_node, Some(1));
    eprintln!("observed: list_queues while its node is down: {listed:?}");

    let restarted = Instant::now();
    cluster.start_node(1).await;
    figure("start of a killed node -> running and clustered", restarted);

    // Back, with its persistent message, seen through the other node.
    let ch = other.create_channel().await.unwrap();
    let q = ch
        .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
        .await
        .expect("the queue is back");
    assert_eq!(q.message_count(), 1);
    let got = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("its message");
    assert_eq!(message_id(&got.delivery), "kept");
    assert_eq!(got.delivery.data, b"{\"n\":1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_what_was_published_before_its_leaders_node_is_killed() {
    let cluster = RabbitCluster::start().await;
    let (exchange, stream) = (unique("rmqc.c.x"), unique("rmqc.c.s"));
    let conn = connect(&cluster.amqp_url(0)).await;
    declare_stream_behind_topic(&conn, &exchange, &stream).await;
    let leader = wait_stream_whole(&cluster, &stream).await;

    // Two batches a second boundary apart, so a timestamp offset can start at the second.
    let before = events("before", 0..5);
    publish_events(&cluster.amqp_url(0), &exchange, &before).await;
    let boundary = next_second().await;
    let after = events("after", 5..10);
    publish_events(&cluster.amqp_url(0), &exchange, &after).await;

    let killed = Instant::now();
    cluster.kill(leader);
    cluster.wait_noticed_down(leader).await;
    let new_leader = wait_for(LIMIT, "a new stream leader", || async {
        cluster
            .leader_of_stream(&stream)
            .await
            .filter(|&l| l != leader)
    })
    .await;
    figure("SIGKILL of a stream's leader -> a new leader", killed);
    eprintln!(
        "observed: stream leader node {} killed, node {} took over",
        leader + 1,
        new_leader + 1
    );

    let reader = (0..NODES).find(|&n| n != leader).unwrap();
    let url = cluster.amqp_url(reader);
    let all: Vec<Event> = before.iter().chain(&after).cloned().collect();
    let read = read_stream(
        &url,
        &stream,
        AMQPValue::LongString("first".into()),
        all.len(),
    )
    .await;
    assert_events(&read, &all);
    // A timestamp offset (seconds) starts at the first message stored at or after it:
    // nothing of the batch before the boundary comes first.
    let read = read_stream(&url, &stream, AMQPValue::Timestamp(boundary), after.len()).await;
    assert_events(&read, &after);

    // The killed node comes back, its replica catches up, and it serves the same.
    let healed = Instant::now();
    cluster.heal().await;
    wait_stream_whole(&cluster, &stream).await;
    figure(
        "start of the killed leader's node -> its stream replica online",
        healed,
    );
    let url = cluster.amqp_url(leader);
    let read = read_stream(
        &url,
        &stream,
        AMQPValue::LongString("first".into()),
        all.len(),
    )
    .await;
    assert_events(&read, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_the_stream_readable_and_the_cluster_whole() {
    let cluster = RabbitCluster::start().await;
    let (exchange, stream) = (unique("rmqc.d.x"), unique("rmqc.d.s"));
    let conn = connect(&cluster.amqp_url(0)).await;
    declare_stream_behind_topic(&conn, &exchange, &stream).await;
    drop(conn);
    wait_stream_whole(&cluster, &stream).await;
    let mut published = events("start", 0..3);
    publish_events(&cluster.amqp_url(0), &exchange, &published).await;

    let rolling = Instant::now();
    let times = cluster
        .rolling_restart_with(async |down| {
            // Published while the node is down, through the next one.
            let n = published.len() as u64;
            let during = events(&format!("n{}-down", down + 1), n..n + 2);
            let via = cluster.amqp_url((down + 1) % NODES);
            publish_events(&via, &exchange, &during).await;
            published.extend(during);
        })
        .await;
    figure("rolling restart of all three nodes", rolling);
    for t in &times {
        eprintln!(
            "figure: rolling restart, node {}: pre-stop (await quorum+1, drain) {:.1} s, \
             graceful stop {:.1} s, start -> clustered {:.1} s",
            t.node + 1,
            t.prepare.as_secs_f64(),
            t.stop.as_secs_f64(),
            t.start.as_secs_f64()
        );
    }

    cluster.wait_clustered().await;
    wait_stream_whole(&cluster, &stream).await;
    for node in 0..NODES {
        let read = read_stream(
            &cluster.amqp_url(node),
            &stream,
            AMQPValue::LongString("first".into()),
            published.len(),
        )
        .await;
        assert_events(&read, &published);
    }
}

// ---- the events the stream tests publish and read back

#[derive(Debug, Clone)]
struct Event {
    routing_key: String,
    message_id: String,
    seq: i64,
    phase: String,
}

fn events(phase: &str, seqs: std::ops::Range<u64>) -> Vec<Event> {
    seqs.map(|seq| Event {
        routing_key: format!("longpoll.event.k{}", seq % 3),
        message_id: format!("{phase}-{seq}-{}", uuid::Uuid::new_v4().simple()),
        seq: seq as i64,
        phase: phase.to_owned(),
    })
    .collect()
}

fn body(e: &Event) -> Vec<u8> {
    format!("{{\"seq\":{}}}", e.seq).into_bytes()
}

/// Publishes through `url` with publisher confirms, mandatory (so an unrouted event fails).
async fn publish_events(url: &str, exchange: &str, events: &[Event]) {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for e in events {
        let mut headers = FieldTable::default();
        headers.insert("seq".into(), AMQPValue::LongLongInt(e.seq));
        headers.insert(
            "phase".into(),
            AMQPValue::LongString(e.phase.as_str().into()),
        );
        let props = BasicProperties::default()
            .with_message_id(e.message_id.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = ch
            .basic_publish(
                exchange.into(),
                e.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body(e),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            matches!(confirm, Confirmation::Ack(None)),
            "{} confirmed and routed: {confirm:?}",
            e.message_id
        );
    }
}

/// Consumes `count` messages from a stream at `offset` (`x-stream-offset`), acking each.
async fn read_stream(url: &str, stream: &str, offset: AMQPValue, count: usize) -> Vec<Delivery> {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.unwrap();
    // A stream consumer needs a prefetch (basic.qos) and acks.
    ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    let mut consumer = ch
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume the stream");
    let mut read = Vec::new();
    while read.len() < count {
        let delivery = tokio::time::timeout(LIMIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages within {LIMIT:?}", read.len()))
            .expect("consumer open")
            .expect("delivery");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        read.push(delivery);
    }
    read
}

/// Routing keys, message ids, headers and bodies as published, in order, each with the
/// `x-stream-offset` header RabbitMQ adds, increasing.
fn assert_events(read: &[Delivery], expected: &[Event]) {
    let got: Vec<&str> = read.iter().map(message_id).collect();
    let want: Vec<&str> = expected.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(got, want, "message ids, in order");
    let mut last_offset = None;
    for (d, e) in read.iter().zip(expected) {
        assert_eq!(d.routing_key.as_str(), e.routing_key, "routing key");
        assert_eq!(d.data, body(e), "body");
        let headers = d.properties.headers().as_ref().expect("headers");
        let headers = headers.inner();
        assert_eq!(
            headers.get("seq"),
            Some(&AMQPValue::LongLongInt(e.seq)),
            "seq header"
        );
        assert_eq!(
            headers.get("phase"),
            Some(&AMQPValue::LongString(e.phase.as_str().into())),
            "phase header"
        );
        let offset = match headers.get("x-stream-offset") {
            Some(AMQPValue::LongLongInt(o)) => *o,
            other => panic!("x-stream-offset header: {other:?}"),
        };
        assert!(last_offset < Some(offset), "offsets increase");
        last_offset = Some(offset);
    }
}

// ---- AMQP helpers

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn declare_classic(conn: &Connection, queue: &str) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map(|_| ())
}

async fn publish_to_queue(conn: &Connection, queue: &str, id: &str, body: &[u8]) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_message_id(id.into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

/// A durable topic exchange and, bound to it with `#`, a stream replicated on the three
/// nodes: what the gateway's events history will be.
async fn declare_stream_behind_topic(conn: &Connection, exchange: &str, stream: &str) {
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare the exchange");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert("x-max-age".into(), AMQPValue::LongString("1h".into()));
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(100_000_000),
    );
    args.insert("x-initial-cluster-size".into(), AMQPValue::LongInt(3));
    ch.queue_declare(
        stream.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare the stream");
    ch.queue_bind(
        stream.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind the stream");
}

/// Waits until the stream has a leader and all three replicas online; returns the leader.
async fn wait_stream_whole(cluster: &RabbitCluster, stream: &str) -> usize {
    let all: Vec<usize> = (0..NODES).collect();
    wait_for(LIMIT, "the stream's three replicas online", || async {
        let q = cluster.queue(stream).await?;
        (q.kind == "stream" && q.members == all && q.online == all)
            .then_some(q.leader)
            .flatten()
    })
    .await
}

fn assert_not_found(result: Result<(), lapin::Error>, expected: &str, what: &str) {
    let e = result.expect_err(&format!("{what} through another node fails"));
    let amqp = match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.clone(),
        other => panic!("{what}: a channel error, not {other:?}"),
    };
    eprintln!("observed: {what} while the queue's node is down: {e}");
    assert_eq!(
        amqp.kind(),
        &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
        "{what}: 404 NOT_FOUND"
    );
    assert_eq!(
        amqp.get_message().as_str(),
        expected,
        "{what}: the reply text"
    );
}

fn message_id(d: &Delivery) -> &str {
    d.properties
        .message_id()
        .as_ref()
        .map_or("", |id| id.as_str())
}

// ---- small things

/// Polls `check` until it gives a value, or panics after `limit` naming `what`.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for the wall clock to reach the next whole second (a condition, not a pause of
/// fixed length); returns that second, for an `x-stream-offset` timestamp.
async fn next_second() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let next = now.as_secs() + 1;
    tokio::time::sleep(Duration::from_secs(next) - now).await;
    next
}

fn figure(what: &str, since: Instant) {
    eprintln!("figure: {what}: {:.1} s", since.elapsed().as_secs_f64());
}

/// Not a test: a cluster held for a benchmark run by hand (benches/README.md, "What history
/// costs"). Writes the nodes' AMQP URLs (comma-separated) and their beam pids to the file
/// named by `LONGPOLL_HOLD_CLUSTER_FILE`, then holds the cluster until that file is removed
/// (or 30 minutes), and stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "holds a cluster for a benchmark run by hand"]
async fn hold_a_cluster_for_a_benchmark() {
    let file = std::env::var("LONGPOLL_HOLD_CLUSTER_FILE")
        .expect("LONGPOLL_HOLD_CLUSTER_FILE names the file to write the URLs to");
    let cluster = RabbitCluster::start().await;
    let pids: Vec<String> = (0..NODES)
        .map(|n| cluster.os_pid(n).expect("a running node").to_string())
        .collect();
    std::fs::write(
        &file,
        format!("{}\n{}\n", cluster.amqp_urls().join(","), pids.join(" ")),
    )
    .expect("the file written");
    eprintln!("holding the cluster until {file} is removed");
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    while std::path::Path::new(&file).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
