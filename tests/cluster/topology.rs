//! The cluster under test, all on 127.0.0.1: the shared RabbitMQ, gateway replicas run as
//! processes on fixed ports (a replica started again binds the same ones, so the proxy's
//! upstream still points at it), and the ingress proxy — Debian's nginx or Debian's haproxy —
//! with a private prefix and a configuration generated from the Helm chart by
//! `scripts/cluster-nginx-conf` or `scripts/cluster-haproxy-conf`.
//!
//! Every child is killed on drop; the proxy is stopped with its workers; RabbitMQ is started
//! again by [`BrokerRestartGuard`] whatever happens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::common::process::BIN;

pub const TOKEN: &str = "cluster-test-token-0123456789";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart venv made by scripts/chart-test (and by scripts/cluster-test --prepare).
pub fn venv_python() -> PathBuf {
    root().join("target/chart-venv/bin/python")
}

/// An HTTP client for the test (plain HTTP on loopback; a pool big enough for every
/// client's held poll).
pub fn http_client() -> reqwest::Client {
    longpoll_gateway::install_tls_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()
        .expect("HTTP client")
}

/// `n` distinct free loopback ports, below the kernel's ephemeral range (32768+ on Linux):
/// a port there is never taken by an outgoing connection meanwhile, so a replica started
/// again (or nginx) finds its port free, which port 0 cannot promise.
pub fn free_ports(n: usize) -> Vec<u16> {
    use rand::Rng;
    let mut listeners = Vec::new();
    let mut attempts = 0;
    while listeners.len() < n {
        attempts += 1;
        assert!(attempts < 10_000, "no free loopback port in 20000..32000");
        let port = rand::rng().random_range(20000..32000);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Which real proxy stands for the ingress controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// Debian's nginx, configured as the F5 NGINX Ingress Controller (the chart's default)
    /// or ingress-nginx generate it.
    Nginx,
    /// Debian's haproxy, configured as the HAProxy Kubernetes Ingress Controller generates it.
    Haproxy,
}

impl ProxyKind {
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        }
    }

    /// The script that renders the chart and writes this proxy's configuration.
    fn script(self) -> &'static str {
        match self {
            ProxyKind::Nginx => "scripts/cluster-nginx-conf",
            ProxyKind::Haproxy => "scripts/cluster-haproxy-conf",
        }
    }

    /// Whether the binary is installed.
    pub fn installed(self) -> bool {
        std::process::Command::new(self.name())
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// What the configuration script rendered: the ConfigMap's environment for the replicas and
/// the Ingress annotations it translated.
#[derive(Debug, Clone, Deserialize)]
pub struct Render {
    pub env: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub hash_by: Option<String>,
    pub poll_timeout_seconds: f64,
    pub read_timeout_seconds: u64,
    pub paths: Vec<String>,
    pub conf: String,
}

impl Render {
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_seconds)
    }

    pub fn drain_timeout(&self) -> Duration {
        self.env
            .get("LONGPOLL_DRAIN_TIMEOUT")
            .and_then(|d| humantime::parse_duration(d).ok())
            .unwrap_or(Duration::from_secs(10))
    }
}

