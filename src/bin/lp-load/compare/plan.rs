//! What `lp-load compare` runs, as data: the servers (how each is started and
//! which lp-load flags drive it), the phases (full speed, steady rate, polls
//! held, bursts) and the plan, in order. Owns the scenario; must not start anything.
//!
//! A new server is one more `Server` constant (a variant of another one is
//! `Server { name, lp_load_args, ..GATEWAY_MEMORY }`) and its place in a plan
//! ([`BENCH`] for `make bench-compare`); a new scenario is a step or a plan
//! here, and a ratio to judge it by is a row of `targets::BENCH`.

use std::fmt;

use clap::ValueEnum;

use super::targets::{self, Target};
use crate::report::Report;

/// How a server under test is started and reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// A longpoll-gateway that `compare` starts, on the embedded broker or on
    /// RabbitMQ, driven by `lp-load --target gateway`.
    Gateway { broker: Broker },
    /// The private nginx + nchan that lp-load starts itself.
    Nchan,
    /// RabbitMQ alone, lp-load on its AMQP side (`--target raw-*`).
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Memory,
    Rabbitmq,
}

/// One server under test, named as in run names and tables.
#[derive(Debug, PartialEq, Eq)]
pub struct Server {
    pub name: &'static str,
    pub setup: Setup,
    /// Flags of the gateway's own (after the common ones `compare` sets).
    pub gateway_args: &'static [&'static str],
    /// lp-load flags of its own; `{amqp}` stands for the RabbitMQ URL.
    pub lp_load_args: &'static [&'static str],
}

pub const GATEWAY_MEMORY: Server = Server {
    name: "gateway-memory",
    setup: Setup::Gateway {
        broker: Broker::Memory,
    },
    gateway_args: &[],
    lp_load_args: &[],
};

/// Events straight to RabbitMQ, as Launchpad's application servers publish
/// them and as the raw baselines get them.
pub const GATEWAY_RABBITMQ: Server = Server {
    name: "gateway-rabbitmq",
    setup: Setup::Gateway {
        broker: Broker::Rabbitmq,
    },
    gateway_args: &[],
    lp_load_args: &[
        "--broker-pid",
        "rabbitmq",
        "--publish-via",
        "amqp",
        "--exchange",
        EXCHANGE,
        "--amqp",
        "{amqp}",
    ],
};

/// gateway-rabbitmq with a prefetch window per consumer: RabbitMQ pushes up to
/// 10 messages to a subscription's consumer and the gateway holds the extras
/// for the next polls (with prefetch 1, each message after the first waits for
/// the client's next sequence to reach RabbitMQ as an ack).
pub const GATEWAY_RABBITMQ_PREFETCH: Server = Server {
    name: "gateway-rabbitmq-prefetch",
    gateway_args: &["--consumer-prefetch", "10"],
    ..GATEWAY_RABBITMQ
};

/// gateway-rabbitmq without the events history (`--history-max-age 0`):
/// every event is then routed to the subscription queues only, not also
/// appended to the history stream, which splits RabbitMQ's cost per delivery
/// into the delivery path's and the history's.
pub const GATEWAY_RABBITMQ_NO_HISTORY: Server = Server {
    name: "gateway-rabbitmq-no-history",
    gateway_args: &["--history-max-age", "0"],
    ..GATEWAY_RABBITMQ
};

/// gateway-rabbitmq-prefetch polled with `max=10`: an answer carries what the
/// prefetch window already holds.
pub const GATEWAY_RABBITMQ_PREFETCH_MAX10: Server = Server {
    name: "gateway-rabbitmq-prefetch-max10",
    lp_load_args: &[
        "--broker-pid",
        "rabbitmq",
        "--publish-via",
        "amqp",
        "--exchange",
        EXCHANGE,
        "--amqp",
        "{amqp}",
        "--max",
        "10",
    ],
    ..GATEWAY_RABBITMQ_PREFETCH
};

/// The embedded broker polled with `max=10`.
pub const GATEWAY_MEMORY_MAX10: Server = Server {
    name: "gateway-memory-max10",
    lp_load_args: &["--max", "10"],
    ..GATEWAY_MEMORY
};

/// The gateway on RabbitMQ with events through its management API.
pub const GATEWAY_RABBITMQ_API: Server = Server {
    name: "gateway-rabbitmq-api",
    setup: Setup::Gateway {
        broker: Broker::Rabbitmq,
    },
    gateway_args: &[],
    lp_load_args: &["--broker-pid", "rabbitmq"],
};

pub const NCHAN: Server = Server {
    name: "nchan",
    setup: Setup::Nchan,
    gateway_args: &[],
    lp_load_args: &["--target", "nchan"],
};

