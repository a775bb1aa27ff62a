//! One scenario: a fresh topology (replicas, the proxy — nginx or haproxy — from the chart,
//! maybe a fault hop), subscriptions, one client per subscription polling through the proxy, a
//! publisher emitting
//! numbered events through a replica's management API, a fault in the middle — then the
//! check that every client got every event, in order, once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientOutcome, Progress, RetryCounts};
use crate::hop::{Cut, FaultHop};

/// The `max` of the subscriptions that take several messages per answer (every other one).
const CLIENT_MAX: u8 = 5;
use crate::topology::{
    BrokerRestartGuard, Proxy, ProxyKind, Replica, TOKEN, free_ports, rabbitmqctl,
    render_proxy_conf,
};

/// Sizes: `short` in `make test`, `full` in `make cluster-test`.
#[derive(Debug, Clone)]
pub struct Scale {
    pub name: &'static str,
    pub subscriptions: usize,
    pub events: u64,
    /// Pause between two rounds of events (a round = one event to every subscription).
    pub round_gap: Duration,
    /// config.pollTimeout the chart is rendered with.
    pub poll_timeout: &'static str,
    /// config.replayTtl: how long a replica keeps an answer nobody came back for.
    pub replay_ttl: &'static str,
    /// How long a killed replica or RabbitMQ stays down.
    pub down_for: Duration,
    /// Every client must be complete this long after the last event was published.
    pub settle: Duration,
    /// Messages answered through the fault hop: every n-th is cut.
    pub cut_every: u64,
    pub publish_concurrency: usize,
    /// The browser clients added to the browser scenario.
    pub browser_clients: usize,
}

impl Scale {
    /// `LONGPOLL_CLUSTER_SCALE` (short or full), with `LONGPOLL_CLUSTER_SUBSCRIPTIONS` and
    /// `LONGPOLL_CLUSTER_EVENTS` overriding its sizes (for experiments).
    pub fn from_env() -> Scale {
        let mut scale = Self::named();
        let number = |name: &str| {
            std::env::var(name).ok().map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
            })
        };
        if let Some(n) = number("LONGPOLL_CLUSTER_SUBSCRIPTIONS") {
            scale.subscriptions = n as usize;
        }
        if let Some(n) = number("LONGPOLL_CLUSTER_EVENTS") {
            assert!(
                n >= 2,
                "LONGPOLL_CLUSTER_EVENTS: at least 2 (the fault comes halfway)"
            );
            scale.events = n;
        }
        scale
    }

    fn named() -> Scale {
        match std::env::var("LONGPOLL_CLUSTER_SCALE").as_deref() {
            Ok("full") => Scale {
                name: "full",
                subscriptions: 500,
                events: 20,
                round_gap: Duration::from_millis(250),
                poll_timeout: "20s",
                replay_ttl: "30s",
                down_for: Duration::from_secs(3),
                settle: Duration::from_secs(90),
                cut_every: 5,
                publish_concurrency: 48,
                browser_clients: 20,
            },
            Ok("short") | Err(_) => Scale {
                name: "short",
                subscriptions: 40,
                events: 8,
                round_gap: Duration::from_millis(150),
                poll_timeout: "5s",
                replay_ttl: "10s",
                down_for: Duration::from_millis(1500),
                settle: Duration::from_secs(30),
                cut_every: 4,
                publish_concurrency: 16,
                browser_clients: 4,
            },
            Ok(other) => panic!("LONGPOLL_CLUSTER_SCALE={other}: use short or full"),
        }
    }
}

/// What happens in the middle of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// SIGKILL one replica, then start it again on the same ports.
    Kill,
    /// SIGTERM one replica (a scale-down); the proxy drops it once it has exited.
    Term,
    /// `rabbitmqctl stop_app` / `start_app`, between two halves of the events.
    BrokerRestart,
    /// Start with 2 replicas; start the third and reload the proxy.
    ScaleOut,
    /// A hop in front of one replica cuts every n-th message answer.
    DropResponses(Cut),
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub title: String,
    pub fault: Fault,
    /// The real proxy the clients go through, configured from the chart.
    pub proxy: ProxyKind,
    /// Consistent hashing on the poll's uuid (the chart's default) or round-robin.
    pub hash: bool,
    /// Assert the order per subscription (hashing) or only report it (round-robin).
    pub strict_order: bool,
    /// Also run the real longpoll.js in headless Chromium in this scenario.
    pub browser: bool,
}

