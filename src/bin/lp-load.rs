//! `lp-load`: a load generator for longpoll-gateway.
//!
//! S subscribers, each with its own subscription, follow the contract's client
//! rules (same sequence on retry, next only after an answer, re-poll at once on
//! 408/504, back off on 5xx and network errors, drop duplicate message ids).
//! A publisher emits events through the management API, each carrying its send
//! time; subscribers record publish-to-response latency. The server's resident
//! memory and CPU are read from `/proc/{pid}`.
//!
//! ```text
//! lp-load --gateway http://127.0.0.1:8080 --admin http://127.0.0.1:9090 \
//!         --api-token T --subscribers 1000 --duration 20s --pid $(pidof longpoll-gateway)
//! ```

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "lp-load", about = "Load generator for longpoll-gateway")]
struct Args {
    /// The gateway's public base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The gateway's admin base URL (for /metrics).
    #[arg(long)]
    admin: Option<String>,
    /// Management API token.
    #[arg(long, env = "LONGPOLL_API_TOKEN")]
    api_token: String,
    /// Subscribers, each with its own subscription.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = longpoll_gateway::config::parse_duration)]
    duration: Duration,
    /// Events per second offered in total (0 = as fast as the publisher goes).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Concurrent publish requests.
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Approximate size of each event's JSON body.
    #[arg(long, default_value_t = 250)]
    payload_bytes: usize,
    /// Server process to read memory and CPU from.
    #[arg(long)]
    pid: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A label for the report (e.g. "gateway-rabbitmq").
    #[arg(long, default_value = "gateway")]
    label: String,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    timeouts_408: AtomicU64,
    unavailable_503: AtomicU64,
    conflicts_409: AtomicU64,
    gone_404: AtomicU64,
    network_errors: AtomicU64,
    other_errors: AtomicU64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Resident memory (bytes) and CPU time (seconds) of a process, from /proc.
fn proc_sample(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((rss_kb * 1024, (utime + stime) / 100.0))
}

async fn metric(client: &reqwest::Client, admin: &Option<String>, name: &str) -> Option<f64> {
    let admin = admin.as_ref()?;
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

/// One subscriber following the client rules until `stop`.
async fn subscriber(
    client: reqwest::Client,
    url: String,
    key: String,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    latencies: Arc<std::sync::Mutex<Vec<u32>>>,
) {
    let mut sequence: u64 = 1;
    let mut seen: HashSet<String> = HashSet::new();
    let mut seen_order: VecDeque<String> = VecDeque::new();
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let sent = client
            .get(&url)
            .query(&[("uuid", key.as_str()), ("sequence", &sequence.to_string())])
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(_) => {
                counters.network_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let id = header("x-longpoll-message-id");
        let named_sequence = header("x-longpoll-sequence").and_then(|s| s.parse::<u64>().ok());
        let retry_after = header("retry-after").and_then(|s| s.parse::<u64>().ok());
        match status {
            200 | 400 => {
                let body = response.bytes().await.unwrap_or_default();
                let received = now_us();
                backoff = Duration::from_millis(50);
                sequence += 1;
                let id = id.unwrap_or_default();
                if !seen.insert(id.clone()) {
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                seen_order.push_back(id);
                if seen_order.len() > 1000
                    && let Some(old) = seen_order.pop_front()
                {
                    seen.remove(&old);
                }
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                if let Ok(v) = serde_json::from_slice::<Value>(&body)
                    && let Some(sent_at) = v["sent_at_us"].as_u64()
                {
                    let micros = received.saturating_sub(sent_at).min(u32::MAX as u64) as u32;
                    if let Ok(mut l) = latencies.lock() {
                        l.push(micros);
                    }
                }
            }
            408 | 504 => {
                counters.timeouts_408.fetch_add(1, Ordering::Relaxed);
            }
            404 => {
                counters.gone_404.fetch_add(1, Ordering::Relaxed);
                break;
            }
            409 => {
                counters.conflicts_409.fetch_add(1, Ordering::Relaxed);
                match named_sequence {
                    Some(last) => sequence = last + 1,
                    None => break, // superseded
                }
            }
            503 => {
                counters.unavailable_503.fetch_add(1, Ordering::Relaxed);
                let wait = retry_after.map(Duration::from_secs).unwrap_or(backoff);
                tokio::time::sleep(wait.max(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            _ => {
                counters.other_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    longpoll_gateway::install_tls_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(600))
        .build()?;
    let base = args.gateway.trim_end_matches('/').to_owned();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let event_key = |i: usize| format!("lpload.{}.{i}", &run[..12]);

    // Subscriptions.
    eprintln!("lp-load: creating {} subscriptions", args.subscribers);
    let mut keys = Vec::with_capacity(args.subscribers);
    let mut uri = format!("{base}/");
    for chunk in (0..args.subscribers).collect::<Vec<_>>().chunks(32) {
        let batch = chunk.iter().map(|&i| {
            let client = client.clone();
            let url = format!("{base}/api/v1/subscriptions");
            let token = args.api_token.clone();
            let key = event_key(i);
            async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({ "event_keys": [key] }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<Value>()
                    .await
            }
        });
        for result in futures_util::future::join_all(batch).await {
            let v = result?;
            keys.push(v["key"].as_str().unwrap_or_default().to_owned());
            if let Some(u) = v["uri"].as_str() {
                uri = u.to_owned();
            }
        }
    }
    // The uri handed out names the public host; keep the address we were given.
    let poll_url = if uri.starts_with(&base) {
        uri
    } else {
        format!("{base}/")
    };

    let rss_base = args.pid.and_then(proc_sample);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let latencies: Arc<std::sync::Mutex<Vec<u32>>> = Arc::default();
    let mut tasks = Vec::new();
    for key in &keys {
        tasks.push(tokio::spawn(subscriber(
            client.clone(),
            poll_url.clone(),
            key.clone(),
            stop.clone(),
            counters.clone(),
            latencies.clone(),
        )));
    }
    // Wait for every poll to be held (the gateway says so) before measuring memory.
    let hold_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < hold_deadline {
        match metric(&client, &args.admin, "longpoll_polls_held").await {
            Some(held) if held as usize >= args.subscribers => break,
            None if args.admin.is_none() => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_held = args.pid.and_then(proc_sample);

    // Publishing.
    eprintln!("lp-load: publishing for {:?}", args.duration);
    let pad = "x".repeat(args.payload_bytes.saturating_sub(90));
    let started = Instant::now();
    let cpu_start = args.pid.and_then(proc_sample);
    let publish_until = started + args.duration;
    let next_index = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    let per_publisher_interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.publishers as f64 / args.rate as f64));
    for _ in 0..args.publishers {
        let (client, counters, next_index) = (client.clone(), counters.clone(), next_index.clone());
        let (base, token, pad) = (base.clone(), args.api_token.clone(), pad.clone());
        let keys_len = keys.len();
        let run = run.clone();
        publishers.push(tokio::spawn(async move {
            let mut tick = per_publisher_interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while Instant::now() < publish_until {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let n = next_index.fetch_add(1, Ordering::Relaxed) as usize;
                let key = format!("lpload.{}.{}", &run[..12], n % keys_len);
                let body = json!({"sent_at_us": now_us(), "n": n, "pad": pad});
                let ok = client
                    .post(format!("{base}/api/v1/events/{key}"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    counters.published.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for p in publishers {
        let _ = p.await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let cpu_end = args.pid.and_then(proc_sample);
    // Let the last deliveries arrive.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < drain_deadline
        && counters.delivered.load(Ordering::Relaxed) < counters.published.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();

    let delivered = counters.delivered.load(Ordering::Relaxed);
    let published = counters.published.load(Ordering::Relaxed);
    let per_held = match (rss_base, rss_held) {
        (Some((b, _)), Some((h, _))) => Some((h as f64 - b as f64) / args.subscribers as f64),
        _ => None,
    };
    let cpu = match (cpu_start, cpu_end) {
        (Some((_, a)), Some((_, b))) => Some((b - a) / publish_secs * 100.0),
        _ => None,
    };
    let report = json!({
        "label": args.label,
        "subscribers": args.subscribers,
        "offered_rate": args.rate,
        "published": published,
        "delivered": delivered,
        "deliveries_per_sec": delivered as f64 / elapsed,
        "published_per_sec": published as f64 / publish_secs,
        "latency_ms": {
            "p50": percentile(&lat, 0.50),
            "p99": percentile(&lat, 0.99),
            "p999": percentile(&lat, 0.999),
            "samples": lat.len(),
        },
        "errors": {
            "publish": counters.publish_errors.load(Ordering::Relaxed),
            "408": counters.timeouts_408.load(Ordering::Relaxed),
            "409": counters.conflicts_409.load(Ordering::Relaxed),
            "404": counters.gone_404.load(Ordering::Relaxed),
            "503": counters.unavailable_503.load(Ordering::Relaxed),
            "network": counters.network_errors.load(Ordering::Relaxed),
            "other": counters.other_errors.load(Ordering::Relaxed),
            "duplicates_dropped": counters.duplicates.load(Ordering::Relaxed),
        },
        "server": {
            "rss_base_bytes": rss_base.map(|s| s.0),
            "rss_held_bytes": rss_held.map(|s| s.0),
            "rss_per_held_poll_bytes": per_held,
            "rss_end_bytes": cpu_end.map(|s| s.0),
            "cpu_percent": cpu,
        },
    });
    println!(
        "{:<20} {:>6} {:>10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>12} {:>7}",
        "label",
        "subs",
        "published",
        "delivered",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "B/held poll",
        "cpu %"
    );
    println!(
        "{:<20} {:>6} {:>10} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>7}",
        args.label,
        args.subscribers,
        published,
        delivered,
        delivered as f64 / elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        per_held
            .map(|b| format!("{b:.0}"))
            .unwrap_or_else(|| "-".into()),
        cpu.map(|c| format!("{c:.0}")).unwrap_or_else(|| "-".into()),
    );
    println!("{}", serde_json::to_string(&report)?);
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
