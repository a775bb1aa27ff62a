"""The chart README lists every value; the prometheus-adapter rule for the held-polls metric
is documented where operators look for it."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from chartlib import CHART_DIR, ROOT, binary_settings_source

README = CHART_DIR / "README.md"
KUBERNETES_DOC = ROOT / "docs" / "kubernetes.md"


def documented_paths() -> list[str]:
    """Dotted paths of values.yaml: into objects the schema describes key by key, whole
    otherwise (resources, affinity, …)."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    paths: list[str] = []

    def walk(node, node_schema, path):
        props = node_schema.get("properties")
        if props and isinstance(node, dict):
            for key, value in node.items():
                walk(value, props.get(key, {}), f"{path}.{key}" if path else key)
        else:
            paths.append(path)

    walk(values, schema, "")
    return paths


@pytest.mark.parametrize("path", documented_paths())
def test_readme_lists_value(path):
    assert f"| `{path}` |" in README.read_text()


@pytest.mark.parametrize("doc", [README, KUBERNETES_DOC], ids=lambda p: p.name)
def test_prometheus_adapter_rule_is_documented(doc):
    text = doc.read_text()
    assert "seriesQuery: 'longpoll_polls_held{namespace!=\"\",pod!=\"\"}'" in text
    assert 'as: "longpoll_polls_held"' in text


def test_kubernetes_doc_quick_start_installs_the_chart():
    text = KUBERNETES_DOC.read_text()
    assert "helm install lp charts/longpoll-gateway" in text
    assert "ingress.exposeManagementApi" in text


def test_kubernetes_doc_quick_start_values_render(render):
    """The quick start: the Gateway API with Envoy Gateway and RabbitMQ from the Cluster
    Operator."""
    match = re.search(r"cat > lp-values.yaml <<'EOF'\n(.*?)\nEOF\n", KUBERNETES_DOC.read_text(), re.S)
    assert match, "the quick start's lp-values.yaml is gone"
    rendered = render(yaml.safe_load(match.group(1)))
    assert rendered.deployment["spec"]["replicas"] == 2
    assert rendered.config["LONGPOLL_PUBLIC_URL"] == "http://localhost/longpoll/"
    assert rendered.has("RabbitmqCluster") and rendered.has("HTTPRoute")
    assert rendered.one("BackendTrafficPolicy")["spec"]["loadBalancer"]["type"] == "ConsistentHash"
    assert set(rendered.one("Secret")["data"]) == {"api-token"}
    assert "Consistent hashing on the poll's uuid: HTTPRoute (envoy-gateway)" in rendered.notes


@pytest.mark.parametrize(
    "doc", [README, KUBERNETES_DOC, ROOT / "README.md"], ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_bitnami_recipe_is_left(doc):
    """Bitnami's free images and charts were withdrawn in September 2025."""
    assert "bitnamicharts" not in doc.read_text()
    assert "helm install rabbitmq" not in doc.read_text()


def test_kubernetes_doc_maps_every_ingress_nginx_annotation(render):
    """"Coming from ingress-nginx" names each annotation the chart wrote for ingress-nginx."""
    text = KUBERNETES_DOC.read_text()
    section = text[text.index("## Coming from ingress-nginx") :]
    section = section[: section.index("\n## ", 5)]
    annotations = render(
        {"replicaCount": 2, "existingSecret": "s", "ingress": {"enabled": True, "controller": "ingress-nginx"}}
    ).one("Ingress")["metadata"]["annotations"]
    for name in annotations:
        assert f"`{name.split('/', 1)[1]}:" in section, name


def test_kubernetes_doc_broker_tls_values_render_and_name_real_settings(render):
    """The amqps example (files from a mounted Secret) renders, mounts the Secret and sets
    only variables the binary reads."""
    match = re.search(r"```yaml\n(  volumes:\n.*?)  ```\n", KUBERNETES_DOC.read_text(), re.S)
    assert match, "the amqps example in docs/kubernetes.md is gone"
    values = yaml.safe_load(match.group(1))
    rendered = render(values)
    mounts = {m["mountPath"] for m in rendered.container["volumeMounts"]}
    assert "/etc/longpoll/broker" in mounts
    assert any(v.get("secret", {}).get("secretName") == "rabbitmq-client-tls" for v in rendered.pod["volumes"])
    env = {e["name"]: e.get("value") for e in rendered.container["env"]}
    config_src = binary_settings_source()
    for entry in values["extraEnv"]:
        assert env[entry["name"]] == entry["value"]
        assert f'"{entry["name"]}"' in config_src, f"{entry['name']} is not a setting of the binary"
        if entry["name"].endswith("_FILE"):
            assert entry["value"].startswith("/etc/longpoll/broker/")
