//! The comparison's summary: `results.md` (every run's figures by phase, the
//! head-to-head rounds, the targets) and the verdict lines printed at the end.
//! Owns how figures are shown; must not compute a verdict (targets.rs does).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::plan::{Phase, Plan, RunId, Step};
use super::targets::{Verdict, ratio_of};
use crate::report::Report;

/// What the summary is made from.
pub struct Summary<'a> {
    pub plan: &'a Plan,
    pub reports: &'a HashMap<String, Report>,
    pub machine: &'a str,
    /// UTC, as RFC 3339.
    pub date: &'a str,
    pub elapsed_secs: u64,
    pub rounds: usize,
    pub other_max: f64,
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        None => "–".into(),
        Some(x) => group_thousands(&format!("{x:.digits$}")),
    }
}

/// `12345.67` → `12,345.67`.
fn group_thousands(s: &str) -> String {
    let (sign, rest) = s.strip_prefix('-').map_or(("", s), |r| ("-", r));
    let (int, frac) = rest
        .split_once('.')
        .map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(
        || "–".into(),
        |b| format!("{} MiB", num(Some(b as f64 / 1_048_576.0), 1)),
    )
}

impl Summary<'_> {
    fn get(&self, run: &RunId) -> Option<&Report> {
        self.reports.get(&run.to_string())
    }

    /// Server CPU %, with RabbitMQ's beside it when sampled (and not the
    /// server itself, as for the raw targets).
    fn server_cpu(r: &Report) -> String {
        let server = num(r.server.cpu_percent, 0);
        match r
            .broker
            .as_ref()
            .filter(|b| !r.server.pids.contains(&b.pid))
            .and_then(|b| b.cpu_percent)
        {
            Some(b) => format!("{server} + RabbitMQ {}", num(Some(b), 0)),
            None => server,
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# lp-load compare --plan {}\n", self.plan.name);
        let _ = writeln!(
            w,
            "Machine: {}.  \nDate: {}.  \nWhole run: {} s.\n",
            self.machine, self.date, self.elapsed_secs
        );
        if !self.plan.runs_of(Phase::Full).is_empty() {
            self.full_speed(w);
        }
        if !self.plan.runs_of(Phase::Steady).is_empty() {
            self.steady(w);
        }
        if !self.plan.runs_of(Phase::Hold).is_empty() {
            self.held(w);
        }
        if !self.plan.runs_of(Phase::Burst).is_empty() {
            self.bursts(w);
        }
        if self
            .plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::HeadToHead { .. }))
        {
            self.head_to_head(w);
        }
        if !self.plan.targets.is_empty() {
            self.targets(w);
        }
        md
    }

    fn full_speed(&self, w: &mut String) {
        let _ = writeln!(w, "## (a) Full speed\n");
        let _ = writeln!(
            w,
            "Server CPU µs per delivery: the server's CPU time (plus RabbitMQ's for the \
             gateway on RabbitMQ) over the run divided by the deliveries — steadier than \
             deliveries/s on a shared machine. For the raw targets the server is RabbitMQ \
             alone: their client side (the naive gateway, the pipe's consumer) runs in lp-load. \
             RabbitMQ's own share is its column, for every server RabbitMQ is behind. `max`: \
             the most messages one answer may carry (each counts as a delivery).\n"
        );
        let _ = writeln!(
            w,
            "Events reach gateway-memory through its management API and nchan through its \
             publisher location (HTTP to the server measured, both); gateway-rabbitmq gets \
             them straight from RabbitMQ like the raw baselines (gateway-rabbitmq-api: through \
             the management API instead). CPU in % of one core; \"other\" is what the rest of \
             the machine used meanwhile.\n"
        );
        let _ = writeln!(
            w,
            "| target | events via | max | deliveries/s | published/s | p50 ms | p99 ms | \
             p999 ms | server CPU % | server CPU µs per delivery | RabbitMQ CPU µs per \
             delivery | lp-load CPU % | lp-load CPU µs per delivery | other CPU % | errors |"
        );
        let _ = writeln!(
            w,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for run in self.plan.runs_of(Phase::Full) {
            let Some(r) = self.get(&run) else {
                let _ = writeln!(w, "| {} | (no report) ||||||||||||||", run.server.name);
                continue;
            };
            let errors = r.errors.summary();
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.server.name,
                r.publish_via.as_str(),
                r.max,
                num(Some(r.deliveries_per_sec), 0),
                num(Some(r.published_per_sec), 0),
                num(r.latency_ms.p50, 2),
                num(r.latency_ms.p99, 2),
                num(r.latency_ms.p999, 2),
                Self::server_cpu(r),
                num(r.server_cpu_per_delivery(), 0),
                num(r.rabbitmq_cpu_per_delivery(), 0),
                num(r.generator.cpu_percent, 0),
                num(r.generator.cpu_us_per_delivery, 1),
                num(r.machine.other_cpu_percent, 0),
                if errors.is_empty() { "–" } else { &errors },
            );
        }
    }

    fn steady(&self, w: &mut String) {
        let _ = writeln!(w, "\n## (b) Latency at a steady offered rate\n");
        let _ = writeln!(
            w,
            "| target | max | offered/s | published/s | deliveries/s | p50 ms | p99 ms | p999 ms | \
             server CPU % | server CPU µs per delivery | RabbitMQ CPU µs per delivery | \
             lp-load CPU % | other CPU % |"
        );
        let _ = writeln!(
            w,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in self.plan.runs_of(Phase::Steady) {
            let Some(r) = self.get(&run) else {
                let _ = writeln!(w, "| {} | (no report) |||||||||||", run.server.name);
                continue;
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.server.name,
                r.max,
                num(Some(r.offered_rate as f64), 0),
                num(Some(r.published_per_sec), 0),
                if r.sustained() {
                    ""
                } else {
                    " (not sustained)"
                },
                num(Some(r.deliveries_per_sec), 0),
                num(r.latency_ms.p50, 2),
                num(r.latency_ms.p99, 2),
                num(r.latency_ms.p999, 2),
                Self::server_cpu(r),
                num(r.server_cpu_per_delivery(), 0),
                num(r.rabbitmq_cpu_per_delivery(), 0),
                num(r.generator.cpu_percent, 0),
                num(r.machine.other_cpu_percent, 0),
            );
        }
    }

    fn bursts(&self, w: &mut String) {
        let _ = writeln!(w, "\n## (d) Bursts\n");
        let _ = writeln!(
            w,
            "Rounds of N events to every subscriber at once, published as fast as the \
             publishers go; a round ends when all of its events were delivered (or its wait \
             ran out: the rest count as missing), then the next one starts. Messages/s counts \
             messages (an answer of 10 counts 10), answers/s the answers that carried them; \
             latency is publish to response, as elsewhere.\n"
        );
        let _ = writeln!(
            w,
            "| target | max | subscribers | events per subscriber per round | rounds (timed \
             out) | missing | messages/s | answers/s | round ms p50 / max | p50 ms | p99 ms | \
             server CPU µs per delivery | RabbitMQ CPU µs per delivery | lp-load CPU % | other \
             CPU % | errors |"
        );
        let _ = writeln!(
            w,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for run in self.plan.runs_of(Phase::Burst) {
            let Some(r) = self.get(&run) else {
                let _ = writeln!(w, "| {} | (no report) |||||||||||||||", run.server.name);
                continue;
            };
            let b = r.burst.as_ref();
            let errors = r.errors.summary();
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
                run.server.name,
                r.max,
                r.subscribers,
                b.map_or_else(|| "–".into(), |b| b.events_per_subscriber.to_string()),
                b.map_or_else(
                    || "–".into(),
                    |b| format!("{} ({})", b.rounds, b.rounds_timed_out)
                ),
                num(b.map(|b| b.missing as f64), 0),
                num(Some(r.deliveries_per_sec), 0),
                num(r.answers_per_sec, 0),
                num(b.and_then(|b| b.round_ms_p50), 1),
                num(b.and_then(|b| b.round_ms_max), 1),
                num(r.latency_ms.p50, 2),
                num(r.latency_ms.p99, 2),
                num(r.server_cpu_per_delivery(), 0),
                num(r.rabbitmq_cpu_per_delivery(), 0),
                num(r.generator.cpu_percent, 0),
                num(r.machine.other_cpu_percent, 0),
                if errors.is_empty() { "–" } else { &errors },
            );
        }
    }

    fn held(&self, w: &mut String) {
        let _ = writeln!(w, "\n## (c) Resident memory per held poll\n");
        let _ = writeln!(
            w,
            "Proportional set size (PSS: pages shared between nginx's processes counted once) \
             of the server, with the polls held minus before anything was created, per held \
             poll (the gateway's subscription queue or nchan's channel included); the gateway \
             without its subscriptions (poll only) alongside.\n"
        );
        let _ = writeln!(
            w,
            "| target | polls held | all held | server before | server with polls | per held \
             poll | per poll, subscriptions existing | RabbitMQ per held poll (consumer) |"
        );
        let _ = writeln!(w, "|---|---:|---|---:|---:|---:|---:|---:|");
        for run in self.plan.runs_of(Phase::Hold) {
            let Some(r) = self.get(&run) else {
                let _ = writeln!(w, "| {} | (no report) |||||||", run.server.name);
                continue;
            };
            let broker = r.broker.as_ref().and_then(|b| b.rss_per_held_poll_bytes);
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} B | {} B | {} |",
                run.server.name,
                num(r.polls_held.map(|h| h as f64), 0),
                if r.all_polls_held { "yes" } else { "NO" },
                mib(r.server.pss_start_bytes),
                mib(r.server.pss_held_bytes),
                num(r.memory_per_held_poll(), 0),
                num(r.memory_per_poll_alone(), 0),
                broker.map_or_else(|| "–".into(), |b| format!("{} B", num(Some(b), 0))),
            );
        }
    }

    fn head_to_head(&self, w: &mut String) {
        let _ = writeln!(w, "\n## Head-to-head rounds\n");
        let _ = writeln!(
            w,
            "Each head-to-head ran {} rounds, its two servers one after the other, so that both \
             meet the same spells of a shared machine. The tables above use each server's \
             median round (marked *); the head-to-head ratios below are the median of the \
             rounds' own ratios (the two runs of a round met the same spell of the machine).\n",
            self.rounds
        );
        let _ = writeln!(
            w,
            "| phase | round | first | second | ratio in the round | other CPU % (first / second) |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---|");
        for step in self.plan.steps {
            let Step::HeadToHead {
                phase,
                a,
                b,
                median_by,
            } = *step
            else {
                continue;
            };
            let (unit, digits) = median_by.unit();
            let (ra, rb) = (RunId::new(phase, a), RunId::new(phase, b));
            let picked = |run: &RunId| self.get(run).and_then(|r| median_by.of(r));
            for round in 1..=self.rounds {
                let (ga, gb) = (
                    self.reports.get(&ra.round(round)),
                    self.reports.get(&rb.round(round)),
                );
                let (va, vb) = (
                    ga.and_then(|r| median_by.of(r)),
                    gb.and_then(|r| median_by.of(r)),
                );
                let mark = |v: Option<f64>, run: &RunId| {
                    let star = v.is_some() && v == picked(run);
                    format!("{}{}", num(v, digits), if star { " *" } else { "" })
                };
                let _ = writeln!(
                    w,
                    "| {} ({unit}) | {round} | {}: {} | {}: {} | {} | {} / {} |",
                    phase.name(),
                    a.name,
                    mark(va, &ra),
                    b.name,
                    mark(vb, &rb),
                    ratio_of(va, vb).map_or_else(|| "–".into(), |x| format!("{x:.2}×")),
                    num(ga.and_then(|r| r.machine.other_cpu_percent), 0),
                    num(gb.and_then(|r| r.machine.other_cpu_percent), 0),
                );
            }
        }
    }

    /// Every target with its verdict.
    pub fn verdicts(&self) -> Vec<(String, Verdict, String)> {
        self.plan
            .targets
            .iter()
            .map(|t| {
                (
                    t.title(self.rounds),
                    t.evaluate(self.reports, self.rounds, self.other_max),
                    t.goal.to_string(),
                )
            })
            .collect()
    }

    fn targets(&self, w: &mut String) {
        let _ = writeln!(w, "\n## Ratios against the targets\n");
        let _ = writeln!(
            w,
            "A ratio is marked *disturbed* when, during one of its runs, other processes on the \
             machine used more than {:.0}% of a core (even after reruns).\n",
            self.other_max
        );
        let _ = writeln!(w, "| ratio | measured | target | |");
        let _ = writeln!(w, "|---|---:|---|---|");
        for (title, v, goal) in self.verdicts() {
            let _ = writeln!(w, "| {title} | {} | {goal} | {} |", value(&v), v.text());
        }
    }

    /// The lines printed at the end of a comparison.
    pub fn verdict_lines(&self) -> String {
        if self.plan.targets.is_empty() {
            return String::new();
        }
        let mut out = String::from("bench-compare: ratios (same run, same machine)\n");
        for (title, v, goal) in self.verdicts() {
            let _ = writeln!(
                out,
                "  {title:<80} {:>8}   target {goal}   {}",
                value(&v),
                v.text()
            );
        }
        out
    }
}

