//! lp-load's command line: one load run (the flags below, no subcommand), or
//! `lp-load compare` (the head-to-head comparison, `compare::CompareArgs`).
//! Owns the flags and their defaults; must not do anything with them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::compare::CompareArgs;

#[derive(Debug, Parser)]
#[command(
    name = "lp-load",
    about = "Load generator for longpoll-gateway, nchan and raw AMQP baselines",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Args,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The gateway against nginx + nchan and raw AMQP baselines, same scenario,
    /// one run: the ratios against the performance targets (`make bench-compare`).
    Compare(CompareArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Gateway => "gateway",
            TargetKind::Nchan => "nchan",
            TargetKind::RawConsume => "raw-consume",
            TargetKind::RawPipe => "raw-pipe",
            TargetKind::RawQueues => "raw-queues",
        }
    }

    /// Whether the target is RabbitMQ alone (lp-load on its AMQP side).
    pub fn is_raw(self) -> bool {
        matches!(
            self,
            TargetKind::RawConsume | TargetKind::RawPipe | TargetKind::RawQueues
        )
    }
}

/// The HTTP/1 client subscribers and publishers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// lp-load's own (`http1.rs`): the caller's task reads and writes the socket.
    Handwritten,
    /// hyper's `client::conn::http1`: a task per connection drives it.
    Hyper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    Api,
    Amqp,
}

#[derive(Debug, Parser)]
pub struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value_t = TargetKind::Gateway)]
    pub target: TargetKind,
    /// The gateway's public base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// The gateway's admin base URL (for /metrics).
    #[arg(long)]
    pub admin: Option<String>,
    /// Target gateway: how events reach it — `api` (the management API) or
    /// `amqp` (published straight to RabbitMQ on --exchange, as Launchpad's
    /// application servers do and as the raw baselines are; gateway on RabbitMQ only).
    #[arg(long, value_enum, default_value_t = PublishVia::Api)]
    pub publish_via: PublishVia,
    /// Target gateway with --publish-via amqp: the gateway's --exchange.
    #[arg(long, default_value = "longpoll")]
    pub exchange: String,
    /// Management API token (target gateway).
    #[arg(long, env = "LONGPOLL_API_TOKEN")]
    pub api_token: Option<String>,
    /// Subscribers, each with its own subscription (channel, queue).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Target gateway: most messages one answer may carry (each poll's
    /// `max`, 1-100); 1 polls as txlongpoll's clients do.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub max: u8,
    /// How long to publish (with --hold-only: how long to hold the polls).
    #[arg(long, default_value = "10s", value_parser = longpoll_gateway::config::parse_duration)]
    pub duration: Duration,
    /// Events per second offered in total (0 = as fast as the publishers go).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publish in rounds instead of at a rate: each round publishes N events to
    /// every subscriber at once (S × N, as fast as the publishers go, a
    /// subscriber's N together), waits until all of them were delivered (at
    /// most --burst-wait, then the rest count as missing), and the next round
    /// starts, until --duration. Measures how a server empties a backlog per
    /// subscriber (what --max and a consumer prefetch are for): the report
    /// gives deliveries/s (messages: an answer of 10 counts 10), answers/s and
    /// the rounds. Any target; raw-pipe's one queue gets N per round.
    #[arg(long, value_name = "N", conflicts_with_all = ["rate", "hold_only"],
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub burst: Option<u32>,
    /// With --burst: how long a round waits for its deliveries once its events
    /// were published (or since the publishers last got one through).
    #[arg(long, default_value = "10s", requires = "burst",
          value_parser = longpoll_gateway::config::parse_duration)]
    pub burst_wait: Duration,
    /// The HTTP/1 client of the subscribers and HTTP publishers.
    #[arg(long, value_enum, default_value_t = ClientKind::Handwritten)]
    pub client: ClientKind,
    /// Concurrent publish requests (HTTP: one keep-alive connection each;
    /// AMQP: publishes awaiting their confirm).
    #[arg(long, default_value_t = 64)]
    pub publishers: usize,
    /// Approximate size of each event's JSON body as delivered.
    #[arg(long, default_value_t = 250)]
    pub payload_bytes: usize,
    /// Server process(es) to read memory and CPU from (repeatable). nchan: its
    /// nginx master and workers by default; raw targets: RabbitMQ's beam.smp.
    #[arg(long)]
    pub pid: Vec<u32>,
    /// The broker behind the server, sampled on its own: a pid, or `rabbitmq`
    /// to find RabbitMQ's beam.smp.
    #[arg(long)]
    pub broker_pid: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A label for the report (e.g. "gateway-rabbitmq"); default: the target.
    #[arg(long)]
    pub label: Option<String>,
    /// Hold S polls without publishing for --duration, to measure resident
    /// memory per held poll (gateway and nchan).
    #[arg(long)]
    pub hold_only: bool,
    /// Pause between "all polls held" and the memory sample.
    #[arg(long, default_value = "2s", value_parser = longpoll_gateway::config::parse_duration)]
    pub settle: Duration,
    /// Connections being opened at once (a ramp, so the listen backlog holds).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// RabbitMQ, for the raw targets.
    #[arg(
        long,
        env = "LONGPOLL_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,
    /// raw-consume, raw-queues: AMQP connections the subscribers' channels are spread over.
    #[arg(long, default_value_t = 4)]
    pub raw_connections: usize,
    /// raw-pipe: the consumer's prefetch.
    #[arg(long, default_value_t = 500)]
    pub raw_prefetch: u16,
    /// raw-consume: cancel the consumer before acking (no delivery can slip in
    /// between) instead of txlongpoll's ack-then-cancel.
    #[arg(long)]
    pub raw_cancel_first: bool,
    /// nchan: an nchan server already running (`/pub?id=`, `/sub?id=`,
    /// `/nchan_status` as lp-load's own configuration has them); default: start
    /// a private nginx.
    #[arg(long)]
    pub nchan_url: Option<String>,
    /// nchan: the nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx: PathBuf,
    /// nchan: the module to load.
    #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so")]
    pub nchan_module: PathBuf,
    /// nchan: worker processes (default: one per core, nginx's `auto`).
    #[arg(long)]
    pub nchan_workers: Option<usize>,
    /// nchan: the directory for the private nginx (config, pid, logs); default:
    /// a fresh temporary directory, removed at the end.
    #[arg(long)]
    pub nchan_prefix: Option<PathBuf>,
    /// nchan: messages kept per channel (a subscriber further behind loses some).
    #[arg(long, default_value_t = 100)]
    pub nchan_buffer: usize,
    /// Threads of the generator's runtime (0 = one per core; 1 = a single
    /// thread, no cross-thread wake-ups).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// nchan: how long a long-poll is held (the gateway's --poll-timeout default).
    #[arg(long, default_value = "270s", value_parser = longpoll_gateway::config::parse_duration)]
    pub nchan_poll_timeout: Duration,
}