pub const RAW_CONSUME: Server = Server {
    name: "raw-consume",
    setup: Setup::Raw,
    gateway_args: &[],
    lp_load_args: &[
        "--target",
        "raw-consume",
        "--amqp",
        "{amqp}",
        "--broker-pid",
        "rabbitmq",
    ],
};

/// RabbitMQ is the server here; `--broker-pid` puts its CPU in the RabbitMQ
/// column as for the gateway on RabbitMQ (counted once).
pub const RAW_PIPE: Server = Server {
    name: "raw-pipe",
    setup: Setup::Raw,
    gateway_args: &[],
    lp_load_args: &[
        "--target",
        "raw-pipe",
        "--amqp",
        "{amqp}",
        "--broker-pid",
        "rabbitmq",
    ],
};

/// One AMQP connection, as the gateway has on 2 cores.
pub const RAW_QUEUES: Server = Server {
    name: "raw-queues",
    setup: Setup::Raw,
    gateway_args: &[],
    lp_load_args: &[
        "--target",
        "raw-queues",
        "--amqp",
        "{amqp}",
        "--raw-connections",
        "1",
        "--broker-pid",
        "rabbitmq",
    ],
};

/// The exchange the gateways under test use.
pub const EXCHANGE: &str = "longpoll.bench";

/// What a run does with its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// (a) deliveries/s with the publishers as fast as they go.
    Full,
    /// (b) latency at a steady offered rate.
    Steady,
    /// (c) resident memory per held poll, nothing published.
    Hold,
    /// (d) rounds of N events to every subscriber at once, each waited for
    /// (`lp-load --burst`): how fast a backlog per subscriber empties.
    Burst,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Full => "full",
            Phase::Steady => "steady",
            Phase::Hold => "hold",
            Phase::Burst => "burst",
        }
    }

    /// Whether other processes' CPU can disturb what the phase measures (held
    /// memory is not disturbed; rates and latencies are).
    pub fn cpu_sensitive(self) -> bool {
        self != Phase::Hold
    }
}

/// One run of one server in one phase; its files are `{phase}-{server}.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunId {
    pub phase: Phase,
    pub server: &'static Server,
}

impl RunId {
    pub const fn new(phase: Phase, server: &'static Server) -> RunId {
        RunId { phase, server }
    }

    /// The run's file stem in round `round` of a head-to-head.
    pub fn round(&self, round: usize) -> String {
        format!("{self}.round{round}")
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.phase.name(), self.server.name)
    }
}

/// A figure read from a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    DeliveriesPerSec,
    P99,
    /// The server's CPU µs per delivery, plus the broker's when sampled.
    ServerCpuPerDelivery,
    /// Resident memory per held poll, the subscription included.
    MemoryPerHeldPoll,
    /// lp-load's own CPU µs per delivery.
    GeneratorCpuPerDelivery,
    /// RabbitMQ's own CPU µs per delivery.
    RabbitmqCpuPerDelivery,
}

impl Metric {
    pub fn of(self, r: &Report) -> Option<f64> {
        match self {
            Metric::DeliveriesPerSec => Some(r.deliveries_per_sec),
            Metric::P99 => r.latency_ms.p99,
            Metric::ServerCpuPerDelivery => r.server_cpu_per_delivery(),
            Metric::MemoryPerHeldPoll => r.memory_per_held_poll(),
            Metric::GeneratorCpuPerDelivery => r.generator.cpu_us_per_delivery,
            Metric::RabbitmqCpuPerDelivery => r.rabbitmq_cpu_per_delivery(),
        }
    }

    /// Its unit in tables, and the digits it is shown with.
    pub fn unit(self) -> (&'static str, usize) {
        match self {
            Metric::DeliveriesPerSec => ("deliveries/s", 0),
            Metric::P99 => ("p99 ms", 2),
            Metric::ServerCpuPerDelivery => ("server CPU µs per delivery", 0),
            Metric::MemoryPerHeldPoll => ("B per held poll", 0),
            Metric::GeneratorCpuPerDelivery => ("lp-load CPU µs per delivery", 1),
            Metric::RabbitmqCpuPerDelivery => ("RabbitMQ CPU µs per delivery", 0),
        }
    }
}

/// A step of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One run (again, up to the attempts, when others disturbed it).
    Once(RunId),
    /// Two servers alternated for the rounds (`--rounds`), so that both meet
    /// the same spells of a shared machine; each one's median round by
    /// `median_by` becomes its run.
    HeadToHead {
        phase: Phase,
        a: &'static Server,
        b: &'static Server,
        median_by: Metric,
    },
}

impl Step {
    /// The runs whose reports the step leaves, in order.
    pub fn runs(&self) -> Vec<RunId> {
        match *self {
            Step::Once(run) => vec![run],
            Step::HeadToHead { phase, a, b, .. } => {
                vec![RunId::new(phase, a), RunId::new(phase, b)]
            }
        }
    }

