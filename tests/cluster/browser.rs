//! The real `longpoll.js` in headless Chromium as more clients of a scenario: a Node
//! script (tests/cluster/browser.mjs, playwright-core from tests/browser/node_modules)
//! opens a page on the ingress, loads /longpoll.js through it and runs one `LongPoll`
//! per subscription; it prints what each received as JSON.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::topology::root;

#[derive(Debug, Clone, Default)]
pub struct BrowserOutcome {
    pub clients: usize,
    pub events: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates_shown: u64,
    pub out_of_order: u64,
    /// Set when the browser part could not run (no Node, no Chromium, no playwright-core).
    pub skipped: Option<String>,
    pub failures: Vec<String>,
}

/// Why the browser scenario cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    let pw = root().join("tests/browser/node_modules/playwright-core");
    if !pw.exists() {
        return Some(format!(
            "{} is missing (npm ci in tests/browser)",
            pw.display()
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is not installed".into());
    }
    if chromium().is_none() {
        return Some("no Chromium (/usr/bin/chromium)".into());
    }
    None
}

fn chromium() -> Option<String> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(p);
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(str::to_owned)
}

/// Runs the browser clients until each has `events` events or `limit` passes.
pub async fn run(
    uri: &str,
    subs: &[(String, String)],
    events: u64,
    dir: &Path,
    limit: Duration,
) -> BrowserOutcome {
    let mut out = BrowserOutcome {
        clients: subs.len(),
        events: events * subs.len() as u64,
        ..Default::default()
    };
    if let Some(why) = unavailable() {
        out.skipped = Some(why);
        return out;
    }
    let keys: Vec<&str> = subs.iter().map(|(k, _)| k.as_str()).collect();
    let input = serde_json::json!({
        "uri": uri,
        "keys": keys,
        "events": events,
        "limitMs": limit.as_millis() as u64,
        "chromium": chromium(),
    });
    let mut cmd = Command::new("node");
    cmd.arg(root().join("tests/cluster/browser.mjs"))
        .arg(input.to_string())
        .env("NODE_PATH", root().join("tests/browser/node_modules"))
        .kill_on_drop(true);
    let result = tokio::time::timeout(limit + Duration::from_secs(30), cmd.output()).await;
    let output = match result {
        Err(_) => {
            out.failures
                .push(format!("the browser run took over {limit:?}"));
            return out;
        }
        Ok(Err(e)) => {
            out.failures.push(format!("cannot run node: {e}"));
            return out;
        }
        Ok(Ok(o)) => o,
    };
    let _ = std::fs::write(dir.join("browser.stderr.log"), &output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let _ = std::fs::write(dir.join("browser.json"), stdout.as_bytes());
    if !output.status.success() {
        out.failures.push(format!(
            "browser.mjs exited {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
        return out;
    }
    let report: serde_json::Value = match stdout.lines().last().map(serde_json::from_str) {
        Some(Ok(v)) => v,
        _ => {
            out.failures
                .push(format!("browser.mjs printed no JSON: {stdout}"));
            return out;
        }
    };
    for (i, c) in report["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let got: Vec<u64> = c["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_u64())
            .collect();
        let mut seen = std::collections::HashSet::new();
        let dups = got.iter().filter(|e| !seen.insert(**e)).count() as u64;
        let have = (1..=events).filter(|e| seen.contains(e)).count() as u64;
        out.delivered += have;
        out.lost += events - have;
        out.duplicates_shown += dups;
        let in_order = got.windows(2).all(|w| w[0] < w[1]);
        if !in_order {
            out.out_of_order += 1;
        }
        if have < events || dups > 0 || !in_order {
            out.failures.push(format!(
                "browser client {i}: events {got:?} (errors: {})",
                c["errors"]
            ));
        }
    }
    out
}
