//! Target `nchan`: nginx + nchan, long-polled the way nchan's protocol says.
//!
//! lp-load starts a private nginx (its own configuration, prefix, pid file and
//! logs in a temporary directory, listening on 127.0.0.1 only) unless
//! `--nchan-url` names a running one. One channel per subscriber:
//! `GET /sub?id={channel}` is an `nchan_subscriber longpoll` location and
//! `POST /pub?id={channel}` an `nchan_publisher` one (the channel id comes from
//! the query, as the gateway's `uuid` does: no regex location on the hot path).
//! A subscriber follows the channel with `If-Modified-Since`/`If-None-Match`
//! set from the previous answer's `Last-Modified`/`Etag`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::BoxError;
use crate::cli::{Args, ClientKind};
use crate::http1::{Conn, Endpoint};
use crate::stats::{self, Counters, now_us};
use crate::traffic::{Backoff, Ctx, HttpPublisher, PublishPlan, publish_loop};

/// A private nginx with the nchan module.
struct Nginx {
    child: Child,
    prefix: PathBuf,
    conf: PathBuf,
    nginx: PathBuf,
    remove_prefix: bool,
    master: u32,
}

pub struct Nchan {
    nginx: Option<Nginx>,
    ep: Arc<Endpoint>,
    subscribers: usize,
    extra_pids: Vec<u32>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The nginx configuration lp-load runs nchan with.
pub fn config(
    prefix: &Path,
    module: &Path,
    port: u16,
    workers: Option<usize>,
    args: &Args,
) -> String {
    let p = prefix.display();
    let workers = workers.map_or_else(|| "auto".to_owned(), |n| n.to_string());
    // The machine caps open files per process; nginx gets the same cap the
    // gateway runs with, and a worker may use all of it.
    let nofile = nofile_limit();
    format!(
        r#"# lp-load's private nginx + nchan (generated; 127.0.0.1 only).
load_module {module};
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
daemon off;
master_process on;

events {{
    worker_connections {conns};
    multi_accept on;
}}

http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    client_body_buffer_size 16k;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    default_type application/octet-stream;

    nchan_message_buffer_length {buffer};
    nchan_message_timeout 300s;
    nchan_shared_memory_size 256m;

    server {{
        listen 127.0.0.1:{port} backlog=1024;

        location = /pub {{
            nchan_publisher;
            nchan_channel_id $arg_id;
        }}
        location = /sub {{
            nchan_subscriber longpoll;
            nchan_channel_id $arg_id;
            nchan_subscriber_timeout {timeout};
        }}
        location = /nchan_status {{
            nchan_stub_status;
        }}
    }}
}}
"#,
        module = module.display(),
        conns = nofile.saturating_sub(64).max(1024),
        buffer = args.nchan_buffer,
        timeout = args.nchan_poll_timeout.as_secs().max(1),
    )
}

