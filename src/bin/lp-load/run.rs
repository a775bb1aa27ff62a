//! One load run, start to end: prepare the target, hold every poll, sample the
//! processes, publish (at a rate, or in `--burst` rounds, each waited for) or
//! only hold for `--duration`, let the last deliveries arrive, and turn the
//! samples into a [`Report`]. Owns the run's order and its samples; must not
//! know how a target talks to its server (gateway.rs, nchan.rs, raw.rs do).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::BoxError;
use crate::cli::{Args, PublishVia, TargetKind};
use crate::report::{self, EventPath, Latency, Mode, Report};
use crate::stats::{self, Counters, ProcSample, percentile};
use crate::traffic::{Ctx, Pace, PublishPlan};
use crate::{gateway, nchan, raw};

/// The server a run drives.
pub enum Target {
    Gateway(gateway::Gateway),
    Nchan(nchan::Nchan),
    Raw(raw::Raw),
}

impl Target {
    pub async fn build(args: &Args) -> Result<Target, BoxError> {
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

    /// Stops what the target started and deletes what it made.
    pub async fn finish(self) {
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
    /// `--burst`: what the rounds did.
    burst: Option<BurstSamples>,
}

#[derive(Default)]
struct BurstSamples {
    rounds: u64,
    timed_out: u64,
    missing: u64,
    /// Each round's time, first publish to last delivery, in microseconds.
    round_us: Vec<u32>,
}

pub struct Run<'a> {
    pub args: &'a Args,
    pub target: &'a mut Target,
    pub ctx: Arc<Ctx>,
    pub broker_pid: Option<u32>,
    samples: Samples,
}

fn self_pid() -> Vec<u32> {
    vec![std::process::id()]
}

impl<'a> Run<'a> {
    pub fn new(
        args: &'a Args,
        target: &'a mut Target,
        ctx: Arc<Ctx>,
        broker_pid: Option<u32>,
    ) -> Run<'a> {
        Run {
            args,
            target,
            ctx,
            broker_pid,
            samples: Samples::default(),
        }
    }

    fn sample_server(&self) -> Option<ProcSample> {
        stats::sample(&self.target.server_pids())
    }

    fn sample_broker(&self) -> Option<ProcSample> {
        self.broker_pid.and_then(|p| stats::sample(&[p]))
    }

    pub async fn drive(&mut self) -> Result<(), BoxError> {
        let s = self.args.subscribers;
        self.samples.start = self.sample_server();
        self.samples.broker_start = self.sample_broker();
        eprintln!("lp-load: {} — preparing {s} subscribers", self.args.label());
        self.target.prepare(&self.ctx, s).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.samples.base = self.sample_server();
        self.samples.broker_base = self.sample_broker();

        let tasks = self.target.spawn_subscribers(&self.ctx);
        self.wait_until_held().await;
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
            self.hold(started).await;
        } else if let Some(n) = self.args.burst {
            self.publish_bursts(started, n).await;
        } else {
            self.publish(started).await;
        }
        self.samples.publish_secs = started.elapsed().as_secs_f64();
        self.samples.cpu_end = self.sample_server();
        self.samples.broker_end = self.sample_broker();
        self.samples.gen_end = stats::sample(&self_pid());
        self.samples.machine_end = stats::machine_ticks();

        // Let the last deliveries arrive (each burst round waited for its own).
        let c = &self.ctx.counters;
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        while !self.args.hold_only
            && self.args.burst.is_none()
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

    /// Waits for every poll to be held before measuring or publishing.
    async fn wait_until_held(&mut self) {
        let s = self.args.subscribers;
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
    }

    /// `--hold-only`: holds the polls for `--duration`, sampling the server's
    /// memory once a second.
    async fn hold(&mut self, started: Instant) {
        eprintln!(
            "lp-load: holding {} polls for {:?}",
            self.args.subscribers, self.args.duration
        );
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
    }

