"""Ingress (ingress-nginx by default) and the Gateway API HTTPRoute: consistent hashing on the
poll's uuid, proxy timeouts derived from the poll timeout, bounded retries, no buffering, the
admin port never routed and the management API not exposed unless asked for."""

from __future__ import annotations

import helm_python
import pytest

from chartlib import FULLNAME, RABBITMQ, deep_merge, duration_seconds

NGINX = "nginx.ingress.kubernetes.io/"
INGRESS = deep_merge(RABBITMQ, {"ingress": {"enabled": True}})
HTTPROUTE = deep_merge(RABBITMQ, {"httpRoute": {"enabled": True}})


def ingress_paths(ingress):
    return [
        (rule.get("host"), path)
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]


def test_no_ingress_by_default(render):
    assert not render().has("Ingress")
    assert not render().has("HTTPRoute")


def test_ingress_nginx_annotations(render):
    ingress = render(INGRESS).one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert annotations[NGINX + "upstream-hash-by"] == "$arg_uuid"
    assert annotations[NGINX + "proxy-next-upstream"] == "error timeout http_502 http_503"
    assert annotations[NGINX + "proxy-next-upstream-tries"] == "3"
    assert annotations[NGINX + "proxy-buffering"] == "off"
    assert annotations[NGINX + "proxy-read-timeout"] == "300"
    assert annotations[NGINX + "proxy-send-timeout"] == "300"
    # Annotation values are strings, as the API requires.
    assert all(isinstance(v, str) for v in annotations.values())


@pytest.mark.parametrize("poll_timeout", ["270s", "5m", "4m30s", "500ms", "1h", "59s"])
def test_proxy_timeouts_stay_above_the_poll_timeout(render, poll_timeout):
    rendered = render(deep_merge(INGRESS, {"config": {"pollTimeout": poll_timeout}}))
    annotations = rendered.one("Ingress")["metadata"]["annotations"]
    poll = duration_seconds(rendered.config["LONGPOLL_POLL_TIMEOUT"])
    assert poll == duration_seconds(poll_timeout)
    assert int(annotations[NGINX + "proxy-read-timeout"]) > poll
    assert int(annotations[NGINX + "proxy-send-timeout"]) > poll
    assert int(annotations[NGINX + "proxy-read-timeout"]) >= poll + 30


def test_timeout_margin_is_configurable(render):
    values = deep_merge(INGRESS, {"ingress": {"nginx": {"timeoutMarginSeconds": 5}}})
    annotations = render(values).one("Ingress")["metadata"]["annotations"]
    assert annotations[NGINX + "proxy-read-timeout"] == "275"


def test_next_upstream_tries_are_configurable_and_bounded(render, chart):
    values = deep_merge(INGRESS, {"ingress": {"nginx": {"nextUpstreamTries": 2}}})
    annotations = render(values).one("Ingress")["metadata"]["annotations"]
    assert annotations[NGINX + "proxy-next-upstream-tries"] == "2"
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({"ingress": {"nginx": {"nextUpstreamTries": 0}}})
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({"ingress": {"nginx": {"nextUpstreamTries": 100}}})


def test_user_annotations_are_added_and_win(render):
    values = deep_merge(
        INGRESS,
        {
            "ingress": {
                "annotations": {
                    NGINX + "proxy-next-upstream-tries": "1",
                    "cert-manager.io/cluster-issuer": "letsencrypt",
                }
            }
        },
    )
    annotations = render(values).one("Ingress")["metadata"]["annotations"]
    assert annotations[NGINX + "proxy-next-upstream-tries"] == "1"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert annotations[NGINX + "upstream-hash-by"] == "$arg_uuid"


def test_other_controllers_get_no_nginx_annotations(render):
    values = deep_merge(
        INGRESS, {"ingress": {"className": "traefik", "nginx": {"enabled": False}}}
    )
    ingress = render(values).one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert not any(k.startswith(NGINX) for k in ingress["metadata"].get("annotations", {}))


def test_hashing_can_be_switched_off(render):
    values = deep_merge(INGRESS, {"ingress": {"nginx": {"hashByUuid": False}}})
    annotations = render(values).one("Ingress")["metadata"]["annotations"]
    assert NGINX + "upstream-hash-by" not in annotations
    assert annotations[NGINX + "proxy-read-timeout"] == "300"


