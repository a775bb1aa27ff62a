"""The chart's observability assets as data: the Grafana dashboard's panels and queries, the
alert rules file, and the metrics the gateway exports (read from src/telemetry/metrics.rs).

Shared by tests/chart/test_observability.py (offline structure checks) and
tests/observability (the same queries against a real Prometheus scraping real gateways).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

import yaml

from chartlib import CHART_DIR, ROOT

DASHBOARD_DIR = CHART_DIR / "dashboards"
RULES_FILE = CHART_DIR / "alerts" / "longpoll.rules.yaml"
METRICS_RS = ROOT / "src" / "telemetry" / "metrics.rs"

# The matcher every rule's selectors carry; templates/prometheusrule.yaml replaces this exact
# text with prometheusRule.selector.
RULES_PLACEHOLDER = 'job=~".*longpoll-gateway.*"'


def dashboards() -> dict[str, dict[str, Any]]:
    """File name → parsed dashboard, for every dashboards/*.json."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows left out, collapsed rows' panels included)."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    legend: str
    instant: bool

    @property
    def id(self) -> str:
        return f"{self.panel} [{self.ref_id}]"


def queries() -> list[Query]:
    """Every target of every panel of every dashboard."""
    out = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                out.append(
                    Query(
                        dashboard=name,
                        panel=panel["title"],
                        ref_id=target["refId"],
                        expr=target.get("expr", ""),
                        legend=target.get("legendFormat", ""),
                        instant=bool(target.get("instant")),
                    )
                )
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables ($name and ${name}) as Grafana would before querying."""
    # Longest names first, so that $__rate_interval is not read as $__rate + "_interval".
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


@dataclass(frozen=True)
class Metric:
    name: str  # as registered, without the `longpoll_` prefix
    kind: str  # counter, gauge or histogram

    @property
    def series_names(self) -> set[str]:
        """The sample names the exposition carries for it."""
        full = f"longpoll_{self.name}"
        if self.kind == "counter":
            return {f"{full}_total"}
        if self.kind == "histogram":
            return {f"{full}_bucket", f"{full}_sum", f"{full}_count"}
        return {full}


def exported_metrics() -> list[Metric]:
    """The metrics the gateway registers, read from src/telemetry/metrics.rs."""
    source = METRICS_RS.read_text()
    struct = re.search(r"pub struct Metrics \{(.*?)\n\}", source, re.S)
    assert struct, "struct Metrics not found in metrics.rs"
    field_types = dict(re.findall(r"^\s*(?:pub )?(\w+): (.+),$", struct.group(1), re.M))
    registered = re.findall(
        r'register\(\s*"(\w+)",\s*"(?:[^"\\]|\\.)*",\s*m\.(\w+)\.clone\(\)', source, re.S
    )
    assert registered, "no registry.register(...) call found in metrics.rs"
    out = []
    for name, field in registered:
        kind_source = field_types[field]
        if "Histogram" in kind_source:
            kind = "histogram"
        elif "Counter" in kind_source:
            kind = "counter"
        else:
            kind = "gauge"
        out.append(Metric(name, kind))
    return out


def series_names() -> set[str]:
    """Every sample name the gateway's /metrics can carry."""
    return set().union(*(m.series_names for m in exported_metrics()))


METRIC_NAME = re.compile(r"\b(longpoll_[a-z0-9_]+)\b")


def metric_names_in(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def rules() -> dict[str, Any]:
    return yaml.safe_load(RULES_FILE.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in rules()["groups"] for r in g["rules"] if "alert" in r]
