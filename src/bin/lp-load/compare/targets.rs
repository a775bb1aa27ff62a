//! The performance targets `lp-load compare` judges, as a table, and how a
//! ratio is taken: between two runs, or as the median of a head-to-head's
//! rounds' own ratios. Owns the verdicts; must not run anything.
//!
//! A new target is one more row of [`BENCH`] (`make bench-compare`'s).

use super::plan::{
    GATEWAY_MEMORY, GATEWAY_MEMORY_HYPER, GATEWAY_MEMORY_MAX10, GATEWAY_RABBITMQ,
    GATEWAY_RABBITMQ_API, GATEWAY_RABBITMQ_NO_HISTORY, GATEWAY_RABBITMQ_PREFETCH,
    GATEWAY_RABBITMQ_PREFETCH_MAX10, Metric, NCHAN, NCHAN_HYPER, Phase, RAW_CONSUME, RAW_PIPE,
    RAW_QUEUES, RunId, Server,
};
use crate::report::Report;

/// Where a target's ratio comes from.
#[derive(Debug, Clone, Copy)]
pub enum Measure {
    /// `metric` of run `num` over the same of run `den`.
    Ratio {
        metric: Metric,
        num: RunId,
        den: RunId,
    },
    /// The median, over a head-to-head's rounds, of the ratio between the two
    /// runs of one round: runs next to each other met the same spell of the
    /// machine, where the two servers' median rounds may come from different
    /// spells.
    MedianOfRounds {
        metric: Metric,
        phase: Phase,
        num: &'static Server,
        den: &'static Server,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    pub fn met_by(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(g) => value >= g,
            Goal::AtMost(g) => value <= g,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // 1.0 as "1.0", 0.95 as "0.95".
        let shown = |g: f64| {
            if g.fract() == 0.0 {
                format!("{g:.1}")
            } else {
                g.to_string()
            }
        };
        match *self {
            Goal::AtLeast(g) => write!(f, ">= {}×", shown(g)),
            Goal::AtMost(g) => write!(f, "<= {}×", shown(g)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub label: &'static str,
    pub measure: Measure,
    pub goal: Goal,
}

const fn ratio(label: &'static str, metric: Metric, num: RunId, den: RunId, goal: Goal) -> Target {
    Target {
        label,
        measure: Measure::Ratio { metric, num, den },
        goal,
    }
}

const fn rounds(
    label: &'static str,
    metric: Metric,
    phase: Phase,
    num: &'static Server,
    den: &'static Server,
    goal: Goal,
) -> Target {
    Target {
        label,
        measure: Measure::MedianOfRounds {
            metric,
            phase,
            num,
            den,
        },
        goal,
    }
}

const fn full(s: &'static Server) -> RunId {
    RunId::new(Phase::Full, s)
}

const fn steady(s: &'static Server) -> RunId {
    RunId::new(Phase::Steady, s)
}

const fn hold(s: &'static Server) -> RunId {
    RunId::new(Phase::Hold, s)
}

use Goal::{AtLeast, AtMost};
use Metric::{
    DeliveriesPerSec, GeneratorCpuPerDelivery, MemoryPerHeldPoll, P99, RabbitmqCpuPerDelivery,
    ServerCpuPerDelivery,
};

/// The performance targets, in the order the summary lists them. Labels in
/// parentheses are context (RabbitMQ alone, CPU) rather than goals of the
/// gateway's own.
pub const BENCH: &[Target] = &[
    ratio(
        "deliveries/s: gateway-rabbitmq / raw-consume",
        DeliveriesPerSec,
        full(&GATEWAY_RABBITMQ),
        full(&RAW_CONSUME),
        AtLeast(1.5),
    ),
    ratio(
        "deliveries/s: gateway-rabbitmq / raw-pipe",
        DeliveriesPerSec,
        full(&GATEWAY_RABBITMQ),
        full(&RAW_PIPE),
        AtLeast(0.5),
    ),
    // A prefetch window per consumer: RabbitMQ no longer waits for each ack
    // before the next push, so the gateway may reach the AMQP ceiling.
    ratio(
        "deliveries/s, consumer prefetch 10, max=1: gateway-rabbitmq-prefetch / raw-pipe",
        DeliveriesPerSec,
        full(&GATEWAY_RABBITMQ_PREFETCH),
        full(&RAW_PIPE),
        AtLeast(1.0),
    ),
    ratio(
        "deliveries/s, consumer prefetch 10, max=10: gateway-rabbitmq-prefetch-max10 / raw-pipe",
        DeliveriesPerSec,
        full(&GATEWAY_RABBITMQ_PREFETCH_MAX10),
        full(&RAW_PIPE),
        AtLeast(1.0),
    ),
    // Where RabbitMQ's time goes: the history stream's share, and the
    // delivery path's against RabbitMQ alone in the same topology.
    ratio(
        "(without the history) deliveries/s: gateway-rabbitmq-no-history / raw-pipe",
        DeliveriesPerSec,
        full(&GATEWAY_RABBITMQ_NO_HISTORY),
        full(&RAW_PIPE),
        AtLeast(1.0),
    ),
    ratio(
        "(RabbitMQ CPU per delivery, the history's share) gateway-rabbitmq / gateway-rabbitmq-no-history",
        RabbitmqCpuPerDelivery,
        full(&GATEWAY_RABBITMQ),
        full(&GATEWAY_RABBITMQ_NO_HISTORY),
        AtMost(1.0),
    ),
    ratio(
        "(RabbitMQ CPU per delivery, same topology) gateway-rabbitmq-no-history / raw-queues",
        RabbitmqCpuPerDelivery,
        full(&GATEWAY_RABBITMQ_NO_HISTORY),
        full(&RAW_QUEUES),
        AtMost(1.0),
    ),
    rounds(
        "deliveries/s: gateway-memory / nchan",
        DeliveriesPerSec,
        Phase::Full,
        &GATEWAY_MEMORY,
        &NCHAN,
        AtLeast(1.0),
    ),
    ratio(
        "(events through the API) gateway-rabbitmq-api / raw-consume",
        DeliveriesPerSec,
        full(&GATEWAY_RABBITMQ_API),
        full(&RAW_CONSUME),
        AtLeast(1.5),
    ),
    rounds(
        "(CPU per delivery at full speed) nchan / gateway-memory",
        ServerCpuPerDelivery,
        Phase::Full,
        &NCHAN,
        &GATEWAY_MEMORY,
        AtLeast(1.0),
    ),
    rounds(
        "p99 at steady rate: gateway-memory / nchan",
        P99,
        Phase::Steady,
        &GATEWAY_MEMORY,
        &NCHAN,
        AtMost(1.0),
    ),
    ratio(
        "p99 at steady rate: gateway-rabbitmq / nchan",
        P99,
        steady(&GATEWAY_RABBITMQ),
        steady(&NCHAN),
        AtMost(2.0),
    ),
    ratio(
        "p99 at steady rate, consumer prefetch 10: gateway-rabbitmq-prefetch / nchan",
        P99,
        steady(&GATEWAY_RABBITMQ_PREFETCH),
        steady(&NCHAN),
        AtMost(5.0),
    ),
    ratio(
        "(RabbitMQ alone, one queue) p99 at steady rate: raw-pipe / nchan",
        P99,
        steady(&RAW_PIPE),
        steady(&NCHAN),
        AtMost(2.0),
    ),
    ratio(
        "(RabbitMQ, the gateway's topology) p99 at steady rate: raw-queues / nchan",
        P99,
        steady(&RAW_QUEUES),
        steady(&NCHAN),
        AtMost(2.0),
    ),
    ratio(
        "(over that floor) p99 at steady rate: gateway-rabbitmq / raw-queues",
        P99,
        steady(&GATEWAY_RABBITMQ),
        steady(&RAW_QUEUES),
        AtMost(1.0),
    ),
    ratio(
        "memory per held poll: gateway-memory / nchan",
        MemoryPerHeldPoll,
        hold(&GATEWAY_MEMORY),
        hold(&NCHAN),
        AtMost(1.0),
    ),
    ratio(
        "memory per held poll: gateway-rabbitmq / nchan (gateway process)",
        MemoryPerHeldPoll,
        hold(&GATEWAY_RABBITMQ),
        hold(&NCHAN),
        AtMost(1.0),
    ),
    // Messages, not answers: an answer of 10 counts 10.
    rounds(
        "messages/s in bursts, consumer prefetch 10: gateway-rabbitmq-prefetch max=10 / max=1",
        DeliveriesPerSec,
        Phase::Burst,
        &GATEWAY_RABBITMQ_PREFETCH_MAX10,
        &GATEWAY_RABBITMQ_PREFETCH,
        AtLeast(2.0),
    ),
    rounds(
        "(embedded broker, for context) messages/s in bursts: gateway-memory max=10 / max=1",
        DeliveriesPerSec,
        Phase::Burst,
        &GATEWAY_MEMORY_MAX10,
        &GATEWAY_MEMORY,
        AtLeast(2.0),
    ),
];

/// hyper's HTTP/1 client in lp-load against lp-load's own: worth the hand-written
/// one only if hyper's costs lp-load more than 5% more CPU per delivery, or
/// lowers the deliveries/s lp-load achieves by more than 5%.
pub const CLIENTS: &[Target] = &[
    rounds(
        "lp-load CPU per delivery, gateway-memory: hyper's client / lp-load's",
        GeneratorCpuPerDelivery,
        Phase::Full,
        &GATEWAY_MEMORY_HYPER,
        &GATEWAY_MEMORY,
        AtMost(1.05),
    ),
    rounds(
        "deliveries/s, gateway-memory: hyper's client / lp-load's",
        DeliveriesPerSec,
        Phase::Full,
        &GATEWAY_MEMORY_HYPER,
        &GATEWAY_MEMORY,
        AtLeast(0.95),
    ),
    rounds(
        "lp-load CPU per delivery, nchan: hyper's client / lp-load's",
        GeneratorCpuPerDelivery,
        Phase::Full,
        &NCHAN_HYPER,
        &NCHAN,
        AtMost(1.05),
    ),
    rounds(
        "deliveries/s, nchan: hyper's client / lp-load's",
        DeliveriesPerSec,
        Phase::Full,
        &NCHAN_HYPER,
        &NCHAN,
        AtLeast(0.95),
    ),
];

/// The reports a comparison left, by file stem (`full-nchan`,
/// `full-nchan.round2`).
pub trait Reports {
    fn get(&self, stem: &str) -> Option<&Report>;
}

impl Reports for std::collections::HashMap<String, Report> {
    fn get(&self, stem: &str) -> Option<&Report> {
        std::collections::HashMap::get(self, stem)
    }
}

/// `a / b`; none when either is missing or `b` is 0.
pub fn ratio_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b != 0.0).then(|| a / b)
}

/// The median of `values` (the mean of the two middle ones for an even count);
/// none when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The median over `rounds` rounds of each round's `metric(num) / metric(den)`.
pub fn median_of_rounds(
    reports: &impl Reports,
    metric: Metric,
    phase: Phase,
    num: &'static Server,
    den: &'static Server,
    rounds: usize,
) -> Option<f64> {
    let (n, d) = (RunId::new(phase, num), RunId::new(phase, den));
    median(
        (1..=rounds)
            .filter_map(|r| {
                ratio_of(
                    reports.get(&n.round(r)).and_then(|x| metric.of(x)),
                    reports.get(&d.round(r)).and_then(|x| metric.of(x)),
                )
            })
            .collect(),
    )
}

/// A target judged against one comparison's reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub value: Option<f64>,
    /// None when the ratio could not be taken.
    pub met: Option<bool>,
    /// Why the figure may not say what it seems to: a rate not sustained, runs
    /// disturbed by other processes.
    pub notes: Vec<String>,
}

