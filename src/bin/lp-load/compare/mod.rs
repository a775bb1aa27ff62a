//! `lp-load compare` (`make bench-compare`): longpoll-gateway, on RabbitMQ and
//! on its embedded broker, against nginx + nchan and three raw AMQP baselines,
//! all driven by lp-load with the same scenario on this machine, in one go.
//!
//! - (a) deliveries/s at full speed, S subscribers, ~250-byte events;
//! - (b) latency p50/p99/p999 at a steady offered rate;
//! - (c) resident memory per held poll with H polls held;
//! - (d) bursts: rounds of N events to every subscriber at once, each waited
//!   for (`lp-load --burst`), messages/s with `max=10` against `max=1`
//!
//! (`plan.rs` says which server runs in which phase). The head-to-head runs
//! (gateway-memory and nchan at full speed and at the steady rate, `max=10`
//! and `max=1` in bursts) alternate for `--rounds` rounds; the ratio against a target is the median of the rounds'
//! own ratios, and each server's median round stands for it in the tables. A
//! rate or latency run during which other processes used more than
//! `--other-cpu-max` % of a core runs again, up to `--attempts` times while the
//! whole comparison is younger than `--retry-budget`; the least disturbed
//! attempt is kept. Every report goes to `--out` (`NAME.json`, its stdout and
//! stderr in `NAME.out`/`NAME.log`, attempts as `NAME.tryN.*`, rounds as
//! `NAME.roundN.*`), the summary to `results.md` there, and the verdicts
//! (`targets.rs`) to stdout. Traffic stays on 127.0.0.1; every process started
//! here is stopped at the end, also on SIGTERM or Ctrl-C.
//!
//! Owns the order of the runs, their retries and rounds; must not judge
//! (targets.rs) or format (summary.rs) a figure.

mod plan;
mod procs;
mod summary;
mod targets;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::BoxError;
use crate::report::Report;
use plan::{Broker, Metric, Phase, Plan, PlanName, RunId, Setup, Step};
use procs::{Children, WorkDir};

/// Every knob also reads its `BENCH_*` environment variable (flag >
/// environment > default), as `make bench-compare` has always taken them.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// What to compare: `bench` (the targets), `load` (both brokers, full
    /// speed and a steady rate), `clients` (lp-load's HTTP/1 client against hyper's).
    #[arg(long, value_enum, default_value_t = PlanName::Bench)]
    pub plan: PlanName,
    /// Subscribers of the full-speed and steady-rate runs.
    #[arg(long, env = "BENCH_SUBSCRIBERS", default_value_t = 1000)]
    pub subscribers: usize,
    /// How long each full-speed and steady-rate run publishes.
    #[arg(long, env = "BENCH_DURATION", default_value = "15s",
          value_parser = longpoll_gateway::config::parse_duration)]
    pub duration: Duration,
    /// Events/s offered in the steady-rate runs.
    #[arg(long, env = "BENCH_STEADY_RATE", default_value_t = 5000)]
    pub steady_rate: u64,
    /// Polls held in the memory runs (capped by the open-files limit; on
    /// RabbitMQ also by a quarter of the memory available, ~40 KB each).
    #[arg(long, env = "BENCH_HOLD", default_value_t = 19000)]
    pub hold: usize,
    /// How long the memory runs hold their polls.
    #[arg(long, env = "BENCH_HOLD_TIME", default_value = "10s",
          value_parser = longpoll_gateway::config::parse_duration)]
    pub hold_time: Duration,
    /// Subscribers of the burst runs (fewer than --subscribers: a round waits
    /// for its slowest subscriber, and the phase's rounds of head-to-head
    /// must keep the whole comparison within ~15 minutes).
    #[arg(long, env = "BENCH_BURST_SUBSCRIBERS", default_value_t = 200)]
    pub burst_subscribers: usize,
    /// Events to every subscriber per burst round (lp-load's --burst).
    #[arg(long, env = "BENCH_BURST_EVENTS", default_value_t = 10)]
    pub burst_events: u32,
    /// How long each burst run goes on starting rounds.
    #[arg(long, env = "BENCH_BURST_DURATION", default_value = "8s",
          value_parser = longpoll_gateway::config::parse_duration)]
    pub burst_duration: Duration,
    /// A rate or latency run during which other processes used more CPU than
    /// this, in % of one core, is run again.
    #[arg(long, env = "BENCH_OTHER_CPU_MAX", default_value_t = 35.0)]
    pub other_cpu_max: f64,
    /// Attempts at a disturbed run, the first included.
    #[arg(long, env = "BENCH_ATTEMPTS", default_value_t = 3)]
    pub attempts: u32,
    /// No new attempt once the comparison is this old (a number is seconds).
    #[arg(long, env = "BENCH_RETRY_BUDGET", default_value = "600",
          value_parser = longpoll_gateway::config::parse_duration)]
    pub retry_budget: Duration,
    /// Rounds of each head-to-head.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 3)]
    pub rounds: usize,
    /// RabbitMQ (the shared one: nothing here restarts or reconfigures it).
    #[arg(
        long,
        env = "LONGPOLL_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,
    /// Where the reports and results.md go.
    #[arg(long, default_value = "target/bench-compare")]
    pub out: PathBuf,
    /// The gateway's binary; default: `longpoll-gateway` next to this lp-load
    /// (so `cargo run --release --bin lp-load -- compare` follows CARGO_TARGET_DIR).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// The nginx binary nchan runs in.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx: PathBuf,
    /// The nchan module.
    #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so")]
    pub nchan_module: PathBuf,
    /// Only render the summary again from the reports already in --out.
    #[arg(long)]
    pub report: bool,
}