fn value(v: &Verdict) -> String {
    v.value.map_or_else(|| "–".into(), |x| format!("{x:.2}×"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::plan::PlanName;
    use crate::report::EventPath;
    use crate::report::tests::sample_report;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands("1234567.891"), "1,234,567.891");
        assert_eq!(group_thousands("123"), "123");
        assert_eq!(group_thousands("-1234"), "-1,234");
        assert_eq!(num(None, 2), "–");
        assert_eq!(num(Some(24324.4), 0), "24,324");
    }

    fn reports_of(plan: &Plan) -> HashMap<String, Report> {
        let mut reports = HashMap::new();
        for step in plan.steps {
            for run in step.runs() {
                let mut r = sample_report();
                r.label = run.to_string();
                reports.insert(run.to_string(), r.clone());
                for round in 1..=3 {
                    reports.insert(run.round(round), r.clone());
                }
            }
        }
        reports
    }

    fn summary<'a>(plan: &'a Plan, reports: &'a HashMap<String, Report>) -> Summary<'a> {
        Summary {
            plan,
            reports,
            machine: "2 cores",
            date: "2026-12-04T10:00:00Z",
            elapsed_secs: 480,
            rounds: 3,
            other_max: 35.0,
        }
    }

    #[test]
    fn the_summary_shows_every_run_and_every_target() {
        let plan = PlanName::Bench.plan();
        let mut reports = reports_of(&plan);
        reports.remove("steady-raw-pipe");
        if let Some(r) = reports.get_mut("full-gateway-rabbitmq-api") {
            r.publish_via = EventPath::GatewayApi;
        }
        let s = summary(&plan, &reports);
        let md = s.markdown();
        assert!(md.contains("| raw-pipe | (no report) |"), "{md}");
        assert!(md.contains("## (d) Bursts"), "{md}");
        // max=1 by default (the sample report predates the field); RabbitMQ's
        // CPU per delivery beside the server's.
        assert!(
            md.contains("| gateway-rabbitmq-prefetch | AMQP, straight to RabbitMQ | 1 | "),
            "{md}"
        );
        assert!(md.contains("| RabbitMQ CPU µs per delivery |"), "{md}");
        assert!(
            md.contains("| gateway-rabbitmq-api | gateway management API |"),
            "{md}"
        );
        for t in plan.targets {
            assert!(md.contains(&t.title(3)), "{} missing", t.label);
        }
        // Identical reports: every ratio 1.00×; the median round is marked.
        assert!(
            md.contains("| full (deliveries/s) | 2 | gateway-memory: "),
            "{md}"
        );
        assert!(md.contains(" * | 1.00× |"), "{md}");
        let lines = s.verdict_lines();
        assert_eq!(lines.lines().count(), plan.targets.len() + 1);
        assert!(lines.contains("(RabbitMQ alone, one queue) p99 at steady rate: raw-pipe / nchan"));
    }

    #[test]
    fn a_plan_without_held_polls_or_targets_leaves_their_sections_out() {
        let plan = PlanName::Load.plan();
        let reports = reports_of(&plan);
        let s = summary(&plan, &reports);
        let md = s.markdown();
        assert!(md.contains("## (a) Full speed"), "{md}");
        assert!(md.contains("## (b) Latency"), "{md}");
        assert!(!md.contains("## (c)"), "{md}");
        assert!(!md.contains("## (d)"), "{md}");
        assert!(!md.contains("Head-to-head"), "{md}");
        assert!(!md.contains("Ratios against the targets"), "{md}");
        assert_eq!(s.verdict_lines(), "");
    }
}