/// The soft open-files limit of this process (what a child inherits).
fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|x| x.starts_with("Max open files"))
                .and_then(|x| x.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

impl Nginx {
    async fn start(args: &Args) -> Result<Nginx, BoxError> {
        if !args.nginx.exists() {
            return Err(format!(
                "{} not found (apt-get install -y nginx libnginx-mod-nchan)",
                args.nginx.display()
            )
            .into());
        }
        if !args.nchan_module.exists() {
            return Err(format!(
                "{} not found (apt-get install -y libnginx-mod-nchan)",
                args.nchan_module.display()
            )
            .into());
        }
        let (prefix, remove_prefix) = match &args.nchan_prefix {
            Some(p) => (p.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "lp-load-nchan-{}-{}",
                    std::process::id(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&prefix)?;
        // Workers run as an unprivileged user when the master is root.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&prefix, std::fs::Permissions::from_mode(0o755))?;
        }
        let port = free_port()?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            config(&prefix, &args.nchan_module, port, args.nchan_workers, args),
        )?;
        let error_log = prefix.join("error.log");
        let child = Command::new(&args.nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let master = child.id().ok_or("nginx exited at once")?;
        let mut nginx = Nginx {
            child,
            prefix,
            conf,
            nginx: args.nginx.clone(),
            remove_prefix,
            master,
        };
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                nginx.cleanup();
                return Err(format!("nginx exited ({status}): {log}").into());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                nginx.stop().await;
                return Err("nginx did not listen within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "lp-load: nginx + nchan (pid {master}) on {url}, prefix {}",
            nginx.prefix.display()
        );
        Ok(nginx)
    }

    fn url(&self) -> Result<String, BoxError> {
        let conf = std::fs::read_to_string(&self.conf)?;
        let port = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen 127.0.0.1:"))
            .and_then(|r| r.split(' ').next())
            .ok_or("no listen line")?;
        Ok(format!("http://127.0.0.1:{port}/"))
    }

    /// Fast shutdown (SIGTERM through `nginx -s stop`), then the master is reaped.
    async fn stop(&mut self) {
        let _ = Command::new(&self.nginx)
            .arg("-p")
            .arg(&self.prefix)
            .arg("-e")
            .arg(self.prefix.join("error.log"))
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.cleanup();
    }

    fn cleanup(&self) {
        if self.remove_prefix {
            let _ = std::fs::remove_dir_all(&self.prefix);
        }
    }
}

impl Nchan {
    pub async fn start(args: &Args) -> Result<Nchan, BoxError> {
        let (nginx, url) = match &args.nchan_url {
            Some(u) => (None, u.clone()),
            None => {
                let n = Nginx::start(args).await?;
                let url = n.url()?;
                (Some(n), url)
            }
        };
        let ep = Arc::new(Endpoint::parse(&url)?);
        Ok(Nchan {
            ep,
            nginx,
            subscribers: 0,
            extra_pids: args.pid.clone(),
        })
    }

    /// nginx's master and its workers (resolved at each sample: a worker that
    /// died is replaced by a new pid), plus any --pid.
    pub fn pids(&self) -> Vec<u32> {
        let mut roots = self.extra_pids.clone();
        if let Some(n) = &self.nginx {
            roots.push(n.master);
        }
        stats::with_children(&roots)
    }

    /// Channels are created by their first subscriber: nothing to prepare.
    pub async fn prepare(&mut self, _ctx: &Arc<Ctx>, subscribers: usize) -> Result<(), BoxError> {
        self.subscribers = subscribers;
        Ok(())
    }

    pub fn spawn_subscribers(&self, ctx: &Arc<Ctx>) -> Vec<JoinHandle<()>> {
        (0..self.subscribers)
            .map(|i| {
                let conn = ctx.conn(self.ep.clone());
                let target = format!("{}sub?id={}", self.ep.path, ctx.event_key(i));
                tokio::spawn(subscriber(conn, target, ctx.clone()))
            })
            .collect()
    }

    /// `subscribers:` of nchan_stub_status.
    pub async fn held(&self) -> Option<usize> {
        // A fresh connection per look (held() is called rarely).
        let mut conn = Conn::new(
            self.ep.clone(),
            Arc::new(tokio::sync::Semaphore::new(1)),
            ClientKind::Handwritten,
        );
        let none = conn.headers(&[]);
        let target = format!("{}nchan_status", self.ep.path);
        let r = conn
            .send(Method::GET, &target, &none, Bytes::new())
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&r.body);
        let n = text
            .lines()
            .find_map(|l| l.strip_prefix("subscribers:"))
            .and_then(|v| v.trim().parse().ok());
        Some(n.unwrap_or(0))
    }

    pub fn spawn_publisher(&self, ctx: &Arc<Ctx>, plan: PublishPlan) -> JoinHandle<()> {
        let conn = ctx.conn(self.ep.clone());
        let headers = conn.headers(&[
            ("Content-Type", "application/json"),
            ("Accept", "text/json"),
        ]);
        let p = HttpPublisher {
            conn,
            headers,
            path: format!("{}pub?id=", self.ep.path),
            with_event_key: true,
            ctx: ctx.clone(),
        };
        tokio::spawn(publish_loop(p, ctx.clone(), plan))
    }

    pub async fn finish(self) {
        if let Some(mut n) = self.nginx {
            n.stop().await;
        }
    }
}

/// One long-poll subscriber: next message by Last-Modified/Etag, until stopped.
async fn subscriber(mut conn: Conn, target: String, ctx: Arc<Ctx>) {
    let c = &ctx.counters;
    // The If-Modified-Since / If-None-Match of the next poll.
    let mut cursor = conn.headers(&[]);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while !ctx.stopped() {
        let response = match conn.send(Method::GET, &target, &cursor, Bytes::new()).await {
            Ok(r) => r,
            Err(_) => {
                Counters::inc(&c.network_errors);
                backoff.wait(None).await;
                continue;
            }
        };
        match response.status {
            200 => {
                let received = now_us();
                backoff.reset();
                if let (Some(lm), Some(etag)) =
                    (response.header("last-modified"), response.header("etag"))
                {
                    cursor = conn.headers(&[("If-Modified-Since", lm), ("If-None-Match", etag)]);
                }
                Counters::inc(&c.delivered);
                Counters::inc(&c.answers);
                ctx.latencies.record(&response.body, received);
            }
            // Timed out: ask again for the same message.
            304 | 408 => Counters::inc(&c.timeouts),
            404 | 403 | 410 => {
                Counters::inc(&c.gone_404);
                break;
            }
            409 => {
                Counters::inc(&c.conflicts_409);
                break;
            }
            503 => {
                Counters::inc(&c.unavailable_503);
                backoff.wait(None).await;
            }
            _ => {
                Counters::inc(&c.other_errors);
                backoff.wait(None).await;
            }
        }
    }
}
