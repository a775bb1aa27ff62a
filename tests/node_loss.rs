//! Pages on a three-node RabbitMQ cluster through what happens to clusters, with resume: each
//! scenario starts a private cluster (`common::rabbit_cluster`), a gateway given its three
//! nodes, pages polling by the contract's client rules and a publisher emitting numbered
//! events throughout. A page whose subscription is gone (404) subscribes again with
//! `resume_after` = the last message it showed, as `longpoll.js`'s `resubscribe` does.
//!
//! (a) SIGKILL the node holding most of the gateway's connections; (b) SIGKILL the node
//! holding most of the pages' queues; (c) a rolling restart of all three nodes, as the
//! RabbitMQ Cluster Operator does it; (d) subscriptions that expired while their pages
//! slept, resumed when they wake.
//!
//! Asserted per page, over all its subscriptions: every event published while it was open
//! is shown, each exactly once and in order (through resume where its queue was lost), or
//! the page was told `gap`; a page never had to subscribe again without a message to resume
//! after. Each scenario prints its figures (`figure: …`, time to recover first) for
//! docs/scaling.md: `cargo nextest run --test node_loss --no-capture`. `make test` runs the
//! short size; `make cluster-test` (`LONGPOLL_CLUSTER_SCALE=full`) the full one.
//!
//! Never touches the shared RabbitMQ on 127.0.0.1:5672.

mod common;

#[allow(dead_code)]
#[path = "cluster/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "cluster/nodes.rs"]
mod nodes;
#[path = "cluster/traffic.rs"]
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::rabbit_cluster::{NODES, RabbitCluster};
use common::{TestGateway, eventually, unique};
use nodes::{figure, gateway_with, our_connections};
use tokio_util::sync::CancellationToken;
use traffic::{Life, Page, PageOptions, Published, Publisher, ReadyWatch};

/// Pages, and events published in each phase (before, during and after a disruption).
struct Scale {
    pages: usize,
    events_per_phase: usize,
}

fn scale() -> Scale {
    match std::env::var("LONGPOLL_CLUSTER_SCALE").as_deref() {
        Ok("full") => Scale {
            pages: 24,
            events_per_phase: 40,
        },
        _ => Scale {
            pages: 6,
            events_per_phase: 10,
        },
    }
}

/// Bound on any one wait of a scenario: far above what recovery takes, so that a loaded
/// 2-core machine does not fail a test that would pass.
const BOUND: Duration = Duration::from_secs(90);

/// A cluster, a gateway on its nodes, pages and a publisher, running.
struct Scenario {
    cluster: RabbitCluster,
    gw: Arc<TestGateway>,
    event: String,
    started: Instant,
    stop: CancellationToken,
    publisher: Publisher,
    pages: Vec<Page>,
}

impl Scenario {
    /// Starts the traffic and returns once every page has shown an event (so that each has
    /// a message to resume after).
    async fn start(
        what: &str,
        tweak: impl FnOnce(&mut longpoll_gateway::config::Settings),
        options: impl Fn(usize) -> PageOptions,
    ) -> Self {
        let cluster = RabbitCluster::start().await;
        let gw = Arc::new(
            gateway_with(&cluster, |s| {
                s.poll_timeout = Duration::from_secs(20);
                tweak(s);
            })
            .await,
        );
        let started = Instant::now();
        let event = unique(&format!("longpoll.event.loss.{what}"));
        let stop = CancellationToken::new();
        let pages: Vec<_> = (0..scale().pages)
            .map(|page| {
                Page::start_with(
                    page,
                    gw.clone(),
                    event.clone(),
                    stop.clone(),
                    started,
                    options(page),
                )
            })
            .collect();
        // The pages subscribe before the first event.
        eventually(BOUND, "every page subscribed", || async {
            gw.metric("longpoll_consumers").await >= pages.len() as f64
        })
        .await;
        let publisher = Publisher::start(gw.clone(), event.clone(), stop.clone(), started);
        let scenario = Scenario {
            cluster,
            gw,
            event,
            started,
            stop,
            publisher,
            pages,
        };
        scenario.wait_events(scale().events_per_phase).await;
        scenario
            .wait_all_shown(1, "every page showed an event")
            .await;
        scenario
    }

