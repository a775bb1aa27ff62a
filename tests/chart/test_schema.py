"""values.schema.json rejects wrong types, unknown keys and bad enums, both when checked on
its own (`chart.validate_schema`) and at render (install) time."""

from __future__ import annotations

import json

import helm_python
import pytest
import yaml

from chartlib import CHART_DIR

BAD_VALUES = {
    "unknown top-level key": {"replicas": 3},
    "typo of a helm-create key": {"podSecurityContexts": {}},
    "unknown config key": {"config": {"pollTimeoutSeconds": 270}},
    "unknown otel key": {"config": {"otel": {"headers": "x"}}},
    "replicaCount is a string": {"replicaCount": "3"},
    "replicaCount is negative": {"replicaCount": -1},
    "replicaCount is fractional": {"replicaCount": 1.5},
    "logFormat outside the enum": {"config": {"logFormat": "xml"}},
    "exchangeType outside the enum": {"config": {"exchangeType": "fanout"}},
    "pollTimeout without a unit": {"config": {"pollTimeout": "270"}},
    "pollTimeout as a number": {"config": {"pollTimeout": 270}},
    "drainTimeout with a bad unit": {"config": {"drainTimeout": "10 seconds"}},
    "broker with an unknown scheme": {"config": {"broker": "redis://localhost"}},
    "maxPolls zero": {"config": {"maxPolls": 0}},
    "maxPolls a string": {"config": {"maxPolls": "100000"}},
    "channelPoolSize zero": {"config": {"channelPoolSize": 0}},
    "consumerPrefetch zero": {"config": {"consumerPrefetch": 0}},
    "consumerPrefetch above 100": {"config": {"consumerPrefetch": 101}},
    "corsOrigins a string": {"config": {"corsOrigins": "https://a.example.com"}},
    "history.maxAge below a second": {"config": {"history": {"maxAge": "500ms"}}},
    "history.maxAge a number": {"config": {"history": {"maxAge": 3600}}},
    "history.maxBytes with an unknown unit": {"config": {"history": {"maxBytes": "1GBytes"}}},
    "history.stream empty": {"config": {"history": {"stream": ""}}},
    "unknown history key": {"config": {"history": {"retention": "1h"}}},
    "config a string": {"config": "broker=amqp://x"},
    "port out of range": {"config": {"port": 70000}},
    "ingress.enabled a string": {"ingress": {"enabled": "true"}},
    "ingress.hosts an object": {"ingress": {"hosts": {"host": "x"}}},
    "ingress path without a slash": {
        "ingress": {"hosts": [{"host": "x", "paths": [{"path": "longpoll", "pathType": "Prefix"}]}]}
    },
    "ingress pathType outside the enum": {
        "ingress": {"hosts": [{"host": "x", "paths": [{"path": "/", "pathType": "Regex"}]}]}
    },
    "unknown ingress key": {"ingress": {"exposeApi": True}},
    "autoscaling.maxReplicas zero": {"autoscaling": {"maxReplicas": 0}},
    "autoscaling target a string": {"autoscaling": {"targetCPUUtilizationPercentage": "70%"}},
    "service.type outside the enum": {"service": {"type": "Ingress"}},
    "image.tag a number": {"image": {"tag": 1.2}},
    "preStopSleepSeconds negative": {"preStopSleepSeconds": -1},
    "tolerations an object": {"tolerations": {"key": "x"}},
    "nodeSelector with a number": {"nodeSelector": {"disk": 1}},
    "secretKeys.broker empty": {"secretKeys": {"broker": ""}},
    "whenUnsatisfiable outside the enum": {"topologySpread": {"whenUnsatisfiable": "Never"}},
}


@pytest.mark.parametrize("label", sorted(BAD_VALUES))
def test_schema_rejects(chart, label):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(BAD_VALUES[label])


@pytest.mark.parametrize("label", ["unknown top-level key", "unknown config key", "logFormat outside the enum"])
def test_render_rejects_what_the_schema_rejects(render, label):
    with pytest.raises(helm_python.HelmValuesError):
        render(BAD_VALUES[label])


def test_schema_is_closed_at_the_top_and_for_config():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["config"]["additionalProperties"] is False


def test_schema_names_every_default_value_and_nothing_else():
    """values.yaml and the schema list the same top-level and config keys."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert set(schema["properties"]) - {"global"} == set(values)
    assert set(schema["properties"]["config"]["properties"]) == set(values["config"])


def test_defaults_pass_the_schema(chart):
    chart.validate_schema(chart.values)


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"pollTimeout": "4m30s", "drainTimeout": "1500ms"}},
        {"config": {"broker": "amqps://u:p@rabbitmq:5671/vhost"}},
        {"config": {"channelPoolSize": 32, "logFormat": "text", "exchangeType": "direct"}},
        {"autoscaling": {"targetCPUUtilizationPercentage": None}},
        {"podDisruptionBudget": {"maxUnavailable": "25%"}},
        {"autoscaling": {"heldPolls": {"averageValue": 20000}}},
    ],
)
def test_schema_accepts(chart, values):
    chart.validate_schema(values)