    pub fn phase(&self) -> Phase {
        match self {
            Step::Once(run) => run.phase,
            Step::HeadToHead { phase, .. } => *phase,
        }
    }
}

/// A comparison: the runs, in order, and the ratios judged from them.
pub struct Plan {
    pub name: &'static str,
    pub steps: &'static [Step],
    pub targets: &'static [Target],
}

/// The comparisons `lp-load compare --plan` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanName {
    /// `make bench-compare`: the gateway against nchan and raw AMQP, against
    /// the targets.
    Bench,
    /// `make load`: the gateway on each broker, full speed then a steady rate.
    Load,
    /// lp-load's own HTTP/1 client against hyper's, same server, alternated.
    Clients,
}

impl PlanName {
    pub fn plan(self) -> Plan {
        match self {
            PlanName::Bench => Plan {
                name: "bench",
                steps: BENCH,
                targets: targets::BENCH,
            },
            PlanName::Load => Plan {
                name: "load",
                steps: LOAD,
                targets: &[],
            },
            PlanName::Clients => Plan {
                name: "clients",
                steps: CLIENTS,
                targets: targets::CLIENTS,
            },
        }
    }
}

/// `make bench-compare`, in order: (a) full speed, (b) the steady rate,
/// (c) memory with polls held, (d) bursts (fewer subscribers, shorter: the
/// whole plan stays within ~15 minutes on a quiet machine).
pub const BENCH: &[Step] = &[
    Step::Once(RunId::new(Phase::Full, &GATEWAY_RABBITMQ)),
    Step::Once(RunId::new(Phase::Full, &GATEWAY_RABBITMQ_PREFETCH)),
    Step::Once(RunId::new(Phase::Full, &GATEWAY_RABBITMQ_PREFETCH_MAX10)),
    Step::Once(RunId::new(Phase::Full, &GATEWAY_RABBITMQ_NO_HISTORY)),
    Step::HeadToHead {
        phase: Phase::Full,
        a: &GATEWAY_MEMORY,
        b: &NCHAN,
        median_by: Metric::DeliveriesPerSec,
    },
    Step::Once(RunId::new(Phase::Full, &RAW_CONSUME)),
    Step::Once(RunId::new(Phase::Full, &RAW_PIPE)),
    Step::Once(RunId::new(Phase::Full, &RAW_QUEUES)),
    Step::Once(RunId::new(Phase::Full, &GATEWAY_RABBITMQ_API)),
    Step::HeadToHead {
        phase: Phase::Steady,
        a: &GATEWAY_MEMORY,
        b: &NCHAN,
        median_by: Metric::P99,
    },
    Step::Once(RunId::new(Phase::Steady, &GATEWAY_RABBITMQ)),
    Step::Once(RunId::new(Phase::Steady, &GATEWAY_RABBITMQ_PREFETCH)),
    // RabbitMQ's own latency at this rate; raw-queues's is the floor under
    // gateway-rabbitmq's.
    Step::Once(RunId::new(Phase::Steady, &RAW_PIPE)),
    Step::Once(RunId::new(Phase::Steady, &RAW_QUEUES)),
    Step::Once(RunId::new(Phase::Hold, &GATEWAY_MEMORY)),
    Step::Once(RunId::new(Phase::Hold, &GATEWAY_RABBITMQ)),
    Step::Once(RunId::new(Phase::Hold, &NCHAN)),
    // max=10 against max=1 on the same server, alternated: the ratio is the
    // point, and both runs of a round meet the same spell of the machine.
    Step::HeadToHead {
        phase: Phase::Burst,
        a: &GATEWAY_RABBITMQ_PREFETCH_MAX10,
        b: &GATEWAY_RABBITMQ_PREFETCH,
        median_by: Metric::DeliveriesPerSec,
    },
    Step::HeadToHead {
        phase: Phase::Burst,
        a: &GATEWAY_MEMORY_MAX10,
        b: &GATEWAY_MEMORY,
        median_by: Metric::DeliveriesPerSec,
    },
];

/// `make load`: both brokers with events through the management API.
pub const LOAD: &[Step] = &[
    Step::Once(RunId::new(Phase::Full, &GATEWAY_MEMORY)),
    Step::Once(RunId::new(Phase::Full, &GATEWAY_RABBITMQ_API)),
    Step::Once(RunId::new(Phase::Steady, &GATEWAY_MEMORY)),
    Step::Once(RunId::new(Phase::Steady, &GATEWAY_RABBITMQ_API)),
];

/// The embedded broker with lp-load on hyper's HTTP/1 client.
pub const GATEWAY_MEMORY_HYPER: Server = Server {
    name: "gateway-memory-hyper",
    lp_load_args: &["--client", "hyper"],
    ..GATEWAY_MEMORY
};

