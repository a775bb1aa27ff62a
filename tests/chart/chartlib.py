"""Shared data and helpers of the chart tests: value sets, the parsed render, durations."""

from __future__ import annotations

import copy
import pathlib
import re
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "longpoll-gateway"


def binary_settings_source() -> str:
    """The source of the binary's configuration module, where every environment variable
    it reads is named."""
    return "".join(p.read_text() for p in sorted((ROOT / "src" / "config").rglob("*.rs")))
RELEASE = "lp"
NAMESPACE = "longpoll"
FULLNAME = "lp-longpoll-gateway"

RABBITMQ_URL = "amqp://gateway:s3cret@rabbitmq.messaging.svc:5672/%2F"

# A RabbitMQ broker: the base of every multi-replica value set.
RABBITMQ: dict[str, Any] = {"replicaCount": 3, "config": {"broker": RABBITMQ_URL}}


def deep_merge(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge dictionaries recursively, later ones winning (as `-f a.yaml -f b.yaml` does)."""
    out = copy.deepcopy(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


# Named value sets rendered and validated against every Kubernetes version.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "rabbitmq": deep_merge(RABBITMQ, {"config": {"apiToken": "token"}}),
    "ingress": deep_merge(RABBITMQ, {"ingress": {"enabled": True}}),
    "ingress-tls-api": deep_merge(
        RABBITMQ,
        {
            "ingress": {
                "enabled": True,
                "exposeManagementApi": True,
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
                "tls": [{"secretName": "lp-tls", "hosts": ["longpoll.example.com"]}],
            }
        },
    ),
    "ingress-off": deep_merge(RABBITMQ, {"ingress": {"enabled": False}}),
    "autoscaling-cpu": deep_merge(RABBITMQ, {"autoscaling": {"enabled": True}}),
    "autoscaling-held-polls": deep_merge(
        RABBITMQ,
        {
            "autoscaling": {
                "enabled": True,
                "targetCPUUtilizationPercentage": None,
                "heldPolls": {"enabled": True, "averageValue": "15000"},
            }
        },
    ),
    "autoscaling-cpu-and-held-polls": deep_merge(
        RABBITMQ,
        {"autoscaling": {"enabled": True, "heldPolls": {"enabled": True}}},
    ),
    "existing-secret": {"replicaCount": 2, "existingSecret": "lp-broker"},
    "network-policy": deep_merge(
        RABBITMQ,
        {
            "networkPolicy": {
                "enabled": True,
                "rabbitmq": {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "messaging"}
                            }
                        }
                    ]
                },
            },
            "config": {"otel": {"endpoint": "http://otel-collector.observability:4317"}},
        },
    ),
    "service-monitor": deep_merge(
        RABBITMQ, {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}
    ),
    "httproute": deep_merge(RABBITMQ, {"httpRoute": {"enabled": True}}),
    **{
        f"httproute-{implementation}": deep_merge(
            RABBITMQ, {"httpRoute": {"enabled": True, "implementation": implementation}}
        )
        for implementation in ("envoy-gateway", "istio", "kong", "other")
    },
    "httproute-envoy-gateway-no-hash-no-retry": deep_merge(
        RABBITMQ,
        {"httpRoute": {"enabled": True, "hashByUuid": False, "envoyGateway": {"numRetries": 0}}},
    ),
    **{
        f"ingress-{controller}": deep_merge(
            RABBITMQ, {"ingress": {"enabled": True, "controller": controller}}
        )
        for controller in ("nginx-inc", "haproxy", "traefik", "ingress-nginx")
    },
    "rabbitmq-cluster": {"replicaCount": 3, "rabbitmq": {"cluster": {"enabled": True}}},
    "rabbitmq-cluster-service-address": {
        "replicaCount": 2,
        "rabbitmq": {"cluster": {"enabled": True, "addresses": "service", "replicas": 1}},
        "config": {"apiToken": "token"},
    },
    "keda": deep_merge(RABBITMQ, {"keda": {"enabled": True}}),
    "keda-held-polls-only": deep_merge(
        RABBITMQ, {"keda": {"enabled": True, "cpuUtilizationPercentage": None}}
    ),
    "everything-operator": {
        "rabbitmq": {"cluster": {"enabled": True, "image": "rabbitmq:4.3-management"}},
        "keda": {"enabled": True},
        "ingress": {"enabled": True, "controller": "haproxy"},
        "httpRoute": {"enabled": True, "implementation": "istio"},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "config": {"apiToken": "token"},
    },
    "everything": deep_merge(
        RABBITMQ,
        {
            "ingress": {"enabled": True},
            "httpRoute": {"enabled": True},
            "autoscaling": {"enabled": True, "heldPolls": {"enabled": True}},
            "networkPolicy": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "config": {
                "apiToken": "token",
                "channelPoolSize": 64,
                "consumerPrefetch": 20,
                "corsOrigins": ["https://a.example.com", "https://b.example.com"],
                "publicUrl": "https://longpoll.example.com/longpoll/",
                "otel": {"endpoint": "http://otel-collector:4318", "protocol": "http/protobuf"},
            },
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "podAnnotations": {"example.com/team": "web"},
        },
    ),
}


class Rendered:
    """The manifests of one render, parsed, plus the NOTES text."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.notes = ""
        self.docs: list[dict[str, Any]] = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.docs.append(doc)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def config(self) -> dict[str, str]:
        """The ConfigMap's data: the environment the gateway gets (besides the Secret)."""
        return self.one("ConfigMap")["data"]


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as 270s, 5m, 500ms, 4m30s (the binary's format)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"([0-9]+)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


# Custom resources: kubernetes-validate ships only the core kinds' schemas. Each one here is
# validated against its project's published schema (validate_custom_resources) or, where no
# package has it, against the fields of its project's API reference (REFERENCE_FIELDS).
CRD_KINDS = {
    "ServiceMonitor",
    "PrometheusRule",
    "HTTPRoute",
    "BackendTrafficPolicy",
    "DestinationRule",
    "KongUpstreamPolicy",
    "ScaledObject",
    "RabbitmqCluster",
}

CRD_PROJECT = ROOT / "tests" / "chart" / "crd-schemas"


def validate_custom_resources(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each custom resource checked by tests/chart/crd-schemas (Node, the kubernetes-models
    packages): [{apiVersion, kind, name, covered, errors}] in the order given."""
    import json
    import subprocess

    out = subprocess.run(
        ["node", str(CRD_PROJECT / "validate.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"crd-schemas/validate.mjs failed: {out.stderr}"
    return json.loads(out.stdout)


# Kinds no schema package covers (checked: no kubernetes-models package for Kong or the
# RabbitMQ Cluster Operator; kube-custom-resources-rs' last release is from 2024): the fields
# the chart may write, as their projects' API references list them. A nested dict lists the
# fields of an object; None accepts any value there (a Kubernetes core type such as
# ResourceRequirements, or free text).
REFERENCE_FIELDS: dict[tuple[str, str], dict[str, Any]] = {
    # Kong Ingress Controller, KongUpstreamPolicy (configuration.konghq.com/v1beta1), as its
    # CRD reference lists it (developer.konghq.com, "Custom resources"), with its two rules:
    # one hashOn input at most, and hashOn only with algorithm consistent-hashing.
    ("configuration.konghq.com/v1beta1", "KongUpstreamPolicy"): {
        "algorithm": {"enum": ["round-robin", "consistent-hashing", "least-connections", "latency"]},
        "slots": None,
        "hashOn": {"fields": {"input": None, "header": None, "cookie": None, "cookiePath": None, "queryArg": None, "uriCapture": None}},
        "hashOnFallback": {"fields": {"input": None, "header": None, "cookie": None, "cookiePath": None, "queryArg": None, "uriCapture": None}},
        "healthchecks": None,
    },
    # RabbitMQ Cluster Operator, RabbitmqCluster (rabbitmq.com/v1beta1):
    # https://www.rabbitmq.com/kubernetes/operator/using-operator (API reference in the
    # operator's docs/api/rabbitmq.com.ref.asciidoc)
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): {
        "replicas": {"type": int},
        "image": {"type": str},
        "imagePullSecrets": None,
        "service": {"fields": {"type": None, "annotations": None, "ipFamilyPolicy": None}},
        "persistence": {"fields": {"storageClassName": {"type": str}, "storage": {"type": str}}},
        "resources": None,
        "affinity": None,
        "tolerations": None,
        "rabbitmq": {"fields": {"additionalPlugins": None, "additionalConfig": {"type": str}, "advancedConfig": {"type": str}, "envConfig": {"type": str}, "erlangInetConfig": {"type": str}}},
        "tls": None,
        "override": None,
        "skipPostDeploySteps": {"type": bool},
        "terminationGracePeriodSeconds": {"type": int},
        "delayStartSeconds": {"type": int},
        "secretBackend": None,
        "autoEnableAllFeatureFlags": {"type": bool},
    },
}


def reference_field_errors(doc: dict[str, Any]) -> list[str]:
    """Fields of doc's spec that its project's API reference does not list (or of a wrong
    type or value); an error when the kind has no reference here."""
    fields = REFERENCE_FIELDS.get((doc["apiVersion"], doc["kind"]))
    if fields is None:
        return [f"no API reference recorded for {doc['apiVersion']} {doc['kind']}"]
    errors: list[str] = []

    def walk(node: Any, allowed: dict[str, Any], path: str) -> None:
        if not isinstance(node, dict):
            errors.append(f"{path}: not an object")
            return
        for key, value in node.items():
            here = f"{path}.{key}"
            if key not in allowed:
                errors.append(f"{here}: not a field of {doc['kind']}")
                continue
            rule = allowed[key]
            if rule is None:
                continue
            if "type" in rule and not isinstance(value, rule["type"]):
                errors.append(f"{here}: {value!r} is not a {rule['type'].__name__}")
            if "enum" in rule and value not in rule["enum"]:
                errors.append(f"{here}: {value!r} is not one of {rule['enum']}")
            if "fields" in rule:
                walk(value, rule["fields"], here)

    if set(doc) - {"apiVersion", "kind", "metadata", "spec"}:
        errors.append(f"unexpected top-level keys {sorted(set(doc) - {'apiVersion', 'kind', 'metadata', 'spec'})}")
    spec = doc.get("spec", {})
    walk(spec, fields, "spec")
    if doc["kind"] == "KongUpstreamPolicy" and "hashOn" in spec:
        if len(spec["hashOn"]) != 1:
            errors.append(f"spec.hashOn: exactly one input, got {sorted(spec['hashOn'])}")
        if spec.get("algorithm") != "consistent-hashing":
            errors.append("spec.hashOn needs spec.algorithm: consistent-hashing")
    return errors


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def kube_versions(since: str = "1.29") -> list[str]:
    """Every Kubernetes version kubernetes-validate ships schemas for, from `since` on."""
    from kubernetes_validate import utils

    versions = {v for v in utils.all_versions() if _version_key(v)[:2] >= _version_key(since)}
    return sorted(versions, key=_version_key)


def _cache_schemas() -> None:
    """kubernetes-validate reads and parses the schema files (a few MB) on every call; keep
    them in memory so that validating every manifest against every version stays fast."""
    import functools

    from kubernetes_validate import utils

    if not hasattr(utils.schema_contents, "cache_info"):
        utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)


def validate_manifest(doc: dict[str, Any], version: str) -> None:
    """Validate one manifest (strict: unknown fields are errors) against a Kubernetes version."""
    import kubernetes_validate

    _cache_schemas()
    kubernetes_validate.validate(doc, version, strict=True)
