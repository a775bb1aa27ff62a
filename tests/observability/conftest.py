"""Fixtures of the observability tests: the chart helpers (tests/chart), the tools, and one
run-wide stack (two gateways, RabbitMQ behind a chaos proxy, our own Prometheus) that has
been under the scripted load of scenario.py when the tests query it.

Run with `scripts/observability-test`, which installs Prometheus, builds the binaries and
provides the venv (helm_python, yaml).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "chart"))  # chartlib, dashboardlib

from chartlib import ROOT  # noqa: E402
from dashboardlib import RULES_FILE  # noqa: E402

import scenario  # noqa: E402
from scenario import JOB, NAMESPACE  # noqa: E402
from stack import ChaosProxy, Gateway, Prometheus, port_open, wait_for  # noqa: E402

RABBITMQ_PORT = 5672
TOKEN = "obs-test-token-0123456789"


def _sigterm_as_interrupt(signum, frame):
    # A SIGTERM (timeout, CI) unwinds like Ctrl-C, so that fixtures stop what they started.
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found: run scripts/observability-test (it installs Debian's prometheus)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def binaries() -> dict[str, pathlib.Path]:
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    out = {name: target / "debug" / name for name in ("longpoll-gateway", "lp-load")}
    for name, path in out.items():
        if not path.exists():
            pytest.fail(f"{path} is missing: run scripts/observability-test (it builds {name})")
    return out


@pytest.fixture(scope="session")
def workdir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="lp-observability-"))
    yield path
    if os.environ.get("KEEP_OBSERVABILITY_TMP"):
        print(f"\nobservability test files kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Observed:
    prometheus: Prometheus
    gateways: dict[str, Gateway]  # pod name → gateway
    memory_pod: str
    rabbitmq_pod: str
    report: scenario.Report
    load_started: float
    load_ended: float

    @property
    def pods(self) -> list[str]:
        return sorted(self.gateways)


def prometheus_config(gateways: dict[str, Gateway]) -> str:
    """Scrape every gateway each second as one job, labelled like Kubernetes pods, and
    evaluate the chart's alert rules each second."""
    targets = "".join(
        f"""
      - targets: ["{gw.admin.removeprefix('http://')}"]
        labels:
          namespace: {NAMESPACE}
          pod: {pod}"""
        for pod, gw in gateways.items()
    )
    return f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES_FILE}
scrape_configs:
  - job_name: {JOB}
    metrics_path: /metrics
    static_configs:{targets}
"""


@pytest.fixture(scope="session")
def observed(binaries, workdir, promtool) -> Observed:
    if not port_open(RABBITMQ_PORT):
        pytest.fail("RabbitMQ does not answer on 127.0.0.1:5672: run scripts/ensure-rabbitmq")
    started: list = []
    proxy = ChaosProxy(RABBITMQ_PORT)
    try:
        memory_pod, rabbitmq_pod = "lp-memory-0", "lp-rabbitmq-0"
        gateways = {
            memory_pod: Gateway(
                binaries["longpoll-gateway"], memory_pod, workdir, TOKEN,
                [*scenario.GATEWAY_ARGS, *scenario.MEMORY_ARGS],
            ),
            rabbitmq_pod: Gateway(
                binaries["longpoll-gateway"], rabbitmq_pod, workdir, TOKEN,
                [*scenario.GATEWAY_ARGS, "--broker", f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2f"],
            ),
        }  # fmt: skip
        started.extend(gateways.values())
        for gw in gateways.values():
            gw.wait_listening()
            wait_for(f"{gw.name} /readyz", gw.ready, 30)

        prometheus = Prometheus(tool("prometheus"), workdir, prometheus_config(gateways))
        started.append(prometheus)
        prometheus.wait_ready()

        def targets_up():
            active = prometheus.api("/api/v1/targets")["activeTargets"]
            return len(active) == len(gateways) and all(t["health"] == "up" for t in active)

        wait_for("both gateways scraped", targets_up, 20)
        time.sleep(2)  # a baseline of samples before the load, for rate()

        # A broker reconnect: a 2-second outage of the RabbitMQ gateway's broker (its
        # connections are cut and new ones refused); it reconnects with backoff.
        rabbitmq = gateways[rabbitmq_pod]
        wait_for("the RabbitMQ gateway's connections through the proxy", proxy.connections, 10)
        proxy.outage(2)
        wait_for(
            "a broker reconnect",
            lambda: rabbitmq.metrics().get("longpoll_broker_reconnects_total", 0) >= 1 and rabbitmq.ready(),
            30,
        )

        load_started = time.time()
        report = scenario.run(gateways, memory_pod, binaries["lp-load"], workdir)
        load_ended = time.time()
        assert report.errors == [], "the scripted load went wrong:\n" + "\n".join(report.errors)

        # Two more scrapes after the load, so that its last counts are in Prometheus.
        def scraped_after_the_load():
            data = prometheus.query(f'timestamp(up{{job="{JOB}"}})')
            return len(data["result"]) == len(gateways) and all(
                float(s["value"][1]) > load_ended + 1 for s in data["result"]
            )

        wait_for("scrapes after the load", scraped_after_the_load, 10)
        yield Observed(prometheus, gateways, memory_pod, rabbitmq_pod, report, load_started, load_ended)
    finally:
        for thing in reversed(started):
            thing.stop()
        proxy.close()