pub fn main(args: CompareArgs) -> Result<(), BoxError> {
    // reqwest (the gateway's /readyz) needs rustls' crypto provider.
    longpoll_gateway::install_tls_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(compare(args))
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("bench-compare: {msg}");
}

async fn compare(args: CompareArgs) -> Result<(), BoxError> {
    let started = Instant::now();
    let open_files = procs::raise_open_files();
    let plan = args.plan.plan();
    let out = args.out.clone();
    let seconds_file = out.join("run-seconds");
    if !args.report {
        let bench = Bench::new(&args, &plan, open_files, started)?;
        let children = bench.children.clone();
        let mut run = Box::pin(bench.run_all());
        tokio::select! {
            r = &mut run => r?,
            () = terminated() => {
                say("interrupted: stopping what runs");
                children.interrupt();
                // lp-load stops its nginx and the gateway drains; then the work
                // directory goes with `bench`.
                let _ = tokio::time::timeout(Duration::from_secs(60), &mut run).await;
                drop(run);
                drop(bench);
                std::process::exit(130);
            }
        }
        std::fs::write(&seconds_file, started.elapsed().as_secs().to_string())?;
    }
    let elapsed_secs = std::fs::read_to_string(&seconds_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let reports = load_reports(&out)?;
    let machine = procs::describe_machine(open_files, &args.nginx);
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let summary = summary::Summary {
        plan: &plan,
        reports: &reports,
        machine: &machine,
        date: &date,
        elapsed_secs,
        rounds: args.rounds,
        other_max: args.other_cpu_max,
    };
    std::fs::write(out.join("results.md"), summary.markdown())?;
    println!();
    print!("{}", summary.verdict_lines());
    println!(
        "\nbench-compare: reports in {}/, summary in {}/results.md ({elapsed_secs} s)",
        out.display(),
        out.display()
    );
    Ok(())
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

/// Every `*.json` report in `dir`, by file stem.
fn load_reports(dir: &Path) -> Result<HashMap<String, Report>, BoxError> {
    let mut reports = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not an lp-load report: {e}", path.display()))?;
        reports.insert(stem.to_owned(), report);
    }
    Ok(reports)
}

/// Of the rounds' values (round, value), the round whose value is the median
/// (the lower one of the two middles for an even count; rounds without a
/// value left out).
pub fn median_round(values: &[(usize, Option<f64>)]) -> Option<usize> {
    let mut known: Vec<(usize, f64)> = values
        .iter()
        .filter_map(|(round, v)| Some((*round, (*v)?)))
        .collect();
    known.sort_by(|a, b| a.1.total_cmp(&b.1));
    let n = known.len();
    (n > 0).then(|| known[n.div_ceil(2) - 1].0)
}

/// One comparison in progress.
struct Bench<'a> {
    args: &'a CompareArgs,
    plan: &'a Plan,
    lp_load: PathBuf,
    gateway: PathBuf,
    token: String,
    /// Polls held in the memory runs: by the gateway and nchan, and on RabbitMQ.
    hold: usize,
    rabbitmq_hold: usize,
    started: Instant,
    work: WorkDir,
    children: Children,
}

