//! What one run measured: the report lp-load prints, writes with `--json`, and
//! `lp-load compare` reads back. Owns the report's shape (its JSON field names
//! are what other tools read: tests/load_smoke.rs, tests/observability) and the
//! figures derived from it; must not measure anything itself.

use serde::{Deserialize, Serialize};

use crate::cli::{ClientKind, TargetKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub target: TargetKind,
    pub mode: Mode,
    /// The HTTP/1 client lp-load used (reports of older lp-loads have none:
    /// they used the hand-written one).
    #[serde(default = "handwritten")]
    pub client: ClientKind,
    pub subscribers: usize,
    /// Each poll's `max` (`--max`; reports of older lp-loads have none: 1).
    #[serde(default = "one")]
    pub max: u8,
    /// Events/s offered; 0 = as fast as the publishers go.
    pub offered_rate: u64,
    pub publish_via: EventPath,
    pub duration_secs: f64,
    pub published: u64,
    pub delivered: u64,
    pub deliveries_per_sec: f64,
    /// Answers that carried messages (raw targets: AMQP deliveries); fewer
    /// than `delivered` when answers carry several. None in older reports.
    pub answers: Option<u64>,
    pub answers_per_sec: Option<f64>,
    pub published_per_sec: f64,
    pub undelivered: u64,
    pub latency_ms: Latency,
    pub errors: Errors,
    /// `--burst`: the rounds (none for a run at a rate or holding polls).
    pub burst: Option<Burst>,
    /// Polls (consumers) the server said it held before publishing.
    pub polls_held: Option<usize>,
    pub all_polls_held: bool,
    pub server: Server,
    /// The broker behind the server, sampled on its own (`--broker-pid`).
    pub broker: Option<Broker>,
    pub generator: Generator,
    pub machine: Machine,
}

fn handwritten() -> ClientKind {
    ClientKind::Handwritten
}

fn one() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Events published (at a rate or at full speed).
    Throughput,
    /// `--hold-only`: polls held, nothing published.
    Hold,
    /// `--burst`: rounds of N events to every subscriber at once.
    Burst,
}

/// What the rounds of a `--burst` run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Burst {
    /// Events to every subscriber per round (`--burst`).
    pub events_per_subscriber: u32,
    pub rounds: u64,
    /// Rounds whose events were not all delivered within `--burst-wait`.
    pub rounds_timed_out: u64,
    /// Events published but not delivered within their round's wait (one that
    /// came later still counts in `delivered`, and may let a later round end
    /// before its own last event).
    pub missing: u64,
    /// How long a round took, its first publish to its last delivery.
    pub round_ms_p50: Option<f64>,
    pub round_ms_max: Option<f64>,
}

/// How events reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventPath {
    #[serde(rename = "gateway management API")]
    GatewayApi,
    #[serde(rename = "AMQP, straight to RabbitMQ")]
    GatewayAmqp,
    #[serde(rename = "nchan publisher location")]
    NchanPublisher,
    #[serde(rename = "AMQP")]
    Amqp,
}

impl EventPath {
    pub fn as_str(self) -> &'static str {
        match self {
            EventPath::GatewayApi => "gateway management API",
            EventPath::GatewayAmqp => "AMQP, straight to RabbitMQ",
            EventPath::NchanPublisher => "nchan publisher location",
            EventPath::Amqp => "AMQP",
        }
    }
}

/// Publish-to-response latency; none without deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub samples: usize,
}

/// Errors by kind, as the subscribers and publishers counted them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    pub publish: u64,
    /// 408 and 504 from the gateway, 304 and 408 from nchan: a poll timed out.
    #[serde(rename = "408")]
    pub timeouts: u64,
    #[serde(rename = "409")]
    pub conflicts: u64,
    #[serde(rename = "404")]
    pub gone: u64,
    #[serde(rename = "503")]
    pub unavailable: u64,
    pub network: u64,
    pub other: u64,
    pub amqp: u64,
    pub duplicates_dropped: u64,
    pub strays_requeued: u64,
}

