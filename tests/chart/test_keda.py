"""KEDA: a ScaledObject on the polls held per replica (Prometheus) and CPU, with the HPA's
gentle scale-down; never together with the chart's own HPA."""

from __future__ import annotations

import helm_python
import pytest

from chartlib import FULLNAME, NAMESPACE, RABBITMQ, VALUE_SETS, deep_merge

KEDA = VALUE_SETS["keda"]


def triggers(rendered):
    return {t["type"]: t for t in rendered.one("ScaledObject")["spec"]["triggers"]}


def test_no_scaled_object_by_default(render):
    assert not render(RABBITMQ).has("ScaledObject")


def test_scaled_object_targets_the_deployment(render):
    rendered = render(KEDA)
    scaled = rendered.one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 10)
    # KEDA owns the replica count, and makes the only HPA.
    assert "replicas" not in rendered.deployment["spec"]
    assert not rendered.has("HorizontalPodAutoscaler")


def test_prometheus_trigger_on_held_polls_per_replica(render):
    trigger = triggers(render(KEDA))["prometheus"]
    # AverageValue: the query's total divided by the replicas is held to the threshold.
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "query": f'sum(longpoll_polls_held{{namespace="{NAMESPACE}", job="{FULLNAME}"}})',
        "threshold": "20000",
    }


def test_cpu_trigger(render):
    assert triggers(render(KEDA))["cpu"] == {
        "type": "cpu",
        "metricType": "Utilization",
        "metadata": {"value": "70"},
    }
    assert set(triggers(render(VALUE_SETS["keda-held-polls-only"]))) == {"prometheus"}


def test_same_gentle_scale_down_as_the_hpa(render):
    hpa = render(deep_merge(RABBITMQ, {"autoscaling": {"enabled": True}})).one("HorizontalPodAutoscaler")
    scaled = render(KEDA).one("ScaledObject")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 180}]


def test_custom_query_and_behavior(render):
    values = deep_merge(
        KEDA,
        {
            "keda": {
                "prometheus": {"query": "sum(my_held_polls)", "heldPollsPerReplica": 5000},
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 900}},
            }
        },
    )
    scaled = render(values).one("ScaledObject")
    trigger = {t["type"]: t for t in scaled["spec"]["triggers"]}["prometheus"]
    assert trigger["metadata"]["query"] == "sum(my_held_polls)"
    assert trigger["metadata"]["threshold"] == "5000"
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == {"scaleDown": {"stabilizationWindowSeconds": 900}}


def test_schema_refuses_keda_with_the_hpa(chart):
    with pytest.raises(helm_python.HelmValuesError, match="autoscaling/enabled"):
        chart.validate_schema({"keda": {"enabled": True}, "autoscaling": {"enabled": True}})
    chart.validate_schema({"keda": {"enabled": True}, "autoscaling": {"enabled": False}})
    chart.validate_schema({"keda": {"enabled": False}, "autoscaling": {"enabled": True}})


def test_render_refuses_keda_with_the_hpa(render):
    with pytest.raises(helm_python.HelmValuesError):
        render(deep_merge(KEDA, {"autoscaling": {"enabled": True}}))


def test_keda_needs_rabbitmq(render):
    with pytest.raises(helm_python.HelmRenderError, match="keda.enabled"):
        render({"keda": {"enabled": True}})


def test_keda_min_above_max_fails(render):
    with pytest.raises(helm_python.HelmRenderError, match="keda.minReplicas"):
        render(deep_merge(KEDA, {"keda": {"minReplicas": 5, "maxReplicas": 3}}))


@pytest.mark.parametrize(
    "bad",
    [
        {"minReplicas": 0},
        {"prometheus": {"serverAddress": "prometheus:9090"}},
        {"prometheus": {"heldPollsPerReplica": "lots"}},
        {"cpuUtilizationPercentage": "70%"},
        {"scaleToZero": True},
    ],
)
def test_schema_rejects_bad_keda_values(chart, bad):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({"keda": bad})