/// Sums of the replicas' counters over the run (every incarnation of every replica).
#[derive(Debug, Default, Clone)]
pub struct GatewayCounters {
    pub replays: f64,
    pub redelivered: f64,
    pub skipped: f64,
    pub supersedes: f64,
    pub requeued: f64,
    pub delivered: f64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub spec: Spec,
    pub events: u64,
    pub delivered: u64,
    pub lost: u64,
    /// The same event shown to the application twice (a different message id).
    pub duplicates_shown: u64,
    /// Subscriptions whose events the application saw out of order.
    pub out_of_order: u64,
    pub duplicates_dropped: u64,
    /// Answers of several messages (the clients polling with `max`), and their messages.
    pub several: (u64, u64),
    pub retries: RetryCounts,
    pub gateway: GatewayCounters,
    /// Polls the proxy passed to another server.
    pub proxy_retries: u64,
    pub cut: u64,
    pub publish_retries: u64,
    pub browser: Option<crate::browser::BrowserOutcome>,
    pub wall: Duration,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

/// The replicas' /metrics, last seen per (replica, incarnation).
#[derive(Default)]
struct MetricsBook {
    last: Mutex<HashMap<(String, u32), String>>,
}

impl MetricsBook {
    async fn scrape(&self, http: &reqwest::Client, r: &Replica) {
        if let Some(text) = r.metrics(http).await {
            self.last
                .lock()
                .unwrap()
                .insert((r.name.clone(), r.incarnation), text);
        }
    }

