//! A smoke run of the load generator: a few subscribers for a second against
//! a gateway, checking that it works and reports what it measured. No timing
//! assertions — performance is measured by `make load` and `make bench-compare`
//! (`lp-load compare`), not by tests. The nchan and raw-AMQP targets get the
//! same small run (nchan only where nginx + libnginx-mod-nchan are installed),
//! and `--burst` (rounds of events to every subscriber, each waited for) runs
//! on the gateway (both brokers, max=1 and max=10), nchan and raw-queues.

mod common;

use common::{Backend, TOKEN, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lp_load_drives_a_gateway_and_reports_json() {
    for backend in [Backend::Memory, Backend::Rabbit] {
        let gw = TestGateway::start(backend).await;
        let report = lp_load_report(&small_run(&[
            "--gateway",
            &gw.base,
            "--admin",
            &gw.admin,
            "--api-token",
            TOKEN,
            "--pid",
            &std::process::id().to_string(),
        ]))
        .await;
        assert_delivered_everything(&report);
        assert_eq!(report["errors"]["duplicates_dropped"], 0, "{report}");
        if backend == Backend::Memory {
            // A tidy client: the run's subscriptions are deleted at its end.
            let metrics = reqwest::get(format!("{}/metrics", gw.admin))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                metrics.lines().any(|l| l == "longpoll_memory_queues 0"),
                "{metrics}"
            );
        }
    }
}

/// A small `--burst` run: 5 subscribers, rounds of 4 events to each for a
/// second from 2 publishers.
const BURST_RUN: [&str; 8] = [
    "--subscribers",
    "5",
    "--duration",
    "1s",
    "--burst",
    "4",
    "--publishers",
    "2",
];

/// [`BURST_RUN`] against the target that `target_args` name.
fn burst_run<'a>(target_args: &[&'a str]) -> Vec<&'a str> {
    BURST_RUN.iter().chain(target_args).copied().collect()
}