def test_ingress_routes_only_the_public_port(render):
    values = deep_merge(INGRESS, {"ingress": {"exposeManagementApi": True}})
    ingress = render(values).one("Ingress")
    for _, path in ingress_paths(ingress):
        assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}


def test_ingress_does_not_expose_the_management_api_by_default(render):
    ingress = render(INGRESS).one("Ingress")
    paths = {(p["path"], p["pathType"]) for _, p in ingress_paths(ingress)}
    assert paths == {
        ("/longpoll/", "Prefix"),
        ("/longpoll.js", "Exact"),
        ("/longpoll.mjs", "Exact"),
    }
    assert not any(path.startswith("/api") for path, _ in paths)


def test_expose_management_api_adds_the_api_path(render):
    values = deep_merge(INGRESS, {"ingress": {"exposeManagementApi": True}})
    paths = {(p["path"], p["pathType"]) for _, p in ingress_paths(render(values).one("Ingress"))}
    assert ("/api/", "Prefix") in paths


@pytest.mark.parametrize("path", ["/", "/api", "/api/", "/api/v1/events"])
def test_a_path_covering_the_api_fails_unless_exposure_is_asked_for(render, path):
    hosts = [{"host": "lp.example.com", "paths": [{"path": path, "pathType": "Prefix"}]}]
    values = deep_merge(INGRESS, {"ingress": {"hosts": hosts}})
    with pytest.raises(helm_python.HelmRenderError, match="exposeManagementApi"):
        render(values)
    values = deep_merge(values, {"ingress": {"exposeManagementApi": True}})
    assert render(values).has("Ingress")


def test_client_script_paths_can_be_left_out(render):
    values = deep_merge(INGRESS, {"ingress": {"exposeClientScript": False}})
    paths = [p["path"] for _, p in ingress_paths(render(values).one("Ingress"))]
    assert paths == ["/longpoll/"]


def test_ingress_tls_and_public_url(render):
    values = deep_merge(
        INGRESS,
        {"ingress": {"tls": [{"secretName": "lp-tls", "hosts": ["longpoll.example.com"]}]}},
    )
    rendered = render(values)
    assert rendered.one("Ingress")["spec"]["tls"] == [
        {"hosts": ["longpoll.example.com"], "secretName": "lp-tls"}
    ]
    assert rendered.config["LONGPOLL_PUBLIC_URL"] == "https://longpoll.example.com/longpoll/"
    assert render(INGRESS).config["LONGPOLL_PUBLIC_URL"] == "http://longpoll.example.com/longpoll/"


def test_explicit_public_url_wins(render):
    values = deep_merge(INGRESS, {"config": {"publicUrl": "https://cdn.example.com/lp/"}})
    assert render(values).config["LONGPOLL_PUBLIC_URL"] == "https://cdn.example.com/lp/"


def test_hostless_ingress_rule(render):
    hosts = [{"host": "", "paths": [{"path": "/longpoll/", "pathType": "Prefix"}]}]
    rendered = render(deep_merge(INGRESS, {"ingress": {"hosts": hosts}}))
    rule = rendered.one("Ingress")["spec"]["rules"][0]
    assert "host" not in rule
    assert "LONGPOLL_PUBLIC_URL" not in rendered.config


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


def test_httproute_timeouts_stay_above_the_poll_timeout(render):
    for poll_timeout in ["270s", "10m"]:
        values = deep_merge(HTTPROUTE, {"config": {"pollTimeout": poll_timeout}})
        (rule,) = render(values).one("HTTPRoute")["spec"]["rules"]
        assert duration_seconds(rule["timeouts"]["request"]) > duration_seconds(poll_timeout)
        assert duration_seconds(rule["timeouts"]["backendRequest"]) > duration_seconds(poll_timeout)


def test_httproute_management_api_exposure(render):
    values = deep_merge(HTTPROUTE, {"httpRoute": {"pathPrefixes": ["/"]}})
    with pytest.raises(helm_python.HelmRenderError, match="httpRoute.exposeManagementApi"):
        render(values)
    values = deep_merge(HTTPROUTE, {"httpRoute": {"exposeManagementApi": True}})
    (rule,) = render(values).one("HTTPRoute")["spec"]["rules"]
    assert {"path": {"type": "PathPrefix", "value": "/api/"}} in rule["matches"]
