//! `lp-load`: a load generator for longpoll-gateway and the baselines it is
//! compared with.
//!
//! One scenario, four targets (`--target`):
//!
//! - `gateway`: S subscribers, each with its own subscription, follow the
//!   contract's client rules (same sequence on retry, next only after an answer,
//!   re-poll at once on 408/504, back off on 5xx and network errors, drop
//!   duplicate message ids); events are published through the management API.
//! - `nchan`: the same against nginx + nchan (a private nginx on 127.0.0.1 that
//!   lp-load starts, or `--nchan-url`): one channel per subscriber, long-polled
//!   with `If-Modified-Since`/`If-None-Match` from each answer's
//!   `Last-Modified`/`Etag`; events are POSTed to an `nchan_publisher` location.
//! - `raw-consume`: what a naive gateway does per poll, straight on RabbitMQ:
//!   one queue per subscriber, and per message consume → one message → ack → cancel.
//! - `raw-pipe`: the AMQP ceiling: one queue, one consumer (prefetch 500) acking
//!   each message.
//! - `raw-queues`: the gateway's AMQP topology without HTTP: one queue per
//!   subscriber, each with one consumer (prefetch 1) kept for the whole run,
//!   acking each message — RabbitMQ's own cost and latency under the gateway.
//!
//! Every event is a ~250-byte JSON object carrying its send time (`sent_at_us`);
//! a publisher offers `--rate` events/s (0 = as fast as it goes) for `--duration`,
//! round-robin over the subscribers. The report gives deliveries/s,
//! publish-to-response latency p50/p99/p999, errors by kind, and the resident
//! memory and CPU of the server (read from `/proc`: `--pid` for the gateway,
//! nginx's master and workers for nchan, RabbitMQ's `beam.smp` for the raw
//! targets), of the generator itself and of the whole machine.
//!
//! `--hold-only` publishes nothing: it holds S polls for `--duration` and reports
//! the server's resident memory per held poll (before the polls vs with S held).
//!
//! ```text
//! lp-load --gateway http://127.0.0.1:8080 --admin http://127.0.0.1:9090 \
//!         --api-token T --subscribers 1000 --duration 20s --pid $(pidof longpoll-gateway)
//! lp-load --target nchan --subscribers 1000 --duration 20s
//! lp-load --target raw-consume --subscribers 1000 --duration 20s
//! lp-load --target raw-queues --subscribers 1000 --duration 20s --rate 5000
//! lp-load --target nchan --hold-only --subscribers 19000 --duration 10s
//! ```

mod gateway;
mod http1;
mod nchan;
mod raw;
mod stats;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use longpoll_gateway::broker::Backoff;
use stats::{Counters, Latencies, ProcSample, percentile};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// longpoll-gateway (either broker) through its HTTP API.
    Gateway,
    /// nginx + nchan, long-polling.
    Nchan,
    /// RabbitMQ, consume → one message → ack → cancel per poll.
    RawConsume,
    /// RabbitMQ, one queue, one consumer with prefetch (the AMQP ceiling).
    RawPipe,
    /// RabbitMQ, a queue per subscriber with one consumer each, kept (the gateway's topology).
    RawQueues,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Gateway => "gateway",
            TargetKind::Nchan => "nchan",
            TargetKind::RawConsume => "raw-consume",
            TargetKind::RawPipe => "raw-pipe",
            TargetKind::RawQueues => "raw-queues",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    Api,
    Amqp,
}

