"""The Grafana dashboard (dashboards/*.json, shipped in a ConfigMap for the Grafana sidecar)
and the alert rules (alerts/longpoll.rules.yaml, shipped in a PrometheusRule): off by default,
rendered and validated when on, and well-formed on their own. That every panel's query returns
data from real gateways is checked by tests/observability (scripts/observability-test)."""

from __future__ import annotations

import json
import re

import helm_python
import kubernetes_validate
import pytest
import yaml

from chartlib import CHART_DIR, FULLNAME, NAMESPACE, RABBITMQ, deep_merge, kube_versions, validate_manifest
from dashboardlib import (
    DASHBOARD_DIR,
    RULES_FILE,
    RULES_PLACEHOLDER,
    alert_rules,
    dashboards,
    exported_metrics,
    metric_names_in,
    panels,
    queries,
    rules,
    series_names,
)

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error
DASHBOARDS_NAME = f"{FULLNAME}-dashboards"
DASHBOARDS_ON = deep_merge(RABBITMQ, {"dashboards": {"enabled": True}})
RULES_ON = deep_merge(RABBITMQ, {"prometheusRule": {"enabled": True}})
BOTH_ON = deep_merge(RABBITMQ, {"dashboards": {"enabled": True}, "prometheusRule": {"enabled": True}})
DEFAULT_SELECTOR = f'job="{FULLNAME}", namespace="{NAMESPACE}"'


def dashboard_configmap(rendered):
    found = [d for d in rendered.all("ConfigMap") if d["metadata"]["name"] == DASHBOARDS_NAME]
    assert len(found) <= 1
    return found[0] if found else None


# ------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("values", [{}, RABBITMQ], ids=["default", "rabbitmq"])
def test_off_by_default(render, values):
    rendered = render(values)
    assert dashboard_configmap(rendered) is None
    assert not rendered.has("PrometheusRule")


