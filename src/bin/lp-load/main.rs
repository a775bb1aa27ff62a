//! `lp-load`: a load generator for longpoll-gateway and the baselines it is
//! compared with, and (`lp-load compare`) the comparison itself.
//!
//! One scenario, five targets (`--target`):
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
//! round-robin over the subscribers. The report (`report.rs`) gives
//! deliveries/s, publish-to-response latency p50/p99/p999, errors by kind, and
//! the resident memory and CPU of the server (read from `/proc`: `--pid` for the
//! gateway, nginx's master and workers for nchan, RabbitMQ's `beam.smp` for the
//! raw targets), of the generator itself and of the whole machine.
//!
//! `--burst N` publishes in rounds instead: N events to every subscriber at
//! once, as fast as the publishers go, each round waited for until all of its
//! events were delivered (or `--burst-wait` ran out), until `--duration`; the
//! report adds answers/s (fewer than deliveries/s when answers carry several,
//! `--max`) and the rounds.
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
//! lp-load --api-token T --subscribers 200 --duration 8s --burst 10 --max 10
//! lp-load --target nchan --hold-only --subscribers 19000 --duration 10s
//! lp-load compare            # what `make bench-compare` runs
//! ```
//!
//! Modules: `cli` (flags), `run` (one run's order and samples), `traffic`
//! (events and publishers), `gateway`/`nchan`/`raw` (the targets), `http1` (the
//! HTTP/1 client), `stats` (counters and `/proc`), `report` (the typed report),
//! `compare` (the head-to-head comparison and its targets).

mod cli;
mod compare;
mod gateway;
mod http1;
mod nchan;
mod raw;
mod report;
mod run;
mod stats;
mod traffic;

use clap::Parser;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let cli::Cli { command, run } = cli::Cli::parse();
    match command {
        Some(cli::Command::Compare(args)) => compare::main(args),
        None => {
            let mut rt = if run.threads == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                tokio::runtime::Builder::new_multi_thread()
            };
            if run.threads > 1 {
                rt.worker_threads(run.threads);
            }
            rt.enable_all().build()?.block_on(run::run_once(run))
        }
    }
}
