"""PodDisruptionBudget, ServiceMonitor (structure: its CRD schema is not shipped),
NetworkPolicy."""

from __future__ import annotations

from chartlib import FULLNAME, NAMESPACE, RABBITMQ, VALUE_SETS, deep_merge


def test_pdb_lets_one_pod_go_at_a_time(render):
    rendered = render(RABBITMQ)
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == rendered.deployment["spec"]["selector"]
    assert not render(deep_merge(RABBITMQ, {"podDisruptionBudget": {"enabled": False}})).has(
        "PodDisruptionBudget"
    )


def test_servicemonitor_structure(render):
    rendered = render(VALUE_SETS["service-monitor"])
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    service = rendered.one("Service")
    # It selects the chart's Service and scrapes its admin port.
    for key, value in spec["selector"]["matchLabels"].items():
        assert service["metadata"]["labels"][key] == value
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "admin"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"
    assert "admin" in {p["name"] for p in service["spec"]["ports"]}


def test_no_servicemonitor_or_networkpolicy_by_default(render):
    rendered = render(RABBITMQ)
    assert not rendered.has("ServiceMonitor")
    assert not rendered.has("NetworkPolicy")


def test_networkpolicy_ingress_from_controller_and_prometheus_only(render):
    rendered = render(VALUE_SETS["network-policy"])
    policy = rendered.one("NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == rendered.deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    controller, prometheus = spec["ingress"]
    assert controller["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert controller["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    assert prometheus["ports"] == [{"port": "admin", "protocol": "TCP"}]
    assert prometheus["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }


def test_networkpolicy_egress_to_rabbitmq_otlp_and_dns_only(render):
    spec = render(VALUE_SETS["network-policy"]).one("NetworkPolicy")["spec"]
    rabbitmq, otlp, dns = spec["egress"]
    assert {p["port"] for p in rabbitmq["ports"]} == {5672, 5671}
    assert rabbitmq["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "messaging"}}}
    ]
    assert {p["port"] for p in otlp["ports"]} == {4317, 4318}
    assert "to" not in otlp  # any destination, on the OTLP ports only
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_networkpolicy_extra_rules(render):
    extra_ingress = {
        "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
        "ports": [{"port": "http", "protocol": "TCP"}],
    }
    values = deep_merge(
        VALUE_SETS["network-policy"],
        {"networkPolicy": {"extraIngress": [extra_ingress], "extraEgress": [{"ports": [{"port": 443}]}]}},
    )
    spec = render(values).one("NetworkPolicy")["spec"]
    assert spec["ingress"][-1] == extra_ingress
    assert spec["egress"][-1] == {"ports": [{"port": 443}]}


def test_service_account_does_not_mount_a_token(render):
    account = render().one("ServiceAccount")
    assert account["metadata"]["name"] == FULLNAME
    assert account["automountServiceAccountToken"] is False
