"""The chart lints clean, and every value set renders to manifests that the Kubernetes API
schemas accept (strict: unknown fields are errors) for every version from 1.29 on."""

from __future__ import annotations

import copy

import helm_python
import kubernetes_validate
import pytest

from chartlib import CHART_DIR, CRD_KINDS, FULLNAME, VALUE_SETS, kube_versions, validate_manifest

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("name", ["default", "rabbitmq", "everything"])
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
    assert len(versions) >= 2


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
        assert doc["metadata"]["name"] == FULLNAME, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "lp"
        if doc["kind"] in CRD_KINDS:
            continue  # no schema shipped; structure asserted in test_extras.py
        for version in kube_versions():
            try:
                validate_manifest(doc, version)
            except kubernetes_validate.ValidationError as err:
                failures.append(f"{doc['kind']} on {version}: {err.message} at {list(err.path)}")
            except kubernetes_validate.SchemaNotFoundError as err:
                failures.append(err.message)
    assert failures == []


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
    }