/// A burst run lost nothing: every round was published whole (5 × 4 events)
/// and delivered within its wait, each event once.
fn assert_bursts_delivered_everything(report: &serde_json::Value) {
    assert_eq!(report["mode"], "burst", "{report}");
    let burst = &report["burst"];
    let rounds = burst["rounds"].as_u64().unwrap();
    assert!(rounds >= 1, "{report}");
    assert_eq!(burst["events_per_subscriber"], 4, "{report}");
    assert_eq!(burst["missing"], 0, "{report}");
    assert_eq!(burst["rounds_timed_out"], 0, "{report}");
    assert!(burst["round_ms_p50"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(
        report["published"].as_u64(),
        Some(rounds * 5 * 4),
        "{report}"
    );
    assert_eq!(report["errors"]["publish"], 0, "{report}");
    assert_delivered_everything(report);
    assert_eq!(report["errors"]["duplicates_dropped"], 0, "{report}");
    assert!(
        report["deliveries_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    let answers = report["answers"].as_u64().unwrap();
    assert!(answers > 0, "{report}");
    assert!(answers <= report["delivered"].as_u64().unwrap(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lp_load_bursts_on_a_gateway_lose_nothing() {
    for backend in [Backend::Memory, Backend::Rabbit] {
        let gw = TestGateway::start(backend).await;
        for max in ["1", "10"] {
            let report = lp_load_report(&burst_run(&[
                "--gateway",
                &gw.base,
                "--admin",
                &gw.admin,
                "--api-token",
                TOKEN,
                "--max",
                max,
                "--pid",
                &std::process::id().to_string(),
            ]))
            .await;
            assert_bursts_delivered_everything(&report);
            assert_eq!(report["max"].to_string(), max, "{report}");
            if max == "1" {
                // One message per answer.
                assert_eq!(report["answers"], report["delivered"], "{report}");
            }
        }
    }
}

/// Where Debian's nginx and its nchan module live (`apt-get install -y nginx
/// libnginx-mod-nchan`, which `make test` does).
fn nchan_installed() -> bool {
    std::path::Path::new("/usr/sbin/nginx").exists()
        && std::path::Path::new("/usr/lib/nginx/modules/ngx_nchan_module.so").exists()
}

/// The small run every target gets: 5 subscribers, 50 events/s for a second
/// from 2 publishers.
const SMALL_RUN: [&str; 8] = [
    "--subscribers",
    "5",
    "--duration",
    "1s",
    "--rate",
    "50",
    "--publishers",
    "2",
];

/// [`SMALL_RUN`] against the target that `target_args` name.
fn small_run<'a>(target_args: &[&'a str]) -> Vec<&'a str> {
    SMALL_RUN.iter().chain(target_args).copied().collect()
}

/// Runs lp-load with `args` (bounded), returns its JSON report.
async fn lp_load_report(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lp-load"));
    cmd.args(args)
        .args(["--json", report_path.to_str().unwrap()])
        .env("LONGPOLL_TEST_AMQP_URL", common::amqp_url())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), cmd.output())
        .await
        .expect("lp-load finishes within 90 s")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap()
}

fn assert_delivered_everything(report: &serde_json::Value) {
    let published = report["published"].as_u64().unwrap();
    assert!(published > 0, "{report}");
    assert_eq!(report["delivered"].as_u64(), Some(published), "{report}");
    assert!(
        report["latency_ms"]["samples"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["server"]["rss_base_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lp_load_drives_nchan_and_reports_json() {
    // `make test` installs them (scripts/cluster-test --prepare); a missing module
    // fails here rather than passing a comparison that never ran.
    assert!(
        nchan_installed(),
        "nginx + libnginx-mod-nchan are not installed: run scripts/cluster-test --prepare"
    );
    let report = lp_load_report(&small_run(&["--target", "nchan", "--nchan-workers", "1"])).await;
    assert_delivered_everything(&report);
    // The private nginx: a master and its worker.
    assert!(
        report["server"]["pids"].as_array().unwrap().len() >= 2,
        "{report}"
    );

    let held = lp_load_report(&[
        "--target",
        "nchan",
        "--hold-only",
        "--subscribers",
        "5",
        "--duration",
        "1s",
        "--settle",
        "100ms",
        "--nchan-workers",
        "1",
    ])
    .await;
    assert_eq!(held["polls_held"], 5, "{held}");
    assert!(held["server"]["rss_held_bytes"].as_u64().unwrap() > 0);

    // 4 events per round are within the channel's buffer (100): none lost.
    let bursts = lp_load_report(&burst_run(&["--target", "nchan", "--nchan-workers", "1"])).await;
    assert_bursts_delivered_everything(&bursts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lp_load_drives_raw_amqp_baselines_and_reports_json() {
    // A queue per subscriber: consumed per poll, or with one consumer each kept.
    for target in ["raw-consume", "raw-queues"] {
        let report = lp_load_report(&small_run(&[
            "--target",
            target,
            "--raw-connections",
            "1",
            "--pid",
            &std::process::id().to_string(),
        ]))
        .await;
        assert_delivered_everything(&report);
        assert_eq!(report["subscribers"], 5, "{target}: {report}");
    }

    let pipe = lp_load_report(&[
        "--target",
        "raw-pipe",
        "--duration",
        "1s",
        "--rate",
        "100",
        "--publishers",
        "2",
        "--pid",
        &std::process::id().to_string(),
    ])
    .await;
    assert_delivered_everything(&pipe);

    let bursts = lp_load_report(&burst_run(&[
        "--target",
        "raw-queues",
        "--raw-connections",
        "1",
        "--broker-pid",
        "rabbitmq",
    ]))
    .await;
    assert_bursts_delivered_everything(&bursts);
    // RabbitMQ is the server and the broker: its CPU is not counted twice.
    assert_eq!(
        bursts["broker"]["pid"], bursts["server"]["pids"][0],
        "{bursts}"
    );
}

/// `lp-load compare` (what `make bench-compare` runs) with every run made small:
/// it starts and stops each server itself, leaves a report for every run of its
/// plan, and judges every target from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lp_load_compare_runs_every_server_and_judges_every_target() {
    assert!(
        nchan_installed(),
        "nginx + libnginx-mod-nchan are not installed: run scripts/ensure-nchan"
    );
    let out = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lp-load"));
    cmd.args(["compare", "--rounds", "1", "--attempts", "1"])
        .args([
            "--subscribers",
            "3",
            "--duration",
            "1s",
            "--steady-rate",
            "30",
        ])
        .args(["--hold", "10", "--hold-time", "1s"])
        .args([
            "--burst-subscribers",
            "3",
            "--burst-events",
            "3",
            "--burst-duration",
            "1s",
        ])
        .args(["--gateway-bin", env!("CARGO_BIN_EXE_longpoll-gateway")])
        .arg("--out")
        .arg(out.path())
        .env("LONGPOLL_TEST_AMQP_URL", common::amqp_url())
        .kill_on_drop(true);
    let done = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
        .await
        .expect("lp-load compare finishes within 300 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stdout}\n{stderr}");

    let servers = [
        "gateway-memory",
        "gateway-rabbitmq",
        "gateway-rabbitmq-prefetch",
        "gateway-rabbitmq-prefetch-max10",
        "gateway-rabbitmq-api",
        "nchan",
        "raw-consume",
        "raw-pipe",
        "raw-queues",
    ];
    let runs: Vec<String> = servers
        .iter()
        .map(|s| format!("full-{s}"))
        .chain(
            [
                "gateway-memory",
                "nchan",
                "gateway-rabbitmq",
                "gateway-rabbitmq-prefetch",
                "raw-pipe",
                "raw-queues",
            ]
            .iter()
            .map(|s| format!("steady-{s}")),
        )
        .chain(
            ["gateway-memory", "gateway-rabbitmq", "nchan"]
                .iter()
                .map(|s| format!("hold-{s}")),
        )
        .chain(
            [
                "gateway-rabbitmq-prefetch-max10",
                "gateway-rabbitmq-prefetch",
                "gateway-memory-max10",
                "gateway-memory",
            ]
            .iter()
            .map(|s| format!("burst-{s}")),
        )
        .collect();
    for run in &runs {
        let path = out.path().join(format!("{run}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{run}: {e}\n{stderr}"));
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        // A head-to-head's run is its median round (`full-nchan.round2`).
        assert!(
            report["label"].as_str().unwrap().starts_with(run.as_str()),
            "{report}"
        );
        // Every run RabbitMQ is behind samples RabbitMQ's CPU on its own.
        if run.contains("rabbitmq") || run.contains("raw-") {
            assert!(report["broker"]["pid"].as_u64().is_some(), "{report}");
        }
        if run.starts_with("hold-") {
            assert_eq!(report["all_polls_held"], true, "{report}");
        } else if run.starts_with("burst-") {
            // Rounds of 3 events to each of 3 subscribers, all delivered.
            assert_eq!(report["burst"]["events_per_subscriber"], 3, "{report}");
            assert_eq!(report["burst"]["missing"], 0, "{report}");
            assert!(report["delivered"].as_u64().unwrap() >= 9, "{report}");
            let max = if run.ends_with("-max10") { 10 } else { 1 };
            assert_eq!(report["max"], max, "{report}");
        } else {
            // Not everything: with 3 subscribers at full speed, nchan drops what
            // falls out of a channel's buffer.
            assert!(report["delivered"].as_u64().unwrap() > 0, "{report}");
        }
    }
    let summary = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(!summary.contains("(no report)"), "{summary}");
    // The burst table says which runs polled with max=10.
    assert!(
        summary.contains("| gateway-memory-max10 | 10 | 3 | 3 |"),
        "{summary}"
    );
    // One verdict line per target, each with a measured ratio.
    let verdicts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("   target "))
        .collect();
    assert_eq!(verdicts.len(), 20, "{stdout}");
    for line in verdicts {
        assert!(line.contains('×') && !line.contains("n/a"), "{line}");
    }
}
