"""Every query of every dashboard panel returns data from a real Prometheus that scraped two
real gateways (embedded broker and RabbitMQ, labelled like pods) under a scripted load; the
alert rules load and evaluate cleanly on the same data.

Grafana's variables are replaced as Grafana would: $namespace by the namespace, $pod (multi,
"All") by the alternation of every pod the pod variable's own query finds, $__rate_interval by
30s, $__range by 5m.
"""

from __future__ import annotations

import re

import pytest

from dashboardlib import dashboards, queries, substitute
from scenario import JOB, NAMESPACE
from stack import finite_values, label_values_query

RATE_INTERVAL = "30s"
RANGE = "5m"
# Panels whose per-pod query leaves some pods out on purpose.
# The embedded broker has no channel pool and no broker nodes.
NOT_EVERY_POD = {"Channel pool saturation by pod", "Broker nodes reachable"}


def grafana_regex_escape(value: str) -> str:
    """How Grafana escapes a multi-value variable's values for a Prometheus `=~` matcher:
    regex metacharacters get a backslash, itself escaped in the PromQL string."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def variables(observed) -> dict[str, str]:
    return {
        "namespace": NAMESPACE,
        "pod": "(" + "|".join(grafana_regex_escape(p) for p in observed.pods) + ")",
        "__rate_interval": RATE_INTERVAL,
        "__interval": "1s",
        "__range": RANGE,
        "datasource": "prometheus",
    }


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_the_variables_find_the_namespace_and_every_pod(observed, name):
    templating = {v["name"]: v for v in dashboards()[name]["templating"]["list"]}
    for var, expected in (("namespace", [NAMESPACE]), ("pod", observed.pods)):
        query = templating[var]["query"]
        text = query["query"] if isinstance(query, dict) else query
        selector, label = label_values_query(substitute(text, {"namespace": NAMESPACE}))
        found = observed.prometheus.api(f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert sorted(found) == sorted(expected)


@pytest.mark.parametrize("query", queries(), ids=lambda q: q.id)
def test_panel_query_returns_data(observed, query):
    expr = substitute(query.expr, variables(observed))
    assert "$" not in expr, f"a variable left in: {expr}"
    data = observed.prometheus.query(expr)
    assert data["result"], f"no data for {query.id}:\n{expr}"
    assert finite_values(data), f"only NaN/Inf for {query.id}:\n{expr}\n{data['result']}"
    if "{{pod}}" in query.legend and query.panel not in NOT_EVERY_POD:
        pods = {sample["metric"].get("pod") for sample in data["result"]}
        assert pods == set(observed.pods), f"{query.id}: pods {pods}"


# Counters the scripted load must have moved, per pod, so that the panels show real activity
# and not only zeros.
EXERCISED_BOTH = [
    'longpoll_polls_answered_total{status="200"}',
    'longpoll_polls_answered_total{status="400"}',
    'longpoll_polls_answered_total{status="404"}',
    'longpoll_polls_answered_total{status="408"}',
    'longpoll_polls_answered_total{status="409"}',
    "longpoll_poll_hold_seconds_count",
    "longpoll_delivery_latency_seconds_count",
    "longpoll_messages_delivered_total",
    "longpoll_messages_acked_total",
    "longpoll_messages_requeued_total",
    "longpoll_messages_redelivered_total",
    "longpoll_messages_skipped_total",
    "longpoll_replays_total",
    "longpoll_supersedes_total",
    "longpoll_events_published_total",
]
EXERCISED_RABBITMQ = [
    "longpoll_broker_reconnects_total",
    "longpoll_broker_connected",
    "longpoll_broker_node_up",
    "longpoll_channel_pool_size",
    "longpoll_channel_pool_wait_seconds_count",
]
EXERCISED_MEMORY = ["longpoll_memory_queues", "longpoll_memory_messages_dropped_total"]


def exercised_cases():
    for m in EXERCISED_BOTH:
        yield m, "both"
    for m in EXERCISED_RABBITMQ:
        yield m, "rabbitmq"
    for m in EXERCISED_MEMORY:
        yield m, "memory"


@pytest.mark.parametrize("metric, where", list(exercised_cases()), ids=lambda v: str(v))
def test_the_load_moved_the_counter(observed, metric, where):
    pods = {"both": observed.pods, "rabbitmq": [observed.rabbitmq_pod], "memory": [observed.memory_pod]}[where]
    name, _, labels = metric.partition("{")
    selector = f'namespace="{NAMESPACE}"' + (f", {labels.rstrip('}')}" if labels else "")
    # Counters must have grown while Prometheus watched (not merely appeared); gauges be set.
    counter = name.endswith(("_total", "_count"))
    expr = f"increase({name}{{{selector}}}[1m])" if counter else f"{name}{{{selector}}}"
    data = observed.prometheus.query(f"max by (pod) ({expr})")
    values = {s["metric"]["pod"]: float(s["value"][1]) for s in data["result"]}
    assert all(values.get(pod, 0) > 0 for pod in pods), values


def test_the_alert_rules_evaluate_cleanly_on_real_data(observed):
    groups = observed.prometheus.api("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules, "the rules file was not loaded"
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert bad == {}


def test_only_the_expected_alerts_are_active(observed):
    """On this data only the embedded broker's drops alert (no `for`) may fire: the embedded
    broker's longpoll_broker_connected 0 must not count as disconnected, both replicas are
    ready, there are no 5xx and deliveries are fast. The one alert allowed to be pending is
    the channel-pool wait: a cold pool counts the opening of each new channel as a wait, which
    dominates the p99 of a few seconds of load (its `for: 10m` rides over a pod's warm-up)."""
    active = observed.prometheus.api("/api/v1/alerts")["alerts"]
    firing = {(a["labels"]["alertname"], a["labels"].get("pod", "")) for a in active if a["state"] == "firing"}
    assert firing == {("LongpollMemoryBrokerDropping", observed.memory_pod)}, active
    pending = {a["labels"]["alertname"] for a in active if a["state"] == "pending"}
    assert pending <= {"LongpollChannelPoolWait"}, active
    for alert in active:
        assert alert["labels"]["job"] == JOB


def panel_values(observed, title: str, ref_id: str = "A") -> dict[str, float]:
    (query,) = [q for q in queries() if q.panel == title and q.ref_id == ref_id]
    data = observed.prometheus.query(substitute(query.expr, variables(observed)))
    return {s["metric"].get("pod", ""): float(s["value"][1]) for s in data["result"]}


def test_broker_panels_count_the_embedded_broker_as_usable(observed):
    assert panel_values(observed, "Broker connected") == {pod: 1.0 for pod in observed.pods}
    assert panel_values(observed, "Replicas: scraped / broker usable", "A") == {"": 2.0}
    assert panel_values(observed, "Replicas: scraped / broker usable", "B") == {"": 2.0}
