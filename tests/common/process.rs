//! The gateway binary run as a child process, for what only a process shows:
//! exit codes, signals, crashes, the one-line configuration errors.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_longpoll-gateway");

pub struct GatewayProcess {
    child: Child,
    pub base: String,
    pub admin: String,
    logs: Arc<Mutex<String>>,
}

impl GatewayProcess {
    /// Starts `longpoll-gateway serve` on free loopback ports with JSON logs
    /// and waits for its "listening" line.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(args)
            .env_remove("LONGPOLL_BROKER")
            .env_remove("LONGPOLL_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gateway");
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<String>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<(String, String)>();
        {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut tx = Some(tx);
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && let (Some(p), Some(a)) = (v["public"].as_str(), v["admin"].as_str())
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send((p.to_owned(), a.to_owned()));
                    }
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let (public, admin) = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("gateway printed its addresses")
            .expect("gateway started");
        GatewayProcess {
            child,
            base: format!("http://{public}"),
            admin: format!("http://{admin}"),
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub async fn sigkill(&mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "the gateway did not exit within {limit:?}; its log:\n{}",
                self.logs()
            ),
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("LONGPOLL_BROKER")
        .env_remove("LONGPOLL_API_TOKEN")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("command finished in time")
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