def test_dashboard_configmap_carries_every_dashboard_for_the_sidecar(render):
    rendered = render(DASHBOARDS_ON)
    configmap = dashboard_configmap(rendered)
    assert configmap is not None
    assert configmap["metadata"]["namespace"] == NAMESPACE
    labels = configmap["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"
    assert labels["app.kubernetes.io/instance"] == "lp"
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert files, "no dashboard in charts/longpoll-gateway/dashboards"
    assert sorted(configmap["data"]) == [p.name for p in files]
    for path in files:
        assert configmap["data"][path.name] == path.read_text()
        json.loads(configmap["data"][path.name])
    # The gateway's own ConfigMap (its environment) is still there and unchanged.
    env = [d for d in rendered.all("ConfigMap") if d["metadata"]["name"] == FULLNAME]
    assert len(env) == 1
    assert env[0]["data"] == render(RABBITMQ).config


def test_dashboard_configmap_label_namespace_and_annotations_are_configurable(render):
    values = deep_merge(
        DASHBOARDS_ON,
        {
            "dashboards": {
                "label": "example.com/dashboard",
                "labelValue": "longpoll",
                "labels": {"team": "web"},
                "annotations": {"grafana_folder": "Longpoll"},
                "namespace": "monitoring",
            }
        },
    )
    configmap = dashboard_configmap(render(values))
    meta = configmap["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["example.com/dashboard"] == "longpoll"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["labels"]["team"] == "web"
    assert meta["annotations"] == {"grafana_folder": "Longpoll"}


@pytest.mark.parametrize("values", [DASHBOARDS_ON, deep_merge(DASHBOARDS_ON, {"dashboards": {"annotations": {"grafana_folder": "x"}}})])
def test_dashboard_configmap_is_valid_for_every_kubernetes_version(render, values):
    configmap = dashboard_configmap(render(values))
    failures = []
    for version in kube_versions():
        try:
            validate_manifest(configmap, version)
        except kubernetes_validate.ValidationError as err:
            failures.append(f"{version}: {err.message} at {list(err.path)}")
    assert failures == []


def test_dashboard_configmap_fits_kubernetes_and_kubectl_apply():
    # 1 MiB is the ConfigMap limit; 256 KiB keeps `kubectl apply` (last-applied annotation)
    # and Argo CD working.
    total = sum(len(p.read_bytes()) for p in DASHBOARD_DIR.glob("*.json"))
    assert total < 256 * 1024


def test_prometheusrule_structure(render):
    rendered = render(deep_merge(RULES_ON, {"prometheusRule": {"labels": {"release": "prometheus"}}}))
    rule = rendered.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == FULLNAME
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "lp"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert isinstance(r["expr"], str) and r["expr"].strip()
            if "for" in r:
                assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", r["for"]), r["for"]
            assert all(isinstance(v, str) for v in r.get("labels", {}).values())
            assert all(isinstance(v, str) for v in r.get("annotations", {}).values())


def test_prometheusrule_embeds_the_rules_file_with_the_selector(render):
    spec = render(RULES_ON).one("PrometheusRule")["spec"]
    expected = yaml.safe_load(RULES_FILE.read_text().replace(RULES_PLACEHOLDER, DEFAULT_SELECTOR))
    assert spec["groups"] == expected["groups"]
    for group in spec["groups"]:
        for r in group["rules"]:
            assert RULES_PLACEHOLDER not in r["expr"]
            assert DEFAULT_SELECTOR in r["expr"], r["alert"]


def test_prometheusrule_selector_alert_labels_and_disabled_alerts(render):
    values = deep_merge(
        RULES_ON,
        {
            "prometheusRule": {
                "selector": 'job="kubernetes-pods", app_kubernetes_io_name="longpoll-gateway"',
                "alertLabels": {"team": "web", "severity": "page"},
                "disabledAlerts": ["LongpollMemoryBrokerDropping", "LongpollGatewayAbsent"],
            }
        },
    )
    spec = render(values).one("PrometheusRule")["spec"]
    got = [r for g in spec["groups"] for r in g["rules"]]
    assert {r["alert"] for r in got} == {r["alert"] for r in alert_rules()} - {
        "LongpollMemoryBrokerDropping",
        "LongpollGatewayAbsent",
    }
    for r in got:
        assert r["labels"]["team"] == "web"
        assert r["labels"]["severity"] == "page"
        assert 'job="kubernetes-pods", app_kubernetes_io_name="longpoll-gateway"' in r["expr"]
        assert "namespace=" not in r["expr"]


def test_lint_with_dashboards_and_rules_on():
    report = helm_python.lint(CHART_DIR, BOTH_ON, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


SCHEMA_REJECTS = {
    "dashboards.enabled a string": {"dashboards": {"enabled": "true"}},
    "unknown dashboards key": {"dashboards": {"folder": "x"}},
    "dashboards.labelValue a number": {"dashboards": {"labelValue": 1}},
    "dashboards.label with a space": {"dashboards": {"label": "grafana dashboard"}},
    "dashboards.namespace upper case": {"dashboards": {"namespace": "Monitoring"}},
    "prometheusRule.enabled a string": {"prometheusRule": {"enabled": "yes"}},
    "unknown prometheusRule key": {"prometheusRule": {"rules": []}},
    "prometheusRule.disabledAlerts a string": {"prometheusRule": {"disabledAlerts": "LongpollBrokerDown"}},
    "prometheusRule.alertLabels with a number": {"prometheusRule": {"alertLabels": {"tier": 1}}},
}


@pytest.mark.parametrize("label", sorted(SCHEMA_REJECTS))
def test_schema_rejects(chart, label):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(SCHEMA_REJECTS[label])


# ------------------------------------------------------------------------------ the dashboard

DASHBOARD_NAMES = sorted(dashboards())


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_dashboard_variables(name):
    dashboard = dashboards()[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in ("namespace", "pod"):
        assert variables[var]["type"] == "query"
        assert variables[var]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        query = variables[var]["query"]
        text = query["query"] if isinstance(query, dict) else query
        assert text.startswith("label_values(") and text.endswith(f", {var})")
    assert "$namespace" in variables["pod"]["definition"]
    assert variables["pod"]["multi"] and variables["pod"]["includeAll"]


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_dashboard_identity_and_layout(name):
    dashboard = dashboards()[name]
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"]
    assert dashboard.get("id") is None  # importable anywhere
    ids = [p["id"] for p in dashboard["panels"]] + [p["id"] for p in panels(dashboard) if p not in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels(dashboard)]
    assert len(titles) == len(set(titles)), "panel titles name the panels in docs and tests"
    cells = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_every_panel_queries_the_datasource_variable(name):
    for panel in panels(dashboards()[name]):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no target"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target.get("expr", "").strip(), f"{panel['title']} {target['refId']}: empty expr"
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
        assert panel.get("description"), f"panel {panel['title']!r} has no description"


@pytest.mark.parametrize("query", queries(), ids=lambda q: q.id)
def test_every_query_names_exported_metrics_and_applies_the_variables(query):
    names = metric_names_in(query.expr)
    assert names or "up{" in query.expr, query.expr
    assert names <= series_names(), f"unknown metric(s): {sorted(names - series_names())}"
    # Every selector of a gateway series is restricted by the namespace and pod variables.
    for selector in re.findall(r"\b(?:longpoll_[a-z0-9_]+|up)\{([^}]*)\}", query.expr):
        assert 'namespace="$namespace"' in selector, query.expr
        assert 'pod=~"$pod"' in selector, query.expr
    bare = re.findall(r"\b(longpoll_[a-z0-9_]+|up)\b(?!\{)", query.expr)
    assert bare == [], f"metric(s) without the variables' selector: {bare}"


def test_the_dashboards_show_every_metric_the_gateway_exports():
    shown = set().union(*(metric_names_in(q.expr) for q in queries()))
    missing = [m.name for m in exported_metrics() if not (m.series_names & shown)]
    assert missing == []


REQUIRED_PANELS = [
    "Held polls",
    "Answers by status",
    "Delivery latency (publish → answer)",
    "Poll hold duration",
    "Message flow",
    "Replays and supersedes",
    "Broker connected",
    "Broker reconnects",
    "Channel pool: in use vs size",
    "Channel pool wait",
    "Held polls by pod",
    "Embedded broker queues",
    "Embedded broker drops",
]


def test_the_dashboard_has_the_operator_panels():
    titles = {p["title"] for d in dashboards().values() for p in panels(d)}
    assert [t for t in REQUIRED_PANELS if t not in titles] == []


# ------------------------------------------------------------------------------ the rules file


def test_rules_file_is_a_plain_prometheus_rules_file():
    data = rules()
    assert set(data) == {"groups"}
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names))
    for r in alert_rules():
        assert r["alert"].startswith("Longpoll")
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert "docs/observability.md" in r["annotations"]["description"]
        names_in = metric_names_in(r["expr"])
        assert names_in <= series_names(), sorted(names_in - series_names())
        # Every selector carries the placeholder the chart replaces.
        for selector in re.findall(r"\b(?:longpoll_[a-z0-9_]+|up)\{([^}]*)\}", r["expr"]):
            assert RULES_PLACEHOLDER in selector, r["alert"]


def test_every_alert_is_documented():
    doc = (CHART_DIR.parents[1] / "docs" / "observability.md").read_text()
    for r in alert_rules():
        assert f"`{r['alert']}`" in doc, r["alert"]


def test_panel_ids_are_unique_in_each_dashboard():
    # Grafana keys a panel's state (links, edits, the panel view) by its id.
    for name, dashboard in dashboards().items():
        ids = [p["id"] for p in panels(dashboard)]
        assert sorted(set(ids)) == sorted(ids), f"{name}: repeated panel ids"