/// Runs the chart translator for `kind`; panics with its stderr when it refuses the chart
/// (an annotation it does not know, a timeout not above the poll timeout: the drift check).
pub async fn render_proxy_conf(
    kind: ProxyKind,
    prefix: &Path,
    listen: u16,
    servers: &[String],
    values: &serde_json::Value,
) -> Render {
    let mut cmd = Command::new(venv_python());
    cmd.arg(root().join(kind.script()))
        .arg("--prefix")
        .arg(prefix)
        .arg("--listen")
        .arg(format!("127.0.0.1:{listen}"))
        .arg("--values-json")
        .arg(values.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    for s in servers {
        cmd.arg("--server").arg(s);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the proxy configuration script finished in time")
        .expect("run the proxy configuration script");
    assert!(
        out.status.success(),
        "{} failed: {}",
        kind.script(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the configuration script printed its JSON")
}

/// One gateway replica: fixed ports, started and stopped as the scenario says.
pub struct Replica {
    pub name: String,
    pub public: u16,
    pub admin: u16,
    child: Option<Child>,
    log_dir: PathBuf,
    pub incarnation: u32,
}

impl Replica {
    /// A replica to be started on these ports (see [`free_ports`]).
    pub fn new(name: &str, log_dir: &Path, public: u16, admin: u16) -> Self {
        Replica {
            name: name.to_owned(),
            public,
            admin,
            child: None,
            log_dir: log_dir.to_owned(),
            incarnation: 0,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.public)
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.public)
    }

    pub fn admin_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the binary with the chart's ConfigMap as its environment (the Secret's
    /// broker URL and token as flags) and waits for `/healthz`.
    pub async fn start(&mut self, env: &BTreeMap<String, String>, broker: &str) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        self.incarnation += 1;
        let log_path = self
            .log_dir
            .join(format!("{}.{}.log", self.name, self.incarnation));
        let log = std::fs::File::create(&log_path).expect("replica log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(["--listen", &self.addr()])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin)])
            .args(["--broker", broker, "--api-token", TOKEN])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("LONGPOLL_") || k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env);
        // A prefetch window on every replica (docs/scaling.md, "A prefetch
        // window"): the scenarios hold the same with it.
        if let Ok(n) = std::env::var("LONGPOLL_CLUSTER_CONSUMER_PREFETCH") {
            cmd.args(["--consumer-prefetch", n.trim()]);
        }
        self.child = Some(cmd.spawn().expect("spawn a replica"));
        let url = format!("{}/healthz", self.admin_base());
        let http = http_client();
        let start = Instant::now();
        loop {
            // The answer must come from this process: it is still running and has
            // logged that it listens on its ports.
            if matches!(http.get(&url).send().await, Ok(r) if r.status() == 200)
                && self.child.as_mut().unwrap().try_wait().unwrap().is_none()
                && std::fs::read_to_string(&log_path)
                    .is_ok_and(|l| l.contains("longpoll-gateway listening"))
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited at start with {status}; see {}",
                    self.name,
                    self.log_dir.display()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not answer /healthz within 30 s",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for `/readyz` 200 (broker connected).
    pub async fn wait_ready(&self, limit: Duration) {
        let url = format!("{}/readyz", self.admin_base());
        let http = http_client();
        let start = Instant::now();
        loop {
            if matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{} not ready within {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGTERM: the graceful stop a scale-down sends.
    pub fn sigterm(&self) {
        let pid = self.pid().expect("running");
        signal(pid, "TERM");
    }

    /// SIGKILL: a crash. The process is reaped before returning.
    pub async fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.expect("SIGKILL");
    }

    /// Waits for the process to exit (after a SIGTERM).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {limit:?}", self.name))
            .expect("wait");
        self.child = None;
        status
    }

    /// The metrics text, or None when the replica does not answer.
    pub async fn metrics(&self, http: &reqwest::Client) -> Option<String> {
        let r = http
            .get(format!("{}/metrics", self.admin_base()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// The ingress proxy with a private prefix (never the system service).
pub struct Proxy {
    pub kind: ProxyKind,
    pub port: u16,
    pub prefix: PathBuf,
    pub render: Render,
    values: serde_json::Value,
    child: Option<Child>,
}

impl Proxy {
    /// Starts the proxy on a configuration already rendered (see [`render_proxy_conf`]).
    pub async fn start(
        kind: ProxyKind,
        prefix: &Path,
        port: u16,
        render: Render,
        values: serde_json::Value,
    ) -> Self {
        let error_log = prefix.join("error.log");
        let child = match kind {
            ProxyKind::Nginx => Command::new("nginx")
                .arg("-p")
                .arg(prefix)
                .arg("-e")
                .arg(&error_log)
                .arg("-c")
                .arg(&render.conf)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn nginx"),
            // Master-worker in the foreground: SIGUSR2 reloads, the access log is stdout.
            ProxyKind::Haproxy => Command::new("haproxy")
                .args(["-W", "-db", "-f"])
                .arg(&render.conf)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(prefix.join("access.log")).expect("access log"))
                .stderr(std::fs::File::create(&error_log).expect("error log"))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn haproxy"),
        };
        let mut proxy = Proxy {
            kind,
            port,
            prefix: prefix.to_owned(),
            render,
            values,
            child: Some(child),
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = proxy.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited with {status}: {}",
                    kind.name(),
                    std::fs::read_to_string(&error_log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} did not listen within 10 s",
                kind.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    /// The URL of the ingress path (`/longpoll/`), as the chart's publicUrl would be.
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.render.paths[0])
    }

    /// Regenerates the configuration for a new upstream list and reloads (nginx: SIGHUP;
    /// haproxy: SIGUSR2 to the master), as the controller does when the Service's endpoints
    /// change. Old workers finish the polls they hold.
    pub async fn set_servers(&mut self, servers: &[String]) {
        let render =
            render_proxy_conf(self.kind, &self.prefix, self.port, servers, &self.values).await;
        self.render = render;
        let log = self.prefix.join("error.log");
        let (signal_name, reloaded) = match self.kind {
            ProxyKind::Nginx => ("HUP", "reconfiguring"),
            ProxyKind::Haproxy => ("USR2", "Loading success"),
        };
        let before = count_in(&log, reloaded);
        signal(self.child.as_ref().unwrap().id().unwrap(), signal_name);
        let start = Instant::now();
        while count_in(&log, reloaded) == before {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} did not reload within 10 s",
                self.kind.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The new workers start right after the master logs it.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default()
    }

    /// Requests the proxy retried on another server. nginx: `$upstream_addr` lists more
    /// than one; haproxy: the retries field (`%rc`) of a request line is not 0.
    pub fn next_upstream_retries(&self) -> u64 {
        let log = self.access_log();
        let lines = log.lines();
        match self.kind {
            ProxyKind::Nginx => lines
                .filter(|l| {
                    l.split('"')
                        .nth(1)
                        .is_some_and(|addrs| addrs.contains(", "))
                })
                .count() as u64,
            // "<time> <status> <server> <retries> <ms> "<request>"" (the generated log-format);
            // the log also carries haproxy's own notices, which do not start with a time.
            ProxyKind::Haproxy => lines
                .filter_map(|l| {
                    let fields: Vec<&str> = l.split(' ').collect();
                    let is_request = fields.len() > 5
                        && fields[0].bytes().all(|b| b.is_ascii_digit())
                        && fields[1].len() == 3;
                    is_request.then(|| fields[3])
                })
                .filter(|retries| *retries != "0")
                .count() as u64,
        }
    }
}

fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Some(pid) = child.id() else {
            return;
        };
        // The workers are the master's children: note them before it goes.
        let workers: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        // Fast shutdown of master and workers; SIGKILL if it takes too long.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.start_kill();
        for w in workers {
            if Path::new(&format!("/proc/{w}")).exists() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &w.to_string()])
                    .status();
            }
        }
    }
}

/// `rabbitmqctl ARGS`, bounded.
pub async fn rabbitmqctl(args: &[&str]) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("rabbitmqctl")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("rabbitmqctl {args:?} took over 120 s"))
    .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the RabbitMQ app again when dropped, even if the scenario failed half-way.
pub struct BrokerRestartGuard;

impl Drop for BrokerRestartGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}