    /// Waits until `count` more events were confirmed; returns the number of the last.
    async fn wait_events(&self, count: usize) -> u64 {
        let from = self.publisher.confirmed().await;
        eventually(BOUND, "events published", || async {
            self.publisher.confirmed().await >= from + count
        })
        .await;
        self.publisher.confirmed().await as u64
    }

    async fn wait_all_shown(&self, n: u64, what: &str) {
        all_shown(&self.pages, n, what).await;
    }

    /// How long until every page shows an event published after `since` (the disruption):
    /// the scenario's time to recover.
    async fn recovery(&self, since: Instant, what: &str) -> Duration {
        let at = self.publisher.confirmed().await as u64;
        self.wait_all_shown(at + 1, what).await;
        let took = since.elapsed();
        eprintln!("figure: {what}: {:.2} s", took.as_secs_f64());
        took
    }

    /// More events, then every page catches up with the last; the traffic stops. Returns
    /// what each page lived and what was published.
    async fn finish(self) -> (RabbitCluster, Vec<Life>, Vec<Published>) {
        self.wait_events(scale().events_per_phase).await;
        let published = self.publisher.stop().await;
        let last = published.len() as u64;
        all_shown(&self.pages, last, "every page showed the last event").await;
        self.stop.cancel();
        let mut lives = Vec::new();
        for page in self.pages {
            lives.extend(page.handle.await.expect("a page"));
        }
        eprintln!(
            "observed: {} events on {} in {:.1} s",
            published.len(),
            self.event,
            self.started.elapsed().as_secs_f64()
        );
        drop(self.gw);
        (self.cluster, lives, published)
    }
}

/// Waits until every page has shown event `n` (or a later one).
async fn all_shown(pages: &[Page], n: u64, what: &str) {
    eventually(BOUND, what, || async {
        let mut lowest = u64::MAX;
        for page in pages {
            lowest = lowest.min(page.last_shown().await);
        }
        lowest >= n
    })
    .await;
}

/// What the pages lived, summed up.
#[derive(Debug, Default)]
struct Summary {
    lives: usize,
    /// Subscriptions made with `resume_after` and answered `gap: false`.
    resumed: usize,
    /// Events they replayed.
    replayed: u64,
    /// Subscriptions answered `gap: true` (the page was told).
    gaps: usize,
}

/// The scenarios' assertion: per page, over all its subscriptions, every event published
/// while it was open shown exactly once and in order, or a gap told.
fn every_event_shown_once_or_gap_told(lives: &[Life], published: &[Published]) -> Summary {
    // An emit answered with an error and asked again publishes the event twice, with two ids:
    // the only way one event number may show twice.
    let repeated: BTreeSet<u64> = published
        .iter()
        .filter(|e| e.attempts > 1)
        .map(|e| e.n)
        .collect();
    let mut by_page: BTreeMap<usize, Vec<&Life>> = BTreeMap::new();
    for life in lives {
        by_page.entry(life.page).or_default().push(life);
    }
    let mut summary = Summary::default();
    for (page, lives) in by_page {
        let ids: Vec<&String> = lives.iter().flat_map(|l| &l.outcome.ids).collect();
        let distinct: BTreeSet<&&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "page {page} showed a message twice: {lives:#?}"
        );
        let events: Vec<u64> = lives
            .iter()
            .flat_map(|l| l.outcome.events.iter().copied())
            .collect();
        assert!(
            events
                .windows(2)
                .all(|w| w[0] < w[1] || (w[0] == w[1] && repeated.contains(&w[0]))),
            "page {page}: each event once, in order: {events:?}"
        );
        for life in &lives[1..] {
            if life.key != lives[0].key && life.resume_after.is_none() {
                // Only a page that had shown nothing yet could not resume.
                panic!("page {page} subscribed again with nothing to resume after: {lives:#?}");
            }
        }
        let told_gap = lives.iter().any(|l| l.gap);
        summary.lives += lives.len();
        for life in &lives {
            if life.gap {
                summary.gaps += 1;
            } else if life.resume_after.is_some() {
                summary.resumed += 1;
                summary.replayed += life.resumed.unwrap_or(0);
            }
        }
        let (first, end) = (lives[0].subscribed, lives[lives.len() - 1].ended);
        let shown: BTreeSet<u64> = events.iter().copied().collect();
        let missing: Vec<u64> = published
            .iter()
            .filter(|e| e.requested > first && e.confirmed < end)
            .map(|e| e.n)
            .filter(|n| !shown.contains(n))
            .collect();
        assert!(
            missing.is_empty() || told_gap,
            "page {page} missed {missing:?} and was not told of a gap: {lives:#?}"
        );
    }
    eprintln!("observed: {summary:?}");
    summary
}