#[derive(Debug, Parser)]
#[command(
    name = "lp-load",
    about = "Load generator for longpoll-gateway, nchan and raw AMQP baselines"
)]
pub struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value_t = TargetKind::Gateway)]
    target: TargetKind,
    /// The gateway's public base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The gateway's admin base URL (for /metrics).
    #[arg(long)]
    admin: Option<String>,
    /// Target gateway: how events reach it — `api` (the management API) or
    /// `amqp` (published straight to RabbitMQ on --exchange, as Launchpad's
    /// application servers do and as the raw baselines are; gateway on RabbitMQ only).
    #[arg(long, value_enum, default_value_t = PublishVia::Api)]
    publish_via: PublishVia,
    /// Target gateway with --publish-via amqp: the gateway's --exchange.
    #[arg(long, default_value = "longpoll")]
    exchange: String,
    /// Management API token (target gateway).
    #[arg(long, env = "LONGPOLL_API_TOKEN")]
    api_token: Option<String>,
    /// Subscribers, each with its own subscription (channel, queue).
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// How long to publish (with --hold-only: how long to hold the polls).
    #[arg(long, default_value = "10s", value_parser = longpoll_gateway::config::parse_duration)]
    duration: Duration,
    /// Events per second offered in total (0 = as fast as the publishers go).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Concurrent publish requests (HTTP: one keep-alive connection each;
    /// AMQP: publishes awaiting their confirm).
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Approximate size of each event's JSON body as delivered.
    #[arg(long, default_value_t = 250)]
    payload_bytes: usize,
    /// Server process(es) to read memory and CPU from (repeatable). nchan: its
    /// nginx master and workers by default; raw targets: RabbitMQ's beam.smp.
    #[arg(long)]
    pid: Vec<u32>,
    /// The broker behind the server, sampled on its own: a pid, or `rabbitmq`
    /// to find RabbitMQ's beam.smp.
    #[arg(long)]
    broker_pid: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A label for the report (e.g. "gateway-rabbitmq"); default: the target.
    #[arg(long)]
    label: Option<String>,
    /// Hold S polls without publishing for --duration, to measure resident
    /// memory per held poll (gateway and nchan).
    #[arg(long)]
    hold_only: bool,
    /// Pause between "all polls held" and the memory sample.
    #[arg(long, default_value = "2s", value_parser = longpoll_gateway::config::parse_duration)]
    settle: Duration,
    /// Connections being opened at once (a ramp, so the listen backlog holds).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// RabbitMQ, for the raw targets.
    #[arg(
        long,
        env = "LONGPOLL_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,
    /// raw-consume, raw-queues: AMQP connections the subscribers' channels are spread over.
    #[arg(long, default_value_t = 4)]
    raw_connections: usize,
    /// raw-pipe: the consumer's prefetch.
    #[arg(long, default_value_t = 500)]
    raw_prefetch: u16,
    /// raw-consume: cancel the consumer before acking (no delivery can slip in
    /// between) instead of txlongpoll's ack-then-cancel.
    #[arg(long)]
    raw_cancel_first: bool,
    /// nchan: an nchan server already running (`/pub?id=`, `/sub?id=`,
    /// `/nchan_status` as lp-load's own configuration has them); default: start
    /// a private nginx.
    #[arg(long)]
    nchan_url: Option<String>,
    /// nchan: the nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// nchan: the module to load.
    #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so")]
    nchan_module: PathBuf,
    /// nchan: worker processes (default: one per core, nginx's `auto`).
    #[arg(long)]
    nchan_workers: Option<usize>,
    /// nchan: the directory for the private nginx (config, pid, logs); default:
    /// a fresh temporary directory, removed at the end.
    #[arg(long)]
    nchan_prefix: Option<PathBuf>,
    /// nchan: messages kept per channel (a subscriber further behind loses some).
    #[arg(long, default_value_t = 100)]
    nchan_buffer: usize,
    /// Threads of the generator's runtime (0 = one per core; 1 = a single
    /// thread, no cross-thread wake-ups).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// nchan: how long a long-poll is held (the gateway's --poll-timeout default).
    #[arg(long, default_value = "270s", value_parser = longpoll_gateway::config::parse_duration)]
    nchan_poll_timeout: Duration,
}

/// What the subscribers and publishers share.
pub struct Ctx {
    pub counters: Counters,
    pub latencies: Latencies,
    pub stop: AtomicBool,
    /// A fragment naming this run's keys, queues and channels.
    pub run: String,
    pub gate: Arc<Semaphore>,
    pad: String,
}

