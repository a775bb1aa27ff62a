//! A smoke run of the load generator: a few subscribers for a second against
//! a gateway, checking that it works and reports what it measured. No timing
//! assertions — performance is measured by `scripts/load-run` and
//! `scripts/bench-compare`, not by tests. The nchan and raw-AMQP targets get the
//! same small run (nchan only where nginx + libnginx-mod-nchan are installed).

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
}
