//! What a run counts and samples: delivery counters, latencies, and the CPU and
//! memory of processes read from `/proc`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::report::Errors;

/// Everything the subscribers and publishers count, by kind.
#[derive(Default)]
pub struct Counters {
    /// Messages delivered (an answer of several counts each).
    pub delivered: AtomicU64,
    /// Answers that carried messages (raw targets: AMQP deliveries): below
    /// `delivered` when answers carry several (a poll's `max`).
    pub answers: AtomicU64,
    pub duplicates: AtomicU64,
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    /// 408 and 504 from the gateway, 304 and 408 from nchan: the poll timed out.
    pub timeouts: AtomicU64,
    pub unavailable_503: AtomicU64,
    pub conflicts_409: AtomicU64,
    pub gone_404: AtomicU64,
    pub network_errors: AtomicU64,
    pub other_errors: AtomicU64,
    /// AMQP operations that failed (raw targets).
    pub amqp_errors: AtomicU64,
    /// raw-consume: deliveries that reached a consumer between its ack and its
    /// cancel, handed back with reject(requeue).
    pub strays_requeued: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self) -> Errors {
        let g = Self::get;
        Errors {
            publish: g(&self.publish_errors),
            timeouts: g(&self.timeouts),
            conflicts: g(&self.conflicts_409),
            gone: g(&self.gone_404),
            unavailable: g(&self.unavailable_503),
            network: g(&self.network_errors),
            other: g(&self.other_errors),
            amqp: g(&self.amqp_errors),
            duplicates_dropped: g(&self.duplicates),
            strays_requeued: g(&self.strays_requeued),
        }
    }
}

/// Publish-to-response latencies in microseconds.
#[derive(Default)]
pub struct Latencies(Mutex<Vec<u32>>);

impl Latencies {
    /// Records the latency of every event in `body`: one, or the JSON array
    /// of an answer of several (a poll's `max`).
    pub fn record_each(&self, body: &[u8], received_us: u64) {
        let mut rest = body;
        while let Some((sent, after)) = sent_at_and_after(rest) {
            let micros = received_us.saturating_sub(sent).min(u32::MAX as u64) as u32;
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(micros);
            rest = after;
        }
    }

    pub fn record(&self, body: &[u8], received_us: u64) {
        if let Some(sent) = sent_at(body) {
            let micros = received_us.saturating_sub(sent).min(u32::MAX as u64) as u32;
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(micros);
        }
    }

    pub fn sorted(&self) -> Vec<u32> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        v.sort_unstable();
        v
    }
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The `sent_at_us` number of an event body, found without parsing the JSON
/// (the generator shares the machine with the server: it must stay cheap).
pub fn sent_at(body: &[u8]) -> Option<u64> {
    sent_at_and_after(body).map(|(sent, _)| sent)
}

/// The first `sent_at_us` number of `body`, and what follows it.
fn sent_at_and_after(body: &[u8]) -> Option<(u64, &[u8])> {
    const KEY: &[u8] = b"\"sent_at_us\":";
    // Built once: `memmem::find` builds a searcher on every call.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let at = FINDER.find(body)? + KEY.len();
    let digits = body[at..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some((n, &body[at..]))
}

/// Milliseconds at quantile `p` of sorted microsecond samples (none without samples).
pub fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * p).round() as usize;
    Some(f64::from(sorted[i.min(last)]) / 1000.0)
}

/// Resident memory and CPU time of a set of processes, summed.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// Sum of VmRSS.
    pub rss: u64,
    /// Sum of Pss (proportional set size, from smaps_rollup): pages shared between
    /// the processes (nginx's shared memory zone, say) are counted once.
    pub pss: Option<u64>,
    /// user + system CPU seconds.
    pub cpu_secs: f64,
}

fn status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn one(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status_kb(&status, "VmRSS:")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| status_kb(&s, "Pss:"))
        .map(|kb| kb * 1024);
    Some(ProcSample {
        rss: rss_kb * 1024,
        pss,
        cpu_secs: (utime + stime) / 100.0,
    })
}

/// Sums the samples of `pids` (those that exist); None when none does.
pub fn sample(pids: &[u32]) -> Option<ProcSample> {
    let mut total: Option<ProcSample> = None;
    for s in pids.iter().filter_map(|&p| one(p)) {
        total = Some(match total {
            None => s,
            Some(t) => ProcSample {
                rss: t.rss + s.rss,
                pss: t.pss.zip(s.pss).map(|(a, b)| a + b),
                cpu_secs: t.cpu_secs + s.cpu_secs,
            },
        });
    }
    total
}

fn ppid_and_comm(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `roots` and their direct children (nginx: the master and its workers).
pub fn with_children(roots: &[u32]) -> Vec<u32> {
    let mut pids = roots.to_vec();
    for pid in all_pids() {
        if let Some((ppid, _)) = ppid_and_comm(pid)
            && roots.contains(&ppid)
            && !pids.contains(&pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// The RabbitMQ node's `beam.smp` (not the short-lived one of a `rabbitmqctl`).
pub fn find_rabbitmq() -> Option<u32> {
    all_pids().into_iter().find(|&pid| {
        ppid_and_comm(pid).is_some_and(|(_, comm)| comm == "beam.smp")
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                memchr::memmem::find(&c, b"rabbit").is_some()
                    && memchr::memmem::find(&c, b"boot").is_some()
            })
    })
}

/// Busy and total CPU time of the whole machine, in clock ticks.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_of_an_array_answer_has_its_latency() {
        let latencies = Latencies::default();
        latencies.record_each(
            br#"[{"sent_at_us":100,"n":1},{"n":2,"sent_at_us": 250}]"#,
            1000,
        );
        latencies.record_each(br#"{"sent_at_us":900}"#, 1000);
        assert_eq!(latencies.sorted(), [100, 750, 900]);
    }

    #[test]
    fn sent_at_is_found_in_a_body() {
        assert_eq!(
            sent_at(br#"{"sent_at_us":1764270657000123,"n":1}"#),
            Some(1764270657000123)
        );
        assert_eq!(sent_at(br#"{"n":1, "sent_at_us": 42}"#), Some(42));
        assert_eq!(sent_at(br#"{"n":1}"#), None);
        assert_eq!(sent_at(br#"{"sent_at_us":"x"}"#), None);
    }

    #[test]
    fn percentiles_are_milliseconds() {
        let v = [1000, 2000, 3000, 4000];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
