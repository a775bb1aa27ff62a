"""The Ingress for each maintained controller (F5 NGINX Ingress by default, HAProxy, Traefik)
and for the retired ingress-nginx: consistent hashing on the poll's uuid where the controller
can, proxy timeouts derived from the poll timeout, bounded retries, no buffering, the admin
port never routed and the management API not exposed unless asked for."""

from __future__ import annotations

import helm_python
import pytest

from chartlib import FULLNAME, RABBITMQ, deep_merge, duration_seconds

NGINX = "nginx.ingress.kubernetes.io/"
NGINX_INC = "nginx.org/"
HAPROXY = "haproxy.org/"
INGRESS = deep_merge(RABBITMQ, {"ingress": {"enabled": True}})
HTTPROUTE = deep_merge(RABBITMQ, {"httpRoute": {"enabled": True}})


def ingress_for(controller, **ingress):
    return deep_merge(RABBITMQ, {"ingress": {"enabled": True, "controller": controller, **ingress}})


def annotations_of(rendered):
    return rendered.one("Ingress")["metadata"].get("annotations", {})


def ingress_paths(ingress):
    return [
        (rule.get("host"), path)
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]


def test_no_ingress_by_default(render):
    assert not render().has("Ingress")
    assert not render().has("HTTPRoute")


def test_default_controller_is_f5_nginx_ingress(render):
    ingress = render(INGRESS).one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"][NGINX_INC + "lb-method"] == "hash $arg_uuid consistent"


def test_f5_nginx_ingress_annotations(render):
    annotations = annotations_of(render(ingress_for("nginx-inc")))
    assert annotations == {
        NGINX_INC + "lb-method": "hash $arg_uuid consistent",
        NGINX_INC + "proxy-read-timeout": "300s",
        NGINX_INC + "proxy-send-timeout": "300s",
        NGINX_INC + "proxy-next-upstream": "error timeout http_502 http_503",
        NGINX_INC + "proxy-next-upstream-tries": "3",
        NGINX_INC + "proxy-buffering": "False",
    }


def test_haproxy_annotations_hash_on_the_uuid_url_parameter_consistently(render):
    rendered = render(ingress_for("haproxy"))
    assert rendered.one("Ingress")["spec"]["ingressClassName"] == "haproxy"
    annotations = annotations_of(rendered)
    assert annotations[HAPROXY + "load-balance"] == "url_param uuid"
    assert annotations[HAPROXY + "timeout-server"] == "300s"
    snippet = annotations[HAPROXY + "backend-config-snippet"].splitlines()
    assert snippet == [
        "hash-type consistent",
        "retry-on conn-failure empty-response 503",
        "retries 3",
        "option redispatch 1",
    ]
    assert set(annotations) == {HAPROXY + k for k in ("load-balance", "timeout-server", "backend-config-snippet")}
    # timeout client is a ConfigMap-only setting of the controller: the notes say so.
    assert "timeout-client: 300s" in rendered.notes


def test_traefik_gets_no_hashing_and_the_notes_say_retries_rely_on_seen(render):
    rendered = render(ingress_for("traefik"))
    ingress = rendered.one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert "annotations" not in ingress["metadata"]
    assert "WARNING: no consistent hashing" in rendered.notes
    assert "Traefik cannot hash on a query parameter" in rendered.notes
    assert "`seen`" in rendered.notes


def test_ingress_nginx_keeps_working_and_is_marked_retired(render):
    rendered = render(ingress_for("ingress-nginx"))
    ingress = rendered.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert annotations == {
        NGINX + "upstream-hash-by": "$arg_uuid",
        NGINX + "proxy-read-timeout": "300",
        NGINX + "proxy-send-timeout": "300",
        NGINX + "proxy-next-upstream": "error timeout http_502 http_503",
        NGINX + "proxy-next-upstream-tries": "3",
        NGINX + "proxy-buffering": "off",
    }
    assert "ingress-nginx was retired in March 2026" in rendered.notes


@pytest.mark.parametrize("controller", ["nginx-inc", "haproxy", "ingress-nginx"])
def test_notes_name_the_active_hashing(render, controller):
    notes = render(ingress_for(controller)).notes
    assert f"Consistent hashing on the poll's uuid: Ingress ({controller})" in notes
    assert "WARNING: no consistent hashing" not in notes