/// nchan with lp-load on hyper's HTTP/1 client.
pub const NCHAN_HYPER: Server = Server {
    name: "nchan-hyper",
    lp_load_args: &["--target", "nchan", "--client", "hyper"],
    ..NCHAN
};

/// lp-load's HTTP/1 client against hyper's at full speed, on each HTTP server.
pub const CLIENTS: &[Step] = &[
    Step::HeadToHead {
        phase: Phase::Full,
        a: &GATEWAY_MEMORY_HYPER,
        b: &GATEWAY_MEMORY,
        median_by: Metric::GeneratorCpuPerDelivery,
    },
    Step::HeadToHead {
        phase: Phase::Full,
        a: &NCHAN_HYPER,
        b: &NCHAN,
        median_by: Metric::GeneratorCpuPerDelivery,
    },
];

impl Plan {
    /// The runs of `phase`, in order.
    pub fn runs_of(&self, phase: Phase) -> Vec<RunId> {
        self.steps
            .iter()
            .filter(|s| s.phase() == phase)
            .flat_map(Step::runs)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_of_a_plan_has_its_own_name() {
        for name in [PlanName::Bench, PlanName::Load, PlanName::Clients] {
            let names: Vec<String> = name
                .plan()
                .steps
                .iter()
                .flat_map(Step::runs)
                .map(|r| r.to_string())
                .collect();
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "{name:?}: {names:?}");
        }
    }

    #[test]
    fn every_target_judges_runs_of_its_plan() {
        for name in [PlanName::Bench, PlanName::Load, PlanName::Clients] {
            let plan = name.plan();
            let runs: Vec<RunId> = plan.steps.iter().flat_map(Step::runs).collect();
            for t in plan.targets {
                for run in t.runs() {
                    assert!(
                        runs.contains(&run),
                        "{name:?}: {} judges {run}, not run",
                        t.label
                    );
                }
            }
        }
    }

    #[test]
    fn every_plan_runs_its_phases_in_order_each_once() {
        for name in [PlanName::Bench, PlanName::Load, PlanName::Clients] {
            let phases: Vec<Phase> = name.plan().steps.iter().map(Step::phase).collect();
            let mut seen: Vec<Phase> = phases.clone();
            seen.dedup();
            let mut unique = seen.clone();
            unique.sort_by_key(|p| p.name());
            unique.dedup();
            assert_eq!(
                seen.len(),
                unique.len(),
                "{name:?}: a phase comes back: {phases:?}"
            );
        }
    }

    #[test]
    fn runs_of_a_phase_follow_the_plan() {
        let bench = PlanName::Bench.plan();
        let full: Vec<String> = bench
            .runs_of(Phase::Full)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            full,
            [
                "full-gateway-rabbitmq",
                "full-gateway-rabbitmq-prefetch",
                "full-gateway-rabbitmq-prefetch-max10",
                "full-gateway-rabbitmq-no-history",
                "full-gateway-memory",
                "full-nchan",
                "full-raw-consume",
                "full-raw-pipe",
                "full-raw-queues",
                "full-gateway-rabbitmq-api"
            ]
        );
        assert_eq!(bench.runs_of(Phase::Hold).len(), 3);
        assert_eq!(bench.runs_of(Phase::Burst).len(), 4);
    }

    #[test]
    fn every_rabbitmq_backed_run_samples_rabbitmq() {
        for step in PlanName::Bench.plan().steps {
            for run in step.runs() {
                let on_rabbitmq = matches!(
                    run.server.setup,
                    Setup::Raw
                        | Setup::Gateway {
                            broker: Broker::Rabbitmq
                        }
                );
                let sampled = run
                    .server
                    .lp_load_args
                    .windows(2)
                    .any(|w| w == ["--broker-pid", "rabbitmq"]);
                assert_eq!(on_rabbitmq, sampled, "{run}");
            }
        }
    }

    #[test]
    fn a_variant_server_differs_only_in_what_it_overrides() {
        assert_eq!(GATEWAY_MEMORY_HYPER.setup, GATEWAY_MEMORY.setup);
        assert_eq!(
            GATEWAY_RABBITMQ_PREFETCH.lp_load_args,
            GATEWAY_RABBITMQ.lp_load_args
        );
        assert_eq!(
            GATEWAY_RABBITMQ_PREFETCH_MAX10.gateway_args,
            GATEWAY_RABBITMQ_PREFETCH.gateway_args
        );
        assert_eq!(
            GATEWAY_RABBITMQ_PREFETCH_MAX10.lp_load_args,
            [GATEWAY_RABBITMQ.lp_load_args, &["--max", "10"]].concat()
        );
        assert_eq!(GATEWAY_MEMORY_MAX10.setup, GATEWAY_MEMORY.setup);
        assert_eq!(NCHAN_HYPER.setup, Setup::Nchan);
        assert!(NCHAN_HYPER.lp_load_args.starts_with(NCHAN.lp_load_args));
    }
}
