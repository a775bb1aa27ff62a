"""The alert rules pass `promtool check rules` (the plain file, and the rules the chart's
PrometheusRule renders), and their unit tests (`promtool test rules`) pass."""

from __future__ import annotations

import pathlib
import subprocess

import helm_python
import pytest
import yaml

from chartlib import CHART_DIR, NAMESPACE, RELEASE, RABBITMQ, deep_merge
from dashboardlib import RULES_FILE

HERE = pathlib.Path(__file__).resolve().parent
RULES_TESTS = HERE / "longpoll.rules.test.yaml"


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_rules_file_passes_promtool_check(promtool):
    result = promtool_run(promtool, "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_unit_tests_pass(promtool):
    result = promtool_run(promtool, "test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_unit_tests_cover_every_alert_firing_and_not_firing():
    rules = yaml.safe_load(RULES_FILE.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    cases = [case for t in tests for case in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert sorted(alerts - fires) == [], "alerts never shown firing"
    assert sorted(alerts - quiet) == [], "alerts never shown staying quiet"


def test_rules_unit_tests_fail_when_an_expectation_is_wrong(promtool, tmp_path):
    """promtool compares what it is given: a wrong expectation fails the run."""
    text = RULES_TESTS.read_text().replace("severity: critical", "severity: info", 1)
    broken = tmp_path / "broken.test.yaml"
    broken.write_text(text.replace("../../charts/", f"{CHART_DIR.parent}/"))
    assert promtool_run(promtool, "test", "rules", str(broken)).returncode != 0


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"selector": 'job="kubernetes-pods", app_kubernetes_io_name="longpoll-gateway"'},
        {"alertLabels": {"team": "web"}, "disabledAlerts": ["LongpollGatewayAbsent"]},
    ],
    ids=["default-selector", "custom-selector", "labels-and-disabled"],
)
def test_rendered_prometheusrule_passes_promtool_check(promtool, tmp_path, values):
    chart = helm_python.Chart.load(CHART_DIR)
    try:
        files = chart.render(
            deep_merge(RABBITMQ, {"prometheusRule": {"enabled": True, **values}}),
            name=RELEASE,
            namespace=NAMESPACE,
        )
    finally:
        chart.close()
    (text,) = [t for path, t in files.items() if path.endswith("prometheusrule.yaml")]
    rule = yaml.safe_load(text)
    out = tmp_path / "rendered.rules.yaml"
    out.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    result = promtool_run(promtool, "check", "rules", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