impl Ctx {
    pub fn event_key(&self, i: usize) -> String {
        format!("lpload.{}.{i}", self.run)
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// An event body. The gateway adds `"event_key"` itself (the management
    /// API does); the other targets get it from the publisher, so that every
    /// target delivers the same bytes.
    pub fn body(&self, n: u64, key_index: usize, with_event_key: bool) -> Vec<u8> {
        let mut b = format!(
            r#"{{"sent_at_us":{},"n":{n},"pad":"{}""#,
            stats::now_us(),
            self.pad
        );
        if with_event_key {
            b.push_str(&format!(r#","event_key":"{}""#, self.event_key(key_index)));
        }
        b.push('}');
        b.into_bytes()
    }
}

/// One publisher: publishes event `n` to subscriber `key_index`'s key/channel/queue.
pub trait Publish: Send + 'static {
    fn publish(&mut self, key_index: usize, n: u64) -> impl Future<Output = bool> + Send;
}

/// A publisher that POSTs each event to `{path}{event key}` on one keep-alive
/// connection (the gateway's management API, nchan's publisher location).
pub struct HttpPublisher {
    pub conn: http1::Conn,
    /// Extra header lines, each ending in "\r\n".
    pub headers: String,
    pub path: String,
    /// Whether the body carries `"event_key"` (the gateway adds it itself).
    pub with_event_key: bool,
    pub ctx: Arc<Ctx>,
}

impl Publish for HttpPublisher {
    async fn publish(&mut self, key_index: usize, n: u64) -> bool {
        let target = format!("{}{}", self.path, self.ctx.event_key(key_index));
        let body = self.ctx.body(n, key_index, self.with_event_key);
        matches!(
            self.conn.send("POST", &target, &self.headers, &body).await,
            Ok(r) if (200..300).contains(&r.status)
        )
    }
}

pub struct PublishPlan {
    pub next: Arc<AtomicU64>,
    pub keys: usize,
    pub interval: Option<Duration>,
    /// When this publisher's first tick is (publishers are staggered over one
    /// interval so that a steady rate is not offered in bursts).
    pub first: Instant,
    pub until: Instant,
}

pub async fn publish_loop<P: Publish>(mut p: P, ctx: Arc<Ctx>, plan: PublishPlan) {
    let mut tick = plan.interval.map(|i| {
        let mut t = tokio::time::interval_at(plan.first.into(), i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    while Instant::now() < plan.until && !ctx.stopped() {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
            if Instant::now() >= plan.until {
                break;
            }
        }
        let n = plan.next.fetch_add(1, Ordering::Relaxed);
        let ok = p.publish((n % plan.keys as u64) as usize, n).await;
        Counters::inc(if ok {
            &ctx.counters.published
        } else {
            &ctx.counters.publish_errors
        });
    }
}

enum Target {
    Gateway(gateway::Gateway),
    Nchan(nchan::Nchan),
    Raw(raw::Raw),
}

impl Target {
    async fn prepare(&mut self, ctx: &Arc<Ctx>, subscribers: usize) -> Result<(), BoxError> {
        match self {
            Target::Gateway(t) => t.prepare(ctx, subscribers).await,
            Target::Nchan(t) => t.prepare(ctx, subscribers).await,
            Target::Raw(t) => t.prepare(ctx, subscribers).await,
        }
    }

    fn spawn_subscribers(&self, ctx: &Arc<Ctx>) -> Vec<JoinHandle<()>> {
        match self {
            Target::Gateway(t) => t.spawn_subscribers(ctx),
            Target::Nchan(t) => t.spawn_subscribers(ctx),
            Target::Raw(t) => t.spawn_subscribers(ctx),
        }
    }

    /// How many polls (consumers) are held now, when the server can say.
    async fn held(&self) -> Option<usize> {
        match self {
            Target::Gateway(t) => t.held().await,
            Target::Nchan(t) => t.held().await,
            Target::Raw(t) => Some(t.held()),
        }
    }

    fn spawn_publisher(&self, ctx: &Arc<Ctx>, plan: PublishPlan) -> JoinHandle<()> {
        match self {
            Target::Gateway(t) => t.spawn_publisher(ctx, plan),
            Target::Nchan(t) => t.spawn_publisher(ctx, plan),
            Target::Raw(t) => t.spawn_publisher(ctx, plan),
        }
    }

    /// The processes whose memory and CPU are "the server".
    fn server_pids(&self) -> Vec<u32> {
        match self {
            Target::Gateway(t) => t.pids.clone(),
            Target::Nchan(t) => t.pids(),
            Target::Raw(t) => t.pids.clone(),
        }
    }

    fn server_name(&self) -> String {
        match self {
            Target::Gateway(_) => "the gateway (--pid)".into(),
            Target::Nchan(_) => "nginx master + workers".into(),
            Target::Raw(_) => "RabbitMQ (beam.smp)".into(),
        }
    }

    async fn finish(self) {
        match self {
            Target::Gateway(t) => t.finish().await,
            Target::Nchan(t) => t.finish().await,
            Target::Raw(t) => t.finish().await,
        }
    }
}

/// Samples taken over a run.
#[derive(Default)]
struct Samples {
    start: Option<ProcSample>,
    base: Option<ProcSample>,
    held: Option<ProcSample>,
    held_max_rss: Option<u64>,
    cpu_start: Option<ProcSample>,
    cpu_end: Option<ProcSample>,
    broker_base: Option<ProcSample>,
    broker_held: Option<ProcSample>,
    broker_start: Option<ProcSample>,
    broker_cpu_start: Option<ProcSample>,
    broker_end: Option<ProcSample>,
    gen_start: Option<ProcSample>,
    gen_end: Option<ProcSample>,
    /// After the drain: CPU per delivery counts every delivery of the run.
    cpu_drained: Option<ProcSample>,
    broker_drained: Option<ProcSample>,
    gen_drained: Option<ProcSample>,
    machine_start: Option<(u64, u64)>,
    machine_end: Option<(u64, u64)>,
    publish_secs: f64,
    elapsed: f64,
    all_held: bool,
    held_seen: Option<usize>,
}

struct Run<'a> {
    args: &'a Args,
    target: &'a mut Target,
    ctx: Arc<Ctx>,
    broker_pid: Option<u32>,
    samples: Samples,
}

fn self_pid() -> Vec<u32> {
    vec![std::process::id()]
}

impl Run<'_> {
    fn sample_server(&self) -> Option<ProcSample> {
        stats::sample(&self.target.server_pids())
    }

    fn sample_broker(&self) -> Option<ProcSample> {
        self.broker_pid.and_then(|p| stats::sample(&[p]))
    }

    async fn drive(&mut self) -> Result<(), BoxError> {
        let s = self.args.subscribers;
        self.samples.start = self.sample_server();
        self.samples.broker_start = self.sample_broker();
        eprintln!(
            "lp-load: {} — preparing {s} subscribers",
            self.target_label()
        );
        self.target.prepare(&self.ctx, s).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.samples.base = self.sample_server();
        self.samples.broker_base = self.sample_broker();

        let tasks = self.target.spawn_subscribers(&self.ctx);
        // Wait for every poll to be held before measuring or publishing.
        let deadline =
            Instant::now() + Duration::from_secs(30) + Duration::from_millis(8 * s as u64);
        let expect = if self.args.target == TargetKind::RawPipe {
            1
        } else {
            s
        };
        loop {
            let held = self.target.held().await;
            self.samples.held_seen = held;
            match held {
                Some(h) if h >= expect => {
                    self.samples.all_held = true;
                    break;
                }
                None => {
                    // The server cannot say (gateway without --admin): give it time.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    break;
                }
                _ if Instant::now() >= deadline => {
                    eprintln!("lp-load: only {held:?} of {expect} polls held; going on");
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let settle = if self.args.hold_only {
            self.args.settle
        } else {
            Duration::from_millis(500)
        };
        tokio::time::sleep(settle).await;
        self.samples.held = self.sample_server();
        self.samples.broker_held = self.sample_broker();

        let started = Instant::now();
        self.samples.cpu_start = self.sample_server();
        self.samples.broker_cpu_start = self.sample_broker();
        self.samples.gen_start = stats::sample(&self_pid());
        self.samples.machine_start = stats::machine_ticks();
        if self.args.hold_only {
            eprintln!("lp-load: holding {s} polls for {:?}", self.args.duration);
            let until = started + self.args.duration;
            let mut max_rss = self.samples.held.map(|h| h.rss);
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(1).min(until - Instant::now())).await;
                if let Some(h) = self.sample_server() {
                    max_rss = max_rss.max(Some(h.rss));
                    self.samples.held = Some(h);
                }
            }
            self.samples.held_max_rss = max_rss;
            self.samples.broker_held = self.sample_broker().or(self.samples.broker_held);
            if let Some(h) = self.target.held().await {
                self.samples.held_seen = Some(h);
            }
            self.samples.publish_secs = started.elapsed().as_secs_f64();
        } else {
            eprintln!("lp-load: publishing for {:?}", self.args.duration);
            let until = started + self.args.duration;
            let publishers = self.args.publishers.max(1);
            let interval = (self.args.rate > 0)
                .then(|| Duration::from_secs_f64(publishers as f64 / self.args.rate as f64));
            let next = Arc::new(AtomicU64::new(0));
            let keys = if self.args.target == TargetKind::RawPipe {
                1
            } else {
                s.max(1)
            };
            let mut handles = Vec::new();
            for i in 0..publishers {
                let first = started
                    + interval
                        .map(|iv| iv.mul_f64(i as f64 / publishers as f64))
                        .unwrap_or_default();
                handles.push(self.target.spawn_publisher(
                    &self.ctx,
                    PublishPlan {
                        next: next.clone(),
                        keys,
                        interval,
                        first,
                        until,
                    },
                ));
            }
            for h in handles {
                let _ = h.await;
            }
            self.samples.publish_secs = started.elapsed().as_secs_f64();
        }
        self.samples.cpu_end = self.sample_server();
        self.samples.broker_end = self.sample_broker();
        self.samples.gen_end = stats::sample(&self_pid());
        self.samples.machine_end = stats::machine_ticks();

        // Let the last deliveries arrive.
        let c = &self.ctx.counters;
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        while !self.args.hold_only
            && Instant::now() < drain_deadline
            && Counters::get(&c.delivered) < Counters::get(&c.published)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.samples.elapsed = started.elapsed().as_secs_f64();
        self.samples.cpu_drained = self.sample_server();
        self.samples.broker_drained = self.sample_broker();
        self.samples.gen_drained = stats::sample(&self_pid());
        self.ctx.stop.store(true, Ordering::Relaxed);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    }

    fn target_label(&self) -> String {
        self.args
            .label
            .clone()
            .unwrap_or_else(|| self.args.target.name().to_owned())
    }

    fn report(&self) -> Value {
        let a = self.args;
        let sm = &self.samples;
        let c = &self.ctx.counters;
        let lat = self.ctx.latencies.sorted();
        let s = a.subscribers;
        let delivered = Counters::get(&c.delivered);
        let published = Counters::get(&c.published);
        let per =
            |from: Option<ProcSample>, to: Option<ProcSample>, f: fn(ProcSample) -> Option<u64>| {
                let (from, to) = (f(from?)?, f(to?)?);
                Some((to as f64 - from as f64) / s.max(1) as f64)
            };
        let rss = |p: ProcSample| Some(p.rss);
        let pss = |p: ProcSample| p.pss;
        let cpu_pct = |a: Option<ProcSample>, b: Option<ProcSample>| {
            let (a, b) = (a?, b?);
            Some((b.cpu_secs - a.cpu_secs) / sm.publish_secs.max(1e-9) * 100.0)
        };
        let server_cpu = cpu_pct(sm.cpu_start, sm.cpu_end);
        let broker_cpu = cpu_pct(sm.broker_cpu_start, sm.broker_end);
        let gen_cpu = cpu_pct(sm.gen_start, sm.gen_end);
        // CPU microseconds per delivery, publishing and drain included: steadier
        // than deliveries/s on a machine shared with other work.
        let per_delivery = |a: Option<ProcSample>, b: Option<ProcSample>| {
            let (a, b) = (a?, b?);
            (delivered > 0).then(|| (b.cpu_secs - a.cpu_secs) * 1e6 / delivered as f64)
        };
        let machine_busy = match (sm.machine_start, sm.machine_end) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * 100.0 * stats::cores() as f64)
            }
            _ => None,
        };
        let other_cpu = machine_busy.map(|m| {
            m - server_cpu.unwrap_or(0.0) - gen_cpu.unwrap_or(0.0) - broker_cpu.unwrap_or(0.0)
        });
        let elapsed = sm.elapsed.max(1e-9);
        json!({
            "label": self.target_label(),
            "target": a.target.name(),
            "mode": if a.hold_only { "hold" } else { "throughput" },
            "subscribers": if a.target == TargetKind::RawPipe { 1 } else { s },
            "offered_rate": a.rate,
            "publish_via": match (a.target, a.publish_via) {
                (TargetKind::Gateway, PublishVia::Api) => "gateway management API",
                (TargetKind::Gateway, PublishVia::Amqp) => "AMQP, straight to RabbitMQ",
                (TargetKind::Nchan, _) => "nchan publisher location",
                _ => "AMQP",
            },
            "duration_secs": a.duration.as_secs_f64(),
            "published": published,
            "delivered": delivered,
            "deliveries_per_sec": delivered as f64 / elapsed,
            "published_per_sec": published as f64 / sm.publish_secs.max(1e-9),
            "undelivered": published.saturating_sub(delivered),
            "latency_ms": {
                "p50": percentile(&lat, 0.50),
                "p99": percentile(&lat, 0.99),
                "p999": percentile(&lat, 0.999),
                "max": percentile(&lat, 1.0),
                "samples": lat.len(),
            },
            "errors": c.errors_json(),
            "polls_held": sm.held_seen,
            "all_polls_held": sm.all_held,
            "server": {
                "what": self.target.server_name(),
                "pids": self.target.server_pids(),
                "rss_start_bytes": sm.start.map(|x| x.rss),
                "rss_base_bytes": sm.base.map(|x| x.rss),
                "rss_held_bytes": sm.held.map(|x| x.rss),
                "rss_held_max_bytes": sm.held_max_rss,
                "pss_start_bytes": sm.start.and_then(|x| x.pss),
                "pss_base_bytes": sm.base.and_then(|x| x.pss),
                "pss_held_bytes": sm.held.and_then(|x| x.pss),
                "rss_per_held_poll_bytes": per(sm.base, sm.held, rss),
                "pss_per_held_poll_bytes": per(sm.base, sm.held, pss),
                "rss_per_subscriber_bytes": per(sm.start, sm.held, rss),
                "pss_per_subscriber_bytes": per(sm.start, sm.held, pss),
                "rss_end_bytes": sm.cpu_end.map(|x| x.rss),
                "cpu_percent": server_cpu,
                "cpu_us_per_delivery": per_delivery(sm.cpu_start, sm.cpu_drained),
            },
            "broker": self.broker_pid.map(|pid| json!({
                "pid": pid,
                "rss_start_bytes": sm.broker_start.map(|x| x.rss),
                "rss_base_bytes": sm.broker_base.map(|x| x.rss),
                "rss_held_bytes": sm.broker_held.map(|x| x.rss),
                "rss_per_held_poll_bytes": per(sm.broker_base, sm.broker_held, rss),
                "cpu_percent": broker_cpu,
                "cpu_us_per_delivery": per_delivery(sm.broker_cpu_start, sm.broker_drained),
            })),
            "generator": {
                "cpu_percent": gen_cpu,
                "cpu_us_per_delivery": per_delivery(sm.gen_start, sm.gen_drained),
                "rss_bytes": sm.gen_end.map(|x| x.rss),
            },
            "machine": {
                "cores": stats::cores(),
                "cpu_busy_percent": machine_busy,
                "other_cpu_percent": other_cpu,
            },
        })
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_report(report: &Value) {
    let f = |p: &str| report.pointer(p).and_then(Value::as_f64);
    let u = |p: &str| report.pointer(p).and_then(Value::as_u64).unwrap_or(0);
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
    let per_held = f("/server/pss_per_held_poll_bytes").or(f("/server/rss_per_held_poll_bytes"));
    println!(
        "{:<20} {:>6} {:>10} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>7}",
        report["label"].as_str().unwrap_or(""),
        u("/subscribers"),
        u("/published"),
        u("/delivered"),
        f("/deliveries_per_sec").unwrap_or(0.0),
        f("/latency_ms/p50").unwrap_or(f64::NAN),
        f("/latency_ms/p99").unwrap_or(f64::NAN),
        f("/latency_ms/p999").unwrap_or(f64::NAN),
        fmt_opt(per_held, 0),
        fmt_opt(f("/server/cpu_percent"), 0),
    );
    println!("{report}");
    eprintln!(
        "lp-load: {}: generator cpu {}%, machine busy {}% of {}% (others {}%); errors {}",
        report["label"].as_str().unwrap_or(""),
        fmt_opt(f("/generator/cpu_percent"), 0),
        fmt_opt(f("/machine/cpu_busy_percent"), 0),
        u("/machine/cores") * 100,
        fmt_opt(f("/machine/other_cpu_percent"), 0),
        report["errors"],
    );
}

async fn build_target(args: &Args) -> Result<Target, BoxError> {
    if args.hold_only && !matches!(args.target, TargetKind::Gateway | TargetKind::Nchan) {
        return Err("--hold-only is for --target gateway or nchan".into());
    }
    Ok(match args.target {
        TargetKind::Gateway => Target::Gateway(gateway::Gateway::new(args)?),
        TargetKind::Nchan => Target::Nchan(nchan::Nchan::start(args).await?),
        TargetKind::RawConsume | TargetKind::RawPipe | TargetKind::RawQueues => {
            Target::Raw(raw::Raw::new(args))
        }
    })
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let mut rt = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if args.threads > 1 {
        rt.worker_threads(args.threads);
    }
    rt.enable_all().build()?.block_on(run_main(args))
}

async fn run_main(args: Args) -> Result<(), BoxError> {
    longpoll_gateway::install_tls_provider();
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    // Sized so that the delivered body is ~payload_bytes on every target (the
    // gateway adds "event_key" to what is published; the others get it from us).
    let overhead = format!(
        r#"{{"sent_at_us":1764270657000000,"n":100000,"pad":"","event_key":"lpload.{run}.100"}}"#
    )
    .len();
    let ctx = Arc::new(Ctx {
        counters: Counters::default(),
        latencies: Latencies::default(),
        stop: AtomicBool::new(false),
        run,
        gate: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
        pad: "x".repeat(args.payload_bytes.saturating_sub(overhead)),
    });
    let broker_pid = match args.broker_pid.as_deref() {
        None => None,
        Some("rabbitmq") => stats::find_rabbitmq(),
        Some(p) => Some(
            p.parse()
                .map_err(|_| format!("--broker-pid {p}: not a pid"))?,
        ),
    };
    let mut target = build_target(&args).await?;
    let outcome = {
        let mut run = Run {
            args: &args,
            target: &mut target,
            ctx: ctx.clone(),
            broker_pid,
            samples: Samples::default(),
        };
        let driven = tokio::select! {
            r = run.drive() => Some(r),
            _ = terminated() => None,
        };
        match driven {
            Some(Ok(())) => Ok(Some(run.report())),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    };
    ctx.stop.store(true, Ordering::Relaxed);
    target.finish().await;
    let Some(report) = outcome? else {
        eprintln!("lp-load: interrupted");
        std::process::exit(130);
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
