//! The processes a comparison starts — a longpoll-gateway per gateway run, an
//! lp-load per run — and the machine they run on. Owns starting and stopping
//! them (SIGTERM, then a bounded wait) and the open-files limit they inherit;
//! must not read their reports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::BoxError;

/// The children running now, so that an interruption can stop them gently
/// (lp-load then stops its nginx, the gateway drains) instead of leaving them.
#[derive(Clone, Default)]
pub struct Children {
    pids: Arc<Mutex<Vec<u32>>>,
    interrupted: Arc<AtomicBool>,
}

impl Children {
    fn add(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
    }

    fn remove(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }

    /// Sends SIGTERM to every child running now; later steps see
    /// [`Children::interrupted`].
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        for pid in self.pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            terminate(*pid);
        }
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

/// SIGTERM to one of our own children, by its pid (never 0: that would be
/// our whole process group).
pub fn terminate(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) with a pid we started; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// SIGTERM, then up to `grace` for the child to exit, then SIGKILL.
async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        terminate(pid);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// A longpoll-gateway started for one run, on ports of its own.
pub struct Gateway {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:port` of its public and admin listeners.
    pub public: String,
    pub admin: String,
    children: Children,
}

/// The line the gateway logs once it listens (JSON log format).
#[derive(Deserialize)]
struct Listening {
    public: String,
    admin: String,
}

impl Gateway {
    /// Starts `bin serve` on 127.0.0.1 (ports chosen by the system), its log in
    /// `log`, and waits until it listens and says it is ready.
    pub async fn start(
        bin: &Path,
        broker: &str,
        token: &str,
        exchange: &str,
        extra: &[&str],
        log: &Path,
        children: &Children,
    ) -> Result<Gateway, BoxError> {
        let log_file = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--log-format",
                "json",
                "--api-token",
                token,
                "--broker",
                broker,
            ])
            .args(["--exchange", exchange, "--subscription-expiry", "120s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let pid = child.id().ok_or("the gateway exited at once")?;
        children.add(pid);
        let mut gateway = Gateway {
            child,
            pid,
            public: String::new(),
            admin: String::new(),
            children: children.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(l) = text
                .lines()
                .find_map(|l| serde_json::from_str::<Listening>(l).ok())
            {
                break l;
            }
            if Instant::now() >= deadline || gateway.child.try_wait()?.is_some() {
                gateway.stop().await;
                return Err(format!("the gateway did not start; see {}", log.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        gateway.public = format!("http://{}", listening.public);
        gateway.admin = format!("http://{}", listening.admin);
        // Ready: the broker connection is up (gone on at the deadline, as a
        // gateway that is not ready answers 503 and the run says so).
        let client = reqwest::Client::new();
        let ready = format!("{}/readyz", gateway.admin);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if client
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(gateway)
    }

    /// SIGTERM and a wait for the drain (the gateway exits well within it).
    pub async fn stop(mut self) {
        stop(&mut self.child, Duration::from_secs(30)).await;
        self.children.remove(self.pid);
    }
}

/// Runs `lp-load args`, its stdout and stderr to `out` and `log`; Ok when it
/// exited 0, else the end of its log.
pub async fn lp_load(
    bin: &Path,
    args: &[String],
    out: &Path,
    log: &Path,
    children: &Children,
) -> Result<(), BoxError> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out)?)
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id();
    if let Some(pid) = pid {
        children.add(pid);
    }
    let status = child.wait().await;
    if let Some(pid) = pid {
        children.remove(pid);
    }
    let status = status?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!("lp-load failed ({status}):\n{}", tail.join("\n")).into())
}

/// Raises the soft open-files limit to the hard one (every held poll is a
/// socket in the server and one in lp-load, both under the per-process
/// limit, which the children inherit) and returns it.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill and read the struct given, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            lim = raised;
        }
    }
    lim.rlim_cur
}

/// `MemAvailable` of /proc/meminfo, in KiB.
pub fn memory_available_kib() -> Option<u64> {
    meminfo_kib("MemAvailable:")
}

fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The first line a command prints (stdout, else stderr), trimmed; none when
/// it cannot run.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_owned();
    (!line.is_empty()).then_some(line)
}

/// The machine and the servers' versions, for the summary.
pub fn describe_machine(open_files: u64, nginx: &Path) -> String {
    let cores = crate::stats::cores();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = meminfo_kib("MemTotal:")
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1_048_576.0))
        .unwrap_or_else(|| "? GiB".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let rabbitmq =
        first_line("rabbitmqctl", &["-q", "version"]).unwrap_or_else(|| "unknown".into());
    let nginx = first_line(&nginx.to_string_lossy(), &["-v"])
        .map(|l| l.trim_start_matches("nginx version: ").to_owned())
        .unwrap_or_else(|| "nginx unknown".into());
    let nchan = first_line(
        "dpkg-query",
        &["-W", "-f", "${Version}", "libnginx-mod-nchan"],
    )
    .unwrap_or_else(|| "unknown".into());
    format!(
        "{cores} cores ({cpu}), {memory} RAM, kernel {kernel}, open files {open_files} per \
         process; RabbitMQ {rabbitmq}; {nginx} with nchan {nchan}"
    )
}

/// A fresh directory for one comparison's private nginx, traversable by
/// nginx's unprivileged workers; removed by [`WorkDir`]'s drop.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    pub fn new() -> Result<WorkDir, BoxError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "bench-compare.{}.{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(WorkDir(dir))
    }

    /// nginx's prefix for lp-load's `--nchan-prefix`.
    pub fn nginx_prefix(&self) -> PathBuf {
        self.0.join("nginx")
    }

    /// Stops an nginx left behind (lp-load stops its own; this is for an
    /// lp-load that was killed before it could).
    pub fn stop_leftover_nginx(&self) {
        let pid_file = self.nginx_prefix().join("nginx.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            terminate(pid);
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        self.stop_leftover_nginx();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
