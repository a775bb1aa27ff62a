"""The Deployment: probes on the admin port, security, the shutdown timing, the settings
handed to the binary, and the checksum that rolls the pods."""

from __future__ import annotations

import base64

import helm_python
import pytest

from chartlib import (
    FULLNAME,
    RABBITMQ,
    RABBITMQ_URL,
    VALUE_SETS,
    binary_settings_source,
    deep_merge,
    duration_seconds,
)

# The contract's defaults, which the chart's defaults must agree with.
PUBLIC_PORT = 8080
ADMIN_PORT = 9090
DEFAULT_DRAIN_SECONDS = 10
DEFAULT_PRESTOP_SECONDS = 10
DEFAULT_GRACE_SECONDS = 40
IMAGE_UID = 10001


def prestop_seconds(container) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def port(container, name) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def test_probes_use_the_admin_port(render):
    container = render().container
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert port(container, "admin") == ADMIN_PORT
    assert port(container, "http") == PUBLIC_PORT


def test_listen_addresses_match_the_container_ports(render):
    rendered = render(deep_merge(RABBITMQ, {"config": {"port": 8081, "adminPort": 9091}}))
    assert rendered.config["LONGPOLL_LISTEN"] == "0.0.0.0:8081"
    assert rendered.config["LONGPOLL_ADMIN_LISTEN"] == "0.0.0.0:9091"
    assert port(rendered.container, "http") == 8081
    assert port(rendered.container, "admin") == 9091


def test_default_listen_addresses_are_the_binary_defaults(render):
    config = render().config
    assert config["LONGPOLL_LISTEN"] == f"0.0.0.0:{PUBLIC_PORT}"
    assert config["LONGPOLL_ADMIN_LISTEN"] == f"0.0.0.0:{ADMIN_PORT}"