impl Verdict {
    /// `met`, `MISSED` or `n/a`, with the notes in brackets.
    pub fn text(&self) -> String {
        let mut t = match self.met {
            None => "n/a".to_owned(),
            Some(true) => "met".to_owned(),
            Some(false) => "MISSED".to_owned(),
        };
        if !self.notes.is_empty() {
            t.push_str(&format!(" ({})", self.notes.join("; ")));
        }
        t
    }
}

/// Whether other processes used more CPU than `max` (% of one core) during a run.
pub fn disturbed(report: &Report, max: f64) -> bool {
    report.other_cpu() > max
}

impl Target {
    /// The label, with how a median-of-rounds ratio was taken.
    pub fn title(&self, rounds: usize) -> String {
        match self.measure {
            Measure::Ratio { .. } => self.label.to_owned(),
            Measure::MedianOfRounds { .. } => {
                format!("{} (median of {rounds} rounds' ratios)", self.label)
            }
        }
    }

    /// The two runs the ratio is between (for a head-to-head, each server's
    /// median round).
    pub fn runs(&self) -> [RunId; 2] {
        match self.measure {
            Measure::Ratio { num, den, .. } => [num, den],
            Measure::MedianOfRounds {
                phase, num, den, ..
            } => [RunId::new(phase, num), RunId::new(phase, den)],
        }
    }

