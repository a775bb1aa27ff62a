//! A fault-injecting hop between nginx and one replica: an HTTP/1.1-aware TCP proxy
//! that lets requests through, reads each answer the gateway wrote in full, and for some
//! of the 200 answers that carry a message closes the connection instead of passing the
//! answer on — the message was handed out by the gateway and never reached the client.
//!
//! Two ways to lose an answer, which nginx treats differently:
//! - [`Cut::AfterHeaders`]: the status line and headers go through, then the connection is
//!   reset in the middle of the body. nginx has already sent the header downstream, so it
//!   cannot try another server; the client sees a broken answer and retries itself.
//! - [`Cut::BeforeHeaders`]: nothing goes through. nginx sees "upstream prematurely closed
//!   connection" before the header and, under `proxy_next_upstream error`, retries the
//!   request on the next server (plain nginx `hash ... consistent`; ingress-nginx's hash
//!   balancer would pick the same pod again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    AfterHeaders,
    BeforeHeaders,
}

#[derive(Debug, Default)]
pub struct HopCounters {
    /// Answers passed on whole.
    pub forwarded: AtomicU64,
    /// 200 answers with a message that were cut.
    pub cut: AtomicU64,
}

pub struct FaultHop {
    pub counters: Arc<HopCounters>,
    tasks: JoinSet<()>,
}

impl FaultHop {
    /// Listens on `listen` (a fixed port nginx's upstream names) and forwards to `target`,
    /// cutting every `every`-th message answer.
    pub async fn start(listen: SocketAddr, target: SocketAddr, every: u64, cut: Cut) -> Self {
        let listener = TcpListener::bind(listen).await.expect("bind the fault hop");
        let counters = Arc::new(HopCounters::default());
        let answers = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        {
            let counters = counters.clone();
            tasks.spawn(async move {
                let mut links = JoinSet::new();
                while let Ok((inbound, _)) = listener.accept().await {
                    let (counters, answers) = (counters.clone(), answers.clone());
                    links.spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(target).await {
                            link(inbound, outbound, counters, answers, every, cut).await;
                        }
                    });
                    while links.try_join_next().is_some() {}
                }
            });
        }
        FaultHop { counters, tasks }
    }

    pub fn cut(&self) -> u64 {
        self.counters.cut.load(Ordering::Relaxed)
    }
}

impl Drop for FaultHop {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn link(
    inbound: TcpStream,
    outbound: TcpStream,
    counters: Arc<HopCounters>,
    answers: Arc<AtomicU64>,
    every: u64,
    cut: Cut,
) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    // Requests go through untouched.
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
        let _ = out_write.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // One answer: the head, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break Some(i + 4);
            }
            if !fill(&mut out_read, &mut buf).await {
                break None;
            }
        };
        let Some(head_end) = head_end else {
            // The gateway closed (or the link broke): pass on what is left and stop.
            let _ = in_write.write_all(&buf).await;
            break;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: Option<usize> = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok());
        let Some(length) = length else {
            // Not a fixed-length answer (never the case for the gateway's polls):
            // stop inspecting and copy the rest through.
            let _ = in_write.write_all(&buf).await;
            let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
            break;
        };
        while buf.len() < head_end + length {
            if !fill(&mut out_read, &mut buf).await {
                break;
            }
        }
        let end = (head_end + length).min(buf.len());
        let is_message = status == 200 && head.contains("\r\nx-longpoll-message-id:");
        if is_message && answers.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
            counters.cut.fetch_add(1, Ordering::Relaxed);
            if cut == Cut::AfterHeaders {
                let _ = in_write.write_all(&buf[..head_end]).await;
                let _ = in_write
                    .write_all(&buf[head_end..head_end + length / 2])
                    .await;
                let _ = in_write.flush().await;
            }
            // Close both sides: the gateway's write succeeded, the answer is gone.
            break;
        }
        if in_write.write_all(&buf[..end]).await.is_err() {
            break;
        }
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
        buf.drain(..end);
    }
    // The request-copying task owns the other halves: with it gone and `in_write` dropped,
    // both connections are closed.
    upstream.abort();
    let _ = upstream.await;
    drop(in_write);
}

async fn fill(r: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match r.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
