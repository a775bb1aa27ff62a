//! The gateway and the private three-node cluster (`common::rabbit_cluster`) seen together:
//! a gateway given every node, its connections per node, the node of each subscription
//! queue, and the `figure:` lines the broker-failure tests print. Included with `#[path]`
//! by tests/broker_nodes.rs and tests/node_loss.rs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::rabbit_cluster::{NODES, RabbitCluster};
use crate::common::{Backend, TestGateway};
use longpoll_gateway::config::{BrokerUrl, Settings};

/// A gateway given the cluster's three nodes.
pub async fn gateway_on(cluster: &RabbitCluster, poll_timeout: Duration) -> TestGateway {
    gateway_with(cluster, |s| s.poll_timeout = poll_timeout).await
}

/// A gateway given the cluster's three nodes, its settings tweaked.
pub async fn gateway_with(
    cluster: &RabbitCluster,
    tweak: impl FnOnce(&mut Settings),
) -> TestGateway {
    let urls = cluster.amqp_urls().join(",");
    TestGateway::start_with(Backend::Rabbit, |s| {
        s.broker = BrokerUrl::parse(&urls).expect("the cluster's URLs");
        tweak(s);
    })
    .await
}

/// This process's gateway connections per node, as RabbitMQ lists them (its background
/// checks of a node left aside).
pub async fn our_connections(cluster: &RabbitCluster) -> [usize; NODES] {
    let ours = format!("longpoll-gateway pid={}", std::process::id());
    let mut per_node = [0; NODES];
    for c in cluster.connections().await {
        if c.name.starts_with(&ours)
            && !c.name.contains("node check")
            && let Some(node) = c.node
        {
            per_node[node] += 1;
        }
    }
    per_node
}

/// Waits (bounded) until the gateway's connections per node satisfy `done`; returns them.
pub async fn wait_connections(
    cluster: &RabbitCluster,
    what: &str,
    done: impl Fn(&[usize; NODES]) -> bool,
) -> [usize; NODES] {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = our_connections(cluster).await;
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the gateway's connections per node: {seen:?}"
        );
        // A rabbitmqctl run costs about a CPU-second: ask gently.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node of each queue named (all of them must be listed).
pub async fn queue_nodes<'a>(
    cluster: &RabbitCluster,
    queues: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, usize> {
    let listed: BTreeMap<String, Option<usize>> = cluster
        .queues()
        .await
        .into_iter()
        .map(|q| (q.name, q.pid_node))
        .collect();
    queues
        .filter_map(|q| {
            let node = listed.get(q).copied().flatten();
            node.map(|n| (q.to_owned(), n))
        })
        .collect()
}

/// Prints how long since `since`, for docs/scaling.md.
pub fn figure(what: &str, since: Instant) {
    eprintln!("figure: {what}: {:.2} s", since.elapsed().as_secs_f64());
}