    pub fn evaluate(&self, reports: &impl Reports, rounds: usize, other_max: f64) -> Verdict {
        let value = match self.measure {
            Measure::Ratio { metric, num, den } => ratio_of(
                reports.get(&num.to_string()).and_then(|r| metric.of(r)),
                reports.get(&den.to_string()).and_then(|r| metric.of(r)),
            ),
            Measure::MedianOfRounds {
                metric,
                phase,
                num,
                den,
            } => median_of_rounds(reports, metric, phase, num, den, rounds),
        };
        let mut notes = Vec::new();
        let runs = self.runs();
        if value.is_some()
            && runs.iter().any(|run| {
                run.phase == Phase::Steady
                    && reports
                        .get(&run.to_string())
                        .is_some_and(|r| !r.sustained())
            })
        {
            notes.push("offered rate not sustained".to_owned());
        }
        let missing: Vec<String> = runs
            .iter()
            .filter_map(|run| {
                let lost = reports.get(&run.to_string())?.burst.as_ref()?.missing;
                (lost > 0).then(|| format!("{run} {lost}"))
            })
            .collect();
        if !missing.is_empty() {
            notes.push(format!("events missing in bursts: {}", missing.join(", ")));
        }
        let busy: Vec<String> = runs
            .iter()
            .filter(|run| run.phase.cpu_sensitive())
            .filter_map(|run| {
                let r = reports.get(&run.to_string())?;
                disturbed(r, other_max).then(|| format!("{run} {:.0}%", r.other_cpu()))
            })
            .collect();
        if !busy.is_empty() {
            notes.push(format!("disturbed: {}", busy.join(", ")));
        }
        Verdict {
            value,
            met: value.map(|v| self.goal.met_by(v)),
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::report::tests::sample_report;

    fn with(f: impl FnOnce(&mut Report)) -> Report {
        let mut r = sample_report();
        r.machine.other_cpu_percent = Some(5.0);
        f(&mut r);
        r
    }

    fn rate(v: f64) -> Report {
        with(|r| r.deliveries_per_sec = v)
    }

    fn p99(v: f64) -> Report {
        with(|r| {
            r.latency_ms.p99 = Some(v);
            r.offered_rate = 5_000;
            r.published_per_sec = 4_990.0;
        })
    }

    fn target(label: &str) -> &'static Target {
        BENCH
            .iter()
            .find(|t| t.label == label)
            .expect("a target of the table")
    }

    #[test]
    fn goals_show_as_written() {
        assert_eq!(Goal::AtLeast(1.5).to_string(), ">= 1.5×");
        assert_eq!(Goal::AtMost(1.0).to_string(), "<= 1.0×");
        assert_eq!(Goal::AtLeast(0.95).to_string(), ">= 0.95×");
    }

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![7.0]), Some(7.0));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn a_head_to_head_ratio_is_the_median_of_the_rounds_own_ratios() {
        // Round 2 met a busy spell: both servers were slow in it. The ratio of
        // the two medians (31,000 / 25,000 = 1.24) would mix spells; the rounds'
        // own ratios are 1.2, 1.1 and 1.0.
        let reports: HashMap<String, Report> = [
            ("full-gateway-memory.round1", rate(30_000.0)),
            ("full-nchan.round1", rate(25_000.0)),
            ("full-gateway-memory.round2", rate(11_000.0)),
            ("full-nchan.round2", rate(10_000.0)),
            ("full-gateway-memory.round3", rate(31_000.0)),
            ("full-nchan.round3", rate(31_000.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let t = target("deliveries/s: gateway-memory / nchan");
        let v = t.evaluate(&reports, 3, 35.0);
        let value = v.value.expect("a ratio");
        assert!((value - 1.1).abs() < 1e-9, "{value}");
        assert_eq!(v.met, Some(true));
        assert_eq!(
            t.title(3),
            "deliveries/s: gateway-memory / nchan (median of 3 rounds' ratios)"
        );
    }

    #[test]
    fn a_round_with_a_missing_run_is_left_out_of_the_median() {
        let reports: HashMap<String, Report> = [
            ("steady-gateway-memory.round1", p99(1.0)),
            ("steady-nchan.round1", p99(2.0)),
            ("steady-gateway-memory.round2", p99(3.0)),
            ("steady-gateway-memory.round3", p99(3.0)),
            ("steady-nchan.round3", p99(2.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let t = target("p99 at steady rate: gateway-memory / nchan");
        // Rounds 1 and 3: 0.5 and 1.5, mean 1.0; at most 1.0 is met.
        let v = t.evaluate(&reports, 3, 35.0);
        assert_eq!(v.value, Some(1.0));
        assert_eq!(v.met, Some(true));
    }

    #[test]
    fn at_most_and_at_least_goals_decide_met_and_missed() {
        let mut reports: HashMap<String, Report> = HashMap::new();
        reports.insert("steady-gateway-rabbitmq".into(), p99(5.0));
        reports.insert("steady-nchan".into(), p99(2.0));
        let t = target("p99 at steady rate: gateway-rabbitmq / nchan");
        let v = t.evaluate(&reports, 3, 35.0);
        assert_eq!((v.value, v.met), (Some(2.5), Some(false)));
        assert_eq!(v.text(), "MISSED");

        reports.insert("full-gateway-rabbitmq".into(), rate(6_000.0));
        reports.insert("full-raw-consume".into(), rate(4_000.0));
        let t = target("deliveries/s: gateway-rabbitmq / raw-consume");
        let v = t.evaluate(&reports, 3, 35.0);
        assert_eq!((v.value, v.met), (Some(1.5), Some(true)));
        reports.insert("full-raw-consume".into(), rate(4_001.0));
        assert_eq!(t.evaluate(&reports, 3, 35.0).met, Some(false));
    }

    #[test]
    fn a_missing_run_gives_no_verdict() {
        let mut reports: HashMap<String, Report> = HashMap::new();
        reports.insert("full-gateway-rabbitmq".into(), rate(6_000.0));
        let t = target("deliveries/s: gateway-rabbitmq / raw-pipe");
        let v = t.evaluate(&reports, 3, 35.0);
        assert_eq!((v.value, v.met), (None, None));
        assert_eq!(v.text(), "n/a");
    }

    #[test]
    fn disturbed_runs_and_unsustained_rates_are_noted() {
        let mut reports: HashMap<String, Report> = HashMap::new();
        reports.insert(
            "steady-raw-queues".into(),
            with(|r| {
                r.latency_ms.p99 = Some(30.0);
                r.offered_rate = 5_000;
                r.published_per_sec = 4_000.0;
                r.machine.other_cpu_percent = Some(41.6);
            }),
        );
        reports.insert("steady-nchan".into(), p99(3.0));
        let t = target("(RabbitMQ, the gateway's topology) p99 at steady rate: raw-queues / nchan");
        let v = t.evaluate(&reports, 3, 35.0);
        assert_eq!(v.met, Some(false));
        assert_eq!(
            v.text(),
            "MISSED (offered rate not sustained; disturbed: steady-raw-queues 42%)"
        );
    }

    #[test]
    fn events_missing_in_bursts_are_noted() {
        let burst = |rate: f64, missing: u64| {
            with(|r| {
                r.deliveries_per_sec = rate;
                r.burst = Some(crate::report::Burst {
                    events_per_subscriber: 10,
                    rounds: 5,
                    rounds_timed_out: u64::from(missing > 0),
                    missing,
                    round_ms_p50: Some(100.0),
                    round_ms_max: Some(200.0),
                });
            })
        };
        let reports: HashMap<String, Report> = [
            ("burst-gateway-memory-max10.round1", burst(30_000.0, 0)),
            ("burst-gateway-memory.round1", burst(10_000.0, 0)),
            ("burst-gateway-memory-max10", burst(30_000.0, 0)),
            ("burst-gateway-memory", burst(10_000.0, 7)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let t = target(
            "(embedded broker, for context) messages/s in bursts: gateway-memory max=10 / max=1",
        );
        let v = t.evaluate(&reports, 1, 35.0);
        assert_eq!((v.value, v.met), (Some(3.0), Some(true)));
        assert_eq!(
            v.text(),
            "met (events missing in bursts: burst-gateway-memory 7)"
        );
    }

    #[test]
    fn held_memory_is_never_called_disturbed() {
        let mut reports: HashMap<String, Report> = HashMap::new();
        let held = |bytes: f64| {
            with(|r| {
                r.server.pss_per_subscriber_bytes = Some(bytes);
                r.machine.other_cpu_percent = Some(90.0);
            })
        };
        reports.insert("hold-gateway-memory".into(), held(9_000.0));
        reports.insert("hold-nchan".into(), held(12_000.0));
        let v = target("memory per held poll: gateway-memory / nchan").evaluate(&reports, 3, 35.0);
        assert_eq!((v.value, v.met), (Some(0.75), Some(true)));
        assert!(v.notes.is_empty(), "{:?}", v.notes);
    }

    #[test]
    fn cpu_per_delivery_counts_the_broker_with_the_server() {
        // nchan / gateway: 60 / (20 + 30) = 1.2 in every round.
        let gateway = with(|r| {
            r.server.cpu_us_per_delivery = Some(20.0);
            r.broker.as_mut().unwrap().cpu_us_per_delivery = Some(30.0);
        });
        let nchan = with(|r| {
            r.server.cpu_us_per_delivery = Some(60.0);
            r.broker = None;
        });
        let reports: HashMap<String, Report> = (1..=3)
            .flat_map(|i| {
                [
                    (format!("full-gateway-memory.round{i}"), gateway.clone()),
                    (format!("full-nchan.round{i}"), nchan.clone()),
                ]
            })
            .collect();
        let v = target("(CPU per delivery at full speed) nchan / gateway-memory")
            .evaluate(&reports, 3, 35.0);
        assert!((v.value.unwrap() - 1.2).abs() < 1e-9, "{v:?}");
    }
}