impl<'a> Bench<'a> {
    fn new(
        args: &'a CompareArgs,
        plan: &'a Plan,
        open_files: u64,
        started: Instant,
    ) -> Result<Bench<'a>, BoxError> {
        let lp_load = std::env::current_exe()?;
        let gateway = match &args.gateway_bin {
            Some(p) => p.clone(),
            None => lp_load.with_file_name("longpoll-gateway"),
        };
        if !gateway.exists() {
            return Err(format!(
                "{} not found: build it (cargo build --release --bin longpoll-gateway) or name it with --gateway-bin",
                gateway.display()
            )
            .into());
        }
        let needs_nchan = plan
            .steps
            .iter()
            .flat_map(Step::runs)
            .any(|r| r.server.setup == Setup::Nchan);
        for needed in [&args.nginx, &args.nchan_module]
            .into_iter()
            .filter(|_| needs_nchan)
        {
            if !needed.exists() {
                return Err(format!(
                    "{} not found: scripts/ensure-nchan installs nginx and libnginx-mod-nchan",
                    needed.display()
                )
                .into());
            }
        }
        std::fs::create_dir_all(&args.out)?;
        for entry in std::fs::read_dir(&args.out)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if [".json", ".out", ".log"].iter().any(|e| name.ends_with(e)) || name == "results.md" {
                std::fs::remove_file(&path)?;
            }
        }
        let max_hold = usize::try_from(open_files.saturating_sub(1000)).unwrap_or(usize::MAX);
        let hold = if args.hold > max_hold {
            say(format!(
                "holding {max_hold} polls, not {}: open files are capped at {open_files} per process",
                args.hold
            ));
            max_hold
        } else {
            args.hold
        };
        // RabbitMQ keeps ~20 KB per queue (plus a consumer per held poll): the
        // RabbitMQ hold gets a quarter of the memory available.
        let rabbitmq_hold = procs::memory_available_kib()
            .map_or(hold, |kib| {
                usize::try_from(kib / 4 / 40).unwrap_or(usize::MAX)
            })
            .min(hold);
        Ok(Bench {
            args,
            plan,
            lp_load,
            gateway,
            token: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
            hold,
            rabbitmq_hold,
            started,
            work: WorkDir::new()?,
            children: Children::default(),
        })
    }

    fn path(&self, stem: &str, ext: &str) -> PathBuf {
        self.args.out.join(format!("{stem}.{ext}"))
    }

    fn interrupted(&self) -> Result<(), BoxError> {
        if self.children.interrupted() {
            Err("interrupted".into())
        } else {
            Ok(())
        }
    }

    async fn run_all(&self) -> Result<(), BoxError> {
        eprintln!("{}", Report::header());
        let mut phase = None;
        for step in self.plan.steps {
            if phase != Some(step.phase()) {
                phase = Some(step.phase());
                self.announce(step.phase());
            }
            match *step {
                Step::Once(run) => {
                    if let Err(e) = self.once(run, &run.to_string()).await {
                        self.interrupted()?;
                        say(format!("{run} failed: {e}"));
                    }
                }
                Step::HeadToHead {
                    phase,
                    a,
                    b,
                    median_by,
                } => {
                    let runs = [RunId::new(phase, a), RunId::new(phase, b)];
                    for round in 1..=self.args.rounds {
                        for run in runs {
                            if let Err(e) = self.once(run, &run.round(round)).await {
                                self.interrupted()?;
                                say(format!("{run} (round {round}) failed: {e}"));
                            }
                        }
                    }
                    for run in runs {
                        self.keep_median_round(run, median_by)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn announce(&self, phase: Phase) {
        let a = self.args;
        let secs = humantime::format_duration(a.duration);
        let rounds = if self
            .plan
            .steps
            .iter()
            .any(|s| s.phase() == phase && matches!(s, Step::HeadToHead { .. }))
        {
            format!(" (head-to-head: {} rounds)", a.rounds)
        } else {
            String::new()
        };
        match phase {
            Phase::Full => say(format!(
                "(a) full speed, {} subscribers, {secs}{rounds}",
                a.subscribers
            )),
            Phase::Steady => say(format!(
                "(b) steady {}/s offered, {} subscribers, {secs}{rounds}",
                a.steady_rate, a.subscribers
            )),
            Phase::Hold => say(format!(
                "(c) memory per held poll: {} polls held (RabbitMQ: {}) for {}",
                self.hold,
                self.rabbitmq_hold,
                humantime::format_duration(a.hold_time)
            )),
            Phase::Burst => say(format!(
                "(d) bursts of {} events to each of {} subscribers, {}{rounds}",
                a.burst_events,
                a.burst_subscribers,
                humantime::format_duration(a.burst_duration)
            )),
        }
    }

    /// lp-load's flags for `run`'s phase.
    fn phase_args(&self, run: RunId) -> Vec<String> {
        let a = self.args;
        let mut v: Vec<String> = Vec::new();
        let subscribers = match run.phase {
            Phase::Full | Phase::Steady => a.subscribers,
            Phase::Burst => a.burst_subscribers,
            Phase::Hold => match run.server.setup {
                Setup::Gateway {
                    broker: Broker::Rabbitmq,
                } => self.rabbitmq_hold,
                _ => self.hold,
            },
        };
        let duration = match run.phase {
            Phase::Hold => a.hold_time,
            Phase::Burst => a.burst_duration,
            Phase::Full | Phase::Steady => a.duration,
        };
        if run.phase == Phase::Hold {
            v.push("--hold-only".into());
        }
        v.extend([
            "--subscribers".into(),
            subscribers.to_string(),
            "--duration".into(),
            humantime::format_duration(duration).to_string(),
        ]);
        if run.phase == Phase::Steady {
            v.extend(["--rate".into(), a.steady_rate.to_string()]);
        }
        if run.phase == Phase::Burst {
            v.extend(["--burst".into(), a.burst_events.to_string()]);
        }
        v
    }

    /// One run, attempted again while others disturbed it (rates and
    /// latencies only); the least disturbed attempt becomes `stem`.
    async fn once(&self, run: RunId, stem: &str) -> Result<(), BoxError> {
        if !run.phase.cpu_sensitive() {
            return self.attempt(run, stem).await;
        }
        let max = self.args.other_cpu_max;
        let mut tries: Vec<(String, f64)> = Vec::new();
        for attempt in 1..=self.args.attempts.max(1) {
            self.interrupted()?;
            match self.attempt(run, stem).await {
                Ok(()) => {}
                // An earlier attempt has a report: keep it.
                Err(e) if !tries.is_empty() && !self.children.interrupted() => {
                    say(format!("{stem}: attempt {attempt} failed: {e}"));
                    break;
                }
                Err(e) => return Err(e),
            }
            let try_stem = format!("{stem}.try{attempt}");
            for ext in ["json", "out", "log"] {
                let _ = std::fs::rename(self.path(stem, ext), self.path(&try_stem, ext));
            }
            let other = read_report(&self.path(&try_stem, "json")).map_or(999.0, |r| r.other_cpu());
            tries.push((try_stem, other));
            if other <= max {
                break;
            }
            if attempt >= self.args.attempts || self.started.elapsed() >= self.args.retry_budget {
                say(format!(
                    "{stem}: other processes used {other:.0}% of a core during the run; keeping the least disturbed attempt"
                ));
                break;
            }
            say(format!(
                "{stem}: other processes used {other:.0}% of a core during the run; once more"
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let best = least_disturbed(&tries).ok_or("no attempt")?;
        for ext in ["json", "out", "log"] {
            let _ = std::fs::copy(self.path(best, ext), self.path(stem, ext));
        }
        Ok(())
    }

    /// One lp-load run of `run`'s server, its files named `stem`; starts and
    /// stops the gateway it drives.
    async fn attempt(&self, run: RunId, stem: &str) -> Result<(), BoxError> {
        let server = run.server;
        let mut args: Vec<String> = vec![
            "--label".into(),
            stem.to_owned(),
            "--json".into(),
            self.path(stem, "json").display().to_string(),
        ];
        args.extend(self.phase_args(run));
        args.extend(
            server
                .lp_load_args
                .iter()
                .map(|a| a.replace("{amqp}", &self.args.amqp)),
        );
        let (out, log) = (self.path(stem, "out"), self.path(stem, "log"));
        let result = match server.setup {
            Setup::Gateway { broker } => {
                let broker = match broker {
                    Broker::Memory => "memory://",
                    Broker::Rabbitmq => self.args.amqp.as_str(),
                };
                let gw = procs::Gateway::start(
                    &self.gateway,
                    broker,
                    &self.token,
                    plan::EXCHANGE,
                    server.gateway_args,
                    &self.path(stem, "gateway.log"),
                    &self.children,
                )
                .await?;
                args.extend([
                    "--target".into(),
                    "gateway".into(),
                    "--gateway".into(),
                    gw.public.clone(),
                    "--admin".into(),
                    gw.admin.clone(),
                    "--api-token".into(),
                    self.token.clone(),
                    "--pid".into(),
                    gw.pid.to_string(),
                ]);
                let r = procs::lp_load(&self.lp_load, &args, &out, &log, &self.children).await;
                gw.stop().await;
                r
            }
            Setup::Nchan => {
                let prefix = self.work.nginx_prefix();
                args.extend([
                    "--nchan-prefix".into(),
                    prefix.display().to_string(),
                    "--nginx".into(),
                    self.args.nginx.display().to_string(),
                    "--nchan-module".into(),
                    self.args.nchan_module.display().to_string(),
                ]);
                let r = procs::lp_load(&self.lp_load, &args, &out, &log, &self.children).await;
                self.work.stop_leftover_nginx();
                let _ = std::fs::remove_dir_all(&prefix);
                r
            }
            Setup::Raw => procs::lp_load(&self.lp_load, &args, &out, &log, &self.children).await,
        };
        if let Some(r) = read_report(&self.path(stem, "json")) {
            eprintln!("{}", r.row());
        }
        result
    }

    /// Of `run`'s rounds, the one whose `metric` is the median becomes `run`
    /// (report, output and log).
    fn keep_median_round(&self, run: RunId, metric: Metric) -> Result<(), BoxError> {
        let values: Vec<(usize, Option<f64>)> = (1..=self.args.rounds)
            .map(|r| {
                let report = read_report(&self.path(&run.round(r), "json"));
                (r, report.and_then(|x| metric.of(&x)))
            })
            .collect();
        if let Some(round) = median_round(&values) {
            for ext in ["json", "out", "log"] {
                let _ = std::fs::copy(
                    self.path(&run.round(round), ext),
                    self.path(&run.to_string(), ext),
                );
            }
        }
        Ok(())
    }
}

fn read_report(path: &Path) -> Option<Report> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The attempt other processes disturbed least (the first of equals).
fn least_disturbed(tries: &[(String, f64)]) -> Option<&str> {
    tries
        .iter()
        .fold(None::<&(String, f64)>, |best, t| match best {
            Some(b) if b.1 <= t.1 => Some(b),
            _ => Some(t),
        })
        .map(|(stem, _)| stem.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_is_the_middle_value_or_the_lower_middle() {
        assert_eq!(
            median_round(&[(1, Some(30.0)), (2, Some(10.0)), (3, Some(20.0))]),
            Some(3)
        );
        assert_eq!(
            median_round(&[
                (1, Some(4.0)),
                (2, Some(1.0)),
                (3, Some(3.0)),
                (4, Some(2.0))
            ]),
            Some(4)
        );
        // A round without a report (or without the figure) is left out.
        assert_eq!(
            median_round(&[(1, None), (2, Some(5.0)), (3, Some(6.0))]),
            Some(2)
        );
        assert_eq!(median_round(&[(1, None)]), None);
    }

    #[test]
    fn the_least_disturbed_attempt_is_kept_the_first_of_equals() {
        let tries = [
            ("a.try1".to_owned(), 50.0),
            ("a.try2".to_owned(), 40.0),
            ("a.try3".to_owned(), 40.0),
        ];
        assert_eq!(least_disturbed(&tries), Some("a.try2"));
        assert_eq!(least_disturbed(&[]), None);
    }
}