def proxy_timeouts(controller, annotations):
    """The read/send (server) timeouts the controller gets, in seconds."""
    if controller == "nginx-inc":
        keys = [NGINX_INC + "proxy-read-timeout", NGINX_INC + "proxy-send-timeout"]
    elif controller == "ingress-nginx":
        keys = [NGINX + "proxy-read-timeout", NGINX + "proxy-send-timeout"]
    else:
        keys = [HAPROXY + "timeout-server"]
    return [duration_seconds(annotations[k]) if annotations[k][-1].isalpha() else int(annotations[k]) for k in keys]


@pytest.mark.parametrize("controller", ["nginx-inc", "haproxy", "ingress-nginx"])
@pytest.mark.parametrize("poll_timeout", ["270s", "5m", "4m30s", "500ms", "1h", "59s"])
def test_proxy_timeouts_stay_above_the_poll_timeout(render, controller, poll_timeout):
    rendered = render(deep_merge(ingress_for(controller), {"config": {"pollTimeout": poll_timeout}}))
    poll = duration_seconds(rendered.config["LONGPOLL_POLL_TIMEOUT"])
    assert poll == duration_seconds(poll_timeout)
    for timeout in proxy_timeouts(controller, annotations_of(rendered)):
        assert timeout >= poll + 30


@pytest.mark.parametrize("controller", ["nginx-inc", "haproxy", "ingress-nginx"])
def test_timeout_margin_is_configurable(render, controller):
    rendered = render(deep_merge(ingress_for(controller), {"proxyTimeoutMarginSeconds": 5}))
    assert proxy_timeouts(controller, annotations_of(rendered))[0] == 275


def test_deprecated_nginx_keys_still_work(render):
    """ingress.nginx.{enabled,hashByUuid,timeoutMarginSeconds} (chart 0.2) keep their meaning."""
    annotations = annotations_of(render(ingress_for("ingress-nginx", nginx={"timeoutMarginSeconds": 5})))
    assert annotations[NGINX + "proxy-read-timeout"] == "275"
    annotations = annotations_of(render(ingress_for("ingress-nginx", nginx={"hashByUuid": False})))
    assert NGINX + "upstream-hash-by" not in annotations
    ingress = render(ingress_for("nginx-inc", nginx={"enabled": False})).one("Ingress")
    assert "annotations" not in ingress["metadata"]


def test_next_upstream_tries_are_configurable_and_bounded(render, chart):
    annotations = annotations_of(render(ingress_for("nginx-inc", nginx={"nextUpstreamTries": 2})))
    assert annotations[NGINX_INC + "proxy-next-upstream-tries"] == "2"
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
                    NGINX_INC + "proxy-next-upstream-tries": "1",
                    "cert-manager.io/cluster-issuer": "letsencrypt",
                }
            }
        },
    )
    annotations = annotations_of(render(values))
    assert annotations[NGINX_INC + "proxy-next-upstream-tries"] == "1"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert annotations[NGINX_INC + "lb-method"] == "hash $arg_uuid consistent"


def test_generated_annotations_can_be_left_out(render):
    values = deep_merge(INGRESS, {"ingress": {"className": "my-class", "generateAnnotations": False}})
    ingress = render(values).one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "my-class"
    assert "annotations" not in ingress["metadata"]


@pytest.mark.parametrize(
    ("controller", "key", "round_robin"),
    [
        ("nginx-inc", NGINX_INC + "lb-method", "round_robin"),
        ("haproxy", HAPROXY + "load-balance", "roundrobin"),
    ],
)
def test_hashing_can_be_switched_off(render, controller, key, round_robin):
    rendered = render(ingress_for(controller, hashByUuid=False))
    annotations = annotations_of(rendered)
    assert annotations[key] == round_robin
    assert "hash-type consistent" not in annotations.get(HAPROXY + "backend-config-snippet", "")
    assert proxy_timeouts(controller, annotations)[0] == 300
    assert "WARNING: no consistent hashing" in rendered.notes


def test_schema_rejects_an_unknown_controller(chart):
    for controller in ["nginx", "contour", "ingress_nginx", ""]:
        with pytest.raises(helm_python.HelmValuesError):
            chart.validate_schema({"ingress": {"controller": controller}})


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