def test_service_exposes_public_and_admin_ports(render):
    ports = {p["name"]: p for p in render().one("Service")["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "http"
    assert ports["admin"]["targetPort"] == "admin"
    assert ports["admin"]["port"] == ADMIN_PORT


def test_container_runs_non_root_read_only_without_privileges(render):
    rendered = render()
    pod_ctx = rendered.pod["securityContext"]
    ctx = rendered.container["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True
    assert pod_ctx["runAsUser"] == IMAGE_UID and pod_ctx["runAsGroup"] == IMAGE_UID
    assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert "add" not in ctx["capabilities"]
    assert rendered.pod["automountServiceAccountToken"] is False


def test_writable_tmp_despite_the_read_only_root(render):
    rendered = render()
    assert {"name": "tmp", "mountPath": "/tmp"} in rendered.container["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in rendered.pod["volumes"])


def test_resource_requests_are_set(render):
    requests = render().container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]


def test_image_runs_serve_from_the_app_version(render, chart):
    container = render().container
    assert container["image"] == f"longpoll-gateway:{chart.metadata['appVersion']}"
    assert container["args"] == ["serve"]
    tagged = render({"image": {"repository": "registry.example.com/lp", "tag": "1.2.3"}}).container
    assert tagged["image"] == "registry.example.com/lp:1.2.3"


def test_default_shutdown_timing(render):
    rendered = render()
    assert prestop_seconds(rendered.container) == DEFAULT_PRESTOP_SECONDS
    assert rendered.config["LONGPOLL_DRAIN_TIMEOUT"] == f"{DEFAULT_DRAIN_SECONDS}s"
    assert rendered.pod["terminationGracePeriodSeconds"] == DEFAULT_GRACE_SECONDS


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_grace_period_outlasts_prestop_and_drain_window(render, name):
    rendered = render(VALUE_SETS[name])
    prestop = prestop_seconds(rendered.container)
    drain = duration_seconds(rendered.config["LONGPOLL_DRAIN_TIMEOUT"])
    # preStop sleep + drain window + a margin for the process to exit.
    assert rendered.pod["terminationGracePeriodSeconds"] >= prestop + drain + 10


def test_longer_drain_needs_a_longer_grace_period(render):
    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"config": {"drainTimeout": "30s"}})
    rendered = render({"config": {"drainTimeout": "30s"}, "terminationGracePeriodSeconds": 60})
    assert rendered.pod["terminationGracePeriodSeconds"] == 60


def test_grace_period_below_the_minimum_fails(render):
    with pytest.raises(helm_python.HelmRenderError, match=r"at least .* = 30"):
        render({"terminationGracePeriodSeconds": 25})


def test_prestop_can_be_switched_off(render):
    container = render({"preStopSleepSeconds": 0}).container
    assert "lifecycle" not in container


def test_pods_spread_across_zones_and_nodes(render):
    rendered = render(VALUE_SETS["rabbitmq"])
    constraints = rendered.pod["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    selector = rendered.deployment["spec"]["selector"]["matchLabels"]
    for c in constraints:
        assert c["labelSelector"]["matchLabels"] == selector
        assert c["maxSkew"] == 1


def test_rolling_update_never_removes_a_pod_before_its_replacement(render):
    strategy = render().deployment["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_settings_reach_the_binary_as_environment(render):
    rendered = render(VALUE_SETS["everything"])
    config = rendered.config
    assert config == {
        "LONGPOLL_LISTEN": "0.0.0.0:8080",
        "LONGPOLL_ADMIN_LISTEN": "0.0.0.0:9090",
        "LONGPOLL_EXCHANGE": "longpoll",
        "LONGPOLL_EXCHANGE_TYPE": "topic",
        "LONGPOLL_SUBSCRIPTION_EXPIRY": "300s",
        "LONGPOLL_QUEUE_PREFIX": "longpoll.subscribe.",
        "LONGPOLL_POLL_TIMEOUT": "270s",
        "LONGPOLL_MAX_POLLS": "100000",
        "LONGPOLL_REPLAY_TTL": "300s",
        "LONGPOLL_HISTORY_STREAM": "longpoll.history",
        "LONGPOLL_HISTORY_MAX_AGE": "1h",
        "LONGPOLL_HISTORY_MAX_BYTES": "1GB",
        "LONGPOLL_CHANNEL_POOL_SIZE": "64",
        "LONGPOLL_CONSUMER_PREFETCH": "20",
        "LONGPOLL_LOG_FORMAT": "json",
        "LONGPOLL_PUBLIC_URL": "https://longpoll.example.com/longpoll/",
        "LONGPOLL_CORS_ORIGINS": "https://a.example.com,https://b.example.com",
        "LONGPOLL_DRAIN_TIMEOUT": "10s",
        "RUST_LOG": "info",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "longpoll-gateway",
    }
    container = rendered.container
    assert container["envFrom"][0] == {"configMapRef": {"name": FULLNAME}}
    env = {e["name"]: e for e in container["env"]}
    assert env["LONGPOLL_BROKER"]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "broker-url",
    }
    assert env["LONGPOLL_API_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["EXTRA"]["value"] == "1"


def test_history_values_reach_the_binary_and_0_turns_it_off(render):
    """config.history sets the three history settings the binary reads (resume_after)."""
    config_src = binary_settings_source()
    rendered = render({"config": {"history": {"stream": "events.history", "maxAge": "0", "maxBytes": "500MB"}}})
    history = {k: v for k, v in rendered.config.items() if k.startswith("LONGPOLL_HISTORY_")}
    assert history == {
        "LONGPOLL_HISTORY_STREAM": "events.history",
        "LONGPOLL_HISTORY_MAX_AGE": "0",
        "LONGPOLL_HISTORY_MAX_BYTES": "500MB",
    }
    for name in history:
        assert f'"{name}"' in config_src, f"{name} is not a setting of the binary"


def test_secrets_stay_out_of_the_configmap(render):
    rendered = render(VALUE_SETS["everything"])
    text = repr(rendered.config)
    assert "s3cret" not in text and "token" not in text.lower()
    assert "LONGPOLL_BROKER" not in rendered.config
    assert "LONGPOLL_API_TOKEN" not in rendered.config


def test_chart_secret_holds_broker_url_and_token(render):
    secret = render(VALUE_SETS["rabbitmq"]).one("Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"broker-url": RABBITMQ_URL, "api-token": "token"}


def test_no_api_token_means_no_token_key(render):
    secret = render(RABBITMQ).one("Secret")
    assert set(secret["data"]) == {"broker-url"}


def test_existing_secret_replaces_the_chart_secret(render):
    rendered = render(
        {
            "replicaCount": 2,
            "existingSecret": "lp-broker",
            "secretKeys": {"broker": "url", "apiToken": "token"},
        }
    )
    assert not rendered.has("Secret")
    env = {e["name"]: e for e in rendered.container["env"]}
    assert env["LONGPOLL_BROKER"]["valueFrom"]["secretKeyRef"] == {"name": "lp-broker", "key": "url"}
    assert env["LONGPOLL_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "lp-broker"
    annotations = rendered.deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations
    assert "checksum/secret" not in annotations


def checksums(rendered) -> dict[str, str]:
    annotations = rendered.deployment["spec"]["template"]["metadata"]["annotations"]
    return {k: v for k, v in annotations.items() if k.startswith("checksum/")}


def test_config_change_changes_the_checksum(render):
    before = checksums(render(RABBITMQ))
    after = checksums(render(deep_merge(RABBITMQ, {"config": {"pollTimeout": "120s"}})))
    assert before["checksum/config"] != after["checksum/config"]
    assert before["checksum/secret"] == after["checksum/secret"]


def test_broker_change_changes_the_secret_checksum(render):
    before = checksums(render(RABBITMQ))
    after = checksums(
        render(deep_merge(RABBITMQ, {"config": {"broker": "amqps://u:p@other:5671/%2F"}}))
    )
    assert before["checksum/secret"] != after["checksum/secret"]
    assert before["checksum/config"] == after["checksum/config"]


def test_unrelated_change_keeps_the_checksums(render):
    before = checksums(render(RABBITMQ))
    after = checksums(render(deep_merge(RABBITMQ, {"replicaCount": 5})))
    assert before == after


@pytest.mark.parametrize("replicas", [2, 3, 10])
def test_memory_broker_with_several_replicas_fails(render, replicas):
    with pytest.raises(helm_python.HelmRenderError, match="only works with one replica"):
        render({"replicaCount": replicas})
    with pytest.raises(helm_python.HelmRenderError, match="only works with one replica"):
        render({"replicaCount": replicas, "config": {"broker": "memory://"}})


def test_memory_broker_with_autoscaling_fails(render):
    with pytest.raises(helm_python.HelmRenderError, match="autoscaling.enabled is true"):
        render({"autoscaling": {"enabled": True}})


def test_memory_broker_with_one_replica_renders(render):
    assert render({"replicaCount": 1}).deployment["spec"]["replicas"] == 1


def test_rabbitmq_or_existing_secret_allows_several_replicas(render):
    assert render(RABBITMQ).deployment["spec"]["replicas"] == 3
    assert render(VALUE_SETS["existing-secret"]).deployment["spec"]["replicas"] == 2


def test_notes_warn_about_the_memory_broker(render):
    assert "embedded broker" in render().notes
    assert "embedded broker" not in render(RABBITMQ).notes


@pytest.mark.parametrize(
    "values, message",
    [
        ({"config": {"pollTimeout": "0s"}}, "config.pollTimeout must be above 0"),
        ({"config": {"drainTimeout": "0ms"}}, "config.drainTimeout must be above 0"),
        ({"config": {"replayTtl": "0s"}}, "config.replayTtl must be above 0"),
    ],
)
def test_zero_durations_fail(render, values, message):
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(values)