impl Errors {
    /// The kinds that happened, `"408: 12, network: 1"`; empty when none did.
    pub fn summary(&self) -> String {
        [
            ("publish", self.publish),
            ("408", self.timeouts),
            ("409", self.conflicts),
            ("404", self.gone),
            ("503", self.unavailable),
            ("network", self.network),
            ("other", self.other),
            ("amqp", self.amqp),
            ("duplicates_dropped", self.duplicates_dropped),
            ("strays_requeued", self.strays_requeued),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// The server's processes (`--pid`; nginx's master and workers; RabbitMQ for
/// the raw targets). "start" is before anything was created, "base" after the
/// subscriptions were made, "held" with the polls held.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub what: String,
    pub pids: Vec<u32>,
    pub rss_start_bytes: Option<u64>,
    pub rss_base_bytes: Option<u64>,
    pub rss_held_bytes: Option<u64>,
    pub rss_held_max_bytes: Option<u64>,
    pub pss_start_bytes: Option<u64>,
    pub pss_base_bytes: Option<u64>,
    pub pss_held_bytes: Option<u64>,
    /// (held − base) / subscribers: a poll alone, its subscription made before.
    pub rss_per_held_poll_bytes: Option<f64>,
    pub pss_per_held_poll_bytes: Option<f64>,
    /// (held − start) / subscribers: a poll with its subscription.
    pub rss_per_subscriber_bytes: Option<f64>,
    pub pss_per_subscriber_bytes: Option<f64>,
    pub rss_end_bytes: Option<u64>,
    /// CPU over the publishing window, % of one core.
    pub cpu_percent: Option<f64>,
    /// CPU microseconds per delivery, publishing and drain included.
    pub cpu_us_per_delivery: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Broker {
    pub pid: u32,
    pub rss_start_bytes: Option<u64>,
    pub rss_base_bytes: Option<u64>,
    pub rss_held_bytes: Option<u64>,
    pub rss_per_held_poll_bytes: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
}

/// lp-load itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Generator {
    pub cpu_percent: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    /// The whole machine's busy CPU, % of one core.
    pub cpu_busy_percent: Option<f64>,
    /// What processes other than the server, the broker and lp-load used, %
    /// of one core: how much the rest of a shared machine disturbed the run.
    pub other_cpu_percent: Option<f64>,
}

impl Report {
    /// The server's CPU µs per delivery, plus the broker's when sampled: much
    /// steadier than deliveries/s on a machine shared with other work. A
    /// broker that is the server itself (a raw target's RabbitMQ) counts once.
    pub fn server_cpu_per_delivery(&self) -> Option<f64> {
        let broker = self
            .broker
            .as_ref()
            .filter(|b| !self.server.pids.contains(&b.pid))
            .and_then(|b| b.cpu_us_per_delivery);
        Some(self.server.cpu_us_per_delivery? + broker.unwrap_or(0.0))
    }

    /// RabbitMQ's own CPU µs per delivery: the broker's (`--broker-pid`), or
    /// the server's for a raw target (RabbitMQ is the server there); none for
    /// a server without RabbitMQ behind it.
    pub fn rabbitmq_cpu_per_delivery(&self) -> Option<f64> {
        match &self.broker {
            Some(b) => b.cpu_us_per_delivery,
            None if self.target.is_raw() => self.server.cpu_us_per_delivery,
            None => None,
        }
    }

    /// Resident memory per held poll, its subscription included (PSS where
    /// `/proc` gave it: nginx's shared pages counted once).
    pub fn memory_per_held_poll(&self) -> Option<f64> {
        self.server
            .pss_per_subscriber_bytes
            .or(self.server.rss_per_subscriber_bytes)
    }

    /// Resident memory per held poll, the subscriptions made before the baseline.
    pub fn memory_per_poll_alone(&self) -> Option<f64> {
        self.server
            .pss_per_held_poll_bytes
            .or(self.server.rss_per_held_poll_bytes)
    }

    /// Whether the publishers kept up with the offered rate (within 5%).
    pub fn sustained(&self) -> bool {
        self.published_per_sec >= 0.95 * self.offered_rate as f64
    }

    /// CPU the rest of the machine used during the run, % of one core (0 when
    /// unknown).
    pub fn other_cpu(&self) -> f64 {
        self.machine.other_cpu_percent.unwrap_or(0.0)
    }

    /// The column titles of [`Report::row`].
    pub fn header() -> String {
        format!(
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
        )
    }

    /// One table row: what a run did at a glance.
    pub fn row(&self) -> String {
        let ms = |v: Option<f64>| v.unwrap_or(f64::NAN);
        format!(
            "{:<20} {:>6} {:>10} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>7}",
            self.label,
            self.subscribers,
            self.published,
            self.delivered,
            self.deliveries_per_sec,
            ms(self.latency_ms.p50),
            ms(self.latency_ms.p99),
            ms(self.latency_ms.p999),
            fmt_opt(self.memory_per_poll_alone(), 0),
            fmt_opt(self.server.cpu_percent, 0),
        )
    }

    /// The line lp-load ends a run with on stderr.
    pub fn machine_line(&self) -> String {
        let errors = self.errors.summary();
        format!(
            "lp-load: {}: generator cpu {}%, machine busy {}% of {}% (others {}%); errors {}",
            self.label,
            fmt_opt(self.generator.cpu_percent, 0),
            fmt_opt(self.machine.cpu_busy_percent, 0),
            self.machine.cores * 100,
            fmt_opt(self.machine.other_cpu_percent, 0),
            if errors.is_empty() { "none" } else { &errors },
        )
    }
}

pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A report as lp-load wrote it before the report was typed (a
    /// `scripts/bench-compare` run's `full-gateway-rabbitmq.json`, as it was):
    /// reports already on disk stay readable.
    const UNTYPED_REPORT: &str = include_str!("testdata/untyped-report.json");

    /// A real report to build test cases from.
    pub fn sample_report() -> Report {
        serde_json::from_str(UNTYPED_REPORT).expect("the sample report parses")
    }

    #[test]
    fn a_report_of_the_untyped_lp_load_parses() {
        let r: Report = serde_json::from_str(UNTYPED_REPORT).expect("parses");
        assert_eq!(r.label, "full-gateway-rabbitmq");
        assert_eq!(r.target, TargetKind::Gateway);
        assert_eq!(r.mode, Mode::Throughput);
        assert_eq!(r.client, ClientKind::Handwritten);
        assert_eq!(r.max, 1);
        assert_eq!((r.answers, r.burst.as_ref()), (None, None));
        assert_eq!(r.publish_via, EventPath::GatewayAmqp);
        assert!(r.delivered > 0 && r.delivered <= r.published);
        assert!(r.latency_ms.p99.is_some_and(|p99| p99 > 0.0));
        let broker = r.broker.as_ref().expect("the broker was sampled");
        assert!(broker.cpu_us_per_delivery.is_some());
        assert_eq!(
            r.server_cpu_per_delivery(),
            Some(r.server.cpu_us_per_delivery.unwrap() + broker.cpu_us_per_delivery.unwrap())
        );
        // Written again, the same report reads back the same.
        let again: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn json_keeps_the_field_names_other_tools_read() {
        let r = sample_report();
        let v = serde_json::to_value(&r).unwrap();
        for pointer in [
            "/published",
            "/delivered",
            "/subscribers",
            "/polls_held",
            "/latency_ms/samples",
            "/errors/duplicates_dropped",
            "/errors/408",
            "/server/rss_base_bytes",
            "/server/pids",
            "/machine/other_cpu_percent",
        ] {
            assert!(v.pointer(pointer).is_some(), "{pointer} missing in {v}");
        }
        assert_eq!(v["target"], "gateway");
        assert_eq!(v["mode"], "throughput");
    }

    #[test]
    fn a_run_without_deliveries_has_no_latency_and_says_so_in_json() {
        let mut r = sample_report();
        r.latency_ms = Latency {
            p50: None,
            p99: None,
            p999: None,
            max: None,
            samples: 0,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""p99":null"#), "{text}");
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.latency_ms.p99, None);
    }

    #[test]
    fn rabbitmq_as_the_server_and_as_the_broker_counts_once() {
        let mut r = sample_report();
        r.target = TargetKind::RawQueues;
        r.server.cpu_us_per_delivery = Some(80.0);
        let broker = r.broker.as_mut().expect("the sample has a broker");
        broker.cpu_us_per_delivery = Some(80.0);
        broker.pid = 4242;
        r.server.pids = vec![4242];
        assert_eq!(r.server_cpu_per_delivery(), Some(80.0));
        assert_eq!(r.rabbitmq_cpu_per_delivery(), Some(80.0));
        // Without --broker-pid, a raw target's server is RabbitMQ.
        r.broker = None;
        assert_eq!(r.rabbitmq_cpu_per_delivery(), Some(80.0));
        // The gateway on the embedded broker has no RabbitMQ.
        r.target = TargetKind::Gateway;
        assert_eq!(r.rabbitmq_cpu_per_delivery(), None);
    }

    #[test]
    fn memory_per_held_poll_prefers_pss() {
        let mut r = sample_report();
        r.server.pss_per_subscriber_bytes = Some(9_000.0);
        r.server.rss_per_subscriber_bytes = Some(12_000.0);
        assert_eq!(r.memory_per_held_poll(), Some(9_000.0));
        r.server.pss_per_subscriber_bytes = None;
        assert_eq!(r.memory_per_held_poll(), Some(12_000.0));
    }

    #[test]
    fn a_steady_rate_is_sustained_within_five_percent() {
        let mut r = sample_report();
        r.offered_rate = 5_000;
        r.published_per_sec = 4_760.0;
        assert!(r.sustained());
        r.published_per_sec = 4_740.0;
        assert!(!r.sustained());
    }

    #[test]
    fn errors_summary_names_only_what_happened() {
        let e = Errors {
            timeouts: 12,
            network: 1,
            ..Errors::default()
        };
        assert_eq!(e.summary(), "408: 12, network: 1");
        assert_eq!(Errors::default().summary(), "");
    }
}
