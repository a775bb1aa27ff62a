"""The chart lints clean, and every value set renders to manifests that the Kubernetes API
schemas accept (strict: unknown fields are errors) for every version from 1.29 on, and to
custom resources that their projects' published schemas accept (the kubernetes-models
packages in tests/chart/crd-schemas) or, for the kinds no package has, that use only the
fields of their API reference."""

from __future__ import annotations

import copy

import helm_python
import kubernetes_validate
import pytest

from chartlib import (
    CHART_DIR,
    CRD_KINDS,
    FULLNAME,
    REFERENCE_FIELDS,
    VALUE_SETS,
    kube_versions,
    reference_field_errors,
    validate_custom_resources,
    validate_manifest,
)

RABBITMQ_CLUSTER_NAME = f"{FULLNAME}-rabbitmq"

# The custom resources the published schemas cover, and those checked against their API
# reference instead (no package has them).
SCHEMA_COVERED = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("name", ["default", "rabbitmq", "everything", "everything-operator"])
def test_lint_reports_no_warning_or_error(name):
    report = helm_python.lint(CHART_DIR, VALUE_SETS[name], strict=True)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert problems == []


def test_lint_passes_on_the_oldest_supported_kubernetes():
    report = helm_python.lint(CHART_DIR, strict=True, kube_version="v1.29.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


def test_validation_covers_every_shipped_version_from_1_29():
    versions = kube_versions()
    assert versions[0] == "1.29.0"
    # 1.31 to 1.35 at least: what clusters run in 2026.
    assert {f"1.{minor}.0" for minor in range(31, 36)} <= set(versions)


def test_validation_rejects_a_broken_manifest(render):
    """The schema cache must not make validation a no-op."""
    deployment = copy.deepcopy(render().deployment)
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "forty"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(deployment, kube_versions()[0])
    deployment = copy.deepcopy(render().deployment)
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(deployment, kube_versions()[-1])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_value_set_passes_the_values_schema(chart, name):
    chart.validate_schema(VALUE_SETS[name])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_value_set_renders_valid_manifests_for_every_kubernetes_version(render, name):
    rendered = render(VALUE_SETS[name])
    assert rendered.docs
    failures = []
    for doc in rendered.docs:
        want = RABBITMQ_CLUSTER_NAME if doc["kind"] == "RabbitmqCluster" else FULLNAME
        assert doc["metadata"]["name"] == want, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "lp"
        if doc["kind"] in CRD_KINDS:
            continue  # test_custom_resources_match_their_published_schemas
        for version in kube_versions():
            try:
                validate_manifest(doc, version)
            except kubernetes_validate.ValidationError as err:
                failures.append(f"{doc['kind']} on {version}: {err.message} at {list(err.path)}")
            except kubernetes_validate.SchemaNotFoundError as err:
                failures.append(err.message)
    assert failures == []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_custom_resources_match_their_published_schemas(render, name):
    docs = [d for d in render(VALUE_SETS[name]).docs if d["kind"] in CRD_KINDS]
    failures = []
    for doc, result in zip(docs, validate_custom_resources(docs), strict=True):
        key = (doc["apiVersion"], doc["kind"])
        assert result["covered"] == (key in SCHEMA_COVERED), key
        if result["covered"]:
            failures += [f"{doc['kind']}: {e}" for e in result["errors"]]
        else:
            failures += [f"{doc['kind']}: {e}" for e in reference_field_errors(doc)]
    assert failures == []


def test_every_custom_resource_kind_is_checked_somewhere(render):
    seen = set()
    for values in VALUE_SETS.values():
        seen |= {(d["apiVersion"], d["kind"]) for d in render(values).docs if d["kind"] in CRD_KINDS}
    assert seen == SCHEMA_COVERED | set(REFERENCE_FIELDS)
    assert {kind for _, kind in seen} == CRD_KINDS


@pytest.mark.parametrize(
    ("name", "kind", "path", "bad"),
    [
        ("httproute-envoy-gateway", "BackendTrafficPolicy", ["spec", "loadBalancer", "consistentHash", "type"], "QueryParam"),
        ("httproute-istio", "DestinationRule", ["spec", "trafficPolicy", "loadBalancer", "consistentHash", "httpQueryParameterName"], 5),
        ("keda", "ScaledObject", ["spec", "minReplicaCount"], "2"),
        ("httproute", "HTTPRoute", ["spec", "rules", 0, "timeouts", "request"], "300 seconds"),
        ("service-monitor", "ServiceMonitor", ["spec", "endpoints", 0, "interval"], "30 s"),
    ],
)
def test_custom_resource_validation_rejects_a_broken_manifest(render, name, kind, path, bad):
    """The schema check is not a no-op: one wrong value in each covered kind is caught."""
    doc = copy.deepcopy(render(VALUE_SETS[name]).one(kind))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    (result,) = validate_custom_resources([doc])
    assert result["covered"] and result["errors"], result


@pytest.mark.parametrize(
    ("name", "kind", "change"),
    [
        ("httproute-kong", "KongUpstreamPolicy", {"hashOn": {"queryArgs": "uuid"}}),
        ("httproute-kong", "KongUpstreamPolicy", {"algorithm": "hash"}),
        ("httproute-kong", "KongUpstreamPolicy", {"hashOn": {"queryArg": "uuid", "header": "x"}}),
        ("rabbitmq-cluster", "RabbitmqCluster", {"replica": 3}),
        ("rabbitmq-cluster", "RabbitmqCluster", {"persistence": {"size": "10Gi"}}),
        ("rabbitmq-cluster", "RabbitmqCluster", {"rabbitmq": {"additionalConfig": 1}}),
    ],
)
def test_reference_check_rejects_a_field_the_api_does_not_have(render, name, kind, change):
    doc = copy.deepcopy(render(VALUE_SETS[name]).one(kind))
    doc["spec"].update(change)
    assert reference_field_errors(doc)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_value_set_renders_notes(render, name):
    notes = render(VALUE_SETS[name]).notes
    assert FULLNAME in notes
    assert "/healthz" in notes


def test_default_render_has_the_expected_objects(render):
    kinds = sorted(d["kind"] for d in render().docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
    ]


def test_everything_render_has_every_object(render):
    kinds = {d["kind"] for d in render(VALUE_SETS["everything"]).docs}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "HTTPRoute",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "BackendTrafficPolicy",
    }


def test_everything_operator_render_has_every_object(render):
    kinds = {d["kind"] for d in render(VALUE_SETS["everything-operator"]).docs}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "DestinationRule",
        "HTTPRoute",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "RabbitmqCluster",
        "ScaledObject",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }
