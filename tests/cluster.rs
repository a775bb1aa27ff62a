//! Horizontal scaling, proven end to end: 3 gateway replicas on RabbitMQ behind two real
//! proxies configured from the Helm chart — Debian's nginx as the F5 NGINX Ingress Controller
//! generates it (scripts/cluster-nginx-conf) and Debian's haproxy as the HAProxy Kubernetes
//! Ingress Controller generates it (scripts/cluster-haproxy-conf) — with clients that follow
//! the contract's client rules, through crashes, scale-down, a RabbitMQ restart, scale-out,
//! answers lost in flight, with and without consistent hashing. Every client must get every
//! event, in order, exactly once after dropping duplicate message ids.
//!
//! `LONGPOLL_CLUSTER_SCALE=short` (the default, in `make test`) or `full`
//! (`make cluster-test`: 500 subscriptions × 20 events). `LONGPOLL_CLUSTER_ONLY=a,b` runs
//! only the scenarios with those ids (a … f2 and g-a … g-f2 through nginx, h-a … h-f2 through
//! haproxy; `LONGPOLL_CLUSTER_SKIP=f2` leaves some out);
//! `LONGPOLL_CLUSTER_SUBSCRIPTIONS` and `LONGPOLL_CLUSTER_EVENTS` override the sizes.
//! The results table goes to target/cluster/results.md; docs/scaling.md explains it.
//!
//! It restarts RabbitMQ (scenario d), so it runs on its own (the Makefile's isolated
//! binaries), as one test that runs the scenarios one after the other.

mod common;

#[path = "cluster/browser.rs"]
mod browser;
#[path = "cluster/client.rs"]
mod client;
#[path = "cluster/hop.rs"]
mod hop;
#[path = "cluster/report.rs"]
mod report;
#[path = "cluster/scenario.rs"]
mod scenario;
#[path = "cluster/topology.rs"]
mod topology;

use std::time::{Duration, Instant};

use hop::Cut;
use scenario::{Fault, Outcome, Scale, Spec};
use topology::ProxyKind;

/// Every scenario: a–f through nginx with consistent hashing (the chart's default), g = the
/// same with hashing off (round-robin), h = a–f through haproxy with consistent hashing.
fn scenarios() -> Vec<Spec> {
    let base = [
        ("a", "steady state", Fault::None),
        ("b", "r0 SIGKILLed, restarted", Fault::Kill),
        ("c", "r0 SIGTERMed (scale-down)", Fault::Term),
        ("d", "RabbitMQ restarted", Fault::BrokerRestart),
        ("e", "scale-out 2 → 3", Fault::ScaleOut),
        (
            "f",
            "answers cut mid-body",
            Fault::DropResponses(Cut::AfterHeaders),
        ),
        (
            "f2",
            "answers cut before the header",
            Fault::DropResponses(Cut::BeforeHeaders),
        ),
    ];
    let mut specs = Vec::new();
    for (proxy, hash, prefix) in [
        (ProxyKind::Nginx, true, ""),
        (ProxyKind::Nginx, false, "g"),
        (ProxyKind::Haproxy, true, "h"),
    ] {
        for (id, title, fault) in base {
            let (id, title) = match prefix {
                "" => (id.to_owned(), format!("{id}) {title}")),
                "g" => (format!("g-{id}"), format!("g/{id}) {title}, round-robin")),
                _ => (format!("h-{id}"), format!("h/{id}) {title}, haproxy")),
            };
            specs.push(Spec {
                // Round-robin sends a client's polls to every replica; so does the proxy's
                // retry on another server in f2: order is reported, not asserted
                // (docs/scaling.md, "Order").
                strict_order: hash && !id.ends_with("f2"),
                browser: proxy == ProxyKind::Nginx && hash && fault == Fault::Kill,
                id,
                title,
                fault,
                proxy,
                hash,
            });
        }
    }
    specs
}

/// Why the cluster test cannot run here (it is then skipped), or None.
async fn prerequisites() -> Option<String> {
    let proxies = [ProxyKind::Nginx, ProxyKind::Haproxy];
    if proxies.iter().any(|p| !p.installed()) || !topology::venv_python().exists() {
        // Install nginx and haproxy (Debian's packages) and make the chart venv, as make
        // cluster-test does.
        let prepare = tokio::process::Command::new(topology::root().join("scripts/cluster-test"))
            .arg("--prepare")
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(Duration::from_secs(900), prepare).await {
            Ok(Ok(s)) if s.success() => {}
            other => eprintln!("scripts/cluster-test --prepare failed: {other:?}"),
        }
    }
    if let Some(missing) = proxies.iter().find(|p| !p.installed()) {
        return Some(format!(
            "{0} is not installed and could not be installed (apt-get install {0})",
            missing.name()
        ));
    }
    assert!(
        topology::venv_python().exists(),
        "the chart venv (target/chart-venv, made by scripts/chart-test) is missing: \
         the proxy configurations are rendered from the chart with it"
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_gets_every_event_once_in_order_through_failures_and_scaling() {
    if let Some(why) = prerequisites().await {
        eprintln!("SKIPPED: the cluster test needs nginx and haproxy: {why}");
        return;
    }
    let scale = Scale::from_env();
    let list = |name: &str| -> Option<Vec<String>> {
        std::env::var(name)
            .ok()
            .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
    };
    let only = list("LONGPOLL_CLUSTER_ONLY");
    let skip = list("LONGPOLL_CLUSTER_SKIP").unwrap_or_default();
    let started = Instant::now();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for spec in scenarios() {
        if only.as_ref().is_some_and(|o| !o.contains(&spec.id)) || skip.contains(&spec.id) {
            continue;
        }
        eprintln!("cluster: {} ...", spec.title);
        let scale_for_task = scale.clone();
        let spec_for_task = spec.clone();
        // A scenario that panics (a bounded wait that ran out) is a failed row; the next
        // one still runs. Its processes die with its guards.
        let outcome =
            match tokio::spawn(async move { scenario::run(spec_for_task, &scale_for_task).await })
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    let why = match e.try_into_panic() {
                        Ok(p) => p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into()),
                        Err(e) => e.to_string(),
                    };
                    scenario::failed(spec, &scale, why)
                }
            };
        eprintln!(
            "cluster: {} — {} of {} delivered, {} lost, {:.1} s{}",
            outcome.spec.title,
            outcome.delivered,
            outcome.events,
            outcome.lost,
            outcome.wall.as_secs_f64(),
            if outcome.failures.is_empty() {
                String::new()
            } else {
                format!(" — FAILED: {}", outcome.failures.join("; "))
            }
        );
        outcomes.push(outcome);
    }
    let table = report::markdown(&scale, &outcomes, started.elapsed());
    let dir = scenario::out_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // The latest run of either size, and one file per size.
    let path = dir.join("results.md");
    std::fs::write(&path, &table).unwrap();
    std::fs::write(dir.join(format!("results-{}.md", scale.name)), &table).unwrap();
    println!("{table}\n(written to {})", path.display());
    let failures: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.failures.iter().map(|f| format!("{}: {f}", o.spec.title)))
        .collect();
    assert!(
        failures.is_empty(),
        "cluster scenarios failed:\n{}",
        failures.join("\n")
    );
}
