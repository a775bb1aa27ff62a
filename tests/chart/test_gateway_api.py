"""The Gateway API HTTPRoute and, chosen by httpRoute.implementation, the policy that hashes on
the poll's uuid: Envoy Gateway's BackendTrafficPolicy, Istio's DestinationRule, Kong's
KongUpstreamPolicy on the Service; `other` renders the HTTPRoute alone and the notes say that
retries then rely on `seen`. Timeouts stay above the poll timeout everywhere."""

from __future__ import annotations

import helm_python
import pytest

from chartlib import FULLNAME, NAMESPACE, RABBITMQ, deep_merge, duration_seconds

HTTPROUTE = deep_merge(RABBITMQ, {"httpRoute": {"enabled": True}})
POLICY_KINDS = {"BackendTrafficPolicy", "DestinationRule", "KongUpstreamPolicy"}


def route_for(implementation, **http_route):
    return deep_merge(
        RABBITMQ, {"httpRoute": {"enabled": True, "implementation": implementation, **http_route}}
    )


def policies(rendered):
    return {d["kind"] for d in rendered.docs if d["kind"] in POLICY_KINDS}


def test_httproute_structure(render):
    route = render(HTTPROUTE).one("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = route["spec"]
    assert spec["parentRefs"] == [{"name": "gateway", "sectionName": "http"}]
    assert spec["hostnames"] == ["longpoll.example.com"]
    (rule,) = spec["rules"]
    assert rule["backendRefs"] == [{"name": FULLNAME, "port": 80}]
    matches = [(m["path"]["type"], m["path"]["value"]) for m in rule["matches"]]
    assert matches == [
        ("PathPrefix", "/longpoll/"),
        ("Exact", "/longpoll.js"),
        ("Exact", "/longpoll.mjs"),
    ]


@pytest.mark.parametrize("poll_timeout", ["270s", "10m", "5s"])
def test_httproute_timeouts_stay_above_the_poll_timeout(render, poll_timeout):
    values = deep_merge(HTTPROUTE, {"config": {"pollTimeout": poll_timeout}})
    (rule,) = render(values).one("HTTPRoute")["spec"]["rules"]
    poll = duration_seconds(poll_timeout)
    assert duration_seconds(rule["timeouts"]["request"]) >= poll + 30
    # backendRequest may not exceed request (a rule of the HTTPRoute API).
    assert rule["timeouts"]["backendRequest"] == rule["timeouts"]["request"]


def test_httproute_management_api_exposure(render):
    values = deep_merge(HTTPROUTE, {"httpRoute": {"pathPrefixes": ["/"]}})
    with pytest.raises(helm_python.HelmRenderError, match="httpRoute.exposeManagementApi"):
        render(values)
    values = deep_merge(HTTPROUTE, {"httpRoute": {"exposeManagementApi": True}})
    (rule,) = render(values).one("HTTPRoute")["spec"]["rules"]
    assert {"path": {"type": "PathPrefix", "value": "/api/"}} in rule["matches"]


def test_envoy_gateway_is_the_default_implementation(render):
    assert policies(render(HTTPROUTE)) == {"BackendTrafficPolicy"}


def test_envoy_gateway_policy_hashes_on_uuid_and_retries_only_what_is_safe(render):
    policy = render(route_for("envoy-gateway")).one("BackendTrafficPolicy")
    assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    assert policy["spec"] == {
        "targetRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": FULLNAME}
        ],
        "loadBalancer": {
            "type": "ConsistentHash",
            "consistentHash": {"type": "QueryParams", "queryParams": [{"name": "uuid"}]},
        },
        # A connection that never reached a replica, and a draining replica's 503: nothing
        # was handed out, so another endpoint may answer. No "reset": a reset after the
        # request reached a replica is the client's retry, which the hash brings back.
        "retry": {
            "numRetries": 2,
            "retryOn": {
                "triggers": ["connect-failure", "retriable-status-codes"],
                "httpStatusCodes": [503],
            },
        },
        "timeout": {"http": {"requestTimeout": "300s"}},
    }


def test_envoy_gateway_without_hashing_or_retries(render):
    values = route_for("envoy-gateway", hashByUuid=False, envoyGateway={"numRetries": 0})
    rendered = render(values)
    spec = rendered.one("BackendTrafficPolicy")["spec"]
    assert "loadBalancer" not in spec and "retry" not in spec
    assert spec["timeout"]["http"]["requestTimeout"] == "300s"
    assert "WARNING: no consistent hashing" in rendered.notes


def test_istio_destination_rule_hashes_on_the_uuid_query_parameter(render):
    rendered = render(route_for("istio"))
    assert policies(rendered) == {"DestinationRule"}
    rule = rendered.one("DestinationRule")
    assert rule["apiVersion"] == "networking.istio.io/v1"
    assert rule["spec"] == {
        "host": f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
        "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpQueryParameterName": "uuid"}}},
    }


def test_kong_upstream_policy_is_attached_to_the_service(render):
    rendered = render(route_for("kong"))
    assert policies(rendered) == {"KongUpstreamPolicy"}
    policy = rendered.one("KongUpstreamPolicy")
    assert policy["apiVersion"] == "configuration.konghq.com/v1beta1"
    assert policy["spec"] == {"algorithm": "consistent-hashing", "hashOn": {"queryArg": "uuid"}}
    annotations = rendered.one("Service")["metadata"]["annotations"]
    assert annotations["konghq.com/upstream-policy"] == policy["metadata"]["name"]
    # Kong's proxy timeouts are Service annotations, in milliseconds.
    assert annotations["konghq.com/read-timeout"] == "300000"
    assert annotations["konghq.com/write-timeout"] == "300000"


def test_kong_keeps_the_users_service_annotations(render):
    values = deep_merge(route_for("kong"), {"service": {"annotations": {"example.com/team": "web"}}})
    annotations = render(values).one("Service")["metadata"]["annotations"]
    assert annotations["example.com/team"] == "web"
    assert "konghq.com/upstream-policy" in annotations


def test_other_renders_the_httproute_alone_and_warns(render):
    rendered = render(route_for("other"))
    assert rendered.has("HTTPRoute")
    assert policies(rendered) == set()
    assert "annotations" not in rendered.one("Service")["metadata"]
    assert "WARNING: no consistent hashing on the poll's uuid" in rendered.notes
    assert "httpRoute.implementation=other" in rendered.notes
    assert "`seen`" in rendered.notes


@pytest.mark.parametrize(
    ("implementation", "words"),
    [
        ("envoy-gateway", "BackendTrafficPolicy, ConsistentHash on the query parameter uuid"),
        ("istio", "DestinationRule, consistentHash.httpQueryParameterName uuid"),
        ("kong", "KongUpstreamPolicy, consistent-hashing on the query argument uuid"),
    ],
)
def test_notes_print_the_poll_url_and_the_active_hashing(render, implementation, words):
    notes = render(route_for(implementation)).notes
    assert "http(s)://longpoll.example.com/longpoll/" in notes
    assert f"Consistent hashing on the poll's uuid: HTTPRoute ({implementation}): {words}" in notes
    assert "WARNING: no consistent hashing" not in notes


def test_no_policy_without_the_httproute(render):
    for implementation in ["envoy-gateway", "istio", "kong"]:
        values = deep_merge(RABBITMQ, {"httpRoute": {"implementation": implementation}})
        assert policies(render(values)) == set()


def test_schema_rejects_an_unknown_implementation(chart):
    for implementation in ["envoy", "contour", "Istio", ""]:
        with pytest.raises(helm_python.HelmValuesError):
            chart.validate_schema({"httpRoute": {"implementation": implementation}})
