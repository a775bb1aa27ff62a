"""HorizontalPodAutoscaler (autoscaling/v2): CPU by default, optionally the held polls per
pod, and a scale-down slow enough never to send many held polls back at once."""

from __future__ import annotations

import helm_python
import pytest

from chartlib import FULLNAME, RABBITMQ, VALUE_SETS, deep_merge

AUTOSCALING = deep_merge(RABBITMQ, {"autoscaling": {"enabled": True}})


def metrics(hpa):
    return {
        (m["type"], m["resource"]["name"] if m["type"] == "Resource" else m["pods"]["metric"]["name"]): m
        for m in hpa["spec"]["metrics"]
    }


def test_no_hpa_by_default(render):
    assert not render(RABBITMQ).has("HorizontalPodAutoscaler")


def test_cpu_metric_by_default(render):
    rendered = render(AUTOSCALING)
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 10
    found = metrics(hpa)
    assert set(found) == {("Resource", "cpu")}
    assert found[("Resource", "cpu")]["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 70,
    }
    # The HPA owns the replica count.
    assert "replicas" not in rendered.deployment["spec"]


def test_held_polls_metric(render):
    hpa = render(VALUE_SETS["autoscaling-held-polls"]).one("HorizontalPodAutoscaler")
    found = metrics(hpa)
    assert set(found) == {("Pods", "longpoll_polls_held")}
    assert found[("Pods", "longpoll_polls_held")]["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": "15000",
    }


def test_cpu_and_held_polls_together(render):
    hpa = render(VALUE_SETS["autoscaling-cpu-and-held-polls"]).one("HorizontalPodAutoscaler")
    assert set(metrics(hpa)) == {("Resource", "cpu"), ("Pods", "longpoll_polls_held")}


def test_memory_metric(render):
    values = deep_merge(AUTOSCALING, {"autoscaling": {"targetMemoryUtilizationPercentage": 80}})
    hpa = render(values).one("HorizontalPodAutoscaler")
    assert set(metrics(hpa)) == {("Resource", "cpu"), ("Resource", "memory")}


def test_scale_down_is_slow_and_one_pod_at_a_time(render):
    behavior = render(AUTOSCALING).one("HorizontalPodAutoscaler")["spec"]["behavior"]
    down = behavior["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["selectPolicy"] == "Min"
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 180}]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_no_metric_fails(render):
    values = deep_merge(AUTOSCALING, {"autoscaling": {"targetCPUUtilizationPercentage": None}})
    with pytest.raises(helm_python.HelmRenderError, match="at least one metric"):
        render(values)


def test_min_above_max_fails(render):
    values = deep_merge(AUTOSCALING, {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}})
    with pytest.raises(helm_python.HelmRenderError, match="minReplicas"):
        render(values)


def test_cpu_target_needs_a_cpu_request(render):
    values = deep_merge(AUTOSCALING, {"resources": {"requests": {"cpu": None}}})
    with pytest.raises(helm_python.HelmRenderError, match="resources.requests.cpu"):
        render(values)