/// Where each page's queue lives now, per node.
async fn pages_per_node(cluster: &RabbitCluster, gw: &TestGateway) -> [usize; NODES] {
    let prefix = &gw.settings.queue_prefix;
    let mut per_node = [0; NODES];
    for q in cluster.queues().await {
        if q.name.starts_with(prefix.as_str())
            && let Some(node) = q.pid_node
        {
            per_node[node] += 1;
        }
    }
    per_node
}

/// (a) and (b): SIGKILL one node under traffic, then bring it back.
/// `choose` gets the gateway's connections per node, the pages' queues per node and the
/// node of the history stream's leader.
async fn kill_one_node(
    what: &str,
    choose: impl Fn([usize; NODES], [usize; NODES], Option<usize>) -> usize,
) {
    let scenario = Scenario::start(
        what,
        |_| {},
        |_| PageOptions {
            resume: true,
            sleep: None,
        },
    )
    .await;
    let connections = our_connections(&scenario.cluster).await;
    let queues = pages_per_node(&scenario.cluster, &scenario.gw).await;
    let leader = scenario
        .cluster
        .leader_of_stream(&scenario.gw.settings.history.stream)
        .await;
    let victim = choose(connections, queues, leader);
    eprintln!(
        "observed: the gateway's connections per node {connections:?}, the pages' queues per \
         node {queues:?}, the history's leader on node {:?}: SIGKILL node {}",
        leader.map(|n| n + 1),
        victim + 1
    );
    let ready = ReadyWatch::start(&scenario.gw);
    let killed = Instant::now();
    scenario.cluster.kill(victim);
    let recovered = scenario
        .recovery(
            killed,
            &format!("{what}: SIGKILL -> every page shows a new event"),
        )
        .await;
    assert!(recovered < BOUND, "recovered in {recovered:?}");
    scenario.wait_events(scale().events_per_phase).await;
    let back = Instant::now();
    scenario.cluster.start_node(victim).await;
    figure(&format!("{what}: node restarted -> clustered"), back);
    let ready = ready.stop().await;
    let (cluster, lives, published) = scenario.finish().await;
    let summary = every_event_shown_once_or_gap_told(&lives, &published);
    assert!(
        ready.not_ready.is_empty(),
        "/readyz said otherwise: {:?}",
        ready.not_ready
    );
    if queues[victim] > 0 {
        assert!(
            summary.resumed >= queues[victim],
            "every page whose queue died resumed: {summary:?}"
        );
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_of_the_node_the_gateway_is_connected_to_loses_no_event() {
    // Most of the gateway's connections; among equals, the fewest pages' queues.
    kill_one_node("a", |connections, queues, _| {
        (0..NODES)
            .max_by_key(|&n| (connections[n], std::cmp::Reverse(queues[n])))
            .expect("a node")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_of_the_node_holding_queues_loses_no_event_their_pages_resume() {
    // A node with some of the pages' queues, the history stream's leader if it holds any
    // (its loss stops resumes until another replica leads, and RabbitMQ then closes the
    // connections that published to the stream, on every node); then the most queues.
    kill_one_node("b", |connections, queues, leader| {
        (0..NODES)
            .max_by_key(|&n| {
                (
                    queues[n] > 0,
                    Some(n) == leader,
                    queues[n],
                    std::cmp::Reverse(connections[n]),
                )
            })
            .expect("a node")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_three_nodes_loses_no_event() {
    let scenario = Scenario::start(
        "c",
        |_| {},
        |_| PageOptions {
            resume: true,
            sleep: None,
        },
    )
    .await;
    let ready = ReadyWatch::start(&scenario.gw);
    let rolling = Instant::now();
    let mut slowest = Duration::ZERO;
    let times = scenario
        .cluster
        .rolling_restart_with(async |down| {
            let stopped = Instant::now();
            let took = scenario
                .recovery(
                    stopped,
                    &format!(
                        "c: node {} stopped -> every page shows a new event",
                        down + 1
                    ),
                )
                .await;
            slowest = slowest.max(took);
            scenario.wait_events(scale().events_per_phase).await;
        })
        .await;
    figure(
        "c: rolling restart of all three nodes, under traffic",
        rolling,
    );
    for t in &times {
        eprintln!(
            "figure: c: node {}: pre-stop (await quorum+1, drain) {:.1} s, graceful stop {:.1} s, \
             start -> clustered {:.1} s",
            t.node + 1,
            t.prepare.as_secs_f64(),
            t.stop.as_secs_f64(),
            t.start.as_secs_f64()
        );
    }
    eprintln!(
        "figure: c: slowest recovery of a node's stop: {:.2} s",
        slowest.as_secs_f64()
    );
    let ready = ready.stop().await;
    let (cluster, lives, published) = scenario.finish().await;
    let summary = every_event_shown_once_or_gap_told(&lives, &published);
    assert!(
        summary.resumed >= 1,
        "each node took some pages' queues down with it, and they resumed: {summary:?}"
    );
    assert!(
        ready.not_ready.is_empty(),
        "/readyz said otherwise: {:?}",
        ready.not_ready
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_expired_while_its_page_slept_is_resumed_with_every_event() {
    const EXPIRY: Duration = Duration::from_secs(4);
    // A page that falls asleep just after an answer leaves the queue's consumer lingering
    // on the gateway (10 s after its last delivery, for the next poll), and RabbitMQ counts
    // a queue's expiry only once it has no consumer: the sleep covers both, with room.
    const CONSUMER_LINGER: Duration = Duration::from_secs(10);
    const SLEEP: Duration = Duration::from_secs(CONSUMER_LINGER.as_secs() + 2 * EXPIRY.as_secs());
    // Half the pages sleep past the linger and two expiries; the others poll throughout.
    let sleeps = |page: usize| page.is_multiple_of(2);
    let scenario = Scenario::start(
        "d",
        |s| s.subscription_expiry = EXPIRY,
        |page| PageOptions {
            resume: true,
            sleep: sleeps(page).then_some((Duration::from_secs(1), SLEEP)),
        },
    )
    .await;
    eventually(BOUND, "the pages asleep", || async {
        scenario
            .pages
            .iter()
            .enumerate()
            .all(|(i, p)| !sleeps(i) || p.is_asleep())
    })
    .await;
    scenario.wait_events(scale().events_per_phase).await;
    eprintln!(
        "observed: sleep of {:.0} s with a subscription expiry of {:.0} s",
        SLEEP.as_secs_f64(),
        EXPIRY.as_secs_f64()
    );
    let (cluster, lives, published) = scenario.finish().await;
    let summary = every_event_shown_once_or_gap_told(&lives, &published);
    let mut slowest = Duration::ZERO;
    for page in (0..scale().pages).filter(|&p| sleeps(p)) {
        let mine: Vec<&Life> = lives.iter().filter(|l| l.page == page).collect();
        let at = mine
            .iter()
            .position(|l| l.resume_after.is_some())
            .unwrap_or_else(|| panic!("page {page} slept and did not resume: {mine:#?}"));
        let (woke, resumed) = (mine[at - 1], mine[at]);
        assert!(
            woke.key == mine[0].key
                && woke
                    .outcome
                    .stopped
                    .as_deref()
                    .is_some_and(|s| s.starts_with("404")),
            "page {page} woke to a 404 on its expired subscription: {woke:#?}"
        );
        assert!(
            !resumed.gap && resumed.resumed.unwrap_or(0) > 0,
            "page {page}'s resume replayed what was published while it slept: {resumed:#?}"
        );
        slowest = slowest.max(resumed.subscribed.saturating_sub(woke.subscribed));
    }
    eprintln!(
        "figure: d: a page wakes -> its 404, then its resumed subscription answered: {:.2} s",
        slowest.as_secs_f64()
    );
    assert_eq!(summary.gaps, 0, "the history reaches back over the sleep");
    drop(cluster);
}