    fn counters(&self) -> GatewayCounters {
        let mut c = GatewayCounters::default();
        for text in self.last.lock().unwrap().values() {
            let v = |name: &str| crate::common::metric_value(text, name);
            c.replays += v("longpoll_replays_total");
            c.redelivered += v("longpoll_messages_redelivered_total");
            c.skipped += v("longpoll_messages_skipped_total");
            c.supersedes += v("longpoll_supersedes_total");
            c.requeued += v("longpoll_messages_requeued_total");
            c.delivered += v("longpoll_messages_delivered_total");
        }
        c
    }
}

/// The replicas, shared by the scenario body and the metrics scraper.
type Replicas = Arc<tokio::sync::Mutex<Vec<Replica>>>;

pub fn out_dir() -> PathBuf {
    // target/cluster next to target/tmp, whatever CARGO_TARGET_DIR is.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("cluster")
}

pub async fn run(spec: Spec, scale: &Scale) -> Outcome {
    let started = Instant::now();
    let dir = out_dir().join(scale.name).join(&spec.id);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scenario dir");
    let broker = crate::common::amqp_url();
    let http = crate::topology::http_client();

    // The replicas on fixed ports; the fault hop (if any) in front of r0.
    // Every port of the scenario at once, so none is handed out twice.
    let ports = free_ports(8);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::new(&format!("r{i}"), &dir, ports[2 * i], ports[2 * i + 1]))
        .collect();
    let hop_port = ports[6];
    let upstream_of = Upstreams {
        fault: spec.fault,
        hop_port,
    };
    let initial = if spec.fault == Fault::ScaleOut { 2 } else { 3 };
    let servers: Vec<String> = replicas[..initial]
        .iter()
        .enumerate()
        .map(|(i, r)| upstream_of.of(r, i))
        .collect();
    let proxy_port = ports[7];
    let values = json!({
        "config": {
            "pollTimeout": scale.poll_timeout,
            "replayTtl": scale.replay_ttl,
            "drainTimeout": "5s",
            "exchange": "longpoll.cluster",
            "subscriptionExpiry": "120s",
            "publicUrl": format!("http://127.0.0.1:{proxy_port}/longpoll/"),
        },
        "ingress": {"hashByUuid": spec.hash},
    });
    // The configuration first (the replicas run with its ConfigMap), the proxy once they
    // are ready (haproxy's health checks would otherwise mark them down at its start).
    let render = render_proxy_conf(spec.proxy, &dir, proxy_port, &servers, &values).await;
    assert_eq!(
        render.hash_by.is_some(),
        spec.hash,
        "the chart's hashing is what the scenario asked for"
    );
    assert!(
        render.read_timeout_seconds as f64 > render.poll_timeout_seconds,
        "the proxy's read timeout is above the gateway's poll timeout: {:?}",
        render.annotations
    );
    check_conf_matches_render(spec.proxy, &render);
    let env = render.env.clone();
    for r in replicas[..initial].iter_mut() {
        r.start(&env, &broker).await;
    }
    for r in replicas[..initial].iter() {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    // The hop before the proxy: haproxy's first health check must find it listening.
    let hop = match spec.fault {
        Fault::DropResponses(cut) => Some(
            FaultHop::start(
                format!("127.0.0.1:{hop_port}").parse().unwrap(),
                replicas[0].addr().parse().unwrap(),
                scale.cut_every,
                cut,
            )
            .await,
        ),
        _ => None,
    };
    let mut proxy = Proxy::start(spec.proxy, &dir, proxy_port, render, values).await;
    // The publisher and the subscriptions go through r1's management API (never through
    // the ingress: the chart does not expose /api/).
    let api = replicas[1].base();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let event_keys: Vec<String> = (0..scale.subscriptions)
        .map(|i| format!("longpoll.event.cluster.{run_id}.{i}"))
        .collect();
    let subscriptions = subscribe_all(&http, &api, &event_keys).await;
    for (_, uri) in &subscriptions {
        assert_eq!(uri, &proxy.uri(), "the API hands out the chart's publicUrl");
    }

    // The clients, through the proxy.
    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    // The rounds published so far, for the clients that wait for two before polling again.
    let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = JoinSet::new();
    for (i, (key, uri)) in subscriptions.iter().enumerate() {
        let client = Client {
            index: i,
            key: key.clone(),
            uri: uri.clone(),
            expected: scale.events,
            request_timeout: proxy.render.read_timeout() + Duration::from_secs(5),
            trace_len: 64,
            // Every other subscription takes several messages per answer: each scenario
            // proves both kinds of answer.
            max: (i % 2 == 1).then_some(CLIENT_MAX),
            // Those pages are slow to show a message: two rounds' events wait meanwhile.
            rounds: (i % 2 == 1).then(|| rounds.clone()),
        };
        clients.spawn(client.run(http.clone(), progress.clone(), stop.clone(), started));
    }
    let browser = if spec.browser {
        let keys: Vec<String> = (0..scale.browser_clients)
            .map(|i| format!("longpoll.event.cluster.{run_id}.browser.{i}"))
            .collect();
        let subs = subscribe_all(&http, &api, &keys).await;
        Some((keys, subs))
    } else {
        None
    };
    let browser_task = browser.as_ref().map(|(_, subs)| {
        let subs = subs.clone();
        let uri = proxy.uri();
        let events = scale.events;
        let dir = dir.clone();
        let limit = scale.settle + Duration::from_secs(120);
        tokio::spawn(async move { crate::browser::run(&uri, &subs, events, &dir, limit).await })
    });

    // The metrics of every replica, every 250 ms (a killed replica keeps its last scrape).
    let replicas: Replicas = Arc::new(tokio::sync::Mutex::new(replicas));
    let book = Arc::new(MetricsBook::default());
    let scraper = {
        let (replicas, book, http, stop) =
            (replicas.clone(), book.clone(), http.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                {
                    let rs = replicas.lock().await;
                    for r in rs.iter().filter(|r| r.is_running()) {
                        book.scrape(&http, r).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // The publisher: rounds of one event per subscription, paced; the fault halfway.
    let mut all_keys: Vec<String> = event_keys.clone();
    if let Some((keys, _)) = &browser {
        all_keys.extend(keys.iter().cloned());
    }
    let half = scale.events / 2;
    let mut publish_retries = 0;
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let _broker_guard = (spec.fault == Fault::BrokerRestart).then_some(BrokerRestartGuard);
    for round in 1..=scale.events {
        publish_retries += publish_round(&http, &api, &all_keys, round, scale).await;
        rounds.store(round, std::sync::atomic::Ordering::Relaxed);
        if round == half {
            let note = fault(
                &spec,
                scale,
                &replicas,
                &mut proxy,
                &book,
                &http,
                &progress,
                subscriptions.len() as u64,
                &env,
                &broker,
                &upstream_of,
                &mut failures,
            )
            .await;
            notes.extend(note);
        }
        tokio::time::sleep(scale.round_gap).await;
    }

    // Every client complete, or the deadline.
    let expected_clients = subscriptions.len() as u64;
    let deadline = Instant::now() + scale.settle;
    while progress.complete.load(std::sync::atomic::Ordering::Relaxed) < expected_clients
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser_outcome = match browser_task {
        Some(t) => Some(t.await.expect("browser task")),
        None => None,
    };
    {
        let rs = replicas.lock().await;
        for r in rs.iter().filter(|r| r.is_running()) {
            book.scrape(&http, r).await;
        }
    }
    stop.cancel();
    let _ = scraper.await;
    let mut outcomes: Vec<ClientOutcome> = Vec::new();
    while let Some(o) = clients.join_next().await {
        outcomes.push(o.expect("client task"));
    }
    outcomes.sort_by_key(|o| o.index);
    let wall = started.elapsed();

    // Clean up the queues (they would expire on their own after subscriptionExpiry).
    let mut keys: Vec<String> = subscriptions.iter().map(|(k, _)| k.clone()).collect();
    if let Some((_, subs)) = &browser {
        keys.extend(subs.iter().map(|(k, _)| k.clone()));
    }
    unsubscribe_all(&http, &api, &keys).await;

    let mut outcome = judge(
        spec,
        scale,
        &outcomes,
        book.counters(),
        proxy.next_upstream_retries(),
        hop.as_ref().map_or(0, |h| h.cut()),
        publish_retries,
        browser_outcome,
        wall,
        &dir,
    );
    outcome.failures.splice(0..0, failures);
    outcome.notes.splice(0..0, notes);
    drop(proxy);
    drop(hop);
    let mut rs = replicas.lock().await;
    rs.clear(); // kill_on_drop
    outcome
}

/// What the proxy's upstream names for each replica: the fault hop stands for r0 in f.
struct Upstreams {
    fault: Fault,
    hop_port: u16,
}

impl Upstreams {
    fn of(&self, r: &Replica, i: usize) -> String {
        if i == 0 && matches!(self.fault, Fault::DropResponses(_)) {
            format!("127.0.0.1:{}", self.hop_port)
        } else {
            r.addr()
        }
    }
}

/// Performs the scenario's fault; returns notes for the report.
#[allow(clippy::too_many_arguments)]
async fn fault(
    spec: &Spec,
    scale: &Scale,
    replicas: &Replicas,
    proxy: &mut Proxy,
    book: &MetricsBook,
    http: &reqwest::Client,
    progress: &Progress,
    clients: u64,
    env: &std::collections::BTreeMap<String, String>,
    broker: &str,
    upstream_of: &Upstreams,
    failures: &mut Vec<String>,
) -> Vec<String> {
    let mut notes = Vec::new();
    match spec.fault {
        Fault::None | Fault::DropResponses(_) => {}
        Fault::Kill => {
            let mut rs = replicas.lock().await;
            book.scrape(http, &rs[0]).await;
            rs[0].sigkill().await;
            drop(rs);
            tokio::time::sleep(scale.down_for).await;
            let mut rs = replicas.lock().await;
            rs[0].start(env, broker).await;
            notes.push(format!(
                "r0 SIGKILLed, started again on the same ports after {:?}",
                scale.down_for
            ));
        }
        Fault::Term => {
            let drain = proxy.render.drain_timeout();
            let rs = replicas.lock().await;
            book.scrape(http, &rs[0]).await;
            let t = Instant::now();
            rs[0].sigterm();
            drop(rs);
            // The admin listener outlives the public one: scrape while it drains.
            let exit = loop {
                let mut rs = replicas.lock().await;
                book.scrape(http, &rs[0]).await;
                match tokio::time::timeout(Duration::from_millis(100), async {
                    rs[0].wait_exit(drain + Duration::from_secs(10)).await
                })
                .await
                {
                    Ok(status) => break status,
                    Err(_) => {
                        if t.elapsed() > drain + Duration::from_secs(10) {
                            panic!("r0 did not exit within the drain window + 10 s");
                        }
                    }
                }
            };
            if !exit.success() {
                failures.push(format!("r0 exited with {exit} after SIGTERM (want 0)"));
            }
            notes.push(format!(
                "r0 SIGTERMed, exited {} after {:?}; then removed from {}",
                exit.code().map_or("by signal".into(), |c| c.to_string()),
                t.elapsed(),
                proxy.kind.name()
            ));
            let rs = replicas.lock().await;
            let servers: Vec<String> = rs
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, r)| upstream_of.of(r, i))
                .collect();
            drop(rs);
            proxy.set_servers(&servers).await;
        }
        Fault::BrokerRestart => {
            // Everything published so far is delivered (the answers may stay unacked:
            // the client has them), so the restart loses no message the contract covers:
            // events are published non-persistent, and a message still *in the queue*
            // when RabbitMQ stops is gone with it.
            let want = scale.events / 2 * clients;
            let limit = Instant::now() + Duration::from_secs(60);
            while progress
                .delivered
                .load(std::sync::atomic::Ordering::Relaxed)
                < want
            {
                assert!(
                    Instant::now() < limit,
                    "the first half was not delivered within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let t = Instant::now();
            rabbitmqctl(&["stop_app"]).await;
            tokio::time::sleep(scale.down_for).await;
            rabbitmqctl(&["start_app"]).await;
            let rs = replicas.lock().await;
            for r in rs.iter().filter(|r| r.is_running()) {
                r.wait_ready(Duration::from_secs(60)).await;
            }
            notes.push(format!(
                "RabbitMQ stopped with every published event delivered, started again; \
                 replicas ready {:?} after the stop",
                t.elapsed()
            ));
        }
        Fault::ScaleOut => {
            let mut rs = replicas.lock().await;
            rs[2].start(env, broker).await;
            rs[2].wait_ready(Duration::from_secs(30)).await;
            let servers: Vec<String> = rs
                .iter()
                .enumerate()
                .map(|(i, r)| upstream_of.of(r, i))
                .collect();
            drop(rs);
            proxy.set_servers(&servers).await;
            notes.push(format!(
                "r2 started, {} reloaded with 3 servers",
                proxy.kind.name()
            ));
        }
    }
    notes
}

/// The drift check on the written file: the directives that carry the sequence rules are in
/// the generated configuration exactly as the chart's annotations say (hashing on uuid, and
/// the read timeout above the poll timeout).
fn check_conf_matches_render(kind: ProxyKind, render: &crate::topology::Render) {
    let conf = std::fs::read_to_string(&render.conf).expect("the generated configuration");
    let has = |line: &str| conf.lines().any(|l| l.trim() == line);
    let read = render.read_timeout_seconds;
    match kind {
        ProxyKind::Nginx => {
            assert_eq!(
                has("hash $arg_uuid consistent;"),
                render.hash_by.is_some(),
                "nginx.conf hashes on $arg_uuid exactly when the chart does"
            );
            assert!(
                has(&format!("proxy_read_timeout {read}s;")),
                "nginx.conf's read timeout"
            );
        }
        ProxyKind::Haproxy => {
            assert_eq!(
                has("balance url_param uuid") && has("hash-type consistent"),
                render.hash_by.is_some(),
                "haproxy.cfg hashes on the uuid URL parameter, consistently, exactly when the chart does"
            );
            assert!(
                has(&format!("timeout server {read}s")),
                "haproxy.cfg's server timeout"
            );
            assert!(
                has(&format!("timeout client {read}s")),
                "haproxy.cfg's client timeout"
            );
        }
    }
}

async fn subscribe_all(
    http: &reqwest::Client,
    api: &str,
    event_keys: &[String],
) -> Vec<(String, String)> {
    let futures = event_keys.iter().cloned().map(|ek| {
        let http = http.clone();
        let url = format!("{api}/api/v1/subscriptions");
        async move {
            let r = http
                .post(url)
                .bearer_auth(TOKEN)
                .json(&json!({ "event_keys": [ek] }))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("subscribe");
            assert_eq!(r.status(), 201, "subscribe");
            let body: Value = r.json().await.unwrap();
            (
                body["key"].as_str().unwrap().to_owned(),
                body["uri"].as_str().unwrap().to_owned(),
            )
        }
    });
    let subs: Vec<_> = futures_util::stream::iter(futures)
        .buffered(32)
        .collect()
        .await;
    subs
}

async fn unsubscribe_all(http: &reqwest::Client, api: &str, keys: &[String]) {
    let urls: Vec<String> = keys
        .iter()
        .map(|k| format!("{api}/api/v1/subscriptions/{k}"))
        .collect();
    let futures = urls.into_iter().map(|url| {
        let http = http.clone();
        async move {
            let _ = http
                .delete(url)
                .bearer_auth(TOKEN)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
        }
    });
    futures_util::stream::iter(futures)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// Publishes event `round` to every key; returns how many publishes had to be retried.
async fn publish_round(
    http: &reqwest::Client,
    api: &str,
    keys: &[String],
    round: u64,
    scale: &Scale,
) -> u64 {
    let futures = keys.iter().cloned().enumerate().map(|(i, key)| {
        let http = http.clone();
        let url = format!("{api}/api/v1/events/{key}");
        async move {
            let mut retries = 0;
            loop {
                let r = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(&json!({ "n": round, "sub": i }))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => return retries,
                    other => {
                        retries += 1;
                        assert!(
                            retries <= 20,
                            "publishing event {round} to {key} kept failing: {other:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        }
    });
    futures_util::stream::iter(futures)
        .buffer_unordered(scale.publish_concurrency)
        .collect::<Vec<u64>>()
        .await
        .into_iter()
        .sum()
}

#[allow(clippy::too_many_arguments)]
fn judge(
    spec: Spec,
    scale: &Scale,
    clients: &[ClientOutcome],
    gateway: GatewayCounters,
    proxy_retries: u64,
    cut: u64,
    publish_retries: u64,
    browser: Option<crate::browser::BrowserOutcome>,
    wall: Duration,
    dir: &Path,
) -> Outcome {
    let n = scale.events;
    let mut failures = Vec::new();
    let mut evidence = String::new();
    let (mut delivered, mut lost, mut dup_shown, mut out_of_order, mut dropped) = (0, 0, 0, 0, 0);
    let mut retries = RetryCounts::default();
    let mut several = (0, 0);
    for c in clients {
        retries.add(&c.retries);
        dropped += c.duplicates_dropped;
        several.0 += c.several.0;
        several.1 += c.several.1;
        let mut seen = std::collections::HashSet::new();
        let mut dups = 0;
        for e in &c.events {
            if !seen.insert(*e) {
                dups += 1;
            }
        }
        let got = (1..=n).filter(|e| seen.contains(e)).count() as u64;
        delivered += got;
        lost += n - got;
        dup_shown += dups;
        let in_order = c.events.windows(2).all(|w| w[0] < w[1]);
        if !in_order {
            out_of_order += 1;
        }
        let bad = got < n || dups > 0 || c.stopped.is_some() || (!in_order && spec.strict_order);
        if bad || !in_order {
            evidence.push_str(&format!(
                "client {} {}: events {:?}, stopped {:?}, retries {:?}\n",
                c.index, c.key, c.events, c.stopped, c.retries
            ));
            for t in &c.trace {
                evidence.push_str(&format!(
                    "  {:>8.3}s seq {:>3} {:>3} {:<24} event {:>3} via [{}] {}\n",
                    t.at.as_secs_f64(),
                    t.sequence,
                    t.status,
                    t.message_id,
                    t.event,
                    t.upstream,
                    t.note
                ));
            }
        }
        if let Some(why) = &c.stopped {
            failures.push(format!("client {} stopped: {why}", c.index));
        }
    }
    let events = n * clients.len() as u64;
    if lost > 0 {
        failures.push(format!("{lost} of {events} events lost"));
    }
    if dup_shown > 0 {
        failures.push(format!("{dup_shown} events shown to the app twice"));
    }
    if out_of_order > 0 && spec.strict_order {
        failures.push(format!(
            "{out_of_order} subscriptions saw their events out of order"
        ));
    }
    if several.0 == 0 {
        failures.push(
            "no answer carried several messages: the path of the clients polling with max \
             was not exercised"
                .into(),
        );
    }
    if let Some(b) = &browser {
        failures.extend(b.failures.iter().map(|f| format!("browser: {f}")));
    }
    if !evidence.is_empty() {
        let path = dir.join("evidence.txt");
        let _ = std::fs::write(&path, &evidence);
        failures
            .iter_mut()
            .for_each(|f| f.push_str(&format!(" (see {})", path.display())));
    }
    Outcome {
        spec,
        events,
        delivered,
        lost,
        duplicates_shown: dup_shown,
        out_of_order,
        duplicates_dropped: dropped,
        several,
        retries,
        gateway,
        proxy_retries,
        cut,
        publish_retries,
        browser,
        wall,
        failures,
        notes: Vec::new(),
    }
}

/// The row of a scenario that panicked.
pub fn failed(spec: Spec, scale: &Scale, why: String) -> Outcome {
    Outcome {
        spec,
        events: scale.events * scale.subscriptions as u64,
        delivered: 0,
        lost: 0,
        duplicates_shown: 0,
        out_of_order: 0,
        duplicates_dropped: 0,
        several: (0, 0),
        retries: RetryCounts::default(),
        gateway: GatewayCounters::default(),
        proxy_retries: 0,
        cut: 0,
        publish_retries: 0,
        browser: None,
        wall: Duration::ZERO,
        failures: vec![format!("panicked: {why}")],
        notes: Vec::new(),
    }
}
