//! A smoke run of the load generator: a few subscribers for a second against
//! a gateway, checking that it works and reports what it measured. No timing
//! assertions — performance is measured by `scripts/load-run`, not by tests.

mod common;

use common::{Backend, TOKEN, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lp_load_drives_a_gateway_and_reports_json() {
    for backend in [Backend::Memory, Backend::Rabbit] {
        let gw = TestGateway::start(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let report_path = dir.path().join("report.json");
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lp-load"))
            .args([
                "--gateway",
                &gw.base,
                "--admin",
                &gw.admin,
                "--api-token",
                TOKEN,
                "--subscribers",
                "5",
                "--duration",
                "1s",
                "--rate",
                "50",
                "--publishers",
                "2",
                "--pid",
                &std::process::id().to_string(),
                "--json",
                report_path.to_str().unwrap(),
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        let published = report["published"].as_u64().unwrap();
        assert!(published > 0, "{report}");
        assert_eq!(report["delivered"].as_u64(), Some(published), "{report}");
        assert_eq!(report["errors"]["duplicates_dropped"], 0);
        assert!(report["latency_ms"]["samples"].as_u64().unwrap() > 0);
        assert!(report["server"]["rss_base_bytes"].as_u64().unwrap() > 0);
    }
}