impl Args {
    /// The report's label: `--label`, or the target's name.
    pub fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| self.target.name().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_without_a_subcommand_are_one_run() {
        let cli = Cli::try_parse_from(["lp-load", "--target", "raw-pipe", "--rate", "100"])
            .expect("a run's flags parse");
        assert!(cli.command.is_none());
        assert_eq!(cli.run.target, TargetKind::RawPipe);
        assert_eq!(cli.run.rate, 100);
        assert_eq!(cli.run.max, 1);
    }

    #[test]
    fn max_is_one_to_a_hundred() {
        let max = |v: &str| Cli::try_parse_from(["lp-load", "--max", v]).map(|c| c.run.max);
        assert_eq!(max("20").ok(), Some(20));
        assert!(max("0").is_err() && max("101").is_err());
    }

    #[test]
    fn burst_is_rounds_of_events_per_subscriber_and_excludes_a_rate() {
        let cli = Cli::try_parse_from(["lp-load", "--burst", "10", "--burst-wait", "2s"])
            .expect("--burst parses");
        assert_eq!(cli.run.burst, Some(10));
        assert_eq!(cli.run.burst_wait, Duration::from_secs(2));
        assert_eq!(
            Cli::try_parse_from(["lp-load"]).map(|c| c.run.burst).ok(),
            Some(None)
        );
        for conflicting in [["--rate", "100"], ["--hold-only", "--settle=1s"]] {
            let args = ["lp-load", "--burst", "10"].into_iter().chain(conflicting);
            assert!(Cli::try_parse_from(args).is_err(), "{conflicting:?}");
        }
        assert!(Cli::try_parse_from(["lp-load", "--burst", "0"]).is_err());
        assert!(Cli::try_parse_from(["lp-load", "--burst-wait", "2s"]).is_err());
    }

    #[test]
    fn compare_is_a_subcommand_that_takes_no_run_flags() {
        let cli =
            Cli::try_parse_from(["lp-load", "compare", "--rounds", "5"]).expect("compare parses");
        let Some(Command::Compare(c)) = cli.command else {
            panic!("not compare")
        };
        assert_eq!(c.rounds, 5);
        assert!(Cli::try_parse_from(["lp-load", "--rate", "5", "compare"]).is_err());
    }
}