    /// Publishes for `--duration` at `--rate` (or as fast as it goes) from
    /// `--publishers` staggered publishers.
    async fn publish(&mut self, started: Instant) {
        eprintln!("lp-load: publishing for {:?}", self.args.duration);
        let until = started + self.args.duration;
        let publishers = self.args.publishers.max(1);
        let interval = (self.args.rate > 0)
            .then(|| Duration::from_secs_f64(publishers as f64 / self.args.rate as f64));
        let next = Arc::new(AtomicU64::new(0));
        let keys = self.keys();
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
                    pace: Pace::Rate {
                        interval,
                        first,
                        until,
                    },
                },
            ));
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// The keys events go to: one per subscriber (raw-pipe: its one queue).
    fn keys(&self) -> usize {
        if self.args.target == TargetKind::RawPipe {
            1
        } else {
            self.args.subscribers.max(1)
        }
    }

    /// `--burst N`: rounds of N events to every key, each published at once
    /// by `--publishers` as fast as they go and then waited for, until
    /// `--duration`. A round ends when every event published so far was
    /// delivered or given up on (the counters are the run's, not the round's:
    /// cheap, and exact while nothing is missing); it gives up once
    /// `--burst-wait` passed without a publish getting through, counts what
    /// did not arrive as missing, and the next round starts.
    async fn publish_bursts(&mut self, started: Instant, per_key: u32) {
        let until = started + self.args.duration;
        let wait = self.args.burst_wait;
        let keys = self.keys();
        // At most tokio's limit of permits (far beyond any run's S × N).
        let per_round = keys
            .saturating_mul(per_key as usize)
            .min(Semaphore::MAX_PERMITS);
        eprintln!(
            "lp-load: bursts of {per_key} events to each of {keys} subscribers for {:?}",
            self.args.duration
        );
        let permits = Arc::new(Semaphore::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let handles: Vec<JoinHandle<()>> = (0..self.args.publishers.max(1))
            .map(|_| {
                self.target.spawn_publisher(
                    &self.ctx,
                    PublishPlan {
                        next: next.clone(),
                        keys,
                        pace: Pace::Rounds {
                            permits: permits.clone(),
                            per_key,
                        },
                    },
                )
            })
            .collect();
        let c = &self.ctx.counters;
        let mut b = BurstSamples::default();
        let mut offered: u64 = 0;
        while Instant::now() < until && !self.ctx.stopped() {
            let round_started = Instant::now();
            offered += per_round as u64;
            permits.add_permits(per_round);
            let (mut tried_before, mut progress) = (0, round_started);
            loop {
                let published = Counters::get(&c.published);
                let tried = published + Counters::get(&c.publish_errors);
                let delivered = Counters::get(&c.delivered);
                if tried > tried_before {
                    (tried_before, progress) = (tried, Instant::now());
                }
                if tried >= offered && delivered + b.missing >= published {
                    break;
                }
                if progress.elapsed() >= wait || self.ctx.stopped() {
                    b.timed_out += 1;
                    b.missing += published.saturating_sub(delivered + b.missing);
                    break;
                }
                // 1 ms: a round of ~1,000 events takes tens of milliseconds.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            b.rounds += 1;
            b.round_us
                .push(u32::try_from(round_started.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        permits.close();
        // A publisher stuck in a request to a server that stopped answering
        // must not hold the run: it gets --burst-wait, then is aborted.
        for h in handles {
            let abort = h.abort_handle();
            if tokio::time::timeout(wait, h).await.is_err() {
                abort.abort();
            }
        }
        b.round_us.sort_unstable();
        self.samples.burst = Some(b);
    }

    pub fn report(&self) -> Report {
        let a = self.args;
        let sm = &self.samples;
        let c = &self.ctx.counters;
        let lat = self.ctx.latencies.sorted();
        let s = a.subscribers;
        let delivered = Counters::get(&c.delivered);
        let published = Counters::get(&c.published);
        let answers = Counters::get(&c.answers);
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
        // A raw target's server is RabbitMQ: given as the broker too, it is
        // taken off the machine's CPU once.
        let broker_is_server = self
            .broker_pid
            .is_some_and(|p| self.target.server_pids().contains(&p));
        let broker_other = if broker_is_server { None } else { broker_cpu };
        let other_cpu = machine_busy.map(|m| {
            m - server_cpu.unwrap_or(0.0) - gen_cpu.unwrap_or(0.0) - broker_other.unwrap_or(0.0)
        });
        let elapsed = sm.elapsed.max(1e-9);
        Report {
            label: a.label(),
            target: a.target,
            mode: if a.hold_only {
                Mode::Hold
            } else if a.burst.is_some() {
                Mode::Burst
            } else {
                Mode::Throughput
            },
            client: a.client,
            subscribers: if a.target == TargetKind::RawPipe {
                1
            } else {
                s
            },
            // Only the gateway's polls carry a `max`.
            max: if a.target == TargetKind::Gateway {
                a.max
            } else {
                1
            },
            offered_rate: a.rate,
            publish_via: match (a.target, a.publish_via) {
                (TargetKind::Gateway, PublishVia::Api) => EventPath::GatewayApi,
                (TargetKind::Gateway, PublishVia::Amqp) => EventPath::GatewayAmqp,
                (TargetKind::Nchan, _) => EventPath::NchanPublisher,
                _ => EventPath::Amqp,
            },
            duration_secs: a.duration.as_secs_f64(),
            published,
            delivered,
            deliveries_per_sec: delivered as f64 / elapsed,
            answers: Some(answers),
            answers_per_sec: Some(answers as f64 / elapsed),
            published_per_sec: published as f64 / sm.publish_secs.max(1e-9),
            undelivered: published.saturating_sub(delivered),
            latency_ms: Latency {
                p50: percentile(&lat, 0.50),
                p99: percentile(&lat, 0.99),
                p999: percentile(&lat, 0.999),
                max: percentile(&lat, 1.0),
                samples: lat.len(),
            },
            errors: c.errors(),
            burst: a.burst.zip(sm.burst.as_ref()).map(|(n, b)| report::Burst {
                events_per_subscriber: n,
                rounds: b.rounds,
                rounds_timed_out: b.timed_out,
                missing: b.missing,
                round_ms_p50: percentile(&b.round_us, 0.5),
                round_ms_max: percentile(&b.round_us, 1.0),
            }),
            polls_held: sm.held_seen,
            all_polls_held: sm.all_held,
            server: report::Server {
                what: self.target.server_name(),
                pids: self.target.server_pids(),
                rss_start_bytes: sm.start.map(|x| x.rss),
                rss_base_bytes: sm.base.map(|x| x.rss),
                rss_held_bytes: sm.held.map(|x| x.rss),
                rss_held_max_bytes: sm.held_max_rss,
                pss_start_bytes: sm.start.and_then(|x| x.pss),
                pss_base_bytes: sm.base.and_then(|x| x.pss),
                pss_held_bytes: sm.held.and_then(|x| x.pss),
                rss_per_held_poll_bytes: per(sm.base, sm.held, rss),
                pss_per_held_poll_bytes: per(sm.base, sm.held, pss),
                rss_per_subscriber_bytes: per(sm.start, sm.held, rss),
                pss_per_subscriber_bytes: per(sm.start, sm.held, pss),
                rss_end_bytes: sm.cpu_end.map(|x| x.rss),
                cpu_percent: server_cpu,
                cpu_us_per_delivery: per_delivery(sm.cpu_start, sm.cpu_drained),
            },
            broker: self.broker_pid.map(|pid| report::Broker {
                pid,
                rss_start_bytes: sm.broker_start.map(|x| x.rss),
                rss_base_bytes: sm.broker_base.map(|x| x.rss),
                rss_held_bytes: sm.broker_held.map(|x| x.rss),
                rss_per_held_poll_bytes: per(sm.broker_base, sm.broker_held, rss),
                cpu_percent: broker_cpu,
                cpu_us_per_delivery: per_delivery(sm.broker_cpu_start, sm.broker_drained),
            }),
            generator: report::Generator {
                cpu_percent: gen_cpu,
                cpu_us_per_delivery: per_delivery(sm.gen_start, sm.gen_drained),
                rss_bytes: sm.gen_end.map(|x| x.rss),
            },
            machine: report::Machine {
                cores: stats::cores(),
                cpu_busy_percent: machine_busy,
                other_cpu_percent: other_cpu,
            },
        }
    }
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

/// `lp-load [flags]`: one run; prints its report and writes it with `--json`.
/// Exits 130 when interrupted (SIGTERM, Ctrl-C), after the target's clean-up.
pub async fn run_once(args: Args) -> Result<(), BoxError> {
    longpoll_gateway::install_tls_provider();
    let ctx = Arc::new(Ctx::new(
        args.payload_bytes,
        args.connect_concurrency,
        args.client,
    ));
    let broker_pid = match args.broker_pid.as_deref() {
        None => None,
        Some("rabbitmq") => stats::find_rabbitmq(),
        Some(p) => Some(
            p.parse()
                .map_err(|_| format!("--broker-pid {p}: not a pid"))?,
        ),
    };
    let mut target = Target::build(&args).await?;
    let outcome = {
        let mut run = Run::new(&args, &mut target, ctx.clone(), broker_pid);
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
    println!("{}", Report::header());
    println!("{}", report.row());
    println!("{}", serde_json::to_string(&report)?);
    eprintln!("{}", report.machine_line());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
