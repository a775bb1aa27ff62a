"""The scripted load that gives every dashboard panel something to show: lp-load on each
gateway, plus the answers and message paths lp-load does not produce on its own (404, 400,
408, replay, supersede, requeue + redelivery, skip, embedded-broker drops). A broker reconnect
is made beforehand by cutting the RabbitMQ gateway's connections (ChaosProxy.cut)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from stack import Gateway, Process

# The labels Prometheus gives the gateways' series, as it would in Kubernetes.
NAMESPACE = "test"
JOB = "lp-longpoll-gateway"  # what the chart's ServiceMonitor names the job of release "lp"

# The gateways run with these, so that 408s, replay-TTL requeues and drops happen in seconds.
POLL_TIMEOUT_S = 2
REPLAY_TTL_S = 1
MEMORY_MAX_MESSAGES = 20
GATEWAY_ARGS = [
    "--poll-timeout", f"{POLL_TIMEOUT_S}s",
    "--replay-ttl", f"{REPLAY_TTL_S}s",
    "--subscription-expiry", "60s",
    "--drain-timeout", "2s",
]  # fmt: skip
MEMORY_ARGS = ["--memory-max-messages-per-queue", str(MEMORY_MAX_MESSAGES)]

LOAD_ARGS = ["--subscribers", "20", "--duration", "5s", "--rate", "200", "--publishers", "8"]


@dataclass
class Report:
    """What each step saw: step name → statuses (or an error), per gateway."""

    seen: dict[str, list] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, step: str, value) -> None:
        with self.lock:
            self.seen.setdefault(step, []).append(value)

    def fail(self, step: str, message: str) -> None:
        with self.lock:
            self.errors.append(f"{step}: {message}")


def _expect(report: Report, step: str, got: int, *wanted: int) -> None:
    report.record(step, got)
    if got not in wanted:
        report.fail(step, f"got {got}, expected {' or '.join(map(str, wanted))}")


def _key(run: str, name: str) -> str:
    return f"obs.{run}.{name}"


# A status series appears on /metrics with the first answer of that status, so Prometheus
# sees a rate only from its second answer on: the single-answer steps answer twice, a few
# scrapes apart.
SCRAPES_APART_S = 2.5


def not_found(gw: Gateway, report: Report, run: str) -> None:
    """404: a queue that does not exist."""
    for _ in range(2):
        _expect(report, f"{gw.name} 404", gw.poll("longpoll.subscribe.nope", 1)[0], 404)
        time.sleep(SCRAPES_APART_S)


def bad_request(gw: Gateway, report: Report, run: str) -> None:
    """400: a sequence that is not a number."""
    for _ in range(2):
        _expect(report, f"{gw.name} 400", gw.poll("longpoll.subscribe.x", "abc")[0], 400)
        time.sleep(SCRAPES_APART_S)


def timeouts(gw: Gateway, report: Report, run: str) -> None:
    """408: polls held for the whole --poll-timeout with no event (one, then two at once)."""
    keys = [gw.subscribe(_key(run, f"quiet{n}")) for n in range(3)]
    _expect(report, f"{gw.name} 408", gw.poll(keys[0], 1)[0], 408)
    time.sleep(SCRAPES_APART_S - POLL_TIMEOUT_S)
    with ThreadPoolExecutor(2) as pool:
        for status in pool.map(lambda key: gw.poll(key, 1)[0], keys[1:]):
            _expect(report, f"{gw.name} 408", status, 408)


def replay(gw: Gateway, report: Report, run: str) -> None:
    """A retry of an answered (uuid, sequence) gets the same answer again."""
    event_key = _key(run, "replay")
    key = gw.subscribe(event_key)
    gw.emit(event_key, {"step": "replay"})
    first = gw.poll(key, 1)
    again = gw.poll(key, 1)
    _expect(report, f"{gw.name} replay", again[0], 200)
    if first[1].get("X-Longpoll-Message-Id") != again[1].get("X-Longpoll-Message-Id"):
        report.fail(f"{gw.name} replay", "the retry got another message id")
    gw.emit(event_key, {"step": "replay-next"})
    _expect(report, f"{gw.name} replay next", gw.poll(key, 2)[0], 200)  # acks the first


def supersede(gw: Gateway, report: Report, run: str) -> None:
    """A second poll for a held uuid takes over; the first is answered 409 (twice)."""
    for round_ in range(2):
        event_key = _key(run, f"supersede{round_}")
        key = gw.subscribe(event_key)
        with ThreadPoolExecutor(2) as pool:
            older = pool.submit(gw.poll, key, 1)
            time.sleep(0.4)
            newer = pool.submit(gw.poll, key, 1)
            _expect(report, f"{gw.name} superseded", older.result()[0], 409)
            gw.emit(event_key, {"step": "supersede"})
            _expect(report, f"{gw.name} takeover", newer.result()[0], 200)
        time.sleep(SCRAPES_APART_S)


def requeue_and_redeliver(gw: Gateway, report: Report, run: str) -> None:
    """An answer nobody comes back for is requeued after --replay-ttl; the broker then
    delivers it again (redelivered)."""
    event_key = _key(run, "requeue")
    key = gw.subscribe(event_key)
    gw.emit(event_key, {"step": "requeue"})
    _expect(report, f"{gw.name} requeue first answer", gw.poll(key, 1)[0], 200)
    time.sleep(REPLAY_TTL_S + 0.8)  # the TTL plus the sweeper's 500 ms tick
    # The retry finds no replay: the redelivered message is either handed over again or
    # skipped as a redelivery of the last answer (then the poll times out).
    _expect(report, f"{gw.name} after requeue", gw.poll(key, 1)[0], 200, 408)


def skipped(gw: Gateway, report: Report, run: str) -> None:
    """A message whose original-uuid is the polling uuid is acked and not shown."""
    event_key = _key(run, "skip")
    key = gw.subscribe(event_key)
    gw.emit(event_key, {"original-uuid": key})
    _expect(report, f"{gw.name} skipped", gw.poll(key, 1)[0], 408)


def drops(gw: Gateway, report: Report, run: str) -> None:
    """Embedded broker: a queue over --memory-max-messages-per-queue drops its oldest."""
    event_key = _key(run, "flood")
    gw.subscribe(event_key)
    for n in range(MEMORY_MAX_MESSAGES + 5):
        gw.emit(event_key, {"n": n})
    report.record(f"{gw.name} drops", MEMORY_MAX_MESSAGES + 5)


STEPS: list[Callable[[Gateway, Report, str], None]] = [
    not_found,
    bad_request,
    timeouts,
    replay,
    supersede,
    requeue_and_redeliver,
    skipped,
]


def run(gateways: dict[str, Gateway], memory: str, lp_load: pathlib.Path, workdir: pathlib.Path) -> Report:
    """lp-load on every gateway, and the steps above on every gateway, all at once."""
    report = Report()
    run_id = uuid.uuid4().hex[:12]

    def guarded(step, gw):
        try:
            step(gw, report, run_id)
        except Exception as err:  # noqa: BLE001 - collected and asserted by the caller
            report.fail(f"{gw.name} {step.__name__}", repr(err))

    loads: dict[str, Process] = {}
    try:
        # lp-load runs are started from this (the main) thread: their PDEATHSIG is tied to it.
        for name, gw in gateways.items():
            loads[name] = Process(
                f"lp-load {name}",
                [str(lp_load), "--gateway", gw.public, "--admin", gw.admin, "--api-token", gw.token,
                 "--label", name, "--json", str(workdir / f"lp-load-{name}.json"), *LOAD_ARGS],
                workdir / f"lp-load-{name}.log",
            )  # fmt: skip
        jobs = [(step, gw) for gw in gateways.values() for step in STEPS]
        jobs.append((drops, gateways[memory]))
        with ThreadPoolExecutor(len(jobs)) as pool:
            for future in [pool.submit(guarded, step, gw) for step, gw in jobs]:
                future.result(timeout=60)
        for name, load in loads.items():
            try:
                code = load.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                report.fail(f"lp-load {name}", "did not finish within 40 s")
                continue
            if code != 0:
                report.fail(f"lp-load {name}", f"exit {code}: {load.log()[-2000:]}")
                continue
            result = json.loads((workdir / f"lp-load-{name}.json").read_text())
            report.record(f"lp-load {name}", {k: result[k] for k in ("published", "delivered")})
            if not result["delivered"]:
                report.fail(f"lp-load {name}", f"delivered nothing: {result}")
    finally:
        for load in loads.values():
            load.stop()
    return report
